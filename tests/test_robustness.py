"""Settings and conditions that used to end in a traceback, a silent wrong
result or a lost run, driven through the command line on the tiny profile:
dead models, an NCA fit that blows up, negative seeds, damaged evaluation
files, two commands on one work folder, Ctrl-C and SIGTERM, warnings before
the error line, and the wording of a few lines. One trained work folder is
shared by the module; each test that changes it works on a copy.
"""

import json
import shutil
import signal
import subprocess
import sys

import numpy
import pytest

from audio_trees import truncate
from test_failures import SETTINGS, _command, _env, assert_nothing_half_written, assert_one_clear_line, nca, results

pytestmark = pytest.mark.slow
EXIT_LOCKED = 75


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One uninterrupted tiny reproduce (one run per model); returns its work folder."""
    workdir = tmp_path_factory.mktemp("trained")
    nca(workdir, "reproduce")
    return workdir


def copy_of(workdir, tmp_path, name="copy"):
    target = tmp_path / name
    shutil.copytree(workdir, target, symlinks=True)
    return target


def evaluation_units(workdir):
    """The models' evaluation units (the baselines' are under baselines/)."""
    return sorted(p for p in (workdir / "evaluation").rglob("t[0-9]*.json") if "baselines" not in p.parts)


# --- 1. a dead model -------------------------------------------------------------------------------


def test_dead_models_are_warned_recorded_and_reported(trained, tmp_path):
    workdir = copy_of(trained, tmp_path)
    dead = (*SETTINGS, "--set", "train.learning_rate=10")
    result = nca(workdir, "reproduce", settings=dead)
    assert result.stderr == "" and "Traceback" not in result.stdout
    warnings = [line for line in result.stdout.splitlines() if "ended dead" in line]
    assert len(warnings) == 3 and all(line.startswith("warning: ") for line in warnings), result.stdout
    assert "its output is zero on all 512 sample frames" in warnings[0]
    models = sorted((workdir / "runs").rglob("model.npz"))
    health = []
    for model in models:
        with numpy.load(model) as data:
            meta = json.loads(str(data["meta"]))
        if meta["settings"]["learning_rate"] == 10:
            health.append(meta["health"])
    assert len(health) == 3 and all(h["dead"] and h["zero_output_share"] == 1.0 for h in health)
    failed = [json.loads(p.read_text()) for p in evaluation_units(workdir)]
    failed = [unit for unit in failed if "failed" in unit]
    assert len(failed) == 3 and all("the run is dead" in unit["failed"] for unit in failed)
    assert "3 of 3 evaluation units failed" in (results(workdir) / "report.md").read_text()


# --- 2. an NCA fit that blows up -------------------------------------------------------------------


def test_an_nca_fit_that_blows_up_is_no_error(trained, tmp_path):
    workdir = copy_of(trained, tmp_path)
    blown = (*SETTINGS, "--set", "nca.learning_rate=1e6")
    result = nca(workdir, "reproduce", settings=blown)
    assert result.stderr == "" and "3 runs in this shard, 3 already finished" in result.stdout
    assert "report written" in result.stdout


# --- 3. negative seeds -----------------------------------------------------------------------------


@pytest.mark.parametrize("setting", ["nca.seed=-1", "train.seed=-1", "data.synth_seed=-1"])
def test_negative_seeds_fail_before_any_work(setting, tmp_path):
    result = nca(tmp_path / "work", "reproduce", settings=(*SETTINGS, "--set", setting), check=False)
    name = setting.split("=")[0]
    assert_one_clear_line(result, 2, f"setting {name} = -1 is invalid", "an integer of at least 0")
    assert not (tmp_path / "work").exists()


# --- 5. damaged evaluation files -------------------------------------------------------------------


def test_damaged_evaluation_files_are_named_and_computed_again(trained, tmp_path):
    workdir = copy_of(trained, tmp_path)
    table = (results(trained) / "table_separation.csv").read_bytes()
    unit = evaluation_units(workdir)[1]
    truncate(unit, 40)
    tracks = next((workdir / "evaluation").rglob("tracks.json"))
    truncate(tracks, 10)
    report = nca(workdir, "report")
    assert report.stderr == ""
    assert f"{tracks} is damaged (not valid JSON" in (results(workdir) / "report.md").read_text()
    rerun = nca(workdir, "evaluate")
    assert f"{tracks} is damaged (not valid JSON" in rerun.stdout
    assert f"{unit} is damaged (not valid JSON" in rerun.stdout
    assert "3 (model, run, track) units in this shard, 2 already done" in rerun.stdout
    tracks.unlink()
    again = nca(workdir, "evaluate")
    assert "3 already done" in again.stdout and json.loads(tracks.read_text())["tracks"]
    nca(workdir, "report")
    assert (results(workdir) / "table_separation.csv").read_bytes() == table


# --- 7. two commands on one work folder ------------------------------------------------------------


def test_a_second_command_on_a_held_work_folder_is_refused(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        from nca_np.atomic import host_name
        record = {"pid": holder.pid, "host": host_name(), "command": "nca-np train", "started": "now"}
        (tmp_path / ".nca-np.lock").write_text(json.dumps(record))
        for extra in ((), ("--shard", "1/2")):
            refused = nca(tmp_path, "train", *extra, check=False)
            assert_one_clear_line(refused, EXIT_LOCKED, f"in use by process {holder.pid}", ".nca-np.lock")
        assert sorted(p.name for p in tmp_path.iterdir()) == [".nca-np.lock"]
    finally:
        holder.kill()
        holder.wait()
    taken = nca(tmp_path, "synth")
    assert f"took over {tmp_path / '.nca-np.lock'}" in taken.stdout
    assert not (tmp_path / ".nca-np.lock").exists()


# --- 8. Ctrl-C and SIGTERM -------------------------------------------------------------------------


def test_sigterm_ends_training_like_ctrl_c_and_it_resumes(trained, tmp_path):
    """A second train on the folder meanwhile is refused; SIGTERM then ends
    the first with one line, and the same command resumes it."""
    workdir = copy_of(trained, tmp_path)
    longer = (*SETTINGS, "--set", "train.max_epochs=100", "--set", "train.patience_stop=100")
    process = subprocess.Popen([sys.executable, *_command(workdir, "train", settings=longer)], env=_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in process.stdout:
        if "epoch 3 " in line:
            second = nca(workdir, "train", settings=longer, check=False)
            assert_one_clear_line(second, EXIT_LOCKED, f"in use by process {process.pid}", "nca-np train")
            assert process.poll() is None  # still training when refused and when stopped
            process.send_signal(signal.SIGTERM)
            break
    stderr = process.stderr.read()
    process.stdout.read()
    assert process.wait(timeout=60) == 143, stderr
    lines = stderr.strip().splitlines()
    assert lines == ["nca-np train: stopped by SIGTERM; rerun the same command to continue where it stopped"]
    assert_nothing_half_written(workdir)
    assert not (workdir / ".nca-np.lock").exists()
    resumed = nca(workdir, "train", settings=longer)
    assert "seed 0: resuming after epoch" in resumed.stdout


LOADING = """
import os, signal, sys
class Interrupt:
    def find_spec(self, name, path=None, target=None):
        if name == "nca_np.experiment":
            os.kill(os.getpid(), signal.{signal})
        return None
sys.meta_path.insert(0, Interrupt())
sys.argv = ["nca-np", "train", "--workdir", {workdir!r}]
from nca_np.__main__ import entry
sys.exit(entry())
"""


@pytest.mark.parametrize("name, status, how", [("SIGINT", 130, "interrupted"), ("SIGTERM", 143, "stopped by SIGTERM")])
def test_an_interruption_while_loading_is_one_line(name, status, how, tmp_path):
    script = LOADING.format(signal=name, workdir=str(tmp_path / "work"))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=_env(), timeout=120)
    assert result.returncode == status, result.stderr
    assert result.stderr.strip().splitlines() == [f"nca-np: {how} while starting; nothing was done"]
    assert not (tmp_path / "work").exists()


# --- 9. warnings, exit statuses and wording --------------------------------------------------------


def test_warnings_go_to_the_log_not_before_the_error_line(tmp_path):
    warn = ("import numpy, nca_np.cli as cli\n"
            "real = cli.load_profile\n"
            "def load_profile(*args):\n"
            "    numpy.log(numpy.zeros(1))\n"
            "    return real(*args)\n"
            "cli.load_profile = load_profile\n")
    result = nca(tmp_path / "work", "train", patch=warn, check=False)
    assert_one_clear_line(result, 2, "no feature cache")
    assert "warning: divide by zero encountered in log (RuntimeWarning" in result.stdout


def test_an_empty_shard_is_refused(tmp_path):
    for spelling in (["--shard", ""], ["--shard= "]):
        result = nca(tmp_path / "work", "train", *spelling, check=False)
        assert_one_clear_line(result, 2, "--shard", "is empty", "leave the option out")
    assert not (tmp_path / "work").exists()


def test_evaluate_with_a_tree_of_the_other_layout_advises_the_musdb_root(trained, tmp_path):
    workdir = copy_of(trained, tmp_path)
    shutil.rmtree(workdir / "evaluation")
    stems = tmp_path / "stems" / "test"
    stems.mkdir(parents=True)
    (stems / "Synth 001 - Test.stem.mp4").write_bytes(b"\0" * 64)
    result = nca(workdir, "evaluate", "--musdb-root", str(tmp_path / "stems"), check=False)
    line = assert_one_clear_line(result, 2, stems, "pass the --musdb-root of that release")
    assert "--set data.is_wav" not in line  # the configuration is not what is wrong


def test_a_copied_work_folder_evaluates_its_own_audio(trained, tmp_path):
    first = copy_of(trained, tmp_path, "first")
    second = copy_of(first, tmp_path, "second")
    shutil.rmtree(first)  # the path recorded by prepare is gone
    for unit in evaluation_units(second):
        unit.unlink()
    result = nca(second, "evaluate")
    assert "3 (model, run, track) units in this shard, 0 already done" in result.stdout
    assert len(evaluation_units(second)) == 3


def test_a_two_second_synthetic_test_track_is_not_called_damaged(tmp_path):
    short = (*SETTINGS, "--set", "data.synth_test_seconds=2.0")
    result = nca(tmp_path / "work", "reproduce", settings=short, check=False)
    line = assert_one_clear_line(result, 2, "synthetic test track 'Synth 001 - Test' are silent",
                                 "voice enters in the third bar", "data.synth_test_seconds to at least")
    assert "damaged" not in line
