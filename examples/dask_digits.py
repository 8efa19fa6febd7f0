"""Data-parallel training of the digits MLP on a Dask cluster.

    python examples/dask_digits.py [OUTDIR] [--fast]

The training images are a Dask array chunked along the batch axis; every step,
gradc.dask.value_and_grad maps the compiled kernel over the chunks on a
dask.distributed LocalCluster of two worker processes and adds the partial sums in a fixed
tree, so the gradient equals the single-process one to rounding.  The example checks that,
trains full-batch gradient descent with momentum, reports the held-out accuracy, and plots
the loss curve (dask_digits_loss.png).  Needs the dask extra: pip install -e ".[dask]".
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

import gradc  # noqa: E402
import gradc.dask  # noqa: E402
from gradc import optim  # noqa: E402
from _common import accuracy, banner, load_digits_split, plt, prepare_outdir, run_script, save_figure  # noqa: E402
from digits_mlp import init_params, logits, mlp_loss  # noqa: E402


def main(outdir=None, fast=False):
    import dask.array as da
    from dask.distributed import Client, LocalCluster

    outdir = prepare_outdir(outdir)
    written = []
    banner("Data-parallel gradients of the digits MLP on a two-worker Dask cluster")
    Xtr, Xte, ytr, yte = load_digits_split()
    hidden, lam = 32, 1e-4
    loss, wrt, data, consts = mlp_loss(hidden)
    fn = gradc.compile(loss, wrt=wrt, data=data, consts=consts)
    params = init_params(hidden)
    X = da.from_array(Xtr, chunks=(len(ytr) // 4 + 1, 64))  # four chunks of the batch
    y = da.from_array(ytr, chunks=len(ytr) // 4 + 1)
    steps = 40 if fast else 300
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster):
        v, g = gradc.dask.value_and_grad(fn, params, X, y, consts=[lam])
        v0, g0 = fn.value_and_grad(params, Xtr, ytr, lam)
        err = max(float(np.max(np.abs(a - b))) for a, b in zip(g, g0))
        print(f"  cluster vs single process: value {v:.12f} vs {v0:.12f}, "
              f"largest gradient difference {err:.1e}")
        opt = optim.SGD(lr=optim.cosine(0.5, steps), momentum=0.9)
        losses = []
        for step in range(steps):
            v, g = gradc.dask.value_and_grad(fn, params, X, y, consts=[lam])
            losses.append(v)
            opt.step(params, g)
    acc = accuracy(logits(params, Xte), yte)
    print(f"  {steps} full-batch steps: loss {losses[0]:.3f} -> {losses[-1]:.3f}; "
          f"test accuracy {acc:.3f}")
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.semilogy(losses)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title("digits MLP, gradients on a 2-worker Dask cluster")
    save_figure(fig, outdir, "dask_digits_loss.png", written)
    return {"accuracy": acc, "losses": losses, "gradient_error": err, "files": written}


if __name__ == "__main__":
    run_script(main, __doc__.splitlines()[0])
