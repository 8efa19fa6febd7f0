"""Benchmark gradc's compile time against expression size, stage by stage.

Usage::

    python benchmarks/bench_compile.py                 # all cases (the largest take minutes)
    python benchmarks/bench_compile.py --quick         # cases up to ~1,000 nodes
    python benchmarks/bench_compile.py --timeout 900   # seconds allowed per case (default 1200)
    python benchmarks/bench_compile.py --cases units:1000,chain:1000   # a chosen subset
    python benchmarks/bench_compile.py --mem-gb 8       # address-space cap per case (default 8)

Cases (float64, data x and y, reduce="mean"):

* ``units:k``  loss = (w0 + sum_{i=1..k} w_i tanh(v_i x + b_i) - y)**2, 3k + 1 parameters
  (k = 1, 10, 100, 1000; about 12 to 10,000 sympy nodes)
* ``chain:d``  h_0 = x, h_j = tanh(a_j h_{j-1} + c_j), loss = (h_d - y)**2, 2d parameters
  (d = 10, 100, 1000: a deep expression)

Each case runs in its own subprocess with a fresh ``GRADC_CACHE_DIR``, after a warm-up
compile of a one-unit model (so numba's one-time initialisation is not charged to the first
case).  Stages, timed separately:

* ``other``    the rest of ``gradc.compile``: role checks, the structural cache key, the
               disk-cache lookup
* ``lower``    ``gradc.frontend.lower`` (sympy -> IR, including the reduction)
* ``AD``       ``gradc.ad.vjp_program`` + ``gradc.ad.jvp_program``
* ``codegen``  ``gradc.codegen.emit.generate``
* ``numba``    ``gradc.backend.load`` (write + import the module) and the first call of
               ``fn.value_and_grad`` (numba typing, lowering, LLVM optimisation and
               code generation of that one kernel, and the write of numba's cache)

The stages are timed by wrapping the functions that ``gradc.compile`` calls, so the split
follows the real pipeline.  "nodes" is the number of distinct sympy subexpressions (the DAG
that gradc lowers).  The script prints microseconds per node for each stage and the local
growth exponent between successive sizes of a family (1.0 = linear, 2.0 = quadratic).  For
the numba stage it also prints numba's own split of the first call: the time spent holding
the LLVM lock (LLVM IR optimisation and machine-code generation, approximately) and the
slowest compiler passes.
"""

import os
import sys

for _var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import json  # noqa: E402
import math  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import sympy as sp  # noqa: E402
from _revision import gradc_revision  # noqa: E402

FULL_CASES = ["units:1", "units:10", "units:100", "units:1000",
              "chain:10", "chain:100", "chain:1000"]
QUICK_CASES = ["units:1", "units:10", "units:100", "chain:10", "chain:100"]
CHILD_FLAG = "--child"
N_DATA = 1000


def _gradc_file():
    import gradc
    return gradc.__file__




def build(case):
    """(expr, wrt, data) for a case name ``family:size``."""
    family, size = case.split(":")
    size = int(size)
    x, y = sp.symbols("x y")
    if family == "units":
        v = sp.symbols(f"v1:{size + 1}")
        b = sp.symbols(f"b1:{size + 1}")
        w = sp.symbols(f"w0:{size + 1}")
        f = w[0] + sp.Add(*[w[i + 1] * sp.tanh(v[i] * x + b[i]) for i in range(size)])
        return (f - y) ** 2, [*v, *b, *w], [x, y]
    if family == "chain":
        a = sp.symbols(f"a1:{size + 1}")
        c = sp.symbols(f"c1:{size + 1}")
        h = x
        for j in range(size):
            h = sp.tanh(a[j] * h + c[j])
        # evaluate=False: sympy's own Pow(...) evaluation asks whether h - y is real, and
        # tanh's is_real recurses through as_real_imag of the whole chain (exponential
        # in the depth; d = 100 does not finish in 15 minutes)
        return sp.Pow(h - y, 2, evaluate=False), [*a, *c], [x, y]
    raise SystemExit(f"unknown case family {family!r}")


# ------------------------------------------------------------------------------ child
class _Timed:
    """Wraps one function that ``gradc.compile`` calls, adding up the seconds spent in it."""

    def __init__(self, fn):
        self.fn, self.seconds, self.result = fn, 0.0, None

    def __call__(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            self.result = self.fn(*args, **kwargs)
            return self.result
        finally:
            self.seconds += time.perf_counter() - t0


def _limit_memory():
    """Cap the child's address space (``--mem-gb``), so that a runaway compile fails with
    an out-of-memory error in the child instead of pushing the machine into the OOM killer."""
    gb = float(os.environ.get("GRADC_BENCH_MEM_GB", "8"))
    if gb > 0:
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (int(gb * 2**30), int(gb * 2**30)))


def child(case):
    """Run in a subprocess: compile one case with the stages timed; print one JSON line.

    The stages are timed by wrapping the functions ``gradc.compile`` itself calls (looked up
    in ``gradc.compiled``), so the split follows whatever the pipeline does; ``other`` is
    the rest of ``gradc.compile`` (role checks, the structural cache key, the cache lookup).
    """
    import numba
    from numba.core import event

    import gradc
    import gradc.compiled as gc
    from gradc.frontend import postorder

    rng = np.random.default_rng(0)
    X = np.linspace(-1.0, 1.0, N_DATA)
    Y = np.sin(X)

    # warm-up: numba's target initialisation and gradc's helpers, in another cache folder
    root = os.environ["GRADC_CACHE_DIR"]
    os.environ["GRADC_CACHE_DIR"] = os.path.join(root, "warmup")
    x, y = dat_syms = sp.symbols("x y")
    q = sp.symbols("q0:3")                # not one of the cases: nothing is reused
    warm = (q[0] * sp.tanh(q[1] * x + q[2]) - y) ** 2
    gradc.compile(warm, wrt=q, data=dat_syms).value_and_grad(np.array([0.5, 0.4, 0.3]), X, Y)
    os.environ["GRADC_CACHE_DIR"] = os.path.join(root, "case")

    expr, wrt, dat = build(case)
    nodes = len(postorder(expr))
    timed = {}
    for name in ("lower", "vjp_program", "jvp_program", "generate"):
        timed[name] = _Timed(getattr(gc, name))
        setattr(gc, name, timed[name])
    timed["load"] = _Timed(gc.backend.load)
    gc.backend.load = timed["load"]
    t0 = time.perf_counter()
    fn = gradc.compile(expr, wrt=wrt, data=dat)
    t1 = time.perf_counter()
    params = rng.normal(size=len(wrt)) * 0.5
    passes = {}
    with event.install_recorder("numba:run_pass") as rec:
        value, grad = fn.value_and_grad(params, X, Y)
    t2 = time.perf_counter()
    # pass durations (outermost passes only: nested pipelines, e.g. for inlining, count
    # in the pass that started them)
    starts, depth = [], 0
    for ts, ev in rec.buffer:
        if ev.is_start:
            starts.append((ts, ev.data["name"], depth))
            depth += 1
        else:
            ts0, name, d = starts.pop()
            depth -= 1
            if d == 0:
                passes[name] = passes.get(name, 0.0) + (ts - ts0)
    disp = fn.kernels.value_and_grad
    timers = disp.overloads[disp.signatures[0]].metadata.get("timers", {})
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    source = fn.source
    vg_src = source[source.index("def value_and_grad"):source.index("def grad(")]
    prog, vjp, jvp = (timed[k].result for k in ("lower", "vjp_program", "jvp_program"))
    sec = {k: v.seconds for k, v in timed.items()}
    top = sorted(passes.items(), key=lambda kv: -kv[1])[:4]
    print(json.dumps({
        "case": case, "nodes": nodes, "params": len(wrt),
        "ir_value": len(prog.eqns), "ir_vjp": len(vjp.eqns) if vjp else None,
        "ir_jvp": len(jvp.eqns), "vg_lines": vg_src.count("\n"),
        "lower": sec["lower"], "vjp": sec["vjp_program"], "jvp": sec["jvp_program"],
        "codegen": sec["generate"], "load": sec["load"],
        "key": (t1 - t0) - sum(sec.values()),
        "numba": t2 - t1,
        "llvm_lock": timers.get("llvm_lock"), "compiler_lock": timers.get("compiler_lock"),
        "top_passes": top, "numba_version": numba.__version__,
    }))


# ------------------------------------------------------------------------------ parent
def run_case(case, timeout, mem_gb):
    with tempfile.TemporaryDirectory(prefix="gradc-bench-compile-") as d:
        env = dict(os.environ, GRADC_CACHE_DIR=d, GRADC_BENCH_MEM_GB=str(mem_gb))
        try:
            out = subprocess.run([sys.executable, os.path.abspath(__file__), CHILD_FLAG, case],
                                 env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"case": case, "timeout": timeout}
        if out.returncode != 0:
            last = out.stderr.strip().splitlines()[-1:] or [f"exit status {out.returncode}"]
            if any("MemoryError" in l or "bad_alloc" in l for l in out.stderr.splitlines()[-20:]):
                last = [f"out of memory (address space capped at {mem_gb} GB): " + last[0]]
            return {"case": case, "error": last}
        return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    args = sys.argv[1:]
    timeout = 1200.0
    if "--timeout" in args:
        timeout = float(args[args.index("--timeout") + 1])
    mem_gb = float(args[args.index("--mem-gb") + 1]) if "--mem-gb" in args else 8.0
    if "--cases" in args:
        cases = args[args.index("--cases") + 1].split(",")
    else:
        cases = QUICK_CASES if "--quick" in args else FULL_CASES
    import numba

    import gradc
    print(f"gradc {gradc.__version__} bench_compile: numba {numba.__version__}, sympy "
          f"{sp.__version__}, python {sys.version.split()[0]}; one subprocess per case, "
          f"timeout {timeout:.0f} s, address space <= {mem_gb:g} GB; batch of {N_DATA} for "
          "the first call")
    print(f"gradc from {gradc_revision()}")
    rows = []
    for case in cases:
        t0 = time.perf_counter()
        r = run_case(case, timeout, mem_gb)
        r["wall"] = time.perf_counter() - t0
        rows.append(r)
        status = ("timeout" if "timeout" in r else "error: " + " ".join(r["error"])
                  if "error" in r else f"numba {r['numba']:.2f} s")
        print(f"  ran {case:12s} in {r['wall']:7.1f} s ({status})", flush=True)

    stages = ("other", "lower", "AD", "codegen", "numba")

    def stage(r, s):
        if s == "AD":
            return r["vjp"] + r["jvp"]
        if s == "numba":
            return r["load"] + r["numba"]
        return r["key"] if s == "other" else r[s]

    print("\nseconds per stage (numba = module load + first value_and_grad call)")
    hdr = (f"  {'case':12s} {'nodes':>6s} {'IR vjp':>7s} {'vg lines':>8s} "
           + " ".join(f"{s:>9s}" for s in stages) + f" {'llvm lock':>9s}")
    print(hdr)
    for r in rows:
        if "nodes" not in r:
            why = (f"TIMEOUT after {r['timeout']:.0f} s" if "timeout" in r
                   else "FAILED: " + " ".join(r["error"]))
            print(f"  {r['case']:12s} {'-':>6s}  {why}")
            continue
        print(f"  {r['case']:12s} {r['nodes']:6d} {r['ir_vjp']:7d} {r['vg_lines']:8d} "
              + " ".join(f"{stage(r, s):9.4f}" for s in stages)
              + f" {(r['llvm_lock'] or float('nan')):9.3f}")

    print("\nmicroseconds per node")
    print(f"  {'case':12s} {'nodes':>6s} " + " ".join(f"{s:>9s}" for s in stages))
    for r in rows:
        if "nodes" in r:
            print(f"  {r['case']:12s} {r['nodes']:6d} "
                  + " ".join(f"{stage(r, s) / r['nodes'] * 1e6:9.1f}" for s in stages))

    print("\ngrowth exponent between successive sizes of a family "
          "(d log t / d log nodes; 1 = linear, 2 = quadratic)")
    print(f"  {'from -> to':26s} " + " ".join(f"{s:>9s}" for s in stages))
    fam = {}
    for r in rows:
        if "nodes" in r:
            fam.setdefault(r["case"].split(":")[0], []).append(r)
    for rs in fam.values():
        for a, b in zip(rs, rs[1:]):
            ratio = math.log(b["nodes"] / a["nodes"])
            ex = []
            for s in stages:
                ta, tb = stage(a, s), stage(b, s)
                ex.append(f"{math.log(tb / ta) / ratio:9.2f}" if ta > 0 and tb > 0 else f"{'-':>9s}")
            print(f"  {a['case'] + ' -> ' + b['case']:26s} " + " ".join(ex))

    print("\nslowest numba compiler passes in the first call (seconds)")
    for r in rows:
        if "nodes" in r:
            print(f"  {r['case']:12s} " + ", ".join(f"{n} {s:.2f}" for n, s in r["top_passes"]))
    print("\nraw JSON rows:")
    for r in rows:
        print("  " + json.dumps(r))


if __name__ == "__main__":
    if CHILD_FLAG in sys.argv:
        _limit_memory()
        child(sys.argv[sys.argv.index(CHILD_FLAG) + 1])
    else:
        main()
