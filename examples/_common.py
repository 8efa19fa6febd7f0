"""Helpers shared by the examples: command line, output folder, figures, the digits data.

Every example is a script ``python examples/NAME.py [OUTDIR] [--fast]`` with a
``main(outdir, fast=False) -> dict``; :func:`run_script` is the common ``__main__`` part.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window (must come before pyplot is imported)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

DEFAULT_OUTDIR = "gradc-out"


def prepare_outdir(outdir) -> Path:
    """The output folder as a Path, created if missing."""
    path = Path(DEFAULT_OUTDIR if outdir is None else outdir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_figure(fig, outdir: Path, name: str, written: list) -> Path:
    """Save ``fig`` as ``outdir/name`` (PNG), close it, and record the path in ``written``."""
    path = Path(outdir) / name
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    written.append(str(path))
    print(f"  wrote {path}")
    return path


def run_script(main, description: str) -> dict:
    """Parse ``[OUTDIR] [--fast]``, run ``main`` and print how long it took."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("outdir", nargs="?", default=DEFAULT_OUTDIR,
                        help=f"folder for the figures (default ./{DEFAULT_OUTDIR})")
    parser.add_argument("--fast", action="store_true",
                        help="small sizes and few steps (a few seconds; used by the tests)")
    args = parser.parse_args()
    start = time.perf_counter()
    result = main(args.outdir, fast=args.fast)
    print(f"\ndone in {time.perf_counter() - start:.1f} s")
    return result


def banner(title: str) -> None:
    """A section heading in the printed output."""
    print(f"\n{title}\n{'-' * len(title)}")


def load_digits_split(seed: int = 0, test_size: float = 0.25):
    """scikit-learn's 8x8 digits, pixels scaled to [0, 1], stratified seeded split.

    Returns ``(X_train, X_test, y_train, y_test)`` with X of shape (n, 64), float64, and
    integer labels 0..9.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    X = X.astype(np.float64) / 16.0  # the pixels are integers 0..16
    return train_test_split(X, y.astype(np.int64), test_size=test_size, stratify=y,
                            random_state=seed)


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of rows whose largest logit is at the true label."""
    return float(np.mean(np.argmax(logits, axis=1) == labels))


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Mini-batches per epoch (the last one may be smaller), as gradc.optim.fit makes them."""
    return -(-n // batch_size)
