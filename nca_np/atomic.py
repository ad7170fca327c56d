"""Atomic file writes: a crash mid-write never leaves a broken file.

Each writer writes a temporary file in the destination's folder, flushes
it to disk and renames it over the destination (``os.replace`` is atomic on
POSIX and Windows within one file system). A write that fails removes its
temporary and the folders it created, and names the destination in its
``OSError``; a process killed mid-write leaves its temporary behind, which
the next run of the same stage removes (:func:`remove_stale_temporaries`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import time
from pathlib import Path

import numpy

from .audio import audio_module

#: A temporary older than this is stale whoever wrote it (no single write
#: takes that long); a younger one is stale only when its writer, on this
#: machine, is no longer running.
STALE_AFTER_SECONDS = 24 * 3600
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)(?:@(?P<host>[^@/]*))?\.tmp$")


def host_name() -> str:
    """This machine's name as temporary and lock files record it (safe in a file name)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname()) or "localhost"


def temporary_path(path) -> Path:
    """``.<name>.<pid>@<host>.tmp`` beside ``path``: hidden, so readers that
    list a folder (musdb, the cache) never see it, and named by its writer,
    so concurrent writers (shards, on one machine or several) never share
    one and a later run can tell whether its writer still runs."""
    path = Path(path)
    return path.parent / f".{path.name}.{os.getpid()}@{host_name()}.tmp"


def make_folder(folder) -> list[Path]:
    """Create ``folder`` and its missing parents; returns the folders created,
    deepest first (for :func:`remove_empty_folders`)."""
    folder = Path(folder)
    missing, probe = [], folder
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        remove_empty_folders(missing)
        raise
    return missing


def remove_empty_folders(folders) -> None:
    """Remove each of ``folders`` (deepest first) that exists and is empty."""
    for folder in folders:
        with contextlib.suppress(OSError):
            Path(folder).rmdir()


def _short_write_errno(exc: BaseException, handle) -> int | None:
    """The errno behind a write that came up short without one (NumPy's
    ``tofile`` on a full disk raises "N requested and M written"): one more
    byte written at the same place fails with the file system's reason."""
    if not isinstance(exc, OSError) or exc.errno is not None:
        return None
    try:
        os.write(handle.fileno(), b"\0")
    except OSError as probe:
        return probe.errno
    return None


def _named(exc: OSError, path: Path, tmp: Path) -> OSError:
    """``exc`` naming ``path`` when it named nothing or only the temporary
    (a full disk fails in ``write``, which names no file)."""
    if exc.errno is None or exc.filename not in (None, str(tmp), tmp):
        return exc
    return OSError(exc.errno, exc.strerror or os.strerror(exc.errno), str(path))


@contextlib.contextmanager
def atomic_open(path, mode="wb", **open_kwargs):
    """Open a temporary file beside ``path``; on success rename it to ``path``.

    On failure the temporary and the folders created for it are removed,
    and an ``OSError`` of the write names ``path``; ``open_kwargs`` go to
    ``open``.
    """
    path = Path(path)
    created = make_folder(path.parent)
    tmp = temporary_path(path)
    try:
        handle = open(tmp, mode, **open_kwargs)
        try:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        except BaseException as exc:
            cause = _short_write_errno(exc, handle)
            with contextlib.suppress(OSError):
                handle.close()
            if cause is not None:
                raise OSError(cause, os.strerror(cause), str(path)) from exc
            raise
        handle.close()
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        remove_empty_folders(created)
        if isinstance(exc, OSError):
            named = _named(exc, path, tmp)
            if named is not exc:
                raise named from exc
        raise


def pid_running(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process writes nothing while a stage starts
    if os.name == "nt":  # os.kill would terminate it: assume it runs, let age decide
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process
        return True
    return True


def is_stale_temporary(path, *, now: float | None = None) -> bool:
    """Whether ``path`` is a temporary of :func:`atomic_open` whose writer is
    gone: its process no longer runs on this machine, or it is older than
    :data:`STALE_AFTER_SECONDS` (a writer on another machine)."""
    path = Path(path)
    match = _TEMPORARY.match(path.name)
    if match is None:
        return False
    try:
        age = (time.time() if now is None else now) - path.stat().st_mtime
    except FileNotFoundError:
        return False
    if age > STALE_AFTER_SECONDS:
        return True
    local = match["host"] in (None, host_name())
    return local and not pid_running(int(match["pid"]))


def remove_stale_temporaries(folder, *, log=None) -> list[Path]:
    """Delete the temporaries that killed runs left anywhere under ``folder``.

    Each stage calls this on its output folder before its first unit, so a
    run killed mid-write (SIGKILL, power loss) leaves nothing behind once
    the stage runs again; temporaries of writers still running are kept.

    Returns:
        The files removed (``log`` gets one line when there are any).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for path in sorted(folder.rglob(".*.tmp")):
        if path.is_file() and is_stale_temporary(path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    if removed and log:
        log(f"removed {len(removed)} temporary file(s) left by an interrupted run in {folder}")
    return removed


def save_npz(path, arrays: dict) -> None:
    """``numpy.savez`` of host arrays, atomically."""
    with atomic_open(path, "wb") as handle:
        numpy.savez(handle, **arrays)


def write_text(path, text: str) -> None:
    """Write a text file atomically (UTF-8)."""
    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def write_json(path, obj) -> None:
    """Write ``obj`` as indented, key-sorted JSON, atomically."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")



def write_wavs(signals: dict, sample_rate: int, *, subtype: str = "FLOAT") -> None:
    """Write ``{path: (n,) or (n, channels) samples}`` as WAV files, all or none.

    Every file goes to its temporary first; the renames happen only once all
    are complete, so a failure leaves no file half-written or missing its
    partner. ``subtype`` "FLOAT" (32-bit float, the default) keeps values
    beyond ±1 unclipped, as a separated estimate may hold. soundfile is
    imported only here.
    """
    soundfile = audio_module("soundfile")

    with contextlib.ExitStack() as stack:
        for path, samples in signals.items():
            handle = stack.enter_context(atomic_open(path, "wb"))
            soundfile.write(handle, samples, int(sample_rate), format="WAV", subtype=subtype)


def write_wav(path, samples, sample_rate: int, *, subtype: str = "FLOAT") -> None:
    """One WAV file, atomically (see :func:`write_wavs`)."""
    write_wavs({path: samples}, sample_rate, subtype=subtype)
