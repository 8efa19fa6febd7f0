"""The plan of a compiled function: what each accumulation mode costs, as a printable value.

Contract
--------
:class:`Plan` wraps the chain extracted from a program and its
:class:`~gradc.planner.ChainPlan`, planned to minimise the time predicted by the
calibrated :class:`~gradc.planner.timing.TimeModel` (:func:`gradc.planner.calibrate.time_model`),
and prints a table: forward, reverse and optimal cost in flops (2 per multiply-add), peak
memory, predicted time, the chosen bracketing, the predicted speed-up, and the plan of
fewest flops where it differs from the fastest.  Since the pure modes are candidate
plans, the optimal plan is never predicted slower than either.  ``Plan.auto`` is the mode
with the smallest predicted time (ties go to the simpler pure mode).  A scalar output plans
pure reverse mode (one adjoint sweep).
"""

from __future__ import annotations

from dataclasses import dataclass

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
        ``chain_plan``, planned with a :class:`~gradc.planner.timing.TimeModel`."""
        if chain_plan.seconds is None:
            raise ValueError("Plan.from_chain needs a chain plan made with a time model")
        seconds = {
            "forward": chain_plan.forward_seconds,
            "reverse": (float("inf") if chain_plan.reverse_seconds is None
                        else chain_plan.reverse_seconds),
            "optimal": chain_plan.seconds,
        }
        memory = {"forward": 0, "reverse": chain_plan.reverse_tape,
                  "optimal": chain_plan.peak_tape}
        return cls(tuple(chain), chain_plan, seconds, memory)

    def price(self, plan) -> ChainPlan:
        """A given plan of this chain (a bracketing such as ``"ADJ(F3, F2..F1)"`` or a
        :class:`~gradc.planner.Step` tree), checked and priced: its ``cost`` in
        multiply-adds and ``seconds`` predicted on this machine."""
        from .calibrate import time_model
        from .chain import jacobian_chain

        cp = self.chain_plan
        return jacobian_chain(cp.pieces, cp.memory, time_model(self.chain), plan=plan)

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
        fp = cp.flop_plan
        if fp is not None and fp.expression() != cp.bracketing:
            base = cp.seconds - cp.steps.seconds
            lines.append(f"  fewest flops: {fp.expression()} ({_fmt_flops(fp.cost)} flops, "
                         f"predicted {(base + fp.seconds) * 1e6:,.1f} us): slower, "
                         "so not chosen")
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
