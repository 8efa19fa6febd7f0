"""float32 kernels (``gradc.compile(..., dtype="float32")``, issue 14 item 5): every kind of
kernel (chunked scalar models, matrix models, indexed loop nests) computes in float32
arrays and agrees with the float64 kernels to float32 precision; sums over the batch keep
float32 accuracy at a million examples; results come back as float32; the kernels can be
called from njit code and exported."""

import subprocess
import sys
import textwrap

import numba
import numpy as np
import pytest
import sympy as sp

import gradc
from gradc import nn

EPS32 = float(np.finfo(np.float32).eps)

w0, w1, w2, v1, v2, b1, b2, x, y = sp.symbols("w0 w1 w2 v1 v2 b1 b2 x y")
SCALAR = (w0 + w1 * sp.tanh(v1 * x + b1) + w2 * sp.tanh(v2 * x + b2) - y) ** 2
SCALAR_WRT = [w0, w1, w2, v1, v2, b1, b2]


def mlp():
    X = sp.MatrixSymbol("X", 6, 1)
    W1, c1 = sp.MatrixSymbol("W1", 5, 6), sp.MatrixSymbol("c1", 5, 1)
    W2, c2 = sp.MatrixSymbol("W2", 3, 5), sp.MatrixSymbol("c2", 3, 1)
    label = sp.Symbol("label", integer=True)
    loss = nn.cross_entropy(W2 * nn.tanh(W1 * X + c1) + c2, label)
    return loss, [W1, c1, W2, c2], [X, label]


def indexed():
    i, j, c = sp.symbols("i j c", integer=True)
    img = sp.IndexedBase("img", shape=(6, 6))
    K = sp.IndexedBase("K", shape=(3, 3, 2))
    z = nn.conv2d(img, K)
    loss = sp.Sum(sp.tanh(z[i, j, c]) ** 2, (i, 0, 3), (j, 0, 3), (c, 0, 1))
    return loss, [K], [img]


def problem(name, rng, n=200):
    """(loss, wrt, data, params, data arrays) of a test model."""
    if name == "scalar":
        X = rng.normal(size=n)
        return SCALAR, SCALAR_WRT, [x, y], rng.normal(size=7), [X, np.sin(X)]
    if name == "mlp":
        loss, wrt, data = mlp()
        params = [rng.normal(scale=0.5, size=s.shape) for s in wrt]
        return loss, wrt, data, params, [rng.normal(size=(n, 6)),
                                         rng.integers(0, 3, n).astype(float)]
    loss, wrt, data = indexed()
    return loss, wrt, data, [rng.normal(scale=0.3, size=(3, 3, 2))], [rng.normal(size=(n, 6, 6))]


def close32(got, want, scale=None):
    """``got`` (float32) equals ``want`` (float64) to float32 precision: within 200 float32
    epsilons of the largest entry (the sums over 200 examples and the tanh round)."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    scale = scale if scale is not None else max(np.abs(want).max(), 1e-30)
    assert np.abs(got - want).max() <= 200 * EPS32 * scale, np.abs(got - want).max() / scale


def test_dtype_is_checked():
    with pytest.raises(gradc.GradcError, match="dtype must be 'float64' or 'float32'"):
        gradc.compile(SCALAR, wrt=SCALAR_WRT, data=[x, y], dtype="float16", jit=False)
    with pytest.raises(gradc.GradcError, match="dtype"):
        gradc.compile(SCALAR, wrt=SCALAR_WRT, data=[x, y], dtype="int32", jit=False)
    fn = gradc.compile(SCALAR, wrt=SCALAR_WRT, data=[x, y], dtype=np.float32, jit=False)
    assert fn.dtype == np.float32 and "dtype='float32'" in repr(fn)


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("name", ["scalar", "mlp", "indexed"])
def test_float32_agrees_with_float64(name, jit):
    rng = np.random.default_rng({"scalar": 1, "mlp": 2, "indexed": 3}[name])
    loss, wrt, data, params, arrays = problem(name, rng)
    f64 = gradc.compile(loss, wrt=wrt, data=data, jit=False)
    f32 = gradc.compile(loss, wrt=wrt, data=data, dtype="float32", jit=jit)
    assert "DT = np.float32" in f32.source and "runtime32 as _rt" in f32.source
    v64, g64 = f64.value_and_grad(params, *arrays)
    v32, g32 = f32.value_and_grad(params, *arrays)
    assert isinstance(v32, float)
    close32(v32, v64)
    for a, b in zip(g32 if name != "scalar" else [g32], g64 if name != "scalar" else [g64]):
        assert a.dtype == np.float32
        close32(a, b)
    # float32 inputs go in as they are; jvp agrees too
    p32 = [np.asarray(p, dtype=np.float32) for p in params] if name != "scalar" else \
        np.asarray(params, dtype=np.float32)
    a32 = [a.astype(np.float32) for a in arrays]
    close32(f32.value(p32, *a32), v64)
    t = [np.ones_like(p) for p in params] if name != "scalar" else np.ones_like(params)
    close32(f32.jvp(params, t, *arrays)[1], f64.jvp(params, t, *arrays)[1])


def test_batch_sums_keep_float32_accuracy_at_a_million_examples():
    """The mean of a million float32 terms: summed in float32 one after the other it would
    be off by about 1e-4 (relative); gradc accumulates the batch in float64 (chunk partial
    sums, block accumulators), so the result is within a few float32 epsilons."""
    rng = np.random.default_rng(4)
    n = 1_000_000
    X = rng.normal(size=n).astype(np.float32)
    Y = (2 * X + 1 + 0.1 * rng.normal(size=n)).astype(np.float32)
    a, b = sp.symbols("a b")
    scalar = gradc.compile((a * x + b - y) ** 2, wrt=[a, b], data=[x, y], dtype="float32")
    xs, W = sp.MatrixSymbol("xs", 2, 1), sp.MatrixSymbol("W", 1, 2)
    matrix = gradc.compile(nn.sum_squares(W * xs), wrt=[W], data=[xs], dtype="float32")
    P = np.array([1.9, 0.8])
    X64, Y64 = X.astype(np.float64), Y.astype(np.float64)
    r = P[0] * X64 + P[1] - Y64
    v, g = scalar.value_and_grad(P, X, Y)
    assert abs(v - np.mean(r ** 2)) <= 8 * EPS32 * np.mean(r ** 2)
    np.testing.assert_allclose(g, [np.mean(2 * r * X64), np.mean(2 * r)], rtol=16 * EPS32)
    # a float32 running sum of the same terms is far outside that bound: the test can fail
    naive = np.cumsum((r ** 2).astype(np.float32), dtype=np.float32)[-1] / n
    assert abs(naive - np.mean(r ** 2)) > 100 * EPS32 * np.mean(r ** 2)
    XY = np.column_stack([X, Y])
    mv, (mg,) = matrix.value_and_grad([P.reshape(1, 2)], XY)
    u = XY.astype(np.float64) @ P
    assert abs(mv - np.mean(u ** 2)) <= 8 * EPS32 * np.mean(u ** 2)
    np.testing.assert_allclose(mg.ravel(), (2 * u[:, None] * XY).mean(axis=0), rtol=16 * EPS32)


def test_float32_kernels_from_njit():
    fn = gradc.compile(SCALAR, wrt=SCALAR_WRT, data=[x, y], dtype="float32")
    vg = fn.kernels.value_and_grad

    @numba.njit
    def steps(p, X, Y, lr, k):
        for _ in range(k):
            v, g = vg(p, X, Y)
            p = p - lr * g
        return p, v

    rng = np.random.default_rng(5)
    X = rng.normal(size=500).astype(np.float32)
    p, v = steps(rng.normal(size=7).astype(np.float32), X, np.sin(X), np.float32(0.05), 20)
    assert p.dtype == np.float32 and np.isfinite(v)


def test_float32_second_order_and_jacobians():
    rng = np.random.default_rng(6)
    loss, wrt, data, params, arrays = problem("mlp", rng, n=50)
    f64 = gradc.compile(loss, wrt=wrt, data=data, jit=False)
    f32 = gradc.compile(loss, wrt=wrt, data=data, dtype="float32", jit=False)
    t = [rng.normal(size=p.shape) for p in params]
    for a, b in zip(f32.hvp(params, t, *arrays), f64.hvp(params, t, *arrays)):
        assert a.dtype == np.float32
        close32(a, b)
    H32, H64 = f32.hessian(params, *arrays), f64.hessian(params, *arrays)
    assert H32.dtype == np.float32
    close32(H32, H64)
    a, b = sp.symbols("a b")
    g32 = gradc.compile(sp.tanh(a * x + b), wrt=[a, b], data=[x], reduce=None, dtype="float32",
                        jit=False)
    J = g32.jacobian([0.5, 0.1], np.linspace(0, 1, 5))
    assert J.dtype == np.float32
    u = np.tanh(0.5 * np.linspace(0, 1, 5) + 0.1)
    close32(J, np.column_stack([(1 - u ** 2) * np.linspace(0, 1, 5), 1 - u ** 2]))
    S = gradc.compile((a * x + b) ** 4, wrt=[a, b], data=[x], dtype="float32",
                      jit=False).hessian([0.5, 0.1], np.linspace(0, 1, 5), sparse=True)
    assert S.dtype == np.float32
    assert f32.memory(100)["value"] * 2 == f64.memory(100)["value"]


def test_float32_export_runs_without_gradc(tmp_path):
    fn = gradc.compile(SCALAR, wrt=SCALAR_WRT, data=[x, y], dtype="float32")
    path = fn.export(tmp_path / "k32.py")
    X = np.linspace(-2, 2, 301)
    np.save(tmp_path / "X.npy", X.astype(np.float32))
    code = textwrap.dedent(f"""
        import sys
        sys.modules["gradc"] = None
        sys.modules["sympy"] = None
        sys.path.insert(0, {str(tmp_path)!r})
        import numpy as np
        import k32
        X = np.load({str(tmp_path)!r} + "/X.npy")
        P = np.arange(7, dtype=np.float32) / 10
        v, g = k32.value_and_grad(P, X, np.sin(X))
        assert g.dtype == np.float32, g.dtype
        np.save({str(tmp_path)!r} + "/out.npy", np.concatenate([[v], g]))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    got = np.load(tmp_path / "out.npy")
    X32 = X.astype(np.float32)
    v, g = fn.value_and_grad(np.arange(7) / 10, X32, np.sin(X32))
    np.testing.assert_allclose(got, np.concatenate([[v], g]), rtol=1e-6)
    assert path.exists()


def test_float32_training_with_gradc_optim():
    """A float32 function trained by gradc.optim.fit: the float32 parameters are updated in
    place (state in float64) and the loss goes down as in float64."""
    from gradc import optim

    rng = np.random.default_rng(7)
    X = rng.normal(size=2000)
    Y = np.tanh(1.5 * X - 0.3)
    losses = {}
    for dt in ("float64", "float32"):
        fn = gradc.compile(SCALAR, wrt=SCALAR_WRT, data=[x, y], dtype=dt, jit=False)
        p = np.array([0.0, 0.5, -0.5, 1.0, -1.0, 0.1, 0.2], dtype=dt)
        hist = optim.fit(fn.value_and_grad, p, (X.astype(dt), Y.astype(dt)),
                         optimizer=optim.Adam(lr=0.05), epochs=30)
        assert p.dtype == np.dtype(dt)
        losses[dt] = hist.losses
    assert losses["float32"][-1] < 0.05 * losses["float32"][0]
    np.testing.assert_allclose(losses["float32"], losses["float64"], rtol=1e-3)
