"""Separate any song with a trained run: ``nca-np separate`` (docs/method.md#separating-a-song).

One input file becomes two output files with the input's channels:

1. the file is read (soundfile for wav, flac, ogg, mp3 …; a ``.stem.mp4``
   through stempeg as ``prepare`` reads MUSDB18, its mixture stream);
2. at a sample rate other than the run's it is resampled with
   ``scipy.signal.resample_poly``, and the estimates are resampled back;
3. the run's own STFT settings and scaler give the model's features of the
   channel average (the models are trained on mono magnitudes); the model
   (``model.predict``, whatever its kind) estimates the vocals magnitude
   ``ŷ``, which is unscaled;
4. each channel ``c`` of a multichannel input gets the soft mask
   ``m = clip(ŷ / |X_mono|, 0, 1)`` on its own STFT, ``V_c = m ⊙ X_c``
   (optionally refined by a multichannel Wiener filter,
   :mod:`nca_np.wiener`), inverted with the inverse STFT; a mono input, or
   ``mono=True``, keeps the mono path: ``ŷ`` with the mono mixture's phase;
5. the accompaniment is the mixture minus the vocal estimate, channel by
   channel, so the two files add up to the input (to float32 rounding);
6. ``<out>/<name>/vocals.wav`` and ``accompaniment.wav`` are written,
   32-bit float at the input's length and sample rate, both or neither.

Blocks. Steps 3–5 run over blocks of ``block_frames`` STFT frames, so
memory holds the signal, its vocal estimate and one block, never the whole
spectrogram (the accompaniment then takes the signal's place). A block is computed from the frames it needs plus
``ceil(half window / hop)`` context frames on each side, read from the
samples those frames cover plus as much again; every output sample it keeps
then receives the same frames, windows and normalisation as in one pass
over the whole file, so the result equals whole-file processing (to float
rounding; :func:`block_plan` states the geometry). The Wiener filter is the
exception: it estimates its spatial covariances from the frames of one
block, as open-unmix estimates them over windows of frames.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import math
import os
from pathlib import Path

import numpy
import scipy.signal
from tqdm.auto import tqdm

from . import backend
from .atomic import atomic_open, remove_stale_temporaries
from .audio import audio_module
from .data import musdb_io
from .errors import DataError, UserError
from .features import Scaler, StftSettings, istft, n_frames, stft, to_mono
from .spectrograms import spectrogram_figure
from .train import FINAL_MODEL, load_model
from .wiener import filter as wiener_filter
from .workspace import train_hash

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


# ---------------------------------------------------------------- the run


def find_run(runs_dir: Path, kind: str) -> Path:
    """The first finished run of ``kind`` under ``runs_dir`` (``<kind>/run_NN/model.npz``).

    Raises:
        RunNotFound: no run of that kind has finished there.
    """
    finished = finished_runs(runs_dir, kind)
    if not finished:
        raise RunNotFound(f"no finished {kind} run in {Path(runs_dir) / kind}: train one "
                          f"(`nca-np train --kinds {kind}` with the same --profile and --set options) "
                          "or pass --run RUN_DIR")
    return finished[0]


def finished_runs(runs_dir, kind: str) -> list[Path]:
    """The finished run folders of ``kind`` under ``runs_dir``, by run number."""
    return sorted(path.parent for path in (Path(runs_dir) / kind).glob(f"run_*/{FINAL_MODEL}"))


def latest_runs(workdir) -> Path | None:
    """The training folder ``<workdir>/runs/<profile>-<hash>`` whose newest
    finished model (``<kind>/run_NN/model.npz``, by modification time) is
    the newest of all: the runs of the last ``train`` or ``reproduce`` there;
    None when no run has finished."""
    newest = max(Path(workdir).glob(f"runs/*/*/run_*/{FINAL_MODEL}"),
                 key=lambda path: (path.stat().st_mtime_ns, str(path)), default=None)
    return None if newest is None else newest.parent.parent.parent


def last_trained_run(workdir, kind: str | None = None) -> Path:
    """:func:`pick_run` of :func:`latest_runs`.

    Raises:
        RunNotFound: no run has finished under ``<workdir>/runs``.
    """
    training = latest_runs(workdir)
    if training is None:
        raise RunNotFound(f"no finished run in {Path(workdir) / 'runs'}: train one (`nca-np reproduce --profile demo` "
                          "trains the demo's), or pass --run RUN_DIR, or --workdir the folder that holds runs/")
    return pick_run(training, kind)


def pick_run(training_dir, kind: str | None = None) -> Path:
    """A finished run of a training folder: the first of ``kind``, or of the
    first model of its configuration that has one (the order of
    ``train.kinds``, then the folder names)."""
    training_dir = Path(training_dir)
    if kind is not None:
        return find_run(training_dir, kind)
    kinds = sorted(path.name for path in training_dir.iterdir() if finished_runs(training_dir, path.name)) \
        if training_dir.is_dir() else []
    if not kinds:
        raise RunNotFound(f"no finished run in {training_dir}: train one or pass --run RUN_DIR")
    order = _configured_kinds(finished_runs(training_dir, kinds[0])[0])
    ranked = sorted(kinds, key=lambda k: (order.index(k) if k in order else len(order), k))
    return find_run(training_dir, ranked[0])


def _configured_kinds(run: Path) -> list[str]:
    """``train.kinds`` of the configuration a run was trained with ([] if unknown)."""
    try:
        with numpy.load(run / FINAL_MODEL) as archive:
            meta = json.loads(str(archive["meta"])) if "meta" in archive.files else {}
    except (OSError, ValueError, KeyError):
        return []
    return list(((meta.get("config") or {}).get("train") or {}).get("kinds") or [])


def resolve_run(path, kind: str | None = None) -> Path:
    """The run ``--run`` names: a run folder or its ``model.npz`` as they are;
    a training folder ``runs/<profile>-<hash>`` or a report folder
    ``results/<profile>-<hash>`` (or ``-latest``, its link or text file)
    through :func:`pick_run` with ``kind``.

    Raises:
        RunNotFound: none of these, or no finished run there.
    """
    path = Path(path)
    if path.suffix == ".npz" or (path / FINAL_MODEL).is_file() or path.name.startswith("run_"):
        return path
    if path.suffix == ".txt" and path.is_file():  # results/<profile>-latest.txt names the folder
        path = path.parent / path.read_text(encoding="utf-8").strip()
    if (path / "metadata.json").is_file():
        path = training_dir_of_report(path)
    if not path.is_dir():
        raise RunNotFound(f"no such folder {path}: point --run at a run folder (runs/<profile>-<hash>/<kind>/run_NN), "
                          "a training folder (runs/<profile>-<hash>) or a report folder (results/<profile>-<hash>)")
    return pick_run(path, kind)


def training_dir_of_report(results_dir) -> Path:
    """``<workdir>/runs/<profile>-<train hash>`` of the configuration a report
    folder's ``metadata.json`` records (``profile`` and ``config``)."""
    results_dir = Path(results_dir)
    try:
        metadata = json.loads((results_dir / "metadata.json").read_text(encoding="utf-8"))
        name = f"{metadata['profile']}-{train_hash(metadata['config'])}"
    except (ValueError, KeyError, TypeError) as exc:
        raise RunNotFound(f"{results_dir / 'metadata.json'} does not name its configuration ({exc}): "
                          "pass a run folder to --run") from None
    return results_dir.resolve().parent.parent / "runs" / name


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
               desc: str = "separate", wiener_iterations: int = 0) -> numpy.ndarray:
        """The vocal estimate of a signal at the run's sample rate.

        Args:
            mixture: ``(n,)`` mono or ``(n, C)`` float32 samples at
                ``settings.sample_rate``.
            block_frames: frames per block (default :meth:`block_frames`).
            progress: show a progress bar over the blocks.
            wiener_iterations: multichannel Wiener filter iterations on a
                ``(n, C)`` signal (0: none; :func:`nca_np.wiener.filter`).

        Returns:
            ``(n,)`` float32 ``istft(S⁻¹ f(S |X|), X)`` for a mono signal,
            with ``X`` the mixture's STFT, ``S`` the scaler, ``f`` the model;
            ``(n, C)`` float32 ``istft(m ⊙ X_c)`` per channel for a
            multichannel one, ``m`` the mask of :meth:`_channel_block`
            (docs/method.md#separating-a-song).
        """
        mixture = numpy.asarray(mixture, dtype=numpy.float32)
        if mixture.ndim not in (1, 2) or mixture.shape[0] == 0:
            raise ValueError(f"vocals() takes a non-empty signal (n,) or (n, C), got shape {mixture.shape}")
        output = numpy.empty_like(mixture)
        blocks = block_plan(mixture.shape[0], self.settings, block_frames or self.block_frames())
        for block in tqdm(blocks, desc=desc, disable=not progress, unit="block", leave=False):
            if mixture.ndim == 1:
                output[block.keep_start:block.keep_stop] = self._block(mixture, block)
            else:
                output[block.keep_start:block.keep_stop] = self._channel_block(mixture, block, wiener_iterations)
        return output

    def _estimate(self, samples: numpy.ndarray, block: "Block") -> tuple[numpy.ndarray, numpy.ndarray]:
        """The STFT ``X`` of the mono ``samples`` read for ``block`` over its
        frames and the model's vocals magnitude ``S⁻¹ f(S |X|)``, both ``(frames, F)``."""
        spectrum = stft(samples, self.settings)
        first = block.first_frame - block.read_start // self.settings.hop
        spectrum = spectrum[first:first + block.n_frames]
        module = backend.array_module(self.model.params[0])
        features = self.scaler.transform(backend.to_device(numpy.abs(spectrum), module))
        magnitude = backend.to_host(self.scaler.inverse_transform(self.model.predict(features)))
        return spectrum, magnitude

    def _block(self, mixture: numpy.ndarray, block: "Block") -> numpy.ndarray:
        """The kept output samples of one block of a mono signal."""
        spectrum, magnitude = self._estimate(mixture[block.read_start:block.read_stop], block)
        origin = block.first_frame * self.settings.hop
        signal = istft(magnitude, spectrum, self.settings, block.istft_length)
        return signal[block.keep_start - origin:block.keep_stop - origin]

    def _channel_block(self, mixture: numpy.ndarray, block: "Block", wiener_iterations: int) -> numpy.ndarray:
        """The kept ``(samples, C)`` of one block of a multichannel signal.

        The model sees the channel average; its estimate becomes the mask
        ``m = clip(ŷ / |X_mono|, 0, 1)`` (0 where ``X_mono`` is 0), applied
        to every channel's STFT ``X_c`` (docs/method.md#separating-a-song).
        """
        piece = mixture[block.read_start:block.read_stop]
        spectrum, magnitude = self._estimate(to_mono(piece), block)
        mask = soft_mask(magnitude, numpy.abs(spectrum))
        first = block.first_frame - block.read_start // self.settings.hop
        channels = numpy.stack([stft(piece[:, c], self.settings)[first:first + block.n_frames]
                                for c in range(piece.shape[1])], axis=-1)
        if wiener_iterations > 0:
            vocals, _ = wiener_filter(channels, mask[..., None] * numpy.abs(channels),
                                      (1.0 - mask)[..., None] * numpy.abs(channels), wiener_iterations)
        else:
            vocals = mask[..., None] * channels
        origin = block.first_frame * self.settings.hop
        kept = slice(block.keep_start - origin, block.keep_stop - origin)
        return numpy.stack([istft(numpy.abs(vocals[..., c]), vocals[..., c], self.settings, block.istft_length)[kept]
                            for c in range(piece.shape[1])], axis=-1)

    def separate(self, mixture, sample_rate: int, *, progress: bool = False, desc: str = "separate",
                 log=None, wiener_iterations: int = 0, in_place: bool = False) -> tuple[numpy.ndarray, numpy.ndarray]:
        """Vocals and accompaniment of a mono ``(n,)`` or ``(n, C)`` signal at any sample rate.

        A rate other than the run's is resampled there and back with
        ``scipy.signal.resample_poly`` (said once through ``log``). With
        ``in_place`` the accompaniment is written over ``mixture`` (a float32
        array the caller no longer needs), saving a signal's worth of memory.

        Returns:
            ``(vocals, accompaniment)``, each shaped like ``mixture``,
            float32 at ``sample_rate``; accompaniment = mixture − vocals.
        """
        mixture = numpy.asarray(mixture, dtype=numpy.float32)
        rate = self.settings.sample_rate
        options = dict(progress=progress, desc=desc, wiener_iterations=wiener_iterations)
        if sample_rate == rate:
            vocals = self.vocals(mixture, **options)
        else:
            up, down = _ratio(rate, sample_rate)
            if log:
                log(f"{desc}: {sample_rate} Hz resampled to the model's {rate} Hz and back "
                    f"(scipy.signal.resample_poly, up {up}, down {down})")
            inner = self.vocals(_resample(mixture, up, down), **options)
            vocals = _resample(inner, down, up)[:mixture.shape[0]]
        return vocals, numpy.subtract(mixture, vocals, out=mixture if in_place else None)


def soft_mask(estimate: numpy.ndarray, mixture_magnitude: numpy.ndarray) -> numpy.ndarray:
    """``clip(estimate / mixture_magnitude, 0, 1)``, 0 where the mixture is 0
    (docs/method.md#separating-a-song); same shape, float32."""
    safe = numpy.where(mixture_magnitude > 0, mixture_magnitude, 1.0)
    return numpy.where(mixture_magnitude > 0, numpy.clip(estimate / safe, 0.0, 1.0), 0.0).astype(numpy.float32)


def _ratio(to_rate: int, from_rate: int) -> tuple[int, int]:
    common = math.gcd(int(to_rate), int(from_rate))
    return int(to_rate) // common, int(from_rate) // common


def _resample(signal: numpy.ndarray, up: int, down: int) -> numpy.ndarray:
    return scipy.signal.resample_poly(signal, up, down, axis=0).astype(numpy.float32)


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


def read_mixture(path, *, mono: bool = True) -> tuple[numpy.ndarray, int]:
    """A file's samples: ``((n,) float32, rate)`` with the channels averaged,
    or with ``mono=False`` ``((n, C) float32, rate)`` as they are.

    ``.stem.mp4`` files give their mixture stream (through ffmpeg, as
    ``prepare`` reads MUSDB18); anything else goes through soundfile, read in
    pieces so only the signal kept is held.

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
        audio = to_mono(audio) if mono else numpy.asarray(audio, dtype=numpy.float32)
    else:
        audio, rate = _read_with_soundfile(path, mono=mono)
    if audio.shape[0] == 0:
        raise AudioReadError(f"{path} holds no audio samples")
    if not numpy.isfinite(audio).all():
        raise AudioReadError(f"{path} holds NaN or infinite samples")
    return audio, rate


def _read_with_soundfile(path: Path, *, mono: bool = True) -> tuple[numpy.ndarray, int]:
    soundfile = audio_module("soundfile")
    try:
        with soundfile.SoundFile(str(path)) as handle:
            rate = int(handle.samplerate)
            shape = (max(handle.frames, 0),) + (() if mono else (handle.channels,))
            audio = numpy.empty(shape, dtype=numpy.float32)
            filled = 0
            for piece in handle.blocks(blocksize=_READ_SAMPLES, dtype="float32", always_2d=True):
                if filled + piece.shape[0] > audio.shape[0]:
                    audio = numpy.concatenate([audio[:filled], numpy.empty((piece.shape[0],) + shape[1:],
                                                                           numpy.float32)])
                audio[filled:filled + piece.shape[0]] = to_mono(piece) if mono else piece
                filled += piece.shape[0]
    except (RuntimeError, OSError, ValueError) as exc:  # LibsndfileError is a RuntimeError
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AudioReadError(f"cannot read {path}: {first}; separate reads what soundfile reads "
                             f"(wav, flac, ogg, mp3 …) and MUSDB18 {STEM_SUFFIX} files") from None
    return audio[:filled], rate


def prepare_output(out_dir) -> Path:
    """Create ``out_dir`` and check it can be written, before any work.

    Raises:
        OSError: it cannot be created, is not a folder, or is not writable
            (the command line says so in one line, exit status 74).
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():  # mkdir would say EEXIST, which names no remedy
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(out_dir))
    out_dir.mkdir(parents=True, exist_ok=True)
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(out_dir))
    return out_dir


class _Guarded:
    """A file for soundfile's virtual I/O whose failed writes are kept, not
    raised: an exception inside soundfile's C callback would be printed as a
    traceback and turn into an AssertionError; :func:`write_outputs` raises
    the kept ``OSError`` instead."""

    def __init__(self, handle):
        self.handle, self.error = handle, None

    def write(self, data) -> int:
        if self.error is not None:
            return 0
        try:
            return self.handle.write(data)
        except OSError as exc:
            self.error = exc
            return 0

    def seek(self, *args):
        return self.handle.seek(*args)

    def tell(self):
        return self.handle.tell()

    def read(self, *args):
        return self.handle.read(*args)


def write_outputs(folder: Path, vocals: numpy.ndarray, accompaniment: numpy.ndarray, sample_rate: int) -> list[Path]:
    """``folder/vocals.wav`` and ``folder/accompaniment.wav``, 32-bit float,
    both or neither (each through :func:`nca_np.atomic.atomic_open`; the
    renames happen once both are complete).

    Raises:
        OSError: a write failed (full disk, file size limit …), naming the file.
    """
    paths = [folder / f"{name}.wav" for name in OUTPUTS]
    with contextlib.ExitStack() as stack:
        for path, samples in zip(paths, (vocals, accompaniment)):
            guarded = _Guarded(stack.enter_context(atomic_open(path, "wb")))
            try:
                _write_wav(guarded, samples, sample_rate)
            except (AssertionError, RuntimeError) as exc:  # a short write, as soundfile reports it
                if guarded.error is None:
                    raise
                raise OSError(guarded.error.errno, guarded.error.strerror, str(path)) from exc
            if guarded.error is not None:
                raise OSError(guarded.error.errno, guarded.error.strerror, str(path))
    return paths


def _write_wav(handle, samples: numpy.ndarray, sample_rate: int) -> None:
    """A 32-bit float WAV of ``(n,)`` or ``(n, C)`` samples, written in pieces
    of :data:`_READ_SAMPLES` frames (soundfile hands the file a copy of all it
    is given at once: pieces keep that copy small)."""
    soundfile = audio_module("soundfile")
    channels = 1 if samples.ndim == 1 else samples.shape[1]
    with soundfile.SoundFile(handle, "w", int(sample_rate), channels, format="WAV", subtype="FLOAT") as wav:
        for start in range(0, samples.shape[0], _READ_SAMPLES):
            wav.write(samples[start:start + _READ_SAMPLES])


@dataclasses.dataclass(frozen=True)
class Options:
    """How :func:`separate_files` separates.

    Attributes:
        mono: average the channels and write mono files (the models' own
            view) instead of masking every channel.
        wiener_iterations: multichannel Wiener filter iterations (0: none).
        figure: also write ``spectrograms.png`` beside the outputs.
    """

    mono: bool = False
    wiener_iterations: int = 0
    figure: bool = False


def separate_files(paths, separator: Separator, out_dir, *, options: Options = Options(), progress: bool = False,
                   log=print) -> list[Path]:
    """Separate every file of ``paths`` into ``out_dir/<name>/{vocals,accompaniment}.wav``.

    The outputs and the inputs are checked first (names, existence,
    a writable folder), so a bad argument stops the command before any work;
    temporaries that a killed run left in the output folders are removed.

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
    if options.wiener_iterations < 0:
        raise UserError(f"--wiener-iterations must be 0 or more, got {options.wiener_iterations}")
    out_dir = prepare_output(out_dir)
    for name in names:
        remove_stale_temporaries(out_dir / name, log=log)
    return [_separate_one(path, name, separator, out_dir, options, progress, log) for path, name in zip(paths, names)]


def _separate_one(path: Path, name: str, separator: Separator, out_dir: Path, options: Options, progress: bool,
                  log) -> Path:
    """One input into ``out_dir/name`` (see :func:`separate_files`)."""
    mixture, rate = read_mixture(path, mono=options.mono)
    if mixture.ndim == 2 and mixture.shape[1] == 1:
        mixture = mixture[:, 0]  # a mono file is separated on the mono path and written mono
    vocals, accompaniment = separator.separate(mixture, rate, progress=progress, desc=path.name, log=log,
                                               wiener_iterations=options.wiener_iterations,
                                               in_place=not options.figure)  # the figure draws the mixture
    folder = prepare_output(out_dir / name)
    write_outputs(folder, vocals, accompaniment, rate)
    if options.figure:
        spectrogram_figure(folder / "spectrograms.png", mixture, vocals, rate, separator.settings,
                           true_vocals=true_vocals_of(path, rate, mixture.shape[0]), title=path.name)
    if log:
        channels = "mono" if mixture.ndim == 1 else f"{mixture.shape[1]} channels"
        wiener = "" if not options.wiener_iterations else (
            f", Wiener filter {options.wiener_iterations} iteration(s)" if mixture.ndim == 2
            else ", no Wiener filter: it needs several channels")
        log(f"{path.name}: {mixture.shape[0] / rate:.1f} s at {rate} Hz ({channels}{wiener}) separated by the "
            f"{separator.kind} model {separator.source.parent} into {folder}/{{{','.join(OUTPUTS)}}}.wav")
    return folder


def true_vocals_of(path: Path, rate: int, length: int) -> numpy.ndarray | None:
    """The true vocals of a MUSDB18 input, mono, when they come with it: the
    ``vocals.wav`` beside a MUSDB18-HQ ``mixture.wav``, or the vocals stream
    (4) of a ``.stem.mp4``; None otherwise or when they do not match."""
    try:
        if path.name == "mixture.wav" and (path.parent / "vocals.wav").is_file():
            audio, true_rate = _read_with_soundfile(path.parent / "vocals.wav")
        elif path.name.endswith(STEM_SUFFIX):
            import stempeg

            audio, true_rate = stempeg.read_stems(str(path), stem_id=4, ffmpeg_format="s16le")
            audio = to_mono(numpy.asarray(audio))
        else:
            return None
    except Exception:  # the figure goes without them rather than failing the separation
        return None
    return audio if int(round(float(true_rate))) == rate and audio.shape[0] == length else None
