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
placeholders.  The traversal is an explicit post-order stack over the expression DAG, so
depth is unlimited, and equal subexpressions are lowered once.
"""

from __future__ import annotations

import sympy as sp
from sympy.concrete.expr_with_limits import ExprWithLimits
from sympy.core.function import Application

from . import prims
from .errors import GradcError, short
from .ir import Builder, Lit, Program


def postorder(expr):
    """Every distinct subexpression of ``expr``, children before parents (iterative)."""
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
        stack.extend((a, False) for a in reversed(node.args) if a not in seen)
    return order


def free_symbols(expr):
    """The free symbols of ``expr`` without sympy's recursion (deep expressions)."""
    return {n for n in postorder(expr) if isinstance(n, sp.Symbol)}


def structural_key(expr) -> str:
    """A text that identifies ``expr`` exactly and is stable across processes.

    Like ``srepr`` (class names, symbol assumptions, exact numbers) but iterative, and
    linear in the size of the DAG: shared subexpressions are written once.
    """
    ids, lines = {}, []
    for node in postorder(expr):
        if node.args:
            body = type(node).__name__ + "(" + ",".join(str(ids[a]) for a in node.args) + ")"
        else:
            body = sp.srepr(node)
        ids[node] = len(lines)
        lines.append(body)
    return "\n".join(lines)


def check_roles(expr, wrt, data, consts):
    """Validate the symbol roles; return them as tuples of sympy Symbols."""
    roles = {}
    for role, syms in (("wrt", wrt), ("data", data), ("consts", consts)):
        if isinstance(syms, sp.Basic):
            raise GradcError(f"{role} must be a sequence of symbols, got the single {syms}")
        for s in syms:
            if not isinstance(s, sp.Symbol):
                raise GradcError(
                    f"{role} entries must be sympy Symbols; got {short(s)} "
                    f"of class {type(s).__name__}"
                )
            if s in roles:
                other = roles[s]
                where = f"both {other} and {role}" if other != role else f"{role} twice"
                raise GradcError(f"symbol {s} appears in {where}")
            roles[s] = role
    if not isinstance(expr, sp.Expr):
        raise GradcError(
            f"expected a scalar sympy expression, got {short(expr)} of class {type(expr).__name__}"
        )
    for node in postorder(expr):
        if isinstance(node, (ExprWithLimits, sp.Lambda)):  # Integral, Sum, Product...
            raise GradcError(
                f"unsupported sympy class {type(node).__name__} in subexpression {short(node)}"
            )
    for s in sorted(free_symbols(expr), key=str):
        if s not in roles:
            raise GradcError(f"free symbol {s} is in neither wrt, data nor consts")
    if not wrt:
        raise GradcError("wrt is empty: name at least one symbol to differentiate with respect to")
    return tuple(wrt), tuple(data), tuple(consts)


class Lowerer:
    """Post-order lowering of one expression DAG into a :class:`Builder`."""

    def __init__(self, builder: Builder, env: dict):
        self.b = builder
        self.memo = dict(env)  # sympy expr -> atom

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
        if isinstance(node, (sp.Add, sp.Mul)):
            return list(node.args)
        if isinstance(node, sp.Pow):
            return [a for a in node.args if not a.is_Number]
        if isinstance(node, Application) and isinstance(node, sp.Expr):
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
    def _lower_Symbol(self, node):  # pragma: no cover - roles are checked first
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
        return prims.add(self.b, [self.memo[a] for a in node.args])

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

    def _lower_Derivative(self, node):
        raise GradcError(
            f"unsupported sympy class Derivative in {short(node)}: call .doit() first"
        )


def _collect_operands(node, out):
    """Append the operands of a function application in order of first appearance.

    Numbers stay in the body; relational and boolean arguments (Piecewise conditions) are
    opened up so their expression leaves become operands too.
    """
    if isinstance(node, sp.Piecewise):
        # Branches stay whole inside the body, down to their symbols: sympy then
        # differentiates each branch under its condition, so an untaken branch with an
        # infinite derivative (sqrt at 0, log below 0) cannot leak 0 * inf = nan.
        for s in sorted(free_symbols(node), key=sp.default_sort_key):
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


def lower(expr, wrt, data=(), consts=()) -> Program:
    """Lower ``expr`` with the given symbol roles to a one-output program.

    Examples
    --------
    >>> import sympy as sp
    >>> from gradc.frontend import lower
    >>> x, w = sp.symbols("x w")
    >>> print(lower(sp.tanh(w * x), wrt=[w], data=[x]))
    program:
      v0: param w
      v1: data x
      v2 = v0 * v1
      v3 = [tanh(_a0)](v2)
      return v3
    """
    wrt, data, consts = check_roles(expr, wrt, data, consts)
    b = Builder()
    env = {}
    for role, syms in (("param", wrt), ("data", data), ("const", consts)):
        for i, s in enumerate(syms):
            env[s] = b.add_input(role, str(s), i)
    out = Lowerer(b, env).lower(expr)
    return b.build([out], ["value"])
