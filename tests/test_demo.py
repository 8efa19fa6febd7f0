"""The README's main job, `gradc demo`, in fast mode."""

from gradc import cli


def test_demo_runs_and_learns(capsys):
    assert cli.main(["demo", "--fast", "--no-progress"]) == 0
    out = capsys.readouterr().out
    for text in ("compiled value_and_grad", "gradient check", "bracketing", "test accuracy",
                 "hand-written numpy"):
        assert text in out
    accuracy = float(out.split("test accuracy ")[1].split("%")[0]) / 100
    assert accuracy > 0.9

