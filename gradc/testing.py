"""Checkers for compiled derivatives, public so users can test their own models.

Contract
--------
:func:`check_grads` checks a :class:`~gradc.CompiledFunction` at one point without any
reference implementation: reverse-mode gradient against central finite differences along
random directions, and forward mode against reverse mode (the dot-product test
``<grad, u> == jvp(u)``).  :func:`sympy_oracle` builds an independent reference from
``sympy.diff`` and ``lambdify``, and :func:`check_against_sympy` compares a compiled function
with it at a tight tolerance.  All raise ``AssertionError`` with a readable report; none
hides NaN (a NaN where the reference is finite fails, NaN where both are NaN passes).
"""

from __future__ import annotations

import math

import numpy as np
import sympy as sp


def _close(actual, expected, rtol, atol, what):
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape:
        raise AssertionError(f"{what}: shape {actual.shape} != expected {expected.shape}")
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, equal_nan=True,
                               err_msg=what)


def check_grads(fn, params, *args, directions=3, eps=1e-6, rtol=1e-6, atol=1e-9, seed=0):
    """Check ``fn``'s reverse and forward mode at ``params`` against each other and
    against central finite differences.

    Parameters
    ----------
    fn : CompiledFunction
    params : sequence of float
        The point, in ``wrt`` order.
    *args
        Data arrays and consts, as for ``fn.value``.
    directions : int
        Number of random unit directions for the finite-difference check.
    eps, rtol, atol : float
        Step of the central difference and its tolerances.  Forward and reverse mode are
        compared with ``rtol=1e-10``.

    Examples
    --------
    >>> import numpy as np, sympy as sp, gradc
    >>> from gradc.testing import check_grads
    >>> w, x = sp.symbols("w x")
    >>> fn = gradc.compile(sp.exp(w * x), wrt=[w], data=[x], jit=False)
    >>> check_grads(fn, [0.3], np.array([0.5, -1.0, 2.0]))
    """
    if not fn.scalar_params:  # matrix params: check on the flattened vector
        fn = _Flat(fn, params)
        params = fn.flat_params
    p = np.asarray(params, dtype=np.float64)
    rng = np.random.default_rng(seed)
    value, grad = fn.value_and_grad(p, *args)
    _close(fn.value(p, *args), value, 1e-12, 0.0, "value vs value_and_grad")
    _close(fn.grad(p, *args), grad, 1e-12, 0.0, "grad vs value_and_grad")
    grad = np.asarray(grad)
    per_example = np.ndim(value) == 1
    # forward = reverse, one basis direction at a time
    for i in range(p.size):
        e = np.zeros_like(p)
        e[i] = 1.0
        v, dot = fn.jvp(p, e, *args)
        col = grad[:, i] if per_example else grad[i]
        _close(v, value, 1e-12, 0.0, "value vs jvp value")
        _close(dot, col, 1e-10, atol, f"forward vs reverse, component {i}")
    # reverse = central differences along random directions
    for _ in range(directions):
        u = rng.normal(size=p.size)
        u /= np.linalg.norm(u)
        h = eps * max(1.0, float(np.linalg.norm(p)))
        fd = (np.asarray(fn.value(p + h * u, *args)) - np.asarray(fn.value(p - h * u, *args))) / (2 * h)
        _close(grad @ u, fd, rtol, atol, f"reverse vs central differences along {u}")


def _scipy_special():
    """scipy's polygamma, beta and erfinv for the oracle (not gradc's own), if installed."""
    try:
        from scipy import special
    except ImportError:  # pragma: no cover - scipy is in the test extras
        return {}
    return {"polygamma": special.polygamma, "beta": special.beta, "erfinv": special.erfinv}


_MODULES = [
    {name: np.vectorize(getattr(math, fn), otypes=[float])
     for name, fn in (("erf", "erf"), ("erfc", "erfc"), ("gamma", "gamma"), ("loggamma", "lgamma"))}
    | {"step_": lambda x, h0=0.5: np.heaviside(x, h0),
       "delta_": lambda a, b: np.equal(a, b).astype(float)} | _scipy_special(),
    "numpy",
]
_STEP = sp.Function("step_")
_DELTA = sp.Function("delta_")


def _lambdify(args, expr):
    """``sympy.lambdify`` with Heaviside as ``numpy.heaviside`` and KroneckerDelta as an
    elementwise comparison.

    sympy's numpy printer rewrites Heaviside as nested Piecewise ``select`` calls, which
    fail when the argument holds a Min or Max (a condition list of floats), and prints
    KroneckerDelta as a Python ``if``, which fails on an array of examples.
    """
    expr = expr.replace(lambda e: isinstance(e, sp.Heaviside), lambda e: _STEP(*e.args))
    expr = expr.replace(lambda e: isinstance(e, sp.KroneckerDelta), lambda e: _DELTA(*e.args))
    return sp.lambdify(args, expr, _MODULES)


class _Flat:
    """A compiled function with matrix params seen as a function of one flat vector."""

    def __init__(self, fn, params):
        self.fn, self.wrt = fn, fn.wrt
        self.shapes = [np.shape(p) for p in params]
        self.flat_params = np.concatenate([np.ravel(p) for p in params])

    def _split(self, flat):
        out, k = [], 0
        for s in self.shapes:
            size = int(np.prod(s)) if s else 1
            out.append(flat[k:k + size].reshape(s) if s else float(flat[k]))
            k += size
        return out

    @staticmethod
    def _join(g):
        return np.concatenate([np.ravel(x) for x in g])

    def value(self, p, *args):
        return self.fn.value(self._split(p), *args)

    def grad(self, p, *args):
        return self._join(self.fn.grad(self._split(p), *args))

    def value_and_grad(self, p, *args):
        v, g = self.fn.value_and_grad(self._split(p), *args)
        return v, self._join(g)

    def jvp(self, p, t, *args):
        return self.fn.jvp(self._split(p), self._split(t), *args)


def sympy_oracle(expr, wrt, data=(), consts=(), reduce="mean"):
    """A reference ``(value, grad)`` function built from ``sympy.diff`` and ``lambdify``.

    The returned function takes the same arguments as ``CompiledFunction.value_and_grad``.

    Examples
    --------
    >>> import numpy as np, sympy as sp
    >>> from gradc.testing import sympy_oracle
    >>> w, x = sp.symbols("w x")
    >>> ref = sympy_oracle(w**2 * x, [w], [x])
    >>> value, grad = ref([3.0], np.array([1.0, 2.0]))
    >>> float(value), grad.tolist()
    (13.5, [9.0])
    """
    wrt, data, consts = list(wrt), list(data), list(consts)
    if _too_large(expr):
        return _nodewise_oracle(expr, wrt, data, consts, reduce)
    # differentiate over the reals, as gradc does (sympy's Abs' needs to know)
    real = {s: sp.Symbol(s.name, real=True) for s in [*wrt, *data, *consts]}
    expr = expr.xreplace(real)
    args = [real[s] for s in [*wrt, *data, *consts]]
    f = _lambdify(args, expr)
    gs = [_lambdify(args, _almost_everywhere(sp.diff(expr, real[s]))) for s in wrt]

    def value_and_grad(params, *rest):
        n = len(rest[0]) if data else 1
        # every argument as a float64 array of n values: lambdify's piecewise and
        # min/max code does not broadcast scalars against arrays
        full = [np.full(n, float(a)) for a in params]
        full += [np.asarray(a, dtype=np.float64) for a in rest[: len(data)]]
        full += [np.full(n, float(a)) for a in rest[len(data):]]
        with np.errstate(all="ignore"):
            vals = np.broadcast_to(np.asarray(f(*full), dtype=np.float64), (n,))
            grads = np.stack(
                [np.broadcast_to(np.asarray(g(*full), dtype=np.float64), (n,)) for g in gs],
                axis=1,
            )
        if not data:
            return vals[0], grads[0]
        if reduce is None:
            return vals, grads
        scale = 1.0 / n if reduce == "mean" else 1.0
        return vals.sum() * scale, grads.sum(axis=0) * scale

    return value_and_grad


#: Expressions with more nodes, or nested deeper, than this are evaluated node by node
#: (``lambdify`` prints one Python expression, which ``compile()`` cannot take past a few
#: thousand operands, and ``sympy.diff`` recurses once per level).
ORACLE_NODES, ORACLE_DEPTH = 4000, 150


def _too_large(expr):
    from .frontend import postorder

    nodes = postorder(expr)
    if len(nodes) > ORACLE_NODES:
        return True
    depth = {}
    for node in nodes:
        depth[node] = 1 + max((depth[a] for a in node.args if a in depth), default=0)
        if depth[node] > ORACLE_DEPTH:
            return True
    return False


def _nodewise_oracle(expr, wrt, data, consts, reduce):
    """The oracle for expressions too large for one ``lambdify``: values node by node, and
    the gradient by the chain rule over the expression DAG (adjoints summed over each
    node's parents), with every node's partial derivatives from ``sympy.diff`` of that
    node alone (``Add`` and ``Mul`` done directly).  Linear in the size of the DAG."""
    from .frontend import postorder

    nodes = postorder(expr)
    roles = {s: k for k, s in enumerate([*wrt, *data, *consts])}
    templates = {}

    def template(node):
        """(f, [partials], operand nodes) for a node other than Add, Mul and leaves."""
        ops = [a for a in node.args if not (a.is_Number or isinstance(a, sp.NumberSymbol))]
        if any(not isinstance(a, sp.Expr) for a in ops):
            raise NotImplementedError(f"node-wise oracle: {type(node).__name__} arguments")
        dummies = [sp.Symbol(f"_o{i}", real=True) for i in range(len(ops))]
        body = node.xreplace(dict(zip(ops, dummies)))
        key = (type(node), body)
        if key not in templates:
            f = _lambdify(dummies, body)
            ds = [_lambdify(dummies, _almost_everywhere(sp.diff(body, d))) for d in dummies]
            templates[key] = (f, ds)
        f, ds = templates[key]
        return f, ds, ops

    def value_and_grad(params, *rest):
        n = len(rest[0]) if data else 1
        bound = [np.full(n, float(a)) for a in params]
        bound += [np.asarray(a, dtype=np.float64) for a in rest[: len(data)]]
        bound += [np.full(n, float(a)) for a in rest[len(data):]]
        val, how = {}, {}
        with np.errstate(all="ignore"):
            for node in nodes:
                if node in roles:
                    val[node] = bound[roles[node]]
                elif node.is_Number or isinstance(node, sp.NumberSymbol):
                    val[node] = np.full(n, float(node))
                elif isinstance(node, sp.Add):
                    val[node] = np.sum([val[a] for a in node.args], axis=0)
                elif isinstance(node, sp.Mul):
                    val[node] = np.prod([val[a] for a in node.args], axis=0)
                else:
                    f, ds, ops = template(node)
                    args = [val[a] for a in ops]
                    val[node] = np.broadcast_to(np.asarray(f(*args), dtype=np.float64), (n,))
                    how[node] = (ds, ops, args)
            adj = {expr: np.ones(n)}
            grads = np.zeros((n, len(wrt)))
            for node in reversed(nodes):
                a = adj.pop(node, None)
                if a is None:
                    continue
                if node in roles:
                    if roles[node] < len(wrt):
                        grads[:, roles[node]] += a
                    continue
                if isinstance(node, sp.Add):
                    parts = [(c, a) for c in node.args]
                elif isinstance(node, sp.Mul):
                    vs = [val[c] for c in node.args]
                    parts = [(c, a * np.prod(vs[:i] + vs[i + 1:], axis=0))
                             for i, c in enumerate(node.args)]
                elif node in how:
                    ds, ops, args = how[node]
                    parts = [(c, a * np.asarray(d(*args), dtype=np.float64))
                             for c, d in zip(ops, ds)]
                else:
                    parts = []
                for c, g in parts:
                    if c.is_Number or isinstance(c, sp.NumberSymbol):
                        continue
                    adj[c] = adj[c] + g if c in adj else g
        vals = val[expr]
        if not data:
            return vals[0], grads[0]
        if reduce is None:
            return vals, grads
        scale = 1.0 / n if reduce == "mean" else 1.0
        return vals.sum() * scale, grads.sum(axis=0) * scale

    return value_and_grad


def _almost_everywhere(d):
    """Derivatives of step functions are 0 away from their jumps (where tests sample)."""
    steps = (sp.floor, sp.ceiling, sp.sign, sp.Heaviside, sp.KroneckerDelta)
    d = d.replace(lambda e: isinstance(e, sp.DiracDelta), lambda e: sp.S.Zero)
    d = d.replace(
        lambda e: isinstance(e, sp.Derivative) and isinstance(e.expr, steps),
        lambda e: sp.S.Zero,
    )
    return d.doit() if d.has(sp.Subs) else d


def explicit(expr):
    """Expand matrix expressions and :mod:`gradc.nn` objects into plain scalar sympy.

    Every ``MatrixSymbol`` M becomes a matrix of real scalar symbols ``M_i_j``.  Returns
    ``(scalar_expr, elements)`` with ``elements[M]`` that matrix.  Independent of gradc's
    lowering: it uses sympy's own ``as_explicit`` and elementwise evaluation, and the
    textbook formulas (log-sum-exp as ``log(sum(exp(z)))``, the logistic as
    ``1/(1+exp(-x))``) rather than gradc's stable kernels.

    Examples
    --------
    >>> import sympy as sp
    >>> from gradc import nn
    >>> from gradc.testing import explicit
    >>> W = sp.MatrixSymbol("W", 1, 2)
    >>> e, elements = explicit(nn.sum(W))
    >>> e
    W_0_0 + W_0_1
    """
    from . import nn
    from .frontend import postorder
    from .indexed import INDEXED

    elements, done = {}, {}
    if any(isinstance(n, INDEXED) for n in postorder(expr)):
        expr = _expand_indexed(expr, elements)
    for node in postorder(expr):
        if isinstance(node, sp.MatrixSymbol):
            r, c = (int(d) for d in node.shape)
            m = sp.ImmutableMatrix(r, c, lambda i, j: sp.Symbol(f"{node.name}_{i}_{j}", real=True))
            elements[node] = m
            done[node] = m
            continue
        if not node.args or isinstance(node, sp.Lambda):
            done[node] = node
            continue
        args = [done[a] for a in node.args]
        if isinstance(node, nn.MatSum):
            out = sp.Add(*args[0])
        elif isinstance(node, nn.LogSumExp):
            out = sp.log(sp.Add(*[sp.exp(v) for v in args[0]]))
        elif isinstance(node, nn.Pick):
            z, label = args
            out = sp.Piecewise(*[(v, sp.Eq(label, k)) for k, v in enumerate(z)], (sp.nan, True))
        elif isinstance(node, sp.MatrixExpr):
            out = sp.ImmutableMatrix(node.func(*args).as_explicit())
        elif any(isinstance(a, sp.MatrixExpr) for a in node.args):  # Trace, an element...
            out = node.func(*args).doit()
        else:
            out = node.func(*args)
        done[node] = out
    out = done[expr]
    if isinstance(out, sp.MatrixBase):
        out = out[0, 0]
    # functions applied through applyfunc sat inside a Lambda: rewrite them too
    out = out.replace(lambda e: isinstance(e, (nn.Logistic, nn.Softplus)),
                      lambda e: e.rewrite(sp.exp))
    return out, elements


def _expand_indexed(expr, elements):
    """``expr`` with every ``FunctionMatrix`` made explicit, every ``Sum`` expanded by
    sympy's ``doit`` and every ``x[i, j]`` at integer indices replaced by the real symbol
    ``x_i_j`` (an element of a zero-padded array, :func:`gradc.nn.pad`: its source's
    symbol, or 0 in the padding); ``elements[x]`` gets the symbols of ``x`` in row-major
    order."""
    import itertools

    from sympy.matrices.expressions.funcmatrix import FunctionMatrix

    from .frontend import postorder

    rep = {n: sp.ImmutableMatrix(n.as_explicit()) for n in postorder(expr)
           if isinstance(n, FunctionMatrix)}
    if rep:
        expr = expr.xreplace(rep)
    expr = _expand_sums(expr)
    if isinstance(expr, sp.MatrixBase):
        expr = expr.applyfunc(_expand_sums)
    from .nn import Pad

    found = {n for n in postorder(expr) if isinstance(n, sp.IndexedBase)}
    bases = {n for n in found if not isinstance(n.label, Pad)}
    table = {}
    for base in bases:
        shape = tuple(int(d) for d in base.shape)
        syms = []
        for idx in itertools.product(*(range(d) for d in shape)):
            sym = sp.Symbol(f"{base.label}_" + "_".join(map(str, idx)), real=True)
            table[base[idx]] = sym
            syms.append(sym)
        elements[base] = syms
    for base in found - bases:  # zero padding (gradc.nn.pad): the source's symbol or 0
        src, widths = base.label.source, base.label.widths
        shape = tuple(int(d) for d in src.shape)
        for idx in itertools.product(*(range(int(d)) for d in base.shape)):
            at = tuple(i - w for i, w in zip(idx, widths))
            inside = all(0 <= a < d for a, d in zip(at, shape))
            table[base[idx]] = table[src[at]] if inside else sp.S.Zero
    return expr.xreplace(table)


def _expand_sums(expr):
    """Every ``Sum`` written out term by term, outermost limit first (so a triangular
    range ``(m, 0, j - 1), (j, 0, d - 1)`` gets integer bounds before it is expanded);
    sympy's ``doit`` leaves such sums of array elements unevaluated."""
    def ready(e):
        return isinstance(e, sp.Sum) and all(sp.sympify(b).is_Integer for b in e.limits[-1][1:])

    def expand(e):
        s, lo, hi = e.limits[-1]
        if int(hi) < int(lo) - 1:
            raise AssertionError(f"{e}: a backwards range (Karr's convention) in an oracle")
        inner = e.function if len(e.limits) == 1 else sp.Sum(e.function, *e.limits[:-1])
        return sp.Add(*[inner.xreplace({s: sp.Integer(v)}) for v in range(int(lo), int(hi) + 1)])

    while expr.has(sp.Sum):
        new = expr.replace(ready, expand)
        if new == expr:
            raise AssertionError(f"sums with symbolic bounds left in {expr}")
        expr = new
    return expr


def _flat_symbols(syms, elements):
    out = []
    for s in syms:
        out += list(elements[s]) if s in elements else [s]
    return out


def check_against_sympy(fn, params, *args, rtol=1e-10, atol=1e-12):
    """Compare ``fn.value_and_grad`` with :func:`sympy_oracle` at one point.

    Matrix models are expanded to scalars with :func:`explicit` first, so the reference
    never uses sympy's matrix calculus.

    Examples
    --------
    >>> import numpy as np, sympy as sp, gradc
    >>> from gradc.testing import check_against_sympy
    >>> w, x = sp.symbols("w x")
    >>> fn = gradc.compile(sp.tanh(w * x) ** 2, wrt=[w], data=[x], jit=False)
    >>> check_against_sympy(fn, [0.7], np.array([0.1, -2.0, 3.0]))
    """
    if fn.scalar_params and not any(isinstance(s, (sp.MatrixSymbol, sp.IndexedBase))
                                    for s in fn.data + fn.consts):
        ref = sympy_oracle(fn.expr, fn.wrt, fn.data, fn.consts, fn.reduce)
        v_ref, g_ref = ref(np.asarray(params, dtype=np.float64), *args)
        v, g = fn.value_and_grad(params, *args)
        _close(v, v_ref, rtol, atol, "value vs sympy")
        _close(g, g_ref, rtol, atol, "gradient vs sympy.diff")
        return
    keys = _index_keys(fn.expr, fn.data)
    if keys:
        v_ref, g_ref = _gather_reference(fn, params, args, keys)
    else:
        v_ref, g_ref = _explicit_reference(fn.expr, fn, params, fn.data, args[: len(fn.data)],
                                           args[len(fn.data):], fn.reduce)
    v, g = fn.value_and_grad(params, *args)
    g = g if fn.scalar_params else np.concatenate([np.ravel(x) for x in g])
    _close(v, v_ref, rtol, atol, "value vs sympy (explicit scalars)")
    _close(g, g_ref, rtol, atol, "gradient vs sympy.diff (explicit scalars)")


def _explicit_reference(expr, fn, params, data, dargs, cargs, reduce):
    """(value, flat gradient) of ``expr`` (``fn``'s roles, data ``data``) by the sympy
    oracle on its explicit scalar form."""
    expr, elements = explicit(expr)
    wrt = _flat_symbols(fn.wrt, elements)
    dsyms = _flat_symbols(data, elements)
    consts = _flat_symbols(fn.consts, elements)
    flat_params = np.concatenate([np.ravel(np.asarray(p, dtype=np.float64)) for p in
                                  (params if not fn.scalar_params else [params])])
    cols = []
    for s, a in zip(data, dargs):
        a = np.asarray(a, dtype=np.float64)
        a = a.reshape(a.shape[0], -1) if s in elements else a
        cols += [a[:, k] for k in range(a.shape[1])] if s in elements else [a]
    for s, a in zip(fn.consts, cargs):
        cols += list(np.ravel(np.asarray(a, dtype=np.float64))) if s in elements else [a]
    return sympy_oracle(expr, wrt, dsyms, consts, reduce)(flat_params, *cols)


def _index_keys(expr, data):
    """The data symbols used inside the indices of an ``Indexed`` (gathers)."""
    found = set()
    for node in sp.preorder_traversal(expr):
        if isinstance(node, sp.Indexed):
            for i in node.indices:
                found |= sp.sympify(i).free_symbols & set(data)
    return [s for s in data if s in found]


def _gather_reference(fn, params, args, keys):
    """The oracle of a model that gathers by data values: the examples grouped by their
    key values, each group's expression with those values substituted (plain integer
    indices), expanded and differentiated by sympy; the groups' sums added up."""
    nd = len(fn.data)
    dargs = [np.asarray(a) for a in args[:nd]]
    n = dargs[0].shape[0]
    kv = np.stack([dargs[fn.data.index(s)].reshape(n) for s in keys], axis=1)
    rest = [s for s in fn.data if s not in keys]
    if fn.reduce is None:
        raise NotImplementedError("the gather oracle sums over the examples")
    total_v, total_g = 0.0, 0.0
    for combo in np.unique(kv, axis=0):
        sel = np.all(kv == combo, axis=1)
        sub = {s: sp.Integer(int(c)) for s, c in zip(keys, combo)}
        expr = fn.expr.xreplace(sub)
        part = [dargs[fn.data.index(s)][sel] for s in rest]
        if not rest:  # no other data: the group's value times its size
            v, g = _explicit_reference(expr, fn, params, (), (), args[nd:], "sum")
            v, g = v * sel.sum(), g * sel.sum()
        else:
            v, g = _explicit_reference(expr, fn, params, rest, part, args[nd:], "sum")
        total_v, total_g = total_v + v, total_g + np.asarray(g)
    scale = 1.0 / n if fn.reduce == "mean" else 1.0
    return total_v * scale, total_g * scale
