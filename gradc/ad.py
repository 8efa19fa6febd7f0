"""Automatic differentiation as program transforms.

Contract
--------
``jvp_program(prog)`` (forward mode) returns a program with extra ``tangent`` inputs, one per
``param`` input, whose outputs are the primal outputs followed by their directional
derivatives along the tangent.  The new tangents are one nesting level above any the
program already has, so ``jvp_program(vjp_program(p))`` (a Hessian-vector product) and
``jvp_program(jvp_program(p))`` tell their seeds apart.

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
from .ir import Builder, Lit, Program, Var, type_of
from .prims.array import assemble, batch_sum, broadcast, spec_length, sum_elements


def active_set(prog: Program) -> set:
    """Ids of the values that depend on some ``param`` input."""
    active = {i.var.id for i in prog.inputs if i.role == "param"}
    for e in prog.eqns:
        if any(isinstance(a, Var) and a.id in active for a in e.inputs):
            active.add(e.out.id)
    return active


def jvp_program(prog: Program, sweeps: bool = False, copies: int = 1) -> Program:
    """Forward mode: primal outputs, then their tangents along the ``tangent`` inputs.

    With ``sweeps`` the tangent inputs are batched: many tangents pushed through one
    (batch-invariant) primal evaluation at once, as for the columns of a Jacobian.  With
    ``copies`` = k > 1 there are k independent sets of tangent inputs (input ``index`` is
    ``c * params + i`` for copy c of param i), all at one nesting level, and the outputs
    are the primal outputs followed by their tangents along each set in turn: k
    directions through one shared primal computation.

    Examples
    --------
    >>> import sympy as sp
    >>> from gradc.frontend import lower
    >>> from gradc.ad import jvp_program
    >>> w, x = sp.symbols("w x")
    >>> print(jvp_program(lower(sp.exp(w * x), wrt=[w], data=[x])))
    program:
      v0: param w
      v1: data x :batched
      v4: tangent w
      v2 :batched = v0 * v1
      v3 :batched = [exp(_a0)](v2)
      v5 :batched = v4 * v1
      v6 :batched = v3 * v5
      return v3, v6
    """
    b = Builder(prog)
    active = active_set(prog)
    level = 1 + max((i.level for i in prog.inputs_of("tangent")), default=0)
    params = prog.inputs_of("param")
    touts, names = [], list(prog.output_names)
    for c in range(copies):
        tangent = {}
        for inp in params:
            tangent[inp.var.id] = b.add_input("tangent", inp.name, c * len(params) + inp.index,
                                              inp.var.shape, sweeps, level=level)
        for e in prog.eqns:
            if e.out.id not in active:
                continue
            ts = [tangent.get(a.id) if isinstance(a, Var) else None for a in e.inputs]
            t = prims.registry[e.prim].jvp(b, e, ts)
            if t is not None and type_of(t)[0] != e.out.shape:  # a scalar tangent of a matrix
                t = broadcast(b, t, e.out.shape)
            if t is not None:
                tangent[e.out.id] = t
        touts += [_tangent_of(o, tangent) for o in prog.outputs]
        suffix = "" if copies == 1 else str(c)
        names += [f"d{n}{suffix}" for n in prog.output_names]
    return b.build(list(prog.outputs) + touts, names)


def _tangent_of(atom, tangent):
    if isinstance(atom, Var) and atom.id in tangent:
        return tangent[atom.id]
    return Lit(0.0)


def unbroadcast(b, ct, var, per_example_ct=False, per_example=False):
    """Bring a cotangent contribution to the type of ``var`` (see :func:`unbroadcast_to`)."""
    shape, isb = type_of(var)
    return unbroadcast_to(b, ct, shape, isb, per_example_ct, per_example)


def unbroadcast_to(b, ct, shape, isb, per_example_ct=False, per_example=False):
    """Bring a cotangent contribution to the type of ``var``.

    ``per_example_ct`` says the contribution is one cotangent per example (it comes from
    a batched value), even if its value is the same for all (then it is not batched
    itself).  Such a contribution for a batch-invariant ``var`` is summed over the batch
    (unless ``per_example``: per-example gradients).  A matrix contribution for a scalar
    ``var`` is summed over its elements; a scalar one for a matrix is broadcast.
    """
    cshape, cb = type_of(ct)
    if cshape != shape:
        ct = sum_elements(b, ct) if shape == () else broadcast(b, ct, shape)
    if (per_example_ct or cb) and not isb and not per_example:
        ct = batch_sum(b, ct)
    return ct


def _part_shape(index):
    """The shape of the part of a value that a :class:`gradc.prims.Scatter` index names."""
    return () if isinstance(index[0], int) else (spec_length(index),)


def _shape_to(b, ct, shape):
    """A contribution brought to ``shape``: a matrix one summed over its elements for a
    scalar, a scalar one broadcast for a matrix."""
    cshape = type_of(ct)[0]
    if cshape != shape:
        ct = sum_elements(b, ct) if shape == () else broadcast(b, ct, shape)
    return ct


def total(b, parts, var, per_example=False):
    """The sum of a value's cotangent contributions ``parts`` (``(contribution,
    from_batched)`` pairs, as the vjp rules return them), brought to ``var``'s type.

    Contributions to the same part (the whole value, one element, one gathered run) that
    must be summed over the batch are added first and summed once (one ``batch_sum`` per
    part, not one per contribution); scattered parts are added with one ``assemble``."""
    shape, isb = type_of(var)
    per_part: dict = {}  # index (None: the whole value) -> ([to sum over the batch], [as is])
    for c, from_batched in parts:
        if isinstance(c, prims.Summed):  # the rule summed over the batch already
            index, atom, reduce_it = None, _shape_to(b, c.atom, shape), False
        else:
            index = c.index if isinstance(c, prims.Scatter) else None
            atom = c.atom if isinstance(c, prims.Scatter) else c
            atom = _shape_to(b, atom, shape if index is None else _part_shape(index))
            reduce_it = (from_batched or type_of(atom)[1]) and not isb and not per_example
        per_part.setdefault(index, ([], []))[0 if reduce_it else 1].append(atom)
    sums = {}
    for index, (summed, kept) in per_part.items():
        sums[index] = prims.add(b, [batch_sum(b, prims.add(b, summed))] + kept)
    dense = sums.pop(None, None)
    if not sums:
        return dense
    return assemble(b, var.shape, ([(dense, None)] if dense is not None else [])
                    + [(atom, index) for index, atom in sums.items()])


def vjp_program(prog: Program, seed: str = "one", per_example: bool = False,
                sweeps: bool = False) -> Program:
    """Reverse mode: the primal output, then its gradient for each ``param`` input.

    ``seed="one"`` seeds the output's cotangent with the literal 1; ``seed="input"`` adds a
    ``cotangent`` input instead (a vector-Jacobian product).  With ``per_example`` the
    cotangents of batch-invariant values are not summed over the batch: the gradients
    come back per example (for scalar programs with per-example outputs).  With
    ``sweeps`` the cotangent input is batched (many cotangents at once, as for the rows of
    a Jacobian) and the gradients come back per sweep.

    Examples
    --------
    >>> import sympy as sp
    >>> from gradc.frontend import lower
    >>> from gradc.ad import vjp_program
    >>> w, x = sp.symbols("w x")
    >>> print(vjp_program(lower(sp.exp(w * x), wrt=[w], data=[x])))
    program:
      v0: param w
      v1: data x :batched
      v2 :batched = v0 * v1
      v3 :batched = [exp(_a0)](v2)
      v4 :batched = v3 * v1
      v5 = batch_sum(v4)
      return v3, v5
    """
    (out,) = prog.outputs
    b = Builder(prog)
    active = active_set(prog)
    if sweeps:
        per_example = True
    seed_atom = Lit(1.0) if seed == "one" else b.add_input(
        "cotangent", "ct", 0, out.shape if isinstance(out, Var) else (), sweeps)
    contribs: dict[int, list] = {}
    if isinstance(out, Var) and out.id in active:
        contribs[out.id] = [(seed_atom, False)]
    for e in reversed(prog.eqns):
        parts = contribs.pop(e.out.id, None)
        if not parts:
            continue
        ct = total(b, parts, e.out, per_example)
        if ct is None:
            continue
        is_active = [isinstance(a, Var) and a.id in active for a in e.inputs]
        from_batched = e.out.batched and e.prim != "batch_sum"
        for a, c in zip(e.inputs, prims.registry[e.prim].vjp(b, e, ct, is_active)):
            if c is not None:
                contribs.setdefault(a.id, []).append((c, from_batched))
    grads = []
    for inp in prog.inputs_of("param"):
        g = total(b, contribs.get(inp.var.id, []), inp.var, per_example)
        g = Lit(0.0) if g is None else unbroadcast(b, g, inp.var, per_example=per_example)
        grads.append(g)
    names = list(prog.output_names) + [f"grad_{i.name}" for i in prog.inputs_of("param")]
    return b.build([out] + grads, names)
