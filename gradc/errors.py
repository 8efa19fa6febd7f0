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
    """Return ``str(expr)`` cut to ``limit`` characters, for error messages."""
    try:
        text = str(expr)
    except RecursionError:
        return f"<{type(expr).__name__} too deep to print>"
    return text if len(text) <= limit else text[: limit - 3] + "..."
