"""Embedding and scale-out: standalone export, pickling across processes, parallel=True,
concurrent calls from threads, and the command line."""

import concurrent.futures
import multiprocessing
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import gradc
from gradc import cli
from models import tanh_net

EXPR, WRT, DATA, _ = tanh_net()


@pytest.fixture(scope="module")
def fn():
    return gradc.compile(EXPR, wrt=WRT, data=DATA)


@pytest.fixture(scope="module")
def batch():
    X = np.linspace(-3, 3, 5001)
    return X, np.sin(X)


P = np.random.default_rng(0).normal(size=10)


def test_export_runs_without_gradc_or_sympy(fn, batch, tmp_path):
    path = fn.export(tmp_path / "kernels.py")
    np.save(tmp_path / "X.npy", batch[0])
    np.save(tmp_path / "Y.npy", batch[1])
    np.save(tmp_path / "P.npy", P)
    code = textwrap.dedent(f"""
        import sys
        sys.modules["gradc"] = None   # importing gradc or sympy now fails
        sys.modules["sympy"] = None
        sys.path.insert(0, {str(tmp_path)!r})
        import numpy as np
        import kernels
        X, Y, P = (np.load({str(tmp_path)!r} + f"/{{n}}.npy") for n in "XYP")
        v, g = kernels.value_and_grad(P, X, Y)
        v2, d = kernels.jvp(P, np.eye(10)[3], X, Y)
        np.save({str(tmp_path)!r} + "/out.npy", np.concatenate([[v, v2, d], g]))
        print(kernels.value_and_grad.__doc__)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "params: float64[10] (v1, v2, v3, b1, b2, b3, w0, w1, w2, w3)" in out.stdout
    got = np.load(tmp_path / "out.npy")
    v, g = fn.value_and_grad(P, *batch)
    _, d = fn.jvp(P, np.eye(10)[3], *batch)
    np.testing.assert_array_equal(got, np.concatenate([[v, v, d], g]))
    text = path.read_text()
    assert "import gradc" not in text and "import sympy" not in text


def _work(args):
    fn, X, Y = args
    return fn.value_and_grad(P, X, Y)


def test_pickle_round_trip_in_another_process(fn, batch):
    blob = pickle.dumps(fn)
    again = pickle.loads(blob)
    assert again.source == fn.source
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        v, g = pool.map(_work, [(fn, *batch)])[0]
    v0, g0 = fn.value_and_grad(P, *batch)
    assert v == v0
    np.testing.assert_array_equal(g, g0)


def test_parallel_gives_the_same_result(fn, batch):
    par = gradc.compile(EXPR, wrt=WRT, data=DATA, parallel=True)
    assert "prange" in par.source and "parallel=True" in repr(par)
    v, g = par.value_and_grad(P, *batch)
    v0, g0 = fn.value_and_grad(P, *batch)
    assert v == v0  # chunk sums are added in chunk order, whatever the threads
    np.testing.assert_array_equal(g, g0)


def test_concurrent_calls_from_threads(fn, batch):
    rng = np.random.default_rng(1)
    points = [rng.normal(size=10) for _ in range(16)]
    expected = [fn.value_and_grad(p, *batch) for p in points]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda p: fn.value_and_grad(p, *batch), points))
    for (v, g), (ve, ge) in zip(got, expected):
        assert v == ve
        np.testing.assert_array_equal(g, ge)


def test_cli_plan_compare_export_and_errors(tmp_path, capsys):
    src = tmp_path / "model.py"
    src.write_text(textwrap.dedent("""
        import sympy as sp
        from gradc import nn
        x = sp.MatrixSymbol("x", 6, 1)
        W1, W2 = sp.MatrixSymbol("W1", 2, 6), sp.MatrixSymbol("W2", 5, 2)
        network = {"expr": nn.tanh(W2 * nn.tanh(W1 * x)), "wrt": [x], "consts": [W1, W2]}
        w, t = sp.symbols("w t")
        def scalar():
            import gradc
            return gradc.compile((w * t - 1) ** 2, wrt=[w], data=[t], jit=False)
    """))
    assert cli.main(["plan", f"{src}:network"]) == 0
    out = capsys.readouterr().out
    assert "bracketing" in out and "forward" in out and "reverse" in out
    assert cli.main(["export", f"{src}:scalar", "-o", str(tmp_path / "k.py")]) == 0
    assert (tmp_path / "k.py").read_text().count("def value_and_grad(") == 1
    assert cli.main(["plan", f"{src}:missing"]) == 2
    assert "defines no 'missing'" in capsys.readouterr().err
    assert cli.main(["plan", "nocolon"]) == 2


def test_cli_compare(tmp_path, capsys, monkeypatch):
    src = tmp_path / "m.py"
    src.write_text(textwrap.dedent("""
        import sympy as sp
        from gradc import nn
        x = sp.MatrixSymbol("x", 4, 1)
        W = sp.MatrixSymbol("W", 3, 4)
        f = {"expr": nn.tanh(W * x), "wrt": [x], "consts": [W]}
    """))
    out = cli.compare(cli.load_target(f"{src}:f"), repeat=2)
    assert set(out["measured"]) == {"forward", "reverse", "optimal"}
    assert "measured ms" in capsys.readouterr().out
