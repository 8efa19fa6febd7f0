"""A multilayer perceptron with a softmax output on scikit-learn's 8x8 digits.

    python examples/digits_mlp.py [OUTDIR] [--fast]

The model, declared with sympy matrices and gradc.nn, for one image x (64 pixels in [0, 1])
with integer label in 0..9:

    h = tanh(W1 x + b1)          (H hidden units)
    z = W2 h + b2                (10 logits; softmax(z) are the class probabilities)
    loss = cross_entropy(z, label) + lambda (|W1|^2 + |W2|^2)

trained by mini-batch SGD with momentum and a cosine learning-rate decay on 75% of the
1797 images, evaluated on the held-out 25% (stratified, seeded split).  Predictions use the
trained parameters in numpy.

Figures: digits_mlp_curves.png (loss per epoch, train/test accuracy), digits_mlp_confusion.png
(confusion matrix on the test set) and digits_mlp_features.png (the incoming weights of some
hidden units as 8x8 images: the features the network learned).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # for _common, also when imported by path

import numpy as np  # noqa: E402
import sympy as sp  # noqa: E402

import gradc  # noqa: E402
from gradc import nn, optim  # noqa: E402
from _common import (accuracy, banner, load_digits_split, plt, prepare_outdir, run_script,  # noqa: E402
                     save_figure, steps_per_epoch)

N_CLASSES = 10


def mlp_loss(hidden):
    """The per-example loss of the one-hidden-layer tanh network, and its symbols."""
    x = sp.MatrixSymbol("x", 64, 1)
    label = sp.Symbol("label", integer=True)
    lam = sp.Symbol("lambda")
    W1, b1 = sp.MatrixSymbol("W1", hidden, 64), sp.MatrixSymbol("b1", hidden, 1)
    W2, b2 = sp.MatrixSymbol("W2", N_CLASSES, hidden), sp.MatrixSymbol("b2", N_CLASSES, 1)
    z = W2 * nn.tanh(W1 * x + b1) + b2
    loss = nn.cross_entropy(z, label) + lam * (nn.sum_squares(W1) + nn.sum_squares(W2))
    return loss, [W1, b1, W2, b2], [x, label], [lam]


def init_params(hidden, seed=0):
    """Small random weights (scaled by 1/sqrt(fan-in)), zero biases; C-contiguous float64."""
    rng = np.random.default_rng(seed)
    return [rng.normal(0.0, 1.0 / 8.0, (hidden, 64)), np.zeros((hidden, 1)),
            rng.normal(0.0, 1.0 / np.sqrt(hidden), (N_CLASSES, hidden)), np.zeros((N_CLASSES, 1))]


def logits(params, X):
    """The network's logits for a batch of images X (n, 64), in numpy."""
    W1, b1, W2, b2 = params
    return np.tanh(X @ W1.T + b1.T) @ W2.T + b2.T


def confusion_matrix(labels, predicted, k=N_CLASSES):
    m = np.zeros((k, k), dtype=int)
    np.add.at(m, (labels, predicted), 1)
    return m


def main(outdir=None, fast=False):
    outdir = prepare_outdir(outdir)
    written = []
    X_train, X_test, y_train, y_test = load_digits_split(seed=0)
    hidden, epochs, batch, lam = (32, 8, 32, 1e-4) if fast else (64, 40, 32, 1e-4)

    banner("A multilayer perceptron on the 8x8 digits")
    loss, wrt, data, consts = mlp_loss(hidden)
    print(f"per-example loss: {loss}")
    n_params = sum(int(np.prod(s.shape)) for s in wrt)
    print(f"64 -> {hidden} tanh -> 10 softmax: {n_params} parameters; "
          f"{len(y_train)} training and {len(y_test)} test images")
    fn = gradc.compile(loss, wrt=wrt, data=data, consts=consts)

    params = init_params(hidden)
    total = epochs * steps_per_epoch(len(y_train), batch)
    opt = optim.SGD(lr=optim.cosine(0.1, total, final_lr=1e-3), momentum=0.9)
    print(f"SGD, momentum 0.9, cosine lr 0.1 -> 0.001 over {epochs} epochs of batches of {batch}, "
          f"L2 lambda {lam}\n")
    epoch_loss, train_acc, test_acc = [], [], []
    for epoch in range(epochs):
        # one epoch at a time so we can measure accuracy; the optimizer keeps its step count
        history = optim.fit(fn.value_and_grad, params, (X_train, y_train), optimizer=opt,
                            epochs=1, batch_size=batch, consts=(lam,), seed=epoch,
                            progress=False)
        epoch_loss.append(float(history.epoch_losses[-1]))
        train_acc.append(accuracy(logits(params, X_train), y_train))
        test_acc.append(accuracy(logits(params, X_test), y_test))
        if epoch % max(1, epochs // 8) == 0 or epoch == epochs - 1:
            print(f"  epoch {epoch + 1:3d}: loss {epoch_loss[-1]:.4f}  train acc {train_acc[-1]:.4f}"
                  f"  test acc {test_acc[-1]:.4f}")
    predicted = np.argmax(logits(params, X_test), axis=1)
    cm = confusion_matrix(y_test, predicted)
    print(f"\nfinal test accuracy {test_acc[-1]:.4f} ({int(np.trace(cm))}/{len(y_test)} correct)")
    worst = np.argsort(np.diag(cm) / cm.sum(axis=1))[:3]
    print("hardest digits (test recall): "
          + ", ".join(f"{d}: {cm[d, d] / cm[d].sum():.3f}" for d in worst))

    # -- figures
    ep = np.arange(1, epochs + 1)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    ax1.plot(ep, epoch_loss, "o-", ms=3)
    ax1.set(yscale="log", xlabel="epoch", ylabel="mean training loss (cross-entropy + L2)",
            title="training loss")
    ax2.plot(ep, train_acc, "o-", ms=3, label="train")
    ax2.plot(ep, test_acc, "s-", ms=3, label="test")
    ax2.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(min(0.8, min(test_acc)), 1.005))
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    ax2.legend()
    save_figure(fig, outdir, "digits_mlp_curves.png", written)

    fig, ax = plt.subplots(figsize=(5.5, 5), layout="constrained")
    ax.imshow(cm, cmap="Blues")
    for i in range(N_CLASSES):
        for j in range(N_CLASSES):
            if cm[i, j]:
                ax.text(j, i, cm[i, j], ha="center", va="center", fontsize=8,
                        color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set(xticks=range(10), yticks=range(10), xlabel="predicted", ylabel="true",
           title=f"test confusion matrix (accuracy {test_acc[-1]:.3f})")
    save_figure(fig, outdir, "digits_mlp_confusion.png", written)

    W1 = params[0]
    shown = min(16, hidden)
    fig, axes = plt.subplots(2, shown // 2, figsize=(shown * 0.75, 2), layout="constrained")
    for k, ax in enumerate(axes.ravel()):
        limit = np.abs(W1[k]).max()
        ax.imshow(W1[k].reshape(8, 8), cmap="RdBu_r", vmin=-limit, vmax=limit)
        ax.set_axis_off()
    fig.suptitle("incoming weights of the first hidden units (red +, blue -)")
    save_figure(fig, outdir, "digits_mlp_features.png", written)

    return {
        "test_accuracy": test_acc[-1],
        "train_accuracy": train_acc[-1],
        "epoch_losses": epoch_loss,
        "confusion_matrix": cm.tolist(),
        "n_params": n_params,
        "files": written,
    }


if __name__ == "__main__":
    run_script(main, __doc__.splitlines()[0])
