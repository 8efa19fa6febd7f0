"""Malformed calls of the public API (issue 13): whatever Hypothesis passes for params,
tangents, data and consts, every call either returns or raises a :class:`gradc.GradcError`;
never another exception, a crash (numba kernels read arrays unchecked: a wrong shape that
got through would segfault or read garbage) or a hang.  NaN and inf in values are a
documented result (they propagate), not an error."""

import os

import numpy as np
import pytest
import sympy as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gradc
from gradc import nn

x, y, w0, w1, c = sp.symbols("x y w0 w1 c")
W, v = sp.MatrixSymbol("W", 2, 3), sp.MatrixSymbol("v", 3, 1)
T = sp.IndexedBase("T", shape=(4, 2))
k = sp.Symbol("k", integer=True)
ci = sp.Symbol("ci", integer=True)


@pytest.fixture(scope="module")
def functions():
    """Three kinds of kernel, compiled once (numba): a scalar model, a matrix model, and
    an indexed model reading a parameter table at a data index."""
    return {
        "scalar": gradc.compile((w0 * sp.tanh(w1 * x) - y) ** 2 + c * w0 ** 2,
                                wrt=[w0, w1], data=[x, y], consts=[c]),
        "matrix": gradc.compile(nn.sum(nn.tanh(W * v)), wrt=[W], data=[v]),
        "gather": gradc.compile((T[ci, 0] * x - T[ci, 1]) ** 2, wrt=[T], data=[ci, x]),
    }


def _good(name, n):
    rng = np.random.default_rng(n)
    if name == "scalar":
        return [0.3, -0.2], [rng.normal(size=n), rng.normal(size=n), 0.1]
    if name == "matrix":
        return [rng.normal(size=(2, 3))], [rng.normal(size=(n, 3))]
    return [rng.normal(size=(4, 2))], [rng.integers(0, 4, size=n).astype(float),
                                       rng.normal(size=n)]


# a bad value: wrong types, shapes, lengths, dtypes, non-finite, empty
_junk = st.one_of(
    st.none(), st.text(max_size=3), st.booleans(), st.integers(-5, 5),
    st.floats(allow_nan=True, allow_infinity=True), st.complex_numbers(max_magnitude=3),
    st.lists(st.floats(-3, 3), max_size=5),
    st.lists(st.lists(st.floats(-3, 3), min_size=1, max_size=3), max_size=3),
    st.dictionaries(st.text(max_size=2), st.floats(-1, 1), max_size=2),
    st.tuples(st.integers(0, 3), st.integers(0, 4)).map(lambda s: np.ones(s)),
    st.sampled_from([np.array([]), np.zeros((0, 3)), np.full(3, np.nan), np.full((3, 3), np.inf),
                     np.array(["a", "b"]), np.array([1 + 2j, 3j]), np.ones((2, 3, 4)),
                     np.ones(5, dtype=np.int8), np.ones((5, 3), dtype=np.float32),
                     np.array([0.5, 7.0, -1.0, 2.0, 1.0]), np.array([object(), 1], dtype=object)]),
)

METHODS = ["value", "grad", "value_and_grad", "jvp", "hvp", "hessian", "jacobian"]


def _call(fn, method, params, args, tangent):
    if method in ("jvp", "hvp"):
        return getattr(fn, method)(params, tangent, *args)
    return getattr(fn, method)(params, *args)


@settings(max_examples=int(os.environ.get("GRADC_MALFORMED_EXAMPLES", 150)), deadline=None, suppress_health_check=[
    HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(["scalar", "matrix", "gather"]), method=st.sampled_from(METHODS),
       n=st.integers(1, 6), where=st.integers(0, 3), slot=st.integers(0, 3), junk=_junk,
       drop=st.booleans())
def test_malformed_calls_raise_gradc_errors(functions, name, method, n, where, slot, junk, drop):
    fn = functions[name]
    params, args = _good(name, n)
    tangent = list(params)
    if where == 0:  # the whole params
        params = junk
    elif where == 1:  # one entry of params
        params = list(params)
        params[slot % len(params)] = junk
    elif where == 2:  # one data or const argument
        args = list(args)
        args[slot % len(args)] = junk
    else:  # the tangent
        tangent = junk
    if drop and where == 2:
        args = args[:-1]  # and one argument short
    try:
        out = _call(fn, method, params, args, tangent)
    except gradc.GradcError:
        return
    # it returned: the call was well formed after all (numbers that numpy converts), and
    # the result has the function's shapes
    if method == "value":
        assert np.shape(out) in ((), (n,)) or name != "scalar" and np.ndim(out) <= 1


def test_a_good_call_of_each_kind_returns(functions):
    for name, fn in functions.items():
        params, args = _good(name, 5)
        for method in METHODS:
            _call(fn, method, params, args, list(params))


def test_complex_values_are_refused_not_cast(functions):
    """numpy would drop the imaginary part with only a warning: a silent wrong answer."""
    for name, fn in functions.items():
        params, args = _good(name, 3)
        bad = [np.asarray(params[0]) + 1j] + list(params[1:])
        with pytest.raises(gradc.GradcError, match="real"):
            fn.value(bad, *args)
        with pytest.raises(gradc.GradcError, match="real"):
            fn.jvp(params, bad, *args)
