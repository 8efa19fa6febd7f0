"""Neural-network building blocks as sympy objects.

Contract
--------
Everything here returns a real sympy expression: it prints, substitutes (``subs``,
``xreplace``) and composes with other sympy expressions, and :func:`gradc.testing.explicit`
expands it to plain scalar sympy for independent checking.  Elementwise functions accept
a scalar expression or a matrix expression (applied with ``applyfunc``).

The scalar objects :class:`MatSum`, :class:`LogSumExp` and :class:`Pick` (the sum of a
matrix's elements, a numerically stable log-sum-exp, and the element of a score vector at
an integer label), the functions :class:`Logistic` and :class:`Softplus`, and
:class:`Elementwise` (sympy's ``applyfunc`` node, printed as ``tanh(M)``) are the only new
sympy classes; the rest are compositions.  ``cross_entropy`` and ``logsumexp`` are stable:
logits of 1e3 give finite values and correct gradients.

Examples
--------
>>> import sympy as sp
>>> from gradc import nn
>>> z = sp.MatrixSymbol("z", 3, 1)
>>> label = sp.Symbol("label", integer=True)
>>> nn.cross_entropy(z, label)
logsumexp(z) - z[label]
"""

from __future__ import annotations

import sympy as sp
from sympy.matrices.expressions import HadamardPower, HadamardProduct, OneMatrix
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction

from .errors import GradcError, short

__all__ = [
    "MatSum", "LogSumExp", "Pick", "Logistic", "Softplus", "Elementwise", "relu", "sigmoid", "softplus",
    "tanh", "softmax", "logsumexp", "cross_entropy", "sum", "mean", "sum_squares",
    "IndexedLayer", "Pad", "pad", "conv2d", "locally_connected",
]


def _matrix(m, what):
    m = sp.sympify(m)
    if not isinstance(m, sp.MatrixExpr):
        raise GradcError(f"{what} needs a matrix expression, got {short(m)} of class "
                         f"{type(m).__name__}")
    return m


class _ScalarOfMatrix(sp.Expr):
    """A real scalar computed from a matrix expression."""

    is_commutative = True
    is_real = True
    is_extended_real = True
    gradc_operands = True

    def __new__(cls, *args):
        return sp.Expr.__new__(cls, *args)

    def doit(self, **hints):
        if hints.get("deep", True):
            return self.func(*[a.doit(**hints) for a in self.args])
        return self


class MatSum(_ScalarOfMatrix):
    """The sum of all elements of a matrix expression."""

    def __new__(cls, m):
        return super().__new__(cls, _matrix(m, "sum"))

    def _sympystr(self, printer):
        a = self.args[0]
        if isinstance(a, HadamardPower) and a.args[1] == 2:
            return f"sum_squares({printer._print(a.args[0])})"
        return f"sum({printer._print(a)})"


class LogSumExp(_ScalarOfMatrix):
    """log(sum(exp(m))) over the elements of a matrix, computed with the maximum shifted
    out (never overflows)."""

    def __new__(cls, m):
        return super().__new__(cls, _matrix(m, "logsumexp"))

    def _sympystr(self, printer):
        return f"logsumexp({printer._print(self.args[0])})"


class Pick(_ScalarOfMatrix):
    """The element of the score vector ``z`` at the integer ``label`` (0-based)."""

    def __new__(cls, z, label):
        z = _matrix(z, "pick")
        if 1 not in z.shape:
            raise GradcError(f"pick needs a column or row vector of scores, got shape {z.shape}")
        label = sp.sympify(label)
        if label.is_integer is False:
            raise GradcError(f"the label {label} must be an integer symbol or number")
        return super().__new__(cls, z, label)

    def _sympystr(self, printer):
        z = printer._print(self.args[0])
        if not isinstance(self.args[0], sp.MatrixSymbol):
            z = f"({z})"
        return f"{z}[{printer._print(self.args[1])}]"


class Logistic(sp.Function):
    """The logistic sigmoid 1 / (1 + exp(-x)), with derivative s (1 - s)."""

    @classmethod
    def eval(cls, x):
        if x.is_Number:
            return 1 / (1 + sp.exp(-x))

    def fdiff(self, argindex=1):
        return self * (1 - self)

    def _eval_rewrite_as_exp(self, x, **kwargs):
        return 1 / (1 + sp.exp(-x))

    def _eval_is_real(self):
        return self.args[0].is_real


class Softplus(sp.Function):
    """log(1 + exp(x)), computed without overflow; its derivative is the logistic."""

    @classmethod
    def eval(cls, x):
        if x.is_Number:
            return sp.log(1 + sp.exp(x))

    def fdiff(self, argindex=1):
        return Logistic(self.args[0])

    def _eval_rewrite_as_exp(self, x, **kwargs):
        return sp.log(1 + sp.exp(x))

    def _eval_is_real(self):
        return self.args[0].is_real


class Elementwise(ElementwiseApplyFunction):
    """``f`` applied to every element of a matrix expression (sympy's
    ``ElementwiseApplyFunction``), printed as ``f(M)`` for the functions of this module."""

    def _name(self):
        t = self.function.variables[0]
        body = self.function.expr
        if body == sp.Max(t, 0):
            return "relu"
        if isinstance(body, sp.Function) and body.args == (t,):
            return {"Logistic": "sigmoid", "Softplus": "softplus"}.get(
                type(body).__name__, type(body).__name__)
        return None

    def _sympystr(self, printer):
        name = self._name()
        if name is None:
            return f"{printer._print(self.function)}.({printer._print(self.expr)})"
        return f"{name}({printer._print(self.expr)})"


def _elementwise(f, x):
    x = sp.sympify(x)
    if isinstance(x, sp.MatrixExpr):
        t = sp.Symbol("t", real=True)  # a fixed bound variable: equal calls, equal objects
        return Elementwise(sp.Lambda(t, f(t)), x)
    return f(x)


def relu(x):
    """max(x, 0) elementwise (derivative 0 at 0)."""
    return _elementwise(lambda t: sp.Max(t, 0), x)


def sigmoid(x):
    """The logistic function elementwise."""
    return _elementwise(Logistic, x)


def softplus(x):
    """log(1 + exp(x)) elementwise, stable for large |x|."""
    return _elementwise(Softplus, x)


def tanh(x):
    """tanh elementwise."""
    return _elementwise(sp.tanh, x)


def logsumexp(z):
    """log(sum(exp(z))) over all elements, stable."""
    return LogSumExp(z)


def softmax(z):
    """exp(z - logsumexp(z)): probabilities that sum to 1, computed without overflow."""
    z = _matrix(z, "softmax")
    r, c = z.shape
    return _elementwise(sp.exp, z - LogSumExp(z) * OneMatrix(r, c))


def cross_entropy(z, label):
    """-log softmax(z)[label] for an integer label, or -sum(y * log softmax(z)) for a
    one-hot (or any probability) vector ``y`` of z's shape."""
    z = _matrix(z, "cross_entropy")
    label = sp.sympify(label)
    if isinstance(label, sp.MatrixExpr):
        if label.shape != z.shape:
            raise GradcError(f"cross_entropy: scores have shape {z.shape} but the target "
                             f"{label} has shape {label.shape}")
        return LogSumExp(z) * MatSum(label) - MatSum(HadamardProduct(label, z))
    return LogSumExp(z) - Pick(z, label)


def sum(m):  # noqa: A001 - the natural name
    """The sum of all elements."""
    return MatSum(m)


def mean(m):
    """The mean of all elements."""
    m = _matrix(m, "mean")
    r, c = m.shape
    return MatSum(m) / (r * c)


def sum_squares(m):
    """The sum of the squares of all elements (an L2 penalty)."""
    return MatSum(HadamardPower(_matrix(m, "sum_squares"), 2))


# --------------------------------------------------------------------------------------
# indexed layers: conveniences that build the Sum a user would write


class IndexedLayer:
    """An indexed expression with free indices: ``layer[i, j, c]`` is a sympy expression
    (a ``Sum`` over ``IndexedBase`` reads) for the output element at those indices, of
    ``layer.shape``; gradc compiles it as a loop nest (:mod:`gradc.indexed`)."""

    def __init__(self, name, shape, build):
        self.name = name
        self.shape = tuple(shape)
        self._build = build

    def __getitem__(self, idx):
        idx = idx if isinstance(idx, tuple) else (idx,)
        if len(idx) != len(self.shape):
            raise GradcError(f"{self.name} has shape {self.shape}: index it with "
                             f"{len(self.shape)} indices, got {len(idx)}")
        return self._build(*(sp.sympify(i) for i in idx))

    def __repr__(self):
        idx = sp.symbols("i j c", integer=True)[:len(self.shape)]
        return f"{self.name}{list(idx)} = {self[tuple(idx)]}"


class Pad(sp.Function):
    """The label of a zero-padded array: ``IndexedBase(Pad(x, p0, p1, ...))`` reads
    ``x[a0 - p0, a1 - p1, ...]`` where that is inside ``x`` and 0 elsewhere (build it
    with :func:`pad`).  gradc computes the padded array once (a loop nest copying ``x``
    into zeros); its gradient is the cotangent's interior."""

    @classmethod
    def eval(cls, *args):
        return None

    @property
    def source(self):
        return self.args[0]

    @property
    def widths(self):
        return tuple(int(w) for w in self.args[1:])

    def _sympystr(self, printer):
        return f"pad({printer.doprint(self.source)}, {', '.join(map(str, self.widths))})"


def pad(x, widths):
    """``x`` (an ``IndexedBase`` with a shape) padded with zeros: ``widths`` is one
    integer for every axis or one per axis, added before and after it.  The result is an
    ``IndexedBase`` of the padded shape, read like any other.

    Examples
    --------
    >>> x = sp.IndexedBase("x", shape=(28, 28))
    >>> xp = pad(x, 1)
    >>> xp.shape
    (30, 30)
    >>> xp[0, 5]
    pad(x, 1, 1)[0, 5]
    """
    if not isinstance(x, sp.IndexedBase) or x.shape is None:
        raise GradcError(f"pad: the input must be an IndexedBase with a shape, got {short(x)}")
    if isinstance(x.label, Pad):
        raise GradcError(f"pad: {x} is already padded; pad the original array once with the "
                         "total widths")
    shape = tuple(int(d) for d in x.shape)
    ws = (widths,) * len(shape) if isinstance(widths, int) else tuple(widths)
    if len(ws) != len(shape) or not all(isinstance(w, int) and w >= 0 for w in ws):
        raise GradcError(f"pad: widths must be one non-negative integer or one per axis of "
                         f"{x} (shape {shape}), got {widths!r}")
    if not any(ws):
        return x
    return sp.IndexedBase(Pad(x, *ws), shape=tuple(d + 2 * w for d, w in zip(shape, ws)))


def _window_layer(name, x, W, window, stride, padding, shared):
    if not isinstance(x, sp.IndexedBase) or x.shape is None:
        raise GradcError(f"{name}: the input must be an IndexedBase with a shape, got {short(x)}")
    ph, pw = (padding, padding) if isinstance(padding, int) else tuple(padding) \
        if isinstance(padding, (tuple, list)) and len(padding) == 2 else (None, None)
    if not all(isinstance(p, int) and p >= 0 for p in (ph, pw)):
        raise GradcError(f"{name}: padding must be a non-negative integer or a pair of them "
                         f"(rows, columns), got {padding!r}")
    if ph or pw:
        x = pad(x, (ph, pw) + (0,) * (len(x.shape) - 2)) if len(x.shape) in (2, 3) else x
    if not isinstance(W, sp.IndexedBase) or W.shape is None:
        raise GradcError(f"{name}: the weights must be an IndexedBase with a shape, got {short(W)}")
    if not isinstance(stride, int) or stride < 1:
        raise GradcError(f"{name}: stride must be a positive integer, got {stride!r}")
    xs, ws = tuple(int(d) for d in x.shape), tuple(int(d) for d in W.shape)
    if len(xs) not in (2, 3):
        raise GradcError(f"{name}: the input {x} must have shape (H, W) or (H, W, C_in), got {xs}")
    cin = xs[2] if len(xs) == 3 else None
    kh, kw = window if window is not None else ws[:2] if shared else ws[2:4]
    oh, ow = (xs[0] - kh) // stride + 1, (xs[1] - kw) // stride + 1
    if oh < 1 or ow < 1:
        raise GradcError(f"{name}: a {kh}x{kw} window does not fit in the {xs[0]}x{xs[1]} input")
    lead = (kh, kw) if shared else (oh, ow, kh, kw)
    want = lead + ((cin,) if cin is not None else ())
    if ws[:-1] != want:
        raise GradcError(f"{name}: the weights {W} have shape {ws}; expected {want + ('C_out',)}")
    cout = ws[-1]
    di, dj, ci = sp.symbols("di_ dj_ ci_", integer=True)

    def build(i, j, c):
        at = (stride * i + di, stride * j + dj) + ((ci,) if cin is not None else ())
        wat = ((di, dj) if shared else (i, j, di, dj)) + ((ci,) if cin is not None else ()) + (c,)
        limits = [(di, 0, kh - 1), (dj, 0, kw - 1)] + ([(ci, 0, cin - 1)] if cin else [])
        return sp.Sum(x[at] * W[wat], *reversed(limits))

    return IndexedLayer(name, (oh, ow, cout), build)


def conv2d(x, K, stride=1, padding=0):
    """A 2-D convolution (cross-correlation, as in deep learning) of the image ``x``
    (``IndexedBase`` of shape (H, W) or (H, W, C_in)) with the filters ``K`` of shape
    (kh, kw, C_out) or (kh, kw, C_in, C_out): ``conv2d(x, K)[i, j, c] = Sum(x[s i + di,
    s j + dj] K[di, dj, c], ...)``, of shape ((H - kh) // s + 1, (W - kw) // s + 1, C_out).
    ``padding`` (an integer, or one for rows and one for columns) surrounds the image
    with zeros first (:func:`pad`): ``padding=1`` with 3x3 filters keeps the image's size.

    Examples
    --------
    >>> x, K = sp.IndexedBase("x", shape=(28, 28)), sp.IndexedBase("K", shape=(3, 3, 8))
    >>> z = conv2d(x, K)
    >>> z.shape
    (26, 26, 8)
    >>> z
    conv2d[i, j, c] = Sum(K[di_, dj_, c]*x[di_ + i, dj_ + j], (dj_, 0, 2), (di_, 0, 2))
    """
    return _window_layer("conv2d", x, K, None, stride, padding, shared=True)


def locally_connected(x, W, window, stride=1, padding=0):
    """A locally connected layer (unshared weights): ``locally_connected(x, W, (kh, kw))[i,
    j, c] = Sum(x[s i + di, s j + dj] W[i, j, di, dj, c], ...)`` with ``W`` of shape
    (out_h, out_w, kh, kw, C_out) (or with C_in before C_out for an (H, W, C_in) input);
    ``padding`` as for :func:`conv2d`."""
    window = (window, window) if isinstance(window, int) else tuple(window)
    return _window_layer("locally_connected", x, W, window, stride, padding, shared=False)
