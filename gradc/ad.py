"""Automatic differentiation as program transforms.

Contract
--------
``jvp_program(prog)`` (forward mode) returns a program with extra ``tangent`` inputs, one per
``param`` input, whose outputs are the primal outputs followed by their directional
derivatives along the tangent.

``vjp_program(prog)`` (reverse mode) returns a program whose outputs are the primal output
followed by the gradient with respect to each ``param`` input, in order.  It replays the
primal equations, then walks them in reverse topological order, asking each primitive's
``vjp`` rule for the cotangent contributions to its inputs and summing, for every value, the
contributions of all its children.  A single ``cotangent`` input seeds the output (for
per-example gradients it is simply 1).

Both transforms use activity analysis (only values that depend on a ``param`` get tangents
or cotangents) and symbolic zeros (``None``): a rule that returns ``None`` emits nothing.
Neither recurses, and both go through the Builder's hash-consing, so a partial derivative
shared by forward and backward code is computed once.
"""

from __future__ import annotations

from . import prims
from .ir import Builder, Lit, Program, Var


def active_set(prog: Program) -> set:
    """Ids of the values that depend on some ``param`` input."""
    active = {i.var.id for i in prog.inputs if i.role == "param"}
    for e in prog.eqns:
        if any(isinstance(a, Var) and a.id in active for a in e.inputs):
            active.add(e.out.id)
    return active


def jvp_program(prog: Program) -> Program:
    """Forward mode: primal outputs, then their tangents along the ``tangent`` inputs.

    Examples
    --------
    >>> import sympy as sp
    >>> from gradc.frontend import lower
    >>> from gradc.ad import jvp_program
    >>> w, x = sp.symbols("w x")
    >>> print(jvp_program(lower(sp.exp(w * x), wrt=[w], data=[x])))
    program:
      v0: param w
      v1: data x
      v4: tangent w
      v2 = v0 * v1
      v3 = [exp(_a0)](v2)
      v5 = v4 * v1
      v6 = v3 * v5
      return v3, v6
    """
    b = Builder(prog)
    active = active_set(prog)
    tangent = {}
    for inp in prog.inputs_of("param"):
        tangent[inp.var.id] = b.add_input("tangent", inp.name, inp.index)
    for e in prog.eqns:
        if e.out.id not in active:
            continue
        ts = [tangent.get(a.id) if isinstance(a, Var) else None for a in e.inputs]
        t = prims.registry[e.prim].jvp(b, e, ts)
        if t is not None:
            tangent[e.out.id] = t
    outs = list(prog.outputs)
    touts = [_tangent_of(o, tangent) for o in prog.outputs]
    names = list(prog.output_names) + [f"d{n}" for n in prog.output_names]
    return b.build(outs + touts, names)


def _tangent_of(atom, tangent):
    if isinstance(atom, Var) and atom.id in tangent:
        return tangent[atom.id]
    return Lit(0.0)


def vjp_program(prog: Program, seed: str = "one") -> Program:
    """Reverse mode: the primal output, then its gradient for each ``param`` input.

    ``seed="one"`` seeds the output's cotangent with the literal 1; ``seed="input"`` adds a
    ``cotangent`` input instead (a vector-Jacobian product).

    Examples
    --------
    >>> import sympy as sp
    >>> from gradc.frontend import lower
    >>> from gradc.ad import vjp_program
    >>> w, x = sp.symbols("w x")
    >>> print(vjp_program(lower(sp.exp(w * x), wrt=[w], data=[x])))
    program:
      v0: param w
      v1: data x
      v2 = v0 * v1
      v3 = [exp(_a0)](v2)
      v4 = v3 * v1
      return v3, v4
    """
    (out,) = prog.outputs
    b = Builder(prog)
    active = active_set(prog)
    seed_atom = Lit(1.0) if seed == "one" else b.add_input("cotangent", "ct", 0)
    contribs: dict[int, list] = {}
    if isinstance(out, Var) and out.id in active:
        contribs[out.id] = [seed_atom]
    for e in reversed(prog.eqns):
        parts = contribs.pop(e.out.id, None)
        if not parts:
            continue
        ct = prims.add(b, parts)
        is_active = [isinstance(a, Var) and a.id in active for a in e.inputs]
        for a, c in zip(e.inputs, prims.registry[e.prim].vjp(b, e, ct, is_active)):
            if c is not None:
                contribs.setdefault(a.id, []).append(c)
    grads = []
    for inp in prog.inputs_of("param"):
        g = prims.add(b, contribs.get(inp.var.id, []))
        grads.append(Lit(0.0) if g is None else g)
    names = list(prog.output_names) + [f"grad_{i.name}" for i in prog.inputs_of("param")]
    return b.build([out] + grads, names)
