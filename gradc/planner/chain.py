"""Optimal Jacobian accumulation for a chain of elemental functions.

Contract: :func:`jacobian_chain` validates a chain ``F = F_q o ... o F_1`` of
:class:`Piece` objects (application order, consecutive dimensions must agree) and an
optional tape memory limit, and returns a :class:`ChainPlan`: the minimal multiply-add
cost of accumulating the ``m_q x n_1`` Jacobian by any bracketing of tangent (TAN),
adjoint (ADJ), single-piece (ACC) and matrix-product (MUL) moves -- the dynamic programme
of Naumann, "Matrix-Free Jacobian Chaining" (arXiv 2406.11862), extended with diagonal
and explicit pieces and a per-move tape limit -- together with the pure tangent and
pure adjoint costs, the move tree and a readable bracketing.  Pure planning: no IR, no
code generation.  This module also re-exports :func:`chain_order` and :class:`Piece`.
"""

from __future__ import annotations

from ._common import _error, check_nonneg_real
from .dp import solve
from .matrix_chain import chain_order
from .pieces import Piece
from .plan import ChainPlan, Step


def jacobian_chain(pieces, memory=None) -> ChainPlan:
    """Plan the cheapest accumulation of the Jacobian of ``F_q o ... o F_1``.

    Parameters
    ----------
    pieces : sequence of Piece
        The elemental functions in application order (``pieces[0]`` is ``F1``, applied
        first).  ``pieces[l].n_out`` must equal ``pieces[l + 1].n_in``.
    memory : int or float, optional
        Tape memory limit in float64 words.  An adjoint move sweeping pieces ``i..k``
        is allowed only if ``e_i + ... + e_k <= memory``; moves run one after another,
        so the limit bounds each move's tape, not their sum.  ``None``: no limit.

    Returns
    -------
    ChainPlan
        ``cost`` (optimal multiply-adds), ``forward_cost`` (``n_1 * sum(t)``),
        ``reverse_cost`` (``m_q * sum(a)``, ``None`` if its tape ``sum(e)`` exceeds
        ``memory``), ``peak_tape``, ``steps`` (a :class:`Step` tree), ``bracketing``
        (see :mod:`gradc.planner.plan` for the notation) and ``explain()``.

    Raises
    ------
    GradcError
        If ``pieces`` is empty or holds a non-:class:`Piece`, if consecutive dimensions
        disagree, or if ``memory`` is negative, NaN or not a number.

    Notes
    -----
    ``cost <= min(forward_cost, reverse_cost)`` always (over the feasible modes), since
    the pure modes are candidate plans.  Ties between equally cheap plans are broken
    deterministically; see :mod:`gradc.planner.dp`.  O(q^3) time for q pieces.

    Examples
    --------
    The gradient of ``sum(W2 @ tanh(W1 @ x))`` with ``x`` in ``R^100``, hidden width 50:

    >>> chain = [Piece(100, 50, explicit=True), Piece(50, 50, structure="diagonal"),
    ...          Piece(50, 1, explicit=True)]
    >>> plan = jacobian_chain(chain)
    >>> plan.cost, plan.forward_cost, plan.reverse_cost
    (5050, 510000, 5100)
    >>> plan.bracketing        # pull the explicit row of W2 back through tanh and W1
    'ADJ(F3, F2..F1)'
    >>> tanh = Piece(50, 50, structure="diagonal", tape=50)
    >>> tight = jacobian_chain([chain[0], tanh, chain[2]], memory=10)
    >>> tight.bracketing, tight.cost, tight.reverse_cost   # tanh's tape does not fit
    ('ADJ(MUL(F3, TAN(F2)), F1)', 5100, None)
    """
    try:
        pieces = tuple(pieces)
    except TypeError:
        raise _error(f"pieces = {pieces!r} is not a sequence of Piece objects") from None
    if not pieces:
        raise _error("pieces is empty: a Jacobian chain needs at least one Piece")
    for idx, p in enumerate(pieces):
        if not isinstance(p, Piece):
            raise _error(f"pieces[{idx}] = {p!r} is not a Piece")
    for idx in range(len(pieces) - 1):
        if pieces[idx].n_out != pieces[idx + 1].n_in:
            raise _error(
                f"dimension mismatch: pieces[{idx}] (F{idx + 1}) has n_out = "
                f"{pieces[idx].n_out} but pieces[{idx + 1}] (F{idx + 2}) has n_in = "
                f"{pieces[idx + 1].n_in}")
    if memory is not None:
        memory = check_nonneg_real(memory, "memory", allow_inf=True)

    root = solve(pieces, memory)
    sum_t = sum(p.tangent_cost for p in pieces)
    sum_a = sum(p.adjoint_cost for p in pieces)
    tape = sum(p.tape for p in pieces)
    feasible = memory is None or tape <= memory
    peak = max((s.tape for s in root.postorder()), default=0)
    return ChainPlan(
        pieces=pieces,
        memory=memory,
        cost=root.cost,
        forward_cost=pieces[0].n_in * sum_t,
        reverse_cost=pieces[-1].n_out * sum_a if feasible else None,
        reverse_tape=tape,
        peak_tape=peak,
        steps=root,
        bracketing=root.expression(),
    )


__all__ = ["chain_order", "Piece", "jacobian_chain", "ChainPlan", "Step"]
