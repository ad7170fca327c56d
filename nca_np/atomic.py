"""Atomic file writes: a crash mid-write never leaves a broken file.

Each writer writes a temporary file in the destination's folder, flushes
it to disk and renames it over the destination (``os.replace`` is atomic on
POSIX and Windows within one file system).
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import numpy


@contextlib.contextmanager
def atomic_open(path, mode="wb", **open_kwargs):
    """Open a temporary file beside ``path``; on success rename it to ``path``.

    The temporary is hidden (``.<name>.<pid>.tmp``), so readers that list a
    folder (musdb, the cache) never see it; ``open_kwargs`` go to ``open``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A per-process name (not mkstemp, whose files are private to the owner)
    # so concurrent writers of the same file never share a temporary.
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    try:
        with open(tmp, mode, **open_kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def save_npz(path, arrays: dict) -> None:
    """``numpy.savez`` of host arrays, atomically."""
    with atomic_open(path, "wb") as handle:
        numpy.savez(handle, **arrays)


def write_text(path, text: str) -> None:
    """Write a text file atomically (UTF-8)."""
    with atomic_open(path, "w") as handle:
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
    import soundfile

    with contextlib.ExitStack() as stack:
        for path, samples in signals.items():
            handle = stack.enter_context(atomic_open(path, "wb"))
            soundfile.write(handle, samples, int(sample_rate), format="WAV", subtype=subtype)


def write_wav(path, samples, sample_rate: int, *, subtype: str = "FLOAT") -> None:
    """One WAV file, atomically (see :func:`write_wavs`)."""
    write_wavs({path: samples}, sample_rate, subtype=subtype)
