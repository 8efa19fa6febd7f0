"""Universal approximation with three tanh units (after Bishop, PRML Fig. 5.3).

    python examples/approximation.py [OUTDIR] [--fast]

The network  f(x) = w0 + sum_i w_i tanh(v_i x + b_i),  i = 1..3  (10 parameters), is fit by
full-batch SGD with momentum (cosine learning-rate decay, gradient clipping) to 50 evenly
spaced points on [-1, 1] of four functions: x^2, sin(x), |x| and the Heaviside step H(x).
The squared loss is compiled once by gradc; the four targets are just different data.

Figure: approximation.png, four panels with the training points (blue), each hidden unit's
contribution w_i tanh(v_i x + b_i) (dashed) and the network's fit (red).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # for _common, also when imported by path

import numpy as np  # noqa: E402
import sympy as sp  # noqa: E402

import gradc  # noqa: E402
from gradc import optim  # noqa: E402
from _common import banner, plt, prepare_outdir, run_script, save_figure  # noqa: E402

UNITS = 3
N_POINTS = 50

# name -> (label for the plot, the function)
TARGETS = {
    "x^2": (r"$f(x) = x^2$", lambda x: x**2),
    "sin(x)": (r"$f(x) = \sin(x)$", np.sin),
    "|x|": (r"$f(x) = |x|$", np.abs),
    "H(x)": (r"$f(x) = H(x)$ (Heaviside step)", lambda x: np.heaviside(x, 0.5)),
}


def model():
    """The network and its per-example squared loss as sympy expressions."""
    x, y = sp.symbols("x y")
    v = sp.symbols(f"v1:{UNITS + 1}")  # input weights
    b = sp.symbols(f"b1:{UNITS + 1}")  # hidden biases
    w = sp.symbols(f"w0:{UNITS + 1}")  # output bias w0 and output weights
    f = w[0] + sum(w[i + 1] * sp.tanh(v[i] * x + b[i]) for i in range(UNITS))
    return f, (f - y) ** 2, [*v, *b, *w], [x, y]


def unpack(p):
    """(v, b, w0, w) from the flat parameter vector, in the order of ``model``'s wrt."""
    return p[:UNITS], p[UNITS:2 * UNITS], p[2 * UNITS], p[2 * UNITS + 1:]


def hidden_contributions(p, x):
    """w_i tanh(v_i x + b_i) for each hidden unit: shape (len(x), UNITS)."""
    v, b, _, w = unpack(p)
    return np.tanh(np.outer(x, v) + b) * w


def predict(p, x):
    return unpack(p)[2] + hidden_contributions(p, x).sum(axis=1)


def fit_target(fn, X, Y, steps, restarts):
    """Best of ``restarts`` seeded runs of full-batch SGD; returns (params, mse, seeds' mses)."""
    best, mses = None, []
    for seed in range(restarts):
        rng = np.random.default_rng(seed)
        # tanh slopes v ~ N(0, 2) so the units start with different shapes over [-1, 1]
        p = np.concatenate([rng.normal(0.0, 2.0, UNITS), rng.normal(0.0, 1.0, UNITS),
                            rng.normal(0.0, 0.5, UNITS + 1)])
        opt = optim.SGD(lr=optim.cosine(0.1, steps, final_lr=1e-3), momentum=0.9, clip_norm=1.0)
        # a full batch each step: one epoch = one step
        optim.fit(fn.value_and_grad, p, (X, Y), optimizer=opt, epochs=steps, progress=False)
        mse = float(np.mean((predict(p, X) - Y) ** 2))
        mses.append(mse)
        if best is None or mse < best[1]:
            best = (p, mse)
    return best[0], best[1], mses


def main(outdir=None, fast=False):
    outdir = prepare_outdir(outdir)
    written = []
    f, loss, wrt, data = model()
    banner("Fitting a network with 3 tanh hidden units to four functions")
    print(f"f(x) = {f}")
    print(f"loss = (f(x) - y)**2, mean over {N_POINTS} points in [-1, 1]")
    fn = gradc.compile(loss, wrt=wrt, data=data)

    steps, restarts = (3000, 1) if fast else (20000, 3)
    print(f"{steps} full-batch steps of SGD (momentum 0.9, cosine lr 0.1 -> 0.001, clip_norm 1), "
          f"best of {restarts} random start(s)\n")
    X = np.linspace(-1.0, 1.0, N_POINTS)
    fits, mse = {}, {}
    for name, (_, func) in TARGETS.items():
        p, mse[name], all_mses = fit_target(fn, X, func(X), steps, restarts)
        fits[name] = p
        # check the compiled loss agrees with the numpy prediction (same model, two codes)
        assert np.isclose(fn.value_and_grad(p, X, func(X))[0], mse[name], rtol=1e-9, atol=1e-15)
        runs = ", ".join(f"{m:.1e}" for m in all_mses)
        print(f"  {name:7s} final MSE {mse[name]:.2e}   (runs: {runs})")

    # The figure: 2 x 2 panels as in Bishop's Fig. 5.3
    xs = np.linspace(-1.0, 1.0, 400)
    fig, axes = plt.subplots(2, 2, figsize=(10, 8), layout="constrained")
    for ax, (name, (label, func)) in zip(axes.ravel(), TARGETS.items()):
        p = fits[name]
        ax.plot(X, func(X), "o", color="tab:blue", ms=4, label="training points")
        for i, h in enumerate(hidden_contributions(p, xs).T):
            ax.plot(xs, h, "--", lw=1, label="hidden units $w_i \\tanh(v_i x + b_i)$" if i == 0 else None)
        ax.plot(xs, predict(p, xs), color="red", lw=2, label="network $f(x)$")
        ax.set(title=f"{label}   MSE {mse[name]:.1e}", xlim=(-1, 1), xlabel="x")
        ax.grid(alpha=0.3)
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="outside lower center", ncols=3)
    fig.suptitle("A network with 3 tanh hidden units fit to four functions (50 points each)")
    save_figure(fig, outdir, "approximation.png", written)
    return {"mse": mse, "params": {k: v.tolist() for k, v in fits.items()}, "files": written}


if __name__ == "__main__":
    run_script(main, __doc__.splitlines()[0])
