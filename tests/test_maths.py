"""The maths of the generated code (jit=False): sympy.diff oracle, finite differences,
forward = reverse, reductions, subgradient conventions, random expressions."""

import numpy as np
import pytest
import sympy as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gradc
from gradc.testing import check_against_sympy, check_grads, sympy_oracle
from models import MODELS, ridge, x, y


def _data(rng, data, n):
    out = []
    for s in data:
        if s == y:
            out.append(rng.uniform(0.05, 0.95, n))
        else:
            out.append(rng.uniform(-2.0, 2.0, n))
    return out


def _params(rng, k):
    return rng.uniform(0.3, 1.4, k)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("reduce", ["mean", "sum", None])
def test_against_sympy_diff(name, reduce, rng):
    expr, wrt, data, consts = MODELS[name]()
    fn = gradc.compile(expr, wrt=wrt, data=data, consts=consts, reduce=reduce, jit=False)
    args = _data(rng, data, 37) + [0.3] * len(consts)
    check_against_sympy(fn, _params(rng, len(wrt)), *args, rtol=1e-10)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_forward_reverse_and_finite_differences(name, rng):
    expr, wrt, data, consts = MODELS[name]()
    fn = gradc.compile(expr, wrt=wrt, data=data, consts=consts, jit=False)
    args = _data(rng, data, 23) + [0.3] * len(consts)
    check_grads(fn, _params(rng, len(wrt)), *args)


def test_ridge_partials_are_the_lectures():
    """dl/db = -2r and dl/dw_j = -2 r x_j with r = y - yhat (loss part, lam = 0)."""
    expr, wrt, data, consts = ridge()
    fn = gradc.compile(expr, wrt=wrt, data=data, consts=consts, reduce=None, jit=False)
    p = np.array([0.5, -1.5, 0.25])
    X1, X2, Y = np.array([1.0, 2.0, -1.0]), np.array([0.5, 0.0, 3.0]), np.array([1.0, -2.0, 0.5])
    _, g = fn.value_and_grad(p, X1, X2, Y, 0.0)
    r = Y - (p[0] * X1 + p[1] * X2 + p[2])
    np.testing.assert_allclose(g[:, 2], -2 * r, rtol=1e-15)
    np.testing.assert_allclose(g[:, 0], -2 * r * X1, rtol=1e-15)
    np.testing.assert_allclose(g[:, 1], -2 * r * X2, rtol=1e-15)
    # and the regulariser adds 2 lam w_j
    _, g2 = fn.value_and_grad(p, X1, X2, Y, 0.5)
    np.testing.assert_allclose(g2[:, :2] - g[:, :2], np.broadcast_to(2 * 0.5 * p[:2], (3, 2)), rtol=1e-12)


def test_reductions_agree(rng):
    expr, wrt, data, consts = MODELS["tanh_net"]()
    fns = {r: gradc.compile(expr, wrt=wrt, data=data, reduce=r, jit=False) for r in ("mean", "sum", None)}
    p, args = _params(rng, 10), _data(rng, data, 600)  # more than two chunks
    vals, grads = fns[None].value_and_grad(p, *args)
    v_sum, g_sum = fns["sum"].value_and_grad(p, *args)
    v_mean, g_mean = fns["mean"].value_and_grad(p, *args)
    assert vals.shape == (600,) and grads.shape == (600, 10)
    np.testing.assert_allclose(v_sum, vals.sum(), rtol=1e-13)
    np.testing.assert_allclose(g_sum, grads.sum(axis=0), rtol=1e-12)
    np.testing.assert_allclose(v_mean, vals.mean(), rtol=1e-13)
    np.testing.assert_allclose(g_mean, grads.mean(axis=0), rtol=1e-12)


def test_no_data_is_a_plain_function():
    a, c = sp.symbols("a c")
    fn = gradc.compile(sp.sin(a) * c**2 + sp.exp(a * c), wrt=[a, c], jit=False)
    v, g = fn.value_and_grad([0.3, -0.7])
    ref_v, ref_g = sympy_oracle(fn.expr, fn.wrt)([0.3, -0.7])
    assert isinstance(v, float)
    np.testing.assert_allclose(v, ref_v, rtol=1e-14)
    np.testing.assert_allclose(g, ref_g, rtol=1e-14)
    v2, dot = fn.jvp([0.3, -0.7], [1.0, 2.0])
    np.testing.assert_allclose(dot, g @ [1.0, 2.0], rtol=1e-14)


def test_consts_are_not_differentiated():
    w0, k = sp.symbols("w0 k")
    fn = gradc.compile(k * w0**2 + k**3, wrt=[w0], data=[x], consts=[k], jit=False)
    v, g = fn.value_and_grad([2.0], np.ones(4), 3.0)
    assert v == pytest.approx(3 * 4 + 27) and g.tolist() == [12.0]


# ----------------------------------------------------------------------------------------
# Subgradient conventions, identical in forward and reverse mode.

t = sp.Symbol("t")
CONVENTION_CASES = [
    (sp.Max(t, 0), 0.0, 0.0),
    (sp.Max(0, t), 0.0, 0.0),
    (sp.Min(t, 0), 0.0, 0.0),
    (sp.Abs(t), 0.0, 0.0),
    (sp.sign(t), 0.0, 0.0),
    (sp.floor(t), 1.0, 0.0),
    (sp.ceiling(t), 1.0, 0.0),
    (sp.Heaviside(t), 0.0, 0.0),
    (sp.Piecewise((t, t > 0), (0, True)), 0.0, 0.0),
    (sp.Max(t, 0), 2.0, 1.0),
    (sp.Max(t, 0), -2.0, 0.0),
    (sp.Abs(t), -2.0, -1.0),
    (t * sp.Max(t, 0), 0.0, 0.0),
]


@pytest.mark.parametrize("expr,at,expected", CONVENTION_CASES, ids=[str(c) for c in CONVENTION_CASES])
def test_subgradient_conventions(expr, at, expected):
    fn = gradc.compile(expr, wrt=[t], jit=False)
    _, g = fn.value_and_grad([at])
    _, dot = fn.jvp([at], [1.0])
    assert g[0] == expected and dot == expected


def test_untaken_piecewise_branch_does_not_leak_nan():
    """sqrt'(0) is infinite; the branch is not taken, so the gradient is 0, not nan."""
    fn = gradc.compile(sp.Piecewise((sp.sqrt(t), t > 0), (0, True)), wrt=[t], jit=False)
    assert fn.grad([0.0])[0] == 0.0 and fn.grad([-1.0])[0] == 0.0
    assert fn.grad([4.0])[0] == 0.25


def test_constant_power_has_no_nan_at_negative_base():
    fn = gradc.compile(t**3, wrt=[t], jit=False)
    assert fn.grad([-2.0])[0] == 12.0
    fn = gradc.compile(t**2, wrt=[t], jit=False)
    assert fn.grad([0.0])[0] == 0.0


def test_symbolic_exponent_at_zero_base():
    p = sp.Symbol("p")
    fn = gradc.compile(t**p, wrt=[t, p], jit=False)
    v, g = fn.value_and_grad([0.0, 2.0])
    assert v == 0.0 and g[0] == 0.0  # d/dt t**p = p t**(p-1) = 0, not 0/0


def test_nan_and_inf_propagate():
    fn = gradc.compile(sp.log(t * x), wrt=[t], data=[x], reduce=None, jit=False)
    v, g = fn.value_and_grad([1.0], np.array([np.nan, np.inf, -1.0, 0.0, 2.0]))
    assert np.isnan(v[0]) and np.isnan(g[0, 0])
    assert v[1] == np.inf and np.isnan(g[1, 0])  # chain rule: (1/inf) * inf
    assert np.isnan(v[2]) and g[2, 0] == 1.0  # the derivative 1/t exists below 0
    assert v[3] == -np.inf and np.isnan(g[3, 0])  # (1/0) * 0
    assert v[4] == pytest.approx(np.log(2.0)) and g[4, 0] == pytest.approx(1.0)


# ----------------------------------------------------------------------------------------
# Random expression trees.

P = sp.symbols("q0:3")
UNARY = [
    sp.tanh, sp.sin, sp.cos, sp.atan, sp.erf,
    lambda e: sp.exp(sp.tanh(e)),
    lambda e: sp.log(1 + e**2),
    lambda e: sp.sqrt(2 + sp.sin(e)),
    lambda e: 1 / (1 + e**2),
    lambda e: e**3,
    lambda e: sp.Abs(e),
    lambda e: sp.Max(e, 0),
    lambda e: sp.Piecewise((e**2, e > 0.1), (sp.sin(e), True)),
]
BINARY = [
    lambda a, b: a + b,
    lambda a, b: a * b,
    lambda a, b: a - b,
    lambda a, b: a / (1 + b**2),
    lambda a, b: (1 + a**2) ** sp.tanh(b),
    lambda a, b: sp.Min(a, b),
]
leaves = st.sampled_from([*P, x, y, sp.Rational(1, 3), sp.Float(0.25), sp.Integer(2)])


def _extend(children):
    return st.one_of(
        st.tuples(st.sampled_from(range(len(UNARY))), children).map(lambda t: UNARY[t[0]](t[1])),
        st.tuples(st.sampled_from(range(len(BINARY))), children, children).map(
            lambda t: BINARY[t[0]](t[1], t[2])
        ),
    )


expressions = st.recursive(leaves, _extend, max_leaves=12)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(expressions, st.integers(0, 2**31 - 1))
def test_random_expressions_against_sympy(expr, seed):
    wrt = [s for s in P if s in expr.free_symbols] or [P[0]]
    fn = gradc.compile(expr, wrt=wrt, data=[x, y], reduce=None, jit=False)
    rng = np.random.default_rng(seed)
    params = rng.uniform(-1.5, 1.5, len(wrt))
    X, Y = rng.uniform(-2, 2, 5), rng.uniform(-2, 2, 5)
    v, g = fn.value_and_grad(params, X, Y)
    rv, rg = sympy_oracle(expr, wrt, [x, y], reduce=None)(params, X, Y)
    finite = np.abs(rg[np.isfinite(rg)])
    scale = 1.0 + (finite.max() if finite.size else 0.0)  # for atol only; NaNs still compared
    np.testing.assert_allclose(v, rv, rtol=1e-9, atol=1e-12, equal_nan=True)
    np.testing.assert_allclose(g, rg, rtol=1e-8, atol=1e-11 * scale, equal_nan=True)
    for i in range(len(wrt)):
        _, dot = fn.jvp(params, np.eye(len(wrt))[i], X, Y)
        np.testing.assert_allclose(dot, g[:, i], rtol=1e-9, atol=1e-12 * scale, equal_nan=True)


def test_max_min_ties_share_the_derivative():
    a, b, c, q = sp.symbols("a b c q")
    m3 = gradc.compile(sp.Max(a, b, c, 0), wrt=[a, b, c], jit=False)
    np.testing.assert_array_equal(m3.grad([1.0, 1.0, 1.0]), [1 / 3, 1 / 3, 1 / 3])
    np.testing.assert_array_equal(m3.grad([1.0, 1.0, 0.5]), [0.5, 0.5, 0.0])
    np.testing.assert_array_equal(m3.grad([2.0, 1.0, 1.0]), [1.0, 0.0, 0.0])
    np.testing.assert_array_equal(m3.grad([0.0, 0.0, -1.0]), [0.0, 0.0, 0.0])  # vs the 0
    mn = gradc.compile(sp.Min(a, b), wrt=[a, b], jit=False)
    np.testing.assert_array_equal(mn.grad([1.0, 1.0]), [0.5, 0.5])
    same = gradc.compile(sp.Min(q, sp.Abs(q)), wrt=[q], jit=False)  # equal to q
    assert same.grad([0.7])[0] == 1.0 and same.grad([-0.7])[0] == 1.0


# --------------------------------------------------------------------------------------
# Powers and logarithms at the edge of their domain (docs/conventions.md)


def test_pow_by_its_exponent_is_zero_at_a_zero_base():
    # d/dt x**t = x**t log(x) is 0 * (-inf) at x = 0; the limit (and the derivative for
    # t > 0) is 0.  Reverse, forward, per example, HVP and value_grad_hvp all agree.
    t = sp.Symbol("t")
    X = np.array([0.0, 0.5, 2.0])
    fn = gradc.compile(x**t, wrt=[t], data=[x], jit=False)
    for at in (2.0, 0.5):
        want = np.mean(X[1:] ** at * np.log(X[1:])) * 2 / 3  # the x = 0 example adds 0
        want2 = np.mean(X[1:] ** at * np.log(X[1:]) ** 2) * 2 / 3
        np.testing.assert_allclose(fn.grad([at], X), [want], rtol=1e-12)
        np.testing.assert_allclose(fn.jvp([at], [1.0], X)[1], want, rtol=1e-12)
        np.testing.assert_allclose(fn.hvp([at], [1.0], X), [want2], rtol=1e-12)
        _, g, hv = fn.value_grad_hvp([at], [1.0], X)
        np.testing.assert_allclose([g[0], hv[0]], [want, want2], rtol=1e-12)
    per = gradc.compile(x**t, wrt=[t], data=[x], reduce=None, jit=False)
    values, grads = per.value_and_grad([2.0], X)
    assert values[0] == 0.0 and grads[0, 0] == 0.0
    assert per.jvp([2.0], [1.0], X)[1][0] == 0.0
    # a base that is an expression, and the base a parameter too
    w = sp.Symbol("w")
    both = gradc.compile((w * x) ** t, wrt=[w, t], data=[x], jit=False)
    np.testing.assert_array_equal(both.grad([1.5, 2.0], np.array([0.0])), [0.0, 0.0])
    np.testing.assert_array_equal(both.hvp([1.5, 2.0], [1.0, 1.0], np.array([0.0])),
                                  [0.0, 0.0])
    np.testing.assert_array_equal(both.hessian([1.5, 2.0], np.array([0.0])), np.zeros((2, 2)))
    # inside another function: the chain rule meets 0, not NaN
    inner = gradc.compile(sp.exp(-x**t) * t, wrt=[t], data=[x], jit=False)
    assert np.isfinite(inner.grad([2.0], X)).all() and np.isfinite(inner.hvp([2.0], [1.0], X)).all()


def test_pow_by_its_exponent_at_a_zero_base_jit():
    # the chunked (vectorised) kernels and the scalar ones print the same rule
    t = sp.Symbol("t")
    X = np.concatenate([np.zeros(300), np.linspace(0.1, 3.0, 700)])
    fn = gradc.compile(x**t + sp.tanh(t * x), wrt=[t], data=[x], jit=True)
    ref = gradc.compile(x**t + sp.tanh(t * x), wrt=[t], data=[x], jit=False)
    pos = X[X > 0]
    want = (np.sum(pos**1.5 * np.log(pos)) + np.sum(X / np.cosh(1.5 * X) ** 2)) / X.size
    g = fn.grad([1.5], X)
    np.testing.assert_allclose(g, [want], rtol=1e-12)
    np.testing.assert_allclose(fn.jvp([1.5], [1.0], X)[1], want, rtol=1e-12)
    hv = fn.hvp([1.5], [1.0], X)
    assert np.isfinite(hv).all()
    np.testing.assert_allclose(hv, ref.hvp([1.5], [1.0], X), rtol=1e-12)
    np.testing.assert_allclose(g, ref.grad([1.5], X), rtol=1e-12)


BOUNDARY = [
    # (expression in t, point, value, first derivative, second derivative)
    ("t**2", 0.0, 0.0, 0.0, 2.0),
    ("t**2.5", 0.0, 0.0, 0.0, 0.0),
    ("t**1.5", 0.0, 0.0, 0.0, np.inf),
    ("sqrt(t)", 0.0, 0.0, np.inf, -np.inf),
    ("sqrt(t)", -1.0, np.nan, np.nan, np.nan),
    ("1/t", 0.0, np.inf, -np.inf, np.inf),
    ("log(t)", 0.0, -np.inf, np.inf, -np.inf),
    ("log(t)", -1.0, np.nan, -1.0, -1.0),
    ("t**t", 0.0, 1.0, -np.inf, np.inf),
    ("sqrt(t**2)", 0.0, 0.0, np.nan, np.nan),  # inf * 0 in the chain rule: documented
    ("Abs(t)", 0.0, 0.0, 0.0, 0.0),
]


@pytest.mark.parametrize("text, at, value, first, second", BOUNDARY)
def test_boundary_table(text, at, value, first, second):
    t = sp.Symbol("t")
    fn = gradc.compile(sp.sympify(text, locals={"t": t}), wrt=[t], jit=False)
    v, g = fn.value_and_grad([at])
    _, slope = fn.jvp([at], [1.0])
    h = fn.hvp([at], [1.0])
    np.testing.assert_array_equal([v, g[0], slope, h[0]], [value, first, first, second])


@pytest.mark.parametrize("exponent, value, first, second", [
    (2.0, 0.0, 0.0, 2.0), (3.0, 0.0, 0.0, 0.0), (1.0, 0.0, 1.0, 0.0),
    (0.5, 0.0, np.inf, -np.inf), (0.0, 1.0, 0.0, 0.0), (-1.0, np.inf, -np.inf, np.inf),
])
def test_boundary_symbolic_exponent_by_the_base(exponent, value, first, second):
    # d/dt t**p = p t**(p-1): 0 at p = 0 (t**0 is the constant 1), not 0 * inf
    t, p = sp.symbols("t p")
    fn = gradc.compile(t**p, wrt=[t], consts=[p], jit=False)
    v, g = fn.value_and_grad([0.0], exponent)
    _, slope = fn.jvp([0.0], [1.0], exponent)
    h = fn.hvp([0.0], [1.0], exponent)
    np.testing.assert_array_equal([v, g[0], slope, h[0]], [value, first, first, second])


@pytest.mark.parametrize("base, value, first, second", [
    (2.0, 0.0, 0.0, 0.0), (0.5, 0.0, 0.0, 0.0),
    (0.0, 1.0, -np.inf, np.inf), (-1.0, np.inf, -np.inf, np.inf),
])
def test_boundary_symbolic_exponent_by_the_exponent(base, value, first, second):
    t = sp.Symbol("t")
    fn = gradc.compile(x**t, wrt=[t], data=[x], jit=False)
    X = np.array([0.0])
    v, g = fn.value_and_grad([base], X)
    _, slope = fn.jvp([base], [1.0], X)
    h = fn.hvp([base], [1.0], X)
    np.testing.assert_array_equal([v, g[0], slope, h[0]], [value, first, first, second])


# --------------------------------------------------------------------------------------
# Gradients come back in the shape the parameters were passed in


def _vector_model(jit=False):
    u = sp.MatrixSymbol("u", 8, 1)
    w = sp.MatrixSymbol("w", 8, 1)
    r = sp.MatrixSymbol("r", 1, 8)
    a = sp.Symbol("a")
    expr = sp.tanh((w.T * u)[0, 0]) + (r * u)[0, 0] ** 2 + a**2 * (w.T * w)[0, 0]
    return gradc.compile(expr, wrt=[w, r, a], data=[u], jit=jit)


def test_flat_vector_params_get_flat_gradients():
    fn = _vector_model()
    rng = np.random.default_rng(3)
    U = rng.normal(size=(6, 8))
    w, r = rng.normal(size=8), rng.normal(size=8)
    flat = [w, r, 0.5]
    full = [w.reshape(8, 1), r.reshape(1, 8), 0.5]
    g_full = fn.grad(full, U)
    assert [np.shape(g) for g in g_full] == [(8, 1), (1, 8), ()]  # unchanged
    g = fn.grad(flat, U)
    assert [np.shape(e) for e in g] == [(8,), (8,), ()]
    np.testing.assert_array_equal(g[0], g_full[0].ravel())
    np.testing.assert_array_equal(g[1], g_full[1].ravel())
    assert np.shape(np.sum(g[0] * w)) == ()  # no silent (8, 8) broadcast
    step = w.copy()
    step -= 0.1 * g[0]  # fails for an (8, 1) gradient
    v, g2 = fn.value_and_grad(flat, U)
    assert [np.shape(e) for e in g2] == [(8,), (8,), ()]
    np.testing.assert_array_equal(g2[0], g[0])
    hv = fn.hvp(flat, flat, U)
    hv_full = fn.hvp(full, full, U)
    assert [np.shape(e) for e in hv] == [(8,), (8,), ()]
    np.testing.assert_allclose(hv[0], hv_full[0].ravel(), rtol=1e-14)
    _, g3, hv3 = fn.value_grad_hvp(flat, flat, U)
    assert [np.shape(e) for e in g3] == [(8,), (8,), ()]
    assert [np.shape(e) for e in hv3] == [(8,), (8,), ()]
    # per call: a 2-D call after a flat one gets 2-D gradients again
    assert [np.shape(e) for e in fn.grad([w, r.reshape(1, 8), 0.5], U)] == [(8,), (1, 8), ()]
    assert [np.shape(e) for e in fn.grad(full, U)] == [(8, 1), (1, 8), ()]


def test_flat_vector_gradients_jit():
    fn = _vector_model(jit=True)
    U = np.random.default_rng(4).normal(size=(5, 8))
    g = fn.grad([np.full(8, 0.1), np.full(8, 0.2), 0.5], U)
    assert [np.shape(e) for e in g] == [(8,), (8,), ()]
    g_full = fn.grad([np.full((8, 1), 0.1), np.full((1, 8), 0.2), 0.5], U)
    np.testing.assert_array_equal(g[0], g_full[0].ravel())


def test_second_derivative_of_nested_min_max_in_piecewise():
    """sympy's Heaviside.__new__ recursed forever on gradc's swapped subclass when a
    Heaviside was rebuilt during the second derivative (found by Hypothesis in CI)."""
    a, b, x = sp.symbols("a b x")
    m = sp.Min(x, sp.Max(0, a))
    loss = sp.Piecewise((m ** 2, m > 0.1), (sp.sin(m), True)) * b
    fn = gradc.compile(loss, wrt=[a, b], data=[x], jit=False)
    X = np.array([0.05, 0.5, 2.0])
    hv = fn.hvp([0.7, 1.3], [1.0, 0.0], X)
    eps = 1e-6
    fd = (fn.grad([0.7 + eps, 1.3], X) - fn.grad([0.7 - eps, 1.3], X)) / (2 * eps)
    np.testing.assert_allclose(hv, fd, rtol=1e-6, atol=1e-9)
