"""Shared helpers of :mod:`gradc.planner`: error construction and argument checks.

Contract: every invalid argument detected by the planner is raised as
``gradc.errors.GradcError`` (a ``ValueError`` subclass) whose message names the offending
argument and value.  ``GradcError`` is imported lazily, at raise time, so the planner
imports on its own; if ``gradc.errors`` cannot be imported a plain ``ValueError`` is
raised instead.  Nothing here is public API.
"""

from __future__ import annotations

import math
import numbers


def _error(msg: str) -> ValueError:
    """Return (not raise) a ``GradcError`` carrying ``msg``, or a ``ValueError`` fallback.

    >>> err = _error("bad thing")
    >>> isinstance(err, ValueError), str(err)
    (True, 'bad thing')
    """
    try:
        from gradc.errors import GradcError
    except ImportError:  # pragma: no cover - only while gradc.errors is absent
        return ValueError(msg)
    return GradcError(msg)


def check_positive_int(value, what: str) -> int:
    """Return ``value`` as a Python ``int`` if it is an integer >= 1, else raise.

    ``bool`` is rejected; numpy integers are accepted.

    >>> check_positive_int(3, "n")
    3
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise _error(f"{what} = {value!r} is not a positive integer")
    value = int(value)
    if value < 1:
        raise _error(f"{what} = {value!r} is not a positive integer")
    return value


def check_nonneg_real(value, what: str, allow_inf: bool = False):
    """Return ``value`` (an ``int`` stays exact, other reals become ``float``) if >= 0.

    ``bool``, NaN, negative values and (unless ``allow_inf``) infinity are rejected.

    >>> check_nonneg_real(2, "cost"), check_nonneg_real(2.5, "cost")
    (2, 2.5)
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _error(f"{what} = {value!r} is not a non-negative number")
    if isinstance(value, numbers.Integral):
        value = int(value)
    else:
        value = float(value)
        if math.isnan(value) or (math.isinf(value) and not allow_inf):
            raise _error(f"{what} = {value!r} is not a finite non-negative number")
    if value < 0:
        raise _error(f"{what} = {value!r} is negative")
    return value
