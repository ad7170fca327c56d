"""Separation scores with a scale, through the command line on the tiny
profile: the baselines frame the models, their units resume and are
damage-checked, Wiener filtering adds rows, MUSDB_PATH is never ignored,
and a terminal of no width gets per-epoch lines."""

import csv
import fcntl
import json
import os
import shutil
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from nca_np.config import load_profile
from nca_np.report import display_name

REPO = Path(__file__).resolve().parent.parent
PROFILE = REPO / "configs" / "tiny.toml"
KINDS = [display_name(kind) for kind in load_profile(str(PROFILE))["train"]["kinds"]]

pytestmark = pytest.mark.slow


def nca(workdir, *args, env=None, check=True, quiet=True):
    command = [sys.executable, "-m", "nca_np", *args, "--profile", str(PROFILE), "--workdir", str(workdir)]
    environment = dict(env if env is not None else os.environ, PYTHONPATH=str(REPO), NCA_NP_BACKEND="numpy")
    result = subprocess.run(command + (["--quiet"] if quiet else []), capture_output=True, text=True,
                            env=environment, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """The tiny protocol, reproduced once, then evaluated with one Wiener iteration as well."""
    workdir = tmp_path_factory.mktemp("scale")
    nca(workdir, "reproduce")
    wiener = nca(workdir, "evaluate", "--wiener-iterations", "1")
    nca(workdir, "report")
    return workdir, wiener


def units(workdir, pattern):
    return [json.loads(path.read_text()) for path in sorted((workdir / "evaluation").glob(pattern))]


def table(workdir):
    with open(workdir / "results" / "tiny-latest" / "table_separation.csv", newline="") as handle:
        return {row["model"]: row for row in csv.DictReader(handle)}


def test_the_oracle_scores_above_every_model_and_the_mixture_below(evaluated):
    workdir, _ = evaluated
    (mixture,) = units(workdir, "*/baselines/mixture/t*.json")
    (oracle,) = units(workdir, "*/baselines/oracle-irm/t*.json")
    models = [u for u in units(workdir, "*/*/run_*/t*.json")]
    filtered = units(workdir, "*/wiener-1/*/run_*/t*.json")
    assert len(models) == 6 and len(filtered) == 6
    vocals = [u["scores"]["vocals"]["SDR"] for u in models] + [u["stereo"]["scores"]["vocals"]["SDR"] for u in models]
    vocals += [u["scores"]["vocals"]["SDR"] for u in filtered]
    assert max(vocals) < oracle["scores"]["vocals"]["SDR"]
    assert min(vocals) > mixture["scores"]["vocals"]["SDR"]
    # the mono oracle is the oracle of the channel averages: it cannot beat the per-channel one here
    assert oracle["mono"]["scores"]["vocals"]["SDR"] < oracle["scores"]["vocals"]["SDR"]
    assert all(u["wiener_iterations"] == 1 and u["estimate"] == "stereo" for u in filtered)


def test_the_table_has_the_baselines_first_and_last_and_says_where_the_models_sit(evaluated):
    workdir, wiener = evaluated
    assert "6 (model, run, track) units (stereo, Wiener filter 1 iteration(s)) in this shard, 0 already done" \
        in wiener.stdout
    assert "2 (baseline, track) units in this shard, 2 already done" in wiener.stdout
    rows = table(workdir)
    assert list(rows) == (["Mixture (baseline)"] + KINDS + [f"{k} stereo" for k in KINDS]
                          + [f"{k} stereo (Wiener 1)" for k in KINDS]
                          + ["Oracle IRM mono (baseline)", "Oracle IRM stereo (baseline)"])
    low = float(rows["Mixture (baseline)"]["vocals_SDR_median"])
    high = float(rows["Oracle IRM stereo (baseline)"]["vocals_SDR_median"])
    mono = float(rows["Oracle IRM mono (baseline)"]["vocals_SDR_median"])
    text = (workdir / "results" / "tiny-latest" / "report.md").read_text()
    dae = float(rows["DAE"]["vocals_SDR_median"])
    assert (f"the mixture as the estimate scores {low:.2f} dB and the oracle ideal ratio mask {high:.2f} dB"
            in text)
    assert f"DAE {dae:.2f} dB ({100 * (dae - low) / (high - low):.0f} %)" in text
    assert f"Mono output costs the oracle {high - mono:.2f} dB" in text
    assert "| Mixture (baseline) | – × 1 |" in text and "| DAE stereo (Wiener 1) | 2 × 1 |" in text


def test_baseline_units_resume_and_a_damaged_one_is_computed_again(evaluated, tmp_path):
    workdir = tmp_path / "copy"
    shutil.copytree(evaluated[0], workdir, symlinks=True)
    (path,) = sorted(workdir.glob("evaluation/*/baselines/oracle-irm/t*.json"))
    before = json.loads(path.read_text())
    path.write_text(path.read_text()[:30])
    rerun = nca(workdir, "evaluate")
    assert f"{path} is damaged (not valid JSON" in rerun.stdout
    assert "2 (baseline, track) units in this shard, 1 already done" in rerun.stdout
    assert "6 (model, run, track) units in this shard, 6 already done" in rerun.stdout
    assert json.loads(path.read_text())["scores"] == before["scores"]
    again = nca(workdir, "evaluate")
    assert "2 (baseline, track) units in this shard, 2 already done" in again.stdout


def test_musdb_path_under_the_builtin_corpus_is_refused_in_one_line(tmp_path):
    env = dict(os.environ, MUSDB_PATH=str(tmp_path / "musdb"))
    for command in ("prepare", "reproduce"):
        result = nca(tmp_path / "work", command, env=env, check=False)
        assert result.returncode == 2, result.stderr
        (line,) = result.stderr.strip().splitlines()
        assert "MUSDB_PATH is set" in line and "--musdb-root" in line and "Traceback" not in line
    assert not (tmp_path / "work" / "data").exists()  # no synthetic corpus generated behind its back


def test_musdb_root_under_the_builtin_corpus_is_used_and_named(evaluated, tmp_path):
    """A dataset tree given with --musdb-root is prepared (its excerpts by the
    profile's rule); no synthetic corpus is generated; the report names the audio."""
    real = tmp_path / "real"
    shutil.copytree(evaluated[0] / "data" / "synthetic", real, ignore=shutil.ignore_patterns("timings"))
    for subset in ("train", "test"):
        for number, track in enumerate(sorted((real / subset).iterdir())):
            track.rename(real / subset / f"Artist {number} - Song")
    work = tmp_path / "work"
    nca(work, "prepare", "--musdb-root", str(real))
    (manifest,) = [json.loads(p.read_text()) for p in (work / "cache").glob("*/manifest.json")]
    assert manifest["data"]["root"] == str(real)
    assert [entry["name"] for entry in manifest["test"]] == ["Artist 0 - Song"]
    assert not (work / "data").exists()

    from nca_np.report.stage import audio_description
    from nca_np.workspace import Workspace, open_prepared_cache

    ws = Workspace(work, load_profile(str(PROFILE)))
    assert audio_description(ws, open_prepared_cache(ws)) == "a MUSDB18-HQ tree (.wav)"
    builtin = Workspace(evaluated[0], load_profile(str(PROFILE)))
    assert audio_description(builtin, open_prepared_cache(builtin)) == "the built-in synthetic corpus"


def test_a_terminal_of_no_width_gets_per_epoch_lines(evaluated, tmp_path):
    """Standard error on a pseudo-terminal 0 columns wide: progress bars would
    draw nothing, so training logs a line per epoch instead."""
    workdir = tmp_path / "copy"
    shutil.copytree(evaluated[0], workdir, symlinks=True)
    (runs,) = (workdir / "runs").glob("tiny-*")
    shutil.rmtree(runs / "sf")
    leader, follower = os.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 0, 0, 0))
    command = [sys.executable, "-m", "nca_np", "train", "--kinds", "sf", "--profile", str(PROFILE),
               "--workdir", str(workdir)]
    env = dict(os.environ, PYTHONPATH=str(REPO), NCA_NP_BACKEND="numpy")
    env.pop("COLUMNS", None)
    try:
        result = subprocess.run(command, stdout=subprocess.PIPE, stderr=follower, text=True, env=env, timeout=300)
    finally:
        os.close(follower)
        os.close(leader)
    assert result.returncode == 0
    assert "sf epoch 1 (2 runs" in result.stdout and "sf epoch 2 (2 runs" in result.stdout


def test_bars_can_draw_only_on_a_terminal_with_columns(monkeypatch):
    from nca_np.workspace import bars_can_draw

    leader, follower = os.openpty()
    try:
        with os.fdopen(os.dup(follower), "w") as stream:
            monkeypatch.delenv("COLUMNS", raising=False)
            fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
            assert bars_can_draw(stream)
            monkeypatch.setenv("COLUMNS", "0")
            assert not bars_can_draw(stream)
            monkeypatch.delenv("COLUMNS")
            fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 0, 0, 0))
            assert not bars_can_draw(stream)
    finally:
        os.close(follower)
        os.close(leader)
    with open(os.devnull, "w") as not_a_terminal:
        assert not bars_can_draw(not_a_terminal)
