"""Chunked kernels: scalar programs -> loops over chunks of examples, vectorised across them.

Contract
--------
:class:`ChunkKernel` writes one kernel for a program whose values are scalars or rank-1
vectors (the parameter vector ``params`` and the vectors that re-rolled families of terms
become, :mod:`gradc.reroll`).  A value is one of

``U0``  batch-invariant scalar: a local;
``U1``  batch-invariant vector of length T: a 1-D array (or a view of ``params``);
``B0``  per-example scalar;
``B1``  per-example vector of length T.

Batch-invariant work runs once, before the loop over the batch (or after it, when it
depends on a sum over the batch).  The batch is cut into chunks of ``CH`` examples
(``CH`` a power of two chosen per kernel, at most :data:`gradc.codegen.emit.CHUNK`, so
that the kernel's scratch stays in cache); per chunk, the per-example equations run as a
sequence of *stages*, each a loop over the ``m <= CH`` examples of the chunk that LLVM
vectorises across examples:

* a B0 stage is ``for j in range(m): ...``;
* a B1 stage is ``for t in range(T):`` around such loops: one vector element at a time,
  every example of the chunk at once, so a family of T terms costs T passes over the
  chunk whatever T is, with no code per term;
* inside a stage, consecutive elementwise equations are fused into one loop where every
  value is a local; a value used by a later loop is stored in the chunk scratch ``S``;
* ``exp``, ``log``, ``tanh``, ``sigmoid`` (and ``expm1``, ``log1p``, ``loggamma``,
  ``digamma``) are called out of line on the whole run of the chunk (``_vm.tanh_v``,
  ``_rt.lgamma_v``), compiled once for every kernel:
  a kernel's compile time does not grow with the number of such calls, and its loops
  stay small (:func:`isolate_calls` gives each call its own equation first);
* a sum over the vector (B1 -> B0) accumulates in a scratch row across the ``t`` loop;
  a sum over the batch (B -> U) goes to a term row reduced per chunk with
  ``_rt.vsum_at`` (eight interleaved accumulators) into ``part[c]``, and the chunks'
  partial sums are added in chunk order (``_rt.chunk_sums``), so the result does not
  depend on ``parallel=True``.

Long loop bodies are split into segment functions (``_k_<kernel>_<s>``), each at most
:data:`SEGMENT` equations, called per chunk with the scratch array: numba's and LLVM's
work per function is bounded, so compile time grows linearly with the amount of distinct
code.
"""

from __future__ import annotations

import numpy as np
import sympy as sp

from ..errors import GradcError
from ..ir import Builder, Lit, Program, Var, size_of
from ..prims import registry
from ..prims.array import spec_indices
from ..prims.scalar import elementwise as emit_elementwise
from ..prims.scalar import placeholder
from .emit import CHUNK, KernelWriter, literal, needed_eqns
from .printer import KernelPrinter

#: A loop body longer than this many equations is split into segment functions.
SEGMENT = 96

#: A fused loop reads and writes at most this many arrays (see ``plan_storage``).
MAX_STREAMS = 16

#: Scratch budget per chunk, in float64 words (256 KiB): ``CH`` is the largest power of
#: two up to :data:`CHUNK` whose scratch fits (never below 16).
SCRATCH_WORDS = 32768

#: sympy function classes computed out of line by gradc's vectorised maths: the prefix of
#: the scalar (``<prefix>_s``) and run (``<prefix>_v``) forms.  ``polygamma(0, x)`` (the
#: digamma function, what sympy's derivative of ``loggamma`` gives) counts as ``digamma``.
OUT_OF_LINE = {"exp": "_vm.exp", "log": "_vm.log", "tanh": "_vm.tanh",
               "Logistic": "_vm.sigmoid", "expm1": "_vm.expm1", "log1p": "_vm.log1p",
               "loggamma": "_rt.lgamma", "digamma": "_rt.digamma"}


# --------------------------------------------------------------------------------------
# Program normalisation: one out-of-line call per equation


def _call_of(node):
    """``(prefix, position)`` if ``node`` is an out-of-line call (the position of its
    argument among ``node.args``), else None."""
    if not isinstance(node, sp.Function):
        return None
    cls = type(node).__name__
    if cls == "polygamma":
        return (OUT_OF_LINE["digamma"], 1) if node.args[0] == 0 else None
    name = OUT_OF_LINE.get(cls)
    return (name, 0) if name and len(node.args) == 1 else None


def _call_name(body):
    """The out-of-line prefix if ``body`` is exactly ``f(_a0)`` for an out-of-line ``f``."""
    call = _call_of(body)
    if call and body.args[call[1]] == placeholder(0):
        return call[0]
    return None


def _calls_in(body):
    return [n for n in sp.preorder_traversal(body) if _call_of(n)]


def _argument(call):
    return call.args[_call_of(call)[1]]


def _with_argument(call, arg):
    pos = _call_of(call)[1]
    return call.func(*(arg if i == pos else a for i, a in enumerate(call.args)))


def isolate_calls(prog: Program) -> Program:
    """The same program with every out-of-line maths call (``exp``, ``log``, ``tanh``...)
    in an elementwise body moved to an equation of its own, ``f(_a0)``, innermost first;
    the rest of the body reads the call's result.  Equations without such calls, and the
    inputs, are unchanged."""
    if not any(e.prim == "elementwise" and _call_name(e.params) is None and _calls_in(e.params)
               for e in prog.eqns):
        return prog
    b = Builder()
    b.inputs = list(prog.inputs)
    b._next = max([i.var.id for i in prog.inputs] + [e.out.id for e in prog.eqns]) + 1
    env = {}

    def atom(a):
        return env.get(a.id, a) if isinstance(a, Var) else a

    for e in prog.eqns:
        inputs = [atom(a) for a in e.inputs]
        if e.prim != "elementwise" or _call_name(e.params) is not None or not _calls_in(e.params):
            out = b.emit(e.prim, inputs, e.params, hint=e.out.hint)
        else:
            body, inputs = e.params, list(inputs)
            while True:
                inner = [c for c in _calls_in(body) if not _calls_in(_argument(c))]
                if not inner:
                    break
                c = inner[0]
                arg = emit_elementwise(b, _argument(c), inputs)
                val = emit_elementwise(b, _with_argument(c, placeholder(0)), [arg])
                inputs.append(val)
                body = body.xreplace({c: placeholder(len(inputs) - 1)})
            out = emit_elementwise(b, body, inputs)
        env[e.out.id] = out
    outs = [atom(o) for o in prog.outputs]
    return Program(tuple(b.inputs), tuple(b.eqns), tuple(outs), prog.output_names)


def is_chunk_program(*progs) -> bool:
    """True when every value of the programs is a scalar or a rank-1 vector."""
    return all(len(e.out.shape) <= 1 and e.prim != "loop" for p in progs for e in p.eqns) \
        and all(len(i.var.shape) <= 1 for p in progs for i in p.inputs)


class ChunkPrinter(KernelPrinter):
    """The scalar printer for chunked kernels: batch-invariant code calls the out-of-line
    scalar maths (``_vm.tanh_s``); loops never see those calls (:func:`isolate_calls`)."""

    def _print_Function(self, expr):
        call = _call_of(expr)
        if call is not None:
            return f"{call[0]}_s({self._print(_argument(expr))})"
        return super()._print_Function(expr)


for _name in list(OUT_OF_LINE) + ["polygamma"]:
    setattr(ChunkPrinter, f"_print_{_name}", ChunkPrinter._print_Function)


# --------------------------------------------------------------------------------------
# The kernel writer


def _length(var):
    return var.shape[0] if var.shape else 0


def _space(e):
    """The loop an equation of the batched part runs in: ``0`` (B0) or T (B1 of length
    T).  A sum over a vector runs in its input's loop."""
    if e.prim == "sum":
        return _length(e.inputs[0])
    return _length(e.out)


def _is_call(e):
    return e.prim == "elementwise" and _call_name(e.params) is not None


class ChunkKernel(KernelWriter):
    """One kernel of a scalar program; see the module docstring."""

    def write(self, groups, per_example):
        self.tables = getattr(self, "tables", {})
        self.name_params()
        outputs = [a for _, atoms in groups for a in atoms]
        eqns, needed = needed_eqns(self.prog, outputs)
        self.readers = {}  # id -> ids of the equations reading it
        for e in eqns:
            for a in e.inputs:
                if isinstance(a, Var):
                    self.readers.setdefault(a.id, set()).add(e.out.id)
        pre, loop, post, sums = _phases(eqns)
        self.per_example = per_example and bool(self.data)
        self.groups = groups
        self.helpers, self.helper_names = [], []
        self.out_ids = {o.id for o in outputs if isinstance(o, Var)}
        # a per-example assembled gradient is written part by part, not computed
        loop = [e for e in loop if not (e.prim == "assemble" and e.out.id in self.out_ids)]
        ind = "    "
        lines = self.header() + [ind + s for s in self.prologue()]
        lines += [ind + s for s in self.unbatched(pre)]
        looped = bool(loop or sums or self.per_example)
        self.ch, self.scratch_words, self.part_width, self.out_words = 0, 0, 0, 0
        if looped:
            lines += [ind + s for s in self.batched(loop, sums)]
        lines += [ind + s for s in self.unbatched(post)]
        lines.append(ind + "return " + self.returned(groups))
        # arrays held: (float64 words per example, fixed words, first, last statement group)
        self.memory = ((self.out_words, self.scratch_words * self.ch, 0, 0),
                       (self.part_width / self.ch if self.ch else 0, 0, 0, 0))
        return "\n".join(self.helpers + lines)

    def name_params(self):
        """Readable names for the elements and runs of the parameter vector: ``p_w1`` for
        element ``w1``, ``p_v`` for a run of ``v1, v2, ...``."""
        taken = set(self.name.names.values()) | {f"v{e.out.id}" for e in self.prog.eqns}
        vec_inputs = {i.var.id: i.role for i in self.prog.inputs if i.var.shape}
        prefix = {"param": "p_", "tangent": "t_", "cotangent": "ct_"}
        for e in self.prog.eqns:
            if (e.prim in ("element", "gather") and isinstance(e.inputs[0], Var)
                    and e.inputs[0].id in vec_inputs and e.out.hint):
                pre = prefix.get(vec_inputs[e.inputs[0].id], "u_")
                self.name.names[e.out.id] = _ident_of(e.out.hint, pre, taken)

    # -- names ------------------------------------------------------------------------
    def prologue(self):
        lines = []
        for role in ("param", "tangent", "cotangent"):
            inputs = self.prog.inputs_of(role)
            for i in inputs:
                src = self.seed_source(i)
                several = sum(1 for j in inputs if j.level == i.level) > 1
                if i.var.shape and not several:  # the vector is the argument itself
                    self.name.names[i.var.id] = src
                else:  # a scalar, or row i.index of a (copies, P) array of directions
                    lines.append(f"{self.name(i.var)} = {src}[{i.index}]")
        if self.data:
            lines.append(f"n = {self.name(self.data[0].var)}.shape[0]")
        for i in self.prog.inputs_of("size"):
            lines.append(f"{self.name(i.var)} = {self.size_text()}")
        return lines

    def table(self, values, dtype="int64"):
        """The module-level name of a constant array (an index table, or the float64
        coefficients of a family)."""
        key = (dtype, tuple(values))
        if key not in self.tables:
            self.tables[key] = f"_{'IX' if dtype == 'int64' else 'C'}{len(self.tables)}"
        return self.tables[key]

    # -- batch-invariant code -----------------------------------------------------------
    def unbatched(self, eqns):
        """Statements for batch-invariant equations: scalars line by line, vectors as fused
        loops over their elements (``for t``), calls on vectors out of line."""
        lines, k = [], 0
        later_reads = {}
        for pos, e in enumerate(eqns):
            for a in e.inputs:
                if isinstance(a, Var):
                    later_reads[a.id] = pos
        while k < len(eqns):
            e = eqns[k]
            if e.out.shape and registry[e.prim].elementwise and not _is_call(e):
                run = [e]
                while (k + len(run) < len(eqns)
                       and registry[eqns[k + len(run)].prim].elementwise
                       and not _is_call(eqns[k + len(run)])
                       and eqns[k + len(run)].out.shape == e.out.shape):
                    run.append(eqns[k + len(run)])
                lines += self.vector_run(run, eqns[k + len(run):])
                k += len(run)
                continue
            lines += self.unbatched_eqn(e)
            k += 1
        return lines

    def vector_run(self, run, rest):
        T = run[0].out.shape[0]
        members = {e.out.id for e in run}
        stored = [e for e in run
                  if self.readers.get(e.out.id, set()) - members or e.out.id in self.out_ids]
        lines = [f"{self.name(e.out)} = _rt.empty({T})" for e in stored]
        lines.append(f"for t in range({T}):")

        def read(a):
            if isinstance(a, Lit):
                return self.lit(a.value)
            if a.id in members:
                return f"s{a.id}"
            return f"{self.name(a)}[t]" if a.shape else self.name(a)

        for e in run:
            names = [read(a) for a in e.inputs]
            lines.append(f"    s{e.out.id} = {registry[e.prim].emit(e, names, self.printer)}")
        lines += [f"    {self.name(e.out)}[t] = s{e.out.id}" for e in stored]
        return lines

    def unbatched_eqn(self, e):
        out = self.name(e.out)
        ins = [self.name(a) for a in e.inputs]
        if e.prim == "element":
            return [f"{out} = {ins[0]}[{', '.join(map(str, e.params))}]"]
        if e.prim == "gather":
            return self.gather_lines(e, out, ins[0])
        if e.prim == "sum":
            (a,) = e.inputs
            return [f"{out} = _rt.vsum_at({ins[0]}, 0, {a.shape[0]})"]
        if e.prim == "assemble":
            return self.assemble_lines(e, out, ins)
        if e.prim == "constant":
            return [f"{out} = {self.table(e.params, self.dtype)}"]
        if _is_call(e):
            (a,) = e.inputs
            f = _call_name(e.params)
            if not e.out.shape:
                return [f"{out} = {f}_s({ins[0]})"]
            T = e.out.shape[0]
            return [f"{out} = _rt.empty({T})", f"{f}_v({ins[0]}, 0, {out}, 0, {T})"]
        if registry[e.prim].elementwise:
            return [self.eqn_line(e)]
        raise GradcError(f"internal: primitive {e.prim} in a chunked kernel")

    def gather_lines(self, e, out, src):
        spec = e.params
        T = e.out.shape[0]
        if spec[0] == "slice":
            _, start, step, length = spec
            stop = start + step * length
            if stop < 0:  # a run down to element 0
                stop = ""
            return [f"{out} = {src}[{start}:{stop}{':' + str(step) if step != 1 else ''}]"]
        tab = self.table(spec[1])
        return [f"{out} = _rt.empty({T})", f"for t in range({T}):",
                f"    {out}[t] = {src}[{tab}[t]]"]

    def assemble_lines(self, e, out, ins):
        shape, where = e.params
        (P,) = shape
        lines = [f"{out} = _rt.empty({P})", f"for t in range({P}):", f"    {out}[t] = 0.0"]
        for a, src, w in zip(e.inputs, ins, where):
            lines += self._add_into(out, src, a, w, P)
        return lines

    def _add_into(self, out, src, a, w, P, row=""):
        """``out[w] += src`` for a part ``w`` (None, an index tuple, a gather spec)."""
        vec = bool(getattr(a, "shape", ()))
        at = f"{src}[t]" if vec else src
        if w is None:
            return [f"for t in range({P}):", f"    {out}[{row}t] += {at}"]
        if isinstance(w[0], int):
            return [f"{out}[{row}{w[0]}] += {src}"]
        if w[0] == "slice":
            _, start, step, length = w
            return [f"for t in range({length}):",
                    f"    {out}[{row}{start} + {step} * t] += {at}"]
        tab = self.table(w[1])
        return [f"for t in range({len(w[1])}):", f"    {out}[{row}{tab}[t]] += {at}"]

    # -- the loop over the batch ---------------------------------------------------------
    def batched(self, loop, sums):
        """The chunk loop: scheduling into stages, storage, and the per-chunk code."""
        self.data_ids = {i.var.id for i in self.data}
        stages = self.stages(loop)
        self.plan_storage(stages, sums)
        allocs = self.output_allocs()
        body = self.chunk_body(stages, sums)
        lines = []
        par = self.parallel
        W = self.part_width
        CH = self.ch
        lines += [f"CH = {CH}", "nchunks = (n + CH - 1) // CH"]
        if W:
            lines.append(f"PW = {W}")
        if W:
            lines.append(f"part = _rt.empty64(nchunks * {W})  # every entry is written")
        lines += allocs
        alloc = [f"S = _rt.empty({max(self.scratch_words, 1) * CH})"]
        if not par:
            lines += alloc
        lines.append(f"for c in {'prange' if par else 'range'}(nchunks):")
        if par:
            lines += ["    " + a for a in alloc]
        lines += ["    start = c * CH", "    m = CH if n - start > CH else n - start"]
        lines += ["    " + s for s in body]
        if W:
            lines.append(f"acc = _rt.chunk_sums(part, nchunks, {W})")
            for e in sums:
                o = self.part_offset[e.out.id]
                if e.out.shape:
                    lines.append(f"{self.name(e.out)} = acc[{o}:{o + e.out.shape[0]}]")
                else:
                    lines.append(f"{self.name(e.out)} = acc[{o}]")
        lines += self.output_fills()
        return lines

    def stages(self, loop):
        """A topological order of the batched equations that keeps those of one loop (B0
        or B1 of one length) together, cut into stages of at most :data:`SEGMENT`
        equations.  A sum over a vector is available only after its stage.  Ready
        equations wait in one heap per loop (program order first), so scheduling takes
        O(E log E) for E equations."""
        import heapq

        pos = {e.out.id: k for k, e in enumerate(loop)}
        deps = [{a.id for a in e.inputs if isinstance(a, Var) and a.id in pos} for e in loop]
        users = {}
        for k, d in enumerate(deps):
            for i in d:
                users.setdefault(i, []).append(k)
        waiting = [len(d) for d in deps]
        heaps: dict = {}
        # equations that lead to an out-of-line call go first, the others as late as their
        # space allows: a cheap value is then made in the loop that uses it, not stored
        feeds = [False] * len(loop)
        for k in range(len(loop) - 1, -1, -1):
            if _is_call(loop[k]) or any(feeds[u] for u in users.get(loop[k].out.id, [])):
                feeds[k] = True

        def push(k):
            heapq.heappush(heaps.setdefault(_space(loop[k]), []), (not feeds[k], k))

        for k, w in enumerate(waiting):
            if w == 0:
                push(k)
        stages, cur, space = [], [], None
        late, blocked = set(), []  # vector sums of this stage; equations waiting on them
        while any(heaps.values()) or blocked:
            pick = None
            h = heaps.get(space)
            while h and len(cur) < SEGMENT:
                _, k = heapq.heappop(h)
                if deps[k] & late:
                    blocked.append(k)
                    continue
                pick = k
                break
            if pick is None:  # close the stage; start the next with the first ready one
                if cur:
                    stages.append((space, cur))
                cur, late = [], set()
                for k in blocked:
                    push(k)
                blocked = []
                tops = [(hp[0], sp_) for sp_, hp in heaps.items() if hp]
                if not tops:
                    break
                (_, pick), space = min(tops)
                heapq.heappop(heaps[space])
            e = loop[pick]
            cur.append(e)
            if e.prim == "sum":
                late.add(e.out.id)
            for u in users.get(e.out.id, []):
                waiting[u] -= 1
                if waiting[u] == 0:
                    push(u)
        if cur:
            stages.append((space, cur))
        return stages

    # -- storage ------------------------------------------------------------------------
    def plan_storage(self, stages, sums):
        """Decide the runs of each stage, which batched values live in the scratch ``S``
        (and where), the sums' rows, and the chunk size.

        A run is a fused loop (or one out-of-line call).  A loop that reads or writes many
        arrays costs LLVM time quadratic in their number (it checks every pair for
        overlap) and is not vectorised past a few dozen, so runs touching more than
        :data:`MAX_STREAMS` arrays are split (the values crossing the cut are stored),
        until none does."""
        self.stage_sums_all = sums
        self.runs = []
        for space, eqns in stages:  # first cut: at the calls
            runs, cur = [], []
            for e in eqns:
                if _is_call(e):
                    if cur:
                        runs.append(cur)
                    runs.append([e])
                    cur = []
                else:
                    cur.append(e)
            if cur:
                runs.append(cur)
            self.runs.append(runs)
        for _ in range(8):
            self._assign(sums)
            wide = False
            for s, runs in enumerate(self.runs):
                split = []
                for run in runs:
                    parts = self._split_wide(run)
                    wide |= len(parts) > 1
                    split += parts
                self.runs[s] = split
            if not wide:
                break
        self._assign(sums)

    def _streams(self, e):
        """Arrays one equation of a run reads or writes, by the current storage plan."""
        out = set()
        for a in e.inputs:
            if isinstance(a, Var) and (a.id in self.data_ids
                                       or self.kind.get(a.id, "local") != "local"):
                out.add(a.id)
        if self.kind.get(e.out.id, "local") != "local":
            out.add(e.out.id)
        out.update(f"t{h}" for h in self._terms_of.get(e.out.id, ()))
        if self.per_example and (e.out.id in self.out_ids
                                 or e.out.id in self._assembled_parts()):
            out.add("out")
        return out

    def _split_wide(self, run):
        if len(run) == 1:
            return [run]
        parts, cur, arrays = [], [], set()
        for e in run:
            mine = self._streams(e)
            if cur and len(arrays | mine) > MAX_STREAMS:
                parts.append(cur)
                cur, arrays = [], set()
            cur.append(e)
            arrays |= mine
        parts.append(cur)
        return parts

    def _assembled_parts(self):
        if not hasattr(self, "_parts_ids"):
            self._parts_ids = set(self.assemble_parts) if self.per_example else set()
        return self._parts_ids

    def _assign(self, sums):
        """The storage plan for the current runs (see :meth:`plan_storage`)."""
        stage_of, run_of = {}, {}
        for s, runs in enumerate(self.runs):
            for r, run in enumerate(runs):
                for e in run:
                    stage_of[e.out.id] = s
                    run_of[e.out.id] = (s, r)
        self.stage_of, self.run_of = stage_of, run_of
        # batch sums: where their term is written
        self.sum_home, self._terms_of = {}, {}
        for e in sums:
            a = e.inputs[0]
            if isinstance(a, Var) and a.id in run_of:
                self.sum_home[e.out.id] = stage_of[a.id]
                self._terms_of.setdefault(a.id, []).append(e.out.id)
            else:  # data, or a value of the batch with no equation here: the first stage
                self.sum_home[e.out.id] = None
        uses = {}  # id -> set of (stage, run) reading it
        for s, runs in enumerate(self.runs):
            for r, run in enumerate(runs):
                for e in run:
                    for a in e.inputs:
                        if isinstance(a, Var) and a.id in run_of:
                            uses.setdefault(a.id, set()).add((s, r))
        self._call_inputs = {a.id for runs in self.runs for run in runs for e in run
                             if _is_call(e) for a in e.inputs if isinstance(a, Var)}
        self.kind = {}  # id -> "local" | "row" | "full" | "acc"
        for i, (s, r) in run_of.items():
            var = self._var(i)
            call_here = len(self.runs[s][r]) == 1 and _is_call(self.runs[s][r][0])
            readers = uses.get(i, set())
            vector_sum = self._eqn(i).prim == "sum"
            if vector_sum:
                self.kind[i] = "acc"
            elif call_here or any(rs != (s, r) for rs in readers) or i in self._call_inputs:
                if var.shape and all(rs[0] == s for rs in readers):
                    self.kind[i] = "row"
                else:
                    self.kind[i] = "full" if var.shape else "row"
            else:
                self.kind[i] = "local"
        # scratch layout (in units of CH)
        self.offset, words = {}, 0
        for i in sorted(self.kind):
            k = self.kind[i]
            if k == "local":
                continue
            self.offset[i] = words
            var = self._var(i)
            words += var.shape[0] if (k == "full" and var.shape) else 1
        # term rows of batch sums
        self.term_row, self.part_offset = {}, {}
        width = 0
        for e in sums:
            a = e.inputs[0]
            self.part_offset[e.out.id] = width
            width += e.out.shape[0] if e.out.shape else 1
            if isinstance(a, Var) and self.kind.get(a.id, "local") == "local" \
                    and a.id in run_of:
                self.term_row[e.out.id] = words
                words += 1
        self.part_width = width
        self.scratch_words = words
        self.out_words = 0
        if self.per_example:
            for kind, atoms in self.groups:
                self.out_words += sum(size_of(getattr(a, "shape", ())) for a in atoms)
        ch = CHUNK
        # the chunk's rows of the per-example outputs count too: stored a column at a
        # time, they are touched all at once
        while ch > 16 and ch * (words + self.out_words) > SCRATCH_WORDS:
            ch //= 2
        self.ch = ch

    def _var(self, i):
        return self._eqn(i).out

    def _eqn(self, i, default=KeyError):
        if not hasattr(self, "_by_id"):
            self._by_id = {e.out.id: e for e in self.prog.eqns}
        if default is KeyError:
            return self._by_id[i]
        return self._by_id.get(i, default)

    def _assembled(self, a):
        """The ``assemble`` equation that makes ``a``, or None (``a`` is one whole part:
        an input, or a dense cotangent of the entire parameter vector)."""
        e = self._eqn(a.id, None)
        return e if e is not None and e.prim == "assemble" else None

    # -- per-chunk code -------------------------------------------------------------------
    def chunk_body(self, stages, sums):
        """The statements run per chunk: the stages (inline or as segment functions) and
        the per-chunk sums of B0 terms."""
        self.stage_sums = {}
        for e in sums:
            self.stage_sums.setdefault(self.sum_home[e.out.id], []).append(e)
        texts = []
        if None in self.stage_sums:  # sums of data (no stage makes their term)
            texts.append(("pre", self.direct_sums(self.stage_sums[None])))
        for s, (space, eqns) in enumerate(stages):
            texts.append((s, self.stage_code(s, space)))
        texts.append(("data", self.data_writes()))
        views = self.view_lines()
        if len(stages) <= 1 or sum(len(e) for _, e in stages) <= SEGMENT:
            return views + [line for _, t in texts for line in t]
        return self.segmented(texts, views)

    def view_lines(self):
        """Views made per chunk of the data and of the per-example outputs, so loops index
        them with their own counter, which LLVM knows is non-negative (an index offset by
        a value it cannot bound costs a wraparound check per element).  The scratch is
        indexed at constant offsets, ``S[3 * CH + j]``: one array however many values it
        holds (numba and LLVM spend time per array a function handles)."""
        lines = []
        for i in self.data:
            nm = self.name(i.var)
            lines.append(f"{nm}_c = {nm}[start:start + m]")
        if self.per_example:
            for g in range(len(self.groups)):
                lines.append(f"out{g}_c = out{g}[start:start + m]")
        return lines

    def direct_sums(self, sums):
        lines = []
        for e in sums:
            a = e.inputs[0]
            o = self.part_offset[e.out.id]
            if isinstance(a, Lit):
                lines.append(f"part[c * PW + {o}] = {literal(a.value)} * m")
            elif a.id in self.data_ids:
                lines.append(f"part[c * PW + {o}] = _rt.vsum_at({self.name(a)}_c, 0, m)")
            else:
                lines.append(f"part[c * PW + {o}] = _rt.vsum_at(S, {self._at(a)}, m)")
        return lines

    def stage_code(self, s, space):
        runs = self.runs[s]
        sums_here = self.stage_sums.get(s, [])
        lines = []
        accs = [e for run in runs for e in run if e.prim == "sum"]
        for e in accs:
            lines += ["for j in range(m):", f"    {self.slot(e.out)} = 0.0"]
        inner = []
        for r, run in enumerate(runs):
            if len(run) == 1 and _is_call(run[0]):
                inner += self.call_lines(run[0], space)
            else:
                inner += self.run_lines(run, space, sums_here)
        # batch sums of the vector values are reduced per t; of the scalars (the sums over
        # t made here) after the t loop
        per_t = [e for e in sums_here if space and getattr(e.inputs[0], "shape", ())]
        after = [e for e in sums_here if e not in per_t]
        inner += self.sum_lines(per_t, space)
        if space:
            reads = self.vector_reads(runs)
            lines.append(f"for t in range({space}):")
            lines += ["    " + x for x in reads + inner]
        else:
            lines += inner
        writes = self.output_writes(accs, set(), from_slot=True)  # sums over t, once made
        if writes:
            lines += ["for j in range(m):"] + ["    " + w for w in writes]
        return lines + self.sum_lines(after, 0)

    def vector_reads(self, runs):
        """Hoisted loads of the batch-invariant vectors a B1 stage reads at ``t``."""
        seen, lines = set(), []
        for run in runs:
            for e in run:
                for a in e.inputs:
                    if isinstance(a, Var) and not a.batched and a.shape and a.id not in seen:
                        seen.add(a.id)
                        lines.append(f"{self.name(a)}_t = {self.name(a)}[t]")
        return lines

    def slot(self, a, j="j"):
        """The scratch element holding batched value ``a`` for example ``j``."""
        k = self.kind[a.id]
        return f"S[{self._at(a)} + {j}]"

    def read(self, a, members):
        if isinstance(a, Lit):
            return self.lit(a.value)
        if a.id in members:
            return f"s{a.id}"
        if a.id in self.data_ids:
            return f"{self.name(a)}_i"
        if not a.batched:
            return f"{self.name(a)}_t" if a.shape else self.name(a)
        return self.slot(a)

    def run_lines(self, run, space, sums_here):
        members = {e.out.id for e in run}
        body = []
        loads = []
        for e in run:
            for a in e.inputs:
                if isinstance(a, Var) and a.id in self.data_ids:
                    ld = f"{self.name(a)}_i = {self.name(a)}_c[j]"
                    if ld not in loads:
                        loads.append(ld)
        for e in run:
            if e.prim == "sum":
                body.append(f"{self.slot(e.out)} += {self.read(e.inputs[0], members)}")
                continue
            names = [self.read(a, members) for a in e.inputs]
            body.append(f"s{e.out.id} = {registry[e.prim].emit(e, names, self.printer)}")
            if self.kind.get(e.out.id) in ("row", "full"):
                body.append(f"{self.slot(e.out)} = s{e.out.id}")
        for e in sums_here:
            a = e.inputs[0]
            if isinstance(a, Var) and a.id in members and e.out.id in self.term_row:
                body.append(f"S[{self.term_row[e.out.id]} * CH + j] = s{a.id}")
        body += self.output_writes([e for e in run if e.prim != "sum"], members)
        return ["for j in range(m):"] + ["    " + x for x in loads + body]

    def _at(self, a):
        """The scratch offset of batched value ``a`` for the chunk (its row at ``t`` for a
        stored vector)."""
        o = self.offset[a.id]
        if self.kind[a.id] == "full" and a.shape:
            return f"({o} + t) * CH"
        return f"{o} * CH"

    def stage_sums_of(self, runs):
        """The batch sums whose terms a stage (given by its runs) makes."""
        first = next((e for run in runs for e in run), None)
        if first is None:
            return []
        return self.stage_sums.get(self.stage_of[first.out.id], [])

    def call_lines(self, e, space):
        (a,) = e.inputs
        f = _call_name(e.params)
        out = e.out
        if isinstance(a, Var) and a.id in self.data_ids:
            src = f"{self.name(a)}_c, 0"
        elif isinstance(a, Var) and a.batched:
            src = f"S, {self._at(a)}"
        else:
            raise GradcError("internal: a batch-invariant call in the loop")
        lines = [f"{f}_v({src}, S, {self._at(out)}, m)"]
        writes = self.output_writes([e], {e.out.id}, from_slot=True)
        if writes:
            lines += ["for j in range(m):"] + ["    " + w for w in writes]
        return lines

    def sum_lines(self, sums_here, space):
        """Per-chunk reductions of the batch sums whose terms this stage made."""
        lines = []
        for e in sums_here:
            a = e.inputs[0]
            o = self.part_offset[e.out.id]
            at = f"{o} + t" if space else f"{o}"
            if e.out.id in self.term_row:
                src = f"{self.term_row[e.out.id]} * CH"
            else:
                src = self._at(a)
            lines.append(f"part[c * PW + {at}] = _rt.vsum_at(S, {src}, m)")
        return lines

    # -- outputs --------------------------------------------------------------------------
    def output_allocs(self):
        """Per-example output arrays (reduce=None)."""
        self.out_slots = {}  # id -> list of (array name, column or None or where)
        self.assign_once = set()  # per-example arrays whose entries are each stored once
        if not self.per_example:
            return []
        lines = []
        for g, (kind, atoms) in enumerate(self.groups):
            name = f"out{g}"
            if kind == "scalar":
                lines.append(f"{name} = _rt.empty(n)")
                self._slot(atoms[0], (name, None, None))
            elif kind == "array":
                (a,) = atoms
                P = self.array_width(a)
                lines.append(f"{name} = _rt.empty((n, {P}))")
                if self._covered_once(a, P):
                    self.assign_once.add(name)  # every entry stored once: no zeros, no +=
                else:
                    lines += ["for i in range(n):", f"    for t in range({P}):",
                              f"        {name}[i, t] = 0.0"]
                self._slot(a, (name, "array", None))
            else:
                lines.append(f"{name} = _rt.empty((n, {len(atoms)}))")
                for k, a in enumerate(atoms):
                    self._slot(a, (name, k, None))
        return lines

    def _covered_once(self, a, P):
        """True when the per-example array output ``a`` of width ``P`` has each of its
        entries stored exactly once (its parts are disjoint and cover it), so it needs
        neither zeros first nor ``+=``: one write pass over an (n, P) array instead of
        three."""
        if isinstance(a, Lit):
            return a.value != 0.0
        if not a.batched:
            return True
        e = self._assembled(a)
        if e is None:
            return True  # one whole part
        counts = np.zeros(P, dtype=np.int64)
        for w in e.params[1]:
            if w is None:
                counts += 1
            elif isinstance(w[0], int):
                counts[w[0]] += 1
            else:
                np.add.at(counts, np.asarray(spec_indices(w), dtype=np.int64), 1)
        return bool((counts == 1).all())

    def array_width(self, a):
        for i in self.prog.inputs_of("param"):
            if i.var.shape:
                return i.var.shape[0]
        return a.shape[0] if getattr(a, "shape", ()) else 1

    def _slot(self, a, where):
        if isinstance(a, Var):
            self.out_slots.setdefault(a.id, []).append(where)

    def output_writes(self, run, members, from_slot=False):
        """Stores of per-example outputs made in ``run`` (and of the parts of a per-example
        assembled gradient)."""
        if not self.per_example:
            return []
        lines = []
        for e in run:
            val = self.slot(e.out) if from_slot else f"s{e.out.id}"
            for name, col, _ in self.out_slots.get(e.out.id, []):
                if col is None:
                    lines.append(f"{name}_c[j] = {val}")
                elif col != "array":
                    lines.append(f"{name}_c[j, {col}] = {val}")
            for name, part in self.assemble_parts.get(e.out.id, []):
                lines += self._part_store(name, val, e.out, part)
        return lines

    def data_writes(self):
        """Per-example outputs (and parts of an assembled one) that are data inputs."""
        if not self.per_example:
            return []
        body = []
        for i in self.data:
            val = f"{self.name(i.var)}_c[j]"
            for name, col, _ in self.out_slots.get(i.var.id, []):
                body.append(f"{name}_c[j] = {val}" if col is None
                            else f"{name}_c[j, {col}] = {val}")
            for name, part in self.assemble_parts.get(i.var.id, []):
                body += self._part_store(name, val, i.var, part)
        if not body:
            return []
        return ["for j in range(m):"] + ["    " + b for b in body]

    def _part_store(self, name, val, var, w):
        op = "=" if name in self.assign_once else "+="
        if w is None:  # the whole row: a vector (stored element t) or a width-1 scalar
            return [f"{name}_c[j, {'t' if getattr(var, 'shape', ()) else '0'}] {op} {val}"]
        if isinstance(w[0], int):
            return [f"{name}_c[j, {w[0]}] {op} {val}"]
        return [f"{name}_c[j, {self._index_expr(w)}] {op} {val}"]

    def _index_expr(self, w):
        if w[0] == "slice":
            return f"{w[1]} + {w[2]} * t"
        return f"{self.table(w[1])}[t]"

    def output_fills(self):
        """Per-example outputs that are batch-invariant (the same for every example)."""
        lines = []
        if not self.per_example:
            return lines
        for g, (kind, atoms) in enumerate(self.groups):
            name = f"out{g}"
            for k, a in enumerate(atoms):
                if kind == "array":
                    lines += self._fill_array(name, a)
                elif isinstance(a, Lit) or not a.batched:
                    v = self.name(a)
                    col = "" if kind == "scalar" else f", {k}"
                    lines += [f"for i in range(n):", f"    {name}[i{col}] = {v}"]
        return lines

    def _fill_array(self, name, a):
        if isinstance(a, Lit):
            return [] if a.value == 0.0 else [f"{name}[:, :] = {literal(a.value)}"]
        if a.batched:  # written part by part in the loop, but for batch-invariant parts
            e = self._assembled(a)
            if e is None:
                return []  # one whole part, stored in the loop
            op = "=" if name in self.assign_once else "+="
            lines = []
            for p, w in zip(e.inputs, e.params[1]):
                if isinstance(p, Var) and p.batched:
                    continue
                v = literal(p.value) if isinstance(p, Lit) else self.name(p)
                if w is None:
                    P = self.array_width(a)
                    at = f"{v}[t]" if getattr(p, "shape", ()) else v
                    lines += ["for i in range(n):", f"    for t in range({P}):",
                              f"        {name}[i, t] {op} {at}"]
                elif isinstance(w[0], int):
                    lines += ["for i in range(n):", f"    {name}[i, {w[0]}] {op} {v}"]
                else:
                    idx = spec_indices(w)
                    at = f"{v}[t]" if getattr(p, "shape", ()) else v
                    lines += ["for i in range(n):", f"    for t in range({len(idx)}):",
                              f"        {name}[i, {self._index_expr(w)}] {op} {at}"]
            return lines
        P = self.array_width(a)
        return [f"for i in range(n):", f"    for t in range({P}):",
                f"        {name}[i, t] = {self.name(a)}[t]"]

    # -- per-example assembled gradients --------------------------------------------------
    @property
    def assemble_parts(self):
        """{part id: [(output array, where)]} for the batched ``assemble`` outputs."""
        if not hasattr(self, "_assemble_parts"):
            parts = {}
            for g, (kind, atoms) in enumerate(self.groups):
                for a in atoms:
                    if kind == "array" and isinstance(a, Var) and a.batched:
                        e = self._assembled(a)
                        if e is None:  # one whole part (a family reading all of the
                            # parameter vector through one full slice)
                            parts.setdefault(a.id, []).append((f"out{g}", None))
                            continue
                        for p, w in zip(e.inputs, e.params[1]):
                            if isinstance(p, Var):
                                parts.setdefault(p.id, []).append((f"out{g}", w))
            self._assemble_parts = parts
        return self._assemble_parts

    def returned(self, groups):
        if self.per_example:
            return ", ".join(f"out{g}" for g in range(len(groups)))
        parts = []
        for kind, atoms in groups:
            if kind == "scalar":
                parts.append(f"float({self.name(atoms[0])})")
            elif kind == "array":
                (a,) = atoms
                P = self.array_width(a)
                if isinstance(a, Lit):
                    parts.append(f"np.full({P}, {literal(a.value)})")
                elif self._aliases_input(a):
                    parts.append(f"{self.name(a)}.copy()")
                else:
                    parts.append(self.name(a))
            else:
                parts.append("np.array([" + ", ".join(
                    f"float({self.name(a)})" for a in atoms) + "])")
        return ", ".join(parts)

    def _aliases_input(self, a):
        """True when array ``a`` may share memory with an argument (a view of params)."""
        seen = a
        while isinstance(seen, Var):
            if any(i.var.id == seen.id for i in self.prog.inputs):
                return True
            e = self._by_id_all().get(seen.id)
            if e is None or e.prim != "gather" or e.params[0] != "slice":
                return False
            seen = e.inputs[0]
        return False

    def _by_id_all(self):
        return {e.out.id: e for e in self.prog.eqns}

    # -- segments -------------------------------------------------------------------------
    def segmented(self, texts, views):
        """Split the per-chunk statements into segment functions of bounded size."""
        segs, cur, size = [], [], 0
        for key, t in texts:
            if cur and size + len(t) > 4 * SEGMENT:
                segs.append(cur)
                cur, size = [], 0
            cur.append((key, t))
            size += len(t)
        if cur:
            segs.append(cur)
        body = []
        for k, seg in enumerate(segs):
            text = [line for _, t in seg for line in t]
            args = self.segment_args(_words(text))
            fname = f"_k_{self.fname}_{k}"
            head = [f"def {fname}({', '.join(args)}):",
                    f'    """Stages {seg[0][0]}..{seg[-1][0]} of the loop of {self.fname}, '
                    'for one chunk."""',
                    f"    CH = {self.ch}"] + ([f"    PW = {self.part_width}"]
                                                  if self.part_width else [])
            words = _words(text)
            seg_views = [v for v in views if v.split(" = ")[0] in words]
            self.helpers.append("\n".join(head + ["    " + x for x in seg_views + text])
                                + "\n\n")
            self.helper_names.append(fname)
            body.append(f"{fname}({', '.join(args)})")
        return body

    def segment_args(self, words):
        args = ["S", "c", "start", "m"]
        if "part" in words:
            args.append("part")
        for i in self.data:
            nm = self.name(i.var)
            if nm in words or f"{nm}_c" in words:
                args.append(nm)
        extra = set()
        for w in words:
            base = w[:-2] if w.endswith("_c") else w
            if base.startswith("out") and base[3:].isdigit():
                extra.add(base)
        args += sorted(extra)
        # batch-invariant values: scalars and vectors the text names
        if not hasattr(self, "_unbatched"):
            self._unbatched = self._unbatched_names()
        for nm in sorted(self._unbatched & (words | {w[:-2] for w in words
                                                     if w.endswith("_t")})):
            args.append(nm)
        return args

    def _unbatched_names(self):
        out = set()
        for e in self.prog.eqns:
            if not e.out.batched:
                out.add(self.name(e.out))
        for i in self.prog.inputs:
            if not i.var.batched:
                out.add(self.name(i.var))
        return out


def _ident_of(hint, prefix, taken):
    from .emit import _ident

    return _ident(hint, prefix, taken)


def _words(lines):
    import re

    out = set()
    for line in lines:
        out.update(re.findall(r"[A-Za-z_]\w*", line))
    return out


def _phases(eqns):
    """Split into batch-invariant work before the loop, the per-example loop body, the
    sums over the batch, and batch-invariant work after the loop."""
    after = set()
    pre, loop, post, sums = [], [], [], []
    for e in eqns:
        deps = {a.id for a in e.inputs if isinstance(a, Var)}
        if e.prim == "batch_sum":
            sums.append(e)
            after.add(e.out.id)
        elif e.out.batched:
            assert not deps & after, "a per-example value depends on a sum over the batch"
            loop.append(e)
        elif deps & after:
            post.append(e)
            after.add(e.out.id)
        else:
            pre.append(e)
    return pre, loop, post, sums
