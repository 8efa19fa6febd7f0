"""The scalar algebra: ``add``, ``mul`` and ``elementwise``.

Contract
--------
These primitives act element by element, with scalars broadcast against matrices and
batch-invariant values against per-example ones (:func:`gradc.prims.broadcast_type`).
``elementwise`` holds any scalar function as a sympy expression of placeholder symbols
``_a0, _a1, ...``; its partial derivatives come from ``sympy.diff`` (:func:`partials`),
with gradc's subgradient conventions (:data:`CONVENTIONS`) applied wherever the step-like
functions appear.
"""

from __future__ import annotations

import re
from functools import lru_cache

import sympy as sp

from ..errors import GradcError, short
from ..ir import Lit, Var
from . import Primitive, add, broadcast_type, mul, register

# --------------------------------------------------------------------------------------
# add: out = x0 + x1 + ... (n-ary)


@register
class Add(Primitive):
    name = "add"
    elementwise = True
    structure = "linear"

    def abstract_eval(self, inputs, params):
        return broadcast_type(inputs, "addition")

    def describe(self, eqn):
        return " + ".join(repr(a) for a in eqn.inputs)

    def emit(self, eqn, names, printer):
        return " + ".join(names)

    def jvp(self, b, eqn, tangents):
        return add(b, tangents)

    def vjp(self, b, eqn, ct, active):
        return [ct if act else None for act in active]

    def sparsity(self, eqn, deps, pattern):
        from ..sparsity import union

        return union(*deps)


# --------------------------------------------------------------------------------------
# mul: out = x * y


@register
class Mul(Primitive):
    name = "mul"
    elementwise = True
    structure = "diagonal"

    def abstract_eval(self, inputs, params):
        return broadcast_type(inputs, "elementwise product")

    def describe(self, eqn):
        return " * ".join(repr(a) for a in eqn.inputs)

    def emit(self, eqn, names, printer):
        return f"{names[0]} * {names[1]}"

    def jvp(self, b, eqn, tangents):
        x, y = eqn.inputs
        tx, ty = tangents
        return add(b, [mul(b, tx, y), mul(b, x, ty)])

    def vjp(self, b, eqn, ct, active):
        x, y = eqn.inputs
        return [mul(b, ct, y) if active[0] else None, mul(b, ct, x) if active[1] else None]

    def sparsity(self, eqn, deps, pattern):
        from ..sparsity import union

        pattern.meet_elementwise(deps[0], deps[1])
        return union(*deps)


# --------------------------------------------------------------------------------------
# elementwise: out = body(_a0, _a1, ...), any scalar function sympy can differentiate


@lru_cache(maxsize=None)
def placeholder(i: int) -> sp.Symbol:
    """The i-th placeholder symbol ``_a{i}`` used in elementwise bodies."""
    return sp.Symbol(f"_a{i}", real=True)


# Subgradient conventions.  sympy differentiates a function through its ``fdiff`` (or
# ``_eval_derivative``); gradc swaps the classes below for subclasses whose derivative
# follows gradc's conventions, differentiates, and swaps back.  Because both forward and
# reverse mode take their partials from :func:`partials`, the conventions are identical in
# both modes, wherever the function appears in a body:
#   Max(x, 0)'(0) = relu'(0) = 0 (a number argument is beaten only strictly); tied
#   non-constant arguments of Max or Min share the derivative evenly;
#   |x|'(0) = sign(0) = 0 (sympy's own rule); sign' = floor' = ceiling' = Heaviside' = 0.


class _Max(sp.Max):
    def fdiff(self, argindex=1):
        return _winner(self.args, argindex - 1, 1)


class _Min(sp.Min):
    def fdiff(self, argindex=1):
        return _winner(self.args, argindex - 1, -1)


def _winner(args, i, sign):
    """The share of the derivative that args[i] of a Max (sign 1) or Min (sign -1) gets.

    A number argument never shares: against it, args[i] must win strictly (so
    ``Max(t, 0)'(0) = relu'(0) = 0``).  Among the other arguments tied for best, the
    derivative is split evenly.  Two expressions tie on a whole region only where they are
    the same function there, with the same derivative, so an even split gives the true
    derivative (``Min(q, |q|)' = 1`` for q > 0, where "0 for every tied argument" gave 0);
    at a kink it is the mean of the one-sided derivatives, a subgradient.
    """
    ai = args[i]
    if ai.is_Number:
        return sp.S.Zero
    out = sp.Mul(*[sp.Heaviside(sign * (ai - aj), 0) for aj in args if aj.is_Number])
    rest = [a for a in args if not a.is_Number]  # ai among them
    if len(rest) == 2:  # 1 if ai wins, 1/2 at the tie
        (aj,) = [a for a in rest if a is not ai]
        return out * sp.Heaviside(sign * (ai - aj), sp.Rational(1, 2))

    def tied_for_best(ak):  # 1 if ak is at least as good as every other one, else 0
        return sp.Mul(*[sp.Heaviside(sign * (ak - al), 1) for al in rest if al is not ak])

    return out * tied_for_best(ai) / sp.Add(*[tied_for_best(ak) for ak in rest])


def _flat(base):
    # sympy's Heaviside.__new__ calls ``super(cls, cls).__new__``: with cls a subclass that
    # is Heaviside.__new__ again, forever (a RecursionError whenever sympy rebuilds a
    # swapped Heaviside whose argument changed).  The subclass builds as a plain Function.
    return type(f"_{base.__name__}", (base,), {
        "__new__": lambda cls, *args, **options: sp.Function.__new__(cls, *args, **options),
        "fdiff": lambda self, argindex=1: sp.S.Zero,
        "_eval_derivative": lambda self, s: sp.S.Zero,
    })


class _Sinc(sp.sinc):
    """sinc with a derivative that exists at 0 and keeps its digits near it: sympy's
    ``cos(x)/x - sin(x)/x**2`` is 0/0 at 0 and cancels to nothing close to it (a relative
    error of about eps / x**2).  For |x| < 1/2 the derivative is its Taylor series
    ``sum_k (-1)^k 2k x^(2k-1) / (2k+1)!`` to x^15 (truncation below 1e-19), whose own
    derivatives (Hessians) are as accurate."""

    def fdiff(self, argindex=1):
        (x,) = self.args
        series = sp.Add(*[(-1) ** k * 2 * k * x ** (2 * k - 1) / sp.factorial(2 * k + 1)
                          for k in range(1, 9)])
        return sp.Piecewise((sp.cos(x) / x - sp.sin(x) / x ** 2, sp.Abs(x) >= sp.S.Half),
                            (series, True))


CONVENTIONS = {cls: sub for cls, sub in [
    (sp.Max, _Max), (sp.Min, _Min), (sp.sinc, _Sinc),
    (sp.sign, _flat(sp.sign)), (sp.floor, _flat(sp.floor)),
    (sp.ceiling, _flat(sp.ceiling)), (sp.Heaviside, _flat(sp.Heaviside)),
    (sp.KroneckerDelta, _flat(sp.KroneckerDelta)),
]}
_BACK = {sub: cls for cls, sub in CONVENTIONS.items()}


def _swap(expr, table):
    # Basic.__new__ rebuilds the node without re-evaluating its (already canonical) args.
    return expr.replace(lambda e: type(e) in table, lambda e: sp.Basic.__new__(table[type(e)], *e.args))


# Powers at the edge of their domain.  sympy differentiates b**e as
# b**e * (e' log(b) + b' e / b): at b = 0 that is 0 * (-inf) for the exponent (NaN where
# the limit, and the derivative for e > 0, is 0) and 0/0 for the base.  gradc swaps every
# power with a symbolic exponent for :class:`_Pow`, whose derivative is
#   d/db b**e = e b**(e-1), and 0 where e = 0 and b = 0 (b**0 is the constant 1, even at
#   b = 0; guarding e = 0 alone would zero the second derivative d2/(db de) = 1/b there);
#   d/de b**e = b**e log(b), and 0 where b**e = 0 (b = 0 with e > 0: the limit is 0).
# Everything else (sqrt(b) and log(b) at 0, b**e at 0 with e < 0) keeps its IEEE value,
# which is the one-sided limit: +-inf, not a made-up number (docs/conventions.md, "Powers
# and logarithms at the edge of their domain").


class _Pow(sp.Function):
    """``b**e`` during differentiation, with the derivatives above.  A function rather
    than a Pow subclass, so that products do not merge it back into a plain Pow; it has
    the assumptions of the power it stands for."""

    nargs = 2

    def fdiff(self, argindex=1):
        b, e = self.args
        if argindex == 1:
            # guarded only where both are 0 (b**0 is the constant 1, also at b = 0): a
            # guard on e alone would make d2/(db de) = 0 at e = 0, where it is 1/b
            return sp.Piecewise((0, sp.And(sp.Eq(e, 0), sp.Eq(b, 0))),
                                (e * sp.Pow(b, e - 1), True))
        p = sp.Pow(b, e)
        return sp.Piecewise((0, sp.Eq(p, 0)), (p * sp.log(b), True))


for _fact in ("real", "extended_real", "positive", "extended_positive", "negative",
              "extended_negative", "nonnegative", "extended_nonnegative", "nonpositive",
              "extended_nonpositive", "zero", "nonzero", "extended_nonzero", "finite",
              "infinite", "integer", "rational", "complex", "imaginary"):
    setattr(_Pow, f"_eval_is_{_fact}",
            lambda self, _f=_fact: getattr(sp.Pow(*self.args), f"is_{_f}"))


def _symbolic_power(e):
    return type(e) is sp.Pow and not e.exp.is_Number and not e.base.is_Number


def _swap_powers(expr):
    return expr.replace(_symbolic_power, lambda e: _Pow(*e.args))


def _unswap_powers(expr):
    return expr.replace(lambda e: type(e) is _Pow, lambda e: sp.Pow(*e.args))


@lru_cache(maxsize=4096)
def partials(body: sp.Expr, nargs: int) -> tuple:
    """Partial derivatives of ``body`` with respect to ``_a0 .. _a{nargs-1}``.

    The results may use ``_a{nargs}``, which stands for the primal output ``body`` itself
    (so ``d tanh(a)/da`` becomes ``1 - _a1**2`` and reuses the forward value).  Dirac deltas
    (derivatives of steps) are 0 by gradc's conventions, and a power with a symbolic
    exponent has no ``0 * inf`` at a zero base (:class:`_Pow`).

    Examples
    --------
    >>> import sympy as sp
    >>> from gradc.prims import partials, placeholder
    >>> partials(sp.tanh(placeholder(0)), 1)
    (1 - _a1**2,)
    >>> partials(sp.Max(placeholder(0), 0), 1)
    (Heaviside(_a0, 0),)
    """
    ans = placeholder(nargs)
    conv = _swap(_swap_powers(body), CONVENTIONS)
    out = []
    for i in range(nargs):
        d = sp.diff(conv, placeholder(i))
        d = _unswap_powers(_swap(d, _BACK))
        d = d.replace(lambda e: isinstance(e, sp.DiracDelta), lambda e: sp.S.Zero)
        if d.has(sp.Derivative, sp.Subs):
            bad = next(iter(d.atoms(sp.Derivative, sp.Subs)))
            fname = type(bad.expr).__name__ if isinstance(bad, sp.Derivative) else "Subs"
            raise GradcError(
                f"sympy cannot differentiate {fname} in {short(body)} (it returned the "
                f"unevaluated {short(bad)}); give {fname} an fdiff method or rewrite it"
            )
        if d != 0 and not body.is_Atom:
            d = d.xreplace({body: ans})
        out.append(d)
    return tuple(out)


_PH = re.compile(r"\b_a(\d+)\b")


@register
class Elementwise(Primitive):
    name = "elementwise"
    elementwise = True
    structure = "diagonal"

    def abstract_eval(self, inputs, params):
        return broadcast_type(inputs, f"elementwise {params}")

    def describe(self, eqn):
        return f"[{eqn.params}]({', '.join(repr(a) for a in eqn.inputs)})"

    def emit(self, eqn, names, printer):
        template = printer.template(eqn.params)
        return _PH.sub(lambda m: names[int(m.group(1))], template)

    def jvp(self, b, eqn, tangents):
        # A partial that calls a function (``cos`` for ``sin``, a Piecewise) is an
        # equation of the primal values of its own, and the tangent the linear sum of
        # partial times tangent: the partial is then computed once however many tangents
        # go through (forward over reverse, a block of Jacobian directions), and the
        # tangent's body stays small.
        k = len(eqn.inputs)
        ds = partials(eqn.params, k)
        primal = list(eqn.inputs) + [eqn.out]
        terms, inputs = [], list(primal)
        for i, t in enumerate(tangents):
            if t is None or ds[i] == 0:
                continue
            d = ds[i]
            if _calls(d):
                inputs.append(elementwise(b, d, primal))
                d = placeholder(len(inputs) - 1)
            inputs.append(t)
            terms.append(d * placeholder(len(inputs) - 1))
        if not terms:
            return None
        return elementwise(b, sp.Add(*terms), inputs)

    def vjp(self, b, eqn, ct, active):
        k = len(eqn.inputs)
        ds = partials(eqn.params, k)
        inputs = list(eqn.inputs) + [eqn.out, ct]
        ctp = placeholder(k + 1)
        return [
            elementwise(b, ds[i] * ctp, inputs) if active[i] and ds[i] != 0 else None
            for i in range(k)
        ]

    def sparsity(self, eqn, deps, pattern):
        from ..sparsity import EMPTY, broadcast_to, deps_array, union

        first, second = second_partials(eqn.params, len(eqn.inputs))
        for i, di in enumerate(deps):
            for j in range(i, len(deps)):
                if second[i][j]:
                    pattern.meet_elementwise(di, deps[j])
        reach = [d for d, f in zip(deps, first) if f]
        return broadcast_to(union(*reach), eqn.out.shape) if reach else \
            deps_array(eqn.out.shape, EMPTY)


@lru_cache(maxsize=4096)
def _calls(expr: sp.Expr) -> bool:
    """``expr`` applies a function or a Piecewise (anything past arithmetic and integer
    powers)."""
    return any(isinstance(n, (sp.Function, sp.Piecewise)) or isinstance(n, sp.Pow)
               and not n.exp.is_Integer for n in sp.preorder_traversal(expr))


@lru_cache(maxsize=4096)
def second_partials(body: sp.Expr, nargs: int) -> tuple:
    """Which inputs of ``body`` reach it and which pairs meet: ``(first, second)`` with
    ``first[i]`` true when the partial derivative by ``_a{i}`` is not identically zero and
    ``second[i][j]`` when the second partial by ``_a{i}`` and ``_a{j}`` is not, both under
    gradc's conventions (the same :func:`partials` the AD transforms use)."""
    ds = partials(body, nargs)
    out = placeholder(nargs)
    first = tuple(d != 0 for d in ds)
    second = []
    for i in range(nargs):
        d = ds[i].xreplace({out: body}) if ds[i] != 0 else sp.S.Zero
        row = partials(d, nargs) if d != 0 and not d.is_Number else (sp.S.Zero,) * nargs
        second.append(tuple(bool(r != 0) for r in row))
    return first, tuple(second)


def number(value: float) -> sp.Expr:
    """The sympy number for a float64 literal (integers stay exact)."""
    if value != value:
        return sp.nan
    if value in (float("inf"), float("-inf")):
        return sp.oo if value > 0 else -sp.oo
    if value == int(value) and abs(value) < 2**53:
        return sp.Integer(int(value))
    return sp.Float(value)


def elementwise(b, body: sp.Expr, inputs):
    """Emit ``body(inputs)`` canonically and return its atom.

    Literal inputs are folded into the body, unused and repeated inputs are dropped and
    placeholders renumbered in order of first use; a body that is a number or a bare
    placeholder needs no equation.
    """
    lits = {placeholder(i): number(a.value) for i, a in enumerate(inputs) if isinstance(a, Lit)}
    if lits:
        body = body.xreplace(lits)
    free = body.free_symbols
    slot: dict = {}  # Var -> new placeholder index
    ren = {}
    for i, atom in enumerate(inputs):
        p = placeholder(i)
        if isinstance(atom, Var) and p in free:
            ren[p] = placeholder(slot.setdefault(atom, len(slot)))
    if not ren:
        try:
            return Lit(float(body))
        except TypeError:
            raise GradcError(f"cannot evaluate {short(body)} to a float64 number") from None
    body = body.xreplace(ren)
    if not slot:
        raise GradcError(f"expression {short(body)} has no inputs and is not a number")
    keep = list(slot)
    if body == placeholder(0) and len(keep) == 1:
        return keep[0]
    # plain products and sums of inputs are the structural primitives (shared CSE keys)
    atom_of = {placeholder(i): a for i, a in enumerate(keep)}
    if isinstance(body, (sp.Mul, sp.Add)) and all(a in atom_of for a in body.args):
        atoms = [atom_of[a] for a in body.args]
        if isinstance(body, sp.Add):
            return add(b, atoms)
        out = atoms[0]
        for a in atoms[1:]:
            out = mul(b, out, a)
        return out
    return b.emit("elementwise", keep, body)
