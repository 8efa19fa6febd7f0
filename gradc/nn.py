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
