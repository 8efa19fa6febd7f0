"""Data-parallel gradients over chunked Dask arrays (optional: ``pip install gradc[dask]``).

Contract
--------
:func:`value_and_grad` evaluates a compiled function's reduced value and gradient over
Dask arrays whose batch axis (axis 0) is chunked: one task per chunk runs the compiled
kernel with ``reduce="sum"`` and returns its partial sums and example count; the partials
are combined pairwise in a fixed binary tree, so the result equals the single-process call
to rounding (and is the same from run to run).  It uses whatever Dask scheduler is active
(a ``dask.distributed`` Client, threads, ...).  The compiled function travels to workers by
pickling, which rebuilds it from gradc's disk cache.  If any task fails (a bad chunk, a
lost worker), the error is raised: a gradient is never returned from part of the data.
"""

from __future__ import annotations

import numpy as np

from .errors import GradcError


def _require_dask():
    try:
        import dask
        import dask.array as da
    except ImportError:  # pragma: no cover - exercised only without the extra
        raise GradcError("gradc.dask needs Dask: pip install 'gradc[dask]'") from None
    return dask, da


def _partial(fn_sum, params, consts, *blocks):
    v, g = fn_sum.value_and_grad(params, *blocks, *consts)
    return v, g, int(np.shape(blocks[0])[0])


def _combine(a, b):
    va, ga, na = a
    vb, gb, nb = b
    if isinstance(ga, list):
        g = [x + y for x, y in zip(ga, gb)]
    else:
        g = ga + gb
    return va + vb, g, na + nb


def _tree(items, combine):
    """Pairwise reduction in a fixed order: ((0 1) (2 3)) ..."""
    while len(items) > 1:
        nxt = [combine(items[i], items[i + 1]) for i in range(0, len(items) - 1, 2)]
        if len(items) % 2:
            nxt.append(items[-1])
        items = nxt
    return items[0]


def value_and_grad(fn, params, *arrays, consts=()):
    """Reduced ``(value, grad)`` of ``fn`` over Dask arrays chunked along the batch axis.

    Parameters
    ----------
    fn : CompiledFunction
        Compiled with ``reduce="mean"`` or ``"sum"``.
    params
        As for ``fn.value_and_grad``.
    *arrays : dask.array.Array or numpy.ndarray
        One per data symbol, batch on axis 0; they are aligned to the first one's chunks.
    consts : sequence
        The const values.

    Examples
    --------
    >>> import numpy as np, sympy as sp, dask.array as da, gradc
    >>> import gradc.dask
    >>> w, x = sp.symbols("w x")
    >>> fn = gradc.compile((w * x - 1) ** 2, wrt=[w], data=[x], jit=False)
    >>> X = da.from_array(np.arange(10.0), chunks=3)
    >>> v, g = gradc.dask.value_and_grad(fn, [0.5], X)
    >>> bool(np.isclose(v, fn.value([0.5], np.arange(10.0))))
    True
    """
    dask, da = _require_dask()
    from . import compile as gradc_compile

    if fn.reduce not in ("mean", "sum"):
        raise GradcError("gradc.dask.value_and_grad needs reduce='mean' or 'sum'")
    if len(arrays) != len(fn.data) or not arrays:
        raise GradcError(f"expected {len(fn.data)} data array(s) ({', '.join(map(str, fn.data))})")
    arrs = [a if isinstance(a, da.Array) else da.from_array(np.asarray(a)) for a in arrays]
    n = arrs[0].shape[0]
    for sym, a in zip(fn.data, arrs):
        if a.shape[0] != n:
            raise GradcError(f"data {sym} has {a.shape[0]} examples but {fn.data[0]} has {n}")
    if n == 0:
        raise GradcError(f"empty batch: data {fn.data[0]} has 0 examples")
    chunks = arrs[0].chunks[0]
    arrs = [a.rechunk({0: chunks, **{k: -1 for k in range(1, a.ndim)}}) for a in arrs]
    fn_sum = fn if fn.reduce == "sum" else gradc_compile(
        fn.expr, fn.wrt, fn.data, fn.consts, reduce="sum", jit=fn.jit, parallel=fn.parallel)
    fn_sum._params(params, "params")  # validate here, not on a worker
    blocks = [a.to_delayed().reshape(-1) for a in arrs]
    part = dask.delayed(_partial, pure=True)
    parts = [part(fn_sum, params, tuple(consts), *[b[i] for b in blocks])
             for i in range(len(chunks))]
    total = _tree(parts, dask.delayed(_combine, pure=True))
    (v, g, count), = dask.compute(total)
    if count != n:  # cannot happen unless a chunk went missing
        raise GradcError(f"the reduction covered {count} of {n} examples")
    if fn.reduce == "mean":
        v = v / n
        g = [x / n for x in g] if isinstance(g, list) else g / n
    return v, g
