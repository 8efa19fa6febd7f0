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
