"""Benchmark gradc.codegen.vmath against libm (math.*) in numba loops and numpy ufuncs.

Usage::

    python benchmarks/bench_vmath.py            # host CPU target
    python benchmarks/bench_vmath.py --avx2     # compile for a Haswell-class AVX2+FMA target
    python benchmarks/bench_vmath.py --quick    # fewer repetitions
    python benchmarks/bench_vmath.py --jax      # also exp and tanh against JAX: speed, max ulp

Prints, single-threaded, the median ns/element at n = 10_000 and n = 1_000_000
for each function as

* ``vmath``  : ``for i in range(n): out[i] = vmath.f(x[i])`` in an njit loop (inlined at
  numba's IR level)
* ``call``   : the same loop calling ``vmath.f_s``, the out-of-line function gradc's kernels
  call (numba types it once; LLVM inlines it when the loop is linked)
* ``math``   : the same loop calling ``math.f`` (one scalar libm call each)
* ``numpy``  : the numpy ufunc writing into a preallocated ``out``

and the speed-up ratios math/vmath and numpy/vmath.  It also reports the SIMD
width LLVM chose for each vmath loop (``<N x double>`` in the IR) and whether
ymm/zmm registers appear in the assembly.  Last, ``exp`` over rows of L values with L
a literal constant against ``_rt.opaque(L)`` (the trip count gradc's array kernels use
for rows of 9 to 15 values).  Then the float32 run forms (``_vm.tanh_v`` on float32
arrays: ``vmath.tanh32`` ...) against the float64 ones and numpy's float32 ufuncs, with
their worst error in float32 ulps.
"""

import os
import sys

if "--avx2" in sys.argv:
    os.environ.setdefault("NUMBA_CPU_NAME", "haswell")
    os.environ.setdefault(
        "NUMBA_CPU_FEATURES",
        "+64bit,+avx,+avx2,+bmi,+bmi2,+cmov,+cx16,+cx8,+f16c,+fma,+fxsr,+lzcnt,"
        "+mmx,+movbe,+popcnt,+sse,+sse2,+sse3,+sse4.1,+sse4.2,+ssse3,+xsave,"
        "-avx512f,-avx512dq,-avx512vl,-avx512bw,-avx512cd")
for _var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
             "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import math  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import numba  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from gradc.codegen import runtime as _rt  # noqa: E402
from gradc.codegen import vmath  # noqa: E402


# ---------------------------------------------------------------- vmath loops
@numba.njit
def v_exp(x, out):
    for i in range(x.shape[0]):
        out[i] = vmath.exp(x[i])


@numba.njit
def v_tanh(x, out):
    for i in range(x.shape[0]):
        out[i] = vmath.tanh(x[i])


@numba.njit
def v_log(x, out):
    for i in range(x.shape[0]):
        out[i] = vmath.log(x[i])


@numba.njit
def v_sigmoid(x, out):
    for i in range(x.shape[0]):
        out[i] = vmath.sigmoid(x[i])


@numba.njit
def v_expm1(x, out):
    for i in range(x.shape[0]):
        out[i] = vmath.expm1(x[i])


@numba.njit
def v_log1p(x, out):
    for i in range(x.shape[0]):
        out[i] = vmath.log1p(x[i])


# ------------------------------------------- out-of-line calls (what kernels emit)
_CALL_SRC = '''
@numba.njit
def s_{f}(x, out):
    for i in range(x.shape[0]):
        out[i] = vmath.{f}_s(x[i])
'''


def call_loop(name):
    ns = {"numba": numba, "vmath": vmath}
    exec(_CALL_SRC.format(f=name), ns)
    return ns[f"s_{name}"]


# ----------------------------------------------------------------- libm loops
@numba.njit
def m_exp(x, out):
    for i in range(x.shape[0]):
        out[i] = math.exp(x[i])


@numba.njit
def m_tanh(x, out):
    for i in range(x.shape[0]):
        out[i] = math.tanh(x[i])


@numba.njit
def m_log(x, out):
    for i in range(x.shape[0]):
        out[i] = math.log(x[i])


@numba.njit
def m_sigmoid(x, out):
    for i in range(x.shape[0]):
        xi = x[i]
        if xi >= 0.0:
            out[i] = 1.0 / (1.0 + math.exp(-xi))
        else:
            e = math.exp(xi)
            out[i] = e / (1.0 + e)


@numba.njit
def m_expm1(x, out):
    for i in range(x.shape[0]):
        out[i] = math.expm1(x[i])


@numba.njit
def m_log1p(x, out):
    for i in range(x.shape[0]):
        out[i] = math.log1p(x[i])


# ---------------------------------------------------------------- numpy
def np_sigmoid(x, out):
    np.negative(x, out=out)
    np.exp(out, out=out)
    np.add(out, 1.0, out=out)
    np.reciprocal(out, out=out)


CASES = [
    # name, vmath loop, math loop, numpy, input generator
    ("exp", v_exp, m_exp, lambda x, o: np.exp(x, out=o),
     lambda rng, n: rng.uniform(-50.0, 50.0, n)),
    ("tanh", v_tanh, m_tanh, lambda x, o: np.tanh(x, out=o),
     lambda rng, n: rng.uniform(-5.0, 5.0, n)),
    ("log", v_log, m_log, lambda x, o: np.log(x, out=o),
     lambda rng, n: np.exp(rng.uniform(-23.0, 23.0, n))),
    ("sigmoid", v_sigmoid, m_sigmoid, np_sigmoid,
     lambda rng, n: rng.uniform(-20.0, 20.0, n)),
    ("expm1", v_expm1, m_expm1, lambda x, o: np.expm1(x, out=o),
     lambda rng, n: rng.uniform(-5.0, 5.0, n)),
    ("log1p", v_log1p, m_log1p, lambda x, o: np.log1p(x, out=o),
     lambda rng, n: np.exp(rng.uniform(-23.0, 10.0, n)) - 0.5),
]


# Short rows: exp over an (n, L) array with the row length L as a literal constant (what a
# kernel's loop over 10 classes would say) or hidden from LLVM by gradc's _rt.opaque (what
# gradc's array kernels emit for 8 < L < 16).
_ROW_SRC = """
@numba.njit(error_model="numpy")
def rows_const_{L}(x, out):
    for i in range(x.shape[0]):
        for j in range({L}):
            out[i, j] = vmath.exp(x[i, j])


@numba.njit(error_model="numpy")
def rows_opaque_{L}(x, out):
    for i in range(x.shape[0]):
        for j in range(_rt.opaque({L})):
            out[i, j] = vmath.exp(x[i, j])
"""
ROW_LENGTHS = (4, 10, 12, 16, 64)


def row_loops(length):
    ns = {"numba": numba, "vmath": vmath, "_rt": _rt}
    exec(_ROW_SRC.format(L=length), ns)
    return ns[f"rows_const_{length}"], ns[f"rows_opaque_{length}"]


def median_ns_per_element(fn, x, out, samples, min_time=2e-3):
    fn(x, out)                                   # warm up / compile
    reps = 1
    while True:                                  # calls per sample so one sample >= min_time
        t = time.perf_counter()
        for _ in range(reps):
            fn(x, out)
        dt = time.perf_counter() - t
        if dt >= min_time:
            break
        reps *= 2
    times = []
    for _ in range(samples):
        t = time.perf_counter()
        for _ in range(reps):
            fn(x, out)
        times.append((time.perf_counter() - t) / reps)
    return float(np.median(times)) / x.size * 1e9


def simd_report(loop):
    sig = loop.signatures[0]
    llvm = loop.inspect_llvm(sig)
    asm = loop.inspect_asm(sig)
    widths = sorted({int(w) for w in re.findall(r"<(\d+) x double>", llvm)})
    regs = sorted(set(re.findall(r"%([xyz])mm\d+", asm)))
    return (f"<{max(widths)} x double>" if widths else "scalar"), "/".join(r + "mm" for r in regs)


def main():
    quick = "--quick" in sys.argv
    samples = 5 if quick else 15
    try:
        import llvmlite.binding as ll
        feats = ll.get_host_cpu_features()
        host = f"{ll.get_host_cpu_name()} avx2={feats.get('avx2', False)} avx512f={feats.get('avx512f', False)}"
    except Exception:                             # pragma: no cover
        host = "?"
    print(f"numba {numba.__version__}, numpy {np.__version__}, host {host}, "
          f"NUMBA_CPU_NAME={os.environ.get('NUMBA_CPU_NAME', '(host)')}, "
          f"NUMBA_NUM_THREADS={os.environ['NUMBA_NUM_THREADS']}")
    rng = np.random.default_rng(0)
    hdr = (f"{'func':8s} {'n':>8s} {'vmath':>8s} {'call':>8s} {'math':>8s} {'numpy':>8s}   "
           f"{'call/vmath':>10s} {'math/vmath':>10s} {'numpy/vmath':>11s}  simd (vmath; call)")
    print("median ns/element, single thread")
    print(hdr)
    print("-" * len(hdr))
    for name, vloop, mloop, npf, gen in CASES:
        sloop = call_loop(name)
        for n in (10_000, 1_000_000):
            x = gen(rng, n)
            out = np.empty_like(x)
            tv = median_ns_per_element(vloop, x, out, samples)
            ts = median_ns_per_element(sloop, x, out, samples)
            tm = median_ns_per_element(mloop, x, out, samples)
            tn = median_ns_per_element(npf, x, out, samples)
            width, regs = simd_report(vloop)
            swidth, sregs = simd_report(sloop)
            print(f"{name:8s} {n:8d} {tv:8.2f} {ts:8.2f} {tm:8.2f} {tn:8.2f}   {ts / tv:10.2f} "
                  f"{tm / tv:10.1f} {tn / tv:11.1f}  {width} {regs}; {swidth} {sregs}")
    print("\nexp over rows of L values, about 200,000 elements, ns/element: the row length as a "
          "constant against _rt.opaque(L)")
    for length in ROW_LENGTHS:
        x = rng.uniform(-3.0, 0.0, (200_000 // length, length))
        out = np.empty_like(x)
        const, opaque = row_loops(length)
        tc = median_ns_per_element(const, x, out, samples)
        to = median_ns_per_element(opaque, x, out, samples)
        print(f"  L = {length:3d}   constant {tc:6.2f}   opaque {to:6.2f}   constant/opaque {tc / to:5.2f}")
    float32_runs(rng, samples)
    if "--jax" in sys.argv:
        against_jax(rng, samples)


def float32_runs(rng, samples):
    """The out-of-line run forms gradc's kernels call (``_vm.<f>_v``) on float32 arrays
    (the float32 functions, ``vmath.tanh32`` ...) against float64 arrays (the float64
    functions) and numpy's float32 ufuncs, ns per value, with the worst error in float32
    ulps against a float64 reference."""
    print("\nfloat32 runs (_vm.<f>_v, what float32 kernels call), ns/element, and the worst "
          "error in float32 ulps")
    print(f"  {'func':8s} {'n':>9s} {'float32':>8s} {'float64':>8s} {'numpy32':>8s}   "
          f"{'f32/f64':>7s}  max ulp")
    refs = {"exp": np.exp, "log": np.log, "tanh": np.tanh,
            "sigmoid": lambda v: 1.0 / (1.0 + np.exp(-v))}
    np32 = {"exp": np.exp, "log": np.log, "tanh": np.tanh,
            "sigmoid": lambda v, out: np.divide(1, 1 + np.exp(-v), out=out)}
    for name in ("exp", "log", "tanh", "sigmoid"):
        run = getattr(vmath, name + "_v")
        for n in (10_000, 1_000_000):
            x64 = rng.uniform(0.01, 10.0, n) if name == "log" else rng.uniform(-10.0, 10.0, n)
            x32 = x64.astype(np.float32)
            o32, o64 = np.empty_like(x32), np.empty_like(x64)
            t32 = median_ns_per_element(lambda x, o: run(x, 0, o, 0, x.size), x32, o32, samples)
            t64 = median_ns_per_element(lambda x, o: run(x, 0, o, 0, x.size), x64, o64, samples)
            tnp = median_ns_per_element(lambda x, o: np32[name](x, out=o), x32, np.empty_like(x32),
                                        samples)
            ref = refs[name](x32.astype(np.float64))
            ulp = float(np.max(np.abs(o32 - ref) / np.spacing(np.abs(ref.astype(np.float32)))))
            print(f"  {name:8s} {n:9,d} {t32:8.2f} {t64:8.2f} {tnp:8.2f}   {t32 / t64:7.2f}  {ulp:.2f}")


def max_ulp(y, x, ref_fn):
    """Largest |y - f(x)| in float64 ulps of f(x), f from ``ref_fn`` in long double."""
    ref = ref_fn(x.astype(np.longdouble))
    _, e = np.frexp(ref)
    ulp = np.ldexp(np.ones(ref.shape, ref.dtype), e.astype(np.int64) - 53)
    err = (np.abs(y.astype(np.longdouble) - ref) / ulp).astype(np.float64)
    i = int(np.argmax(err))
    return err[i], x[i]


def against_jax(rng, samples):
    """Speed (n = 1,000,000) and worst error (long-double reference) of exp and tanh:
    gradc's vmath, numpy and JAX's jitted float64 functions (``--jax``)."""
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
    print("\nagainst JAX (jit, float64): ns/element at n = 1,000,000; max error in ulp over "
          f"400,000 points (long double reference{'' if EXTENDED else ': NOT extended here'})")
    for name, vloop, npf, jf, ref, lo, hi in [
            ("exp", v_exp, np.exp, jnp.exp, np.exp, -700.0, 700.0),
            ("tanh", v_tanh, np.tanh, jnp.tanh, np.tanh, -20.0, 20.0)]:
        x = rng.uniform(lo, hi, 1_000_000)
        out = np.empty_like(x)
        jit = jax.jit(jf)

        def run_jax(x, out, jit=jit):
            jax.block_until_ready(jit(x))

        xj = jnp.asarray(x)
        tv = median_ns_per_element(vloop, x, out, samples)
        tn = median_ns_per_element(lambda x, o, npf=npf: npf(x, out=o), x, out, samples)
        tj = median_ns_per_element(lambda x, o: run_jax(xj, o), x, out, samples)
        pts = np.concatenate([rng.uniform(lo, hi, 200_000), rng.uniform(-1.0, 1.0, 200_000)])
        vout = np.empty_like(pts)
        vloop(pts, vout)
        errs = [max_ulp(vout, pts, ref), max_ulp(npf(pts), pts, ref),
                max_ulp(np.asarray(jit(jnp.asarray(pts))), pts, ref)]
        print(f"  {name:5s} ns: vmath {tv:5.2f}  numpy {tn:5.2f}  JAX {tj:5.2f}   max ulp: "
              + "  ".join(f"{who} {e:5.2f} (x={x0:.6g})"
                          for who, (e, x0) in zip(("vmath", "numpy", "JAX"), errs)))


EXTENDED = np.finfo(np.longdouble).nmant >= 63


if __name__ == "__main__":
    main()
