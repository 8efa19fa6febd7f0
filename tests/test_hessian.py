"""Second derivatives: HVPs, dense and coloured Hessians, exact sparsity patterns, star
colourings, scipy.optimize objectives, bad input.  The maths runs with jit=False; a few
compiled functions (shared per module) check the kernels."""

import numba
import numpy as np
import pytest
import scipy.sparse as sps
import sympy as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize

import gradc
from gradc import nn
from gradc.colouring import (ColumnRecovery, column_colouring, is_star_colouring,
                             star_colouring)
from models import MODELS, x, y
from test_maths import _data, expressions, P


def _flat_d2(expr, a, b):
    """d2 expr / da db under gradc's conventions: derivatives of steps are 0."""
    d = sp.diff(sp.diff(expr, a), b)
    d = d.replace(lambda e: isinstance(e, sp.DiracDelta), lambda e: sp.S.Zero)
    return d.replace(lambda e: isinstance(e, sp.Derivative)
                     and isinstance(e.expr, (sp.floor, sp.ceiling, sp.sign, sp.Heaviside)),
                     lambda e: sp.S.Zero)


def sympy_hessian(expr, wrt, data=(), consts=()):
    """(symbolic Hessian, evaluator of the per-example Hessians (n, P, P)); symbols are
    taken as real (as gradc takes them), so |t| differentiates to sign(t)."""
    real = {s: sp.Symbol(s.name, real=True) for s in (*wrt, *data, *consts)}
    expr = expr.xreplace(real)
    wrt, data, consts = ([real[s] for s in group] for group in (wrt, data, consts))
    H = sp.Matrix(len(wrt), len(wrt), lambda i, j: _flat_d2(expr, wrt[i], wrt[j]))
    f = sp.lambdify([list(wrt), list(data), list(consts)], H, "numpy")

    def evaluate(params, *args):
        nd = len(data)
        rows, cs = args[:nd], list(args[nd:])
        n = len(rows[0]) if nd else 1
        out = np.empty((n, len(wrt), len(wrt)))
        for i in range(n):
            out[i] = np.array(f(list(params), [r[i] for r in rows], cs), dtype=float)
        return out

    return H, evaluate


def _case(name, rng, n=7):
    expr, wrt, data, consts = MODELS[name]()
    params = rng.uniform(0.3, 1.4, len(wrt))
    args = _data(rng, data, n) + [0.3] * len(consts)
    return expr, wrt, data, consts, params, args


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("reduce", ["mean", "sum", None])
def test_hvp_and_hessian_against_sympy(name, reduce, rng):
    expr, wrt, data, consts, params, args = _case(name, rng)
    fn = gradc.compile(expr, wrt, data, consts, reduce=reduce, jit=False)
    H, evaluate = sympy_hessian(expr, wrt, data, consts)
    per = evaluate(params, *args)
    ref = per if reduce is None else per.sum(0) if reduce == "sum" else per.mean(0)
    scale = 1.0 + np.abs(ref).max()
    for method in ("dense", "coloured"):
        got = fn.hessian(params, *args, method=method)
        np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-12 * scale)
        assert (got == np.swapaxes(got, -1, -2)).all()  # exactly symmetric
    v = rng.normal(size=len(wrt))
    value, g, hv = fn.value_grad_hvp(params, v, *args)
    np.testing.assert_allclose(hv, ref @ v, rtol=1e-10, atol=1e-12 * scale * np.abs(v).sum())
    np.testing.assert_array_equal(g, fn.grad(params, *args))
    assert np.array_equal(fn.hvp(params, v, *args), hv)
    # the structural pattern is sympy's symbolic one, exactly
    want = np.array([[H[i, j] != 0 for j in range(len(wrt))] for i in range(len(wrt))])
    np.testing.assert_array_equal(fn.hessian_sparsity().toarray(), want)


def test_hvp_against_finite_differences_of_the_gradient(rng):
    expr, wrt, data, consts, params, args = _case("logistic_net", rng, n=11)
    fn = gradc.compile(expr, wrt, data, consts, jit=False)
    v = rng.normal(size=len(wrt))
    eps = 1e-5
    fd = (fn.grad(params + eps * v, *args) - fn.grad(params - eps * v, *args)) / (2 * eps)
    np.testing.assert_allclose(fn.hvp(params, v, *args), fd, rtol=1e-6, atol=1e-8)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(expressions, st.integers(0, 2**31 - 1))
def test_random_expressions_hessians_against_sympy(expr, seed):
    wrt = [s for s in P if s in expr.free_symbols] or [P[0]]
    fn = gradc.compile(expr, wrt=wrt, data=[x, y], reduce=None, jit=False)
    rng = np.random.default_rng(seed)
    params = rng.uniform(-1.5, 1.5, len(wrt))
    X, Y = rng.uniform(-2, 2, 4), rng.uniform(-2, 2, 4)
    H, evaluate = sympy_hessian(expr, wrt, [x, y])
    with np.errstate(all="ignore"):
        ref = evaluate(params, X, Y)
    got = fn.hessian(params, X, Y)
    finite = np.abs(ref[np.isfinite(ref)])
    scale = 1.0 + (finite.max() if finite.size else 0.0)
    np.testing.assert_allclose(got, ref, rtol=1e-8, atol=1e-10 * scale, equal_nan=True)
    pattern = fn.hessian_sparsity().toarray()
    want = np.array([[H[i, j] != 0 for j in range(len(wrt))] for i in range(len(wrt))])
    np.testing.assert_array_equal(pattern, want)


# ----------------------------------------------------------------------------------------
# Exact sparsity and colouring


def _chain(n):
    xs = sp.symbols(f"x0:{n}")
    return sp.Add(*[100 * (xs[i + 1] - xs[i] ** 2) ** 2 + (1 - xs[i]) ** 2
                    for i in range(n - 1)]), list(xs)


def _chain_hessian(x0):
    n = x0.size
    d = np.zeros(n)
    d[:-1] += 2 + 1200 * x0[:-1] ** 2 - 400 * x0[1:]
    d[1:] += 200
    off = -400 * x0[:-1]
    return np.diag(d) + np.diag(off, 1) + np.diag(off, -1)


def test_chain_pattern_is_tridiagonal_and_three_colours():
    e, xs = _chain(300)
    fn = gradc.compile(e, xs, jit=False)
    pat = fn.hessian_sparsity()
    dense = np.abs(np.subtract.outer(np.arange(300), np.arange(300))) <= 1
    np.testing.assert_array_equal(pat.toarray(), dense)
    plan = fn.hessian_plan
    assert plan.choice == "coloured" and plan.colours == 3
    assert is_star_colouring(pat, plan.colour)
    assert "coloured" in str(plan) and "<- chosen" in str(plan)


def test_arrow_and_block_patterns():
    """An arrow (one parameter meeting all others) needs 2 star colours, not n."""
    a = sp.symbols("a0:20")
    e = sp.Add(*[a[0] * a[i] for i in range(1, 20)]) + sp.Add(*[t ** 2 for t in a])
    fn = gradc.compile(e, list(a), jit=False)
    plan = fn.hessian_plan
    assert plan.colours == 2 and is_star_colouring(plan.pattern, plan.colour)
    p = np.linspace(0.1, 2.0, 20)
    ref = 2 * np.eye(20)
    ref[0, 1:] = ref[1:, 0] = 1.0
    np.testing.assert_array_equal(fn.hessian(p, method="coloured"), ref)


def _random_symmetric(rng, n, density):
    m = rng.random((n, n)) < density
    m = m | m.T | np.eye(n, dtype=bool)
    return sps.csr_matrix(m)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40), st.floats(0.0, 0.5), st.integers(0, 2**31 - 1))
def test_star_colouring_is_valid_and_recovers(n, density, seed):
    rng = np.random.default_rng(seed)
    pat = _random_symmetric(rng, n, density)
    colour = star_colouring(pat)
    assert is_star_colouring(pat, colour)
    # recovery of a random symmetric matrix with this pattern from H @ seed
    from gradc.colouring import StarRecovery, seed_matrix

    vals = sps.triu(pat, format="coo")
    h = sps.coo_matrix((rng.normal(size=vals.nnz), (vals.row, vals.col)), shape=(n, n))
    h = (h + sps.triu(h, 1).T).toarray()
    prods = (h @ seed_matrix(colour)).T
    rec = StarRecovery(pat, colour)
    got = sps.csr_matrix((rec.values(prods), rec.pattern.indices, rec.pattern.indptr),
                         shape=(n, n)).toarray()
    np.testing.assert_allclose(got, h, rtol=1e-12, atol=1e-12)


def test_star_check_rejects_two_coloured_paths():
    path = sps.csr_matrix(np.array([[1, 1, 0, 0], [1, 1, 1, 0], [0, 1, 1, 1], [0, 0, 1, 1]]))
    assert not is_star_colouring(path, [0, 1, 0, 1])  # a proper colouring, not a star one
    assert not is_star_colouring(path, [0, 0, 1, 2])  # not even proper
    assert is_star_colouring(path, [0, 1, 2, 0])


def test_column_colouring_recovers_a_jacobian(rng):
    m = sps.random(30, 25, density=0.1, random_state=3, format="csr")
    pat = m.astype(bool)
    colour = column_colouring(pat)
    rows = [set(pat[i].indices) for i in range(30)]
    assert all(len({colour[j] for j in r}) == len(r) for r in rows)
    seed = np.zeros((25, colour.max() + 1))
    seed[np.arange(25), colour] = 1
    rec = ColumnRecovery(pat, colour)
    got = sps.csr_matrix((rec.values((m @ seed).T), rec.pattern.indices, rec.pattern.indptr),
                         shape=m.shape)
    np.testing.assert_allclose(got.toarray(), m.toarray(), rtol=1e-14)


def test_jacobian_sparsity_of_a_vector_output():
    a = sp.MatrixSymbol("a", 3, 1)
    W = sp.MatrixSymbol("W", 2, 3)
    fn = gradc.compile(nn.tanh(W * a), wrt=[W, a], jit=False)
    pat = fn.jacobian_sparsity().toarray()
    # output k depends on row k of W and on all of a
    want = np.zeros((2, 9), dtype=bool)
    want[0, 0:3] = want[1, 3:6] = True
    want[:, 6:9] = True
    np.testing.assert_array_equal(pat, want)


# ----------------------------------------------------------------------------------------
# Matrix parameters


def _mlp(hidden=4, inputs=5):
    xm = sp.MatrixSymbol("x", inputs, 1)
    label = sp.Symbol("label", integer=True)
    W1, b1 = sp.MatrixSymbol("W1", hidden, inputs), sp.MatrixSymbol("b1", hidden, 1)
    W2 = sp.MatrixSymbol("W2", 3, hidden)
    loss = nn.cross_entropy(W2 * nn.tanh(W1 * xm + b1), label) + 0.01 * nn.sum_squares(W2)
    return loss, [W1, b1, W2], [xm, label]


def test_matrix_parameter_hessian_against_explicit_oracle(rng):
    from gradc.testing import explicit

    loss, wrt, data = _mlp(hidden=2, inputs=3)
    fn = gradc.compile(loss, wrt, data, jit=False)
    params = [rng.normal(scale=0.5, size=s.shape) for s in wrt]
    X, L = rng.normal(size=(6, 3)), rng.integers(0, 3, 6).astype(float)
    got = fn.hessian(params, X, L)
    e, elements = explicit(loss)
    flat = [el for s in wrt for el in elements[s]]
    xs = list(elements[data[0]])
    lab = data[1]
    Hs = sp.hessian(e, flat)
    f = sp.lambdify([flat, xs, lab], Hs, "numpy")
    ref = np.mean([np.array(f(fn.pack(params), X[i], L[i]), float) for i in range(6)], axis=0)
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-12)
    # HVP laid out like the gradient; hessian @ v
    v = [rng.normal(size=s.shape) for s in wrt]
    hv = fn.hvp(params, v, X, L)
    assert [h.shape for h in hv] == [tuple(s.shape) for s in wrt]
    np.testing.assert_allclose(fn.pack(hv), got @ fn.pack(v), rtol=1e-10, atol=1e-12)
    pat = fn.hessian_sparsity().toarray()
    assert not (np.abs(ref) > 0)[~pat].any()  # no nonzero outside the pattern


# ----------------------------------------------------------------------------------------
# Compiled kernels (shared)


@pytest.fixture(scope="module")
def chain_fn():
    e, xs = _chain(200)
    return gradc.compile(e, xs)


def test_compiled_chain_sparse_hessian(chain_fn):
    x0 = np.random.default_rng(1).normal(size=200)
    h = chain_fn.hessian(x0, sparse=True)
    assert sps.issparse(h) and h.nnz == 3 * 200 - 2
    np.testing.assert_allclose(h.toarray(), _chain_hessian(x0), rtol=1e-13, atol=1e-12)
    auto = chain_fn.hessian(x0, sparse="auto")
    assert sps.issparse(auto)
    np.testing.assert_array_equal(chain_fn.hessian(x0, method="dense"), h.toarray())


def test_kernels_hvp_from_njit_and_export(chain_fn, tmp_path):
    hvp = chain_fn.kernels.hvp

    @numba.njit
    def newton_direction_norm(p, v):
        return np.sqrt(np.sum(hvp(p, v) ** 2))

    x0 = np.linspace(-1, 1, 200)
    v = np.ones(200)
    want = np.sqrt(np.sum(chain_fn.hvp(x0, v) ** 2))
    assert newton_direction_norm(x0, v) == pytest.approx(want, rel=1e-14)
    text = chain_fn.export(tmp_path / "k.py").read_text()
    assert "def value_grad_hvp(" in text and "hvp = _kernel(hvp)" in text


def test_parallel_hvp_is_identical(rng):
    expr, wrt, data, consts, params, args = _case("tanh_net", rng, n=3000)
    fn = gradc.compile(expr, wrt, data, consts, jit=False)
    fp = gradc.compile(expr, wrt, data, consts, jit=False, parallel=True)
    v = rng.normal(size=len(wrt))
    assert np.array_equal(fn.hvp(params, v, *args), fp.hvp(params, v, *args))


# ----------------------------------------------------------------------------------------
# scipy.optimize


def test_objective_drives_trust_ncg_and_newton_cg(chain_fn):
    obj = gradc.Objective(chain_fn)
    x0 = np.full(200, 1.2)
    dense_hess = lambda x: sps.csr_matrix(obj.hess(x)).toarray()  # noqa: E731
    for method, kw, opts in (("trust-ncg", {"hessp": obj.hessp}, {"gtol": 1e-9}),
                             ("Newton-CG", {"hessp": obj.hessp}, {"xtol": 1e-12}),
                             ("trust-exact", {"hess": dense_hess}, {"gtol": 1e-9})):
        res = minimize(obj.fun, x0, jac=obj.jac, method=method, options=opts, **kw)
        assert res.success and res.nit < 60, (method, res.message, res.nit)
        np.testing.assert_allclose(res.x, np.ones(200), atol=1e-5)


def test_objective_remembers_the_last_point(rng):
    expr, wrt, data, consts, params, args = _case("ridge", rng)
    fn = gradc.compile(expr, wrt, data, consts, jit=False)
    obj = gradc.Objective(fn, *args)
    x0 = obj.pack(params)
    v, g = obj.fun(x0), obj.jac(x0)
    assert obj.calls["value_and_grad"] == 1
    assert (v, g.tolist()) == (obj.value_and_grad(x0)[0], fn.grad(params, *args).tolist())
    assert obj.calls["value_and_grad"] == 1
    obj.fun(x0 + 1.0)
    assert obj.calls["value_and_grad"] == 2
    res = minimize(obj.value_and_grad, x0, jac=True, hess=obj.hess, method="trust-constr")
    assert res.success
    np.testing.assert_allclose(obj.jac(res.x), 0.0, atol=1e-7)


def test_pack_unpack_matrix_parameters(rng):
    loss, wrt, data = _mlp()
    fn = gradc.compile(loss, wrt, data, jit=False)
    params = [rng.normal(size=s.shape) for s in wrt]
    x0 = fn.pack(params)
    assert x0.shape == (fn.size,) == (4 * 5 + 4 + 3 * 4,)
    assert np.array_equal(x0[:20], params[0].reshape(-1))  # row-major, wrt order
    back = fn.unpack(x0)
    assert all(np.array_equal(a, b) for a, b in zip(back, params))
    obj = gradc.Objective(fn, rng.normal(size=(5, 5)), np.zeros(5))
    g = obj.jac(x0)
    assert np.array_equal(g, fn.pack(fn.grad(params, *obj.args)))


# ----------------------------------------------------------------------------------------
# Second-derivative conventions: 0 on flat pieces, the same by every method

t, s_ = sp.symbols("t s")
SECOND_CASES = [
    (sp.Abs(t) * s_, [0.0, 1.0], [[0, 1 * 0], [0, 0]]),  # |t|'(0) = 0, |t|'' = 0
    (sp.Abs(t) * s_, [-2.0, 1.0], [[0, -1], [-1, 0]]),
    (sp.Max(t, 0) ** 1 * t, [0.0, 1.0], [[0, 0], [0, 0]]),  # relu(t) t at 0: relu' = 0
    (sp.Max(t, 0) * t, [1.5, 1.0], [[2, 0], [0, 0]]),
    (sp.Max(t, 0) * s_ ** 2, [-1.0, 1.0], [[0, 0], [0, 0]]),
    (sp.Piecewise((t ** 3, t > 0), (s_ * t, True)), [-1.0, 2.0], [[0, 1], [1, 0]]),
    (sp.Piecewise((t ** 3, t > 0), (s_ * t, True)), [1.0, 2.0], [[6, 0], [0, 0]]),
    (sp.sign(t) * s_ ** 2, [0.5, 3.0], [[0, 0], [0, 2]]),
    (sp.Min(t, s_) ** 2, [1.0, 2.0], [[2, 0], [0, 0]]),
]


@pytest.mark.parametrize("expr,at,expected", SECOND_CASES, ids=[str(c[:2]) for c in SECOND_CASES])
def test_second_derivative_conventions(expr, at, expected):
    fn = gradc.compile(expr, wrt=[t, s_], jit=False)
    want = np.array(expected, dtype=float)
    for method in ("dense", "coloured"):
        np.testing.assert_array_equal(fn.hessian(at, method=method), want)
    for k in range(2):
        np.testing.assert_array_equal(fn.hvp(at, np.eye(2)[k]), want[:, k])


# ----------------------------------------------------------------------------------------
# Bad input


def test_bad_input_names_the_argument(rng):
    expr, wrt, data, consts, params, args = _case("tanh_net", rng)
    fn = gradc.compile(expr, wrt, data, consts, jit=False)
    with pytest.raises(gradc.GradcError, match="tangent has shape"):
        fn.hvp(params, np.ones(3), *args)
    with pytest.raises(gradc.GradcError, match="sparse must be"):
        fn.hessian(params, *args, sparse="yes")
    with pytest.raises(gradc.GradcError, match="method must be"):
        fn.hessian(params, *args, method="fast")
    fpe = gradc.compile(expr, wrt, data, consts, reduce=None, jit=False)
    with pytest.raises(gradc.GradcError, match="per-example Hessians"):
        fpe.hessian(params, *args, sparse=True)
    with pytest.raises(gradc.GradcError, match="reduced function"):
        gradc.Objective(fpe, *args)
    obj = gradc.Objective(fn, *args)
    with pytest.raises(gradc.GradcError, match="p must be a flat vector of 10"):
        obj.hessp(params, np.ones(4))
    with pytest.raises(gradc.GradcError, match="x must be a flat vector of 10"):
        obj.fun(np.ones((2, 5)))
    with pytest.raises(gradc.GradcError, match="flat vector of 10"):
        fn.unpack(np.ones(11))
    W = sp.MatrixSymbol("W", 2, 2)
    fm = gradc.compile(nn.tanh(W), wrt=[W], jit=False)
    for call in (lambda: fm.hessian([np.eye(2)]), lambda: fm.hessian_sparsity(),
                 lambda: fm.hvp([np.eye(2)], [np.eye(2)])):
        with pytest.raises(gradc.GradcError, match="scalar output"):
            call()


# ----------------------------------------------------------------------------------------
# Coloured (sparse) Jacobians


def test_coloured_jacobian_equals_the_planned_one(rng):
    xm = sp.MatrixSymbol("x", 6, 1)
    A = sp.MatrixSymbol("A", 6, 6)
    expr = nn.tanh(A * xm) + sp.HadamardProduct(xm, xm)
    fn = gradc.compile(expr, wrt=[xm], consts=[A], jit=False)
    band = np.triu(np.tril(rng.normal(size=(6, 6)), 1), -1)  # the values; the pattern is dense
    x0 = [rng.normal(size=(6, 1))]
    want = fn.jacobian(x0, band, mode="forward")
    np.testing.assert_allclose(fn.jacobian(x0, band, mode="coloured"), want, rtol=1e-13,
                               atol=1e-15)
    # A is a const symbol: the pattern is structural, so dense in x
    assert fn.jacobian_sparsity().nnz == 36


def test_sparse_jacobian_of_an_elementwise_map():
    xm = sp.MatrixSymbol("x", 50, 1)
    fn = gradc.compile(sp.HadamardProduct(xm, xm) + nn.tanh(xm), wrt=[xm], jit=False)
    x0 = np.linspace(-1, 1, 50).reshape(50, 1)
    J = fn.jacobian([x0], sparse=True)
    assert sps.issparse(J) and J.nnz == 50
    assert fn._jacobian_colouring().ncolours == 1  # one JVP for the whole diagonal
    assert fn._coloured_jacobian_wins()  # so mode="auto" colours too
    np.testing.assert_array_equal(fn.jacobian([x0]), J.toarray())
    np.testing.assert_allclose(fn.jacobian([x0], mode="forward"), J.toarray(), rtol=1e-14)
    np.testing.assert_allclose(J.diagonal(), 2 * x0[:, 0] + 1 - np.tanh(x0[:, 0]) ** 2,
                               rtol=1e-14)


def test_jacobian_with_respect_to_matrix_parameters(rng):
    W = sp.MatrixSymbol("W", 3, 4)
    b = sp.MatrixSymbol("b", 3, 1)
    xm = sp.MatrixSymbol("x", 4, 1)
    fn = gradc.compile(nn.tanh(W * xm + b), wrt=[W, b], data=[xm], reduce=None, jit=False)
    params = [rng.normal(size=(3, 4)), rng.normal(size=(3, 1))]
    X = rng.normal(size=(5, 4))
    J = fn.jacobian(params, X)
    assert J.shape == (5, 3, 15)
    flat = fn.pack(params)
    eps = 1e-6
    for i in range(5):
        f = lambda z: np.tanh(z[:12].reshape(3, 4) @ X[i] + z[12:])  # noqa: E731
        fd = np.array([(f(flat + eps * e) - f(flat - eps * e)) / (2 * eps)
                       for e in np.eye(15)]).T
        np.testing.assert_allclose(J[i], fd, rtol=1e-7, atol=1e-9)
    pat = fn.jacobian_sparsity().toarray()
    assert pat[0, :4].all() and not pat[0, 4:12].any() and pat[0, 12] and not pat[0, 13:].any()
    # sparse: the examples stacked on the rows, each example's pattern
    S = fn.jacobian(params, X, sparse=True)
    assert sps.issparse(S) and S.shape == (15, 15)
    np.testing.assert_array_equal(S.toarray(), J.reshape(15, 15))
    np.testing.assert_array_equal(fn.jacobian_sparsity(X).toarray(),
                                  np.tile(pat, (5, 1)))
    # a function that reduces over the batch: the Jacobian of the per-example value
    mean = gradc.compile(nn.tanh(W * xm + b), wrt=[W, b], data=[xm], jit=False)
    np.testing.assert_allclose(mean.jacobian(params, X), J, rtol=1e-14)
    with pytest.raises(gradc.GradcError, match="reduce=None"):
        mean.jacobian_sparsity(X)


@pytest.mark.parametrize("width", [2, 3])
def test_hvp_blocks_give_the_same_hessian(width, rng, monkeypatch):
    """Blocks of directions (one shared primal and reverse pass) against one HVP per
    direction, for scalar and matrix parameters; the last block is padded."""
    expr, wrt, data, consts, params, args = _case("logistic_net", rng)
    fn = gradc.compile(expr, wrt, data, consts, jit=False)
    loss, mwrt, mdata = _mlp(hidden=2, inputs=3)
    fm = gradc.compile(loss, mwrt, mdata, jit=False)
    mparams = [rng.normal(size=s.shape) for s in mwrt]
    margs = (rng.normal(size=(6, 3)), rng.integers(0, 3, 6).astype(float))
    want = fn.hessian(params, *args, method="dense"), fm.hessian(mparams, *margs)
    monkeypatch.setattr(gradc.CompiledFunction, "HVP_BLOCK", width)
    got = fn.hessian(params, *args, method="dense"), fm.hessian(mparams, *margs)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-13, atol=1e-15)
    assert ("hvp_block", width) in fn._second and ("hvp_block", width) in fm._second


def test_row_colouring_by_vjps_for_wide_jacobians(rng):
    """Few outputs of many inputs: one VJP per row colour beats one JVP per column."""
    from gradc.hessian import jacobian_sweeps

    xm = sp.MatrixSymbol("x", 12, 1)
    A = sp.MatrixSymbol("A", 2, 12)
    fn = gradc.compile(nn.tanh(A * xm), wrt=[xm], consts=[A], jit=False)
    assert hasattr(fn.kernels, "vjp")
    assert jacobian_sweeps(fn) == "rows"
    assert fn._jacobian_colouring("rows").ncolours == 2
    assert fn._jacobian_colouring("columns").ncolours == 12
    Av, x0 = rng.normal(size=(2, 12)), [rng.normal(size=(12, 1))]
    np.testing.assert_allclose(fn.jacobian(x0, Av, mode="coloured"),
                               fn.jacobian(x0, Av, mode="forward"), rtol=1e-13, atol=1e-15)


def test_row_recovery_of_a_random_sparse_matrix():
    from gradc.colouring import RowRecovery

    m = sps.random(20, 30, density=0.15, random_state=5, format="csr")
    pat = m.astype(bool)
    colour = column_colouring(pat.T.tocsr())
    seed = np.zeros((20, colour.max() + 1))
    seed[np.arange(20), colour] = 1
    rec = RowRecovery(pat, colour)
    got = sps.csr_matrix((rec.values(seed.T @ m.toarray()), rec.pattern.indices,
                          rec.pattern.indptr), shape=m.shape)
    np.testing.assert_allclose(got.toarray(), m.toarray(), rtol=1e-14)


def test_power_cross_derivative_at_a_zero_exponent(rng):
    """d2 b**p / db dp = b**(p-1) (1 + p log b) is 1/b at p = 0 (a guard on p = 0 alone
    in d/db made it 0); also inside a model with data."""
    b, p = sp.symbols("b p")
    f = gradc.compile(b ** p, wrt=[b, p], jit=False)
    want = np.array(sp.hessian(b ** p, [b, p]).subs({b: 2, p: 0}), dtype=float)
    np.testing.assert_allclose(f.hessian([2.0, 0.0]), want, rtol=1e-14)
    w = sp.Symbol("w")
    expr = ((w * x) ** p - y) ** 2
    fn = gradc.compile(expr, wrt=[w, p], data=[x, y], jit=False)
    X, Y = rng.uniform(0.5, 2.0, 6), rng.uniform(0.5, 2.0, 6)
    _, evaluate = sympy_hessian(expr, [w, p], [x, y])
    np.testing.assert_allclose(fn.hessian([1.0, 0.0], X, Y), evaluate([1.0, 0.0], X, Y).mean(0),
                               rtol=1e-12, atol=1e-14)


def test_small_api_edges(rng):
    expr, wrt, data, consts, params, args = _case("ridge", rng)
    fn = gradc.compile(expr, wrt, data, consts, jit=False)
    assert sps.issparse(fn.hessian(params, *args, sparse=np.True_))
    assert fn.warmup("hvp") is fn  # one name as a string
    loss, mwrt, mdata = _mlp(hidden=2, inputs=3)
    per = gradc.compile(loss, mwrt, mdata, reduce=None, jit=False)
    for call in (lambda: per.hessian_plan, lambda: per.hessian([np.zeros(s.shape) for s in mwrt],
                                                               np.zeros((2, 3)), np.zeros(2))):
        with pytest.raises(gradc.GradcError, match="not available for reduce=None"):
            call()


def test_plan_shows_measured_times():
    e, xs = _chain(30)
    fn = gradc.compile(e, xs, jit=False)
    assert "measured" in str(fn.hessian_plan).splitlines()[1]
    rows = {line.split()[0]: line for line in str(fn.hessian_plan).splitlines()[2:4]}
    assert rows["dense"].split()[-1] == "-" and rows["coloured"].split()[-3] == "-"
    fn.hessian(np.ones(30), method="coloured")
    plan = fn.hessian_plan
    assert plan.measured[("coloured", 1)] > 0 and ("dense", 1) not in plan.measured
    rows = {line.split()[0]: line for line in str(plan).splitlines()[2:4]}
    assert rows["dense"].split()[-1] == "-" and rows["coloured"].split()[-3] != "-"


def test_threads_calling_one_function_get_the_serial_results(chain_fn):
    """The kernels release the GIL (nogil); the cached second-order state (pattern,
    colouring, plans) is shared: many threads at once give exactly the serial answers."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(7)
    points = [rng.normal(size=200) for _ in range(24)]

    def work(x0):
        return (chain_fn.grad(x0), chain_fn.hvp(x0, x0[::-1].copy()),
                chain_fn.hessian(x0, sparse=True).toarray())

    serial = [work(x0) for x0 in points]
    with ThreadPoolExecutor(max_workers=8) as pool:
        threaded = list(pool.map(work, points))
    for a, b in zip(serial, threaded):
        for u, v in zip(a, b):
            assert np.array_equal(u, v)
    # a fresh function: the threads race to build the pattern, colouring and plan
    e, xs = _chain(40)
    fresh = gradc.compile(e, xs, jit=False)
    small = [rng.normal(size=40) for _ in range(16)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        got = list(pool.map(lambda z: fresh.hessian(z, sparse=True).toarray(), small))
    for z, h in zip(small, got):
        np.testing.assert_array_equal(h, fresh.hessian(z, sparse=True).toarray())
        np.testing.assert_allclose(h, _chain_hessian(z), rtol=1e-13, atol=1e-12)
