"""Lowering of indexed expressions: sympy ``Sum``, ``Indexed`` and ``FunctionMatrix`` -> loop nests.

Contract
--------
:class:`IndexLowerer` is the part of :class:`gradc.frontend.Lowerer` that handles indexed
subexpressions; it emits ``loop`` equations (:mod:`gradc.prims.loop`) and never unrolls an
index range, so the program's size does not depend on the extents.

* ``Sum(f, (i, lo, hi), ...)`` is one loop nest whose indices are the sum's own, inside the
  indices of the enclosing loops that ``f`` uses (its *free* indices); the result is a
  tensor over the free indices (a scalar when there are none), read back by the
  enclosing body.  Sympy's limit order holds: the first limit is the innermost sum, and
  its bounds may depend on the outer ones (triangular ranges).
* Inside a loop body, a subexpression that uses only some of the loop's indices and calls
  a function (``Max(z, 0)``, ``tanh``, a power) is *hoisted*: computed once per value of
  its own indices into a tensor temporary, not once per point of the nest.  So is a
  subexpression that reads nothing batched inside a body that does, when it calls a
  function or combines two reads (``exp(q[k, j])``, or ``D[k, j, m] + L[k, j, m]`` beside
  ``x[m]``): it is computed once for the batch, not once per example, and the body that
  is left is often a contraction (one matrix product).  A
  subexpression that uses no loop index is lowered as an ordinary scalar, outside.
* ``x[a, b]`` reads an ``IndexedBase`` input (or a hoisted tensor) at affine indices; a
  read at integer indices outside any loop is an ``element``.
* An index may also hold one integer *data* (or const) symbol, with coefficient 1:
  ``C[ci, k]`` gathers row ``ci`` of ``C`` for each example (a *key* of the loop, see
  :mod:`gradc.prims.loop`); its values are checked in the kernel, the rest of the index
  here.
* ``FunctionMatrix(r, c, Lambda((k, q), f))`` is a map over ``k < r, q < c``: the bridge
  from indexed expressions to the matrix primitives (``gradc.nn`` takes it as logits).

Every bound and index is checked here, at compile time: indices and bounds must be
integer affine functions of the enclosing loop indices; every read must stay inside its
array for every point of the nest (exact minimum and maximum over the nest, triangular
ones included); a ``Sum`` whose range could run backwards (sympy's Karr convention then
subtracts, a loop would add nothing) is refused.  Each failure is a
:class:`gradc.GradcError` naming the index, its range and the array's shape.
"""

from __future__ import annotations

import sympy as sp
from sympy.core.function import Application
from sympy.matrices.expressions.funcmatrix import FunctionMatrix

from .errors import GradcError, short
from .ir import Lit, Var, shape_text, type_of
from .prims import array as ap
from .prims import number, placeholder
from .prims.loop import bounded, check_affine, extreme, loop, split_key

#: sympy classes that make an expression indexed.
INDEXED = (sp.Indexed, sp.IndexedBase, sp.Sum, FunctionMatrix)


def _heavy(node) -> bool:
    """A node worth computing once per value of its indices: a function call or a
    non-polynomial power."""
    if isinstance(node, sp.Pow):
        return not (node.exp.is_Integer and 0 < int(node.exp) <= 4)
    return isinstance(node, (Application, sp.Piecewise)) and not isinstance(node, sp.KroneckerDelta)


def _worth(node, calls) -> bool:
    """A batch-invariant node worth a tensor of its own: a function call, or arithmetic
    on at least two array reads (``exp(q[k, j]) * mu[k, j]``, ``D[k, j, m] + L[k, j, m]``),
    which a batched body would otherwise recompute for every example (``calls``: per node,
    its reads and calls counted up to 2)."""
    if _heavy(node):
        return True
    return isinstance(node, (sp.Add, sp.Mul, sp.Pow)) and calls.get(node, 0) >= 2


def _ranges_text(dims):
    return ", ".join(f"{s} in {lo}..{hi}" for s, lo, hi in dims) or "no loop"


class IndexLowerer:
    """Lowers the indexed subexpressions met by one :class:`gradc.frontend.Lowerer`."""

    def __init__(self, lowerer):
        self.L = lowerer
        self.b = lowerer.b

    # -- entries from the scalar and matrix lowering -----------------------------------------
    def lower_sum(self, node):
        atom, read = self.sum_tensor(node, ())
        assert read == ()
        return atom

    def lower_function_matrix(self, node):
        from .frontend import matrix_shape

        r, c = matrix_shape(node)
        lam = node.lamda
        if not isinstance(lam, sp.Lambda) or len(lam.variables) != 2:
            raise GradcError(f"FunctionMatrix {short(node)}: expected a Lambda of two indices")
        k, q = lam.variables
        dims = ((k, sp.S.Zero, sp.Integer(r - 1)), (q, sp.S.Zero, sp.Integer(c - 1)))
        body, inputs, reads = self.body(lam.expr, dims)
        if (r, c) == (1, 1):
            shape, out = (), ()
        else:
            shape, out = (r, c), (k, q)
        return self.emit(dims, inputs, reads, body, shape, out)

    def lower_indexed(self, node):
        base = self.base_var(node)
        idx = node.indices
        if any(self.key_symbols(i) for i in idx) and not self.free_symbols_of(node, ()):
            inputs, names = [base], [node]

            def read(atom, where, source=None):
                inputs.append(atom)
                names.append(source)
                return placeholder(len(inputs) - 1)

            where = self.keyed(node, (), read)
            reads = [where] + [()] * (len(inputs) - 1)
            self.check_reads((), inputs, reads, names)
            return self.emit((), inputs, reads, placeholder(0), (), ())
        if not all(sp.sympify(i).is_Integer for i in idx):
            free = sorted({str(s) for i in idx for s in sp.sympify(i).free_symbols})
            raise GradcError(
                f"free index {', '.join(free)} in {short(node)}: bind it with a Sum (or the "
                "Lambda of a FunctionMatrix), or use integer indices")
        self.check_reads((), [base], [tuple(idx)], [node])
        return ap.element(self.b, base, tuple(int(i) for i in idx))

    # -- inputs ----------------------------------------------------------------------------
    def base_var(self, node):
        base = node.base
        v = self.array(base)
        if v is None:
            raise GradcError(f"IndexedBase {base} (in {short(node)}) is in neither wrt, data "
                             "nor consts")
        shape = type_of(v)[0]
        if len(node.indices) != len(shape):
            raise GradcError(f"{short(node)}: {base} has shape {shape_text(shape)} "
                             f"({len(shape)} indices), indexed with {len(node.indices)}")
        return v

    def array(self, base):
        """The value of the ``IndexedBase`` ``base``: an input, or for a padded base
        (:func:`gradc.nn.pad`) its source copied into the interior of a zero array, once
        (a loop nest: its derivatives are the loop rules', the cotangent's interior for
        the source); None for a base that is not an input."""
        from .nn import Pad

        v = self.L.bases.get(base)
        if v is not None or not isinstance(base.label, Pad):
            return v
        src = self.array(base.label.source)
        if src is None:
            return None
        shape, widths = type_of(src)[0], base.label.widths
        if len(widths) != len(shape):
            raise GradcError(f"{base}: {len(widths)} padding widths for "
                             f"{base.label.source} of shape {shape_text(shape)}")
        syms = [sp.Symbol(f"a{k}", integer=True) for k in range(len(shape))]
        nest = tuple((a, sp.Integer(w), sp.Integer(w + d - 1))
                     for a, w, d in zip(syms, widths, shape))
        read = tuple(a - w for a, w in zip(syms, widths))
        padded = tuple(d + 2 * w for d, w in zip(shape, widths))
        v = loop(self.b, nest, [src], [read], placeholder(0), padded, tuple(syms),
                 hint=str(base))
        self.L.bases[base] = v
        return v

    def key_symbols(self, index):
        """The symbols of an index that are inputs (data or consts), not loop indices."""
        return {s for s in sp.sympify(index).free_symbols
                if isinstance(s, sp.Symbol) and s in self.L.memo}

    def free_symbols_of(self, node, dims):
        """The symbols of ``node``'s indices that are neither loop indices of ``dims`` nor
        inputs: free indices."""
        syms = {s for s, _, _ in dims}
        return {s for i in node.indices for s in sp.sympify(i).free_symbols
                if s not in syms and s not in self.L.memo}

    def keyed(self, node, dims, read):
        """The indices of ``node`` with each data symbol replaced by the placeholder
        ``read`` gives its input (a *key*), checked: an integer scalar data or const."""
        out = []
        for i in node.indices:
            i = sp.sympify(i)
            subs = {}
            for s in sorted(self.key_symbols(i), key=str):
                v = self.L.memo[s]
                role = next((inp.role for inp in self.b.inputs
                             if isinstance(v, Var) and inp.var.id == v.id), None)
                if role not in ("data", "const") or type_of(v)[0]:
                    what = {"param": "a parameter (wrt)"}.get(role, f"of role {role}")
                    raise GradcError(
                        f"index {i} of {short(node)}: {s} is {what}; an index must be a "
                        "loop index or an integer data or const symbol")
                if not s.is_integer:
                    raise GradcError(
                        f"index {i} of {short(node)}: {s} indexes an array, so it must be "
                        f"an integer symbol: declare sp.Symbol({s.name!r}, integer=True)")
                subs[s] = read(v, ())
            j = i.xreplace(subs)
            split_key(j, f"index {i} of {short(node)}")
            out.append(j)
        return tuple(out)

    # -- loops -------------------------------------------------------------------------------
    def sum_tensor(self, node, dims):
        """``(atom, read)``: the value of the Sum ``node`` at a point of the enclosing nest
        ``dims`` is ``atom[read]``."""
        inner = self.limits(node, dims)
        free = self.free_indices(node, dims)
        outer = bounded(dims, free)
        nest = list(outer)
        taken = {s for s, _, _ in dims}
        function = node.function
        for sym, lo, hi in inner:
            if sym in taken:  # a Sum reusing an enclosing index name shadows it
                fresh = sp.Dummy(sym.name, integer=True)
                function = function.xreplace({sym: fresh})
                sym = fresh
            taken.add(sym)
            where = f"the bounds of index {sym} of {short(node)}"
            for bnd in (lo, hi):
                check_affine(bnd, [s for s, _, _ in nest], where)
            length = extreme(hi - lo + 1, nest, -1)
            if length < 0:
                raise GradcError(
                    f"{short(node)}: the range {sym} = {lo}..{hi} runs backwards for some "
                    f"value of the outer indices ({_ranges_text(nest)}); sympy would subtract "
                    "such a sum (Karr's convention), a loop adds nothing: give ranges with "
                    "upper bound >= lower bound - 1")
            nest.append((sym, sp.sympify(lo), sp.sympify(hi)))
        body, inputs, reads = self.body(function, tuple(nest))
        return self.result(outer, nest, inputs, reads, body)

    def map_tensor(self, node, dims, free):
        """``(atom, read)`` for a hoisted subexpression that uses the indices ``free``."""
        outer = bounded(dims, free)
        body, inputs, reads = self.body(node, outer)
        return self.result(outer, outer, inputs, reads, body)

    def result(self, outer, nest, inputs, reads, body):
        shape, out, read = [], [], []
        for sym, lo, hi in outer:
            first = extreme(lo, outer, -1)
            last = extreme(hi, outer, 1)
            shape.append(max(last - first + 1, 1))
            out.append(sym - first)
            read.append(sym - first)
        atom = self.emit(tuple(nest), inputs, reads, body, tuple(shape), tuple(out))
        if isinstance(atom, Lit):
            return atom, ()
        return atom, tuple(read)

    def emit(self, nest, inputs, reads, body, shape, out):
        if len(inputs) == 1 and body == placeholder(0) and tuple(reads[0]) == tuple(out) \
                and type_of(inputs[0])[0] == tuple(shape) and all(
                    lo == 0 and hi == d - 1 for (_, lo, hi), d in zip(nest, shape)) \
                and len(nest) == len(shape):
            return inputs[0]  # a copy of a tensor that already exists
        atom = loop(self.b, nest, inputs, reads, body, shape, out)
        return Lit(0.0) if atom is None else atom

    def limits(self, node, dims):
        out = []
        for lim in node.limits:
            if len(lim) != 3:
                raise GradcError(f"{short(node)}: every Sum needs a range (i, lo, hi)")
            sym, lo, hi = lim
            if not isinstance(sym, sp.Symbol):
                raise GradcError(f"{short(node)}: the index {sym} of class "
                                 f"{type(sym).__name__} must be a sympy Symbol")
            for bnd in (lo, hi):
                if bnd.free_symbols - {s for s, _, _ in dims} - {lm[0] for lm in node.limits}:
                    raise GradcError(
                        f"{short(node)}: the bound {bnd} of index {sym} is symbolic; Sum "
                        "ranges must be integers or affine in the enclosing indices")
                if bnd.is_number and not bnd.is_Integer:
                    raise GradcError(f"{short(node)}: the bound {bnd} of index {sym} is not "
                                     "an integer")
            out.append((sym, lo, hi))
        out.reverse()  # outermost first
        return self.layout_order(node, out)

    def layout_order(self, node, limits):
        """The sum's indices, outermost first: sympy's order, except that indices with
        constant ranges follow the axis order of the largest array the body reads (so the
        innermost loop walks it contiguously, and hoisted tensors get its layout)."""
        from .frontend import postorder

        best, size = None, 0
        for n in postorder(node.function):
            if isinstance(n, sp.Indexed) and self.array(n.base) is not None:
                m = 1
                for d in type_of(self.array(n.base))[0]:
                    m *= d
                if m > size:
                    best, size = n, m
        if best is None:
            return limits
        rank = {}
        for axis, i in enumerate(best.indices):
            for s in sorted(sp.sympify(i).free_symbols, key=str):
                rank.setdefault(s, axis)
        fixed = [lim for lim in limits if lim[1].is_Integer and lim[2].is_Integer]
        if len(fixed) < 2 or len(fixed) < len(limits):  # triangular ranges keep their order
            return limits
        order = sorted(fixed, key=lambda lim: rank.get(lim[0], -1))
        it = iter(order)
        return [next(it) if (lim[1].is_Integer and lim[2].is_Integer) else lim for lim in limits]

    def free_indices(self, node, dims):
        syms = {s for s, _, _ in dims}
        used = set()
        from .frontend import postorder

        for n in postorder(node):
            if isinstance(n, sp.Symbol) and n in syms:
                used.add(n)
        bound = {lm[0] for lm in node.limits}
        return used - bound

    # -- bodies ----------------------------------------------------------------------------
    def body(self, expr, dims):
        """``(body, inputs, reads)``: ``expr`` at a point of the nest ``dims`` as a scalar
        sympy body of placeholders (input k read at ``reads[k]``) and loop indices."""
        from .frontend import postorder, with_softplus

        expr = with_softplus(expr)  # log(1 + exp(u)) as Softplus(u), as outside a Sum
        syms = {s for s, _, _ in dims}
        order = postorder(expr)
        bound_below = set()
        for n in order:
            if isinstance(n, sp.Sum):
                bound_below |= {lm[0] for lm in n.limits}
        index_like = syms | bound_below
        ix = {}
        for n in order:
            if isinstance(n, sp.Symbol):
                ix[n] = frozenset([n]) if n in index_like else frozenset()
            elif isinstance(n, sp.Sum):
                ix[n] = frozenset().union(*(ix.get(a, frozenset()) for a in n.args)) - \
                    {lm[0] for lm in n.limits}
            else:
                ix[n] = frozenset().union(*(ix.get(a, frozenset()) for a in n.args))
        # per node, bottom up (one pass, not one walk per node): whether it reads a value
        # that changes from example to example, and how many array reads or function calls
        # it holds (counted up to 2: enough for _worth)
        batched, calls = {}, {}
        for n in order:
            batched[n] = self.batched_leaf(n) or any(batched.get(a, False) for a in n.args)
            own = isinstance(n, (sp.Indexed, sp.Sum)) or _heavy(n)
            calls[n] = min(2, int(own) + sum(calls.get(a, 0) for a in n.args))
        batched_body = batched.get(expr, False)
        inputs, reads, names, slot = [], [], [], {}

        def read(atom, where, source=None):
            if isinstance(atom, Lit):
                return number(atom.value)
            key = (atom.id, tuple(where))
            if key not in slot:
                slot[key] = len(inputs)
                inputs.append(atom)
                reads.append(tuple(where))
                names.append(source)
            return placeholder(slot[key])

        def cut(n):
            if isinstance(n, sp.logic.boolalg.BooleanAtom):
                return n
            if not isinstance(n, sp.Expr):  # conditions of a Piecewise: open them up
                return None
            if n.is_Number or isinstance(n, sp.NumberSymbol):
                return n
            if isinstance(n, sp.Symbol) and n in syms:
                return n
            if isinstance(n, sp.Sum):
                atom, where = self.sum_tensor(n, dims)
                return read(atom, where)
            if isinstance(n, (sp.IndexedBase, FunctionMatrix)) or isinstance(n, sp.MatrixExpr):
                raise GradcError(f"{short(n)} of class {type(n).__name__} inside an indexed "
                                 "expression: index it, or use it outside the Sum")
            mine = ix.get(n, frozenset()) & syms
            if not mine and not ix.get(n):
                if isinstance(n, sp.Indexed) and self.free_symbols_of(n, dims):
                    return None  # a read at a free index: reported by the read below
                return read(self.L.lower(n), ())
            if isinstance(n, sp.Indexed):
                base = self.base_var(n)
                if self.free_symbols_of(n, dims):
                    return None
                return read(base, self.keyed(n, dims, read), n)
            if mine and not (ix.get(n) - syms) and (
                    (mine < syms and _heavy(n)) or
                    (batched_body and not batched.get(n, False) and _worth(n, calls))):
                atom, where = self.map_tensor(n, dims, mine)
                return read(atom, where)
            return None

        done = {}
        stack = [(expr, False)]
        while stack:
            n, expanded = stack.pop()
            if n in done:
                continue
            if expanded:
                done[n] = n.func(*[done[a] for a in n.args]) if n.args else n
                continue
            r = cut(n)
            if r is not None:
                done[n] = r
                continue
            if isinstance(n, sp.Indexed):  # an Indexed at a free index
                self.free_index_error(n, dims)
            if isinstance(n, sp.Symbol):
                done[n] = read(self.L.lower(n), ())
                continue
            stack.append((n, True))
            stack.extend((a, False) for a in n.args if a not in done)
        self.check_reads(dims, inputs, reads, names)
        return done[expr], inputs, reads

    def batched_leaf(self, n):
        """Whether ``n`` is an array read or symbol whose value changes per example."""
        v = self.array(n.base) if isinstance(n, sp.Indexed) else \
            self.L.memo.get(n) if isinstance(n, sp.Symbol) else None
        return isinstance(v, Var) and v.batched

    def free_index_error(self, node, dims):
        syms = {s for s, _, _ in dims}
        free = sorted({str(s) for i in node.indices for s in sp.sympify(i).free_symbols
                       if s not in syms and s not in self.L.memo})
        raise GradcError(f"free index {', '.join(free)} in {short(node)}: bind it with a Sum "
                         "(or the Lambda of a FunctionMatrix)")

    def check_reads(self, dims, inputs, reads, names):
        syms = [s for s, _, _ in dims]
        for atom, where, source in zip(inputs, reads, names):
            if source is None or not isinstance(atom, Var):
                continue
            shape = type_of(atom)[0]
            for axis, (i, d) in enumerate(zip(where, shape)):
                orig = source.indices[axis]
                key, i = split_key(i, f"index {orig} of {short(source)}")
                check_affine(i, syms, f"index {orig} of {short(source)}")
                lo, hi = extreme(i, dims, -1), extreme(i, dims, 1)
                if key is not None:
                    if hi - lo > d - 1:
                        raise GradcError(
                            f"index {orig} of {short(source)}: its loop part {i} takes "
                            f"values {lo}..{hi} for {_ranges_text(dims)}, so no value of "
                            f"the data symbol keeps it inside 0..{d - 1} (axis {axis} of "
                            f"{source.base}, shape {shape_text(shape)})")
                    continue  # the key's values are checked in the kernel
                if lo < 0 or hi > d - 1:
                    raise GradcError(
                        f"index {i} of {short(source)} takes values {lo}..{hi} for "
                        f"{_ranges_text(dims)}, outside 0..{d - 1} (axis {axis} of "
                        f"{source.base}, shape {shape_text(shape)})")
