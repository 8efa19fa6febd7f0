"""Bad input gets a GradcError naming the offending symbol, argument, shape or class."""

import numpy as np
import pytest
import sympy as sp

import gradc
from gradc import GradcError

x, y, w, b = sp.symbols("x y w b")


@pytest.fixture(scope="module")
def fn():
    return gradc.compile((w * x + b - y) ** 2, wrt=[w, b], data=[x, y], jit=False)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(expr=w * x * y, wrt=[w], data=[x]), "free symbol y is in neither"),
        (dict(expr=w * x, wrt=[w, x], data=[x]), "symbol x appears in both wrt and data"),
        (dict(expr=w * x, wrt=[w, w], data=[x]), "symbol w appears in wrt twice"),
        (dict(expr=w * x, wrt=[], data=[x, w]), "wrt is empty"),
        (dict(expr=w * x, wrt=[w * 2], data=[x]), "wrt entries must be sympy Symbols.*Mul"),
        (dict(expr=w * x, wrt=w, data=[x]), "wrt must be a sequence"),
        (dict(expr=w * x, wrt=[w], data=[x], reduce="max"), "reduce must be one of"),
        (dict(expr=sp.I * w, wrt=[w]), "imaginary unit"),
        (dict(expr=sp.Function("f")(w), wrt=[w]), "undefined function f"),
        (dict(expr=sp.Integral(w * x, x), wrt=[w]), "Integral"),
        (dict(expr=sp.Derivative(sp.sin(w * x), x), wrt=[w], data=[x]), "Derivative"),
        (dict(expr=sp.besselj(0, w), wrt=[w]), "besselj"),
        (dict(expr=sp.Eq(w, 1), wrt=[w]), "Equality"),
        (dict(expr=sp.Product(w, (x, 1, 3)), wrt=[w]), "unsupported sympy class Product"),
        (dict(expr=sp.zoo * w, wrt=[w]), "non-real number"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_compile_errors(kwargs, match):
    expr = kwargs.pop("expr")
    with pytest.raises(GradcError, match=match):
        gradc.compile(expr, jit=False, **kwargs)


def test_undifferentiable_function_names_the_class():
    class Knot(sp.Function):
        """A function sympy can evaluate but not differentiate."""

    Knot.fdiff = sp.Function.fdiff  # no derivative: sympy returns Derivative(...)
    with pytest.raises(GradcError, match="Knot"):
        gradc.compile(Knot(w) * x, wrt=[w], data=[x], jit=False)


def test_a_function_without_a_kernel_is_named():
    # besselj has no numba implementation in gradc (gamma and its polygammas do)
    with pytest.raises(GradcError, match="besselj"):
        gradc.compile(sp.besselj(0, w), wrt=[w], jit=False)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda f: f.value([1.0], np.ones(3), np.ones(3)), r"params has shape \(1,\); expected 2"),
        (lambda f: f.value([1.0, 2.0, 3.0], np.ones(3), np.ones(3)), "expected 2 values"),
        (lambda f: f.value("ab", np.ones(3), np.ones(3)), "params must be a sequence of real numbers"),
        (lambda f: f.value([1.0, 2.0], np.ones(3)), r"expected 2 data array\(s\) \(x, y\)"),
        (lambda f: f.value([1.0, 2.0], np.ones(3), np.ones(4)), "data y has 4 examples but x has 3"),
        (lambda f: f.value([1.0, 2.0], np.ones((3, 2)), np.ones(3)), r"data x: expected a 1-D array.*\(3, 2\)"),
        (lambda f: f.value([1.0, 2.0], np.array(["a", "b"]), np.ones(2)), "data x: dtype <U1 is not a real"),
        (lambda f: f.value([1.0, 2.0], np.ones(2) + 1j, np.ones(2)), "data x: dtype complex128"),
        (lambda f: f.value([1.0, 2.0], np.ones(0), np.ones(0)), "empty batch: data x has 0 examples"),
        (lambda f: f.jvp([1.0, 2.0], [1.0], np.ones(2), np.ones(2)), "tangent has shape"),
    ],
)
def test_call_errors(fn, call, match):
    with pytest.raises(GradcError, match=match):
        call(fn)


def test_const_must_be_scalar():
    lam = sp.Symbol("lam")
    f = gradc.compile(lam * w**2, wrt=[w], consts=[lam], jit=False)
    with pytest.raises(GradcError, match="const lam: expected a real scalar"):
        f.value([1.0], np.ones(2))
    assert f.value([3.0], 2) == 18.0


def test_integer_and_bool_data_are_accepted(fn):
    v = fn.value([1.0, 0.0], np.array([1, 2]), np.array([True, False]))
    assert v == pytest.approx(((1 - 1) ** 2 + (2 - 0) ** 2) / 2)


def test_error_is_a_value_error():
    assert issubclass(GradcError, ValueError)


def test_symbol_names_with_backslashes_and_quotes_generate_valid_code():
    u, q = sp.Symbol(r"\upsilon"), sp.Symbol('x"""q')
    f = gradc.compile((u * q) ** 2, wrt=[u], data=[q], jit=False)
    v, g = f.value_and_grad([2.0], np.array([1.0, 3.0]))
    assert v == 20.0 and g.tolist() == [20.0]


def test_kernels_called_directly_check_labels():
    from gradc import nn

    z, lab = sp.MatrixSymbol("z", 3, 1), sp.Symbol("lab", integer=True)
    f = gradc.compile(nn.cross_entropy(z, lab), wrt=[z], data=[lab], jit=False)
    with pytest.raises(ValueError, match="label out of range"):
        f.kernels.value((np.zeros((3, 1)),), np.array([5.0]))


def test_namesake_with_other_assumptions_is_named():
    x, xr, w = sp.Symbol("x"), sp.Symbol("x", real=True), sp.Symbol("w")
    with pytest.raises(GradcError, match=r"data holds a different symbol that also prints as x"
                       r".*expression: \{real=True\}; in data: none"):
        gradc.compile((w * xr) ** 2, wrt=[w], data=[x], jit=False)


def test_params_as_a_dict_by_symbol_or_name():
    W, X, b = sp.MatrixSymbol("W", 2, 3), sp.MatrixSymbol("X", 3, 1), sp.Symbol("b")
    fn = gradc.compile(((W * X).T * (W * X))[0, 0] + b ** 2, wrt=[W, b], data=[X], jit=False)
    rng = np.random.default_rng(1)
    Wv, Xv = rng.normal(size=(2, 3)), rng.normal(size=(4, 3))
    v, g = fn.value_and_grad([Wv, 0.5], Xv)
    v2, g2 = fn.value_and_grad({b: 0.5, W: Wv}, Xv)
    v3, g3 = fn.value_and_grad({"W": Wv, "b": 0.5}, Xv)
    assert v == v2 == v3
    for h in (g2, g3):
        np.testing.assert_array_equal(h[0], g[0])
        assert h[1] == g[1]
    with pytest.raises(GradcError, match="params: no value for b"):
        fn.value({W: Wv}, Xv)
    with pytest.raises(GradcError, match="key 'c' is not a symbol of wrt"):
        fn.value({W: Wv, b: 0.5, "c": 1.0}, Xv)
    with pytest.raises(GradcError, match="W is given twice"):
        fn.value({W: Wv, "W": Wv, b: 0.5}, Xv)


@pytest.mark.parametrize("jit", [False, True])
def test_per_example_gradients_of_scalar_params_beside_matrix_data(jit):
    """Scalar wrt with MatrixSymbol data and reduce=None: per-example gradients, HVPs,
    Hessians and Jacobians, (n, P) as for a scalar model, against the closed form (the
    Jacobian's colour blocks once took the params' layout for a packed vector)."""
    X, (a, b) = sp.MatrixSymbol("X", 3, 1), sp.symbols("a b")
    Xv = np.arange(12.0).reshape(4, 3) / 10
    s = (Xv ** 2).sum(axis=1)
    G = np.c_[2 * (s + 2) * s, 2 * (s + 2)]  # d/da, d/db of (a s + b)^2 at a=1, b=2
    H = np.stack([[[2 * t * t, 2 * t], [2 * t, 2.0]] for t in s])
    fn = gradc.compile(((X.T * X)[0, 0] * a + b) ** 2, wrt=[a, b], data=[X], reduce=None,
                       jit=jit)
    value, g = fn.value_and_grad([1.0, 2.0], Xv)
    np.testing.assert_allclose(value, (s + 2) ** 2, rtol=1e-14)
    np.testing.assert_allclose(g, G, rtol=1e-14)
    np.testing.assert_allclose(fn.grad([1.0, 2.0], Xv), G, rtol=1e-14)
    np.testing.assert_allclose(fn.jacobian([1.0, 2.0], Xv), G, rtol=1e-14)
    np.testing.assert_allclose(fn.jacobian([1.0, 2.0], Xv, mode="forward"), G, rtol=1e-14)
    np.testing.assert_allclose(fn.hvp([1.0, 2.0], [1.0, 0.0], Xv), H[:, :, 0], rtol=1e-14)
    np.testing.assert_allclose(fn.hessian([1.0, 2.0], Xv), H, rtol=1e-14)


def test_per_example_gradients_of_matrix_params_say_what_to_use():
    W, v = sp.MatrixSymbol("W", 2, 3), sp.MatrixSymbol("v", 3, 1)
    fn = gradc.compile(gradc.nn.sum(gradc.nn.tanh(W * v)), wrt=[W], data=[v], reduce=None,
                       jit=False)
    with pytest.raises(GradcError, match=r"matrix or indexed values \(W, v\).*fn.jacobian"):
        fn.grad([np.full((2, 3), 0.1)], np.ones((5, 3)))
    assert fn.jacobian([np.full((2, 3), 0.1)], np.ones((5, 3))).shape == (5, 6)
