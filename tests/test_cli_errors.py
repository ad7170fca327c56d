"""Every bad dataset input, tried through the command line: one clear line
on standard error, exit status 2, no traceback, and no half-written cache
(no temporary file, no empty folder). More failures (disk, kills, damaged
units) are in test_failures.py."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from audio_trees import copy_example_stem, truncate, write_track, write_tree

REPO = Path(__file__).resolve().parent.parent
PROFILE = Path(__file__).resolve().parents[1] / "configs" / "tiny.toml"


def prepare(workdir, root, *settings, env_changes=None):
    env = dict(os.environ, PYTHONPATH=str(REPO), NCA_NP_BACKEND="numpy", **(env_changes or {}))
    command = [sys.executable, "-m", "nca_np", "prepare", "--profile", str(PROFILE), "--workdir", str(workdir),
               "--quiet", *(["--musdb-root", str(root)] if root is not None else [])]
    for setting in settings:
        command += ["--set", setting]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)


def assert_one_clear_line(result, *needles, workdir):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert str(needle) in lines[0], (needle, lines[0])
    cache = workdir / "cache"
    assert not list(cache.rglob("manifest.json")) and not list(cache.rglob(".*.tmp"))
    empty = [p for p in [cache, *cache.rglob("*")] if p.is_dir() and not any(p.iterdir())]
    assert not empty, empty  # a failed preparation leaves no empty cache/<key>/ folders


def good_tree(root):
    return write_tree(root, train=("Alpha - One",), test=("Gamma - Three",), seconds=1.0)


CASES = {
    "missing root": (lambda root: None, ["does not exist"]),
    "root without train/ and test/": (lambda root: root.mkdir() or None, ["neither train/ nor test/"]),
    "empty subset": (lambda root: (good_tree(root), shutil.rmtree(root / "train" / "Alpha - One")) and None,
                     ["train is empty"]),
    "wav tree read without is_wav": (lambda root: good_tree(root) and "data.is_wav=false", ["is_wav=true"]),
    "missing source file": (lambda root: (good_tree(root), os.remove(root / "test" / "Gamma - Three" / "bass.wav"))
                            and None, ["bass.wav"]),
    "phantom track folder": (lambda root: (good_tree(root), (root / "train" / "Alpha - One" / "extra").mkdir())
                             and None, ["extra"]),
    "truncated audio file": (lambda root: (good_tree(root), truncate(root / "train" / "Alpha - One" / "vocals.wav", 60))
                             and None, ["vocals.wav"]),
    "silent vocals in a test track": (lambda root: (write_tree(root, train=("Alpha - One",), test=()),
                                                    write_track(root / "test" / "Gamma - Three", silent=("vocals",)))
                                      and None, ["Gamma - Three", "silent"]),
    "sample rate other than 44.1 kHz": (lambda root: write_tree(root, train=("Alpha - One",), test=("Gamma - Three",),
                                                                sample_rate=48000) and None, ["48000"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_dataset_gives_one_clear_line(case, tmp_path):
    make, needles = CASES[case]
    root = tmp_path / "musdb"
    setting = make(root)
    result = prepare(tmp_path / "work", root, *([setting] if setting else []))
    assert_one_clear_line(result, *needles, workdir=tmp_path / "work")


@pytest.mark.musdb
def test_stems_tree_read_as_wav_and_missing_ffmpeg(tmp_path):
    pytest.importorskip("stempeg")
    root = tmp_path / "musdb"
    copy_example_stem(root / "train")
    copy_example_stem(root / "test")
    as_wav = prepare(tmp_path / "work", root, "data.is_wav=true")
    assert_one_clear_line(as_wav, root / "train", "is_wav=false", workdir=tmp_path / "work")
    no_tools = prepare(tmp_path / "work", root, "data.is_wav=false",
                       env_changes={"PATH": str(tmp_path / "empty-bin")})
    assert_one_clear_line(no_tools, "ffmpeg", workdir=tmp_path / "work")


def test_no_dataset_at_all_says_where_to_get_one(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "MUSDB_PATH"}
    result = subprocess.run([sys.executable, "-m", "nca_np", "prepare", "--workdir", str(tmp_path), "--quiet"],
                            capture_output=True, text=True, env=dict(env, PYTHONPATH=str(REPO)), timeout=120)
    assert_one_clear_line(result, "MUSDB_PATH", "make demo", workdir=tmp_path)


def test_a_missing_audio_library_says_how_to_install_it(tmp_path):
    """Without soundfile (the audio extra), building the synthetic corpus
    stops with one line naming the extra and how to install it."""
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "soundfile.py").write_text('raise ImportError("soundfile blocked by the test")\n')
    env = dict(os.environ, PYTHONPATH=f"{blocked}{os.pathsep}{REPO}", NCA_NP_BACKEND="numpy")
    command = [sys.executable, "-m", "nca_np", "prepare", "--profile", str(PROFILE), "--workdir",
               str(tmp_path / "work"), "--quiet"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "soundfile is not installed" in lines[0] and "pip install 'nca_np[audio]'" in lines[0], lines[0]
