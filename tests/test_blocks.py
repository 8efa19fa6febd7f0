"""The batch in blocks of rows (:func:`gradc.codegen.arrays.batch_phases`): a kernel whose
outputs are all batch-invariant runs its per-example part on one block of rows at a time,
with every sum over the batch accumulated across the blocks.  The results must not depend
on where the blocks fall (numpy and sympy oracles at batch sizes around the block size,
jit and not), the memory a kernel needs stops growing with the batch, a bad data index
is reported at its row in the whole batch, and kernels with per-example outputs are not
blocked."""

import re

import numpy as np
import pytest
import sympy as sp

import gradc
from gradc import nn
from gradc.codegen import arrays
from gradc.testing import check_against_sympy, check_grads

LAM = 0.1


def _ridge(d):
    x, w = sp.MatrixSymbol("x", d, 1), sp.MatrixSymbol("w", d, 1)
    y, lam = sp.MatrixSymbol("y", 1, 1), sp.Symbol("lam")
    return nn.sum_squares(w.T * x - y) + lam * nn.sum_squares(w), [w], [x, y], [lam]


def _rows_of(source, kernel):
    """The block size of ``kernel`` in the generated source, or None if not blocked."""
    start = source.index(f"\ndef {kernel}(")
    end = source.find("\n\n\ndef ", start + 1)
    m = re.search(r"for row0 in range\(0, n_all, (\d+)\):", source[start:end if end > 0 else None])
    return int(m.group(1)) if m else None


def _ridge_ref(W, X, Y):
    r = X @ W[:, 0] - Y
    n = len(Y)
    return r @ r / n + LAM * np.sum(W * W), 2 * X.T @ r / n + 2 * LAM * W[:, 0]


@pytest.fixture(scope="module")
def ridge_jit():
    loss, wrt, data, consts = _ridge(40)
    return gradc.compile(loss, wrt=wrt, data=data, consts=consts)


@pytest.mark.parametrize("jit", [False, True])
def test_ridge_in_blocks_matches_numpy_at_every_batch_size(ridge_jit, jit):
    loss, wrt, data, consts = _ridge(40)
    fn = ridge_jit if jit else gradc.compile(loss, wrt=wrt, data=data, consts=consts, jit=False)
    rows = _rows_of(fn.source, "value_and_grad")
    assert rows is not None and _rows_of(fn.source, "value") is not None
    rng = np.random.default_rng(3)
    W = rng.normal(size=(40, 1))
    for n in (1, rows - 1, rows, rows + 1, 3 * rows + 7):
        X, Y = rng.normal(size=(n, 40)), rng.normal(size=n)
        v, (g,) = fn.value_and_grad([W], X, Y, LAM)
        rv, rg = _ridge_ref(W, X, Y)
        np.testing.assert_allclose(v, rv, rtol=1e-12)
        np.testing.assert_allclose(g[:, 0], rg, rtol=1e-11, atol=1e-14)
        np.testing.assert_allclose(fn.value([W], X, Y, LAM), rv, rtol=1e-12)


def test_blocked_mlp_against_sympy_and_finite_differences(monkeypatch):
    """A small classifier cut into blocks of 64 rows (BLOCK_WORDS made tiny): bias sums
    accumulated inside fused loops, weight gradients as batch-summed products."""
    monkeypatch.setattr(arrays, "BLOCK_WORDS", 1)
    x, label = sp.MatrixSymbol("x", 3, 1), sp.Symbol("label", integer=True)
    W1, b1 = sp.MatrixSymbol("W1", 4, 3), sp.MatrixSymbol("b1", 4, 1)
    W2, b2 = sp.MatrixSymbol("W2", 3, 4), sp.MatrixSymbol("b2", 3, 1)
    loss = nn.cross_entropy(W2 * nn.tanh(W1 * x + b1) + b2, label)
    fn = gradc.compile(loss, wrt=[W1, b1, W2, b2], data=[x, label], jit=False)
    assert _rows_of(fn.source, "value_and_grad") == 64
    rng = np.random.default_rng(5)
    params = [rng.normal(size=s) for s in ((4, 3), (4, 1), (3, 4), (3, 1))]
    X, L = rng.normal(size=(150, 3)), rng.integers(0, 3, 150).astype(float)
    check_against_sympy(fn, params, X, L, rtol=1e-10)
    check_grads(fn, params, X, L)
    # the same kernels unblocked (one block of every row) give the same numbers
    monkeypatch.setattr(arrays, "BLOCK_WORDS", 10**9)
    whole = gradc.compile(loss, wrt=[W1, b1, W2, b2], data=[x, label], jit=False)
    assert _rows_of(whole.source, "value_and_grad") > 150
    v1, g1 = fn.value_and_grad(params, X, L)
    v2, g2 = whole.value_and_grad(params, X, L)
    np.testing.assert_allclose(v1, v2, rtol=1e-13)
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)


def test_memory_stops_growing_with_the_batch():
    loss, wrt, data, consts = _ridge(200)
    fn = gradc.compile(loss, wrt=wrt, data=data, consts=consts, jit=False)
    mem = [fn.memory(n)["value_and_grad"] for n in (10, 10**4, 10**6)]
    assert mem[0] < mem[1] == mem[2]
    per = gradc.compile(loss, wrt=wrt, data=data, consts=consts, reduce=None, jit=False)
    assert _rows_of(per.source, "value") is None  # per-example outputs: not blocked
    assert per.memory(10**6)["value"] > 100 * per.memory(10**4)["value"] / 2


def test_bad_index_is_named_at_its_row_in_the_whole_batch(monkeypatch):
    monkeypatch.setattr(arrays, "BLOCK_WORDS", 1)
    k, ci = sp.Symbol("k", integer=True), sp.Symbol("ci", integer=True)
    C, y = sp.IndexedBase("C", shape=(4, 3)), sp.Symbol("y")
    loss = (sp.Sum(C[ci, k], (k, 0, 2)) - y) ** 2
    fn = gradc.compile(loss, wrt=[C], data=[ci, y], jit=False)
    assert _rows_of(fn.source, "value_and_grad") == 64
    n = 200
    cis = np.random.default_rng(0).integers(0, 4, n).astype(float)
    cis[150] = 9
    params = [np.ones((4, 3))]
    for call in (fn.value, fn.value_and_grad):
        with pytest.raises(gradc.GradcError, match=r"data ci\[150\] = 9"):
            call(params, cis, np.zeros(n))
