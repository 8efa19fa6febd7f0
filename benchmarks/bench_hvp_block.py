"""Second-order compile time against run time: HVP blocks and eager compiles, cold.

Usage::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_hvp_block.py
    python benchmarks/bench_hvp_block.py --quick      # k = 3 only, widths 1 and 8

For the lecture's k-unit tanh model (n = 10,000 examples, X = linspace(-pi, pi), Y = sin X)
at k = 3, 10 and 30, each case runs in a fresh process with an empty ``GRADC_CACHE_DIR``:

* ``CompiledFunction.HVP_BLOCK`` = 1, 2, 4, 8 (directions per kernel call in
  ``fn.hessian``; 1 is the default, the ``hvp`` kernel once per direction): the first
  ``fn.hessian`` (numba compiling what it needs, after the first-order kernels are
  compiled) and the median of later calls, with the ratio to width 1 in this run;
* ``gradc.compile(..., eager=True)`` (the first-order kernels) against ``eager="all"``
  (the second-order ones too).

Every Hessian is checked against width 1's (rtol 1e-12).  Single-threaded, pinned to one
CPU (``_single.py``); times are medians, ratios within one run.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import _single  # noqa: E402  (one thread per library, one CPU)

import json  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from _models import units_model  # noqa: E402
from _revision import gradc_revision  # noqa: E402

QUICK = "--quick" in sys.argv
KS = [3] if QUICK else [3, 10, 30]
WIDTHS = [1, 8] if QUICK else [1, 2, 4, 8]
N = 10_000


def child(case):
    """In a fresh process: one case, printed as one JSON line."""
    import gradc

    kind, k, width = case.split(":")
    k, width = int(k), int(width)
    expr, wrt, data = units_model(k)
    X = np.linspace(-np.pi, np.pi, N)
    Y = np.sin(X)
    p = np.random.default_rng(k).normal(scale=0.5, size=len(wrt))
    if kind == "eager":
        t = time.perf_counter()
        gradc.compile(expr, wrt, data, eager=True if width == 0 else "all")
        print(json.dumps({"seconds": time.perf_counter() - t}))
        return
    fn = gradc.compile(expr, wrt, data)
    fn.value_and_grad(p, X, Y)  # the first-order kernels, not counted
    fn.HVP_BLOCK = width
    t = time.perf_counter()
    h = fn.hessian(p, X, Y, method="dense")
    first = time.perf_counter() - t
    times = []
    for _ in range(9 if QUICK else 21):
        t = time.perf_counter()
        fn.hessian(p, X, Y, method="dense")
        times.append(time.perf_counter() - t)
    print(json.dumps({"first": first, "median": float(np.median(times)),
                      "hessian": h.tolist()}))


def run(case):
    env = dict(os.environ, GRADC_CACHE_DIR=tempfile.mkdtemp(prefix="gradc-bench-block-"))
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", case],
                         env=env, capture_output=True, text=True, timeout=1200)
    if out.returncode:
        raise SystemExit(f"case {case} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    print(f"gradc bench_hvp_block: {gradc_revision()}; {_single.describe()}; n = {N:,}; "
          "a fresh process and cache per case")
    for k in KS:
        rows = {w: run(f"block:{k}:{w}") for w in WIDTHS}
        ref = np.array(rows[1]["hessian"])
        for w, r in rows.items():
            got = np.array(r["hessian"])
            assert np.allclose(got, ref, rtol=1e-12, atol=1e-14 * np.abs(ref).max()), (k, w)
        print(f"\nk = {k} ({3 * k + 1} parameters): dense Hessian, {3 * k + 1} directions")
        print(f"  {'HVP_BLOCK':>9s} {'first fn.hessian s':>19s} {'later ms':>9s} "
              f"{'x width 1':>9s}")
        for w, r in rows.items():
            print(f"  {w:>9d} {r['first']:19.2f} {r['median'] * 1e3:9.2f} "
                  f"{r['median'] / rows[1]['median']:9.2f}")
        lazy, every = run(f"eager:{k}:0")["seconds"], run(f"eager:{k}:1")["seconds"]
        print(f"  gradc.compile eager=True {lazy:.2f} s, eager='all' {every:.2f} s")


if __name__ == "__main__":
    if "--child" in sys.argv:
        child(sys.argv[sys.argv.index("--child") + 1])
    else:
        main()
