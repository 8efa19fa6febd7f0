"""Exact structural sparsity of Hessians and Jacobians, read off the IR.

Contract
--------
:func:`hessian_pattern` takes a value program with one scalar output and returns the
structural pattern of its Hessian with respect to the flattened parameters (every
``param`` input, in order, each flattened row-major): a symmetric boolean
``scipy.sparse.csr_matrix``.  :func:`jacobian_pattern` takes a program with one output of
any shape and returns the pattern of the Jacobian of the flattened output.

Both walk the equations that the output needs, once, in order, keeping for every element
of every value the set of parameters it depends on (its *dependencies*).  Each primitive
says, in its own block (:meth:`gradc.prims.Primitive.sparsity`), how the dependencies of
its inputs become those of its output, and which sets of parameters *meet* in it: enter
with a nonzero second derivative (both factors of a product, the argument of ``tanh``
with itself, every pair of elements of a ``logsumexp``).  Parameter ``i`` and ``j`` are a
structural nonzero of the Hessian exactly when they meet in some equation the output
needs.  The rules follow the same partial derivatives as the AD transforms
(:func:`gradc.prims.partials`, with gradc's conventions: ``relu'' = 0``), so a pair the
pattern calls zero is zero in every Hessian gradc computes, at every point; a pair it
calls nonzero can still be zero at some points or cancel (``(a + b)**2 - 2*a*b`` has
``d2/da db = 0`` after sympy's own simplification only if sympy sees it).  A primitive
without its own rule falls back to the conservative one: every output element depends
on all its inputs' parameters, and all of them meet.

Nothing here recurses; the work is linear in the number of equations times the number of
elements of their values (a matrix product is ``rows x inner x cols`` set unions).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import GradcError
from .ir import Lit, Var, size_of

EMPTY = frozenset()


def deps_array(shape, fill=EMPTY):
    """An object array of ``shape`` (``()``: 0-d) holding ``fill`` in every entry."""
    out = np.empty(tuple(shape), dtype=object)
    for idx in np.ndindex(out.shape):
        out[idx] = fill
    return out


def whole(deps) -> frozenset:
    """The union of all entries of a dependency array."""
    flat = deps.reshape(-1)
    if flat.size == 1:
        return flat[0]
    return frozenset().union(*flat)


_union2 = np.frompyfunc(lambda a, b: a | b, 2, 1)


def union(*arrays):
    """Elementwise union with numpy broadcasting (scalars against matrices)."""
    out = arrays[0]
    for a in arrays[1:]:
        out = _union2(out, a)
    return _as_array(out)


def _as_array(x):
    if isinstance(x, np.ndarray):
        return x
    out = np.empty((), dtype=object)
    out[()] = x
    return out


def broadcast_to(deps, shape):
    """``deps`` repeated over ``shape`` (a fresh, writable array)."""
    return np.array(np.broadcast_to(deps, tuple(shape)), dtype=object)


class Pattern:
    """The symmetric set of parameter pairs that meet, gathered as blocks ``A x B``.

    Blocks are kept as pairs of sets (the same block met by many elements is stored once);
    past :data:`DENSE_AFTER` pairs the pattern switches to a dense boolean matrix."""

    #: Pairs (counting repeats across blocks) before a dense matrix is cheaper.
    DENSE_AFTER = 20_000_000

    def __init__(self, size: int):
        self.size = size
        self.blocks: set = set()
        self.count = 0
        self.dense = None

    def meet(self, a: frozenset, b: frozenset) -> None:
        """Every parameter of ``a`` meets every one of ``b`` (and the other way round)."""
        if not a or not b:
            return
        key = (a, b) if hash(a) <= hash(b) else (b, a)
        if self.dense is not None:
            self._fill(*key)
            return
        if key in self.blocks:
            return
        self.blocks.add(key)
        self.count += len(a) * len(b)
        if self.count > self.DENSE_AFTER and self.size ** 2 <= 4 * self.DENSE_AFTER:
            self.dense = np.zeros((self.size, self.size), dtype=bool)
            for blk in self.blocks:
                self._fill(*blk)
            self.blocks = set()

    def meet_elementwise(self, a, b) -> None:
        """Element ``e`` of ``a`` meets element ``e`` of ``b`` (numpy broadcasting)."""
        a, b = np.broadcast_arrays(a, b)
        for x, y in zip(a.reshape(-1), b.reshape(-1)):
            self.meet(x, y)

    def _fill(self, a, b):
        ia, ib = np.fromiter(a, np.int64, len(a)), np.fromiter(b, np.int64, len(b))
        self.dense[np.ix_(ia, ib)] = True
        self.dense[np.ix_(ib, ia)] = True

    def csr(self):
        """The pattern as a symmetric boolean ``scipy.sparse.csr_matrix``."""
        sparse = _scipy_sparse()
        if self.dense is not None:
            return sparse.csr_matrix(self.dense)
        rows, cols = [], []
        for a, b in self.blocks:
            ia, ib = np.fromiter(a, np.int64, len(a)), np.fromiter(b, np.int64, len(b))
            r, c = np.repeat(ia, len(ib)), np.tile(ib, len(ia))
            rows += [r, c]
            cols += [c, r]
        return _bool_csr(rows, cols, (self.size, self.size))


def _bool_csr(rows, cols, shape):
    sparse = _scipy_sparse()
    r = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    c = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    m = sparse.coo_matrix((np.ones(r.size, dtype=np.int8), (r, c)), shape=shape).tocsr()
    m.sum_duplicates()
    m.data = np.ones(m.data.size, dtype=bool)
    m.sort_indices()
    return m


def _scipy_sparse():
    try:
        import scipy.sparse as sparse
    except ImportError:  # pragma: no cover - scipy comes with the test and examples extras
        raise GradcError("sparse patterns and Hessians need scipy: pip install scipy") from None
    return sparse


def parameter_offsets(prog):
    """``[(input, offset)]``: where each ``param`` input starts in the flat vector, and
    the total length."""
    out, k = [], 0
    for inp in prog.inputs_of("param"):
        out.append((inp, k))
        k += size_of(inp.var.shape)
    return out, k


@dataclass(frozen=True)
class Gather:
    """A dependency known only with the data: the element ``at`` of the value ``table``
    (a variable id), with the value of the key variable ``keys[d]`` added to the index on
    each axis ``d`` that has one (``None`` elsewhere).  Made by the ``loop`` rule for a
    read at a data index, when the pattern is taken for given data."""

    table: int
    at: tuple
    keys: tuple


def propagate(prog, pattern=None, outputs=None, tables=None):
    """The dependency arrays of the values ``outputs`` (default: the program's outputs)
    need, recording meetings into ``pattern`` when one is given; ``tables``, a dict,
    receives the dependency array of every value (to resolve :class:`Gather` entries)."""
    from .codegen.emit import needed_eqns
    from .prims import registry

    outputs = list(prog.outputs if outputs is None else outputs)
    deps: dict[int, np.ndarray] = {}
    offsets, _ = parameter_offsets(prog)
    for inp, k in offsets:
        shape = inp.var.shape
        arr = np.empty(size_of(shape), dtype=object)
        arr[:] = [frozenset((k + flat,)) for flat in range(arr.size)]
        deps[inp.var.id] = arr.reshape(shape)
    for inp in prog.inputs:
        if inp.var.id not in deps:
            deps[inp.var.id] = deps_array(inp.var.shape)
    eqns, _ = needed_eqns(prog, outputs)
    sink = pattern if pattern is not None else _NoPattern()
    for e in eqns:
        ins = [deps_array(()) if isinstance(a, Lit) else deps[a.id] for a in e.inputs]
        out = registry[e.prim].sparsity(e, ins, sink)
        if out.shape != tuple(e.out.shape):
            raise GradcError(f"internal: sparsity rule of {e.prim} gave shape {out.shape} "
                             f"for a value of shape {e.out.shape}")
        deps[e.out.id] = out
    if tables is not None:
        tables.update(deps)
    return [deps[o.id] if isinstance(o, Var) else deps_array(()) for o in outputs]


class _NoPattern:
    gathers = False  # a read at a data index: every element it could name (see Gather)

    def meet(self, a, b):
        pass

    def meet_elementwise(self, a, b):
        pass


def hessian_pattern(prog):
    """The structural pattern of the Hessian of ``prog``'s scalar output (see the module
    docstring): a symmetric boolean ``(P, P)`` csr matrix.

    Examples
    --------
    >>> import sympy as sp
    >>> from gradc.frontend import lower
    >>> a, b, c = sp.symbols("a b c")
    >>> hessian_pattern(lower(a * b + sp.exp(c) + a, wrt=[a, b, c])).toarray().astype(int)
    array([[0, 1, 0],
           [1, 0, 0],
           [0, 0, 1]])
    """
    (out,) = prog.outputs
    if isinstance(out, Var) and out.shape != ():
        raise GradcError("a Hessian needs a scalar output; this one is "
                         f"{'x'.join(map(str, out.shape))}: use jacobian")
    _, size = parameter_offsets(prog)
    pattern = Pattern(size)
    propagate(prog, pattern)
    return pattern.csr()


def jacobian_pattern(prog, keys=None, n=1):
    """The structural pattern of the Jacobian of ``prog``'s flattened output with respect
    to the flattened parameters: a boolean ``(outputs, P)`` csr matrix.

    With ``keys`` (``{input name: integer values}``, an ``(n,)`` array for data, a number
    for a const: the integer inputs the program reads other arrays at), the pattern is
    the exact one for those values, of the outputs of all ``n`` examples stacked (row
    ``e * outputs + r`` for output ``r`` of example ``e``): a read at a data index
    depends on the one element that index names in each example (:class:`Gather`).
    Without, such a read depends on every element it could name."""
    if keys is not None:
        return _keyed_pattern(prog, keys, n)
    (out,) = propagate(prog)
    _, size = parameter_offsets(prog)
    rows, cols = [], []
    for r, dset in enumerate(out.reshape(-1)):
        if dset:
            cols.append(np.fromiter(sorted(dset), np.int64, len(dset)))
            rows.append(np.full(len(dset), r, np.int64))
    return _bool_csr(rows, cols, (out.size, size))


def _keyed_pattern(prog, keys, n):
    sink = _NoPattern()
    sink.gathers = True
    tables: dict = {}
    (out,) = propagate(prog, sink, tables=tables)
    offsets, size = parameter_offsets(prog)
    names = {i.var.id: i.name for i in prog.inputs}
    out = out.reshape(-1)
    m = out.size
    base = np.arange(n, dtype=np.int64) * m
    resolved: dict = {}
    rows, cols = [], []
    for r, dset in enumerate(out):
        static = np.fromiter(sorted(c for c in dset if not isinstance(c, Gather)), np.int64)
        if static.size:
            rows.append(np.repeat(base + r, static.size))
            cols.append(np.tile(static, n))
        for g in (c for c in dset if isinstance(c, Gather)):
            if g.table not in resolved:
                resolved[g.table] = _table_csr(tables[g.table], tables, offsets, g.table)
            ip, ix, shape = resolved[g.table]
            flat = np.zeros(n, dtype=np.int64)
            for d, (a, k) in enumerate(zip(g.at, g.keys)):
                v = np.int64(a)
                if k is not None:
                    name = names.get(k)
                    if name not in keys:
                        raise GradcError("internal: a read at a data index whose index is not "
                                         "a data or const input")
                    v = v + np.asarray(keys[name], dtype=np.int64)
                    bad = np.broadcast_to((v < 0) | (v >= shape[d]), (n,))
                    if np.any(bad):
                        e = int(np.argmax(bad))
                        val = int(np.broadcast_to(v, (n,))[e]) - int(a)
                        raise GradcError(f"data {name}[{e}] = {val}: as an index it must be "
                                         f"an integer in {-int(a)}..{shape[d] - 1 - int(a)}")
                flat = flat * shape[d] + v
            cnt = ip[flat + 1] - ip[flat]
            total = int(cnt.sum())
            if not total:
                continue
            first = np.repeat(ip[flat] - (np.cumsum(cnt) - cnt), cnt)
            rows.append(np.repeat(base + r, cnt))
            cols.append(ix[first + np.arange(total, dtype=np.int64)])
    return _bool_csr(rows, cols, (n * m, size))


def _table_csr(table, tables, offsets, var_id):
    """``(indptr, indices, shape)``: the parameters each element of a dependency array
    depends on, as csr rows (a nested read at a data index: every element it could name)."""
    shape = table.shape
    flat = table.reshape(-1)
    for inp, k in offsets:  # a parameter itself: element e is parameter k + e
        if inp.var.id == var_id:
            return (np.arange(flat.size + 1, dtype=np.int64),
                    k + np.arange(flat.size, dtype=np.int64), shape)
    ip = np.zeros(flat.size + 1, dtype=np.int64)
    parts = []
    for e, dset in enumerate(flat):
        got, stack = set(), list(dset)
        seen = set()
        while stack:
            c = stack.pop()
            if isinstance(c, Gather):
                if c.table not in seen:
                    seen.add(c.table)
                    stack.extend(whole(tables[c.table]))
            else:
                got.add(c)
        parts.append(np.fromiter(sorted(got), np.int64, len(got)))
        ip[e + 1] = ip[e] + len(got)
    ix = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    return ip, ix, shape
