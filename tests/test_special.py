"""The special functions likelihoods need (issue 13): polygamma (digamma), gamma,
loggamma, beta, erfinv, expm1 and log1p, with their derivatives, against scipy.special, the
sympy.diff oracle and finite differences; and a negative-binomial log likelihood."""

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
