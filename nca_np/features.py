"""Magnitude-spectrum features (docs/method.md#features, paper Sec. 4.1).

Short-time Fourier transform, its weighted overlap-add inverse, and the
per-band :class:`Scaler`. Feature extraction runs once, at preparation time,
on the host with NumPy; only :meth:`Scaler.transform` and
:meth:`Scaler.inverse_transform` also accept device arrays.

Frame convention
----------------
Frames are rows: a spectrogram is ``(n_frames, n_freq)``. Frame ``k`` is
*centred* on sample ``k * hop`` of the signal: it covers the samples
``[k * hop - window_length // 2, k * hop + window_length // 2]`` (inclusive,
``window_length`` odd), where samples outside ``[0, n)`` are zeros. The
frames run from ``k = 0`` (centred on the first sample) to
``k = n // hop`` (centred within ``hop`` samples of the last one), so
``n_frames(n) = n // hop + 1`` and every sample is covered by frames whose
centres lie within ``hop / 2`` of it: the inverse is exact up to the edges.

Each windowed frame is zero-padded to ``n_fft`` samples with *zero-phase
windowing* (as the first author's ``Js-Mim/mss_pytorch`` pipeline does): the
window's centre sample goes to FFT index 0, its right half after it, its left
half wrapped to the end of the buffer. The magnitude is identical to plain
end-padding; the phase is measured from the frame centre.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy
import scipy.signal

from . import backend
from .atomic import atomic_open
from .errors import ConfigError, DataError

_WINDOWS = ("hamming", "hann")
_CHUNK_FRAMES = 1024  # frames per FFT batch: 1024 x 4096 float64 is 32 MiB


@dataclasses.dataclass(frozen=True)
class StftSettings:
    """STFT parameters (docs/method.md#features; the ``[stft]`` table of a profile).

    Attributes:
        sample_rate: Hz; audio at another rate is rejected by the reader.
        window_length: samples in the analysis window (odd, so the window
            has a centre sample); 2049 ≈ 46 ms at 44.1 kHz.
        n_fft: FFT size; 4096 is a zero-padding factor of 2.
        hop: samples between frame centres; 384 ≈ 8.7 ms.
        window: "hamming" or "hann", both symmetric.
    """

    sample_rate: int = 44100
    window_length: int = 2049
    n_fft: int = 4096
    hop: int = 384
    window: str = "hamming"

    def __post_init__(self):
        for field in ("sample_rate", "window_length", "n_fft", "hop"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, (int, numpy.integer)):
                raise ConfigError(f"[stft] {field} must be an integer, got {value!r}")
            if value < 1:
                raise ConfigError(f"[stft] {field} must be at least 1, got {value}")
        if self.window not in _WINDOWS:
            raise ConfigError(f"[stft] window {self.window!r} is unknown: use one of {', '.join(_WINDOWS)}")
        if self.window_length % 2 == 0:
            raise ConfigError(
                f"[stft] window_length = {self.window_length} must be odd so that frames have a centre sample"
            )
        if self.window_length > self.n_fft:
            raise ConfigError(
                f"[stft] window_length = {self.window_length} exceeds n_fft = {self.n_fft}: "
                "raise n_fft or shorten the window"
            )
        if self.hop > self.window_length:
            raise ConfigError(
                f"[stft] hop = {self.hop} exceeds window_length = {self.window_length}: "
                "frames would leave gaps and the inverse would not exist"
            )

    @property
    def n_freq(self) -> int:
        """Number of kept frequency bins, ``n_fft // 2 + 1`` (F in docs/method.md)."""
        return self.n_fft // 2 + 1

    @classmethod
    def from_config(cls, section: dict) -> "StftSettings":
        """Build settings from the ``[stft]`` table of a configuration profile.

        Missing keys take the defaults above; unknown keys are an error.

        Raises:
            ConfigError: unknown key, wrong type, or inconsistent values.
        """
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(section) - known)
        if unknown:
            raise ConfigError(f"[stft] unknown key(s) {', '.join(unknown)}: expected {', '.join(sorted(known))}")
        return cls(**section)

    def as_dict(self) -> dict:
        """The settings as a plain dict (the ``[stft]`` table's keys)."""
        return dataclasses.asdict(self)


def analysis_window(settings: StftSettings) -> numpy.ndarray:
    """The symmetric analysis (and synthesis) window, ``(window_length,)`` float64."""
    return scipy.signal.get_window(settings.window, settings.window_length, fftbins=False)


def n_frames(n_samples: int, settings: StftSettings) -> int:
    """Number of STFT frames of an ``n_samples`` signal: ``n_samples // hop + 1``."""
    if n_samples < 1:
        raise ValueError(f"a signal needs at least one sample, got n_samples = {n_samples}")
    return n_samples // settings.hop + 1


def _host_array(array) -> numpy.ndarray:
    """A NumPy view of ``array``; device arrays are copied explicitly."""
    if backend.array_module(array) is not numpy:
        return backend.to_host(array)
    return numpy.asarray(array)


def to_mono(audio, dtype=numpy.float32) -> numpy.ndarray:
    """Average the channels (docs/method.md#features): the project's one downmix.

    Args:
        audio: ``(n,)`` mono or ``(n, channels)`` samples as rows (the layout
            soundfile and musdb return).
        dtype: of the result; float64 also sums in float64 (the
            activation-confidence excerpts need it).

    Returns:
        ``(n,)`` array of ``dtype``.
    """
    audio = _host_array(audio)
    dtype = numpy.dtype(dtype)
    if audio.ndim == 1:
        return audio.astype(dtype)
    if audio.ndim != 2:
        raise ValueError(f"audio must be (n,) or (n, channels), got shape {audio.shape}")
    if audio.shape[1] > 16:
        raise ValueError(
            f"audio of shape {audio.shape} looks channels-first: pass (n_samples, n_channels), e.g. audio.T"
        )
    # A running sum over columns: much faster than mean(axis=1) on (n, 2).
    wide = numpy.float64 in (audio.dtype, dtype)
    total = audio[:, 0].astype(numpy.float64 if wide else numpy.float32)
    for channel in range(1, audio.shape[1]):
        total += audio[:, channel]
    return (total / audio.shape[1]).astype(dtype, copy=False)


def _real_dtype(complex_dtype) -> numpy.dtype:
    dtype = numpy.dtype(complex_dtype)
    if dtype not in (numpy.dtype(numpy.complex64), numpy.dtype(numpy.complex128)):
        raise ValueError(f"dtype must be complex64 or complex128, got {dtype}")
    return numpy.dtype(numpy.float32) if dtype == numpy.complex64 else numpy.dtype(numpy.float64)


def _framed(signal: numpy.ndarray, settings: StftSettings) -> numpy.ndarray:
    """``(n_frames, window_length)`` read-only view of the zero-padded signal."""
    half = settings.window_length // 2
    count = n_frames(signal.shape[0], settings)
    padded_length = (count - 1) * settings.hop + settings.window_length
    padded = numpy.zeros(padded_length, dtype=signal.dtype)
    padded[half : half + signal.shape[0]] = signal
    windows = numpy.lib.stride_tricks.sliding_window_view(padded, settings.window_length)
    return windows[:: settings.hop]


def _spectrum_chunks(signal, settings: StftSettings, dtype):
    """Yield ``(first_frame, spectrum)`` batches, spectrum ``(chunk, n_freq)``."""
    signal = _host_array(signal)
    if signal.ndim != 1:
        raise ValueError(f"stft expects a mono signal of shape (n,), got {signal.shape}: use to_mono first")
    real = _real_dtype(dtype)
    frames = _framed(signal.astype(real, copy=False), settings)
    window = analysis_window(settings).astype(real)
    half = settings.window_length // 2
    n_fft = settings.n_fft
    for start in range(0, frames.shape[0], _CHUNK_FRAMES):
        windowed = frames[start : start + _CHUNK_FRAMES] * window
        # Zero-phase: window centre at index 0, left half wrapped to the end.
        buffer = numpy.zeros((windowed.shape[0], n_fft), dtype=real)
        buffer[:, : half + 1] = windowed[:, half:]
        buffer[:, n_fft - half :] = windowed[:, :half]
        yield start, numpy.fft.rfft(buffer, axis=1).astype(dtype, copy=False)


def stft(signal, settings: StftSettings, *, dtype=numpy.complex64) -> numpy.ndarray:
    """Short-time Fourier transform, frames as rows (docs/method.md#features).

    Args:
        signal: ``(n,)`` mono samples (host array).
        settings: window, FFT size and hop; framing as in the module docstring.
        dtype: complex64 (computed in float32, the default for features) or
            complex128 (computed in float64, for exact round trips).

    Returns:
        ``(n_frames(n), n_freq)`` complex spectrum,
        ``S[k, f] = sum_j w[j] x[k·hop + j − L//2] exp(−2πi f (j − L//2) / n_fft)``
        with ``L = window_length``.
    """
    signal = _host_array(signal)
    if signal.ndim != 1:
        raise ValueError(f"stft expects a mono signal of shape (n,), got {signal.shape}: use to_mono first")
    spectrum = numpy.empty((n_frames(signal.shape[0], settings), settings.n_freq), dtype=dtype)
    for start, chunk in _spectrum_chunks(signal, settings, dtype):
        spectrum[start : start + chunk.shape[0]] = chunk
    return spectrum


def magnitude(spec, *, dtype=numpy.float32) -> numpy.ndarray:
    """Element-wise ``|spec|`` as ``dtype`` (float32 unless asked otherwise)."""
    return numpy.abs(_host_array(spec)).astype(dtype, copy=False)


def stft_magnitude(signal, settings: StftSettings) -> numpy.ndarray:
    """``|stft(signal)|``, ``(n_frames(n), n_freq)`` float32, without holding the complex spectrum."""
    signal = _host_array(signal)
    if signal.ndim != 1:
        raise ValueError(f"stft expects a mono signal of shape (n,), got {signal.shape}: use to_mono first")
    result = numpy.empty((n_frames(signal.shape[0], settings), settings.n_freq), dtype=numpy.float32)
    for start, chunk in _spectrum_chunks(signal, settings, numpy.complex64):
        result[start : start + chunk.shape[0]] = numpy.abs(chunk)
    return result


def _unit_phase(phase_source: numpy.ndarray, real) -> numpy.ndarray:
    """``S / |S|`` with phase 0 (factor 1) where ``S`` is exactly zero."""
    complex_dtype = numpy.result_type(real, numpy.complex64)
    source = phase_source.astype(complex_dtype, copy=False)
    size = numpy.abs(source)
    safe = numpy.where(size > 0, size, 1.0).astype(real, copy=False)
    return numpy.where(size > 0, source / safe, 1.0).astype(complex_dtype, copy=False)


def istft(magnitude_frames, phase_source, settings: StftSettings, length: int, *, dtype=numpy.float32) -> numpy.ndarray:
    """Inverse STFT by weighted overlap-add with the phase of ``phase_source`` (docs/method.md#features).

    Each frame ``|Y| · S/|S|`` is inverted, un-rotated from zero-phase
    order, multiplied by the synthesis window ``w`` and added at its centre;
    the sum is divided by ``sum_k w[t − k·hop]²``, the least-squares inverse,
    so ``istft(|S|, S) = x`` for ``S = stft(x)`` (exactly, up to rounding,
    over all ``length`` samples: every sample lies within ``hop/2`` of some
    frame centre, where ``w ≈ 1``).

    Args:
        magnitude_frames: ``(n_frames, n_freq)`` estimated magnitudes, frames as rows.
        phase_source: ``(n_frames, n_freq)`` complex, usually the mixture's STFT.
        settings: the settings that made ``phase_source``.
        length: number of output samples (the original signal length).
        dtype: float32 (default) or float64; the computation runs in it.

    Returns:
        ``(length,)`` signal of ``dtype``.
    """
    mags = _host_array(magnitude_frames)
    source = _host_array(phase_source)
    if mags.shape != source.shape or mags.ndim != 2 or mags.shape[1] != settings.n_freq:
        raise ValueError(
            f"istft needs magnitude and phase_source of the same shape (n_frames, {settings.n_freq}); "
            f"got {mags.shape} and {source.shape}"
        )
    expected = n_frames(length, settings)
    if mags.shape[0] != expected:
        raise ValueError(f"a signal of {length} samples has {expected} frames, got {mags.shape[0]}")
    real = numpy.dtype(dtype)
    if real not in (numpy.dtype(numpy.float32), numpy.dtype(numpy.float64)):
        raise ValueError(f"dtype must be float32 or float64, got {real}")
    window = analysis_window(settings).astype(real)
    hop, half, n_fft = settings.hop, settings.window_length // 2, settings.n_fft
    # Frame k spans blocks k .. k+n_blocks-1 of `hop` samples of the padded output.
    n_blocks = -(-settings.window_length // hop)
    total = expected + n_blocks
    output = numpy.zeros((total, hop), dtype=real)
    for start in range(0, expected, _CHUNK_FRAMES):
        stop = min(start + _CHUNK_FRAMES, expected)
        spectrum = mags[start:stop].astype(real, copy=False) * _unit_phase(source[start:stop], real)
        buffer = numpy.fft.irfft(spectrum, n=n_fft, axis=1).astype(real, copy=False)
        frames = numpy.zeros((stop - start, n_blocks * hop), dtype=real)
        frames[:, half : settings.window_length] = buffer[:, : half + 1]
        frames[:, :half] = buffer[:, n_fft - half :]
        frames[:, : settings.window_length] *= window
        for block in range(n_blocks):
            output[start + block : stop + block] += frames[:, block * hop : (block + 1) * hop]
    norm = _squared_window_sum(window, hop, expected, n_blocks)
    signal = output.reshape(-1)[half : half + length]
    return (signal / norm[half : half + length]).astype(real, copy=False)


def _squared_window_sum(window: numpy.ndarray, hop: int, count: int, n_blocks: int) -> numpy.ndarray:
    """``sum_k w[t − k·hop]²`` over the padded output, flattened like it."""
    squared = numpy.zeros(n_blocks * hop, dtype=window.dtype)
    squared[: window.shape[0]] = window * window
    blocks = squared.reshape(n_blocks, hop)
    total = numpy.zeros((count + n_blocks, hop), dtype=window.dtype)
    for block in range(n_blocks):
        total[block : block + count] += blocks[block]
    return total.reshape(-1)


class Scaler:
    """Per-band scale of docs/method.md#features: each band divided by its standard deviation.

    The standard deviation (population, ``ddof = 0``) of each frequency band
    is taken over all training frames of the mixture, accumulated in one
    streaming pass with Chan et al.'s pairwise merge of (count, mean, M2) in
    float64. No mean is subtracted when scaling, so non-negative magnitudes
    stay non-negative (the NCA relies on it). A band whose standard deviation
    is zero (a constant band, up to rounding: below 1e-9 of its mean) gets
    scale 1, i.e. it is left as it is.
    """

    _CONSTANT_BAND = 1e-9

    def __init__(self):
        self._count = 0
        self._mean: numpy.ndarray | None = None
        self._m2: numpy.ndarray | None = None
        self._factor_cache: dict = {}

    @classmethod
    def fit(cls, frames) -> "Scaler":
        """A scaler fitted on ``frames`` ``(B, F)`` in one call."""
        scaler = cls()
        scaler.partial_fit(frames)
        return scaler

    @property
    def count(self) -> int:
        """Number of frames seen so far."""
        return self._count

    @property
    def n_freq(self) -> int | None:
        """F, or None before the first batch."""
        return None if self._mean is None else self._mean.shape[0]

    def partial_fit(self, frames) -> "Scaler":
        """Accumulate a batch of frames.

        Args:
            frames: ``(B, F)`` magnitudes, frames as rows (host or device array).

        Returns:
            self.
        """
        batch = backend.to_host(frames) if backend.array_module(frames) is not numpy else numpy.asarray(frames)
        if batch.ndim != 2:
            raise ValueError(f"Scaler.partial_fit expects frames as rows (B, F), got shape {batch.shape}")
        if self._mean is not None and batch.shape[1] != self._mean.shape[0]:
            raise ValueError(f"Scaler was fitted on {self._mean.shape[0]} bands, got frames of shape {batch.shape}")
        if batch.shape[0] == 0:
            return self
        batch = batch.astype(numpy.float64, copy=False)
        count = batch.shape[0]
        mean = batch.mean(axis=0)
        m2 = ((batch - mean) ** 2).sum(axis=0)
        if self._mean is None:
            self._count, self._mean, self._m2 = count, mean, m2
        else:
            total = self._count + count
            delta = mean - self._mean
            self._mean = self._mean + delta * (count / total)
            self._m2 = self._m2 + m2 + delta * delta * (self._count * count / total)
            self._count = total
        self._factor_cache.clear()
        return self

    def _require_fitted(self):
        if self._mean is None:
            raise ValueError("Scaler has not been fitted: call partial_fit on the training frames first")

    @property
    def std(self) -> numpy.ndarray:
        """``(F,)`` float64 divisor per band: the standard deviation, 1 for constant bands."""
        self._require_fitted()
        raw = numpy.sqrt(self._m2 / self._count)
        constant = raw <= self._CONSTANT_BAND * numpy.abs(self._mean)
        return numpy.where(constant | (raw == 0.0), 1.0, raw)

    def _band_factor(self, module, dtype, invert: bool):
        """``1 / std`` (or ``std`` when ``invert``) as ``dtype`` in ``module``, cached."""
        key = (module.__name__, numpy.dtype(dtype).str, invert)
        if key not in self._factor_cache:
            factor = self.std if invert else 1.0 / self.std
            self._factor_cache[key] = backend.to_device(factor.astype(dtype), module)
        return self._factor_cache[key]

    def _apply(self, frames, frames_as: str, invert: bool):
        self._require_fitted()
        module = backend.array_module(frames)
        if frames_as not in ("rows", "columns"):
            raise ValueError(f"frames_as must be 'rows' (B, F) or 'columns' (F, T), got {frames_as!r}")
        axis = 1 if frames_as == "rows" else 0
        if frames.ndim != 2 or frames.shape[axis] != self.n_freq:
            layout = "(B, F)" if frames_as == "rows" else "(F, T)"
            raise ValueError(
                f"expected frames as {frames_as} {layout} with F = {self.n_freq}, got shape {frames.shape}"
            )
        if frames.dtype.kind != "f":
            raise ValueError(f"Scaler works on floating-point frames, got dtype {frames.dtype}")
        factor = self._band_factor(module, frames.dtype, invert)
        return frames * (factor if axis == 1 else factor[:, None])

    def transform(self, frames, *, frames_as: str = "rows"):
        """Divide each band by its std; keeps ``frames``' dtype and array module.

        Args:
            frames: ``(B, F)`` with ``frames_as="rows"`` (training) or ``(F, T)``
                with ``frames_as="columns"`` (the NCA).
        """
        return self._apply(frames, frames_as, invert=False)

    def inverse_transform(self, frames, *, frames_as: str = "rows"):
        """Multiply each band by its std (undo :meth:`transform`)."""
        return self._apply(frames, frames_as, invert=True)

    def state_dict(self) -> dict:
        """``{"count": int64 0-d, "mean": (F,) float64, "m2": (F,) float64}``."""
        self._require_fitted()
        return {
            "count": numpy.asarray(self._count, dtype=numpy.int64),
            "mean": self._mean.copy(),
            "m2": self._m2.copy(),
        }

    @classmethod
    def from_state(cls, state: dict) -> "Scaler":
        """Rebuild a scaler from :meth:`state_dict`'s output."""
        missing = [key for key in ("count", "mean", "m2") if key not in state]
        if missing:
            raise DataError(f"scaler state lacks {', '.join(missing)}: it was not written by Scaler.save")
        mean = numpy.asarray(state["mean"], dtype=numpy.float64)
        m2 = numpy.asarray(state["m2"], dtype=numpy.float64)
        count = int(numpy.asarray(state["count"]))
        if mean.ndim != 1 or m2.shape != mean.shape or count < 1:
            raise DataError(f"scaler state is inconsistent: mean {mean.shape}, m2 {m2.shape}, count {count}")
        scaler = cls()
        scaler._count, scaler._mean, scaler._m2 = count, mean, m2
        return scaler

    def save(self, path) -> Path:
        """Write the state as ``.npz`` atomically (temporary file, then rename)."""
        path = Path(path)
        with atomic_open(path, "wb") as stream:
            numpy.savez(stream, **self.state_dict())
        return path

    @classmethod
    def load(cls, path) -> "Scaler":
        """Read a scaler written by :meth:`save`."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"scaler file {path} does not exist: run the prepare stage first")
        try:
            with numpy.load(path, allow_pickle=False) as archive:
                state = {key: archive[key] for key in archive.files}
        except (OSError, ValueError) as exc:
            raise DataError(f"scaler file {path} is not a readable .npz archive: {exc}") from exc
        return cls.from_state(state)
