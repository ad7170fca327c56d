"""``reproduce --plan``: the calibration says what it does, is kept and
reused on this machine, and can be left out (--no-calibrate)."""

from pathlib import Path

import pytest

from nca_np import plan as plan_module
from nca_np.cli import main
from nca_np.config import load_profile
from nca_np.workspace import Workspace

PROFILE = str(Path(__file__).resolve().parents[1] / "configs" / "tiny.toml")


@pytest.fixture
def timed(monkeypatch):
    """measure_step_times replaced by fixed times; the calls are counted."""
    calls = []

    def fake(config, *, progress=None):
        calls.append(config["train"]["batch_size"])
        if progress:
            progress("  calibrated dae (1/1)")
        return ({k: 0.01 for k in config["train"]["kinds"]}, {k: 0.002 for k in config["train"]["kinds"]})

    monkeypatch.setattr(plan_module, "measure_step_times", fake)
    return calls


def test_the_calibration_is_kept_and_reused_until_its_key_changes(tmp_path, timed):
    ws = Workspace(tmp_path, load_profile(PROFILE))
    lines, progress = [], []
    first = plan_module.step_times(ws, log=lines.append, progress=progress.append)
    assert timed == [64] and lines[0].startswith("calibrating on ") and progress == ["  calibrated dae (1/1)"]
    (kept,) = (tmp_path / "timings").iterdir()
    lines.clear()
    assert plan_module.step_times(ws, log=lines.append) == first
    assert timed == [64] and lines[0].startswith("reusing the calibration of ") and str(kept) in lines[0]
    other = Workspace(tmp_path, load_profile(PROFILE, ["train.batch_size=32"]))
    plan_module.step_times(other, log=None)
    assert timed == [64, 32] and len(list((tmp_path / "timings").iterdir())) == 2
    kept.write_text("{")  # damaged: calibrated again
    plan_module.step_times(ws, log=None)
    assert timed == [64, 32, 64]


def test_no_calibrate_gives_the_arithmetic_estimate_without_measuring(tmp_path, timed, capsys):
    assert main(["reproduce", "--plan", "--no-calibrate", "--profile", PROFILE, "--workdir", str(tmp_path),
                 "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert timed == [] and "calibrat" not in out.replace("not calibrated", "")
    assert out.strip().splitlines()[-1].startswith("estimate: training") and "(arithmetic, not calibrated)" in out
    step, iteration = plan_module.arithmetic_step_times(load_profile(PROFILE))
    assert all(value > 0 for value in [*step.values(), *iteration.values()])
    assert iteration["mss-dae"] > iteration["dae"]  # two layers' products per iteration against one
