"""Accuracy, special-value, pure-Python and vectorisation tests for gradc.codegen.vmath."""

import math
import os
import re
import sys

import numpy as np
import pytest

try:
    from gradc.codegen import vmath
except ImportError:  # running `pytest` without the repo root on sys.path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from gradc.codegen import vmath

import numba

NAMES = ["exp", "expm1", "log", "log1p", "tanh", "sigmoid"]

# Max error in ulp against a correctly rounded reference.  The contract is
# <= 2 ulp; these are tighter, a little above what was measured, so that an
# accuracy regression is caught.
ULP_BOUND = {"exp": 1.0, "expm1": 1.5, "log": 1.0, "log1p": 1.25,
             "tanh": 1.0, "sigmoid": 1.5}

# 80-bit long double (64-bit mantissa) gives a reference 11 bits better than
# float64; where long double is just float64 we compare against numpy float64
# and allow the reference's own error on top.
LD = np.longdouble
EXTENDED = np.finfo(LD).nmant >= 63


# One njit loop per function, the pattern generated kernels use.  Not
# cache=True: numba's cache only tracks the caller's own source file, so a
# cached loop would keep testing stale inlined vmath code after vmath.py
# changes.  (vmath's own functions are cache=True.)
@numba.njit
def _loop_exp(x, out):
    for i in range(x.shape[0]):
        out[i] = vmath.exp(x[i])


@numba.njit
def _loop_expm1(x, out):
    for i in range(x.shape[0]):
        out[i] = vmath.expm1(x[i])


@numba.njit
def _loop_log(x, out):
    for i in range(x.shape[0]):
        out[i] = vmath.log(x[i])


@numba.njit
def _loop_log1p(x, out):
    for i in range(x.shape[0]):
        out[i] = vmath.log1p(x[i])


@numba.njit
def _loop_tanh(x, out):
    for i in range(x.shape[0]):
        out[i] = vmath.tanh(x[i])


@numba.njit
def _loop_sigmoid(x, out):
    for i in range(x.shape[0]):
        out[i] = vmath.sigmoid(x[i])


LOOPS = {"exp": _loop_exp, "expm1": _loop_expm1, "log": _loop_log,
         "log1p": _loop_log1p, "tanh": _loop_tanh, "sigmoid": _loop_sigmoid}


def run(name, x):
    x = np.ascontiguousarray(x, dtype=np.float64)
    out = np.empty_like(x)
    LOOPS[name](x, out)
    return out


def _sigmoid_ref(x):
    with np.errstate(over="ignore"):
        return 1 / (1 + np.exp(-x))


REF = {"exp": np.exp, "expm1": np.expm1, "log": np.log, "log1p": np.log1p,
       "tanh": np.tanh, "sigmoid": _sigmoid_ref}


def ulp_error(y, x, name):
    """|y - f(x)| in units of the float64 ulp of the exact f(x)."""
    with np.errstate(all="ignore"):
        ref = REF[name](x.astype(LD) if EXTENDED else x)
        ref64 = ref.astype(np.float64)
    _, e = np.frexp(ref)
    ulp = np.ldexp(np.ones(ref.shape, ref.dtype), (e.astype(np.int64) - 53))
    ulp = np.maximum(ulp, np.ldexp(np.ones(1, ref.dtype), -1074))   # subnormal ulp
    with np.errstate(all="ignore"):
        err = (np.abs(y.astype(ref.dtype) - ref) / ulp).astype(np.float64)
    same = (y == ref64) | (np.isnan(y) & np.isnan(ref64))
    err[same] = 0.0           # covers inf == inf, and float64 ref overflow/underflow agreement
    err[np.isnan(err)] = np.inf
    return err


def loguniform(rng, lo, hi, n, signed=True):
    v = np.exp(rng.uniform(np.log(lo), np.log(hi), n))
    if signed:
        v *= rng.choice([-1.0, 1.0], n)
    return v


def sample(name, seed=12345):
    """1-1.5 million points per function: log-uniform magnitudes of both
    signs over the whole useful range, plus dense uniform samples of the
    regions where branches of the algorithm meet."""
    rng = np.random.default_rng(seed)
    M = 500_000
    u = rng.uniform
    if name == "exp":
        parts = [loguniform(rng, 1e-310, 750.0, M), u(-746.0, 710.0, M // 2),
                 u(-1.0, 1.0, M // 4), u(-745.2, -707.0, M // 8), u(700.0, 709.79, M // 8)]
    elif name == "expm1":
        parts = [loguniform(rng, 1e-310, 750.0, M), u(-2.0, 2.0, M // 2),
                 u(-0.36, 0.36, M // 4), u(-40.0, 710.0, M // 4)]
    elif name == "log":
        parts = [loguniform(rng, 4.9e-324, 1.7e308, M, signed=False),
                 u(0.5, 2.0, M // 2), u(1 - 1e-6, 1 + 1e-6, M // 4),
                 loguniform(rng, 4.9e-324, 2.2e-308, M // 4, signed=False)]
    elif name == "log1p":
        parts = [loguniform(rng, 1e-310, 1.7e308, M, signed=False),
                 -loguniform(rng, 1e-310, 1.0, M // 2, signed=False),
                 u(-1.0, 2.0, M // 2), u(-0.3, 0.42, M // 4)]
    elif name == "tanh":
        parts = [loguniform(rng, 1e-310, 40.0, M), u(-3.0, 3.0, M // 2),
                 u(0.5, 0.6, M // 4), -u(0.5, 0.6, M // 8), u(-21.0, 21.0, M // 8)]
    elif name == "sigmoid":
        parts = [loguniform(rng, 1e-310, 800.0, M), u(-40.0, 40.0, M // 2),
                 u(-750.0, -700.0, M // 8), u(-1.0, 1.0, M // 8), u(-60.0, 0.0, M // 4)]
    x = np.concatenate(parts)
    return x[np.isfinite(x)]


@pytest.mark.parametrize("name", NAMES)
def test_random_accuracy_njit(name):
    x = sample(name)
    assert x.size >= 1_000_000
    y = run(name, x)
    err = ulp_error(y, x, name)
    i = int(np.argmax(err))
    bound = ULP_BOUND[name] if EXTENDED else ULP_BOUND[name] + 1.0
    assert err[i] <= bound, f"{name}: {err[i]:.3f} ulp at x={x[i]!r}: got {y[i]!r}"


@pytest.mark.parametrize("name", NAMES)
def test_close_to_numpy_float64(name):
    """Against numpy's own float64 ufuncs: both are about 1 ulp from exact, so
    the two results are never more than 2 ulp apart (in practice 1).  numpy
    has no sigmoid; its stable two-sided float64 formula has up to ~2.5 ulp
    error of its own, hence the looser bound there."""
    x = sample(name, seed=7)[::4]
    y = run(name, x)
    with np.errstate(all="ignore"):
        if name == "sigmoid":
            e = np.exp(-np.abs(x))
            ref = np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
        else:
            ref = REF[name](x)
    fin = np.isfinite(ref) & (ref != 0)
    d = np.abs(y[fin] - ref[fin]) / np.spacing(np.abs(ref[fin]))
    assert d.max() <= (3.0 if name == "sigmoid" else 2.0)
    np.testing.assert_array_equal(y[~fin], ref[~fin])


INF, NAN = math.inf, math.nan
TINY = 5e-324
SPECIAL = {
    "exp": [(0.0, 1.0), (-0.0, 1.0), (INF, INF), (-INF, 0.0), (NAN, NAN),
            (710.0, INF), (709.7, math.exp(709.7)), (709.782712893384, math.exp(709.782712893384)),
            (709.7827128933841, INF), (1e308, INF), (-746.0, 0.0), (-745.2, 0.0),
            (-745.0, 5e-324), (-744.0, math.exp(-744.0)), (-708.3964185322641, math.exp(-708.3964185322641)),
            (-740.0, math.exp(-740.0)), (-1e308, 0.0), (TINY, 1.0), (1.0, math.e)],
    "expm1": [(0.0, 0.0), (-0.0, -0.0), (TINY, TINY), (-TINY, -TINY), (1e-300, 1e-300),
              (INF, INF), (-INF, -1.0), (NAN, NAN), (710.0, INF), (-800.0, -1.0),
              (709.782712893384, math.exp(709.782712893384)), (1.0, math.expm1(1.0)),
              (-40.0, -1.0), (1e-10, math.expm1(1e-10))],
    "log": [(0.0, -INF), (-0.0, -INF), (-1.0, NAN), (-TINY, NAN), (-INF, NAN), (INF, INF),
            (NAN, NAN), (1.0, 0.0), (TINY, -744.4400719213812), (2.2250738585072014e-308, -708.3964185322641),
            (1e-310, math.log(1e-310)), (1.7976931348623157e308, 709.782712893384),
            (2.0, math.log(2.0)), (0.5, -math.log(2.0)), (math.e, 1.0)],
    "log1p": [(0.0, 0.0), (-0.0, -0.0), (TINY, TINY), (-TINY, -TINY), (-1.0, -INF),
              (-1.5, NAN), (-INF, NAN), (INF, INF), (NAN, NAN), (1e-300, 1e-300),
              (1.7976931348623157e308, 709.782712893384), (1.0, math.log(2.0)),
              (-0.5, math.log(0.5)), (-1.0 + 2.0 ** -53, math.log1p(-1.0 + 2.0 ** -53))],
    "tanh": [(0.0, 0.0), (-0.0, -0.0), (TINY, TINY), (-TINY, -TINY), (1e-300, 1e-300),
             (INF, 1.0), (-INF, -1.0), (NAN, NAN), (20.0, 1.0), (-1e308, -1.0),
             (0.5, math.tanh(0.5)), (-0.55, math.tanh(-0.55)), (1e-8, math.tanh(1e-8))],
    "sigmoid": [(0.0, 0.5), (-0.0, 0.5), (INF, 1.0), (-INF, 0.0), (NAN, NAN),
                (40.0, 1.0), (800.0, 1.0), (-800.0, 0.0), (-745.0, 5e-324),
                (-720.0, math.exp(-720.0)), (1e-300, 0.5), (-1e308, 0.0), (1e308, 1.0)],
}


def _same(a, b):
    if math.isnan(b):
        return math.isnan(a)
    return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)


def _close(a, b):
    """Equal (with sign of zero) or, for finite non-zero b, within 1 ulp."""
    if _same(a, b):
        return True
    return math.isfinite(b) and b != 0.0 and abs(a - b) <= math.ulp(b)


@pytest.mark.parametrize("name", NAMES)
def test_special_values(name):
    f = getattr(vmath, name)
    cases = SPECIAL[name]
    xs = np.array([c[0] for c in cases])
    loop_out = run(name, xs)
    for (x, want), got_loop in zip(cases, loop_out):
        got_disp = f(x)                 # dispatcher called from Python
        got_py = f.py_func(x)           # pure interpreter, no numba
        for label, got in (("loop", float(got_loop)), ("dispatcher", got_disp), ("py_func", got_py)):
            assert _close(got, want), f"{name}({x!r}) via {label}: {got!r} != {want!r}"
            assert _same(got, got_disp), f"{name}({x!r}) via {label} differs from dispatcher"


@pytest.mark.parametrize("name", NAMES)
def test_python_path_bitwise_equal(name):
    """py_func (plain Python) gives bit-identical results to the njit loop."""
    x = sample(name, seed=99)
    x = x[np.random.default_rng(3).choice(x.size, 1500, replace=False)]
    y = run(name, x)
    f = getattr(vmath, name)
    for xi, yi in zip(x.tolist(), y.tolist()):
        assert _same(f.py_func(xi), yi), (name, xi)
    # non-float scalars are accepted on both paths
    for v in (1, np.float32(0.25), np.float64(-0.75)):
        assert _same(f.py_func(v), f(v))


def test_python_dispatcher_calls():
    assert vmath.tanh(0.5) == pytest.approx(math.tanh(0.5), rel=1e-15)
    assert isinstance(vmath.exp(1.0), float)
    assert vmath.exp(1) == math.e
    assert vmath.log.py_func(1.0) == 0.0
    assert vmath.sigmoid(0.0) == 0.5


def test_sigmoid_symmetry():
    x = loguniform(np.random.default_rng(5), 1e-300, 800.0, 200_000, signed=False)
    p, m = run("sigmoid", x), run("sigmoid", -x)
    # sigmoid(x) + sigmoid(-x) == 1 up to rounding
    assert np.max(np.abs(p + m - 1.0)) <= 2.0 ** -52


def test_monotone_near_branch_points():
    for name, c in [("exp", 0.0), ("tanh", 0.55), ("tanh", -0.55), ("log", 1.0),
                    ("tanh", 0.25 * math.log(2.0)), ("tanh", -0.75 * math.log(2.0)),
                    ("log", math.sqrt(0.5)), ("log1p", 0.0), ("expm1", 0.3466),
                    ("sigmoid", 0.0), ("exp", -708.39641853226408)]:
        x = c + np.arange(-3000, 3001) * max(abs(c), 1e-3) * 2.0 ** -45
        y = run(name, x)
        assert np.all(np.diff(y) >= 0), name


def _make_loop(f, **jit_options):
    @numba.njit(**jit_options)
    def loop(x, out):
        for i in range(x.shape[0]):
            out[i] = f(x[i])
    return loop


@pytest.mark.parametrize("name", NAMES)
def test_fastmath_caller(name):
    """Inlined into a fastmath=True kernel the functions must not be
    simplified away (the rounding shifter and two-sums are protected):
    same accuracy bound, same special values."""
    loop = _make_loop(getattr(vmath, name), fastmath=True)
    x = sample(name, seed=21)[::10]
    specials = np.array([c[0] for c in SPECIAL[name]])
    xx = np.concatenate([x, specials])
    out = np.empty_like(xx)
    loop(xx, out)
    err = ulp_error(out[: x.size], x, name)
    bound = ULP_BOUND[name] if EXTENDED else ULP_BOUND[name] + 1.0
    assert err.max() <= bound, f"{name}: {err.max():.3f} ulp at x={x[np.argmax(err)]!r}"
    strict = run(name, specials)
    for xi, a, b in zip(specials, out[x.size:], strict):
        assert _same(float(a), float(b)), f"{name}({xi!r}) fastmath {a!r} != {b!r}"


def test_float32_arrays():
    x32 = np.linspace(-3, 3, 101, dtype=np.float32)
    out32 = np.empty_like(x32)
    _make_loop(vmath.tanh)(x32, out32)
    np.testing.assert_array_equal(out32, run("tanh", x32).astype(np.float32))


# --------------------------------------------------------------------------
# vectorisation: the loops above must compile to SIMD code, with no libm calls
# --------------------------------------------------------------------------

def _host_has(feature):
    try:
        import llvmlite.binding as ll
        return ll.get_host_cpu_features().get(feature, False)
    except Exception:
        return False


@pytest.mark.parametrize("name", NAMES)
def test_loop_is_vectorised(name):
    loop = LOOPS[name]
    x = np.linspace(0.1, 2.0, 64)
    out = np.empty_like(x)
    loop(x, out)
    sig = loop.signatures[0]
    llvm = loop.inspect_llvm(sig)
    widths = {int(w) for w in re.findall(r"<(\d+) x double>", llvm)}
    assert widths and max(widths) >= 2, f"{name}: loop not vectorised"
    for fn in ("exp", "expm1", "log", "log1p", "tanh", "pow"):
        assert not re.search(rf"call [^\n]*@{fn}\(", llvm), f"{name}: calls libm {fn}"
    if _host_has("avx2") and os.environ.get("NUMBA_CPU_NAME") in (None, "", "host"):
        asm = loop.inspect_asm(sig)
        assert max(widths) >= 4
        assert re.search(r"%[yz]mm\d+", asm), f"{name}: no ymm/zmm registers used"


# --------------------------------------------------------------------------
# property test on arbitrary doubles
# --------------------------------------------------------------------------

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings, strategies as st  # noqa: E402

MATH = {"exp": math.exp, "expm1": math.expm1, "log": math.log, "log1p": math.log1p,
        "tanh": math.tanh}


def _math_ref(name, x):
    try:
        if name == "sigmoid":
            return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))
        return MATH[name](x)
    except OverflowError:
        return math.inf
    except ValueError:
        if name == "log" and x == 0:
            return -math.inf
        if name == "log1p" and x == -1:
            return -math.inf
        return math.nan


@settings(max_examples=300, deadline=None)
@given(x=st.floats(allow_nan=True, allow_infinity=True), name=st.sampled_from(NAMES))
def test_any_double(x, name):
    f = getattr(vmath, name)
    got = f(x)
    assert _same(f.py_func(x), got)
    want = _math_ref(name, x)
    if math.isnan(want) or math.isinf(want) or want == 0.0:
        assert _same(got, want) or (want == 0.0 and got == 0.0)
    else:
        assert abs(got - want) <= 3 * math.ulp(want), (name, x, got, want)


# --------------------------------------------------------------------------------------
# float32 versions (exp32, log32, tanh32, sigmoid32) and the type dispatch of the run and
# scalar forms: float32 arguments get float32 maths

F32_ULP_BOUND = {"exp": 1.25, "log": 1.0, "tanh": 1.5, "sigmoid": 2.5}
F32_REF = {"exp": np.exp, "log": np.log, "tanh": np.tanh,
           "sigmoid": lambda v: 1.0 / (1.0 + np.exp(-v))}


def _f32_points(name):
    rng = np.random.default_rng(32)
    x = np.concatenate([rng.uniform(-20, 20, 100_000),
                        10.0 ** rng.uniform(-44, 1.9, 50_000) * rng.choice([-1, 1], 50_000),
                        np.linspace(-1, 1, 10_001),
                        [0.0, -0.0, 0.55, -0.55, 9.0, -9.0, 88.7, -87.0, -103.9, 89.5,
                         1e-45, np.inf, -np.inf, np.nan]]).astype(np.float32)
    return np.abs(x) if name == "log" else x


@pytest.mark.parametrize("name", sorted(F32_ULP_BOUND))
def test_float32_runs_accuracy_and_special_values(name):
    """The run form on float32 arrays: within the bound (float32 ulps of the correctly
    rounded float32 result, from a float64 reference) wherever the result is a normal
    float32, and IEEE special values (0, inf, NaN, overflow, underflow) as numpy's."""
    x = _f32_points(name)
    out = np.empty_like(x)
    getattr(vmath, name + "_v")(x, 0, out, 0, x.size)
    assert out.dtype == np.float32
    with np.errstate(all="ignore"):
        ref = F32_REF[name](x.astype(np.float64))
        want32 = ref.astype(np.float32)
    normal = np.isfinite(want32) & (np.abs(want32) >= np.finfo(np.float32).tiny)
    ulps = np.abs(out[normal].astype(np.float64) - ref[normal]) / np.spacing(
        np.abs(want32[normal])).astype(np.float64)
    assert ulps.max() <= F32_ULP_BOUND[name], x[normal][np.argmax(ulps)]
    rest = ~normal
    with np.errstate(invalid="ignore"):  # inf - inf where both are inf
        same = (out[rest] == want32[rest]) | (np.isnan(out[rest]) & np.isnan(want32[rest])) | (
            np.abs(out[rest].astype(np.float64) - ref[rest]) <= 2 * 1.401298464324817e-45)
    assert same.all(), (x[rest][~same], out[rest][~same], want32[rest][~same])


@pytest.mark.parametrize("name", sorted(F32_ULP_BOUND))
def test_float32_runs_are_float32_simd_and_python_equal(name):
    f = getattr(vmath, name + "_v")
    g = numba.njit(error_model="numpy")(f.py_func)  # a fresh dispatcher: inspectable
    x = np.linspace(0.1, 5, 64, dtype=np.float32)
    out = np.empty_like(x)
    g(x, 0, out, 0, 64)
    ir = g.inspect_llvm(g.signatures[0])
    assert re.search(r"<(8|16) x float>", ir), name
    assert "x double>" not in ir, name  # float32 maths, not float64 in float32 arrays
    scalar = getattr(vmath, name + "32")
    for v in x[::7]:
        assert scalar.py_func(np.float32(v)) == scalar(np.float32(v)) == out[list(x).index(v)]
    assert isinstance(getattr(vmath, name + "_s")(np.float32(1.5)), float)


@numba.njit
def _loop_fma(a, b, c, out):
    for i in range(a.shape[0]):
        out[i] = vmath._fma(a[i], b[i], c[i])


def test_fma_interpreter_matches_compiled():
    """vmath._fma in the interpreter (exact rational arithmetic, one rounding) gives the same
    bits as llvm.fma in compiled code: random triples, exact cancellations (the residual of a
    product, a*b - fl(a*b)), signed zeros, infinities and NaN."""
    rng = np.random.default_rng(8)
    a = rng.standard_normal(3000) * np.exp2(rng.integers(-60, 60, 3000))
    b = rng.standard_normal(3000) * np.exp2(rng.integers(-60, 60, 3000))
    c = np.where(rng.random(3000) < 0.5, -(a * b), rng.standard_normal(3000))
    sp = [(0.0, 0.0, -0.0), (-0.0, 1.0, -0.0), (-0.0, 1.0, 0.0), (2.0, 3.0, -6.0),
          (INF, 1.0, 1.0), (INF, 0.0, 1.0), (NAN, 1.0, 1.0), (1.0, 1.0, -INF),
          (1e308, 10.0, -INF), (1e308, 10.0, -1e308), (-1e308, 10.0, 1.0),
          (1.0 + 2.0 ** -52, 1.0 - 2.0 ** -52, -1.0), (5e-324, 0.5, 0.0)]
    a = np.concatenate([a, [t[0] for t in sp]])
    b = np.concatenate([b, [t[1] for t in sp]])
    c = np.concatenate([c, [t[2] for t in sp]])
    out = np.empty_like(a)
    _loop_fma(a, b, c, out)
    for ai, bi, ci, oi in zip(a.tolist(), b.tolist(), c.tolist(), out.tolist()):
        assert _same(vmath._fma(ai, bi, ci), oi), (ai, bi, ci, oi)
    assert vmath._fma(1.0 + 2.0 ** -52, 1.0 - 2.0 ** -52, -1.0) == -(2.0 ** -104)
