"""Small helpers that generated kernels call (imported there as ``_rt``).

Contract
--------
Every helper is a branch-free scalar function, compiled once by ``numba.njit`` (cached on
disk) and called by the kernels as an ordinary function: LLVM inlines the small body into the
kernel's loop when the kernel is linked, where it vectorises, and the kernel's own typing
stays one call per use (inlining at numba's IR level, ``inline="always"``, re-typed the
helper at every call site and was most of a kernel's compile time).  Each helper is also
available as plain Python through
:data:`python` for the ``jit=False`` path (same results).  NaN propagates through all of
them.  Subgradient conventions are fixed here for the values and in :mod:`gradc.prims` for
the derivatives.
"""

from __future__ import annotations

from types import SimpleNamespace

import math

import numba
import numpy as np
from llvmlite import ir as llir
from numba import types
from numba.extending import intrinsic

from . import vmath

try:
    from ..errors import GradcError as _Error
except ImportError:  # inside the standalone module gradc.export writes
    _Error = ValueError


class DataIndexError(_Error, IndexError):
    """A data value used as an index is not an integer inside its array's range: raised
    by a kernel before it reads anything (a :class:`gradc.GradcError`)."""

_jit = numba.njit(cache=True, error_model="numpy")


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


def softplus(x):
    """log(1 + exp(x)) without overflow: max(x, 0) + log(1 + exp(-|x|))."""
    return maximum(x, 0.0) + np.log1p(np.exp(-abs(x)))


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


def vsum_at(buf, off, m):
    """Sum ``buf[off:off + m]`` (an ordinary call, compiled once for every kernel).

    Compiled with the one fast-math flag ``reassoc`` (and ``nsz``): LLVM vectorises the
    reduction into interleaved vector partial sums.  The order of the additions is fixed
    by the machine code, so a result does not change from call to call or with threads;
    it may differ in the last bits between CPUs with other vector widths.
    """
    v = buf[off:off + m]
    s = 0.0
    for k in range(v.shape[0]):
        s += v[k]
    return s


_NAMES = ("sign", "heaviside", "maximum", "minimum", "softplus", "vsum")

#: The plain-Python versions, for kernels run with ``jit=False``.
python = SimpleNamespace(**{n: globals()[n] for n in _NAMES})

for _n in _NAMES:
    globals()[_n] = _jit(globals()[_n])


@intrinsic
def _opaque(typingctx, k):
    if not isinstance(k, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        v = context.cast(builder, args[0], signature.args[0], types.intp)
        fnty = llir.FunctionType(v.type, [v.type])
        return builder.asm(fnty, "", "=r,0", [v], side_effect=False)

    return types.intp(k), codegen


def opaque(k):
    """``k``, hidden from LLVM's constant propagation.

    LLVM unrolls a loop whose trip count is a small constant that is not a multiple of the
    vector width (10 classes) and leaves it scalar; with the count known only at run time
    it vectorises, with a scalar remainder (``python benchmarks/bench_vmath.py`` measures
    both for rows of 4 to 64 values).
    """
    return _opaque(k)


python.opaque = lambda k: k
opaque = _jit(opaque)


# ---------------------------------------------------------------------------------------
# Special functions for likelihoods: the derivatives of gamma, loggamma and beta are
# polygammas.  loggamma and digamma (x > 0) are gradc's branch-free vmath functions (a few
# ulp; their run forms ``lgamma_v``/``digamma_v`` vectorise in chunked kernels); the
# higher polygammas use the recurrence up to x >= 10 (+ n), then the asymptotic series,
# accurate to a few ulp for x > 0 (tests/test_special.py, against scipy.special).  Poles
# follow scipy: digamma(0) = -inf and NaN at negative integers; polygamma(n, 0) = inf for
# odd n, -inf for even n, and the same at negative integers; polygamma(n >= 1, x) is NaN
# below x = -1e6 (digamma uses the reflection formula there).

#: B_2k / (2k)!, k = 1..9, for the polygamma series.
_PSIN = (1.0 / 12, -1.0 / 720, 1.0 / 30240, -1.0 / 1209600, 1.0 / 47900160,
         -691.0 / 1307674368000, 1.0 / 74724249600, -3617.0 / 10670622842880000,
         43867.0 / 5109094217170944000)


def gamma(x):
    """Gamma(x) with IEEE results at the poles and past the range (as numba's ``math.gamma``:
    inf at 0 and for large x, NaN at negative integers)."""
    return math.gamma(x)


def lgamma(x):
    """log |Gamma(x)|, inf at the poles (as numba's ``math.lgamma``); gradc's branch-free
    :func:`vmath.lgamma_pos` for 0 < x < 1e300, libm's elsewhere."""
    if x > 0.0 and x < 1e300:
        return vmath.lgamma_pos(x)
    return math.lgamma(x)


def _python_gamma(x):  # Python's math raises where numba's returns inf or NaN
    try:
        return math.gamma(x)
    except ValueError:
        return math.copysign(np.inf, x) if x == 0.0 else np.nan
    except OverflowError:
        return np.inf


def _python_lgamma(x):
    try:
        return math.lgamma(x)
    except (ValueError, OverflowError):
        return np.inf


def digamma(x):
    """The digamma function psi(x) = d/dx log Gamma(x): :func:`vmath.digamma_pos` for
    x > 0, the reflection formula for x < 0."""
    if not np.isfinite(x):
        return x if x > 0 or x != x else np.nan
    if x <= 0.0 and x == np.floor(x):
        return -np.copysign(np.inf, x) if x == 0.0 else np.nan  # psi(-0.0) = inf (scipy)
    if x < 0.0:
        return vmath.digamma_pos(1.0 - x) - np.pi / np.tan(np.pi * (x - np.round(x)))
    return vmath.digamma_pos(x)


def polygamma(n, x):
    """The polygamma function psi^(n)(x), the n-th derivative of digamma (n >= 0 an integer)."""
    n = int(n)
    if n == 0:
        return digamma(x)
    if x != x or n < 0 or x < -1e6:
        return np.nan  # (below -1e6 the recurrence up to x >= 10 would take |x| steps)
    odd = n % 2 == 1
    if x <= 0.0 and x == np.floor(x):
        return np.inf if odd else -np.inf
    if x == np.inf:
        return 0.0
    sign = 1.0 if odd else -1.0
    fact = 1.0
    for j in range(2, n + 1):
        fact *= j  # n!
    acc = 0.0
    top = 10.0 + n
    while x < top:  # psi^(n)(x) = psi^(n)(x + 1) + (-1)^(n+1) n! / x^(n+1)
        acc += sign * fact / x ** (n + 1)
        x += 1.0
    # (-1)^(n+1) [(n-1)!/x^n + n!/(2 x^(n+1)) + sum_k B_2k (2k+n-1)!/(2k)! / x^(2k+n)]
    total = fact / n / x ** n + fact / (2.0 * x ** (n + 1))
    c = fact * (n + 1)  # (n + 2k - 1)! at k = 1
    xp = x ** (n + 2)
    for k in range(len(_PSIN)):
        total += _PSIN[k] * c / xp
        c *= (n + 2 * k + 2) * (n + 2 * k + 3)
        xp *= x * x
    return acc + sign * total


def beta(a, b):
    """The beta function Gamma(a) Gamma(b) / Gamma(a + b) (through log-gamma for a, b > 0)."""
    if a > 0.0 and b > 0.0:
        return np.exp(lgamma(a) + lgamma(b) - lgamma(a + b))
    return gamma(a) * gamma(b) / gamma(a + b)


def erfinv(y):
    """The inverse error function: a first guess by Giles' single-precision formula
    ("Approximating the erfinv function", 2010), then Halley steps on erf, or for
    |y| > 0.5 Newton steps on log erfc (1 - |y| is exact there; erf would lose the
    digits, and the logarithm keeps the tail well scaled)."""
    if not (-1.0 <= y <= 1.0):
        return np.nan
    if y == 1.0 or y == -1.0:
        return y * np.inf
    w = -np.log((1.0 - y) * (1.0 + y))
    if w < 5.0:
        w -= 2.5
        p = 2.81022636e-08
        for c in (3.43273939e-07, -3.5233877e-06, -4.39150654e-06, 0.00021858087,
                  -0.00125372503, -0.00417768164, 0.246640727, 1.50140941):
            p = c + p * w
    else:
        w = np.sqrt(w) - 3.0
        p = -0.000200214257
        for c in (0.000100950558, 0.00134934322, -0.00367342844, 0.00573950773,
                  -0.0076224613, 0.00943887047, 1.00167406, 2.83297682):
            p = c + p * w
    x = abs(p * y)
    a = abs(y)
    if a <= 0.5:
        for _ in range(3):  # Halley on erf(x) = a
            u = (math.erf(x) - a) / (1.1283791670955126 * np.exp(-x * x))
            x -= u / (1.0 + x * u)
    else:
        t = np.log(1.0 - a)  # (exact: 1 - a for a > 0.5)
        for _ in range(4):  # Newton on log erfc(x) = log(1 - a): well scaled in the tail
            e = math.erfc(x)
            x += (np.log(e) - t) * e / (1.1283791670955126 * np.exp(-x * x))
    return x if y >= 0.0 else -x


def sinc(x):
    """sin(x) / x (sympy's unnormalised sinc), 1 at 0."""
    return np.sin(x) / x if x != 0.0 else 1.0


# (lgamma_v and digamma_v are two functions on purpose: numba's disk cache keys a function
# by its qualified name and line, so the runs of one closure factory would overwrite each
# other's entries and be compiled again in every process; tried, a miss every time)
def lgamma_v(x, xo, out, oo, m):
    """``out[oo:oo+m] = lgamma(x[xo:xo+m])``: one vectorised loop of the branch-free
    function, then, only if some x is outside (0, 1e300), a scalar pass over those."""
    a = x[xo:xo + m]
    b = out[oo:oo + m]
    bad = 0
    for j in range(a.shape[0]):
        v = a[j]
        b[j] = vmath.lgamma_pos(v)
        bad += vmath._where((v > 0.0) & (v < 1e300), 0, 1)
    if bad:
        for j in range(a.shape[0]):
            v = a[j]
            if not (v > 0.0 and v < 1e300):
                b[j] = math.lgamma(v)


def digamma_v(x, xo, out, oo, m):
    """``out[oo:oo+m] = digamma(x[xo:xo+m])``, as :func:`lgamma_v` (x outside (0, inf)
    in a scalar pass)."""
    a = x[xo:xo + m]
    b = out[oo:oo + m]
    bad = 0
    for j in range(a.shape[0]):
        v = a[j]
        b[j] = vmath.digamma_pos(v)
        bad += vmath._where((v > 0.0) & (v < np.inf), 0, 1)
    if bad:
        for j in range(a.shape[0]):
            v = a[j]
            if not (v > 0.0 and v < np.inf):
                b[j] = digamma(v)


def _python_run(f):
    def run(x, xo, out, oo, m):  # out[oo:oo+m] = f(x[xo:xo+m]), one element at a time
        for j in range(m):
            out[oo + j] = f(float(x[xo + j]))
    return run


for _n in ("digamma", "polygamma", "beta", "erfinv", "sinc"):
    setattr(python, _n, globals()[_n])
python.gamma, python.lgamma = _python_gamma, _python_lgamma
python.lgamma_s, python.digamma_s = _python_lgamma, digamma
python.lgamma_v, python.digamma_v = _python_run(_python_lgamma), _python_run(digamma)
_ool = numba.njit(cache=True, error_model="numpy", nogil=True)
gamma = _jit(gamma)
lgamma = _jit(lgamma)
digamma = _jit(digamma)
lgamma_v = _ool(lgamma_v)
digamma_v = _ool(digamma_v)
lgamma_s, digamma_s = lgamma, digamma
polygamma = _jit(polygamma)
beta = _jit(beta)
erfinv = _jit(erfinv)
sinc = _jit(sinc)


# ---------------------------------------------------------------------------------------
# Allocation.  Kernels allocate through these instead of ``np.empty``/``np.zeros``: numba
# compiles its numpy allocation overloads afresh in every process (about 0.6 s of typing
# for a kernel with a few dozen arrays of ranks 1 to 3), while these are compiled once per
# machine and rank and loaded from numba's cache.


def empty(shape):
    """``np.empty(shape)`` of float64; ``shape`` an int or a tuple of ints."""
    return np.empty(shape)


def zeros(shape):
    """``np.zeros(shape)`` of float64; ``shape`` an int or a tuple of ints."""
    return np.zeros(shape)


python.empty = np.empty
python.zeros = np.zeros
empty = _jit(empty)
zeros = _jit(zeros)
# float64 whatever the kernels' dtype: the per-chunk partial sums of the batch sums
empty64, zeros64 = empty, zeros
python.empty64, python.zeros64 = np.empty, np.zeros


# ---------------------------------------------------------------------------------------
# Array helpers for matrix kernels: per-example reductions over rows of (n, L) arrays.


def colsum(a):
    """Column sums of a 2-D array (the sum over the batch), pairwise-free but in order."""
    n, m = a.shape
    acc = np.zeros(m)  # float64 whatever a's dtype: a float32 batch keeps its digits
    for i in range(n):
        for j in range(m):
            acc[j] += a[i, j]
    return acc.astype(a.dtype)


def chunk_sums(part, nchunks, width):
    """The sums over chunks of per-chunk partial sums stored chunk after chunk in the flat
    ``part`` (``width`` per chunk), added in chunk order (in float64)."""
    out = np.zeros(width)
    for c in range(nchunks):
        for q in range(width):
            out[q] += part[c * width + q]
    return out


def rowsum(a):
    """Row sums of a 2-D array (per-example sums)."""
    n, m = a.shape
    out = np.empty(n, a.dtype)
    for i in range(n):
        s = 0.0
        for j in range(m):
            s += a[i, j]
        out[i] = s
    return out


def _lse_row(a, i, buf):
    m = a.shape[1]
    top = a[i, 0]
    for j in range(1, m):  # a plain max (vectorises); a NaN after the first is skipped
        x = a[i, j]
        top = x if x > top else top
    if not abs(top) < np.inf:  # inf or nan first: the NaN-propagating max decides
        for j in range(m):
            top = maximum(top, a[i, j])
        return top
    for j in range(m):  # the exponentials in one vectorised pass, then their sum
        buf[j] = vmath.exp(a[i, j] - top)
    # (a skipped NaN makes the sum, and so the result, NaN)
    return top + vmath.log(vsum(buf, m))  # the sum is >= 1


def rowlse(a):
    """Per-row log-sum-exp, shifted by the row maximum (no overflow).

    Rows of up to 16 values are too short to vectorise along: their shifted values go to
    one flat buffer whose exponentials are one vectorised pass, and the logarithms of the
    row sums another; longer rows are done one at a time."""
    n, m = a.shape
    out = np.empty(n, a.dtype)
    buf = np.empty(m)
    if m > 16:
        for i in range(n):
            out[i] = _lse_row(a, i, buf)
        return out
    top = np.empty(n)
    flat = np.empty(n * m)
    for i in range(n):
        t = a[i, 0]
        for j in range(1, m):  # a plain max; a NaN after the first is skipped
            x = a[i, j]
            t = x if x > t else t
        top[i] = t
        for j in range(m):
            flat[i * m + j] = a[i, j] - t
    for k in range(n * m):
        flat[k] = vmath.exp(flat[k])
    for i in range(n):
        s = 0.0
        for j in range(m):
            s += flat[i * m + j]
        out[i] = s
    for i in range(n):
        out[i] = top[i] + vmath.log(out[i])
    for i in range(n):  # inf or nan first in a row: the NaN-propagating path decides
        if not abs(top[i]) < np.inf:
            out[i] = _lse_row(a, i, buf)
    return out


def lse_all(a):
    """Log-sum-exp of all elements of a 2-D array."""
    flat = np.ascontiguousarray(a).reshape(1, -1)
    return _lse_row(flat, 0, np.empty(flat.shape[1]))


def rowdot(a, b):
    """Per-row dot products of two (n, L) arrays."""
    n, m = a.shape
    out = np.empty(n, a.dtype)
    for i in range(n):
        s = 0.0
        for j in range(m):
            s += a[i, j] * b[i, j]
        out[i] = s
    return out


def bmm(a, b, ab, bb, r, k, c, n):
    """Per-example matrix products: row ``i`` of the ``(n, r * c)`` result is example
    ``i``'s ``A @ B``, flattened, with ``A`` the ``r x k`` row ``a[i]`` of a batch
    (``ab``) or the one matrix ``a``, and ``B`` likewise (``bb``).  Small products run as
    loops, large ones as one BLAS product per example."""
    out = np.empty((n, r * c), a.dtype)
    A0 = np.ascontiguousarray(a).reshape((-1, r * k))
    B0 = np.ascontiguousarray(b).reshape((-1, k * c))
    blas = r * k * c >= 4096
    for i in range(n):
        A = A0[i if ab else 0]
        B = B0[i if bb else 0]
        o = out[i]
        if blas:
            o[:] = np.dot(A.reshape((r, k)), B.reshape((k, c))).reshape(r * c)
        else:
            for p in range(r):
                for q in range(c):
                    s = 0.0
                    for t in range(k):
                        s += A[p * k + t] * B[t * c + q]
                    o[p * c + q] = s
    return out


def bmm_sum(a, b, r, k, c, n):
    """The sum over a batch of per-example products ``A_i @ B_i`` (rows of ``(n, r * k)``
    and ``(n, k * c)`` arrays), as an ``r x c`` matrix: one BLAS product of the examples
    laid side by side."""
    A = np.ascontiguousarray(a).reshape((n, r, k))
    B = np.ascontiguousarray(b).reshape((n * k, c))
    wide = np.empty((r, n * k), a.dtype)
    for p in range(r):
        for i in range(n):
            for t in range(k):
                wide[p, i * k + t] = A[i, p, t]
    return np.dot(wide, B)


def btranspose(a, r, c, n):
    """Per-example transposes: ``(n, r * c)`` rows of ``r x c`` matrices to ``(n, c * r)``."""
    out = np.empty((n, c * r), a.dtype)
    for i in range(n):
        for p in range(r):
            for q in range(c):
                out[i, q * r + p] = a[i, p * c + q]
    return out


def contract(out, a, b, ta, tb, m, k, n2):
    """``out`` (any shape, C-contiguous, m * n2 elements) = op(A) @ op(B) as an m x n2
    matrix, with A the contiguous array ``a`` seen as m x k (k x m, transposed, when
    ``ta``) and B the array ``b`` seen as k x n2 (n2 x k when ``tb``): one BLAS product
    for a loop nest that is a contraction (:mod:`gradc.prims.loop`).  Compiled once per
    machine (cached), so the kernels that call it compile none of numpy's matrix code."""
    o = out.reshape((m, n2))
    A = np.ascontiguousarray(a).reshape((k, m) if ta else (m, k))
    B = np.ascontiguousarray(b).reshape((n2, k) if tb else (k, n2))
    if m >= 8 * n2 and n2 <= 64:
        # a tall, narrow result: OpenBLAS computes its transpose (a short, wide product)
        # faster, and the copy back is cheap next to it (benchmarks/bench_gemm.py --tall)
        t = np.empty((n2, m), out.dtype)
        # (one np.dot per layout: a conditional expression would give numba an array of
        # unknown layout, and its slow non-BLAS product)
        if tb and ta:
            np.dot(B, A, t)
        elif tb:
            np.dot(B, A.T, t)
        elif ta:
            np.dot(B.T, A, t)
        else:
            np.dot(B.T, A.T, t)
        for i in range(m):
            for j in range(n2):
                o[i, j] = t[j, i]
    elif ta and tb:
        np.dot(A.T, B.T, o)
    elif ta:
        np.dot(A.T, B, o)
    elif tb:
        np.dot(A, B.T, o)
    else:
        np.dot(A, B, o)
    return out


def _np_contract(out, a, b, ta, tb, m, k, n2):
    A = np.reshape(a, (k, m)).T if ta else np.reshape(a, (m, k))
    B = np.reshape(b, (n2, k)).T if tb else np.reshape(b, (k, n2))
    out[...] = np.dot(A, B).reshape(out.shape)
    return out


def _label(value, m):
    """An integer label in 0..m-1, or an error (kernels called directly skip gradc's checks)."""
    k = int(value)
    if k < 0 or k >= m or k != value:
        raise ValueError("label out of range or not an integer")
    return k


def label_stats(idx):
    """(number of non-integer or non-finite entries, min, max) of a label array, in one
    pass (the argument check of ``CompiledFunction`` calls)."""
    bad = 0
    lo, hi = np.inf, -np.inf
    for v in idx.ravel():
        x = float(v)
        if not (abs(x) < np.inf and x == np.floor(x)):
            bad += 1
        else:
            lo = min(lo, x)
            hi = max(hi, x)
    return bad, lo, hi


def valid_index(v, lo, hi):
    """True when ``v`` is an integer in ``lo..hi`` (NaN and inf are not)."""
    return v >= lo and v <= hi and v == np.floor(v)


def first_bad_index(keys, lo, hi):
    """The position of the first entry of ``keys`` that is not an integer in ``lo..hi``,
    or -1: the check a kernel makes before a nest that gathers by these data values."""
    for i in range(keys.shape[0]):
        if not valid_index(keys[i], lo, hi):
            return i
    return -1


def index_text(v):
    """A bad index value as text, in numba code too (which cannot print a float)."""
    if v != v:
        return "nan"
    if abs(v) == np.inf:
        return "inf" if v > 0 else "-inf"
    if abs(v) >= 1e18:
        return "a huge value"
    k = int(np.floor(v))
    if k == v:
        return str(k)
    return "a non-integer between " + str(k) + " and " + str(k + 1)


def pick(z, idx):
    """z[i, idx[i]] for every row i."""
    n, m = z.shape
    out = np.empty(n, z.dtype)
    for i in range(n):
        out[i] = z[i, _label(idx[i], m)]
    return out


def pick_fixed(z, idx):
    """z.flat[idx[i]] for a batch-invariant vector z."""
    flat = np.ascontiguousarray(z).reshape(-1)
    n = idx.shape[0]
    out = np.empty(n, z.dtype)
    for i in range(n):
        out[i] = flat[_label(idx[i], flat.shape[0])]
    return out


def onehot(idx, m):
    """Rows of length m with a 1 at idx[i]."""
    n = idx.shape[0]
    out = np.zeros((n, m), idx.dtype)  # data labels come in the kernels' dtype
    for i in range(n):
        out[i, _label(idx[i], m)] = 1.0
    return out


def _np_rowlse(a):
    top = np.max(a, axis=1)
    finite = np.isfinite(top)
    shift = np.where(finite, top, 0.0)
    with np.errstate(all="ignore"):
        out = shift + np.log(np.sum(np.exp(a - shift[:, None]), axis=1))
    return np.where(finite, out, top)


# The jit=False path uses numpy for the array helpers (same values, up to the order of
# floating-point sums).
python.colsum = lambda a: np.sum(a, axis=0)
python.chunk_sums = lambda part, nchunks, width: np.sum(
    np.reshape(part[:nchunks * width], (nchunks, width)), axis=0)
python.rowsum = lambda a: np.sum(a, axis=1)
python.rowlse = _np_rowlse
python.lse_all = lambda a: float(_np_rowlse(np.reshape(a, (1, -1)))[0])
python.rowdot = lambda a, b: np.sum(a * b, axis=1)
python.contract = _np_contract


def _np_bmm(a, b, ab, bb, r, k, c, n):
    A = np.reshape(a, (n, r, k)) if ab else np.reshape(a, (r, k))
    B = np.reshape(b, (n, k, c)) if bb else np.reshape(b, (k, c))
    return np.reshape(np.matmul(A, B), (n, r * c))


python.bmm = _np_bmm
python.bmm_sum = lambda a, b, r, k, c, n: np.einsum(
    "irk,ikc->rc", np.reshape(a, (n, r, k)), np.reshape(b, (n, k, c)))
python.btranspose = lambda a, r, c, n: np.reshape(
    np.transpose(np.reshape(a, (n, r, c)), (0, 2, 1)), (n, c * r))
def _np_labels(idx, m):
    k = idx.astype(np.int64)
    if np.any((k < 0) | (k >= m) | (k != idx)):
        raise ValueError("label out of range or not an integer")
    return k


python.pick = lambda z, idx: z[np.arange(z.shape[0]), _np_labels(idx, z.shape[1])]
python.pick_fixed = lambda z, idx: np.reshape(z, -1)[_np_labels(idx, np.size(z))]
python.onehot = lambda idx, m: np.eye(m, dtype=idx.dtype)[_np_labels(idx, m)]

_lse_row = _jit(_lse_row)
_label = _jit(_label)
python.label_stats = label_stats
python.valid_index = valid_index
python.first_bad_index = first_bad_index
python.index_text = index_text
python.DataIndexError = DataIndexError
valid_index = _jit(valid_index)
python.vsum_at = vsum_at
vsum_at = numba.njit(cache=True, error_model="numpy", fastmath={"reassoc", "nsz"})(vsum_at)
for _n in ("chunk_sums", "colsum", "rowsum", "rowlse", "lse_all", "rowdot", "pick", "pick_fixed", "onehot",
           "label_stats", "contract", "first_bad_index", "index_text", "bmm", "bmm_sum",
           "btranspose"):
    globals()[_n] = numba.njit(cache=True, error_model="numpy")(globals()[_n])
