"""gradc: a symbolic-to-numeric gradient compiler.

Declare a model or loss as a sympy expression; gradc lowers it to a small IR, derives
forward- and reverse-mode programs, generates readable Python source and compiles it with
numba into value-and-gradient kernels.

>>> import sympy as sp, gradc
>>> w, x = sp.symbols("w x")
>>> fn = gradc.compile(sp.tanh(w * x), wrt=[w], data=[x])
"""

__version__ = "0.1.0"

from ._malloc import tune as _tune_malloc  # noqa: E402

_tune_malloc()

from .errors import GradcError  # noqa: E402
from .compiled import CompiledFunction, compile  # noqa: E402
from .objective import Objective  # noqa: E402
from . import nn, optim, planner  # noqa: E402

__all__ = ["CompiledFunction", "GradcError", "Objective", "compile", "plan", "nn", "optim", "planner", "__version__"]


def plan(expr, wrt, data=(), consts=(), memory=None):
    """Plan the Jacobian of ``expr`` with respect to ``wrt`` without compiling kernels.

    Returns a :class:`gradc.planner.report.Plan`: forward, reverse and optimal cost in
    flops, memory, predicted time and the chosen bracketing.  Data symbols are treated as
    fixed (one Jacobian per example).

    Examples
    --------
    >>> import sympy as sp, gradc
    >>> from gradc import nn
    >>> x = sp.MatrixSymbol("x", 100, 1); W = sp.MatrixSymbol("W", 3, 100)
    >>> p = gradc.plan(nn.sum(nn.tanh(W * x)), wrt=[x], consts=[W])
    >>> p.bracketing
    'ADJ(F3..F1)'
    """
    from .frontend import lower
    from .planner import jacobian_chain
    from .planner.calibrate import time_model
    from .planner.extract import extract_chain
    from .planner.report import Plan

    prog = lower(expr, list(wrt), (), list(data) + list(consts))
    chain = extract_chain(prog)
    return Plan.from_chain(chain, jacobian_chain([c.piece for c in chain], memory=memory,
                                                 model=time_model(chain)))
