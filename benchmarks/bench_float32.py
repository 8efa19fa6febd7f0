"""float32 against float64 as curves: ``gradc.compile(..., dtype="float32")`` (issue 14 item 5).

Usage::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_float32.py

One process, one CPU (``_single``).  gradc's ``kernels.value_and_grad`` compiled both ways,
median of 30-200 calls, on the README's tanh model at n = 10^4, 10^5, 10^6 and on the
784-256-256-10 relu network at batches 64 to 4,096, with the float32 result checked
against the float64 one to float32 precision first; prints both times and their ratio
(the issue's target: at most 0.6).  ``bench_mlp.py`` and ``bench_scalar.py`` have the
float32 rows at the issues' sizes, with JAX's float32 kernels beside them.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _single  # noqa: E402  (one thread per library, one CPU)

import numpy as np  # noqa: E402

import gradc  # noqa: E402
from bench_mlp import init_params, random_data, sympy_model  # noqa: E402
from bench_scalar import model  # noqa: E402


def median_us(f, calls):
    """Median of ``calls`` back-to-back calls, as a training loop makes them
    (``_single.medians`` settles the machine before every sample: right for the long
    calls of bench_hessian, but each short call here would then start from cold caches;
    the README model measured 1.3-1.5x slower that way, in both dtypes)."""
    f()
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return float(np.median(times)) * 1e6


def check(v32, g32, v64, g64):
    g32 = g32 if isinstance(g32, (list, tuple)) else [g32]
    g64 = g64 if isinstance(g64, (list, tuple)) else [g64]
    assert abs(v32 - v64) <= 1e-5 * abs(v64), (v32, v64)
    for a, b in zip(g32, g64):
        assert a.dtype == np.float32
        assert np.abs(a - b).max() <= 1e-4 * np.abs(b).max()


def curve(title, fns, cases, unit):
    print(f"\n{title}")
    print(f"  {'size':>10s} {'float64':>10s} {'float32':>10s}  float32/float64   ({unit})")
    for size, args, calls in cases:
        r = {}
        outs = {}
        for dt, fn in fns.items():
            a = args(dt)
            outs[dt] = fn.kernels.value_and_grad(*a)
            r[dt] = median_us(lambda: fn.kernels.value_and_grad(*a), calls)
        check(*outs["float32"], *outs["float64"])
        scale = 1e-3 if unit == "ms" else 1.0
        print(f"  {size:>10,d} {r['float64'] * scale:10.2f} {r['float32'] * scale:10.2f}  "
              f"{r['float32'] / r['float64']:15.2f}")


def main():
    from _revision import gradc_revision

    print(f"gradc bench_float32: gradc from {gradc_revision()}")
    print(_single.describe())
    loss, wrt, dat = model()
    fns = {dt: gradc.compile(loss, wrt=wrt, data=dat, dtype=dt) for dt in ("float64", "float32")}
    rng = np.random.default_rng(0)
    P = rng.normal(size=10)

    def readme_case(n):
        X = np.linspace(-np.pi, np.pi, n)
        Y = np.sin(X)
        return (n, lambda dt: (P.astype(dt), X.astype(dt), Y.astype(dt)),
                200 if n < 10 ** 6 else 30)

    curve("README model (k = 3 tanh units), value_and_grad kernel", fns,
          [readme_case(n) for n in (10_000, 100_000, 1_000_000)], "us")
    loss, wrt, dsyms = sympy_model([784, 256, 256, 10], "relu")
    fns = {dt: gradc.compile(loss, wrt=wrt, data=dsyms, dtype=dt)
           for dt in ("float64", "float32")}
    params = init_params([784, 256, 256, 10], seed=1)

    def net_case(n):
        X, y = random_data(n=n)
        return (n, lambda dt: (tuple(p.astype(dt) for p in params), X.astype(dt),
                               y.astype(dt)), 40)

    curve("784-256-256-10 relu network, value_and_grad kernel, by batch size", fns,
          [net_case(n) for n in (64, 256, 1024, 4096)], "ms")


if __name__ == "__main__":
    main()
