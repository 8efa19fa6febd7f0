"""The ``gradc`` command line.

Contract
--------
``gradc demo`` runs the main job for a new user (see :mod:`gradc.demo`).  Every subcommand
returns exit status 0 on success; a :class:`gradc.GradcError` prints its message and exits
with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys

from .errors import GradcError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="gradc", description="gradc: a gradient compiler")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="compile, check and train the lecture's model")
    demo.add_argument("--fast", action="store_true", help="fewer steps, for tests")
    demo.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            from .demo import run

            run(fast=args.fast, progress=not args.no_progress)
    except GradcError as e:
        print(f"gradc: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
