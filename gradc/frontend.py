"""Lowering: sympy expression -> IR program.

Contract
--------
:func:`lower` takes a scalar sympy expression and the symbols in each role (``wrt``,
``data``, ``consts``) and returns a :class:`gradc.ir.Program` with one output, the
expression's value for one example.  It validates the roles first (every free symbol in
exactly one role) and raises :class:`gradc.GradcError` naming the symbol, or the sympy class
and subexpression of anything it cannot lower.

Dispatch goes through the class's MRO to a ``_lower_<ClassName>`` method of
:class:`Lowerer`; ``Add`` and ``Mul`` become the structural primitives, everything else that
is a function application (``Pow``, any sympy ``Function``, ``Piecewise``, ``Max``...) becomes
one ``elementwise`` equation whose body is the node with its operands replaced by
placeholders.  Matrix expressions (``MatrixSymbol``, ``MatMul``, ``MatAdd``, ``Transpose``,
Hadamard products and powers, ``applyfunc``, ``Identity``/``ZeroMatrix``/``OneMatrix``,
``Trace`` and the :mod:`gradc.nn` building blocks) lower to the array primitives; the
order of a chain of matrix products is chosen by :func:`gradc.planner.chain_order`, with a
batched vector counting as n columns.  The traversal is an explicit post-order stack over
the expression DAG, so depth is unlimited, and equal subexpressions are lowered once.

With ``reduce="sum"`` or ``"mean"`` the program's output is the value summed (or averaged)
over the batch; with ``None`` it is the per-example value.
"""

from __future__ import annotations

import sympy as sp
from sympy.concrete.expr_with_limits import ExprWithLimits
from sympy.core.function import Application
from sympy.matrices.expressions.matexpr import MatrixElement

from . import prims
from .errors import GradcError, short
from .indexed import INDEXED, IndexLowerer
from .ir import Builder, Lit, Program, type_of
from .nn import Pad
from .prims import array as ap


_ORDERS: dict = {}  # id(expr) -> (expr, its post-order): the last few expressions walked


def postorder(expr):
    """Every distinct subexpression of ``expr``, children before parents (iterative).

    The list for the last few expressions is kept (sympy expressions are immutable), so
    the several passes of one compile walk a large expression once; do not modify it."""
    hit = _ORDERS.get(id(expr))
    if hit is not None and hit[0] is expr:
        return hit[1]
    order = _postorder(expr)
    if len(order) > 64:
        if len(_ORDERS) >= 4:
            _ORDERS.pop(next(iter(_ORDERS)))
        _ORDERS[id(expr)] = (expr, order)
    return order


def _postorder(expr):
    seen, order, stack = set(), [], [(expr, False)]
    while stack:
        node, done = stack.pop()
        if done:
            order.append(node)
            continue
        if node in seen:
            continue
        seen.add(node)
        stack.append((node, True))
        if not isinstance(node, sp.Lambda):  # a Lambda (in applyfunc) is one leaf
            stack.extend((a, False) for a in reversed(node.args) if a not in seen)
    return order


def free_symbols(expr):
    """The free symbols (matrix symbols, indexed bases) of ``expr``, without sympy's
    recursion.  The labels of ``IndexedBase`` objects and the indices that some ``Sum`` or
    ``FunctionMatrix`` binds are left out (:mod:`gradc.indexed` reports an index used
    outside its binding)."""
    out, bound, labels = set(), set(), set()
    for n in postorder(expr):
        if isinstance(n, (sp.Symbol, sp.MatrixSymbol)):
            out.add(n)
        elif isinstance(n, sp.IndexedBase):
            if not isinstance(n.label, Pad):  # (its source is a node below it)
                out.add(n)
            labels.add(n.label)
        elif isinstance(n, sp.Sum):
            bound |= {lim[0] for lim in n.limits}
        elif isinstance(n, sp.Lambda):
            if any(isinstance(m, INDEXED) for m in postorder(n.expr)):
                out |= free_symbols(n.expr) - set(n.variables)  # a FunctionMatrix's body
            else:
                out |= n.expr.free_symbols - set(n.variables)
    return out - bound - labels


def structural_key(expr) -> str:
    """A text that identifies ``expr`` exactly and is stable across processes.

    Like ``srepr`` (class names, symbol assumptions, exact numbers) but iterative, and
    linear in the size of the DAG: shared subexpressions are written once.
    """
    ids, lines = {}, []
    for node in postorder(expr):
        if node.args and not isinstance(node, sp.Lambda):
            body = _class_key(type(node)) + "(" + ",".join(str(ids[a]) for a in node.args) + ")"
        elif isinstance(node, sp.Lambda):
            # bound variables are renamed canonically: equal functions, equal keys
            names = {v: sp.Symbol(f"_bound{i}", **v.assumptions0)
                     for i, v in enumerate(node.variables)}
            body = sp.srepr(sp.Lambda(tuple(names.values()), node.expr.xreplace(names)))
        else:
            body = sp.srepr(node)
        ids[node] = len(lines)
        lines.append(body)
    return "\n".join(lines)


def matrix_shape(m):
    """The shape of a matrix expression as two ints, or a GradcError naming it."""
    try:
        r, c = (int(d) for d in m.shape)
    except TypeError:
        raise GradcError(f"matrix {short(m)} has the symbolic shape {m.shape}; use integers") from None
    return r, c


def indexed_shape(base):
    """The shape of an ``IndexedBase`` as a tuple of ints, or a GradcError naming it."""
    if base.shape is None:
        raise GradcError(f"IndexedBase {base} has no shape: declare it as "
                         f"IndexedBase('{base}', shape=(...))")
    try:
        shape = tuple(int(d) for d in base.shape)
    except TypeError:
        raise GradcError(f"IndexedBase {base} has the symbolic shape {base.shape}; use "
                         "integers") from None
    if not shape or min(shape) < 1:
        raise GradcError(f"IndexedBase {base} has shape {shape}: every extent must be >= 1")
    return shape


def ir_shape(m):
    """The IR shape of a matrix expression: 1x1 matrices are scalars."""
    r, c = matrix_shape(m)
    return () if (r, c) == (1, 1) else (r, c)


def _class_key(cls) -> str:
    """A class's name, plus, for classes defined outside sympy and gradc (a user's
    ``sympy.Function`` subclass), a hash of its source: two different user classes with the
    same name never share a cache entry (the hash covers the code of its methods)."""
    mod = getattr(cls, "__module__", "") or ""
    if mod.startswith(("sympy.", "gradc.")):
        return cls.__name__
    import hashlib

    h = hashlib.sha256()
    for klass in cls.__mro__:
        if (getattr(klass, "__module__", "") or "").startswith(("sympy.", "builtins")):
            break
        for name, attr in sorted(vars(klass).items()):
            fn = getattr(attr, "__func__", attr)
            code = getattr(fn, "__code__", None)
            if code is not None:
                h.update(f"{name}:{code.co_code.hex()}:{code.co_consts!r}:{code.co_names!r}".encode())
            elif isinstance(attr, (int, float, str, bool, tuple)):
                h.update(f"{name}={attr!r}".encode())
    return f"{mod}.{cls.__qualname__}#{h.hexdigest()[:12]}"


def check_roles(expr, wrt, data, consts, scalar=False):
    """Validate the symbol roles; return them as tuples of sympy Symbols."""
    roles = {}
    for role, syms in (("wrt", wrt), ("data", data), ("consts", consts)):
        if isinstance(syms, sp.Basic):
            raise GradcError(f"{role} must be a sequence of symbols, got the single {syms}")
        for s in syms:
            if not isinstance(s, (sp.Symbol, sp.MatrixSymbol, sp.IndexedBase)):
                raise GradcError(
                    f"{role} entries must be sympy Symbols, MatrixSymbols or IndexedBases; "
                    f"got {short(s)} of class {type(s).__name__}"
                )
            if isinstance(s, sp.IndexedBase):
                indexed_shape(s)
            if isinstance(s, sp.MatrixSymbol):
                shape = matrix_shape(s)
                if role == "data" and 1 not in shape:
                    raise GradcError(
                        f"data {s} has shape {shape}: per-example data must be a vector "
                        f"(a column {shape[0] * shape[1]}x1 or a row); flatten it"
                    )
            if s in roles:
                other = roles[s]
                where = f"both {other} and {role}" if other != role else f"{role} twice"
                raise GradcError(f"symbol {s} appears in {where}")
            roles[s] = role
    if isinstance(expr, sp.MatrixExpr):
        if scalar and matrix_shape(expr) != (1, 1):
            raise GradcError(
                f"the expression must be a scalar (a loss); got a "
                f"{'x'.join(map(str, matrix_shape(expr)))} matrix: reduce it, for example "
                "with gradc.nn.sum or gradc.nn.cross_entropy"
            )
    elif not isinstance(expr, sp.Expr):
        raise GradcError(
            f"expected a scalar sympy expression, got {short(expr)} of class {type(expr).__name__}"
        )
    for node in postorder(expr):
        if isinstance(node, ExprWithLimits) and not isinstance(node, sp.Sum):  # Integral, Product
            raise GradcError(
                f"unsupported sympy class {type(node).__name__} in subexpression {short(node)}"
            )
    _check_sum_bounds(expr, roles)
    missing = [s for s in free_symbols(expr) if s not in roles]
    for node in postorder(expr) if missing else ():
        if isinstance(node, sp.Indexed):
            free = sorted({str(s) for i in node.indices for s in sp.sympify(i).free_symbols
                           if s in missing}, key=str)
            if free:
                raise GradcError(
                    f"free index {', '.join(free)} in {short(node)}: bind it with a Sum (or "
                    "the Lambda of a FunctionMatrix), or use integer indices")
    for s in sorted(missing, key=str):
        raise GradcError(f"free symbol {s} is in neither wrt, data nor consts"
                         + _namesake(s, roles))
    if not wrt:
        raise GradcError("wrt is empty: name at least one symbol to differentiate with respect to")
    return tuple(wrt), tuple(data), tuple(consts)


def _check_sum_bounds(expr, roles):
    """A Sum bound that uses a symbol other than a summation index is symbolic: refused
    here, with its own message (an index of an enclosing Sum is checked when lowered)."""
    sums = [n for n in postorder(expr) if isinstance(n, sp.Sum)]
    indices = {lim[0] for n in sums for lim in n.limits}
    for node in sums:
        for lim in node.limits:
            for bnd in lim[1:]:
                bad = sorted(bnd.free_symbols - indices, key=str)
                if bad:
                    raise GradcError(
                        f"{short(node)}: the bound {bnd} of index {lim[0]} is symbolic "
                        f"({', '.join(map(str, bad))}); Sum ranges must be integers or affine "
                        "in the enclosing indices")


class Lowerer:
    """Post-order lowering of one expression DAG into a :class:`Builder`."""

    def __init__(self, builder: Builder, env: dict, lazy=None):
        self.b = builder
        # IndexedBase inputs are read only through indices (gradc.indexed)
        self.bases = {s: v for s, v in env.items() if isinstance(s, sp.IndexedBase)}
        self.memo = {s: v for s, v in env.items() if not isinstance(s, sp.IndexedBase)}
        self.lazy = lazy or {}  # symbol -> function emitting its value on first use
        self.reroll = None  # a gradc.reroll.Reroller for scalar models
        self._lse_forms = {}  # log(Sum(exp(.))) node -> its logsumexp form (or None)

    # -- traversal ----------------------------------------------------------------------
    def lower(self, expr):
        stack = [expr]
        while stack:
            node = stack[-1]
            if node in self.memo:
                stack.pop()
                continue
            pending = [c for c in self.operands(node) if c not in self.memo]
            if pending:
                stack.extend(reversed(pending))
                continue
            stack.pop()
            self.memo[node] = self.dispatch(node)
        return self.memo[expr]

    def operands(self, node):
        """The subexpressions that must be lowered before ``node``."""
        if isinstance(node, sp.MatrixSymbol):
            return []
        if (isinstance(node, sp.MatrixExpr) or getattr(node, "gradc_operands", None)
                or any(isinstance(a, sp.MatrixExpr) for a in node.args)):
            if isinstance(node, MatrixElement):  # the indices are numbers
                return [node.args[0]]
            return [a for a in node.args if isinstance(a, (sp.Expr, sp.MatrixExpr))
                    and not isinstance(a, sp.Lambda) and not a.is_Number]
        if isinstance(node, sp.Add) and self.reroll is not None:
            return self.reroll.split(node)[1]  # families are lowered in _lower_Add
        if isinstance(node, (sp.Add, sp.Mul)):
            return list(node.args)
        if isinstance(node, sp.Pow):
            return [a for a in node.args if not a.is_Number]
        if isinstance(node, Application) and isinstance(node, sp.Expr):
            u = _softplus_arg(node)
            if u is not None:  # log(1 + exp(u)): lowered as Softplus(u), see _lower_log
                return [] if u.is_Number else [u]
            lse = self.logsumexp_form(node)
            if lse is not None:  # log(Sum(exp(g))): lowered as logsumexp, see _lower_log
                return [lse]
            out = []
            _collect_operands(node, out)
            return out
        return []

    def dispatch(self, node):
        for cls in type(node).__mro__:
            method = getattr(self, f"_lower_{cls.__name__}", None)
            if method is not None:
                return method(node)
        raise GradcError(
            f"unsupported sympy class {type(node).__name__} in subexpression {short(node)}"
        )

    # -- leaves -------------------------------------------------------------------------
    def _lower_Symbol(self, node):
        if node in self.lazy:
            return self.lazy[node]()
        raise GradcError(f"free symbol {node} is in neither wrt, data nor consts")

    def _lower_Number(self, node):
        if node.is_real is False or isinstance(node, sp.core.numbers.ComplexInfinity):
            raise GradcError(f"non-real number {node} in the expression")
        return Lit(float(node))

    def _lower_NumberSymbol(self, node):
        return Lit(float(node))

    def _lower_ComplexInfinity(self, node):
        raise GradcError("non-real number zoo (complex infinity) in the expression")

    def _lower_ImaginaryUnit(self, node):
        raise GradcError("complex numbers are not supported (found the imaginary unit I)")

    # -- structure ----------------------------------------------------------------------
    def _lower_Add(self, node):
        if self.reroll is None:
            return prims.add(self.b, [self.memo[a] for a in node.args])
        families, rest = self.reroll.split(node)
        sums = [self.reroll.lower_family(terms) for terms in families]
        return prims.add(self.b, [self.memo[a] for a in rest] + sums)

    def _lower_Mul(self, node):
        atoms = [self.memo[a] for a in node.args]
        out = atoms[0]
        for a in atoms[1:]:
            out = prims.mul(self.b, out, a)
        return out

    # -- elementwise --------------------------------------------------------------------
    def _lower_Pow(self, node):
        # numbers stay in the body: x**3 differentiates as 3*x**2, with no log(x) term
        operands = [a for a in node.args if not a.is_Number]
        slots = {a: prims.placeholder(i) for i, a in enumerate(operands)}
        body = sp.Pow(*[slots.get(a, a) for a in node.args])
        return prims.elementwise(self.b, body, [self.memo[a] for a in operands])

    def _lower_AppliedUndef(self, node):
        raise GradcError(
            f"undefined function {type(node).__name__} in {short(node)}: define it with "
            "sympy.Function subclass with eval and fdiff, or substitute an expression"
        )

    def _lower_Application(self, node):
        if not isinstance(node, sp.Expr):
            raise GradcError(
                f"unsupported sympy class {type(node).__name__} in subexpression {short(node)}"
            )
        operands = []
        _collect_operands(node, operands)
        slots = {op: prims.placeholder(i) for i, op in enumerate(operands)}
        body = _replace_operands(node, slots)
        return prims.elementwise(self.b, body, [self.memo[op] for op in operands])

    def logsumexp_form(self, node):
        """:func:`_logsumexp_form` of ``node``, the same object every time it is asked."""
        if not isinstance(node, sp.log) or not isinstance(node.args[0], sp.Sum):
            return None
        if node not in self._lse_forms:
            self._lse_forms[node] = _logsumexp_form(node)
        return self._lse_forms[node]

    def _lower_log(self, node):
        """``log(1 + exp(u))`` is computed as ``Softplus(u)``: no overflow of ``exp(u)`` for
        large ``u`` (and a finite derivative, the logistic, where ``exp(u)/(1 + exp(u))``
        would be inf/inf); ``log(Sum(exp(g), ...))`` over integer ranges as ``logsumexp``
        of the terms (the maximum shifted out); any other ``log`` as a function
        application."""
        lse = self.logsumexp_form(node)
        if lse is not None:
            return self.memo[lse]
        u = _softplus_arg(node)
        if u is None:
            return self._lower_Application(node)
        if u.is_Number:
            return Lit(float(node))
        from .nn import Softplus

        return prims.elementwise(self.b, Softplus(prims.placeholder(0)), [self.memo[u]])

    # -- matrices -------------------------------------------------------------------------
    def _lower_MatrixSymbol(self, node):  # pragma: no cover - roles are checked first
        raise GradcError(f"free matrix symbol {node} is in neither wrt, data nor consts")

    def _lower_MatAdd(self, node):
        return prims.add(self.b, [self.memo[a] for a in node.args])

    def _lower_MatMul(self, node):
        scalars = [Lit(float(a)) if a.is_Number else self.memo[a]
                   for a in node.args if not isinstance(a, sp.MatrixExpr)]
        mats = [a for a in node.args if isinstance(a, sp.MatrixExpr)]
        out = self._chain([self.memo[m] for m in mats], [matrix_shape(m) for m in mats])
        for s in scalars:
            out = prims.mul(self.b, s, out)
        return out

    def _chain(self, atoms, shapes):
        """Multiply a chain of matrices in the cheapest order (matrix chain DP); a batched
        vector counts as n columns, with n standing at 1000."""
        if len(atoms) == 1:
            return atoms[0]
        from .planner import chain_order

        dims = [shapes[0][0]] + [s[1] for s in shapes]
        for i, a in enumerate(atoms):  # a batch of column vectors is a wide matrix
            if type_of(a)[1] and shapes[i][1] == 1:
                dims[i + 1] = 1000
            if type_of(a)[1] and shapes[i][0] == 1:
                dims[i] = 1000
        _, brackets = chain_order(dims)
        return self._bracketed(brackets, atoms)

    def _bracketed(self, text, atoms):
        stack = [[]]
        i = 0
        while i < len(text):
            ch = text[i]
            if ch == "(":
                stack.append([])
            elif ch == ")":
                items = stack.pop()
                out = items[0]
                for it in items[1:]:
                    out = ap.matmul(self.b, out, it)
                stack[-1].append(out)
            elif ch == "A":
                j = i + 1
                while j < len(text) and text[j].isdigit():
                    j += 1
                stack[-1].append(atoms[int(text[i + 1:j]) - 1])
                i = j - 1
            i += 1
        (out,) = stack[0]
        return out

    def _lower_Transpose(self, node):
        return ap.transpose(self.b, self.memo[node.arg])

    def _lower_HadamardProduct(self, node):
        out = self.memo[node.args[0]]
        for a in node.args[1:]:
            out = prims.mul(self.b, out, self.memo[a])
        return out

    def _lower_HadamardPower(self, node):
        base, exponent = node.args
        if exponent.is_Number:
            return prims.elementwise(self.b, prims.placeholder(0) ** exponent, [self.memo[base]])
        body = prims.placeholder(0) ** prims.placeholder(1)
        return prims.elementwise(self.b, body, [self.memo[base], self.memo[exponent]])

    def _lower_ElementwiseApplyFunction(self, node):
        lam, arg = node.function, node.expr
        if not isinstance(lam, sp.Lambda) or len(lam.variables) != 1:
            lam = sp.Lambda(sp.Dummy("t"), lam(sp.Dummy("t")))
        (var,) = lam.variables
        others = sorted(lam.expr.free_symbols - {var}, key=sp.default_sort_key)
        slots = {var: prims.placeholder(0)}
        slots.update({s: prims.placeholder(i + 1) for i, s in enumerate(others)})
        body = lam.expr.xreplace(slots)
        return prims.elementwise(self.b, body, [self.memo[arg]] + [self.memo[s] for s in others])

    def _lower_Identity(self, node):
        r, c = matrix_shape(node)
        return Lit(1.0) if (r, c) == (1, 1) else self.b.emit("eye", [], (r, c))

    def _lower_ZeroMatrix(self, node):
        return ap.broadcast(self.b, Lit(0.0), ir_shape(node))

    def _lower_OneMatrix(self, node):
        return ap.broadcast(self.b, Lit(1.0), ir_shape(node))

    def _lower_Trace(self, node):
        a = self.memo[node.arg]
        if type_of(a)[0] == ():
            return a
        eye = self.b.emit("eye", [], type_of(a)[0])
        return ap.sum_elements(self.b, prims.mul(self.b, a, eye))

    def _lower_MatrixElement(self, node):
        parent, i, j = node.args
        if not (i.is_Integer and j.is_Integer):
            raise GradcError(
                f"indexing {short(node)}: indices must be integers (use nn.cross_entropy "
                "or nn.Pick for a per-example label)"
            )
        return ap.element(self.b, self.memo[parent], (int(i), int(j)))

    def _lower_MatrixSlice(self, node):
        """``x[a:b:s, c:d:t]``: a map loop reading the parent at affine indices."""
        from .prims.loop import loop

        parent = self.memo[node.parent]
        shape = ir_shape(node)
        (r0, _, rs), (c0, _, cs) = ((int(v) for v in sl) for sl in (node.rowslice, node.colslice))
        r, c = matrix_shape(node)
        if type_of(parent)[0] == ():  # a 1x1 parent: the slice is all of it
            return parent
        p, q = sp.symbols("p q", integer=True)
        dims = ((p, sp.S.Zero, sp.Integer(r - 1)), (q, sp.S.Zero, sp.Integer(c - 1)))
        read = (r0 + rs * p, c0 + cs * q)
        out = (p, q) if shape else ()
        return loop(self.b, dims, [parent], [read], prims.placeholder(0), shape, out)

    def _lower_ImmutableDenseMatrix(self, node):
        """An explicit matrix of scalar expressions: each lowered, then assembled."""
        r, c = matrix_shape(node)
        parts = []
        for a in range(r):
            for b in range(c):
                atom = self.lower(node[a, b])
                if type_of(atom)[0] != ():
                    raise GradcError(f"entry ({a}, {b}) of {short(node)} is not a scalar")
                parts.append((atom, (a, b)))
        if (r, c) == (1, 1):
            return parts[0][0]
        out = ap.assemble(self.b, (r, c), parts)
        return ap.broadcast(self.b, Lit(0.0), (r, c)) if out is None else out

    def _lower_MatrixExpr(self, node):
        raise GradcError(
            f"unsupported matrix expression class {type(node).__name__} in {short(node)}"
        )

    # -- gradc.nn building blocks ---------------------------------------------------------
    def _lower_MatSum(self, node):
        return ap.sum_elements(self.b, self.memo[node.args[0]])

    def _lower_LogSumExp(self, node):
        a = self.memo[node.args[0]]
        return a if type_of(a)[0] == () else self.b.emit("logsumexp", [a])

    def _lower_Pick(self, node):
        if node.args[1].is_Number:
            raise GradcError(f"pick with a constant label {node.args[1]}: index the matrix instead")
        if not isinstance(node.args[1], sp.Symbol):
            raise GradcError(f"the label of {short(node)} must be a data symbol, not an expression")
        z, label = self.memo[node.args[0]], self.memo[node.args[1]]
        return ap.pick(self.b, z, label)

    # -- indexed expressions (gradc.indexed) -----------------------------------------------
    def _indexed(self):
        if getattr(self, "_ix", None) is None:
            self._ix = IndexLowerer(self)
        return self._ix

    def _lower_Sum(self, node):
        return self._indexed().lower_sum(node)

    def _lower_Indexed(self, node):
        return self._indexed().lower_indexed(node)

    def _lower_FunctionMatrix(self, node):
        return self._indexed().lower_function_matrix(node)

    def _lower_IndexedBase(self, node):
        raise GradcError(f"IndexedBase {node} used without indices: write {node}[i, ...] "
                         "inside a Sum")

    def _lower_Derivative(self, node):
        raise GradcError(
            f"unsupported sympy class Derivative in {short(node)}: call .doit() first"
        )


def _leaves(node):
    """The leaves of an expression: its symbols and matrix symbols, with an indexed read
    (``cams[ci, 0]``) one leaf (not its base, its label and its index symbols)."""
    out, stack, seen = set(), [node], set()
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if isinstance(n, sp.Indexed):
            out.add(n)
        elif isinstance(n, (sp.Symbol, sp.MatrixSymbol)):
            out.add(n)
        elif isinstance(n, sp.IndexedBase):
            out.add(n)  # lowered on its own, to the message naming it
        else:
            stack.extend(a for a in n.args if isinstance(a, sp.Basic))
    return out


def _softplus_arg(node):
    """``u`` when ``node`` is ``log(1 + exp(u))`` (sympy's canonical ``log(exp(u) + 1)``),
    else None."""
    if not isinstance(node, sp.log) or not isinstance(node.args[0], sp.Add):
        return None
    terms = node.args[0].args
    if len(terms) != 2 or sp.S.One not in terms:
        return None
    (other,) = [t for t in terms if t != sp.S.One]
    return other.args[0] if isinstance(other, sp.exp) else None


def with_softplus(expr):
    """``expr`` with every ``log(1 + exp(u))`` replaced by ``Softplus(u)`` (inside ``Sum``
    bodies too, where the lowering builds sympy bodies instead of calling
    :meth:`Lowerer._lower_log`).  Iterative: deep expressions are fine."""
    if not expr.has(sp.log):
        return expr
    from .nn import Softplus

    new = {}
    for n in postorder(expr):
        if not n.args:
            continue
        args = [new.get(a, a) for a in n.args]
        m = n.func(*args) if any(a is not b for a, b in zip(args, n.args)) else n
        u = _softplus_arg(m)
        if u is not None and not u.is_Number:
            m = Softplus(u)
        if m is not n:
            new[n] = m
    return new.get(expr, expr)


def _logsumexp_form(node):
    """``nn.logsumexp`` of a ``FunctionMatrix`` when ``node`` is ``log(Sum(exp(g), ...))``
    over one or two indices with integer bounds (the maximum shifted out: no overflow of
    ``exp(g)``), else None.  ``node`` is a ``log`` of a ``Sum`` (the caller checks)."""
    s = node.args[0]
    if not isinstance(s.function, sp.exp) or len(s.limits) > 2:
        return None
    lims = []
    for lim in s.limits:
        if len(lim) != 3 or not (lim[1].is_Integer and lim[2].is_Integer) or lim[2] < lim[1]:
            return None
        lims.append(lim)
    from sympy.matrices.expressions.funcmatrix import FunctionMatrix

    from .nn import LogSumExp

    g = s.function.args[0]
    rows, cols = sp.Dummy("r", integer=True), sp.Dummy("c", integer=True)
    if len(lims) == 1:
        (k, lo, hi), = lims
        shape, body = (1, int(hi - lo) + 1), g.xreplace({k: cols + lo})
    else:  # sympy's order: the first limit is the inner sum
        (k, lo, hi), (j, lo2, hi2) = lims
        shape = (int(hi2 - lo2) + 1, int(hi - lo) + 1)
        body = g.xreplace({j: rows + lo2, k: cols + lo})
    return LogSumExp(FunctionMatrix(*shape, sp.Lambda((rows, cols), body)))


def _collect_operands(node, out):
    """Append the operands of a function application in order of first appearance.

    Numbers stay in the body; relational and boolean arguments (Piecewise conditions) are
    opened up so their expression leaves become operands too.
    """
    if isinstance(node, sp.Piecewise):
        # Branches stay whole inside the body, down to their symbols: sympy then
        # differentiates each branch under its condition, so an untaken branch with an
        # infinite derivative (sqrt at 0, log below 0) cannot leak 0 * inf = nan.
        for s in sorted(_leaves(node), key=sp.default_sort_key):
            if s not in out:
                out.append(s)
        return
    for arg in node.args:
        if isinstance(arg, sp.Tuple) or isinstance(arg, sp.logic.boolalg.Boolean) and not isinstance(arg, sp.Expr):
            _collect_operands(arg, out)
        elif arg.is_Number or isinstance(arg, sp.NumberSymbol):
            continue
        elif isinstance(arg, sp.Expr):
            if arg not in out:
                out.append(arg)
        elif arg in (sp.true, sp.false):
            continue
        else:
            raise GradcError(
                f"unsupported argument {short(arg)} of class {type(arg).__name__} "
                f"in {short(node)}"
            )


def _replace_operands(node, slots):
    if node in slots:
        return slots[node]
    if not node.args or node.is_Number:
        return node
    return node.func(*[_replace_operands(a, slots) for a in node.args])


def _assumptions(s):
    given = getattr(s, "_assumptions_orig", None) or {}
    return "{" + ", ".join(f"{k}={v}" for k, v in sorted(given.items())) + "}" if given else \
        "none"


def _namesake(s, roles):
    """The end of the message for a free symbol ``s``: a declared symbol that prints the
    same but is another symbol (other assumptions: sympy's ``Symbol("x")`` and
    ``Symbol("x", real=True)`` are two symbols), or nothing."""
    same = [(r, role) for r, role in roles.items() if str(r) == str(s) and r != s]
    if not same:
        return ""
    r, role = same[0]
    return (f"; {role} holds a different symbol that also prints as {s}: sympy tells them "
            f"apart by their assumptions (in the expression: {_assumptions(s)}; in {role}: "
            f"{_assumptions(r)}). Create both with the same assumptions, or pass the "
            "expression's own symbol")


def is_scalar_model(expr, wrt, data=(), consts=()) -> bool:
    """True when every symbol is a scalar and the expression has no matrix in it: such a
    model is lowered with its parameters as one vector (``lower(..., packed=True)``)."""
    if isinstance(expr, sp.MatrixExpr):
        return False
    if any(isinstance(s, (sp.MatrixSymbol, sp.IndexedBase)) for s in (*wrt, *data, *consts)):
        return False
    return not any(isinstance(n, (sp.MatrixExpr, *INDEXED)) or getattr(n, "gradc_operands", None)
                   for n in postorder(expr))


def lower(expr, wrt, data=(), consts=(), reduce=None, packed=False, checked=False) -> Program:
    """Lower ``expr`` with the given symbol roles to a one-output program.

    With ``packed`` (scalar models, :func:`is_scalar_model`) the parameters are one
    ``param`` input, the vector ``params`` of length ``len(wrt)``, and each symbol reads
    its element: the program then takes and differentiates what the kernels take.
    ``checked`` skips the role checks (the caller made them with :func:`check_roles`).

    Examples
    --------
    >>> import sympy as sp
    >>> from gradc.frontend import lower
    >>> x, w = sp.symbols("x w")
    >>> print(lower(sp.tanh(w * x), wrt=[w], data=[x]))
    program:
      v0: param w
      v1: data x :batched
      v2 :batched = v0 * v1
      v3 :batched = [tanh(_a0)](v2)
      return v3
    >>> print(lower(sp.tanh(w * x), wrt=[w], data=[x], packed=True))
    program:
      v0: param params :1
      v1: data x :batched
      v2 = v0[0]
      v3 :batched = v2 * v1
      v4 :batched = [tanh(_a0)](v3)
      return v4
    """
    if not checked:  # (compile has checked the roles already)
        wrt, data, consts = check_roles(expr, wrt, data, consts)
    b = Builder()
    env, lazy = {}, {}
    if packed:
        vec = b.add_input("param", "params", 0, (len(wrt),))
        for i, s in enumerate(wrt):
            lazy[s] = (lambda i=i, s=s: ap.element(b, vec, (i,), hint=s.name))
        roles = (("data", data), ("const", consts))
    else:
        roles = (("param", wrt), ("data", data), ("const", consts))
    for role, syms in roles:
        for i, s in enumerate(syms):
            shape = ir_shape(s) if isinstance(s, sp.MatrixSymbol) else \
                indexed_shape(s) if isinstance(s, sp.IndexedBase) else ()
            env[s] = b.add_input(role, str(s), i, shape)
    lowerer = Lowerer(b, env, lazy)
    if packed:
        from .reroll import Reroller

        lowerer.reroll = Reroller(lowerer, vec, {s: i for i, s in enumerate(wrt)})
    out = lowerer.lower(expr)
    if reduce is not None and data:
        out = ap.batch_sum(b, out)
        if reduce == "mean":
            out = prims.mul(b, out, prims.elementwise(b, 1 / prims.placeholder(0), [b.size()]))
    return b.build([out], ["value"])
