"""Stress gradc's promises of docs/reliability.md and print what happened (not a test).

Usage::

    python benchmarks/stress.py            # the figures recorded in docs/reliability.md
    python benchmarks/stress.py --quick    # fewer of each

1. Threads: T threads each making C calls of one compiled value_and_grad (and of a
   ``parallel=True`` one) on their own data; every result compared bit for bit with the
   serial call on the same data.
2. Processes: P fresh processes compiling one new function at the same moment on one
   empty cache; their results against each other and the cache left behind
   (``backend.verify()``, entries).
3. SIGKILL: K compiles of new functions killed at random moments of their life, each
   followed by a fresh process on the same cache, which must compute the right numbers;
   then the cache is verified.
4. Bad input: B random malformed calls (params, data and consts replaced by junk) on a
   scalar, a matrix and a gather model: how each call ended (returned, GradcError, or
   anything else, which would be a bug).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter

import numpy as np
import sympy as sp

import gradc
from gradc import backend, nn

QUICK = "--quick" in sys.argv

HERE = os.path.dirname(os.path.abspath(__file__))


def model(k):
    """A small new function for every ``k`` (its key is in no cache yet)."""
    a, b, c, x, y = sp.symbols("a b c x y")
    return (a * sp.exp(-b * x ** 2) + c * sp.sin(k * x) - y) ** 2, [a, b, c], [x, y]


def numbers(fn):
    X = np.linspace(-2, 2, 64)
    return fn.value_and_grad([1.0, 0.5, -0.3], X, np.cos(X))


CHILD = f"""
import json, sys
sys.path.insert(0, {HERE!r})
import gradc
from stress import model, numbers
expr, wrt, data = model(float(sys.argv[1]))
fn = gradc.compile(expr, wrt=wrt, data=data)
v, g = numbers(fn)
print(json.dumps({{"value": v, "grad": list(map(float, g)), "key": fn._key}}))
"""


def _right(r, k):
    """The child's numbers against the same function compiled here with jit=False."""
    expr, wrt, data = model(k)
    v, g = numbers(gradc.compile(expr, wrt=wrt, data=data, jit=False))
    return np.isclose(r["value"], v, rtol=1e-12) and np.allclose(r["grad"], g, rtol=1e-11)


def _child(cache, k):
    env = dict(os.environ, GRADC_CACHE_DIR=cache)
    return subprocess.Popen([sys.executable, "-c", CHILD, repr(k)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _result(p, timeout=600):
    out, err = p.communicate(timeout=timeout)
    if p.returncode != 0:
        return None, (err.strip().splitlines() or ["?"])[-1]
    return json.loads(out.strip().splitlines()[-1]), None


def threads(nthreads, calls):
    w, b, x, y = sp.symbols("w b x y")
    loss = (w * sp.tanh(b * x) - y) ** 2
    out = {}
    for parallel in (False, True):
        fn = gradc.compile(loss, wrt=[w, b], data=[x, y], parallel=parallel)
        rng = np.random.default_rng(0)
        batches = [(rng.normal(size=5000), rng.normal(size=5000)) for _ in range(nthreads)]
        serial = [fn.value_and_grad([0.7, -0.2], *d) for d in batches]
        same, wrong, errors = [0], [0], []

        def work(t):
            try:
                for _ in range(calls):
                    v, g = fn.value_and_grad([0.7, -0.2], *batches[t])
                    if v == serial[t][0] and np.array_equal(g, serial[t][1]):
                        same[0] += 1
                    else:
                        wrong[0] += 1
            except Exception as e:  # noqa: BLE001 - counted, printed
                errors.append(repr(e))

        ts = [threading.Thread(target=work, args=(t,)) for t in range(nthreads)]
        start = time.perf_counter()
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        out[parallel] = (same[0], wrong[0], errors, time.perf_counter() - start)
    return out


def processes(nproc):
    with tempfile.TemporaryDirectory() as cache:
        k = 1.0 + (uuid.uuid4().int % 10**6) / 10**6
        ps = [_child(cache, k) for _ in range(nproc)]
        results = [_result(p) for p in ps]
        os.environ["GRADC_CACHE_DIR"] = cache
        problems, keys = backend.verify(), [e["key"] for e in backend.entries()]
    ok = [r for r, e in results if r is not None]
    agree = len({(r["value"], tuple(r["grad"])) for r in ok}) == 1 and _right(ok[0], k) \
        if ok else False
    return len(ok), agree, problems, keys


def kills(n, seed=0):
    rnd = random.Random(seed)
    survived, killed, failures = 0, 0, []
    with tempfile.TemporaryDirectory() as cache:
        for _ in range(n):
            k = 2.0 + (uuid.uuid4().int % 10**6) / 10**6
            p = _child(cache, k)
            time.sleep(rnd.uniform(0.2, 2.5))
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                killed += 1
            p.communicate(timeout=60)
            r, err = _result(_child(cache, k))
            if r is None or not _right(r, k):
                failures.append(err or "wrong numbers")
            else:
                survived += 1
        os.environ["GRADC_CACHE_DIR"] = cache
        problems = backend.verify()
    return killed, survived, failures, problems


JUNK = [None, "ab", True, 3, float("nan"), np.inf, 1 + 2j, [], [1.0], [[1.0], [1.0, 2.0]],
        {"zz": 1.0}, np.ones((2, 3, 4)), np.zeros((0, 3)), np.array(["a"]), np.ones(5) + 1j,
        np.full(4, np.nan), np.ones((5, 3), dtype=np.float32), np.array([7.0, -1.0, 0.5]),
        np.ones(7, dtype=np.int8)]


def bad_inputs(n, seed=0):
    x, y, w0, w1, c = sp.symbols("x y w0 w1 c")
    W, v = sp.MatrixSymbol("W", 2, 3), sp.MatrixSymbol("v", 3, 1)
    T, ci = sp.IndexedBase("T", shape=(4, 2)), sp.Symbol("ci", integer=True)
    models = {
        "scalar": (gradc.compile((w0 * sp.tanh(w1 * x) - y) ** 2 + c * w0 ** 2,
                                 wrt=[w0, w1], data=[x, y], consts=[c]),
                   [0.3, -0.2], [np.ones(5), np.ones(5), 0.1]),
        "matrix": (gradc.compile(nn.sum(nn.tanh(W * v)), wrt=[W], data=[v]),
                   [np.ones((2, 3))], [np.ones((5, 3))]),
        "gather": (gradc.compile((T[ci, 0] * x - T[ci, 1]) ** 2, wrt=[T], data=[ci, x]),
                   [np.ones((4, 2))], [np.array([0.0, 1, 2, 3, 1]), np.ones(5)]),
    }
    methods = ["value", "grad", "value_and_grad", "jvp", "hvp", "hessian", "jacobian"]
    rnd = random.Random(seed)
    tally, others = Counter(), []
    for _ in range(n):
        name = rnd.choice(sorted(models))
        fn, params, args = models[name]
        params, args, tangent = list(params), list(args), list(params)
        junk = rnd.choice(JUNK)
        where = rnd.randrange(4)
        if where == 0:
            params = junk
        elif where == 1:
            params[rnd.randrange(len(params))] = junk
        elif where == 2:
            args[rnd.randrange(len(args))] = junk
        else:
            tangent = junk
        method = rnd.choice(methods)
        try:
            f = getattr(fn, method)
            f(params, tangent, *args) if method in ("jvp", "hvp") else f(params, *args)
            tally["returned"] += 1
        except gradc.GradcError:
            tally["GradcError"] += 1
        except Exception as e:  # noqa: BLE001 - the bug this looks for
            tally["other exception"] += 1
            others.append(f"{name}.{method}: {type(e).__name__}: {e}"[:160])
    return tally, others


def main():
    print(f"stress: gradc {gradc.__version__}, {os.cpu_count()} CPUs\n")
    nt, nc = (4, 50) if QUICK else (8, 200)
    print(f"1. threads: {nt} threads x {nc} value_and_grad calls each, 5,000 examples")
    for parallel, (same, wrong, errors, secs) in threads(nt, nc).items():
        print(f"   parallel={parallel!s:5}: {same} identical to serial, {wrong} different, "
              f"{len(errors)} exceptions, {secs:.2f} s")
    npr = 3 if QUICK else 6
    ok, agree, problems, keys = processes(npr)
    print(f"2. processes: {npr} compiling one new function at once on one empty cache: "
          f"{ok} finished, results {'identical and right' if agree else 'DIFFER or WRONG'}, "
          f"{len(keys)} entr{'y' if len(keys) == 1 else 'ies'} left, "
          f"verify: {problems or 'no problems'}")
    nk = 4 if QUICK else 20
    killed, survived, failures, problems = kills(nk)
    print(f"3. SIGKILL: {nk} compiles, {killed} killed mid-way (the rest had finished); "
          f"the process after each: {survived} right, {len(failures)} failed "
          f"{failures[:2] if failures else ''}; verify: {problems or 'no problems'}")
    nb = 300 if QUICK else 3000
    tally, others = bad_inputs(nb)
    print(f"4. bad input: {nb} malformed calls: " +
          ", ".join(f"{k} {v}" for k, v in sorted(tally.items())))
    for o in others[:10]:
        print("   " + o)


if __name__ == "__main__":
    main()
