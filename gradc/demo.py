"""``gradc demo``: the lecture's 3-unit tanh network, compiled, checked and trained.

Contract
--------
:func:`run` prints, in order: the model as sympy writes it, the compile time (cold or from
the disk cache), a check of the gradient against ``sympy.diff``, a few lines of the
generated source, training by SGD with cosine learning-rate decay (with a progress bar)
on y = sin(x), and the time of one compiled ``value_and_grad`` call against a hand-written
numpy gradient of the same model.  It takes well under a minute on two cores.
"""

from __future__ import annotations

import time

import numpy as np
import sympy as sp

import gradc
from gradc import optim
from gradc.testing import check_against_sympy


def lecture_model(units: int = 3):
    """The lecture's model f = w0 + sum_i w_i tanh(v_i x + b_i), and its squared loss."""
    x, y = sp.symbols("x y")
    v = sp.symbols(f"v1:{units + 1}")
    b = sp.symbols(f"b1:{units + 1}")
    w = sp.symbols(f"w0:{units + 1}")
    f = w[0] + sum(w[i + 1] * sp.tanh(v[i] * x + b[i]) for i in range(units))
    return f, (f - y) ** 2, [*v, *b, *w], [x, y]


def numpy_value_and_grad(p, X, Y, units: int = 3):
    """A hand-written numpy gradient of the same loss (the baseline)."""
    v, b, w0, w = p[:units], p[units:2 * units], p[2 * units], p[2 * units + 1:]
    h = np.tanh(np.outer(X, v) + b)  # (n, units)
    r = w0 + h @ w - Y
    n = X.shape[0]
    dr = 2.0 * r / n
    dh = np.outer(dr, w) * (1.0 - h * h)
    grad = np.concatenate([dh.T @ X, dh.sum(axis=0), [dr.sum()], h.T @ dr])
    return float(np.mean(r * r)), grad


def _median_time(f, repeat):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def run(fast: bool = False, progress: bool = True) -> dict:
    f, loss, wrt, data = lecture_model()
    print("gradc demo: the lecture's network with 3 tanh hidden units")
    print(f"  f(x) = {f}")
    print(f"  loss = (f(x) - y)**2, averaged over the batch; {len(wrt)} parameters\n")

    t = time.perf_counter()
    fn = gradc.compile(loss, wrt=wrt, data=data)
    X = np.linspace(-np.pi, np.pi, 2_000 if fast else 10_000)
    Y = np.sin(X)
    params = np.random.default_rng(0).normal(scale=0.5, size=len(wrt))
    fn.value_and_grad(params, X, Y)
    print(f"compiled (and loaded or built the machine code) in {time.perf_counter() - t:.2f} s")
    check_against_sympy(fn, params, X[:50], Y[:50], rtol=1e-10)
    print("gradient checked against sympy.diff: agrees to rtol 1e-10")
    lines = [ln for ln in fn.source.splitlines() if "_vm.tanh" in ln or "buf[" in ln][:4]
    print("generated code (excerpt):\n    " + "\n    ".join(ln.strip() for ln in lines) + "\n")

    epochs = 60 if fast else 300
    opt = optim.SGD(lr=optim.cosine(0.5, total_steps=epochs * 10), momentum=0.9)
    history = optim.fit(fn.value_and_grad, params, (X, Y), optimizer=opt, epochs=epochs,
                        batch_size=len(X) // 10, progress=progress, seed=0)
    final = fn.value(params, X, Y)
    print(f"trained {epochs} epochs: loss {history.losses[0]:.4f} -> {final:.2e}")

    repeat = 20 if fast else 200
    t_gradc = _median_time(lambda: fn.value_and_grad(params, X, Y), repeat)
    t_numpy = _median_time(lambda: numpy_value_and_grad(params, X, Y), repeat)
    ref_v, ref_g = numpy_value_and_grad(params, X, Y)
    np.testing.assert_allclose(fn.grad(params, X, Y), ref_g, rtol=1e-9, atol=1e-12)
    print(f"value_and_grad on {len(X)} examples: gradc {t_gradc * 1e6:.0f} us, "
          f"hand-written numpy {t_numpy * 1e6:.0f} us ({t_numpy / t_gradc:.1f}x faster)")
    return {"loss": final, "history": history, "gradc_s": t_gradc, "numpy_s": t_numpy}
