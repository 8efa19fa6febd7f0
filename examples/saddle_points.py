"""Saddle points and the second-derivative test, on a network's loss surface over two weights.

    python examples/saddle_points.py [OUTDIR] [--fast]

The lecture's tanh network with two hidden units,

    f(x) = w0 + w1 tanh(v1 x + b1) + w2 tanh(v2 x + b2),

has all its weights fixed (w0 = b1 = b2 = 0, w1 = w2 = 1, passed to gradc as consts)
except the two input weights v1, v2, so that its mean squared error on a data set is a
surface L(v1, v2) we can draw.  The data are made by the same network with v = (2, 0.5)
plus a little noise.  Swapping the two hidden units does not change the network, so
L(v1, v2) = L(v2, v1): every minimum has a mirror image across the diagonal, and
between the two a saddle point on the diagonal, where the units are identical.

1. gradc compiles L over (v1, v2) (``wrt``), with x, y as data and w0, w1, w2, b1, b2 as
   consts (``jit=False``: the generated code runs as plain Python, quick for 50 points).
2. Newton's method on the gradient, v <- v - H^-1 g (fn.grad, fn.hessian; steps capped at
   length 1), from a grid of starts, finds the critical points (where g = 0): Newton's
   method is attracted by every kind of critical point, not only by minima.  Points with
   |g| < 1e-10 are kept and duplicates merged.
3. The second-derivative test: the eigenvalues of the Hessian (fn.hessian) classify each
   point (both positive: a minimum; both negative: a maximum; mixed signs: a saddle; a
   zero one: degenerate, the test says nothing), as does D = L_11 L_22 - L_12^2 with the
   sign of L_11.  Each Hessian is checked against a central finite difference of fn.grad.

Figure: saddle_points.png, the contours of L with the critical points marked by kind and
the Hessian's eigenvectors drawn through each, and the loss along those eigenvectors
through the saddle point (a minimum along one, a maximum along the other).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # for _common, also when imported by path

import numpy as np  # noqa: E402
import sympy as sp  # noqa: E402

import gradc  # noqa: E402
from _common import banner, plt, prepare_outdir, run_script, save_figure  # noqa: E402

TEACHER = (2.0, 0.5)  # the input weights (v1, v2) that made the data
CONSTS = {"w0": 0.0, "w1": 1.0, "w2": 1.0, "b1": 0.0, "b2": 0.0}  # the fixed weights
BOX = (-3.0, 3.0)  # the square of (v1, v2) searched for critical points
GRAD_TOL = 1e-10  # |g| below this: a critical point
FD_STEP = 1e-5  # central differences of the gradient
FD_TOL = 1e-6
PLURAL = {"minimum": "minima", "maximum": "maxima", "saddle": "saddles",
          "degenerate": "degenerate"}
STYLE = {  # kind -> (marker, colour, size)
    "minimum": ("*", "tab:green", 260),
    "maximum": ("^", "tab:red", 150),
    "saddle": ("X", "tab:orange", 170),
    "degenerate": ("o", "tab:purple", 120),
}


def model():
    """The per-example squared loss, (v1, v2), the data symbols and the consts."""
    x, y, v1, v2 = sp.symbols("x y v1 v2")
    w0, w1, w2, b1, b2 = sp.symbols("w0 w1 w2 b1 b2")
    f = w0 + w1 * sp.tanh(v1 * x + b1) + w2 * sp.tanh(v2 * x + b2)
    return f, (f - y) ** 2, [v1, v2], [x, y], [w0, w1, w2, b1, b2]


def data(n=50, noise=0.05, seed=0):
    x = np.linspace(-2.0, 2.0, n)
    y = network(np.array(TEACHER), x) + noise * np.random.default_rng(seed).normal(size=n)
    return x, y


def network(v, x):
    """f(x) for input weights v = (v1, v2) (numpy; the other weights are CONSTS)."""
    c = CONSTS
    return c["w0"] + c["w1"] * np.tanh(v[0] * x + c["b1"]) + c["w2"] * np.tanh(v[1] * x + c["b2"])


def loss_grid(v1, v2, x, y):
    """L on a grid of (v1, v2) (numpy, for the contours); v1, v2 of one shape."""
    f = network((v1[..., None], v2[..., None]), x)
    return np.mean((f - y) ** 2, axis=-1)


# ---------------------------------------------------------------------------- 2. Newton
def newton(fn, args, start, iterations=40, max_step=1.0):
    """Newton's method on the gradient from ``start``; returns (point, |g|, steps).  Gives
    up when the Hessian is singular or the iterate runs far out (where the tanh units
    saturate, the surface is flat and Newton's steps wander)."""
    p = np.array(start, dtype=np.float64)
    g = fn.grad(p, *args)
    for k in range(iterations):
        if np.linalg.norm(g) < 1e-13:
            break
        h = fn.hessian(p, *args)
        try:
            step = np.linalg.solve(h, g)
        except np.linalg.LinAlgError:  # a singular Hessian: give up on this start
            break
        length = np.linalg.norm(step)
        if not np.isfinite(length):
            break
        if length > max_step:
            step *= max_step / length
        p = p - step
        if np.abs(p).max() > 2 * max(abs(BOX[0]), abs(BOX[1])):
            break
        g = fn.grad(p, *args)
        if length < 1e-14:
            break
    return p, float(np.linalg.norm(g)), k


def critical_points(fn, args, per_axis):
    """Run Newton from a per_axis x per_axis grid of starts in BOX; the distinct critical
    points found inside BOX, with how many starts reached each."""
    grid = np.linspace(*BOX, per_axis)
    found, hits, tried = [], [], 0
    for a in grid:
        for b in grid:
            tried += 1
            p, gnorm, _ = newton(fn, args, (a, b))
            if gnorm >= GRAD_TOL or not np.all((p >= BOX[0]) & (p <= BOX[1])):
                continue  # did not converge, or left the box
            for i, q in enumerate(found):
                if np.linalg.norm(p - q) < 1e-6:
                    hits[i] += 1
                    break
            else:
                found.append(p)
                hits.append(1)
    order = np.lexsort(([p[1] for p in found], [p[0] for p in found]))
    return [found[i] for i in order], [hits[i] for i in order], tried


# ---------------------------------------------------------------------------- 3. the test
def classify(eigenvalues, tol=1e-8):
    """Minimum, maximum, saddle or degenerate, from the Hessian's eigenvalues."""
    eigenvalues = np.asarray(eigenvalues)
    lo, hi = float(eigenvalues.min()), float(eigenvalues.max())
    if np.abs(eigenvalues).min() <= tol * max(1.0, abs(lo), abs(hi)):
        return "degenerate"
    if lo > 0:
        return "minimum"
    if hi < 0:
        return "maximum"
    return "saddle"


def classify_by_determinant(h, tol=1e-8):
    """The textbook 2-D test: D = L_11 L_22 - L_12^2 and the sign of L_11."""
    d = h[0, 0] * h[1, 1] - h[0, 1] * h[1, 0]
    if abs(d) <= tol * max(1.0, np.abs(h).max()) ** 2:
        return "degenerate"
    if d < 0:
        return "saddle"
    return "minimum" if h[0, 0] > 0 else "maximum"


def fd_hessian(grad, p, step=FD_STEP):
    """The Hessian by central differences of the gradient: column j is
    (g(p + h e_j) - g(p - h e_j)) / 2h."""
    cols = []
    for j in range(len(p)):
        e = np.zeros(len(p))
        e[j] = step
        cols.append((grad(p + e) - grad(p - e)) / (2 * step))
    return np.column_stack(cols)


def second_derivative_test(fn, args, points, hits):
    banner("3. The second-derivative test (eigenvalues of fn.hessian)")
    print(f"  {'v1':>8s} {'v2':>8s} {'loss':>9s} {'|grad|':>8s} {'eigenvalues of H':>22s} "
          f"{'D':>10s} {'kind':>10s} {'starts':>6s} {'|H - H_fd|':>10s}")
    rows = []
    for p, count in zip(points, hits):
        h = fn.hessian(p, *args)
        h_fd = fd_hessian(lambda q: fn.grad(q, *args), p)
        fd_error = float(np.abs(h - h_fd).max())
        assert fd_error < FD_TOL, f"Hessian at {p} differs from finite differences: {fd_error}"
        eig = np.linalg.eigvalsh(h)
        kind = classify(eig)
        assert kind == classify_by_determinant(h) == classify(np.linalg.eigvalsh(h_fd))
        d = float(np.linalg.det(h))
        gnorm = float(np.linalg.norm(fn.grad(p, *args)))
        value = float(fn.value(p, *args))
        rows.append({"point": p.tolist(), "loss": value, "grad_norm": gnorm,
                     "eigenvalues": eig.tolist(), "hessian": h.tolist(),
                     "eigenvectors": np.linalg.eigh(h)[1].tolist(), "determinant": d,
                     "kind": kind, "starts": count, "fd_error": fd_error})
        print(f"  {p[0]:8.4f} {p[1]:8.4f} {value:9.5f} {gnorm:8.1e} "
              f"{eig[0]:10.4f} {eig[1]:10.4f}  {d:10.2e} {kind:>10s} {count:6d} "
              f"{fd_error:10.1e}")
    kinds = [r["kind"] for r in rows]
    print("\n  " + ", ".join(f"{kinds.count(k)} {PLURAL[k] if kinds.count(k) != 1 else k}"
                             for k in STYLE if k != "degenerate")
          + f"; {kinds.count('degenerate')} degenerate (a zero eigenvalue: the test is "
          "inconclusive)")
    print(f"  every Hessian agrees with central differences of fn.grad (step {FD_STEP:g}) "
          f"to {max(r['fd_error'] for r in rows):.1e}, and each classification with "
          "D = L_11 L_22 - L_12^2")
    return rows


# ---------------------------------------------------------------------------- figure
def figure(rows, x, y, outdir, written):
    pts = np.array([r["point"] for r in rows])
    lo = min(pts.min() - 1.0, -0.5)
    hi = max(pts.max() + 1.0, 3.0)
    g = np.linspace(lo, hi, 301)
    v1, v2 = np.meshgrid(g, g)
    z = loss_grid(v1, v2, x, y)
    fig, (ax, cut) = plt.subplots(1, 2, figsize=(12.5, 5.6), layout="constrained",
                                  width_ratios=[1.15, 1])
    levels = np.geomspace(z.min(), z.max(), 25)
    cs = ax.contourf(v1, v2, z, levels=levels, cmap="viridis", norm="log")
    ax.contour(v1, v2, z, levels=levels, colors="w", linewidths=0.4, alpha=0.5)
    fig.colorbar(cs, ax=ax, label="loss L(v1, v2) (log scale)", format="%.0e")
    ax.plot([lo, hi], [lo, hi], color="w", ls="--", lw=0.8, alpha=0.8)
    ax.text(hi - 0.1, hi - 0.25, "v1 = v2", color="w", ha="right", va="top", rotation=45)
    for r in rows:
        p, vecs, eig = np.array(r["point"]), np.array(r["eigenvectors"]), r["eigenvalues"]
        for k in range(2):  # eigenvectors: solid where the loss curves up, dashed where down
            d = 0.45 * vecs[:, k]
            ax.plot([p[0] - d[0], p[0] + d[0]], [p[1] - d[1], p[1] + d[1]], color="w",
                    lw=1.5, ls="-" if eig[k] > 0 else "--")
    for kind, (marker, color, size) in STYLE.items():
        sel = [r["point"] for r in rows if r["kind"] == kind]
        if sel:
            sel = np.array(sel)
            ax.scatter(sel[:, 0], sel[:, 1], marker=marker, s=size, c=color, edgecolors="k",
                       zorder=3, label=f"{kind} ({len(sel)})")
    ax.scatter(*TEACHER, marker="P", s=70, c="w", edgecolors="k", zorder=4,
               label="the weights that made the data")
    ax.set(xlim=(lo, hi), ylim=(lo, hi), aspect="equal", xlabel="$v_1$", ylabel="$v_2$",
           title="critical points of the loss and the Hessian's eigenvectors\n"
                 "(solid: positive curvature, dashed: negative)")
    ax.legend(loc="lower left", fontsize=8.5, framealpha=0.9)

    saddle = next((r for r in rows if r["kind"] == "saddle"), None)
    if saddle is not None:
        p, vecs = np.array(saddle["point"]), np.array(saddle["eigenvectors"])
        s = np.linspace(-1.5, 1.5, 301)
        for k, color in ((0, "tab:red"), (1, "tab:blue")):
            line = p[:, None] + vecs[:, k][:, None] * s
            lam = saddle["eigenvalues"][k]
            shape = ("falls both ways: a maximum along this line" if lam < 0 else
                     "rises both ways: a minimum along this line")
            cut.plot(s, loss_grid(line[0], line[1], x, y), color=color, lw=2,
                     label=f"along eigenvector ({vecs[0, k]:+.2f}, {vecs[1, k]:+.2f}), "
                           f"eigenvalue {lam:+.3f}:\n{shape}")
            cut.plot(s, saddle["loss"] + 0.5 * lam * s**2, color=color, ls=":", lw=1.2)
        if mins := [r["loss"] for r in rows if r["kind"] == "minimum"]:
            cut.axhline(min(mins), color="tab:green", lw=1, ls="--",
                        label="loss at the minima")
        cut.axvline(0.0, color="0.5", lw=0.8)
        cut.plot([0.0], [saddle["loss"]], "X", ms=12, color="tab:orange", mec="k")
        cut.set(xlabel="distance s from the saddle point along the eigenvector", ylabel="loss",
                title=f"the loss through the saddle ({p[0]:.3f}, {p[1]:.3f}) along the "
                      "Hessian's eigenvectors\n(dotted: the quadratic model "
                      "L + eigenvalue s^2 / 2)",
                ylim=(0.0, 4 * saddle["loss"]), xlim=(s[0], s[-1]))
        cut.legend(fontsize=8.5, loc="upper center", framealpha=0.95)
        cut.grid(alpha=0.3)
    fig.suptitle("Saddle points on the loss surface of a 2-unit tanh network over its two "
                 "input weights")
    return save_figure(fig, outdir, "saddle_points.png", written)


def main(outdir=None, fast=False):
    outdir = prepare_outdir(outdir)
    written = []
    banner("1. The loss surface over two weights")
    f, loss, wrt, data_syms, consts = model()
    x, y = data()
    print(f"f(x) = {f}")
    print("fixed (consts): " + ", ".join(f"{k} = {v:g}" for k, v in CONSTS.items())
          + "; free (wrt): v1, v2")
    print(f"data: {len(x)} points x in [-2, 2], y = f(x) at v = {TEACHER} plus noise "
          "N(0, 0.05^2); loss: mean squared error")
    fn = gradc.compile(loss, wrt=wrt, data=data_syms, consts=consts, jit=False)
    args = (x, y, *CONSTS.values())
    print(fn.hessian_plan)

    per_axis = 9 if fast else 25
    banner("2. Critical points by Newton's method on the gradient")
    points, hits, tried = critical_points(fn, args, per_axis)
    print(f"{tried} starts on a {per_axis} x {per_axis} grid of [{BOX[0]:g}, {BOX[1]:g}]^2; "
          f"{sum(hits)} converged (|grad| < {GRAD_TOL:g}) inside the square, to "
          f"{len(points)} distinct points")
    rows = second_derivative_test(fn, args, points, hits)

    # the surface the figure draws (numpy) is the one gradc compiled
    for r in rows:
        v = np.array(r["point"])
        assert np.isclose(loss_grid(v[0], v[1], x, y), r["loss"], rtol=1e-12)
    mins = [r for r in rows if r["kind"] == "minimum"]
    if len(mins) == 2:
        a, b = (np.array(r["point"]) for r in mins)
        print(f"\nthe two minima are mirror images (v1, v2) <-> (v2, v1) to "
              f"{np.abs(a - b[::-1]).max():.1e}: the same network with its hidden units "
              "swapped;\nthe saddle on the diagonal v1 = v2 lies between them")
    figure(rows, x, y, outdir, written)
    kinds = [r["kind"] for r in rows]
    return {
        "critical_points": rows,
        "counts": {k: kinds.count(k) for k in STYLE},
        "starts": tried,
        "data": (x.tolist(), y.tolist()),
        "consts": dict(CONSTS),
        "files": written,
    }


if __name__ == "__main__":
    run_script(main, __doc__.splitlines()[0])
