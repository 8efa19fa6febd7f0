"""Backend: generated source -> callable kernels, with a content-hashed disk cache.

Contract
--------
:func:`load(source, key, names, jit)` returns a :class:`Kernels` namespace with the
module's functions ``names`` (the kernels its manifest lists, see
:mod:`gradc.codegen.emit`).

* ``jit=True``: the module is written to ``<cache>/<key>/kernels.py`` and imported from
  there, and every function goes through :func:`njit`, the one numba wrapper, with numba's
  own on-disk cache enabled, so a second process that loads the same module loads machine
  code instead of compiling.  Functions compile lazily, on first call.
* ``jit=False``: the same source runs as plain Python, with the runtime helper modules
  swapped for their pure-Python versions (for debugging and for tracebacks into the
  generated code).

The cache folder is ``$GRADC_CACHE_DIR``, else ``$XDG_CACHE_HOME/gradc``, else
``~/.cache/gradc``.  gradc imports code from it, so it is created with mode 0700 (files
0600) and used only if it belongs to this user and nobody else can write to it (as ssh
does with its keys); otherwise :func:`cache_dir` warns and uses a private temporary
folder for the process.  An entry any of whose files (numba's included) is not this
user's, or is writable by others, is not loaded but rewritten.  An entry is ``kernels.py``, its ``manifest.json`` (the kernels, their
arguments, output kinds and memory tables) and ``meta.json`` holding both files'
SHA-256; an entry whose files are missing, truncated or altered is detected by those
hashes and rewritten (atomically, so concurrent processes never see half a file).  Keys are content hashes that
include gradc's own source, so entries made by another gradc version are never reused.
:func:`lookup` returns the source and manifest of a cached entry (used to skip the sympy
work entirely).
The cache is kept under ``$GRADC_CACHE_MAX_MB`` MiB (default 1024; 0 for no limit) by
removing the least recently used entries whenever a new one is written (:func:`prune`);
``gradc cache`` shows it and ``gradc cache --clear`` empties it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import sys
import tempfile
import types
from functools import lru_cache
from pathlib import Path

import numba
import numpy as np
from numba.core.caching import FunctionCache

class _CheckedFunctionCache(FunctionCache):
    """numba's on-disk cache, except that an unreadable entry (a truncated or corrupted
    file) counts as a miss: numba compiles again and overwrites it."""

    def load_overload(self, sig, target_context):
        try:
            return super().load_overload(sig, target_context)
        except Exception:  # noqa: BLE001 - any failure to unpickle means "not cached"
            return None

    def save_overload(self, sig, data):
        """numba writes its files with the process's umask; make them private (0600, the
        folder 0700) like the rest of the entry, so the entry stays trusted."""
        super().save_overload(sig, data)
        try:
            folder = Path(self._cache_path)
            _make_private(folder)
            for f in folder.iterdir():
                if f.is_file() and os.stat(f).st_uid == os.getuid() and f.stat().st_mode & 0o077:
                    os.chmod(f, 0o600)
        except (OSError, AttributeError):
            pass


def njit(fn, *, parallel: bool = False):
    """The one place gradc calls ``numba.njit``: every kernel gets these options.

    Before the first parallel kernel, ``OMP_WAIT_POLICY`` defaults to ``PASSIVE`` (unless
    set): with OpenMP's default active wait, numba's idle pool threads spin after each
    ``prange`` loop and take the core from the matrix product that follows
    (``OMP_WAIT_POLICY=ACTIVE python benchmarks/bench_embed.py`` shows the cost).  It only
    takes effect if OpenMP is not loaded yet.
    """
    if parallel:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    disp = numba.njit(fn, cache=True, error_model="numpy", parallel=parallel, nogil=True)
    disp._cache = _CheckedFunctionCache(disp.py_func)
    return disp


def configured_cache_dir() -> Path:
    """The cache folder the environment asks for (see the module docstring)."""
    env = os.environ.get("GRADC_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "gradc"


def unsafe_reason(path: Path):
    """Why ``path`` must not be trusted (``None`` if it may): it must belong to this
    user and be writable by nobody else, as ssh requires of its keys.  A symlink is
    judged by what it points to, and must itself belong to this user."""
    try:
        link = os.lstat(path)
        st = os.stat(path)
    except OSError as err:
        return f"cannot inspect it ({err.strerror})"
    uid = os.getuid()
    for what, info in (("it", st), ("the link to it", link)):
        if info.st_uid != uid:
            return f"{what} belongs to uid {info.st_uid}, not to this user ({uid})"
    if st.st_mode & 0o022:
        return f"it is writable by {'group and others' if st.st_mode & 0o022 == 0o022 else 'group' if st.st_mode & 0o020 else 'others'} (mode {st.st_mode & 0o777:o})"
    return None


def _make_private(path: Path) -> None:
    """Create ``path`` (and missing parents) with mode 0700."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = os.stat(path)
    if st.st_uid == os.getuid() and st.st_mode & 0o077 and not os.path.islink(path):
        os.chmod(path, 0o700)


_fallback: dict = {}  # configured root -> this process's private replacement


def cache_dir() -> Path:
    """The root of gradc's disk cache: :func:`configured_cache_dir`, created with mode 0700,
    if it belongs to this user and nobody else can write to it.  Otherwise gradc does not
    load anything from there (another user could plant code in it): it warns once, saying
    why and what to do, and uses a private temporary folder for this process instead."""
    root = configured_cache_dir()
    if root in _fallback:
        return _fallback[root]
    try:
        if not root.exists():
            _make_private(root)  # an existing folder is checked, not changed
        reason = unsafe_reason(root)
    except OSError as err:
        reason = f"it cannot be created ({err.strerror})"
    if reason is None:
        return root
    import warnings

    private = Path(tempfile.mkdtemp(prefix="gradc-private-cache-"))
    _fallback[root] = private
    warnings.warn(
        f"gradc: not using the cache folder {root}: {reason}. Kernels compiled now are "
        f"kept in {private} for this process only. Make the folder yours and private "
        f"(chown; chmod 700 {root}) or set GRADC_CACHE_DIR to a folder of your own.",
        RuntimeWarning, stacklevel=2)
    return private


def verify() -> list:
    """Check the whole cache: the root and every entry (ownership and modes of every file,
    numba's included, and the SHA-256 of the source and manifest).  Returns one
    ``(key or "root", problem)`` pair per problem found; empty when all is well."""
    root = configured_cache_dir()
    if not root.exists():
        return []
    reason = unsafe_reason(root)
    if reason is not None:
        return [("root", f"{root}: {reason}")]
    out = []
    for e in entries():
        out += [(e["key"], p) for p in entry_problems(e["path"])]
        if not any(k == e["key"] for k, _ in out) and (e["path"] / "meta.json").exists() \
                and lookup(e["key"]) is None:
            out.append((e["key"], "its files do not match the hashes in meta.json"))
    return out


def entry_problems(entry: Path) -> list:
    """Every file and folder of a cache entry (numba's files included) that is not this
    user's or is writable by others, as ``"path: reason"`` strings."""
    out = []
    for path in [entry, *sorted(entry.rglob("*"))]:
        reason = unsafe_reason(path)
        if reason is not None:
            out.append(f"{path}: {reason}")
    return out


@lru_cache(maxsize=1)
def fingerprint() -> str:
    """A hash of gradc's own source and the numba/numpy/sympy versions."""
    import numpy
    import sympy

    h = hashlib.sha256()
    root = Path(__file__).parent
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    for mod in (numba, numpy, sympy):
        h.update(f"{mod.__name__}={mod.__version__}".encode())
    h.update(sys.version.encode())
    return h.hexdigest()


def make_key(*parts: str) -> str:
    """The cache key for a compile request: hash of its parts and :func:`fingerprint`."""
    h = hashlib.sha256(fingerprint().encode())
    for p in parts:
        h.update(b"\0" + p.encode())
    return h.hexdigest()[:32]


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def lookup(key: str):
    """``(source, manifest)`` stored under ``key``, or None if absent or corrupted (the
    manifest is None for an entry stored without one).  A hit marks the entry as used
    now (the mtime of its ``meta.json``), for :func:`prune`."""
    entry = cache_dir() / key
    if entry.exists() and entry_problems(entry):
        return None  # not trusted: store() rewrites it privately
    try:
        meta = json.loads((entry / "meta.json").read_text(encoding="utf-8"))
        source = (entry / "kernels.py").read_text(encoding="utf-8")
        manifest_text = None
        if meta.get("manifest_sha256"):
            manifest_text = (entry / "manifest.json").read_text(encoding="utf-8")
    except (OSError, ValueError):
        return None
    if meta.get("sha256") != _sha(source):
        return None
    manifest = None
    if manifest_text is not None:
        if meta["manifest_sha256"] != _sha(manifest_text):
            return None
        try:
            manifest = json.loads(manifest_text)
        except ValueError:
            return None
    try:
        os.utime(entry / "meta.json")
    except OSError:
        pass
    return source, manifest


#: Default size limit of the disk cache in MiB (``$GRADC_CACHE_MAX_MB``; 0: no limit).
CACHE_MAX_MB = 1024


_KEY = re.compile(r"[0-9a-f]{32}")


def entries() -> list[dict]:
    """Every cache entry: ``{"key", "path", "bytes", "used"}`` (used: a POSIX time)."""
    root = cache_dir()
    out = []
    if not root.is_dir():
        return out
    for entry in root.iterdir():
        meta = entry / "meta.json"
        # an entry, or what numba left of one another process removed (no meta.json)
        if not entry.is_dir() or not (meta.exists() or _KEY.fullmatch(entry.name)):
            continue
        try:
            size = sum(f.stat().st_size for f in entry.rglob("*") if f.is_file())
            used = (meta if meta.exists() else entry).stat().st_mtime
        except OSError:  # removed by another process meanwhile
            continue
        out.append({"key": entry.name, "path": entry, "bytes": size, "used": used})
    return out


def prune(max_bytes: int | None = None, keep=()) -> list[str]:
    """Remove the least recently used entries until the cache holds at most ``max_bytes``
    (default ``$GRADC_CACHE_MAX_MB`` MiB, else :data:`CACHE_MAX_MB`; 0: no limit).  Keys in
    ``keep`` and entries loaded by this process stay.  Returns the removed keys.

    A process that has an entry's module loaded keeps working if another removes it: numba
    compiles again where its cache files are gone."""
    import shutil

    if max_bytes is None:
        mb = os.environ.get("GRADC_CACHE_MAX_MB", "")
        try:
            max_bytes = int(float(mb) * 2**20) if mb.strip() else CACHE_MAX_MB * 2**20
        except ValueError:
            max_bytes = CACHE_MAX_MB * 2**20
    if max_bytes <= 0:
        return []
    found = entries()
    total = sum(e["bytes"] for e in found)
    protected = set(keep) | {k for k, _ in _loaded}
    removed = []
    for e in sorted(found, key=lambda e: e["used"]):
        if total <= max_bytes:
            break
        if e["key"] in protected:
            continue
        shutil.rmtree(e["path"], ignore_errors=True)
        total -= e["bytes"]
        removed.append(e["key"])
    return removed


def store(key: str, source: str, manifest=None) -> Path:
    """Write ``source`` (and its ``manifest``, a JSON-able dict) under ``key`` unless an
    intact identical entry exists."""
    entry = cache_dir() / key
    path = entry / "kernels.py"
    if lookup(key) == (source, manifest):
        return path
    _make_private(entry)
    pycache = entry / "__pycache__"
    if pycache.exists():  # numba's files belong to the old text: drop them
        for f in pycache.iterdir():
            f.unlink(missing_ok=True)
    for f in entry.iterdir():  # an entry that was not private is rewritten as one
        if f.is_file() and not f.is_symlink() and os.stat(f).st_uid == os.getuid():
            os.chmod(f, 0o600)
    meta = {"sha256": _sha(source), "key": key}
    _write_atomic(path, source)
    if manifest is not None:
        # (not sort_keys: the kernels' order is the specs' order, which a function loaded
        # from the cache must show as a freshly compiled one does)
        text = json.dumps(manifest)
        _write_atomic(entry / "manifest.json", text)
        meta["manifest_sha256"] = _sha(text)
    _write_atomic(entry / "meta.json", json.dumps(meta))
    prune(keep=(key,))
    return path


def _python_vmath():
    scalar = dict(exp=np.exp, log=np.log, tanh=np.tanh, expm1=np.expm1, log1p=np.log1p,
                  # equal to 1/(1+exp(-x)), without overflow
                  sigmoid=lambda x: 0.5 * (1.0 + np.tanh(0.5 * x)))
    space = dict(scalar)
    for name, f in scalar.items():
        space[name + "_s"] = f

        def run(x, xo, out, oo, m, f=f):  # out[oo:oo+m] = f(x[xo:xo+m])
            out[oo:oo + m] = f(x[xo:xo + m])

        space[name + "_v"] = run
    return types.SimpleNamespace(**space)


#: numpy stand-ins for gradc's vectorised maths kernels on the ``jit=False`` path
#: (correctly rounded or within 1 ulp; the kernels are within 2 ulp of these), with the
#: out-of-line run (``<f>_v``) and scalar (``<f>_s``) forms the kernels call.
PYTHON_VMATH = _python_vmath()


class Kernels(types.SimpleNamespace):
    """The compiled kernels of one function, by name (``value``, ``value_and_grad``...)."""

    def __repr__(self):
        names = ", ".join(k for k in vars(self))
        return f"Kernels({names})"


_loaded: dict = {}


#: Generated modules longer than this many lines are refused before numba starts
#: (``$GRADC_MAX_LINES``; numba takes a few milliseconds per line).
MAX_LINES = 60_000

#: Seconds numba takes per generated line, for the estimate in that message.
SECONDS_PER_LINE = 0.003


def check_size(source: str) -> None:
    """Raise :class:`gradc.GradcError` if ``source`` is too long to compile in reasonable
    time (see :data:`MAX_LINES`), saying how long and what to do instead.  Functions
    are split into segments of bounded size, so memory is bounded whatever the length;
    time grows with it."""
    from .errors import GradcError

    limit = os.environ.get("GRADC_MAX_LINES", "")
    try:
        limit = int(limit) if limit.strip() else MAX_LINES
    except ValueError:
        limit = MAX_LINES
    lines = source.count("\n")
    if limit > 0 and lines > limit:
        minutes = lines * SECONDS_PER_LINE / 60
        raise GradcError(
            f"the generated kernels are {lines:,} lines long, past the limit of {limit:,} "
            f"(numba would take about {minutes:.0f} minutes). gradc turns sums of like terms "
            "(one expression with different parameters and coefficients) into loops, so "
            "this expression is mostly distinct code: write repeated structure as like "
            "terms or with MatrixSymbols, use jit=False to run it as plain Python, or set "
            "GRADC_MAX_LINES to a larger number (0: no limit)")


def load(source: str, key: str, names, jit: bool = True, parallel: bool = False,
         manifest=None) -> Kernels:
    """The kernels ``names`` of ``source`` (compiled, or loaded, as the module docstring
    says); ``manifest`` is stored with the source in the cache.  With ``jit``, a source
    too long for numba raises :class:`gradc.GradcError` first (:func:`check_size`)."""
    from .codegen import runtime

    if not jit:
        module = types.ModuleType(f"gradc_py_{key}")
        module.__dict__["__file__"] = f"<gradc kernels {key}>"
        code = compile(source, module.__file__, "exec")
        exec(code, module.__dict__)
        if (manifest or {}).get("dtype", "float64") == "float32":
            from .codegen import runtime32

            module._rt = runtime32.python
        else:
            module._rt = runtime.python
        module._vm = PYTHON_VMATH
        return Kernels(**{k: getattr(module, k) for k in names if hasattr(module, k)})
    cached = _loaded.get((key, parallel))
    if cached is not None:
        return cached
    check_size(source)
    try:
        path = store(key, source, manifest)
    except OSError as err:  # a full disk, a read-only folder: compile without the cache
        import warnings

        private = Path(tempfile.mkdtemp(prefix="gradc-uncached-"))
        path = private / key / "kernels.py"
        path.parent.mkdir(mode=0o700)
        path.write_text(source, encoding="utf-8")
        warnings.warn(f"gradc: could not write to the cache folder {cache_dir()} "
                      f"({err.strerror or err}); these kernels are compiled for this process "
                      f"only (in {private})", RuntimeWarning, stacklevel=3)
    name = f"gradc_kernels_{key}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    names = [k for k in names if hasattr(module, k)]
    helpers = manifest.get("helpers", []) if manifest else \
        sorted(v for v in vars(module) if v.startswith("_k_"))
    for k in helpers:  # segment functions: serial, called per chunk
        setattr(module, k, njit(getattr(module, k), parallel=False))
    for k in names:
        setattr(module, k, njit(getattr(module, k), parallel=parallel))
    kernels = Kernels(**{k: getattr(module, k) for k in names})
    _loaded[(key, parallel)] = kernels
    return kernels
