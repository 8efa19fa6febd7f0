"""How run time and compile time grow with the model: gradc against JAX, one CPU.

Usage::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_scale.py
    python benchmarks/bench_scale.py --quick          # fewer sizes and samples
    python benchmarks/bench_scale.py --no-jax --plot docs/img/scale.png
    python benchmarks/bench_scale.py --quick --eager  # cold compiles with eager=True
    python benchmarks/bench_scale.py --worker units 30 [--eager]   # one cold compile

Cases:

* the k-unit model ``sum_i w_i tanh(v_i x + b_i)``, squared loss, mean over n = 10,000
  examples, k = 3, 10, 30, 100, 300: per-call time of ``value_and_grad``, ``value``,
  ``grad``, ``jvp`` and ``value_and_grad`` with ``reduce=None`` (ns per unit and example),
  against JAX written both ways a user would (unrolled scalars, and vectorised over the
  units), the faster of the two as the peer; and cold compile + first call with peak RSS,
  each in a fresh process with an empty cache;
* the chain ``sum_i 100 (x_{i+1} - x_i^2)^2 + (1 - x_i)^2`` with 1,000 and 10,000 variables
  (no data): cold compile + first ``value_and_grad``, RSS, per-call time against JAX;
* a sum of 100,000 terms ``sum_i c_i w_i x`` plus ``w_0 x^2`` (100,000 parameters, n =
  1,000): cold compile + first call, RSS, per-call time.

Every gradc result is checked against JAX (rtol 1e-9) before timing.  Per-call times are
medians of round-robin samples in this process; compile times are medians over fresh
processes (one per sample), so they include numba's start-up in that process.  The
vectorised maths and runtime helpers gradc calls are compiled once per machine and kept
in numba's cache; the first process on a machine compiles them too (``--cold-helpers``
clears that cache for each sample, to measure this).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _single  # noqa: E402  (one thread per library, one CPU)

import json  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from _models import chain_model, units_model  # noqa: E402

N = 10_000
QUICK = "--quick" in sys.argv
KS = [3, 10, 30, 100] if QUICK else [3, 10, 30, 100, 300]
EAGER = "--eager" in sys.argv  # cold compiles with eager=True (every kernel at once)
HERE = os.path.dirname(os.path.abspath(__file__))


# ------------------------------------------------------------------------------ models


def sum_model(nterms):
    import sympy as sp

    x = sp.Symbol("x")
    w = sp.symbols(f"w0:{nterms}")
    c = np.random.default_rng(1).integers(1, 9, nterms)
    expr = sp.Add(*[sp.Mul(sp.Integer(int(c[i])), w[i], x) for i in range(nterms)], w[0] * x ** 2)
    return expr, list(w), [x]


MODELS = {"units": units_model, "chain": chain_model, "sum": sum_model}


def nodes(expr):
    from gradc.frontend import postorder

    return len(postorder(expr))


# ------------------------------------------------------------------------------ workers
def peak_rss_mb():
    """This process's peak resident memory (VmHWM).  Not ``getrusage``'s ``ru_maxrss``:
    Linux carries that across ``exec``, so a worker would report its parent's peak."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(kind, size):
    """In a fresh process: build, compile and call once; print timings and peak RSS."""
    import gradc

    t0 = time.perf_counter()
    expr, wrt, data = MODELS[kind](size)
    t1 = time.perf_counter()
    fn = gradc.compile(expr, wrt=wrt, data=data, eager=EAGER)
    t2 = time.perf_counter()
    p = np.random.default_rng(0).uniform(0.5, 1.5, len(wrt))
    args = [np.linspace(-np.pi, np.pi, 1000) for _ in data]
    fn.value_and_grad(p, *args)
    t3 = time.perf_counter()
    fn.value(p, *args)
    t4 = time.perf_counter()
    fn.grad(p, *args)
    fn.jvp(p, p, *args)
    t5 = time.perf_counter()
    print(json.dumps({"build": t1 - t0, "gradc": t2 - t1, "first_call": t3 - t2,
                      "first_value_after": t4 - t3, "first_grad_jvp_after": t5 - t4,
                      "rss_mb": peak_rss_mb(),
                      "nodes": nodes(expr), "lines": fn.source.count("\n")}))


def cold(kind, size, runs):
    """Median over ``runs`` fresh processes, each with an empty gradc cache."""
    out = []
    for _ in range(runs):
        env = dict(os.environ, GRADC_CACHE_DIR=tempfile.mkdtemp(prefix="gradc-scale-"))
        if "--cold-helpers" in sys.argv:
            env["NUMBA_CACHE_DIR"] = tempfile.mkdtemp(prefix="numba-scale-")
        r = subprocess.run([sys.executable, __file__, "--worker", kind, str(size)]
                           + (["--eager"] if EAGER else []),
                           capture_output=True, text=True, env=env, timeout=1800)
        if r.returncode != 0:
            return {"error": r.stderr.strip().splitlines()[-1] if r.stderr else "failed"}
        out.append(json.loads(r.stdout.strip().splitlines()[-1]))
    keys = out[0].keys()
    return {k: float(np.median([o[k] for o in out])) for k in keys}


# ------------------------------------------------------------------------------ timing
def medians(cases, samples):
    """Round-robin samples of every case; {name: median seconds}."""
    for f in cases.values():
        f()
    times = {k: [] for k in cases}
    for _ in range(samples):
        for k, f in cases.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    return {k: float(np.median(v)) for k, v in times.items()}


def jax_units(k, P, X, Y):
    """JAX value_and_grad etc. of the k-unit model, unrolled and vectorised."""
    try:
        import jax
        import jax.numpy as jnp
    except Exception:  # noqa: BLE001 - optional peer
        return None
    jax.config.update("jax_enable_x64", True)

    def per_example_vec(p, x, y):
        v, b, w0, w = p[:k], p[k:2 * k], p[2 * k], p[2 * k + 1:]
        return (w0 + jnp.tanh(x[..., None] * v + b) @ w - y) ** 2

    def per_example_unr(p, x, y):
        f = p[2 * k]
        for i in range(k):
            f = f + p[2 * k + 1 + i] * jnp.tanh(p[i] * x + p[k + i])
        return (f - y) ** 2

    d = [jnp.asarray(a) for a in (P, X, Y)]
    t = jnp.asarray(np.random.default_rng(2).normal(size=P.size))
    out = {}
    styles = {"vectorised": per_example_vec}
    if k <= 100:  # unrolled tracing and compile grow with k (several seconds at 100)
        styles["unrolled"] = per_example_unr
    for style, pe in styles.items():
        def loss(p, x, y, pe=pe):
            return jnp.mean(pe(p, x, y))

        vg = jax.jit(jax.value_and_grad(loss))
        val = jax.jit(loss)
        gr = jax.jit(jax.grad(loss))
        jv = jax.jit(lambda p, tt, x, y, loss=loss: jax.jvp(lambda q: loss(q, x, y), (p,), (tt,)))
        pex = jax.jit(jax.vmap(jax.value_and_grad(pe), in_axes=(None, 0, 0)))
        t0 = time.perf_counter()
        jax.block_until_ready(vg(*d))
        first = time.perf_counter() - t0
        out[style] = {
            "value_and_grad": lambda vg=vg: jax.block_until_ready(vg(*d)),
            "value": lambda val=val: jax.block_until_ready(val(*d)),
            "grad": lambda gr=gr: jax.block_until_ready(gr(*d)),
            "jvp": lambda jv=jv: jax.block_until_ready(jv(d[0], t, d[1], d[2])),
            "per_example": lambda pex=pex: jax.block_until_ready(pex(*d)),
            "first": first,
            "check": lambda vg=vg: vg(*d),
        }
    return out


def run_units(samples, compile_runs, use_jax):
    import gradc

    rows = []
    for k in KS:
        expr, wrt, data = units_model(k)
        fn = gradc.compile(expr, wrt=wrt, data=data)
        fpe = gradc.compile(expr, wrt=wrt, data=data, reduce=None)
        rng = np.random.default_rng(0)
        P, X = rng.normal(size=3 * k + 1), np.linspace(-np.pi, np.pi, N)
        Y = np.sin(X)
        T = np.random.default_rng(2).normal(size=P.size)
        K = fn.kernels
        cases = {"value_and_grad": lambda: K.value_and_grad(P, X, Y),
                 "value": lambda: K.value(P, X, Y), "grad": lambda: K.grad(P, X, Y),
                 "jvp": lambda: K.jvp(P, T, X, Y),
                 "per_example": lambda: fpe.kernels.value_and_grad(P, X, Y)}
        cases = {f"gradc {n}": f for n, f in cases.items()}
        jx = jax_units(k, P, X, Y) if use_jax else None
        if jx:
            v, g = fn.value_and_grad(P, X, Y)
            for style, fs in jx.items():
                jv, jg = fs["check"]()
                assert np.isclose(float(jv), v, rtol=1e-9), (style, k)
                np.testing.assert_allclose(np.asarray(jg), g, rtol=1e-8, atol=1e-12)
                for n in ("value_and_grad", "value", "grad", "jvp", "per_example"):
                    cases[f"jax {style} {n}"] = fs[n]
        med = medians(cases, samples)
        c = cold("units", k, compile_runs)
        row = {"k": k, "cold": c, "jax_first": {s: fs["first"] for s, fs in (jx or {}).items()}}
        for n in ("value_and_grad", "value", "grad", "jvp", "per_example"):
            g = med[f"gradc {n}"]
            peers = {s: med[f"jax {s} {n}"] for s in (jx or {})}
            best = min(peers.values()) if peers else None
            row[n] = {"gradc_us": g * 1e6, "ns_unit_example": g * 1e9 / (k * N),
                      "jax_us": {s: t * 1e6 for s, t in peers.items()},
                      "ratio": g / best if best else None}
        rows.append(row)
        print_units_row(row)
    return rows


def print_units_row(row):
    k, c = row["k"], row["cold"]
    vg = row["value_and_grad"]
    jax_txt = ", ".join(f"{s} {t:,.0f}" for s, t in vg["jax_us"].items())
    print(f"k={k:4d}  value_and_grad {vg['gradc_us']:9,.0f} us  "
          f"{vg['ns_unit_example']:5.2f} ns/unit/example  JAX us: {jax_txt or '-'}  "
          f"gradc/JAX {vg['ratio'] or float('nan'):.2f}", flush=True)
    for n in ("value", "grad", "jvp", "per_example"):
        r = row[n]
        print(f"          {n:14s} {r['gradc_us']:9,.0f} us  {r['ns_unit_example']:5.2f} ns  "
              f"gradc/JAX {r['ratio'] or float('nan'):.2f}")
    if "error" in c:
        print(f"          cold compile failed: {c['error']}")
    else:
        print(f"          cold compile + first call {c['gradc'] + c['first_call']:.2f} s "
              f"(gradc {c['gradc']:.2f} s, numba + call {c['first_call']:.2f} s), then the "
              f"first value {c['first_value_after']:.2f} s; RSS {c['rss_mb']:.0f} MB; "
              f"{c['nodes']:,.0f} sympy nodes, {c['lines']:,.0f} lines; JAX first call "
              + ", ".join(f"{s} {t:.2f} s" for s, t in row["jax_first"].items()))


def jax_chain(nvar, P):
    try:
        import jax
        import jax.numpy as jnp
    except Exception:  # noqa: BLE001
        return None
    jax.config.update("jax_enable_x64", True)

    def f(p):
        return jnp.sum(100 * (p[1:] - p[:-1] ** 2) ** 2 + (1 - p[:-1]) ** 2)

    vg = jax.jit(jax.value_and_grad(f))
    d = jnp.asarray(P)
    return lambda: jax.block_until_ready(vg(d)), lambda: vg(d)


def run_others(samples, compile_runs, use_jax):
    import gradc

    rows = []
    for kind, size in [("chain", 1000), ("chain", 10_000), ("sum", 100_000)]:
        c = cold(kind, size, compile_runs)
        expr, wrt, data = MODELS[kind](size)
        fn = gradc.compile(expr, wrt=wrt, data=data)
        P = np.random.default_rng(0).uniform(0.5, 1.5, len(wrt))
        args = [np.linspace(-np.pi, np.pi, 1000) for _ in data]
        cases = {"gradc": lambda: fn.kernels.value_and_grad(P, *args)}
        if use_jax and kind == "chain":
            call, check = jax_chain(size, P)
            jv, jg = check()
            v, g = fn.value_and_grad(P)
            assert np.isclose(float(jv), v, rtol=1e-9)
            np.testing.assert_allclose(np.asarray(jg), g, rtol=1e-9, atol=1e-9)
            cases["jax"] = call
        med = medians(cases, samples)
        row = {"kind": kind, "size": size, "cold": c,
               "gradc_us": med["gradc"] * 1e6, "jax_us": med.get("jax", 0) * 1e6 or None}
        rows.append(row)
        ratio = f"  gradc/JAX {med['gradc'] / med['jax']:.2f}" if "jax" in med else ""
        if "error" in c:
            print(f"{kind} {size}: cold compile failed: {c['error']}")
            continue
        print(f"{kind:5s} {size:7,d}: cold compile + first call {c['gradc'] + c['first_call']:.2f} s "
              f"(gradc {c['gradc']:.2f} s) RSS {c['rss_mb']:.0f} MB, building the sympy "
              f"expression {c['build']:.2f} s; {c['nodes']:,.0f} nodes, {c['lines']:,.0f} lines; "
              f"value_and_grad {med['gradc'] * 1e6:,.1f} us{ratio}", flush=True)
    return rows


def plot(units, others, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    pts = [(r["cold"]["nodes"], r["cold"]["gradc"] + r["cold"]["first_call"], f"k={r['k']}")
           for r in units if "error" not in r["cold"]]
    pts += [(r["cold"]["nodes"], r["cold"]["gradc"] + r["cold"]["first_call"],
             f"{r['kind']} {r['size']:,}") for r in others if "error" not in r["cold"]]
    for n, t, label in pts:
        a.loglog(n, t, "o")
        a.annotate(label, (n, t), fontsize=7)
    a.set_xlabel("sympy nodes")
    a.set_ylabel("cold compile + first call (s)")
    a.set_title("compile time")
    ks = [r["k"] for r in units]
    b.plot(ks, [r["value_and_grad"]["ns_unit_example"] for r in units], "o-", label="gradc")
    for style in ("unrolled", "vectorised"):
        vals = [(r["k"], r["value_and_grad"]["jax_us"][style] * 1e3 / (r["k"] * N))
                for r in units if style in r["value_and_grad"]["jax_us"]]
        if vals:
            b.plot(*zip(*vals), "s--", label=f"JAX {style}")
    b.set_xscale("log")
    b.set_xlabel("units k")
    b.set_ylabel("value_and_grad: ns per unit and example")
    b.set_title(f"run time, n = {N:,}")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


def main():
    if "--worker" in sys.argv:
        i = sys.argv.index("--worker")
        worker(sys.argv[i + 1], int(sys.argv[i + 2]))
        return
    import gradc

    print(f"gradc {gradc.__file__}; {_single.describe()}; OPENBLAS_CORETYPE="
          f"{os.environ.get('OPENBLAS_CORETYPE', '(unset)')}")
    samples = 30 if QUICK else 100
    runs = 1 if QUICK else 3
    use_jax = "--no-jax" not in sys.argv
    units = run_units(samples, runs, use_jax)
    others = run_others(samples, runs, use_jax)
    if "--plot" in sys.argv:
        plot(units, others, sys.argv[sys.argv.index("--plot") + 1])
    if "--json" in sys.argv:
        with open(sys.argv[sys.argv.index("--json") + 1], "w") as f:
            json.dump({"units": units, "others": others}, f, indent=1)


if __name__ == "__main__":
    main()
