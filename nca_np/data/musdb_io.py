"""MUSDB18 on disk: finding, validating and reading its tracks (docs/method.md#protocol).

Two releases share one layout, ``<root>/train`` and ``<root>/test``:

- the stems release: one ``<track name>.stem.mp4`` per track (AAC streams
  mixture, drums, bass, other, vocals), decoded by ``musdb``/``stempeg``
  through ffmpeg;
- MUSDB18-HQ (``is_wav=True``): one folder per track holding
  ``mixture.wav``, ``vocals.wav``, ``drums.wav``, ``bass.wav`` and
  ``other.wav``, read here with ``soundfile`` directly (``musdb`` would
  start one ffmpeg process per file and be about 20 times slower).

``musdb`` forgives too much: it returns zero tracks for a missing or empty
root, a wrong subset or the wrong ``is_wav``, silently drops a missing
source file, and lists any sub-folder of a track folder as a track of its
own. :func:`scan_tracks` checks the layout first and turns each of these
into a :class:`~nca_np.errors.DataError` naming the path and what to do;
:func:`list_tracks` then lists the tracks through ``musdb`` and checks it
agrees. ``musdb`` and ``soundfile`` are imported only inside the functions
that need them, so the rest of the package runs without them.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import numpy

from ..audio import audio_module
from ..errors import DataError
from ..features import to_mono

SAMPLE_RATE = 44100
SUBSETS = ("train", "test")
#: The four sources of a MUSDB18 track, in the order the excerpt selector takes them.
SOURCES = ("vocals", "drums", "bass", "other")
WAV_FILES = tuple(f"{name}.wav" for name in ("mixture",) + SOURCES)
STEM_SUFFIX = ".stem.mp4"
ROOT_HINT = ("pass --musdb-root or set MUSDB_PATH to the folder that holds train/ and test/ "
             "(`make demo` needs no dataset: it generates its own)")


class SilentVocals(DataError):
    """A test track whose vocals are all zeros: no measure can compare with them."""


@dataclasses.dataclass(frozen=True)
class TrackRef:
    """Where one track lives; cheap to make, reads no audio.

    Attributes:
        name: MUSDB18's track name ("Artist - Title"), musdb's ``track.name``.
        subset: "train" or "test".
        path: the track folder (wav) or the ``.stem.mp4`` file (stems).
        is_wav: True for MUSDB18-HQ.
        root: the dataset root.
        handle: the ``musdb`` track object when listed through musdb (stems
            are decoded through it), else None.
    """

    name: str
    subset: str
    path: Path
    is_wav: bool
    root: Path
    handle: object = dataclasses.field(default=None, compare=False, repr=False)

    def audio_files(self) -> list[Path]:
        """The files holding this track's audio."""
        if self.is_wav:
            return [self.path / name for name in WAV_FILES]
        return [self.path]


@dataclasses.dataclass
class LoadedTrack:
    """One track's audio, mono (channels averaged, docs/method.md#features).

    Attributes:
        name: the track name.
        subset: "train" or "test".
        sample_rate: 44100.
        mixture: ``(n,)`` float32.
        sources: {"vocals", "drums", "bass", "other"}: ``(n,)`` float32 each.
    """

    name: str
    subset: str
    sample_rate: int
    mixture: numpy.ndarray
    sources: dict

    @property
    def vocals(self) -> numpy.ndarray:
        """``(n,)`` float32, the target (same array as ``sources["vocals"]``)."""
        return self.sources["vocals"]

    @property
    def n_samples(self) -> int:
        """n, the length of every signal of the track."""
        return int(self.mixture.shape[0])


def resolve_root(root: str | os.PathLike | None) -> Path:
    """The dataset root: ``root`` if given (not empty), else ``$MUSDB_PATH``.

    Raises:
        DataError: neither is set.
    """
    if root is not None and str(root).strip():
        return Path(root).expanduser().resolve()
    from_env = os.environ.get("MUSDB_PATH", "").strip()
    if from_env:
        return Path(from_env).expanduser().resolve()
    raise DataError(f"no MUSDB18 root given: {ROOT_HINT}")


def _subset_folder(root: Path, subset: str) -> Path:
    """``root/subset``, after checking the root and the subset name."""
    if subset not in SUBSETS:
        raise DataError(f"unknown subset {subset!r}: MUSDB18 has 'train' and 'test'")
    if not root.exists():
        raise DataError(f"MUSDB18 root {root} does not exist: {ROOT_HINT}")
    if not root.is_dir():
        raise DataError(f"MUSDB18 root {root} is not a folder: {ROOT_HINT}")
    folder = root / subset
    if folder.is_dir():
        return folder
    if not (root / "train").is_dir() and not (root / "test").is_dir():
        hint = (f"it looks like a subset folder itself: pass its parent {root.parent}"
                if root.name in SUBSETS else ROOT_HINT)
        raise DataError(f"{root} has neither train/ nor test/, so it is not a MUSDB18 root: {hint}")
    raise DataError(f"{folder} is missing: a MUSDB18 root holds both train/ and test/; "
                    "extract the whole dataset there")


def is_resource_file(path: Path) -> bool:
    """macOS's AppleDouble companion ``._<name>`` (written beside every file
    copied to a foreign file system): metadata, no audio; ignored."""
    return path.name.startswith("._")


def _has_wav(folder: Path) -> bool:
    return any(entry.is_file() and entry.suffix.lower() == ".wav" and not is_resource_file(entry)
               for entry in folder.iterdir())


def _check_wav_track(folder: Path, subset_folder: Path) -> None:
    """A MUSDB18-HQ track folder: five .wav files, no sub-folder."""
    nested = sorted(entry.name for entry in folder.iterdir() if entry.is_dir())
    if nested:
        raise DataError(f"{folder / nested[0]} is a folder inside track folder {folder}: musdb would list it "
                        "as a track of its own; move it out of the dataset")
    if not _has_wav(folder):
        raise DataError(f"{folder} holds no .wav audio: musdb would list it as a track; "
                        f"remove it or move it out of {subset_folder}")
    missing = [name for name in WAV_FILES if not (folder / name).is_file()]
    if missing:
        raise DataError(f"track folder {folder} lacks {', '.join(missing)}: a MUSDB18-HQ track needs "
                        f"{', '.join(WAV_FILES)}; extract the track again")
    empty = [name for name in WAV_FILES if (folder / name).stat().st_size == 0]
    if empty:
        raise DataError(f"{folder / empty[0]} is an empty file: extract the track again")


def _scan_wav(subset_folder: Path, folders: list[Path], stem_files: list[Path], advice: str | None) -> list[Path]:
    if not folders:
        advice = advice or "pass --set data.is_wav=false (or set is_wav = false in the profile's [data] section)"
        raise DataError(f"{subset_folder} holds {len(stem_files)} {STEM_SUFFIX} file(s) (the MUSDB18 stems "
                        f"release) and no track folders, but is_wav is true: {advice}")
    for folder in folders:
        _check_wav_track(folder, subset_folder)
    return folders


def _scan_stems(subset_folder: Path, folders: list[Path], stem_files: list[Path], advice: str | None) -> list[Path]:
    if not stem_files:
        if any(_has_wav(folder) for folder in folders):
            advice = advice or "pass --set data.is_wav=true (or set is_wav = true in the profile's [data] section)"
            raise DataError(f"{subset_folder} holds track folders with .wav files (the MUSDB18-HQ layout) "
                            f"and no {STEM_SUFFIX} files: {advice}")
        raise DataError(f"{subset_folder} holds no {STEM_SUFFIX} files: extract MUSDB18 there")
    for folder in folders:
        nested = sorted(folder.rglob(f"*{STEM_SUFFIX}"))
        if nested:
            raise DataError(f"{nested[0]} lies in a sub-folder of {subset_folder}: musdb would list it with a "
                            f"wrong path; move it up into {subset_folder}")
    empty = [path for path in stem_files if path.stat().st_size == 0]
    if empty:
        raise DataError(f"{empty[0]} is an empty file: download the track again")
    return stem_files


def _track_name(path: Path, is_wav: bool) -> str:
    return path.name if is_wav else path.name[: -len(STEM_SUFFIX)]


def scan_tracks(root, subset: str, *, is_wav: bool, layout_advice: str | None = None) -> list[TrackRef]:
    """Validate one subset's layout and list its tracks, without musdb or ffmpeg.

    Args:
        root: the dataset root (holding train/ and test/).
        subset: "train" or "test".
        is_wav: True for MUSDB18-HQ (track folders of .wav files).
        layout_advice: what to do when the tree has the other layout; None:
            change ``data.is_wav`` (right while preparing; a stage reading
            the dataset that was prepared passes advice about the folder).

    Returns:
        The tracks, sorted by name (musdb's order).

    Raises:
        DataError: missing root or subset folder, empty subset, the wrong
            ``is_wav`` for the tree, a track folder missing a source file, a
            sub-folder or audio-less folder musdb would take for a track.
    """
    root = Path(root)
    subset_folder = _subset_folder(root, subset)
    entries = sorted((entry for entry in subset_folder.iterdir() if not is_resource_file(entry)),
                     key=lambda entry: entry.name)
    folders = [entry for entry in entries if entry.is_dir()]
    stem_files = [entry for entry in entries if entry.is_file() and entry.name.endswith(STEM_SUFFIX)]
    if not folders and not stem_files:
        raise DataError(f"{subset_folder} is empty (no track folders, no {STEM_SUFFIX} files): "
                        "extract MUSDB18 there")
    scan = _scan_wav if is_wav else _scan_stems
    paths = scan(subset_folder, folders, stem_files, layout_advice)
    return [TrackRef(_track_name(path, is_wav), subset, path, is_wav, root) for path in paths]


def ffmpeg_available() -> bool:
    """Whether ffmpeg and ffprobe are on PATH (musdb cannot be imported without them)."""
    return shutil.which("ffmpeg") is not None and shutil.which("ffprobe") is not None


def require_ffmpeg() -> None:
    """Raise a DataError when ffmpeg or ffprobe is missing."""
    missing = [tool for tool in ("ffmpeg", "ffprobe") if shutil.which(tool) is None]
    if missing:
        raise DataError(f"{'/'.join(missing)} not found: install it (e.g. apt-get install ffmpeg); "
                        "musdb needs it to read MUSDB18")


def _musdb_database(root: Path, subset: str, is_wav: bool, refs=()):
    """``musdb.DB`` of one subset (imports musdb, which needs ffmpeg).

    musdb probes every track's (mixture) file with ffprobe; when one fails,
    ``refs`` are probed one by one to name it.
    """
    require_ffmpeg()
    musdb = audio_module("musdb")

    try:
        if not is_wav and any(is_resource_file(path) for path in (root / subset).glob(f"*{STEM_SUFFIX}")):
            return _database_of(musdb.DB(root=str(root), subsets=[], is_wav=False), refs)
        return musdb.DB(root=str(root), subsets=[subset], is_wav=is_wav)
    except Exception as exc:  # musdb and stempeg fail with many exception types
        culprit = _first_unprobeable(refs)
        where = f"{culprit} cannot be read by ffprobe" if culprit else _first_line(exc)
        raise DataError(f"musdb could not list {root / subset}: {where}; the file is damaged, "
                        "download or extract it again") from exc


def _database_of(database, refs):
    """``database`` (a musdb.DB listing nothing) holding the stem tracks of
    ``refs``, built as musdb builds them. musdb takes every ``*.stem.mp4``
    for a track, macOS's ``._`` resource files too, and fails probing those."""
    musdb = audio_module("musdb")

    setup = database.setup
    tracks = []
    for ref in refs:
        track = musdb.MultiTrack(name=ref.name, path=str(ref.path), subset=ref.subset, is_wav=False,
                                 stem_id=setup["stem_ids"]["mixture"], sample_rate=database.sample_rate)
        track.sources = {name: musdb.Source(track, name=name, path=str(ref.path), stem_id=setup["stem_ids"][name],
                                            sample_rate=database.sample_rate)
                         for name in setup["sources"]}
        track.targets = database.create_targets(track)
        tracks.append(track)
    database.tracks = tracks
    return database


def _first_unprobeable(refs) -> Path | None:
    """The first audio file of ``refs`` that ffprobe cannot read, if any."""
    stempeg = audio_module("stempeg")

    for ref in refs:
        for path in ref.audio_files():
            try:
                stempeg.Info(str(path))
            except Exception:  # ffmpeg-python raises its own Error type
                return path
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def list_tracks(root, subset: str, *, is_wav: bool, through_musdb: bool | None = None,
                layout_advice: str | None = None) -> list[TrackRef]:
    """The tracks of one subset, validated, sorted by name.

    Args:
        root: the dataset root.
        subset: "train" or "test".
        is_wav: True for MUSDB18-HQ.
        through_musdb: list through ``musdb`` as well and check it agrees
            with :func:`scan_tracks`. None: always for stems (which are read
            through musdb anyway), for wav trees when ffmpeg is installed
            (wav audio is read with soundfile, so a wav tree needs no ffmpeg).
        layout_advice: as for :func:`scan_tracks`.

    Raises:
        DataError: any problem :func:`scan_tracks` finds; ffmpeg missing
            when musdb is needed; musdb listing other tracks.
    """
    refs = scan_tracks(root, subset, is_wav=is_wav, layout_advice=layout_advice)
    if through_musdb is None:
        through_musdb = not is_wav or ffmpeg_available()
    if not through_musdb:
        return refs
    tracks = _musdb_database(Path(root), subset, is_wav, refs).tracks
    names = [track.name for track in tracks]
    expected = [ref.name for ref in refs]
    if names != expected:
        extra = sorted(set(names) - set(expected)) or sorted(set(expected) - set(names)) or names
        raise DataError(f"musdb lists {len(names)} tracks in {Path(root) / subset}, the folder holds "
                        f"{len(expected)}; first difference: {extra[0]!r}")
    return [dataclasses.replace(ref, handle=track) for ref, track in zip(refs, tracks)]


def _read_wav(path: Path) -> tuple[numpy.ndarray, int]:
    """``(n,)`` float32 mono samples and the sample rate of one wav file."""
    soundfile = audio_module("soundfile")

    try:
        audio, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, OSError) as exc:  # soundfile's errors are RuntimeErrors
        raise DataError(f"cannot read {path}: {_first_line(exc)}; the file is damaged, extract it again") from exc
    return to_mono(audio), int(rate)


def _load_wav_track(ref: TrackRef) -> tuple[dict, dict]:
    """Signals and sample rates by file name for a MUSDB18-HQ track."""
    signals, rates = {}, {}
    for name, path in zip(("mixture",) + SOURCES, ref.audio_files()):
        signals[name], rates[path.name] = _read_wav(path)
    return signals, rates


def _musdb_track(ref: TrackRef):
    if ref.handle is not None:
        return ref.handle
    for track in _musdb_database(ref.root, ref.subset, ref.is_wav, [ref]).tracks:
        if track.name == ref.name:
            return track
    raise DataError(f"musdb does not list track {ref.name!r} in {ref.root / ref.subset}")


def _load_stem_track(ref: TrackRef) -> tuple[dict, dict]:
    """Signals and sample rate of a ``.stem.mp4`` track, all five streams in one decode."""
    track = _musdb_track(ref)
    try:
        stems = numpy.asarray(track.stems)
    except Exception as exc:  # stempeg/ffmpeg failures come in many types, with stempeg's own wording
        raise DataError(f"ffmpeg cannot decode all the audio of {ref.path}: the file is truncated or damaged "
                        "(an interrupted download?); download the track again") from exc
    if stems.ndim != 3 or stems.shape[0] < 5:
        raise DataError(f"{ref.path} holds {stems.shape[0] if stems.ndim == 3 else 1} audio stream(s), "
                        "a MUSDB18 stem file holds 5: download the track again")
    signals = {"mixture": to_mono(stems[track.stem_id])}
    for name in SOURCES:
        if name not in track.sources:
            raise DataError(f"musdb finds no {name} stream in {ref.path}: download the track again")
        signals[name] = to_mono(stems[track.sources[name].stem_id])
    return signals, {ref.path.name: int(round(float(track.rate)))}


def _check_signals(ref: TrackRef, signals: dict, rates: dict) -> None:
    """Sample rate, equal lengths, finite samples, audible vocals in a test track."""
    for file_name, rate in rates.items():
        if rate != SAMPLE_RATE:
            raise DataError(f"{ref.path / file_name if ref.is_wav else ref.path} is sampled at {rate} Hz; "
                            f"MUSDB18 is {SAMPLE_RATE} Hz: resample it or use the original files")
    lengths = {name: signal.shape[0] for name, signal in signals.items()}
    if len(set(lengths.values())) > 1:
        suffix = ".wav" if ref.is_wav else ""
        listed = ", ".join(f"{name}{suffix} {length}" for name, length in lengths.items())
        raise DataError(f"track {ref.path} has sources of different lengths ({listed} samples): "
                        "a file is truncated or belongs to another track; extract the track again")
    if lengths["mixture"] == 0:
        raise DataError(f"track {ref.path} holds no samples: extract the track again")
    for name, signal in signals.items():
        if not numpy.isfinite(signal).all():
            raise DataError(f"{name} of track {ref.path} holds NaN or infinite samples: extract the track again")
    if ref.subset == "test" and not numpy.any(signals["vocals"]):
        # Every test measure compares with the vocals: against silence an SNR is undefined. A
        # training track without vocals stays: it teaches the models to output silence.
        raise SilentVocals(f"the vocals of test track {ref.path} are silent (all zeros): the file is damaged or "
                           "not the vocals; fix it or remove the track from the dataset")


def load_track(ref: TrackRef) -> LoadedTrack:
    """Read one track: mixture and the four sources, mono float32 at 44.1 kHz.

    Wav tracks are read with soundfile, stem tracks through musdb (one
    ffmpeg decode of all five streams).

    Raises:
        DataError: unreadable or truncated file, a sample rate other than
            44 100 Hz, sources of different lengths, NaN/inf samples, silent
            vocals in a test track (no SNR can be measured against them);
            each naming the file or track and what to do.
    """
    signals, rates = _load_wav_track(ref) if ref.is_wav else _load_stem_track(ref)
    _check_signals(ref, signals, rates)
    return LoadedTrack(
        name=ref.name,
        subset=ref.subset,
        sample_rate=SAMPLE_RATE,
        mixture=signals["mixture"],
        sources={name: signals[name] for name in SOURCES},
    )


def track_seconds(ref: TrackRef) -> float:
    """The length of a track's mixture in seconds, from its file's header
    (nothing decoded): to check lengths and estimate sizes before any work.

    Raises:
        DataError: the header cannot be read.
    """
    if ref.is_wav:
        soundfile = audio_module("soundfile")

        path = ref.path / WAV_FILES[0]
        try:
            info = soundfile.info(str(path))
        except (RuntimeError, OSError) as exc:
            raise DataError(f"cannot read {path}: {_first_line(exc)}; the file is damaged, extract it again") from exc
        return info.frames / info.samplerate
    if ref.handle is not None and getattr(ref.handle, "duration", None) is not None:
        return float(ref.handle.duration)
    stempeg = audio_module("stempeg")

    try:
        return float(stempeg.Info(str(ref.path)).duration(0))
    except Exception as exc:  # ffprobe failures come in many types
        raise DataError(f"{ref.path} cannot be read by ffprobe: the file is damaged; download it again") from exc


def data_fingerprint(refs) -> list[list]:
    """``[relative path, size, mtime_ns]`` of every audio file of ``refs``, sorted.

    Changes whenever a file is added, removed, replaced or touched, so the
    feature cache is rebuilt; reads no audio.
    """
    rows = []
    for ref in refs:
        for path in ref.audio_files():
            status = path.stat()
            rows.append([path.relative_to(ref.root).as_posix(), int(status.st_size), int(status.st_mtime_ns)])
    return sorted(rows)


# --- audio for separation and its evaluation -------------------------------------------------

#: musdb's "accompaniment" target: these sources, summed in this order.
ACCOMPANIMENT = ("bass", "drums", "other")


def read_stem_mixture(path) -> tuple[numpy.ndarray, int]:
    """The mixture stream of a ``.stem.mp4`` file, decoded as musdb decodes it.

    Stream 0 through ``stempeg.read_stems`` with 16-bit PCM transport, the
    call musdb makes for MUSDB18's stems (needs ffmpeg).

    Returns:
        ``((n, channels) float64 samples, sample rate)``.

    Raises:
        DataError: ffmpeg missing, or a file ffmpeg cannot decode.
    """
    require_ffmpeg()
    stempeg = audio_module("stempeg")

    try:
        audio, rate = stempeg.read_stems(str(path), stem_id=0, ffmpeg_format="s16le")
    except Exception as exc:  # stempeg/ffmpeg failures come in many types
        raise DataError(f"cannot decode {path}: {_first_line(exc)}; is it a complete .stem.mp4 file?") from exc
    audio = numpy.asarray(audio)
    return (audio[:, None] if audio.ndim == 1 else audio), int(round(float(rate)))


@dataclasses.dataclass
class ExcerptAudio:
    """One test excerpt with its references, for scoring separations.

    Attributes:
        name: the track name.
        sample_rate: Hz.
        mixture: ``(n,)`` float32 mono mixture, the samples ``prepare`` took
            features of (channels averaged, then cut).
        references: {"vocals", "accompaniment"}: ``(n, channels)`` at the
            files' channel count; accompaniment is musdb's target
            (:data:`ACCOMPANIMENT` summed).
        channels: ``(n, channels)`` float32 mixture as read (``mixture`` is
            its channel average); None where only the mono mixture is known.
    """

    name: str
    sample_rate: int
    mixture: numpy.ndarray
    references: dict
    channels: numpy.ndarray | None = None


def _accompaniment(parts: list) -> numpy.ndarray:
    """musdb's target sum (``numpy.sum`` over the stacked sources), to the bit."""
    return numpy.sum(numpy.array(parts), axis=0)


def _read_wav_span(path: Path, start: int, stop: int) -> numpy.ndarray:
    soundfile = audio_module("soundfile")

    try:
        audio, _ = soundfile.read(str(path), start=start, stop=stop, dtype="float32", always_2d=True)
    except (RuntimeError, OSError) as exc:
        raise DataError(f"cannot read {path}: {_first_line(exc)}; the file is damaged, extract it again") from exc
    return audio


def _wav_excerpt(ref: TrackRef, start: int, stop: int) -> tuple[dict, int]:
    soundfile = audio_module("soundfile")

    rate = int(soundfile.info(str(ref.path / "mixture.wav")).samplerate)
    signals = {name: _read_wav_span(ref.path / f"{name}.wav", start, stop) for name in ("mixture",) + SOURCES}
    return signals, rate


def _stem_excerpt(ref: TrackRef, start: int, stop: int) -> tuple[dict, int]:
    """Every stream of a stem track in one decode, cut to the excerpt."""
    track = _musdb_track(ref)
    try:
        stems = numpy.asarray(track.stems)[:, start:stop]
    except Exception as exc:  # stempeg/ffmpeg failures come in many types
        raise DataError(f"cannot decode {ref.path}: {_first_line(exc)}; download the track again") from exc
    signals = {"mixture": stems[track.stem_id]}
    signals.update({name: stems[track.sources[name].stem_id] for name in SOURCES})
    return signals, int(round(float(track.rate)))


def load_excerpt(ref: TrackRef, start: int, stop: int) -> ExcerptAudio:
    """Samples ``[start, stop)`` of one track: mono mixture, multichannel references.

    Wav tracks are read with soundfile, stem tracks through musdb in one
    decode (the same samples musdb's ``track.targets[...].audio`` holds).

    Raises:
        DataError: unreadable files, another sample rate than
            :data:`SAMPLE_RATE`, or an excerpt that runs past the track's end.
    """
    signals, rate = _wav_excerpt(ref, start, stop) if ref.is_wav else _stem_excerpt(ref, start, stop)
    if rate != SAMPLE_RATE:
        raise DataError(f"{ref.path} is sampled at {rate} Hz; MUSDB18 is {SAMPLE_RATE} Hz")
    short = {name: signal.shape[0] for name, signal in signals.items() if signal.shape[0] != stop - start}
    if short:
        raise DataError(f"track {ref.path} holds fewer samples than its excerpt {start}-{stop} "
                        f"({', '.join(f'{k} {v}' for k, v in short.items())}): the audio changed since "
                        "`nca-np prepare`; prepare again")
    references = {"vocals": signals["vocals"],
                  "accompaniment": _accompaniment([signals[name] for name in ACCOMPANIMENT])}
    return ExcerptAudio(ref.name, rate, to_mono(signals["mixture"]), references, signals["mixture"])
