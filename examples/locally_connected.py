"""Locally connected and convolutional layers on the 8x8 digits, declared in sympy.

    python examples/locally_connected.py [OUTDIR] [--fast]

A hidden layer whose units sit on a 6x6 grid over the 8x8 image, each unit looking only at
its 3x3 window (stride 1), with C feature maps (channels), then a softmax output layer:

* fully connected (baseline): h = relu(W x + b), W dense (C*36 x 64): every unit sees all
  64 pixels.
* locally connected, unshared weights: h = relu((W o M) x + b), where o is the elementwise
  (Hadamard) product and M a constant 0/1 mask (a const MatrixSymbol bound to an array)
  with ones exactly on each unit's window.  W is stored dense, but the gradient outside
  the windows is zero, so only 9 weights per unit are parameters.
* convolutional, shared weights: every unit of channel c uses the same 3x3 kernel
  K[c, 0..8]: a = sum_k (R K e_k) o (T_k x) + R B, where the constant 0/1 matrix T_k picks
  pixel k of each unit's window, R maps units to channels and e_k is a unit vector (all
  consts).  9 weights per channel.

All three are trained the same way (SGD with momentum, cosine decay, mini-batches); the
script prints and plots the parameter counts and test accuracies.

Figures: locally_connected_comparison.png (parameters and test accuracy per model) and
locally_connected_filters.png (the learned 3x3 kernels and some unshared receptive fields).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # for _common, also when imported by path

import numpy as np  # noqa: E402
import sympy as sp  # noqa: E402

import gradc  # noqa: E402
from gradc import nn, optim  # noqa: E402
from _common import (accuracy, banner, load_digits_split, plt, prepare_outdir, run_script,  # noqa: E402
                     save_figure, steps_per_epoch)

IMAGE, WINDOW, STRIDE = 8, 3, 1
GRID = (IMAGE - WINDOW) // STRIDE + 1  # 6: units per row and column of the grid
UNITS = GRID * GRID  # 36 units per channel
OFFSETS = WINDOW * WINDOW  # 9 pixels per window
N_CLASSES = 10


def window_selectors():
    """S[k] (UNITS x 64), 0/1: row u of S[k] picks the k-th pixel of unit u's window.

    Offset k = 3*di + dj is pixel (di, dj) of the 3x3 window; unit u = GRID*gi + gj has its
    window's top-left corner at image pixel (STRIDE*gi, STRIDE*gj).
    """
    S = np.zeros((OFFSETS, UNITS, IMAGE * IMAGE))
    for gi in range(GRID):
        for gj in range(GRID):
            for di in range(WINDOW):
                for dj in range(WINDOW):
                    pixel = (STRIDE * gi + di) * IMAGE + STRIDE * gj + dj
                    S[WINDOW * di + dj, GRID * gi + gj, pixel] = 1.0
    return S


# ---------------------------------------------------------------------------- the three models
@dataclass
class Model:
    loss: sp.Expr  # per-example loss
    wrt: list  # parameter symbols
    consts: list  # const symbols besides lambda (masks, window selectors)
    const_values: list  # their arrays
    params: list  # initial parameter arrays, in wrt order (trained in place)
    logits: Callable  # logits(params, X) in numpy
    hidden_params: int  # trainable parameters of the hidden layer
    output_params: int = 0  # ... and of the output layer


# Hidden unit u of channel c has index c * UNITS + u.
x = sp.MatrixSymbol("x", IMAGE * IMAGE, 1)
label = sp.Symbol("label", integer=True)
lam = sp.Symbol("lambda")


def output_layer(h, hidden):
    """Logits z = V h + c and the output layer's parameters."""
    V, c = sp.MatrixSymbol("V", N_CLASSES, hidden), sp.MatrixSymbol("c", N_CLASSES, 1)
    return V * h + c, [V, c]


def relu(a):
    return np.maximum(a, 0.0)


def fully_connected(channels, rng):
    hidden = channels * UNITS
    W, b = sp.MatrixSymbol("W", hidden, 64), sp.MatrixSymbol("b", hidden, 1)
    z, out_params = output_layer(nn.relu(W * x + b), hidden)
    loss = nn.cross_entropy(z, label) + lam * nn.sum_squares(W)
    params = [rng.normal(0, 1 / 8, (hidden, 64)), np.zeros((hidden, 1)),
              rng.normal(0, hidden**-0.5, (N_CLASSES, hidden)), np.zeros((N_CLASSES, 1))]

    def logits(p, X):
        return relu(X @ p[0].T + p[1].T) @ p[2].T + p[3].T

    return Model(loss, [W, b, *out_params], [], [], params, logits, hidden * 64 + hidden,
                 (hidden + 1) * N_CLASSES)


def locally_connected(channels, rng, S):
    hidden = channels * UNITS
    W, b = sp.MatrixSymbol("W", hidden, 64), sp.MatrixSymbol("b", hidden, 1)
    M = sp.MatrixSymbol("M", hidden, 64)  # the constant 0/1 window mask
    W_local = sp.HadamardProduct(W, M)  # only window weights reach the output
    z, out_params = output_layer(nn.relu(W_local * x + b), hidden)
    loss = nn.cross_entropy(z, label) + lam * nn.sum_squares(W_local)
    mask = np.tile(S.sum(axis=0), (channels, 1))  # (hidden, 64), 9 ones per row
    params = [rng.normal(0, 1 / 3, (hidden, 64)) * mask, np.zeros((hidden, 1)),
              rng.normal(0, hidden**-0.5, (N_CLASSES, hidden)), np.zeros((N_CLASSES, 1))]

    def logits(p, X):
        return relu(X @ (p[0] * mask).T + p[1].T) @ p[2].T + p[3].T

    return Model(loss, [W, b, *out_params], [M], [mask], params, logits,
                 hidden * OFFSETS + hidden, (hidden + 1) * N_CLASSES)


def convolutional(channels, rng, S):
    """Shared weights: unit u of channel c computes  sum_k K[c, k] * (pixel k of u's window).

    With R (hidden x channels) the constant 0/1 matrix that maps each unit to its channel,
    e_k the k-th unit vector and T_k = S_k repeated for every channel:
      R K e_k   holds, for every hidden unit, the kernel weight it uses at window pixel k;
      T_k x     holds, for every hidden unit, its window's pixel k;
    so the pre-activations are  a = sum_k (R K e_k) o (T_k x) + R B,  a convolution.
    """
    hidden = channels * UNITS
    K = sp.MatrixSymbol("K", channels, OFFSETS)  # one 3x3 kernel per channel (a row)
    B = sp.MatrixSymbol("B", channels, 1)  # one bias per channel
    R = sp.MatrixSymbol("R", hidden, channels)
    e = [sp.MatrixSymbol(f"e{k}", OFFSETS, 1) for k in range(OFFSETS)]
    T = [sp.MatrixSymbol(f"T{k}", hidden, 64) for k in range(OFFSETS)]
    a = sp.MatAdd(*[sp.HadamardProduct(R * K * e[k], T[k] * x) for k in range(OFFSETS)]) + R * B
    z, out_params = output_layer(nn.relu(a), hidden)
    loss = nn.cross_entropy(z, label) + lam * nn.sum_squares(K)

    R_value = np.kron(np.eye(channels), np.ones((UNITS, 1)))
    e_values = [np.eye(OFFSETS)[:, [k]] for k in range(OFFSETS)]
    T_values = [np.tile(S[k], (channels, 1)) for k in range(OFFSETS)]
    params = [rng.normal(0, 1 / 3, (channels, OFFSETS)), np.zeros((channels, 1)),
              rng.normal(0, hidden**-0.5, (N_CLASSES, hidden)), np.zeros((N_CLASSES, 1))]

    def logits(p, X):
        # the same weights as one dense matrix: W[(c, u), :] = sum_k K[c, k] S_k[u, :]
        W = np.concatenate([np.tensordot(p[0][c], S, axes=1) for c in range(channels)])
        return relu(X @ W.T + (R_value @ p[1]).T) @ p[2].T + p[3].T

    return Model(loss, [K, B, *out_params], [R, *e, *T], [R_value, *e_values, *T_values],
                 params, logits, channels * OFFSETS + channels, (hidden + 1) * N_CLASSES)


def train(model, data, epochs, batch):
    """Compile the model's loss, train it, and measure it."""
    X_train, X_test, y_train, y_test = data
    fn = gradc.compile(model.loss, wrt=model.wrt, data=[x, label], consts=[lam, *model.consts])
    total = epochs * steps_per_epoch(len(y_train), batch)
    opt = optim.SGD(lr=optim.cosine(0.05, total, final_lr=5e-4), momentum=0.9)
    history = optim.fit(fn.value_and_grad, model.params, (X_train, y_train), optimizer=opt,
                        epochs=epochs, batch_size=batch, consts=(1e-4, *model.const_values),
                        progress=False, seed=0)
    return {
        "hidden_params": model.hidden_params,
        "params": model.hidden_params + model.output_params,
        "stored_values": sum(int(np.prod(s.shape)) for s in model.wrt),
        "train_accuracy": accuracy(model.logits(model.params, X_train), y_train),
        "test_accuracy": accuracy(model.logits(model.params, X_test), y_test),
        "final_loss": float(history.epoch_losses[-1]),
    }


def main(outdir=None, fast=False):
    outdir = prepare_outdir(outdir)
    written = []
    data = load_digits_split(seed=0)
    channels, epochs, batch = (2, 6, 32) if fast else (4, 30, 32)
    S = window_selectors()
    rng = np.random.default_rng(0)
    models = {
        "fully connected": fully_connected(channels, rng),
        "locally connected": locally_connected(channels, rng, S),
        "convolutional": convolutional(channels, rng, S),
    }

    banner(f"Hidden layers on a {GRID}x{GRID} grid of {WINDOW}x{WINDOW} windows (stride {STRIDE}),"
           f" {channels} channels: {channels * UNITS} relu units")
    print("fully connected:    a = W x + b, W dense")
    print("locally connected:  a = (W o M) x + b, M the 0/1 window mask (a const MatrixSymbol)")
    print("convolutional:      a = (R K e0) o (T0 x) + ... + (R K e8) o (T8 x) + R B,\n"
          "                    K the kernels (one row per channel), R unit -> channel, T_k x the\n"
          "                    k-th pixel of every unit's window (R, e_k, T_k constant)")
    print("output:             z = V relu(a) + c, loss = cross_entropy(z, label) + lambda |hidden weights|^2")
    print(f"training: SGD momentum 0.9, cosine lr 0.05 -> 0.0005, {epochs} epochs of batches of "
          f"{batch}, L2 1e-4 on the first layer\n")
    results = {}
    for name, model in models.items():
        results[name] = train(model, data, epochs, batch)

    print(f"  {'model':18s} {'hidden-layer params':>19s} {'all params':>10s} {'train acc':>9s}"
          f" {'test acc':>8s}")
    for name, r in results.items():
        print(f"  {name:18s} {r['hidden_params']:19d} {r['params']:10d}"
              f" {r['train_accuracy']:9.4f} {r['test_accuracy']:8.4f}")
    lc = results["locally connected"]
    print(f"(the locally connected W is stored dense, {channels * UNITS}x64, but only "
          f"{lc['hidden_params'] - channels * UNITS} of its entries are inside a window)")

    # -- figure 1: parameters and accuracy
    names = list(results)
    colors = ["tab:gray", "tab:orange", "tab:green"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    bars = ax1.bar(names, [results[n]["hidden_params"] for n in names], color=colors)
    ax1.bar_label(bars)
    ax1.set(yscale="log", ylabel="parameters of the hidden layer", title="parameters (log scale)")
    bars = ax2.bar(names, [results[n]["test_accuracy"] for n in names], color=colors)
    ax2.bar_label(bars, fmt="%.3f")
    low = min(results[n]["test_accuracy"] for n in names)
    ax2.set(ylim=(max(0.0, low - 0.1), 1.0), ylabel="test accuracy", title="held-out accuracy")
    fig.suptitle(f"{channels * UNITS} hidden relu units: dense vs local vs shared weights")
    save_figure(fig, outdir, "locally_connected_comparison.png", written)

    # -- figure 2: the learned kernels, and the receptive fields of a few unshared units
    K = models["convolutional"].params[0]
    W_lc = models["locally connected"].params[0]
    shown = [0, GRID + 1, 2 * GRID + 3, UNITS - 1]  # a few grid positions of channel 0
    fig, axes = plt.subplots(2, max(channels, len(shown)), figsize=(2.2 * max(channels, len(shown)), 4.6),
                             layout="constrained", squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    for ch in range(channels):
        limit = np.abs(K[ch]).max()
        axes[0, ch].imshow(K[ch].reshape(WINDOW, WINDOW), cmap="RdBu_r", vmin=-limit, vmax=limit)
        axes[0, ch].set_title(f"kernel, channel {ch}", fontsize=9)
    for j, u in enumerate(shown):
        limit = np.abs(W_lc[u]).max()
        axes[1, j].imshow(W_lc[u].reshape(IMAGE, IMAGE), cmap="RdBu_r", vmin=-limit, vmax=limit)
        axes[1, j].set_title(f"unshared unit {u}", fontsize=9)
    fig.suptitle("top: learned shared 3x3 kernels; bottom: weights of unshared units "
                 "(zero outside the window)")
    save_figure(fig, outdir, "locally_connected_filters.png", written)

    return {"results": results, "channels": channels, "files": written}


if __name__ == "__main__":
    run_script(main, __doc__.splitlines()[0])
