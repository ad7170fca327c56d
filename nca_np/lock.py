"""One command at a time on a work folder (or one per shard).

A command that writes into the work folder first creates a lock file
there, atomically (``O_CREAT | O_EXCL``: of two processes exactly one
succeeds), holding who took it: process id, host, command line and start
time. It is removed when the command ends, however it ends short of a
``SIGKILL``.

- A command without ``--shard`` (or with ``--shard 0/1``) holds the whole
  folder: ``.nca-np.lock``; it is refused while any other command holds a
  lock there.
- Shard ``i/n`` holds ``.nca-np.shard-<i>of<n>.lock``: the shards of one
  folder run together (on one machine or many), each once, and none runs
  beside a command that holds the whole folder.

Each command takes its own lock first and then looks for the others, so of
two that start together at least one sees the other. A lock whose holder
no longer runs (its process is gone, on this host) is taken over with a log
line; one held by a live process, or by another host (whose processes
cannot be seen from here), refuses the command with one line and exit
status :data:`EXIT_LOCKED` (75, ``EX_TEMPFAIL``: try again later). A work
folder that cannot be written is not locked: the stage then fails naming
the path it could not write, as it would without a lock.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path

from .atomic import host_name, make_folder, pid_running, remove_empty_folders
from .errors import UserError

#: Exit status of a command refused because another holds the work folder
#: (sysexits.h's EX_TEMPFAIL: the same command succeeds later).
EXIT_LOCKED = 75
WHOLE = ".nca-np.lock"
#: A lock file younger than this may still be being written by its taker.
WRITING_SECONDS = 10.0


class FolderLocked(UserError):
    """Another command holds the work folder (or this shard of it)."""


def lock_name(shard_index: int = 0, shard_count: int = 1) -> str:
    """The lock file's name: the whole folder, or one shard of it."""
    return WHOLE if shard_count <= 1 else f".nca-np.shard-{shard_index}of{shard_count}.lock"


def read_holder(path) -> dict | None:
    """The holder recorded in a lock file; None when it cannot be read
    (gone, or still being written)."""
    try:
        holder = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) and isinstance(holder.get("pid"), int) else None


def _describe(holder: dict) -> str:
    return (f"process {holder['pid']} on {holder.get('host', '?')} ({holder.get('command', '?')}, "
            f"since {holder.get('started', '?')})")


def _holder_is_gone(path: Path, holder: dict | None) -> bool:
    """Whether the lock at ``path`` may be taken over: its holder's process
    is no longer running on this host, or the file stayed unreadable past
    :data:`WRITING_SECONDS` (a taker killed while writing it)."""
    if holder is None:
        try:
            return time.time() - path.stat().st_mtime > WRITING_SECONDS
        except FileNotFoundError:
            return True
    return holder.get("host") == host_name() and not pid_running(holder["pid"])


def _refusal(path: Path, holder: dict | None) -> FolderLocked:
    if holder is None:
        return FolderLocked(f"{path} is being taken by another nca-np command: wait for it to finish, or "
                            "run this one on another --workdir")
    if holder.get("host") != host_name():
        return FolderLocked(f"the work folder is in use by {_describe(holder)}, according to {path}; "
                            f"wait for it to finish, or, if nothing runs there any more, remove {path}")
    return FolderLocked(f"the work folder is in use by {_describe(holder)} (lock {path}): wait for it to "
                        "finish, or run this command on another --workdir")


def _create(path: Path, record: dict) -> bool:
    """Create the lock file with ``record``; False when it exists already."""
    try:
        handle = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    try:
        os.write(handle, (json.dumps(record, sort_keys=True) + "\n").encode())
        os.fsync(handle)
    except BaseException:
        os.close(handle)
        path.unlink(missing_ok=True)
        raise
    os.close(handle)
    return True


def _take_over(path: Path, holder: dict | None, log) -> None:
    """Remove the stale lock ``path``: renamed first (atomic), and put back
    when what was renamed is not what was judged stale (taken meanwhile)."""
    aside = path.with_name(f"{path.name}.{os.getpid()}@{host_name()}.stale")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    if read_holder(aside) != holder:
        with contextlib.suppress(OSError):
            os.link(aside, path)
    aside.unlink(missing_ok=True)
    if log and holder is not None:
        log(f"took over {path}: its holder, {_describe(holder)}, no longer runs")


def _acquire(path: Path, record: dict, log) -> None:
    for _ in range(5):
        if _create(path, record):
            return
        holder = read_holder(path)
        if not _holder_is_gone(path, holder):
            raise _refusal(path, holder)
        _take_over(path, holder, log)
    raise _refusal(path, read_holder(path))


def _others(folder: Path, mine: Path) -> list[Path]:
    """The locks that exclude ``mine``: any other for the whole folder, the whole folder's for a shard."""
    if mine.name == WHOLE:
        return sorted(p for p in folder.glob(".nca-np*.lock") if p.name != WHOLE)
    return [folder / WHOLE]


def _conflict(folder: Path, mine: Path, log) -> FolderLocked | None:
    """The refusal when a live command holds a lock that excludes ``mine``
    (stale ones are taken over: removed)."""
    for other in _others(folder, mine):
        if not other.exists():
            continue
        holder = read_holder(other)
        if _holder_is_gone(other, holder):
            _take_over(other, holder, log)
            continue
        return _refusal(other, holder)
    return None


@contextlib.contextmanager
def hold(workdir, *, shard_index: int = 0, shard_count: int = 1, command: str | None = None, log=None):
    """Hold the work folder (or one shard of it) for the ``with`` block.

    Raises:
        FolderLocked: a live command holds it; the line names the holder
            and the lock file.
    """
    workdir = Path(workdir)
    path = workdir / lock_name(shard_index, shard_count)
    record = {"pid": os.getpid(), "host": host_name(), "command": command or " ".join(["nca-np", *sys.argv[1:]]),
              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    created = []
    try:
        created = make_folder(workdir)
        _acquire(path, record, log)
    except OSError:
        # A folder this user cannot write needs no lock: the stage fails
        # on its first write, naming that path (see the module's docstring).
        remove_empty_folders(created)
        path = None
    if path is None:
        yield None
        return
    try:
        conflict = _conflict(workdir, path, log)
        if conflict is not None:
            raise conflict
        yield path
    finally:
        if read_holder(path) == record:
            path.unlink(missing_ok=True)
        remove_empty_folders(created)
