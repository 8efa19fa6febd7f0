"""The matrix products of bench_mlp.py's models, alone: BLAS through numba's np.dot (what
gradc's kernels call), JAX's jit, and a product written as a numba loop.

Usage::

    python benchmarks/bench_gemm.py                              # this machine's BLAS setting
    python benchmarks/bench_gemm.py --openblas-coretype SkylakeX # OpenBLAS's AVX-512 kernels
    python benchmarks/bench_gemm.py --no-jax
    python benchmarks/bench_gemm.py --tall                       # tall, narrow results only

Single-threaded and pinned to one CPU (``_single.py``).  Prints Gflop/s (medians) for the
two layouts the MLP kernels use: ``X W^T`` (a batch of ``W x``) and ``G^T X`` (a weight
gradient summed over the batch).  This is where docs/performance.md's explanation of the
MLP results against JAX comes from: the products are most of gradc's time there, and
gradc does not choose the BLAS kernels.

``--tall`` times tall, narrow results ``A^T X`` (m x k times k x n2 with m >= 8 n2, the
GMM's gradient of its (K d, d) matrices summed over the points): ``np.dot`` as written
against ``np.dot`` of the transpose plus the copy back, which is what gradc's
``_rt.contract`` does for these shapes, and ``_rt.contract`` itself.
"""

import os
import sys

if "--openblas-coretype" in sys.argv:  # must precede the first load of OpenBLAS
    os.environ["OPENBLAS_CORETYPE"] = sys.argv[sys.argv.index("--openblas-coretype") + 1]
import _single  # noqa: E402  (one thread per library, one CPU)

import time  # noqa: E402

import numba  # noqa: E402
import numpy as np  # noqa: E402

# (rows of X = batch, columns of X = inputs, rows of W = outputs)
SHAPES = [(1797, 64, 128), (1797, 128, 10), (256, 784, 256), (256, 256, 256)]


@numba.njit(error_model="numpy")
def blas_xwt(X, W):
    return np.dot(X, W.T)


@numba.njit(error_model="numpy")
def blas_gtx(G, X):
    return np.dot(G.T, X)


@numba.njit(error_model="numpy", fastmath=True)
def loop_xwt(X, Wt):
    """X @ Wt, one row of the result at a time (the inner loop over it vectorises)."""
    n, k = X.shape
    m = Wt.shape[1]
    C = np.zeros((n, m))
    for i in range(n):
        for p in range(k):
            a = X[i, p]
            for j in range(m):
                C[i, j] += a * Wt[p, j]
    return C


def median(f, samples=60):
    f()
    reps = 1
    while True:
        t = time.perf_counter()
        for _ in range(reps):
            f()
        if time.perf_counter() - t > 2e-3:
            break
        reps *= 2
    times = []
    for _ in range(samples):
        t = time.perf_counter()
        for _ in range(reps):
            f()
        times.append((time.perf_counter() - t) / reps)
    return float(np.median(times))


def jax_products():
    if "--no-jax" in sys.argv:
        return None
    try:
        import jax
    except ImportError:
        return None
    jax.config.update("jax_enable_x64", True)
    return jax, jax.jit(lambda a, b: a @ b.T), jax.jit(lambda g, a: g.T @ a)


@numba.njit(error_model="numpy")
def blas_atx_transposed(A, X, out):
    t = np.dot(X.T, A)
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            out[i, j] = t[j, i]
    return out


def tall():
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from gradc.codegen import runtime as rt

    rng = np.random.default_rng(0)
    print(f"{'k, m, n2':>18s} {'direct':>9s} {'transposed':>11s} {'contract':>9s}   ms; "
          "direct / transposed")
    for k, m, n2 in [(1000, 250, 10), (1000, 1000, 20), (1000, 6400, 64), (10000, 1000, 10),
                     (1000, 200, 25)]:
        A, X, out = rng.normal(size=(k, m)), rng.normal(size=(k, n2)), np.empty((m, n2))
        d = median(lambda: blas_gtx(A, X))
        tr = median(lambda: blas_atx_transposed(A, X, out))
        c = median(lambda: rt.contract(out, A, X, True, False, m, k, n2))
        assert np.allclose(out, A.T @ X)
        print(f"{str((k, m, n2)):>18s} {d * 1e3:9.3f} {tr * 1e3:11.3f} {c * 1e3:9.3f}   "
              f"{d / tr:.2f}")


def main():
    if "--tall" in sys.argv:
        tall()
        return
    print(f"numpy {np.__version__}, numba {numba.__version__}, "
          f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(auto)')}; "
          f"{_single.describe()}")
    jx = jax_products()
    rng = np.random.default_rng(0)
    print(f"{'n, d, m':>16s} {'layout':>7s} {'BLAS':>7s} {'JAX':>7s} {'loop':>7s}   Gflop/s")
    for n, d, m in SHAPES:
        X, W, G = rng.normal(size=(n, d)), rng.normal(size=(m, d)), rng.normal(size=(n, m))
        Wt = np.ascontiguousarray(W.T)
        flop = 2.0 * n * d * m / 1e9
        assert np.allclose(loop_xwt(X, Wt), X @ W.T)
        rows = {"X W^T": [blas_xwt, (X, W), loop_xwt, (X, Wt)],
                "G^T X": [blas_gtx, (G, X), None, None]}
        for k, (layout, (blas, args, loop, largs)) in enumerate(rows.items()):
            cells = [flop / median(lambda: blas(*args))]
            if jx is not None:
                jax, *fns = jx
                jargs = [jax.numpy.asarray(a) for a in args]
                cells.append(flop / median(lambda: fns[k](*jargs).block_until_ready()))
            else:
                cells.append(float("nan"))
            cells.append(flop / median(lambda: loop(*largs)) if loop else float("nan"))
            print(f"{str((n, d, m)):>16s} {layout:>7s} " + " ".join(f"{c:7.0f}" for c in cells))


if __name__ == "__main__":
    main()
