"""Poisson and negative-binomial regression: count likelihoods with loggamma, fitted.

    python examples/count_regression.py [OUTDIR] [--fast]

Counts y_i with features t_i (here: an intercept and two covariates), the log link
``mu_i = exp(b . t_i)``.  Two likelihoods, written in sympy as their log pmfs:

* Poisson: ``y log mu - mu - loggamma(y + 1)``;
* negative binomial (NB2, variance ``mu + alpha mu^2``), with ``r = 1/alpha = exp(-a)``:
  ``loggamma(y + r) - loggamma(r) - loggamma(y + 1) + r log(r / (r + mu)) + y log(mu /
  (r + mu))``.  Its gradient with respect to the dispersion ``a`` needs the derivative of
  ``loggamma``, the digamma function, which gradc computes in its kernels
  (``gradc.codegen.runtime.polygamma``).

1. The negative log likelihoods against ``scipy.stats.poisson`` and ``scipy.stats.nbinom``
   log pmfs (to 1e-12), and the gradients against central differences.
2. Both fitted with scipy's BFGS on ``gradc.Objective`` to synthetic over-dispersed
   counts (NB2 with alpha = 0.5): both recover the coefficients; only the negative
   binomial recovers the dispersion, and its log likelihood is the higher one.
3. Standard errors from the inverse Hessian (``fn.hessian``) at the optimum, against the
   spread of the estimates over refits to fresh samples.  Figure: count_regression.png
   (observed against fitted counts, and the estimates' spread).
"""

from __future__ import annotations

import os
import sys

import numpy as np
import sympy as sp
from scipy import optimize, stats

import gradc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # for _common, also when imported by path
from _common import banner, plt, prepare_outdir, run_script, save_figure  # noqa: E402

TRUE_B = np.array([1.0, 0.6, -0.4])
TRUE_A = np.log(0.5)  # alpha = 0.5


def models():
    """The two per-example negative log likelihoods, with their symbols."""
    b = sp.symbols("b0:3")
    a = sp.Symbol("a")
    t1, t2, y = sp.symbols("t1 t2 y")
    eta = b[0] + b[1] * t1 + b[2] * t2
    mu = sp.exp(eta)
    poisson = -(y * eta - mu - sp.loggamma(y + 1))
    r = sp.exp(-a)
    nb = -(sp.loggamma(y + r) - sp.loggamma(r) - sp.loggamma(y + 1)
           + r * sp.log(r / (r + mu)) + y * sp.log(mu / (r + mu)))
    return poisson, nb, list(b), a, [t1, t2, y]


def sample(n, seed):
    rng = np.random.default_rng(seed)
    T = rng.normal(size=(n, 2))
    mu = np.exp(TRUE_B[0] + T @ TRUE_B[1:])
    r = np.exp(-TRUE_A)
    y = rng.negative_binomial(r, r / (r + mu)).astype(float)
    return T[:, 0], T[:, 1], y


def fit(fn, x0, data):
    obj = gradc.Objective(fn, *data)
    res = optimize.minimize(obj.fun, x0, jac=obj.jac, method="BFGS",
                            options={"gtol": 1e-9, "maxiter": 500})
    return res


def main(outdir=None, fast=False):
    outdir = prepare_outdir(outdir)
    written = []
    poisson, nb, b, a, data_syms = models()
    fp = gradc.compile(poisson, wrt=b, data=data_syms, reduce="sum")
    fnb = gradc.compile(nb, wrt=b + [a], data=data_syms, reduce="sum")
    n = 400 if fast else 2000
    t1, t2, y = sample(n, 0)
    data = (t1, t2, y)

    banner("1. The likelihoods against scipy.stats, the gradients against differences")
    P0 = np.array([0.3, 0.1, 0.2])
    A0 = -0.2
    mu = np.exp(P0[0] + P0[1] * t1 + P0[2] * t2)
    err_p = abs(fp.value(P0, *data) + stats.poisson.logpmf(y, mu).sum()) / abs(fp.value(P0, *data))
    r = np.exp(-A0)
    want_nb = -stats.nbinom.logpmf(y, r, r / (r + mu)).sum()
    err_nb = abs(fnb.value(np.r_[P0, A0], *data) - want_nb) / abs(want_nb)
    fd = []
    for fn, p in ((fp, P0), (fnb, np.r_[P0, A0])):
        g = np.asarray(fn.grad(p, *data))
        h = 1e-6
        num = np.array([(fn.value(p + h * e, *data) - fn.value(p - h * e, *data)) / (2 * h)
                        for e in np.eye(len(p))])
        fd.append(float(np.max(np.abs(g - num)) / np.max(np.abs(g))))
    print(f"relative error against scipy.stats: Poisson {err_p:.1e}, negative binomial "
          f"{err_nb:.1e}; gradient against central differences: {fd[0]:.1e}, {fd[1]:.1e}")

    banner("2. Fits to over-dispersed counts (NB2, alpha = 0.5)")
    rp = fit(fp, np.zeros(3), data)
    rnb = fit(fnb, np.zeros(4), data)
    print(f"truth:             b = {TRUE_B}, alpha = {np.exp(TRUE_A):.3f}")
    print(f"Poisson:           b = {np.round(rp.x, 3)}, -log L = {rp.fun:.1f} "
          f"({rp.nit} iterations)")
    print(f"negative binomial: b = {np.round(rnb.x[:3], 3)}, alpha = {np.exp(rnb.x[3]):.3f}, "
          f"-log L = {rnb.fun:.1f} ({rnb.nit} iterations)")

    banner("3. Standard errors from the Hessian against refits")
    H = fnb.hessian(rnb.x, *data)
    se = np.sqrt(np.diag(np.linalg.inv(H)))
    refits = []
    for seed in range(1, 6 if fast else 21):
        refits.append(fit(fnb, rnb.x, sample(n, seed)).x)
    spread = np.std(refits, axis=0, ddof=1)
    print("parameter     estimate   se (Hessian)   sd over refits")
    for name, est, s, sd in zip(["b0", "b1", "b2", "log alpha"], rnb.x, se, spread):
        print(f"{name:12s} {est:9.4f} {s:12.4f} {sd:14.4f}")
    figure(rnb.x, rp.x, data, np.array(refits), outdir, written)
    return {
        "scipy_rel_err": [float(err_p), float(err_nb)],
        "fd_rel_err": fd,
        "poisson": rp.x.tolist(), "nb": rnb.x.tolist(),
        "loglik": [-float(rp.fun), -float(rnb.fun)],
        "se": se.tolist(), "refit_sd": spread.tolist(),
        "files": written,
    }


def figure(pnb, pp, data, refits, outdir, written):
    t1, t2, y = data
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    mu_nb = np.exp(pnb[0] + pnb[1] * t1 + pnb[2] * t2)
    order = np.argsort(mu_nb)
    left.scatter(mu_nb, y, s=6, alpha=0.4, label="observed counts")
    left.plot(mu_nb[order], mu_nb[order], color="k", lw=1, label="fitted mean")
    sd = np.sqrt(mu_nb + np.exp(pnb[3]) * mu_nb ** 2)
    left.fill_between(mu_nb[order], np.maximum(mu_nb - sd, 0)[order], (mu_nb + sd)[order],
                      alpha=0.2, color="C1", label="NB2: mean +- 1 sd")
    left.set(xlabel="fitted mean exp(b . t)", ylabel="count", xscale="log", yscale="symlog",
             title="counts against the negative-binomial fit")
    left.legend(fontsize=8)
    names = ["b0", "b1", "b2"]
    right.bar(np.arange(3) - 0.2, TRUE_B, width=0.2, label="truth")
    right.bar(np.arange(3), pp, width=0.2, label="Poisson fit")
    right.bar(np.arange(3) + 0.2, pnb[:3], width=0.2, yerr=refits[:, :3].std(0, ddof=1),
              label="NB fit (error bar: sd over refits)")
    right.set_xticks(range(3), names)
    right.set(title="coefficients")
    right.legend(fontsize=8)
    fig.suptitle("Count regression: Poisson and negative binomial likelihoods compiled by gradc")
    return save_figure(fig, outdir, "count_regression.png", written)


if __name__ == "__main__":
    run_script(main, __doc__.splitlines()[0])
