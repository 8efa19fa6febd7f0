"""ADBench's GMM objective: gradc against JAX, PyTorch and a hand-written numpy gradient.

Usage::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_adbench.py
    python benchmarks/bench_adbench.py --quick        # 5 sizes, fewer samples
    python benchmarks/bench_adbench.py --no-compile   # skip the cold-compile curve
    python benchmarks/bench_adbench.py --json gmm.json

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

Bundle adjustment (the issue's second workload) is not here yet: gradc has the gathers
it needs (``cams[ci, k]``) but not yet per-example sparse Jacobians.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "examples"))
import _single  # noqa: E402  (one thread per library, one CPU)
from _single import medians  # noqa: E402

import json  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402

import numpy as np  # noqa: E402

import gradc  # noqa: E402
import adbench_gmm as gmm  # noqa: E402
from _revision import gradc_revision  # noqa: E402

QUICK = "--quick" in sys.argv
N, GAMMA, M, RTOL = 1000, 1.0, 0, 1e-9
GRID = [(d, K) for d in (2, 10, 20, 32, 64) for K in (5, 10, 25, 50, 100)]
QUICK_GRID = [(2, 5), (10, 25), (20, 50), (32, 100), (64, 100)]


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
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, GRADC_CACHE_DIR=cache)
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env=env, timeout=900)
    if r.returncode != 0:
        return {"d": d, "K": K, "error": (r.stderr.strip().splitlines() or ["failed"])[-1]}
    lower, first = map(float, r.stdout.split())
    return {"d": d, "K": K, "compile_s": lower, "first_call_s": first, "total_s": lower + first}


def main():
    print(f"bench_adbench: gradc {gradc.__version__} ({gradc_revision()}), {_single.describe()}")
    print(f"GMM (ADBench gmm.h form), n = {N} points, float64, value_and_grad\n")
    grid = QUICK_GRID if QUICK else GRID
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
    if "--json" in sys.argv:
        path = sys.argv[sys.argv.index("--json") + 1]
        with open(path, "w") as f:
            json.dump({"rows": rows, "compile": compiles, "versions": versions}, f, indent=1)


if __name__ == "__main__":
    main()
