"""The experiment end to end through the command line, on a tiny corpus and
profile: artefacts, resume without recomputation, interruption, sharding."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy
import pytest

from nca_np.config import load_profile
from nca_np.experiment import training_cost
from nca_np.report import display_name
from nca_np.workspace import Shard, training_units

REPO = Path(__file__).resolve().parent.parent
PROFILE = Path(__file__).resolve().parents[1] / "configs" / "tiny.toml"
#: The models of the tiny profile, as the tables name them.
KINDS = [display_name(kind) for kind in load_profile(str(PROFILE))["train"]["kinds"]]
TABLE_FILES = ["tables.json", "table1_tod_r.csv", "table2_snr_model.csv", "table3_snr_true.csv",
               "exact_references.csv", "nca_convergence.csv"]

pytestmark = pytest.mark.slow


def _env():
    env = dict(os.environ, PYTHONPATH=str(REPO), NCA_NP_BACKEND="numpy")
    return env


def nca(workdir, *args, check=True):
    """Run ``python -m nca_np`` with the tiny profile; returns the completed process."""
    command = [sys.executable, "-m", "nca_np", *args, "--profile", str(PROFILE), "--workdir", str(workdir), "--quiet"]
    result = subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def _results(workdir):
    return workdir / "results" / "tiny-latest"


def _unit_files(workdir):
    return (sorted(p for p in (workdir / "runs").rglob("*.npz")) + sorted((workdir / "couplings").rglob("s[0-9]*.*"))
            + sorted((workdir / "evaluation").rglob("t[0-9]*.json")))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted, unsharded run of the whole protocol."""
    workdir = tmp_path_factory.mktemp("reference")
    result = nca(workdir, "reproduce")
    return workdir, result


def test_reproduce_writes_every_artefact(reference):
    workdir, result = reference
    results = _results(workdir)
    assert f"report: {results.resolve() / 'report.md'}" in result.stdout
    report = (results / "report.md").read_text()
    for needle in ("Table 1", "Table 2", "Table 3", "paper's reading"):
        assert needle in report
    tables = json.loads((results / "tables.json").read_text())
    assert len(tables) == 3
    for name in TABLE_FILES[1:4]:
        lines = (results / name).read_text().strip().splitlines()
        assert [line.split(",")[0] for line in lines[1:]] == KINDS
        for line in lines[1:]:
            numbers = [float(x) for x in line.split(",")[1:]]
            assert all(numpy.isfinite(numbers)), (name, line)
    header2 = (results / "table2_snr_model.csv").read_text().splitlines()[0]
    for column in ("student", "compositional", "linear", "identity"):
        assert column in header2
    pngs = sorted(results.glob("*.png"))
    assert {p.name for p in pngs} >= {"figure2_linear_compositions.png", "figure3_couplings.png",
                                      "training_loss.png", "nca_convergence.png", "nca_trajectories.png"}
    for png in pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    meta = json.loads((results / "metadata.json").read_text())
    for key in ("config", "composition", "seeds", "versions", "backend", "device", "code_version",
                "wall_time_seconds"):
        assert key in meta, key
    assert meta["composition"] == "paper"
    assert set(meta["wall_time_seconds"]) >= {"prepare", "train", "evaluate", "couplings"}
    for needle in ("## Exact references", "## Convergence of the NCA", "determined on every segment"):
        assert needle in report
    # the reading guide before the first table, a glossary link under each table, a device line per stage
    assert report.index("**How to read this report.**") < report.index("## Table 1")
    assert report.count("Symbols ([glossary](docs/method.md#glossary))") >= 5
    assert "[TOD-R](docs/method.md#glossary-tod-r)" in report
    for stage in ("synth", "prepare", "train", "evaluate", "couplings"):
        assert f"\n- {stage}: CPU (NumPy {numpy.__version__})" in report, stage
        (entry,) = meta["stage_devices"][stage]
        assert entry["record"]["backend"] == "numpy" and entry["record"]["device"] == "CPU"
    assert meta["devices_differ"] is None and "The devices differ" not in report
    unit = json.loads(next((workdir / "couplings").rglob("s0000.json")).read_text())
    assert unit["references"]["rank"] == 33 and unit["references"]["determined"]
    for fit in unit["strategies"].values():
        assert fit["iterations"] == 20 and len(fit["losses"]) == 20 and fit["stopped"] == "iterations"
        assert [p["iteration"] for p in fit["trajectory"]] == [0, 5, 10, 15, 20]
        assert len(fit["spread"]) == 1 and fit["tod_r_range"][0] <= fit["tod_r"] <= fit["tod_r_range"][1]
    later = json.loads(next((workdir / "couplings").rglob("s0001.json")).read_text())
    assert all("spread" not in fit for fit in later["strategies"].values())  # spread_segments = 1


def test_reproduce_evaluates_every_run_on_every_test_track(reference):
    workdir, result = reference
    units = sorted(p for p in (workdir / "evaluation").rglob("t[0-9]*.json") if "baselines" not in p.parts)
    assert len(units) == 6  # 3 models x 2 runs x 1 test track
    for path in units:
        unit = json.loads(path.read_text())
        assert unit["channels"] == 2 and unit["excerpt"]["source"] == "activation-confidence"
        for target in ("vocals", "accompaniment"):
            assert len(unit["frames"][target]["SDR"]) == 2  # one-second frames of the 2 s excerpt
            assert all(numpy.isfinite(unit["scores"][target][m]) for m in ("SDR", "SIR", "SAR", "ISR"))
    report = (_results(workdir) / "report.md").read_text()
    assert "## Separation quality" in report and "sdr_vs_tod_r.png" in report
    lines = (_results(workdir) / "table_separation.csv").read_text().strip().splitlines()
    assert [line.split(",")[0] for line in lines[1:]] == (["Mixture (baseline)"] + KINDS
                                                          + [f"{n} stereo" for n in KINDS]
                                                          + ["Oracle IRM mono (baseline)", "Oracle IRM stereo (baseline)"])
    assert all(line.split(",")[1:3] == ["2", "1"] for line in lines[2:8])
    assert (_results(workdir) / "sdr_vs_tod_r.png").stat().st_size > 5000


def test_rerun_recomputes_nothing(reference):
    workdir, _ = reference
    before = {p: p.stat().st_mtime_ns for p in _unit_files(workdir)}
    tables = {n: (_results(workdir) / n).read_bytes() for n in TABLE_FILES}
    result = nca(workdir, "reproduce")
    assert "6 already finished" in result.stdout and "15 already done" in result.stdout
    assert "6 (model, run, track) units in this shard, 6 already done" in result.stdout
    assert {p: p.stat().st_mtime_ns for p in _unit_files(workdir)} == before
    assert {n: (_results(workdir) / n).read_bytes() for n in TABLE_FILES} == tables
    nca(workdir, "report")
    assert {n: (_results(workdir) / n).read_bytes() for n in TABLE_FILES} == tables


def test_plan_reports_done_work(reference):
    workdir, _ = reference
    out = nca(workdir, "reproduce", "--plan").stdout
    assert "trainings: 6" in out and "6 finished" in out
    assert "15 units" in out and "15 done" in out and "estimate" in out


def _kill_when(workdir, pattern, process):
    deadline = time.monotonic() + 120
    while not list(workdir.glob(pattern)):
        assert process.poll() is None, "the run finished before it could be interrupted"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()


def test_killed_run_resumes_to_the_same_results(reference, tmp_path):
    command = [sys.executable, "-m", "nca_np", "reproduce", "--profile", str(PROFILE), "--workdir", str(tmp_path), "--quiet"]
    first = subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _kill_when(tmp_path, "runs/*/*/run_*/checkpoint.npz", first)
    second = subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _kill_when(tmp_path, "couplings/*/*/s*.json", second)
    assert not (_results(tmp_path) / "tables.json").exists()
    nca(tmp_path, "reproduce")
    for name in TABLE_FILES:
        assert (_results(tmp_path) / name).read_bytes() == (_results(reference[0]) / name).read_bytes(), name


def test_two_shards_give_the_same_tables(reference, tmp_path):
    nca(tmp_path, "prepare")
    env = dict(_env(), PROFILE=str(PROFILE), DEVICE="cpu", WORKDIR=str(tmp_path), PYTHON=sys.executable,
               SLURM_ARRAY_TASK_COUNT="2")
    for stage in ("train", "evaluate", "couplings"):
        for task in ("0", "1"):
            subprocess.run(["bash", str(REPO / "scripts" / "slurm_array.sh"), stage], env=dict(env, SLURM_ARRAY_TASK_ID=task),
                           check=True, capture_output=True, timeout=300)
            if stage == "couplings" and task == "0":
                refused = nca(tmp_path, "report", check=False)
                assert refused.returncode == 2
                assert "couplings units are missing" in refused.stderr and "\n" == refused.stderr[-1]
    nca(tmp_path, "report")
    for name in TABLE_FILES + ["table_separation.csv"]:
        assert (_results(tmp_path) / name).read_bytes() == (_results(reference[0]) / name).read_bytes(), name


def test_report_refuses_mixed_configurations(reference, tmp_path):
    import shutil
    workdir = tmp_path / "copy"
    shutil.copytree(reference[0], workdir)
    unit = sorted((workdir / "couplings").rglob("s0001.json"))[0]
    data = json.loads(unit.read_text())
    data["config_hash"] = "0123456789ab"
    unit.write_text(json.dumps(data))
    refused = nca(workdir, "report", check=False)
    assert refused.returncode == 2 and "different configurations" in refused.stderr


def test_clear_errors_on_the_command_line(tmp_path):
    command = [sys.executable, "-m", "nca_np", "train", "--workdir", str(tmp_path)]
    bad_profile = subprocess.run(command + ["--profile", "nope"], capture_output=True, text=True, env=_env())
    assert bad_profile.returncode == 2 and "profile 'nope' not found" in bad_profile.stderr
    assert "Traceback" not in bad_profile.stderr
    bad_value = subprocess.run(command + ["--profile", str(PROFILE), "--set", "train.runs=ten"],
                               capture_output=True, text=True, env=_env())
    assert bad_value.returncode == 2 and "train.runs expects int" in bad_value.stderr
    unprepared = subprocess.run(command + ["--profile", str(PROFILE)], capture_output=True, text=True, env=_env())
    assert unprepared.returncode == 2 and "nca-np prepare" in unprepared.stderr
    env = {k: v for k, v in _env().items() if k != "MUSDB_PATH"}
    no_musdb = subprocess.run([sys.executable, "-m", "nca_np", "prepare", "--workdir", str(tmp_path)],
                              capture_output=True, text=True, env=env)
    assert no_musdb.returncode == 2 and "MUSDB_PATH" in no_musdb.stderr and "Traceback" not in no_musdb.stderr
    helped = subprocess.run([sys.executable, "-m", "nca_np", "--help"], capture_output=True, text=True, env=_env())
    for stage in ("synth", "prepare", "train", "evaluate", "couplings", "report", "reproduce", "separate"):
        assert stage in helped.stdout


def test_stages_after_prepare_need_neither_musdb_nor_soundfile(reference, tmp_path):
    """A machine with only the cache (like a GPU box without audio tools)
    trains, fits and reports, with the same results."""
    import shutil
    shutil.copytree(reference[0] / "cache", tmp_path / "cache")
    blocked = ("import sys; sys.modules['musdb'] = None; sys.modules['soundfile'] = None; "
               "from nca_np.cli import main; sys.exit(main(sys.argv[1:]))")
    def stage_run(stage, check=True):
        return subprocess.run([sys.executable, "-c", blocked, stage, "--profile", str(PROFILE), "--workdir",
                               str(tmp_path), "--quiet"], check=check, capture_output=True, text=True, env=_env(),
                              timeout=300)
    stage_run("train")
    evaluated = stage_run("evaluate", check=False)  # scoring needs museval and the audio
    assert evaluated.returncode == 2 and len(evaluated.stderr.strip().splitlines()) == 1, evaluated.stderr
    assert "museval" in evaluated.stderr and "Traceback" not in evaluated.stderr
    for stage in ("couplings", "report"):
        stage_run(stage)
    for name in TABLE_FILES:
        assert (_results(tmp_path) / name).read_bytes() == (_results(reference[0]) / name).read_bytes(), name
    report = (_results(tmp_path) / "report.md").read_text()
    assert "The separation table is left out: no evaluation results" in report
    assert not (_results(tmp_path) / "table_separation.csv").exists()


def test_reproduce_with_only_the_cache_skips_what_needs_audio(reference, tmp_path):
    """No data/ folder and no audio libraries: synth and prepare are skipped
    (the features are prepared), evaluate says it needs the audio, and the
    runs are trained, fitted and reported, with the same tables."""
    import shutil
    shutil.copytree(reference[0] / "cache", tmp_path / "cache")
    blocked = ("import sys; sys.modules['musdb'] = None; sys.modules['soundfile'] = None; "
               "sys.modules['museval'] = None; from nca_np.cli import main; sys.exit(main(sys.argv[1:]))")
    done = subprocess.run([sys.executable, "-c", blocked, "reproduce", "--profile", str(PROFILE), "--workdir",
                           str(tmp_path), "--quiet"], capture_output=True, text=True, env=_env(), timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert not (tmp_path / "data").exists()
    lines = done.stdout.splitlines()
    (skipped,) = [line for line in lines if line.startswith("synth and prepare skipped")]
    assert str(tmp_path / "cache") in skipped
    (evaluate,) = [line for line in lines if line.startswith("evaluate skipped")]
    assert "museval" in evaluate or "audio" in evaluate
    for name in TABLE_FILES:
        assert (_results(tmp_path) / name).read_bytes() == (_results(reference[0]) / name).read_bytes(), name


def test_report_leaves_out_a_damaged_wall_time_record_and_reads_old_ones(reference, tmp_path):
    import shutil
    workdir = tmp_path / "copy"
    shutil.copytree(reference[0], workdir, symlinks=True)
    (damaged,) = sorted((workdir / "couplings").rglob("timings/couplings-*.json"))
    damaged.write_text('{"stage": "coup')
    (train,) = sorted((workdir / "runs").rglob("timings/train-*.json"))
    old = {"stage": "train", "shard": "0of1", "seconds": 3.0, "backend": "cupy", "device": "GPU Tesla T4 (CuPy 13)"}
    train.write_text(json.dumps(old))  # a record written before devices were records
    done = nca(workdir, "report")
    (named,) = [line for line in done.stdout.splitlines() if str(damaged) in line]
    assert "leaving out" in named and "not valid JSON" in named
    meta = json.loads((_results(workdir) / "metadata.json").read_text())
    assert "couplings" not in meta["wall_time_seconds"] and meta["wall_time_seconds"]["train"] == 3.0
    assert meta["stage_devices"]["train"][0]["line"] == "GPU Tesla T4 (CuPy 13) (cupy)"
    assert meta["devices_differ"] == "the stages ran on different devices"
    report = (_results(workdir) / "report.md").read_text()
    assert "\n- train: GPU Tesla T4 (CuPy 13) (cupy)\n" in report
    assert "**The devices differ:** the stages ran on different devices" in report


def test_profile_names_are_not_confused_with_folders(tmp_path, monkeypatch):
    (tmp_path / "demo").mkdir()  # a folder named like a profile, e.g. a work folder
    monkeypatch.chdir(tmp_path)
    assert load_profile("demo")["profile"]["name"] == "demo"


def test_shards_balance_training_runs_by_cost():
    """Ten runs of each model over eight shards: an MSS-DAE run costs twice a
    DAE run, and every shard gets the same total cost; every run is in
    exactly one shard."""
    config = {"train": {"kinds": ["dae", "mss-dae", "sf"], "runs": 10}}
    units = training_units(config)
    shards = [Shard(i, 8).select(units, cost=training_cost) for i in range(8)]
    assert sorted(u for shard in shards for u in shard) == sorted(units)
    assert [sum(training_cost(u) for u in shard) for shard in shards] == [10] * 8
    assert [training_cost(("mss-dae", 0)), training_cost(("dae", 0))] == [4, 2]
    assert Shard(3, 8).select(units, cost=training_cost) == shards[3]  # the same deal every time
    assert Shard(0, 3).select(units) == units[0::3]


def test_wall_time_records_keep_each_device_and_survive_damage(tmp_path, monkeypatch):
    from nca_np import backend
    from nca_np.workspace import record_time

    record_time(tmp_path, "train", Shard(), 2.0)
    path = tmp_path / "timings" / "train-0of1.json"
    first = json.loads(path.read_text())
    assert first["backend"] == "numpy" and first["device"] == backend.device_record() and first["seconds"] == 2.0
    monkeypatch.setattr(backend, "device_record", lambda: {"backend": "cupy", "device": "H200", "line": "GPU 0: H200"})
    record_time(tmp_path, "train", Shard(), 1.0)  # resumed on another machine
    second = json.loads(path.read_text())
    assert second["seconds"] == 3.0 and second["device"]["line"] == "GPU 0: H200"
    assert second["earlier_devices"] == [first["device"]["line"]]
    path.write_text("{")
    record_time(tmp_path, "train", Shard(), 1.5)  # a damaged record starts again
    assert json.loads(path.read_text())["seconds"] == 1.5


def _overlaps(a, b):
    return (a["track"] == b["track"] and a["start_frame"] < b["start_frame"] + b["frames"]
            and b["start_frame"] < a["start_frame"] + a["frames"])


#: The matrices every unit scores on held-out frames.
SCORED = {"student", "compositional", "min_norm", "nearest_identity", "mean_local_map", "linear", "identity",
          "ridge", "pooled_ridge"}


def test_units_are_scored_on_heldout_segments_apart_from_their_own(reference):
    workdir, _ = reference
    segments = {row["id"]: row for row in json.loads(next((workdir / "couplings").rglob("segments.json")).read_text())}
    config = load_profile(str(PROFILE))
    units = sorted((workdir / "couplings").rglob("s[0-9]*.json"))
    assert len(units) == 3 * len(segments)
    for path in units:
        unit = json.loads(path.read_text())
        chosen = unit["heldout"]["segments"]
        same, other = chosen["same_track"], chosen["other_tracks"]
        # one test track of five segments: the four others, at most nca.heldout_same of them
        assert len(same) == min(config["nca"]["heldout_same"], len(segments) - 1) and other == []
        for segment_id in same:
            assert not _overlaps(segments[segment_id], unit["segment"]) and segment_id != unit["segment"]["id"]
            assert segments[segment_id]["track"] == unit["segment"]["track"]
        assert set(unit["heldout"]["scores"]) == SCORED
        for name, score in unit["heldout"]["scores"].items():
            assert numpy.isfinite(score["same_track"]["snr_model_db"]), (path, name)
        ridge, pooled = unit["references"]["ridge"], unit["references"]["pooled_ridge"]
        assert ridge["alpha"] > 0 and ridge["pooled_segments"] == 0 and pooled["pooled_segments"] == 1
        assert set(unit["heldout"]["scores"]["pooled_ridge"]["same_track"]["per_block_snr_db"]) \
            == set(pooled["scored_same_track"]) == set(same[1:])
    kinds_of_segment = {}
    for path in units:  # every model kind is scored on the same frames of a segment
        unit = json.loads(path.read_text())
        kinds_of_segment.setdefault(unit["segment"]["id"], set()).add(tuple(unit["heldout"]["segments"]["same_track"]))
    assert all(len(chosen) == 1 for chosen in kinds_of_segment.values())


def test_report_has_heldout_scores_and_the_claims_tested(reference):
    results = _results(reference[0])
    report = (results / "report.md").read_text()
    for needle in ("## Held-out scores", "## The paper's claims, tested", "## Replication of the paper's tables",
                   "**Which couplings describe the network beyond the frames they were fitted on.**"):
        assert needle in report
    heldout = (results / "heldout_scores.csv").read_text().splitlines()
    assert len(heldout) == 1 + len(SCORED) * len(KINDS)
    claims = (results / "claims.csv").read_text().splitlines()
    assert len(claims) > 10
    verdicts = {line.rsplit(",", 2)[-2] for line in claims[1:]}
    assert verdicts <= {"holds", "does not hold", "not identified on this data"}


def test_units_of_dead_runs_are_skipped_and_reported(reference, tmp_path, monkeypatch):
    import shutil

    from nca_np import couplings
    from nca_np.report.stage import report_stage
    from nca_np.workspace import Workspace

    workdir = tmp_path / "work"
    shutil.copytree(reference[0], workdir, symlinks=True)
    config = load_profile(str(PROFILE))
    ws = Workspace(workdir, config, ())
    dae_units = sorted((ws.couplings_dir / "dae").glob("s*"))
    for path in dae_units:
        path.unlink()
    dead_run = couplings.unit_draws(config, "dae", 0)[0]
    real = couplings.recorded_health

    def health(run_dir):
        if Path(run_dir) == ws.run_dir("dae", dead_run):
            return {"dead": True, "reason": "every unit of layer 1 is off on every frame"}
        return real(run_dir)

    monkeypatch.setattr(couplings, "recorded_health", health)
    lines = []
    couplings.couplings_stage(ws, progress=False, log=lines.append)
    skipped = [json.loads(p.read_text()) for p in sorted((ws.couplings_dir / "dae").glob("s*.json"))]
    skipped = [u for u in skipped if "skipped" in u]
    assert skipped and all(u["run"] == dead_run and "strategies" not in u for u in skipped)
    assert any("skipped, run" in line for line in lines)
    assert couplings.unit_damage(ws.couplings_dir / "dae" / f"{skipped[0]['segment']['id']}.json") is None
    report = report_stage(ws, log=lambda *_: None).read_text()
    assert f"{len(skipped)} unit{'s' if len(skipped) > 1 else ''} left out, their drawn run dead: DAE" in report
    table1 = (ws.results_dir / "table1_tod_r.csv").read_text().splitlines()
    n_segments = len(json.loads((ws.couplings_dir / "segments.json").read_text()))
    assert table1[1].split(",")[0] == "DAE" and table1[1].split(",")[3] == str(n_segments - len(skipped))


def test_an_empty_shard_is_refused_not_read_as_the_whole():
    from nca_np.errors import UserError

    assert Shard.parse(None) == Shard()
    for text in ("", " "):
        with pytest.raises(UserError, match="is empty"):
            Shard.parse(text)
