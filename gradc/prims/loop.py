"""The loop-nest primitive: an indexed map or reduction with affine gather reads.

Contract
--------
``loop`` is one equation ``out = loop(x_0, ..., x_{m-1}; spec)`` with a :class:`LoopSpec`:

* ``dims``: the loop nest, outermost first, each ``(index, lo, hi)`` with ``lo`` and ``hi``
  affine in the indices before it (inclusive bounds: a triangular range is
  ``(m, 0, j - 1)``);
* ``reads``: per input, the affine index at which the body reads it (``()`` for a scalar),
  possibly with a key (below);
* ``body``: a scalar sympy expression of the placeholders ``_a0, _a1, ...`` (input k read
  at ``reads[k]``) and of the loop indices themselves (as integers);
* ``shape`` and ``out``: the per-example shape of the result and the affine index of it
  that each point of the nest *adds* its body to.

So ``out = zeros(shape)``, then ``out[out_index] += body`` for every point of the nest: a
map when ``out`` names every index once, a reduction when it leaves indices out, a
scatter-add when it is any other affine map.  Elements no point reaches are 0.  The
result is batched when an input is, unless ``summed``: then the examples of the batch are
one more reduction index and the result is batch-invariant.

*Gathers by data index*: an index (of a read or of the written index) may also hold one
*key*, the placeholder of a scalar input whose value is an integer (a data symbol such as
the camera ``ci`` of each observation): ``C[_a0, j]`` reads row ``ci`` of ``C``.  An index
is then ``key + affine(loop indices)``, the key with coefficient 1; the key's values are
checked in the kernel, before the nest runs, against the range that keeps every access
inside its array (:func:`key_ranges`), and a bad value raises a
:class:`gradc.codegen.runtime.DataIndexError` (a :class:`gradc.GradcError` and an
``IndexError``) naming the data symbol and the example.  The
cotangent of a gathered input is a scatter-add at the same keyed index, summed over the
batch in example order (never in parallel: deterministic).

The family is closed under both AD transforms, so nothing is ever unrolled: the tangent is
the same nest over the inputs and their tangents (the body's partials from
:func:`gradc.prims.partials`, read where the inputs are read), and the cotangent of input
k is the same nest again, now adding ``ct[out] * d body / d x_k`` at ``reads[k]`` (a
scatter-add into the input's shape; summed over the batch for a batch-invariant input).

Bounds are checked where the loops are built (:mod:`gradc.indexed`): every read and every
write of every point is inside its array.  The code (``emit_array``, :class:`LoopWriter`)
is a readable loop nest: reductions into a local accumulator when the written indices are
the leading loop indices (four interleaved sums when the innermost one is long), ``+=``
into a zeroed array otherwise (reads that do not move with the innermost index read once
before it); a nest that is a contraction of two arrays is one BLAS product instead
(:func:`gradc.codegen.runtime.contract`).  The loop order is chosen when the equation is
built (:func:`loop`).  The ``sparsity`` rule is exact, point by point, for nests of up to
``Loop.SPARSITY_POINTS`` points.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass
from functools import lru_cache

import sympy as sp

from ..errors import GradcError, short
from ..ir import Lit, Var, shape_text, size_of, type_of
from . import Primitive, Summed, register
from .scalar import number, partials, placeholder


@dataclass(frozen=True)
class LoopSpec:
    """The parameters of a ``loop`` equation (see the module docstring)."""

    dims: tuple  # ((index Symbol, lo, hi), ...), outermost first
    reads: tuple  # per input: a tuple of affine sympy expressions
    body: sp.Expr
    shape: tuple
    out: tuple  # affine index into the result
    summed: bool = False

    @property
    def indices(self):
        return tuple(d[0] for d in self.dims)

    def points(self) -> int:
        """The number of points of the nest (exact, also for triangular ranges)."""
        return _points(self.dims)


@lru_cache(maxsize=1024)
def _points(dims) -> int:
    if not dims:
        return 1
    if all(lo.is_Integer and hi.is_Integer for _, lo, hi in dims):
        return math.prod(max(0, int(hi) - int(lo) + 1) for _, lo, hi in dims)
    expr = sp.S.One
    for sym, lo, hi in reversed(dims):
        expr = sp.Sum(expr, (sym, lo, hi)).doit()
    return int(expr)


def _text(e) -> str:
    return str(e).replace(" ", "")


def describe_nest(spec):
    return ", ".join(f"{s}={_text(lo)}..{_text(hi)}" for s, lo, hi in spec.dims)


@register
class Loop(Primitive):
    name = "loop"
    structure = "dense"

    def abstract_eval(self, inputs, params):
        spec = params
        if len(spec.reads) != len(inputs):
            raise AssertionError("loop: one read per input")
        for a, r in zip(inputs, spec.reads):
            if len(r) != len(type_of(a)[0]):
                raise GradcError(
                    f"loop: input of shape {shape_text(type_of(a)[0])} read with "
                    f"{len(r)} indices")
        if len(spec.out) != len(spec.shape):
            raise AssertionError("loop: the written index must match the shape")
        isb = any(type_of(a)[1] for a in inputs)
        if spec.summed:
            assert isb, "a loop summed over the batch needs a batched input"
            return tuple(spec.shape), False
        return tuple(spec.shape), isb

    def describe(self, eqn):
        spec = eqn.params
        keys = {placeholder(k): sp.Symbol(repr(a)) for k, a in enumerate(eqn.inputs)}

        def idx(r):
            return ",".join(_text(sp.sympify(i).xreplace(keys)) for i in r)

        reads = {placeholder(k): sp.Symbol(f"{a!r}[{idx(r)}]" if r else repr(a))
                 for k, (a, r) in enumerate(zip(eqn.inputs, spec.reads))}
        target = f"[{idx(spec.out)}]" if spec.out else ""
        batch = " over the batch" if spec.summed else ""
        return (f"loop({describe_nest(spec)}{batch}: out{target} += "
                f"{_text(spec.body.xreplace(reads))})")

    def cost(self, eqn, active):
        """Multiply-adds of one tangent or adjoint sweep: points times active inputs."""
        spec = eqn.params
        n_active = sum(1 for a in eqn.inputs if isinstance(a, Var) and a.id in active)
        return spec.points() * max(1, n_active), 0.0

    def jvp(self, b, eqn, tangents):
        spec = eqn.params
        m = len(eqn.inputs)
        ds = loop_partials(spec.body, m)
        inputs, reads, terms = list(eqn.inputs), list(spec.reads), []
        for k, t in enumerate(tangents):
            if t is None or ds[k] == 0:
                continue
            inputs.append(t)
            reads.append(spec.reads[k])
            terms.append(ds[k] * placeholder(len(inputs) - 1))
        if not terms:
            return None
        return loop(b, spec.dims, inputs, reads, sp.Add(*terms), spec.shape, spec.out,
                    spec.summed)

    def vjp(self, b, eqn, ct, active):
        spec = eqn.params
        m = len(eqn.inputs)
        ds = loop_partials(spec.body, m)
        inputs = list(eqn.inputs) + [ct]
        reads = list(spec.reads) + [spec.out if type_of(ct)[0] else ()]
        ctp = placeholder(m)
        # In a map (each point writes its own element), an input read at the written
        # index gets the tensor g = ct * d body / d input; another input with the same
        # partial (a bias B[c] beside z[i, j, c]) gets the sum of g over the indices it
        # does not use, instead of a second pass computing that partial again.
        full = {ds[k]: k for k in range(m) if active[k] and ds[k] != 0
                and tuple(spec.reads[k]) == tuple(spec.out) and _is_map(spec)
                and type_of(eqn.inputs[k])[0] == tuple(spec.shape)
                and type_of(eqn.inputs[k])[1] == eqn.out.batched}
        out = []
        for k, x in enumerate(eqn.inputs):
            if not active[k] or ds[k] == 0:
                out.append(None)
                continue
            shape, xb = type_of(x)
            if ds[k] in full and full[ds[k]] != k:
                g = loop(b, spec.dims, inputs, reads, ds[k] * ctp, spec.shape, spec.out)
                summed = not xb and type_of(g)[1]
                c = loop(b, spec.dims, [g], [spec.out], placeholder(0), shape, spec.reads[k],
                         summed)
                out.append(Summed(c) if summed and c is not None else c)
                continue
            sib = None if xb or not shape or keys_in(spec.reads[k]) else next(
                (i for i in range(m) if i != k and active[i] and ds[i] == ds[k]
                 and type_of(eqn.inputs[i]) == (shape, True)
                 and tuple(spec.reads[i]) == tuple(spec.reads[k])), None)
            if sib is not None:
                # a batched input read at the same index with the same partial (z[e, k, j]
                # beside a bias c[k, j]): its cotangent is this one before the sum over
                # the batch, so this one is that tensor summed, not the nest again
                g = loop(b, spec.dims, inputs, reads, ds[k] * ctp, shape, spec.reads[k])
                if g is not None and type_of(g)[1]:
                    idx = tuple(sp.Symbol(f"t{a}", integer=True) for a in range(len(shape)))
                    whole = tuple((s, sp.S.Zero, sp.Integer(d - 1)) for s, d in zip(idx, shape))
                    c = loop(b, whole, [g], [idx], placeholder(0), shape, idx, True)
                    out.append(Summed(c) if c is not None else c)
                    continue
            body = ds[k] * ctp
            # summed over the batch here only if this body reads a batched value; else
            # gradc.ad.total sums the batch-invariant contribution (times n)
            used = {int(str(s)[2:]) for s in body.free_symbols if _PH.fullmatch(str(s))}
            summed = not xb and any(type_of(inputs[u])[1] for u in used)
            c = loop(b, spec.dims, inputs, reads, body, shape, spec.reads[k], summed)
            out.append(Summed(c) if summed and c is not None else c)
        return out

    def emit_array(self, eqn, ctx):
        return LoopWriter(eqn, ctx).lines()

    #: Nests with more points than this use the conservative sparsity rule.
    SPARSITY_POINTS = 200_000

    def sparsity(self, eqn, deps, pattern):
        """Exact, point by point: the output element a point writes depends on the
        elements it reads (those whose partial is not identically zero), and two reads of
        one point meet where the body's second partial by them is not identically zero.
        Different points never meet (they are separate terms of a sum).

        A read at a data index (a key) reaches an element only the data know: it is a
        :class:`gradc.sparsity.Gather` (the array, the index without the keys, the key
        of each axis) when the pattern is taken for given data (``pattern.gathers``),
        resolved per example by :func:`gradc.sparsity.jacobian_pattern`; otherwise it
        depends on every element a key value in range could name (``T[ci, 0]``: column 0
        of T).  A write at a data index takes the conservative rule."""
        from ..sparsity import EMPTY, Gather, deps_array, whole
        from .scalar import second_partials

        spec = eqn.params
        keyed = has_keys(spec)
        if spec.points() > self.SPARSITY_POINTS or keyed and keys_in(spec.out):
            return super().sparsity(eqn, deps, pattern)
        static = keyed and not getattr(pattern, "gathers", False)
        ranges = key_ranges(spec, [type_of(a)[0] for a in eqn.inputs]) if static else {}
        m = len(eqn.inputs)
        first, second = second_partials(spec.body, m)
        syms = spec.indices
        keyvar = {placeholder(k): a.id for k, a in enumerate(eqn.inputs)}
        splits = [[split_key(i, "loop") for i in r] for r in spec.reads]
        forms = [[check_affine(rest, syms, "loop") for _, rest in r] for r in splits]
        gathers = [tuple(keyvar[k] if k is not None else None for k, _ in r)
                   if any(k is not None for k, _ in r) and whole(d) else None
                   for r, d in zip(splits, deps)]
        out_form = [check_affine(i, syms, "loop") for i in spec.out]
        bounds = [(check_affine(lo, syms, "loop"), check_affine(hi, syms, "loop"))
                  for _, lo, hi in spec.dims]
        out = deps_array(spec.shape, EMPTY)

        def at(form, env):
            const, coeffs = form
            return const + sum(c * env[s] for s, c in coeffs.items())

        env = {}

        # iterate over the nest (inclusive affine bounds), outermost first
        def points(level):
            if level == len(syms):
                yield
                return
            lo, hi = (at(f, env) for f in bounds[level])
            for v in range(lo, hi + 1):
                env[syms[level]] = v
                yield from points(level + 1)

        def read(d, fs, keys, a):
            idx = tuple(at(f, env) for f in fs)
            if keys is None:
                return d[idx] if all(k is None for k, _ in splits[a]) else EMPTY
            if not static:
                return frozenset((Gather(eqn.inputs[a].id, idx, keys),))
            # without the data: every element some key value in range could name
            axes = [range(ranges[k][0], ranges[k][1] + 1) if k is not None else (0,)
                    for k, _ in splits[a]]
            return frozenset().union(*(d[tuple(i + c for i, c in zip(idx, combo))]
                                       for combo in itertools.product(*axes)))

        for _ in points(0):
            got = [read(d, fs, g, a) for a, (d, fs, g) in enumerate(zip(deps, forms, gathers))]
            reach = frozenset().union(*(g for g, f in zip(got, first) if f))
            o = tuple(at(f, env) for f in out_form)
            out[o] = out[o] | reach
            for a in range(m):
                for b_ in range(a, m):
                    if second[a][b_]:
                        pattern.meet(got[a], got[b_])
        return out


def _is_map(spec):
    """Every point of the nest writes its own element: the written index is the nest's
    indices, in order, each over its whole axis."""
    return (len(spec.out) == len(spec.dims) == len(spec.shape) and all(
        o == s and lo == 0 and hi == d - 1
        for o, (s, lo, hi), d in zip(spec.out, spec.dims, spec.shape)))


@lru_cache(maxsize=4096)
def loop_partials(body, m):
    """The partials of a loop body by its m placeholders, in terms of the inputs only (a
    loop has no per-point output value to reuse)."""
    ds = partials(body, m)
    return tuple(d.xreplace({placeholder(m): body}) if d != 0 else d for d in ds)


def loop(b, dims, inputs, reads, body, shape, out, summed=False, hint=""):
    """Emit a canonical ``loop`` equation and return its atom (``None`` for a zero body).

    Literal inputs are folded into the body (and into the indices, for a literal key);
    inputs neither the body nor an index uses, and repeated (input, read) pairs, are
    dropped and the placeholders renumbered: keys first, then in order of use."""
    body = sp.sympify(body)
    lits = {placeholder(k): number(a.value) for k, a in enumerate(inputs) if isinstance(a, Lit)}
    if lits:
        body = body.xreplace(lits)
        ilits = {p: sp.Integer(int(v)) for p, v in lits.items()}
        reads = [tuple(sp.sympify(i).xreplace(ilits) for i in r) for r in reads]
        out = tuple(sp.sympify(i).xreplace(ilits) for i in out)
    if body == 0:
        return None
    free = body.free_symbols
    used_keys = set(keys_in(out))
    for k, r in enumerate(reads):
        if placeholder(k) in free:
            used_keys |= keys_in(r)
    slot, ren, keep, keep_reads = {}, {}, [], []

    def take(k, a, r):
        key = (a.id, r)
        if key not in slot:
            slot[key] = len(keep)
            keep.append(a)
            keep_reads.append(r)
        ren[placeholder(k)] = placeholder(slot[key])

    for k, a in enumerate(inputs):  # keys: scalars, read at ()
        if placeholder(k) in used_keys and isinstance(a, Var):
            take(k, a, ())
    fix = lambda idx: tuple(sp.sympify(i).xreplace(ren) for i in idx)  # noqa: E731
    for k, (a, r) in enumerate(zip(inputs, reads)):
        if isinstance(a, Var) and placeholder(k) in free:
            take(k, a, fix(r))
    body = body.xreplace(ren)
    out = fix(out)
    summed = bool(summed) and any(type_of(a)[1] for a in keep)
    dims, keep_reads, body, out = _single_points(dims, keep_reads, body, out)
    dims = _order(dims, keep, keep_reads, tuple(shape), out)
    spec = LoopSpec(tuple(dims), tuple(keep_reads), body, tuple(shape), tuple(out), summed)
    return b.emit("loop", keep, spec, hint=hint)


def keys_in(index):
    """The key placeholders of an index (a tuple of sympy expressions)."""
    return {s for i in index for s in sp.sympify(i).free_symbols if _PH.fullmatch(s.name)}


def has_keys(spec):
    return bool(keys_in(spec.out)) or any(keys_in(r) for r in spec.reads)


def split_key(expr, where):
    """``(key placeholder or None, rest)`` of one index: ``expr = key + rest``, or a
    :class:`GradcError` naming ``where`` when a key has another coefficient or there are
    two."""
    expr = sp.expand(sp.sympify(expr))
    ks = sorted(keys_in((expr,)), key=str)
    if not ks:
        return None, expr
    if len(ks) > 1:
        raise GradcError(f"{where}: one index uses two data values; an index may hold one "
                         "data symbol (plus loop indices)")
    k = ks[0]
    rest = sp.expand(expr - k)
    if rest.has(k):
        raise GradcError(f"{where}: a data symbol used as an index must appear with "
                         "coefficient 1 (index = data symbol + loop indices + constant)")
    return k, rest


def key_ranges(spec, shapes):
    """{key placeholder: (lo, hi)}: the values of each key that keep every access of the
    nest inside its array (``shapes``: per input, then the result's), for every point."""
    out = {}
    accesses = list(zip(spec.reads, shapes)) + [(spec.out, tuple(spec.shape))]
    for idx, shape in accesses:
        for i, d in zip(idx, shape):
            k, rest = split_key(i, "loop")
            if k is None:
                continue
            lo = -extreme(rest, spec.dims, -1)
            hi = d - 1 - extreme(rest, spec.dims, 1)
            a, z = out.get(k, (lo, hi))
            out[k] = (max(a, lo), min(z, hi))
    return out


def _single_points(dims, reads, body, out):
    """Indices whose range is one value are replaced by it (no loop of length 1)."""
    sub = {}
    kept = []
    for sym, lo, hi in dims:
        lo, hi = sp.sympify(lo).xreplace(sub), sp.sympify(hi).xreplace(sub)
        if lo == hi:
            sub[sym] = lo
        else:
            kept.append((sym, lo, hi))
    if not sub:
        return tuple(dims), tuple(reads), body, tuple(out)
    fix = lambda idx: tuple(sp.expand(sp.sympify(i).xreplace(sub)) for i in idx)  # noqa: E731
    return (tuple(kept), tuple(fix(r) for r in reads), body.xreplace(sub), fix(out))


def _strides(shape):
    out, acc = [], 1
    for d in reversed(shape):
        out.append(acc)
        acc *= d
    return out[::-1]


def _small_target(dims, written, shape):
    """A result of at most 4096 elements reduced over at least 64 points per element."""
    if size_of(shape) > 4096:
        return False
    red = tuple(d for d in dims if d[0] not in written)
    if not all(d[1].is_Integer and d[2].is_Integer for d in red):
        return False
    return _points(red) >= 64


def _vector_axis(sym, dims, accesses, shape):
    """True when ``sym`` walks the result's last axis (the whole axis, at least 4 long,
    stride 1) and every array with stride 1 or 0."""
    d = next(d for d in dims if d[0] == sym)
    if not (d[1] == 0 and d[2].is_Integer and shape and int(d[2]) + 1 == shape[-1] >= 4):
        return False
    for idx, shp in accesses:
        st = sum(int(sp.sympify(i).coeff(sym)) * w for i, w in zip(idx, _strides(shp)))
        if st not in (0, 1):
            return False
    return True


def _order(dims, inputs, reads, shape, out):
    """The loop order: indices written one to one first (in the result's axis order, so
    the rest accumulates in a register), then by decreasing memory stride (the index that
    walks some array contiguously innermost); a range never precedes the indices its
    bounds use."""
    syms = [d[0] for d in dims]
    if len(syms) < 2:
        return tuple(dims)
    accesses = [(r, type_of(a)[0]) for a, r in zip(inputs, reads) if type_of(a)[0]]
    if shape:
        accesses.append((out, shape))
    key = {}
    for s in syms:
        best = None
        for idx, shp in accesses:
            st = sum(abs(int(sp.sympify(i).coeff(s))) * w for i, w in zip(idx, _strides(shp)))
            if st and (best is None or st < best):
                best = st
        key[s] = best if best is not None else 1 << 62
    written = [i for i in out if isinstance(i, sp.Symbol) and i in key]
    direct = len(written) == len(out) and len(set(written)) == len(written)
    first = {s: k for k, s in enumerate(written)} if direct else {}
    innermost = None
    if direct and written and len(written) < len(syms) and _small_target(dims, written, shape) \
            and _vector_axis(written[-1], dims, accesses, shape):
        # a small result, a long reduction: the result's contiguous axis innermost, the
        # reduction around it, so the innermost loop adds a contiguous run of the (cache-
        # resident) result, vectorised, instead of one long latency-bound scalar sum
        innermost = written[-1]
        first.pop(innermost)
    deps = {d[0]: {t for t in syms if t != d[0] and (sp.sympify(d[1]).has(t) or sp.sympify(d[2]).has(t))}
            for d in dims}
    by_sym = {d[0]: d for d in dims}
    placed, order = set(), []
    while len(order) < len(dims):
        ready = [s for s in syms if s not in placed and deps[s] <= placed]
        pick = min(ready, key=lambda s: (0, first[s]) if s in first else (2, 0, 0)
                   if s == innermost else (1, -key[s], syms.index(s)))
        placed.add(pick)
        order.append(by_sym[pick])
    return tuple(order)


# --------------------------------------------------------------------------------------
# Code


_PH = re.compile(r"\b_a(\d+)\b")


class LoopWriter:
    """Writes one loop nest into an :class:`gradc.codegen.arrays.ArrayKernel`.

    Storage follows the array kernels: a batched value is an ``(n, size)`` array (read at
    the row-major flat offset of its index), a batch-invariant one an array of its own
    shape (or a float for a scalar)."""

    def __init__(self, eqn, ctx):
        self.e, self.ctx, self.spec = eqn, ctx, eqn.params
        taken = set()
        self.names = {}
        for sym, _, _ in self.spec.dims:
            base = "i_" + re.sub(r"\W", "_", sym.name)
            name, k = base, 1
            while name in taken:
                name, k = f"{base}{k}", k + 1
            taken.add(name)
            self.names[sym] = sp.Symbol(name, integer=True)
        self.loop_batched = any(type_of(a)[1] for a in eqn.inputs)
        ks = keys_in(self.spec.out).union(*(keys_in(r) for r in self.spec.reads))
        self.keys = {k: sp.Symbol(f"key{k.name[2:]}", integer=True)
                     for k in sorted(ks, key=lambda s: int(s.name[2:]))}
        self.subs = {**self.names, **self.keys}
        self.example = "e"  # the example index of the loop around the nest

    def stop(self, expr, innermost, k=None):
        """The text of a loop's end (``k``: the loop's place in the nest's dims).  A
        constant goes through the kernel's ``extent`` (which may hide it from LLVM) in a
        nest run once per call, and in a nest run per example for the innermost loop when
        its count is not a multiple of 8 (LLVM would unroll it: ``d = 10`` terms; a
        multiple of the vector width it vectorises with no remainder, the convolution's 8
        channels), or when it runs more than 8 times and it and the loop around it both
        walk axes of a result summed over the batch: LLVM unrolls the inner loop and
        vectorises the outer one with gathers and scatters, 2x slower than the inner
        loop vectorised for a (3, 16) or (25, 16) gradient (the 8 channels of the
        locally connected layer's filters stay constant: 30% faster).  Else the index
        expression."""
        expr = sp.sympify(expr)
        if expr.is_Integer and hasattr(self.ctx, "extent") and (
                not self.loop_batched or (innermost and (
                    int(expr) % 8 or (int(expr) > 8 and self.outer_is_result_axis(k))))):
            return self.ctx.extent(int(expr))
        return self.index(expr)

    def outer_is_result_axis(self, k):
        """Whether the nest sums over the batch and its loops ``k - 1`` and ``k`` both walk
        axes of the result."""
        spec = self.spec
        if k is None or k < 1 or not spec.summed:
            return False
        out = set(spec.out)
        return spec.dims[k][0] in out and spec.dims[k - 1][0] in out

    def index(self, expr):
        return self.ctx.printer.doprint(sp.sympify(expr).xreplace(self.subs))

    def key_checks(self):
        """(lines before the nest, lines at the start of each example): each key's values
        checked once per kernel against the range that keeps every access inside its
        array, then read as an integer."""
        if not self.keys:
            return [], []
        e, spec, ctx = self.e, self.spec, self.ctx
        shapes = [type_of(a)[0] for a in e.inputs]
        ranges = key_ranges(spec, shapes)
        done = ctx.checked_keys  # the kernel's straight-line code: one check is enough
        before, each = [], []
        for ph, name in self.keys.items():
            atom = e.inputs[int(ph.name[2:])]
            lo, hi = ranges[ph]
            arr = ctx.name(atom)
            what = next((f"it indexes {a.hint or repr(a)}, shape {shape_text(type_of(a)[0])}"
                         for a, r in zip(e.inputs, spec.reads) if ph in keys_in(r)),
                        f"it indexes the result, shape {shape_text(spec.shape)}")
            batched = type_of(atom)[1]
            if (atom.id, lo, hi) not in done:
                done.add((atom.id, lo, hi))
                head = f"{'data' if batched else 'const'} {atom.hint or repr(atom)}"
                tail = f": as an index it must be an integer in {lo}..{hi} ({what})"
                if batched:
                    before += [f"bad = _rt.first_bad_index({arr}, {lo}, {hi})",
                               "if bad >= 0:",
                               f"    raise _rt.DataIndexError({head + '['!r} + str(bad{getattr(ctx, 'row_offset', '')}) + "
                               f"'] = ' + _rt.index_text({arr}[bad]) + {tail!r})"]
                else:
                    before += [f"if not _rt.valid_index({arr}, {lo}, {hi}):",
                               f"    raise _rt.DataIndexError({head + ' = '!r} + "
                               f"_rt.index_text({arr}) + {tail!r})"]
            (each if batched else before).append(
                f"{name} = int({arr}[e])" if batched else f"{name} = int({arr})")
        return before, each

    def flat(self, idx, shape):
        expr = sp.S.Zero
        for i, d in zip(idx, shape):
            expr = expr * d + i
        return self.index(sp.expand(expr))

    def access(self, atom, idx):
        if isinstance(atom, Lit):
            return self.ctx.name(atom)
        name = self.ctx.name(atom)
        shape, isb = type_of(atom)
        if isb:
            ex = self.example
            return f"{name}[{ex}, {self.flat(idx, shape)}]" if shape else f"{name}[{ex}]"
        if not shape:
            return name
        return f"{name}[{', '.join(self.index(i) for i in idx)}]"

    def gemm(self):
        """The nest as one matrix product through BLAS (``np.dot``), or None.

        When the body is ``coefficient * a * b`` and every index (the example index
        included) runs over a whole axis of exactly two of ``a``, ``b`` and the result,
        the nest is a contraction: the indices shared by ``a`` and ``b`` are summed, and
        when each group of indices (``a`` and the result, ``b`` and the result, ``a`` and
        ``b``) is a block of consecutive axes in the same order in both arrays, the
        arrays are matrices (reshaped, or transposed views) and the nest is ``np.dot``."""
        spec, e, ctx = self.spec, self.e, self.ctx
        if len(e.inputs) != 2 or any(not isinstance(a, Var) for a in e.inputs):
            return None
        coef, rest = spec.body.as_coeff_Mul()
        if not coef.is_Number or rest != placeholder(0) * placeholder(1):
            return None
        extent = {}
        for sym, lo, hi in spec.dims:
            if lo != 0 or not hi.is_Integer:
                return None
            extent[sym] = int(hi) + 1
        batch = sp.Symbol("<batch>")

        def axes(atom, idx, shape, isb):
            if len(set(idx)) != len(idx) or any(i not in extent for i in idx):
                return None
            if any(extent[i] != d for i, d in zip(idx, shape)):
                return None
            return ([batch] if isb else []) + list(idx)

        (a, b), (ra, rb) = e.inputs, spec.reads
        A = axes(a, ra, a.shape, a.batched)
        B = axes(b, rb, b.shape, b.batched)
        O = axes(None, spec.out, e.out.shape, e.out.batched)
        if A is None or B is None or O is None:
            return None
        if self.loop_batched:
            extent[batch] = None  # n, at run time
        for sym in extent:
            if [sym in A, sym in B, sym in O].count(True) != 2:
                return None
        M = [s for s in A if s in O]
        N = [s for s in B if s in O]
        K = [s for s in A if s in B]
        if not K:
            return None

        def size(grp):
            known = math.prod(extent[g] for g in grp if extent[g] is not None)
            if any(extent[g] is None for g in grp):
                return "n" if known == 1 else f"n * {known}"
            return str(known)

        def flag(order, rows, cols):
            """False when ``order`` is rows then cols, True when cols then rows."""
            if order == rows + cols:
                return False
            if order == cols + rows:
                return True
            return None

        if [s for s in B if s in A] != K:
            return None
        if O == M + N:
            x, y, tx, ty, mm, nn = a, b, flag(A, M, K), flag(B, K, N), M, N
        elif O == N + M:
            x, y, tx, ty, mm, nn = b, a, flag(B, N, K), flag(A, K, M), N, M
        else:
            return None
        if tx is None or ty is None:
            return None
        out = ctx.name(e.out)
        if e.out.batched:
            alloc = f"_rt.empty((n, {size_of(e.out.shape)}))" if e.out.shape else "_rt.empty(n)"
        else:
            alloc = f"_rt.empty({tuple(e.out.shape)!r})" if e.out.shape else "_rt.empty(1)"
        call = (f"_rt.contract({alloc}, {ctx.name(x)}, {ctx.name(y)}, {tx}, {ty}, "
                f"{size(mm)}, {size(K)}, {size(nn)})")
        if not e.out.shape and not e.out.batched:
            call += "[0]"
        scale = "" if coef == 1 else f"{float(coef)!r} * "
        head = f"# {out}: {describe_nest(spec)}" + (" and the batch" if spec.summed else "") + \
            ", as a matrix product"
        return [head, f"{out} = {scale}{call}"]

    def whole_result_reads(self):
        """For a nest of two or more loops whose result takes every index, whole axes in
        order with constant counts (no data index, no index used by the body itself):
        what each read is, ``"same"`` (a batched array of the result's shape read at the
        same indices), ``"last"`` (a batch-invariant array read by the last index alone)
        or ``"fixed"`` (moves with no index).  None for any other nest or read."""
        spec, e = self.spec, self.e
        shape = tuple(e.out.shape)
        syms = tuple(d[0] for d in spec.dims)
        if len(syms) < 2 or self.keys or tuple(spec.out) != syms or len(shape) != len(syms):
            return None
        for (sym, lo, hi), ext in zip(spec.dims, shape):
            if not (lo == 0 and sp.sympify(hi).is_Integer and int(hi) == ext - 1):
                return None
        if spec.body.free_symbols & set(syms):
            return None
        kinds = []
        for a, r in zip(e.inputs, spec.reads):
            moves = set().union(*(sp.sympify(i).free_symbols for i in r)) & set(syms)
            batched = isinstance(a, Var) and a.batched
            if not moves:
                kinds.append("fixed")
            elif batched and tuple(r) == syms and tuple(type_of(a)[0]) == shape:
                kinds.append("same")
            elif moves == {syms[-1]} and not batched:
                kinds.append("last")
            else:
                return None
        return kinds

    def flat_sum(self):
        """The nest as one loop over its result's elements, or None.

        For a sum over the batch whose result takes every index of the nest, whole axes in
        order, and whose body reads batched values of the result's shape at the same
        indices (and values that do not move with them): the elements are one contiguous
        run in the result and in each such read, so the nest runs as a single loop over
        them (same order, same arithmetic).  Written as two loops with constant counts
        inside the batch loop (the GMM's sum of a (K, d) cotangent over the points), LLVM
        unrolls the inner one and vectorises the outer with gathers and scatters: 0.83 ms
        of the GMM's 4.6 ms call at K = 25, d = 32, against 0.075 ms as one loop
        (docs/performance.md, the GMM re-measured on the Zen 4 EPYC)."""
        spec, e, ctx = self.spec, self.e, self.ctx
        kinds = self.whole_result_reads() if spec.summed and not e.out.batched else None
        if kinds is None or "last" in kinds:
            return None
        size = size_of(e.out.shape)
        reads = [f"{ctx.name(a)}[{self.example}, t]" if kind == "same" else self.access(a, r)
                 for a, r, kind in zip(e.inputs, spec.reads, kinds)]
        shape = tuple(e.out.shape)
        out = ctx.name(e.out)
        template = ctx.printer.template(spec.body.xreplace(self.names))
        body = _PH.sub(lambda m: reads[int(m.group(1))], template)
        return [f"# {out}: {describe_nest(spec)} and the batch, one loop over {size} elements",
                f"{out} = _rt.zeros({shape!r})",
                f"{out}_flat = {out}.reshape({size})",
                "for e in range(n):",
                f"    for t in range(0, {self.stop(size, True)}):",
                f"        {out}_flat[t] += {body}"]

    def flat_map(self):
        """A map over a per-example array, as at most two loops per example, or None.

        For a nest run per example that writes every element of its batched result once
        (the result takes every index, whole axes in order, no reduction) and reads only
        batched values of the result's shape at the same indices, values that move with
        the last index alone (a bias ``B[c]``) and values that do not move: its leading
        axes are one contiguous run, walked as one loop, with the last axis inside it
        through ``extent`` (hidden from LLVM from 5 on), or one loop over every element
        when nothing moves with the last index alone.  Written as a loop per axis with
        constant counts (the convolution's ReLU and its derivative, 26 x 26 x 8), LLVM
        unrolls the 8 and vectorises the loop around it with gathers and scatters: 4x
        slower (``benchmarks/bench_conv.py``; docs/performance.md)."""
        spec, e, ctx = self.spec, self.e, self.ctx
        kinds = self.whole_result_reads() if e.out.batched and not spec.summed else None
        if kinds is None:
            return None
        shape = tuple(e.out.shape)
        last = spec.dims[-1][0]
        size, width = size_of(shape), shape[-1]
        two = "last" in kinds
        ex, inner = self.example, self.index(last)
        flat = f"{width}*t + {inner}" if two else "t"
        reads = [f"{ctx.name(a)}[{ex}, {flat}]" if kind == "same" else self.access(a, r)
                 for a, r, kind in zip(e.inputs, spec.reads, kinds)]
        out = ctx.name(e.out)
        template = ctx.printer.template(spec.body.xreplace(self.names))
        body = _PH.sub(lambda m: reads[int(m.group(1))], template)
        rng = "prange" if ctx.parallel else "range"
        lines = [f"# {out}: {describe_nest(spec)}, " + (
                     f"one loop over {size // width} rows of {width}" if two
                     else f"one loop over {size} elements"),
                 f"{out} = _rt.empty((n, {size}))",
                 f"for {ex} in {rng}(n):"]
        if two:
            stop = ctx.extent(width) if hasattr(ctx, "extent") else str(width)
            lines += [f"    for t in range(0, {size // width}):",
                      f"        for {inner} in range(0, {stop}):",
                      f"            {out}[{ex}, {flat}] = {body}"]
        else:
            lines += [f"    for t in range(0, {size}):",
                      f"        {out}[{ex}, t] = {body}"]
        return lines

    def lines(self):
        spec, e, ctx = self.spec, self.e, self.ctx
        g = self.gemm()
        if g is not None:
            return g
        g = self.flat_sum() or self.flat_map()
        if g is not None:
            return g
        out = ctx.name(e.out)
        shape, isb = e.out.shape, e.out.batched
        template = ctx.printer.template(spec.body.xreplace(self.names))
        reads = [self.access(a, r) for a, r in zip(e.inputs, spec.reads)]
        body = _PH.sub(lambda m: reads[int(m.group(1))], template)
        dims = list(spec.dims)
        # the leading indices written one to one: accumulate the rest in a local
        lead = 0
        while (lead < len(dims) and lead < len(spec.out) and spec.out[lead] == dims[lead][0]
               and dims[lead][1] == 0 and dims[lead][2] == shape[lead] - 1):
            lead += 1
        direct = lead == len(spec.out) and len(spec.out) == len(shape)
        if direct and not spec.summed:
            alloc = "empty"  # every element written once
        else:
            alloc = "zeros"
        lines = [f"# {out}: {describe_nest(spec) or 'one element'}" +
                 (" and the batch" if spec.summed else "")]
        if isb:
            lines.append(f"{out} = _rt.{alloc}((n, {size_of(shape)}))" if shape
                         else f"{out} = _rt.{alloc}(n)")
        elif shape:
            lines.append(f"{out} = _rt.{alloc}({tuple(shape)!r})")
        elif spec.summed or not (direct and lead < len(dims)):
            lines.append(f"{out} = 0.0")
        pad = ""
        before, each = self.key_checks()
        lines += before
        if self.loop_batched:
            rng = "prange" if (ctx.parallel and not spec.summed) else "range"
            lines.append(f"for e in {rng}(n):")
            pad = "    "
            lines += [pad + s for s in each]
        target = self.target(out, shape, isb)
        split = direct and lead < len(dims) and self.split_reduction(dims[lead:])
        for k, (sym, lo, hi) in enumerate(dims):
            if direct and k == lead and lead < len(dims):
                lines.append(pad + ("acc0 = acc1 = acc2 = acc3 = 0.0" if split else "acc = 0.0"))
            name = self.names[sym]
            if split and k == len(dims) - 1:
                break
            lines.append(pad + f"for {name} in range({self.index(lo)}, "
                         f"{self.stop(hi + 1, k == len(dims) - 1, k)}):")
            pad += "    "
        if split:
            # four interleaved sums: the adds of a long reduction overlap instead of
            # waiting for each other (the result differs from one sum by rounding only)
            sym, lo, hi = dims[-1]
            name = self.names[sym]
            length = int(hi) - int(lo) + 1
            stop = int(lo) + 4 * (length // 4)
            lines.append(pad + f"for {name} in range({int(lo)}, {stop}, 4):")
            for r in range(4):
                lines.append(pad + f"    acc{r} += {self.body_at(sym, r)}")
            if stop <= int(hi):
                lines.append(pad + f"for {name} in range({stop}, {int(hi) + 1}):")
                lines.append(pad + f"    acc0 += {body}")
            pad = pad[:-4 * (len(dims) - 1 - lead)] if len(dims) - 1 > lead else pad
            op = "+=" if spec.summed else "="
            lines.append(pad + f"{target} {op} (acc0 + acc1) + (acc2 + acc3)")
        elif direct and lead < len(dims):
            lines.append(pad + f"acc += {body}")
            pad = pad[:-4 * (len(dims) - lead)]
            op = "+=" if spec.summed else "="
            lines.append(pad + f"{target} {op} acc")
        else:
            op = "=" if alloc == "empty" else "+="
            if dims and alloc == "zeros":
                body = self.hoist_invariant(lines, dims[-1][0], pad[:-4])
            lines.append(pad + f"{target} {op} {body}")
        return lines

    def hoist_invariant(self, lines, sym, pad):
        """The body, with the array reads that do not move with the innermost index
        ``sym`` read once before the innermost loop (inserted into ``lines`` before its
        ``for``): the compiler cannot move them itself past the store into the result,
        which it cannot tell apart from the arrays read."""
        spec, e = self.spec, self.e
        names = {}
        hoisted = []
        used = spec.body.free_symbols
        for k, (a, r) in enumerate(zip(e.inputs, spec.reads)):
            if placeholder(k) in used and isinstance(a, Var) and (a.shape or a.batched) and not any(
                    sp.sympify(i).has(sym) for i in r):
                names[k] = f"r{k}"
                hoisted.append(pad + f"r{k} = {self.access(a, r)}")
        reads = [names.get(k) or self.access(a, r)
                 for k, (a, r) in enumerate(zip(e.inputs, spec.reads))]
        template = self.ctx.printer.template(spec.body.xreplace(self.names))
        if hoisted:
            lines[-1:-1] = hoisted
        return _PH.sub(lambda m: reads[int(m.group(1))], template)

    def split_reduction(self, red):
        """Split the innermost reduction into four sums: when it has a constant range of
        at least 8 and the whole reduction is at least 64 points long, or, in a nest run
        per example, a constant range of at least 16 (the GMM's squared norms over d
        coordinates per point and component: 20% faster at d = 32..64, measured by
        ``benchmarks/bench_adbench.py``)."""
        sym, lo, hi = red[-1]
        if not (lo.is_Integer and hi.is_Integer) or int(hi) - int(lo) + 1 < 8:
            return False
        if self.loop_batched and int(hi) - int(lo) + 1 >= 16:
            return True
        return _points(tuple(red)) >= 64 if all(
            d[1].is_Integer and d[2].is_Integer for d in red) else True

    def body_at(self, sym, r):
        """The body's text at the innermost index ``sym + r``."""
        shift = {sym: sym + r}
        spec = self.spec
        template = self.ctx.printer.template(spec.body.xreplace(shift).xreplace(self.names))
        reads = [self.access(a, tuple(sp.sympify(i).xreplace(shift) for i in rd))
                 for a, rd in zip(self.e.inputs, spec.reads)]
        return _PH.sub(lambda m: reads[int(m.group(1))], template)

    def target(self, out, shape, isb):
        idx = self.spec.out
        if isb:
            return f"{out}[e, {self.flat(idx, shape)}]" if shape else f"{out}[e]"
        if not shape:
            return out
        return f"{out}[{', '.join(self.index(i) for i in idx)}]"


def check_affine(expr, indices, where):
    """``expr`` as ``(constant, {index: coefficient})`` with integer coefficients, or a
    :class:`GradcError` naming ``where`` when it is not an affine integer function of
    ``indices``."""
    expr = sp.expand(sp.sympify(expr))
    bad = expr.free_symbols - set(indices)
    if bad:
        raise GradcError(f"{where}: {short(expr)} depends on {', '.join(sorted(map(str, bad)))}, "
                         "which is not a loop index here")
    poly = expr.as_poly(*indices) if indices else None
    if poly is not None and poly.total_degree() > 1:
        raise GradcError(f"{where}: {short(expr)} is not affine in the loop indices")
    coeffs = {}
    const = expr
    for s in indices:
        c = expr.coeff(s)
        if c != 0:
            coeffs[s] = c
            const = const - c * s
    const = sp.expand(const)
    for c in [const, *coeffs.values()]:
        if not c.is_Integer:
            raise GradcError(f"{where}: {short(expr)} is not an integer affine function of "
                             "the loop indices")
    return int(const), {s: int(c) for s, c in coeffs.items()}


def extreme(expr, dims, sign):
    """The minimum (``sign=-1``) or maximum (``sign=1``) of an affine ``expr`` over the nest
    ``dims`` (its ranges assumed nonempty), by eliminating the innermost index first: the
    extreme of ``a * k + rest`` over ``k in lo..hi`` is at ``hi`` or ``lo`` by the sign of
    ``a``, which leaves an affine function of the outer indices."""
    expr = sp.expand(sp.sympify(expr))
    for sym, lo, hi in reversed(dims):
        c = expr.coeff(sym)
        if c == 0:
            continue
        expr = sp.expand(expr.xreplace({sym: hi if (c > 0) == (sign > 0) else lo}))
    if not expr.is_Integer:  # pragma: no cover - affine inputs give integers
        raise AssertionError(expr)
    return int(expr)


def bounded(dims, keep):
    """The nest ``dims`` restricted to the indices ``keep`` (in order): each kept range's
    bounds with the dropped indices eliminated (lower bounds minimised, upper maximised),
    so the result covers every value the kept indices take."""
    out = []
    for k, (sym, lo, hi) in enumerate(dims):
        if sym not in keep:
            continue
        before = dims[:k]
        lo2, hi2 = lo, hi
        drop = [d for d in before if d[0] not in keep]
        if any(lo2.has(d[0]) or hi2.has(d[0]) for d in drop):
            lo2 = _eliminate(lo, before, keep, -1)
            hi2 = _eliminate(hi, before, keep, 1)
        out.append((sym, sp.sympify(lo2), sp.sympify(hi2)))
    return tuple(out)


def _eliminate(expr, dims, keep, sign):
    expr = sp.expand(sp.sympify(expr))
    for sym, lo, hi in reversed(dims):
        if sym in keep:
            continue
        c = expr.coeff(sym)
        if c == 0:
            continue
        expr = sp.expand(expr.xreplace({sym: hi if (c > 0) == (sign > 0) else lo}))
    return expr


__all__ = ["LoopSpec", "loop", "check_affine", "extreme", "bounded", "loop_partials"]
