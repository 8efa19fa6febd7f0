"""ADBench's GMM objective: gradc against JAX, PyTorch and a hand-written numpy gradient.

Usage::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_adbench.py
    python benchmarks/bench_adbench.py --quick        # 5 sizes, fewer samples
    python benchmarks/bench_adbench.py --no-compile   # skip the cold-compile curve
    python benchmarks/bench_adbench.py --json adbench.json
    python benchmarks/bench_adbench.py --ba           # bundle adjustment only (--gmm: GMM only)
    python benchmarks/bench_adbench.py --gmm --sizes 10x5,20x50   # these d x K only

The model is ``examples/adbench_gmm.py`` (ADBench's ``gmm.h`` form, n = 1,000 points) over
GradBench's size grid, d in {2, 10, 20, 32, 64} and K in {5, 10, 25, 50, 100}.  Every
peer computes the same formula, written the way its users would:

* **gradc**: ``value_and_grad`` of the indexed sympy model (``reduce="sum"``);
* **JAX**: ``jit(value_and_grad)`` of the formula in ``jax.numpy`` (the per-component
  products ``Q_k x_i`` as one matrix product, as in gradc's lowering);
* **PyTorch**: the same formula, eager, ``backward()`` (when torch imports);
* **numpy**: the example's reference, value and a hand-derived gradient (einsum).

Every result is checked against the numpy reference (rtol 1e-9) before timing.  Timings
are medians of round-robin samples, single-threaded, pinned to one CPU (``_single.py``).
The cold-compile curve runs ``gradc.compile`` and the first ``value_and_grad`` in a fresh
process with an empty ``GRADC_CACHE_DIR`` at every size.

Bundle adjustment (``--ba``: only it; ``--gmm``: only the GMM) is ``examples/adbench_ba.py``
on synthetic problems of ADBench's sizes (ba1: 49 cameras, 7,776 points, 31,843
observations; ``--quick``: ba1 only): the stacked sparse Jacobian of all residuals,
``(3 n_obs, 11 n_cams + 3 n_pts + n_obs)`` as a scipy csr matrix, as
``least_squares`` takes it, and the residuals alone:

* **gradc**: ``fn.jacobian(params, *data, sparse=True)`` (coloured JVP sweeps over the
  batch, from the exact pattern for the data) and ``fn.value``;
* **JAX**: ``jit(vmap(jacfwd(residual)))`` of the per-observation residual in
  ``jax.numpy`` (ADBench's rotation with a ``where`` for the small angle) on the gathered
  camera and point of each observation (the gather is left out of the timing), then the
  blocks put into the csr matrix through a precomputed permutation (the assembly a user
  would write once the pattern is known);
* **PyTorch**: ``torch.func.vmap(jacfwd(residual))`` and the same assembly.

Every Jacobian is checked against gradc's (rtol 1e-9) before timing.  The cold compile
of BA (``gradc.compile``, the first ``value``, the first sparse Jacobian: that compiles the
``jvp_block`` kernel and computes the pattern and its colouring) runs in a fresh process
with an empty cache, as for the GMM.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "examples"))
import _single  # noqa: E402  (one thread per library, one CPU)
from _single import medians  # noqa: E402

import json  # noqa: E402

import numpy as np  # noqa: E402

import gradc  # noqa: E402
import adbench_ba as ba  # noqa: E402
import adbench_gmm as gmm  # noqa: E402
from _revision import gradc_revision  # noqa: E402

QUICK = "--quick" in sys.argv
N, GAMMA, M, RTOL = 1000, 1.0, 0, 1e-9
GRID = [(d, K) for d in (2, 10, 20, 32, 64) for K in (5, 10, 25, 50, 100)]
QUICK_GRID = [(2, 5), (10, 25), (20, 50), (32, 100), (64, 100)]


def _sizes():
    """The grid of ``--sizes 10x5,20x50`` (d x K), or None."""
    if "--sizes" not in sys.argv:
        return None
    spec = sys.argv[sys.argv.index("--sizes") + 1]
    return [tuple(int(v) for v in s.split("x")) for s in spec.split(",")]


def jax_loss(alpha, mu, q, L, X, gamma, m, c0):
    import jax
    import jax.numpy as jnp
    from jax.scipy.special import logsumexp

    n, d = X.shape
    K = alpha.shape[0]
    Q = jnp.tril(L, -1) + jax.vmap(jnp.diag)(jnp.exp(q))
    Qmu = jnp.einsum("kjm,km->kj", Q, mu)
    Qxc = (X @ Q.reshape(K * d, d).T).reshape(n, K, d) - Qmu[None]
    main = alpha[None] + q.sum(1)[None] - 0.5 * jnp.sum(Qxc ** 2, axis=2)
    frob = jnp.sum(jnp.exp(q) ** 2) + jnp.sum(jnp.tril(L, -1) ** 2)
    return (logsumexp(main, axis=1).sum() - n * logsumexp(alpha)
            + 0.5 * gamma ** 2 * frob - m * q.sum() + c0)


def torch_case(params, X, c0):
    try:
        import torch
    except Exception:  # noqa: BLE001 - an optional peer
        return None
    torch.set_num_threads(1)
    P = [torch.tensor(p, requires_grad=True) for p in params]
    Xt = torch.tensor(X)

    def call():
        alpha, mu, q, L = P
        n, d = Xt.shape
        K = alpha.shape[0]
        Q = torch.tril(L, -1) + torch.diag_embed(torch.exp(q))
        Qmu = torch.einsum("kjm,km->kj", Q, mu)
        Qxc = (Xt @ Q.reshape(K * d, d).T).reshape(n, K, d) - Qmu[None]
        main = alpha[None] + q.sum(1)[None] - 0.5 * (Qxc ** 2).sum(2)
        frob = (torch.exp(q) ** 2).sum() + (torch.tril(L, -1) ** 2).sum()
        v = (torch.logsumexp(main, 1).sum() - n * torch.logsumexp(alpha, 0)
             + 0.5 * GAMMA ** 2 * frob - M * q.sum() + c0)
        for p in P:
            p.grad = None
        v.backward()
        return v.item(), [p.grad.detach().numpy().copy() for p in P]

    return call, torch.__version__


def check(name, got, want):
    v, g = got
    wv, wg = want
    assert abs(v - wv) <= RTOL * abs(wv), (name, v, wv)
    for a, b in zip(g, wg):
        a, b = np.asarray(a), np.asarray(b)
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=RTOL * (np.max(np.abs(b)) or 1.0),
                                   err_msg=name)


def run_size(d, K, rounds):
    params, icf, X = gmm.random_problem(d, K, N)
    c0 = gmm.constant(d, K, N, GAMMA, M)
    loss, wrt, data, consts = gmm.gmm_model(d, K)
    fn = gradc.compile(loss, wrt=wrt, data=data, consts=consts, reduce="sum")
    cargs = (N, GAMMA, M, c0)
    rv, (ra, rm, ricf) = gmm.reference(params[0], params[1], icf, X, GAMMA, M)
    rq, rL = gmm.unpack_icf(ricf, d)
    want = (rv, [ra, rm, rq, rL])
    v, g = fn.value_and_grad(params, X, *cargs)
    g = [g[0], g[1], g[2], np.tril(g[3], -1)]
    check(f"gradc d={d} K={K}", (v, g), want)
    cases = {"gradc": lambda: fn.value_and_grad(params, X, *cargs),
             "numpy": lambda: gmm.reference(params[0], params[1], icf, X, GAMMA, M)}
    versions = {}
    jc = _single.jax_case(lambda P, Xj: jax_loss(*P, Xj, GAMMA, M, c0), tuple(params), X)
    if jc is not None:
        call, result, _, versions["jax"] = jc
        jv, jg = result()
        check(f"jax d={d} K={K}", (jv, [jg[0], jg[1], jg[2], np.tril(jg[3], -1)]), want)
        cases["jax"] = call
    tc = torch_case(params, X, c0)
    if tc is not None:
        call, versions["torch"] = tc
        tv, tg = call()
        check(f"torch d={d} K={K}", (tv, [tg[0], tg[1], tg[2], np.tril(tg[3], -1)]), want)
        cases["torch"] = call
    t = medians(cases, rounds)
    row = {"d": d, "K": K, **{k + "_ms": 1e3 * s for k, s in t.items()}}
    peers = [k for k in ("jax", "torch") if k in t]
    if peers:
        best = min(peers, key=t.get)
        row["peer"], row["gradc/peer"] = best, t["gradc"] / t[best]
    if "jax" in t:
        row["gradc/jax"] = t["gradc"] / t["jax"]
    row["gradc/numpy"] = t["gradc"] / t["numpy"]
    return row, versions


def cold_compile(d, K):
    """Seconds of gradc.compile + first value_and_grad in a fresh process, empty cache."""
    code = (f"import sys, time; sys.path.insert(0, {HERE!r}); "
            f"sys.path.insert(0, {os.path.join(os.path.dirname(HERE), 'examples')!r}); "
            "import _single, adbench_gmm as g; import gradc; "
            f"P, icf, X = g.random_problem({d}, {K}, {N}); "
            f"loss, wrt, data, consts = g.gmm_model({d}, {K}); t = time.perf_counter(); "
            "fn = gradc.compile(loss, wrt=wrt, data=data, consts=consts, reduce='sum'); "
            f"t1 = time.perf_counter(); fn.value_and_grad(P, X, {N}, 1.0, 0, 0.0); "
            "t2 = time.perf_counter(); print(t1 - t, t2 - t1)")
    got, error = _single.fresh_process(code)
    if error:
        return {"d": d, "K": K, "error": error}
    lower, first = got
    return {"d": d, "K": K, "compile_s": lower, "first_call_s": first, "total_s": lower + first}


# -- bundle adjustment ---------------------------------------------------------------------
BA_SIZES = [(49, 7776, 31843), (21, 11315, 36455), (161, 48126, 182072)]


def ba_residual(xp, cross):
    """The per-observation residual (3,) in an array library ``xp`` (jax.numpy or torch),
    ADBench's rotation with a select for the small angle."""

    def rot(r, X):
        t2 = (r * r).sum()
        big = t2 > ba.SMALL_ANGLE
        t = xp.sqrt(xp.where(big, t2, xp.ones_like(t2)))
        wv = r / t
        full = (X * xp.cos(t) + cross(wv, X) * xp.sin(t)
                + wv * ((wv * X).sum() * (1 - xp.cos(t))))
        return xp.where(big, full, X + cross(r, X))

    def resid(cam, X, w, m):
        Xc = rot(cam[0:3], X - cam[3:6])
        p = Xc[:2] / Xc[2]
        q2 = (p * p).sum()
        p = p * (1 + cam[9] * q2 + cam[10] * q2 * q2)
        proj = p * cam[6] + cam[7:9]
        return xp.concatenate([w * (proj - m), (1 - w * w).reshape(1)])

    return resid


class Assembly:
    """The csr matrix from per-observation (3, 15) blocks (11 camera, 3 point, 1 weight
    columns): the structure and the permutation from blocks to csr entries computed once."""

    def __init__(self, obs, n_cams, n_pts):
        import scipy.sparse as sps

        n = len(obs)
        nc, npt = 11 * n_cams, 3 * n_pts
        cols = np.concatenate([11 * obs[:, :1] + np.arange(11), nc + 3 * obs[:, 1:2]
                               + np.arange(3), nc + npt + np.arange(n)[:, None]], axis=1)
        cols = np.repeat(cols[:, None, :], 3, axis=1).reshape(-1)
        rows = np.repeat(np.arange(3 * n), 15)
        keep = np.ones((n, 3, 15), dtype=bool)
        keep[:, 2, :14] = False  # the weight residual depends on the weight only
        self.keep = keep.reshape(-1)
        m = sps.coo_matrix((np.arange(1, self.keep.sum() + 1, dtype=np.float64),
                            (rows[self.keep], cols[self.keep])),
                           shape=(3 * n, nc + npt + n)).tocsr()
        self.perm = (m.data - 1).astype(np.int64)
        self.indices, self.indptr, self.shape = m.indices, m.indptr, m.shape
        self.sps = sps

    def __call__(self, blocks):
        vals = blocks.reshape(-1)[self.keep][self.perm]
        return self.sps.csr_matrix((vals, self.indices, self.indptr), shape=self.shape)


def ba_jax(cams, X, w, obs, feats, assembly):
    try:
        import jax
        import jax.numpy as jnp
    except Exception:  # noqa: BLE001 - an optional peer
        return None
    jax.config.update("jax_enable_x64", True)
    resid = ba_residual(jnp, jnp.cross)
    jac = jax.jit(jax.vmap(jax.jacfwd(resid, argnums=(0, 1, 2))))
    val = jax.jit(jax.vmap(resid))
    dev = [jnp.asarray(a) for a in (cams[obs[:, 0]], X[obs[:, 1]], w, feats)]

    def jacobian():
        a, b, c = jac(*dev)
        return assembly(np.concatenate([np.asarray(a), np.asarray(b),
                                        np.asarray(c)[:, :, None]], axis=2))

    def value():
        return np.asarray(jax.block_until_ready(val(*dev)))

    return jacobian, value, jax.__version__


def ba_torch(cams, X, w, obs, feats, assembly):
    try:
        import torch
        from torch.func import jacfwd, vmap
    except Exception:  # noqa: BLE001 - an optional peer
        return None
    torch.set_num_threads(1)
    resid = ba_residual(torch, lambda a, b: torch.linalg.cross(a, b, dim=-1))
    jac = vmap(jacfwd(resid, argnums=(0, 1, 2)))
    val = vmap(resid)
    dev = [torch.tensor(a) for a in (cams[obs[:, 0]], X[obs[:, 1]], w, feats)]

    def jacobian():
        with torch.no_grad():
            a, b, c = jac(*dev)
        return assembly(np.concatenate([a.numpy(), b.numpy(), c.numpy()[:, :, None]], axis=2))

    def value():
        with torch.no_grad():
            return val(*dev).numpy()

    return jacobian, value, torch.__version__


def ba_size(sizes, rounds):
    cams, X, w, obs, feats = ba.random_problem(*sizes)
    w = w + 0.05 * np.random.default_rng(1).normal(size=w.shape)  # not all ones
    fn = ba.compile_ba(*sizes)
    args = ba.data_args(obs, feats)
    params = [cams, X, w]
    J = fn.jacobian(params, *args, sparse=True)
    r = np.asarray(fn.value(params, *args)).reshape(-1)
    np.testing.assert_allclose(r, ba.reference(cams, X, w, obs, feats), rtol=RTOL, atol=1e-9)
    jcases = {"gradc": lambda: fn.jacobian(params, *args, sparse=True)}
    vcases = {"gradc": lambda: fn.value(params, *args)}
    versions = {}
    assembly = Assembly(obs, sizes[0], sizes[1])
    for name, make in (("jax", ba_jax), ("torch", ba_torch)):
        peer = make(cams, X, w, obs, feats, assembly)
        if peer is None:
            continue
        jac, val, versions[name] = peer
        got = jac()
        scale = np.abs(J.data).max()
        assert abs(got - J).max() <= RTOL * scale, name
        np.testing.assert_allclose(val().reshape(-1), r, rtol=RTOL, atol=1e-9, err_msg=name)
        jcases[name], vcases[name] = jac, val
    tj, tv = medians(jcases, rounds), medians(vcases, rounds)
    row = {"sizes": sizes, "nnz": int(J.nnz), "colours": fn._second["stacked"][1].ncolours,
           **{k + "_jac_ms": 1e3 * t for k, t in tj.items()},
           **{k + "_value_ms": 1e3 * t for k, t in tv.items()}}
    for k in ("jax", "torch"):
        if k in tj:
            row[f"gradc/{k} jac"] = tj["gradc"] / tj[k]
            row[f"gradc/{k} value"] = tv["gradc"] / tv[k]
    return row, versions


def ba_cold_compile(sizes):
    """Seconds of gradc.compile, the first value and the first sparse Jacobian of BA in a
    fresh process with an empty cache."""
    code = (f"import sys, time; sys.path.insert(0, {HERE!r}); "
            f"sys.path.insert(0, {os.path.join(os.path.dirname(HERE), 'examples')!r}); "
            "import _single, adbench_ba as b; "
            f"c, X, w, o, f = b.random_problem(*{tuple(sizes)!r}); a = b.data_args(o, f); "
            f"t = time.perf_counter(); fn = b.compile_ba(*{tuple(sizes)!r}); "
            "t1 = time.perf_counter(); fn.value([c, X, w], *a); t2 = time.perf_counter(); "
            "fn.jacobian([c, X, w], *a, sparse=True); t3 = time.perf_counter(); "
            "print(t1 - t, t2 - t1, t3 - t2)")
    got, error = _single.fresh_process(code)
    if error:
        return {"sizes": sizes, "error": error}
    c, v, j = got
    return {"sizes": sizes, "compile_s": c, "first_value_s": v, "first_jacobian_s": j,
            "total_s": c + v + j}


def main_ba():
    print("\nBundle adjustment (ADBench ba.h), synthetic problems, float64, the stacked sparse "
          "Jacobian (csr) and the residuals")
    rows, versions = [], {}
    for sizes in BA_SIZES[:1] if QUICK else BA_SIZES:
        row, v = ba_size(sizes, 5 if QUICK else 11)
        versions.update(v)
        rows.append(row)
        peers = "; ".join(f"{k} {row[k + '_jac_ms']:7.1f} ms ({row[k + '_value_ms']:.2f})"
                          for k in ("jax", "torch") if k + "_jac_ms" in row)
        ratios = ", ".join(f"gradc/{k} {row[f'gradc/{k} jac']:.2f} ({row[f'gradc/{k} value']:.2f})"
                           for k in ("jax", "torch") if f"gradc/{k} jac" in row)
        print(f"  {sizes[0]:4d} cams {sizes[1]:6d} pts {sizes[2]:7d} obs ({row['nnz']} nonzeros, "
              f"{row['colours']} colours): gradc {row['gradc_jac_ms']:7.1f} ms "
              f"({row['gradc_value_ms']:.2f}); {peers}; {ratios}", flush=True)
    print("  (Jacobian ms, residuals ms in parentheses)")
    print(f"peers: {versions or 'none'}")
    compiles = []
    if "--no-compile" not in sys.argv:
        print("\ncold compile (compile + first value + first sparse Jacobian), fresh process, "
              "empty cache:")
        for sizes in BA_SIZES[:1] if QUICK else BA_SIZES:
            c = ba_cold_compile(sizes)
            compiles.append(c)
            if "error" in c:
                print(f"  {sizes}: {c['error']}")
            else:
                print(f"  {sizes}: {c['compile_s']:.2f} s + {c['first_value_s']:.2f} s + "
                      f"{c['first_jacobian_s']:.2f} s = {c['total_s']:.2f} s", flush=True)
    return {"ba": rows, "ba_compile": compiles, "ba_versions": versions}


def main():
    print(f"bench_adbench: gradc {gradc.__version__} ({gradc_revision()}), {_single.describe()}")
    out = {}
    if "--gmm" in sys.argv or "--ba" not in sys.argv:
        out.update(main_gmm())
    if "--ba" in sys.argv or "--gmm" not in sys.argv:
        out.update(main_ba())
    if "--json" in sys.argv:
        path = sys.argv[sys.argv.index("--json") + 1]
        with open(path, "w") as f:
            json.dump(out, f, indent=1)


def main_gmm():
    print(f"GMM (ADBench gmm.h form), n = {N} points, float64, value_and_grad\n")
    grid = _sizes() or (QUICK_GRID if QUICK else GRID)
    rounds = 5 if QUICK else 11
    rows, versions = [], {}
    for d, K in grid:
        row, v = run_size(d, K, rounds)
        versions.update(v)
        rows.append(row)
        others = ", ".join(f"{k} {row[k + '_ms']:8.2f} ms" for k in ("jax", "torch", "numpy")
                           if k + "_ms" in row)
        ratio = f"gradc/{row['peer']} {row['gradc/peer']:.2f}" if "peer" in row else ""
        print(f"  d={d:3d} K={K:3d}  gradc {row['gradc_ms']:8.2f} ms; {others}; {ratio}",
              flush=True)
    worst = max((r for r in rows if "peer" in r), key=lambda r: r["gradc/peer"], default=None)
    if worst:
        print(f"\nworst gradc/peer: {worst['gradc/peer']:.2f} at d={worst['d']} K={worst['K']}")
    print(f"peers: {versions or 'none'}")
    compiles = []
    if "--no-compile" not in sys.argv:
        print("\ncold compile (gradc.compile + first value_and_grad), fresh process, empty cache:")
        for d, K in grid:
            c = cold_compile(d, K)
            compiles.append(c)
            if "error" in c:
                print(f"  d={d} K={K}: {c['error']}")
            else:
                print(f"  d={d:3d} K={K:3d}  {c['compile_s']:.2f} s + {c['first_call_s']:.2f} s "
                      f"= {c['total_s']:.2f} s", flush=True)
        ok = [c for c in compiles if "error" not in c]
        if len(ok) >= 2:
            print(f"  largest / smallest: {ok[-1]['total_s'] / ok[0]['total_s']:.2f}; "
                  f"max {max(c['total_s'] for c in ok):.2f} s")
    return {"rows": rows, "compile": compiles, "versions": versions}


if __name__ == "__main__":
    main()
