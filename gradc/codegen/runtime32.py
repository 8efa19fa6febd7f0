"""The runtime of float32 kernels (``gradc.compile(..., dtype="float32")``).

Contract
--------
Every helper of :mod:`gradc.codegen.runtime`, under the same name, except the two
allocators the generated code calls for its arrays, ``empty`` and ``zeros``, which give
float32 arrays here.  The other helpers follow the dtype of their array arguments (and
accumulate in float64), so a kernel written once serves both dtypes: a float32 module
imports this module as ``_rt`` where a float64 one imports ``runtime``.  ``python`` is the
matching namespace for the ``jit=False`` path.
"""

from types import SimpleNamespace

import numba
import numpy as np

from . import runtime as _base

globals().update({k: v for k, v in vars(_base).items()
                  if not k.startswith("__") and k not in ("empty", "zeros", "python")})


def empty(shape):
    """``np.empty(shape)`` of float32; ``shape`` an int or a tuple of ints."""
    return np.empty(shape, np.float32)


def zeros(shape):
    """``np.zeros(shape)`` of float32; ``shape`` an int or a tuple of ints."""
    return np.zeros(shape, np.float32)


python = SimpleNamespace(**vars(_base.python))
python.empty = lambda shape: np.empty(shape, np.float32)
python.zeros = lambda shape: np.zeros(shape, np.float32)
empty = numba.njit(cache=True, error_model="numpy")(empty)
zeros = numba.njit(cache=True, error_model="numpy")(zeros)
