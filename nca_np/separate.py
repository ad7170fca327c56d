"""Separate any song with a trained run: ``nca-np separate`` (docs/method.md#separation).

One input file becomes two output files:

1. the file is read (soundfile for wav, flac, ogg, mp3 …; a ``.stem.mp4``
   through stempeg as ``prepare`` reads MUSDB18, its mixture stream) and
   its channels are averaged (:func:`nca_np.features.to_mono`);
2. at a sample rate other than the run's it is resampled with
   ``scipy.signal.resample_poly``, and the estimates are resampled back;
3. the run's own STFT settings and scaler give the model's features; the
   model (``model.predict``, whatever its kind) estimates the vocals
   magnitude, which is unscaled and turned into a waveform by the inverse
   STFT with the mixture's phase;
4. the accompaniment is the mono mixture minus the vocal estimate, so the
   two files add up to the mono mixture (to float32 rounding);
5. ``<out>/<name>/vocals.wav`` and ``accompaniment.wav`` are written, mono
   32-bit float at the input's length and sample rate, each atomically.

Blocks. Steps 3–4 run over blocks of ``block_frames`` STFT frames, so
memory holds the mono signal, its two estimates and one block, never the
whole spectrogram. A block is computed from the frames it needs plus
``ceil(half window / hop)`` context frames on each side, read from the
samples those frames cover plus as much again; every output sample it keeps
then receives the same frames, windows and normalisation as in one pass
over the whole file, so the result equals whole-file processing (to float
rounding; :func:`block_plan` states the geometry).
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import numpy

from . import backend
from .atomic import write_wavs
from .data import musdb_io
from .errors import DataError, UserError
from .features import Scaler, StftSettings, istft, n_frames, stft, to_mono
from .train import FINAL_MODEL, load_model

#: Values (frames × bins) per block: about 4 MiB of float32, so a block of
#: the paper's F = 2049 bins is 512 frames (4.5 s) and its working set stays
#: in the tens of MiB.
BLOCK_VALUES = 2**20
MIN_BLOCK_FRAMES = 16
STEM_SUFFIX = musdb_io.STEM_SUFFIX
OUTPUTS = ("vocals", "accompaniment")
_READ_SAMPLES = 2**18  # samples per read when averaging a file's channels


class RunNotFound(UserError):
    """No finished run where one was asked for."""


class AudioReadError(UserError):
    """An input file that cannot be read as audio."""


class OutputError(UserError):
    """The output folder cannot be written."""


# ---------------------------------------------------------------- the run


def find_run(runs_dir: Path, kind: str) -> Path:
    """The first finished run of ``kind`` under ``runs_dir`` (``<kind>/run_NN/model.npz``).

    Raises:
        RunNotFound: no run of that kind has finished there.
    """
    finished = sorted(path.parent for path in (Path(runs_dir) / kind).glob(f"run_*/{FINAL_MODEL}"))
    if not finished:
        raise RunNotFound(f"no finished {kind} run in {Path(runs_dir) / kind}: train one "
                          f"(`nca-np train --kinds {kind}` with the same --profile and --set options) "
                          "or pass --run RUN_DIR")
    return finished[0]


def model_file(run) -> Path:
    """``run/model.npz`` (``run`` a run folder or the model file itself)."""
    path = Path(run)
    path = path if path.suffix == ".npz" else path / FINAL_MODEL
    if not path.is_file():
        hint = "the run has not finished training" if path.parent.is_dir() else "no such folder"
        raise RunNotFound(f"no trained model at {path} ({hint}): point --run at a finished run folder, "
                          "runs/<profile>-<hash>/<kind>/run_NN")
    return path


@dataclasses.dataclass
class Separator:
    """A trained run with what it needs to separate: its STFT settings and scaler.

    Attributes:
        model: the network (its ``predict`` gives the vocals magnitude).
        scaler: the training mixtures' per-band scaler (docs/method.md#features).
        settings: the STFT settings the run was trained with.
        source: the ``model.npz`` it was read from.
    """

    model: object
    scaler: Scaler
    settings: StftSettings
    source: Path

    @classmethod
    def from_run(cls, run, *, module=None) -> "Separator":
        """Read ``run`` (a run folder or its ``model.npz``) onto ``module`` (default: active)."""
        path = model_file(run)
        model, meta, scaler_state = load_model(path, module=module)
        stft_section = (meta.get("config") or {}).get("stft")
        if stft_section is None or not scaler_state:
            raise RunNotFound(f"{path} lacks its STFT settings or scaler: it was not written by "
                              "`nca-np train`; train the run again")
        return cls(model, Scaler.from_state(scaler_state), StftSettings.from_config(stft_section), path)

    @property
    def kind(self) -> str:
        return self.model.kind

    def block_frames(self) -> int:
        """Frames per block: :data:`BLOCK_VALUES` over F, at least :data:`MIN_BLOCK_FRAMES`."""
        return max(MIN_BLOCK_FRAMES, BLOCK_VALUES // self.settings.n_freq)

    def vocals(self, mixture, *, block_frames: int | None = None, progress: bool = False,
               desc: str = "separate") -> numpy.ndarray:
        """The vocal estimate of a mono signal at the run's sample rate.

        Args:
            mixture: ``(n,)`` float32 mono samples at ``settings.sample_rate``.
            block_frames: frames per block (default :meth:`block_frames`).
            progress: show a progress bar over the blocks.

        Returns:
            ``(n,)`` float32: ``istft(S⁻¹ f(S |X|), X)`` with ``X`` the
            mixture's STFT, ``S`` the scaler, ``f`` the model.
        """
        from tqdm.auto import tqdm

        mixture = numpy.asarray(mixture, dtype=numpy.float32)
        if mixture.ndim != 1 or mixture.shape[0] == 0:
            raise ValueError(f"vocals() takes a non-empty mono signal (n,), got shape {mixture.shape}")
        output = numpy.empty_like(mixture)
        blocks = block_plan(mixture.shape[0], self.settings, block_frames or self.block_frames())
        for block in tqdm(blocks, desc=desc, disable=not progress, unit="block", leave=False):
            output[block.keep_start:block.keep_stop] = self._block(mixture, block)
        return output

    def _block(self, mixture: numpy.ndarray, block: "Block") -> numpy.ndarray:
        """The kept output samples of one block."""
        hop = self.settings.hop
        spectrum = stft(mixture[block.read_start:block.read_stop], self.settings)
        first = block.first_frame - block.read_start // hop
        spectrum = spectrum[first:first + block.n_frames]
        module = backend.array_module(self.model.params[0])
        features = self.scaler.transform(backend.to_device(numpy.abs(spectrum), module))
        magnitude = backend.to_host(self.scaler.inverse_transform(self.model.predict(features)))
        origin = block.first_frame * hop
        signal = istft(magnitude, spectrum, self.settings, block.istft_length)
        return signal[block.keep_start - origin:block.keep_stop - origin]

    def separate(self, mixture, sample_rate: int, *, progress: bool = False, desc: str = "separate",
                 log=None) -> tuple[numpy.ndarray, numpy.ndarray]:
        """Vocals and accompaniment of a mono signal at any sample rate.

        A rate other than the run's is resampled there and back with
        ``scipy.signal.resample_poly`` (said once through ``log``).

        Returns:
            ``(vocals, accompaniment)``, each ``(n,)`` float32 at
            ``sample_rate``; accompaniment = mixture − vocals.
        """
        mixture = numpy.asarray(mixture, dtype=numpy.float32)
        rate = self.settings.sample_rate
        if sample_rate == rate:
            vocals = self.vocals(mixture, progress=progress, desc=desc)
        else:
            up, down = _ratio(rate, sample_rate)
            if log:
                log(f"{desc}: {sample_rate} Hz resampled to the model's {rate} Hz and back "
                    f"(scipy.signal.resample_poly, up {up}, down {down})")
            inner = self.vocals(_resample(mixture, up, down), progress=progress, desc=desc)
            vocals = _resample(inner, down, up)[:mixture.shape[0]]
        return vocals, mixture - vocals


def _ratio(to_rate: int, from_rate: int) -> tuple[int, int]:
    common = math.gcd(int(to_rate), int(from_rate))
    return int(to_rate) // common, int(from_rate) // common


def _resample(signal: numpy.ndarray, up: int, down: int) -> numpy.ndarray:
    import scipy.signal

    return scipy.signal.resample_poly(signal, up, down).astype(numpy.float32)


# ---------------------------------------------------------------- blocks


@dataclasses.dataclass(frozen=True)
class Block:
    """One block of :func:`block_plan`: frames ``first_frame … last_frame``
    (global numbers, inclusive) computed from samples ``[read_start,
    read_stop)``, output samples ``[keep_start, keep_stop)`` kept."""

    first_frame: int
    last_frame: int
    read_start: int
    read_stop: int
    keep_start: int
    keep_stop: int
    istft_length: int

    @property
    def n_frames(self) -> int:
        return self.last_frame - self.first_frame + 1


def block_plan(n_samples: int, settings: StftSettings, block_frames: int) -> list[Block]:
    """Cut an ``n_samples`` signal into blocks whose results equal one pass.

    Frame ``k`` covers samples ``k·hop ± h`` (``h`` = half the window) and
    output sample ``t`` sums the frames with ``|t − k·hop| ≤ h``. With
    ``c = ceil(h / hop)``, the block keeping the outputs of frames ``[a, b)``
    (samples ``[a·hop, b·hop)``) needs frames ``[a − c, b − 1 + c]``; those
    need samples from ``(a − 2c)·hop`` to ``(b − 1 + 2c)·hop``, read so that
    the first sample read is a frame centre (the block's STFT then frames
    like the whole file's). Near the ends everything is clipped to the
    signal, where the whole-file pass pads with the same zeros.

    Args:
        n_samples: signal length.
        settings: the STFT settings.
        block_frames: frames kept per block (the last block may keep fewer).
    """
    if block_frames < 1:
        raise ValueError(f"block_frames must be at least 1, got {block_frames}")
    hop, half = settings.hop, settings.window_length // 2
    total = n_frames(n_samples, settings)
    context = -(-half // hop)
    blocks = []
    for start in range(0, total, block_frames):
        stop = min(start + block_frames, total)
        first, last = max(0, start - context), min(total - 1, stop - 1 + context)
        last_block = stop == total
        blocks.append(Block(
            first_frame=first, last_frame=last,
            read_start=max(0, first - context) * hop,
            read_stop=min(n_samples, (last + context) * hop + 1),
            keep_start=start * hop, keep_stop=n_samples if last_block else stop * hop,
            istft_length=n_samples - first * hop if last == total - 1 else (last - first) * hop + 1))
    return blocks


# ---------------------------------------------------------------- files


def output_name(path: Path) -> str:
    """The folder name of one input's outputs: its name without the audio
    suffix; for a MUSDB18-HQ track's ``mixture.wav``, the track's folder name."""
    name = path.name
    if name.endswith(STEM_SUFFIX):
        return name[:-len(STEM_SUFFIX)]
    if path.stem == "mixture" and path.parent.name:
        return path.parent.name
    return path.stem


def read_mixture(path) -> tuple[numpy.ndarray, int]:
    """A file's samples, channels averaged: ``((n,) float32, sample rate)``.

    ``.stem.mp4`` files give their mixture stream (through ffmpeg, as
    ``prepare`` reads MUSDB18); anything else goes through soundfile, read in
    pieces so only the mono signal is held.

    Raises:
        AudioReadError: missing, unreadable, empty or non-finite audio.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioReadError(f"{path} does not exist or is not a file")
    if path.name.endswith(STEM_SUFFIX):
        try:
            audio, rate = musdb_io.read_stem_mixture(path)
        except DataError as exc:
            raise AudioReadError(str(exc)) from None
        mono = to_mono(audio)
    else:
        mono, rate = _read_with_soundfile(path)
    if mono.shape[0] == 0:
        raise AudioReadError(f"{path} holds no audio samples")
    if not numpy.isfinite(mono).all():
        raise AudioReadError(f"{path} holds NaN or infinite samples")
    return mono, rate


def _read_with_soundfile(path: Path) -> tuple[numpy.ndarray, int]:
    import soundfile

    try:
        with soundfile.SoundFile(str(path)) as handle:
            rate = int(handle.samplerate)
            mono = numpy.empty(max(handle.frames, 0), dtype=numpy.float32)
            filled = 0
            for piece in handle.blocks(blocksize=_READ_SAMPLES, dtype="float32", always_2d=True):
                if filled + piece.shape[0] > mono.shape[0]:
                    mono = numpy.concatenate([mono[:filled], numpy.empty(piece.shape[0], numpy.float32)])
                mono[filled:filled + piece.shape[0]] = to_mono(piece)
                filled += piece.shape[0]
    except (RuntimeError, OSError, ValueError) as exc:  # LibsndfileError is a RuntimeError
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AudioReadError(f"cannot read {path}: {first}; separate reads what soundfile reads "
                             f"(wav, flac, ogg, mp3 …) and MUSDB18 {STEM_SUFFIX} files") from None
    return mono[:filled], rate


def prepare_output(out_dir) -> Path:
    """Create ``out_dir`` and check it can be written, before any work.

    Raises:
        OutputError: it cannot be created, is not a folder, or is not writable.
    """
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot write to {out_dir}: {exc.strerror or exc}; choose another --out folder") from None
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write to {out_dir}: permission denied; choose another --out folder")
    return out_dir


def write_outputs(folder: Path, vocals: numpy.ndarray, accompaniment: numpy.ndarray, sample_rate: int) -> list[Path]:
    """``folder/vocals.wav`` and ``folder/accompaniment.wav``, 32-bit float,
    both or neither (:func:`nca_np.atomic.write_wavs`)."""
    paths = [folder / f"{name}.wav" for name in OUTPUTS]
    try:
        write_wavs(dict(zip(paths, (vocals, accompaniment))), sample_rate)
    except OSError as exc:
        raise OutputError(f"cannot write to {folder}: {exc.strerror or exc}; choose another --out folder") from None
    return paths


def separate_files(paths, separator: Separator, out_dir, *, progress: bool = False, log=print) -> list[Path]:
    """Separate every file of ``paths`` into ``out_dir/<name>/{vocals,accompaniment}.wav``.

    The outputs and the inputs are checked first (names, existence,
    a writable folder), so a bad argument stops the command before any work.

    Returns:
        The folders written, one per input.
    """
    paths = [Path(p) for p in paths]
    names = [output_name(p) for p in paths]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UserError(f"two inputs would write to the same folder {twice[0]!r}: separate them one at a time "
                        "or rename one")
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise AudioReadError(f"{missing[0]} does not exist or is not a file")
    out_dir = prepare_output(out_dir)
    folders = []
    for path, name in zip(paths, names):
        mixture, rate = read_mixture(path)
        vocals, accompaniment = separator.separate(mixture, rate, progress=progress, desc=path.name, log=log)
        folder = prepare_output(out_dir / name)
        write_outputs(folder, vocals, accompaniment, rate)
        folders.append(folder)
        if log:
            log(f"{path.name}: {mixture.shape[0] / rate:.1f} s at {rate} Hz separated by the {separator.kind} "
                f"model {separator.source.parent} into {folder}/{{{','.join(OUTPUTS)}}}.wav")
    return folders
