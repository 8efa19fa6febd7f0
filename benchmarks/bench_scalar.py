"""Benchmark gradc on the lecture's 10-parameter tanh model against hand-written baselines.

Usage::

    python benchmarks/bench_scalar.py              # host CPU target (what numba picks)
    python benchmarks/bench_scalar.py --avx2       # numba compiles for a Haswell AVX2+FMA target
    python benchmarks/bench_scalar.py --quick      # fewer repetitions, fewer compile runs
    python benchmarks/bench_scalar.py --no-jax     # skip the optional JAX row

The model (n = 10,000 examples, X = linspace(-pi, pi), Y = sin X)::

    f    = w0 + sum_{i=1..3} w_i tanh(v_i x + b_i)
    loss = mean over the batch of (f - y)**2
    fn   = gradc.compile(loss, wrt=[*v, *b, *w], data=[x, y])

Everything runs single-threaded (NUMBA/OMP/OPENBLAS/MKL_NUM_THREADS=1 and XLA's Eigen pool
off, unless already set) and float64.  Per-call times are medians over many samples; the
cases are timed round-robin (one sample of each case per round) so that machine noise
hits all of them alike, and ratios are taken between medians measured in this process.

Rows:

* gradc ``fn.value_and_grad`` (the ``CompiledFunction`` method: argument checks + kernel)
* gradc ``fn.kernels.value_and_grad`` called directly with float64 arrays
* gradc ``fn.kernels.value`` (value only) and the gradient/value cost ratio (target <= 3)
* numpy, hand-written value and gradient (vectorised ``np.tanh``, BLAS for the 3-row
  contractions), in two variants: allocating temporaries, and writing into preallocated
  buffers with ``out=``
* numba, a hand-written ``@njit`` loop: one pass, ``math.tanh``, scalar accumulators for the
  value and the 10 gradient sums, fastmath off
* JAX (optional, if ``import jax`` works): ``jax.jit(jax.value_and_grad(loss))`` on CPU in
  float64, called with device arrays made once

Before timing, every implementation's value and gradient are checked against the numpy
baseline (rtol 1e-9).  Then the script measures gradc's cold compile time (fresh
``GRADC_CACHE_DIR`` in a temporary folder, in a subprocess: ``gradc.compile`` + first
``value_and_grad`` call) and the cached compile time (another subprocess on the same cache
folder; interpreter start and ``import gradc`` excluded; target <= 0.1 s), and inspects the
machine code of the ``value_and_grad`` kernel for packed SIMD arithmetic.
"""

import os
import sys

AVX2_FEATURES = (
    "+64bit,+avx,+avx2,+bmi,+bmi2,+cmov,+cx16,+cx8,+f16c,+fma,+fxsr,+lzcnt,"
    "+mmx,+movbe,+popcnt,+sse,+sse2,+sse3,+sse4.1,+sse4.2,+ssse3,+xsave,"
    "-avx512f,-avx512dq,-avx512vl,-avx512bw,-avx512cd"
)
if "--avx2" in sys.argv:
    os.environ.setdefault("NUMBA_CPU_NAME", "haswell")
    os.environ.setdefault("NUMBA_CPU_FEATURES", AVX2_FEATURES)
import _single  # noqa: E402  (one thread per library, one CPU)

import json  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402

import numba  # noqa: E402
import numpy as np  # noqa: E402
import sympy as sp  # noqa: E402
from _revision import gradc_revision  # noqa: E402

import gradc  # noqa: E402

N = 10_000
RTOL = 1e-9




# ------------------------------------------------------------------------------ the model
def model():
    """The sympy loss and its symbols, exactly as in the README."""
    x, y = sp.symbols("x y")
    v = sp.symbols("v1:4")
    b = sp.symbols("b1:4")
    w = sp.symbols("w0:4")
    f = w[0] + sum(w[i + 1] * sp.tanh(v[i] * x + b[i]) for i in range(3))
    loss = (f - y) ** 2
    return loss, [*v, *b, *w], [x, y]


def data(n=N):
    X = np.linspace(-np.pi, np.pi, n)
    Y = np.sin(X)
    params = np.random.default_rng(0).normal(size=10)
    return params, X, Y


def compile_model():
    loss, wrt, dat = model()
    return gradc.compile(loss, wrt=wrt, data=dat)


# ------------------------------------------------------------------------------ baselines
# parameter order everywhere: v1 v2 v3 b1 b2 b3 w0 w1 w2 w3 (the wrt order above)

def numpy_vg_alloc(p, X, Y):
    """Straightforward vectorised numpy; temporaries are allocated on every call."""
    v, b, w0, w = p[0:3], p[3:6], p[6], p[7:10]
    n = X.shape[0]
    T = np.tanh(np.multiply.outer(v, X) + b[:, None])      # (3, n), rows contiguous
    r = w @ T + (w0 - Y)                                    # residual f - y, (n,)
    value = (r @ r) / n
    dr = r * (2.0 / n)                                      # d mean / d f per example
    G = (1.0 - T * T) * (w[:, None] * dr)                   # d mean / d (v_i x + b_i)
    grad = np.concatenate([G @ X, G.sum(axis=1), [dr.sum()], T @ dr])
    return value, grad


def make_numpy_vg_prealloc(n):
    """The same maths writing into buffers allocated once (no page faults per call)."""
    Z = np.empty((3, n))
    G = np.empty((3, n))
    r = np.empty(n)
    grad = np.empty(10)

    def vg(p, X, Y):
        v, b, w0, w = p[0:3], p[3:6], p[6], p[7:10]
        np.multiply.outer(v, X, out=Z)
        np.add(Z, b[:, None], out=Z)
        np.tanh(Z, out=Z)                                   # Z now holds T
        np.dot(w, Z, out=r)
        np.add(r, w0, out=r)
        np.subtract(r, Y, out=r)                            # residual f - y
        value = np.dot(r, r) / n
        np.multiply(r, 2.0 / n, out=r)                      # d mean / d f per example
        np.multiply(Z, Z, out=G)
        np.subtract(1.0, G, out=G)
        np.multiply(G, w[:, None], out=G)
        np.multiply(G, r, out=G)                            # d mean / d (v_i x + b_i)
        np.dot(G, X, out=grad[0:3])
        np.sum(G, axis=1, out=grad[3:6])
        grad[6] = r.sum()
        np.dot(Z, r, out=grad[7:10])
        return value, grad.copy()

    return vg


@numba.njit(cache=False)
def numba_vg(p, X, Y):
    """Hand-written numba: one pass, libm tanh, scalar accumulators, fastmath off."""
    v1, v2, v3 = p[0], p[1], p[2]
    b1, b2, b3 = p[3], p[4], p[5]
    w0, w1, w2, w3 = p[6], p[7], p[8], p[9]
    n = X.shape[0]
    s = 0.0
    gv1 = gv2 = gv3 = gb1 = gb2 = gb3 = gw0 = gw1 = gw2 = gw3 = 0.0
    for i in range(n):
        x = X[i]
        t1 = math.tanh(v1 * x + b1)
        t2 = math.tanh(v2 * x + b2)
        t3 = math.tanh(v3 * x + b3)
        r = w0 + w1 * t1 + w2 * t2 + w3 * t3 - Y[i]
        s += r * r
        d = 2.0 * r
        gw0 += d
        gw1 += d * t1
        gw2 += d * t2
        gw3 += d * t3
        d1 = d * w1 * (1.0 - t1 * t1)
        d2 = d * w2 * (1.0 - t2 * t2)
        d3 = d * w3 * (1.0 - t3 * t3)
        gb1 += d1
        gb2 += d2
        gb3 += d3
        gv1 += d1 * x
        gv2 += d2 * x
        gv3 += d3 * x
    inv = 1.0 / n
    g = np.empty(10)
    g[0] = gv1 * inv
    g[1] = gv2 * inv
    g[2] = gv3 * inv
    g[3] = gb1 * inv
    g[4] = gb2 * inv
    g[5] = gb3 * inv
    g[6] = gw0 * inv
    g[7] = gw1 * inv
    g[8] = gw2 * inv
    g[9] = gw3 * inv
    return s * inv, g


def make_jax(params, X, Y):
    """The JAX row, or None when jax is not importable: (call, result, first, version)."""
    try:
        import jax.numpy as jnp
    except Exception:  # noqa: BLE001 - jax is an optional peer
        return None

    def loss(p, X, Y):
        f = (p[6] + p[7] * jnp.tanh(p[0] * X + p[3]) + p[8] * jnp.tanh(p[1] * X + p[4])
             + p[9] * jnp.tanh(p[2] * X + p[5]))
        return jnp.mean((f - Y) ** 2)

    return _single.jax_case(loss, params, X, Y)


# ------------------------------------------------------------------------------ timing
def time_round_robin(cases, rounds, target_sample=2e-3):
    """Median seconds per call of each case; one sample of every case per round.

    Each sample times ``inner`` back-to-back calls, with ``inner`` chosen so that a sample
    lasts about ``target_sample`` seconds (>= 1).
    """
    inner = {}
    for name, f in cases.items():
        for _ in range(3):                    # warm-up
            f()
        t0 = time.perf_counter()
        f()
        one = time.perf_counter() - t0
        inner[name] = max(1, int(target_sample / max(one, 1e-7)))
    samples = {name: [] for name in cases}
    for _ in range(rounds):
        for name, f in cases.items():
            k = inner[name]
            t0 = time.perf_counter()
            for _ in range(k):
                f()
            samples[name].append((time.perf_counter() - t0) / k)
    return {name: float(np.median(s)) for name, s in samples.items()}, inner


def check_close(name, got, ref):
    val, g = got
    rval, rg = ref
    np.testing.assert_allclose(val, rval, rtol=RTOL, atol=0, err_msg=f"{name}: value")
    np.testing.assert_allclose(np.asarray(g), rg, rtol=RTOL, atol=0, err_msg=f"{name}: gradient")
    err = max(abs(val - rval) / abs(rval), float(np.max(np.abs(np.asarray(g) - rg) / np.abs(rg))))
    return err


# ------------------------------------------------------------------------------ SIMD check
_PACKED = re.compile(
    r"^\s*v(add|sub|mul|div|fmadd\d+|fmsub\d+|fnmadd\d+|fnmsub\d+|max|min|cmp\w*|sqrt)pd\s+"
    r"[^\n]*?%([xyz])mm", re.M)
_SCALAR = re.compile(
    r"^\s*v(add|sub|mul|div|fmadd\d+|fmsub\d+|fnmadd\d+|fnmsub\d+|max|min|sqrt)sd\s", re.M)


def simd_report(dispatcher):
    """Count packed float64 arithmetic by register width in a dispatcher's machine code."""
    sig = dispatcher.signatures[0]
    asm = dispatcher.inspect_asm(sig)
    llvm = dispatcher.inspect_llvm(sig)
    packed = Counter(m.group(2) + "mm" for m in _PACKED.finditer(asm))
    fma = len(re.findall(r"^\s*vf\w*pd\s", asm, re.M))
    return {
        "packed_by_reg": dict(packed),
        "scalar_sd": len(_SCALAR.findall(asm)),
        "fma_pd": fma,
        "gathers": len(re.findall(r"^\s*v(p)?gather", asm, re.M)),
        "calls": sorted(set(re.findall(r"declare [^@\n]*@\"?(\w*(?:tanh|exp|log)\w*)", llvm))),
        "llvm_vector_widths": dict(Counter(re.findall(r"<(\d+) x double>", llvm))),
        "cpu": numba.config.CPU_NAME or _host_cpu(),
    }


def _host_cpu():
    try:
        import llvmlite.binding as ll
        return ll.get_host_cpu_name()
    except Exception:  # noqa: BLE001
        return "?"


# ------------------------------------------------------------------------------ compile time
CHILD_FLAG = "--child-compile"


def child_compile():
    """Run in a subprocess: time gradc.compile + first value_and_grad call; print JSON."""
    loss, wrt, dat = model()
    params, X, Y = data()
    t0 = time.perf_counter()
    fn = gradc.compile(loss, wrt=wrt, data=dat)
    t1 = time.perf_counter()
    fn.value_and_grad(params, X, Y)
    t2 = time.perf_counter()
    print(json.dumps({"compile": t1 - t0, "first_call": t2 - t1, "total": t2 - t0}))


def run_child(cache_dir):
    env = dict(os.environ, GRADC_CACHE_DIR=cache_dir)
    out = subprocess.run([sys.executable, os.path.abspath(__file__), CHILD_FLAG]
                         + [a for a in sys.argv[1:] if a == "--avx2"],
                         env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def compile_times(cold_runs, cached_runs):
    cold, cached = [], []
    with tempfile.TemporaryDirectory(prefix="gradc-bench-") as root:
        for k in range(cold_runs):
            d = os.path.join(root, f"cache{k}")
            cold.append(run_child(d))
            if k == 0:
                for _ in range(cached_runs):
                    cached.append(run_child(d))
    return cold, cached


# ------------------------------------------------------------------------------ main
def fmt_us(s):
    return f"{s * 1e6:9.1f}"


def main():
    quick = "--quick" in sys.argv
    rounds = 60 if quick else 400
    params, X, Y = data()
    print(f"gradc bench_scalar: n = {N}, float64, 1 thread; numpy {np.__version__}, "
          f"numba {numba.__version__}, sympy {sp.__version__}, python {sys.version.split()[0]}")
    print(f"gradc {gradc.__version__} from {gradc_revision()}")
    print(f"numba target CPU: {numba.config.CPU_NAME or _host_cpu()}"
          f"{' (--avx2)' if '--avx2' in sys.argv else ' (host)'}")
    print(_single.describe())

    with tempfile.TemporaryDirectory(prefix="gradc-bench-inproc-") as cache:
        os.environ["GRADC_CACHE_DIR"] = cache
        fn = compile_model()
        kvg, kval = fn.kernels.value_and_grad, fn.kernels.value
        p64 = np.ascontiguousarray(params, dtype=np.float64)

        ref = numpy_vg_alloc(params, X, Y)
        np_pre = make_numpy_vg_prealloc(N)
        impls = {
            "gradc fn.value_and_grad": lambda: fn.value_and_grad(params, X, Y),
            "gradc kernels.value_and_grad": lambda: kvg(p64, X, Y),
            "numpy (allocating)": lambda: numpy_vg_alloc(params, X, Y),
            "numpy (preallocated out=)": lambda: np_pre(params, X, Y),
            "numba loop (math.tanh)": lambda: numba_vg(p64, X, Y),
        }
        # float32 (issue 14 item 5): the same model compiled with dtype="float32"
        loss, wrt, dat = model()
        fn32 = gradc.compile(loss, wrt=wrt, data=dat, dtype="float32")
        p32, X32, Y32 = (np.asarray(a, dtype=np.float32) for a in (params, X, Y))
        kvg32 = fn32.kernels.value_and_grad
        f32_rows = {"gradc float32 kernel": lambda: kvg32(p32, X32, Y32),
                    "gradc float32 method": lambda: fn32.value_and_grad(p32, X32, Y32)}
        jax_row = None if "--no-jax" in sys.argv else make_jax(params, X, Y)
        if jax_row is not None:
            jcall, jresult, jfirst, jver = jax_row
            impls["jax.jit(value_and_grad)"] = jcall

        # -- agreement before timing ---------------------------------------------------
        print("\nagreement with the numpy baseline (rtol 1e-9):")
        for name, f in impls.items():
            got = jresult() if name.startswith("jax") else f()
            err = check_close(name, got, ref)
            print(f"  {name:32s} max rel err {err:.1e}  ok")
        for name, f in f32_rows.items():  # float32 precision against the float64 baseline
            v32, g32 = f()
            assert abs(v32 - ref[0]) <= 1e-5 * abs(ref[0]), name
            assert np.abs(np.asarray(g32) - ref[1]).max() <= 1e-4 * np.abs(ref[1]).max(), name
            print(f"  {name:32s} within float32 precision (1e-5, 1e-4)  ok")
        vref = float(kval(p64, X, Y))
        np.testing.assert_allclose(vref, ref[0], rtol=RTOL, atol=0)
        np.testing.assert_allclose(fn.value(params, X, Y), ref[0], rtol=RTOL, atol=0)

        # -- per-call timing -----------------------------------------------------------
        cases = dict(impls)
        cases["gradc kernels.value (value only)"] = lambda: kval(p64, X, Y)
        cases["gradc fn.value (value only)"] = lambda: fn.value(params, X, Y)
        cases.update(f32_rows)
        med, inner = time_round_robin(cases, rounds)
        simd = simd_report(kvg)
        simd_val = simd_report(kval)

    g_kernel = med["gradc kernels.value_and_grad"]
    g_method = med["gradc fn.value_and_grad"]
    print(f"\nper-call medians ({rounds} round-robin samples; calls per sample in brackets)")
    print(f"  {'implementation':36s} {'us/call':>9s} {'ns/example':>10s}"
          f" {'x kernel':>9s} {'x method':>9s}")
    for name, s in med.items():
        print(f"  {name + f' [{inner[name]}]':36s} {fmt_us(s)} {s / N * 1e9:10.2f}"
              f" {s / g_kernel:9.2f} {s / g_method:9.2f}")
    print("  (x kernel / x method: the row's time divided by gradc's kernel / method time;"
          " > 1 means gradc is faster)")

    best_np = min(med["numpy (allocating)"], med["numpy (preallocated out=)"])
    nb = med["numba loop (math.tanh)"]
    ratio_gv = g_kernel / med["gradc kernels.value (value only)"]
    print("\ntargets")
    print(f"  gradient/value cost (kernels)        {ratio_gv:5.2f}   target <= 3      "
          f"{'MET' if ratio_gv <= 3 else 'NOT MET'}")
    print(f"  gradc kernel / numba loop            {g_kernel / nb:5.2f}   target <= 1.1    "
          f"{'MET' if g_kernel / nb <= 1.1 else 'NOT MET'}  (speed-up {nb / g_kernel:.2f}x)")
    print(f"  gradc method / numba loop            {g_method / nb:5.2f}   target <= 1.1    "
          f"{'MET' if g_method / nb <= 1.1 else 'NOT MET'}")
    print(f"  speed-up over best numpy (kernel)    {best_np / g_kernel:5.2f}x")
    if jax_row is not None:
        jx = med["jax.jit(value_and_grad)"]
        print(f"  speed-up over JAX (kernel)           {jx / g_kernel:5.2f}x  aim >= 2x      "
              f"{'MET' if jx / g_kernel >= 2 else 'NOT MET'}")
        print(f"  speed-up over JAX (method)           {jx / g_method:5.2f}x  aim >= 2x      "
              f"{'MET' if jx / g_method >= 2 else 'NOT MET'}")
        print(f"  (jax {jver}; its first call, trace + XLA compile, took {jfirst:.3f} s)")
    print(f"  wrapper overhead (method - kernel)   {(g_method - g_kernel) * 1e6:5.1f} us/call")
    r32 = med["gradc float32 kernel"] / g_kernel
    print(f"  float32 / float64 (kernels)          {r32:5.2f}   target <= 0.6    "
          f"{'MET' if r32 <= 0.6 else 'NOT MET'}  (issue 14 item 5)")

    print("\nvectorisation of gradc's kernels (packed float64 arithmetic in the machine code)")
    for label, r in (("value_and_grad", simd), ("value", simd_val)):
        wide = r["packed_by_reg"].get("ymm", 0) + r["packed_by_reg"].get("zmm", 0)
        print(f"  {label:15s} cpu={r['cpu']}: packed {r['packed_by_reg']}, scalar sd "
              f"{r['scalar_sd']}, FMA pd {r['fma_pd']}, gathers {r['gathers']}, LLVM vector "
              f"widths {r['llvm_vector_widths']}, libm calls {r['calls'] or 'none'} -> "
              f"{'VECTORISED' if wide >= 20 else 'NOT vectorised'}")

    # -- compile times (subprocesses) --------------------------------------------------
    cold_runs, cached_runs = (1, 2) if quick else (3, 5)
    cold, cached = compile_times(cold_runs, cached_runs)

    def med_of(rows, key):
        return float(np.median([r[key] for r in rows]))

    print(f"\ncompile time in a fresh subprocess (medians of {cold_runs} cold, {cached_runs} "
          "cached runs; interpreter start and imports excluded)")
    print(f"  {'':8s} {'gradc.compile':>14s} {'first call':>11s} {'total':>9s}")
    for label, rows in (("cold", cold), ("cached", cached)):
        print(f"  {label:8s} {med_of(rows, 'compile'):13.3f}s {med_of(rows, 'first_call'):10.3f}s"
              f" {med_of(rows, 'total'):8.3f}s   (runs: "
              + ", ".join(f"{r['total']:.3f}" for r in rows) + ")")
    tc = med_of(cached, "total")
    print(f"  cached total target <= 0.1 s: {'MET' if tc <= 0.1 else 'NOT MET'} ({tc:.3f} s)")


if __name__ == "__main__":
    if CHILD_FLAG in sys.argv:
        child_compile()
    else:
        main()
