"""Small helpers that generated kernels call (imported there as ``_rt``).

Contract
--------
Every helper is a branch-free scalar function, compiled with ``numba.njit(inline="always")``
so it vectorises inside kernel loops, and also available as plain Python through
:data:`python` for the ``jit=False`` path (same results).  NaN propagates through all of
them.  Subgradient conventions are fixed here for the values and in :mod:`gradc.prims` for
the derivatives.
"""

from __future__ import annotations

import types

import numba
import numpy as np

_jit = numba.njit(inline="always", cache=True, error_model="numpy")


def sign(x):
    """sign(x) with sign(0) = 0 and sign(nan) = nan."""
    return 1.0 if x > 0.0 else (-1.0 if x < 0.0 else (0.0 if x == 0.0 else x))


def heaviside(x, h0):
    """1 for x > 0, 0 for x < 0, ``h0`` at 0, nan for nan."""
    return 1.0 if x > 0.0 else (0.0 if x < 0.0 else (h0 if x == 0.0 else x))


def maximum(a, b):
    """max(a, b), nan if either is nan (like ``np.maximum``)."""
    return a if a > b or a != a else b


def minimum(a, b):
    """min(a, b), nan if either is nan (like ``np.minimum``)."""
    return a if a < b or a != a else b


def vsum(buf, m):
    """Sum ``buf[:m]`` with eight interleaved accumulators (vectorises; deterministic)."""
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = 0.0
    k = 0
    while k + 8 <= m:
        s0 += buf[k]
        s1 += buf[k + 1]
        s2 += buf[k + 2]
        s3 += buf[k + 3]
        s4 += buf[k + 4]
        s5 += buf[k + 5]
        s6 += buf[k + 6]
        s7 += buf[k + 7]
        k += 8
    while k < m:
        s0 += buf[k]
        k += 1
    return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))


_NAMES = ("sign", "heaviside", "maximum", "minimum", "vsum")

#: The plain-Python versions, for kernels run with ``jit=False``.
python = types.SimpleNamespace(**{n: globals()[n] for n in _NAMES})

for _n in _NAMES:
    globals()[_n] = _jit(globals()[_n])
