"""The special functions likelihoods need (issue 13): polygamma (digamma), gamma,
loggamma, beta, erfinv, expm1 and log1p, with their derivatives, against scipy.special, the
sympy.diff oracle and finite differences; and a negative-binomial log likelihood."""

import re

import numpy as np
import pytest
import sympy as sp
from sympy.codegen.cfunctions import expm1, log1p

import gradc
from gradc.codegen import runtime as rt
from gradc.testing import check_against_sympy, check_grads

scipy_special = pytest.importorskip("scipy.special")
scipy_stats = pytest.importorskip("scipy.stats")

XS = np.concatenate([np.linspace(0.01, 30, 120), [1e-8, 1e-3, 0.5, 1.0, 2.0, 100.0, 1e5, 1e10],
                     -np.linspace(0.05, 20.95, 40)])


@pytest.mark.parametrize("n", range(6))
@pytest.mark.parametrize("impl", ["numba", "python"])
def test_polygamma_against_scipy(n, impl):
    f = rt.polygamma if impl == "numba" else rt.python.polygamma
    got = np.array([f(n, x) for x in XS])
    want = scipy_special.polygamma(n, XS)
    ok = np.isfinite(want)
    # relative to max(1, |value|): digamma has a root near -2.61 on the negative side
    err = np.abs(got[ok] - want[ok]) / np.maximum(1.0 if n == 0 else 0.0, np.abs(want[ok]))
    assert err.max() < 5e-14


def test_poles_follow_scipy():
    for n in range(4):
        for x in (0.0, -1.0, -3.0, np.inf, np.nan):
            got, want = rt.polygamma(n, x), float(scipy_special.polygamma(n, x))
            assert got == want or (np.isnan(got) and np.isnan(want)), (n, x, got, want)


def test_beta_against_scipy():
    a = np.linspace(0.1, 30, 40)
    for b in (0.3, 2.5, 17.0):
        got = np.array([rt.beta(x, b) for x in a])
        np.testing.assert_allclose(got, scipy_special.beta(a, b), rtol=1e-13)
    assert rt.beta(-0.5, 2.0) == pytest.approx(scipy_special.beta(-0.5, 2.0), rel=1e-14)


def test_erfinv_against_scipy():
    ys = np.concatenate([np.linspace(-0.999999, 0.999999, 801), 1 - np.logspace(-16, -1, 30),
                         -(1 - np.logspace(-16, -1, 30)), [0.0, 1e-300, 0.5, -0.5]])
    want = scipy_special.erfinv(ys)
    for f in (rt.erfinv, rt.python.erfinv):
        got = np.array([f(y) for y in ys])
        np.testing.assert_allclose(got, want, rtol=2e-15, atol=1e-300)
    assert [rt.erfinv(v) for v in (1.0, -1.0)] == [np.inf, -np.inf]
    assert all(np.isnan(rt.erfinv(v)) for v in (1.5, -2.0, np.nan))


w, u, x = sp.symbols("w u x")
MODELS = {
    "loggamma": (sp.loggamma(w * x + 3) + sp.polygamma(1, u * x + 2), [w, u]),
    "gamma": (sp.gamma(w + x) * u, [w, u]),
    "beta": (sp.log(sp.beta(w ** 2 + 1, u ** 2 + x ** 2 + 0.5)), [w, u]),
    "digamma": (sp.digamma(w * x + 4) * u ** 2, [w, u]),
    "expm1_log1p": (expm1(w * x) + log1p(u ** 2 * x ** 2), [w, u]),
    "erfinv": (sp.erfinv(sp.tanh(w * x)) * u, [w, u]),
}


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("jit", [False, True])
def test_derivatives_against_sympy_and_differences(name, jit):
    loss, wrt = MODELS[name]
    fn = gradc.compile(loss, wrt=wrt, data=[x], jit=jit)
    X = np.linspace(0.1, 1.5, 7)
    P = [0.7, -0.4]
    check_against_sympy(fn, P, X, rtol=1e-11)
    check_grads(fn, P, X)


def test_negative_binomial_log_likelihood_against_scipy():
    """NB2 regression: mean mu = exp(b0 + b1 t), dispersion alpha = exp(a); the log pmf
    written with loggamma, checked against scipy.stats.nbinom and finite differences."""
    b0, b1, a, t, yv = sp.symbols("b0 b1 a t y")
    mu, r = sp.exp(b0 + b1 * t), sp.exp(-a)  # r = 1 / alpha
    logpmf = (sp.loggamma(yv + r) - sp.loggamma(r) - sp.loggamma(yv + 1)
              + r * sp.log(r / (r + mu)) + yv * sp.log(mu / (r + mu)))
    fn = gradc.compile(-logpmf, wrt=[b0, b1, a], data=[t, yv], reduce="sum")
    rng = np.random.default_rng(3)
    T = rng.uniform(-1, 1, 200)
    P = np.array([0.5, 0.8, -0.3])
    m, rr = np.exp(P[0] + P[1] * T), np.exp(-P[2])
    Y = rng.negative_binomial(rr, rr / (rr + m)).astype(float)
    want = -scipy_stats.nbinom.logpmf(Y, rr, rr / (rr + m)).sum()
    assert fn.value(P, T, Y) == pytest.approx(want, rel=1e-12)
    check_grads(fn, P, T, Y)
    # the gradient vanishes at the maximum likelihood estimate
    res = gradc.Objective(fn, T, Y)
    from scipy.optimize import minimize
    sol = minimize(res.fun, P, jac=res.jac, method="BFGS")
    assert np.linalg.norm(fn.grad(sol.x, T, Y)) < 1e-4


@pytest.mark.parametrize("jit", [False, True])
def test_log_one_plus_exp_is_computed_as_softplus(jit):
    """log(1 + exp(u)) overflowed exp(u) for large u (value inf, gradient inf/inf = NaN);
    gradc computes it as Softplus(u): finite, equal to numpy's logaddexp, with the
    logistic as derivative."""
    fn = gradc.compile(sp.log(1 + sp.exp(w * x)) + sp.log(sp.exp(-u * x) + 1), wrt=[w, u],
                       data=[x], reduce=None, jit=jit)
    X = np.array([-1000.0, -3.0, 0.0, 0.5, 800.0])
    P = [2.0, 0.7]
    value, g = fn.value_and_grad(P, X)
    np.testing.assert_allclose(value, np.logaddexp(0, 2.0 * X) + np.logaddexp(0, -0.7 * X),
                               rtol=1e-15)
    sig = lambda z: np.exp(-np.logaddexp(0, -z))  # noqa: E731
    np.testing.assert_allclose(g[:, 0], X * sig(2.0 * X), rtol=1e-14)
    np.testing.assert_allclose(g[:, 1], -X * sig(-0.7 * X), rtol=1e-14, atol=1e-200)
    check_against_sympy(fn, P, X[1:4], rtol=1e-12)


@pytest.mark.parametrize("jit", [False, True])
def test_sinc_derivatives_near_and_at_zero(jit):
    """sympy's derivative of sinc, cos(x)/x - sin(x)/x**2, is 0/0 at 0 and loses all its
    digits near it; gradc's keeps them (against 50-digit mpmath), first and second."""
    import mpmath

    s = sp.Symbol("s")
    d1 = sp.lambdify(s, sp.diff(sp.sin(s) / s, s), "mpmath")
    d2 = sp.lambdify(s, sp.diff(sp.sin(s) / s, s, 2), "mpmath")
    X = np.array([0.0, 1e-9, 1e-4, 0.3, 0.4999, 0.5, 3.0, -0.2, -40.0])
    with mpmath.workdps(50):
        g1 = np.array([float(t * d1(mpmath.mpf(t))) if t else 0.0 for t in X])
        g2 = np.array([float(t ** 2 * d2(mpmath.mpf(t))) if t else 0.0 for t in X])
    fn = gradc.compile(sp.sinc(w * x), wrt=[w], data=[x], reduce=None, jit=jit)
    value, g = fn.value_and_grad([1.0], X)
    np.testing.assert_allclose(value, np.sinc(X / np.pi), rtol=1e-15)
    np.testing.assert_allclose(g[:, 0], g1, rtol=2e-15, atol=1e-300)
    np.testing.assert_allclose(fn.hessian([1.0], X)[:, 0, 0], g2, rtol=4e-15, atol=1e-300)


def test_gamma_family_at_poles_same_with_and_without_numba():
    """Python's math.gamma and math.lgamma raise at the poles where numba's return inf or
    NaN: the jit=False path once raised a ValueError there (not a GradcError)."""
    X = np.array([0.0, -0.0, -1.0, -1.5, 2.0, 200.0])
    b = sp.Symbol("b")
    for expr, wrt in ((sp.loggamma(w * x), [w]), (sp.gamma(w * x), [w]),
                      (sp.beta(w * x, b), [w, b])):
        got = [gradc.compile(expr, wrt=wrt, data=[x], reduce=None, jit=jit).value_and_grad(
            [1.0] * len(wrt), X) for jit in (False, True)]
        np.testing.assert_allclose(got[0][0], got[1][0], rtol=1e-14)
        np.testing.assert_allclose(got[0][1], got[1][1], rtol=1e-14)
    assert rt.gamma(0.0) == np.inf and np.isnan(rt.gamma(-1.0)) and rt.lgamma(-2.0) == np.inf


def test_polygamma_far_below_zero_is_nan_not_a_hang():
    for f in (rt.polygamma, rt.python.polygamma):
        assert np.isnan(f(1, -1e9)) and np.isnan(f(3, -2e6 - 0.5))
    assert np.isfinite(rt.polygamma(1, -1e5 - 0.5))


# --------------------------------------------------------------------------------------
# The vectorised log-gamma and digamma (vmath.lgamma_pos, vmath.digamma_pos and their run
# forms runtime.lgamma_v, runtime.digamma_v)

mpmath = pytest.importorskip("mpmath")


def _positive_points():
    rng = np.random.default_rng(2026)
    x = np.concatenate([
        10.0 ** rng.uniform(-310, 299, 600), rng.uniform(0, 12, 1500),
        1 + rng.uniform(-1e-3, 1e-3, 150), 2 + rng.uniform(-1e-3, 1e-3, 150),
        1.4616321449683622 + rng.uniform(-1e-6, 1e-6, 150),   # the root of digamma
        np.arange(1, 40.0), np.arange(1, 40) + 0.5,
        [0.5, 1.25, 1.5, 3.0, 10.0, np.nextafter(10.0, 0), np.nextafter(0.5, 0),
         np.nextafter(1.25, 0), 5e-324, 2.2250738585072014e-308, 9.9e299]])
    return x[(x > 0) & (x < 1e300)]


def _ulps(got, want):
    """|got - want| in ulps of the correctly rounded ``want`` (mpmath numbers)."""
    out = []
    for g, w in zip(got, want):
        ref = float(w)
        out.append(0.0 if g == ref else abs(mpmath.mpf(g) - w) / np.spacing(abs(ref)))
    return np.array(out, dtype=float)


@pytest.mark.parametrize("name", ["lgamma", "digamma"])
def test_vectorised_gamma_functions_within_a_few_ulp_of_mpmath(name):
    """Measured maxima: lgamma 2.4 ulp, digamma 3.7 ulp (near zeros of the functions too:
    the pieces keep the reduced argument exact and nothing cancels there)."""
    x = _positive_points()
    out = np.empty_like(x)
    (rt.lgamma_v if name == "lgamma" else rt.digamma_v)(x, 0, out, 0, x.size)
    ref = mpmath.loggamma if name == "lgamma" else mpmath.digamma
    with mpmath.workdps(40):
        want = [ref(mpmath.mpf(float(v))) for v in x]
    err = _ulps(out, want)
    assert err.max() <= (3.0 if name == "lgamma" else 4.0), x[np.argmax(err)]


@pytest.mark.parametrize("name", ["lgamma", "digamma"])
def test_vectorised_gamma_functions_outside_their_fast_domain(name):
    """x <= 0, inf, NaN and x >= 1e300 go through the scalar functions, inside a run
    at any offset, with the poles as C99 (lgamma: inf) and scipy (digamma) have them."""
    x = np.array([3.5, 0.0, -0.0, -1.0, -2.5, np.inf, -np.inf, np.nan, 1e305, 2.0, -1e-300,
                  0.7, 1e-310])
    pad = np.full(3, 7.0)
    src = np.concatenate([pad, x])
    out = np.full(x.size + 2, -99.0)
    (rt.lgamma_v if name == "lgamma" else rt.digamma_v)(src, 3, out, 2, x.size)
    assert (out[:2] == -99.0).all()
    if name == "lgamma":  # C99's (Python's math.lgamma, inf at the poles and at -inf;
        # scipy's gammaln gives -inf at -inf and inf for subnormal x)
        want = np.array([rt.python.lgamma(float(v)) for v in x])
    else:
        want = scipy_special.psi(x)
    got = out[2:]
    same_nan = np.isnan(got) == np.isnan(want)
    assert same_nan.all(), (x, got, want)
    ok = ~np.isnan(want)
    np.testing.assert_allclose(got[ok], want[ok], rtol=1e-14)
    # the scalar forms agree with the run forms, with and without numba
    scalar = rt.lgamma if name == "lgamma" else rt.digamma
    python = rt.python.lgamma if name == "lgamma" else rt.python.digamma
    for v, g in zip(x, got):
        # (Python's own math.lgamma loses a few digits below zero: lgamma(-2.5) is 9e-15
        # off, relative; numba's and gradc's agree with mpmath there)
        for f, rtol in ((scalar, 0.0), (python, 2e-14)):
            s = f(float(v))
            assert s == g or (np.isnan(s) and np.isnan(g)) or abs(s - g) <= rtol * abs(g), \
                (f, v, s, g)


def test_vectorised_gamma_loops_are_simd():
    import numba

    for f in (rt.lgamma_v, rt.digamma_v):
        # a fresh dispatcher of the same function: numba cannot show the code of one
        # loaded from its disk cache (another process may have compiled it first)
        g = numba.njit(error_model="numpy")(f.py_func)
        x = np.linspace(0.1, 20, 64)
        g(x, 0, np.empty(64), 0, 64)
        ir = g.inspect_llvm(g.signatures[0])
        assert re.search(r"<(2|4|8|16) x double>", ir), f


def _refit(fun, a, b, deg, nodes=96):
    """The monomial coefficients (in powers of t - mid) of the degree-``deg`` truncation
    of the Chebyshev interpolant of ``fun`` on [a, b] at ``nodes`` nodes, as vmath's
    comment describes their fit."""
    mp = mpmath.mp
    with mpmath.workdps(50):
        a, b = mpmath.mpf(a), mpmath.mpf(b)
        th = [mp.pi * (j + mpmath.mpf(1) / 2) / nodes for j in range(nodes)]
        vals = [fun((b - a) / 2 * mpmath.cos(t) + (a + b) / 2) for t in th]
        c = [2 * mpmath.fsum(v * mpmath.cos(k * t) for v, t in zip(vals, th)) / nodes
             for k in range(deg + 1)]
        c[0] /= 2
        T = [[mpmath.mpf(1)], [mpmath.mpf(0), mpmath.mpf(1)]]
        for k in range(2, deg + 1):
            p = [mpmath.mpf(0)] + [2 * v for v in T[k - 1]]
            for i, v in enumerate(T[k - 2]):
                p[i] -= v
            T.append(p)
        mono = [mpmath.mpf(0)] * (deg + 1)
        for k in range(deg + 1):
            for i, v in enumerate(T[k]):
                mono[i] += c[k] * v
        h = (b - a) / 2
        return [float(m / h ** i) for i, m in enumerate(mono)]


def test_gamma_polynomials_are_the_fits_the_comment_describes():
    from gradc.codegen import vmath

    def g(t):
        return mpmath.loggamma(2 + t) / t

    with mpmath.workdps(50):
        t0 = mpmath.findroot(mpmath.digamma, 1.46) - 1

    def d(t):
        return mpmath.digamma(1 + t) / (t - t0)

    assert float(t0) == vmath._DIGAMMA_T0_HI
    assert float(t0 - vmath._DIGAMMA_T0_HI) == vmath._DIGAMMA_T0_LO
    for fun, a, b, coefs in ((g, -0.75, 1.0, vmath._LGAMMA_G), (d, 0.0, 1.0, vmath._DIGAMMA_D)):
        refit = _refit(fun, a, b, len(coefs) - 1)
        np.testing.assert_allclose(coefs, refit, rtol=1e-13, atol=0)


@pytest.mark.parametrize("jit", [False, True])
def test_count_likelihood_kernels_call_the_vectorised_runs(jit):
    """loggamma(y + r) and its derivative digamma(y + r) are computed by the run forms in
    a chunked kernel, equal to the sympy oracle and differences, also with data where
    y + r <= 0 (the scalar pass: lgamma of a pole is inf)."""
    r = sp.Symbol("r")
    fn = gradc.compile(sp.loggamma(x + r ** 2) + sp.polygamma(0, x * r + 3), wrt=[r], data=[x],
                       reduce="sum", jit=jit)
    if jit:
        assert "_rt.lgamma_v(" in fn.source and "_rt.digamma_v(" in fn.source
    X = np.linspace(0.05, 25, 301)
    check_against_sympy(fn, [0.9], X, rtol=1e-12)
    check_grads(fn, [0.9], X)
    Xp = np.array([1.0, -0.81, 2.0])  # x + r**2 = 0 at the second example: a pole
    assert fn.value([0.9], Xp) == np.inf


# --------------------------------------------------------------------------------------
# Stable forms inside indexed expressions

_i, _k, _j = sp.symbols("i k j", integer=True)
_X = sp.IndexedBase("X", shape=(5,))
_Q = sp.IndexedBase("Q", shape=(3, 5))
_w = sp.IndexedBase("w", shape=(5,))


def _softmax_grads(Z, D, axes):
    """d/da and d/dw of sum over examples of logsumexp(a D + w) (the reference)."""
    p = np.exp(Z - Z.max(axis=axes, keepdims=True))
    p /= p.sum(axis=axes, keepdims=True)
    ga = float((p * D).sum())
    gw = p.sum(axis=tuple(range(p.ndim - 1))) if p.ndim == 2 else p.sum(axis=(0, 1))
    return ga, gw


@pytest.mark.parametrize("jit", [False, True])
def test_log_one_plus_exp_inside_a_sum_is_softplus(jit):
    """Inside a Sum body log(1 + exp(u)) is Softplus(u) too: finite at u = 1000."""
    a = sp.Symbol("a")
    f = sp.Sum(sp.log(1 + sp.exp(a * _X[_i] + _w[_i])), (_i, 0, 4))
    fn = gradc.compile(f, wrt=[a, _w], data=[_X], reduce="sum", jit=jit)
    rng = np.random.default_rng(11)
    P = [0.7, rng.normal(size=5)]
    for scale in (1.0, 2000.0):
        D = rng.normal(size=(6, 5)) * scale
        u = P[0] * D + P[1]
        v, (ga, gw) = fn.value_and_grad(P, D)
        s = scipy_special.expit(u)
        assert v == pytest.approx(np.logaddexp(0, u).sum(), rel=1e-13)
        assert ga == pytest.approx((s * D).sum(), rel=1e-12)
        np.testing.assert_allclose(gw, s.sum(axis=0), rtol=1e-12)
    check_grads(fn, P, rng.normal(size=(6, 5)))


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("rank", [1, 2])
def test_log_of_a_sum_of_exps_is_logsumexp(jit, rank):
    """log(Sum(exp(g), ...)) over integer ranges is computed as nn.logsumexp of the terms:
    equal to scipy's logsumexp, finite where exp(g) overflows, gradients the softmax."""
    a = sp.Symbol("a")
    if rank == 1:
        f, data, shape = sp.log(sp.Sum(sp.exp(a * _X[_k] + _w[_k]), (_k, 0, 4))), _X, (5,)
    else:
        f = sp.log(sp.Sum(sp.exp(a * _Q[_j, _k] + _w[_k]), (_k, 0, 4), (_j, 0, 2)))
        data, shape = _Q, (3, 5)
    fn = gradc.compile(f, wrt=[a, _w], data=[data], reduce="sum", jit=jit)
    rng = np.random.default_rng(12 + rank)
    P = [0.4, rng.normal(size=5)]
    axes = tuple(range(1, 1 + rank))
    for scale in (1.0, 3000.0):
        D = rng.normal(size=(7, *shape)) * scale
        Z = P[0] * D + (P[1] if rank == 1 else P[1][None, None, :])
        v, (ga, gw) = fn.value_and_grad(P, D)
        assert np.isfinite(v)
        assert v == pytest.approx(scipy_special.logsumexp(Z, axis=axes).sum(), rel=1e-12)
        want_a, want_w = _softmax_grads(Z, D, axes)
        assert ga == pytest.approx(want_a, rel=1e-10, abs=1e-9)
        np.testing.assert_allclose(gw, want_w, rtol=1e-10, atol=1e-12)
    check_grads(fn, P, rng.normal(size=(7, *shape)))
