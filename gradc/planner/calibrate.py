"""Calibration: the machine's rates for the kinds of work a Jacobian plan does.

Contract
--------
:func:`rates` returns multiply-adds per second for ``"blas"`` (matrix products, and
sweeps through explicit pieces, which run as GEMMs) and ``"elementwise"`` (sweeps
through elementwise pieces), measured once with numba kernels like the ones gradc
generates and cached in ``<gradc cache>/calibration.json`` (keyed by the machine's CPU
name and thread settings).  :func:`predict_seconds` turns a plan step tree and its chain
into a predicted time.  Set ``GRADC_CALIBRATION=off`` to use fixed default rates (for
reproducible tests).
"""

from __future__ import annotations

import json
import os
import time

DEFAULT_RATES = {"blas": 8e9, "elementwise": 1e9}

#: Seconds of fixed cost per move of a plan (a kernel call or a product, with its Python
#: dispatch and allocation), measured on this machine's class of hardware; it makes a plan
#: of many small moves lose to one sweep when the flops are tiny.
MOVE_SECONDS = 10e-6

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

    rng = np.random.default_rng(0)
    a, b = rng.random((400, 400)), rng.random((400, 400))
    t, d = rng.random((400, 1000)), rng.random(1000)
    out = {}
    for name, f, args, work in (("blas", gemm, (a, b), 400.0**3),
                                ("elementwise", sweep, (t, d), 400.0 * 1000)):
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
    ['blas', 'elementwise']
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


def sweep_work(chain, lo, hi, sweeps, kind):
    """(blas, elementwise) multiply-adds of ``sweeps`` sweeps through pieces lo..hi."""
    blas = elem = 0.0
    for p in chain[lo - 1:hi]:
        cost = p.piece.tangent_cost if kind == "TAN" else p.piece.adjoint_cost
        blas += sweeps * cost * p.blas
        elem += sweeps * cost * (1 - p.blas)
    return blas, elem


def predict_seconds(step, chain, rate) -> float:
    """Predicted time of a plan's step tree (children included)."""
    total = sum(predict_seconds(c, chain, rate) for c in step.children)
    if step.kind == "MUL":
        return total + step.own_cost / rate["blas"] + MOVE_SECONDS
    if step.kind == "ACC" and step.method == "explicit":
        return total
    blas, elem = sweep_work(chain, step.swept[0], step.swept[1], step.sweeps,
                            "ADJ" if step.method == "adjoint" else "TAN")
    return total + blas / rate["blas"] + elem / rate["elementwise"] + MOVE_SECONDS


def pure_seconds(chain, mode, rate) -> float:
    """Predicted time of pure forward (``"forward"``) or reverse mode."""
    q = len(chain)
    if mode == "forward":
        blas, elem = sweep_work(chain, 1, q, chain[0].piece.n_in, "TAN")
    else:
        blas, elem = sweep_work(chain, 1, q, chain[-1].piece.n_out, "ADJ")
    return blas / rate["blas"] + elem / rate["elementwise"] + MOVE_SECONDS
