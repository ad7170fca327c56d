"""The pipeline broken on purpose, through the command line: each failure
ends in one clear line on standard error, a non-zero exit status and no
traceback, leaves nothing half-written (no temporary file, no empty
folder), and once its cause is removed the same command finishes with the
tables of an uninterrupted run.

Disk failures are real, not mocked: a full disk is a size limit on the
files the command may write (``RLIMIT_FSIZE``, which binds root too), a
read-only work folder a read-only bind mount in a user namespace (or, for a
user who is not root, a folder without write permission).
"""

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from audio_trees import copy_example_stem, truncate, write_track, write_tree

REPO = Path(__file__).resolve().parent.parent
PROFILE = Path(__file__).resolve().parents[1] / "configs" / "tiny.toml"
#: One run per model: every rerun below takes a few seconds.
SETTINGS = ("--set", "train.runs=1")
TABLE_FILES = ["tables.json", "table1_tod_r.csv", "table2_snr_model.csv", "table3_snr_true.csv"]
EXIT_OS_ERROR = 74

pytestmark = pytest.mark.slow


def _env():
    return dict(os.environ, PYTHONPATH=str(REPO), NCA_NP_BACKEND="numpy")


def _command(workdir, *args, settings=SETTINGS):
    return ["-m", "nca_np", *args, "--profile", str(PROFILE), "--workdir", str(workdir), "--quiet", *settings]


def nca(workdir, *args, settings=SETTINGS, check=True, patch="", file_size_limit=None, prefix=()):
    """Run the command line on the tiny profile.

    Args:
        patch: Python run first in the same process (to fake a condition).
        file_size_limit: bytes any file written may reach (a full disk).
        prefix: a command the run is wrapped in (a mount namespace).
    """
    head = ["-c", f"{patch}\nimport sys\nfrom nca_np.cli import main\nsys.exit(main(sys.argv[1:]))"] if patch else []
    arguments = _command(workdir, *args, settings=settings)
    command = [*prefix, sys.executable, *head, *(arguments[2:] if patch else arguments)]

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    result = subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=300,
                            preexec_fn=limit if file_size_limit else None)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def assert_one_clear_line(result, status, *needles):
    assert result.returncode == status, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("nca-np ") and ": error: " in lines[0]
    for needle in needles:
        assert str(needle) in lines[0], (needle, lines[0])
    return lines[0]


def assert_nothing_half_written(workdir):
    workdir = Path(workdir)
    if not workdir.exists():
        return
    assert not [p for p in workdir.rglob(".*.tmp")], list(workdir.rglob(".*.tmp"))
    empty = [p for p in workdir.rglob("*") if p.is_dir() and not any(p.iterdir())]
    assert not empty, empty


def results(workdir):
    return Path(workdir) / "results" / "tiny-latest"


def tables(workdir):
    return {name: (results(workdir) / name).read_bytes() for name in TABLE_FILES}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted run; returns its work folder."""
    workdir = tmp_path_factory.mktemp("reference")
    nca(workdir, "reproduce")
    return workdir


# --- 1. every training, then a crash ----------------------------------------------------------


def test_segments_longer_than_every_excerpt_fail_before_anything_is_written(tmp_path):
    result = nca(tmp_path, "reproduce", settings=(*SETTINGS, "--set", "nca.segment_frames=5000"), check=False)
    assert_one_clear_line(result, 2, "nca.segment_frames = 5000", "at most 2757")
    assert not tmp_path.exists() or not list(tmp_path.iterdir())


def test_test_tracks_shorter_than_a_segment_fail_before_training(reference, tmp_path):
    """Excerpts may be shorter than data.excerpt_seconds (whole short tracks):
    counted after preparing, as the couplings stage counts, before any training."""
    short = (*SETTINGS, "--set", "data.synth_test_seconds=3.0", "--set", "data.excerpt_seconds=4.0",
             "--set", "nca.segment_frames=5000")
    result = nca(tmp_path, "reproduce", settings=short, check=False)
    assert_one_clear_line(result, 2, "no NCA segment", "'Synth 001 - Test', has 4135 frames", "at most 4135",
                          "before training")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "couplings").exists()
    for stage in ("train", "couplings"):
        assert_one_clear_line(nca(tmp_path, stage, settings=short, check=False), 2, "no NCA segment")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "couplings").exists()


# --- 2. wrong data accepted without a word ------------------------------------------------------


def test_musdb18_test_track_shorter_than_its_published_excerpt_is_named(tmp_path):
    root = write_tree(tmp_path / "musdb", train=("Alpha - One",), test=())
    write_track(root / "test" / "Arise - Run Run Run", seconds=3.0)  # its published excerpt: 86-116 s
    musdb18 = ("--musdb-root", str(root))
    settings = ("--set", "data.corpus=musdb18", "--set", "data.excerpt_seconds=30.0")
    result = nca(tmp_path / "work", "prepare", *musdb18, settings=settings, check=False)
    assert_one_clear_line(result, 2, "'Arise - Run Run Run'", "lasts 3.0 s", "86-116 s", 'data.corpus = "synthetic"')
    assert not (tmp_path / "work").exists()  # checked before any audio was read
    following_the_advice = nca(tmp_path / "work", "prepare", *musdb18, settings=())
    assert "Arise - Run Run Run: excerpt 0-2 s (activation-confidence)" in following_the_advice.stdout


def test_metadata_and_report_name_data_root_cut_list_and_overrides(reference):
    meta = json.loads((results(reference) / "metadata.json").read_text())
    root = str(reference / "data" / "synthetic")
    assert meta["data"]["root"] == root and meta["data"]["corpus"] == "synthetic"
    assert meta["data"]["cut_list"] == "activation confidence (1 excerpt)"
    assert meta["overrides"] == ["train.runs=1"]
    header = next(p for p in (results(reference) / "report.md").read_text().split("\n\n") if p.startswith("Profile **"))
    assert f"Data from `{root}`; test excerpts from activation confidence (1 excerpt)." in header
    assert "Command-line overrides of the profile: `train.runs=1`." in header


# --- 3. the operating system's failures ---------------------------------------------------------


@pytest.fixture(scope="module")
def read_only_prefix(tmp_path_factory):
    """A command prefix that runs a command with its first argument's folder
    mounted read-only, or None (then a folder without write permission is used)."""
    probe = tmp_path_factory.mktemp("probe")
    script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
    prefix = ["unshare", "-rm", "sh", "-c", script]
    try:
        tried = subprocess.run([*prefix, str(probe), "touch", str(probe / "x")], capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return prefix if tried.returncode != 0 and b"Read-only" in tried.stderr else None


def test_read_only_work_folder_is_one_line_and_writes_nothing(reference, tmp_path, read_only_prefix):
    workdir = tmp_path / "work"
    workdir.mkdir()
    if read_only_prefix is not None:
        result = nca(workdir, "reproduce", prefix=[*read_only_prefix, str(workdir)], check=False)
        reason = "read-only file system"
    elif os.geteuid() != 0:
        workdir.chmod(0o555)
        result = nca(workdir, "reproduce", check=False)
        workdir.chmod(0o755)
        reason = "permission denied"
    else:
        pytest.skip("root without user namespaces: no way to make a folder read-only")
    assert_one_clear_line(result, EXIT_OS_ERROR, f"cannot use {workdir / 'data' / 'synthetic'}", reason,
                          "--workdir")
    assert not list(workdir.iterdir())
    nca(workdir, "reproduce")
    assert tables(workdir) == tables(reference)


def test_full_disk_in_prepare_and_in_training_resumes_to_the_same_tables(reference, tmp_path):
    nca(tmp_path, "synth")
    during_prepare = nca(tmp_path, "reproduce", file_size_limit=20_000, check=False)
    assert_one_clear_line(during_prepare, EXIT_OS_ERROR, f"cannot use {tmp_path / 'cache'}", ".npy", "ulimit -f",
                          "run the same command again")
    assert_nothing_half_written(tmp_path)
    assert not (tmp_path / "cache").exists()  # a failed preparation leaves no empty cache folder
    nca(tmp_path, "prepare")
    during_training = nca(tmp_path, "reproduce", file_size_limit=2_000, check=False)
    assert_one_clear_line(during_training, EXIT_OS_ERROR, "checkpoint.npz", "ulimit -f")
    assert_nothing_half_written(tmp_path)
    assert not list((tmp_path / "runs").rglob("*.npz"))
    nca(tmp_path, "reproduce")
    assert tables(tmp_path) == tables(reference)


def test_too_little_free_space_is_said_before_any_work(tmp_path):
    tiny_disk = ("import shutil, collections\n"
                 "Usage = collections.namedtuple('Usage', 'total used free')\n"
                 "shutil.disk_usage = lambda path: Usage(10**9, 10**9 - 1000, 1000)\n")
    result = nca(tmp_path / "work", "reproduce", patch=tiny_disk, check=False)
    line = assert_one_clear_line(result, EXIT_OS_ERROR, "not enough space for the synthetic corpus",
                                 tmp_path / "work" / "data" / "synthetic", "1.0 kB free", "--workdir")
    assert "MB needed" in line
    assert not (tmp_path / "work").exists()


def test_work_folder_under_a_file_is_one_line(tmp_path):
    (tmp_path / "a-file").write_text("")
    result = nca(tmp_path / "a-file" / "work", "reproduce", check=False)
    assert_one_clear_line(result, EXIT_OS_ERROR, tmp_path / "a-file", "is a file, not a folder")


def test_damaged_units_are_named_and_computed_again(reference, tmp_path):
    workdir = tmp_path / "copy"
    shutil.copytree(reference, workdir, symlinks=True)
    unit = sorted((workdir / "couplings").rglob("s0002.json"))[0]
    unit.write_text('{"config_hash": "')
    figure_matrices = sorted((workdir / "couplings").rglob("s0000.npz"))[0]
    truncate(figure_matrices, 100)
    model = sorted((workdir / "runs").rglob("model.npz"))[0]
    truncate(model, 300)
    refused = nca(workdir, "report", check=False)
    assert_one_clear_line(refused, 2, unit, "is damaged", "not valid JSON", "nca-np couplings")
    rerun = nca(workdir, "reproduce")
    for path, reason in ((model, "not a readable .npz archive"), (unit, "not valid JSON"),
                         (figure_matrices.with_suffix(".json"), "its Figure 3 matrices")):
        assert f"{path} is damaged ({reason}" in rerun.stdout, rerun.stdout
    assert "3 runs in this shard, 2 already finished" in rerun.stdout
    assert "15 (model, segment) units in this shard, 13 already done" in rerun.stdout
    assert tables(workdir) == tables(reference)


# --- 4. stale and misplaced files ---------------------------------------------------------------


def test_killed_report_leaves_a_temporary_that_the_next_report_removes(reference, tmp_path):
    workdir = tmp_path / "copy"
    shutil.copytree(reference, workdir, symlinks=True)
    kill_in_figure3 = ("import os, signal\n"
                       "from matplotlib.figure import Figure\n"
                       "save = Figure.savefig\n"
                       "def savefig(self, handle, **kwargs):\n"
                       "    if 'figure3' in str(getattr(handle, 'name', '')):\n"
                       "        handle.write(b'half a png')\n"
                       "        handle.flush()\n"
                       "        os.kill(os.getpid(), signal.SIGKILL)\n"
                       "    return save(self, handle, **kwargs)\n"
                       "Figure.savefig = savefig\n")
    killed = nca(workdir, "report", patch=kill_in_figure3, check=False)
    assert killed.returncode == -signal.SIGKILL
    left = list((workdir / "results").rglob(".figure3_couplings.png.*.tmp"))
    assert len(left) == 1 and left[0].read_bytes() == b"half a png"
    rerun = nca(workdir, "report")
    assert "removed 1 temporary file(s) left by an interrupted run" in rerun.stdout
    assert not list(workdir.rglob(".*.tmp"))
    assert tables(workdir) == tables(reference)


def test_every_output_folder_is_ignored_by_git_in_a_repository(reference, tmp_path):
    """A work folder that is the repository (the default, `.`): after a whole
    run, `git status` shows nothing new."""
    repository = tmp_path / "repository"
    shutil.copytree(reference, repository, symlinks=True)
    shutil.copyfile(REPO / ".gitignore", repository / ".gitignore")
    git = ["git", "-C", str(repository)]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", ".gitignore"], check=True)
    status = subprocess.run([*git, "status", "--porcelain", "--untracked-files=all"], check=True,
                            capture_output=True, text=True).stdout
    assert status.splitlines() == ["A  .gitignore"]


def test_timings_live_with_the_stage_that_made_them(reference):
    def stages(pattern):
        return sorted(json.loads(p.read_text())["stage"] for p in reference.glob(pattern))
    assert stages("data/synthetic/timings/*.json") == ["synth"]
    assert stages("cache/*/timings/*.json") == ["prepare"]
    assert stages("runs/*/timings/*.json") == ["train"]
    assert stages("couplings/*/timings/*.json") == ["couplings"]
    assert stages("evaluation/*/timings/*.json") == ["evaluate"]
    meta = json.loads((results(reference) / "metadata.json").read_text())
    assert set(meta["wall_time_seconds"]) == {"synth", "prepare", "train", "evaluate", "couplings"}


def test_results_are_kept_per_configuration_with_the_latest_linked(reference, tmp_path):
    workdir = tmp_path / "copy"
    shutil.copytree(reference, workdir, symlinks=True)
    first = results(workdir).resolve()
    first_tables = tables(workdir)
    nca(workdir, "reproduce", settings=(*SETTINGS, "--set", "nca.iterations=5"))
    second = results(workdir).resolve()
    assert first != second and first.parent == second.parent == workdir / "results"
    assert {p.name for p in (workdir / "results").iterdir()} == {first.name, second.name, "tiny-latest"}
    assert {name: (first / name).read_bytes() for name in TABLE_FILES} == first_tables
    assert tables(workdir) != first_tables
    assert os.readlink(workdir / "results" / "tiny-latest") == second.name  # relative: survives a move


def test_a_moved_work_folder_is_not_prepared_again(reference, tmp_path):
    workdir = tmp_path / "copy"
    shutil.copytree(reference, workdir, symlinks=True)
    moved = tmp_path / "moved"
    workdir.rename(moved)
    result = nca(moved, "prepare")
    assert "is up to date" in result.stdout
    assert len(list((moved / "cache").iterdir())) == 1


# --- 5. silence where a user waits --------------------------------------------------------------


def test_plan_says_it_calibrates_and_skips_it_when_nothing_is_left(reference, tmp_path):
    fresh = nca(tmp_path, "reproduce", "--plan").stdout.splitlines()
    assert fresh[0].startswith("CPU (NumPy ")  # where it computes, always first
    assert fresh[1].startswith("calibrating on ") and "(about " in fresh[1]
    assert fresh[2].startswith("calibrated in ")
    assert fresh[-1].startswith("estimate: training")
    done = nca(reference, "reproduce", "--plan").stdout
    assert "calibrat" not in done and done.splitlines()[-1] == "estimate: nothing left to do"


# --- 6. messages --------------------------------------------------------------------------------


def test_negative_shard_index_gets_the_projects_message(tmp_path):
    for spelling in (["--shard", "-1/2"], ["--shard=-1/2"]):
        result = nca(tmp_path, "train", *spelling, check=False)
        assert_one_clear_line(result, 2, "--shard '-1/2': need 0 <= i < n")


def test_silent_vocals_in_a_training_track_is_a_warning(tmp_path):
    root = write_tree(tmp_path / "musdb", train=(), test=("Gamma - Three",))
    write_track(root / "train" / "Alpha - One", silent=("vocals",))
    result = nca(tmp_path / "work", "prepare", "--musdb-root", str(root))
    warnings = [line for line in result.stdout.splitlines() if line.startswith("warning:")]
    assert warnings == ["warning: the vocals of training track 'Alpha - One' are silent (all zeros): it teaches "
                        "the models to output silence for its mixture; remove it from the dataset if that is "
                        "not intended"]


@pytest.mark.musdb
def test_stem_files_truncated_or_from_macos(tmp_path):
    """A macOS resource file `._<name>.stem.mp4` is ignored; a truncated
    stem file is named in the project's words, not stempeg's."""
    pytest.importorskip("stempeg")
    root = tmp_path / "musdb"
    copy_example_stem(root / "train")
    copy_example_stem(root / "test")
    (root / "train" / "._Example - Song.stem.mp4").write_bytes(b"\0\5\26\7" + bytes(4092))
    stems = ("--musdb-root", str(root))
    ok = nca(tmp_path / "work", "prepare", *stems, settings=("--set", "data.is_wav=false"))
    assert "1 training tracks" in ok.stdout
    damaged = truncate(copy_example_stem(root / "train", "Example - Cut"), 100_000)
    result = nca(tmp_path / "work2", "prepare", *stems, settings=("--set", "data.is_wav=false"), check=False)
    line = assert_one_clear_line(result, 2, damaged, "truncated or damaged", "download the track again")
    assert "warnings" not in line
