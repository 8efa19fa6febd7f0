"""ADBench's Gaussian mixture objective, written in sympy with indices, compiled by gradc.

    python examples/adbench_gmm.py [OUTDIR] [--fast]

The objective of ADBench's ``gmm.h`` (Srajer, Kukelova and Fitzgibbon 2018), for K
components in d dimensions and n points x_i: log-weights alpha (K), means mu (K x d), and
per component a lower-triangular Q_k with diagonal exp(q_k) (q: K x d) and strictly lower
part L_k.  Per point, ``logsumexp_k(alpha_k + sum_j q_kj - 1/2 ||Q_k (x_i - mu_k)||^2)``;
then ``- n logsumexp(alpha)``, the Wishart term ``sum_k 1/2 gamma^2 (||exp(q_k)||^2 +
||L_k||^2) - m sum_j q_kj`` and ADBench's constants.

*Which form.*  ``form="adbench"`` is ADBench's formula as it is (the value ADBench's tools
report).  GradBench, ADBench's maintained successor, lists three corrections to it: a sign
error on one of the likelihood and the prior, transposed precision matrices, and a
Wishart prior over the covariances where it should be over the precisions.  Minimising the
ADBench value makes no sense because of the first one, so the fit below uses
``form="fit"``: the likelihood's sign flipped, which makes the objective a negative log
likelihood plus the Wishart term.  The other two corrections change what the matrices
mean, not the shape of the computation, and are not applied here.

*How it is written.*  ``Q_k (x_i - mu_k)`` is computed as ``Q_k x_i - Q_k mu_k``: gradc
hoists the batch-invariant ``Q`` (``KroneckerDelta`` diagonal plus the masked strictly
lower ``L``) into a (K, d, d) tensor computed once per call, so ``Q_k x_i`` for every point
and component is one (n x d) by (d x Kd) matrix product, and ``Q_k mu_k`` is a triangular
``Sum`` over ``m < j``.  Nothing is unrolled: the program at d = 64, K = 100 has the same
equations as at d = 2, K = 5.  The parameter L is a full (K, d, d) array of which only the
strictly lower part is used (its other entries get zero gradient);
:func:`pack_icf`/:func:`unpack_icf` convert to and from ADBench's packed ``icf`` layout.

1. The value and gradient against an independent numpy implementation (ADBench's packed
   layout, the gradient derived by hand, itself checked by finite differences), to 1e-9.
2. Compile time and value_and_grad time over sizes (``benchmarks/bench_adbench.py``
   compares with JAX).
3. A fit: three clusters in 2-D, the mixture found by scipy's L-BFGS on
   ``gradc.Objective``.  Figure: adbench_gmm_fit.png (the points, the fitted components'
   one- and two-sigma ellipses, and the objective against the iteration).
"""

from __future__ import annotations

import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # for _common, also when imported by path

import numpy as np  # noqa: E402
import sympy as sp  # noqa: E402
from scipy.special import logsumexp, multigammaln  # noqa: E402

import gradc  # noqa: E402
from gradc import nn  # noqa: E402
from _common import banner, plt, prepare_outdir, run_script, save_figure  # noqa: E402


# --------------------------------------------------------------------------------------
# The model


def gmm_model(d, K, form="adbench"):
    """``(loss, wrt, data, consts)``: the per-point loss (compile it with reduce="sum"),
    parameters ``[alpha, mu, q, L]``, data ``[x]``, consts ``[N, gamma, m_w, c0]`` (the
    number of points, the Wishart parameters, ADBench's constant: :func:`constant`)."""
    k, j, m, z = sp.symbols("k j m z", integer=True)
    alpha = sp.IndexedBase("alpha", shape=(K,))
    mu = sp.IndexedBase("mu", shape=(K, d))
    q = sp.IndexedBase("q", shape=(K, d))
    L = sp.IndexedBase("L", shape=(K, d, d))
    x = sp.IndexedBase("x", shape=(d,))
    N, gamma, m_w, c0 = sp.symbols("N gamma m_w c0")

    diag = sp.exp(q[k, j])
    Q = sp.KroneckerDelta(j, m) * diag + L[k, j, m] * sp.Heaviside(j - m - sp.S.Half)
    Q_mu = diag * mu[k, j] + sp.Sum(L[k, j, m] * mu[k, m], (m, 0, j - 1))
    Q_xc = sp.Sum(Q * x[m], (m, 0, d - 1)) - Q_mu  # (Q_k (x - mu_k))_j
    sum_q = sp.Sum(q[k, j], (j, 0, d - 1))
    main = alpha[k] + sum_q - sp.Sum(Q_xc ** 2, (j, 0, d - 1)) / 2
    loglik = (nn.logsumexp(sp.FunctionMatrix(K, 1, sp.Lambda((k, z), main)))
              - nn.logsumexp(sp.FunctionMatrix(K, 1, sp.Lambda((k, z), alpha[k]))))
    frobenius = sp.Sum(diag ** 2, (j, 0, d - 1)) + sp.Sum(L[k, j, m] ** 2, (m, 0, j - 1),
                                                          (j, 0, d - 1))
    wishart = sp.Sum(gamma ** 2 / 2 * frobenius - m_w * sum_q, (k, 0, K - 1))
    sign = {"adbench": 1, "fit": -1}[form]
    # the batch-invariant terms are added once per point, so divided by N here
    loss = sign * loglik + (wishart + c0) / N
    return loss, [alpha, mu, q, L], [x], [N, gamma, m_w, c0]


def constant(d, K, n, gamma, m):
    """ADBench's constants: ``-n d/2 log(2 pi)`` and ``-K C`` of the Wishart term."""
    nu = d + m + 1
    C = nu * d * (math.log(gamma) - 0.5 * math.log(2.0)) - multigammaln(0.5 * nu, d)
    return -n * d * 0.5 * math.log(2 * math.pi) - K * C


def unpack_icf(icf, d):
    """ADBench's ``icf`` (K, d + d(d-1)/2): log-diagonal, then the strictly lower part
    column by column, as ``(q (K, d), L (K, d, d))``."""
    K = icf.shape[0]
    q = icf[:, :d].copy()
    L = np.zeros((K, d, d))
    rows, cols = _lower(d)
    L[:, rows, cols] = icf[:, d:]
    return q, L


def pack_icf(q, L):
    d = q.shape[1]
    rows, cols = _lower(d)
    return np.concatenate([q, L[:, rows, cols]], axis=1)


def _lower(d):
    pairs = [(r, c) for c in range(d) for r in range(c + 1, d)]  # column-major
    return (np.array([p[0] for p in pairs], dtype=int), np.array([p[1] for p in pairs], dtype=int))


# --------------------------------------------------------------------------------------
# An independent numpy reference (ADBench's layout; the gradient derived by hand)


def reference(alpha, mu, icf, X, gamma, m, form="adbench"):
    """``(value, (g_alpha, g_mu, g_icf))`` of the objective, in numpy."""
    n, d = X.shape
    K = alpha.shape[0]
    q, L = unpack_icf(icf, d)
    Q = L + np.einsum("kj,jm->kjm", np.exp(q), np.eye(d))
    xc = X[:, None, :] - mu[None, :, :]                      # (n, K, d)
    y = np.einsum("kjm,nkm->nkj", Q, xc)                     # Q_k (x_i - mu_k)
    main = alpha[None, :] + q.sum(1)[None, :] - 0.5 * np.sum(y ** 2, axis=2)
    lse = logsumexp(main, axis=1)
    sign = 1.0 if form == "adbench" else -1.0
    frob = np.sum(np.exp(q) ** 2) + np.sum(L ** 2)
    value = (sign * (lse.sum() - n * logsumexp(alpha)) + 0.5 * gamma ** 2 * frob
             - m * q.sum() + constant(d, K, n, gamma, m))
    r = np.exp(main - lse[:, None])                          # responsibilities (n, K)
    g_alpha = sign * (r.sum(0) - n * np.exp(alpha - logsumexp(alpha)))
    g_mu = sign * np.einsum("nk,kjm,nkj->km", r, Q, y)       # Q^T Q (x - mu), weighted
    g_Q = -sign * np.einsum("nk,nkj,nkm->kjm", r, y, xc)
    g_q = sign * r.sum(0)[:, None] + np.einsum("kjj->kj", g_Q) * np.exp(q) \
        + gamma ** 2 * np.exp(2 * q) - m
    g_L = np.tril(g_Q, -1) + gamma ** 2 * L
    return value, (g_alpha, g_mu, pack_icf(g_q, g_L))


def reference_fd_error(alpha, mu, icf, X, gamma, m, rng, probes=6, eps=1e-6):
    """The largest relative difference between the reference gradient and central
    differences of the reference value along random directions."""
    _, g = reference(alpha, mu, icf, X, gamma, m)
    worst = 0.0
    for _ in range(probes):
        t = [rng.normal(size=a.shape) for a in (alpha, mu, icf)]
        up = reference(alpha + eps * t[0], mu + eps * t[1], icf + eps * t[2], X, gamma, m)[0]
        dn = reference(alpha - eps * t[0], mu - eps * t[1], icf - eps * t[2], X, gamma, m)[0]
        fd = (up - dn) / (2 * eps)
        exact = sum(np.sum(a * b) for a, b in zip(g, t))
        worst = max(worst, abs(fd - exact) / max(abs(exact), 1.0))
    return worst


def random_problem(d, K, n, seed=0):
    """Parameters and points like ADBench's generator (normal means and points, small
    icf), in gradc's layout and ADBench's."""
    rng = np.random.default_rng(seed)
    alpha = rng.normal(size=K)
    mu = rng.uniform(-1, 1, size=(K, d))
    icf = rng.normal(scale=0.3, size=(K, d + d * (d - 1) // 2))
    X = rng.normal(size=(n, d))
    q, L = unpack_icf(icf, d)
    return [alpha, mu, q, L], icf, X


def compare(fn, d, K, n, gamma=1.0, m=0, seed=0):
    """Max relative errors of gradc's value and gradient against the reference."""
    params, icf, X = random_problem(d, K, n, seed)
    v, (ga, gm, gq, gL) = fn.value_and_grad(params, X, n, gamma, m, constant(d, K, n, gamma, m))
    rv, (ra, rm, ricf) = reference(params[0], params[1], icf, X, gamma, m)
    g = np.concatenate([ga, gm.ravel(), pack_icf(gq, gL).ravel()])
    r = np.concatenate([ra, rm.ravel(), ricf.ravel()])
    unused = float(np.abs(np.triu(gL)).max())  # L's diagonal and upper part are not used
    return {"value": abs(v - rv) / abs(rv), "grad": float(np.max(np.abs(g - r)) / np.max(np.abs(r))),
            "upper_L_grad": unused}


# --------------------------------------------------------------------------------------
# The fit


def fit(K=3, n=600, seed=1, maxiter=200):
    """Three 2-D clusters; the mixture fitted by L-BFGS on gradc.Objective."""
    from scipy.optimize import minimize

    rng = np.random.default_rng(seed)
    centres = np.array([[-2.0, 0.0], [1.5, 1.5], [1.0, -2.0]])
    scales = [np.array([[0.6, 0.0], [0.3, 0.3]]), np.array([[0.3, 0.0], [-0.2, 0.7]]),
              np.array([[0.5, 0.0], [0.0, 0.25]])]
    X = np.concatenate([c + rng.normal(size=(n // 3, 2)) @ s.T
                        for c, s in zip(centres, scales)])
    d = 2
    loss, wrt, data, consts = gmm_model(d, K, form="fit")
    fn = gradc.compile(loss, wrt=wrt, data=data, consts=consts, reduce="sum")
    gamma, m = 0.1, 0
    obj = gradc.Objective(fn, X, len(X), gamma, m, 0.0)
    start = [np.zeros(K), X[rng.choice(len(X), K, replace=False)], np.zeros((K, d)),
             np.zeros((K, d, d))]
    history = []
    res = minimize(obj.value_and_grad, obj.pack(start), jac=True, method="L-BFGS-B",
                   callback=lambda xk: history.append(float(obj.fun(xk))),
                   options={"maxiter": maxiter})
    alpha, mu, q, L = obj.unpack(res.x)
    return {"X": X, "alpha": alpha, "mu": mu, "q": q, "L": L, "history": history,
            "start_value": float(obj.fun(obj.pack(start))), "final_value": float(res.fun),
            "centres": centres, "iterations": int(res.nit)}


def _ellipse(mu, Q, radius):
    """Points of {x : ||Q (x - mu)|| = radius} (Q lower triangular, precision Q^T Q)."""
    t = np.linspace(0, 2 * np.pi, 100)
    circle = radius * np.stack([np.cos(t), np.sin(t)])
    return (mu[:, None] + np.linalg.solve(Q, circle)).T


def main(outdir=None, fast=False):
    outdir = prepare_outdir(outdir)
    written = []

    banner("The objective in sympy: one loop nest per sum, whatever d and K")
    small = gradc.frontend.lower(*gmm_model(2, 5)[:3], consts=gmm_model(2, 5)[3], reduce="sum")
    large = gradc.frontend.lower(*gmm_model(64, 100)[:3], consts=gmm_model(64, 100)[3],
                                 reduce="sum")
    eq_small, eq_large = len(small.eqns), len(large.eqns)
    print(f"  program equations: {eq_small} at d=2, K=5; {eq_large} at d=64, K=100")

    banner("Against an independent numpy implementation (ADBench's icf layout)")
    rng = np.random.default_rng(0)
    params, icf, X = random_problem(3, 4, 50)
    fd = reference_fd_error(params[0], params[1], icf, X, 1.0, 0, rng)
    print(f"  the reference's own gradient against finite differences: {fd:.1e}")
    sizes = [(2, 5), (10, 25)] if fast else [(2, 5), (10, 25), (20, 50), (32, 100), (64, 100)]
    n = 1000
    rows = []
    for d, K in sizes:
        loss, wrt, data, consts = gmm_model(d, K)
        t0 = time.perf_counter()
        fn = gradc.compile(loss, wrt=wrt, data=data, consts=consts, reduce="sum")
        err = compare(fn, d, K, n)
        first = time.perf_counter() - t0
        p, _, Xs = random_problem(d, K, n)
        cargs = (n, 1.0, 0, constant(d, K, n, 1.0, 0))
        fn.value_and_grad(p, Xs, *cargs)
        ts = []
        for _ in range(5):
            t = time.perf_counter()
            fn.value_and_grad(p, Xs, *cargs)
            ts.append(time.perf_counter() - t)
        row = {"d": d, "K": K, "params": K + 2 * K * d + K * d * (d - 1) // 2,
               "value_rel_err": err["value"], "grad_rel_err": err["grad"],
               "compile_and_first_s": first, "value_and_grad_ms": 1e3 * float(np.median(ts))}
        rows.append(row)
        print(f"  d={d:3d} K={K:3d} ({row['params']:6d} parameters): value {err['value']:.1e}, "
              f"gradient {err['grad']:.1e} relative error; compile + first call "
              f"{first:5.2f} s; value_and_grad {row['value_and_grad_ms']:8.2f} ms")

    banner("A fit: three clusters in 2-D, L-BFGS on gradc.Objective")
    f = fit(maxiter=60 if fast else 200)
    print(f"  objective {f['start_value']:.1f} -> {f['final_value']:.1f} in "
          f"{f['iterations']} iterations")
    weights = np.exp(f["alpha"] - logsumexp(f["alpha"]))
    for w, c in sorted(zip(weights, f["mu"]), key=lambda t: t[1][0]):
        print(f"  component weight {w:.2f}, mean ({c[0]:+.2f}, {c[1]:+.2f})")
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    ax.scatter(f["X"][:, 0], f["X"][:, 1], s=4, alpha=0.4, color="gray")
    for k in range(len(f["alpha"])):
        Q = np.tril(f["L"][k], -1) + np.diag(np.exp(f["q"][k]))
        for radius, style in ((1.0, "-"), (2.0, "--")):
            e = _ellipse(f["mu"][k], Q, radius)
            ax.plot(e[:, 0], e[:, 1], style, color=f"C{k}")
        ax.plot(*f["mu"][k], "x", color=f"C{k}", ms=10)
    ax.set_aspect("equal")
    ax.set_title("fitted mixture: 1- and 2-sigma ellipses")
    ax2.plot(f["history"])
    ax2.set_xlabel("L-BFGS iteration")
    ax2.set_ylabel("objective (negative log likelihood + Wishart term)")
    save_figure(fig, outdir, "adbench_gmm_fit.png", written)
    found = np.array(sorted(map(tuple, f["mu"])))
    true = np.array(sorted(map(tuple, f["centres"])))
    return {"files": written, "equations": (eq_small, eq_large), "reference_fd_error": fd,
            "sizes": rows, "fit": {"start": f["start_value"], "final": f["final_value"],
                                   "centre_error": float(np.max(np.abs(found - true)))}}


if __name__ == "__main__":
    run_script(main, __doc__.splitlines()[0])
