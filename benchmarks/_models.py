"""The models the benchmarks share, as sympy expressions (built with ``sp.Add``: Python's
``sum`` is quadratic in sympy)."""


def units_model(k):
    """The lecture's k-unit tanh model: ``(w0 + sum_i w_i tanh(v_i x + b_i) - y)**2``;
    returns ``(loss, wrt, data)``."""
    import sympy as sp

    x, y = sp.symbols("x y")
    v, b, w = sp.symbols(f"v1:{k + 1}"), sp.symbols(f"b1:{k + 1}"), sp.symbols(f"w0:{k + 1}")
    f = w[0] + sp.Add(*[w[i + 1] * sp.tanh(v[i] * x + b[i]) for i in range(k)])
    return (f - y) ** 2, [*v, *b, *w], [x, y]


def chain_model(nvar):
    """The chain ``sum_i 100 (x_{i+1} - x_i**2)**2 + (1 - x_i)**2`` of ``nvar`` variables;
    returns ``(expr, wrt, data)`` (no data)."""
    import sympy as sp

    q = sp.symbols(f"x0:{nvar}")
    return sp.Add(*[100 * (q[i + 1] - q[i] ** 2) ** 2 + (1 - q[i]) ** 2
                    for i in range(nvar - 1)]), list(q), []
