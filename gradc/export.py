"""Export: a compiled function as one standalone Python module (numpy and numba only).

Contract
--------
:func:`export_source` returns the text of a module that defines the kernels of a
:class:`~gradc.CompiledFunction` under the same names as its methods (``value``,
``value_and_grad``, ``grad``, ``jvp``), compiled with the same numba options as gradc's
own, with gradc's vectorised maths and runtime helpers copied in; it imports neither
sympy nor gradc.  Each function's docstring gives its arguments, their shapes and order.
What the module defines comes from the function's manifest (:mod:`gradc.codegen.emit`).
The functions take the arguments the kernels take (``params`` as one float64 array for
scalar parameters, else a tuple of arrays), so results are identical to
``fn.kernels.*``.
"""

from __future__ import annotations

import re
from pathlib import Path

_BANNER = '''"""Standalone gradc kernels (exported by gradc {version}).

Needs only numpy and numba.  Functions: {names}.
{args}
The sections below are, in order: gradc's vectorised elementwise maths, gradc's runtime
helpers, and the generated kernels.
"""
'''


def _helper_source(path: Path) -> str:
    """A helper module's text made to live inside the exported module: no relative
    imports (its siblings are defined in the same file), no ``__future__`` import."""
    text = path.read_text(encoding="utf-8")
    text = re.sub(r"^from __future__ import annotations\n", "", text, flags=re.M)
    text = re.sub(r"^from \. import (\w+)\n", "", text, flags=re.M)
    return re.sub(r"\bvmath\.(\w+)\(", r"\1(", text)


_FLOAT32 = """# float32 kernels (gradc.codegen.runtime32): the allocators give float32 arrays
@njit(cache=True, error_model="numpy")
def empty(shape):
    return np.empty(shape, np.float32)


@njit(cache=True, error_model="numpy")
def zeros(shape):
    return np.zeros(shape, np.float32)

"""


def export_source(fn) -> str:
    """The standalone module for ``fn`` (see the module docstring).

    Examples
    --------
    >>> import sympy as sp, gradc
    >>> from gradc.export import export_source
    >>> w, x = sp.symbols("w x")
    >>> text = export_source(gradc.compile(sp.tanh(w * x), wrt=[w], data=[x], jit=False))
    >>> "import gradc" in text or "import sympy" in text
    False
    """
    from . import __version__
    from .codegen import runtime, vmath

    kernels = fn.source
    manifest = fn.manifest
    body = kernels[kernels.index("CHUNK = "):]
    body = re.sub(r"\b_vm\.", "", body)
    body = re.sub(r"\b_rt\.", "", body)
    names = [n for n in manifest["kernels"] if hasattr(fn.kernels, n)]
    args = f"{manifest['arguments_doc']}\nreduce = {manifest['reduce']!r}."
    parts = [
        _BANNER.format(version=__version__, names=", ".join(names), args=args),
        "import math\n\nimport numpy as np\nfrom numba import njit, prange\n",
        "# " + "-" * 86 + "\n# gradc.codegen.vmath\n",
        _helper_source(Path(vmath.__file__)),
        "# " + "-" * 86 + "\n# gradc.codegen.runtime\n",
        _helper_source(Path(runtime.__file__)),
        _FLOAT32 if manifest.get("dtype") == "float32" else "",
        "# " + "-" * 86 + "\n# the generated kernels\n",
        body,
        "\n# the one set of numba options gradc uses for kernels\n"
        f"_kernel = njit(cache=True, error_model='numpy', nogil=True, parallel={fn.parallel})\n"
        + "".join(f"{n} = njit(cache=True, error_model='numpy', nogil=True)({n})\n"
                  for n in manifest["helpers"])
        + "".join(f"{n} = _kernel({n})\n" for n in names),
    ]
    return "\n".join(parts)


def export(fn, path) -> Path:
    """Write :func:`export_source` of ``fn`` to ``path``; returns the path."""
    path = Path(path)
    path.write_text(export_source(fn), encoding="utf-8")
    return path
