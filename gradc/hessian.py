"""Hessians (dense or coloured sweeps of Hessian-vector products, planned as a value) and
Jacobians by coloured JVP sweeps.

Contract
--------
:func:`plan_hessian` builds a :class:`HessianPlan` for a compiled function with a scalar
output: the exact structural pattern of its Hessian (:func:`gradc.sparsity.hessian_pattern`),
a star colouring of it (:mod:`gradc.colouring`), and for each way of computing the Hessian
(``"dense"``: one HVP along each unit vector, P sweeps; ``"coloured"``: one HVP along each
colour's indicator vector, then direct recovery) the sweeps, the multiply-adds, the memory
and the calibrated predicted time (:mod:`gradc.planner.calibrate`); ``plan.choice`` is the
faster.  Each sweep is one call of the HVP kernel (the one ``fn.hvp`` uses, so a
Hessian compiles nothing more).  Setting ``CompiledFunction.HVP_BLOCK`` (class or
instance attribute) to k > 1 makes the sweeps run k directions per call of an
``hvp_block`` kernel sharing one primal and reverse pass, and the cost model counts them
so; that kernel holds k copies of the tangent code, so its compile time grows with k
while the run time it saves is a fraction (``benchmarks/bench_hvp_block.py``, in
docs/performance.md): it pays only for many Hessians of one function.  Printing the plan
prints that table.

:func:`hessian` evaluates it: the HVP kernel (``fn.kernels.hvp``) is called once
per sweep, and the Hessian read from the products.  Dense and coloured give the same
numbers up to rounding; the result is exactly symmetric (each pair is read once and
mirrored) and has exact zeros wherever the pattern does.  With ``reduce=None`` the result
is one dense Hessian per example, ``(n, P, P)``.

:func:`coloured_jacobian` computes the Jacobian of a function without data with one JVP
(``fn.kernels.jvp``) per colour of a column colouring of its exact pattern
(:func:`gradc.sparsity.jacobian_pattern`): columns that share no row share a sweep; or
with one VJP (``fn.kernels.vjp``) per colour of a row colouring, whichever
:func:`jacobian_sweeps` predicts faster (a function of many inputs and few outputs needs
few row colours).  :func:`per_example_jacobian` computes the Jacobians of all examples of
a function with data at once: the pattern is that of all examples stacked (exact for the
data's values when arrays are read at data indices, :func:`stacked_colouring`), and each
call of a ``jvp_block`` kernel pushes :data:`JVP_BLOCK` colours through one primal pass
over the whole batch.

P counts the flattened parameters: ``wrt`` in order, matrices row-major (the layout of
:meth:`gradc.CompiledFunction.pack`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
import time

import numpy as np

from .colouring import StarRecovery, colouring_work, seed_matrix, star_colouring
from .errors import GradcError
from .ir import size_of

#: Patterns whose colouring would take more than this much work (sum of squared degrees)
#: are computed dense: they are too dense for colouring to save sweeps.
MAX_COLOURING_WORK = 50_000_000


def sweep_work(prog):
    """``(blas, elementwise, batched)`` multiply-adds of one run of ``prog``: per example for
    batched values (returned in ``batched`` too), once for the rest."""
    blas = elem = per_blas = per_elem = 0.0
    for e in prog.eqns:
        if e.prim == "matmul":
            a, b_ = e.inputs
            (r, k), (_, c) = a.shape, b_.shape
            w, is_blas = float(r * k * c), True
        elif e.prim in ("constant", "eye"):
            continue
        else:
            w, is_blas = float(max(size_of(e.out.shape), max(
                (size_of(getattr(a, "shape", ())) for a in e.inputs), default=1))), False
        per = e.out.batched or e.prim == "batch_sum" or (e.prim == "matmul" and e.params)
        if per:
            per_blas += w * is_blas
            per_elem += w * (not is_blas)
        else:
            blas += w * is_blas
            elem += w * (not is_blas)
    return blas, elem, (per_blas, per_elem)


@dataclass(frozen=True)
class HessianOption:
    """One way of computing the Hessian: its sweeps, multiply-adds per example (or in all,
    without data), memory in bytes and predicted seconds for a batch of ``n``."""

    name: str
    sweeps: int
    work: float
    memory: int
    seconds: float


@dataclass(frozen=True)
class HessianPlan:
    """Dense against coloured Hessian accumulation for one compiled function.

    Attributes
    ----------
    size : int
        P, the number of flattened parameters.
    pattern : scipy.sparse.csr_matrix
        The exact structural pattern (boolean, symmetric).
    colour : numpy.ndarray or None
        The star colouring (None when the pattern was too dense to colour).
    options : tuple of HessianOption
    choice : str
        The option with the smallest predicted time.
    n : int or None
        The batch size the times are predicted for (None: no data).
    measured : dict
        ``(method, n) -> seconds`` of the last :func:`hessian` call of each method and
        batch size (shared by the function's plans); the table shows those for ``n``.
    """

    size: int
    pattern: object
    colour: object
    options: tuple
    choice: str
    n: int
    measured: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def colours(self):
        return None if self.colour is None else int(self.colour.max()) + 1 if self.size else 0

    def option(self, name):
        return next(o for o in self.options if o.name == name)

    def table(self) -> str:
        nnz = self.pattern.nnz
        head = (f"Hessian of {self.size} parameters: {nnz:,} structural nonzeros "
                f"({100.0 * nnz / max(self.size ** 2, 1):.1f}% of {self.size ** 2:,})"
                + (f", {self.colours} colours (star colouring)" if self.colour is not None
                   else ", too dense to colour"))
        lines = [head, f"  {'method':<10} {'HVP sweeps':>10} {'flops':>16} {'memory':>12} "
                       f"{'predicted':>12} {'measured':>12}"]
        for o in self.options:
            mark = "  <- chosen" if o.name == self.choice else ""
            got = self.measured.get((o.name, self.n or 1))
            lines.append(f"  {o.name:<10} {o.sweeps:>10,} {2 * o.work:>16,.0f} "
                         f"{_bytes(o.memory):>12} {_secs(o.seconds):>12} "
                         f"{_secs(got) if got is not None else '-':>12}{mark}")
        where = f"a batch of {self.n:,}" if self.n else "one evaluation (no data)"
        lines.append(f"  (predicted for {where}; measured: the last fn.hessian by that "
                     "method; flops count the HVP sweeps)")
        return "\n".join(lines)

    def __str__(self):
        return self.table()

    def __repr__(self):
        return (f"HessianPlan(size={self.size}, nnz={self.pattern.nnz}, "
                f"colours={self.colours}, choice={self.choice!r})")


def _bytes(b):
    for unit in ("B", "KB", "MB", "GB"):
        if b < 1024 or unit == "GB":
            return f"{b:,.0f} {unit}" if unit == "B" else f"{b:,.1f} {unit}"
        b /= 1024.0


def _secs(s):
    return f"{s * 1e6:,.1f} us" if s < 1e-3 else f"{s * 1e3:,.2f} ms" if s < 1 else f"{s:,.2f} s"


def plan_hessian(fn, n=1, pattern=None, colour=None, measured=None):
    """The :class:`HessianPlan` of compiled function ``fn`` for a batch of ``n`` (with
    its ``pattern`` and star ``colour``-ing when they are known already)."""
    from .planner.calibrate import MOVE_SECONDS, rates
    from .sparsity import hessian_pattern

    hprog = fn._hvp_program()
    gprog = fn._vjp_program()
    if pattern is None:
        pattern = hessian_pattern(fn._value_program())
    size = pattern.shape[0]
    if colour is None and size and colouring_work(pattern) <= MAX_COLOURING_WORK:
        colour = star_colouring(pattern)
    rate = rates()
    n_eff = max(int(n), 1) if fn.data else 1

    def cost(prog):  # (seconds, multiply-adds) of one run
        blas, elem, (pblas, pelem) = sweep_work(prog)
        secs = (blas + pblas * n_eff) / rate["blas"] + (elem + pelem * n_eff) / rate["elementwise"]
        return secs, blas + elem + (pblas + pelem) * n_eff

    # a block of directions shares one primal and reverse pass (the gradient's work);
    # each direction adds the rest of one HVP's work
    (g_secs, g_work), (h_secs, h_work) = cost(gprog), cost(hprog)
    t_secs, t_work = max(h_secs - g_secs, 0.0), max(h_work - g_work, 0.0)

    def sweeps_cost(k):
        calls = -(-k // fn.HVP_BLOCK) if k > 1 else 1
        return (calls * (g_secs + MOVE_SECONDS) + k * t_secs, calls * g_work + k * t_work)

    per = n_eff if fn.reduce is None and fn.data else 1
    secs, work = sweeps_cost(size)
    options = [HessianOption("dense", size, work, 8 * per * size * size + 8 * size * size, secs)]
    if colour is not None:
        k = int(colour.max()) + 1
        recover = 2e-9 * per * pattern.nnz
        mem = 8 * per * (size * k + pattern.nnz) + 12 * pattern.nnz
        secs, work = sweeps_cost(k)
        options.append(HessianOption("coloured", k, work, mem, secs + recover))
    choice = min(options, key=lambda o: o.seconds).name
    return HessianPlan(size, pattern, colour, tuple(options), choice,
                       n_eff if fn.data else None, measured if measured is not None else {})


def _symmetric_reads(rec):
    """Make a recovery read each off-diagonal pair once: entry (i, j) with i > j reads
    where (j, i) does, so the result is exactly symmetric."""
    m = rec.pattern
    size = m.shape[0]
    rows = np.repeat(np.arange(size), np.diff(m.indptr))
    cols = m.indices
    keys = rows.astype(np.int64) * size + cols
    tkeys = cols.astype(np.int64) * size + rows
    pos = np.searchsorted(keys, tkeys)  # csr order with sorted indices is sorted by key
    lower = rows > cols
    r, c = rec.rows_read.copy(), rec.cols_read.copy()
    r[lower], c[lower] = r[pos[lower]], c[pos[lower]]
    rec.set_reads(r, c)
    return rec


def hessian(fn, params, args, sparse=False, method="auto"):
    """The Hessian of ``fn`` at ``params`` (see :meth:`gradc.CompiledFunction.hessian`)."""
    if isinstance(sparse, (bool, np.bool_)):
        sparse = bool(sparse)
    elif sparse != "auto":
        raise GradcError(f"sparse must be True, False or 'auto', got {sparse!r}")
    if method not in ("auto", "dense", "coloured"):
        raise GradcError(f"method must be 'auto', 'dense' or 'coloured', got {method!r}")
    kernel = fn._kernel("hvp")
    p = fn._params(params, "params")
    vals = fn._args(args)
    n = vals[0].shape[0] if fn.data else 1
    plan = fn._hessian_plan_for(1)  # the choice does not depend on n: both scale with it
    per_example = fn.reduce is None and bool(fn.data)
    if sparse is True and per_example:
        raise GradcError("per-example Hessians (reduce=None) come back dense, (n, P, P): "
                         "use sparse=False")
    if method == "auto":
        method = plan.choice
    if method == "coloured" and plan.colour is None:
        raise GradcError(f"the Hessian pattern is too dense to colour ({plan.pattern.nnz:,} "
                         f"nonzeros of {plan.size ** 2:,}): use method='dense'")
    start = time.perf_counter()
    rec, tangents = fn._sweeps(method)
    size, k = plan.size, len(tangents)
    products = np.empty((n, k, size) if per_example else (k, size))
    width = min(k, fn.HVP_BLOCK)
    with np.errstate(all="ignore"):
        if width <= 1:  # the HVP kernel, once per direction
            for c, t in enumerate(tangents):
                hv = kernel(p, t, *vals)
                products[..., c, :] = _flat_products(fn, hv)
        else:  # blocks of directions sharing one primal and one reverse pass
            block = fn._hvp_block(width)
            for start in range(0, k, width):
                seeds = _block_seeds(fn, tangents, start, width)
                out = block(p, seeds, *vals)
                for c in range(min(width, k - start)):
                    products[..., start + c, :] = _flat_products(fn, out[2 + c])
    out = _assemble(products, rec, plan.pattern, method, sparse, per_example, n)
    plan.measured[(method, n if fn.data else 1)] = time.perf_counter() - start
    return out


def _assemble(products, rec, pattern, method, sparse, per_example, n):
    """The Hessian(s) from the HVP products, in the form :func:`hessian` returns."""
    size = pattern.shape[0]
    if method == "dense" and not per_example and sparse is not True and (
            sparse is False or pattern.nnz > size * size // 4):
        return _dense_from_columns(products, pattern)
    values = rec.values(products)
    if per_example:
        out = np.zeros((n, size, size))
        rows = np.repeat(np.arange(size), np.diff(pattern.indptr))
        out[:, rows, pattern.indices] = values
        return out
    from .sparsity import _scipy_sparse

    h = _scipy_sparse().csr_matrix((values, pattern.indices.copy(), pattern.indptr.copy()),
                                   shape=(size, size))
    if sparse is True or (sparse == "auto" and pattern.nnz <= size * size // 4):
        return h
    return h.toarray()


def sweeps(fn, plan, method):
    """``(recovery, tangents)`` of a method: the reads, and the seed columns as the HVP
    kernel takes its tangent (checked once)."""
    if method == "dense":
        rec, colour = dense_recovery(plan), np.arange(plan.size)
    else:
        rec, colour = star_recovery(plan), plan.colour
    seeds = seed_matrix(colour, int(colour.max()) + 1 if colour.size else 0)
    tangents = [fn._params(fn.unpack(np.ascontiguousarray(seeds[:, c])), "tangent")
                for c in range(seeds.shape[1])]
    return rec, tangents


def _dense_from_columns(products, pattern):
    """The dense Hessian from its columns ``products[c] = H e_c``, without going through
    the csr pattern: the upper triangle mirrored (exactly symmetric), structural zeros set
    to 0 (a NaN from ``0 * inf`` cannot appear where the pattern says no path exists)."""
    h = np.triu(products.T)
    h += np.triu(h, 1).T
    if pattern.nnz < h.size:
        h[~pattern.toarray()] = 0.0
    return h


def _flat_products(fn, hv):
    """One direction's HVP kernel output as flat rows: ``(P,)``, or ``(n, P)`` per example."""
    if fn.packed:
        return hv
    if fn.scalar_params:  # one value (or one per example) per scalar param
        return np.asarray(fn._result(hv), dtype=np.float64)
    return fn.pack(fn._result(hv), False)


def _block_seeds(fn, tangents, start, width):
    """Directions ``start .. start + width`` as the ``hvp_block`` kernel takes them (a
    ``(width, P)`` array, or one flat tuple of parameter tuples), padded with zeros."""
    chosen = tangents[start:start + width]
    if fn.packed:
        out = np.zeros((width, fn.size))
        out[:len(chosen)] = chosen
        return out
    zero = tuple(np.zeros_like(t) if isinstance(t, np.ndarray) else 0.0 for t in tangents[0])
    chosen = list(chosen) + [zero] * (width - len(chosen))
    return tuple(entry for t in chosen for entry in t)


def dense_recovery(plan):
    """The reads of a dense computation (one sweep per unit vector, that is, every
    parameter a colour of its own), made symmetric."""
    return _symmetric_reads(StarRecovery(plan.pattern, np.arange(plan.size)))


def star_recovery(plan):
    """The :class:`gradc.colouring.StarRecovery` of a plan's colouring, made symmetric."""
    return _symmetric_reads(StarRecovery(plan.pattern, plan.colour))


def jvp_sweep_seconds(fn, n=1):
    """Predicted seconds of one JVP sweep of ``fn`` over a batch of ``n`` (one kernel call)."""
    from .ad import jvp_program
    from .planner.calibrate import MOVE_SECONDS, rates

    if "jvp" not in fn._second:
        fn._second["jvp"] = jvp_program(fn._value_program())
    blas, elem, (pblas, pelem) = sweep_work(fn._second["jvp"])
    rate = rates()
    n = n if fn.data else 1
    return (blas + pblas * n) / rate["blas"] + (elem + pelem * n) / rate["elementwise"] \
        + MOVE_SECONDS


def jacobian_sweeps(fn):
    """``"columns"`` (one JVP per colour of the columns) or ``"rows"`` (one VJP per colour
    of the rows, for functions with a ``vjp`` kernel): whichever is predicted faster."""
    from .planner.calibrate import MOVE_SECONDS, rates

    if getattr(fn.kernels, "vjp", None) is None:
        return "columns"
    if "vjp_prog" not in fn._second:
        from .ad import vjp_program

        fn._second["vjp_prog"] = vjp_program(fn._value_program(), seed="input")
    blas, elem, _ = sweep_work(fn._second["vjp_prog"])
    rate = rates()
    vjp_secs = blas / rate["blas"] + elem / rate["elementwise"] + MOVE_SECONDS
    cols = fn._jacobian_colouring("columns").ncolours * jvp_sweep_seconds(fn)
    rows = fn._jacobian_colouring("rows").ncolours * vjp_secs
    return "rows" if rows < cols else "columns"


#: At most this many directions per call of the ``jvp_block`` kernel in
#: :func:`per_example_jacobian` (the colours are split into calls of equal width, the last
#: padded with zero directions).  One primal pass is shared by the directions of a call;
#: the kernel's compile time grows with the width.  Bundle adjustment at ADBench's
#: smallest size, 14 colours, one CPU (``benchmarks/bench_adbench.py --ba``): width 2,
#: 75 ms per Jacobian and 5.0 s for its first call; 4, 44 ms and 5.9 s; 7, 49 ms and 9.7 s.
JVP_BLOCK = 4


def key_values(fn, vals):
    """``{name: int64 values}`` of the integer scalar data and consts (the inputs a read
    at a data index can use), from checked arguments; a non-integer value is a
    :class:`GradcError` naming the symbol and the example."""
    out = {}
    nd = len(fn.data)
    for k, (sym, v) in enumerate(zip(fn.data + fn.consts, vals)):
        if fn._shapes[sym] != () or not sym.is_integer:
            continue
        arr = np.asarray(v, dtype=np.float64)
        iv = arr.astype(np.int64)
        bad = np.flatnonzero(iv.reshape(-1) != arr.reshape(-1))
        if bad.size:
            role = "data" if k < nd else "const"
            where = f"[{int(bad[0])}]" if k < nd else ""
            value = float(arr.reshape(-1)[bad[0]])
            raise GradcError(f"{role} {sym}{where} = {value!r}: an index must be an integer")
        out[sym.name] = iv
    return out


def stacked_colouring(fn, vals):
    """The exact pattern of the Jacobians of all examples stacked (``(n * outputs, P)``,
    rows example-major; :func:`gradc.sparsity.jacobian_pattern` with the data's key
    values) and its column colouring, as a :class:`ColumnRecovery` (the last one is kept:
    a least-squares solver asks again for the same data)."""
    import hashlib

    from .colouring import ColumnRecovery, column_colouring
    from .sparsity import jacobian_pattern

    n = int(vals[0].shape[0])
    keys = key_values(fn, vals)
    h = hashlib.blake2b(str(n).encode(), digest_size=16)
    for name in sorted(keys):
        h.update(name.encode())
        h.update(np.ascontiguousarray(keys[name]).tobytes())
    digest = h.hexdigest()
    hit = fn._second.get("stacked")
    if hit is None or hit[0] != digest:
        prog = fn._value_program()
        if keys and fn._has_keys():
            pattern = jacobian_pattern(prog, keys, n)
        else:  # the same pattern for every example: colour one, stack the colours' reads
            pattern = _tile_rows(fn.jacobian_sparsity(), n)
        hit = (digest, ColumnRecovery(pattern, column_colouring(pattern)))
        fn._second["stacked"] = hit
    return hit[1]


def _tile_rows(pattern, n):
    """``n`` copies of a csr pattern stacked on the rows."""
    from .sparsity import _scipy_sparse

    m, p = pattern.shape
    ip = (pattern.indptr[:-1][None, :] + (np.arange(n) * pattern.nnz)[:, None]).reshape(-1)
    ip = np.concatenate([ip, [n * pattern.nnz]])
    return _scipy_sparse().csr_matrix((np.ones(n * pattern.nnz, dtype=bool),
                                       np.tile(pattern.indices, n), ip), shape=(n * m, p))


def _blocks(fn, rec):
    """``(width, seeds)``: the colours' indicator directions as ``jvp_block`` takes them,
    in calls of equal width (14 colours and ``JVP_BLOCK = 4``: four calls of 4, the last
    two padded), kept with the colouring they belong to."""
    if getattr(rec, "blocks", None) is None:
        k = rec.ncolours
        calls = -(-k // JVP_BLOCK)
        width = -(-k // calls)
        seeds = seed_matrix(rec.colour, k)
        tangents = [fn._params(fn.unpack(np.ascontiguousarray(seeds[:, c]), _checked=False),
                               "tangent") for c in range(k)]
        rec.blocks = (width, [_block_seeds(fn, tangents, s, width) for s in range(0, k, width)])
    return rec.blocks


def per_example_jacobian(fn, params, args, sparse=False):
    """The Jacobians of a function with data and ``reduce=None``, one per example, from
    compiled sweeps over the whole batch: one ``jvp_block`` call per :data:`JVP_BLOCK`
    colours of the stacked pattern (:func:`stacked_colouring`), the directional
    derivatives of every example read into the stacked csr matrix ``(n * outputs, P)``
    (``sparse``), else dense: ``(n, outputs, P)``, or ``(n, P)`` for a scalar output."""
    p = fn._params(params, "params")
    vals = fn._args(args)
    n = int(vals[0].shape[0])
    m = size_of(fn.output_shape)
    rec = stacked_colouring(fn, vals)
    k = rec.ncolours
    products = np.empty((k, n * m))
    if k:
        width, blocks = _blocks(fn, rec)
        kernel = fn._jvp_block(width)
        with np.errstate(all="ignore"):
            for b, block in enumerate(blocks):
                out = kernel(p, block, *vals)
                for c in range(min(width, k - b * width)):
                    products[b * width + c] = np.asarray(out[1 + c]).reshape(-1)
    from .sparsity import _scipy_sparse

    pat = rec.pattern
    j = _scipy_sparse().csr_matrix((rec.values(products), pat.indices.copy(),
                                    pat.indptr.copy()), shape=pat.shape)
    if sparse:
        return j
    dense = j.toarray()
    return dense.reshape((n, fn.size) if fn.output_shape == () else (n, m, fn.size))


def coloured_jacobian(fn, params, args, sparse=False):
    """The Jacobian of ``fn``'s flattened output (a function without data) by coloured
    JVPs or VJPs (see the module docstring): a csr matrix with ``sparse``, else dense
    ``(outputs, P)``."""
    how = jacobian_sweeps(fn)
    rec = fn._jacobian_colouring(how)
    p = fn._params(params, "params")
    vals = fn._args(args)
    k = rec.ncolours
    pattern = rec.pattern
    m = pattern.shape[0]
    width = m if how == "columns" else fn.size  # the length of one product
    seeds = seed_matrix(rec.colour, k) if k else np.zeros((rec.colour.size, 0))
    products = np.empty((k, width))
    with np.errstate(all="ignore"):
        for c in range(k):
            seed = np.ascontiguousarray(seeds[:, c])
            if how == "columns":
                t = fn._params(fn.unpack(seed), "tangent")
                products[c, :] = np.asarray(fn.kernels.jvp(p, t, *vals)[1],
                                            dtype=np.float64).reshape(m)
            else:
                ct = (seed.reshape(fn.output_shape),)
                g = fn.kernels.vjp(p, ct, *vals)[1]
                products[c, :] = fn.pack(fn._result(g), _checked=False)
    values = rec.values(products)
    from .sparsity import _scipy_sparse

    j = _scipy_sparse().csr_matrix((values, pattern.indices.copy(), pattern.indptr.copy()),
                                   shape=pattern.shape)
    return j if sparse else j.toarray()
