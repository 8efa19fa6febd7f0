"""Single-threaded timing for the benchmarks: import this before numpy, numba or JAX.

Sets the thread-count variables of numba, OpenMP, OpenBLAS and MKL to 1 (unless already
set) and pins the process (and the child processes it starts) to one CPU.  The pin matters
for JAX: its XLA CPU runtime runs parts of a jitted program on a thread pool of its own even
with ``--xla_cpu_multi_thread_eigen=false``; unpinned on this 2-core machine, JAX's
784x256 products ran at up to 200 Gflop/s (two cores) against 120 pinned.  ``--no-pin``
on the command line leaves the affinity alone.
"""

import os
import sys

for _var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
             "NUMEXPR_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")

PINNED = None
if "--no-pin" not in sys.argv and hasattr(os, "sched_setaffinity"):
    PINNED = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {PINNED})


def describe():
    """One line for a benchmark's header."""
    if PINNED is None:
        return "threads: 1 per library, process not pinned"
    return f"threads: 1 per library, process pinned to CPU {PINNED}"
