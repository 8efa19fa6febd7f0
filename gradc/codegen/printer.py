"""Scalar printer: sympy elementwise bodies -> numba-compatible Python expressions.

Contract
--------
:class:`KernelPrinter` subclasses sympy's ``PythonCodePrinter`` and overrides only what
must differ for numba kernels:

* floats print exactly (``repr`` of the float64), large integers as floats;
* small integer and half-integer powers become products and ``np.sqrt`` (no ``pow`` call);
* ``exp``, ``log``, ``tanh`` call gradc's vectorisable kernels (``_vm``), other elementary
  functions call numpy ufuncs (IEEE results for NaN, inf and domain errors in both numba
  and plain Python), ``erf`` calls ``math``, the gamma family gradc's runtime (the same
  inf and NaN at the poles with and without numba), and the step functions call gradc's
  runtime helpers (``_rt``), whose conventions are documented in :mod:`gradc.prims`;
* ``Piecewise`` without a final ``True`` branch gives NaN where no condition holds.

A sympy class with no numba implementation raises :class:`gradc.GradcError` naming it.
:meth:`KernelPrinter.template` caches the printed text of each body; the code generator
substitutes variable names for the placeholders ``_a0, _a1, ...``.
"""

from __future__ import annotations

import sympy as sp
from sympy.printing.pycode import PythonCodePrinter

from ..errors import GradcError, short

#: sympy function name -> the callable the generated code uses.
FUNCTIONS = {
    "exp": "_vm.exp_s", "log": "_vm.log_s", "tanh": "_vm.tanh_s",
    "sin": "np.sin", "cos": "np.cos", "tan": "np.tan",
    "asin": "np.arcsin", "acos": "np.arccos", "atan": "np.arctan", "atan2": "np.arctan2",
    "sinh": "np.sinh", "cosh": "np.cosh", "asinh": "np.arcsinh", "acosh": "np.arccosh",
    "atanh": "np.arctanh", "floor": "np.floor", "ceiling": "np.ceil",
    "erf": "math.erf", "erfc": "math.erfc", "gamma": "_rt.gamma", "loggamma": "_rt.lgamma",
    "polygamma": "_rt.polygamma", "beta": "_rt.beta", "erfinv": "_rt.erfinv",
    "sinc": "_rt.sinc",
    "expm1": "_vm.expm1_s",
    "log1p": "_vm.log1p_s",
    "sign": "_rt.sign", "Heaviside": "_rt.heaviside", "Abs": "abs",
    "Max": "_rt.maximum", "Min": "_rt.minimum",
    "Logistic": "_vm.sigmoid_s", "Softplus": "_rt.softplus",
}


class KernelPrinter(PythonCodePrinter):
    """Prints one elementwise body as a numba-compatible expression."""

    printmethod = "_gradc_code"

    def __init__(self, dtype="float64"):
        super().__init__({"fully_qualified_modules": False, "strict": False})
        self._templates: dict = {}
        self.dtype = dtype

    def number(self, text: str) -> str:
        """A number's source text in the printer's dtype: as it is for float64; wrapped in
        ``np.float32(...)`` for float32 bodies, so that the arithmetic stays float32 (numba
        types a Python literal as a float64 or an int64, which promotes a float32
        expression to float64)."""
        return text if self.dtype == "float64" else f"np.float32({text})"

    def template(self, body: sp.Expr) -> str:
        text = self._templates.get(body)
        if text is None:
            text = self.doprint(body)
            self._templates[body] = text
        return text

    # -- numbers --------------------------------------------------------------------------
    def _print_Float(self, expr):
        return self.number(repr(float(expr)))

    def _print_Integer(self, expr):
        return self.number(str(int(expr)) if abs(int(expr)) < 2**53 else repr(float(expr)))

    def _print_Rational(self, expr):
        return self.number(repr(float(expr)))

    def _print_Half(self, expr):
        return self.number("0.5")

    def _print_NumberSymbol(self, expr):
        return self.number(repr(float(expr)))

    _print_Pi = _print_Exp1 = _print_EulerGamma = _print_GoldenRatio = _print_NumberSymbol

    def _print_Infinity(self, expr):
        return self.number("np.inf")

    def _print_NegativeInfinity(self, expr):
        return self.number("-np.inf") if self.dtype != "float64" else "(-np.inf)"

    def _print_NaN(self, expr):
        return self.number("np.nan")

    def _print_BooleanTrue(self, expr):
        return "True"

    def _print_BooleanFalse(self, expr):
        return "False"

    # -- powers ---------------------------------------------------------------------------
    def _print_Pow(self, expr, rational=False):
        base, e = expr.args
        b = self.parenthesize(base, 1000)  # always parenthesise compound bases
        if e.is_Integer and 1 <= abs(int(e)) <= 4:
            prod = "*".join([b] * abs(int(e)))
            return f"({prod})" if e > 0 else f"({self.number('1.0')}/({prod}))"
        if e == sp.Rational(1, 2):
            return f"np.sqrt({self._print(base)})"
        if e == sp.Rational(-1, 2):
            return f"({self.number('1.0')}/np.sqrt({self._print(base)}))"
        if base.is_integer:  # an integer base (a loop index, 2**-i): float powers, as numpy
            b = f"float({self._print(base)})" if not base.is_Number else repr(float(base))
        return f"({b}**{self.parenthesize(e, 1000)})"

    def _print_Mod(self, expr):
        a, m = expr.args
        return f"({self.parenthesize(a, 1000)} % {self.parenthesize(m, 1000)})"

    def _print_Mul(self, expr):
        # print factors explicitly so every sub-term keeps its parentheses
        c, factors = expr.as_coeff_mul()
        parts = [self.parenthesize(f, 1000) for f in factors]
        if c == -1:
            return "(-" + "*".join(parts) + ")"
        if c != 1:
            parts.insert(0, self.parenthesize(c, 1000))
        return "(" + "*".join(parts) + ")"

    def _print_Add(self, expr):
        terms = list(expr.args)
        # positive terms first, then positive constants, then the subtracted terms
        terms.sort(key=lambda t: 2 if t.could_extract_minus_sign() else int(bool(t.is_Number)))
        out = self._print(terms[0])
        for t in terms[1:]:
            if t.could_extract_minus_sign():
                out += " - " + self.parenthesize(-t, 1000)
            else:
                out += " + " + self._print(t)
        return out

    def _print(self, expr, **kwargs):
        # a constant subexpression such as 1/sqrt(pi) prints as its float64 value
        if isinstance(expr, sp.Expr) and not expr.is_Atom and not expr.free_symbols:
            try:
                return self.number(repr(float(expr)))
            except TypeError:
                pass
        return super()._print(expr, **kwargs)

    def parenthesize(self, item, level, strict=False):
        text = self._print(item)
        if item.is_Atom and not (item.is_Number and item.is_negative):
            return text
        if isinstance(item, sp.Function) and not text.startswith("-"):
            return text
        if text.startswith("(") and _balanced_outer(text):
            return text
        return f"({text})"

    # -- functions ------------------------------------------------------------------------
    def _print_Function(self, expr):
        name = type(expr).__name__
        target = FUNCTIONS.get(name)
        if target is None:
            raise GradcError(
                f"sympy function {name} (in {short(expr)}) has no numba implementation in gradc"
            )
        args = ", ".join(self._print(a) for a in expr.args)
        return f"{target}({args})"

    def _print_Heaviside(self, expr):
        x = self._print(expr.args[0])
        h0 = expr.args[1] if len(expr.args) > 1 else sp.Rational(1, 2)
        return f"_rt.heaviside({x}, {self._print(h0)})"

    def _print_Max(self, expr):
        return _fold("_rt.maximum", [self._print(a) for a in expr.args])

    def _print_Min(self, expr):
        return _fold("_rt.minimum", [self._print(a) for a in expr.args])

    def _print_Piecewise(self, expr):
        out = "np.nan"
        for e, c in reversed(expr.args):
            if c == sp.true:
                out = self._print(e)
            else:
                out = f"({self._print(e)} if {self._print(c)} else {out})"
        return out

    def _print_Relational(self, expr):
        op = {"==": "==", "!=": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">="}[expr.rel_op]
        return f"({self._print(expr.lhs)} {op} {self._print(expr.rhs)})"

    def _print_And(self, expr):
        return "(" + " and ".join(self._print(a) for a in expr.args) + ")"

    def _print_Or(self, expr):
        return "(" + " or ".join(self._print(a) for a in expr.args) + ")"

    def _print_Not(self, expr):
        return f"(not {self._print(expr.args[0])})"

    def emptyPrinter(self, expr):
        raise GradcError(
            f"cannot generate code for sympy class {type(expr).__name__} in {short(expr)}"
        )

    def _print_not_supported(self, expr):
        raise GradcError(
            f"cannot generate code for sympy class {type(expr).__name__} in {short(expr)}"
        )


for _name in FUNCTIONS:
    if _name not in ("Heaviside", "Max", "Min"):
        setattr(KernelPrinter, f"_print_{_name}", KernelPrinter._print_Function)


def _fold(fn, args):
    out = args[0]
    for a in args[1:]:
        out = f"{fn}({out}, {a})"
    return out


def _balanced_outer(text):
    """True when the opening parenthesis at text[0] closes at the last character."""
    depth = 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0 and i != len(text) - 1:
                return False
    return depth == 0 and text.endswith(")")
