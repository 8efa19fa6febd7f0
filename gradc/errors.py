"""Errors raised by gradc.

Contract: every problem gradc can detect in user input is raised as :class:`GradcError`,
a ``ValueError`` subclass, whose message names the offending symbol, argument, shape or
sympy class.  Numba tracebacks, segfaults and silent wrong answers are bugs.
"""

from __future__ import annotations


class GradcError(ValueError):
    """Raised for unsupported expressions and invalid arguments.

    Examples
    --------
    >>> import gradc, sympy as sp
    >>> x, y = sp.symbols("x y")
    >>> try:
    ...     gradc.compile(x * y, wrt=[x])
    ... except gradc.GradcError as e:
    ...     print(e)
    free symbol y is in neither wrt, data nor consts
    """


def short(expr, limit: int = 80) -> str:
    """Return ``str(expr)`` cut to ``limit`` characters, for error messages and titles.

    A large expression is not printed whole (sympy's printer sorts every sum, which takes
    seconds at thousands of terms, and recurses once per level): a sum or product of many
    operands prints its first few and a count."""
    if _large(expr):
        args = getattr(expr, "args", ())
        head = " ".join((str(a) if not _large(a, 60) else f"<{type(a).__name__}>") + ","
                        for a in args[:2])
        text = f"{type(expr).__name__}({head} ... {len(args)} operands)"
    else:
        try:
            text = str(expr)
        except RecursionError:
            return f"<{type(expr).__name__} too deep to print>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _large(expr, budget: int = 400) -> bool:
    """True when ``expr`` has more than ``budget`` nodes (counted without recursion, and
    stopping at the budget)."""
    stack, count = [expr], 0
    while stack:
        node = stack.pop()
        count += 1
        if count > budget:
            return True
        stack.extend(getattr(node, "args", ()))
    return False
