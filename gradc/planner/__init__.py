"""gradc.planner: pure planning of derivative accumulation (no IR, no code generation).

Contract: exports

* :func:`chain_order` -- the classic matrix chain ordering problem;
* :class:`Piece` -- one elemental function ``F_i`` of a chain ``F_q o ... o F_1``;
* :func:`jacobian_chain` -- the optimal tangent / adjoint / product bracketing for the
  Jacobian of such a chain, returned as a :class:`ChainPlan` whose ``steps`` is a tree
  of :class:`Step` moves for a code generator to follow; it minimises multiply-adds, or
  predicted seconds under a :class:`TimeModel`;
* :func:`price` -- a given bracketing (text or :class:`Step` tree) priced and checked.

The package imports nothing else from gradc except (lazily) ``gradc.errors.GradcError``,
the type of every validation error.

Examples
--------
>>> from gradc.planner import chain_order, Piece, jacobian_chain
>>> chain_order([30, 35, 15, 5, 10, 20, 25])[0]
15125
>>> jacobian_chain([Piece(8, 8), Piece(8, 1)]).bracketing
'ADJ(F2..F1)'
"""

from .chain import jacobian_chain, price
from .matrix_chain import chain_order
from .pieces import Piece
from .plan import ChainPlan, Step
from .timing import TimeModel

__all__ = ["chain_order", "Piece", "jacobian_chain", "price", "ChainPlan", "Step", "TimeModel"]
