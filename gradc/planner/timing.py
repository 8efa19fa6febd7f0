"""The time model of a Jacobian plan: what the dynamic programme minimises.

Contract: a :class:`TimeModel` gives, for one chain of ``q`` pieces, the predicted seconds
of every move a plan can make, as sums the dynamic programme of :mod:`gradc.planner.dp`
can take over ranges of pieces with prefix sums:

* a tangent (adjoint) move sweeping ``s`` vectors through pieces ``lo..hi`` costs
  ``move + s * sum(tangent[l]) + sum(fixed[l]) + s * width * word``
  (``adjoint[l]`` for adjoint moves), where ``tangent[l]``/``adjoint[l]`` are the seconds
  of one vector through piece ``l`` (its multiply-adds at the rate of their kind plus the
  words of its result, written and read back), ``fixed[l]`` the seconds of reading the
  piece's constants once per move (a weight matrix, however many vectors are swept), and
  the last term the seeds (``width`` words each) copied in;
* a product of an ``m x k`` and a ``k x n`` result costs
  ``move + madd * m k n + word * (m k + k n + m n)``, with ``emadd`` per multiply-add and
  the diagonal operands' words dropped when a factor is diagonal (kept as a vector);
* ``base`` is what every mode pays (the primal pass the sweeps read); it is added to
  every predicted time and is not part of any choice.

:meth:`TimeModel.flops` is the model whose "seconds" are multiply-adds: the classic
objective, with no fixed costs.  Pure planning: the rates come from the caller
(:func:`gradc.planner.calibrate.time_model` measures them for a compiled chain).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TimeModel:
    """Seconds of the moves of a plan for one chain (see the module docstring).

    Examples
    --------
    >>> from gradc.planner import Piece
    >>> m = TimeModel.flops([Piece(3, 2), Piece(2, 1)])
    >>> m.tangent, m.move, m.product(1, 2, 3, False, False)
    ((6, 2), 0, 6)
    """

    tangent: tuple
    adjoint: tuple
    fixed: tuple
    move: float = 0.0
    word: float = 0.0
    madd: float = 1.0
    emadd: float = 1.0
    base: float = 0.0

    @classmethod
    def flops(cls, pieces):
        """Multiply-adds as the objective: no fixed or memory costs (exact integers)."""
        q = len(pieces)
        return cls(tuple(p.tangent_cost for p in pieces), tuple(p.adjoint_cost for p in pieces),
                   (0,) * q, 0, 0, 1, 1, 0)

    @property
    def is_flops(self) -> bool:
        """Whether this model counts multiply-adds (no fixed costs) rather than seconds."""
        return (self.move == 0 and self.word == 0 and self.madd == 1 and self.emadd == 1
                and not any(self.fixed))

    def product(self, mj, mk, ni, outer_diag, inner_diag):
        """Seconds of ``(mj x mk) @ (mk x ni)``, a diagonal factor held as a vector."""
        if outer_diag and inner_diag:
            work, words, rate = mk, 3 * mk, self.emadd
        elif outer_diag:
            work, words, rate = mk * ni, mk + 2 * mk * ni, self.emadd
        elif inner_diag:
            work, words, rate = mj * mk, mk + 2 * mj * mk, self.emadd
        else:
            work, words, rate = mj * mk * ni, mj * mk + mk * ni + mj * ni, self.madd
        return self.move + rate * work + self.word * words

    def check(self, q):
        """Raise ``GradcError`` unless the per-piece tuples have ``q`` entries each."""
        from ._common import _error

        for name in ("tangent", "adjoint", "fixed"):
            if len(getattr(self, name)) != q:
                raise _error(f"TimeModel.{name} has {len(getattr(self, name))} entries for a "
                             f"chain of {q} pieces")


__all__ = ["TimeModel"]
