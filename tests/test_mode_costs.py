"""examples/mode_costs.py in --fast mode: figures written, plans no worse than the pure
modes, wide chains favour reverse mode and tall ones forward mode, all modes agree."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "mode_costs.py"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    spec = importlib.util.spec_from_file_location("gradc_example_mode_costs", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    outdir = tmp_path_factory.mktemp("mode_costs")
    return outdir, module.main(outdir, fast=True), module


def test_figures_are_written(result):
    outdir, r, _ = result
    files = [Path(f) for f in r["files"]]
    assert {f.name for f in files} == {"mode_costs_flops.png", "mode_costs_times.png"}
    for f in files:
        assert f.parent == Path(outdir)
        data = f.read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 5_000, f"{f} is not a real PNG"


def test_optimal_is_never_worse_than_a_pure_mode(result):
    _, r, _ = result
    assert set(r["shapes"]) == {"wide", "tall", "hourglass", "diamond"}
    for name, s in r["shapes"].items():
        f = s["flops"]
        assert f["optimal"] <= min(f["forward"], f["reverse"]), name
        assert set(s["predicted_s"]) == set(s["measured_s"]) == {"forward", "reverse", "optimal"}
        assert s["auto"] in ("forward", "reverse", "optimal")


def test_shapes_favour_the_expected_mode(result):
    _, r, _ = result
    shapes = r["shapes"]
    wide, tall = shapes["wide"]["flops"], shapes["tall"]["flops"]
    assert wide["reverse"] < wide["forward"]
    assert tall["forward"] < tall["reverse"]
    hg = shapes["hourglass"]["flops"]
    # mixing saves flops there; the plan run minimises predicted time, never above a pure mode
    assert shapes["hourglass"]["fewest_flops"] * 2 < min(hg["forward"], hg["reverse"])
    pred = shapes["hourglass"]["predicted_s"]
    assert pred["optimal"] <= min(pred["forward"], pred["reverse"])
    d = shapes["diamond"]["flops"]
    assert d["forward"] == d["reverse"]  # symmetric ends: both pure modes cost the same


def test_all_modes_agree(result):
    _, r, _ = result
    for name, s in r["shapes"].items():
        J = s["jacobians"]
        w = s["widths"]
        ref = J["reverse"]
        assert ref.shape == (w[-1], w[0])
        for mode in ("forward", "optimal"):
            np.testing.assert_allclose(J[mode], ref, rtol=1e-12, atol=1e-14,
                                       err_msg=f"{name} {mode}")
        assert s["max_rel_diff"] < 1e-12


def test_jacobians_match_the_explicit_product(result):
    """J = diag(1 - h_L^2) W_L ... diag(1 - h_1^2) W_1, multiplied out with numpy."""
    _, r, module = result
    for name, s in r["shapes"].items():
        x, Ws = module.values(s["widths"])
        h, J = x[:, 0], np.eye(len(x))
        for W in Ws:
            h = np.tanh(W @ h)
            J = (1 - h * h)[:, None] * (W @ J)
        np.testing.assert_allclose(s["jacobians"]["optimal"], J, rtol=1e-10, atol=1e-13,
                                   err_msg=name)
