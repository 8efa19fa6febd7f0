"""Result types of Jacobian chain planning: the :class:`Step` tree and :class:`ChainPlan`.

Contract: these are immutable records produced by :func:`gradc.planner.jacobian_chain`;
they hold no solver logic.  A :class:`Step` is one move of an accumulation plan together
with the sub-plans it consumes; executing a plan's steps in post-order (children first,
see :meth:`Step.postorder`) yields the Jacobian of the whole chain.  Pieces are numbered
``1..q`` in application order everywhere (``F1`` is applied first), so piece ``l`` is
``pieces[l - 1]``.

Bracketing notation (every term denotes a matrix; the later-applied factor is written
on the left, as in ``J = J_q ... J_1``):

``F3``
    the explicit Jacobian of piece 3 (``explicit=True``; costs nothing).
``TAN(F3)``, ``ADJ(F3)``
    ``J_3`` accumulated on its own by tangent sweeps (one per column, seeded with the
    identity) or adjoint sweeps (one per row).
``TAN(F7..F4)``, ``ADJ(F7..F4)``
    the Jacobian of ``F7 o F6 o F5 o F4`` by tangent / adjoint sweeps through pieces
    4..7 seeded with the identity.
``TAN(F7..F5, X)``
    push the columns of the matrix ``X`` forward through ``F5``, ``F6``, ``F7`` in tangent
    mode: ``J_7 J_6 J_5 X``.
``ADJ(X, F3..F1)``
    pull the rows of ``X`` back through ``F3``, ``F2``, ``F1`` in adjoint mode:
    ``X J_3 J_2 J_1``.
``MUL(X, Y)``
    the matrix product ``X Y``.

Whenever the sub-chain covered by a term consists of diagonal pieces only, its Jacobian
is diagonal and is computed as a vector: tangent / adjoint moves then take a single
sweep (seeded with the all-ones vector or the diagonal of ``X``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

KINDS = ("ACC", "MUL", "TAN", "ADJ")


@dataclass(frozen=True)
class Step:
    """One move of a Jacobian accumulation plan; the root covers the whole chain.

    The step computes ``J_{last..first} = J_last ... J_first``, the Jacobian of
    ``F_last o ... o F_first`` (pieces numbered from 1 in application order), a
    ``shape[0] x shape[1]`` matrix, held as a length-``shape[0]`` vector if ``diagonal``.

    Attributes
    ----------
    kind : {"ACC", "MUL", "TAN", "ADJ"}
        ``"ACC"``: one piece on its own (``first == last``, no children), by ``method``
        ``"explicit"`` (take the known matrix, cost 0), ``"tangent"`` or ``"adjoint"``
        (``sweeps`` sweeps through that piece seeded with the identity / all-ones).
        ``"MUL"``: ``children = (outer, inner)`` with ``outer`` covering
        ``split+1..last`` and ``inner`` covering ``first..split``; result
        ``outer @ inner``.
        ``"TAN"``: tangent sweeps through pieces ``swept[0]..swept[1]`` (increasing
        order).  ``children == ()``: seeded with the identity (``swept`` is
        ``(first, last)``).  ``children == (seed,)``: ``seed`` covers ``first..split``,
        its columns are pushed forward, ``swept == (split+1, last)``.
        ``"ADJ"``: adjoint sweeps through pieces ``swept[1]`` down to ``swept[0]``.
        ``children == ()``: seeded with the identity (``swept == (first, last)``).
        ``children == (seed,)``: ``seed`` covers ``split+1..last``, its rows are pulled
        back, ``swept == (first, split)``.
    first, last : int
        1-based range of pieces covered, ``first <= last``.
    cost : int or float
        Multiply-adds of this step including all of its descendants.
    own_cost : int or float
        Multiply-adds of this move alone: ``sweeps * sum(t_l)`` or ``sweeps * sum(a_l)``
        over ``swept``, or the product cost for ``"MUL"``.
    shape : tuple of int
        ``(n_out of piece last, n_in of piece first)``.
    diagonal : bool
        All covered pieces are diagonal, so the result is a diagonal matrix.
    method : str
        ``"explicit"``, ``"tangent"``, ``"adjoint"`` (``"tangent"`` for every TAN and
        ``"adjoint"`` for every ADJ) or ``"product"`` for MUL.
    sweeps : int
        Number of tangent / adjoint vectors propagated (``shape[1]`` for tangent,
        ``shape[0]`` for adjoint, 1 if ``diagonal``); 0 for MUL and explicit ACC.
    swept : tuple of int or None
        1-based inclusive range of pieces swept through; ``None`` for MUL and
        explicit ACC.
    split : int or None
        The boundary ``k`` between the children (see ``kind``); ``None`` without
        children.
    tape : int or float
        Tape words this move needs: ``sum(e_l)`` over ``swept`` for adjoint moves,
        else 0.  Moves run one after the other, so a plan's peak tape is the maximum.
    children : tuple of Step
    seconds : float or None
        Predicted seconds of this step and its descendants under the
        :class:`~gradc.planner.timing.TimeModel` the plan was made or priced with
        (``None`` for a plan of multiply-adds only).

    Examples
    --------
    >>> from gradc.planner import Piece, jacobian_chain
    >>> root = jacobian_chain([Piece(1, 9), Piece(9, 9)]).steps
    >>> root.kind, root.first, root.last, root.swept, root.sweeps, root.cost
    ('TAN', 1, 2, (1, 2), 1, 90)
    """

    kind: str
    first: int
    last: int
    cost: int | float
    own_cost: int | float
    shape: tuple
    diagonal: bool
    method: str
    sweeps: int = 0
    swept: tuple | None = None
    split: int | None = None
    tape: int | float = 0
    children: tuple = field(default=())
    seconds: float | None = None

    def postorder(self):
        """Yield all steps of the subtree, children before parents (execution order).

        >>> from gradc.planner import Piece, jacobian_chain
        >>> plan = jacobian_chain([Piece(2, 2, 10, 10, explicit=True)] * 3)
        >>> [s.kind for s in plan.steps.postorder()]
        ['ACC', 'ACC', 'MUL', 'ACC', 'MUL']
        """
        stack, out = [(self, False)], []
        while stack:
            node, ready = stack.pop()
            if ready or not node.children:
                out.append(node)
            else:
                stack.append((node, True))
                stack.extend((c, False) for c in reversed(node.children))
        return iter(out)

    def expression(self) -> str:
        """The bracketing of this subtree in the notation of :mod:`gradc.planner.plan`.

        >>> from gradc.planner import Piece, jacobian_chain
        >>> jacobian_chain([Piece(4, 1)]).steps.expression()
        'ADJ(F1)'
        """
        done: dict[int, str] = {}
        for node in self.postorder():
            if node.kind == "ACC":
                name = f"F{node.first}"
                text = name if node.method == "explicit" else f"{node.kind_label}({name})"
            elif node.kind == "MUL":
                text = f"MUL({done.pop(id(node.children[0]))}, {done.pop(id(node.children[1]))})"
            else:
                lo, hi = node.swept
                rng = f"F{hi}" if lo == hi else f"F{hi}..F{lo}"
                if not node.children:
                    text = f"{node.kind}({rng})"
                elif node.kind == "TAN":
                    text = f"TAN({rng}, {done.pop(id(node.children[0]))})"
                else:
                    text = f"ADJ({done.pop(id(node.children[0]))}, {rng})"
            done[id(node)] = text
        return done[id(self)]

    @property
    def kind_label(self) -> str:
        """``"TAN"``/``"ADJ"`` for tangent/adjoint moves (ACC included), else ``kind``.

        >>> from gradc.planner import Piece, jacobian_chain
        >>> step = jacobian_chain([Piece(3, 2)]).steps
        >>> step.kind, step.method, step.kind_label
        ('ACC', 'adjoint', 'ADJ')
        """
        return {"tangent": "TAN", "adjoint": "ADJ"}.get(self.method, self.kind)

    def to_dict(self) -> dict:
        """The subtree as nested plain dicts and lists (JSON-serialisable for int costs).

        >>> from gradc.planner import Piece, jacobian_chain
        >>> d = jacobian_chain([Piece(2, 3)]).steps.to_dict()
        >>> d["kind"], d["method"], d["children"]
        ('ACC', 'tangent', [])
        """
        d = {name: getattr(self, name) for name in self.__dataclass_fields__ if name != "children"}
        d["shape"] = list(self.shape)
        d["swept"] = None if self.swept is None else list(self.swept)
        d["children"] = [c.to_dict() for c in self.children]
        return d


def _fmt(value) -> str:
    if value is None:
        return "infeasible"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.6g}"
    return f"{int(value):,}"


@dataclass(frozen=True)
class ChainPlan:
    """An optimal Jacobian accumulation plan for a chain of :class:`Piece` objects.

    Attributes
    ----------
    pieces : tuple of Piece
        The chain in application order (``pieces[0]`` is ``F1``).
    memory : int, float or None
        Tape memory limit in words (``None``: unlimited).
    cost : int or float
        Multiply-adds of the optimal plan.
    forward_cost : int or float
        Pure tangent mode: ``n_in(F1) * sum(t_l)``.
    reverse_cost : int, float or None
        Pure adjoint mode: ``n_out(Fq) * sum(a_l)``; ``None`` if its tape
        ``sum(e_l)`` exceeds ``memory`` (infeasible).
    reverse_tape : int or float
        Tape of pure adjoint mode, ``sum(e_l)``.
    peak_tape : int or float
        Largest tape needed by any move of the optimal plan (moves run sequentially).
    steps : Step
        Root of the move tree (see :class:`Step`).
    bracketing : str
        The plan in the notation of :mod:`gradc.planner.plan`.
    seconds, forward_seconds, reverse_seconds : float or None
        Predicted seconds of the plan and of the pure modes (``reverse_seconds`` is
        ``None`` when infeasible), when planned with a
        :class:`~gradc.planner.timing.TimeModel`; else ``None``.
    flop_plan : Step or None
        With a time model: the plan of fewest multiply-adds, priced under the model
        (``flop_plan.seconds``), to show where flops and time disagree.

    Examples
    --------
    >>> from gradc.planner import Piece, jacobian_chain
    >>> plan = jacobian_chain([Piece(10, 10), Piece(10, 1)])
    >>> plan.cost, plan.forward_cost, plan.reverse_cost, plan.bracketing
    (110, 1100, 110, 'ADJ(F2..F1)')
    """

    pieces: tuple
    memory: int | float | None
    cost: int | float
    forward_cost: int | float
    reverse_cost: int | float | None
    reverse_tape: int | float
    peak_tape: int | float
    steps: Step
    bracketing: str
    seconds: float | None = None
    forward_seconds: float | None = None
    reverse_seconds: float | None = None
    flop_plan: Step | None = None

    @property
    def best_pure_cost(self):
        """``min(forward_cost, reverse_cost)`` over the feasible pure modes.

        >>> from gradc.planner import Piece, jacobian_chain
        >>> jacobian_chain([Piece(3, 2, tape=7)], memory=6).best_pure_cost
        18
        """
        if self.reverse_cost is None:
            return self.forward_cost
        return min(self.forward_cost, self.reverse_cost)

    @property
    def speedup(self) -> float:
        """``best_pure_cost / cost`` (``inf`` if the plan is free, 1.0 if both are 0).

        >>> from gradc.planner import Piece, jacobian_chain
        >>> jacobian_chain([Piece(2, 2)]).speedup
        1.0
        """
        if self.cost == 0:
            return 1.0 if self.best_pure_cost == 0 else math.inf
        return self.best_pure_cost / self.cost

    def explain(self) -> str:
        """A multi-line, human-readable report comparing the plan with the pure modes.

        >>> from gradc.planner import Piece, jacobian_chain
        >>> print(jacobian_chain([Piece(10, 10), Piece(10, 1)], memory=50).explain())
        Jacobian chain of 2 pieces, R^10 -> R^1, tape memory limit 50 words
          mode            cost (multiply-adds)   peak tape (words)
          pure tangent                   1,100                   0
          pure adjoint                     110                   0
          optimal plan                     110                   0
          speed-up over best pure mode: 1.00x
          bracketing: ADJ(F2..F1)
        """
        first, last = self.pieces[0], self.pieces[-1]
        unlimited = self.memory is None or math.isinf(self.memory)
        limit = "no tape memory limit" if unlimited else (
            f"tape memory limit {_fmt(self.memory)} words")
        rows = [
            ("pure tangent", self.forward_cost, 0),
            ("pure adjoint", self.reverse_cost, self.reverse_tape),
            ("optimal plan", self.cost, self.peak_tape),
        ]
        lines = [
            f"Jacobian chain of {len(self.pieces)} piece{'s' if len(self.pieces) != 1 else ''}, "
            f"R^{first.n_in} -> R^{last.n_out}, {limit}",
            f"  {'mode':<12}{'cost (multiply-adds)':>24}{'peak tape (words)':>20}",
        ]
        for name, cost, tape in rows:
            note = "  (exceeds the memory limit)" if cost is None else ""
            lines.append(f"  {name:<12}{_fmt(cost):>24}{_fmt(tape):>20}{note}")
        speed = self.speedup
        lines.append("  speed-up over best pure mode: "
                     + ("infinite (the plan is free)" if math.isinf(speed) else f"{speed:.2f}x"))
        lines.append(f"  bracketing: {self.bracketing}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return f"{self.bracketing}  [cost {_fmt(self.cost)} multiply-adds]"

    def __repr__(self) -> str:
        return (f"ChainPlan(cost={self.cost!r}, forward_cost={self.forward_cost!r}, "
                f"reverse_cost={self.reverse_cost!r}, peak_tape={self.peak_tape!r}, "
                f"bracketing={self.bracketing!r})")


__all__ = ["Step", "ChainPlan"]
