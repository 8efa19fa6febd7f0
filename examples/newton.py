"""Newton's method with gradc's Hessian-vector products, against L-BFGS-B (gradient only).

    python examples/newton.py [OUTDIR] [--fast]

Two problems, each minimised by ``scipy.optimize.minimize`` twice, from the same start:
with ``trust-ncg`` (a Newton method: each step solves H s = -g approximately by conjugate
gradients, so it needs only products H p, which ``gradc.Objective.hessp`` computes with
one forward-over-reverse kernel call, never forming H) and with ``L-BFGS-B`` (a
quasi-Newton method that builds a low-rank curvature estimate from past gradients).

1. The lecture's tanh network f(x) = w0 + sum_i w_i tanh(v_i x + b_i), 3 units (10
   parameters), fit to y = sin(x) on a few thousand generated points of [-pi, pi] by the
   mean squared error.  Near its minimum the Hessian is badly conditioned (eigenvalues
   over many decades: long, flat, curved valleys), where gradient methods crawl and
   Newton's method, which rescales every direction by its curvature, needs several times
   fewer iterations.  The Hessian at each end point (``fn.hessian``) shows it.
2. The chained Rosenbrock function sum_i 100 (x_{i+1} - x_i^2)^2 + (1 - x_i)^2 of 1,000
   variables (no data).  Its Hessian is tridiagonal, and gradc's plan
   (``fn.hessian_plan``) finds a star colouring with 3 colours: the whole 1,000 x 1,000
   Hessian costs 3 HVP sweeps instead of 1,000.  The Hessian at the solution confirms
   a minimum (positive definite).

For each run the table reports the iterations, the kernel calls counted by ``obj.calls``
(a value-and-gradient kernel serves both ``fun`` and ``jac`` at one point; each ``hessp``
is one value-gradient-HVP kernel), scipy's own nfev/njev, the wall time, and the final
loss and gradient norm.  Both methods stop at a gradient tolerance of 1e-8 (trust-ncg:
Euclidean norm; L-BFGS-B: largest entry, with ``ftol=0`` so that it does not stop early
on a small decrease of the loss).  trust-ncg counts rejected trial steps as iterations
too.  BLAS runs on one thread while timing (``threadpoolctl``, when installed): on a busy
machine threaded BLAS makes L-BFGS-B's small vector operations erratically slow.

``--fast`` fits the network to 2,000 points from one start (seed 0); the full run to
5,000 points from five starts, and times the chain's compiled Hessian, coloured and
dense.  ``fn.hessian`` runs the HVP kernel the optimiser already compiled, once per
colour (or per parameter), so the Hessians cost no further compile.

Figure: newton.png, the loss (top) and the gradient norm (bottom) against the iteration
for both methods and both problems (log scale).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # for _common, also when imported by path

import numpy as np  # noqa: E402
import sympy as sp  # noqa: E402
from scipy.optimize import minimize  # noqa: E402
from scipy.sparse.linalg import eigsh  # noqa: E402

import gradc  # noqa: E402
from _common import banner, plt, prepare_outdir, run_script, save_figure  # noqa: E402

UNITS = 3
GTOL = 1e-8
METHODS = ("trust-ncg", "L-BFGS-B")
COLORS = {"trust-ncg": "tab:red", "L-BFGS-B": "tab:blue"}


def one_blas_thread():
    """A context limiting BLAS to one thread (a no-op without threadpoolctl)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


# ---------------------------------------------------------------------------- the models
def tanh_network(units=UNITS):
    """The network's per-example squared loss, its parameters and its data symbols."""
    x, y = sp.symbols("x y")
    v = sp.symbols(f"v1:{units + 1}")  # input weights
    b = sp.symbols(f"b1:{units + 1}")  # hidden biases
    w = sp.symbols(f"w0:{units + 1}")  # output bias w0 and output weights
    f = w[0] + sp.Add(*[w[i + 1] * sp.tanh(v[i] * x + b[i]) for i in range(units)])
    return f, (f - y) ** 2, [*v, *b, *w], [x, y]


def tanh_start(seed, units=UNITS):
    """A random start in wrt order (v, b, w), scaled as in examples/approximation.py."""
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(0.0, 2.0, units), rng.normal(0.0, 1.0, units),
                           rng.normal(0.0, 0.5, units + 1)])


def chain(n):
    """The chained Rosenbrock function of n variables (built with one sp.Add: Python's
    sum() would rebuild the growing sum at every term, quadratic in n)."""
    xs = sp.symbols(f"x0:{n}")
    terms = [100 * (xs[i + 1] - xs[i] ** 2) ** 2 + (1 - xs[i]) ** 2 for i in range(n - 1)]
    return sp.Add(*terms), list(xs)


# ---------------------------------------------------------------------------- one run
def minimise(fn, args, x0, method, maxiter):
    """Minimise ``fn`` (bound to ``args``) from ``x0`` with ``method``; returns a dict of
    the counts, the time, the result and the loss and gradient-norm curves.

    The curves are read by a second Objective (``monitor``) inside the callback, so that
    ``obj.calls`` counts the optimiser's own kernel calls only; the callback's time is
    taken off the wall time.
    """
    obj = gradc.Objective(fn, *args)
    monitor = gradc.Objective(fn, *args)
    losses, gnorms = [], []
    spent = [0.0]

    def record(x):
        t = time.perf_counter()
        value, g = monitor.value_and_grad(x)
        losses.append(value)
        gnorms.append(float(np.linalg.norm(g)))
        spent[0] += time.perf_counter() - t

    def callback(intermediate_result):
        record(intermediate_result.x)

    record(x0)  # iteration 0: the start
    if method == "trust-ncg":
        kwargs = dict(hessp=obj.hessp, options=dict(gtol=GTOL, maxiter=maxiter))
    else:
        kwargs = dict(options=dict(gtol=GTOL, ftol=0.0, maxiter=maxiter, maxfun=4 * maxiter))
    with one_blas_thread():
        start = time.perf_counter()
        res = minimize(obj.fun, x0, jac=obj.jac, method=method, callback=callback, **kwargs)
        seconds = time.perf_counter() - start - spent[0]
    loss, g = monitor.value_and_grad(res.x)
    return {
        "method": method, "iterations": int(res.nit), "calls": dict(obj.calls),
        "nfev": int(res.nfev), "njev": int(res.njev),
        "seconds": seconds, "loss": float(loss), "grad_norm": float(np.linalg.norm(g)),
        "success": bool(res.success), "message": str(res.message),
        "losses": losses, "grad_norms": gnorms, "x": res.x,
    }


def table(runs):
    """Print the comparison of the runs."""
    print(f"  {'method':10s} {'iters':>6s} {'val+grad':>9s} {'HVP':>7s} "
          f"{'nfev/njev':>10s} {'time':>8s} {'final loss':>11s} {'|grad|':>9s}")
    for r in runs:
        c = r["calls"]
        counts = f"{r['nfev']}/{r['njev']}"
        print(f"  {r['method']:10s} {r['iterations']:6d} {c['value_and_grad']:9d} "
              f"{c['hvp']:7d} {counts:>10s} {r['seconds']:7.3f}s {r['loss']:11.3e} "
              f"{r['grad_norm']:9.1e}")
    for r in runs:
        print(f"  {r['method']}: {r['message']}")


# ---------------------------------------------------------------------------- 1. tanh net
def network_problem(fast):
    banner(f"1. A {UNITS}-unit tanh network fit to sin(x) (mean squared error)")
    f, loss, wrt, data = tanh_network()
    n = 2000 if fast else 5000
    seeds = [0] if fast else [0, 1, 2, 3, 4]
    print(f"f(x) = {f}")
    print(f"{n} points x ~ U(-pi, pi), y = sin(x); {len(wrt)} parameters; "
          f"random start(s) with seed(s) {seeds}")
    fn = gradc.compile(loss, wrt=wrt, data=data)  # reduce="mean"
    rng = np.random.default_rng(2024)
    X = rng.uniform(-np.pi, np.pi, n)
    Y = np.sin(X)
    # compile the kernels before anything is timed
    warm = gradc.Objective(fn, X, Y)
    warm.value_and_grad(tanh_start(0))
    warm.hessp(tanh_start(0), tanh_start(1))

    all_runs = {}
    for seed in seeds:
        x0 = tanh_start(seed)
        runs = [minimise(fn, (X, Y), x0, m, maxiter=20000) for m in METHODS]
        all_runs[seed] = runs
        print(f"\nseed {seed}, start loss {runs[0]['losses'][0]:.3f}:")
        table(runs)
    if len(seeds) > 1:
        its = {m: [all_runs[sd][i]["iterations"] for sd in seeds] for i, m in enumerate(METHODS)}
        lower = sum(all_runs[sd][0]["loss"] < all_runs[sd][1]["loss"] for sd in seeds)
        print(f"\nover the {len(seeds)} starts: median iterations "
              + ", ".join(f"{m} {int(np.median(v))}" for m, v in its.items())
              + f"; trust-ncg fewer in {sum(a < b for a, b in zip(*its.values()))}, lower "
              f"final loss in {lower} (the starts reach different local minima)")

    # The second-derivative test at both end points of the first seed (fn.hessian runs
    # the HVP kernel trust-ncg compiled, once per parameter).
    plan = fn.hessian_plan
    print(f"\nThe Hessian at each end point of seed {seeds[0]} (fn.hessian: "
          f"{plan.option(plan.choice).sweeps} HVP sweeps, {plan.choice}), eigenvalues:")
    eigenvalues = {}
    for r in all_runs[seeds[0]]:
        eig = np.linalg.eigvalsh(fn.hessian(r["x"], X, Y))
        eigenvalues[r["method"]] = eig.tolist()
        verdict = (f"all positive: a minimum, condition number {eig[-1] / eig[0]:.0e}"
                   if eig[0] > 1e-12 * eig[-1] else
                   "the smallest is zero to rounding or negative: not a strict minimum "
                   "(a flat plateau)")
        print(f"  {r['method']:10s} (loss {r['loss']:.2e}): "
              + " ".join(f"{e:.1e}" for e in eig) + f"\n  {'':10s} {verdict}")
    print("Curvatures over many decades: along the flat directions the gradient is tiny "
          "and\na gradient method crawls; Newton's method divides by the curvature.")
    return {"runs": all_runs, "hessian_eigenvalues": eigenvalues, "n": n}


# ---------------------------------------------------------------------------- 2. chain
def chain_problem(fast):
    n = 1000
    banner(f"2. The chained Rosenbrock function of {n:,} variables")
    start = time.perf_counter()
    expr, xs = chain(n)
    fn = gradc.compile(expr, wrt=xs)
    print(f"sum_i 100 (x_(i+1) - x_i^2)^2 + (1 - x_i)^2, i = 0..{n - 2}; minimum 0 at "
          f"x = (1, ..., 1); built and compiled in {time.perf_counter() - start:.1f} s")
    print("\nprint(fn.hessian_plan):")
    plan = fn.hessian_plan
    print(plan)
    x0 = np.random.default_rng(0).uniform(0.0, 2.0, n)
    warm = gradc.Objective(fn)
    print(f"\nstart x ~ U(0, 2) (seed 0), loss {warm.fun(x0):.1f}")
    warm.hessp(x0, x0)  # compile the HVP kernel before timing
    runs = [minimise(fn, (), x0, m, maxiter=20000) for m in METHODS]
    table(runs)

    # The second-derivative test at the solution, with the coloured sparse Hessian (three
    # calls of the HVP kernel the optimiser compiled); the full run times it against dense.
    xstar = min(runs, key=lambda r: r["loss"])["x"]
    fn.hessian(xstar, sparse=True)  # the pattern and colouring, once, before timing
    t = time.perf_counter()
    h = fn.hessian(xstar, sparse=True)
    seconds = time.perf_counter() - t
    error = float(np.abs(h.toarray() - chain_hessian(xstar)).max())
    lowest = float(eigsh(h, k=1, which="SA", return_eigenvectors=False)[0])
    print(f"\nfn.hessian(x*, sparse=True): {type(h).__name__} {h.shape[0]}x{h.shape[1]}, "
          f"{h.nnz:,} nonzeros from {plan.colours} HVP sweeps"
          + f", {seconds * 1e3:.2f} ms")
    print(f"  max |H - closed-form tridiagonal Hessian| = {error:.1e}")
    print(f"  smallest eigenvalue {lowest:.3f}"
          + (" > 0: x* is a minimum" if lowest > 0 else ": x* is not a strict minimum"))
    if not fast:  # the dense way: one HVP per variable
        fn.hessian(xstar, method="dense")
        t = time.perf_counter()
        dense = fn.hessian(xstar, method="dense")
        dense_s = time.perf_counter() - t
        assert np.allclose(dense, h.toarray(), rtol=1e-12, atol=1e-9)
        print(f"  the same Hessian dense (method='dense', {n:,} HVP sweeps): "
              f"{dense_s * 1e3:.1f} ms")
    return {"runs": runs, "colours": plan.colours, "nnz": int(h.nnz), "hessian_error": error,
            "lowest_eigenvalue": lowest, "plan_choice": plan.choice}


def chain_hessian(x):
    """The chain's Hessian written out (tridiagonal), dense, to check gradc's against."""
    d = np.zeros(x.size)
    d[:-1] += 1200 * x[:-1] ** 2 - 400 * x[1:] + 2  # d2/dx_i^2 of the i-th term
    d[1:] += 200  # d2/dx_(i+1)^2 of the i-th term
    off = -400 * x[:-1]
    return np.diag(d) + np.diag(off, 1) + np.diag(off, -1)


# ---------------------------------------------------------------------------- figure
def figure(network, chain_result, outdir, written):
    seed = next(iter(network["runs"]))
    panels = [(f"{UNITS}-unit tanh network fit to sin(x)  (seed {seed})",
               network["runs"][seed]),
              ("chained Rosenbrock, 1,000 variables", chain_result["runs"])]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), layout="constrained", sharex="col")
    for col, (title, runs) in enumerate(panels):
        for r in runs:
            it = np.arange(len(r["losses"]))
            label = (f"{r['method']}: {r['iterations']} iterations, "
                     f"{r['calls']['value_and_grad']} val+grad, {r['calls']['hvp']} HVP")
            axes[0, col].plot(it, np.maximum(r["losses"], 1e-300), color=COLORS[r["method"]],
                              lw=1.5, label=label)
            axes[1, col].plot(it, np.maximum(r["grad_norms"], 1e-300),
                              color=COLORS[r["method"]], lw=0.8, alpha=0.8)
        axes[0, col].set(title=title, yscale="log", ylabel="loss")
        axes[1, col].set(yscale="log", xlabel="iteration", ylabel="gradient norm")
        axes[1, col].axhline(GTOL, color="0.4", ls=":", lw=1)
        axes[1, col].text(0.01, GTOL, " tolerance 1e-8", ha="left", va="bottom",
                          transform=axes[1, col].get_yaxis_transform(), color="0.3")
        if max(len(r["losses"]) for r in runs) > 5 * min(len(r["losses"]) for r in runs):
            axes[1, col].set_xscale("symlog", linthresh=10)  # a long and a short run
            axes[1, col].set_xlim(0, max(len(r["losses"]) for r in runs))
            axes[1, col].set_xlabel("iteration (linear to 10, then log scale)")
        axes[0, col].legend(fontsize=8.5, loc="upper right")
        for ax in axes[:, col]:
            ax.grid(alpha=0.3)
    fig.suptitle("Newton's method (trust-ncg, gradc HVPs) against L-BFGS-B (gradients only)")
    return save_figure(fig, outdir, "newton.png", written)


def summary(runs):
    """The per-run numbers without the curves and the solution."""
    return {r["method"]: {k: v for k, v in r.items() if k not in ("losses", "grad_norms", "x")}
            for r in runs}


def main(outdir=None, fast=False):
    outdir = prepare_outdir(outdir)
    written = []
    network = network_problem(fast)
    chained = chain_problem(fast)
    figure(network, chained, outdir, written)
    first = network["runs"][next(iter(network["runs"]))]
    return {
        "network": summary(first),
        "network_seeds": {seed: summary(runs) for seed, runs in network["runs"].items()},
        "network_hessian_eigenvalues": network["hessian_eigenvalues"],
        "chain": summary(chained["runs"]),
        "chain_colours": chained["colours"],
        "chain_hessian_nnz": chained["nnz"],
        "chain_hessian_error": chained["hessian_error"],
        "chain_lowest_eigenvalue": chained["lowest_eigenvalue"],
        "files": written,
    }


if __name__ == "__main__":
    run_script(main, __doc__.splitlines()[0])
