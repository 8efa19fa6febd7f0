"""ADBench's bundle adjustment, written in sympy with gathers by data index, solved with
scipy's least_squares on gradc's sparse Jacobian.

    python examples/adbench_ba.py [OUTDIR] [--fast]

The objective of ADBench's ``ba.h`` (Srajer, Kukelova and Fitzgibbon 2018): cameras with
11 parameters each (Rodrigues rotation r, centre C, focal length f, principal point u0,
v0, radial distortion k1, k2), points X (3 each), and one weight w per observation.
Observation i sees point ``pi`` in camera ``ci`` at the feature ``(mx, my)``; its
residuals are ``w_i (proj(cam, X) - m_i)`` (two) and ``1 - w_i^2`` (one), with

    Xcam = R(r) (X - C),   p = Xcam[:2] / Xcam[2],
    p <- p (1 + k1 |p|^2 + k2 |p|^4),   proj = f p + (u0, v0).

*How it is written.*  One observation is the per-example expression: ``cams[ci, j]``,
``X[pi, j]`` and ``w[oi]`` read the parameter arrays at the observation's data indices
(``oi`` is the observation's own number), so the compiled kernels gather on the way in and
scatter-add on the way back, and the program has the same equations for 49 cameras as for
1,000.  The rotation is ``R X = X + s r x X + c r x (r x X)`` with ``s = sin t / t`` and
``c = (1 - cos t) / t^2 = 2 sin^2(t/2) / t^2`` (``t = |r|``: Rodrigues' formula without the
cancellation of ``1 - cos t``), and, below ``t^2 = 1e-8``, their series ``s = 1 - t^2/6``,
``c = 1/2 - t^2/24`` (exact to rounding there, and smooth at r = 0: no NaN in the value or
its derivatives; each branch of the ``Piecewise`` is differentiated on its own).

1. Residuals and the sparse Jacobian against an independent numpy implementation (ADBench's
   form of the rotation: ``cos t X + sin t (w x X) + (1 - cos t)(w . X) w`` with
   ``w = r / t``) and central finite differences.
2. The Jacobian: ``fn.jacobian(..., sparse=True)`` is the stacked ``(3 n_obs, 11 n_cams +
   3 n_pts + n_obs)`` csr matrix of all observations, from coloured JVP sweeps over the
   batch (15 colours whatever the size: the pattern is exact for the data,
   ``fn.jacobian_sparsity(*data)``); ``benchmarks/bench_adbench.py --ba`` compares with
   JAX's ``jit(vmap(jacfwd))`` plus its assembly.
3. A solve: a synthetic problem of ADBench's smallest size (49 cameras, 7,776 points,
   31,843 observations; ``--fast``: 8, 200, 900), cameras and points perturbed, then
   ``scipy.optimize.least_squares(method="trf")`` with gradc's residuals and sparse
   Jacobian; the cost before and after, against the noise floor of the features.
   Figure: adbench_ba_solve.png (the Jacobian's block pattern for the first observations,
   and the cost against the solver's function evaluations).
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # for _common, also when imported by path

import numpy as np  # noqa: E402
import sympy as sp  # noqa: E402

import gradc  # noqa: E402
from _common import banner, plt, prepare_outdir, run_script, save_figure  # noqa: E402

#: Below this squared angle the rotation uses the series of s and c.
SMALL_ANGLE = 1e-8

#: ADBench's smallest problem: cameras, points, observations.
ADBENCH_SMALL = (49, 7776, 31843)


# --------------------------------------------------------------------------------------
# The model


def _cross(a, b):
    return [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]


def ba_model(n_cams, n_pts, n_obs):
    """``(residuals, wrt, data)``: the (3, 1) residual of one observation (compile it with
    ``reduce=None``), parameters ``[cams (n_cams, 11), X (n_pts, 3), w (n_obs,)]``, data
    ``[ci, pi, oi, mx, my]`` (camera, point and observation numbers, the feature)."""
    ci, pi, oi = sp.symbols("ci pi oi", integer=True)
    mx, my = sp.symbols("mx my")
    cams = sp.IndexedBase("cams", shape=(n_cams, 11))
    X = sp.IndexedBase("X", shape=(n_pts, 3))
    w = sp.IndexedBase("w", shape=(n_obs,))
    r = [cams[ci, j] for j in range(3)]
    Y = [X[pi, j] - cams[ci, 3 + j] for j in range(3)]
    f, u0, v0, k1, k2 = (cams[ci, j] for j in range(6, 11))
    t2 = r[0] ** 2 + r[1] ** 2 + r[2] ** 2
    t = sp.sqrt(t2)
    s = sp.Piecewise((sp.sin(t) / t, t2 > SMALL_ANGLE), (1 - t2 / 6, True))
    c = sp.Piecewise((2 * sp.sin(t / 2) ** 2 / t2, t2 > SMALL_ANGLE),
                     (sp.Rational(1, 2) - t2 / 24, True))
    rY = _cross(r, Y)
    rrY = _cross(r, rY)
    Xc = [Y[j] + s * rY[j] + c * rrY[j] for j in range(3)]
    p = [Xc[0] / Xc[2], Xc[1] / Xc[2]]
    q2 = p[0] ** 2 + p[1] ** 2
    L = 1 + k1 * q2 + k2 * q2 ** 2
    res = sp.Matrix([w[oi] * (f * L * p[0] + u0 - mx),
                     w[oi] * (f * L * p[1] + v0 - my),
                     1 - w[oi] ** 2])
    return res, [cams, X, w], [ci, pi, oi, mx, my]


def compile_ba(n_cams, n_pts, n_obs, **options):
    res, wrt, data = ba_model(n_cams, n_pts, n_obs)
    return gradc.compile(res, wrt=wrt, data=data, reduce=None, **options)


# --------------------------------------------------------------------------------------
# An independent numpy implementation (ADBench's formulas)


def rotate(rot, X):
    """Rodrigues' rotation of the rows of X by the rows of rot, as ADBench writes it."""
    sq = np.sum(rot * rot, axis=1)
    out = X + np.cross(rot, X)  # the small-angle form
    big = sq != 0
    t = np.sqrt(sq[big])[:, None]
    wv = rot[big] / t
    Xb = X[big]
    cos, sin = np.cos(t), np.sin(t)
    out[big] = (Xb * cos + np.cross(wv, Xb) * sin
                + wv * (np.sum(wv * Xb, axis=1, keepdims=True) * (1 - cos)))
    return out


def reference(cams, X, w, obs, feats):
    """The residual vector, observation-major like gradc's rows: ``(3 n_obs,)``."""
    cam = cams[obs[:, 0]]
    Xc = rotate(cam[:, 0:3], X[obs[:, 1]] - cam[:, 3:6])
    p = Xc[:, :2] / Xc[:, 2:3]
    q2 = np.sum(p * p, axis=1, keepdims=True)
    p = p * (1 + cam[:, 9:10] * q2 + cam[:, 10:11] * q2 ** 2)
    proj = p * cam[:, 6:7] + cam[:, 7:9]
    err = w[:, None] * (proj - feats)
    return np.concatenate([err, (1 - w * w)[:, None]], axis=1).reshape(-1)


def reference_jacobian_fd(cams, X, w, obs, feats, cols, eps=1e-6):
    """Central differences of :func:`reference` along the flattened parameters ``cols``
    (cams, then X, then w, row-major): ``(3 n_obs, len(cols))``."""
    flat = np.concatenate([cams.ravel(), X.ravel(), w])
    nc, npt = cams.size, X.size

    def f(z):
        return reference(z[:nc].reshape(cams.shape), z[nc:nc + npt].reshape(X.shape),
                         z[nc + npt:], obs, feats)

    out = np.empty((3 * len(w), len(cols)))
    for k, j in enumerate(cols):
        h = eps * max(1.0, abs(flat[j]))
        up, dn = flat.copy(), flat.copy()
        up[j] += h
        dn[j] -= h
        out[:, k] = (f(up) - f(dn)) / (2 * h)
    return out


# --------------------------------------------------------------------------------------
# A synthetic problem


def random_problem(n_cams, n_pts, n_obs, seed=0, noise=0.5):
    """``(cams, X, w, obs, feats)``: cameras on a ring around points in a unit ball, each
    point seen by at least two cameras (obs: ``(n_obs, 2)`` camera and point numbers),
    features the exact projections plus Gaussian noise of ``noise`` pixels, weights 1."""
    rng = np.random.default_rng(seed)
    if n_obs < 2 * n_pts:
        raise ValueError("every point needs two observations")
    X = rng.uniform(-1, 1, size=(n_pts, 3))
    cams = np.zeros((n_cams, 11))
    for k in range(n_cams):
        a = 2 * np.pi * k / n_cams
        # looking at the origin from distance 8 on a ring: rotate about y by -a...
        r = np.array([0.0, -a, 0.0]) if k else np.zeros(3)  # camera 0 unrotated: r = 0
        r += 0.02 * rng.normal(size=3) if k else 0.0
        R = _rotation_matrix(r)
        cams[k, 0:3] = r
        cams[k, 3:6] = -R.T @ np.array([0.0, 0.0, 8.0])  # centre: 8 behind along the axis
        cams[k, 6] = 800 + 50 * rng.normal()
        cams[k, 7:9] = 5 * rng.normal(size=2)
        cams[k, 9] = 0.05 * rng.normal()
        cams[k, 10] = 0.01 * rng.normal()
    pts = np.concatenate([np.repeat(np.arange(n_pts), 2),
                          rng.integers(0, n_pts, n_obs - 2 * n_pts)])
    pairs = set()
    obs = []
    for p in pts:
        for _ in range(100):
            c = int(rng.integers(0, n_cams))
            if (c, p) not in pairs:
                break
        pairs.add((c, p))
        obs.append((c, p))
    obs = np.array(sorted(obs, key=lambda cp: (cp[1], cp[0])), dtype=np.int64)
    w = np.ones(n_obs)
    exact = reference(cams, X, w, obs, np.zeros((n_obs, 2))).reshape(n_obs, 3)[:, :2]
    feats = exact + noise * rng.normal(size=(n_obs, 2))
    return cams, X, w, obs, feats


def _rotation_matrix(r):
    return np.stack([rotate(r[None, :], e[None, :])[0] for e in np.eye(3)], axis=1)


def data_args(obs, feats):
    """The data arguments of the compiled function, in ``ba_model``'s order."""
    n = len(obs)
    return obs[:, 0], obs[:, 1], np.arange(n), feats[:, 0], feats[:, 1]


def compare(fn, cams, X, w, obs, feats, probes=40, seed=0):
    """Largest relative errors of gradc's residuals against :func:`reference`, and of its
    sparse Jacobian against central differences of the reference on ``probes`` random
    columns (plus those of camera 0, whose rotation is r = 0)."""
    args = data_args(obs, feats)
    params = [cams, X, w]
    r = np.asarray(fn.value(params, *args)).reshape(-1)
    want = reference(cams, X, w, obs, feats)
    J = fn.jacobian(params, *args, sparse=True)
    P = cams.size + X.size + w.size
    rng = np.random.default_rng(seed)
    cols = np.unique(np.concatenate([rng.integers(0, P, probes), np.arange(11)]))
    fd = reference_jacobian_fd(cams, X, w, obs, feats, cols)
    got = J[:, cols].toarray()
    scale = np.abs(fd).max(axis=0, keepdims=True) + 1e-300
    return {"value": float(np.max(np.abs(r - want)) / np.max(np.abs(want))),
            "jacobian": float(np.max(np.abs(got - fd) / scale)),
            "nnz": int(J.nnz), "shape": J.shape,
            # every nonzero of the differences is in the pattern (none is missed)
            "pattern_covers": bool(np.all(J[:, cols].toarray().astype(bool) | (fd == 0)))}


# --------------------------------------------------------------------------------------
# The solve


def solve(fn, cams, X, w, obs, feats, perturb=0.02, seed=1, max_nfev=30, verbose=0):
    """Perturb cameras (rotation, centre) and points, then solve with least_squares trf on
    gradc's residuals and sparse Jacobian; returns the costs (``noise_floor``: the cost at
    the true parameters, which the fit goes a little below: it fits some of the noise)."""
    from scipy.optimize import least_squares

    rng = np.random.default_rng(seed)
    args = data_args(obs, feats)
    c0 = cams.copy()
    c0[:, 0:6] += perturb * rng.normal(size=(len(cams), 6))
    X0 = X + perturb * rng.normal(size=X.shape)
    x0 = fn.pack([c0, X0, w])

    history = []

    def residuals(z):
        r = np.asarray(fn.value(fn.unpack(z), *args)).reshape(-1)
        history.append(0.5 * float(r @ r))
        return r

    def jac(z):
        return fn.jacobian(fn.unpack(z), *args, sparse=True)

    start = 0.5 * float(np.sum(residuals(x0) ** 2))
    history.clear()  # least_squares evaluates x0 first
    t0 = time.perf_counter()
    out = least_squares(residuals, x0, jac=jac, method="trf", x_scale="jac",
                        tr_solver="lsmr", max_nfev=max_nfev, verbose=verbose)
    seconds = time.perf_counter() - t0
    floor = 0.5 * float(np.sum((feats - reference(cams, X, w, obs, np.zeros_like(feats))
                                .reshape(-1, 3)[:, :2]) ** 2))
    return {"start": start, "final": float(out.cost),
            "noise_floor": floor, "nfev": int(out.nfev), "njev": int(out.njev),
            "seconds": seconds, "status": int(out.status), "history": history}


def main(outdir=None, fast=False):
    outdir = prepare_outdir(outdir)
    written = []
    sizes = (8, 200, 900) if fast else ADBENCH_SMALL

    banner("Against an independent numpy implementation and finite differences")
    small = sizes if fast else (4, 30, 100)
    fn_s = compile_ba(*small)
    prob = random_problem(*small, seed=3)
    err = compare(fn_s, *prob)
    print(f"  {small[0]} cameras, {small[1]} points, {small[2]} observations: residuals "
          f"{err['value']:.1e}, Jacobian {err['jacobian']:.1e} relative error "
          f"({err['nnz']} nonzeros)")

    banner(f"The sparse Jacobian: {sizes[0]} cameras, {sizes[1]} points, {sizes[2]} observations")
    t0 = time.perf_counter()
    fn = compile_ba(*sizes)
    compile_s = time.perf_counter() - t0
    cams, X, w, obs, feats = random_problem(*sizes)
    args = data_args(obs, feats)
    t0 = time.perf_counter()
    J = fn.jacobian([cams, X, w], *args, sparse=True)
    first = time.perf_counter() - t0
    ts = []
    for _ in range(5):
        t = time.perf_counter()
        fn.jacobian([cams, X, w], *args, sparse=True)
        ts.append(time.perf_counter() - t)
    colours = fn._second["stacked"][1].ncolours
    print(f"  {J.shape[0]} x {J.shape[1]}, {J.nnz} nonzeros, {colours} colours; compile "
          f"{compile_s:.2f} s, first Jacobian {first:.2f} s, then {1e3 * np.median(ts):.1f} ms")

    banner("least_squares(method='trf') from perturbed cameras and points")
    s = solve(fn, cams, X, w, obs, feats, max_nfev=15 if fast else 30)
    print(f"  cost {s['start']:.4g} -> {s['final']:.4g} (noise floor {s['noise_floor']:.4g}) "
          f"in {s['nfev']} evaluations, {s['seconds']:.1f} s")
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    rows = min(J.shape[0], 240)
    block = J[:rows].tocsc()
    used = np.flatnonzero(np.diff(block.indptr))
    ax.spy(block[:, used], markersize=1.5, aspect="auto")
    ax.set_title(f"Jacobian, first {rows // 3} observations\n(the columns they use: "
                 "cameras, points, weights)")
    ax.set_xlabel("parameter (used columns only)")
    ax.set_ylabel("residual")
    ax2.semilogy(s["history"], marker=".")
    ax2.axhline(s["noise_floor"], color="gray", ls="--",
                label="at the true cameras and points (noise floor)")
    ax2.set_xlabel("least_squares function evaluation")
    ax2.set_ylabel("cost (half the squared residuals)")
    ax2.legend()
    save_figure(fig, outdir, "adbench_ba_solve.png", written)
    return {"files": written, "check": err, "sizes": sizes, "nnz": int(J.nnz), "colours": colours,
            "compile_s": compile_s, "jacobian_ms": 1e3 * float(np.median(ts)), "solve": s}


if __name__ == "__main__":
    run_script(main, __doc__.splitlines()[0])
