"""Large expressions: sums of thousands to 100,000 terms and chains 10,000 deep compile
without recursion anywhere and give the sympy oracle's answer (which evaluates them node
by node past lambdify's limits); a kernel too long for numba is refused before numba."""

import numpy as np
import pytest
import sympy as sp

import gradc
from gradc.testing import check_against_sympy, check_grads

x = sp.Symbol("x")


def test_5000_term_sum_of_like_terms(rng):
    N = 5000
    w = sp.symbols(f"w0:{N}")
    c = rng.integers(1, 9, N)
    expr = sp.Add(*[int(c[i]) * sp.exp(w[i] * x) for i in range(N)])
    fn = gradc.compile(expr, wrt=w, data=[x], jit=False)
    assert "_C" in fn.source  # the coefficients are a table, not 5,000 lines
    p, X = rng.uniform(-1, 1, N), rng.uniform(-1, 1, 5)
    check_against_sympy(fn, p, X, rtol=1e-10)


def test_1000_distinct_terms(rng):
    """Nothing to re-roll (every power differs): written out, in bounded segments."""
    a, b = sp.symbols("a b")
    expr = sp.Add(*[(a if i % 2 else b) ** (i % 40 + 1) * x ** (i % 37) / (i + 1)
                    for i in range(1000)])
    fn = gradc.compile(expr, wrt=[a, b], data=[x], jit=False)
    check_against_sympy(fn, [0.7, 0.9], rng.uniform(-1, 1, 5), rtol=1e-10)
    check_grads(fn, [0.7, 0.9], rng.uniform(-1, 1, 5))


def test_100000_term_sum(rng):
    N = 100_000
    w = sp.symbols(f"w0:{N}")
    c = rng.integers(1, 9, N)
    expr = sp.Add(*[sp.Mul(sp.Integer(int(c[i])), w[i], x) for i in range(N)], w[0] * x ** 2)
    fn = gradc.compile(expr, wrt=w, data=[x], jit=False)
    assert fn.source.count("\n") < 2000
    p, X = rng.normal(size=N), rng.normal(size=7)
    check_against_sympy(fn, p, X, rtol=1e-10)


def test_10000_deep_chain():
    a = sp.Symbol("a")
    f = a
    for _ in range(10_000):
        f = sp.sin(f) + a
    fn = gradc.compile(f, wrt=[a], jit=False)
    check_against_sympy(fn, [0.3], rtol=1e-10)
    value, grad = fn.value_and_grad([0.3])
    h = 1e-6
    fd = (fn.value([0.3 + h]) - fn.value([0.3 - h])) / (2 * h)
    assert grad[0] == pytest.approx(fd, rel=1e-6)


def test_10000_variable_chain_jit(rng):
    N = 10_000
    q = sp.symbols(f"x0:{N}")
    expr = sp.Add(*[100 * (q[i + 1] - q[i] ** 2) ** 2 + (1 - q[i]) ** 2 for i in range(N - 1)])
    fn = gradc.compile(expr, wrt=q)
    p = rng.uniform(0.5, 1.5, N)
    value, grad = fn.value_and_grad(p)
    d = p[1:] - p[:-1] ** 2
    want = np.zeros(N)
    want[1:] += 200 * d
    want[:-1] += -400 * d * p[:-1] - 2 * (1 - p[:-1])
    assert value == pytest.approx(np.sum(100 * d**2 + (1 - p[:-1]) ** 2), rel=1e-13)
    np.testing.assert_allclose(grad, want, rtol=1e-12, atol=1e-12)


def test_size_guard_before_numba(monkeypatch):
    a = sp.Symbol("a")
    expr = sp.Add(*[a ** (i + 1) * x ** i for i in range(30)])
    monkeypatch.setenv("GRADC_MAX_LINES", "40")
    with pytest.raises(gradc.GradcError, match=r"lines long, past the limit of 40 .*jit=False"):
        gradc.compile(expr, wrt=[a], data=[x])
    fn = gradc.compile(expr, wrt=[a], data=[x], jit=False)  # the Python path has no limit
    assert fn.value([0.5], np.array([0.5])) == pytest.approx(
        sum(0.5 ** (i + 1) * 0.5 ** i for i in range(30)))
