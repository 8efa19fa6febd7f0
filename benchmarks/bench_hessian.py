"""Second derivatives: gradc's Hessian-vector products and Hessians against JAX, one CPU.

Usage::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_hessian.py
    python benchmarks/bench_hessian.py --quick           # k = 3, 10; chains to 1,000; fewer samples
    python benchmarks/bench_hessian.py --no-jax          # gradc and numpy only
    python benchmarks/bench_hessian.py --chain-max 10000 # largest chain (default 100,000)
    python benchmarks/bench_hessian.py --json hessian.json

Cases (float64; ``fn = gradc.compile(loss, wrt, data)`` with ``reduce="mean"``):

1. HVP against value_and_grad on the lecture's tanh model
   ``loss = (w0 + sum_{i=1..k} w_i tanh(v_i x + b_i) - y)^2``, mean over n = 10,000
   examples (X = linspace(-pi, pi), Y = sin X), k = 3 (10 parameters), 10 and 30: the
   kernels called directly (``fn.kernels.hvp`` / ``fn.kernels.value_and_grad``) and the
   methods (``fn.hvp`` / ``fn.value_and_grad``).  Target: HVP <= 3x value_and_grad.
2. The same HVPs against JAX's forward over reverse, ``jax.jit`` of ``jax.jvp`` of
   ``jax.grad(loss)``, with the loss written both ways a user would (unrolled over the
   units, and vectorised); the faster of the two is the peer.  Target: gradc/JAX <= 0.7.
3. The digits MLP 64-128-10, tanh, softmax cross-entropy plus an L2 penalty (lambda =
   1e-4), as ``examples/digits_mlp.py`` declares it (``mlp_loss(128)``, ``init_params``,
   with small random biases in place of its zeros so that every term of the HVP counts),
   on the 1797 scikit-learn digits (pixels / 16): HVP / value_and_grad and HVP against
   JAX (the loss written by hand in ``jax.numpy``), with the targets of 1 and 2.
4. The dense Hessian of the k = 33 tanh model (100 parameters, n = 10,000):
   ``fn.hessian(params, X, Y)`` against ``jax.jit(jax.hessian(loss))``.  Target:
   gradc/JAX <= 0.5.
5. The sparse Hessian of the chain ``sum_i 100 (x_{i+1} - x_i^2)^2 + (1 - x_i)^2`` (no
   data) at N = 100, 1,000, 10,000 and 100,000 variables: ``fn.hessian(x, sparse=True)``
   against one ``fn.grad(x)`` (target <= 10x at N = 10,000), the colours of the star
   colouring, the time to build the sympy sum, and gradc's compile time: ``gradc.compile``
   then the first Hessian, split into the pattern (``fn.hessian_sparsity()``), the plan
   with its colouring (``fn.hessian_plan``) and the first ``fn.hessian`` call (the HVP
   kernels generated and compiled by numba, and called).  Peers: JAX's dense
   ``jax.jit(jax.hessian(f))`` while it fits (N <= 2,000) and JAX's HVP against
   ``fn.kernels.hvp``.

Every gradc result (value, gradient, HVP, Hessian) is checked before timing against a
hand-written numpy reference (forward over reverse by hand for the tanh model and the MLP,
the tridiagonal Hessian in closed form for the chain), and so is every JAX result; rtol
1e-9, with entries near zero compared against 1e-3 of the array's largest entry.

Everything runs single-threaded and pinned to one CPU (``_single.py``).  gradc compiles
into a fresh, empty ``GRADC_CACHE_DIR`` (numba's cache of gradc's runtime helpers is
kept), so compile times are cold.  Per-call times are medians of round-robin samples (one
sample of every case of a model per round, each sample several back-to-back calls when
one call is short; a sample that follows a JAX case waits until the process's other
threads are idle, because JAX frees a call's buffers on a thread of its own after the
call returns, which otherwise slows whatever is timed next), and every ratio is between
medians measured in this process.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import _single  # noqa: E402  (one thread per library, one CPU)
from _single import settle  # noqa: E402

import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from _models import chain_model, units_model  # noqa: E402
from _revision import gradc_revision  # noqa: E402

QUICK = "--quick" in sys.argv
USE_JAX = "--no-jax" not in sys.argv
N = 10_000                      # examples of the tanh model
KS = [3, 10] if QUICK else [3, 10, 30]
K_DENSE = 33                    # 3 * 33 + 1 = 100 parameters
CHAIN_MAX = (int(sys.argv[sys.argv.index("--chain-max") + 1]) if "--chain-max" in sys.argv
             else 1_000 if QUICK else 100_000)
CHAINS = [c for c in (100, 1_000, 10_000, 100_000) if c <= CHAIN_MAX]
JAX_DENSE_MAX = 2_000           # JAX's dense chain Hessian only up to this N
LAM = 1e-4
HIDDEN = 128
RTOL = 1e-9
ROUNDS = {"fast": 40 if QUICK else 200, "slow": 3 if QUICK else 15}




# ------------------------------------------------------------------------------ timing
def time_round_robin(cases, rounds, target_sample=2e-3):
    """Median seconds per call of each case; one sample of every case per round.  Each
    sample times ``inner`` back-to-back calls, chosen so that a sample lasts about
    ``target_sample`` seconds (at least one call).  A sample that follows a JAX case
    starts after :func:`settle` and, for calls under 50 ms, one untimed call (the first
    calls after a sleep ran slower here: 52 -> 64 us for the k = 3 value_and_grad)."""
    inner, one = {}, {}
    for name, f in cases.items():
        for _ in range(2):                    # warm-up (the first call was the check)
            f()
        settle()
        f()
        t0 = time.perf_counter()
        f()
        one[name] = time.perf_counter() - t0
        inner[name] = max(1, int(target_sample / max(one[name], 1e-7)))
    samples = {name: [] for name in cases}
    after_jax = False
    for _ in range(rounds):
        for name, f in cases.items():
            k = inner[name]
            if after_jax:
                settle()
                if one[name] < 0.05:
                    f()
            t0 = time.perf_counter()
            for _ in range(k):
                f()
            samples[name].append((time.perf_counter() - t0) / k)
            after_jax = name.startswith("jax")
    return {name: float(np.median(s)) for name, s in samples.items()}, inner


def timed(f):
    t0 = time.perf_counter()
    out = f()
    return out, time.perf_counter() - t0


# ------------------------------------------------------------------------------ checks
def check(name, got, ref):
    """Arrays (or scalars, or lists of arrays) within RTOL of the reference; an entry is
    compared with tolerance RTOL * max(|ref entry|, 1e-3 * max |ref array|), so entries
    that are zero up to rounding do not demand impossible relative accuracy.  Returns the
    worst error in those units."""
    if not isinstance(ref, (list, tuple)):
        got, ref = [got], [ref]
    assert len(got) == len(ref), f"{name}: {len(got)} arrays, expected {len(ref)}"
    worst = 0.0
    for i, (g, r) in enumerate(zip(got, ref)):
        r = np.asarray(r, dtype=np.float64)
        g = np.asarray(g, dtype=np.float64).reshape(r.shape)
        floor = 1e-3 * float(np.max(np.abs(r))) if r.size else 0.0
        scale = np.maximum(np.abs(r), floor)
        np.testing.assert_allclose(g, r, rtol=RTOL, atol=RTOL * floor,
                                   err_msg=f"{name}: array {i}")
        if r.size:
            worst = max(worst, float(np.max(np.abs(g - r) / np.where(scale > 0, scale, 1.0))))
    return worst


def report_checks(rows):
    print(f"  agreement with the numpy reference (rtol {RTOL:g}): "
          + ", ".join(f"{name} {err:.1e}" for name, err in rows) + "  ok")


def jax_module():
    if not USE_JAX:
        return None
    try:
        import jax
    except Exception:  # noqa: BLE001 - jax is an optional peer
        return None
    jax.config.update("jax_enable_x64", True)
    return jax


def jax_call(fn, *args):
    """A no-argument callable running jitted ``fn`` on device copies of ``args``."""
    import jax

    dev = [jax.tree_util.tree_map(jax.numpy.asarray, a) for a in args]
    return lambda: jax.block_until_ready(fn(*dev))


def to_numpy(x):
    if isinstance(x, (tuple, list)):
        return [np.asarray(a) for a in x]
    return np.asarray(x)


# ------------------------------------------------------------------------------ tanh model

def units_data(k):
    X = np.linspace(-np.pi, np.pi, N)
    rng = np.random.default_rng(k)
    return rng.normal(size=3 * k + 1), rng.normal(size=3 * k + 1), X, np.sin(X)


def numpy_units(p, t, X, Y, k):
    """Value, gradient and HVP along t of the k-unit model, by hand (forward over
    reverse, vectorised over the units).  Parameter order: v_1..v_k, b_1..b_k, w_0..w_k."""
    v, b, w0, w = p[:k], p[k:2 * k], p[2 * k], p[2 * k + 1:]
    dv, db, dw0, dw = t[:k], t[k:2 * k], t[2 * k], t[2 * k + 1:]
    c = 2.0 / X.shape[0]
    T = np.tanh(v[:, None] * X + b[:, None])            # (k, n)
    S = 1.0 - T * T
    r = w0 + w @ T - Y                                   # residual
    dT = S * (dv[:, None] * X + db[:, None])             # tangents
    dr = dw0 + dw @ T + w @ dT
    A = w[:, None] * S * r                               # d loss / d z_i, per example, / c
    dA = dw[:, None] * S * r - 2.0 * w[:, None] * T * dT * r + w[:, None] * S * dr
    value = float(r @ r) / X.shape[0]
    grad = c * np.concatenate([A @ X, A.sum(axis=1), [r.sum()], T @ r])
    hvp = c * np.concatenate([dA @ X, dA.sum(axis=1), [dr.sum()], dT @ r + T @ dr])
    return value, grad, hvp


def jax_units_losses(k):
    import jax.numpy as jnp

    def vectorised(p, x, y):
        v, b, w0, w = p[:k], p[k:2 * k], p[2 * k], p[2 * k + 1:]
        return jnp.mean((w0 + jnp.tanh(x[:, None] * v + b) @ w - y) ** 2)

    def unrolled(p, x, y):
        f = p[2 * k]
        for i in range(k):
            f = f + p[2 * k + 1 + i] * jnp.tanh(p[i] * x + p[k + i])
        return jnp.mean((f - y) ** 2)

    return {"unrolled": unrolled, "vectorised": vectorised}


def jax_hvp_of(jax, loss):
    """jit(jvp(grad(loss))): the HVP along t, forward over reverse."""
    def hvp(p, t, *data):
        return jax.jvp(lambda q: jax.grad(loss)(q, *data), (p,), (t,))[1]

    return jax.jit(hvp)


def run_units(jax):
    import gradc

    rows = []
    print("\n== 1, 2: HVP against value_and_grad, and against JAX: the k-unit tanh model, "
          f"n = {N:,} ==")
    for k in KS:
        expr, wrt, dat = units_model(k)
        fn, t_compile = timed(lambda: gradc.compile(expr, wrt=wrt, data=dat))
        P, T, X, Y = units_data(k)
        K = fn.kernels
        value, grad, hvp = numpy_units(P, T, X, Y, k)
        (_, t_first) = timed(lambda: K.value_grad_hvp(P, T, X, Y))
        got = K.value_grad_hvp(P, T, X, Y)
        mv, mg, mh = fn.value_grad_hvp(P, T, X, Y)
        errs = [("kernels.value_and_grad", check("vg", list(K.value_and_grad(P, X, Y)),
                                                 [value, grad])),
                ("kernels.hvp", check("kernels.hvp", K.hvp(P, T, X, Y), hvp)),
                ("kernels.value_grad_hvp", check("vgh", list(got), [value, grad, hvp])),
                ("fn.hvp", check("fn.hvp", fn.hvp(P, T, X, Y), hvp)),
                ("fn.value_grad_hvp", check("fn.vgh", [mv, mg, mh], [value, grad, hvp]))]
        cases = {"gradc kernels.value_and_grad": lambda: K.value_and_grad(P, X, Y),
                 "gradc kernels.hvp": lambda: K.hvp(P, T, X, Y),
                 "gradc kernels.value_grad_hvp": lambda: K.value_grad_hvp(P, T, X, Y),
                 "gradc fn.value_and_grad": lambda: fn.value_and_grad(P, X, Y),
                 "gradc fn.hvp": lambda: fn.hvp(P, T, X, Y)}
        jax_first = {}
        if jax is not None:
            for style, loss in jax_units_losses(k).items():
                vg, hv = jax.jit(jax.value_and_grad(loss)), jax_hvp_of(jax, loss)
                cvg, chv = jax_call(vg, P, X, Y), jax_call(hv, P, T, X, Y)
                _, jax_first[style] = timed(chv)
                jv, jg = cvg()
                errs.append((f"jax {style} value_and_grad",
                             check(f"jax {style} vg", [float(jv), to_numpy(jg)], [value, grad])))
                errs.append((f"jax {style} hvp", check(f"jax {style} hvp", to_numpy(chv()), hvp)))
                cases[f"jax {style} value_and_grad"] = cvg
                cases[f"jax {style} hvp"] = chv
        report_checks(errs)
        med, inner = time_round_robin(cases, ROUNDS["fast"])
        row = {"k": k, "params": 3 * k + 1, "compile_s": t_compile, "first_hvp_s": t_first,
               "jax_first_hvp_s": jax_first, "us": {c: s * 1e6 for c, s in med.items()}}
        row["hvp_over_vg_kernel"] = med["gradc kernels.hvp"] / med["gradc kernels.value_and_grad"]
        row["hvp_over_vg_method"] = med["gradc fn.hvp"] / med["gradc fn.value_and_grad"]
        if jax is not None:
            best = min(jax_units_losses(k), key=lambda s: med[f"jax {s} hvp"])
            row["jax_best_style"] = best
            row["hvp_over_jax_kernel"] = med["gradc kernels.hvp"] / med[f"jax {best} hvp"]
            row["hvp_over_jax_method"] = med["gradc fn.hvp"] / med[f"jax {best} hvp"]
            bvg = min(med[f"jax {s} value_and_grad"] for s in jax_units_losses(k))
            row["jax_hvp_over_vg"] = med[f"jax {best} hvp"] / bvg
        rows.append(row)
        print_model_rows(f"k = {k} ({3 * k + 1} parameters); gradc.compile {t_compile:.2f} s, "
                         f"first HVP (numba) {t_first:.2f} s"
                         + (", JAX first HVP " + ", ".join(f"{s} {t:.2f} s" for s, t in
                                                          jax_first.items()) if jax_first else ""),
                         med, inner, row)
    return rows


def print_cases(med, inner, base_name, unit="us", indent="    "):
    """One row per case: median time per call, and its ratio to case ``base_name``."""
    scale, digits = (1e6, 1) if unit == "us" else (1e3, 2)
    base = med[base_name]
    label = "x " + base_name.replace("kernels.value_and_grad", "vg kernel").replace(
        "fn.hessian", "hessian")
    width = max(16, len(label))
    print(f"{indent}{'case [calls per sample]':44s} {unit + '/call':>10s} {label:>{width}s}")
    for name, sec in med.items():
        print(f"{indent}{name + f' [{inner[name]}]':44s} {sec * scale:10.{digits}f} "
              f"{sec / base:{width}.2f}")


def print_model_rows(title, med, inner, row):
    print(f"  {title}")
    print_cases(med, inner, "gradc kernels.value_and_grad")
    line = (f"    HVP / value_and_grad: kernels {row['hvp_over_vg_kernel']:.2f}, methods "
            f"{row['hvp_over_vg_method']:.2f}")
    if "hvp_over_jax_kernel" in row:
        line += (f"; gradc HVP / JAX HVP ({row['jax_best_style']}): kernel "
                 f"{row['hvp_over_jax_kernel']:.2f}, method {row['hvp_over_jax_method']:.2f}"
                 f" (JAX's own HVP / value_and_grad {row['jax_hvp_over_vg']:.2f})")
    print(line, flush=True)


# ------------------------------------------------------------------------------ digits MLP
def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    return np.ascontiguousarray(d.data, dtype=np.float64) / 16.0, d.target.astype(np.int64)


def numpy_mlp(params, tangent, X, y, lam):
    """Value, gradient and HVP of the 64-H-10 tanh MLP with mean softmax cross-entropy and
    lam (|W1|^2 + |W2|^2), by hand (forward over reverse).  Biases are (m, 1) columns."""
    W1, b1, W2, b2 = params
    dW1, db1, dW2, db2 = tangent
    n = X.shape[0]
    rows = np.arange(n)
    h = np.tanh(X @ W1.T + b1.T)                         # (n, H)
    s = 1.0 - h * h
    z = h @ W2.T + b2.T                                  # (n, 10)
    top = z.max(axis=1, keepdims=True)
    e = np.exp(z - top)
    p = e / e.sum(axis=1, keepdims=True)                 # softmax
    value = float(np.mean(top[:, 0] + np.log(e.sum(axis=1)) - z[rows, y])
                  + lam * (np.sum(W1 * W1) + np.sum(W2 * W2)))
    g2 = p.copy()
    g2[rows, y] -= 1.0
    g2 /= n                                              # d loss / d z
    gh = g2 @ W2
    g1 = gh * s                                          # d loss / d (W1 x + b1)
    grad = [g1.T @ X + 2 * lam * W1, g1.sum(axis=0)[:, None],
            g2.T @ h + 2 * lam * W2, g2.sum(axis=0)[:, None]]
    dh = s * (X @ dW1.T + db1.T)                         # tangents
    dz = dh @ W2.T + h @ dW2.T + db2.T
    dg2 = p * (dz - np.sum(p * dz, axis=1, keepdims=True)) / n
    dgh = dg2 @ W2 + g2 @ dW2
    dg1 = dgh * s - 2.0 * gh * h * dh
    hvp = [dg1.T @ X + 2 * lam * dW1, dg1.sum(axis=0)[:, None],
           dg2.T @ h + g2.T @ dh + 2 * lam * dW2, dg2.sum(axis=0)[:, None]]
    return value, grad, hvp


def jax_mlp_loss():
    import jax
    import jax.numpy as jnp

    def loss(p, X, y, lam):
        W1, b1, W2, b2 = p
        z = jnp.tanh(X @ W1.T + b1[:, 0]) @ W2.T + b2[:, 0]
        picked = jnp.take_along_axis(z, y[:, None], axis=1)[:, 0]
        return (jnp.mean(jax.nn.logsumexp(z, axis=1) - picked)
                + lam * (jnp.sum(W1 * W1) + jnp.sum(W2 * W2)))

    return loss


def run_mlp(jax):
    import gradc

    sys.path.insert(0, os.path.join(os.path.dirname(HERE), "examples"))
    from digits_mlp import init_params, mlp_loss

    print(f"\n== 3: the digits MLP 64-{HIDDEN}-10 tanh, softmax cross-entropy + L2 "
          f"(lambda {LAM:g}), n = 1797 ==")
    loss, wrt, dat, consts = mlp_loss(HIDDEN)
    fn, t_compile = timed(lambda: gradc.compile(loss, wrt=wrt, data=dat, consts=consts))
    X, y = digits()
    yf = y.astype(np.float64)
    params = init_params(HIDDEN)
    # init_params has zero biases; nonzero ones exercise every term of the HVP
    rng = np.random.default_rng(5)
    params[1] = rng.normal(0.0, 0.1, params[1].shape)
    params[3] = rng.normal(0.0, 0.1, params[3].shape)
    tangent = [rng.normal(size=a.shape) for a in params]
    pt, tt = tuple(params), tuple(tangent)
    K = fn.kernels
    value, grad, hvp = numpy_mlp(params, tangent, X, y, LAM)
    _, t_first = timed(lambda: K.value_grad_hvp(pt, tt, X, yf, LAM))
    kv, kg, kh = K.value_grad_hvp(pt, tt, X, yf, LAM)
    errs = [("kernels.value_and_grad", check("vg", [K.value_and_grad(pt, X, yf, LAM)[0],
                                                   *K.value_and_grad(pt, X, yf, LAM)[1]],
                                             [value, *grad])),
            ("kernels.hvp", check("kernels.hvp", list(K.hvp(pt, tt, X, yf, LAM)), hvp)),
            ("kernels.value_grad_hvp", check("vgh", [kv, *kg, *kh], [value, *grad, *hvp])),
            ("fn.hvp", check("fn.hvp", fn.hvp(params, tangent, X, y, LAM), hvp))]
    cases = {"gradc kernels.value_and_grad": lambda: K.value_and_grad(pt, X, yf, LAM),
             "gradc kernels.hvp": lambda: K.hvp(pt, tt, X, yf, LAM),
             "gradc kernels.value_grad_hvp": lambda: K.value_grad_hvp(pt, tt, X, yf, LAM),
             "gradc fn.value_and_grad": lambda: fn.value_and_grad(params, X, y, LAM),
             "gradc fn.hvp": lambda: fn.hvp(params, tangent, X, y, LAM)}
    jax_first = None
    if jax is not None:
        jl = jax_mlp_loss()
        cvg = jax_call(jax.jit(jax.value_and_grad(jl)), pt, X, y, LAM)
        chv = jax_call(jax_hvp_of(jax, jl), pt, tt, X, y, LAM)
        _, jax_first = timed(chv)
        jv, jg = cvg()
        errs.append(("jax value_and_grad", check("jax vg", [float(jv), *to_numpy(jg)],
                                                 [value, *grad])))
        errs.append(("jax hvp", check("jax hvp", to_numpy(chv()), hvp)))
        cases["jax value_and_grad"] = cvg
        cases["jax hvp"] = chv
    report_checks(errs)
    med, inner = time_round_robin(cases, ROUNDS["fast"] // 2, target_sample=5e-3)
    row = {"params": fn.size, "compile_s": t_compile, "first_hvp_s": t_first,
           "jax_first_hvp_s": jax_first, "us": {c: s * 1e6 for c, s in med.items()},
           "hvp_over_vg_kernel": med["gradc kernels.hvp"] / med["gradc kernels.value_and_grad"],
           "hvp_over_vg_method": med["gradc fn.hvp"] / med["gradc fn.value_and_grad"]}
    if jax is not None:
        row.update(jax_best_style="jax.numpy", jax_hvp_over_vg=med["jax hvp"] / med["jax value_and_grad"],
                   hvp_over_jax_kernel=med["gradc kernels.hvp"] / med["jax hvp"],
                   hvp_over_jax_method=med["gradc fn.hvp"] / med["jax hvp"])
    print_model_rows(f"{fn.size:,} parameters; gradc.compile {t_compile:.2f} s, first HVP "
                     f"(numba) {t_first:.2f} s"
                     + (f", JAX first HVP {jax_first:.2f} s" if jax_first else ""),
                     med, inner, row)
    return row


# ------------------------------------------------------------------------------ dense Hessian
def run_dense(jax):
    import gradc

    k = K_DENSE
    print(f"\n== 4: dense Hessian of the k = {k} tanh model ({3 * k + 1} parameters), "
          f"n = {N:,} ==")
    expr, wrt, dat = units_model(k)
    fn, t_compile = timed(lambda: gradc.compile(expr, wrt=wrt, data=dat))
    P, _, X, Y = units_data(k)
    size = 3 * k + 1
    ref = np.column_stack([numpy_units(P, e, X, Y, k)[2] for e in np.eye(size)])
    ref = 0.5 * (ref + ref.T)
    H, t_first = timed(lambda: fn.hessian(P, X, Y))
    errs = [("fn.hessian", check("fn.hessian", H, ref))]
    assert np.array_equal(H, H.T), "fn.hessian is not exactly symmetric"
    print("  " + str(fn.hessian_plan).replace("\n", "\n  "))
    units = list(np.eye(size))
    cases = {"gradc fn.hessian": lambda: fn.hessian(P, X, Y),
             f"gradc {size} x kernels.hvp (a loop)":
                 lambda: [fn.kernels.hvp(P, e, X, Y) for e in units],
             "gradc kernels.value_and_grad": lambda: fn.kernels.value_and_grad(P, X, Y)}
    jax_first = {}
    if jax is not None:
        for style, loss in jax_units_losses(k).items():
            ch = jax_call(jax.jit(jax.hessian(loss)), P, X, Y)
            _, jax_first[style] = timed(ch)
            errs.append((f"jax {style} hessian", check(f"jax {style}", np.asarray(ch()), ref)))
            cases[f"jax {style} jit(hessian)"] = ch
    report_checks(errs)
    med, inner = time_round_robin(cases, ROUNDS["slow"], target_sample=0.05)
    row = {"k": k, "params": size, "compile_s": t_compile, "first_hessian_s": t_first,
           "jax_first_s": jax_first, "us": {c: s * 1e6 for c, s in med.items()},
           "plan_choice": fn.hessian_plan.choice}
    print(f"  gradc.compile {t_compile:.2f} s, first fn.hessian {t_first:.2f} s"
          + ("; JAX first call " + ", ".join(f"{s} {t:.2f} s" for s, t in jax_first.items())
             if jax_first else ""))
    base = med["gradc fn.hessian"]
    print_cases(med, inner, "gradc fn.hessian", unit="ms")
    row["hessian_over_vg"] = base / med["gradc kernels.value_and_grad"]
    line = f"    Hessian / value_and_grad kernel {row['hessian_over_vg']:.1f}"
    if jax is not None:
        best = min(jax_units_losses(k), key=lambda s: med[f"jax {s} jit(hessian)"])
        row["jax_best_style"] = best
        row["hessian_over_jax"] = base / med[f"jax {best} jit(hessian)"]
        line += f"; gradc / JAX ({best}) {row['hessian_over_jax']:.3f}"
    print(line, flush=True)
    return row


# ------------------------------------------------------------------------------ chain

def numpy_chain(x):
    """Gradient and the three diagonals of the chain's tridiagonal Hessian."""
    a, b = x[:-1], x[1:]
    g = np.zeros_like(x)
    g[:-1] += -400.0 * a * (b - a * a) - 2.0 * (1.0 - a)
    g[1:] += 200.0 * (b - a * a)
    diag = np.zeros_like(x)
    diag[:-1] += 1200.0 * a * a - 400.0 * b + 2.0
    diag[1:] += 200.0
    return g, diag, -400.0 * a


def jax_chain_f(p):
    import jax.numpy as jnp

    return jnp.sum(100 * (p[1:] - p[:-1] ** 2) ** 2 + (1 - p[:-1]) ** 2)


def run_chains(jax):
    import gradc

    print("\n== 5: sparse Hessian of the chain sum_i 100 (x_{i+1} - x_i^2)^2 + (1 - x_i)^2 "
          "(no data) ==")
    rows = []
    for nvar in CHAINS:
        (expr, wrt, _), t_build = timed(lambda: chain_model(nvar))
        fn, t_compile = timed(lambda: gradc.compile(expr, wrt=wrt))
        pattern, t_pattern = timed(fn.hessian_sparsity)
        plan, t_plan = timed(lambda: fn.hessian_plan)
        rng = np.random.default_rng(0)
        x = rng.uniform(0.5, 1.5, nvar)
        v = rng.normal(size=nvar)
        H, t_first = timed(lambda: fn.hessian(x, sparse=True))
        _, t_first_grad = timed(lambda: fn.grad(x))
        g, diag, off = numpy_chain(x)
        hv_ref = diag * v
        hv_ref[:-1] += off * v[1:]
        hv_ref[1:] += off * v[:-1]
        assert H.nnz == 3 * nvar - 2 and pattern.nnz == 3 * nvar - 2, (H.nnz, pattern.nnz)
        errs = [("fn.hessian(sparse=True)", check("hessian", [H.diagonal(), H.diagonal(1),
                                                              H.diagonal(-1)], [diag, off, off])),
                ("fn.grad", check("grad", fn.grad(x), g)),
                ("kernels.hvp", check("kernels.hvp", fn.kernels.hvp(x, v), hv_ref))]
        assert (H != H.T).nnz == 0, "sparse Hessian not exactly symmetric"
        cases = {"gradc fn.hessian(sparse=True)": lambda: fn.hessian(x, sparse=True),
                 "gradc fn.grad": lambda: fn.grad(x),
                 "gradc kernels.hvp": lambda: fn.kernels.hvp(x, v)}
        jax_first = {}
        if jax is not None:
            chv = jax_call(jax_hvp_of(jax, jax_chain_f), x, v)
            _, jax_first["hvp"] = timed(chv)
            errs.append(("jax hvp", check("jax hvp", np.asarray(chv()), hv_ref)))
            cases["jax hvp"] = chv
            cgr = jax_call(jax.jit(jax.grad(jax_chain_f)), x)
            errs.append(("jax grad", check("jax grad", np.asarray(cgr()), g)))
            cases["jax grad"] = cgr
            if nvar <= JAX_DENSE_MAX:
                ch = jax_call(jax.jit(jax.hessian(jax_chain_f)), x)
                _, jax_first["hessian"] = timed(ch)
                dense_ref = np.diag(diag) + np.diag(off, 1) + np.diag(off, -1)
                errs.append(("jax dense hessian", check("jax hessian", np.asarray(ch()),
                                                        dense_ref)))
                cases["jax jit(hessian) (dense)"] = ch
        report_checks(errs)
        med, inner = time_round_robin(cases, ROUNDS["fast"] // 2)
        row = {"n": nvar, "colours": plan.colours, "nnz": int(H.nnz), "build_s": t_build,
               "compile_s": t_compile, "pattern_s": t_pattern, "plan_s": t_plan,
               "first_hessian_s": t_first, "first_grad_s": t_first_grad,
               "jax_first_s": jax_first, "us": {c: s * 1e6 for c, s in med.items()},
               "hessian_over_grad": med["gradc fn.hessian(sparse=True)"] / med["gradc fn.grad"]}
        if jax is not None:
            row["hvp_over_jax"] = med["gradc kernels.hvp"] / med["jax hvp"]
            if "jax jit(hessian) (dense)" in med:
                row["hessian_over_jax_dense"] = (med["gradc fn.hessian(sparse=True)"]
                                                 / med["jax jit(hessian) (dense)"])
        rows.append(row)
        print(f"  N = {nvar:,}: {plan.colours} colours, {H.nnz:,} nonzeros; sympy sum built in "
              f"{t_build:.2f} s; gradc.compile {t_compile:.2f} s + first Hessian "
              f"{t_pattern + t_plan + t_first:.2f} s (pattern {t_pattern:.2f} s, plan "
              f"{t_plan:.2f} s, first fn.hessian {t_first:.2f} s) = "
              f"{t_compile + t_pattern + t_plan + t_first:.2f} s; then the first fn.grad "
              f"{t_first_grad:.2f} s"
              + ("; JAX first call " + ", ".join(f"{s} {t:.2f} s" for s, t in jax_first.items())
                 if jax_first else ""))
        print_cases(med, inner, "gradc fn.grad")
        line = f"    sparse Hessian / fn.grad {row['hessian_over_grad']:.2f}"
        if "hvp_over_jax" in row:
            line += f"; gradc HVP kernel / JAX HVP {row['hvp_over_jax']:.2f}"
        if "hessian_over_jax_dense" in row:
            line += f"; gradc sparse / JAX dense Hessian {row['hessian_over_jax_dense']:.4f}"
        print(line, flush=True)
        if nvar == 10_000:
            print("  " + str(plan).replace("\n", "\n  "))
    return rows


# ------------------------------------------------------------------------------ summary
def verdict(value, target):
    return "MET" if value <= target else "NOT MET"


def summary(units, mlp, dense, chains):
    print("\n== targets (ratios of medians measured in this process) ==")
    print(f"  {'case':52s} {'ratio':>8s}  {'target':>8s}  verdict")
    lines = []

    def add(case, value, target=None):
        lines.append((case, value, target))
        tgt = f"<= {target:g}" if target is not None else ""
        mark = verdict(value, target) if target is not None else "(for reference)"
        print(f"  {case:52s} {value:8.3f}  {tgt:>8s}  {mark}")

    for r in units:
        add(f"1 HVP / value_and_grad, k={r['k']}, kernels", r["hvp_over_vg_kernel"], 3)
        add(f"1 HVP / value_and_grad, k={r['k']}, methods", r["hvp_over_vg_method"], 3)
    for r in units:
        if "hvp_over_jax_kernel" in r:
            add(f"2 gradc HVP / JAX HVP, k={r['k']}, kernel", r["hvp_over_jax_kernel"], 0.7)
            add(f"2 gradc HVP / JAX HVP, k={r['k']}, method", r["hvp_over_jax_method"], 0.7)
    if mlp:
        add("3 MLP HVP / value_and_grad, kernels", mlp["hvp_over_vg_kernel"], 3)
        add("3 MLP HVP / value_and_grad, methods", mlp["hvp_over_vg_method"], 3)
        if "hvp_over_jax_kernel" in mlp:
            add("3 MLP gradc HVP / JAX HVP, kernel", mlp["hvp_over_jax_kernel"], 0.7)
            add("3 MLP gradc HVP / JAX HVP, method", mlp["hvp_over_jax_method"], 0.7)
    if dense and "hessian_over_jax" in dense:
        add(f"4 dense Hessian ({dense['params']} params) gradc / JAX", dense["hessian_over_jax"],
            0.5)
    for r in chains:
        add(f"5 chain N={r['n']:,}: sparse Hessian / fn.grad", r["hessian_over_grad"],
            10 if r["n"] == 10_000 else None)
    for r in chains:
        if "hvp_over_jax" in r:
            add(f"5 chain N={r['n']:,}: gradc HVP kernel / JAX HVP", r["hvp_over_jax"])
        if "hessian_over_jax_dense" in r:
            add(f"5 chain N={r['n']:,}: gradc sparse / JAX dense Hessian",
                r["hessian_over_jax_dense"])
    if not any(r["n"] == 10_000 for r in chains):
        print("  (the chain target is at N = 10,000: not run, see --chain-max)")
    targets = [(c, v, t) for c, v, t in lines if t is not None]
    met = sum(v <= t for _, v, t in targets)
    print(f"  {met} of {len(targets)} targets met"
          + ("" if met == len(targets) else ": not met: "
             + "; ".join(c for c, v, t in targets if v > t)))
    return [{"case": c, "ratio": v, "target": t} for c, v, t in lines]


def main():
    with tempfile.TemporaryDirectory(prefix="gradc-bench-hessian-") as cache:
        os.environ["GRADC_CACHE_DIR"] = cache        # cold gradc compiles
        run(cache)


def run(cache):
    import numba
    import sympy as sp

    import gradc

    jax = jax_module()
    print(f"gradc bench_hessian: float64; numpy {np.__version__}, numba {numba.__version__}, "
          f"sympy {sp.__version__}, jax {jax.__version__ if jax else '(not used)'}, "
          f"python {sys.version.split()[0]}")
    print(f"gradc {gradc.__version__} from {gradc_revision()}")
    print(f"{_single.describe()}; OPENBLAS_CORETYPE="
          f"{os.environ.get('OPENBLAS_CORETYPE', '(unset)')}; GRADC_CACHE_DIR {cache} (fresh)")
    t0 = time.perf_counter()
    units = run_units(jax)
    mlp = run_mlp(jax)
    dense = run_dense(jax)
    chains = run_chains(jax)
    targets = summary(units, mlp, dense, chains)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    if "--json" in sys.argv:
        with open(sys.argv[sys.argv.index("--json") + 1], "w") as f:
            json.dump({"units": units, "mlp": mlp, "dense": dense, "chains": chains,
                       "targets": targets, "quick": QUICK, "jax": bool(jax)}, f, indent=1)


if __name__ == "__main__":
    main()
