"""Benchmark the special functions of count likelihoods: log-gamma and digamma.

Usage::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_special.py [--quick]
        [--only functions|nb]

One process, one CPU (``_single``).  Two parts:

1. **The functions** at n = 10^4 and 10^6 values in (0, 50): ns per value of gradc's run
   forms (``_rt.lgamma_v``, ``_rt.digamma_v``, what chunked kernels call), of a numba loop
   calling libm's ``math.lgamma`` and a hand-written digamma (the textbook recurrence to
   x >= 6 and the asymptotic series), of scipy's ufuncs and of JAX's jitted
   ``gammaln``/``digamma``.
2. **Negative-binomial regression** (``examples/count_regression.py``'s model: three
   coefficients and the log dispersion), ``value_and_grad`` of the summed negative log
   likelihood at n = 10^3 .. 10^6: gradc's kernel and method against a hand-written
   one-pass numba loop (libm lgamma, the hand digamma) and JAX ``jit(value_and_grad)``,
   after checking that all agree.

Prints medians and the ratios gradc/hand-written and gradc/JAX.  Not a timed test.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _single  # noqa: E402  (one thread per library, one CPU)

import math  # noqa: E402

import numba  # noqa: E402
import numpy as np  # noqa: E402
import sympy as sp  # noqa: E402

import gradc  # noqa: E402
from gradc.codegen import runtime as rt  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "examples"))
from count_regression import models, sample  # noqa: E402

QUICK = "--quick" in sys.argv
ROUNDS = 7 if QUICK else 21


@numba.njit(cache=True, error_model="numpy")
def hand_digamma(x):
    """The textbook digamma for x > 0: recurrence up to x >= 6, then the series."""
    acc = 0.0
    while x < 6.0:
        acc -= 1.0 / x
        x += 1.0
    z = 1.0 / (x * x)
    return acc + math.log(x) - 0.5 / x - z * (1.0 / 12 - z * (1.0 / 120 - z * (
        1.0 / 252 - z * (1.0 / 240 - z * (1.0 / 132)))))


@numba.njit(cache=True, error_model="numpy")
def libm_lgamma_run(x, out):
    for i in range(x.shape[0]):
        out[i] = math.lgamma(x[i])


@numba.njit(cache=True, error_model="numpy")
def hand_digamma_run(x, out):
    for i in range(x.shape[0]):
        out[i] = hand_digamma(x[i])


@numba.njit(cache=True, error_model="numpy", fastmath=True)
def hand_nb_vg(p, t1, t2, y):
    """One pass: value and gradient of the NB negative log likelihood (hand-derived)."""
    b0, b1, b2, a = p[0], p[1], p[2], p[3]
    r = math.exp(-a)
    lgr = math.lgamma(r)
    dgr = hand_digamma(r)
    lr = math.log(r)
    v = 0.0
    g0 = g1 = g2 = ga = 0.0
    for i in range(y.shape[0]):
        eta = b0 + b1 * t1[i] + b2 * t2[i]
        mu = math.exp(eta)
        yi = y[i]
        lrm = math.log(r + mu)
        v -= (math.lgamma(yi + r) - lgr - math.lgamma(yi + 1.0)
              + r * (lr - lrm) + yi * (eta - lrm))
        # d/d eta = -(y - (y + r) mu / (r + mu)) = (y + r) mu / (r + mu) - y
        de = (yi + r) * mu / (r + mu) - yi
        g0 += de
        g1 += de * t1[i]
        g2 += de * t2[i]
        # d/dr, then dr/da = -r
        dr = -(hand_digamma(yi + r) - dgr + lr + 1.0 - lrm - (r + yi) / (r + mu))
        ga -= dr * r
    return v, np.array([g0, g1, g2, ga])


def jax_peers():
    try:
        import jax
        import jax.numpy as jnp
        from jax.scipy.special import digamma, gammaln
    except Exception:  # noqa: BLE001 - optional peer
        return None
    jax.config.update("jax_enable_x64", True)

    def loss(p, t1, t2, y):
        b0, b1, b2, a = p[0], p[1], p[2], p[3]
        eta = b0 + b1 * t1 + b2 * t2
        mu = jnp.exp(eta)
        r = jnp.exp(-a)
        ll = (gammaln(y + r) - gammaln(r) - gammaln(y + 1) + r * jnp.log(r / (r + mu))
              + y * jnp.log(mu / (r + mu)))
        return -jnp.sum(ll)

    return (jax, jax.jit(jax.value_and_grad(loss)), jax.jit(gammaln), jax.jit(digamma))


def part1(jx):
    print("== 1: the functions, ns per value, values uniform in (0, 50) ==")
    try:
        from scipy import special
    except ImportError:
        special = None
    rng = np.random.default_rng(0)
    print(f"  {'n':>9}  {'function':<8} {'gradc run':>10} {'numba loop':>11} {'scipy':>8} "
          f"{'JAX':>8}   gradc/loop")
    for n in (10_000, 1_000_000):
        x = rng.uniform(0, 50, n)
        out = np.empty(n)
        for name, ours, loop, sc, jf in (
                ("lgamma", rt.lgamma_v, libm_lgamma_run, special and special.gammaln,
                 jx and jx[2]),
                ("digamma", rt.digamma_v, hand_digamma_run, special and special.psi,
                 jx and jx[3])):
            cases = {"gradc": lambda: ours(x, 0, out, 0, n), "loop": lambda: loop(x, out)}
            if sc is not None:
                cases["scipy"] = lambda: sc(x, out=out)
            if jf is not None:
                xd = jx[0].numpy.asarray(x)
                cases["jax"] = lambda: jf(xd).block_until_ready()
            med = _single.medians(cases, ROUNDS)
            ns = {k: v / n * 1e9 for k, v in med.items()}
            print(f"  {n:>9,}  {name:<8} {ns['gradc']:>10.2f} {ns['loop']:>11.2f} "
                  f"{ns.get('scipy', float('nan')):>8.2f} {ns.get('jax', float('nan')):>8.2f}"
                  f"   {ns['gradc'] / ns['loop']:.2f}")


def part2(jx):
    print("== 2: negative-binomial regression, value_and_grad of the summed NLL ==")
    _, nb, b, a, data_syms = models()
    fn = gradc.compile(nb, wrt=b + [a], data=data_syms, reduce="sum")
    p = np.array([0.9, 0.5, -0.3, math.log(0.6)])
    print(f"  {'n':>9}  {'gradc kernel':>12} {'gradc method':>12} {'hand numba':>11} "
          f"{'JAX':>9}   kernel/hand  method/hand  kernel/JAX  (us per call)")
    for n in (1_000, 10_000, 100_000, 1_000_000):
        t1, t2, y = sample(n, 1)
        v_ref, g_ref = hand_nb_vg(p, t1, t2, y)
        v_k, g_k = fn.kernels.value_and_grad(p, t1, t2, y)
        v_m, g_m = fn.value_and_grad(p, t1, t2, y)
        checks = [(v_k, g_k), (v_m, g_m)]
        cases = {"kernel": lambda: fn.kernels.value_and_grad(p, t1, t2, y),
                 "method": lambda: fn.value_and_grad(p, t1, t2, y),
                 "hand": lambda: hand_nb_vg(p, t1, t2, y)}
        if jx is not None:
            jnp = jx[0].numpy
            dev = [jnp.asarray(v) for v in (p, t1, t2, y)]
            v_j, g_j = jx[1](*dev)
            checks.append((float(v_j), np.asarray(g_j)))
            cases["jax"] = lambda: jx[0].block_until_ready(jx[1](*dev))
        for v, g in checks:
            assert abs(v - v_ref) <= 1e-9 * abs(v_ref), (v, v_ref)
            assert np.allclose(g, g_ref, rtol=1e-8, atol=1e-8 * n), (g, g_ref)
        med = _single.medians(cases, ROUNDS if n < 1_000_000 else max(5, ROUNDS // 3))
        us = {k: v * 1e6 for k, v in med.items()}
        jt = us.get("jax", float("nan"))
        print(f"  {n:>9,}  {us['kernel']:>12.1f} {us['method']:>12.1f} {us['hand']:>11.1f} "
              f"{jt:>9.1f}   {us['kernel'] / us['hand']:>11.2f}  "
              f"{us['method'] / us['hand']:>11.2f}  {us['kernel'] / jt:>10.2f}")
    print("  (all agree with the hand-written loop: value rtol 1e-9, gradient rtol 1e-8)")


def main():
    from _revision import gradc_revision

    print(f"gradc bench_special: numpy {np.__version__}, numba {numba.__version__}, "
          f"sympy {sp.__version__}")
    print(f"gradc from {gradc_revision()}")
    print(_single.describe())
    jx = jax_peers()
    if jx is not None:
        print(f"JAX {jx[0].__version__} (float64)")
    only = sys.argv[sys.argv.index("--only") + 1] if "--only" in sys.argv else None
    if only in (None, "functions"):
        part1(jx)
    if only in (None, "nb"):
        part2(jx)


if __name__ == "__main__":
    main()
