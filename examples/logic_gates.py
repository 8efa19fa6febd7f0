"""Logic gates with perceptrons: AND, why no perceptron computes XNOR, and a two-layer fix.

    python examples/logic_gates.py [OUTDIR] [--fast]

1. A perceptron (threshold unit) outputs 1 iff w1*i1 + w2*i2 >= theta.  With w1 = w2 = 1 and
   theta = 2 it computes AND.
2. No choice of (w1, w2, theta) computes XNOR ("i1 == i2"): a short proof, and a
   brute-force search over a grid of perceptrons that realises 14 of the 16 two-input
   gates but never XOR or XNOR.
3. Two layers do it: hidden units AND and NOR, output unit OR.
4. The same 2-2-1 network *learned* by SGD with sigmoid units and the cross-entropy loss,
   compiled by gradc, from random initialisations (some get stuck in a local minimum, so
   we restart a few times and keep the best).

Figure: logic_gates_regions.png, the decision regions of the hand-built and the learned
networks in the unit square, with the four inputs.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # for _common, also when imported by path

import numpy as np  # noqa: E402
import sympy as sp  # noqa: E402

import gradc  # noqa: E402
from gradc import nn, optim  # noqa: E402
from _common import banner, plt, prepare_outdir, run_script, save_figure  # noqa: E402

# The four inputs (i1, i2), in the order of a truth table.
INPUTS = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float64)
XNOR = (INPUTS[:, 0] == INPUTS[:, 1]).astype(int)  # 1, 0, 0, 1


def perceptron(inputs, w, theta):
    """Threshold unit: 1 where w . i >= theta, else 0 (inputs: (n, 2))."""
    return (inputs @ np.asarray(w, dtype=np.float64) >= theta).astype(int)


# ---------------------------------------------------------------------------- 1. AND
def and_gate():
    banner("1. A perceptron computing AND (w1 = w2 = 1, theta = 2)")
    w, theta = (1.0, 1.0), 2.0
    out = perceptron(INPUTS, w, theta)
    print(" i1 i2 | w1*i1 + w2*i2 | >= theta? -> output")
    for (i1, i2), o in zip(INPUTS, out):
        print(f"  {i1:.0f}  {i2:.0f} | {w[0] * i1 + w[1] * i2:13.0f} | {o}")
    return out


# ---------------------------------------------------------------------------- 2. XNOR is impossible
PROOF = """\
Suppose a perceptron (w1, w2, theta) computed XNOR.  The four rows of the truth table say
  (0,0) -> 1:  0        >= theta   so  theta <= 0
  (1,0) -> 0:  w1       <  theta
  (0,1) -> 0:  w2       <  theta
  (1,1) -> 1:  w1 + w2  >= theta
Adding the two middle inequalities: w1 + w2 < 2*theta.  Since theta <= 0, 2*theta <= theta,
so w1 + w2 < theta, which contradicts the last line.  Hence no perceptron computes XNOR
(geometrically: no straight line separates {(0,0), (1,1)} from {(0,1), (1,0)})."""


def gate_name(code):
    """A readable name for a two-input gate given as its outputs on (00, 01, 10, 11)."""
    names = {
        (0, 0, 0, 0): "FALSE", (0, 0, 0, 1): "AND", (0, 0, 1, 0): "i1 AND NOT i2",
        (0, 0, 1, 1): "i1", (0, 1, 0, 0): "NOT i1 AND i2", (0, 1, 0, 1): "i2",
        (0, 1, 1, 0): "XOR", (0, 1, 1, 1): "OR", (1, 0, 0, 0): "NOR", (1, 0, 0, 1): "XNOR",
        (1, 0, 1, 0): "NOT i2", (1, 0, 1, 1): "i1 OR NOT i2", (1, 1, 0, 0): "NOT i1",
        (1, 1, 0, 1): "NOT i1 OR i2", (1, 1, 1, 0): "NAND", (1, 1, 1, 1): "TRUE",
    }
    return names[tuple(code)]


def search_perceptrons(points_per_axis=61, limit=3.0):
    """Try every perceptron on a grid of (w1, w2, theta) in [-limit, limit]^3.

    Returns the set of gates (tuples of 4 outputs) that some grid perceptron computes.
    """
    grid = np.linspace(-limit, limit, points_per_axis)
    w1, w2, theta = (a.ravel() for a in np.meshgrid(grid, grid, grid, indexing="ij"))
    # outputs[k, j] = output of perceptron k on input row j
    nets = np.outer(w1, INPUTS[:, 0]) + np.outer(w2, INPUTS[:, 1])
    outputs = (nets >= theta[:, None]).astype(np.int64)
    codes = outputs @ np.array([8, 4, 2, 1])  # each gate as a 4-bit number
    found = {tuple(int(b) for b in f"{c:04b}") for c in np.unique(codes)}
    return found, w1.size


def xnor_impossible():
    banner("2. No single perceptron computes XNOR (i1 == i2)")
    print(PROOF)
    found, tried = search_perceptrons()
    print(f"\nNumerical check: {tried:,} perceptrons on a grid of (w1, w2, theta) in [-3, 3]^3")
    print(f"  realise {len(found)} of the 16 two-input gates: "
          f"{', '.join(gate_name(g) for g in sorted(found))}")
    all_gates = [tuple(int(b) for b in f"{c:04b}") for c in range(16)]
    missing = [gate_name(g) for g in all_gates if g not in found]
    print(f"  never realised: {', '.join(missing)}")
    return found


# ---------------------------------------------------------------------------- 3. two layers
# Hidden unit 1 = AND (fires only for (1,1)), hidden unit 2 = NOR (fires only for (0,0)),
# output = OR of the two: 1 exactly when i1 == i2.
HIDDEN = [((1.0, 1.0), 2.0), ((-1.0, -1.0), 0.0)]  # (weights, threshold) of AND and NOR
OUTPUT = ((1.0, 1.0), 1.0)  # OR


def two_layer(inputs):
    """The hand-built threshold network; returns (hidden nets, hidden outputs, output net, output)."""
    nets = np.stack([inputs @ np.array(w) for w, _ in HIDDEN], axis=1)
    hidden = np.stack([(nets[:, j] >= HIDDEN[j][1]).astype(int) for j in range(2)], axis=1)
    out_net = hidden @ np.array(OUTPUT[0])
    return nets, hidden, out_net, (out_net >= OUTPUT[1]).astype(int)


def xnor_two_layers():
    banner("3. Two layers compute XNOR: hidden AND (theta 2) and NOR (theta 0), output OR (theta 1)")
    nets, hidden, out_net, out = two_layer(INPUTS)
    print(" i1 i2 | hidden inputs   | hidden outputs | output input | output | i1 == i2")
    print("       | AND(i)  NOR(i)  | AND  NOR       |              |        |")
    for k, (i1, i2) in enumerate(INPUTS):
        print(f"  {i1:.0f}  {i2:.0f} | {nets[k, 0]:5.0f} {nets[k, 1]:7.0f}   |"
              f" {hidden[k, 0]:3d} {hidden[k, 1]:4d}       | {out_net[k]:12.0f} | {out[k]:6d} |"
              f" {XNOR[k]:5d}")
    return out


# ---------------------------------------------------------------------------- 4. learned by SGD
def xnor_model():
    """The 2-2-1 sigmoid network and its cross-entropy loss, as sympy expressions.

    Hidden units h_j = sigmoid(w_j1 i1 + w_j2 i2 + c_j); output logit z = u1 h1 + u2 h2 + c0;
    the cross-entropy of the target t under sigmoid(z) is softplus(z) - t z (stable form).
    """
    i1, i2, t = sp.symbols("i1 i2 t")
    params = sp.symbols("w11 w12 c1 w21 w22 c2 u1 u2 c0")
    w11, w12, c1, w21, w22, c2, u1, u2, c0 = params
    h1 = nn.sigmoid(w11 * i1 + w12 * i2 + c1)
    h2 = nn.sigmoid(w21 * i1 + w22 * i2 + c2)
    z = u1 * h1 + u2 * h2 + c0
    loss = nn.softplus(z) - t * z
    return loss, list(params), [i1, i2, t]


def sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def forward(p, inputs):
    """The learned network in numpy: (hidden activations (n, 2), output probability (n,))."""
    h = sigmoid(np.stack([inputs @ p[[0, 1]] + p[2], inputs @ p[[3, 4]] + p[5]], axis=1))
    return h, sigmoid(h @ p[[6, 7]] + p[8])


def xnor_learned(fast):
    banner("4. The 2-2-1 network learned by SGD (sigmoid units, cross-entropy, gradc gradients)")
    loss, wrt, data = xnor_model()
    print(f"per-example loss: {loss}")
    fn = gradc.compile(loss, wrt=wrt, data=data)  # reduce="mean" over the four examples
    columns = (INPUTS[:, 0].copy(), INPUTS[:, 1].copy(), XNOR.astype(np.float64))

    restarts, steps = 8, (1500 if fast else 4000)
    best, solved_count = None, 0
    print(f"{restarts} random initialisations (N(0, 1)), {steps} full-batch steps each, "
          "SGD lr 1.0 with momentum 0.9:")
    for seed in range(restarts):
        p = np.random.default_rng(seed).normal(size=len(wrt))
        opt = optim.SGD(lr=1.0, momentum=0.9)
        history = optim.fit(fn.value_and_grad, p, columns, optimizer=opt, epochs=steps,
                            progress=False)
        _, prob = forward(p, INPUTS)
        solved = bool(np.all((prob >= 0.5) == XNOR))
        solved_count += solved
        print(f"  seed {seed}: final loss {history.final_loss:.2e}"
              f"  {'solved' if solved else 'stuck in a local minimum'}")
        if best is None or history.final_loss < best[1]:
            best = (p.copy(), history.final_loss, seed)
    p, final_loss, seed = best
    print(f"{solved_count} of {restarts} runs found an XNOR network")

    hidden, prob = forward(p, INPUTS)
    print(f"\nbest run (seed {seed}), learned parameters:")
    print("  " + ", ".join(f"{s}={v:.2f}" for s, v in zip(wrt, p)))
    print(" i1 i2 | h1     h2     | output P(y=1) | rounded | i1 == i2")
    for k, (i1, i2) in enumerate(INPUTS):
        print(f"  {i1:.0f}  {i2:.0f} | {hidden[k, 0]:.3f}  {hidden[k, 1]:.3f}  |"
              f" {prob[k]:13.4f} | {int(prob[k] >= 0.5):7d} | {XNOR[k]:5d}")
    return p, prob, final_loss, solved_count


def regions_figure(p, outdir, written):
    """Decision regions of the hand-built and of the learned network in the unit square."""
    g = np.linspace(-0.25, 1.25, 301)
    gx, gy = np.meshgrid(g, g)
    grid = np.column_stack([gx.ravel(), gy.ravel()])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6), layout="constrained")
    panels = [
        ("hand-built threshold network\n(AND, NOR -> OR)", two_layer(grid)[3].astype(float)),
        ("learned sigmoid network\n(P(y=1), boundary at 0.5)", forward(p, grid)[1]),
    ]
    for ax, (title, z) in zip(axes, panels):
        z = z.reshape(gx.shape)
        im = ax.contourf(gx, gy, z, levels=np.linspace(0, 1, 11), cmap="coolwarm", alpha=0.8)
        ax.contour(gx, gy, z, levels=[0.5], colors="k", linewidths=1.5)
        for target, color, marker in ((1, "red", "o"), (0, "blue", "s")):
            pts = INPUTS[XNOR == target]
            ax.scatter(pts[:, 0], pts[:, 1], s=120, c=color, marker=marker, edgecolors="k",
                       zorder=3, label=f"i1 == i2 is {bool(target)}")
        ax.set(title=title, xlabel="$i_1$", ylabel="$i_2$", aspect="equal",
               xlim=(g[0], g[-1]), ylim=(g[0], g[-1]))
    fig.colorbar(im, ax=axes, shrink=0.8, label="network output")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=2)
    return save_figure(fig, outdir, "logic_gates_regions.png", written)


def main(outdir=None, fast=False):
    outdir = prepare_outdir(outdir)
    written = []
    and_out = and_gate()
    found = xnor_impossible()
    hand_out = two_layer(INPUTS)[3]
    xnor_two_layers()
    p, prob, final_loss, solved_count = xnor_learned(fast)
    regions_figure(p, outdir, written)
    return {
        "and_outputs": and_out.tolist(),
        "gates_realised_by_one_perceptron": len(found),
        "xnor_realised_by_one_perceptron": (1, 0, 0, 1) in found,
        "hand_built_outputs": hand_out.tolist(),
        "learned_probabilities": prob.tolist(),
        "learned_outputs": (prob >= 0.5).astype(int).tolist(),
        "learned_correct": bool(np.all((prob >= 0.5) == XNOR)),
        "final_loss": float(final_loss),
        "restarts_solved": int(solved_count),
        "files": written,
    }


if __name__ == "__main__":
    run_script(main, __doc__.splitlines()[0])
