"""gradc.dask on a real dask.distributed LocalCluster with two worker processes."""

import numpy as np
import pytest
import sympy as sp

import gradc
from gradc import GradcError, nn

distributed = pytest.importorskip("dask.distributed")
import dask.array as da  # noqa: E402

import gradc.dask  # noqa: E402

d, k = 5, 3
x = sp.MatrixSymbol("x", d, 1)
label = sp.Symbol("label", integer=True)
W, b = sp.MatrixSymbol("W", k, d), sp.MatrixSymbol("b", k, 1)
LOSS = nn.cross_entropy(W * x + b, label) + 0.01 * nn.sum_squares(W)


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None)
    c = distributed.Client(cluster)
    yield c
    c.close()
    cluster.close()


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(1000, d))
    L = rng.integers(0, k, 1000)
    params = [rng.normal(size=(k, d)), rng.normal(size=(k, 1))]
    fn = gradc.compile(LOSS, wrt=[W, b], data=[x, label])
    return fn, params, X, L


def test_equals_single_process(client, problem):
    fn, params, X, L = problem
    v, g = gradc.dask.value_and_grad(fn, params, da.from_array(X, chunks=(137, d)),
                                     da.from_array(L, chunks=300))
    v0, g0 = fn.value_and_grad(params, X, L)
    assert v == pytest.approx(v0, rel=1e-12)
    for a, b_ in zip(g, g0):
        np.testing.assert_allclose(a, b_, rtol=1e-11, atol=1e-15)


def test_scalar_model_and_sum_reduction(client):
    w, t = sp.symbols("w t")
    fn = gradc.compile((sp.tanh(w * t) - 0.5) ** 2, wrt=[w], data=[t], reduce="sum")
    T = np.linspace(-2, 2, 777)
    v, g = gradc.dask.value_and_grad(fn, [0.7], da.from_array(T, chunks=100))
    v0, g0 = fn.value_and_grad([0.7], T)
    assert v == pytest.approx(v0, rel=1e-12) and g[0] == pytest.approx(g0[0], rel=1e-12)


def test_a_failing_chunk_raises_instead_of_a_partial_gradient(client, problem):
    fn, params, X, L = problem
    bad = L.copy()
    bad[950] = k + 5  # only the last chunk is invalid
    with pytest.raises(GradcError, match="labels must be in"):
        gradc.dask.value_and_grad(fn, params, da.from_array(X, chunks=(100, d)),
                                  da.from_array(bad, chunks=100))


def test_argument_errors(problem):
    fn, params, X, L = problem
    with pytest.raises(GradcError, match="expected 2 data array"):
        gradc.dask.value_and_grad(fn, params, da.from_array(X))
    with pytest.raises(GradcError, match="has 999 examples"):
        gradc.dask.value_and_grad(fn, params, da.from_array(X), da.from_array(L[:999]))
    per = gradc.compile(LOSS, wrt=[W, b], data=[x, label], reduce=None, jit=False)
    with pytest.raises(GradcError, match="needs reduce"):
        gradc.dask.value_and_grad(per, params, X, L)
