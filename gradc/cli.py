"""The ``gradc`` command line.

Contract
--------
``gradc demo`` runs the main job for a new user (see :mod:`gradc.demo`).
``gradc plan FILE.py:NAME`` prints the Jacobian plan table of the object ``NAME`` defined in
the Python file: a :class:`gradc.CompiledFunction`, a dict of :func:`gradc.compile`
arguments (``expr``, ``wrt``, ``data``, ``consts``), or a function returning either.
``gradc compare FILE.py:NAME`` also compiles every mode, times it on random inputs of the
right shapes and prints predicted against measured time.  ``gradc export FILE.py:NAME -o
OUT.py`` writes the kernels as a standalone module (:mod:`gradc.export`).  ``gradc cache``
prints where the disk cache is and its size; ``gradc cache --clear`` empties it, ``gradc
cache --verify`` checks every entry's ownership, modes and hashes.

Every subcommand returns exit status 0 on success; a :class:`gradc.GradcError` prints its
message and exits with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys

from .errors import GradcError


def main(argv=None) -> int:
    """Run the ``gradc`` command line with ``argv`` (default ``sys.argv[1:]``); returns the
    exit status (0, or 2 after printing a :class:`gradc.GradcError`)."""
    parser = argparse.ArgumentParser(prog="gradc", description="gradc: a gradient compiler")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="compile, check and train the lecture's model")
    demo.add_argument("--fast", action="store_true", help="fewer steps, for tests")
    demo.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    for name, text in (("plan", "print the Jacobian plan of FILE.py:NAME"),
                       ("compare", "plan, compile and time every mode of FILE.py:NAME")):
        p = sub.add_parser(name, help=text)
        p.add_argument("target", help="FILE.py:NAME")
        p.add_argument("--memory", type=float, default=None, help="tape memory limit (words)")
        if name == "compare":
            p.add_argument("--repeat", type=int, default=7, help="timed runs per mode")
    ex = sub.add_parser("export", help="write FILE.py:NAME's kernels as a standalone module")
    ex.add_argument("target", help="FILE.py:NAME")
    ex.add_argument("-o", "--output", required=True, help="the module file to write")
    ca = sub.add_parser("cache", help="show (or --clear) the disk cache of compiled kernels")
    ca.add_argument("--clear", action="store_true", help="remove every entry")
    ca.add_argument("--verify", action="store_true",
                    help="check ownership, modes and hashes of every entry")
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            from .demo import run

            run(fast=args.fast, progress=not args.no_progress)
        elif args.command == "plan":
            fn_args = load_target(args.target)
            from . import plan

            fn_args.pop("fn", None)
            print(plan(**fn_args, memory=args.memory))
        elif args.command == "compare":
            compare(load_target(args.target), repeat=args.repeat)
        elif args.command == "export":
            from . import compile as gradc_compile

            target = load_target(args.target)
            fn = target.pop("fn", None) or gradc_compile(**target)
            print(f"wrote {fn.export(args.output)}")
        elif args.command == "cache":
            return cache_command(clear=args.clear, verify=args.verify)
    except GradcError as e:
        print(f"gradc: error: {e}", file=sys.stderr)
        return 2
    return 0


def cache_command(clear=False, verify=False):
    """Print the disk cache's folder, entries and size; with ``clear``, empty it first;
    with ``verify``, check every entry (:func:`gradc.backend.verify`) and return 1 if
    something is wrong."""
    from . import backend

    if verify:
        problems = backend.verify()
        for key, problem in problems:
            print(f"{key}: {problem}")
        n = len(backend.entries()) if backend.unsafe_reason(backend.configured_cache_dir()) \
            is None and backend.configured_cache_dir().exists() else 0
        print(f"{backend.configured_cache_dir()}: {n} entries checked, "
              f"{len(problems)} problem(s)" + ("" if problems else ": all private and intact"))
        return 1 if problems else 0
    if clear:
        removed = backend.prune(max_bytes=1, keep=())
        print(f"removed {len(removed)} entries")
    found = backend.entries()
    size = sum(e["bytes"] for e in found) / 2**20
    limit = backend.os.environ.get("GRADC_CACHE_MAX_MB") or backend.CACHE_MAX_MB
    print(f"{backend.cache_dir()}: {len(found)} entries, {size:.1f} MiB "
          f"(limit {limit} MiB, $GRADC_CACHE_MAX_MB)")
    return 0


def load_target(target: str) -> dict:
    """The :func:`gradc.compile` arguments named by ``FILE.py:NAME``."""
    import runpy

    import sympy as sp

    from .compiled import CompiledFunction

    path, sep, name = target.rpartition(":")
    if not sep or not path:
        raise GradcError(f"expected FILE.py:NAME, got {target!r}")
    try:
        namespace = runpy.run_path(path)
    except OSError as e:
        raise GradcError(f"cannot read {path}: {e.strerror}") from None
    if name not in namespace:
        raise GradcError(f"{path} defines no {name!r}")
    obj = namespace[name]
    if callable(obj) and not isinstance(obj, (CompiledFunction, sp.Basic)):
        obj = obj()
    if isinstance(obj, CompiledFunction):
        return {"expr": obj.expr, "wrt": obj.wrt, "data": obj.data, "consts": obj.consts,
                "fn": obj}
    if isinstance(obj, dict) and "expr" in obj and "wrt" in obj:
        return {k: obj.get(k, ()) for k in ("expr", "wrt", "data", "consts")}
    raise GradcError(
        f"{name} in {path} must be a CompiledFunction or a dict with expr and wrt "
        f"(got {type(obj).__name__})"
    )


def _random_value(sym, rng):
    import numpy as np
    import sympy as sp

    if isinstance(sym, sp.MatrixSymbol):
        r, c = (int(d) for d in sym.shape)
        return rng.normal(size=(r, c)) / np.sqrt(max(c, 1))
    return 0.5


def compare(fn_args: dict, repeat: int = 7) -> dict:
    """Print predicted against measured time of every Jacobian mode; return the times."""
    import time

    import numpy as np

    from . import compile as gradc_compile

    fn = gradc_compile(fn_args["expr"], fn_args["wrt"], fn_args.get("data", ()),
                       fn_args.get("consts", ()), reduce=None)
    plan = fn.plan
    print(plan)
    rng = np.random.default_rng(0)
    params = [_random_value(s, rng) for s in fn.wrt]
    args = [np.asarray(_random_value(s, rng)).reshape(1, -1) for s in fn.data]
    args += [_random_value(s, rng) for s in fn.consts]
    measured = {}
    ref = None
    for mode in ("forward", "reverse", "optimal"):
        J = fn.jacobian(params, *args, mode=mode)  # compile and warm up
        ref = J if ref is None else ref
        if not np.allclose(J, ref, rtol=1e-9, atol=1e-12):
            raise GradcError(f"mode {mode} disagrees with forward mode")
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            fn.jacobian(params, *args, mode=mode)
            times.append(time.perf_counter() - t)
        measured[mode] = float(np.median(times))
    print(f"\n  {'mode':<10}{'predicted ms':>14}{'measured ms':>14}")
    for mode in ("forward", "reverse", "optimal"):
        print(f"  {mode:<10}{plan.seconds[mode] * 1e3:>14.3f}{measured[mode] * 1e3:>14.3f}")
    fastest = min(measured, key=measured.get)
    print(f"  auto picks {plan.auto}; fastest measured: {fastest}")
    return {"predicted": dict(plan.seconds), "measured": measured, "auto": plan.auto}


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
