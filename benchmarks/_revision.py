"""Which gradc a benchmark measured: for the header line of its output."""

import os


def gradc_revision():
    """Where gradc was imported from, and the git commit of that checkout (+ dirty flag)."""
    import subprocess

    import gradc

    root = os.path.dirname(os.path.dirname(os.path.abspath(gradc.__file__)))
    try:
        rev = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--", "gradc"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return f"{gradc.__file__} (git {rev}{', gradc/ modified' if dirty else ''})"
    except (OSError, subprocess.CalledProcessError):
        return f"{gradc.__file__} (not a git checkout)"
