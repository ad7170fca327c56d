"""The 30-second test excerpts (docs/method.md#protocol).

For MUSDB18 the excerpts are the SiSEC 2018 campaign's published previews
(:func:`sisec_previews`, shipped as package data, see ``PROVENANCE.md``).
For any other corpus they are computed the way that list was made, by the
SiSEC cut-list generator (``sigsep/sigsep-mus-cutlist-generator``,
``generate_cutlist.py``), which is MedleyDB's activation confidence
(:func:`activation_confidence_excerpt`). A cut list of :class:`Excerpt`
records is written and read as CSV by :func:`write_cutlist` and
:func:`read_cutlist`.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
from importlib import resources
from pathlib import Path

import numpy
import scipy.signal
import scipy.special

from ..atomic import atomic_open
from ..errors import DataError
from ..features import to_mono

PREVIEWS_RESOURCE = "musdb18_30s_previews.csv"
SOURCES = ("sisec2018", "activation-confidence", "whole-track")
CUTLIST_HEADER = ("track", "start_s", "end_s", "source")

# The cut-list generator's constants (docs/method.md#excerpts, steps 1-6).
FRAME_LENGTH = 4096
FRAME_HOP = FRAME_LENGTH // 2
LOWPASS_ORDER = 2
LOWPASS_CUTOFF = 0.075  # of the frame-rate Nyquist frequency
THETA = 0.15  # activity at which the confidence is 1/2
SLOPE = 20.0  # the logistic's slope (MedleyDB's var_lambda)
SILENCE_THRESHOLD = 0.01  # on the raw summed activity E0
_TIE_TOLERANCE = 1e-12  # relative: scores this close to the best are re-scored exactly


@dataclasses.dataclass(frozen=True)
class Excerpt:
    """One test excerpt of one track.

    Attributes:
        track: the track name (MUSDB18's ``track.name``).
        start_s: start in seconds from the beginning of the track.
        end_s: end in seconds (may exceed the track's duration by < 0.15 s
            for activation-confidence excerpts; readers clip to the track).
        source: "sisec2018" (the published list), "activation-confidence"
            (computed here) or "whole-track" (track shorter than the excerpt).
    """

    track: str
    start_s: float
    end_s: float
    source: str

    def __post_init__(self):
        if self.source not in SOURCES:
            raise DataError(
                f"excerpt of {self.track!r}: unknown source {self.source!r}, use one of {', '.join(SOURCES)}"
            )
        if not (0.0 <= self.start_s < self.end_s):
            raise DataError(f"excerpt of {self.track!r}: need 0 <= start_s < end_s, got {self.start_s}, {self.end_s}")


def sisec_previews() -> dict[str, tuple[float, float]]:
    """The SiSEC 2018 30-second previews of MUSDB18 (144 tracks).

    Returns:
        {track name: (start_s, end_s)}, in the file's order (94 training
        tracks, then the 50 test tracks).
    """
    text = resources.files("nca_np.data").joinpath(PREVIEWS_RESOURCE).read_text(encoding="utf-8")
    previews = {}
    for line_number, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not row:
            continue
        if len(row) != 5:
            raise DataError(f"{PREVIEWS_RESOURCE} line {line_number}: expected 5 columns, got {len(row)}")
        name, _start_sample, _end_sample, start_s, end_s = row
        previews[name] = (float(start_s), float(end_s))
    return previews


def _mono64(source, index: int) -> numpy.ndarray:
    """``(n,)`` float64 mono of one source: the mean of its channels."""
    try:
        return to_mono(source, dtype=numpy.float64)
    except ValueError as exc:
        raise ValueError(f"source {index}: {exc}") from None


def _matlab_hann(length: int) -> numpy.ndarray:
    """MATLAB's ``hann(length)``: a symmetric Hann of ``length + 2`` without its zero end points."""
    return scipy.signal.windows.hann(length + 2)[1:-1]


def activity_envelope(mono: numpy.ndarray) -> numpy.ndarray:
    """Per-frame activity of one source, docs/method.md#excerpts, steps 1-2.

    The signal gets 2048 zeros in front and zeros at the end up to a multiple
    of 4096; frame ``k`` covers padded samples ``[2048 k, 2048 k + 4096)``,
    i.e. it is centred on sample ``2048 k`` of the original signal. Then
    ``H[k] = mean_j(w[j] · sqrt(max(x[2048 k − 2048 + j], 0)))`` with the
    MATLAB-style Hann window ``w``; the square root is of the raw sample
    values, as the generator does (half-wave rectification, then compression).

    Args:
        mono: ``(n,)`` float64 samples.

    Returns:
        ``(n_frames,)`` float64 with ``n_frames = 1 + (L − 4096) / 2048`` and
        ``L = 4096 · ceil((n + 2048) / 4096)``.
    """
    padded_length = FRAME_LENGTH * math.ceil((mono.shape[0] + FRAME_HOP) / FRAME_LENGTH)
    rooted = numpy.zeros(padded_length, dtype=numpy.float64)
    rooted[FRAME_HOP : FRAME_HOP + mono.shape[0]] = numpy.sqrt(numpy.maximum(mono, 0.0))
    # Frames overlap by half: frame k = hop-block k (first half) + block k+1 (second half).
    blocks = rooted.reshape(-1, FRAME_HOP)
    window = _matlab_hann(FRAME_LENGTH)
    return (blocks[:-1] @ window[:FRAME_HOP] + blocks[1:] @ window[FRAME_HOP:]) / FRAME_LENGTH


def activation_confidence(sources) -> numpy.ndarray:
    """Summed activation confidence per frame, docs/method.md#excerpts, steps 1-5.

    Args:
        sources: K arrays of the same length, each ``(n,)`` or ``(n, channels)``.

    Returns:
        ``(n_frames,)`` float64, ``sum_i 1 − 1/(1 + exp(20 (H_i − 0.15)))``
        with ``H`` normalised, silence-gated and low-passed along time.
    """
    monos = [_mono64(source, index) for index, source in enumerate(sources)]
    if not monos:
        raise ValueError("activation_confidence needs at least one source")
    lengths = {mono.shape[0] for mono in monos}
    if len(lengths) != 1:
        raise ValueError(f"all sources must have the same number of samples, got {sorted(lengths)}")
    activity = numpy.stack([activity_envelope(mono) for mono in monos])
    raw_total = activity.sum(axis=0)
    peak = raw_total.max()
    if peak > 0.0:  # an all-silent track stays all-zero (the generator would divide by zero)
        activity = len(monos) * activity / peak
    activity[:, raw_total < SILENCE_THRESHOLD] = 0.0
    b, a = scipy.signal.butter(LOWPASS_ORDER, LOWPASS_CUTOFF)
    min_frames = 3 * max(len(a), len(b)) + 1
    if activity.shape[1] < min_frames:
        raise DataError(
            f"a track of {activity.shape[1]} activity frames is too short for the zero-phase low-pass "
            f"(needs {min_frames}, about {min_frames * FRAME_HOP} samples)"
        )
    smoothed = scipy.signal.filtfilt(b, a, activity, axis=1)
    # expit(z) = 1 - 1/(1 + exp(z)), without overflow for large z.
    return scipy.special.expit(SLOPE * (smoothed - THETA)).sum(axis=0)


def _best_window(confidence: numpy.ndarray, width: int) -> int:
    """First index of the ``width``-frame window with the highest geometric mean."""
    logs = numpy.log(numpy.maximum(confidence, numpy.finfo(numpy.float64).eps))
    sums = numpy.concatenate(([0.0], numpy.cumsum(logs)))
    scores = (sums[width:] - sums[:-width]) / width
    # Cumulative sums round differently from a per-window mean: re-score the
    # near-ties exactly so that "the first best" is the generator's.
    best = scores.max()
    candidates = numpy.flatnonzero(scores >= best - _TIE_TOLERANCE * max(abs(best), 1.0))
    exact = [numpy.exp(numpy.mean(logs[index : index + width])) for index in candidates]
    return int(candidates[int(numpy.argmax(exact))])


def activation_confidence_excerpt(sources, sample_rate: int = 44100, seconds: float = 30.0) -> tuple[float, float]:
    """The ``seconds`` in which all sources are most active (docs/method.md#excerpts, steps 1-7).

    Exactly the SiSEC cut-list generator: the summed confidence
    (:func:`activation_confidence`) is scored over windows of
    ``int(sample_rate · seconds / 2048)`` frames sliding by one frame, by its
    geometric mean (values floored at the float64 epsilon); the first best
    window wins. Its first frame ``k`` is centred on sample ``2048 k``, at
    time ``2048 k / sample_rate``; the excerpt starts at the floor of that
    time in whole seconds and lasts ``seconds``. As in the generator (whose
    intended shift to the left compares seconds with samples and never
    acts), the end may pass the track's end by less than 0.15 s.

    Args:
        sources: K arrays ``(n,)`` or ``(n, channels)``, the stems at ``sample_rate``.
        sample_rate: Hz.
        seconds: excerpt length.

    Returns:
        ``(start_s, end_s)``; ``(0.0, duration)`` for a track shorter than ``seconds``.
    """
    monos = [_mono64(source, index) for index, source in enumerate(sources)]
    if not monos:
        raise ValueError("activation_confidence_excerpt needs at least one source")
    duration = monos[0].shape[0] / sample_rate
    if duration < seconds:
        return 0.0, float(duration)
    confidence = activation_confidence(monos)
    width = int(sample_rate * seconds / FRAME_HOP)
    if width < 1 or width > confidence.shape[0]:
        return 0.0, float(duration)
    first_frame = _best_window(confidence, width)
    start = float(math.floor(first_frame * FRAME_HOP / sample_rate))
    return start, start + float(seconds)


def write_cutlist(path, excerpts) -> Path:
    """Write excerpts as CSV (header ``track,start_s,end_s,source``), atomically."""
    path = Path(path)
    with atomic_open(path, "w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(CUTLIST_HEADER)
        for excerpt in excerpts:
            # repr() keeps every digit, so a round trip is exact.
            start_s, end_s = repr(float(excerpt.start_s)), repr(float(excerpt.end_s))
            writer.writerow([excerpt.track, start_s, end_s, excerpt.source])
    return path


def read_cutlist(path) -> list[Excerpt]:
    """Read a cut list written by :func:`write_cutlist`.

    Raises:
        DataError: missing file, wrong header, wrong column count, a value
            that is not a number, an invalid excerpt or a repeated track.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"cut list {path} does not exist: run the prepare stage first")
    with path.open(newline="", encoding="utf-8") as stream:
        rows = list(csv.reader(stream))
    if not rows or tuple(rows[0]) != CUTLIST_HEADER:
        found = ",".join(rows[0]) if rows else "an empty file"
        raise DataError(f"cut list {path}: expected header {','.join(CUTLIST_HEADER)}, found {found}")
    excerpts, seen = [], set()
    for line_number, row in enumerate(rows[1:], start=2):
        if len(row) != len(CUTLIST_HEADER):
            raise DataError(f"cut list {path} line {line_number}: expected 4 columns, got {len(row)}")
        track, start_s, end_s, source = row
        try:
            excerpt = Excerpt(track, float(start_s), float(end_s), source)
        except ValueError as exc:
            raise DataError(f"cut list {path} line {line_number}: {exc}") from exc
        except DataError as exc:
            raise DataError(f"cut list {path} line {line_number}: {exc}") from exc
        if track in seen:
            raise DataError(f"cut list {path} line {line_number}: track {track!r} appears twice")
        seen.add(track)
        excerpts.append(excerpt)
    return excerpts
