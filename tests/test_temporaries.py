"""Writers that share a folder (two commands writing the synthetic corpus or
the feature cache) remove only the temporaries of writers that are gone,
never those of a writer still running; and the OS failure a command reports
is the first one, not a later write in a ``finally``."""

import errno
import subprocess
import sys

import numpy
import pytest

from nca_np.atomic import host_name
from nca_np.data import cache, synth
from nca_np.errors import describe_os_error


def temporaries(folder, live_pid):
    """A live writer's temporary and a dead one's, in ``folder``."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    folder.mkdir(parents=True, exist_ok=True)
    live = folder / f".vocals.wav.{live_pid}@{host_name()}.tmp"
    dead = folder / f".mixture.wav.{gone.pid}@{host_name()}.tmp"
    for path in (live, dead):
        path.write_bytes(b"half")
    return live, dead


def test_the_corpus_writer_keeps_a_live_writers_temporary(tmp_path, live_pid):
    folder = tmp_path / "train" / "Synth 001 - Train"
    live, dead = temporaries(folder, live_pid)
    silence = numpy.zeros((100, 2))
    synth._write_track(folder, {name: silence for name in synth.STEMS}, 44100)
    assert live.exists() and not dead.exists()
    assert (folder / "mixture.wav").exists()


def test_the_cache_keeps_a_live_writers_temporary(tmp_path, live_pid):
    live, dead = temporaries(tmp_path / "train", live_pid)
    cache._remove_temporaries(tmp_path)
    assert live.exists() and not dead.exists()


def test_the_first_failed_write_is_named_not_the_one_in_finally(tmp_path):
    """Disk full in a unit's write, then again in the timings written in a
    ``finally``: the line names the unit."""
    script = f"""
import resource, signal
from nca_np.atomic import write_json
from nca_np.errors import describe_os_error
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))
try:
    try:
        write_json({str(tmp_path / 'unit.json')!r}, {{"x": "a" * 5000}})
    finally:
        write_json({str(tmp_path / 'timings.json')!r}, {{"y": "b" * 5000}})
except OSError as exc:
    print(describe_os_error(exc))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.stdout.startswith(f"cannot use {tmp_path / 'unit.json'}: the file size limit"), result


def test_an_unrelated_earlier_error_is_not_named():
    try:
        try:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", "/old")
        except FileNotFoundError:
            raise OSError(errno.ENOSPC, "No space left on device", "/new")
    except OSError as exc:
        assert describe_os_error(exc).startswith("cannot use /new: no space left")


def test_an_explicit_renaming_keeps_the_outer_name():
    """preflight's probe failure re-raised naming the folder it stands for."""
    try:
        try:
            raise OSError(errno.EROFS, "Read-only file system", "/work/.probe")
        except OSError as probe:
            raise OSError(errno.EROFS, "Read-only file system", "/work/data") from probe
    except OSError as exc:
        assert describe_os_error(exc).startswith("cannot use /work/data: it is on a read-only file system")
