"""The examples/ scripts, run in --fast mode: they write their figures and reach the stated
quality.  Each script is imported by path and its ``main(outdir, fast=True)`` called.

The run is dominated by numba compiling each example's kernels (the test session uses a
fresh gradc cache); the whole file takes well under a minute on two cores.
"""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import sympy as sp

import gradc

pytest.importorskip("matplotlib")
pytest.importorskip("sklearn")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def load(name):
    """Import examples/<name>.py as a module (the folder is not a package)."""
    module_name = f"gradc_example_{name}"
    spec = importlib.util.spec_from_file_location(module_name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def run(name, outdir):
    result = load(name).main(outdir, fast=True)
    files = [Path(f) for f in result["files"]]
    assert files, f"{name} wrote no figures"
    for f in files:
        assert f.parent == Path(outdir) and f.suffix == ".png"
        data = f.read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 5_000, f"{f} is not a real PNG"
    return result


def test_logic_gates(tmp_path, capsys):
    r = run("logic_gates", tmp_path)
    assert r["and_outputs"] == [0, 0, 0, 1]
    # the grid search realises the 14 linearly separable gates and never XNOR
    assert r["gates_realised_by_one_perceptron"] == 14
    assert not r["xnor_realised_by_one_perceptron"]
    assert r["hand_built_outputs"] == [1, 0, 0, 1]
    # the network learned by SGD computes XNOR, confidently
    assert r["learned_correct"] and r["learned_outputs"] == [1, 0, 0, 1]
    p = np.array(r["learned_probabilities"])
    assert np.all(np.abs(p - [1, 0, 0, 1]) < 0.05)
    assert r["restarts_solved"] >= 1
    out = capsys.readouterr().out
    assert "contradicts" in out and "never realised: XOR, XNOR" in out


def test_approximation(tmp_path):
    mse = run("approximation", tmp_path)["mse"]
    # fast mode: 3000 steps from one start (the full run reaches about 1e-5, 2e-7, 4e-4, 5e-3)
    assert mse["x^2"] < 1e-3 and mse["sin(x)"] < 1e-3
    assert mse["|x|"] < 1e-2 and mse["H(x)"] < 2e-2


def test_ridge_regression(tmp_path):
    r = run("ridge_regression", tmp_path)
    r_, lam, b = sp.symbols("r lambda b", real=True)
    w1, x1 = sp.symbols("w1 x1", real=True)
    expected = {"dl/dr": 2 * r_, "dl/dyhat": -2 * r_, "dl/db": -2 * r_,
                "dl/dw1": -2 * r_ * x1 + 2 * lam * w1}
    for name, formula in expected.items():
        assert sp.simplify(r["partials"][name] - formula) == 0, name
    assert r["gradc_vs_formula_max_error"] < 1e-12
    assert r["indexed_vs_formula_max_error"] < 1e-12
    small, large = r["indexed_source_lines"]
    assert abs(small - large) <= 0.1 * small  # the same loops, whatever the number of features
    runs, best = r["runs"], r["optimal_loss"]
    # decaying schedules end near the closed-form optimum even after 200 steps
    for name in ("staircase (/10 at 50%, 75%)", "cosine"):
        assert runs[name]["excess"] < 5e-3 * best, name
        assert runs[name]["distance"] < 0.2, name
    # a constant rate stays noisier (further from the optimum) than the decaying ones
    assert runs["constant"]["excess"] > runs["cosine"]["excess"]
    for v in runs.values():
        assert v["excess"] >= -1e-9  # nothing beats the closed form


def test_digits_mlp(tmp_path):
    r = run("digits_mlp", tmp_path)
    assert r["test_accuracy"] >= 0.90
    assert r["epoch_losses"][-1] < r["epoch_losses"][0]
    cm = np.array(r["confusion_matrix"])
    assert cm.shape == (10, 10) and cm.sum() == 450
    assert np.trace(cm) / cm.sum() == pytest.approx(r["test_accuracy"])


def test_locally_connected(tmp_path):
    out = run("locally_connected", tmp_path)
    for key, floor in (("results", 0.85), ("results_28", 0.8)):
        res = out[key]
        fc, lc, conv = res["fully connected"], res["locally connected"], res["convolutional"]
        assert conv["hidden_params"] < lc["hidden_params"] < fc["hidden_params"], key
        for name, r in res.items():
            if key == "results_28" and name != "convolutional":
                assert np.isnan(r["test_accuracy"])  # --fast does not train it
                continue
            assert r["test_accuracy"] >= floor, (key, name)
    assert out["results_28"]["fully connected"]["hidden_params"] == 26 * 26 * 2 * (28 * 28 + 1)
    adam = out["adam_28"]["epoch_losses"]
    assert adam[-1] < adam[0] and out["adam_28"]["test_accuracy"] >= 0.8


def test_newton(tmp_path):
    r = run("newton", tmp_path)
    for problem in ("network", "chain"):
        trust, lbfgs = r[problem]["trust-ncg"], r[problem]["L-BFGS-B"]
        # both converge: the gradient is tiny (the tolerance is 1e-8)
        assert trust["grad_norm"] < 1e-7 and lbfgs["grad_norm"] < 1e-6, problem
        assert trust["success"], (problem, trust["message"])
        # Newton's method with exact Hessian-vector products needs fewer iterations
        assert trust["iterations"] < lbfgs["iterations"], problem
        # obj.calls counted the optimisers' own kernels: HVPs only for trust-ncg
        assert trust["calls"]["hvp"] > 0 and lbfgs["calls"]["hvp"] == 0, problem
        assert lbfgs["calls"]["value_and_grad"] == lbfgs["nfev"], problem
    # the network: trust-ncg reaches the lower loss, several times fewer iterations
    net = r["network"]
    assert net["trust-ncg"]["loss"] < 1e-7
    assert net["trust-ncg"]["loss"] < net["L-BFGS-B"]["loss"]
    assert 3 * net["trust-ncg"]["iterations"] < net["L-BFGS-B"]["iterations"]
    eig = np.array(r["network_hessian_eigenvalues"]["trust-ncg"])
    assert eig.min() > 0  # a minimum
    # the chain: the solution x = 1, a tridiagonal Hessian from 3 colours, positive definite
    for method in ("trust-ncg", "L-BFGS-B"):
        assert r["chain"][method]["loss"] < 1e-12, method
    assert r["chain_colours"] == 3 and r["chain_hessian_nnz"] == 3 * 1000 - 2
    assert r["chain_hessian_error"] < 1e-9 and r["chain_lowest_eigenvalue"] > 0


def test_saddle_points(tmp_path):
    r = run("saddle_points", tmp_path)
    network = load("saddle_points").network  # the model in numpy
    points = r["critical_points"]
    kinds = [p["kind"] for p in points]
    assert kinds.count("saddle") >= 1 and kinds.count("minimum") >= 1
    assert r["counts"]["degenerate"] == 0
    x, y = (np.array(a) for a in r["data"])

    def loss(v):  # the surface in numpy, independent of gradc
        return float(np.mean((network(v, x) - y) ** 2))

    h = 1e-4
    for p in points:
        v = np.array(p["point"])
        assert p["grad_norm"] < 1e-10
        assert loss(v) == pytest.approx(p["loss"], rel=1e-12)
        # the Hessian by second differences of the loss (not of gradc's gradient)
        fd = np.empty((2, 2))
        for i in range(2):
            for j in range(2):
                ei, ej = h * np.eye(2)[i], h * np.eye(2)[j]
                fd[i, j] = (loss(v + ei + ej) - loss(v + ei - ej) - loss(v - ei + ej)
                            + loss(v - ei - ej)) / (4 * h * h)
        np.testing.assert_allclose(p["hessian"], fd, atol=1e-5)
        eig = np.linalg.eigvalsh(fd)
        want = ("minimum" if eig.min() > 0 else "maximum" if eig.max() < 0 else "saddle")
        assert p["kind"] == want, (p["point"], eig)
    # the saddle lies on the diagonal v1 = v2, between minima that mirror each other
    saddle = next(p for p in points if p["kind"] == "saddle")
    assert saddle["point"][0] == pytest.approx(saddle["point"][1], abs=1e-8)
    mins = sorted(tuple(p["point"]) for p in points if p["kind"] == "minimum")
    assert len(mins) == 2
    np.testing.assert_allclose(mins[0], mins[1][::-1], atol=1e-8)


def test_adbench_gmm(tmp_path):
    r = run("adbench_gmm", tmp_path)
    small, large = r["equations"]
    assert small == large  # d=64, K=100 has the program of d=2, K=5: nothing unrolled
    assert r["reference_fd_error"] < 1e-6  # the numpy reference's own gradient
    for row in r["sizes"]:
        assert row["value_rel_err"] < 1e-9 and row["grad_rel_err"] < 1e-9, row
    fit = r["fit"]
    assert fit["final"] < 0.2 * fit["start"]
    assert fit["centre_error"] < 0.2  # the three clusters found


def test_adbench_gmm_against_sympy_oracle():
    """The GMM objective at a small size against sympy.diff of its expanded form, in both
    forms, and the unused part of L gets exactly zero gradient."""
    from gradc.testing import check_against_sympy, check_grads

    gmm = load("adbench_gmm")
    d, K, n = 3, 2, 6
    for form in ("adbench", "fit"):
        loss, wrt, data, consts = gmm.gmm_model(d, K, form=form)
        fn = gradc.compile(loss, wrt=wrt, data=data, consts=consts, reduce="sum", jit=False)
        params, icf, X = gmm.random_problem(d, K, n, seed=3)
        cargs = (n, 0.7, 1, gmm.constant(d, K, n, 0.7, 1))
        check_against_sympy(fn, params, X, *cargs, rtol=1e-10)
        check_grads(fn, params, X, *cargs)
        v, g = fn.value_and_grad(params, X, *cargs)
        rv, rg = gmm.reference(params[0], params[1], icf, X, 0.7, 1, form=form)
        assert abs(v - rv) <= 1e-12 * abs(rv)
        np.testing.assert_allclose(gmm.pack_icf(g[2], g[3]), rg[2], rtol=1e-10, atol=1e-12)
        assert np.all(np.triu(g[3]) == 0.0)


def test_adbench_gmm_batch_sums_run_as_one_loop():
    """At d = 16 the GMM's kernel sums the (K, d) cotangent of ``Q_k (x - mu_k)`` over
    the batch as one loop over its K d elements (two loops of constant counts: LLVM
    vectorised the outer one with gathers, 11x slower at d = 32, K = 25), and its squared
    norms as four interleaved sums: the same value and gradient as the reference, and
    as the kernel run by Python."""
    gmm = load("adbench_gmm")
    d, K, n = 16, 3, 70  # 70 points: a block of 64 rows and a partial one
    loss, wrt, data, consts = gmm.gmm_model(d, K)
    params, icf, X = gmm.random_problem(d, K, n, seed=4)
    cargs = (n, 0.7, 1, gmm.constant(d, K, n, 0.7, 1))
    rv, rg = gmm.reference(params[0], params[1], icf, X, 0.7, 1)
    got = []
    for jit in (True, False):
        fn = gradc.compile(loss, wrt=wrt, data=data, consts=consts, reduce="sum", jit=jit)
        v, g = fn.value_and_grad(params, X, *cargs)
        assert abs(v - rv) <= 1e-12 * abs(rv)
        np.testing.assert_allclose(g[0], rg[0], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(g[1], rg[1], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(gmm.pack_icf(g[2], g[3]), rg[2], rtol=1e-10, atol=1e-12)
        got.append((v, g))
    src = fn.source[fn.source.index("def value_and_grad"):]
    src = src[:src.index("\ndef ")]
    assert f"one loop over {K * d} elements" in src
    assert "acc0 = acc1 = acc2 = acc3 = 0.0" in src
    assert got[0][0] == pytest.approx(got[1][0], rel=1e-13)
    for a, b in zip(got[0][1], got[1][1]):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_adbench_ba(tmp_path):
    r = run("adbench_ba", tmp_path)
    check = r["check"]
    assert check["value"] < 1e-9  # against the independent numpy implementation
    assert check["jacobian"] < 1e-5 and check["pattern_covers"]  # against differences
    assert r["colours"] <= 15  # 11 camera + 3 point + 1 weight parameters per observation
    s = r["solve"]
    assert s["start"] > 100 * s["noise_floor"]
    assert s["final"] < 1.05 * s["noise_floor"]  # down to the features' noise


def test_adbench_ba_against_sympy_oracle():
    """The bundle adjustment residuals at a small size: their squared sum against
    sympy.diff of the expression with each observation's indices substituted, the
    per-example Jacobian against the stacked sparse one, and a camera at r = 0 (the
    small-angle branch) without NaN."""
    from gradc.testing import check_against_sympy, check_grads

    ba = load("adbench_ba")
    sizes = (2, 1, 2)  # the oracle differentiates each observation's expression: keep few
    res, wrt, data = ba.ba_model(*sizes)
    loss = sum(e ** 2 for e in res) / 2
    fn = gradc.compile(loss, wrt=wrt, data=data, reduce="sum", jit=False)
    cams, X, w, obs, feats = ba.random_problem(*sizes, seed=5)
    assert np.all(cams[0, :3] == 0) and set(obs[:, 0]) == {0, 1}  # r = 0 and r != 0
    w = w + 0.1 * np.random.default_rng(0).normal(size=w.shape)
    args = ba.data_args(obs, feats)
    check_against_sympy(fn, [cams, X, w], *args, rtol=1e-9)
    check_grads(fn, [cams, X, w], *args, eps=1e-7, rtol=1e-5)  # (focal lengths of 800)
    rf = gradc.compile(res, wrt=wrt, data=data, reduce=None, jit=False)
    J = rf.jacobian([cams, X, w], *args, sparse=True)
    assert np.all(np.isfinite(J.data))
    r = np.asarray(rf.value([cams, X, w], *args)).reshape(-1)
    # the gradient of the squared sum is J^T r
    g = fn.grad([cams, X, w], *args)
    np.testing.assert_allclose(np.concatenate([np.ravel(x) for x in g]), J.T @ r,
                               rtol=1e-10, atol=1e-9)
    np.testing.assert_allclose(r, ba.reference(cams, X, w, obs, feats), rtol=1e-10,
                               atol=1e-10)


def test_count_regression(tmp_path):
    r = run("count_regression", tmp_path)
    assert max(r["scipy_rel_err"]) < 1e-12  # against scipy.stats log pmfs
    assert max(r["fd_rel_err"]) < 1e-6
    nb, po = np.array(r["nb"]), np.array(r["poisson"])
    assert np.abs(nb[:3] - [1.0, 0.6, -0.4]).max() < 0.2
    assert np.abs(po - [1.0, 0.6, -0.4]).max() < 0.2
    assert 0.25 < np.exp(nb[3]) < 1.0  # the dispersion, alpha = 0.5
    assert r["loglik"][1] > r["loglik"][0] + 50  # over-dispersed: NB fits far better
    ratio = np.array(r["se"]) / np.array(r["refit_sd"])
    assert np.all((ratio > 0.4) & (ratio < 2.5)), ratio  # Hessian se against refits
