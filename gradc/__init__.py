"""gradc: a symbolic-to-numeric gradient compiler.

Declare a model or loss as a sympy expression; gradc lowers it to a small IR, derives
forward- and reverse-mode programs, generates readable Python source and compiles it with
numba into value-and-gradient kernels.

>>> import sympy as sp, gradc
>>> w, x = sp.symbols("w x")
>>> fn = gradc.compile(sp.tanh(w * x), wrt=[w], data=[x])
"""

__version__ = "0.1.0"

from .errors import GradcError  # noqa: E402
from .compiled import CompiledFunction, compile  # noqa: E402
from . import nn, optim, planner  # noqa: E402

__all__ = ["CompiledFunction", "GradcError", "compile", "nn", "optim", "planner", "__version__"]
