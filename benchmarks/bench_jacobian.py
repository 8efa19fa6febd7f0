"""Benchmark gradc's Jacobian modes: forward, reverse, optimal (the planned bracketing), auto.

Usage::

    python benchmarks/bench_jacobian.py                 # everything (several minutes cold)
    python benchmarks/bench_jacobian.py --quick         # 6 chains, fewer rounds (smoke test)
    python benchmarks/bench_jacobian.py --chains 30 --seed 1
    python benchmarks/bench_jacobian.py --no-jax        # skip the optional JAX rows
    python benchmarks/bench_jacobian.py --no-heap-states  # skip the two heap-state children
    python benchmarks/bench_jacobian.py --only network  # (a)-(c) only; --only chains: (d) only;
                                                        # --only classifiers: (e) only
    python benchmarks/bench_jacobian.py --openblas-coretype SkylakeX
                                   # OpenBLAS's AVX-512 kernels (it picks Haswell on znver5)

Sections (float64, one thread: NUMBA/OMP/OPENBLAS/MKL_NUM_THREADS=1 and XLA's Eigen pool off,
unless already set)::

    (a) the full 1000x1000 Jacobian of tanh(W4 tanh(W3 tanh(W2 tanh(W1 x)))), widths
        1000-20-1000-20-1000, W1..W4 consts: gradc.compile(F, wrt=[x], consts=[W1..W4]),
        fn.jacobian([x], W1, W2, W3, W4, mode=...) for forward, reverse, optimal and auto;
        the plan (print(fn.plan)), flops, predicted and measured times, and where the time
        of auto goes (values kernel, each sweep, products, Python); one more row times a
        fix proposed for gradc/jacobian.py (JacobianEngine.adj returning its kernel's single
        output as a view instead of copying it with np.concatenate), patched on the engine
        instance of a second compiled function (gradc itself is not changed)
    (b) a hand-written numba evaluation of the same Jacobian following the plan's optimal
        bracketing ADJ(TAN(F8..F6, ADJ(F5, F4..F2)), F1): one @njit function, np.dot for the
        products, fused loops for the tanh slopes; once returning a new 1000x1000 array (as
        fn.jacobian does) and once writing into a preallocated one (the compute floor)
    (c) JAX (optional): jit(jacrev(f)) and jit(jacfwd(f)) in float64
    (d) random chains (seeded): x -> tanh(W_L ... tanh(W_1 x)), 2-6 layers, widths drawn
        log-uniformly from 2..1000; forward, reverse and optimal timed, auto's choice and the
        predicted times (fn.plan.seconds) noted; plot of predicted against measured time in
        docs/img/predicted_vs_measured.png
    (e) a softmax classifier softmax(W2 tanh(W1 x + b1) + b2), 64 inputs, 10 classes,
        hidden widths 16, 64, 256: the Jacobian of the probabilities with respect to the
        input x (10 x 64) and to all weight arrays (10 x P, matrices flattened row by row),
        every mode, against JAX's jit(jacrev) and jit(jacfwd)

Targets for (a): auto at least 2.5x faster than the best pure mode, and within 1.2x of the
hand-bracketed numba (new array).  For (d) the script reports for how many chains the mode
auto picks is within 1.25x of the fastest measured mode, and the geometric mean of (time of
auto's mode / fastest time).

All results are checked to agree (rtol 1e-9) before anything is timed.  Per-call times are
medians of round-robin samples (one sample of every case per round) measured in one process;
quote ratios, not absolute times (the machine is noisy).

Page faults: numpy and numba allocate results and temporaries with malloc; whether glibc
hands a freed 8 MB block back to the system (so that the next allocation pays a page fault
per 4 KiB page, about 4 us each on the development VM) depends on the heap's history.  The
default run therefore also re-times (a)-(c) in two child processes with the allocator pinned
(``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_``): "reuse" (freed memory stays in the
heap) and "fresh" (every block >= 128 KiB is a new mapping).  The tables give minor page
faults per call next to every time.
"""

import os
import sys

if "--openblas-coretype" in sys.argv:  # must precede the first load of OpenBLAS
    os.environ["OPENBLAS_CORETYPE"] = sys.argv[sys.argv.index("--openblas-coretype") + 1]
import _single  # noqa: E402  (one thread per library, one CPU)

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numba  # noqa: E402
import numpy as np  # noqa: E402
import sympy as sp  # noqa: E402

import gradc  # noqa: E402
from gradc import nn  # noqa: E402

RTOL = 1e-9
WIDTHS_A = (1000, 20, 1000, 20, 1000)
MODES = ("forward", "reverse", "optimal")
ROOT = Path(__file__).resolve().parent.parent
PLOT = ROOT / "docs" / "img" / "predicted_vs_measured.png"

HEAP_STATES = {
    "reuse": ((32 << 20, 1 << 40), "freed memory stays in the heap"),
    "fresh": ((128 << 10, 128 << 10), "every block >= 128 KiB is a new mapping"),
}


# ------------------------------------------------------------------------------ models
def tanh_chain(widths, name="W"):
    """(F, x, [W1..WL]) for F = tanh(W_L ... tanh(W_1 x)), W_l of shape widths[l] x widths[l-1]."""
    x = sp.MatrixSymbol("x", widths[0], 1)
    Ws = [sp.MatrixSymbol(f"{name}{i}", widths[i], widths[i - 1]) for i in range(1, len(widths))]
    F = x
    for W in Ws:
        F = nn.tanh(W * F)
    return F, x, Ws


def init_values(widths, seed):
    """x ~ N(0, 1) as a (n, 1) column and W_l ~ N(0, 1/fan_in)."""
    rng = np.random.default_rng(seed)
    Ws = [rng.normal(size=(widths[i], widths[i - 1])) / math.sqrt(widths[i - 1])
          for i in range(1, len(widths))]
    return rng.normal(size=(widths[0], 1)), Ws


# ------------------------------------------------------------------------------ (b) by hand
@numba.njit(cache=True)
def _tanh_slope(a):
    """h = tanh(a) and its slope 1 - h*h, for a 1-D array."""
    h = np.empty_like(a)
    d = np.empty_like(a)
    for i in range(a.size):
        t = math.tanh(a[i])
        h[i] = t
        d[i] = 1.0 - t * t
    return h, d


@numba.njit(cache=True)
def _hand_small(x, W1, W2, W3, W4):
    """Everything but the last product: B = J_{8..2} (1000 x 20), following the bracketing
    ADJ(TAN(F8..F6, ADJ(F5, F4..F2)), F1) with F1 = W1, F2 = tanh, F3 = W2, ... F8 = tanh."""
    h1, d1 = _tanh_slope(np.dot(W1, x))
    h2, d2 = _tanh_slope(np.dot(W2, h1))
    h3, d3 = _tanh_slope(np.dot(W3, h2))
    _, d4 = _tanh_slope(np.dot(W4, h3))
    # ADJ(F5, F4..F2): the rows of W3 (F5's explicit Jacobian) pulled back through
    # F4 = diag(d2), F3 = W2, F2 = diag(d1): A = W3 diag(d2) W2 diag(d1), 20 x 20
    m, k = W3.shape
    T = np.empty((m, k))
    for i in range(m):
        for j in range(k):
            T[i, j] = W3[i, j] * d2[j]
    A = np.dot(T, W2)
    # TAN(F8..F6, A): A's columns pushed through F6 = diag(d3), F7 = W4, F8 = diag(d4)
    for i in range(A.shape[0]):
        for j in range(A.shape[1]):
            A[i, j] *= d3[i] * d1[j]
    B = np.dot(W4, A)
    for i in range(B.shape[0]):
        for j in range(B.shape[1]):
            B[i, j] *= d4[i]
    return B


@numba.njit(cache=True)
def hand_jacobian(x, W1, W2, W3, W4):
    """The 1000 x 1000 Jacobian, a new array (ADJ(B, F1): the rows of B pulled back
    through F1 = W1 is the product B W1)."""
    return np.dot(_hand_small(x, W1, W2, W3, W4), W1)


@numba.njit(cache=True)
def hand_jacobian_into(out, x, W1, W2, W3, W4):
    """The same, written into the preallocated ``out`` (no fresh 8 MB per call)."""
    np.dot(_hand_small(x, W1, W2, W3, W4), W1, out)
    return out


# ------------------------------------------------------------------------------ (c) JAX
def make_jax(Ws_np, x_np):
    """(jacrev call, jacfwd call, compile seconds, version) or None if jax is missing."""
    try:
        import jax
    except Exception:  # noqa: BLE001
        return None
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    def f(x, *Ws):
        h = x
        for W in Ws:
            h = jnp.tanh(W @ h)
        return h

    xj = jnp.asarray(x_np[:, 0])
    Wj = [jnp.asarray(W) for W in Ws_np]
    rev, fwd = jax.jit(jax.jacrev(f)), jax.jit(jax.jacfwd(f))
    t0 = time.perf_counter()
    rev(xj, *Wj).block_until_ready()
    fwd(xj, *Wj).block_until_ready()
    compile_s = time.perf_counter() - t0
    return ((lambda: rev(xj, *Wj).block_until_ready()),
            (lambda: fwd(xj, *Wj).block_until_ready()), compile_s, jax.__version__)


# ------------------------------------------------------------------------------ timing
def _faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def time_round_robin(cases, rounds, target_sample=5e-3, budget=None):
    """{case: (median seconds per call, minor page faults per call, calls per sample)}.

    One sample of every case per round; a sample times ``inner`` back-to-back calls with
    ``inner`` chosen so that it lasts about ``target_sample`` seconds (>= 1).  ``budget``
    (seconds) lowers the number of rounds (not below 5) for slow cases.
    """
    inner, one = {}, {}
    for name, f in cases.items():
        f()
        t0 = time.perf_counter()
        f()
        one[name] = time.perf_counter() - t0
        inner[name] = max(1, int(target_sample / max(one[name], 1e-7)))
    if budget is not None:
        per_round = sum(inner[n] * one[n] for n in cases)
        rounds = max(5, min(rounds, int(budget / max(per_round, 1e-9))))
    samples = {name: [] for name in cases}
    faults = {name: 0 for name in cases}
    for _ in range(rounds):
        for name, f in cases.items():
            k = inner[name]
            r0 = _faults()
            t0 = time.perf_counter()
            for _ in range(k):
                f()
            samples[name].append((time.perf_counter() - t0) / k)
            faults[name] += _faults() - r0
    return {name: (float(np.median(samples[name])), faults[name] / (rounds * inner[name]),
                   inner[name]) for name in cases}, rounds


def assert_agree(name, J, ref):
    """J equals ref to RTOL (entries compared against max(|ref|, 1e-6 max|ref|))."""
    J = np.asarray(J)
    assert J.shape == ref.shape, f"{name}: shape {J.shape}, expected {ref.shape}"
    floor = 1e-6 * float(np.max(np.abs(ref)))
    np.testing.assert_allclose(J, ref, rtol=RTOL, atol=RTOL * floor, err_msg=name)
    return float(np.max(np.abs(J - ref) / np.maximum(np.abs(ref), floor)))


# ------------------------------------------------------------------------------ breakdown
def auto_breakdown(fn, params, weights, calls=20):
    """Median microseconds per call of each part of fn.jacobian(..., mode="auto").

    Wraps the engine's methods and kernels on the instance (gradc's code is not changed) and
    removes the wrappers afterwards.  Returns a list of (part, us, page faults) or None if
    the engine's internals have changed shape.
    """
    eng = fn.engine
    try:
        fn.jacobian(params, *weights, mode="auto")
        parts = {}

        def add(key, dt, df):
            parts.setdefault(key, []).append((dt, df))

        def timed(key, f):
            def g(*a, **k):
                r0, t0 = _faults(), time.perf_counter()
                out = f(*a, **k)
                add(key, time.perf_counter() - t0, _faults() - r0)
                return out
            return g

        kernels = dict(eng._kernels)
        for (kind, lo, hi), (k, side) in kernels.items():
            eng._kernels[(kind, lo, hi)] = (timed(f"  kernel {kind}({lo}..{hi})", k), side)
        values = eng._values()
        eng._values = lambda: timed("values kernel", values)
        for meth in ("tan", "adj"):
            orig = getattr(eng, meth)

            def wrapper(*a, orig=orig, meth=meth):
                lo_hi = [v for v in a if isinstance(v, int)]
                return timed(f"{meth}({lo_hi[0]}..{lo_hi[1]}) incl. seed/result handling",
                             orig)(*a)
            setattr(eng, meth, wrapper)
        plan_t, total = [], []
        for _ in range(calls):
            r0, t0 = _faults(), time.perf_counter()
            fn.plan.auto
            plan_t.append((time.perf_counter() - t0, _faults() - r0))
            r0, t0 = _faults(), time.perf_counter()
            fn.jacobian(params, *weights, mode="auto")
            total.append((time.perf_counter() - t0, _faults() - r0))
    except Exception as e:  # noqa: BLE001
        print(f"  (breakdown unavailable: {type(e).__name__}: {e})")
        return None
    finally:
        for attr in ("tan", "adj", "_values"):
            eng.__dict__.pop(attr, None)
        if "kernels" in locals():
            eng._kernels.update(kernels)

    def med(xs):
        return 1e6 * float(np.median([t for t, _ in xs])), float(np.mean([f for _, f in xs]))

    rows = [("fn.jacobian(mode='auto') total", *med(total)),
            ("fn.plan (auto's lookup, per call)", *med(plan_t))]
    rows += [(k, *med(v)) for k, v in parts.items()]
    # per call: total - plan - the outer parts (each called once per fn.jacobian call)
    outer = [v for k, v in parts.items() if not k.startswith("  ") and len(v) == calls]
    rest = [(total[i][0] - plan_t[i][0] - sum(v[i][0] for v in outer), 0) for i in range(calls)]
    rows.append(("rest: argument checks, freeing the result, Python", *med(rest)))
    return rows


# ------------------------------------------------------------------------------ (a)-(c)
FIX_ROW = "gradc optimal, proposed adj fix"


def proposed_fix(F, x, Ws):
    """A second compiled function whose engine's ``adj`` returns the kernel's only output
    as a view instead of copying it with np.concatenate (the fix proposed for
    gradc/jacobian.py), patched on the instance; None if the engine has changed shape."""
    import types

    fn = gradc.compile(F, wrt=[x], consts=Ws)
    eng = fn.engine
    if not all(hasattr(eng, a) for a in ("_kernel", "_inputs_of", "_value", "chain")):
        return None

    def adj(self, X, lo, hi):
        kernel, side = self._kernel("adj", lo, hi)
        X = np.eye(self.chain[hi - 1].piece.n_out) if X is None else X
        outs = kernel(self._inputs_of(lo), (np.ascontiguousarray(X),),
                      *[self._value(v) for v in side])
        if len(outs) == 1:
            return outs[0].reshape(X.shape[0], -1)
        return np.concatenate([np.reshape(o, (X.shape[0], -1)) for o in outs], axis=1)

    eng.adj = types.MethodType(adj, eng)
    return fn


def run_network(rounds, use_jax, verbose=True):
    """Sections (a)-(c) in this process: {case: (ms, faults/call)}, plus extras."""
    say = print if verbose else (lambda *a, **k: None)
    F, x, Ws = tanh_chain(WIDTHS_A)
    xv, wv = init_values(WIDTHS_A, seed=0)
    t0 = time.perf_counter()
    fn = gradc.compile(F, wrt=[x], consts=Ws)
    plan = fn.plan
    t_plan = time.perf_counter() - t0
    say(f"gradc.compile + fn.plan: {t_plan:.2f} s\n")
    say(plan)
    cp = plan.chain_plan
    say(f"\nflops (2 per multiply-add): forward {2 * cp.forward_cost:,}, reverse "
        f"{2 * cp.reverse_cost:,}, optimal {2 * cp.cost:,}; auto picks {plan.auto!r}")

    compile_s, J = {}, {}
    for mode in MODES + ("auto",):
        t0 = time.perf_counter()
        J[mode] = fn.jacobian([xv], *wv, mode=mode)
        compile_s[mode] = time.perf_counter() - t0
    t0 = time.perf_counter()
    hand_jacobian(xv[:, 0], *wv)
    out = np.empty((WIDTHS_A[-1], WIDTHS_A[0]))
    hand_jacobian_into(out, xv[:, 0], *wv)
    compile_s["hand"] = time.perf_counter() - t0
    say("first calls (numba compile or load from its disk cache, + one run): "
        + ", ".join(f"{m} {s:.2f} s" for m, s in compile_s.items()))

    cases = {
        "gradc forward": lambda: fn.jacobian([xv], *wv, mode="forward"),
        "gradc reverse": lambda: fn.jacobian([xv], *wv, mode="reverse"),
        "gradc optimal": lambda: fn.jacobian([xv], *wv, mode="optimal"),
        "gradc auto": lambda: fn.jacobian([xv], *wv, mode="auto"),
        "hand numba (new array)": lambda: hand_jacobian(xv[:, 0], *wv),
        "hand numba (into buffer)": lambda: hand_jacobian_into(out, xv[:, 0], *wv),
    }
    fixed = proposed_fix(F, x, Ws)
    if fixed is not None:
        J["optimal, proposed fix"] = fixed.jacobian([xv], *wv, mode="optimal")
        cases[FIX_ROW] = lambda: fixed.jacobian([xv], *wv, mode="optimal")
    ref = J["reverse"]
    results = {k: v for k, v in J.items()}
    results["hand"] = hand_jacobian(xv[:, 0], *wv)
    results["hand into"] = hand_jacobian_into(out, xv[:, 0], *wv).copy()
    jx = make_jax(wv, xv) if use_jax else None
    if jx is not None:
        jrev, jfwd, jcomp, jver = jx
        cases[f"JAX {jver} jit(jacrev)"] = jrev
        cases[f"JAX {jver} jit(jacfwd)"] = jfwd
        results["jax jacrev"], results["jax jacfwd"] = np.asarray(jrev()), np.asarray(jfwd())
        say(f"JAX {jver}: trace + XLA compile of both {jcomp:.2f} s")
    elif use_jax:
        say("JAX: not importable, rows skipped")
    say(f"\nagreement with gradc reverse mode (rtol {RTOL:g}):")
    for name, Jm in results.items():
        say(f"  {name:12s} max rel err {assert_agree(name, Jm, ref):.1e}  ok")

    med, rounds = time_round_robin(cases, rounds)
    pred = {f"gradc {m}": plan.seconds[m] for m in MODES}
    pred["gradc auto"] = plan.seconds[plan.auto]
    hand = med["hand numba (new array)"][0]
    say(f"\nper-call medians ({rounds} round-robin samples; calls per sample in brackets)")
    say(f"  {'case':40s}{'ms/call':>9s}{'predicted':>10s}{'x hand':>8s}{'faults/call':>12s}")
    for name, (s, f, k) in med.items():
        p = f"{pred[name] * 1e3:10.3f}" if name in pred else f"{'':10s}"
        say(f"  {name + f' [{k}]':40s}{s * 1e3:9.3f}{p}{s / hand:8.2f}{f:12.0f}")
    rows = auto_breakdown(fn, [xv], wv) if verbose else None
    if rows:
        say("\nwhere gradc auto's time goes (medians of 20 calls; indented: inside the line above)")
        say(f"  {'part':52s}{'us':>9s}{'faults':>8s}")
        for name, us, f in rows:
            say(f"  {name:52s}{us:9.0f}{f:8.0f}")
    return {name: (s * 1e3, f) for name, (s, f, _) in med.items()}, plan


def network_ratios(ms):
    """Headline ratios from {case: (ms, faults)}."""
    t = {k: v[0] for k, v in ms.items()}
    best_pure = min(t["gradc forward"], t["gradc reverse"])
    out = {
        "best pure mode / auto": best_pure / t["gradc auto"],
        "auto / hand numba (new array)": t["gradc auto"] / t["hand numba (new array)"],
        "auto / hand numba (into buffer)": t["gradc auto"] / t["hand numba (into buffer)"],
        "optimal / auto": t["gradc optimal"] / t["gradc auto"],
    }
    if FIX_ROW in t:
        out["proposed fix / hand numba (new array)"] = t[FIX_ROW] / t["hand numba (new array)"]
    jax_rows = [v for k, v in t.items() if k.startswith("JAX")]
    if jax_rows:
        out["auto / best JAX"] = t["gradc auto"] / min(jax_rows)
    return out


def print_targets(r, label=""):
    a = r["best pure mode / auto"]
    b = r["auto / hand numba (new array)"]
    print(f"  target{label}: auto >= 2.5x faster than the best pure mode: {a:.2f}x  "
          f"{'MET' if a >= 2.5 else 'NOT MET'}")
    print(f"  target{label}: auto within 1.2x of the hand-bracketed numba (new array): "
          f"{b:.2f}x  {'MET' if b <= 1.2 else 'NOT MET'}")


# ------------------------------------------------------------------------------ (d)
def random_widths(rng):
    layers = int(rng.integers(2, 7))
    return [int(round(math.exp(rng.uniform(math.log(2), math.log(1000)))))
            for _ in range(layers + 1)]


def run_chains(n_chains, seed, rounds, budget):
    """Section (d): a list of per-chain result dicts."""
    rng = np.random.default_rng(seed)
    out = []
    hdr = (f"  {'#':>2s} {'widths':30s}{'flops (M) fwd/rev/opt':>24s}  "
           f"{'predicted ms fwd/rev/opt':>26s}  {'measured ms fwd/rev/opt':>26s} "
           f"{'auto':>8s}{'fastest':>8s}{'auto/best':>10s}{'compile s':>10s}")
    print(hdr)
    for c in range(n_chains):
        widths = random_widths(rng)
        F, x, Ws = tanh_chain(widths)
        xv, wv = init_values(widths, seed=1000 + c)
        t0 = time.perf_counter()
        fn = gradc.compile(F, wrt=[x], consts=Ws)
        plan = fn.plan
        J = {m: fn.jacobian([xv], *wv, mode=m) for m in MODES}
        comp = time.perf_counter() - t0
        for m in MODES:
            assert_agree(f"chain {c} {m}", J[m], J["forward"])
        cases = {m: (lambda m=m: fn.jacobian([xv], *wv, mode=m)) for m in MODES}
        med, _ = time_round_robin(cases, rounds, budget=budget)
        meas = {m: med[m][0] for m in MODES}
        auto = plan.auto
        fastest = min(meas, key=meas.get)
        cp = plan.chain_plan
        flops = [2 * cp.forward_cost, 2 * cp.reverse_cost, 2 * cp.cost]
        row = dict(widths=widths, bracketing=cp.bracketing, flops=flops,
                   predicted={m: plan.seconds[m] for m in MODES}, measured=meas,
                   faults={m: med[m][1] for m in MODES}, auto=auto, fastest=fastest,
                   ratio=meas[auto] / meas[fastest], compile_s=comp)
        out.append(row)
        w = "-".join(map(str, widths))
        print(f"  {c:2d} {w:30s}"
              f"{'/'.join(f'{v / 1e6:.3g}' for v in flops):>24s}  "
              f"{'/'.join(f'{plan.seconds[m] * 1e3:.3g}' for m in MODES):>26s}  "
              f"{'/'.join(f'{meas[m] * 1e3:.3g}' for m in MODES):>26s} "
              f"{auto:>8s}{fastest:>8s}{row['ratio']:10.2f}{comp:10.1f}", flush=True)
    return out


def summarize_chains(rows):
    ok = sum(r["ratio"] <= 1.25 for r in rows)
    gm = math.exp(float(np.mean([math.log(r["ratio"]) for r in rows])))
    print(f"\n  auto's choice within 1.25x of the fastest measured mode: {ok} of {len(rows)}")
    print(f"  geometric mean of (time of auto's mode / fastest time): {gm:.3f}")
    print(f"  auto picked the fastest mode: {sum(r['auto'] == r['fastest'] for r in rows)} "
          f"of {len(rows)}; picks: "
          + ", ".join(f"{m} {sum(r['auto'] == m for r in rows)}" for m in MODES))
    ratios = np.array([r["measured"][m] / r["predicted"][m] for r in rows for m in MODES])
    print(f"  measured / predicted time over all chains and modes: median {np.median(ratios):.2f}"
          f", range {ratios.min():.2f}..{ratios.max():.2f}")
    worst = sorted(rows, key=lambda r: -r["ratio"])[:3]
    print("  worst choices: " + "; ".join(
        f"{'-'.join(map(str, r['widths']))}: auto {r['auto']} {r['ratio']:.2f}x "
        f"({r['bracketing']})" for r in worst))
    return ok, gm


def plot(rows, net, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 6))
    colors = {"forward": "tab:blue", "reverse": "tab:orange", "optimal": "tab:green"}
    allv = []
    for m in MODES:
        p = [r["predicted"][m] * 1e3 for r in rows]
        t = [r["measured"][m] * 1e3 for r in rows]
        allv += p + t
        ax.scatter(p, t, s=22, alpha=0.75, color=colors[m], label=f"{m} (random chains)")
    if net is not None:
        ms, plan = net
        for m in MODES:
            p, t = plan.seconds[m] * 1e3, ms[f"gradc {m}"][0]
            allv += [p, t]
            ax.scatter([p], [t], s=120, marker="*", color=colors[m], edgecolor="k",
                       label=f"{m} (1000-20-1000-20-1000)")
    lo, hi = min(allv) / 2, max(allv) * 2
    ax.plot([lo, hi], [lo, hi], "k-", lw=1, label="measured = predicted")
    ax.plot([lo, hi], [2 * lo, 2 * hi], "k:", lw=0.8, label="2x / 0.5x")
    ax.plot([lo, hi], [lo / 2, hi / 2], "k:", lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("predicted time, fn.plan.seconds (ms)")
    ax.set_ylabel("measured median time of fn.jacobian (ms)")
    ax.set_title("gradc Jacobian modes: predicted vs measured\n"
                 "(tanh chains, widths 2..1000, 1 thread)", fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(True, which="both", alpha=0.25)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    print(f"  wrote {path}")


# ------------------------------------------------------------------------------ main
def header(command):
    print(f"command: {command}")
    try:
        import llvmlite.binding as ll
        cpu = numba.config.CPU_NAME or ll.get_host_cpu_name()
    except Exception:  # noqa: BLE001
        cpu = "?"
    threads = ", ".join(f"{v}={os.environ.get(v)}" for v in
                        ("NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"))
    print(f"gradc {gradc.__version__}, numpy {np.__version__}, numba {numba.__version__}, "
          f"python {sys.version.split()[0]}; numba target CPU {cpu}; {threads}")
    print(_single.describe())


def heap_env(state):
    mmap, trim = HEAP_STATES[state][0]
    env = dict(os.environ)
    env["MALLOC_MMAP_THRESHOLD_"] = str(mmap)
    env["MALLOC_TRIM_THRESHOLD_"] = str(trim)
    env["GLIBC_TUNABLES"] = (f"glibc.malloc.mmap_threshold={mmap}:"
                             f"glibc.malloc.trim_threshold={trim}")
    return env


# ------------------------------------------------------------------------------ (e)
CLASSIFIER_HIDDEN = (16, 64, 256)


def classifier(d, h, k):
    """(F, x, [W1, b1, W2, b2]) for the softmax classifier softmax(W2 tanh(W1 x + b1) + b2)."""
    x = sp.MatrixSymbol("x", d, 1)
    W1, b1 = sp.MatrixSymbol("W1", h, d), sp.MatrixSymbol("b1", h, 1)
    W2, b2 = sp.MatrixSymbol("W2", k, h), sp.MatrixSymbol("b2", k, 1)
    return nn.softmax(W2 * nn.tanh(W1 * x + b1) + b2), x, [W1, b1, W2, b2]


def _jax_classifier(wrt_params):
    try:
        import jax
    except Exception:  # noqa: BLE001
        return None
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    def f(x, W1, b1, W2, b2):
        return jax.nn.softmax(W2 @ jnp.tanh(W1 @ x + b1) + b2)

    if wrt_params:
        def flat(x, *p):
            parts = jax.jacrev(f, argnums=(1, 2, 3, 4))(x, *p)
            return jnp.concatenate([q.reshape(q.shape[0], -1) for q in parts], axis=1)

        def flat_fwd(x, *p):
            parts = jax.jacfwd(f, argnums=(1, 2, 3, 4))(x, *p)
            return jnp.concatenate([q.reshape(q.shape[0], -1) for q in parts], axis=1)

        return jax.jit(flat), jax.jit(flat_fwd), jnp
    return jax.jit(jax.jacrev(f)), jax.jit(jax.jacfwd(f)), jnp


def run_classifiers(rounds, use_jax, d=64, k=10):
    """Section (e): the Jacobian of a softmax classifier's class probabilities with
    respect to the input (k x d) and to all four weight arrays (k x P), for several hidden
    widths; every gradc mode and JAX's jit(jacrev) / jit(jacfwd)."""
    print(f"  {'wrt':8s}{'hidden':>7s}{'P':>8s}  " + "".join(
        f"{m:>10s}" for m in ("auto", "forward", "reverse", "optimal", "coloured", "jacrev",
                              "jacfwd")) + f"{'auto/JAX':>10s}  plan picked")
    rows = []
    for h in CLASSIFIER_HIDDEN:
        F, x, ps = classifier(d, h, k)
        rng = np.random.default_rng(h)
        xv = rng.normal(size=(d, 1))
        pv = [rng.normal(size=tuple(q.shape)) / math.sqrt(q.shape[1] if q.shape[1] > 1 else 1)
              for q in ps]
        for wrt_params in (False, True):
            if wrt_params:
                fn = gradc.compile(F, wrt=ps, consts=[x])
                params, args = pv, [xv]
            else:
                fn = gradc.compile(F, wrt=[x], consts=ps)
                params, args = [xv], pv
            cases = {m: (lambda m=m: fn.jacobian(params, *args, mode=m))
                     for m in ("auto", "forward", "reverse", "optimal", "coloured")}
            ref = cases["reverse"]()
            for m, f in cases.items():
                assert_agree(f"classifier h={h} {m}", f(), ref)
            jx = _jax_classifier(wrt_params) if use_jax else None
            if jx is not None:
                rev, fwd, jnp = jx
                ja = [jnp.asarray(xv[:, 0])] + [jnp.asarray(v if v.shape[1] > 1 else v[:, 0])
                                                for v in pv]
                assert_agree(f"classifier h={h} jacrev", np.asarray(rev(*ja)), ref)
                cases["jacrev"] = lambda: rev(*ja).block_until_ready()
                cases["jacfwd"] = lambda: fwd(*ja).block_until_ready()
            med, _ = time_round_robin(cases, rounds, budget=3.0)
            ms = {m: med[m][0] * 1e3 for m in med}
            best_jax = min((ms[m] for m in ("jacrev", "jacfwd") if m in ms), default=math.nan)
            what = "params" if wrt_params else "input"
            picked = ("coloured" if fn._coloured_jacobian_wins() else
                      f"{fn.plan.auto} {fn.plan.bracketing}")
            print(f"  {what:8s}{h:7d}{ref.shape[1]:8d}  " + "".join(
                f"{ms.get(m, math.nan):10.3f}" for m in ("auto", "forward", "reverse", "optimal",
                                                         "coloured", "jacrev", "jacfwd"))
                  + f"{ms['auto'] / best_jax:10.2f}  {picked}", flush=True)
            rows.append(dict(wrt=what, hidden=h, ms=ms, ratio=ms["auto"] / best_jax))
    return rows


def run_heap_states(args):
    """(a)-(c) again in one child process per pinned heap state: {state: {case: (ms, f)}}."""
    out = {}
    with tempfile.TemporaryDirectory(prefix="bench-jac-") as tmp:
        for state in HEAP_STATES:
            path = os.path.join(tmp, f"{state}.json")
            cmd = [sys.executable, os.path.abspath(__file__), "--child", path,
                   "--rounds", str(args.rounds)] + (["--no-jax"] if args.no_jax else [])
            r = subprocess.run(cmd, env=heap_env(state), capture_output=True, text=True)
            if r.returncode != 0:
                print(f"  heap state {state}: child failed:\n{r.stdout}\n{r.stderr}")
                continue
            with open(path) as f:
                out[state] = {k: tuple(v) for k, v in json.load(f).items()}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--chains", type=int, default=None, help="random chains in (d) (20)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random chains")
    ap.add_argument("--rounds", type=int, default=None, help="round-robin samples (a): 40")
    ap.add_argument("--quick", action="store_true", help="6 chains, fewer rounds")
    ap.add_argument("--no-jax", action="store_true", help="skip the JAX rows")
    ap.add_argument("--no-heap-states", action="store_true",
                    help="skip re-timing (a)-(c) with the allocator pinned")
    ap.add_argument("--only", choices=("network", "chains", "classifiers"), default=None)
    ap.add_argument("--plot", default=str(PLOT), help="where to save the plot")
    ap.add_argument("--openblas-coretype", default=None,
                    help="set OPENBLAS_CORETYPE (e.g. SkylakeX) before OpenBLAS loads")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.rounds = args.rounds or (15 if args.quick else 40)
    if args.child:
        ms, _ = run_network(args.rounds, not args.no_jax, verbose=False)
        with open(args.child, "w") as f:
            json.dump(ms, f)
        return
    n_chains = args.chains or (6 if args.quick else 20)
    command = "python benchmarks/bench_jacobian.py " + " ".join(sys.argv[1:])
    start = time.perf_counter()
    header(command.strip())

    net = None
    if args.only in (None, "network"):
        print("\n=== (a)-(c) full Jacobian of tanh(W4 tanh(W3 tanh(W2 tanh(W1 x)))), "
              "widths 1000-20-1000-20-1000 ===")
        net = run_network(args.rounds, not args.no_jax)
        print("\nratios (this process, default allocator):")
        for k, v in network_ratios(net[0]).items():
            print(f"  {k:40s}{v:8.2f}")
        print_targets(network_ratios(net[0]))
        if not args.no_heap_states:
            print("\n--- (a)-(c) re-timed in child processes with the allocator pinned ---")
            states = {"default": net[0], **run_heap_states(args)}
            names = list(net[0])
            print("  median ms per call (minor page faults per call)")
            print(f"  {'case':34s}" + "".join(f"{s:>20s}" for s in states))
            for name in names:
                print(f"  {name:34s}" + "".join(
                    f"{states[s][name][0]:11.3f} ({states[s][name][1]:5.0f})"
                    for s in states if name in states[s]))
            for s, ms in states.items():
                what = HEAP_STATES[s][1] if s in HEAP_STATES else "as the heap happens to be"
                print(f"\n  heap state {s} ({what}):")
                for k, v in network_ratios(ms).items():
                    print(f"    {k:40s}{v:8.2f}")
                print_targets(network_ratios(ms), f" [{s}]")

    if args.only in (None, "classifiers"):
        print("\n=== (e) softmax classifier 64-h-10: Jacobian of the class probabilities "
              "with respect to the input and to W1, b1, W2, b2 (ms per call) ===")
        run_classifiers(9 if args.quick else 15, not args.no_jax)

    rows = None
    if args.only in (None, "chains"):
        print(f"\n=== (d) {n_chains} random tanh chains (seed {args.seed}), 2-6 layers, widths "
              f"log-uniform in 2..1000 ===")
        print("  (flops: 2 per multiply-add; compile s: gradc.compile + plan + first call of "
              "each mode; auto/best: measured time of auto's mode / fastest measured)")
        rows = run_chains(n_chains, args.seed, rounds=9 if args.quick else 15,
                          budget=1.5 if args.quick else 4.0)
        summarize_chains(rows)
        plot(rows, net, Path(args.plot))

    print(f"\ntotal {time.perf_counter() - start:.0f} s; reproduce with: "
          f"cd {ROOT} && {command.strip()}")


if __name__ == "__main__":
    main()
