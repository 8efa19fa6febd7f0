"""Re-rolling: families of like terms become loops over packed parameters, with the same
values and derivatives as the sympy oracle, and code that does not grow with the family."""

import re

import numpy as np
import pytest
import sympy as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gradc
from gradc.testing import check_against_sympy, check_grads, sympy_oracle
from test_maths import UNARY, expressions

x, y, x2 = sp.symbols("x y x2")


def rolled(fn):
    """True when the kernels read runs of the parameter vector (a re-rolled family): a
    slice, an index table, or the whole vector element by element."""
    return bool(re.search(r"params\[\d+:\d+|\b_IX\d|\bparams\[t\]", fn.source))


def units(k):
    v, b, w = sp.symbols(f"v1:{k + 1}"), sp.symbols(f"b1:{k + 1}"), sp.symbols(f"w0:{k + 1}")
    f = w[0] + sum(w[i + 1] * sp.tanh(v[i] * x + b[i]) for i in range(k))
    return (f - y) ** 2, [*v, *b, *w]


K = 10
V, B, W = sp.symbols(f"v1:{K + 1}"), sp.symbols(f"b1:{K + 1}"), sp.symbols(f"w0:{K + 1}")
Q = sp.symbols("q0:30")
C = np.random.default_rng(3).normal(size=12)

CASES = {
    # name: (expr, wrt, data)
    "units": (*units(K), [x, y]),
    "units, wrt permuted (gather tables)": (units(K)[0], list(reversed(units(K)[1])), [x, y]),
    "chain without data": (sum(100 * (Q[i + 1] - Q[i] ** 2) ** 2 + (1 - Q[i]) ** 2
                               for i in range(29)), list(Q), []),
    "varying coefficients": (sum(float(C[i]) * sp.tanh(V[i % K] * x + float(C[-i]))
                                 for i in range(12)), list(V), [x]),
    "a parameter shared by the family": (sum(W[0] * sp.exp(-V[i] * x ** 2) for i in range(K)),
                                         [W[0], *V], [x]),
    "a parameter twice in a term": (sum(V[i] * x + V[i] ** 2 + sp.sin(V[i] * B[i])
                                        for i in range(K)), [*V, *B], [x]),
    "alternating signs": (sum((-1) ** i * V[i] * sp.exp(x * B[i]) for i in range(K)),
                          [*V, *B], [x]),
    "two inputs": (sum(W[i + 1] * sp.tanh(V[i] * x + B[i] * x2 + W[0]) for i in range(K)) + y,
                   [*V, *B, *W], [x, x2, y]),
    # one family reads the whole parameter vector (a full slice: a dense cotangent)
    "a family over all parameters, and an L2 term": (sum(V[i] * x for i in range(K))
                                                     + sum(V[i] ** 2 for i in range(K)),
                                                     list(V), [x]),
    "a family over all parameters, and one of them again": (
        sum(V[i] * sp.exp(V[i] * x) for i in range(K)) + V[0] * x ** 2, list(V), [x]),
    "two families and a log": (sum(V[i] * sp.log(1 + (x - B[i]) ** 2) for i in range(K))
                               + sum(sp.Abs(V[i] - B[i]) for i in range(K)), [*V, *B], [x]),
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("reduce", ["mean", None])
def test_families_against_sympy(name, reduce, rng):
    expr, wrt, data = CASES[name]
    fn = gradc.compile(expr, wrt=wrt, data=data, reduce=reduce, jit=False)
    assert rolled(fn), "the family was not re-rolled"
    p = rng.uniform(0.3, 1.2, len(wrt))
    args = [rng.uniform(-1.5, 1.5, 23) for _ in data]
    check_against_sympy(fn, p, *args, rtol=1e-10)
    if reduce is not None or not data:
        check_grads(fn, p, *args)


def test_code_does_not_grow_with_the_family():
    """10 and 40 units: the same kernels but for the sizes (compile time follows)."""
    def body_lines(k):
        src = gradc.compile(*units(k)[:1], wrt=units(k)[1], data=[x, y], jit=False).source
        return src.count("\n")

    assert body_lines(40) == body_lines(10)


def test_small_families_are_written_out():
    from gradc.reroll import MIN_FAMILY

    expr, wrt = units(MIN_FAMILY - 1)
    assert not rolled(gradc.compile(expr, wrt=wrt, data=[x, y], jit=False))
    expr, wrt = units(MIN_FAMILY)
    assert rolled(gradc.compile(expr, wrt=wrt, data=[x, y], jit=False))


@pytest.fixture(scope="module")
def jitted():
    expr, wrt = units(K)
    return {r: gradc.compile(expr, wrt=wrt, data=[x, y], reduce=r) for r in ("mean", None)}


def test_jit_matches_python(jitted, rng):
    expr, wrt = units(K)
    X = rng.uniform(-3, 3, 1001)  # not a multiple of the chunk
    Y = np.sin(X)
    p = rng.normal(size=len(wrt))
    for reduce, fj in jitted.items():
        fp = gradc.compile(expr, wrt=wrt, data=[x, y], reduce=reduce, jit=False)
        for method in ("value", "value_and_grad", "grad"):
            got, want = getattr(fj, method)(p, X, Y), getattr(fp, method)(p, X, Y)
            for g, w in zip(got if isinstance(got, tuple) else [got],
                            want if isinstance(want, tuple) else [want]):
                np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-14)
        t = rng.normal(size=len(wrt))
        np.testing.assert_allclose(fj.jvp(p, t, X, Y)[1], fp.jvp(p, t, X, Y)[1],
                                   rtol=1e-12, atol=1e-14)
    check_against_sympy(jitted["mean"], p, X[:50], Y[:50], rtol=1e-10)


def test_parallel_rolled_kernels_are_deterministic(jitted, rng):
    expr, wrt = units(K)
    par = gradc.compile(expr, wrt=wrt, data=[x, y], parallel=True)
    X = rng.uniform(-3, 3, 5000)
    p = rng.normal(size=len(wrt))
    v, g = par.value_and_grad(p, X, np.sin(X))
    v0, g0 = jitted["mean"].value_and_grad(p, X, np.sin(X))
    assert v == v0
    np.testing.assert_array_equal(g, g0)


# ----------------------------------------------------------------------------------------
# Wide and deep random expressions


@st.composite
def wide_sums(draw):
    """A random template repeated over T terms with per-term parameters (two slots), a
    shared parameter and random coefficients, plus a few unrelated terms."""
    template = draw(expressions)
    T = draw(st.integers(40, 160))
    a, bb = sp.symbols(f"a0:{T}"), sp.symbols(f"bb0:{T}")
    coef = draw(st.lists(st.sampled_from([1, -1, 2, sp.Rational(1, 3), 0.5]),
                         min_size=T, max_size=T))
    q0, q1, q2 = sp.symbols("q0:3")
    terms = [c * template.xreplace({q0: a[t], q1: bb[t]}) for t, c in enumerate(coef)]
    extra = draw(st.lists(expressions, max_size=3))
    expr = sp.Add(*terms, *extra)
    wrt = [s for s in (*a, *bb, q0, q1, q2) if s in expr.free_symbols]
    return expr, wrt


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(wide_sums(), st.integers(0, 2**31 - 1))
def test_wide_random_sums_against_sympy(case, seed):
    expr, wrt = case
    if not wrt:
        return
    fn = gradc.compile(expr, wrt=wrt, data=[x, y], reduce="sum", jit=False)
    rng = np.random.default_rng(seed)
    p = rng.uniform(-1.5, 1.5, len(wrt))
    X, Y = rng.uniform(-2, 2, 4), rng.uniform(-2, 2, 4)
    v, g = fn.value_and_grad(p, X, Y)
    rv, rg = sympy_oracle(expr, wrt, [x, y], reduce="sum")(p, X, Y)
    finite = np.abs(rg[np.isfinite(rg)])
    scale = 1.0 + (finite.max() if finite.size else 0.0)
    np.testing.assert_allclose(v, rv, rtol=1e-9, atol=1e-10 * scale, equal_nan=True)
    np.testing.assert_allclose(g, rg, rtol=1e-8, atol=1e-10 * scale, equal_nan=True)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(range(10)), min_size=60, max_size=300),
       st.integers(0, 2**31 - 1))
def test_deep_random_chains_against_sympy(ops, seed):
    """f <- op(f) + q, hundreds deep: no recursion anywhere (lowering, AD, codegen, the
    node-wise oracle past its depth limit).  The smooth operators only (UNARY[:10]):
    sympy itself cannot build Piecewise, Abs and Max hundreds deep in reasonable time."""
    q = sp.Symbol("q0")
    f = q * x
    with sp.evaluate(False):  # sympy's own assumption queries are quadratic in the depth
        for k in ops:
            f = UNARY[k](f) / 2 + q  # the halving keeps the values in range
    fn = gradc.compile(f, wrt=[q], data=[x], reduce=None, jit=False)
    rng = np.random.default_rng(seed)
    p, X = rng.uniform(-1, 1, 1), rng.uniform(-1, 1, 3)
    v, g = fn.value_and_grad(p, X)
    rv, rg = sympy_oracle(f, [q], [x], reduce=None)(p, X)
    np.testing.assert_allclose(v, rv, rtol=1e-9, atol=1e-12, equal_nan=True)
    np.testing.assert_allclose(g, rg, rtol=1e-7, atol=1e-10, equal_nan=True)


def test_per_example_gradient_of_a_family_over_all_parameters_jit(rng):
    w = sp.symbols("w0:6")
    expr = sum(w[i] * sp.tanh(w[i] * x) for i in range(6)) + sum(w[i] ** 2 for i in range(6))
    fn = gradc.compile(expr, wrt=list(w), data=[x], reduce=None)
    assert rolled(fn)
    p, X = rng.uniform(0.3, 1.2, 6), rng.uniform(-1.5, 1.5, 300)
    v, g = fn.value_and_grad(p, X)
    ev, eg = sympy_oracle(expr, list(w), [x], reduce=None)(p, X)
    assert g.shape == (300, 6)
    np.testing.assert_allclose(v, ev, rtol=1e-12)
    np.testing.assert_allclose(g, eg, rtol=1e-12)
