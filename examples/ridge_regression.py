"""Ridge regression as a computation graph: the partial derivatives, then SGD schedules.

    python examples/ridge_regression.py [OUTDIR] [--fast]

The lecture's graph, for one example (x, y) with d features:

    yhat = w . x + b        r = y - yhat        l = r^2 + lambda w . w

1. The chain rule, node by node, with sympy: dl/dr = 2r, dl/dyhat = -2r, dl/db = -2r,
   dl/dw_j = -2 r x_j + 2 lambda w_j; checked against sympy.diff of the whole expression,
   and against the per-example gradients gradc computes (reduce=None).  Then the model as
   the lecture writes it, with an index: yhat = sum_j w_j x_j + b, a sympy Sum over
   IndexedBase arrays, which gradc compiles to a loop (its reverse-mode kernel is printed)
   of the same size for 3 features or 10,000.
2. Mini-batch SGD with momentum on synthetic data (with a few gross outliers in y), from
   the same start, with a constant learning rate, a staircase (10x decay at 50% and 75% of
   the steps), a cosine decay, and gradient clipping (clip_norm) added to the constant and
   the cosine runs.  Losses and distances are measured against the closed-form ridge
   solution.

Figure: ridge_regression_schedules.png, the excess training loss L(theta_t) - L(theta*) of
every run against the step (log scale).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # for _common, also when imported by path

import numpy as np  # noqa: E402
import sympy as sp  # noqa: E402

import gradc  # noqa: E402
from gradc import optim  # noqa: E402
from _common import banner, plt, prepare_outdir, run_script, save_figure, steps_per_epoch  # noqa: E402

D = 3  # features
LAM = 0.1  # the ridge penalty lambda


def symbols(d=D):
    x = sp.symbols(f"x1:{d + 1}", real=True)
    w = sp.symbols(f"w1:{d + 1}", real=True)
    b, y, lam = sp.symbols("b y lambda", real=True)
    return x, w, b, y, lam


def ridge_loss(d=D):
    """The per-example loss (y - (w.x + b))^2 + lambda w.w, and its roles for gradc."""
    x, w, b, y, lam = symbols(d)
    yhat = sum(wj * xj for wj, xj in zip(w, x)) + b
    loss = (y - yhat) ** 2 + lam * sum(wj**2 for wj in w)
    return loss, [*w, b], [*x, y], [lam]


def indexed_loss(d=D):
    """The same loss with an index: yhat = Sum(w[j] x[j], j) + b, over IndexedBase arrays
    w and x of shape (d,); the penalty is a Sum too."""
    j = sp.Symbol("j", integer=True)
    w, x = sp.IndexedBase("w", shape=(d,)), sp.IndexedBase("x", shape=(d,))
    b, y, lam = sp.symbols("b y lambda", real=True)
    yhat = sp.Sum(w[j] * x[j], (j, 0, d - 1)) + b
    loss = (y - yhat) ** 2 + lam * sp.Sum(w[j] ** 2, (j, 0, d - 1))
    return loss, [w, b], [x, y], [lam]


# ---------------------------------------------------------------------------- 1. partials
def chain_rule():
    """The partials of the graph, one edge at a time, as sympy expressions of the node r."""
    x, w, b, y, lam = symbols()
    yhat_node, r_node = sp.symbols("yhat r", real=True)  # the graph's intermediate nodes
    yhat_of_inputs = sum(wj * xj for wj, xj in zip(w, x)) + b
    r_of_yhat = y - yhat_node
    l_of_r = r_node**2 + lam * sum(wj**2 for wj in w)

    dl_dr = sp.diff(l_of_r, r_node)  # local derivative at the top node
    dl_dyhat = dl_dr * sp.diff(r_of_yhat, yhat_node)  # chain rule through r = y - yhat
    dl_db = dl_dyhat * sp.diff(yhat_of_inputs, b)
    # w_j reaches l along two paths: through yhat, and directly through the penalty
    dl_dw = [dl_dyhat * sp.diff(yhat_of_inputs, wj) + sp.diff(l_of_r, wj) for wj in w]

    # check against sympy.diff of the whole composite loss, r written out
    r_of_inputs = y - yhat_of_inputs
    full = l_of_r.subs(r_node, r_of_inputs)
    for expr, sym in [(dl_db, b)] + list(zip(dl_dw, w)):
        assert sp.simplify(sp.diff(full, sym) - expr.subs(r_node, r_of_inputs)) == 0
    return {"dl/dr": dl_dr, "dl/dyhat": dl_dyhat, "dl/db": dl_db,
            **{f"dl/d{wj}": g for wj, g in zip(w, dl_dw)}}


def kernel_excerpt(source, name="value_and_grad"):
    """The text of one generated function from gradc's kernel module."""
    start = source.find(f"\ndef {name}(")
    if start < 0:
        return "(function not found in the generated source)"
    end = source.find("\n\n\ndef ", start + 1)
    return source[start + 1:end if end > 0 else None].rstrip()


def partials():
    banner("1. The computation graph and its partial derivatives")
    print("graph:  x, w, b -> yhat = w.x + b -> r = y - yhat -> l = r^2 + lambda w.w")
    formulas = chain_rule()
    for name, expr in formulas.items():
        print(f"  {name:9s} = {expr}")
    print("(each agrees with sympy.diff of the whole loss written out in x, w, b, y)")

    # gradc's per-example gradients (reduce=None) at a random point against the formulas.
    # jit=False runs the generated code as plain Python: fine for four examples.
    loss, wrt, data, consts = ridge_loss()
    fn = gradc.compile(loss, wrt=wrt, data=data, consts=consts, reduce=None, jit=False)
    rng = np.random.default_rng(1)
    p, X, Y = rng.normal(size=D + 1), rng.normal(size=(4, D)), rng.normal(size=4)
    w, b = p[:D], p[D]
    _, g = fn.value_and_grad(p, *X.T, Y, LAM)  # g[i, k]: example i, parameter k
    r = Y - (X @ w + b)
    expected = np.column_stack([-2 * r[:, None] * X + 2 * LAM * w, -2 * r])
    err = float(np.max(np.abs(g - expected)))
    print(f"\ngradc, per example (reduce=None), at a random point: max |gradc - formula| = "
          f"{err:.1e}")

    # the indexed form: parameters as arrays (w of shape (d,), then b), gradient in kind
    loss_ix, wrt_ix, data_ix, consts_ix = indexed_loss()
    fn_ix = gradc.compile(loss_ix, wrt=wrt_ix, data=data_ix, consts=consts_ix, jit=False)
    _, (gw, gb) = fn_ix.value_and_grad([w, b], X, Y, LAM)
    err_ix = float(np.max(np.abs(np.append(gw, gb) - expected.mean(axis=0))))
    print(f"\nwith an index, yhat = {sp.Sum(sp.IndexedBase('w')[sp.Symbol('j')] * sp.IndexedBase('x')[sp.Symbol('j')], (sp.Symbol('j'), 0, D - 1))} + b:"
          f" mean gradient, max |gradc - formula| = {err_ix:.1e}")
    print("the reverse-mode kernel gradc generated (the chain rule above, as loops):\n")
    print("    " + kernel_excerpt(fn_ix.source).replace("\n", "\n    "))
    big = gradc.compile(indexed_loss(10_000)[0], wrt=indexed_loss(10_000)[1],
                        data=indexed_loss(10_000)[2], consts=indexed_loss(10_000)[3], jit=False)
    lines = (fn_ix.source.count("\n"), big.source.count("\n"))
    print(f"\nthe generated module has {lines[0]} lines for d = {D} and {lines[1]} for d = 10,000:"
          " loops stay loops")
    return formulas, err, err_ix, lines


# ---------------------------------------------------------------------------- 2. schedules
def synthetic_data(n=1000, seed=0):
    """y = w.x + b + noise, features on different scales, 2% gross outliers in y."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, D)) * np.array([2.0, 1.0, 0.3])
    w_true, b_true = np.array([1.5, -2.0, 3.0]), 1.0
    noise = 0.3 * rng.normal(size=n)
    outliers = rng.random(n) < 0.02
    noise[outliers] += rng.normal(0.0, 20.0, outliers.sum())
    return X, X @ w_true + b_true + noise


def closed_form(X, Y, lam):
    """argmin of mean((y - Xw - b)^2) + lam |w|^2 (the intercept is not penalised)."""
    n = len(Y)
    A = np.column_stack([X, np.ones(n)])
    penalty = np.diag([1.0] * X.shape[1] + [0.0])
    return np.linalg.solve(A.T @ A / n + lam * penalty, A.T @ Y / n)


def full_loss(p, X, Y, lam):
    """The training loss of the whole data set (numpy; for monitoring only)."""
    r = Y - X @ p[:-1] - p[-1]
    return float(np.mean(r**2) + lam * p[:-1] @ p[:-1])


def smooth_log(curve, window):
    """Moving geometric mean (a moving average of the log), for a readable log-scale plot."""
    logs = np.log(curve)
    c = np.cumsum(np.concatenate([[0.0], logs]))
    out = np.empty_like(logs)
    for i in range(len(logs)):
        lo = max(0, i + 1 - window)
        out[i] = (c[i + 1] - c[lo]) / (i + 1 - lo)
    return np.exp(out)


def schedules(fast, outdir, written):
    banner("2. SGD on synthetic data: learning-rate schedules and gradient clipping")
    loss, wrt, data, consts = ridge_loss()
    fn = gradc.compile(loss, wrt=wrt, data=data, consts=consts)  # reduce="mean"
    X, Y = synthetic_data()
    columns = tuple(np.ascontiguousarray(c) for c in X.T) + (Y,)  # x1, x2, x3, y
    theta_star = closed_form(X, Y, LAM)
    loss_star = full_loss(theta_star, X, Y, LAM)
    print(f"n = {len(Y)}, d = {D}, lambda = {LAM}; closed-form ridge solution "
          f"w = {np.round(theta_star[:D], 4)}, b = {theta_star[D]:.4f}, L* = {loss_star:.6f}")

    epochs, batch, lr = (5 if fast else 20), 25, 0.02
    total = epochs * steps_per_epoch(len(Y), batch)
    runs = {
        "constant": dict(lr=lr),
        "constant + clip_norm 1": dict(lr=lr, clip_norm=1.0),
        "staircase (/10 at 50%, 75%)": dict(lr=optim.staircase(lr, [total // 2, 3 * total // 4], 0.1)),
        "cosine": dict(lr=optim.cosine(lr, total)),
        "cosine + clip_norm 1": dict(lr=optim.cosine(lr, total), clip_norm=1.0),
    }
    print(f"{epochs} epochs of mini-batches of {batch} ({total} steps), momentum 0.9, "
          f"lr {lr}, all from theta = 0\n")
    print(f"  {'run':30s} {'final loss':>11s} {'L - L*':>9s} {'|theta - theta*|':>17s}")
    results, curves = {}, {}
    for name, kwargs in runs.items():
        p = np.zeros(D + 1)
        trace = []  # full training loss after every step
        optim.fit(fn.value_and_grad, p, columns, optimizer=optim.SGD(momentum=0.9, **kwargs),
                  epochs=epochs, batch_size=batch, consts=(LAM,), progress=False, seed=0,
                  callback=lambda step, batch_loss, params: trace.append(
                      full_loss(params, X, Y, LAM)))
        final = full_loss(p, X, Y, LAM)
        results[name] = {"final_loss": final, "excess": final - loss_star,
                         "distance": float(np.linalg.norm(p - theta_star))}
        curves[name] = np.array(trace) - loss_star
        print(f"  {name:30s} {final:11.6f} {final - loss_star:9.2e} "
              f"{results[name]['distance']:17.2e}")
    print("\nA constant rate stalls at a noise floor; decaying it (staircase, cosine) converges.\n"
          "Clipping tames the outliers' large gradients (less noise at a constant rate), but a\n"
          "clipped gradient is biased, so with a decaying rate it settles slightly off theta*.")

    fig, ax = plt.subplots(figsize=(8, 5), layout="constrained")
    window = max(5, total // 40)
    for k, (name, curve) in enumerate(curves.items()):
        steps = np.arange(1, len(curve) + 1)
        curve = np.maximum(curve, 1e-12)
        ax.plot(steps, curve, lw=0.6, alpha=0.25, color=f"C{k}")  # every step, faint
        ax.plot(steps, smooth_log(curve, window), lw=2, color=f"C{k}", label=name)
    ax.set(yscale="log", xlabel="step", ylabel="training loss - optimum  L(theta) - L*",
           title=f"Ridge regression by SGD (momentum 0.9, batch {batch}, lambda {LAM});\n"
                 f"faint: every step, bold: geometric mean over {window} steps")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    save_figure(fig, outdir, "ridge_regression_schedules.png", written)
    return results, loss_star, theta_star


def main(outdir=None, fast=False):
    outdir = prepare_outdir(outdir)
    written = []
    formulas, err, err_ix, lines = partials()
    results, loss_star, theta_star = schedules(fast, outdir, written)
    return {
        "partials": formulas,  # sympy expressions in the graph's node r
        "gradc_vs_formula_max_error": err,
        "indexed_vs_formula_max_error": err_ix,
        "indexed_source_lines": lines,  # for d = 3 and d = 10,000
        "optimal_loss": loss_star,
        "closed_form": theta_star.tolist(),
        "runs": results,
        "files": written,
    }


if __name__ == "__main__":
    run_script(main, __doc__.splitlines()[0])
