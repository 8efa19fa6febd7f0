"""The plan of a compiled function: what each accumulation mode costs, as a printable value.

Contract
--------
:class:`Plan` wraps the chain extracted from a program and its optimal
:class:`~gradc.planner.ChainPlan`, adds the calibrated predicted times
(:mod:`gradc.planner.calibrate`) and the memory of each mode, and prints a table:
forward, reverse and optimal cost in flops (2 per multiply-add), peak memory, predicted
time, the chosen bracketing and the predicted speed-up.  ``Plan.auto`` is the mode with
the smallest predicted time.  A scalar output plans pure reverse mode (one adjoint sweep).
"""

from __future__ import annotations

from dataclasses import dataclass

from .calibrate import predict_seconds, pure_seconds, rates
from .plan import ChainPlan


def _fmt_flops(x):
    return "infeasible" if x is None else f"{2 * x:,.0f}"


@dataclass(frozen=True)
class Plan:
    """Forward, reverse and optimal Jacobian accumulation for one function.

    Attributes
    ----------
    chain : list of ChainPiece
    chain_plan : ChainPlan
    seconds : dict
        Predicted seconds of ``"forward"``, ``"reverse"`` and ``"optimal"``.
    memory : dict
        Peak words kept for adjoint sweeps (tape) in each mode.
    """

    chain: tuple
    chain_plan: ChainPlan
    seconds: dict
    memory: dict

    @classmethod
    def from_chain(cls, chain, chain_plan):
        """The plan of ``chain`` (from :func:`~gradc.planner.extract.extract_chain`) with its
        optimal ``chain_plan``, timed with the calibrated :func:`rates`."""
        rate = rates()
        seconds = {
            "forward": pure_seconds(chain, "forward", rate),
            "reverse": pure_seconds(chain, "reverse", rate),
            "optimal": predict_seconds(chain_plan.steps, chain, rate),
        }
        if chain_plan.reverse_cost is None:
            seconds["reverse"] = float("inf")
        memory = {"forward": 0, "reverse": chain_plan.reverse_tape,
                  "optimal": chain_plan.peak_tape}
        return cls(tuple(chain), chain_plan, seconds, memory)

    @property
    def auto(self) -> str:
        """The mode predicted to be fastest (ties prefer the optimal plan)."""
        order = ["reverse", "forward", "optimal"]  # ties: the simpler plan
        return min(order, key=lambda m: (self.seconds[m], order.index(m)))

    @property
    def bracketing(self) -> str:
        """The optimal plan in the TAN / ADJ / MUL notation of :mod:`gradc.planner.plan`."""
        return self.chain_plan.bracketing

    @property
    def speedup(self) -> float:
        """Predicted time of the best pure mode over the optimal plan's."""
        best = min(self.seconds["forward"], self.seconds["reverse"])
        return best / self.seconds["optimal"] if self.seconds["optimal"] else 1.0

    def table(self) -> str:
        """The printed comparison: flops, memory and predicted time of each mode."""
        cp = self.chain_plan
        first, last = cp.pieces[0], cp.pieces[-1]
        lines = [
            f"Jacobian of R^{first.n_in} -> R^{last.n_out}: chain of {len(cp.pieces)} pieces "
            f"({', '.join(p.kind for p in self.chain)})",
            f"  {'mode':<10}{'flops':>16}{'memory (words)':>16}{'predicted us':>14}",
        ]
        for mode, cost in (("forward", cp.forward_cost), ("reverse", cp.reverse_cost),
                           ("optimal", cp.cost)):
            us = self.seconds[mode] * 1e6
            lines.append(f"  {mode:<10}{_fmt_flops(cost):>16}{self.memory[mode]:>16,}"
                         f"{us:>14,.1f}")
        lines.append(f"  bracketing: {cp.bracketing}")
        lines.append(f"  predicted speed-up over the best pure mode: {self.speedup:.2f}x "
                     f"(flops: {cp.speedup:.2f}x); auto picks {self.auto}")
        return "\n".join(lines)

    def explain(self) -> str:
        """Same as :meth:`table`."""
        return self.table()

    def __str__(self) -> str:
        return self.table()

    def __repr__(self) -> str:
        return (f"Plan(bracketing={self.bracketing!r}, optimal_flops={2 * self.chain_plan.cost}, "
                f"auto={self.auto!r})")
