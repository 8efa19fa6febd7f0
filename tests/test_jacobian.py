"""Jacobians: forward = reverse = optimal = finite differences; plans; errors."""

import numpy as np
import pytest
import sympy as sp

import gradc
from gradc import GradcError, nn

widths = [7, 3, 6, 2, 5]
x = sp.MatrixSymbol("x", widths[0], 1)
Ws = [sp.MatrixSymbol(f"W{i}", widths[i], widths[i - 1]) for i in range(1, len(widths))]


def network():
    F = x
    for W in Ws:
        F = nn.tanh(W * F)
    return F


@pytest.fixture(scope="module")
def weights():
    rng = np.random.default_rng(0)
    return [rng.normal(size=(widths[i], widths[i - 1])) for i in range(1, len(widths))]


def _fd(f, p, eps=1e-6):
    cols = []
    for i in range(p.size):
        e = np.zeros_like(p)
        e.flat[i] = eps
        cols.append((np.ravel(f(p + e)) - np.ravel(f(p - e))) / (2 * eps))
    return np.stack(cols, axis=1)


@pytest.mark.parametrize("jit", [False, True])
def test_all_modes_agree_with_finite_differences(weights, jit):
    fn = gradc.compile(network(), wrt=[x], consts=Ws, jit=jit)
    xv = np.random.default_rng(1).normal(size=(widths[0], 1))
    fd = _fd(lambda p: fn.value([p], *weights), xv)
    # jit: one plan's kernels (each mode compiles its own sweep kernels, ~2 s each)
    modes = ("optimal",) if jit else ("forward", "reverse", "optimal", "auto")
    Js = {m: fn.jacobian([xv], *weights, mode=m) for m in modes}
    Js["reverse"] = gradc.compile(network(), wrt=[x], consts=Ws, jit=False).jacobian(
        [xv], *weights, mode="reverse")
    for m, J in Js.items():
        assert J.shape == (widths[-1], widths[0])
        np.testing.assert_allclose(J, fd, rtol=1e-6, atol=1e-8, err_msg=m)
        np.testing.assert_allclose(J, Js["reverse"], rtol=1e-12, atol=1e-14, err_msg=m)


def test_plan_is_optimal_and_printable(weights):
    fn = gradc.compile(network(), wrt=[x], consts=Ws, jit=False)
    plan = fn.plan
    cp = plan.chain_plan
    assert cp.cost <= min(cp.forward_cost, cp.reverse_cost)
    text = str(plan)
    for word in ("forward", "reverse", "optimal", "bracketing", "flops", "memory"):
        assert word in text
    assert plan.auto in ("forward", "reverse", "optimal")
    assert [c.kind for c in plan.chain] == ["explicit", "diagonal"] * 4


def test_scalar_loss_plans_pure_reverse_mode():
    w = sp.MatrixSymbol("w", 50, 1)
    A = sp.MatrixSymbol("A", 30, 50)
    plan = gradc.plan(nn.sum(nn.tanh(A * w)) + nn.sum_squares(w), wrt=[w], consts=[A])
    cp = plan.chain_plan
    assert cp.cost == cp.reverse_cost < cp.forward_cost
    assert cp.bracketing.startswith("ADJ(")


def test_per_example_jacobians_with_data_and_several_wrt():
    a, b = sp.MatrixSymbol("a", 3, 1), sp.Symbol("b")
    d = sp.MatrixSymbol("d", 3, 1)
    W = sp.MatrixSymbol("W", 2, 3)
    F = nn.tanh(W * sp.HadamardProduct(a, d) + b * sp.OneMatrix(2, 1))
    fn = gradc.compile(F, wrt=[a, b], data=[d], consts=[W], jit=False)
    rng = np.random.default_rng(2)
    av, bv, Wv = rng.normal(size=(3, 1)), 0.3, rng.normal(size=(2, 3))
    D = rng.normal(size=(4, 3))
    J = fn.jacobian([av, bv], D, Wv, mode="optimal")
    assert J.shape == (4, 2, 4)
    for i in range(4):
        def f(p, i=i):
            return np.tanh(Wv @ (p[:3] * D[i]) + p[3])

        fd = _fd(f, np.concatenate([av[:, 0], [bv]]))
        np.testing.assert_allclose(J[i], fd, rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(fn.jacobian([av, bv], D, Wv, mode="forward")[i], J[i],
                                   rtol=1e-12, atol=1e-14)


def test_jacobian_errors(weights):
    fn = gradc.compile(network(), wrt=[x], consts=Ws, jit=False)
    with pytest.raises(GradcError, match="mode must be one of"):
        fn.jacobian([np.zeros((7, 1))], *weights, mode="sideways")
    M = sp.MatrixSymbol("M", 2, 2)  # a matrix parameter is planned flattened
    assert [c.kind for c in gradc.plan(nn.tanh(M), wrt=[M]).chain] == ["diagonal"]


def test_memory_limit_is_respected():
    plan = gradc.plan(network(), wrt=[x], consts=Ws, memory=3)
    assert plan.chain_plan.peak_tape <= 3
    assert plan.chain_plan.reverse_cost is None  # pure reverse needs more tape


@pytest.mark.parametrize("mode", ["forward", "reverse", "optimal"])
def test_per_example_jacobians_with_data_and_a_scalar_const(mode):
    w0, w1, x, c = sp.symbols("w0 w1 x c")
    fn = gradc.compile(w0 * sp.tanh(w1 * x * c), wrt=[w0, w1], data=[x], consts=[c], jit=False)
    X = np.array([0.1, -0.2, 0.3])
    J = fn.jacobian(np.array([1.5, 2.0]), X, 0.5, mode=mode)
    t = np.tanh(2.0 * X * 0.5)
    np.testing.assert_allclose(J.reshape(3, 2), np.stack([t, 1.5 * (1 - t ** 2) * X * 0.5], 1),
                               rtol=1e-13)


# -- Jacobians of classifiers and with respect to matrix parameters (issue 14) -------------
def _classifier():
    xi = sp.MatrixSymbol("xi", 4, 1)
    A1, c1 = sp.MatrixSymbol("A1", 5, 4), sp.MatrixSymbol("c1", 5, 1)
    A2, c2 = sp.MatrixSymbol("A2", 3, 5), sp.MatrixSymbol("c2", 3, 1)
    F = nn.softmax(A2 * nn.tanh(A1 * xi + c1) + c2)
    rng = np.random.default_rng(5)
    vals = [rng.normal(size=tuple(s.shape)) for s in (A1, c1, A2, c2)]
    return F, [A1, c1, A2, c2], xi, vals, rng.normal(size=(4, 1))


def _numpy_classifier(p, xv):
    A1, c1, A2, c2 = p
    z = A2 @ np.tanh(A1 @ xv + c1) + c2
    e = np.exp(z - z.max())
    return e / e.sum()


def _unflatten(flat, vals):
    out, k = [], 0
    for v in vals:
        out.append(flat[k:k + v.size].reshape(v.shape))
        k += v.size
    return out


@pytest.mark.parametrize("jit", [False, True])
def test_classifier_jacobian_wrt_matrix_params_in_every_mode(jit):
    F, wrt, xi, vals, xv = _classifier()
    fn = gradc.compile(F, wrt=wrt, consts=[xi], jit=jit)
    flat = np.concatenate([v.ravel() for v in vals])
    fd = _fd(lambda p: _numpy_classifier(_unflatten(p, vals), xv), flat)
    modes = ("optimal", "coloured") if jit else ("forward", "reverse", "optimal", "auto",
                                                  "coloured")
    ref = gradc.compile(F, wrt=wrt, consts=[xi], jit=False).jacobian(vals, xv, mode="reverse")
    assert ref.shape == (3, 5 * 4 + 5 + 3 * 5 + 3)
    np.testing.assert_allclose(ref, fd, rtol=1e-6, atol=1e-8)
    for m in modes:
        J = fn.jacobian(vals, xv, mode=m)
        np.testing.assert_allclose(J, ref, rtol=1e-12, atol=1e-14, err_msg=m)
    # the columns of a softmax Jacobian sum to zero (the outputs always sum to one)
    np.testing.assert_allclose(ref.sum(axis=0), 0.0, atol=1e-14)
    assert fn.plan.chain[0].piece.n_in == ref.shape[1]


def test_auto_decides_against_colouring_once(monkeypatch):
    """mode="auto" prices the coloured sweeps on its first call only (pricing them walks the
    JVP program: it cost 50-600 us per call, more than the Jacobian itself)."""
    import gradc.hessian as gh

    F, wrt, xi, vals, xv = _classifier()
    fn = gradc.compile(F, wrt=wrt, consts=[xi], jit=False)
    calls = []
    real = gh.jvp_sweep_seconds
    monkeypatch.setattr(gh, "jvp_sweep_seconds", lambda *a, **k: calls.append(1) or real(*a, **k))
    ref = fn.jacobian(vals, xv, mode="reverse")
    for _ in range(3):
        np.testing.assert_allclose(fn.jacobian(vals, xv, mode="auto"), ref, rtol=1e-12,
                                   atol=1e-14)
    assert len(calls) == 1


def test_classifier_jacobian_agrees_with_jax():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    F, wrt, xi, vals, xv = _classifier()
    fn = gradc.compile(F, wrt=wrt, consts=[xi], jit=False)

    def f(A1, c1, A2, c2):
        return jax.nn.softmax(A2 @ jnp.tanh(A1 @ xv + c1) + c2, axis=0).ravel()

    for jac in (jax.jacrev, jax.jacfwd):
        parts = jac(f, argnums=(0, 1, 2, 3))(*vals)
        ref = np.concatenate([np.asarray(p).reshape(3, -1) for p in parts], axis=1)
        for m in ("forward", "reverse", "optimal"):
            np.testing.assert_allclose(fn.jacobian(vals, xv, mode=m), ref, rtol=1e-12,
                                       atol=1e-14, err_msg=m)


def test_matrix_output_and_transpose_of_a_matrix_param():
    """A transpose of a matrix permutes the flattened values: a dense piece, not a diagonal
    one (the plan would multiply by the identity instead of the permutation)."""
    M = sp.MatrixSymbol("M", 3, 2)
    A = sp.MatrixSymbol("A", 2, 3)
    F = nn.tanh((A * M).T) + nn.HadamardProduct(M, M).T * A.T
    fn = gradc.compile(F, wrt=[M], consts=[A], jit=False)
    rng = np.random.default_rng(3)
    Mv, Av = rng.normal(size=(3, 2)), rng.normal(size=(2, 3))

    def f(p):
        m = p.reshape(3, 2)
        return np.tanh((Av @ m).T) + (m * m).T @ Av.T

    fd = _fd(f, Mv.ravel())
    for m in ("forward", "reverse", "optimal", "coloured"):
        np.testing.assert_allclose(fn.jacobian([Mv], Av, mode=m), fd, rtol=1e-6, atol=1e-8,
                                   err_msg=m)
    assert all(c.kind != "diagonal" or c.eqns[0].prim != "transpose" for c in fn.plan.chain)


def test_forced_plans(weights):
    """fn.jacobian(..., plan=...) runs the bracketing given (text or a Step tree): every
    forced plan gives the same Jacobian; fn.plan.price prices it; bad plans and modes are
    refused with the reason."""
    fn = gradc.compile(network(), wrt=[x], consts=Ws, jit=False)
    xv = np.random.default_rng(1).normal(size=(widths[0], 1))
    ref = fn.jacobian([xv], *weights, mode="forward")
    for text in ("TAN(F8..F1)", "ADJ(F8..F1)", "MUL(TAN(F8..F6, F5), ADJ(F4..F1))",
                 "ADJ(TAN(F8..F6, ADJ(F5, F4..F2)), F1)", fn.plan.chain_plan.flop_plan):
        np.testing.assert_allclose(fn.jacobian([xv], *weights, plan=text), ref, rtol=1e-12,
                                   atol=1e-14, err_msg=str(text))
    priced = fn.plan.price("TAN(F8..F1)")
    assert priced.cost == priced.forward_cost and priced.seconds == pytest.approx(
        fn.plan.seconds["forward"])
    assert fn.plan.seconds["optimal"] <= min(fn.plan.seconds["forward"], fn.plan.seconds["reverse"])
    with pytest.raises(GradcError, match="F2 is not an explicit piece"):
        fn.jacobian([xv], *weights, plan="MUL(TAN(F8..F3), MUL(F2, F1))")
    with pytest.raises(GradcError, match="mode='auto' or 'optimal'"):
        fn.jacobian([xv], *weights, plan="TAN(F8..F1)", mode="reverse")
