"""The table of models the tests compile (the lecture's models and friends)."""

import sympy as sp

x, y, x1, x2, lam = sp.symbols("x y x1 x2 lam")
v = sp.symbols("v1:4")
b = sp.symbols("b1:4")
w = sp.symbols("w0:4")
wr = sp.symbols("wr1:3")  # ridge weights
br = sp.Symbol("br")


def tanh_net():
    """The lecture's 3-unit tanh network with squared loss (10 parameters)."""
    f = w[0] + sum(w[i + 1] * sp.tanh(v[i] * x + b[i]) for i in range(3))
    return (f - y) ** 2, [*v, *b, *w], [x, y], []


def logistic():
    """Logistic regression with the log-loss, two inputs."""
    z = w[0] + w[1] * x1 + w[2] * x2
    p = 1 / (1 + sp.exp(-z))
    return -(y * sp.log(p) + (1 - y) * sp.log(1 - p)), [w[0], w[1], w[2]], [x1, x2, y], []


def logistic_net():
    """A 3-unit network of logistic units."""
    s = lambda t: 1 / (1 + sp.exp(-t))  # noqa: E731
    f = w[0] + sum(w[i + 1] * s(v[i] * x + b[i]) for i in range(3))
    return (f - y) ** 2, [*v, *b, *w], [x, y], []


def ridge():
    """Ridge regression: ((w.x + b) - y)^2 + lam * w.w, lam a const."""
    yhat = wr[0] * x1 + wr[1] * x2 + br
    return (yhat - y) ** 2 + lam * (wr[0] ** 2 + wr[1] ** 2), [*wr, br], [x1, x2, y], [lam]


def kitchen_sink():
    """Every supported function in one expression."""
    a, c = w[0], w[1]
    e = (
        sp.exp(a * x) / (1 + x**2) + sp.log(1 + (c * x) ** 2) + sp.sqrt(1 + a**2 * x**2)
        + sp.sinh(a * 0.1 * x) + sp.cosh(c * 0.1) + sp.sin(a * x) * sp.cos(c) + sp.tan(0.1 * a)
        + sp.atan(c * x) + sp.Abs(a - x) + sp.Max(a * x, 0) + sp.Min(c, x)
        + sp.Piecewise((a**2, x > 0), (c * x, True)) + sp.Heaviside(x) * a + sp.sign(x) * c
        + sp.floor(x) * a + sp.erf(c * x) + (1 + x**2) ** a + a ** sp.Rational(3, 2)
        + (1 + a**2) ** -1.5 + x ** 3 * c ** -2
    )
    return e, [a, c], [x], []


MODELS = {
    "tanh_net": tanh_net,
    "logistic": logistic,
    "logistic_net": logistic_net,
    "ridge": ridge,
    "kitchen_sink": kitchen_sink,
}
