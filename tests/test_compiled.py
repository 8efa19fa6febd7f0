"""The jitted kernels: agreement with the Python path, per-example outputs, calling the
kernels from the user's own njit code, determinism of the generated source."""

import numba
import numpy as np
import pytest
import sympy as sp

import gradc
from gradc.testing import check_against_sympy, check_grads
from models import tanh_net, x, y

EXPR, WRT, DATA, _ = tanh_net()


@pytest.fixture(scope="module")
def fn():
    return gradc.compile(EXPR, wrt=WRT, data=DATA)


@pytest.fixture(scope="module")
def fn_py():
    return gradc.compile(EXPR, wrt=WRT, data=DATA, jit=False)


@pytest.fixture(scope="module")
def batch():
    X = np.linspace(-np.pi, np.pi, 1001)  # not a multiple of the chunk size
    return X, np.sin(X)


@pytest.fixture(scope="module")
def params():
    return np.random.default_rng(0).normal(size=10)


def test_jit_matches_python_path(fn, fn_py, batch, params):
    v, g = fn.value_and_grad(params, *batch)
    v_py, g_py = fn_py.value_and_grad(params, *batch)
    assert isinstance(v, float)
    np.testing.assert_allclose(v, v_py, rtol=1e-14)
    np.testing.assert_allclose(g, g_py, rtol=1e-13, atol=1e-15)


def test_jit_against_sympy_and_fd(fn, batch, params):
    check_against_sympy(fn, params, *batch, rtol=1e-10)
    check_grads(fn, params, *batch)


def test_repr_and_source(fn):
    text = repr(fn)
    assert text.startswith("CompiledFunction(") and "wrt=[v1, v2, v3, b1, b2, b3, w0, w1, w2, w3]" in text
    assert "reduce='mean'" in text and "data=[x, y]" in text
    assert "def value_and_grad(params, d_x, d_y):" in fn.source
    assert "_vm.tanh_v(" in fn.source  # out-of-line vectorised tanh over a chunk
    # the kernels are numba dispatchers
    assert isinstance(fn.kernels.value_and_grad, numba.core.registry.CPUDispatcher)


def test_source_is_deterministic(fn):
    again = gradc.compile(EXPR, wrt=WRT, data=DATA, jit=False)
    assert again.source == fn.source


def test_kernels_callable_from_user_njit(fn, batch):
    """A user-written SGD loop in njit calling the compiled kernel directly."""
    vg = fn.kernels.value_and_grad

    @numba.njit
    def sgd(p, X, Y, lr, steps):
        losses = np.empty(steps)
        for s in range(steps):
            value, grad = vg(p, X, Y)
            losses[s] = value
            for k in range(p.shape[0]):
                p[k] -= lr * grad[k]
        return losses

    p0 = np.random.default_rng(1).normal(scale=0.5, size=10)
    p = p0.copy()
    losses = sgd(p, *batch, 0.05, 300)
    assert losses[-1] < 0.2 * losses[0]
    # identical to the same loop driven from Python
    q = p0.copy()
    for _ in range(300):
        _, g = fn.value_and_grad(q, *batch)
        q -= 0.05 * g
    np.testing.assert_allclose(p, q, rtol=1e-10)


def test_nan_in_data_propagates(fn, params):
    X = np.array([0.1, np.nan, 0.3])
    v, g = fn.value_and_grad(params, X, np.zeros(3))
    assert np.isnan(v) and np.isnan(g).all()
    v, g = fn.value_and_grad(params, np.array([np.inf, 1.0]), np.zeros(2))
    assert np.isfinite(v)  # tanh(inf) = 1


def test_per_example_jit_matches_python():
    expr = (sp.Symbol("a") * sp.exp(-x) + sp.log(1 + y**2)) ** 2
    a = sp.Symbol("a")
    fj = gradc.compile(expr, wrt=[a], data=[x, y], reduce=None)
    fp = gradc.compile(expr, wrt=[a], data=[x, y], reduce=None, jit=False)
    X, Y = np.linspace(-3, 3, 7), np.linspace(1, 2, 7)
    for name in ("value", "value_and_grad", "grad"):
        out_j, out_p = getattr(fj, name)([0.5], X, Y), getattr(fp, name)([0.5], X, Y)
        for oj, op in zip(out_j if isinstance(out_j, tuple) else [out_j],
                          out_p if isinstance(out_p, tuple) else [out_p]):
            np.testing.assert_allclose(oj, op, rtol=1e-14)
    v, dot = fj.jvp([0.5], [2.0], X, Y)
    np.testing.assert_allclose(dot, 2 * fj.grad([0.5], X, Y)[:, 0], rtol=1e-13)


def test_large_loop_bodies_are_split_into_segments(monkeypatch):
    """Past SEGMENT equations the loop body becomes segment functions (linear compile
    time); the results are those of the plain Python path, per-example outputs included.
    (SEGMENT is lowered so that a small model shows it; a distinct k = 20 model does at
    the default.)"""
    from gradc.codegen import chunked

    monkeypatch.setattr(chunked, "SEGMENT", 8)
    k = 5  # distinct terms (the powers differ): nothing to re-roll
    v, b, w = sp.symbols(f"v1:{k + 1}"), sp.symbols(f"b1:{k + 1}"), sp.symbols(f"w0:{k + 1}")
    f = w[0] + sum(w[i + 1] * sp.tanh(v[i] * x + b[i]) ** (i + 1) for i in range(k))
    expr, wrt = (f - y) ** 2 + sp.exp(-w[1] ** 2) * sp.Symbol("segtest"), [*v, *b, *w]
    data = [x, y, sp.Symbol("segtest")]
    fj = gradc.compile(expr, wrt=wrt, data=data)
    fp = gradc.compile(expr, wrt=wrt, data=data, jit=False)
    assert "_k_value_and_grad_1(" in fj.source
    rng = np.random.default_rng(5)
    p, X = rng.normal(size=len(wrt)), rng.normal(size=700)
    args = (X, np.sin(X), np.ones(700))
    vj, gj = fj.value_and_grad(p, *args)
    vp, gp = fp.value_and_grad(p, *args)
    assert vj == pytest.approx(vp, rel=1e-13)
    np.testing.assert_allclose(gj, gp, rtol=1e-12, atol=1e-14)
    _, dj = fj.jvp(p, np.ones(len(wrt)), *args)
    assert dj == pytest.approx(gp.sum(), rel=1e-11)
    check_against_sympy(fp, p, *args, rtol=1e-10)
    # per-example outputs written from inside the segments
    pj = gradc.compile(expr, wrt=wrt, data=data, reduce=None)
    pp = gradc.compile(expr, wrt=wrt, data=data, reduce=None, jit=False)
    assert "_k_value_and_grad_1(" in pj.source
    for a, b in zip(pj.value_and_grad(p, *args), pp.value_and_grad(p, *args)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-13)


def test_eager_compiles_the_first_order_kernels_wrappers_included(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADC_CACHE_DIR", str(tmp_path))
    a, t = sp.symbols("a t")
    fn = gradc.compile(a * sp.exp(-a * t) + a ** 2, wrt=[a], data=[t], eager=True)
    names = list(fn.manifest["kernels"])
    assert {"value", "value_and_grad", "grad", "jvp", "hvp", "value_grad_hvp"} <= set(names)
    for name in names:  # each first-order dispatcher holds a signature before any call
        compiled = bool(getattr(fn.kernels, name).signatures)
        assert compiled == (name in gradc.CompiledFunction.FIRST_ORDER), name
    fn.warmup(["hvp"])  # second order on request
    assert fn.kernels.hvp.signatures and not fn.kernels.value_grad_hvp.signatures
    with pytest.raises(gradc.GradcError, match="no kernel 'hessian'"):
        fn.warmup(["hessian"])
    lazy = gradc.compile(a * sp.exp(-a * t) + a ** 3, wrt=[a], data=[t])
    assert not lazy.kernels.value.signatures
    T = np.linspace(0.0, 1.0, 5)
    np.testing.assert_allclose(fn.grad([0.5], T), np.mean(np.exp(-0.5 * T) * (1 - 0.5 * T)) + 1.0,
                               rtol=1e-13)
