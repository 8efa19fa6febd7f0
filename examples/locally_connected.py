"""Fully connected, locally connected and convolutional layers, written with indices.

    python examples/locally_connected.py [OUTDIR] [--fast]

The lecture's hidden layer whose units sit on a grid over the image, each unit looking at
the 3x3 window below it (stride 1), with C channels, then a softmax output layer.  Every
layer is a sympy ``Sum`` over ``IndexedBase`` arrays, as the lecture writes it; gradc
compiles them to loop nests (nothing is unrolled, and the program is the same for an 8x8
image as for a 28x28 one):

* fully connected:   a[i,j,c] = sum_{p,q} W[i,j,c,p,q] x[p,q] + b[i,j,c]  (every pixel)
* locally connected: a[i,j,c] = sum_{di,dj} W[i,j,di,dj,c] x[i+di, j+dj] + b[i,j,c]
* convolutional:     a[i,j,c] = sum_{di,dj} K[di,dj,c] x[i+di, j+dj] + b[c]  (shared)
* output:            z[k] = sum_{i,j,c} V[k,i,j,c] relu(a[i,j,c]) + v[k],
                     loss = cross_entropy(z, label) + lambda |first-layer weights|^2

1. On scikit-learn's 8x8 digits: parameters and held-out accuracy of the three layers,
   trained the same way (SGD with momentum and a cosine decay).
2. On 28x28 images (the 8x8 digits upsampled bilinearly, as MNIST-sized inputs; nothing is
   downloaded): the same three layers, their parameters, accuracy and time per epoch, and
   the lecture's "adaptive step sizes": the convolutional network trained with SGD with
   momentum and with Adam (``gradc.optim.Adam``) from the same start.  The lecture's
   count: a dense layer of 1,000 units on a 200x200 image has 40M weights.

Figures: locally_connected_comparison.png (parameters and test accuracy per layer, at both
sizes), locally_connected_filters.png (learned 3x3 kernels and unshared receptive fields)
and locally_connected_optimizers.png (training loss of SGD and Adam per epoch).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # for _common, also when imported by path

import numpy as np  # noqa: E402
import sympy as sp  # noqa: E402

import gradc  # noqa: E402
from gradc import nn, optim  # noqa: E402
from _common import (accuracy, banner, load_digits_split, plt, prepare_outdir, run_script,  # noqa: E402
                     save_figure, steps_per_epoch)

WINDOW, N_CLASSES, L2 = 3, 10, 1e-4
i, j, c, di, dj, p, q, k = sp.symbols("i j c di dj p q k", integer=True)
label = sp.Symbol("label", integer=True)
lam = sp.Symbol("lambda")


@dataclass
class Model:
    name: str
    loss: sp.Expr  # per-example loss
    wrt: list  # IndexedBase parameters
    data: list  # [x, label]
    params: list  # initial arrays, in wrt order (trained in place)
    hidden: Callable  # numpy pre-activations a(params, X) -> (n, G, G, C)
    hidden_params: int  # parameters of the hidden layer

    def logits(self, params, X):
        V, v = params[-2], params[-1]
        return np.einsum("nijc,kijc->nk", np.maximum(self.hidden(params, X), 0.0), V) + v


def patches(X, G):
    """(n, G, G, 9): the 3x3 window of every grid position (numpy, for checking)."""
    return np.stack([X[:, a:a + G, b:b + G] for a in range(WINDOW) for b in range(WINDOW)], -1)


def build(kind, H, channels, rng):
    """The network with hidden layer ``kind`` on HxH images, and its initial parameters."""
    G = H - WINDOW + 1  # grid positions per row and column
    x = sp.IndexedBase("x", shape=(H, H))
    if kind == "fully connected":
        W = sp.IndexedBase("W", shape=(G, G, channels, H, H))
        b = sp.IndexedBase("b", shape=(G, G, channels))
        a = sp.Sum(W[i, j, c, p, q] * x[p, q], (p, 0, H - 1), (q, 0, H - 1)) + b[i, j, c]
        first = [rng.normal(0, 1 / H, (G, G, channels, H, H)), np.zeros((G, G, channels))]

        def hidden(P, X):
            return np.einsum("ijcpq,npq->nijc", P[0], X) + P[1]
        n_hidden = G * G * channels * (H * H + 1)
    elif kind == "locally connected":
        W = sp.IndexedBase("W", shape=(G, G, WINDOW, WINDOW, channels))
        b = sp.IndexedBase("b", shape=(G, G, channels))
        a = sp.Sum(W[i, j, di, dj, c] * x[i + di, j + dj], (di, 0, 2), (dj, 0, 2)) + b[i, j, c]
        first = [rng.normal(0, 1 / 3, (G, G, WINDOW, WINDOW, channels)), np.zeros((G, G, channels))]

        def hidden(P, X):
            return np.einsum("nijw,ijwc->nijc", patches(X, G), P[0].reshape(G, G, 9, -1)) + P[1]
        n_hidden = G * G * channels * (WINDOW * WINDOW + 1)
    else:
        W = sp.IndexedBase("K", shape=(WINDOW, WINDOW, channels))
        b = sp.IndexedBase("B", shape=(channels,))
        a = sp.Sum(W[di, dj, c] * x[i + di, j + dj], (di, 0, 2), (dj, 0, 2)) + b[c]
        first = [rng.normal(0, 1 / 3, (WINDOW, WINDOW, channels)), np.zeros(channels)]

        def hidden(P, X):
            return patches(X, G) @ P[0].reshape(9, -1) + P[1]
        n_hidden = channels * (WINDOW * WINDOW + 1)
    V = sp.IndexedBase("V", shape=(N_CLASSES, G, G, channels))
    v = sp.IndexedBase("v", shape=(N_CLASSES,))
    z = sp.Sum(V[k, i, j, c] * sp.Max(a, 0), (i, 0, G - 1), (j, 0, G - 1),
               (c, 0, channels - 1)) + v[k]
    shape = tuple(int(d) for d in W.shape)
    idx = sp.symbols(f"s0:{len(shape)}", integer=True)
    penalty = lam * sp.Sum(W[idx] ** 2, *[(s, 0, d - 1) for s, d in zip(idx, shape)])
    loss = nn.cross_entropy(sp.FunctionMatrix(N_CLASSES, 1, sp.Lambda((k, q), z)), label) + penalty
    params = first + [rng.normal(0, (G * G * channels) ** -0.5, (N_CLASSES, G, G, channels)),
                      np.zeros(N_CLASSES)]
    return Model(kind, loss, [W, b, V, v], [x, label], params, hidden, n_hidden)


def train(model, data, epochs, batch, optimizer):
    """Compile the model's loss, train it with ``optimizer``, and measure it."""
    X_train, X_test, y_train, y_test = data
    t0 = time.perf_counter()
    fn = gradc.compile(model.loss, wrt=model.wrt, data=model.data, consts=[lam])
    fn.warmup(["value_and_grad"])
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    history = optim.fit(fn.value_and_grad, model.params, (X_train, y_train), optimizer=optimizer,
                        epochs=epochs, batch_size=batch, consts=(L2,), progress=False, seed=0)
    train_s = time.perf_counter() - t0
    return {
        "hidden_params": model.hidden_params,
        "params": sum(int(np.prod(a.shape)) for a in model.params),
        "train_accuracy": accuracy(model.logits(model.params, X_train), y_train),
        "test_accuracy": accuracy(model.logits(model.params, X_test), y_test),
        "epoch_losses": [float(v) for v in history.epoch_losses],
        "compile_s": compile_s,
        "seconds_per_epoch": train_s / epochs,
    }


def sgd(epochs, n, batch, lr=0.05):
    return optim.SGD(lr=optim.cosine(lr, epochs * steps_per_epoch(n, batch), final_lr=lr / 100),
                     momentum=0.9)


def upsample(X8, size=28):
    """8x8 images -> size x size by bilinear interpolation (pixel centres aligned)."""
    n = X8.shape[0]
    img = X8.reshape(n, 8, 8)
    t = (np.arange(size) + 0.5) * 8 / size - 0.5  # sample positions in source pixels
    t = np.clip(t, 0, 7)
    lo = np.floor(t).astype(int)
    hi = np.minimum(lo + 1, 7)
    w = t - lo
    rows = img[:, lo, :] * (1 - w)[None, :, None] + img[:, hi, :] * w[None, :, None]
    return rows[:, :, lo] * (1 - w)[None, None, :] + rows[:, :, hi] * w[None, None, :]


def untrained(model):
    n = sum(int(np.prod(a.shape)) for a in model.params)
    return {"hidden_params": model.hidden_params, "params": n, "train_accuracy": float("nan"),
            "test_accuracy": float("nan"), "epoch_losses": [], "compile_s": float("nan"),
            "seconds_per_epoch": float("nan")}


def table(results):
    print(f"  {'layer':18s} {'hidden params':>13s} {'all params':>10s} {'train acc':>9s}"
          f" {'test acc':>8s} {'compile s':>9s} {'s/epoch':>8s}")
    for name, res in results.items():
        print(f"  {name:18s} {res['hidden_params']:13d} {res['params']:10d}"
              f" {res['train_accuracy']:9.4f} {res['test_accuracy']:8.4f}"
              f" {res['compile_s']:9.2f} {res['seconds_per_epoch']:8.3f}")


KINDS = ("fully connected", "locally connected", "convolutional")


def main(outdir=None, fast=False):
    outdir = prepare_outdir(outdir)
    written = []
    X_train, X_test, y_train, y_test = load_digits_split(seed=0)
    small = (X_train.reshape(-1, 8, 8), X_test.reshape(-1, 8, 8), y_train, y_test)

    # -- 1. 8x8 digits
    channels, epochs, batch = (2, 6, 32) if fast else (4, 30, 32)
    banner(f"1. 8x8 digits: a 6x6 grid of 3x3 windows, {channels} channels, "
           f"{channels * 36} relu units")
    print("training: SGD momentum 0.9, cosine lr 0.05 -> 0.0005, "
          f"{epochs} epochs of batches of {batch}, L2 {L2} on the first layer\n")
    rng = np.random.default_rng(0)
    models8 = {kind: build(kind, 8, channels, rng) for kind in KINDS}
    results8 = {kind: train(m, small, epochs, batch, sgd(epochs, len(y_train), batch))
                for kind, m in models8.items()}
    table(results8)

    # -- 2. 28x28 images
    big = tuple(upsample(a) for a in small[:2]) + small[2:]
    channels28, epochs28, batch28 = (2, 2, 64) if fast else (8, 12, 64)
    banner(f"2. 28x28 images (upsampled digits): a 26x26 grid, {channels28} channels, "
           f"{channels28 * 676} relu units")
    rng = np.random.default_rng(1)
    models28 = {kind: build(kind, 28, channels28, rng) for kind in KINDS}
    start = [a.copy() for a in models28["convolutional"].params]
    # (--fast trains only the convolutional network here: compiles are the slow part)
    results28 = {kind: train(m, big, epochs28, batch28, sgd(epochs28, len(y_train), batch28))
                 if not (fast and kind != "convolutional") else untrained(m)
                 for kind, m in models28.items()}
    table(results28)
    print(f"\nthe lecture's count: a dense layer of 1,000 units on a 200x200 image has "
          f"{200 * 200 * 1000:,} weights; locally connected with 10x10 windows, "
          f"{1000 * 10 * 10:,}; one shared 10x10 filter per channel, 100 per channel")

    # the lecture's adaptive step sizes: the conv network again from the same start, Adam
    conv = models28["convolutional"]
    conv.params[:] = [a.copy() for a in start]
    adam = train(conv, big, epochs28, batch28, optim.Adam(lr=3e-3))
    sgd_run = results28["convolutional"]
    print(f"\nconvolutional network, same start, {epochs28} epochs: training loss per epoch")
    print(f"  SGD + momentum: {np.round(sgd_run['epoch_losses'], 4).tolist()}  "
          f"test acc {sgd_run['test_accuracy']:.4f}")
    print(f"  Adam (lr 3e-3): {np.round(adam['epoch_losses'], 4).tolist()}  "
          f"test acc {adam['test_accuracy']:.4f}")

    # -- figures
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    colors = ["tab:gray", "tab:orange", "tab:green"]
    width = 0.38
    pos = np.arange(len(KINDS))
    for off, (res, size) in zip((-width / 2, width / 2), ((results8, "8x8"), (results28, "28x28"))):
        axes[0].bar(pos + off, [res[kd]["hidden_params"] for kd in KINDS], width,
                    color=colors, alpha=0.55 if size == "8x8" else 1.0, label=size)
        axes[1].bar(pos + off, [res[kd]["test_accuracy"] for kd in KINDS], width,
                    color=colors, alpha=0.55 if size == "8x8" else 1.0, label=size)
    for ax in axes:
        ax.set_xticks(pos, KINDS)
        ax.legend(title="image (light: 8x8)")
    axes[0].set(yscale="log", ylabel="parameters of the hidden layer", title="parameters (log)")
    low = np.nanmin([r["test_accuracy"] for res in (results8, results28) for r in res.values()])
    axes[1].set(ylim=(max(0.0, low - 0.1), 1.0), ylabel="test accuracy", title="held-out accuracy")
    save_figure(fig, outdir, "locally_connected_comparison.png", written)

    K = models8["convolutional"].params[0]
    W_lc = models8["locally connected"].params[0]  # (6, 6, 3, 3, C)
    shown = [(0, 0), (1, 1), (2, 3), (5, 5)]
    cols = max(channels, len(shown))
    fig, axes = plt.subplots(2, cols, figsize=(2.2 * cols, 4.6), layout="constrained",
                             squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    for ch in range(channels):
        limit = np.abs(K[:, :, ch]).max()
        axes[0, ch].imshow(K[:, :, ch], cmap="RdBu_r", vmin=-limit, vmax=limit)
        axes[0, ch].set_title(f"kernel, channel {ch}", fontsize=9)
    for col, (gi, gj) in enumerate(shown):
        field = np.zeros((8, 8))
        field[gi:gi + 3, gj:gj + 3] = W_lc[gi, gj, :, :, 0]
        limit = np.abs(field).max() or 1.0
        axes[1, col].imshow(field, cmap="RdBu_r", vmin=-limit, vmax=limit)
        axes[1, col].set_title(f"unshared unit ({gi}, {gj})", fontsize=9)
    fig.suptitle("top: learned shared 3x3 kernels; bottom: weights of unshared units")
    save_figure(fig, outdir, "locally_connected_filters.png", written)

    fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    ax.plot(range(1, epochs28 + 1), sgd_run["epoch_losses"], "o-", label="SGD + momentum 0.9")
    ax.plot(range(1, epochs28 + 1), adam["epoch_losses"], "s-", label="Adam, lr 3e-3")
    ax.set(xlabel="epoch", ylabel="mean training loss", yscale="log",
           title="28x28 convolutional network, same start")
    ax.legend()
    save_figure(fig, outdir, "locally_connected_optimizers.png", written)

    return {"results": results8, "results_28": results28, "adam_28": adam,
            "channels": channels, "files": written}


if __name__ == "__main__":
    run_script(main, __doc__.splitlines()[0])
