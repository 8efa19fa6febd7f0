"""Array kernels: programs with matrices -> BLAS products and fused elementwise loops.

Contract
--------
:class:`ArrayKernel` writes one kernel for a program whose values include matrices.  The
storage of each value follows :mod:`gradc.prims.array`: a batched vector is an ``(n, L)``
array (examples on axis 0), a batched scalar ``(n,)``, a batch-invariant matrix a 2-D
array, a batch-invariant scalar a float.

Equations are emitted in program order.  Runs of consecutive elementwise equations over
the same iteration space (a batch of vectors of one length, a batch of scalars, one
matrix shape) are fused into one loop; inside it every value is a local scalar, and only
the values used after the loop (or returned) are stored to arrays.  A loop nest that maps
a whole array point by point joins such a loop (:func:`_pointwise`) when it reads the
loop's own values only at the point written.  Constant trip counts of loops run once per
call are hidden from LLVM (:meth:`ArrayKernel.extent`).  Arrays are allocated through
``_rt.empty``/``_rt.zeros`` (compiled once per machine, not per process).  A read of parameter
arrays at data indices, one element per example (``cams[ci, 5]``), fuses into the loops
of batched scalars as an indexed read (its keys checked once before the loop).  An
explicit matrix of scalars is assembled by loops, not slices (numba compiles ``a[:, k] +=
v`` in seconds).  Matrix products go to
BLAS through ``np.dot`` with transposes folded into the call (``np.dot(X, W.T)`` for a
batch of ``W x``; ``np.dot(G.T, X)`` for the gradient of ``W``, summed over the batch by
the product itself).  Reductions call :mod:`gradc.codegen.runtime`.

When no output is per example, the equations are split into phases (:func:`batch_phases`)
and the per-example phase runs as the body of a loop over blocks of rows
(:func:`block_rows`): inside it ``n`` is the block's row count and every batched input a
view of the block's rows, so the code of each primitive is the same as for a whole batch;
each sum over the batch is added to an accumulator, named as the sum after the loop.
A batch is then read from memory once, and per-example arrays hold one block.
"""

from __future__ import annotations

import sympy as sp

from ..errors import GradcError
from ..ir import Lit, Var, size_of, type_of
from ..prims import registry
from ..prims.loop import _PH, LoopWriter, has_keys, keys_in
from ..prims.scalar import placeholder
from .emit import KernelWriter, needed_eqns


#: Constant loop trip counts from this one on are hidden from LLVM (:meth:`ArrayKernel.extent`).
OPAQUE_FROM = 5


def _space(var):
    """The iteration space of an elementwise result: (batched, length or shape)."""
    shape, isb = var.shape, var.batched
    if isb:
        return True, (size_of(shape) if shape else 0)
    return False, shape


def _gather(e):
    """One element per example read at data indices from batch-invariant arrays
    (``cams[ci, 5]`` outside any sum: a ``loop`` without dims whose batched inputs are
    only its scalar keys).  It fuses into the loops of batched scalars like an
    elementwise equation, as an indexed read: no array per read."""
    if e.prim != "loop" or not e.out.batched or e.out.shape:
        return False
    spec = e.params
    if spec.dims or spec.summed or not has_keys(spec) or keys_in(spec.out):
        return False
    free = spec.body.free_symbols
    return all(not type_of(a)[1] or (type_of(a)[0] == () and not r
                                     and placeholder(k) not in free)
               for k, (a, r) in enumerate(zip(e.inputs, spec.reads)))


def _pointwise(e):
    """A loop nest that is a map over its whole result, point by point: one index per
    axis of the result, in order, over the whole axis, no sum (``v[k, j] = exp(q[k, j])
    * mu[k, j]``, ``z[k, j, m] = u[k, j] * L[j, m]``).  It fuses into the loops of
    elementwise equations of its result's iteration space (a batch-invariant array of its
    shape, or a batch of vectors of its length): its reads of values made in the same
    loop must be at the point written (:func:`_joins`); any other read stays an array
    read at its affine index.  Fewer loops run faster over small arrays, and every loop
    a kernel does not have is numba typing and LLVM time it does not spend."""
    return _point_axes(e) is not None


def _point_axes(e):
    """For a pointwise loop nest (:func:`_pointwise`), the axis of its result that each
    of its indices runs over; else None.  Axes of length 1 are written at 0 (a column
    ``(K, 1)`` is a map over ``k``)."""
    if e.prim != "loop":
        return None
    spec, shape = e.params, e.out.shape
    if spec.summed or has_keys(spec) or not spec.dims or len(spec.out) != len(shape):
        return None
    axes = [a for a, (o, d) in enumerate(zip(spec.out, shape)) if not (o == 0 and d == 1)]
    if len(axes) != len(spec.dims) or (e.out.batched and len(axes) != 1):
        return None  # (a fused batch loop indexes its rows flat)
    for (sym, lo, hi), a in zip(spec.dims, axes):
        if spec.out[a] != sym or lo != 0 or hi != shape[a] - 1:
            return None
    return axes


def _fusable(e):
    return registry[e.prim].elementwise or _gather(e) or _pointwise(e)


def _off_point(e, k):
    """Whether input ``k`` of a fused equation is read anywhere but at the point its loop
    writes (only a pointwise loop nest reads elsewhere)."""
    if not _pointwise(e):
        return False
    spec = e.params
    return _flat(spec.reads[k], type_of(e.inputs[k])[0]) != _flat(spec.out, e.out.shape)


def _flat(idx, shape):
    """The row-major offset of index ``idx`` in an array of ``shape`` (how a fused loop
    sees its values: a batch of ``(K, 1)`` columns and one of ``(K,)`` vectors share it)."""
    off = sp.S.Zero
    for i, d in zip(idx, shape):
        off = off * d + sp.sympify(i)
    return sp.expand(off)


def _joins(e, members):
    """Whether ``e`` may join the fused loop making ``members`` (ids): it reads none of
    them off the point."""
    return not any(isinstance(a, Var) and a.id in members and _off_point(e, k)
                   for k, a in enumerate(e.inputs))


def _axes(rank):
    """Loop variables of a fused loop over a batch-invariant array of this rank."""
    return ["p", "q"] if rank == 2 else [f"p{k}" for k in range(rank)]


def peak_words(arrays, n):
    """Peak float64 words live at once, for batch size n, from :meth:`ArrayKernel.live_arrays`:
    tuples ``(words per example, fixed words, first stage, last stage[, rows])``, where
    ``rows`` caps the examples an array holds (the rows of a block, :func:`batch_phases`)."""
    if not arrays:
        return 0
    last = max(a[3] for a in arrays)

    def words(a):
        rows = min(n, a[4]) if len(a) > 4 else n
        return a[0] * rows + a[1]

    return max(sum(words(a) for a in arrays if a[2] <= k <= a[3]) for k in range(last + 1))


#: Words (float64) of per-example values one block of rows keeps (:func:`block_rows`):
#: 512 KiB, a quarter to a half of a core's L2 cache (1-2 MiB) on the machines measured
#: here; 2^14 to 2^17 words ran alike on ridge and the digits MLP (docs/performance.md).
BLOCK_WORDS = 1 << 16


def block_rows(per, fixed):
    """The rows of one block of the batch phase: as many as keep its per-example values
    (``per`` words an example: its data and the intermediates the phase stores) within
    :data:`BLOCK_WORDS`, so that a row is still in cache when the phase's later products
    read it again; but at least 4x the batch-invariant words the phase reads (``fixed``:
    the weights each block reads again), so that re-reading them stays a small part of a
    block's traffic; at least 64 and a multiple of 16."""
    rows = max(BLOCK_WORDS // max(per, 1), -(-4 * fixed // max(per, 1)), 64)
    return -(-rows // 16) * 16


def per_example_free(outputs):
    """Whether no kernel output is per example (only then may the batch run in blocks)."""
    return not any(isinstance(a, Var) and a.batched for a in outputs)


#: Primitives whose batched input and batch-invariant result make them sums over the batch.
_BATCH_SUMS = frozenset({"batch_sum", "matmul", "loop"})


def batch_phases(eqns):
    """Split a kernel's equations (in program order) into three phases, or None.

    ``pre``: the batch-invariant equations that read no per-example value; ``mid``: every
    per-example equation, with the sums over the batch of per-example values; ``post``:
    the batch-invariant equations after those sums.  The split exists when no equation of
    ``mid`` reads a value of ``post`` or a sum over the batch (the batch is then a set of
    independent rows, ``mid`` can run on blocks of rows with each sum accumulated over
    the blocks: one pass over the data while a block's rows are in cache) and ``mid``
    has a sum.  Each phase keeps program order, so ``pre + mid + post`` is topological."""
    pre, mid, post = [], [], []
    where = {}
    for e in eqns:
        src = {where.get(a.id) for a in e.inputs if isinstance(a, Var)}
        if e.out.batched:
            if "post" in src or "sum" in src:
                return None
            mid.append(e)
            where[e.out.id] = "mid"
        elif "mid" in src:
            if e.prim not in _BATCH_SUMS or "post" in src or "sum" in src:
                return None
            mid.append(e)
            where[e.out.id] = "sum"
        elif "post" in src or "sum" in src:
            post.append(e)
            where[e.out.id] = "post"
        else:
            pre.append(e)
    if not any(where.get(e.out.id) == "sum" for e in mid):
        return None
    return pre, mid, post


# structural primitives whose array results are fresh allocations (not views of inputs)
_FRESH = frozenset({"matmul", "onehot", "place", "pick", "sum", "logsumexp", "batch_sum",
                    "loop"})


class ArrayKernel(KernelWriter):
    """One kernel of a matrix program; see the module docstring."""

    def write(self, groups, per_example):
        outputs = [a for _, atoms in groups for a in atoms]
        eqns, _ = needed_eqns(self.prog, outputs)
        self.out_ids = {o.id for o in outputs if isinstance(o, Var)}
        ind = "    "
        lines = self.header() + [ind + s for s in self.prologue()]
        self.extents = {}  # constant loop extents, read through _rt.opaque (see extent())
        top = len(lines)
        phases = None if self.parallel or not per_example_free(outputs) else batch_phases(eqns)
        if phases is None:
            stages, span = self.stages(eqns), None
        else:
            pre, mid, post = (self.stages(p) for p in phases)
            stages, span = pre + mid + post, (len(pre), len(pre) + len(mid))
        self.row_offset = ""  # added to a block's row number in error messages
        self.stored = set()
        self.owned = set()  # arrays this kernel allocated and may overwrite once dead
        self.reused = {}  # out id -> the id of the dead array whose buffer it took
        self.sums_done = set()  # batch sums accumulated inside the loop producing their input
        self.sum_stage = {}
        self.checked_keys = set()  # (data index, range) checks a loop nest already made
        self.last_stage = self.last_uses(stages)
        self.block = None
        for k, stage in enumerate(stages):
            if span and k == span[0]:
                start, renamed = len(lines), self.enter_blocks()
            pad = ind * 2 if span and span[0] <= k < span[1] else ind
            if _fusable(stage[0]):
                lines += [pad + s for s in self.fused(stage, eqns, k, stages)]
            else:
                (e,) = stage
                if e.out.id not in self.sums_done:  # (else accumulated in an earlier loop)
                    lines += [pad + s for s in registry[e.prim].emit_array(e, self)]
                    if e.prim not in ("transpose",):
                        self.stored.add(e.out.id)
                    if e.prim in _FRESH and (e.out.shape or e.out.batched):
                        self.owned.add(e.out.id)
            if span and k == span[1] - 1:
                head, tail = self.leave_blocks(phases[1], renamed)
                lines[start:start] = [ind + s for s in head]
                lines += [ind + s for s in tail]
        lines.append(ind + "return " + self.returned(groups))
        lines[top:top] = [f"{ind}{v} = _rt.opaque({k})" for k, v in sorted(self.extents.items())]
        self.memory = self.live_arrays(stages, span)
        return "\n".join(lines)

    # -- the batch in blocks of rows ------------------------------------------------------
    def enter_blocks(self):
        """Start writing the batch phase (:func:`batch_phases`) as the body of a loop over
        blocks of rows: a batched input is read through a view of the block's rows, so
        the phase's code (written for a batch of ``n`` rows) runs on ``n`` = the rows of
        one block.  Returns {input var id: its name} to restore."""
        renamed = {}
        taken = set(self.name.names.values())
        for inp in self.prog.inputs:
            if inp.var.batched:
                name = self.name(inp.var)
                blk, k = name + "_blk", 1
                while blk in taken:
                    blk, k = f"{name}_blk{k}", k + 1
                taken.add(blk)
                renamed[inp.var.id] = name
                self.name.names[inp.var.id] = blk
        self.row_offset = " + row0"
        return renamed

    def leave_blocks(self, mid, renamed):
        """(lines before the phase, lines after it): the accumulators of the phase's
        batch sums, the loop over blocks and the block views; after the phase each sum
        added to its accumulator, and after the loop the accumulators named as the sums.
        The block's rows: :func:`block_rows` of the words the phase keeps per example."""
        sums = [e for e in mid if not e.out.batched]
        per = sum(size_of(i.var.shape) or 1 for i in self.prog.inputs if i.var.batched)
        per += sum(size_of(e.out.shape) or 1 for e in mid
                   if e.out.batched and e.out.id in self.stored)
        mids = {e.out.id for e in mid}
        fixed = sum(size_of(a.shape) for a in {a.id: a for e in mid for a in e.inputs
                                                 if isinstance(a, Var) and not a.batched
                                                 and a.id not in mids}.values())
        self.block = rows = block_rows(per, fixed)
        head = ["n_all = n"]
        head += [f"blk_sum{e.out.id} = " + (f"np.zeros({e.out.shape})" if e.out.shape else "0.0")
                 for e in sums]
        head += [f"for row0 in range(0, n_all, {rows}):",
                 f"    n = min({rows}, n_all - row0)"]
        head += [f"    {self.name.names[i]} = {name}[row0:row0 + n]"
                 for i, name in renamed.items()]
        tail = [f"    blk_sum{e.out.id} += {self.name(e.out)}" for e in sums]
        self.name.names.update(renamed)
        self.row_offset = ""
        # the accumulators are float64 whatever the dtype (a float32 batch keeps its digits)
        cast = ".astype(DT)" if self.dtype != "float64" else ""
        tail += ["n = n_all"] + [f"{self.name(e.out)} = blk_sum{e.out.id}"
                                 + (cast if e.out.shape else "") for e in sums]
        return head, tail

    def extent(self, k):
        """The text of the constant trip count ``k`` of a loop that runs once per call
        (over batch-invariant values), or of the innermost loop of a per-example nest
        when ``k`` is not a multiple of 8 (:meth:`gradc.prims.loop.LoopWriter.stop`; the
        other loops inside the batch loop keep their constants, which LLVM vectorises
        best).  From :data:`OPAQUE_FROM` on it is a variable set
        once to ``_rt.opaque(k)``, a value LLVM cannot see: with the count known, LLVM
        unrolls a kernel's many short parameter-space loops (d = 10 or 20 points in the
        GMM) at a compile-time cost far above their run time
        (``benchmarks/bench_adbench.py``: the cold compile)."""
        if k < OPAQUE_FROM:
            return str(k)
        return self.extents.setdefault(k, f"ext{k}")

    def last_uses(self, stages):
        """{array id: index of the last stage reading it}, counting reads through aliases
        (a transpose emits a view or the same array); kernel outputs live to the end."""
        root, last = {}, {}
        for k, stage in enumerate(stages):
            for e in stage:
                for a in e.inputs:
                    if isinstance(a, Var):
                        last[root.get(a.id, a.id)] = k
                if e.prim == "transpose" and isinstance(e.inputs[0], Var):
                    root[e.out.id] = root.get(e.inputs[0].id, e.inputs[0].id)
        for i in self.out_ids:
            last[root.get(i, i)] = len(stages)
        self.alias_root = root
        return last

    def live_arrays(self, stages, span=None):
        """(words per example, fixed words, first stage, last stage[, rows]) of every array
        the kernel allocates: the input of :func:`peak_words`; ``rows`` for the arrays of
        a batch phase run in blocks (``span``, its stages).  An array written over a dead
        one (see :meth:`donor`) extends that one's lifetime instead of adding its own."""
        where = {}
        for k, stage in enumerate(stages):
            for e in stage:
                for a in e.inputs:
                    if isinstance(a, Var) and a.id in where:
                        where[a.id][3] = k
                if e.out.id in self.reused:
                    where[e.out.id] = where.pop(self.reused[e.out.id])
                    where[e.out.id][3] = k
                elif e.out.id in self.stored and (e.out.shape or e.out.batched):
                    size = size_of(e.out.shape)
                    per, fixed = (size, 0) if e.out.batched else (0, size)
                    where[e.out.id] = [per, fixed, self.sum_stage.get(e.out.id, k), k]
        for i in self.out_ids:
            if i in where:
                where[i][3] = len(stages)
        if span:
            for v in where.values():
                if v[0] and span[0] <= v[2] < span[1]:
                    v.append(self.block)
        return tuple(tuple(v) for v in where.values())

    # -- grouping -------------------------------------------------------------------------
    def schedule(self, eqns):
        """A topological order that keeps elementwise equations of one iteration space
        together (so they fuse): when the current run can continue, continue it; else
        run a ready structural equation; else the first ready one.  Deterministic."""
        pos = {e.out.id: k for k, e in enumerate(eqns)}
        deps = [{a.id for a in e.inputs if isinstance(a, Var) and a.id in pos} for e in eqns]
        users = {}
        for k, d in enumerate(deps):
            for i in d:
                users.setdefault(i, []).append(k)
        waiting = [len(d) for d in deps]
        ready = sorted(k for k, w in enumerate(waiting) if w == 0)
        order, space = [], None
        while ready:
            pick = None
            if space is not None:
                pick = next((k for k in ready if _fusable(eqns[k])
                             and _space(eqns[k].out) == space), None)
            if pick is None:
                pick = next((k for k in ready if not _fusable(eqns[k])), ready[0])
            ready.remove(pick)
            e = eqns[pick]
            order.append(e)
            space = _space(e.out) if _fusable(e) else None
            for u in users.get(e.out.id, []):
                waiting[u] -= 1
                if waiting[u] == 0:
                    ready.append(u)
            ready.sort()
        return order

    def stages(self, eqns):
        out, cur = [], []
        for e in self.schedule(eqns):
            if (_fusable(e) and cur and _fusable(cur[-1])
                    and _space(cur[-1].out) == _space(e.out)
                    and _joins(e, {c.out.id for c in cur})):
                cur.append(e)
                continue
            if cur:
                out.append(cur)
            cur = [e]
        if cur:
            out.append(cur)
        return out

    # -- fused elementwise loops ----------------------------------------------------------
    def fused(self, group, eqns, k, stages):
        members = {e.out.id for e in group}
        last = group[-1]
        isb, extent = _space(last.out)
        # Column sums over the batch of values made here are accumulated in this loop, in
        # the batch order of _rt.colsum (same result); not under prange (a data race).
        sums = [] if self.parallel or not (isb and extent) else [
            s[0] for s in stages[k + 1:] if s[0].prim == "batch_sum"
            and isinstance(s[0].inputs[0], Var) and s[0].inputs[0].id in members]
        self.sums_done.update(e.out.id for e in sums)
        self.sum_stage.update((e.out.id, k) for e in sums)  # its accumulator lives from here
        later = [e for e in eqns if e not in group and e not in sums]
        used_later = {a.id for e in later for a in e.inputs if isinstance(a, Var)}
        stored = [e for e in group if e.out.id in used_later or e.out.id in self.out_ids]
        self.stored.update(e.out.id for e in stored)
        self.stored.update(e.out.id for e in sums)
        self.owned.update(e.out.id for e in stored)
        lines = []
        taken = set()
        for e in stored:
            donor = self.donor(e.out, group, members, k, taken)
            if donor is None:
                lines += self.alloc(e.out)
            else:
                taken.add(donor.id)
                self.reused[e.out.id] = donor.id
                lines.append(f"{self.name(e.out)} = {self.name(donor)}  # over dead {self.name(donor)}")
        lines += [f"a{e.out.id} = _rt.zeros({extent})" for e in sums]
        outer = "prange" if self.parallel else "range"
        if isb and extent:
            # a short constant row (9 to 15) would be unrolled and left scalar; see _rt.opaque
            # (longer rows vectorise with the count known: kept, see extent())
            width = f"_rt.opaque({extent})" if 8 < extent < 16 else str(extent)
            idx, loops = "i, j", [f"for i in {outer}(n):", f"    for j in range({width}):"]
        elif isb:
            idx, loops = "i", [f"for i in {outer}(n):"]
        elif extent:
            names = _axes(len(extent))
            idx = ", ".join(names)
            loops = [f"{'    ' * k}for {a} in range({self.extent(d)}):"
                     for k, (a, d) in enumerate(zip(names, extent))]
        else:
            idx, loops = "", []
        body = []
        local = members if loops else set()
        self.flat_views = {}  # filled by access(); written before the loop below
        for e in group:
            if _gather(e):
                expr = self.gather(e, lines, body, local)
            elif _pointwise(e):
                expr = self.pointwise(e, isb, local)
            else:
                names = [self.access(a, isb, extent, local) for a in e.inputs]
                expr = registry[e.prim].emit(e, names, self.printer)
            if loops:
                body.append(f"s{e.out.id} = {expr}")
            else:
                body.append(f"{self.name(e.out)} = {expr}")
        lines += [f"{v} = np.ascontiguousarray({self.name(a)}).reshape(-1)"
                  for a, v in self.flat_views.values()]
        if loops:
            body += [f"{self.name(e.out)}[{idx}] = s{e.out.id}" for e in stored]
            body += [f"a{e.out.id}[j] += s{e.inputs[0].id}" for e in sums]
            pad = "    " * len(loops)
            after = [f"{self.name(e.out)} = a{e.out.id}.reshape({e.inputs[0].shape})" for e in sums]
            return lines + loops + [pad + s for s in body] + after
        return body

    def gather(self, e, before, body, local):
        """The expression of a fused gather (:func:`_gather`): its keys checked before
        the loop (once per kernel), read as integers in it, then the indexed reads."""
        w = LoopWriter(e, self)
        w.keys = {ph: sp.Symbol(f"k{e.out.id}_{ph.name[2:]}", integer=True) for ph in w.keys}
        w.subs = {**w.names, **w.keys}
        checks, _ = w.key_checks()
        before += checks  # (a const key is read there too)
        for ph, name in w.keys.items():
            atom = e.inputs[int(ph.name[2:])]
            if type_of(atom)[1]:
                body.append(f"{name} = int({self.access(atom, True, 0, local)})")
        template = self.printer.template(e.params.body)
        reads = [w.access(a, r) for a, r in zip(e.inputs, e.params.reads)]
        return _PH.sub(lambda m: reads[int(m.group(1))], template)

    def pointwise(self, e, isb, local):
        """The expression of a fused pointwise loop nest (:func:`_pointwise`) at the
        fused loop's point: its indices are the loop's variables, a value made in the
        loop is its local scalar, any other read an array read at its index."""
        spec = e.params
        w = LoopWriter(e, self)
        axes = _axes(len(e.out.shape))
        names = ["j"] if isb else [axes[a] for a in _point_axes(e)]
        w.names = {sym: sp.Symbol(nm, integer=True) for (sym, _, _), nm in zip(spec.dims, names)}
        w.subs = dict(w.names)
        w.example = "i"
        reads = [f"s{a.id}" if isinstance(a, Var) and a.id in local else w.access(a, r)
                 for a, r in zip(e.inputs, spec.reads)]
        template = self.printer.template(spec.body.xreplace(w.names))
        return _PH.sub(lambda m: reads[int(m.group(1))], template)

    def donor(self, out, group, members, k, taken):
        """A dead array ``out`` can be written over, or None: one this kernel allocated,
        with ``out``'s storage, read by this loop only at the element being written (so
        every read of an element comes before its store) and never read again."""
        if not (out.batched or out.shape):
            return None
        # an array this loop also reads through a transposed view is read out of place
        viewed = {self.alias_root[a.id] for e in group for a in e.inputs
                  if isinstance(a, Var) and a.id in self.alias_root}
        for e in group:
            for j, a in enumerate(e.inputs):
                if (isinstance(a, Var) and a.id not in members and a.id not in taken
                        and not _off_point(e, j)
                        and a.id not in viewed
                        and a.id in self.owned and a.id not in self.alias_root
                        and a.id not in self.out_ids and self.last_stage.get(a.id) == k
                        and a.batched == out.batched and _space(a) == _space(out)
                        and (a.batched or a.shape == out.shape)):
                    return a
        return None

    def access(self, atom, isb, extent, members):
        if isinstance(atom, Lit):
            return self.name(atom)
        if atom.id in members:
            return f"s{atom.id}"
        name = self.name(atom)
        shape, ab = type_of(atom)
        if not shape:
            return f"{name}[i]" if ab else name
        if isb:
            if ab:
                return f"{name}[i, j]"
            if len(shape) == 1:
                return f"{name}[j]"
            if len(shape) == 2 and 1 in shape:
                return f"{name}[j, 0]" if shape[1] == 1 else f"{name}[0, j]"
            # a batch-invariant tensor against a batch of its shape: read it flat
            view = self.flat_views.setdefault(atom.id, (atom, f"f{atom.id}"))[1]
            return f"{view}[j]"
        return f"{name}[{', '.join(_axes(len(shape)))}]"

    def alloc(self, var):
        """Statements allocating the array that stores ``var``."""
        name = self.name(var)
        if var.batched:
            if var.shape:
                return [f"{name} = _rt.empty((n, {size_of(var.shape)}))"]
            return [f"{name} = _rt.empty(n)"]
        if var.shape:
            return [f"{name} = _rt.empty({var.shape})"]
        return []

    # -- structural primitives (called back from prims.array) ------------------------------
    def matmul(self, eqn):
        a, b = eqn.inputs
        A, B, out = self.name(a), self.name(b), self.name(eqn.out)
        (r, k), (_, c) = a.shape, b.shape
        if eqn.params:  # summed over the batch
            if k == 1:
                return [f"{out} = np.dot({A}.T, {B})"]
            if r == 1 and c == 1:
                return [f"{out} = _rt.vsum(_rt.rowdot({A}, {B}), n)"]
            return [f"{out} = _rt.bmm_sum({A}, {B}, {r}, {k}, {c}, n)"]
        if not a.batched and not b.batched:
            return [f"{out} = np.dot({A}, {B})" + ("[0, 0]" if not eqn.out.shape else "")]
        if b.batched and not a.batched and c == 1:
            text = f"np.dot({B}, {A}.T)"
        elif a.batched and not b.batched and r == 1:
            text = f"np.dot({A}, {B})"
        elif a.batched and not b.batched:
            # per-example r x k matrices against one k x c: one product of the batch's rows
            text = f"np.dot(np.ascontiguousarray({A}).reshape(n * {r}, {k}), {B})" \
                   f".reshape(n, {r * c})"
        elif r == 1 and c == 1:
            return [f"{out} = _rt.rowdot({A}, {B})"]
        else:
            return [f"{out} = _rt.bmm({A}, {B}, {int(a.batched)}, {int(b.batched)}, "
                    f"{r}, {k}, {c}, n)"]
        if not eqn.out.shape:
            text = f"np.ascontiguousarray({text}[:, 0])"
        return [f"{out} = {text}"]

    def reduce_elements(self, eqn, kind):
        (a,) = eqn.inputs
        src, out = self.name(a), self.name(eqn.out)
        if kind == "sum":
            return [f"{out} = {'_rt.rowsum(' + src + ')' if a.batched else 'np.sum(' + src + ')'}"]
        return [f"{out} = {'_rt.rowlse(' + src + ')' if a.batched else '_rt.lse_all(' + src + ')'}"]

    def pick(self, eqn):
        z, idx = eqn.inputs
        Z, out = self.name(z), self.name(eqn.out)
        label = self.name(idx)
        if isinstance(idx, Lit) or not idx.batched:
            raise GradcError("pick needs a per-example label (a data symbol)")
        if z.batched:
            return [f"{out} = _rt.pick({Z}, {label})"]
        return [f"{out} = _rt.pick_fixed({Z}, {label})"]

    def onehot(self, eqn):
        (idx,) = eqn.inputs
        r, c = eqn.params
        return [f"{self.name(eqn.out)} = _rt.onehot({self.name(idx)}, {r * c})"]

    def batch_sum(self, eqn):
        (a,) = eqn.inputs
        src, out = self.name(a), self.name(eqn.out)
        if not a.shape:
            return [f"{out} = _rt.vsum({src}, n)"]
        return [f"{out} = _rt.colsum({src}).reshape({a.shape})"]

    # -- results --------------------------------------------------------------------------
    def returned(self, groups):
        parts = []
        params = self.prog.inputs_of("param")
        for kind, atoms in groups:
            if kind == "scalar":
                (a,) = atoms
                if isinstance(a, Lit):
                    parts.append(f"float({self.name(a)})")
                elif a.batched:
                    parts.append(self.name(a))
                elif a.shape:  # a matrix-valued result
                    parts.append(f"np.ascontiguousarray({self.name(a)}).reshape({a.shape})")
                else:
                    parts.append(f"float({self.name(a)})")
            else:
                items = [self.grad_value(a, inp) for a, inp in zip(atoms, params)]
                parts.append("(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")")
        return ", ".join(parts)
