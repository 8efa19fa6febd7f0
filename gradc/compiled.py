"""The user-facing compiled function: argument checking around the generated kernels.

Contract
--------
:func:`compile` runs the pipeline (lower -> AD transforms -> codegen -> backend) and returns
a :class:`CompiledFunction`.  Its methods take ``params`` (a sequence of floats in ``wrt``
order), then one array per data symbol (the batch on axis 0), then one value per const;
they validate every argument, raising :class:`gradc.GradcError` naming the argument, and
call the kernels in :attr:`CompiledFunction.kernels`, which take the same arguments as
float64 arrays and floats and can be called from a user's own ``numba.njit`` code.

A second ``compile`` of the same expression, roles and options, in this process or another,
finds the generated module in the disk cache (see :mod:`gradc.backend`) and skips the sympy
work; numba then loads the machine code from its own cache.
"""

from __future__ import annotations

import numpy as np
import sympy as sp

from . import __version__, backend
from .ad import jvp_program, vjp_program
from .codegen.emit import generate
from .errors import GradcError, short
from .frontend import check_roles, lower, structural_key

REDUCTIONS = ("mean", "sum", None)


def compile(expr, wrt, data=(), consts=(), reduce="mean", jit=True):  # noqa: A001
    """Compile a scalar sympy expression into value and gradient kernels.

    Parameters
    ----------
    expr : sympy.Expr
        The per-example value (a loss), a scalar expression.
    wrt : sequence of sympy.Symbol
        The parameters to differentiate with respect to, in the order gradients come back.
    data : sequence of sympy.Symbol
        Symbols that take one value per example; each is bound to a 1-D array.
    consts : sequence of sympy.Symbol
        Inputs that are neither differentiated nor batched (a regularisation weight).
    reduce : {"mean", "sum", None}
        How per-example values (and gradients) combine over the batch; ``None`` returns
        them per example.
    jit : bool
        ``False`` runs the same generated source as plain Python, for debugging.

    Returns
    -------
    CompiledFunction

    Examples
    --------
    >>> import numpy as np, sympy as sp, gradc
    >>> w, b, x, y = sp.symbols("w b x y")
    >>> fn = gradc.compile((w * x + b - y) ** 2, wrt=[w, b], data=[x, y], jit=False)
    >>> value, grad = fn.value_and_grad([1.0, 0.0], np.array([1.0, 2.0]), np.array([2.0, 2.0]))
    >>> float(value), grad.tolist()
    (0.5, [-1.0, -1.0])
    """
    if reduce not in REDUCTIONS:
        raise GradcError(f"reduce must be one of 'mean', 'sum' or None, got {reduce!r}")
    if not isinstance(expr, sp.Basic):
        try:
            expr = sp.sympify(expr)
        except (sp.SympifyError, TypeError):
            raise GradcError(f"expected a sympy expression, got {type(expr).__name__}") from None
    wrt, data, consts = check_roles(expr, wrt, data, consts)
    key = backend.make_key(
        structural_key(expr), *(sp.srepr(sp.Tuple(*s)) for s in (wrt, data, consts)),
        repr(reduce),
    )
    source = backend.lookup(key) if jit else None
    if source is None:
        prog = lower(expr, wrt, data, consts, reduce)
        per_example = reduce is None and bool(data)
        source = generate(prog, vjp_program(prog, per_example=per_example), jvp_program(prog),
                          reduce, title=short(expr, 200), version=__version__)
    kernels = backend.load(source, key, jit=jit)
    return CompiledFunction(expr, wrt, data, consts, reduce, source, kernels, jit)


def _plain(x):
    """numpy scalars become Python floats; arrays stay arrays."""
    return float(x) if np.ndim(x) == 0 else x


class CompiledFunction:
    """Value, gradient and directional derivative of one compiled expression.

    Attributes
    ----------
    expr, wrt, data, consts, reduce
        What was compiled.
    source : str
        The generated Python module.
    kernels : gradc.backend.Kernels
        The numba dispatchers (``value``, ``value_and_grad``, ``grad``, ``jvp``), callable
        from ``numba.njit`` code with the same arguments as the methods (params as one
        float64 array).
    """

    def __init__(self, expr, wrt, data, consts, reduce, source, kernels, jit):
        self.expr = expr
        self.wrt = tuple(wrt)
        self.data = tuple(data)
        self.consts = tuple(consts)
        self.reduce = reduce
        self.source = source
        self.kernels = kernels
        self.jit = jit

    def __repr__(self):
        def names(syms):
            return "[" + ", ".join(str(s) for s in syms) + "]"

        return (
            f"CompiledFunction({short(self.expr, 60)}, wrt={names(self.wrt)}, "
            f"data={names(self.data)}, consts={names(self.consts)}, reduce={self.reduce!r}, "
            f"jit={self.jit})"
        )

    # -- argument checking ------------------------------------------------------------------
    def _vector(self, values, what):
        try:
            arr = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError):
            raise GradcError(f"{what} must be a sequence of numbers in wrt order") from None
        arr = arr.reshape(-1) if arr.ndim == 0 else arr
        if arr.ndim != 1 or arr.shape[0] != len(self.wrt):
            raise GradcError(
                f"{what} has shape {arr.shape}; expected {len(self.wrt)} values, one per "
                f"symbol of wrt ({', '.join(map(str, self.wrt))})"
            )
        return np.ascontiguousarray(arr)

    def _args(self, args):
        nd, nc = len(self.data), len(self.consts)
        if len(args) != nd + nc:
            raise GradcError(
                f"expected {nd} data array(s) ({', '.join(map(str, self.data)) or 'none'}) and "
                f"{nc} const(s) ({', '.join(map(str, self.consts)) or 'none'}) after params, "
                f"got {len(args)} argument(s)"
            )
        out, n = [], None
        for sym, a in zip(self.data, args[:nd]):
            arr = np.asarray(a)
            if arr.dtype.kind not in "biuf":
                raise GradcError(
                    f"data {sym}: dtype {arr.dtype} is not a real number type"
                )
            if arr.ndim != 1:
                raise GradcError(
                    f"data {sym}: expected a 1-D array (one value per example), "
                    f"got shape {arr.shape}"
                )
            if n is None:
                n = arr.shape[0]
                first = sym
            elif arr.shape[0] != n:
                raise GradcError(
                    f"data {sym} has {arr.shape[0]} examples but {first} has {n}"
                )
            out.append(np.ascontiguousarray(arr, dtype=np.float64))
        if n == 0:
            raise GradcError(f"empty batch: data {first} has 0 examples")
        for sym, c in zip(self.consts, args[nd:]):
            arr = np.asarray(c)
            if arr.dtype.kind not in "biuf" or arr.ndim != 0:
                raise GradcError(
                    f"const {sym}: expected a real scalar, got {arr.dtype} with shape {arr.shape}"
                )
            out.append(float(arr))
        return out

    # -- calls ------------------------------------------------------------------------------
    def _call(self, kernel, *args):
        with np.errstate(all="ignore"):
            out = kernel(*args)
        if isinstance(out, tuple):
            return tuple(_plain(o) for o in out)
        return _plain(out)

    def value(self, params, *args):
        """The (reduced) value of the expression."""
        return self._call(self.kernels.value, self._vector(params, "params"), *self._args(args))

    def grad(self, params, *args):
        """The gradient with respect to ``wrt``, an array in ``wrt`` order."""
        return self._call(self.kernels.grad, self._vector(params, "params"), *self._args(args))

    def value_and_grad(self, params, *args):
        """``(value, gradient)`` in one pass (reverse mode)."""
        return self._call(
            self.kernels.value_and_grad, self._vector(params, "params"), *self._args(args)
        )

    def jvp(self, params, tangent, *args):
        """``(value, directional derivative along tangent)`` by forward mode."""
        return self._call(
            self.kernels.jvp, self._vector(params, "params"), self._vector(tangent, "tangent"),
            *self._args(args),
        )
