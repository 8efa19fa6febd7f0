"""``gradc demo``: the lecture's multilayer perceptron, compiled, planned, trained.

Contract
--------
:func:`run` (well under a minute on two cores) compiles the lecture's MLP with a softmax
output for the 8x8 digit images (scikit-learn's bundled ``load_digits``), checks its
gradient against finite differences, prints the plan of the network's Jacobian (forward
vs reverse vs optimal costs) and why a scalar loss is differentiated in reverse mode,
trains it with SGD (momentum, staircase learning-rate decay, gradient clipping) with a
progress bar, reports the held-out accuracy, and times one compiled ``value_and_grad``
against a hand-written numpy gradient.  Returns the key numbers as a dict.
"""

from __future__ import annotations

import time

import numpy as np
import sympy as sp

import gradc
from gradc import nn, optim
from gradc.errors import GradcError


def load_digits_split(seed=0, test_fraction=0.25):
    """The digits as (X_train, y_train, X_test, y_test), pixels scaled to [0, 1]."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise GradcError("the demo needs scikit-learn: pip install -e '.[examples]'") from None
    digits = load_digits()
    X, y = digits.data / 16.0, digits.target
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    cut = int(len(y) * (1 - test_fraction))
    return X[order[:cut]], y[order[:cut]], X[order[cut:]], y[order[cut:]]


def mlp(d=64, m=128, k=10, act=nn.tanh, l2=1e-4):
    """The lecture's MLP: h = act(W1 x + b1), logits W2 h + b2, softmax cross-entropy."""
    x = sp.MatrixSymbol("x", d, 1)
    label = sp.Symbol("label", integer=True)
    W1, b1 = sp.MatrixSymbol("W1", m, d), sp.MatrixSymbol("b1", m, 1)
    W2, b2 = sp.MatrixSymbol("W2", k, m), sp.MatrixSymbol("b2", k, 1)
    logits = W2 * act(W1 * x + b1) + b2
    loss = nn.cross_entropy(logits, label) + l2 * (nn.sum_squares(W1) + nn.sum_squares(W2))
    return loss, logits, [W1, b1, W2, b2], x, label


def numpy_value_and_grad(params, X, y, l2=1e-4):
    """A hand-written numpy gradient of the same loss (the baseline)."""
    W1, b1, W2, b2 = params
    n = X.shape[0]
    H = np.tanh(X @ W1.T + b1[:, 0])
    Z = H @ W2.T + b2[:, 0]
    Z = Z - Z.max(axis=1, keepdims=True)
    P = np.exp(Z)
    P /= P.sum(axis=1, keepdims=True)
    value = -np.mean(np.log(P[np.arange(n), y])) + l2 * (np.sum(W1 * W1) + np.sum(W2 * W2))
    G = P
    G[np.arange(n), y] -= 1.0
    G /= n
    gW2 = G.T @ H + 2 * l2 * W2
    gb2 = G.sum(axis=0)[:, None]
    GH = (G @ W2) * (1 - H * H)
    gW1 = GH.T @ X + 2 * l2 * W1
    gb1 = GH.sum(axis=0)[:, None]
    return value, [gW1, gb1, gW2, gb2]


def _median_time(f, repeat):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def run(fast: bool = False, progress: bool = True) -> dict:
    Xtr, ytr, Xte, yte = load_digits_split()
    loss, logits, wrt, x, label = mlp()
    print("gradc demo: the lecture's multilayer perceptron on the 8x8 digits")
    print(f"  loss = {loss}")
    print(f"  {len(ytr)} training and {len(yte)} test images; "
          f"{sum(int(np.prod(s.shape)) for s in wrt):,} parameters\n")

    t = time.perf_counter()
    fn = gradc.compile(loss, wrt=wrt, data=[x, label])
    rng = np.random.default_rng(0)
    params = [rng.normal(scale=1 / 8, size=(128, 64)), np.zeros((128, 1)),
              rng.normal(scale=1 / np.sqrt(128), size=(10, 128)), np.zeros((10, 1))]
    fn.value_and_grad(params, Xtr, ytr)
    print(f"compiled value_and_grad (and loaded or built its machine code) in "
          f"{time.perf_counter() - t:.1f} s")
    v, g = fn.value_and_grad(params, Xtr[:50], ytr[:50])
    u = [rng.normal(size=p.shape) for p in params]
    eps = 1e-6
    fd = (fn.value([p + eps * d for p, d in zip(params, u)], Xtr[:50], ytr[:50])
          - fn.value([p - eps * d for p, d in zip(params, u)], Xtr[:50], ytr[:50])) / (2 * eps)
    an = sum(float(np.sum(a * b)) for a, b in zip(g, u))
    print(f"gradient check along a random direction: {an:.8f} (reverse mode) vs "
          f"{fd:.8f} (central differences)\n")

    plan = gradc.plan(logits, wrt=[x], consts=wrt)
    print("The network's Jacobian d logits / d x at fixed weights, three ways:")
    print(plan)
    n_par = sum(int(np.prod(s.shape)) for s in wrt)
    print(f"For the scalar loss, forward mode would need {n_par:,} tangent sweeps (one per "
          "parameter), reverse mode one adjoint sweep: gradc differentiates losses in "
          "reverse mode.\n")

    epochs = 8 if fast else 30
    steps_per_epoch = int(np.ceil(len(ytr) / 64))
    schedule = optim.staircase(0.2, [steps_per_epoch * epochs // 2,
                                     steps_per_epoch * 3 * epochs // 4])
    opt = optim.SGD(lr=schedule, momentum=0.9, clip_norm=5.0)
    history = optim.fit(fn.value_and_grad, params, (Xtr, ytr), optimizer=opt, epochs=epochs,
                        batch_size=64, progress=progress, seed=0)
    W1, b1, W2, b2 = params
    pred = np.argmax(np.tanh(Xte @ W1.T + b1[:, 0]) @ W2.T + b2[:, 0], axis=1)
    accuracy = float(np.mean(pred == yte))
    print(f"trained {epochs} epochs: loss {history.losses[0]:.3f} -> "
          f"{history.epoch_losses[-1]:.3f}; test accuracy {accuracy:.1%}\n")

    repeat = 10 if fast else 50
    t_gradc = _median_time(lambda: fn.value_and_grad(params, Xtr, ytr), repeat)
    t_numpy = _median_time(lambda: numpy_value_and_grad(params, Xtr, ytr), repeat)
    ref_v, ref_g = numpy_value_and_grad(params, Xtr, ytr)
    for a, b in zip(fn.grad(params, Xtr, ytr), ref_g):
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-12)
    print(f"value_and_grad on all {len(ytr)} training images: gradc {t_gradc * 1e3:.2f} ms, "
          f"hand-written numpy {t_numpy * 1e3:.2f} ms ({t_numpy / t_gradc:.1f}x)")
    return {"accuracy": accuracy, "history": history, "gradc_s": t_gradc, "numpy_s": t_numpy,
            "plan": plan}
