"""Faults around the disk cache (issue 13, item 2): several processes compiling one new
function at the same moment, and processes killed with SIGKILL while they compile and
write.  Every process that finishes gets the right numbers, and what is left in the cache
is one entry that a later process trusts (``backend.verify()`` finds nothing) or nothing it
trips on."""

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest

import gradc
from gradc import backend

# a new function on every run (a fresh constant): its key is in no cache yet
CHILD = r"""
import json, sys
import numpy as np, sympy as sp, gradc
w, b, x, y = sp.symbols("w b x y")
c = float(sys.argv[1])
fn = gradc.compile((w * sp.tanh(b * x + c) - y) ** 2, wrt=[w, b], data=[x, y])
X = np.linspace(-1, 1, 50)
v, g = fn.value_and_grad([0.7, -0.3], X, np.sin(X))
print(json.dumps({"value": v, "grad": list(map(float, g)), "key": fn._key}))
"""


def _expected(c):
    import sympy as sp

    w, b, x, y = sp.symbols("w b x y")
    fn = gradc.compile((w * sp.tanh(b * x + c) - y) ** 2, wrt=[w, b], data=[x, y], jit=False)
    X = np.linspace(-1, 1, 50)
    return fn.value_and_grad([0.7, -0.3], X, np.sin(X))


def _start(cache, c):
    env = dict(os.environ, GRADC_CACHE_DIR=str(cache))
    return subprocess.Popen([sys.executable, "-c", CHILD, repr(c)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _check_cache(cache, monkeypatch):
    monkeypatch.setenv("GRADC_CACHE_DIR", str(cache))
    assert backend.verify() == []
    return backend.entries()


def test_processes_compiling_one_new_function_at_once(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    c = 0.1 + (uuid.uuid4().int % 1000) / 1e4
    procs = [_start(cache, c) for _ in range(3)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-2000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    value, grad = _expected(c)
    for r in results:
        assert r["value"] == pytest.approx(value, rel=1e-13)
        np.testing.assert_allclose(r["grad"], grad, rtol=1e-12)
    assert len({r["key"] for r in results}) == 1
    found = _check_cache(cache, monkeypatch)
    assert [e["key"] for e in found] == [results[0]["key"]]  # one entry, trusted


@pytest.mark.parametrize("delay", [0.5, 1.0, 1.1, 1.5, 1.9])
def test_sigkill_during_a_compile_leaves_nothing_a_later_process_trips_on(
        tmp_path, monkeypatch, delay):
    """The child is killed at some point of import, lowering, writing the entry or numba
    compiling and caching (the delays span a child's life here: imports until about 0.9 s,
    the entry written at about 1.0 s, numba compiling and caching until about 2.1 s);
    a second process on the same cache then computes the right numbers, and the cache
    verifies."""
    cache = tmp_path / "cache"
    c = 0.2 + (uuid.uuid4().int % 1000) / 1e4
    p = _start(cache, c)
    time.sleep(delay)
    if p.poll() is None:
        p.send_signal(signal.SIGKILL)
    p.communicate(timeout=60)
    q = _start(cache, c)
    out, err = q.communicate(timeout=600)
    assert q.returncode == 0, err[-2000:]
    r = json.loads(out.strip().splitlines()[-1])
    value, grad = _expected(c)
    assert r["value"] == pytest.approx(value, rel=1e-13)
    np.testing.assert_allclose(r["grad"], grad, rtol=1e-12)
    found = _check_cache(cache, monkeypatch)
    assert [e["key"] for e in found] == [r["key"]]
