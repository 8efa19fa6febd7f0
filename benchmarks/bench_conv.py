"""Indexed models: the lecture's convolutional and locally connected networks on 28x28 images.

Usage::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_conv.py
    python benchmarks/bench_conv.py --quick        # fewer samples, channels 8 only
    python benchmarks/bench_conv.py --no-compile   # skip the cold-compile curve
    python benchmarks/bench_conv.py --json conv.json

The models (float64, batch 128, 10 classes, ``reduce="mean"``), written with sympy
``IndexedBase`` and ``Sum`` (``gradc/indexed.py`` compiles them to loop nests):

* **conv**: ``z[i,j,c] = Sum(x[i+di, j+dj] K[di,dj,c], di, dj < 3) + B[c]`` (C shared 3x3
  filters), ``logit[k] = Sum(V[k,i,j,c] Max(z, 0)) + b2[k]``, softmax cross-entropy, with
  C = 8 and 32 channels, and C = 8 with the image padded by one zero on each side
  (``nn.pad``; a 28x28 output, ``padding=1`` in the peers).  Peers: JAX (``lax.conv_general_dilated`` under
  ``jit(value_and_grad)``), PyTorch (``conv2d`` on CPU, when it imports) and a hand-written
  numpy forward and backward pass (slices and ``einsum``).
* **local**: the locally connected (unshared) layer, ``W[i,j,di,dj,c]`` and ``B[i,j,c]``
  per output position, C = 8.  JAX and PyTorch have no such layer; the peer is the numpy
  pass (slices and ``einsum``), and JAX jitting the same numpy formulas.

Every result (value and every gradient) is checked against the numpy pass (rtol 1e-9)
before timing.  Timings are medians of round-robin samples, single-threaded and pinned to
one CPU (``_single.py``).  The cold-compile curve compiles the conv network at 8x8, 14x14
and 28x28 inputs in fresh processes with an empty ``GRADC_CACHE_DIR``: the time of
``gradc.compile`` plus the first ``value_and_grad`` (numba), which should not grow with
the image.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import _single  # noqa: E402  (one thread per library, one CPU)
from _single import medians  # noqa: E402

import json  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import sympy as sp  # noqa: E402

import gradc  # noqa: E402
from gradc import nn  # noqa: E402
from _revision import gradc_revision  # noqa: E402

QUICK = "--quick" in sys.argv
BATCH, CLASSES, RTOL = 128, 10, 1e-9


# ------------------------------------------------------------------------------ models
def network(H, C, local=False, pad=0):
    """(loss, wrt, data) of the conv (or locally connected) network on HxH inputs
    (surrounded by ``pad`` zeros: ``nn.pad``)."""
    i, j, c, di, dj, k, q = sp.symbols("i j c di dj k q", integer=True)
    O = H - 2 + 2 * pad
    x = sp.IndexedBase("x", shape=(H, H))
    data_x = x
    x = nn.pad(x, pad)
    if local:
        W = sp.IndexedBase("W", shape=(O, O, 3, 3, C))
        B = sp.IndexedBase("B", shape=(O, O, C))
        z = sp.Sum(x[i + di, j + dj] * W[i, j, di, dj, c], (di, 0, 2), (dj, 0, 2)) + B[i, j, c]
    else:
        W = sp.IndexedBase("K", shape=(3, 3, C))
        B = sp.IndexedBase("B", shape=(C,))
        z = sp.Sum(x[i + di, j + dj] * W[di, dj, c], (di, 0, 2), (dj, 0, 2)) + B[c]
    V = sp.IndexedBase("V", shape=(CLASSES, O, O, C))
    b2 = sp.IndexedBase("b2", shape=(CLASSES,))
    label = sp.Symbol("label", integer=True)
    logit = sp.Sum(V[k, i, j, c] * sp.Max(z, 0), (i, 0, O - 1), (j, 0, O - 1),
                   (c, 0, C - 1)) + b2[k]
    loss = nn.cross_entropy(sp.FunctionMatrix(CLASSES, 1, sp.Lambda((k, q), logit)), label)
    return loss, [W, B, V, b2], [data_x, label]


def point(H, C, local=False, seed=0, pad=0):
    rng = np.random.default_rng(seed)
    O = H - 2 + 2 * pad
    W = rng.normal(size=(O, O, 3, 3, C) if local else (3, 3, C)) / 3
    B = rng.normal(size=(O, O, C) if local else (C,)) * 0.1
    V = rng.normal(size=(CLASSES, O, O, C)) / np.sqrt(O * O * C)
    P = [W, B, V, rng.normal(size=CLASSES) * 0.1]
    X = rng.random(size=(BATCH, H, H))
    L = rng.integers(0, CLASSES, size=BATCH)
    return P, X, L


# ------------------------------------------------------------------------------ numpy
def numpy_value_and_grad(P, X, L, local=False, pad=0):
    """The hand-written forward and backward pass (slices and einsum)."""
    W, B, V, b2 = P
    if pad:
        X = np.pad(X, ((0, 0), (pad, pad), (pad, pad)))
    n, H = X.shape[0], X.shape[1]
    O = H - 2
    patches = np.stack([X[:, a:a + O, b:b + O] for a in range(3) for b in range(3)], -1)
    if local:
        Z = np.einsum("nijp,ijpc->nijc", patches, W.reshape(O, O, 9, -1)) + B
    else:
        Z = patches @ W.reshape(9, -1) + B
    R = np.maximum(Z, 0.0)
    lg = np.einsum("nijc,kijc->nk", R, V) + b2
    mx = lg.max(1, keepdims=True)
    ex = np.exp(lg - mx)
    lse = np.log(ex.sum(1)) + mx[:, 0]
    value = float(np.mean(lse - lg[np.arange(n), L]))
    G = ex / ex.sum(1, keepdims=True)
    G[np.arange(n), L] -= 1.0
    G /= n
    gb2 = G.sum(0)
    gV = np.einsum("nk,nijc->kijc", G, R)
    gZ = np.einsum("nk,kijc->nijc", G, V) * (Z > 0)
    if local:
        gW = np.einsum("nijp,nijc->ijpc", patches, gZ).reshape(W.shape)
        gB = gZ.sum(0)
    else:
        gW = (patches.reshape(-1, 9).T @ gZ.reshape(-1, gZ.shape[-1])).reshape(W.shape)
        gB = gZ.sum((0, 1, 2))
    return value, [gW, gB, gV, gb2]


# ------------------------------------------------------------------------------ peers
def jax_conv(P, X, L, local=False, pad=0):
    try:
        import jax
        import jax.numpy as jnp
    except Exception:  # noqa: BLE001 - optional peer
        return None
    jax.config.update("jax_enable_x64", True)
    n, H = X.shape[0], X.shape[1]
    O = H - 2 + 2 * pad

    def loss(P, X, L):
        W, B, V, b2 = P
        if local:
            X = jnp.pad(X, ((0, 0), (pad, pad), (pad, pad))) if pad else X
            patches = jnp.stack([X[:, a:a + O, b:b + O] for a in range(3) for b in range(3)], -1)
            Z = jnp.einsum("nijp,ijpc->nijc", patches, W.reshape(O, O, 9, -1)) + B
        else:
            kern = jnp.transpose(W, (2, 0, 1))[:, None]  # (C, 1, 3, 3): OIHW
            Z = jax.lax.conv_general_dilated(X[:, None], kern, (1, 1), [(pad, pad)] * 2)
            Z = jnp.transpose(Z, (0, 2, 3, 1)) + B
        R = jnp.maximum(Z, 0.0)
        lg = jnp.einsum("nijc,kijc->nk", R, V) + b2
        lse = jax.scipy.special.logsumexp(lg, axis=1)
        return jnp.mean(lse - lg[jnp.arange(n), L])

    vg = jax.jit(jax.value_and_grad(loss))
    dev = ([jnp.asarray(p) for p in P], jnp.asarray(X), jnp.asarray(L))

    def call():
        return jax.block_until_ready(vg(*dev))

    def result():
        v, g = call()
        return float(v), [np.asarray(a) for a in g]

    return call, result, jax.__version__


def torch_conv(P, X, L, pad=0):
    try:
        import torch
    except Exception:  # noqa: BLE001 - optional peer
        return None
    torch.set_num_threads(1)
    W, B, V, b2 = (torch.tensor(p, requires_grad=True) for p in P)
    Xt = torch.tensor(X)[:, None]
    Lt = torch.tensor(L)

    def call():
        for p in (W, B, V, b2):
            p.grad = None
        Z = torch.nn.functional.conv2d(Xt, W.permute(2, 0, 1)[:, None], B, padding=pad)
        R = torch.relu(Z)
        lg = torch.einsum("ncij,kijc->nk", R, V) + b2
        value = torch.nn.functional.cross_entropy(lg, Lt)
        value.backward()
        return value

    def result():
        v = call()
        return float(v.detach()), [p.grad.numpy().copy() for p in (W, B, V, b2)]

    return call, result, torch.__version__


# ------------------------------------------------------------------------------ timing
def check(name, got, want):
    v, g = got
    wv, wg = want
    assert abs(v - wv) <= RTOL * abs(wv), (name, v, wv)
    for a, b in zip(g, wg):
        a, b = np.asarray(a), np.asarray(b)
        scale = np.max(np.abs(b)) or 1.0
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=1e-9 * scale, err_msg=name)


def run_case(name, H, C, local, rounds, pad=0):
    loss, wrt, data = network(H, C, local, pad)
    P, X, L = point(H, C, local, pad=pad)
    t0 = time.perf_counter()
    fn = gradc.compile(loss, wrt=wrt, data=data)
    want = numpy_value_and_grad(P, X, L, local, pad)
    check(f"{name} gradc", fn.value_and_grad(P, X, L), want)
    first = time.perf_counter() - t0
    cases = {"gradc": lambda: fn.value_and_grad(P, X, L),
             "numpy": lambda: numpy_value_and_grad(P, X, L, local, pad)}
    versions = {}
    if "--no-jax" not in sys.argv:
        jx = jax_conv(P, X, L, local, pad)
        if jx is not None:
            check(f"{name} jax", jx[1](), want)
            cases["jax"], versions["jax"] = jx[0], jx[2]
    if not local:
        th = torch_conv(P, X, L, pad)
        if th is not None:
            check(f"{name} torch", th[1](), want)
            cases["torch"], versions["torch"] = th[0], th[2]
    t = medians(cases, rounds)
    peers = [k for k in ("jax", "torch") if k in t] if not local else ["numpy"]
    best = min(peers, key=lambda k: t[k]) if peers else None
    row = {"case": name, "H": H, "C": C, "first_call_s": first,
           **{f"{k}_ms": v * 1e3 for k, v in t.items()},
           "gradc/numpy": t["gradc"] / t["numpy"]}
    if best:
        row["peer"] = best
        row["gradc/peer"] = t["gradc"] / t[best]
    return row, versions


def cold_compile(H, C=8):
    """Seconds of compile + first value_and_grad in a fresh process and empty cache."""
    code = (f"import sys, time; sys.path.insert(0, {HERE!r}); import _single, bench_conv as b; "
            f"loss, wrt, data = b.network({H}, {C}); P, X, L = b.point({H}, {C}); "
            "import gradc; t = time.perf_counter(); "
            "fn = gradc.compile(loss, wrt=wrt, data=data); t1 = time.perf_counter(); "
            "fn.value_and_grad(P, X, L); t2 = time.perf_counter(); "
            "print(t1 - t, t2 - t1)")
    got, error = _single.fresh_process(code)
    if error:
        return {"H": H, "error": error}
    lower, numba = got
    return {"H": H, "C": C, "compile_s": lower, "first_call_s": numba, "total_s": lower + numba}


def main():
    print(f"bench_conv: gradc {gradc.__version__} ({gradc_revision()}), {_single.describe()}")
    print(f"batch {BATCH}, 28x28 inputs, {CLASSES} classes, float64, value_and_grad\n")
    rounds = 7 if QUICK else 25
    cases = [("conv C=8", 28, 8, False, 0)] \
        + ([] if QUICK else [("conv C=32", 28, 32, False, 0), ("conv C=8 pad=1", 28, 8, False, 1)]) \
        + [("local C=8", 28, 8, True, 0)]
    rows, versions = [], {}
    for name, H, C, local, pad in cases:
        row, v = run_case(name, H, C, local, rounds, pad)
        versions.update(v)
        rows.append(row)
        peer = f", {row['peer']} {row[row['peer'] + '_ms']:.2f} ms: gradc/{row['peer']} " \
               f"{row['gradc/peer']:.2f}" if "peer" in row else ""
        others = ", ".join(f"{k} {row[k + '_ms']:.2f} ms" for k in ("jax", "torch")
                           if k + "_ms" in row and k != row.get("peer"))
        print(f"  {name:14s} gradc {row['gradc_ms']:8.2f} ms, numpy {row['numpy_ms']:8.2f} ms "
              f"(gradc/numpy {row['gradc/numpy']:.2f}){peer}" + (f"; {others}" if others else ""))
    print(f"\npeers: {versions or 'none'}")
    compiles = []
    if "--no-compile" not in sys.argv:
        print("\ncold compile of the conv network (C=8), fresh process, empty cache:")
        for H in (8, 14, 28):
            c = cold_compile(H)
            compiles.append(c)
            if "error" in c:
                print(f"  {H}x{H}: {c['error']}")
            else:
                print(f"  {H:2d}x{H:<2d}  gradc.compile {c['compile_s']:.2f} s + first "
                      f"value_and_grad {c['first_call_s']:.2f} s = {c['total_s']:.2f} s")
        ok = [c for c in compiles if "error" not in c]
        if len(ok) >= 2:
            print(f"  28x28 / 8x8: {ok[-1]['total_s'] / ok[0]['total_s']:.2f}")
    if "--json" in sys.argv:
        path = sys.argv[sys.argv.index("--json") + 1]
        with open(path, "w") as f:
            json.dump({"rows": rows, "compile": compiles, "versions": versions}, f, indent=1)


if __name__ == "__main__":
    main()
