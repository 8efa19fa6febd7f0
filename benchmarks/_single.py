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


def jax_case(loss, *args):
    """The JAX row of a benchmark: ``jax.jit(jax.value_and_grad(loss))`` on float64 device
    copies of ``args``.  Returns ``(call, result, first_call_seconds, version)``, where
    ``result()`` gives ``(value, gradient)`` as numpy (a list for a tuple of params), or
    None when jax is not importable.  ``loss`` is called with ``jax.numpy`` arrays."""
    import time

    try:
        import jax
    except Exception:  # noqa: BLE001 - jax is an optional peer
        return None
    jax.config.update("jax_enable_x64", True)
    import numpy as np

    vg = jax.jit(jax.value_and_grad(loss))
    dev = [jax.tree_util.tree_map(jax.numpy.asarray, a) for a in args]

    def call():
        return jax.block_until_ready(vg(*dev))

    t0 = time.perf_counter()
    call()
    first = time.perf_counter() - t0

    def result():
        val, g = call()
        return float(val), ([np.asarray(a) for a in g] if isinstance(g, (tuple, list))
                            else np.asarray(g))

    return call, result, first, jax.__version__


def settle(limit=1.0):
    """Wait (up to ``limit`` seconds) until this process's other threads are idle.

    JAX frees the buffers of a call on a thread of its own after the call has returned:
    after ``jax.jit(jax.hessian(loss))`` of the 100-parameter model that thread used about
    90 ms of system time on the one CPU the process is pinned to, and whatever was timed
    next ran 1.7-2.3x slower (gradc's ``fn.hessian``, 80 ms quiet).  This returns once a
    2 ms sleep costs the process under 0.2 ms of CPU time."""
    import time

    end = time.perf_counter() + limit
    while time.perf_counter() < end:
        c0 = time.process_time()
        time.sleep(0.002)
        if time.process_time() - c0 < 2e-4:
            return


def medians(cases, rounds):
    """Median seconds of each of ``cases`` (name -> callable), sampled round-robin (every
    case once per round, after :func:`settle`) so that slow phases of a noisy machine hit
    all of them alike; one warm-up call each first."""
    import time

    import numpy as np

    for f in cases.values():
        f()
    times = {k: [] for k in cases}
    for _ in range(rounds):
        for k, f in cases.items():
            settle()
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    return {k: float(np.median(v)) for k, v in times.items()}


def fresh_process(code, timeout=900):
    """Run ``code`` (Python source that prints numbers) in a fresh interpreter with an
    empty ``GRADC_CACHE_DIR``, for cold-compile timings.  Returns ``(numbers, None)`` or,
    when it fails, ``(None, the last line of its stderr)``."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, GRADC_CACHE_DIR=cache)
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env=env, timeout=timeout)
    if r.returncode != 0:
        return None, (r.stderr.strip().splitlines() or ["failed"])[-1]
    return [float(v) for v in r.stdout.split()], None
