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
from .dp import _Tables, build, solve
from .matrix_chain import chain_order
from .pieces import Piece
from .plan import ChainPlan, Step
from .timing import TimeModel


def jacobian_chain(pieces, memory=None, model=None, plan=None) -> ChainPlan:
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
    model : TimeModel, optional
        The objective: with a :class:`~gradc.planner.timing.TimeModel` the plan minimises
        predicted seconds (fixed costs per move and memory traffic included) and the
        result carries the predicted seconds of it, of the pure modes and of the plan
        that minimises multiply-adds; without, it minimises multiply-adds.
    plan : str or Step, optional
        A forced plan instead of the optimal one: a bracketing in the notation of
        :mod:`gradc.planner.plan` (or a :class:`Step` tree of this chain), priced and
        checked (explicit pieces, the tape limit).

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
    if model is not None:
        if not isinstance(model, TimeModel):
            raise _error(f"model = {model!r} is not a TimeModel")
        model.check(len(pieces))

    if plan is None:
        root = solve(pieces, memory, model)
    else:
        root = price(pieces, plan, memory, model)
    sum_t = sum(p.tangent_cost for p in pieces)
    sum_a = sum(p.adjoint_cost for p in pieces)
    tape = sum(p.tape for p in pieces)
    feasible = memory is None or tape <= memory
    peak = max((s.tape for s in root.postorder()), default=0)
    timed = {}
    if model is not None:
        q = len(pieces)
        tb = _Tables(pieces, model, None)
        timed = dict(
            seconds=model.base + root.seconds,
            forward_seconds=model.base + tb.sweep(0, q - 1, pieces[0].n_in, "tangent",
                                                  pieces[0].n_in, pieces[-1].n_out),
            reverse_seconds=(model.base + tb.sweep(0, q - 1, pieces[-1].n_out, "adjoint",
                                                   pieces[0].n_in, pieces[-1].n_out))
            if feasible else None,
            flop_plan=price(pieces, solve(pieces, memory), memory, model),
        )
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
        **timed,
    )


def price(pieces, plan, memory=None, model=None) -> Step:
    """The :class:`Step` tree of a given plan (a bracketing string or a Step tree of this
    chain), with its multiply-adds and, under ``model``, its predicted seconds.

    >>> from gradc.planner import Piece
    >>> chain = [Piece(100, 50, explicit=True), Piece(50, 50, structure="diagonal"),
    ...          Piece(50, 1, explicit=True)]
    >>> price(chain, "TAN(F3..F2, F1)").cost       # forward from W1: 50 + 50 per column
    10000
    """
    from .bracketing import parse

    pieces = tuple(pieces)
    if isinstance(plan, ChainPlan):
        plan = plan.steps
    text = plan.expression() if isinstance(plan, Step) else plan
    choice = parse(text, len(pieces))
    mem = float("inf") if memory is None else memory
    for (i, j), (kind, k, method) in choice.items():
        if method == "explicit" and not pieces[i].explicit:
            raise _error(f"plan {text!r}: F{i + 1} is not an explicit piece (its Jacobian "
                         f"is not a known matrix); write TAN(F{i + 1}) or ADJ(F{i + 1})")
        if method == "adjoint":
            lo, hi = (i, j) if k is None else (i, k)
            tape = sum(p.tape for p in pieces[lo:hi + 1])
            if tape > mem:
                raise _error(f"plan {text!r}: the adjoint sweep through F{hi + 1}..F{lo + 1} "
                             f"needs {tape} tape words, over the limit of {memory}")
    tb = _Tables(pieces, TimeModel.flops(pieces) if model is None else model, memory)
    return build(tb, lambda i, j: choice[i, j], model is not None)


__all__ = ["chain_order", "Piece", "jacobian_chain", "price", "ChainPlan", "Step", "TimeModel"]
