"""Gathers by data index: an integer data symbol indexes a parameter or const IndexedBase
(``C[ci, k]``).  Values and gradients against the sympy.diff oracle (each example's
expression with its index values substituted), finite differences, forward = reverse,
repeated indices (the scatter-add), second derivatives, ``parallel=True`` against serial,
and bad index values and bad declarations, each a GradcError."""

import numpy as np
import pytest
import sympy as sp

import gradc
from gradc.testing import check_against_sympy, check_grads

k, di = sp.symbols("k di", integer=True)
ci, pi = sp.symbols("ci pi", integer=True)
RNG = np.random.default_rng(11)


def _rows():
    """A camera-and-point model: rows of two tables picked per example, an index used as
    a number too, and a window read at key + offset."""
    C = sp.IndexedBase("C", shape=(4, 3))
    P = sp.IndexedBase("P", shape=(5, 2))
    T = sp.IndexedBase("T", shape=(6,))
    y = sp.Symbol("y")
    r = sp.Sum(C[ci, k] * P[pi, 0], (k, 0, 2)) + sp.tanh(C[ci, 1] * P[pi, 1]) - y
    window = sp.Sum(T[ci + di] ** 2 * (di + 1), (di, 0, 2))
    return r ** 2 + window + ci * P[pi, 1] ** 2, [C, P, T], [ci, pi, y]


def _point(n=9):
    # repeated indices on purpose: the scatter-add must add every example's share
    cis = np.array([0, 2, 2, 3, 0, 2, 1, 3, 3.0])[:n]
    pis = np.array([4, 4, 0, 0, 4, 2, 2, 3, 0.0])[:n]  # row 1 unused
    params = [RNG.normal(size=(4, 3)) * 0.5, RNG.normal(size=(5, 2)) * 0.5,
              RNG.normal(size=6) * 0.5]
    return params, [cis, pis, RNG.normal(size=n)]


@pytest.fixture(scope="module")
def rows_jit():
    loss, wrt, data = _rows()
    return gradc.compile(loss, wrt=wrt, data=data, reduce="sum")


@pytest.mark.parametrize("reduce", ["sum", "mean"])
def test_against_sympy_oracle(reduce):
    loss, wrt, data = _rows()
    fn = gradc.compile(loss, wrt=wrt, data=data, reduce=reduce, jit=False)
    params, args = _point()
    check_against_sympy(fn, params, *args, rtol=1e-10)
    check_grads(fn, params, *args)


def test_jit_matches_oracle_and_python(rows_jit):
    loss, wrt, data = _rows()
    params, args = _point()
    check_against_sympy(rows_jit, params, *args, rtol=1e-10)
    py = gradc.compile(loss, wrt=wrt, data=data, reduce="sum", jit=False)
    v, g = rows_jit.value_and_grad(params, *args)
    v2, g2 = py.value_and_grad(params, *args)
    np.testing.assert_allclose(v, v2, rtol=1e-13)
    for a, b in zip(g, g2):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_scatter_add_sums_repeated_indices(rows_jit):
    """The gradient of C for a batch is the sum of the gradients of its examples, one at
    a time (rows hit by several examples get every share)."""
    params, args = _point()
    _, g = rows_jit.value_and_grad(params, *args)
    total = [np.zeros_like(p) for p in params]
    for e in range(len(args[0])):
        _, ge = rows_jit.value_and_grad(params, *[a[e:e + 1] for a in args])
        total = [t + x for t, x in zip(total, ge)]
    for a, b in zip(g, total):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    # rows no example picks get exactly zero
    unused = sorted(set(range(5)) - set(args[1].astype(int)))
    assert unused and np.all(g[1][unused] == 0.0)


def test_forward_equals_reverse_and_hvp(rows_jit):
    params, args = _point()
    t = [RNG.normal(size=p.shape) for p in params]
    _, g = rows_jit.value_and_grad(params, *args)
    _, dot = rows_jit.jvp(params, t, *args)
    np.testing.assert_allclose(dot, sum(np.sum(a * b) for a, b in zip(g, t)), rtol=1e-12)
    hv = rows_jit.hvp(params, t, *args)
    eps = 1e-6
    up = rows_jit.grad([p + eps * d for p, d in zip(params, t)], *args)
    dn = rows_jit.grad([p - eps * d for p, d in zip(params, t)], *args)
    for h, a, b in zip(hv, up, dn):
        np.testing.assert_allclose(h, (a - b) / (2 * eps), rtol=1e-6, atol=1e-8)
    H = rows_jit.hessian(params, *args)
    flat_t = np.concatenate([np.ravel(d) for d in t])
    np.testing.assert_allclose(H @ flat_t, np.concatenate([np.ravel(h) for h in hv]),
                               rtol=1e-10, atol=1e-12)


def test_parallel_matches_serial_and_is_deterministic(rows_jit):
    loss, wrt, data = _rows()
    par = gradc.compile(loss, wrt=wrt, data=data, reduce="sum", parallel=True)
    params = [RNG.normal(size=(4, 3)), RNG.normal(size=(5, 2)), RNG.normal(size=6)]
    n = 5000
    args = [RNG.integers(0, 4, n).astype(float), RNG.integers(0, 5, n).astype(float),
            RNG.normal(size=n)]
    v, g = rows_jit.value_and_grad(params, *args)
    v1, g1 = par.value_and_grad(params, *args)
    v2, g2 = par.value_and_grad(params, *args)
    np.testing.assert_allclose(v1, v, rtol=1e-12)
    for a, b, c in zip(g, g1, g2):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-12)
        assert np.array_equal(b, c)  # the scatter-add runs in example order


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("bad, shown", [(4.0, "= 4"), (-1.0, "= -1"), (1.5, "non-integer"),
                                        (np.nan, "= nan")])
def test_bad_index_values_are_errors(rows_jit, jit, bad, shown):
    loss, wrt, data = _rows()
    fn = rows_jit if jit else gradc.compile(loss, wrt=wrt, data=data, reduce="sum", jit=False)
    params, args = _point()
    args[0] = args[0].copy()
    args[0][6] = bad
    for call in (lambda: fn.value(params, *args), lambda: fn.value_and_grad(params, *args)):
        with pytest.raises(gradc.GradcError, match=r"data ci\[6\] .*" + shown.replace(
                "-", r"\-") + r".*0\.\.3"):
            call()


def test_key_range_accounts_for_the_loop_offset():
    """T[ci + di], di in 0..2, T of length 6: ci may be 0..3 only."""
    T = sp.IndexedBase("T", shape=(6,))
    fn = gradc.compile(sp.Sum(T[ci + di], (di, 0, 2)), wrt=[T], data=[ci], jit=False)
    assert fn.value([np.arange(6.0)], np.array([3.0])) == pytest.approx(12.0)
    with pytest.raises(gradc.GradcError, match=r"ci\[0\] = 4.*0\.\.3"):
        fn.value([np.arange(6.0)], np.array([4.0]))


def test_const_table_and_per_example_values():
    E = sp.IndexedBase("E", shape=(3, 2))  # a const embedding table
    w = sp.IndexedBase("w", shape=(2,))
    loss = sp.Sum(w[k] * E[ci, k], (k, 0, 1)) ** 2
    fn = gradc.compile(loss, wrt=[w], data=[ci], consts=[E], reduce=None, jit=False)
    Ev = RNG.normal(size=(3, 2))
    wv = RNG.normal(size=2)
    keys = np.array([2.0, 0.0, 2.0])
    np.testing.assert_allclose(fn.value([wv], keys, Ev), (Ev[[2, 0, 2]] @ wv) ** 2, rtol=1e-13)


def _err(loss, wrt, data, match, consts=()):
    with pytest.raises(gradc.GradcError, match=match):
        gradc.compile(loss, wrt=wrt, data=data, consts=consts, jit=False)


def test_declaration_errors():
    C = sp.IndexedBase("C", shape=(4, 3))
    a = sp.Symbol("a", integer=True)
    y = sp.Symbol("y")
    _err(C[a, 0] ** 2, [C, a], [], r"a is a parameter")
    _err(C[y, 0] ** 2, [C], [y], r"integer symbol.*sp\.Symbol\('y', integer=True\)")
    _err(C[2 * ci, 0] ** 2, [C], [ci], r"coefficient 1")
    _err(C[ci + pi, 0] ** 2, [C], [ci, pi], r"two data values")
    _err(sp.Sum(C[ci + k, 0], (k, 0, 4)), [C], [ci], r"loop part k takes values 0\.\.4.*0\.\.3")


# ----------------------------------------------------------------------------------------
# Per-example Jacobians of gathering models: the pattern is exact for the data


def _residuals():
    """Two residuals per example, reading a row of C and one of P at data indices (a
    window of T too): a small bundle-adjustment-like model, reduce=None."""
    C = sp.IndexedBase("C", shape=(4, 3))
    P = sp.IndexedBase("P", shape=(5, 2))
    T = sp.IndexedBase("T", shape=(6,))
    y = sp.Symbol("y")
    r0 = sp.Sum(C[ci, k] * P[pi, 0], (k, 0, 2)) + sp.tanh(C[ci, 1] * P[pi, 1]) - y
    r1 = sp.Sum(T[ci + di] * (di + 1), (di, 0, 2)) * sp.exp(P[pi, 0])
    return sp.Matrix([r0, r1]), [C, P, T], [ci, pi, y]


def _fd_stacked(fn, params, args, eps=1e-6):
    flat = fn.pack(params)

    def f(z):
        return np.asarray(fn.value(fn.unpack(z), *args)).reshape(-1)

    return np.array([(f(flat + eps * e) - f(flat - eps * e)) / (2 * eps)
                     for e in np.eye(flat.size)]).T


@pytest.mark.parametrize("jit", [False, True])
def test_stacked_sparse_jacobian_of_gathers(jit):
    res, wrt, data = _residuals()
    fn = gradc.compile(res, wrt=wrt, data=data, reduce=None, jit=jit)
    params, args = _point()
    n = len(args[0])
    J = fn.jacobian(params, *args, sparse=True)
    assert J.shape == (2 * n, 12 + 10 + 6)
    fd = _fd_stacked(fn, params, args)
    np.testing.assert_allclose(J.toarray(), fd, rtol=1e-6, atol=1e-8)
    # the pattern is exact for these indices: example 0 reads C row 0, P row 4, T 0..2
    pat = fn.jacobian_sparsity(*args)
    assert (pat != J.astype(bool)).nnz == 0
    assert sorted(pat[0].indices) == [0, 1, 2, 12 + 8, 12 + 9]
    assert sorted(pat[1].indices) == [12 + 8, 22, 23, 24]
    assert np.all((fd != 0) <= pat.toarray())  # nothing the differences see is missed
    dense = fn.jacobian(params, *args)
    assert dense.shape == (n, 2, 28)
    np.testing.assert_array_equal(dense.reshape(2 * n, 28), J.toarray())
    # without the data the pattern covers every row a read could name
    assert fn.jacobian_sparsity().toarray()[0, :12].all()


def test_colours_do_not_grow_with_the_batch():
    res, wrt, data = _residuals()
    fn = gradc.compile(res, wrt=wrt, data=data, reduce=None, jit=False)
    params, _ = _point()
    from gradc.hessian import stacked_colouring

    counts = []
    for n in (9, 200):
        args = [RNG.integers(0, 4, n).astype(float), RNG.integers(0, 5, n).astype(float),
                RNG.normal(size=n)]
        counts.append(stacked_colouring(fn, fn._args(args)).ncolours)
        np.testing.assert_allclose(fn.jacobian(params, *args, sparse=True).toarray()[:40],
                                   _fd_stacked(fn, params, args)[:40], rtol=1e-6, atol=1e-8)
    # at most one colour per parameter an example reads: 3 + 2 + 3 (+ sharing)
    assert counts[0] == counts[1] <= 8


def test_per_example_jacobian_errors():
    res, wrt, data = _residuals()
    fn = gradc.compile(res, wrt=wrt, data=data, reduce=None, jit=False)
    params, args = _point()
    bad = [args[0].copy(), args[1], args[2]]
    bad[0][3] = 7
    with pytest.raises(gradc.GradcError, match=r"data ci\[3\] = 7: as an index it must be"):
        fn.jacobian_sparsity(*bad)
    bad[0][3] = 1.5
    with pytest.raises(gradc.GradcError, match=r"data ci\[3\] = 1.5: an index must be"):
        fn.jacobian(params, *bad, sparse=True)
    summed = gradc.compile(res, wrt=wrt, data=data, reduce="sum", jit=False)
    with pytest.raises(gradc.GradcError, match="reduce=None"):
        summed.jacobian_sparsity(*args)
    # a reduced function's Jacobian is the per-example one
    np.testing.assert_allclose(summed.jacobian(params, *args),
                               fn.jacobian(params, *args), rtol=1e-14)
