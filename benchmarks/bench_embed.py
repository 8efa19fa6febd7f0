"""Embedding and parallel scaling of gradc kernels.

    python benchmarks/bench_embed.py

(1) Per-call overhead of the compiled value_and_grad of the lecture's 10-parameter model
with a batch of 1: called from a user's own @numba.njit loop, called from Python, and the
CompiledFunction method (argument checks).  Target: < 1 us per call from njit.
(2) Parallel speed-up of parallel=True on the large workload (the 10-parameter model on
n = 1,000,000 examples, and the digits-sized MLP on 20,000 random examples): medians with
1 thread and with all threads, and the ratio.  This machine has 2 cores.
Prints medians; single-threaded BLAS everywhere.
"""

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import time  # noqa: E402

import numba  # noqa: E402
import numpy as np  # noqa: E402
import sympy as sp  # noqa: E402

import gradc  # noqa: E402
from gradc import nn  # noqa: E402


def median(f, repeat=200):
    f()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def tanh_model():
    x, y = sp.symbols("x y")
    v, b, w = sp.symbols("v1:4"), sp.symbols("b1:4"), sp.symbols("w0:4")
    f = w[0] + sum(w[i + 1] * sp.tanh(v[i] * x + b[i]) for i in range(3))
    return (f - y) ** 2, [*v, *b, *w], [x, y]


def overhead():
    expr, wrt, data = tanh_model()
    fn = gradc.compile(expr, wrt=wrt, data=data)
    vg = fn.kernels.value_and_grad
    p = np.random.default_rng(0).normal(size=10)
    X, Y = np.array([0.3]), np.array([0.1])

    @numba.njit
    def loop(p, X, Y, calls):
        s = 0.0
        for _ in range(calls):
            v, g = vg(p, X, Y)
            s += v + g[0]
        return s

    calls = 100_000
    loop(p, X, Y, 10)
    t_njit = median(lambda: loop(p, X, Y, calls), repeat=15) / calls
    t_kernel = median(lambda: vg(p, X, Y), repeat=20000)
    t_method = median(lambda: fn.value_and_grad(p, X, Y), repeat=20000)
    print("(1) value_and_grad of the 10-parameter model, batch of 1")
    print(f"    from njit:           {t_njit * 1e9:8.0f} ns per call  (target < 1000 ns)")
    print(f"    kernel from Python:  {t_kernel * 1e9:8.0f} ns per call")
    print(f"    CompiledFunction:    {t_method * 1e9:8.0f} ns per call")
    return t_njit


def scaling():
    expr, wrt, data = tanh_model()
    serial = gradc.compile(expr, wrt=wrt, data=data)
    par = gradc.compile(expr, wrt=wrt, data=data, parallel=True)
    rng = np.random.default_rng(1)
    p = rng.normal(size=10)
    X = rng.uniform(-3, 3, 1_000_000)
    Y = np.sin(X)
    rows = [("10-parameter model, n = 1e6", serial, par, (p, X, Y))]
    x = sp.MatrixSymbol("x", 64, 1)
    label = sp.Symbol("label", integer=True)
    W1, b1 = sp.MatrixSymbol("W1", 128, 64), sp.MatrixSymbol("b1", 128, 1)
    W2, b2 = sp.MatrixSymbol("W2", 10, 128), sp.MatrixSymbol("b2", 10, 1)
    loss = nn.cross_entropy(W2 * nn.tanh(W1 * x + b1) + b2, label)
    ms = gradc.compile(loss, wrt=[W1, b1, W2, b2], data=[x, label])
    mp = gradc.compile(loss, wrt=[W1, b1, W2, b2], data=[x, label], parallel=True)
    params = [rng.normal(scale=0.1, size=(128, 64)), np.zeros((128, 1)),
              rng.normal(scale=0.1, size=(10, 128)), np.zeros((10, 1))]
    rows.append(("64-128-10 MLP, n = 20,000", ms, mp,
                 (params, rng.random((20_000, 64)), rng.integers(0, 10, 20_000))))
    threads = numba.config.NUMBA_NUM_THREADS
    print(f"(2) parallel=True, {threads} numba threads (BLAS single-threaded)")
    for name, s, pf, args in rows:
        vs, gs = s.value_and_grad(*args)
        vp, gp = pf.value_and_grad(*args)
        assert abs(vs - vp) <= 1e-12 * abs(vs)
        t1 = median(lambda: s.value_and_grad(*args), repeat=30)
        tp = median(lambda: pf.value_and_grad(*args), repeat=30)
        line = (f"    {name:<28} serial {t1 * 1e3:8.2f} ms  parallel {tp * 1e3:8.2f} ms  "
                f"speed-up {t1 / tp:.2f}x")
        try:  # the matrix products are BLAS's: let it use the same number of threads
            from threadpoolctl import threadpool_limits
        except ImportError:
            threadpool_limits = None
        if threadpool_limits is not None:
            with threadpool_limits(limits=threads, user_api="blas"):
                tb = median(lambda: pf.value_and_grad(*args), repeat=30)
            line += f"  (with BLAS at {threads} threads: {tb * 1e3:.2f} ms, {t1 / tb:.2f}x)"
        print(line)


if __name__ == "__main__":
    overhead()
    scaling()
