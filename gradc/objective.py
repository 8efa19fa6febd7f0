"""A compiled loss as a ``scipy.optimize`` objective: functions of one flat vector.

Contract
--------
:class:`Objective` binds a :class:`gradc.CompiledFunction` with a scalar, reduced output
to its data and consts (checked and converted once) and offers the callables
``scipy.optimize.minimize`` takes, all of one flat float64 vector ``x`` (the parameters
flattened by :meth:`gradc.CompiledFunction.pack`: ``wrt`` in order, matrices row-major):
``fun``, ``jac``, ``value_and_grad`` (for ``jac=True``), ``hessp`` and ``hess`` (a
``scipy.sparse.csr_matrix`` when the Hessian plan colours the pattern, else a dense array).
It remembers the last point: ``fun`` then ``jac`` at the same ``x`` runs one
value-and-gradient kernel; ``hessp`` is one call of the ``hvp`` kernel.
``calls`` counts the kernel calls by kind.
"""

from __future__ import annotations

import numpy as np

from .errors import GradcError


class Objective:
    """``fn`` at fixed data and consts, as functions of a flat parameter vector.

    Examples
    --------
    >>> import numpy as np, sympy as sp, gradc
    >>> from scipy.optimize import minimize
    >>> a, b, x, y = sp.symbols("a b x y")
    >>> fn = gradc.compile((a * x + b - y) ** 2, wrt=[a, b], data=[x, y], jit=False)
    >>> X = np.linspace(0, 1, 20); obj = gradc.Objective(fn, X, 3 * X + 1)
    >>> res = minimize(obj.fun, obj.pack([0.0, 0.0]), jac=obj.jac, hessp=obj.hessp,
    ...                method="trust-ncg")
    >>> np.round(obj.unpack(res.x), 8).tolist()
    [3.0, 1.0]
    """

    def __init__(self, fn, *args):
        if fn.output_shape not in ((), (1, 1)):
            raise GradcError("Objective needs a function with a scalar output; this one's "
                             f"output is {fn.output_shape}")
        if fn.reduce is None and fn.data:
            raise GradcError("Objective needs a reduced function (reduce='mean' or 'sum'): "
                             "scipy.optimize minimises one number, not one per example")
        self.fn = fn
        self.args = list(args)
        self._vals = fn._args(args)  # checked and converted once
        self.size = fn.size
        self._x = None
        self._value = self._grad = None
        self.calls = {"value_and_grad": 0, "hvp": 0, "hessian": 0}

    def __repr__(self):
        return f"Objective({self.fn!r}, size={self.size})"

    def pack(self, params):
        """``params`` (as the compiled function takes them) as a flat vector."""
        return self.fn.pack(params)

    def unpack(self, x):
        """A flat vector as ``params``."""
        return self.fn.unpack(x)

    def _point(self, x, what="x"):
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 1 or x.shape[0] != self.size:
            raise GradcError(f"{what} must be a flat vector of {self.size} values (the "
                             f"flattened parameters, see pack), got shape {x.shape}")
        return x

    def _params(self, x):
        return self.fn._params(self.fn.unpack(x, _checked=False), "params")

    def _evaluate(self, x):
        x = self._point(x)
        if self._x is None or not np.array_equal(x, self._x):
            kernel = self.fn._kernel("value_and_grad")
            with np.errstate(all="ignore"):
                value, g = kernel(self._params(x), *self._vals)
            self.calls["value_and_grad"] += 1
            self._value = float(value)
            self._grad = self.fn.pack(self.fn._result(g), _checked=False).copy()
            self._x = x.copy()
        return self._value, self._grad

    def fun(self, x):
        """The loss at ``x``."""
        return self._evaluate(x)[0]

    def jac(self, x):
        """The gradient at ``x`` (a flat vector; a copy)."""
        return self._evaluate(x)[1].copy()

    def value_and_grad(self, x):
        """``(loss, gradient)`` at ``x``, for ``minimize(..., jac=True)``."""
        value, g = self._evaluate(x)
        return value, g.copy()

    def hessp(self, x, p):
        """The Hessian at ``x`` times the vector ``p`` (one HVP kernel call)."""
        x = self._point(x)
        p = self._point(p, "p")
        kernel = self.fn._kernel("hvp")
        t = self.fn._params(self.fn.unpack(p, _checked=False), "p")
        with np.errstate(all="ignore"):
            hv = kernel(self._params(x), t, *self._vals)
        self.calls["hvp"] += 1
        return self.fn.pack(self.fn._result(hv), _checked=False).copy()

    def hess(self, x):
        """The Hessian at ``x``: a csr matrix when the Hessian plan colours the pattern
        (it is sparse enough to pay), else a dense ``(P, P)`` array."""
        x = self._point(x)
        self.calls["hessian"] += 1
        coloured = self.fn._hessian_plan_for(1).choice == "coloured"
        return self.fn.hessian(self.fn.unpack(x, _checked=False), *self.args, sparse=coloured)
