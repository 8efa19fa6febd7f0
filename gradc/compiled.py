"""The user-facing compiled function: argument checking around the generated kernels.

Contract
--------
:func:`compile` runs the pipeline (lower -> AD transforms -> codegen -> backend) and returns
a :class:`CompiledFunction`.  Its methods take ``params`` (in ``wrt`` order), then one array
per data symbol (the batch on axis 0), then one value per const; they validate every
argument, raising :class:`gradc.GradcError` naming the argument, and call the kernels in
:attr:`CompiledFunction.kernels`, which can be called from a user's own ``numba.njit`` code.

When every ``wrt`` symbol is a scalar, ``params`` is one float64 vector and the gradient
comes back as one vector.  When some are matrices, ``params`` is a sequence with one entry
per symbol (an array of the MatrixSymbol's shape, or a float) and the gradient a list in
the same order and shapes; the kernels take and return tuples.  A data MatrixSymbol of
shape ``(L, 1)`` or ``(1, L)`` binds to an ``(n, L)`` array; an integer label used by
:func:`gradc.nn.cross_entropy` to integer values in range (checked).

A second ``compile`` of the same expression, roles and options, in this process or another,
finds the generated module in the disk cache (see :mod:`gradc.backend`) and skips the sympy
work; numba then loads the machine code from its own cache.
"""

from __future__ import annotations

import math

import numpy as np
import sympy as sp

from . import __version__, backend
from .ad import jvp_program, vjp_program
from .codegen import runtime as _runtime
from .codegen import arrays
from .codegen.emit import KernelSpec, generate
from .errors import GradcError, short
from .frontend import check_roles, is_scalar_model, lower, postorder, structural_key

REDUCTIONS = ("mean", "sum", None)


def compile(expr, wrt, data=(), consts=(), reduce="mean", jit=True, parallel=False,  # noqa: A001
            eager=False, dtype="float64"):
    """Compile a sympy expression into value, gradient, JVP and Jacobian kernels.

    Parameters
    ----------
    expr : sympy.Expr or sympy.MatrixExpr
        The per-example value: a scalar (a loss; ``grad`` and ``value_and_grad`` need one),
        or a vector or matrix expression (then ``value``, ``jvp`` and ``jacobian``).
    wrt : sequence of sympy.Symbol or sympy.MatrixSymbol
        The parameters to differentiate with respect to, in the order gradients come back.
    data : sequence of sympy.Symbol or sympy.MatrixSymbol
        Inputs with one value per example; a scalar binds to a 1-D array, a vector
        MatrixSymbol of length L to an ``(n, L)`` array.
    consts : sequence of sympy.Symbol or sympy.MatrixSymbol
        Inputs that are neither differentiated nor batched (a regularisation weight,
        fixed weights).
    reduce : {"mean", "sum", None}
        How per-example values (and gradients) combine over the batch; ``None`` returns
        them per example.
    jit : bool
        ``False`` runs the same generated source as plain Python, for debugging.
    parallel : bool
        Split the batch across threads (numba ``prange``); the results are the same as
        without (sums over the batch are added in a fixed order).
    eager : bool or "all"
        Compile the first-order kernels now (:meth:`CompiledFunction.warmup`; ``"all"``:
        the second-order ones too) instead of each on its first call.  Lazy is the
        default because the first call then waits for one kernel only; the kernels share
        their compiled maths and runtime helpers, so each further one takes a fraction of
        a second.
    dtype : {"float64", "float32"}
        The floating-point type of the kernels: parameters, data, intermediate arrays and
        results.  With ``"float32"`` the arrays take half the memory, the products run as
        single-precision BLAS (``sgemm``) and ``exp``/``log``/``tanh``/the logistic as
        float32 vectorised maths, while sums over the batch are accumulated in float64:
        results are float32 numbers accurate to float32 precision (docs/conventions.md).

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
    dtype = _dtype_name(dtype)
    wrt, data, consts = check_roles(expr, wrt, data, consts)
    key = backend.make_key(
        structural_key(expr), *(sp.srepr(sp.Tuple(*s)) for s in (wrt, data, consts)),
        repr(reduce), repr(bool(parallel)), f"block {arrays.BLOCK_WORDS}",
        *((f"dtype {dtype}",) if dtype != "float64" else ()),
    )
    hit = backend.lookup(key) if jit else None
    prog = None
    if hit is not None and hit[1] is not None:
        source, manifest = hit
    else:
        packed = is_scalar_model(expr, wrt, data, consts)
        prog = lower(expr, wrt, data, consts, reduce, packed=packed, checked=True)
        source, manifest = generate(
            kernel_specs(prog, reduce, packed), reduce, title=short(expr, 200),
            version=__version__, parallel=bool(parallel),
            param_names=[s.name for s in wrt] if packed else None, dtype=dtype)
    kernels = backend.load(source, key, list(manifest["kernels"]), jit=jit,
                           parallel=bool(parallel), manifest=manifest)
    fn = CompiledFunction(expr, wrt, data, consts, reduce, source, kernels, jit,
                          bool(parallel), manifest, dtype=dtype)
    fn._key = key
    if prog is not None:  # kept for the Hessian machinery (pattern, plan, blocks)
        fn._second["value"] = prog
    if eager:
        fn.warmup("all" if eager == "all" else None)
    return fn


def kernel_specs(prog, reduce, packed):
    """The kernels of a compiled function, as :class:`gradc.codegen.emit.KernelSpec`
    values: ``value`` and ``jvp`` always; ``value_and_grad``, ``grad``,
    ``value_grad_hvp`` and ``hvp`` for a scalar output (not for per-example gradients of
    matrix parameters); ``vjp`` for a vector or matrix output without data."""
    per_example = reduce is None and any(i.role == "data" for i in prog.inputs)
    per = " per example" if per_example else ""
    specs = [KernelSpec("value", prog, (("scalar", tuple(prog.outputs)),), f"The value{per}.")]
    scalar_params = all(not i.var.shape for i in prog.inputs if i.role == "param")
    if not getattr(prog.outputs[0], "shape", ()) and (packed or not per_example or scalar_params):
        vjp = vjp_program(prog, per_example=per_example)
        kind = "array" if packed else "tuple"
        n = len(vjp.outputs) - 1  # gradient entries
        specs.append(KernelSpec(
            "value_and_grad", vjp, (("scalar", vjp.outputs[:1]), (kind, vjp.outputs[1:])),
            f"(value, gradient){per}, by reverse mode."))
        specs.append(KernelSpec("grad", None, (), f"The gradient{per}, by reverse mode.",
                                wraps=("value_and_grad", 1)))
        hvp = hvp_program(vjp)
        specs.append(KernelSpec(
            "value_grad_hvp", hvp, (("scalar", hvp.outputs[:1]), (kind, hvp.outputs[1:1 + n]),
                                    (kind, hvp.outputs[1 + n:])),
            f"(value, gradient, Hessian-vector product along tangent){per}, by forward "
            "over reverse mode."))
        only = hvp_only_program(hvp, n)
        specs.append(KernelSpec("hvp", only, ((kind, only.outputs),),
                                f"The Hessian-vector product along tangent{per}, by forward "
                                "over reverse mode."))
    out = prog.outputs[0]
    if getattr(out, "shape", ()) and not out.batched:  # a vector output: rows by reverse mode
        vjp = vjp_program(prog, seed="input")
        specs.append(KernelSpec(
            "vjp", vjp, (("scalar", vjp.outputs[:1]), ("array" if packed else "tuple",
                                                         vjp.outputs[1:])),
            "(value, cotangent-Jacobian product), by reverse mode; the cotangent is a tuple "
            "holding one array of the output's shape."))
    jvp = jvp_program(prog)
    specs.append(KernelSpec(
        "jvp", jvp, (("scalar", jvp.outputs[:1]), ("scalar", jvp.outputs[1:])),
        f"(value, directional derivative along tangent){per}, by forward mode."))
    return specs


def hvp_program(vjp, copies=1):
    """The program of ``value_grad_hvp``: forward mode over the reverse-mode program
    ``vjp`` (value, then the gradient entries), keeping the value, the gradient and the
    gradient's tangent (the Hessian-vector product), in that order; the tangent of the
    value is dropped.  With ``copies`` = k, the k Hessian-vector products along k
    directions follow the gradient, one after the other (one primal and one reverse pass
    shared by all)."""
    from .ir import Program

    fo = jvp_program(vjp, copies=copies)
    k = len(vjp.outputs)
    outs = list(fo.outputs[:k])
    for c in range(copies):
        outs += fo.outputs[k + c * k + 1:k + (c + 1) * k]
    params = vjp.inputs_of("param")
    names = ("value",) + tuple(f"grad_{i.name}" for i in params) + tuple(
        f"hvp{c if copies > 1 else ''}_{i.name}" for c in range(copies) for i in params)
    return Program(fo.inputs, fo.eqns, tuple(outs), names)


def hvp_only_program(hvp, n):
    """The ``hvp`` kernel's program: :func:`hvp_program` keeping only the Hessian-vector
    product (its ``n`` entries); the code that only forms the value and the gradient is
    dropped (``benchmarks/bench_hessian.py`` times both kernels)."""
    from .ir import Program

    return Program(hvp.inputs, hvp.eqns, tuple(hvp.outputs[1 + n:]), hvp.output_names[1 + n:])


def hvp_block_spec(vjp, copies, kind):
    """The ``hvp_block`` kernel: ``(value, gradient, H t_0, ..., H t_{k-1})`` for k
    directions given as the rows of one ``(k, P)`` array (scalar parameters) or as one
    flat tuple of k parameter tuples (matrix parameters)."""
    prog = hvp_program(vjp, copies)
    m = len(vjp.outputs) - 1
    groups = [("scalar", prog.outputs[:1]), (kind, prog.outputs[1:1 + m])]
    for c in range(copies):
        groups.append((kind, prog.outputs[1 + m + c * m:1 + m + (c + 1) * m]))
    return KernelSpec("hvp_block", prog, tuple(groups),
                      f"(value, gradient, then the Hessian-vector products along {copies} "
                      "directions), by forward over reverse mode.")


def jvp_block_spec(prog, copies):
    """The ``jvp_block`` kernel: ``(value, J t_0, ..., J t_{k-1})`` for k directions given
    as the rows of one ``(k, P)`` array (scalar parameters) or as one flat tuple of k
    parameter tuples (matrix parameters): one primal pass shared by all."""
    fo = jvp_program(prog, copies=copies)
    groups = [("scalar", fo.outputs[:1])] + [("scalar", fo.outputs[1 + c:2 + c])
                                             for c in range(copies)]
    return KernelSpec("jvp_block", fo, tuple(groups),
                      f"(value, then the directional derivatives along {copies} directions), "
                      "by forward mode.")


def _rebuild(expr, wrt, data, consts, reduce, jit, parallel, dtype="float64"):
    return compile(expr, wrt, data, consts, reduce=reduce, jit=jit, parallel=parallel,
                   dtype=dtype)


#: The kernel dtypes ``gradc.compile`` takes.
DTYPES = ("float64", "float32")


def _dtype_name(dtype):
    """``"float64"`` or ``"float32"`` for a dtype given as a name, numpy type or dtype."""
    try:
        name = np.dtype(dtype).name
    except TypeError:
        name = None
    if name not in DTYPES:
        raise GradcError(f"dtype must be 'float64' or 'float32', got {dtype!r}")
    return name


def _real_array(values, dtype=np.float64):
    """``values`` as an array of ``dtype``; a TypeError for anything but real numbers
    (complex ones included: numpy would drop their imaginary parts with only a warning)."""
    arr = np.asarray(values)
    if arr.dtype.kind not in "biuf":
        raise TypeError(arr.dtype)
    return arr.astype(dtype, copy=False)


def _in_own_dtype(method):
    """A method returning a matrix assembled from kernel products (a Hessian, a
    Jacobian, dense or scipy.sparse), made to return it in the function's dtype."""
    import functools

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        out = method(self, *args, **kwargs)
        if self.dtype != np.float64 and getattr(out, "dtype", self.dtype) != self.dtype:
            out = out.astype(self.dtype)
        return out

    return wrapper


def _plain(x):
    """numpy scalars become Python floats; arrays stay arrays."""
    return float(x) if np.ndim(x) == 0 else x


def _shape(sym):
    if isinstance(sym, (sp.MatrixSymbol, sp.IndexedBase)):
        return tuple(int(d) for d in sym.shape)
    return ()


def _label_ranges(expr):
    """{label symbol: number of classes} for every nn.Pick on a data label."""
    from .nn import Pick

    out = {}
    for node in postorder(expr):
        if isinstance(node, Pick) and isinstance(node.args[1], sp.Symbol):
            r, c = _shape(node.args[0]) if isinstance(node.args[0], sp.MatrixSymbol) else \
                (int(node.args[0].shape[0]), int(node.args[0].shape[1]))
            k = r * c
            out[node.args[1]] = min(out.get(node.args[1], k), k)
    return out


class CompiledFunction:
    """Value, gradient and directional derivative of one compiled expression.

    Attributes
    ----------
    expr, wrt, data, consts, reduce, jit, parallel
        What was compiled, and how.
    output_shape : tuple
        ``()`` for a scalar output, else the matrix expression's shape.
    scalar_params : bool
        All ``wrt`` are scalars: params and gradients are flat vectors.
    dtype : numpy.dtype
        ``float64``, or ``float32`` for a function compiled with ``dtype="float32"``: the
        dtype of the arrays the kernels take and return (see ``docs/conventions.md``).
    source : str
        The generated Python module.
    kernels : gradc.backend.Kernels
        The numba dispatchers, callable from ``numba.njit`` code with the arguments the
        methods pass on (params as one array of ``dtype`` when all are scalars, else a
        tuple):
        ``value`` and ``jvp`` always; ``value_and_grad`` and ``grad`` for a scalar output
        (and not for per-example gradients of matrix parameters).

    Examples
    --------
    >>> import numpy as np, sympy as sp, gradc
    >>> w, x = sp.symbols("w x")
    >>> fn = gradc.compile(sp.exp(w * x), wrt=[w], data=[x], jit=False)
    >>> fn
    CompiledFunction(exp(w*x), wrt=[w], data=[x], consts=[], reduce='mean', jit=False)
    >>> X = np.array([0.0, 1.0])
    >>> round(fn.value([1.0], X), 6), np.round(fn.grad([1.0], X), 6).tolist()
    (1.859141, [1.359141])
    >>> value, slope = fn.jvp([1.0], [2.0], X)
    >>> round(slope, 6)
    2.718282
    """

    def __init__(self, expr, wrt, data, consts, reduce, source, kernels, jit, parallel=False,
                 manifest=None, dtype="float64"):
        self.parallel = parallel
        self.dtype = np.dtype(dtype)
        self.manifest = manifest or {"kernels": {}, "memory": {}}
        self.expr = expr
        self.wrt = tuple(wrt)
        self.data = tuple(data)
        self.consts = tuple(consts)
        self.reduce = reduce
        self.source = source
        self.kernels = kernels
        self.jit = jit
        self.scalar_params = all(isinstance(s, sp.Symbol) for s in self.wrt)
        self._labels = _label_ranges(expr)
        self._shapes = {s: _shape(s) for s in self.wrt + self.data + self.consts}
        self.output_shape = (tuple(int(d) for d in expr.shape)
                             if isinstance(expr, sp.MatrixExpr) else ())
        self._engine = None
        self._plan = None
        self._second = {}  # value program, pattern, Hessian plans and recoveries

    def __repr__(self):
        def names(syms):
            return "[" + ", ".join(
                f"{s}:{'x'.join(map(str, _shape(s)))}" if _shape(s) else str(s) for s in syms
            ) + "]"

        return (
            f"CompiledFunction({short(self.expr, 60)}, wrt={names(self.wrt)}, "
            f"data={names(self.data)}, consts={names(self.consts)}, reduce={self.reduce!r}, "
            f"jit={self.jit}" + (", parallel=True" if self.parallel else "")
            + (f", dtype={self.dtype.name!r}" if self.dtype != np.float64 else "") + ")"
        )

    def __reduce__(self):
        # Pickled as the compile call: another process rebuilds from the disk cache
        # (source and machine code), without the sympy work.
        return (_rebuild, (self.expr, self.wrt, self.data, self.consts, self.reduce,
                           self.jit, self.parallel, self.dtype.name))

    # -- argument checking ------------------------------------------------------------------
    def _params(self, values, what):
        """Params (or a tangent) as the kernels take them: a sequence in wrt order, or a
        dict keyed by the wrt symbols (or their names)."""
        if isinstance(values, dict):
            values = self._ordered(values, what)
        if self.scalar_params:
            try:
                arr = _real_array(values, self.dtype)
            except (TypeError, ValueError):
                raise GradcError(f"{what} must be a sequence of real numbers in wrt order") \
                    from None
            arr = arr.reshape(-1) if arr.ndim == 0 else arr
            if arr.ndim != 1 or arr.shape[0] != len(self.wrt):
                raise GradcError(
                    f"{what} has shape {arr.shape}; expected {len(self.wrt)} values, one per "
                    f"symbol of wrt ({', '.join(map(str, self.wrt))})"
                )
            return np.ascontiguousarray(arr)
        if not isinstance(values, (list, tuple)) or len(values) != len(self.wrt):
            raise GradcError(
                f"{what} must be a sequence of {len(self.wrt)} values, one per symbol of wrt "
                f"({', '.join(map(str, self.wrt))})"
            )
        return tuple(self._value(s, v, what) for s, v in zip(self.wrt, values))

    def _ordered(self, values, what):
        """A dict of params as a list in wrt order (keys: the wrt symbols or their names)."""
        by_name = {str(s): s for s in self.wrt}
        out = {}
        for key, v in values.items():
            sym = key if key in self._shapes and key in self.wrt else by_name.get(
                key if isinstance(key, str) else None)
            if sym is None:
                raise GradcError(
                    f"{what}: key {key!r} is not a symbol of wrt ({', '.join(by_name)}); "
                    "pass a dict keyed by the wrt symbols (or their names), or a list in wrt "
                    "order")
            if sym in out:
                raise GradcError(f"{what}: {sym} is given twice (as the symbol and its name)")
            out[sym] = v
        missing = [str(s) for s in self.wrt if s not in out]
        if missing:
            raise GradcError(f"{what}: no value for {', '.join(missing)} (a dict of params "
                             "needs one entry per wrt symbol)")
        return [out[s] for s in self.wrt]

    def _value(self, sym, value, role):
        """One batch-invariant value: a float for a scalar, a 2-D float64 array for a matrix.
        (Messages name ``role`` and ``sym``; they are formatted only when raising.)"""
        shape = self._shapes[sym]
        if isinstance(value, np.ndarray) and value.dtype == self.dtype and value.shape == shape \
                and value.flags.c_contiguous and shape != (1, 1):
            return value  # the common case, checked in a few hundred nanoseconds
        if not shape and type(value) in (float, int):
            return float(value)  # a Python number for a scalar (a const, mostly)
        what = f"{role} {sym}"  # (printing a sympy symbol takes microseconds: not above)
        try:
            arr = _real_array(value, self.dtype)
        except (TypeError, ValueError):
            got = f"an array of {value.dtype}" if isinstance(value, np.ndarray) else \
                type(value).__name__
            raise GradcError(f"{what}: expected real numbers, got {got}") from None
        if shape in ((), (1, 1)):
            if arr.size != 1:
                raise GradcError(f"{what}: expected a scalar, got shape {arr.shape}")
            return float(arr.reshape(-1)[0])
        if arr.shape != shape and not (1 in shape and arr.shape == (shape[0] * shape[1],)):
            raise GradcError(f"{what}: expected shape {shape}, got {arr.shape}")
        return np.ascontiguousarray(arr.reshape(shape))

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
            try:
                arr = np.asarray(a)
            except (TypeError, ValueError):  # ragged nested lists
                raise GradcError(f"data {sym}: expected an array of real numbers, got a "
                                 f"{type(a).__name__} that numpy cannot make an array of") from None
            if arr.dtype.kind not in "biuf":
                raise GradcError(f"data {sym}: dtype {arr.dtype} is not a real number type")
            shape = self._shapes[sym]
            length = math.prod(shape)
            if isinstance(sym, sp.IndexedBase):  # (n, *shape), stored flat per example
                if arr.ndim < 1 or arr.shape[1:] != shape and not (
                        arr.ndim == 2 and arr.shape[1] == length):
                    raise GradcError(
                        f"data {sym}: expected shape (n, {', '.join(map(str, shape))}) (one "
                        f"{'x'.join(map(str, shape))} array per example), got {arr.shape}")
                arr = arr.reshape(arr.shape[0], length)
            elif length == 1:
                if arr.ndim != 1 and not (arr.ndim == 2 and arr.shape[1] == 1):
                    raise GradcError(
                        f"data {sym}: expected a 1-D array (one value per example), "
                        f"got shape {arr.shape}"
                    )
                arr = arr.reshape(-1)
            else:
                if arr.ndim == 3 and 1 in arr.shape[1:]:
                    arr = arr.reshape(arr.shape[0], -1)
                if arr.ndim != 2 or arr.shape[1] != length:
                    raise GradcError(
                        f"data {sym}: expected shape (n, {length}) for a "
                        f"{shape[0]}x{shape[1]} vector per example, got {arr.shape}"
                    )
            if n is None:
                n, first = arr.shape[0], sym
            elif arr.shape[0] != n:
                raise GradcError(f"data {sym} has {arr.shape[0]} examples but {first} has {n}")
            if sym in self._labels:
                self._check_labels(sym, arr)
            out.append(np.ascontiguousarray(arr, dtype=self.dtype))
        if n == 0:
            raise GradcError(f"empty batch: data {first} has 0 examples")
        for sym, c in zip(self.consts, args[nd:]):
            if type(c) in (float, int) and not self._shapes[sym]:
                out.append(float(c))
                continue
            try:
                arr = np.asarray(c)
            except (TypeError, ValueError):
                raise GradcError(f"const {sym}: expected a real number, got "
                                 f"{type(c).__name__}") from None
            if arr.dtype.kind not in "biuf" or (not self._shapes[sym] and arr.ndim != 0):
                raise GradcError(
                    f"const {sym}: expected a real scalar, got {arr.dtype} with shape {arr.shape}"
                )
            out.append(self._value(sym, arr, "const"))
        return out

    def _check_labels(self, sym, arr):
        k = self._labels[sym]
        if not arr.size:
            return
        dt = arr.dtype
        if dt.kind in "fi" and dt.itemsize in (4, 8) and dt.isnative:
            bad, lo, hi = _runtime.label_stats(arr)  # one pass, compiled
        elif dt.kind == "f":  # float16, long double, other byte orders: numpy
            ok = np.isfinite(arr) & (arr == np.round(arr))
            bad = int(np.count_nonzero(~ok))
            lo, hi = (arr[ok].min(), arr[ok].max()) if bad < arr.size else (0, 0)
        else:
            bad, lo, hi = 0, arr.min(), arr.max()
        if bad:
            wrong = arr[~(np.isfinite(arr) & (arr == np.round(arr)))][:3]
            raise GradcError(f"data {sym}: labels must be integers, got {wrong}")
        if lo < 0 or hi >= k:
            raise GradcError(
                f"data {sym}: labels must be in 0..{k - 1} (there are {k} classes), "
                f"got values from {arr.min():g} to {arr.max():g}"
            )

    # -- calls ------------------------------------------------------------------------------
    def _call(self, kernel, *args):
        with np.errstate(all="ignore"):
            out = kernel(*args)
        if isinstance(out, tuple) and (self.scalar_params or len(out) == 2
                                       and not isinstance(out[0], tuple)):
            return tuple(self._result(o) for o in out)
        return _plain(out) if not isinstance(out, tuple) else out

    def _result(self, o, like=None):
        """A kernel's gradient-like output as the methods return it: a list in wrt order
        for matrix params, each entry shaped like the value passed for it when ``like``
        (from :meth:`_passed_shapes`) says so."""
        if isinstance(o, (tuple, list)):  # gradients of matrix params: a list in wrt order
            if self.scalar_params and self.reduce is None and o and np.ndim(o[0]) == 1:
                # per-example gradients of scalar params beside matrix data: (n, P), as
                # a scalar model's
                return np.column_stack([np.asarray(e, dtype=np.float64) for e in o])
            like = like or (None,) * len(self.wrt)
            return [self._grad_entry(s, g, k) for s, g, k in zip(self.wrt, o, like)]
        return _plain(o)

    def _grad_entry(self, sym, g, like=None):
        if like is None and type(g) is np.ndarray and g.ndim:
            return g  # the common case: an array of the symbol's shape
        shape = self._shapes[sym]
        if shape and np.ndim(g) == 0:
            g = np.full(shape, float(g))
        if like is not None and like != np.shape(g):  # same size: _value checked it
            return float(np.reshape(g, ())) if like == () else np.reshape(g, like)
        return _plain(g)

    def _passed_shapes(self, values):
        """Per wrt symbol, the shape of the value this call passed for it where that
        differs from the symbol's own shape (a flat ``(8,)`` array for an ``(8, 1)`` or
        ``(1, 8)`` vector), else None; None overall when nothing differs.  The kernels
        take the symbol's shape; the gradient goes back in the caller's.  Computed from
        each call's own params (nothing stored on the object: calls from several threads
        with differently shaped params do not interfere)."""
        if self.scalar_params:
            return None
        if isinstance(values, dict):  # (checked by _params already)
            values = self._ordered(values, "params")
        out, differ = [], False
        for s, v in zip(self.wrt, values):
            shape = v.shape if isinstance(v, np.ndarray) else np.shape(v) if v is not None \
                else self._shapes[s]
            if shape == self._shapes[s] or not self._shapes[s]:
                out.append(None)
            else:
                out.append(tuple(shape))
                differ = True
        return tuple(out) if differ else None

    def _kernel(self, name):
        kernel = getattr(self.kernels, name, None)
        if kernel is None and self.output_shape not in ((), (1, 1)):
            raise GradcError(
                f"{name} needs a scalar output; this function's output is a "
                f"{self.output_shape[0]}x{self.output_shape[1]} matrix: use jacobian"
            )
        if kernel is None:
            arrays = [str(s) for s in self.wrt + self.data + self.consts if self._shapes[s]]
            raise GradcError(
                f"{name} is not available for reduce=None here: per-example gradients and "
                "Hessian-vector products are compiled for models of scalar symbols only, and "
                f"this one has matrix or indexed values ({', '.join(arrays)}). For "
                "per-example gradients use fn.jacobian(params, *data) (an (n, P) array, "
                "from compiled sweeps over the batch); for one gradient of the whole batch "
                "compile with reduce='sum' or 'mean'"
            )
        return kernel

    def value(self, params, *args):
        """The (reduced) value of the expression."""
        return self._call(self.kernels.value, self._params(params, "params"), *self._args(args))

    def grad(self, params, *args):
        """The gradient with respect to ``wrt`` (a vector, or a list for matrix params)."""
        out = self._call(self._kernel("grad"), self._params(params, "params"), *self._args(args))
        return out if self.packed else self._result(out, self._passed_shapes(params))

    def value_and_grad(self, params, *args):
        """``(value, gradient)`` in one pass (reverse mode)."""
        out = self._call(
            self._kernel("value_and_grad"), self._params(params, "params"), *self._args(args)
        )
        like = self._passed_shapes(params)
        return out if like is None else (out[0], self._result(out[1], like))

    def jvp(self, params, tangent, *args):
        """``(value, directional derivative along tangent)`` by forward mode."""
        return self._call(
            self.kernels.jvp, self._params(params, "params"), self._params(tangent, "tangent"),
            *self._args(args),
        )

    def hvp(self, params, tangent, *args):
        """The Hessian-vector product ``H @ tangent`` (the directional derivative of the
        gradient along ``tangent``), by forward over reverse mode: laid out like the
        gradient (one vector for scalar parameters, else a list in ``wrt`` order).

        Examples
        --------
        >>> import numpy as np, sympy as sp, gradc
        >>> a, b = sp.symbols("a b")
        >>> fn = gradc.compile(a**2 * b + b**3, wrt=[a, b], jit=False)
        >>> fn.hvp([1.0, 2.0], [1.0, 0.0]).tolist()  # H = [[2b, 2a], [2a, 6b]]
        [4.0, 2.0]
        """
        kernel = self._kernel("hvp")
        p = self._params(params, "params")
        t = self._params(tangent, "tangent")
        with np.errstate(all="ignore"):
            hv = kernel(p, t, *self._args(args))
        return self._result(hv, self._passed_shapes(params))

    def value_grad_hvp(self, params, tangent, *args):
        """``(value, gradient, Hessian-vector product along tangent)`` in one pass."""
        kernel = self._kernel("value_grad_hvp")
        p = self._params(params, "params")
        t = self._params(tangent, "tangent")
        with np.errstate(all="ignore"):
            value, g, hv = kernel(p, t, *self._args(args))
        like = self._passed_shapes(params)
        return _plain(value), self._result(g, like), self._result(hv, like)

    # -- flat parameter vectors and second derivatives ---------------------------------------
    @property
    def size(self):
        """P, the number of flattened parameters (``wrt`` in order, matrices row-major)."""
        if "size" not in self._second:
            self._second["size"] = sum(
                max(1, int(np.prod(self._shapes[s]))) if self._shapes[s] else 1
                for s in self.wrt)
        return self._second["size"]

    def pack(self, params, _checked=True):
        """``params`` (as the methods take them) as one flat float64 vector of length
        :attr:`size`: ``wrt`` in order, each matrix flattened row-major.

        Examples
        --------
        >>> import sympy as sp, gradc
        >>> W, a = sp.MatrixSymbol("W", 2, 2), sp.Symbol("a")
        >>> fn = gradc.compile(a * sp.trace(W), wrt=[W, a], jit=False)
        >>> fn.pack([[[1, 2], [3, 4]], 5.0]).tolist()
        [1.0, 2.0, 3.0, 4.0, 5.0]
        >>> fn.unpack([1, 2, 3, 4, 5.0])[0].tolist()
        [[1.0, 2.0], [3.0, 4.0]]
        """
        if self.scalar_params:
            return self._params(params, "params") if _checked else np.asarray(params, float)
        vals = self._params(params, "params") if _checked else params
        return np.concatenate([np.asarray(v, dtype=np.float64).reshape(-1) for v in vals])

    def unpack(self, x, _checked=True):
        """The inverse of :meth:`pack`: a flat vector as ``params``."""
        x = np.asarray(x, dtype=np.float64)
        if _checked and (x.ndim != 1 or x.shape[0] != self.size):
            raise GradcError(f"expected a flat vector of {self.size} values (the flattened "
                             f"parameters, see pack), got shape {x.shape}")
        if self.scalar_params:
            return x
        out, k = [], 0
        for s in self.wrt:
            shape = self._shapes[s]
            m = max(1, int(np.prod(shape)))
            out.append(x[k:k + m].reshape(shape) if shape not in ((), (1, 1)) else float(x[k]))
            k += m
        return out

    @property
    def packed(self):
        """Whether the kernels take the params packed in one float64 vector (a scalar
        model), rather than a tuple of one value per wrt symbol (also when those are all
        scalars, beside matrix or indexed data)."""
        if "packed" not in self._second:
            self._second["packed"] = is_scalar_model(self.expr, self.wrt, self.data, self.consts)
        return self._second["packed"]

    def _value_program(self):
        """The lowered value program: the one ``compile`` lowered, or, for a function
        loaded from the disk cache (which has only its source), lowered again on first
        use."""
        if "value" not in self._second:
            packed = self.packed
            self._second["value"] = lower(self.expr, self.wrt, self.data, self.consts,
                                          self.reduce, packed=packed, checked=True)
        return self._second["value"]

    def _vjp_program(self):
        if "vjp" not in self._second:
            per_example = self.reduce is None and bool(self.data)
            self._second["vjp"] = vjp_program(self._value_program(), per_example=per_example)
        return self._second["vjp"]

    def _hvp_program(self):
        if "hvp" not in self._second:
            self._second["hvp"] = hvp_program(self._vjp_program())
        return self._second["hvp"]

    def _scalar_output(self, what):
        if self.output_shape not in ((), (1, 1)):
            raise GradcError(
                f"{what} needs a scalar output; this function's output is a "
                f"{self.output_shape[0]}x{self.output_shape[1]} matrix: use jacobian")

    def hessian_sparsity(self):
        """The exact structural pattern of the Hessian with respect to the flattened
        parameters (see :meth:`pack`): a symmetric boolean ``scipy.sparse.csr_matrix``,
        read off the program (:mod:`gradc.sparsity`), without evaluating anything.

        Examples
        --------
        >>> import sympy as sp, gradc
        >>> x = sp.symbols("x0:4")
        >>> chain = sum((x[i + 1] - x[i] ** 2) ** 2 for i in range(3))
        >>> gradc.compile(chain, wrt=list(x), jit=False).hessian_sparsity().toarray().astype(int)
        array([[1, 1, 0, 0],
               [1, 1, 1, 0],
               [0, 1, 1, 1],
               [0, 0, 1, 1]])
        """
        from .sparsity import hessian_pattern

        self._scalar_output("hessian_sparsity")
        if "pattern" not in self._second:
            self._second["pattern"] = hessian_pattern(self._value_program())
        return self._second["pattern"].copy()

    def _coloured_jacobian_wins(self):
        """``mode="auto"`` without data: whether coloured JVP sweeps are predicted faster
        than the planned chain accumulation."""
        from .hessian import jvp_sweep_seconds

        if "coloured_wins" not in self._second:    # decided once: 50-600 us per call else
            try:
                planned = self.plan.seconds[self.plan.auto]
            except GradcError:
                self._second["coloured_wins"] = True
            else:
                k = self._jacobian_colouring().ncolours
                self._second["coloured_wins"] = k * jvp_sweep_seconds(self) < planned
        return self._second["coloured_wins"]

    def _jacobian_colouring(self, how="columns"):
        """The column (JVP) or row (VJP) colouring of the Jacobian pattern and its
        recovery (computed once)."""
        from .colouring import ColumnRecovery, RowRecovery, column_colouring

        key = ("jcolour", how)
        if key not in self._second:
            pattern = self.jacobian_sparsity()
            if how == "columns":
                self._second[key] = ColumnRecovery(pattern, column_colouring(pattern))
            else:
                self._second[key] = RowRecovery(pattern, column_colouring(pattern.T.tocsr()))
        return self._second[key]

    def jacobian_sparsity(self, *args):
        """The exact structural pattern of the Jacobian of the flattened output with
        respect to the flattened parameters: a boolean ``(outputs, P)`` csr matrix, the
        same for every example.

        Given the data (and consts) after params would be, for a function with data and
        ``reduce=None``: the pattern of the Jacobians of all ``n`` examples stacked, the
        one :meth:`jacobian` with ``sparse=True`` returns (``(n * outputs, P)``, rows
        example-major), exact for those data: a read at a data index (``cams[ci, 0]``)
        depends on the one element the index names in each example, where without the
        data it depends on every element it could name.  This is the ``jac_sparsity``
        that ``scipy.optimize.least_squares`` takes."""
        from .sparsity import jacobian_pattern

        if args:
            if not self.data or self.reduce is not None:
                raise GradcError("jacobian_sparsity(*data) is the pattern of per-example "
                                 "Jacobians: compile with data and reduce=None")
            from .hessian import stacked_colouring

            return stacked_colouring(self, self._args(args)).pattern.copy()
        if "jpattern" not in self._second:
            self._second["jpattern"] = jacobian_pattern(self._value_program())
        return self._second["jpattern"].copy()

    def _has_keys(self):
        """Some array is read at a data index (a gather: the Jacobian's pattern depends on
        the data)."""
        from .prims.loop import has_keys

        if "keyed" not in self._second:
            self._second["keyed"] = any(e.prim == "loop" and has_keys(e.params)
                                        for e in self._value_program().eqns)
        return self._second["keyed"]

    def _per_example(self):
        """This function compiled with ``reduce=None`` (for per-example Jacobians of a
        function that reduces over the batch), compiled on first use."""
        if self.reduce is None:
            return self
        if "per_example" not in self._second:
            self._second["per_example"] = compile(self.expr, self.wrt, self.data, self.consts,
                                                  reduce=None, jit=self.jit,
                                                  parallel=self.parallel)
        return self._second["per_example"]

    def _hessian_plan_for(self, n):
        from .hessian import plan_hessian

        self._scalar_output("hessian")
        self._kernel("hvp")  # a GradcError where there are no second derivatives
        key = ("plan", n if self.data else 1)
        if key not in self._second:
            self.hessian_sparsity()
            first = self._second.get(("plan", 1))
            measured = self._second.setdefault("hessian_times", {})
            self._second[key] = plan_hessian(self, n, self._second["pattern"],
                                             first.colour if first is not None else None,
                                             measured)
        return self._second[key]

    #: Hessian-vector products per kernel call in :meth:`hessian`: 1 uses the ``hvp``
    #: kernel; k > 1 an ``hvp_block`` kernel of k directions sharing one primal and one
    #: reverse pass (faster per Hessian, but its compile time grows with k: see
    #: :mod:`gradc.hessian`).
    HVP_BLOCK = 1

    def _hvp_block(self, k):
        """The ``hvp_block`` kernel for k directions per call (see :meth:`_block`)."""
        return self._block("hvp_block", k, "Hessian", lambda: hvp_block_spec(
            self._vjp_program(), k, "array" if self.scalar_params else "tuple"))

    def _jvp_block(self, k):
        """The ``jvp_block`` kernel for k directions per call (per-example and sparse
        Jacobians; see :meth:`_block`)."""
        return self._block("jvp_block", k, "Jacobian",
                           lambda: jvp_block_spec(self._value_program(), k))

    def _block(self, name, k, what, make_spec):
        """A kernel of k directions per call: one module of its own, generated and
        compiled on first use (and cached on disk like the others), so functions that
        never ask for a Hessian or a per-example Jacobian never pay for it."""
        key = (name, k)
        if key not in self._second:
            bkey = backend.make_key(getattr(self, "_key", ""), name, str(k))
            hit = backend.lookup(bkey) if self.jit else None
            if hit is not None and hit[1] is not None:
                source, manifest = hit
            else:
                source, manifest = generate(
                    [make_spec()], self.reduce, title=short(self.expr, 200) + f" ({what}, "
                    f"{k} directions per call)", version=__version__, parallel=self.parallel,
                    param_names=[s.name for s in self.wrt] if self.scalar_params else None,
                    dtype=self.dtype.name)
            kernels = backend.load(source, bkey, [name], jit=self.jit,
                                   parallel=self.parallel, manifest=manifest)
            self._second[key] = getattr(kernels, name)
        return self._second[key]

    def _sweeps(self, method):
        from .hessian import sweeps

        key = ("sweeps", method)
        if key not in self._second:
            self._second[key] = sweeps(self, self._hessian_plan_for(1), method)
        return self._second[key]

    @property
    def hessian_plan(self):
        """The :class:`gradc.hessian.HessianPlan`: dense against coloured Hessian sweeps,
        with the pattern, the colours, flops, memory and predicted time (for the batch
        size of the last :meth:`hessian` call, or 1,000 examples before any)."""
        return self._hessian_plan_for(self._second.get("last_n", 1000))

    @_in_own_dtype
    def hessian(self, params, *args, sparse=False, method="auto"):
        """The Hessian with respect to the flattened parameters (see :meth:`pack`).

        ``sparse=False`` returns a dense ``(P, P)`` array, ``True`` a
        ``scipy.sparse.csr_matrix`` holding the structural pattern, ``"auto"`` the csr
        matrix when at most a quarter of the entries are structural nonzeros.  ``method``
        is ``"auto"`` (the :attr:`hessian_plan`'s choice), ``"dense"`` (one HVP per
        parameter) or ``"coloured"`` (one HVP per colour of a star colouring of the
        pattern).  With ``reduce=None`` the Hessians are per example: ``(n, P, P)``.

        Examples
        --------
        >>> import sympy as sp, gradc
        >>> a, b = sp.symbols("a b")
        >>> fn = gradc.compile(a**2 * b + b**3, wrt=[a, b], jit=False)
        >>> fn.hessian([1.0, 2.0]).tolist()
        [[4.0, 2.0], [2.0, 12.0]]
        """
        from .hessian import hessian

        self._scalar_output("hessian")
        if self.data:
            try:
                self._second["last_n"] = int(np.shape(args[0])[0])
            except (IndexError, TypeError, ValueError):
                pass  # (hessian() checks the arguments and says what is wrong)
        return hessian(self, params, args, sparse=sparse, method=method)

    def memory(self, n=1):
        """Peak bytes of intermediate arrays each kernel holds at once for a batch of ``n``.

        Reverse mode keeps only the forward values its backward pass reads; arrays are
        released after their last use, and an elementwise result is written over an input
        array that is dead after it (``tanh(W x)`` over ``W x``).

        Returns
        -------
        dict
            Kernel name (``"value"``, ``"value_and_grad"``, ``"jvp"``) to bytes.

        Examples
        --------
        >>> import sympy as sp, gradc
        >>> from gradc import nn
        >>> x = sp.MatrixSymbol("x", 4, 1); W = sp.MatrixSymbol("W", 3, 4)
        >>> fn = gradc.compile(nn.sum(nn.tanh(W * x)), wrt=[W], data=[x], jit=False)
        >>> fn.memory(100)["value"]  # tanh(W x) over W x, then row sums: (3 + 1) x 100 x 8
        3200
        """
        from .codegen.arrays import peak_words

        table = self.manifest["memory"]
        size = self.dtype.itemsize
        return {k: size * int(peak_words([tuple(a) for a in v], n)) for k, v in table.items()}

    #: The kernels :meth:`warmup` compiles by default: the first-order ones.
    FIRST_ORDER = ("value", "value_and_grad", "grad", "jvp", "vjp")

    def warmup(self, kernels=None):
        """Compile kernels now (numba compiles each on its first call otherwise), on a
        batch of one example of zeros; returns ``self``.  Later calls of those kernels,
        in this process or, through the disk cache, another, start at once.

        ``kernels`` is None (the first-order kernels, :data:`FIRST_ORDER`), ``"all"``
        (the second-order ``value_grad_hvp`` and ``hvp`` too, which take longer to
        compile than all the others together: ``benchmarks/bench_hvp_block.py``) or a
        sequence of kernel names."""
        if isinstance(kernels, str) and kernels != "all":
            kernels = [kernels]
        if kernels is None:
            names = [k for k in self.manifest["kernels"] if k in self.FIRST_ORDER]
        elif kernels == "all":
            names = list(self.manifest["kernels"])
        else:
            names = list(kernels)
            unknown = [k for k in names if k not in self.manifest["kernels"]]
            if unknown:
                raise GradcError(f"warmup: no kernel {unknown[0]!r}; this function has "
                                 f"{', '.join(self.manifest['kernels'])}")
        if not self.jit:
            return self
        params = self._zeros_like_params()
        data = []
        for sym in self.data:
            shape = self._shapes[sym]
            data.append(np.zeros((1, shape[0] * shape[1])) if shape else np.zeros(1))
        consts = [np.zeros(self._shapes[s]) if self._shapes[s] else 0.0 for s in self.consts]
        args = data + [self._value(s, c, "const") for s, c in zip(self.consts, consts)]
        with np.errstate(all="ignore"):
            for name in names:
                # wrappers too: a wrapper is a function of its own for numba to compile
                info = self.manifest["kernels"][name]
                kernel = getattr(self.kernels, name)
                seeds = [params if a.startswith("tangent") else
                         (np.zeros(self.output_shape),) for a in info["arguments"]
                         if a.startswith(("tangent", "cotangent"))]
                kernel(params, *seeds, *args)
        return self

    def _zeros_like_params(self):
        if self.scalar_params:
            return np.zeros(len(self.wrt))
        return tuple(np.zeros(self._shapes[s]) if self._shapes[s] not in ((), (1, 1)) else 0.0
                     for s in self.wrt)

    def export(self, path):
        """Write the kernels as a standalone module needing only numpy and numba
        (see :mod:`gradc.export`); returns the path."""
        from .export import export

        return export(self, path)

    # -- Jacobians ---------------------------------------------------------------------------
    @property
    def engine(self):
        """The :class:`gradc.jacobian.JacobianEngine` (built on first use)."""
        if self._engine is None:
            from .jacobian import JacobianEngine

            prog = lower(self.expr, self.wrt, (), self.data + self.consts)
            self._engine = JacobianEngine(prog, jit=self.jit)
        return self._engine

    @property
    def plan(self):
        """The :class:`gradc.planner.report.Plan`: forward vs reverse vs optimal costs."""
        if self._plan is None:
            from .planner.report import Plan

            eng = self.engine
            self._plan = Plan.from_chain(eng.chain, eng.plan)
        return self._plan

    @_in_own_dtype
    def jacobian(self, params, *args, mode="auto", sparse=False, plan=None):
        """The Jacobian of the flattened output with respect to the flattened, concatenated
        ``wrt`` (shape ``(n_out, n_in)``; with data, one per example: ``(n, n_out, n_in)``).

        ``mode`` is ``"auto"`` (the plan predicted fastest on this machine),
        ``"forward"``, ``"reverse"``, ``"optimal"`` or ``"coloured"`` (one JVP per colour
        of a column colouring of the exact pattern :meth:`jacobian_sparsity`); all give
        the same Jacobian to rounding.  ``sparse=True`` returns a
        ``scipy.sparse.csr_matrix`` (computed by colouring).  Matrix parameters and
        matrix outputs are flattened row by row (C order) and planned like vectors: a
        classifier's softmax output with respect to its weight matrices works in every
        mode.

        ``plan`` forces a bracketing of the chain :attr:`plan` shows (as opt_einsum's
        ``optimize=path``): text in the notation of :mod:`gradc.planner.plan`, such as
        ``"MUL(TAN(F6, F5), ADJ(F4..F1))"``, or a :class:`gradc.planner.Step` tree;
        ``fn.plan.price(plan)`` says what it is predicted to cost.  It is checked against
        the chain (pieces covered once, in order; ``F3`` alone only for an explicit
        piece) and runs with ``mode="auto"`` or ``"optimal"``.

        With data, the Jacobian is per example, of the per-example value (whatever
        ``reduce``), computed for the whole batch at once by compiled sweeps: ``(n, P)``
        for a scalar output (the per-example gradients, by reverse mode, when the
        function has them; ``mode="forward"`` or ``"coloured"`` asks for JVP sweeps),
        ``(n, outputs, P)`` else, by coloured JVP sweeps, :data:`gradc.hessian.JVP_BLOCK`
        directions per kernel call sharing one primal pass (the colouring is of the
        stacked pattern of all examples, :meth:`jacobian_sparsity` given the data: a
        bundle adjustment problem needs 15 colours whatever its size).  ``sparse=True``
        returns the stacked ``(n * outputs, P)`` csr matrix (rows example-major), what
        ``scipy.optimize.least_squares`` takes.

        Examples
        --------
        >>> import numpy as np, sympy as sp, gradc
        >>> x = sp.MatrixSymbol("x", 3, 1)
        >>> fn = gradc.compile(sp.HadamardProduct(x, x) + x, wrt=[x], jit=False)
        >>> fn.jacobian_sparsity().nnz        # diagonal: one JVP gives all of it
        3
        >>> J = fn.jacobian([np.array([[1.0], [2.0], [3.0]])], sparse=True)
        >>> J.toarray().tolist()
        [[3.0, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 7.0]]
        """
        modes = ("auto", "forward", "reverse", "optimal", "coloured")
        if mode not in modes:
            raise GradcError(f"mode must be one of {', '.join(map(repr, modes))}, got {mode!r}")
        if sparse not in (False, True):
            raise GradcError(f"sparse must be True or False, got {sparse!r}")
        if plan is not None:
            if self.data or sparse or mode not in ("auto", "optimal"):
                raise GradcError("plan= forces a bracketing of the chain of a function "
                                 "without data, with mode='auto' or 'optimal' and sparse="
                                 f"False; got mode={mode!r}, sparse={sparse!r}"
                                 + (", and data" if self.data else ""))
            forced = self.plan.price(plan).steps
        if self.data:
            return self._data_jacobian(params, args, mode, sparse)
        if plan is None and (sparse or mode == "coloured"
                             or (mode == "auto" and self._coloured_jacobian_wins())):
            from .hessian import coloured_jacobian

            return coloured_jacobian(self, params, args, sparse)
        eng = self.engine
        if plan is not None:
            mode = "optimal"
        elif mode == "auto":
            mode = self.plan.auto
        p = self._params(params, "params")
        if self.scalar_params:
            p = tuple(float(v) for v in p)
        shapes = self._shapes
        p = tuple(np.ascontiguousarray(v).reshape(shapes[s]) if shapes[s] not in ((), (1, 1))
                  else float(np.asarray(v).reshape(-1)[0]) for s, v in zip(self.wrt, p))
        consts = self._args(args)
        with np.errstate(all="ignore"):
            return eng.evaluate(p, consts, mode, None if plan is None else forced)

    def _data_jacobian(self, params, args, mode, sparse):
        """Per-example Jacobians (see :meth:`jacobian`): the per-example gradients for a
        scalar output, else coloured JVP sweeps over the batch."""
        from .hessian import per_example_jacobian

        fn = self._per_example()
        if (not sparse and fn.output_shape == () and mode in ("auto", "reverse", "optimal")
                and getattr(fn.kernels, "grad", None) is not None):
            g = fn.grad(params, *args)
            if fn.scalar_params:
                return np.asarray(g, dtype=np.float64).reshape(-1, fn.size)
            n = np.shape(g[0])[0]
            return np.concatenate([np.reshape(e, (n, -1)) for e in g], axis=1)
        return per_example_jacobian(fn, params, args, sparse)
