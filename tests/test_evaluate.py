"""The evaluate stage: museval's own scores on real music, its units, and
what the report is told when the evaluation is missing or mixed."""

import json
import shutil
from pathlib import Path

import numpy
import pytest

from nca_np import evaluate
from nca_np.config import load_profile
from nca_np.data import musdb_io
from nca_np.evaluate import EvaluationUnavailable, evaluate_stage, report_inputs, score_excerpt, upmix
from nca_np.experiment import prepare_stage
from nca_np.workspace import Workspace, open_prepared_cache
from nca_np.models import build_model
from nca_np.separate import Separator
from nca_np.train import FINAL_MODEL, save_state

PROFILE = Path(__file__).resolve().parents[1] / "configs" / "tiny.toml"
needs_ffmpeg = pytest.mark.skipif(not musdb_io.ffmpeg_available(), reason="museval and .stem.mp4 need ffmpeg")


def quiet(*_):
    pass


def save_runs(ws, seed=0):
    """A finished run for every (kind, run) of the profile, with random weights."""
    cache = open_prepared_cache(ws)
    for kind in ws.config["train"]["kinds"]:
        for run in range(ws.config["train"]["runs"]):
            model = build_model(kind, cache.n_freq, seed=seed + run, module=numpy)
            meta = {"kind": kind, "seed": seed + run, "status": "finished", "history": [], "config": ws.config}
            save_state(ws.run_dir(kind, run) / FINAL_MODEL, model, meta, scaler_state=cache.scaler.state_dict())


@pytest.fixture(scope="module")
def stems_workspace(tmp_path_factory):
    """stempeg's six-second excerpt of a real MUSDB18 track as the train and
    test track of a stems-release root, prepared, with one SF run."""
    from audio_trees import copy_example_stem

    if not musdb_io.ffmpeg_available():
        pytest.skip("museval and .stem.mp4 need ffmpeg")
    tmp = tmp_path_factory.mktemp("stems")
    copy_example_stem(tmp / "musdb" / "train")
    copy_example_stem(tmp / "musdb" / "test")
    config = load_profile(str(PROFILE), [f"data.root='{tmp / 'musdb'}'", "data.is_wav=false",
                                         "data.excerpt_seconds=30.0", "train.kinds=['sf']", "train.runs=1"])
    ws = Workspace(tmp / "work", config)
    prepare_stage(ws, progress=False, log=quiet)
    save_runs(ws)
    return ws


@pytest.mark.musdb
@needs_ffmpeg
def test_scores_equal_museval_eval_mus_track_on_real_music(stems_workspace):
    """The stage's median SDR, SIR, SAR and ISR of the whole-track excerpt are
    museval's own eval_mus_track on the same estimates (the separation of the
    mono mixture, put on both channels)."""
    import musdb
    import museval

    ws = stems_workspace
    lines = []
    evaluate_stage(ws, progress=False, log=lines.append)
    (entry,) = open_prepared_cache(ws).manifest["test"]
    assert entry["source"] == "whole-track"
    unit = json.loads(evaluate.unit_path(ws, "sf", 0, entry).read_text())
    assert unit["channels"] == 2 and unit["track"] == "Example - Song"

    root = ws.config["data"]["root"]
    (ref,) = musdb_io.list_tracks(root, "test", is_wav=False)
    separator = Separator.from_run(ws.run_dir("sf", 0))
    vocals, accompaniment = separator.separate(musdb_io.load_track(ref).mixture, 44100)
    (track,) = musdb.DB(root=root, subsets=["test"], is_wav=False).tracks
    store = museval.eval_mus_track(track, {"vocals": upmix(vocals, 2), "accompaniment": upmix(accompaniment, 2)})
    for target in store.scores["targets"]:
        for metric in evaluate.METRICS:
            frames = [float(frame["metrics"][metric]) for frame in target["frames"]]
            assert unit["frames"][target["name"]][metric] == pytest.approx(frames, abs=1e-12, nan_ok=True)
            assert unit["scores"][target["name"]][metric] == pytest.approx(float(store.frames_agg(frames)),
                                                                           abs=1e-12)
    assert len(frames) == 6  # one-second frames of a six-second track
    assert numpy.isfinite(unit["scores"]["vocals"]["SDR"])
    assert any("vocals SDR" in line for line in lines)

    again = []
    evaluate_stage(ws, progress=False, log=again.append)
    assert again == ["evaluate: 1 (model, run, track) units in this shard, 1 already done",
                     "evaluate: 2 (baseline, track) units in this shard, 2 already done"]


@pytest.mark.musdb
@needs_ffmpeg
def test_audio_elsewhere_is_one_line_and_the_report_notes_it(stems_workspace, tmp_path):
    """A machine with the cache and runs but not the dataset: evaluate says
    why in one error; report_inputs leaves the table out with a note."""
    ws = Workspace(tmp_path / "work", stems_workspace.config)
    shutil.copytree(stems_workspace.root / "cache", ws.root / "cache")
    shutil.copytree(stems_workspace.root / "runs", ws.root / "runs")
    elsewhere = tmp_path / "not-here"
    with pytest.raises(EvaluationUnavailable, match=f"{elsewhere / 'test'} is not on this machine"):
        evaluate_stage(ws, musdb_root=elsewhere, progress=False, log=quiet)
    note = report_inputs(ws)
    assert note["units"] == [] and "no evaluation results" in note["note"]


def test_score_of_a_close_and_a_swapped_estimate():
    """museval through score_excerpt: one value per one-second frame, close
    estimates far above swapped ones."""
    rng = numpy.random.default_rng(0)
    rate = 8000
    vocals, accompaniment = rng.standard_normal((2, 3 * rate)).astype(numpy.float32)
    references = {"vocals": vocals[:, None], "accompaniment": accompaniment[:, None]}
    close = score_excerpt(references, {"vocals": vocals + 0.01 * accompaniment,
                                       "accompaniment": accompaniment + 0.01 * vocals}, rate)
    swapped = score_excerpt(references, {"vocals": accompaniment, "accompaniment": vocals}, rate)
    assert len(close["vocals"]["frames"]["SDR"]) == 3
    for target in evaluate.TARGETS:
        assert close[target]["median"]["SDR"] > 30.0 and close[target]["median"]["SIR"] > 30.0
        assert swapped[target]["median"]["SDR"] < 0.0
        assert close[target]["median"]["SDR"] == numpy.median(close[target]["frames"]["SDR"])


def constant_scores(value=1.0):
    return {t: {m: value for m in evaluate.METRICS} for t in evaluate.TARGETS}


def write_baseline(ws, name, entry):
    unit = {"baseline": name, "track": entry["name"], "cache_key": "k", "code_version": "v",
            "scores": constant_scores(), **({"mono": {"scores": constant_scores()}} if name == "oracle-irm" else {})}
    path = evaluate.baseline_path(ws, name, entry)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(unit))


def write_unit(ws, kind, run, entry, *, cache_key="k", code_version="v"):
    unit = {"kind": kind, "run": run, "track": entry["name"], "cache_key": cache_key, "code_version": code_version,
            "scores": constant_scores(), "stereo": {"scores": constant_scores(2.0)}, "wiener_iterations": 0}
    path = evaluate.unit_path(ws, kind, run, entry)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(unit))


def test_report_inputs_give_units_only_when_complete_and_consistent(tmp_path):
    config = load_profile(str(PROFILE), ["train.kinds=['dae', 'sf']", "train.runs=2"])
    ws = Workspace(tmp_path, config)
    tracks = [{"index": 0, "name": "A - One"}, {"index": 1, "name": "B - Two"}]
    directory = evaluate.evaluation_dir(ws)
    directory.mkdir(parents=True)
    (directory / evaluate.TRACKS).write_text(json.dumps({"cache_key": "k", "tracks": tracks}))
    units = evaluate.evaluation_units(config, tracks)
    assert [(k, r, e["index"]) for k, r, e in units] == [
        ("dae", 0, 0), ("dae", 0, 1), ("dae", 1, 0), ("dae", 1, 1),
        ("sf", 0, 0), ("sf", 0, 1), ("sf", 1, 0), ("sf", 1, 1)]
    for unit in units[:-1]:
        write_unit(ws, *unit)
    for name, entry in evaluate.baseline_units(tracks):
        write_baseline(ws, name, entry)
    assert "1 of 12 evaluation units are missing" in report_inputs(ws)["note"]
    write_unit(ws, *units[-1], code_version="w")
    assert "mix code versions (v, w)" in report_inputs(ws)["note"]
    write_unit(ws, *units[-1], cache_key="other")
    assert "another feature cache" in report_inputs(ws)["note"]
    write_unit(ws, *units[-1])
    found = report_inputs(ws)
    # a row per model unit's mono and stereo estimate, the mixture's, and the oracle's stereo and mono
    assert found["note"] is None and len(found["units"]) == 2 * 8 + 2 + 2 * 2
    assert sorted({(u.get("baseline"), u["estimate"]) for u in found["units"]}, key=str) == sorted(
        {(None, "mono"), (None, "stereo"), ("mixture", "stereo"), ("oracle-irm", "stereo"), ("oracle-irm", "mono")},
        key=str)
    evaluate.baseline_path(ws, "oracle-irm", tracks[1]).write_text("{")
    assert "oracle-irm/t00001.json is damaged (not valid JSON" in report_inputs(ws)["note"]


def test_wiener_rows_join_only_when_complete_and_of_the_same_code(tmp_path):
    config = load_profile(str(PROFILE), ["train.kinds=['sf']", "train.runs=2"])
    ws = Workspace(tmp_path, config)
    tracks = [{"index": 0, "name": "A - One"}]
    directory = evaluate.evaluation_dir(ws)
    directory.mkdir(parents=True)
    (directory / evaluate.TRACKS).write_text(json.dumps({"cache_key": "k", "tracks": tracks}))
    for unit in evaluate.evaluation_units(config, tracks):
        write_unit(ws, *unit)
    for name, entry in evaluate.baseline_units(tracks):
        write_baseline(ws, name, entry)

    def write_filtered(kind, run, entry, code_version="v"):
        path = evaluate.unit_path(ws, kind, run, entry, 2)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"kind": kind, "run": run, "track": entry["name"], "cache_key": "k",
                                    "code_version": code_version, "scores": constant_scores(3.0),
                                    "wiener_iterations": 2, "estimate": "stereo"}))

    write_filtered("sf", 0, tracks[0])
    found = report_inputs(ws)
    assert len(found["units"]) == 2 * 2 + 1 + 2  # the rows without Wiener filtering are kept
    assert "the rows with 2 Wiener iteration(s) are left out: 1 of 2 evaluation units are missing" in found["note"]
    write_filtered("sf", 1, tracks[0], code_version="w")
    assert "made by another code version" in report_inputs(ws)["note"]
    write_filtered("sf", 1, tracks[0])
    found = report_inputs(ws)
    filtered = [u for u in found["units"] if u["wiener_iterations"] == 2]
    assert found["note"] is None and len(filtered) == 2
    assert all(u["estimate"] == "stereo" and u["scores"]["vocals"]["SDR"] == 3.0 for u in filtered)
