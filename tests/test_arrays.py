"""Matrix models: expanded-to-scalars sympy.diff oracle (rtol 1e-10), forward = reverse,
finite differences at real sizes, nn building blocks, stability, shape and label errors."""

import numpy as np
import pytest
import sympy as sp

import gradc
from gradc import GradcError, nn
from sympy.matrices.exceptions import ShapeError
from gradc.testing import check_against_sympy

d, m, k = 3, 4, 3
x = sp.MatrixSymbol("x", d, 1)
xr = sp.MatrixSymbol("xr", 1, d)  # a row-vector datum
yv = sp.MatrixSymbol("yv", k, 1)  # one-hot target
label = sp.Symbol("label", integer=True)
W1, b1 = sp.MatrixSymbol("W1", m, d), sp.MatrixSymbol("b1", m, 1)
W2, b2 = sp.MatrixSymbol("W2", k, m), sp.MatrixSymbol("b2", k, 1)
V = sp.MatrixSymbol("V", d, m)
A = sp.MatrixSymbol("A", d, d)
alpha, lam = sp.symbols("alpha lam")


def mlp(act):
    h = act(W1 * x + b1)
    return nn.cross_entropy(W2 * h + b2, label), [W1, b1, W2, b2], [x, label], []


MODELS = {
    "tanh_mlp": lambda: mlp(nn.tanh),
    "relu_mlp": lambda: mlp(nn.relu),
    "sigmoid_mlp": lambda: mlp(nn.sigmoid),
    "softplus_mlp": lambda: mlp(nn.softplus),
    "applyfunc_with_param": lambda: (
        nn.cross_entropy(W2 * (W1 * x + b1).applyfunc(lambda t: sp.tanh(alpha * t)), label),
        [W1, b1, W2, alpha], [x, label], []),
    "onehot_ce_l2": lambda: (
        nn.cross_entropy(W2 * nn.tanh(W1 * x), yv) + lam * nn.sum_squares(W1) + nn.mean(b1),
        [W1, W2, b1], [x, yv], [lam]),
    "row_vector_data": lambda: (
        nn.sum(nn.tanh(xr * V) * W2.T) + sp.Trace(A * A.T) * 0.1,
        [V, W2, A], [xr], []),
    "transpose_identity_hadamard": lambda: (
        nn.sum(sp.HadamardProduct(W1.T * W1 + sp.Identity(d), A)) + (x.T * A * x)[0, 0]
        + nn.sum(sp.HadamardPower(W1 * x, 3)) + nn.logsumexp(nn.softmax(W2 * W1 * x)),
        [W1, A, W2], [x], []),
    "scalar_times_matrix_and_ones": lambda: (
        nn.sum((alpha * W1 * x + sp.OneMatrix(m, 1)).applyfunc(sp.exp)) * alpha**2,
        [W1, alpha], [x], []),
}


def _args(rng, data, consts, n):
    out = []
    for s in data:
        if s == label:
            out.append(rng.integers(0, k, n))
        elif s == yv:
            out.append(np.eye(k)[rng.integers(0, k, n)])
        else:
            r, c = s.shape
            out.append(rng.normal(size=(n, r * c)))
    return out + [0.05] * len(consts)


def _params(rng, wrt, scale=0.7):
    return [rng.normal(scale=scale, size=tuple(int(v) for v in s.shape))
            if isinstance(s, sp.MatrixSymbol) else 0.8 for s in wrt]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_against_explicit_sympy(name, rng):
    expr, wrt, data, consts = MODELS[name]()
    fn = gradc.compile(expr, wrt=wrt, data=data, consts=consts, jit=False)
    check_against_sympy(fn, _params(rng, wrt), *_args(rng, data, consts, 6), rtol=1e-10)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_forward_equals_reverse(name, rng):
    expr, wrt, data, consts = MODELS[name]()
    fn = gradc.compile(expr, wrt=wrt, data=data, consts=consts, reduce="sum", jit=False)
    params, args = _params(rng, wrt), _args(rng, data, consts, 5)
    _, g = fn.value_and_grad(params, *args)
    for _ in range(3):
        t = [rng.normal(size=np.shape(p)) if np.ndim(p) else rng.normal() for p in params]
        _, dot = fn.jvp(params, t, *args)
        expected = sum(float(np.sum(np.asarray(gi) * ti)) for gi, ti in zip(g, t))
        assert dot == pytest.approx(expected, rel=1e-10, abs=1e-12)


@pytest.fixture(scope="module")
def mnist_like():
    """The issue's 784-256-10 relu network at real size, compiled once (jit)."""
    D, M, K = 784, 64, 10
    X = sp.MatrixSymbol("X", D, 1)
    P1, c1 = sp.MatrixSymbol("P1", M, D), sp.MatrixSymbol("c1", M, 1)
    P2, c2 = sp.MatrixSymbol("P2", K, M), sp.MatrixSymbol("c2", K, 1)
    loss = nn.cross_entropy(P2 * nn.relu(P1 * X + c1) + c2, label) + 1e-4 * nn.sum_squares(P1)
    fn = gradc.compile(loss, wrt=[P1, c1, P2, c2], data=[X, label])
    rng = np.random.default_rng(3)
    params = [rng.normal(scale=0.05, size=(M, D)), rng.normal(scale=0.1, size=(M, 1)),
              rng.normal(scale=0.1, size=(K, M)), np.zeros((K, 1))]
    data = (rng.normal(size=(50, D)), rng.integers(0, K, 50))
    return fn, params, data


def test_real_size_finite_differences(mnist_like):
    fn, params, data = mnist_like
    v, g = fn.value_and_grad(params, *data)
    assert [a.shape for a in g] == [p.shape for p in params]
    rng = np.random.default_rng(0)
    for _ in range(3):
        u = [rng.normal(size=p.shape) for p in params]
        eps = 1e-6
        fp = fn.value([p + eps * ui for p, ui in zip(params, u)], *data)
        fm = fn.value([p - eps * ui for p, ui in zip(params, u)], *data)
        fd = (fp - fm) / (2 * eps)
        an = sum(float(np.sum(gi * ui)) for gi, ui in zip(g, u))
        assert an == pytest.approx(fd, rel=1e-5, abs=1e-7)
        _, dot = fn.jvp(params, u, *data)
        assert dot == pytest.approx(an, rel=1e-10)


def test_jit_matches_python_path(mnist_like):
    fn, params, data = mnist_like
    py = gradc.compile(fn.expr, wrt=fn.wrt, data=fn.data, jit=False)
    v, g = fn.value_and_grad(params, *data)
    vp, gp = py.value_and_grad(params, *data)
    assert v == pytest.approx(vp, rel=1e-13)
    for a, b in zip(g, gp):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-14)


def test_cross_entropy_is_stable_for_huge_logits():
    z = sp.MatrixSymbol("z", 3, 1)
    fn = gradc.compile(nn.cross_entropy(z, label), wrt=[z], data=[label], reduce="sum", jit=False)
    logits = np.array([[1000.0], [0.0], [-1000.0]])
    v, (g,) = fn.value_and_grad([logits], np.array([1]))
    assert v == pytest.approx(1000.0)
    np.testing.assert_allclose(g[:, 0], [1.0, -1.0, 0.0], atol=1e-300)
    v, (g,) = fn.value_and_grad([logits], np.array([0]))
    assert v == 0.0 and np.all(np.isfinite(g))
    fn2 = gradc.compile(nn.logsumexp(z) + nn.sum(nn.softmax(z)), wrt=[z], jit=False)
    v, (g,) = fn2.value_and_grad([np.full((3, 1), 1e3)])
    assert v == pytest.approx(1e3 + np.log(3) + 1.0)
    np.testing.assert_allclose(g[:, 0], [1 / 3] * 3, rtol=1e-12)


def test_softplus_and_sigmoid_are_stable():
    z = sp.MatrixSymbol("z", 2, 1)
    fn = gradc.compile(nn.sum(nn.softplus(z)) + nn.sum(nn.sigmoid(z)), wrt=[z], jit=False)
    v, (g,) = fn.value_and_grad([np.array([[800.0], [-800.0]])])
    assert v == pytest.approx(801.0) and np.all(np.isfinite(g))
    np.testing.assert_allclose(g[:, 0], [1.0, 0.0], atol=1e-300)


def test_reduce_none_gives_per_example_values_but_no_matrix_gradients(rng):
    expr, wrt, data, consts = MODELS["tanh_mlp"]()
    fn = gradc.compile(expr, wrt=wrt, data=data, reduce=None, jit=False)
    params, args = _params(rng, wrt), _args(rng, data, consts, 4)
    vals = fn.value(params, *args)
    mean = gradc.compile(expr, wrt=wrt, data=data, jit=False).value(params, *args)
    assert vals.shape == (4,) and np.mean(vals) == pytest.approx(mean, rel=1e-13)
    with pytest.raises(GradcError, match="not available for reduce=None here"):
        fn.grad(params, *args)


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: gradc.compile(nn.tanh(W1 * x), wrt=[W1], data=[x], jit=False).grad(
            [np.ones((4, 3))], np.ones((2, 3))), "needs a scalar output"),
        (lambda: gradc.compile(nn.sum(W1), wrt=[W1], data=[sp.MatrixSymbol("D", 2, 2)]),
         "per-example data must be a vector"),
        (lambda: gradc.compile(nn.sum(sp.MatrixSymbol("Q", sp.Symbol("n"), 1)),
                               wrt=[sp.MatrixSymbol("Q", sp.Symbol("n"), 1)]), "symbolic shape"),
        (lambda: nn.cross_entropy(W2 * x, label), "not aligned"),
        (lambda: nn.cross_entropy(b2, W1), "shape"),
        (lambda: nn.sum(alpha), "needs a matrix expression"),
        (lambda: gradc.compile(nn.sum(sp.Inverse(A)), wrt=[A]), "Inverse"),
    ],
)
def test_shape_and_class_errors(make, match):
    with pytest.raises((GradcError, ShapeError), match=match):
        make()


def test_argument_errors():
    expr, wrt, data, _ = MODELS["tanh_mlp"]()
    fn = gradc.compile(expr, wrt=wrt, data=data, jit=False)
    rng = np.random.default_rng(0)
    params, (X, L) = _params(rng, wrt), _args(rng, data, [], 4)
    with pytest.raises(GradcError, match=r"params W1: expected shape \(4, 3\), got \(3, 4\)"):
        fn.value([params[0].T] + params[1:], X, L)
    with pytest.raises(GradcError, match="must be a sequence of 4 values"):
        fn.value(params[:3], X, L)
    with pytest.raises(GradcError, match=r"data x: expected shape \(n, 3\)"):
        fn.value(params, X[:, :2], L)
    with pytest.raises(GradcError, match=r"labels must be in 0..2 \(there are 3 classes\)"):
        fn.value(params, X, np.array([0, 1, 3, 0]))
    with pytest.raises(GradcError, match="labels must be integers"):
        fn.value(params, X, np.array([0, 1, 1.5, 0]))
    # vectors may be given flat, data as (n, L, 1)
    flat = [params[0], params[1].ravel(), params[2], params[3].ravel()]
    assert fn.value(flat, X[:, :, None], L) == fn.value(params, X, L)


def test_review_regressions():
    """Cases found in review: numbers in matrix products, x**x, scalar tangents of
    matrices, per-example names, infinite literals, constant labels."""
    Wm, z = sp.MatrixSymbol("Wm", 3, 2), sp.MatrixSymbol("z", 2, 1)
    f = gradc.compile(nn.sum(2 * Wm * z) - nn.sum(Wm * z / 2), wrt=[z], consts=[Wm], jit=False)
    (g,) = f.grad([np.ones((2, 1))], np.ones((3, 2)))
    np.testing.assert_allclose(g, np.full((2, 1), 4.5))
    w = sp.Symbol("w")
    assert gradc.compile(w**w, wrt=[w], jit=False).grad([2.0])[0] == pytest.approx(4 * (1 + np.log(2)))
    C, X = sp.MatrixSymbol("C", 2, 2), sp.MatrixSymbol("X", 2, 2)
    t, s = sp.Symbol("t"), sp.Symbol("s")
    centred = nn.sum(sp.HadamardProduct(C.applyfunc(sp.Lambda(t, t + s)), X))
    f = gradc.compile(centred, wrt=[s], consts=[C, X], jit=False)
    Xv = np.arange(4.0).reshape(2, 2)
    assert f.grad([0.3], np.ones((2, 2)), Xv)[0] == f.jvp([0.3], [1.0], np.ones((2, 2)), Xv)[1] == 6.0
    w1, xx, xi = sp.symbols("w1 xx xx_i")
    f = gradc.compile((w1 * xx - xi) ** 2, wrt=[w1], data=[xx, xi], jit=False)
    assert f.value([1.0], np.ones(3), np.zeros(3)) == 1.0
    assert gradc.compile(w1 + sp.exp(800), wrt=[w1], jit=False).value([1.0]) == np.inf
    with pytest.raises(GradcError, match="constant label"):
        gradc.compile(nn.cross_entropy(z, 2), wrt=[z], jit=False)


def test_jacobian_of_a_scalar_output_in_every_mode():
    w1, w2, t = sp.symbols("w1 w2 t")
    f = gradc.compile(sp.tanh(w1 * t) * w2, wrt=[w1, w2], data=[t], jit=False)
    T = np.array([0.1, 0.2])
    Js = [f.jacobian([0.5, 2.0], T, mode=m) for m in ("forward", "reverse", "optimal", "auto")]
    for J in Js:
        assert J.shape == (2, 2)  # (n, P): one row per example
        np.testing.assert_allclose(J, Js[0], rtol=1e-14)
    np.testing.assert_allclose(Js[0][:, 1], np.tanh(0.5 * T), rtol=1e-14)


def test_kernels_reuse_dead_arrays_and_fuse_bias_sums():
    expr, wrt, data, consts = MODELS["tanh_mlp"]()
    fn = gradc.compile(expr, wrt=wrt, data=data, jit=False)
    src = fn.source.split("def value_and_grad")[1].split("\ndef ")[0]
    # tanh(W1 x + b1) is written over the product W1 x, the backward tanh' over its input
    assert src.count("# over dead") >= 2
    # both bias gradients are column sums accumulated in the loops that make their terms
    assert "_rt.colsum" not in src and src.count("[j] += s") == 2
    # rows of 9 to 15 (10 classes) loop to a run-time count, so that LLVM vectorises them
    # rather than unrolling them to scalar code; rows of 3 and 4 are left as they are
    assert "_rt.opaque" not in fn.source
    Z = sp.MatrixSymbol("Z", 10, m)
    ten = gradc.compile(nn.cross_entropy(Z * nn.tanh(W1 * x), label), wrt=[Z, W1],
                        data=[x, label], jit=False)
    assert "for j in range(_rt.opaque(10)):" in ten.source
    check_against_sympy(ten, _params(np.random.default_rng(1), [Z, W1]),
                        np.random.default_rng(2).normal(size=(4, d)), np.arange(4) * 3,
                        rtol=1e-10)


def test_row_logsumexp_special_values():
    from gradc.codegen import runtime

    nan, inf = np.nan, np.inf
    rows = np.array([[nan, 1.0, 2.0], [1.0, nan, 2.0], [1.0, 2.0, nan], [inf, 1.0, 2.0],
                     [1.0, inf, 2.0], [-inf, -inf, -inf], [-inf, 0.0, 1.0], [1e3, 1e3, -1e3],
                     [nan, nan, nan], [-inf, inf, 0.0], [0.5, -0.25, 3.0]])
    got = runtime.rowlse(rows)
    want = runtime.python.rowlse(rows)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    ok = ~np.isnan(want)
    np.testing.assert_allclose(got[ok], want[ok], rtol=1e-15, atol=0)
    assert np.isnan(got[:3]).all() and got[3] == inf and got[5] == -inf
    assert got[7] == pytest.approx(1e3 + np.log(2.0), rel=1e-15)


def test_an_element_of_a_batch_of_one_is_not_overwritten():
    # with one example, h[:, 0] is contiguous: it must be a copy, not a view of h, or
    # tanh(h) written over the dead h changes it (review finding)
    from sympy.matrices.expressions.matexpr import MatrixElement

    h = W1 * x
    expr = nn.sum(nn.tanh(h)) + MatrixElement(h, 0, 0) ** 2
    fn = gradc.compile(expr, wrt=[W1], data=[x], jit=False)
    rng = np.random.default_rng(0)
    Wv, X = rng.normal(size=(m, d)), rng.normal(size=(1, d))
    check_against_sympy(fn, [Wv], X, rtol=1e-10)
    g1 = fn.grad([Wv], X)[0]
    g2 = fn.grad([Wv], np.repeat(X, 2, axis=0))[0]  # the mean of two equal examples
    np.testing.assert_allclose(g1, g2, rtol=1e-13)


@pytest.mark.parametrize("dtype", ["float16", "float32", ">f8", ">i8", "int32", "uint8",
                                   "longdouble"])
def test_label_dtypes(dtype):
    expr, wrt, data, consts = MODELS["tanh_mlp"]()
    fn = gradc.compile(expr, wrt=wrt, data=data, jit=False)
    rng = np.random.default_rng(0)
    params, (X, labels) = _params(rng, wrt), _args(rng, data, consts, 4)
    want = fn.value(params, X, labels)
    assert fn.value(params, X, labels.astype(dtype)) == want
    with pytest.raises(GradcError, match="labels must be in 0..2"):
        fn.value(params, X, (labels + 3).astype(dtype))
    if np.dtype(dtype).kind == "f":
        with pytest.raises(GradcError, match="labels must be integers"):
            fn.value(params, X, (labels + 0.5).astype(dtype))


def _per_example_matrix_models():
    xm = sp.MatrixSymbol("xm", 3, 1)
    Wm, vm = sp.MatrixSymbol("Wm", 4, 3), sp.MatrixSymbol("vm", 3, 1)
    Am, Bm = sp.MatrixSymbol("Am", 3, 3), sp.MatrixSymbol("Bm", 2, 3)
    outer = xm * xm.T  # a per-example 3x3 matrix
    return xm, {
        "outer": (nn.sum(nn.tanh(outer)) + nn.sum(Wm), [Wm]),
        "A outer A^T": (nn.sum(nn.tanh(Am * outer * Am.T)), [Am]),
        "W outer": (nn.sum(nn.tanh(Wm * outer)), [Wm]),
        "quadratic form": ((xm.T * (Am + outer) * xm)[0, 0], [Am]),
        "outer of a param": (nn.sum(nn.HadamardProduct(Wm * (xm * vm.T), Wm * (vm * xm.T))),
                             [Wm, vm]),
        "B outer^T B^T": (nn.sum(nn.tanh(Bm * outer.T * Bm.T)), [Bm]),
    }


@pytest.mark.parametrize("name", list(_per_example_matrix_models()[1]))
def test_per_example_matrix_intermediates(name):
    """Per-example matrices (outer products of per-example vectors, products with them,
    their transposes) in values, gradients and per-example Jacobians, against sympy."""
    from gradc.testing import check_against_sympy

    xm, models = _per_example_matrix_models()
    expr, wrt = models[name]
    rng = np.random.default_rng(11)
    X = rng.normal(size=(6, 3))
    params = [rng.normal(size=tuple(s.shape)) for s in wrt]
    check_against_sympy(gradc.compile(expr, wrt=wrt, data=[xm], jit=False), params, X)
    per = gradc.compile(expr, wrt=wrt, data=[xm], reduce=None, jit=False)
    J = per.jacobian(params, X)
    np.testing.assert_allclose(J, per.jacobian(params, X, mode="forward"), rtol=1e-12,
                               atol=1e-13)
    g = gradc.compile(expr, wrt=wrt, data=[xm], reduce="sum", jit=False).grad(params, X)
    np.testing.assert_allclose(J.sum(axis=0), np.concatenate([np.ravel(t) for t in g]),
                               rtol=1e-12, atol=1e-12)


def test_per_example_matrix_intermediates_compiled():
    """The numba kernels of batched products (one GEMM of the batch's rows, a per-example
    loop, a batch-summed product) and per-example transposes."""
    from gradc.testing import check_against_sympy

    xm, models = _per_example_matrix_models()
    expr = models["A outer A^T"][0] + models["B outer^T B^T"][0]
    wrt = [s for s in (sp.MatrixSymbol("Am", 3, 3), sp.MatrixSymbol("Bm", 2, 3))]
    rng = np.random.default_rng(12)
    params = [rng.normal(size=tuple(s.shape)) for s in wrt]
    check_against_sympy(gradc.compile(expr, wrt=wrt, data=[xm]), params, rng.normal(size=(9, 3)))
