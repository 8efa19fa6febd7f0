"""The primitive registry: everything gradc knows about each primitive, one block each.

Contract
--------
A primitive is a :class:`Primitive` subclass registered under its name in ``registry``.
Each block holds all the rules of one primitive:

``abstract_eval(inputs, params)``
    the output's type ``(shape, batched)`` from the inputs' types; raises
    :class:`gradc.GradcError` naming both shapes when they do not fit.
``describe(eqn)``
    one readable line for :func:`gradc.ir.pretty`.
``emit(eqn, names, printer)``
    for elementwise primitives (``elementwise = True``): a Python expression computing one
    element of the output from the names of the inputs' elements.
``emit_array(eqn, ctx)``
    for structural primitives: the statements computing the whole output (see
    :mod:`gradc.codegen.arrays`).
``jvp(b, eqn, tangents)``
    forward mode: given the tangents of the inputs (``None`` is a symbolic zero), emit
    equations into builder ``b`` and return the output's tangent (or ``None``).
``vjp(b, eqn, ct, active)``
    reverse mode: given the output's cotangent ``ct`` and which inputs are active, return
    one cotangent contribution per input (``None`` for zero).  Contributions may be
    broadcast (a scalar for a matrix, per-example for a batch-invariant value):
    :func:`gradc.ad.total` sums them back to the input's type.  A contribution to
    part of an input (one element, a slice) is a :class:`Scatter`; the AD transform adds
    all of a value's scattered parts with one ``assemble`` equation.
``sparsity(eqn, deps, pattern)``
    structural second-order sparsity (:mod:`gradc.sparsity`): given, for each input, an
    object array of its per-example shape holding the sets of parameters each element
    depends on, return the output's array and call ``pattern.meet(a, b)`` for the sets
    that enter with a nonzero second derivative.  The default is conservative (every
    output element depends on everything, and it all meets); primitives override it
    with their exact rule.
``structure``
    what the planner needs to know of the Jacobian: ``"diagonal"`` (elementwise),
    ``"linear"`` (matmul, transpose, sums) or ``"dense"``.

The scalar algebra (:mod:`gradc.prims.scalar`) is ``add``, ``mul`` and ``elementwise`` (any
scalar function as a sympy expression; derivatives from ``sympy.diff``).  The array
primitives (:mod:`gradc.prims.array`) are the structural operations: ``matmul``,
``transpose``, ``sum``, ``broadcast``, ``batch_sum``, ``logsumexp``, ``pick``, ``onehot``,
``eye``, and the indexing pair ``element``/``gather`` (read one element, or a strided or
tabulated run of a vector) with their transpose ``assemble`` (add parts into a zero
array).  The loop-nest primitive (:mod:`gradc.prims.loop`) is ``loop``: an indexed map,
reduction or scatter-add with affine reads, what ``Sum`` over ``IndexedBase`` arrays
lowers to; its tangent and cotangent rules are loops again.

A primitive may also define ``cost(eqn, active)``: the multiply-adds of one tangent or
adjoint sweep through it and the share of them that is BLAS, for the planner (the
planner's own estimate is used otherwise).
"""

from __future__ import annotations

from ..errors import GradcError
from ..ir import Lit, Var, shape_text, type_of

registry: dict[str, "Primitive"] = {}


def register(cls):
    registry[cls.name] = cls()
    return cls


class Primitive:
    name = "?"
    elementwise = False
    structure = "dense"

    def abstract_eval(self, inputs, params):  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self, eqn):
        args = ", ".join(repr(a) for a in eqn.inputs)
        extra = f"; {eqn.params}" if eqn.params is not None else ""
        return f"{self.name}({args}{extra})"

    def emit(self, eqn, names, printer):  # pragma: no cover - abstract
        raise NotImplementedError

    def emit_array(self, eqn, ctx):  # pragma: no cover - abstract
        raise NotImplementedError

    def jvp(self, b, eqn, tangents):  # pragma: no cover - abstract
        raise NotImplementedError

    def vjp(self, b, eqn, ct, active):  # pragma: no cover - abstract
        raise NotImplementedError

    def sparsity(self, eqn, deps, pattern):
        """Conservative: all parameters of all inputs reach every output element, and
        they all meet."""
        from ..sparsity import deps_array, whole

        every = frozenset().union(*(whole(d) for d in deps))
        pattern.meet(every, every)
        return deps_array(eqn.out.shape, every)

    def linear_sparsity(self, eqn, deps):
        """For linear primitives whose output elements each depend on all of the input
        (sums, picks by a data label): nothing meets."""
        from ..sparsity import deps_array, whole

        return deps_array(eqn.out.shape, frozenset().union(*(whole(d) for d in deps)))


class Summed:
    """A cotangent contribution that a vjp rule has already summed over the batch (a
    product that contracts the batch axis), so :func:`gradc.ad.total` must not."""

    __slots__ = ("atom",)

    def __init__(self, atom):
        self.atom = atom


class Scatter:
    """A cotangent contribution to part of an input: ``atom`` goes to the elements that
    ``index`` names (an index tuple for one element, a gather spec for a run of a vector;
    see :func:`gradc.prims.array.gather`)."""

    __slots__ = ("atom", "index")

    def __init__(self, atom, index):
        self.atom = atom
        self.index = index


def broadcast_type(inputs, what="elementwise operation"):
    """Type of an elementwise result: scalars broadcast against one common shape."""
    shapes = []
    for a in inputs:
        s = type_of(a)[0]
        if s and s not in shapes:
            shapes.append(s)
    if len(shapes) > 1:
        raise GradcError(
            f"{what}: shapes {' and '.join(shape_text(s) for s in shapes)} do not match"
        )
    return (shapes[0] if shapes else ()), any(type_of(a)[1] for a in inputs)


# --------------------------------------------------------------------------------------
# Builder helpers with literal folding.  Every rule builds through these.


#: An ``add`` equation has at most this many inputs; longer sums become a balanced tree,
#: so no generated expression nests deeper than a fixed bound.
ADD_WIDTH = 16


def add(b, atoms):
    """Sum of ``atoms`` (``None`` entries are zeros); returns an atom or ``None``."""
    atoms = [a for a in atoms if a is not None]
    lits = [a.value for a in atoms if isinstance(a, Lit)]
    vars_ = [a for a in atoms if isinstance(a, Var)]
    const = sum(lits) if lits else 0.0
    if not vars_:
        return Lit(const) if lits else None
    if const != 0.0:
        vars_.append(Lit(const))
    while len(vars_) > ADD_WIDTH:  # a balanced tree of sums of at most ADD_WIDTH terms
        vars_ = [b.emit("add", vars_[k:k + ADD_WIDTH]) if len(vars_[k:k + ADD_WIDTH]) > 1
                 else vars_[k] for k in range(0, len(vars_), ADD_WIDTH)]
    if len(vars_) == 1:
        return vars_[0]
    return b.emit("add", vars_)


def mul(b, x, y):
    """Product of two atoms with folding of literal 0, 1 and literal-literal products.

    A literal 0 times a matrix stays a (broadcast) literal 0: a symbolic zero."""
    if x is None or y is None:
        return None
    if isinstance(x, Lit) and isinstance(y, Lit):
        return Lit(x.value * y.value)
    if isinstance(y, Lit):
        x, y = y, x
    if isinstance(x, Lit):
        if x.value == 0.0:
            return Lit(0.0)
        if x.value == 1.0:
            return y
    return b.emit("mul", (x, y))


from .scalar import elementwise, number, partials, placeholder  # noqa: E402
from . import array  # noqa: E402,F401
from . import loop  # noqa: E402,F401

__all__ = ["registry", "Primitive", "Summed", "Scatter", "ADD_WIDTH", "add", "mul", "elementwise", "partials", "placeholder",
           "number", "broadcast_type"]
