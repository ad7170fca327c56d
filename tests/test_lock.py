"""One command per work folder (or per shard): nca_np.lock."""

import json
import os

import pytest

from conftest import dead_pid
from nca_np import lock
from nca_np.atomic import host_name


def write_holder(path, pid, host=None):
    path.write_text(json.dumps({"pid": pid, "host": host or host_name(), "command": "nca-np train",
                                "started": "2026-01-01T00:00:00+0000"}))


def test_the_lock_names_its_holder_and_goes_with_the_command(tmp_path):
    workdir = tmp_path / "work"
    with lock.hold(workdir, command="nca-np train") as path:
        assert path == workdir / ".nca-np.lock"
        holder = json.loads(path.read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == host_name() and holder["command"] == "nca-np train"
        assert holder["started"]
    assert not workdir.exists()  # the folder made for the lock alone is removed with it


def test_a_live_holder_refuses_a_second_command(tmp_path, live_pid):
    write_holder(tmp_path / ".nca-np.lock", live_pid)
    with pytest.raises(lock.FolderLocked) as refused:
        with lock.hold(tmp_path):
            pass
    line = str(refused.value)
    assert f"in use by process {live_pid} on {host_name()} (nca-np train" in line and "\n" not in line
    assert json.loads((tmp_path / ".nca-np.lock").read_text())["pid"] == live_pid  # left alone


def test_a_gone_holder_is_taken_over_with_a_line(tmp_path):
    pid = dead_pid()
    write_holder(tmp_path / ".nca-np.lock", pid)
    lines = []
    with lock.hold(tmp_path, log=lines.append) as path:
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert lines == [f"took over {path}: its holder, process {pid} on {host_name()} (nca-np train, since "
                     "2026-01-01T00:00:00+0000), no longer runs"]
    assert not path.exists() and not list(tmp_path.iterdir())


def test_a_holder_on_another_host_is_refused_with_advice(tmp_path):
    write_holder(tmp_path / ".nca-np.lock", dead_pid(), host="elsewhere")
    with pytest.raises(lock.FolderLocked, match="if nothing runs there any more, remove .*nca-np.lock"):
        with lock.hold(tmp_path):
            pass


def test_shards_run_together_but_not_beside_the_whole_folder(tmp_path, live_pid):
    write_holder(tmp_path / lock.lock_name(0, 2), live_pid)
    with lock.hold(tmp_path, shard_index=1, shard_count=2) as path:
        assert path.name == ".nca-np.shard-1of2.lock"
    with pytest.raises(lock.FolderLocked, match="shard-0of2"):
        with lock.hold(tmp_path, shard_index=0, shard_count=2):
            pass
    with pytest.raises(lock.FolderLocked, match=r"\.nca-np\.shard-0of2\.lock"):
        with lock.hold(tmp_path):
            pass
    (tmp_path / lock.lock_name(0, 2)).unlink()
    write_holder(tmp_path / lock.WHOLE, live_pid)
    with pytest.raises(lock.FolderLocked, match=r"\.nca-np\.lock"):
        with lock.hold(tmp_path, shard_index=1, shard_count=2):
            pass
    assert sorted(p.name for p in tmp_path.iterdir()) == [".nca-np.lock"]  # the refused shard's lock is gone


def test_a_half_written_lock_is_respected_then_taken_over_when_old(tmp_path):
    path = tmp_path / ".nca-np.lock"
    path.write_text("")
    with pytest.raises(lock.FolderLocked, match="being taken by another nca-np command"):
        with lock.hold(tmp_path):
            pass
    old = path.stat().st_mtime - lock.WRITING_SECONDS - 5
    os.utime(path, (old, old))
    with lock.hold(tmp_path) as taken:
        assert json.loads(taken.read_text())["pid"] == os.getpid()


def test_a_folder_that_cannot_be_written_is_not_locked(tmp_path):
    (tmp_path / "a-file").write_text("")
    with lock.hold(tmp_path / "a-file" / "work") as path:
        assert path is None
