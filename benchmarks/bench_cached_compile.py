"""Cached compile time: what a second process pays to get gradc's kernels back.

    python benchmarks/bench_cached_compile.py

Runs three fresh processes on one cache folder: the first compiles cold, the next two
find the generated module and numba's machine code in the disk cache.  Each prints the
time of ``gradc.compile`` plus the first ``value_and_grad`` call, split into numba's
one-time process initialisation (measured first, on a small function loaded from numba's
cache: any numba user pays it once per process) and gradc's own part.  Target: gradc's cached part
<= 0.1 s.
"""

import os
import subprocess
import sys
import tempfile

CHILD = r"""
import time, numpy as np, sympy as sp, gradc
from gradc.codegen import runtime
t0 = time.perf_counter()
runtime.vsum(np.ones(3), 3)  # numba's per-process start: a small function from its cache
t1 = time.perf_counter()
x, y = sp.symbols("x y"); v = sp.symbols("v1:4"); b = sp.symbols("b1:4"); w = sp.symbols("w0:4")
f = w[0] + sum(w[i + 1] * sp.tanh(v[i] * x + b[i]) for i in range(3))
fn = gradc.compile((f - y) ** 2, wrt=[*v, *b, *w], data=[x, y])
X = np.linspace(-3, 3, 100)
fn.value_and_grad(np.zeros(10), X, np.sin(X))
t2 = time.perf_counter()
print(f"{t1 - t0:.3f} {t2 - t1:.3f}")
"""


def main():
    env = dict(os.environ, GRADC_CACHE_DIR=tempfile.mkdtemp(prefix="gradc-bench-"))
    print(f"{'run':<8}{'numba init s':>14}{'gradc compile + first call s':>30}")
    for run in ("cold", "cached", "cached"):
        out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True,
                             text=True, check=True).stdout.split()
        print(f"{run:<8}{float(out[0]):>14.3f}{float(out[1]):>30.3f}")


if __name__ == "__main__":
    main()
