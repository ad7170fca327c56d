"""Checks run before the first unit of work, so nothing fails hours later.

Every stage asks, before it starts its first unit:

- can it write its output folder, and is there room for what it will write
  (:func:`check_output_folder`, with the estimates :func:`training_bytes`,
  :func:`couplings_bytes`, :data:`REPORT_BYTES`; the feature cache makes its
  own from the tracks' lengths);
- will the NCA have any segment to explain (docs/method.md#protocol:
  :func:`check_segment_length` from the settings alone, :func:`check_segments`
  from the prepared cache, counted by the couplings stage's own
  :func:`~nca_np.couplings.segment_table`);
- are the units on disk that look finished intact (:func:`discard_damaged`,
  with :func:`json_damage` and :func:`npz_damage`): a damaged one is named,
  removed and computed again instead of being counted as done.

The test tracks' lengths against the published cut list are checked where
the tracks are listed, in :func:`nca_np.data.cache.prepare_cache`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import zipfile
from pathlib import Path

from .atomic import temporary_path
from .errors import DataError, UserError
from .models import model_kind

#: Room kept for the report: four figures, tables, metadata (a few MB at
#: the paper's sizes) with a margin.
REPORT_BYTES = 50 * 2**20
#: What an archive holds beyond its arrays: zip headers and the JSON record.
ARCHIVE_OVERHEAD = 16 * 2**10


class NotEnoughSpace(UserError):
    """The work folder's file system lacks the room a stage needs: a
    failure of the machine, not of the input, so the command line exits
    with :attr:`exit_status` 74 (``EX_IOERR``), as for a full disk met
    while writing."""

    exit_status = 74


def human_bytes(count: float) -> str:
    """'3.2 GB', '15 MB', '800 kB' (decimal units, as ``df -H`` shows)."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{int(count)} bytes"


def _existing_ancestor(folder: Path) -> Path:
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe


def check_writable(folder) -> None:
    """Write (and delete) a small file where ``folder``'s files will go,
    creating nothing: in ``folder`` if it exists, else in its deepest
    existing parent.

    Raises:
        OSError: naming ``folder`` (read-only file system, permission
            denied, a file where a folder should be, …).
    """
    folder = Path(folder)
    probe = temporary_path(_existing_ancestor(folder) / "nca_np-write-probe")
    try:
        descriptor = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(descriptor, b"\0")
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(folder)) from exc
    finally:
        with contextlib.suppress(OSError):
            os.unlink(probe)


def check_output_folder(folder, needed_bytes: int, what: str) -> None:
    """``folder`` can be written and its file system has ``needed_bytes`` free.

    Args:
        folder: where the stage writes (need not exist yet; nothing is created).
        needed_bytes: the stage's estimate of what it will add.
        what: the stage's output in words, for the message ("the training runs").

    Raises:
        OSError: ``folder`` cannot be written (see :func:`check_writable`).
        NotEnoughSpace: too little room, saying how much is needed.
    """
    folder = Path(folder)
    check_writable(folder)
    free = shutil.disk_usage(_existing_ancestor(folder)).free
    if free < needed_bytes:
        raise NotEnoughSpace(f"not enough space for {what} in {folder}: about {human_bytes(needed_bytes)} needed, "
                             f"{human_bytes(free)} free on its disk; free {human_bytes(needed_bytes - free)} or "
                             "more there, or choose another --workdir")


# ----------------------------------------------------------------- estimates


def bytes_under(folder) -> int:
    """Total size of the files under ``folder`` (0 when it does not exist):
    what a resumed stage has already written."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def model_parameters(kind: str, n_freq: int) -> int:
    """Parameters of one model: ``n_layers`` F×F weights and F biases."""
    return model_kind(kind).n_layers * (n_freq * n_freq + n_freq)


def training_bytes(config: dict, units) -> int:
    """Bytes the (kind, run) ``units`` will write: per run a checkpoint
    (parameters and Adam's two moments) and the final model, and, while a
    stack's checkpoints of an epoch are committed, every run's old and new
    checkpoint at once (:mod:`nca_np.train`): 6 parameter sets per run at the peak."""
    n_freq = config["stft"]["n_fft"] // 2 + 1
    itemsize = 8 if config["train"]["dtype"] == "float64" else 4
    sizes = [model_parameters(kind, n_freq) * itemsize + ARCHIVE_OVERHEAD for kind, _ in units]
    return 6 * sum(sizes) + 3 * max(sizes, default=0)


def couplings_bytes(config: dict, n_units: int, n_figure_units: int) -> int:
    """Bytes ``n_units`` couplings units write: one JSON each (the loss
    curves dominate), and for the segment of Figure 3 the matrices and spectra."""
    n_freq = config["stft"]["n_fft"] // 2 + 1
    nca = config["nca"]
    json_bytes = 4096 + 25 * nca["iterations"] * len(nca["strategies"])
    figure_bytes = (4 * (len(nca["strategies"]) * n_freq * n_freq + 3 * n_freq * nca["segment_frames"])
                    + ARCHIVE_OVERHEAD)
    return n_units * json_bytes + n_figure_units * figure_bytes


# ----------------------------------------------------------------- segments


def _frames(seconds: float, stft: dict) -> int:
    return int(round(seconds * stft["sample_rate"])) // stft["hop"] + 1


def check_segment_length(config: dict) -> None:
    """Before preparing: a segment of ``nca.segment_frames`` must fit in a
    test excerpt of ``data.excerpt_seconds`` (an upper bound on every excerpt).

    Raises:
        DataError: naming both lengths and the largest value that fits.
    """
    stft, frames = config["stft"], config["nca"]["segment_frames"]
    longest = _frames(config["data"]["excerpt_seconds"], stft)
    if frames > longest:
        raise DataError(f"nca.segment_frames = {frames} frames ({frames * stft['hop'] / stft['sample_rate']:.1f} s) "
                        f"is longer than a test excerpt of data.excerpt_seconds = {config['data']['excerpt_seconds']:g} s "
                        f"({longest} frames), so the NCA would have nothing to explain: set nca.segment_frames to "
                        f"at most {longest}")


def check_segments(segments: list, cache, config: dict) -> None:
    """After preparing: the NCA's segments, as the couplings stage numbers
    them (``segments`` from :func:`~nca_np.couplings.segment_table`), are
    not none.

    Raises:
        DataError: naming the longest excerpt and the largest value that fits.
    """
    if segments:
        return
    stft, frames = config["stft"], config["nca"]["segment_frames"]
    excerpts = cache.manifest["test"]
    longest = max(excerpts, key=lambda entry: entry["n_frames"])
    seconds = longest["n_frames"] * stft["hop"] / stft["sample_rate"]
    raise DataError(f"no NCA segment of nca.segment_frames = {frames} frames fits in the {len(excerpts)} test "
                    f"excerpt(s): the longest, of {longest['name']!r}, has {longest['n_frames']} frames "
                    f"({seconds:.1f} s); set nca.segment_frames to at most {longest['n_frames']} "
                    "before training, or use longer test tracks")


# ----------------------------------------------------------------- damaged units


def json_damage(path, required=(), *, holds=dict) -> str | None:
    """Why the JSON file ``path`` cannot be a finished unit, or None if it
    can: it must parse, hold a ``holds`` (dict or list), and a dict must
    have the ``required`` keys."""
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "missing"
    except UnicodeDecodeError:
        return "not text"
    except ValueError as exc:
        return f"not valid JSON: {exc}"
    if not isinstance(record, holds):
        return f"not a JSON {'object' if holds is dict else 'list'}"
    missing = [key for key in required if key not in record]
    return f"lacks {', '.join(missing)}" if missing else None


def npz_damage(path, required=()) -> str | None:
    """Why the ``.npz`` archive ``path`` is damaged, or None when its index
    opens and lists ``required`` arrays (the index sits at the file's end,
    so a truncated file fails; reading it costs no array data)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        return f"not a readable .npz archive ({exc})"
    missing = [name for name in required if f"{name}.npy" not in names]
    return f"lacks {', '.join(missing)}" if missing else None


def discard_damaged(checks, *, log=None, consequence: str = "it will be computed again") -> list[Path]:
    """Remove every damaged file among ``checks`` so it is computed again.

    Args:
        checks: ``(path, damage, also)`` triples: ``damage(path)`` says why
            the existing file ``path`` is damaged (None: intact); ``also``
            lists files of the same unit to remove with it.
        log: gets one line per damaged file, naming it and why.

    Returns:
        The damaged files removed.
    """
    removed = []
    for path, damage, also in checks:
        path = Path(path)
        if not path.exists():
            continue
        reason = damage(path)
        if reason is None:
            continue
        for victim in (path, *also):
            Path(victim).unlink(missing_ok=True)
        removed.append(path)
        if log:
            log(f"{path} is damaged ({reason}): removed; {consequence}")
    return removed
