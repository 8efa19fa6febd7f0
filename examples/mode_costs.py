"""Forward, reverse or a mix: what the order of the chain rule costs, for four chain shapes.

    python examples/mode_costs.py [OUTDIR] [--fast]

A network x -> tanh(W_L ... tanh(W_1 x)) is a chain of pieces F_1 (W_1), F_2 (tanh), ...,
and its Jacobian is the product J = J_q ... J_2 J_1 of the pieces' Jacobians.  Matrix
multiplication is associative, so that product can be evaluated in any order, and the
orders cost very different amounts:

* forward mode pushes the n_in columns of the identity through the chain from J_1 to J_q
  (tangent sweeps): cost n_in x (cost of one sweep).  It keeps the *first* dimension,
  so it is cheap when the input is small ("tall" chains);
* reverse mode pulls the n_out rows of the identity back from J_q to J_1 (adjoint sweeps):
  cost n_out x (cost of one sweep).  It keeps the *last* dimension, cheap when the output
  is small ("wide" chains; a gradient is the extreme case, n_out = 1);
* in between, any bracketing works: sweep part of the chain forward, part in reverse,
  multiply the results.  Finding the cheapest bracketing is a matrix chain problem, solved
  by dynamic programming over the sub-chains (gradc.planner.jacobian_chain, after
  Naumann's "Matrix-Free Jacobian Chaining").  For an hourglass (wide-narrow-wide) chain
  it beats both pure modes by a large factor; for a diamond (narrow-wide-narrow) both pure
  modes are already cheap and nearly optimal.

For each shape gradc compiles the chain (gradc.compile), prints its plan (fn.plan), computes
the Jacobian in every mode, checks that they agree and times them (median of a few runs),
next to the time the plan predicts (fn.plan.seconds, from calibrated machine rates).

Run as a script, it sets NUMBA/OMP/OPENBLAS/MKL_NUM_THREADS=1 unless already set: with
threaded BLAS on a busy two-core machine small products can be 10-30x slower and the timings
meaningless.

Figures: mode_costs_flops.png (flops of each mode, log scale, grouped by shape) and
mode_costs_times.png (measured and predicted time of each mode).

``--fast`` uses small widths and runs the generated code as plain Python
(``gradc.compile(..., jit=False)``) to skip numba's compile time: its flop counts and plans
are exact, but its measured times are interpreter times, not comparable with predictions.
"""

from __future__ import annotations

import os
import sys
import time

if __name__ == "__main__":  # one thread for steady timings (before numpy and numba load)
    for _var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # for _common, also when imported by path

import numpy as np  # noqa: E402
import sympy as sp  # noqa: E402

import gradc  # noqa: E402
from gradc import nn  # noqa: E402
from _common import banner, plt, prepare_outdir, run_script, save_figure  # noqa: E402

MODES = ("forward", "reverse", "optimal")
COLORS = {"forward": "tab:blue", "reverse": "tab:orange", "optimal": "tab:green"}

# layer widths n_0 (input), n_1, ..., n_L (output)
SHAPES = {
    "wide": ((800, 200, 50, 5), "input large, output small"),
    "tall": ((5, 50, 200, 800), "input small, output large"),
    "hourglass": ((600, 15, 600, 15, 600), "wide-narrow-wide, like 1000-20-1000-20-1000"),
    "diamond": ((10, 300, 800, 300, 10), "narrow-wide-narrow"),
}
FAST_SHAPES = {
    "wide": (60, 20, 8, 2),
    "tall": (2, 8, 20, 60),
    "hourglass": (40, 3, 40, 3, 40),
    "diamond": (3, 30, 60, 30, 3),
}


def tanh_chain(widths):
    """(F, x, [W1..WL]): F = tanh(W_L ... tanh(W_1 x)), W_l of shape n_l x n_(l-1)."""
    x = sp.MatrixSymbol("x", widths[0], 1)
    Ws = [sp.MatrixSymbol(f"W{i}", widths[i], widths[i - 1]) for i in range(1, len(widths))]
    F = x
    for W in Ws:
        F = nn.tanh(W * F)
    return F, x, Ws


def values(widths, seed=0):
    """x ~ N(0, 1) as a column, W_l ~ N(0, 1/n_(l-1)) (tanh stays out of saturation)."""
    rng = np.random.default_rng(seed)
    Ws = [rng.normal(size=(widths[i], widths[i - 1])) / np.sqrt(widths[i - 1])
          for i in range(1, len(widths))]
    return rng.normal(size=(widths[0], 1)), Ws


def median_times(fn, xv, Ws, repeats):
    """Median seconds per fn.jacobian call of each mode, timed round-robin."""
    samples = {m: [] for m in MODES}
    for _ in range(repeats):
        for m in MODES:
            t0 = time.perf_counter()
            fn.jacobian([xv], *Ws, mode=m)
            samples[m].append(time.perf_counter() - t0)
    return {m: float(np.median(s)) for m, s in samples.items()}


def study(name, widths, jit, repeats):
    """Plan, compute, check and time one chain; the numbers as a dict."""
    F, x, Ws = tanh_chain(widths)
    xv, wv = values(widths)
    t0 = time.perf_counter()
    fn = gradc.compile(F, wrt=[x], consts=Ws, jit=jit)
    plan = fn.plan
    cp = plan.chain_plan
    print(f"\n{name}: widths {'-'.join(map(str, widths))}")
    print(plan)
    J = {m: fn.jacobian([xv], *wv, mode=m) for m in MODES}  # compiles each mode's kernels
    first = time.perf_counter() - t0
    scale = float(np.max(np.abs(J["reverse"])))
    diff = max(float(np.max(np.abs(J[m] - J["reverse"]))) for m in MODES) / scale
    measured = median_times(fn, xv, wv, repeats)
    return {
        "widths": list(widths),
        "flops": {"forward": 2 * cp.forward_cost, "reverse": 2 * cp.reverse_cost,
                  "optimal": 2 * cp.cost},
        "fewest_flops": 2 * cp.flop_plan.cost,  # the plan of fewest flops (not always chosen)
        "predicted_s": {m: plan.seconds[m] for m in MODES},
        "measured_s": measured,
        "bracketing": cp.bracketing,
        "auto": plan.auto,
        "max_rel_diff": diff,
        "jacobians": J,
        "setup_s": first,
    }


def print_table(results, jit):
    banner("Cost of each mode (flops = 2 per multiply-add)")
    print(f"{'shape':10s}{'widths':22s}{'forward':>14s}{'reverse':>14s}{'optimal':>14s}"
          f"{'best pure/opt':>14s}  bracketing")
    for name, r in results.items():
        f = r["flops"]
        gain = min(f["forward"], f["reverse"]) / f["optimal"]
        print(f"{name:10s}{'-'.join(map(str, r['widths'])):22s}{f['forward']:14,}"
              f"{f['reverse']:14,}{f['optimal']:14,}{gain:13.2f}x  {r['bracketing']}")
    banner("Time of each mode, predicted (fn.plan.seconds) / measured (median), microseconds"
           + ("" if jit else "  [jit=False: measured = interpreter time]"))
    print(f"{'shape':10s}" + "".join(f"{m:>22s}" for m in MODES) + f"{'auto picks':>12s}"
          f"{'fastest':>10s}")
    for name, r in results.items():
        cells = "".join(f"{r['predicted_s'][m] * 1e6:10.1f} /{r['measured_s'][m] * 1e6:10.1f}"
                        for m in MODES)
        fastest = min(r["measured_s"], key=r["measured_s"].get)
        print(f"{name:10s}{cells}{r['auto']:>12s}{fastest:>10s}")
    print("\nall modes agree: max |J_mode - J_reverse| / max |J| = "
          + ", ".join(f"{name} {r['max_rel_diff']:.1e}" for name, r in results.items()))


def grouped_bars(ax, results, key, scale, ylabel, title, predicted=None):
    names = list(results)
    width = 0.8 / len(MODES)
    for k, m in enumerate(MODES):
        pos = np.arange(len(names)) + (k - 1) * width
        vals = [results[n][key][m] * scale for n in names]
        ax.bar(pos, vals, width * 0.95, color=COLORS[m], label=m)
        if predicted is not None:
            pv = [results[n][predicted][m] * scale for n in names]
            ax.scatter(pos, pv, marker="_", s=300, color="k", zorder=3,
                       label="predicted" if k == 0 else None)
    ax.set_xticks(np.arange(len(names)))
    ax.set_xticklabels([f"{n}\n{'-'.join(map(str, results[n]['widths']))}" for n in names],
                       fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", which="both", alpha=0.25)


def main(outdir=None, fast=False):
    outdir = prepare_outdir(outdir)
    jit = not fast
    shapes = {n: (FAST_SHAPES[n] if fast else w) for n, (w, _) in SHAPES.items()}
    banner("The chain rule in different orders: forward, reverse, optimal")
    for n, (w, what) in SHAPES.items():
        print(f"  {n:10s} {what}: widths {'-'.join(map(str, shapes[n]))}")
    results = {n: study(n, w, jit, repeats=3 if fast else 7) for n, w in shapes.items()}
    print_table(results, jit)
    print("\nReverse mode's cost scales with the output width (the last dimension), forward "
          "mode's with the input\nwidth (the first); the dynamic programme over sub-chains "
          "finds the cheapest mix.")

    written = []
    fig, ax = plt.subplots(figsize=(8, 4.5))
    grouped_bars(ax, results, "flops", 1.0, "flops (2 per multiply-add)",
                 "Jacobian cost by mode: reverse keeps the last dimension, forward the first")
    save_figure(fig, outdir, "mode_costs_flops.png", written)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    grouped_bars(ax, results, "measured_s", 1e6, "time per Jacobian (us)",
                 "measured (bars, median) and predicted (black ticks) time"
                 + ("" if jit else "\njit=False: bars are interpreter times"),
                 predicted="predicted_s")
    save_figure(fig, outdir, "mode_costs_times.png", written)
    return {"files": written, "shapes": results, "jit": jit}


if __name__ == "__main__":
    run_script(main, "forward vs reverse vs optimal Jacobian accumulation for four chain shapes")
