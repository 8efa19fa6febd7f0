"""Calibration: the machine's rates for the kinds of work a Jacobian plan does.

Contract
--------
:func:`rates` returns multiply-adds per second for ``"blas"`` (matrix products, and
sweeps through explicit pieces, which run as GEMMs) and ``"elementwise"`` (sweeps
through elementwise pieces), and float64 words per second for ``"memory"`` (a matrix
streamed from memory, as a matrix-vector product reads it), measured once with numba
kernels like the ones gradc generates and cached in ``<gradc cache>/calibration.json``
(keyed by the machine's CPU name and thread settings).  :func:`time_model` turns the rates
and a chain extracted from a program into the :class:`~gradc.planner.timing.TimeModel`
the planner minimises.  Set ``GRADC_CALIBRATION=off`` to use fixed default rates (for
reproducible tests).
"""

from __future__ import annotations

import json
import os
import time

DEFAULT_RATES = {"blas": 8e9, "elementwise": 1e9, "memory": 2e9}

#: Seconds of fixed cost per move of a plan (a kernel call or a product, with its Python
#: dispatch and allocation), measured on this machine's class of hardware; it makes a plan
#: of many small moves lose to one sweep when the flops are tiny.
MOVE_SECONDS = 10e-6

#: Seconds every Jacobian call pays before its first move: argument checks, the call of
#: the primal-values kernel and the unpacking of its results (``fn.jacobian`` on a chain
#: of tiny pieces, ``benchmarks/bench_jacobian.py``).
CALL_SECONDS = 20e-6

_RATES = None  # this process's rates, read or measured once


def _measure():
    import numba
    import numpy as np

    @numba.njit(cache=True)
    def gemm(a, b):
        return np.dot(a, b)

    @numba.njit(cache=True)
    def sweep(t, d):
        n, m = t.shape
        out = np.empty((n, m))
        for i in range(n):
            for j in range(m):
                out[i, j] = t[i, j] * (1.0 - d[j] * d[j])
        return out

    @numba.njit(cache=True)
    def gemv(a, v):
        return np.dot(a, v)

    rng = np.random.default_rng(0)
    a, b = rng.random((400, 400)), rng.random((400, 400))
    t, d = rng.random((400, 1000)), rng.random(1000)
    big, v = rng.random((2000, 2000)), rng.random((2000, 1))  # 32 MB: beyond the caches
    out = {}
    for name, f, args, work in (("blas", gemm, (a, b), 400.0**3),
                                ("elementwise", sweep, (t, d), 400.0 * 1000),
                                ("memory", gemv, (big, v), 2000.0 * 2000)):
        f(*args)
        times = []
        for _ in range(9):
            t0 = time.perf_counter()
            f(*args)
            times.append(time.perf_counter() - t0)
        out[name] = work / min(times)  # the best run: noise only ever slows a run down
    return out


def rates(refresh: bool = False) -> dict:
    """Multiply-adds per second by kind of work, measured once and cached (on disk and for
    the process).  ``refresh=True`` measures again and replaces the stored entry.

    Examples
    --------
    >>> import os
    >>> from gradc.planner.calibrate import rates
    >>> sorted(rates())
    ['blas', 'elementwise', 'memory']
    """
    global _RATES
    if os.environ.get("GRADC_CALIBRATION", "").lower() == "off":
        return dict(DEFAULT_RATES)
    if _RATES is not None and not refresh:
        return _RATES
    from ..backend import cache_dir

    import numba

    from llvmlite import binding

    key = (f"{binding.get_host_cpu_name()}-{numba.config.NUMBA_NUM_THREADS}-"
           f"{os.environ.get('OPENBLAS_NUM_THREADS', '')}")
    path = cache_dir() / "calibration.json"
    try:
        table = json.loads(path.read_text())
    except (OSError, ValueError):
        table = {}
    if not refresh and key in table and all(k in table[key] for k in DEFAULT_RATES):
        _RATES = table[key]
        return _RATES
    measured = _measure()
    # a run disturbed by other work can read far too slow: keep the better of two
    if any(measured[k] < DEFAULT_RATES[k] / 8 for k in DEFAULT_RATES):
        again = _measure()
        measured = {k: max(measured[k], again[k]) for k in measured}
    table[key] = measured
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(table))
    except OSError:
        pass
    _RATES = table[key]
    return _RATES


def _per_sweep(p, rate, kind):
    """Seconds of one vector through chain piece ``p``: its multiply-adds at the rates of
    their kinds, and the words of its result written and read back."""
    cost = p.piece.tangent_cost if kind == "tangent" else p.piece.adjoint_cost
    width = p.piece.n_out if kind == "tangent" else p.piece.n_in
    return (cost * p.blas / rate["blas"] + cost * (1 - p.blas) / rate["elementwise"]
            + 2 * width / rate["memory"])


def time_model(chain, rate=None):
    """The :class:`~gradc.planner.timing.TimeModel` of a chain of
    :class:`~gradc.planner.extract.ChainPiece` under the calibrated ``rate`` (by default
    :func:`rates`), modelling what :class:`gradc.jacobian.JacobianEngine` runs:

    * one vector through a piece: :func:`_per_sweep`;
    * once per move through a piece, however many vectors: its side values read twice
      (a sweep kernel recomputes the primal values of its pieces from the cut before,
      then reads the weights again for the sweeps) and its primal pass;
    * per move :data:`MOVE_SECONDS`, and the seeds and results at the memory rate;
    * products at the BLAS rate (elementwise for a diagonal factor);
    * every mode pays :data:`CALL_SECONDS` and the primal-values kernel (``base``).
    """
    from .timing import TimeModel

    rate = rates() if rate is None else rate
    word = 1.0 / rate["memory"]
    tangent = tuple(_per_sweep(p, rate, "tangent") for p in chain)
    adjoint = tuple(_per_sweep(p, rate, "adjoint") for p in chain)
    fixed = tuple(2 * p.words * word + t for p, t in zip(chain, tangent))
    base = CALL_SECONDS + sum(p.words * word + t for p, t in zip(chain, tangent))
    return TimeModel(tangent, adjoint, fixed, MOVE_SECONDS, word, 1.0 / rate["blas"],
                     1.0 / rate["elementwise"], base)
