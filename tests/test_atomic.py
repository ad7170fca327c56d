"""Atomic writes (nca_np.atomic): a failed write leaves nothing and names
its file; temporaries of killed writers are removed, those of running ones kept."""

import errno
import os
import subprocess
import sys
import time

from pathlib import Path

import pytest

from nca_np import atomic

REPO = Path(__file__).resolve().parent.parent


def dead_pid() -> int:
    """The id of a process that has finished (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def temporary_of(folder, name, pid, host=None):
    path = folder / f".{name}.{pid}@{host or atomic.host_name()}.tmp"
    path.write_bytes(b"half")
    return path


def test_temporary_is_hidden_beside_its_file_and_names_its_writer(tmp_path):
    tmp = atomic.temporary_path(tmp_path / "table.csv")
    assert tmp.parent == tmp_path and tmp.name.startswith(".table.csv.") and tmp.name.endswith(".tmp")
    assert f".{os.getpid()}@" in tmp.name


def test_failed_write_leaves_no_file_no_folder_and_names_the_destination(tmp_path):
    target = tmp_path / "new" / "deeper" / "unit.json"
    with pytest.raises(OSError) as caught:
        with atomic.atomic_open(target, "w") as handle:
            handle.write("{")
            raise OSError(errno.ENOSPC, "No space left on device")  # as a full disk's write() raises it
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(target)
    assert not (tmp_path / "new").exists()


def test_failed_write_keeps_folders_that_existed(tmp_path):
    (tmp_path / "kept").mkdir()
    with pytest.raises(ValueError):
        with atomic.atomic_open(tmp_path / "kept" / "x.bin") as handle:
            handle.write(b"1")
            raise ValueError("not an OSError: passed on unchanged")
    assert (tmp_path / "kept").is_dir() and not list((tmp_path / "kept").iterdir())


def test_short_write_without_errno_gets_the_file_systems_reason(tmp_path):
    """NumPy's tofile on a full disk raises "N requested and M written"
    without errno; one more write finds the reason (here: a size limit)."""
    script = (
        "import resource, signal, numpy, sys\n"
        "from nca_np.atomic import atomic_open\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))\n"
        "try:\n"
        f"    with atomic_open({str(tmp_path / 'big.npy')!r}) as handle:\n"
        "        numpy.save(handle, numpy.zeros(100000))\n"
        "except OSError as exc:\n"
        "    print(exc.errno, exc.filename)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert result.stdout.split() == [str(errno.EFBIG), str(tmp_path / "big.npy")], result.stderr
    assert list(tmp_path.iterdir()) == []


def test_stale_temporaries_are_those_of_finished_or_old_writers(tmp_path):
    finished = temporary_of(tmp_path, "a.json", dead_pid())
    running = temporary_of(tmp_path, "b.json", os.getppid())
    elsewhere = temporary_of(tmp_path, "c.json", os.getppid(), host="another-machine")
    old_elsewhere = temporary_of(tmp_path, "d.json", os.getppid(), host="another-machine")
    day_ago = time.time() - atomic.STALE_AFTER_SECONDS - 60
    os.utime(old_elsewhere, (day_ago, day_ago))
    legacy = tmp_path / f".e.json.{dead_pid()}.tmp"  # the name before writers' hosts were recorded
    legacy.write_bytes(b"")
    unrelated = tmp_path / ".notes.tmp"
    unrelated.write_bytes(b"")
    (tmp_path / "sub").mkdir()
    nested = temporary_of(tmp_path / "sub", "f.png", dead_pid())
    lines = []
    removed = atomic.remove_stale_temporaries(tmp_path, log=lines.append)
    assert sorted(removed) == sorted([finished, old_elsewhere, legacy, nested])
    assert running.exists() and elsewhere.exists() and unrelated.exists()
    assert lines == [f"removed 4 temporary file(s) left by an interrupted run in {tmp_path}"]
    assert atomic.remove_stale_temporaries(tmp_path / "missing") == []
