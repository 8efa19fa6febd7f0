"""Chain extraction: an IR program -> the chain of pieces the Jacobian planner works on.

Contract
--------
:func:`extract_chain` takes a per-example program whose ``param`` inputs are the
differentiated vectors (or scalars) and whose single output is a vector (or scalar), and
splits it at its articulation points: the values every path from the inputs to the
output goes through.  Piece ``i`` maps cut ``c_{i-1}`` to cut ``c_i`` (``c_0`` is all the
params together).  Values that do not depend on the params (weights given as consts,
anything computed from them) are side inputs of the pieces, as in reverse mode.

Each :class:`ChainPiece` carries a :class:`gradc.planner.Piece` whose tangent cost, adjoint
cost, tape and structure come from the IR: a lone matrix product with a constant matrix
has an explicit Jacobian (the matrix, or its transpose); a lone elementwise equation with
one varying input of the output's shape is diagonal; anything else is dense, with costs
summed over its equations.  ``blas`` says which share of a piece's sweep cost is matrix
products (run as GEMMs when sweeps are batched), for calibration.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import GradcError
from ..ir import Program, Var, size_of
from ..prims import registry
from .pieces import Piece


def _size(var):
    return size_of(var.shape)


@dataclass(frozen=True)
class ChainPiece:
    """Piece ``index`` (1-based) of a chain, with the IR equations it covers."""

    index: int
    eqns: tuple
    inputs: tuple  # the cut before (or the params, for piece 1)
    output: Var
    piece: Piece
    kind: str  # "explicit", "explicit_t", "diagonal", "dense"
    matrix: object = None  # the Var holding the explicit Jacobian
    blas: float = 0.0
    words: int = 0  # words of the side values a sweep reads once, whatever the sweeps


def _eqn_cost(e, active):
    """(multiply-adds of one tangent or adjoint sweep through ``e``, share that is BLAS)."""
    own = getattr(registry[e.prim], "cost", None)
    if own is not None:
        return own(e, active)
    if e.prim == "matmul":
        (r, k), (_, c) = e.inputs[0].shape, e.inputs[1].shape
        return r * k * c, 1.0
    if e.prim in ("transpose", "eye", "onehot"):
        return 0, 0.0
    if e.prim in ("sum", "logsumexp", "element", "gather", "assemble"):
        n = _size(e.inputs[0]) if e.prim not in ("assemble", "gather") else _size(e.out)
        return n * (2 if e.prim == "logsumexp" else 1), 0.0
    n_active = sum(1 for a in e.inputs if isinstance(a, Var) and a.id in active)
    return _size(e.out) * max(1, n_active), 0.0


def _tape(e):
    return 0 if registry[e.prim].structure == "linear" else _size(e.out)


def extract_chain(prog: Program):
    """Split ``prog`` into a chain of :class:`ChainPiece` (see the module docstring).

    Examples
    --------
    >>> import sympy as sp
    >>> from gradc import nn
    >>> from gradc.frontend import lower
    >>> from gradc.planner.extract import extract_chain
    >>> x = sp.MatrixSymbol("x", 3, 1); W = sp.MatrixSymbol("W", 2, 3)
    >>> chain = extract_chain(lower(nn.tanh(W * x), wrt=[x], consts=[W]))
    >>> [(p.kind, p.piece.n_in, p.piece.n_out) for p in chain]
    [('explicit', 3, 2), ('diagonal', 2, 2)]
    """
    from ..ad import active_set

    (out,) = prog.outputs
    params = [i.var for i in prog.inputs_of("param")]
    active = active_set(prog)
    if not isinstance(out, Var) or out.id not in active:
        raise GradcError("the output does not depend on wrt: its Jacobian is zero")
    # relevant active equations: those on a path from the params to the output
    needed = {out.id}
    eqns = []
    for e in reversed(prog.eqns):
        if e.out.id in needed and e.out.id in active:
            eqns.append(e)
            needed.update(a.id for a in e.inputs if isinstance(a, Var) and a.id in active)
    eqns.reverse()
    pos = {v.id: 0 for v in params}
    for p, e in enumerate(eqns, start=1):
        pos[e.out.id] = p
    reach = [0] * (len(eqns) + 1)  # reach[q]: furthest consumer of the value at q
    for e in eqns:
        for a in e.inputs:
            if isinstance(a, Var) and a.id in pos:
                reach[pos[a.id]] = max(reach[pos[a.id]], pos[e.out.id])
    cuts, furthest = [], 0
    for p in range(1, len(eqns) + 1):
        furthest = max(furthest, reach[p - 1])
        if furthest <= p:
            cuts.append(p)
    pieces, start, before = [], 0, tuple(params)
    for idx, c in enumerate(cuts, start=1):
        chunk = tuple(eqns[start:c])
        output = chunk[-1].out
        pieces.append(_classify(idx, chunk, before, output, active))
        before, start = (output,), c
    return pieces


def _side_words(chunk, inputs):
    """Words of the values the piece reads that neither it nor the cut before makes."""
    made = {e.out.id for e in chunk} | {v.id for v in inputs}
    side = {a.id: _size(a) for e in chunk for a in e.inputs
            if isinstance(a, Var) and a.id not in made}
    return sum(side.values())


def _classify(index, chunk, inputs, output, active):
    import dataclasses

    piece = _classify_piece(index, chunk, inputs, output, active)
    return dataclasses.replace(piece, words=_side_words(chunk, inputs))


def _classify_piece(index, chunk, inputs, output, active):
    n_in = sum(_size(v) for v in inputs)
    n_out = _size(output)
    costs = [_eqn_cost(e, active) for e in chunk]
    total = sum(c for c, _ in costs)
    blas = sum(c * f for c, f in costs) / total if total else 0.0
    tape = sum(_tape(e) for e in chunk)
    if len(chunk) == 1:
        e = chunk[0]
        act = [a for a in e.inputs if isinstance(a, Var) and a.id in active]
        if e.prim == "matmul" and len(act) == 1:
            a, b = e.inputs
            if b is act[0] and a.shape and (not b.shape or b.shape[1] == 1):
                p = Piece(n_in, n_out, a.shape[0] * a.shape[1], a.shape[0] * a.shape[1], 0,
                          "dense", True)
                return ChainPiece(index, chunk, inputs, output, p, "explicit", a, 1.0)
            if a is act[0] and b.shape and (not a.shape or a.shape[0] == 1):
                p = Piece(n_in, n_out, b.shape[0] * b.shape[1], b.shape[0] * b.shape[1], 0,
                          "dense", True)
                return ChainPiece(index, chunk, inputs, output, p, "explicit_t", b, 1.0)
        # a transpose is the identity on the flattened values only for a vector
        vector_t = e.prim == "transpose" and 1 in (e.out.shape or (1,))
        if (registry[e.prim].elementwise or vector_t) and len(act) == 1 \
                and n_in == n_out and len(inputs) == 1:
            p = Piece(n_in, n_out, n_out, n_out, tape, "diagonal")
            return ChainPiece(index, chunk, inputs, output, p, "diagonal", None, 0.0)
    p = Piece(n_in, n_out, max(total, 1), max(total, 1), tape, "dense")
    return ChainPiece(index, chunk, inputs, output, p, "dense", None, blas)
