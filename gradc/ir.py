"""The gradc intermediate representation: a flat, typed SSA program.

Contract
--------
A :class:`Program` is an immutable list of equations ``out = prim(inputs; params)`` over
:class:`Var` values (each defined exactly once) and :class:`Lit` float literals.  Inputs are
declared with a role: ``param`` (differentiated), ``data`` (one value per example of the
batch), ``const`` (never differentiated), ``size`` (the batch size n, as a float), or
``tangent`` / ``cotangent`` (seeds added by the AD transforms, tagged with their nesting
level: the tangents of ``jvp_program(jvp_program(p))`` are levels 1 and 2).

Every value has a type: its per-example ``shape`` (a tuple of any rank: ``()`` for a
scalar, ``(T,)`` for a vector, ``(rows, cols)`` for a matrix) and whether it is ``batched``
(one value per example; anything computed from data is).  Matrix models use rank 2;
scalar programs use rank 1 for the parameter vector and for the vectors that re-rolled
families of terms become (see :mod:`gradc.reroll`).  A primitive's ``abstract_eval`` gives the type of its output; the builder checks
it for every equation, and :func:`typecheck` rejects unbound, rebound and unknown
variables and any type that disagrees with its equation.

Programs are built with :class:`Builder`, which hash-conses equations: asking twice for the
same primitive on the same inputs with the same params returns the first result, so common
subexpressions (including those the AD transforms create) are computed once.

Nothing here recurses over the graph, so deep expressions never reach Python's recursion
limit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ROLES = ("param", "data", "const", "size", "tangent", "cotangent")


@dataclass(frozen=True, eq=False)
class Var:
    """An SSA value.  Identity is the integer ``id``; ``hint`` is a name for readers;
    ``shape`` is the per-example shape and ``batched`` says if it varies per example."""

    id: int
    hint: str = ""
    shape: tuple = ()
    batched: bool = False

    def __eq__(self, other):
        return isinstance(other, Var) and other.id == self.id

    def __hash__(self):
        return hash(("Var", self.id))

    def __repr__(self):
        return f"v{self.id}"


@dataclass(frozen=True)
class Lit:
    """A float64 literal."""

    value: float

    def __repr__(self):
        return repr(self.value)


Atom = Any  # Var | Lit


@dataclass(frozen=True)
class Eqn:
    """One equation ``out = prim(*inputs; params)``."""

    prim: str
    inputs: tuple
    params: Any
    out: Var


@dataclass(frozen=True)
class Input:
    """A program input: a variable with a role and the user's name for it."""

    var: Var
    role: str
    name: str
    index: int = 0  # position among inputs of the same role
    level: int = 1  # nesting level of a tangent or cotangent (forward over reverse: 1, 2...)


@dataclass(frozen=True)
class Program:
    """A complete program: inputs, equations in topological order, outputs."""

    inputs: tuple
    eqns: tuple
    outputs: tuple
    output_names: tuple = field(default=())

    def inputs_of(self, role):
        return [i for i in self.inputs if i.role == role]

    def __str__(self):
        return pretty(self)


class Builder:
    """Append-only equation list with hash-consing (the IR's own CSE)."""

    def __init__(self, program: Program | None = None):
        self.eqns: list[Eqn] = []
        self.inputs: list[Input] = []
        self._memo: dict = {}
        self._next = 0
        if program is not None:
            self._next = _max_id(program) + 1
            self.inputs = list(program.inputs)
            for e in program.eqns:
                self.eqns.append(e)
                self._memo[(e.prim, _key(e.inputs), e.params)] = e.out

    def fresh(self, hint: str = "", shape=(), batched=False) -> Var:
        v = Var(self._next, hint, tuple(shape), bool(batched))
        self._next += 1
        return v

    def add_input(self, role: str, name: str, index: int = 0, shape=(), batched=None,
                  level: int = 1) -> Var:
        assert role in ROLES, role
        if batched is None:
            batched = role == "data"
        v = self.fresh(name, shape, batched)
        self.inputs.append(Input(v, role, name, index, level))
        return v

    def size(self) -> Var:
        """The batch size n (a float input), added on first use."""
        for inp in self.inputs:
            if inp.role == "size":
                return inp.var
        return self.add_input("size", "n", 0, (), False)

    def emit(self, prim: str, inputs, params=None, hint: str = "") -> Var:
        """Return the value of ``prim(inputs; params)``, reusing an equal equation."""
        from .prims import registry

        inputs = tuple(inputs)
        key = (prim, _key(inputs), params)
        hit = self._memo.get(key)
        if hit is not None:
            return hit
        shape, batched = registry[prim].abstract_eval(inputs, params)
        out = self.fresh(hint, shape, batched)
        self.eqns.append(Eqn(prim, inputs, params, out))
        self._memo[key] = out
        return out

    def build(self, outputs, output_names=()) -> Program:
        prog = Program(tuple(self.inputs), tuple(self.eqns), tuple(outputs), tuple(output_names))
        typecheck(prog)
        return prog


def size_of(shape) -> int:
    """The number of elements of a value of per-example ``shape`` (1 for a scalar)."""
    out = 1
    for d in shape:
        out *= d
    return out


def shape_text(shape) -> str:
    """``"3x4"``, ``"10"`` or ``"scalar"``, for messages and listings."""
    return "x".join(map(str, shape)) if shape else "scalar"


def type_of(atom):
    """``(shape, batched)`` of an atom (literals are unbatched scalars)."""
    if isinstance(atom, Lit):
        return (), False
    return atom.shape, atom.batched


def _key(inputs):
    return tuple(("v", a.id) if isinstance(a, Var) else ("l", a.value) for a in inputs)


def _max_id(program: Program) -> int:
    ids = [i.var.id for i in program.inputs] + [e.out.id for e in program.eqns]
    return max(ids, default=-1)


def typecheck(program: Program) -> None:
    """Raise ``AssertionError`` if a variable is used unbound or bound twice."""
    from .prims import registry  # local import: prims depends on ir

    bound = set()
    for inp in program.inputs:
        assert inp.role in ROLES, f"unknown role {inp.role}"
        assert inp.var.id not in bound, f"input {inp.var} bound twice"
        bound.add(inp.var.id)
    for e in program.eqns:
        assert e.prim in registry, f"unknown primitive {e.prim}"
        for a in e.inputs:
            if isinstance(a, Var):
                assert a.id in bound, f"{a} used before it is bound in {e}"
            else:
                assert isinstance(a, Lit), f"bad atom {a!r}"
        assert e.out.id not in bound, f"{e.out} bound twice"
        want = registry[e.prim].abstract_eval(e.inputs, e.params)
        assert want == (e.out.shape, e.out.batched), f"{e.out} has the wrong type in {e}"
        bound.add(e.out.id)
    for a in program.outputs:
        if isinstance(a, Var):
            assert a.id in bound, f"output {a} is unbound"


def pretty(program: Program) -> str:
    """A readable listing of ``program``, one equation per line."""
    from .prims import registry

    lines = []
    for inp in program.inputs:
        lines.append(f"  {inp.var!r}: {inp.role} {inp.name}{_type_text(inp.var)}")
    for e in program.eqns:
        lines.append(f"  {e.out!r}{_type_text(e.out)} = {registry[e.prim].describe(e)}")
    outs = ", ".join(repr(o) for o in program.outputs)
    return "program:\n" + "\n".join(lines) + f"\n  return {outs}"


def _type_text(var):
    """`` :(3, 1)`` / `` :batched`` annotations; plain unbatched scalars print bare."""
    parts = []
    if var.shape:
        parts.append(shape_text(var.shape))
    if var.batched:
        parts.append("batched")
    return (" :" + " ".join(parts)) if parts else ""
