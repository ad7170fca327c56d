"""The feature cache: magnitude spectra of the whole dataset, computed once.

:func:`prepare_cache` is the only place besides the synthetic corpus that
reads audio. It writes, under ``<cache_root>/<key>/``::

    train/00000.mixture.npy   (n_frames, F) float32 mixture magnitudes, frames as rows
    train/00000.vocals.npy    (n_frames, F) float32 vocals magnitudes
    train/00000.scaler.npz    the Scaler's running state after this track
    train/00000.json          the unit's marker, written last: track name, frame count
    test/00000.mixture.npy    the same for each test track's excerpt
    test/00000.vocals.npy
    test/00000.json           marker: name, excerpt, frame count
    scaler.npz                per-band standard deviations of the training mixtures (docs/method.md#features)
    cutlist.csv               track,start_s,end_s,source of the test excerpts (docs/method.md#protocol)
    manifest.json             written last of all: marks the cache complete

Magnitudes are stored unscaled; readers apply the scaler. The key
(:func:`cache_key`) hashes everything that changes the features (STFT
settings, corpus, ``is_wav``, excerpt length, the audio files' paths within
the data root, sizes and times, :data:`FEATURE_FORMAT_VERSION`), so changed
settings never meet stale features; where the data root lies is left out,
so a moved work folder (with its built-in corpus) keeps its cache.

Before the first track is read, :func:`prepare_cache` checks what could
fail late: every test track of corpus "musdb18" lasts to the end of its
published excerpt (read from the files' headers), the cache's folder can
be written and its disk has room for the features. A preparation that
fails leaves no empty folder behind. Each track is a unit written atomically, marker last;
an interrupted preparation resumes at the first unfinished track, and the
Scaler, fitted in the same streaming pass over the training mixtures (never
all frames in memory), resumes from the state stored with the last finished
track, so the result is identical to an uninterrupted run.

:func:`open_cache` reads a finished cache without musdb, soundfile or the
dataset (the training machine has only the cache).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from datetime import datetime, timezone
from pathlib import Path

import numpy

from .. import backend
from .. import preflight
from ..atomic import atomic_open, is_stale_temporary, make_folder, remove_empty_folders, write_json
from ..errors import ConfigError, DataError
from ..features import Scaler, StftSettings, stft_magnitude
from ..frames import DEFAULT_BLOCK_FRAMES, DEFAULT_BLOCKS_IN_MEMORY, NpyRows, choose_frame_source
from . import excerpts as excerpt_module
from . import musdb_io

#: Bump when the layout or the meaning of the stored features changes.
FEATURE_FORMAT_VERSION = 1
CORPORA = ("musdb18", "synthetic")
MANIFEST = "manifest.json"
SCALER = "scaler.npz"
CUTLIST = "cutlist.csv"
SISEC_SECONDS = 30.0
PREPARE_HINT = "run `nca-np prepare` first"
_UNIT_DIGITS = 5


@dataclasses.dataclass(frozen=True)
class DataSettings:
    """The ``[data]`` table's values that decide the features.

    Attributes:
        corpus: "musdb18" (test excerpts from the SiSEC 2018 previews) or
            "synthetic" (activation-confidence excerpts).
        root: the dataset root as configured ("" means --musdb-root or $MUSDB_PATH).
        is_wav: True for MUSDB18-HQ-style wav trees.
        excerpt_seconds: length of a test excerpt.
    """

    corpus: str
    root: str
    is_wav: bool
    excerpt_seconds: float

    @classmethod
    def from_config(cls, section: dict) -> "DataSettings":
        """Read and check ``config["data"]``."""
        missing = [key for key in ("corpus", "root", "is_wav", "excerpt_seconds") if key not in section]
        if missing:
            raise ConfigError(f"[data] lacks {', '.join(missing)}")
        corpus, root, is_wav, seconds = (section[key] for key in ("corpus", "root", "is_wav", "excerpt_seconds"))
        if corpus not in CORPORA:
            raise ConfigError(f"[data] corpus = {corpus!r} is unknown: use one of {', '.join(CORPORA)}")
        if not isinstance(is_wav, bool):
            raise ConfigError(f"[data] is_wav must be true or false, got {is_wav!r}")
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
            raise ConfigError(f"[data] excerpt_seconds must be a positive number, got {seconds!r}")
        if corpus == "musdb18" and float(seconds) != SISEC_SECONDS:
            raise ConfigError(f"[data] excerpt_seconds = {seconds} but the SiSEC 2018 previews used for corpus "
                              f"'musdb18' are {SISEC_SECONDS:g} s: set it to {SISEC_SECONDS:g}")
        return cls(str(corpus), str(root or ""), is_wav, float(seconds))


def _settings(config: dict) -> tuple[StftSettings, DataSettings]:
    for section in ("stft", "data"):
        if section not in config:
            raise ConfigError(f"the configuration lacks its [{section}] section")
    return StftSettings.from_config(config["stft"]), DataSettings.from_config(config["data"])


@dataclasses.dataclass
class _Plan:
    """Everything :func:`prepare_cache` needs to know before reading audio."""

    stft: StftSettings
    data: DataSettings
    root: Path
    train: list
    test: list
    key: str
    material: dict


def _previews_digest() -> str:
    previews = sorted(excerpt_module.sisec_previews().items())
    return hashlib.sha256(json.dumps(previews).encode()).hexdigest()[:16]


def _plan(config: dict, musdb_root=None) -> _Plan:
    """Settings, validated track lists and the key; reads no audio, needs no ffmpeg."""
    stft, data = _settings(config)
    root = musdb_io.resolve_root(musdb_root if musdb_root is not None and str(musdb_root).strip() else data.root)
    train = musdb_io.scan_tracks(root, "train", is_wav=data.is_wav)
    test = musdb_io.scan_tracks(root, "test", is_wav=data.is_wav)
    material = {
        "format_version": FEATURE_FORMAT_VERSION,
        "stft": stft.as_dict(),
        "corpus": data.corpus,
        "is_wav": data.is_wav,
        "excerpt_seconds": data.excerpt_seconds,
        "files": musdb_io.data_fingerprint(train + test),
    }
    if data.corpus == "musdb18":
        material["sisec_previews"] = _previews_digest()
    canonical = json.dumps(material, sort_keys=True, separators=(",", ":"))
    key = hashlib.sha256(canonical.encode()).hexdigest()[:16]
    return _Plan(stft, data, root, train, test, key, material)


def cache_key(config: dict, *, musdb_root=None) -> str:
    """A 16-hex-digit hash of everything that changes the features.

    Args:
        config: the configuration (its ``stft`` and ``data`` sections count).
        musdb_root: overrides ``config["data"]["root"]`` (then $MUSDB_PATH).

    Raises:
        ConfigError, DataError: bad settings, or a dataset that fails validation.
    """
    return _plan(config, musdb_root).key


def cache_path(config: dict, cache_root, *, musdb_root=None) -> Path:
    """``cache_root/<key>``: where :func:`prepare_cache` puts this configuration's features."""
    return Path(cache_root) / cache_key(config, musdb_root=musdb_root)


# --- units on disk --------------------------------------------------------------------------

def _unit_stem(folder: Path, subset: str, index: int) -> Path:
    return folder / subset / f"{index:0{_UNIT_DIGITS}d}"


def _unit_files(stem: Path) -> dict:
    return {
        "mixture": stem.with_name(stem.name + ".mixture.npy"),
        "vocals": stem.with_name(stem.name + ".vocals.npy"),
        "scaler": stem.with_name(stem.name + ".scaler.npz"),
        "marker": stem.with_name(stem.name + ".json"),
    }


def _save_npy(path: Path, array: numpy.ndarray) -> None:
    with atomic_open(path, "wb") as handle:
        numpy.save(handle, array)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _npy_shape(path: Path):
    """``(shape, dtype)`` of an .npy file (header only, memory-mapped), or None when unreadable."""
    try:
        array = numpy.load(path, mmap_mode="r")
    except (OSError, ValueError):
        return None
    return tuple(array.shape), array.dtype


def _arrays_ok(files: dict, count: int, n_freq: int) -> bool:
    expected = ((count, n_freq), numpy.dtype(numpy.float32))
    return all(_npy_shape(files[name]) == expected for name in ("mixture", "vocals"))


def _complete_marker(folder: Path, subset: str, index: int, name: str, n_freq: int) -> dict | None:
    """The unit's marker if the unit is complete and intact, else None."""
    files = _unit_files(_unit_stem(folder, subset, index))
    marker = _read_json(files["marker"]) if files["marker"].is_file() else None
    if not marker or marker.get("name") != name or not _arrays_ok(files, marker.get("n_frames", -1), n_freq):
        return None
    if subset == "train" and not files["scaler"].is_file():
        return None
    return marker


def _remove_temporaries(folder: Path) -> None:
    """Delete the temporary files an interrupted write left: those of
    processes no longer running, never a live writer's (another shard
    preparing the same cache)."""
    for path in folder.rglob(".*.tmp"):
        if is_stale_temporary(path):
            path.unlink(missing_ok=True)


# --- preparation ----------------------------------------------------------------------------

def _musdb_tracks(plan: _Plan, subset: str) -> list:
    """The tracks listed through musdb (when it applies), checked against the scan."""
    refs = musdb_io.list_tracks(plan.root, subset, is_wav=plan.data.is_wav)
    expected = plan.train if subset == "train" else plan.test
    if [ref.name for ref in refs] != [ref.name for ref in expected]:
        raise DataError(f"the tracks in {plan.root / subset} changed during preparation: run it again")
    return refs


def _check_previews(plan: _Plan) -> dict:
    """The SiSEC previews; every test track must be listed (corpus "musdb18" only)."""
    if plan.data.corpus != "musdb18":
        return {}
    previews = excerpt_module.sisec_previews()
    missing = [ref.name for ref in plan.test if ref.name not in previews]
    if missing:
        raise DataError(f"test track(s) {', '.join(repr(name) for name in missing[:3])}"
                        f"{' …' if len(missing) > 3 else ''} of {plan.root / 'test'} are not in the SiSEC 2018 "
                        "previews list, so this is not MUSDB18's test set: use corpus = \"synthetic\" for "
                        "other data")
    return previews


def _prepare_train_track(plan: _Plan, folder: Path, index: int, ref, scaler: Scaler, log) -> dict:
    """Features of one training track, the Scaler updated with its mixture frames."""
    track = musdb_io.load_track(ref)
    if not numpy.any(track.vocals):
        log(f"warning: the vocals of training track {ref.name!r} are silent (all zeros): it teaches the models "
            "to output silence for its mixture; remove it from the dataset if that is not intended")
    mixture = stft_magnitude(track.mixture, plan.stft)
    vocals = stft_magnitude(track.vocals, plan.stft)
    files = _unit_files(_unit_stem(folder, "train", index))
    files["marker"].unlink(missing_ok=True)
    _save_npy(files["mixture"], mixture)
    _save_npy(files["vocals"], vocals)
    scaler.partial_fit(mixture)
    scaler.save(files["scaler"])
    marker = {"name": ref.name, "n_frames": int(mixture.shape[0]), "n_samples": track.n_samples}
    write_json(files["marker"], marker)
    return marker


def _resume_point(plan: _Plan, folder: Path) -> tuple[int, Scaler]:
    """The number of leading finished training units and the Scaler after them."""
    done = 0
    for index, ref in enumerate(plan.train):
        if _complete_marker(folder, "train", index, ref.name, plan.stft.n_freq) is None:
            break
        done = index + 1
    if done == 0:
        return 0, Scaler()
    return done, Scaler.load(_unit_files(_unit_stem(folder, "train", done - 1))["scaler"])


#: A MUSDB18 test track may end this much before the end of its published
#: excerpt (decoders differ by a few thousand samples); shorter is truncated.
PREVIEW_TOLERANCE_S = 1.0


def _check_preview_fits(name: str, duration: float, preview: tuple) -> None:
    """A MUSDB18 test track must last to the end of its published excerpt
    (docs/method.md#protocol): a shorter one is a truncated download, never
    used whole without a word."""
    start_s, end_s = preview
    if end_s > duration + PREVIEW_TOLERANCE_S:
        raise DataError(f"test track {name!r} lasts {duration:.1f} s but its published SiSEC 2018 excerpt is "
                        f"{start_s:g}-{end_s:g} s: the audio is truncated or not MUSDB18's; download or extract "
                        "it again, or set data.corpus = \"synthetic\" to take excerpts by activation confidence "
                        "from the audio there is")


def _check_test_lengths(plan: _Plan, refs: list, previews: dict) -> None:
    """Every test track against the published cut list, from the files'
    headers, before any audio is decoded (corpus "musdb18" only)."""
    if plan.data.corpus != "musdb18":
        return
    for ref in refs:
        _check_preview_fits(ref.name, musdb_io.track_seconds(ref), previews[ref.name])


def _feature_bytes(plan: _Plan, train_refs: list, test_refs: list) -> int:
    """Bytes of the features: mixture and vocals, float32, of every training
    frame and every test excerpt's frames (from the files' headers)."""
    rate, hop = plan.stft.sample_rate, plan.stft.hop
    frames = sum(int(musdb_io.track_seconds(ref) * rate) // hop + 1 for ref in train_refs)
    frames += sum(int(min(musdb_io.track_seconds(ref), plan.data.excerpt_seconds) * rate) // hop + 1
                  for ref in test_refs)
    return 2 * 4 * plan.stft.n_freq * frames + preflight.ARCHIVE_OVERHEAD * (len(train_refs) + len(test_refs))


def _select_excerpt(plan: _Plan, track, previews: dict) -> excerpt_module.Excerpt:
    """The test excerpt of one track (docs/method.md#protocol)."""
    seconds = plan.data.excerpt_seconds
    duration = track.n_samples / track.sample_rate
    if plan.data.corpus == "musdb18":
        start_s, end_s = previews[track.name]
        _check_preview_fits(track.name, duration, (start_s, end_s))
        return excerpt_module.Excerpt(track.name, float(start_s), float(end_s), "sisec2018")
    if duration < seconds:
        return excerpt_module.Excerpt(track.name, 0.0, float(duration), "whole-track")
    sources = [track.sources[name] for name in musdb_io.SOURCES]
    start_s, end_s = excerpt_module.activation_confidence_excerpt(sources, track.sample_rate, seconds)
    return excerpt_module.Excerpt(track.name, float(start_s), float(end_s), "activation-confidence")


#: When the built-in corpus's voice enters: the third bar, at most
#: 2 × 4 beats at 88 bpm plus one beat in (see nca_np.data.synth).
SYNTH_VOICE_LATEST_S = 2 * 4 * 60 / 88 + 60 / 88


def _load_test_track(plan: _Plan, ref):
    """A test track; silent vocals of the built-in corpus are said in its
    terms (a track too short for its voice to enter, not a damaged file)."""
    try:
        return musdb_io.load_track(ref)
    except musdb_io.SilentVocals:
        if plan.data.corpus != "synthetic":
            raise
        raise DataError(f"the vocals of synthetic test track {ref.name!r} are silent: its voice enters in the "
                        f"third bar (up to {SYNTH_VOICE_LATEST_S:.1f} s in), after the track ends; set "
                        f"data.synth_test_seconds to at least {math.ceil(SYNTH_VOICE_LATEST_S + 1)}") from None


def _prepare_test_track(plan: _Plan, folder: Path, index: int, ref, previews: dict) -> dict:
    """Features of one test track's excerpt."""
    track = _load_test_track(plan, ref)
    excerpt = _select_excerpt(plan, track, previews)
    start = int(round(excerpt.start_s * track.sample_rate))
    stop = min(int(round(excerpt.end_s * track.sample_rate)), track.n_samples)
    mixture = stft_magnitude(track.mixture[start:stop], plan.stft)
    vocals = stft_magnitude(track.vocals[start:stop], plan.stft)
    if not numpy.any(vocals):
        raise DataError(f"the vocals of test track {ref.name!r} are silent in its excerpt {excerpt.start_s:g}-"
                        f"{excerpt.end_s:g} s ({excerpt.source}): no SNR can be measured against them; "
                        "remove the track or fix its vocals")
    files = _unit_files(_unit_stem(folder, "test", index))
    files["marker"].unlink(missing_ok=True)
    _save_npy(files["mixture"], mixture)
    _save_npy(files["vocals"], vocals)
    marker = {"name": ref.name, "n_frames": int(mixture.shape[0]), "start_s": excerpt.start_s,
              "end_s": excerpt.end_s, "source": excerpt.source, "start_sample": start, "n_samples": stop - start}
    write_json(files["marker"], marker)
    return marker


def _manifest(plan: _Plan, train_markers: list, test_markers: list) -> dict:
    return {
        "key": plan.key,
        "format_version": FEATURE_FORMAT_VERSION,
        "stft": plan.stft.as_dict(),
        "n_freq": plan.stft.n_freq,
        "data": {"corpus": plan.data.corpus, "root": str(plan.root), "is_wav": plan.data.is_wav,
                 "excerpt_seconds": plan.data.excerpt_seconds},
        "train": [{"index": i, **marker} for i, marker in enumerate(train_markers)],
        "test": [{"index": i, **marker} for i, marker in enumerate(test_markers)],
        "n_train_frames": int(sum(marker["n_frames"] for marker in train_markers)),
        "created": {"time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "versions": backend.versions("scipy", "soundfile", "musdb", "stempeg")},
    }


def _is_complete(folder: Path, key: str, log) -> bool:
    """Whether the cache is finished and intact; a damaged one loses its manifest, to be repaired."""
    manifest = _read_json(folder / MANIFEST) if (folder / MANIFEST).is_file() else None
    if not manifest or manifest.get("key") != key or manifest.get("format_version") != FEATURE_FORMAT_VERSION:
        return False
    damaged = _damaged_file(folder, manifest)
    if damaged is None:
        try:
            Scaler.load(folder / SCALER)
        except DataError as exc:
            damaged = str(exc).split(": ")[0] if str(exc) else SCALER
    if damaged is None:
        return True
    log(f"repairing the feature cache {folder}: {damaged}; its damaged tracks are computed again")
    (folder / MANIFEST).unlink()
    return False


def prepare_cache(config: dict, cache_root, *, musdb_root=None, progress: bool = True, log=print) -> Path:
    """Compute (or reuse, or finish) the feature cache of ``config``.

    Args:
        config: the configuration (``stft`` and ``data`` sections).
        cache_root: folder holding one sub-folder per cache key.
        musdb_root: dataset root, overriding ``config["data"]["root"]``
            (then $MUSDB_PATH).
        progress: show a progress bar over the tracks.
        log: callable taking one line per finished track (None: silent).

    Returns:
        The keyed folder ``cache_root/<key>``, complete. A finished cache is
        reused as it is (no audio is read) once the headers of its files
        check out; a damaged one is repaired (its damaged units redone).

    Raises:
        ConfigError, DataError: bad settings or data, each naming the
            setting, file or track and what to do.
    """
    from tqdm.auto import tqdm

    log = log or (lambda line: None)
    plan = _plan(config, musdb_root)
    folder = Path(cache_root) / plan.key
    if _is_complete(folder, plan.key, log):
        log(f"feature cache {folder} is up to date")
        return folder
    # Everything that can fail without reading audio, before any is read.
    previews = _check_previews(plan)
    train_refs, test_refs = _musdb_tracks(plan, "train"), _musdb_tracks(plan, "test")
    _check_test_lengths(plan, test_refs, previews)
    needed = _feature_bytes(plan, train_refs, test_refs) - preflight.bytes_under(folder)
    preflight.check_output_folder(folder, needed, "the features")
    created = make_folder(folder)
    try:
        _remove_temporaries(folder)
        done, scaler = _resume_point(plan, folder)
        if done:
            log(f"resuming the feature cache {folder}: {done} of {len(train_refs)} training tracks already done")
        with tqdm(total=len(train_refs) + len(test_refs), initial=done, disable=not progress, unit="track",
                  desc="prepare") as bar:
            _prepare_training(plan, folder, train_refs, done, scaler, bar, log)
            _prepare_tests(plan, folder, test_refs, previews, bar, log)
        return _finish(plan, folder, train_refs, test_refs, log)
    except BaseException:
        # finished tracks stay for the next run; folders left empty go
        remove_empty_folders([folder / "train", folder / "test", *created])
        raise


def _prepare_training(plan: _Plan, folder: Path, refs: list, done: int, scaler: Scaler, bar, log) -> None:
    """Training units ``done`` onwards, in order (the Scaler's pass is sequential), then ``scaler.npz``."""
    for index in range(done, len(refs)):
        marker = _prepare_train_track(plan, folder, index, refs[index], scaler, log)
        log(f"train {index + 1}/{len(refs)} {marker['name']}: {marker['n_frames']} frames")
        bar.update(1)
    scaler.save(folder / SCALER)


def _prepare_tests(plan: _Plan, folder: Path, refs: list, previews: dict, bar, log) -> None:
    """Every test unit not finished yet (they are independent)."""
    for index, ref in enumerate(refs):
        if _complete_marker(folder, "test", index, ref.name, plan.stft.n_freq) is None:
            marker = _prepare_test_track(plan, folder, index, ref, previews)
            log(f"test {index + 1}/{len(refs)} {marker['name']}: excerpt {marker['start_s']:g}-"
                f"{marker['end_s']:g} s ({marker['source']}), {marker['n_frames']} frames")
        bar.update(1)


def _finish(plan: _Plan, folder: Path, train_refs: list, test_refs: list, log) -> Path:
    """Write the cut list, then the manifest that marks the cache complete."""
    n_freq = plan.stft.n_freq
    train = [_complete_marker(folder, "train", i, ref.name, n_freq) for i, ref in enumerate(train_refs)]
    test = [_complete_marker(folder, "test", i, ref.name, n_freq) for i, ref in enumerate(test_refs)]
    excerpt_module.write_cutlist(folder / CUTLIST, [
        excerpt_module.Excerpt(m["name"], m["start_s"], m["end_s"], m["source"]) for m in test])
    write_json(folder / MANIFEST, _manifest(plan, train, test))
    log(f"feature cache {folder} is complete: {len(train)} training tracks "
        f"({sum(m['n_frames'] for m in train)} frames), {len(test)} test excerpts")
    return folder


# --- reading --------------------------------------------------------------------------------

@dataclasses.dataclass
class Segment:
    """T adjacent test frames of one excerpt, the NCA's unit (docs/method.md#nca, docs/method.md#protocol).

    Attributes:
        track: the test track's name.
        index: the segment's position among all segments of the cache (in
            track order, then time), for naming and sharding work units.
        start_frame: first frame within the track's excerpt.
        mixture: ``(F, T)`` float32 scaled mixture magnitudes, frames as columns.
        vocals: ``(F, T)`` float32 scaled vocals magnitudes, frames as columns.
    """

    track: str
    index: int
    start_frame: int
    mixture: numpy.ndarray
    vocals: numpy.ndarray


class FeatureCache:
    """A finished feature cache, read-only (see :func:`open_cache`).

    Attributes:
        path: the keyed folder.
        key: the cache key.
        manifest: the parsed ``manifest.json``.
        settings: the :class:`~nca_np.features.StftSettings` of the features.
        n_freq: F.
        scaler: the training mixtures' per-band :class:`~nca_np.features.Scaler`.
        cutlist_path: the test excerpts' ``cutlist.csv``.
    """

    def __init__(self, path: Path, manifest: dict, scaler: Scaler):
        self.path = path
        self.manifest = manifest
        self.key = manifest["key"]
        self.settings = StftSettings(**manifest["stft"])
        self.n_freq = self.settings.n_freq
        self.scaler = scaler
        self.cutlist_path = path / CUTLIST

    @property
    def scale(self) -> numpy.ndarray:
        """``(F,)`` float32 ``1/std``: the factor :meth:`Scaler.transform` applies."""
        return (1.0 / self.scaler.std).astype(numpy.float32)

    def _arrays(self, subset: str, entry: dict, name: str) -> numpy.ndarray:
        path = _unit_files(_unit_stem(self.path, subset, entry["index"]))[name]
        return numpy.load(path, mmap_mode="r")

    def test_magnitudes(self, index: int, name: str = "mixture") -> numpy.ndarray:
        """``(n_frames, F)`` float32 unscaled magnitudes of test excerpt
        ``index`` ("mixture" or "vocals"), memory-mapped from disk."""
        return self._arrays("test", self.manifest["test"][index], name)

    def train_arrays(self) -> tuple[list, list]:
        """``(n_frames_i, F)`` float32 mixture and vocals rows, one per training track, unscaled,
        read from disk as they are sliced (:class:`~nca_np.frames.NpyRows`)."""
        entries = self.manifest["train"]

        def rows(entry, name):
            return NpyRows(_unit_files(_unit_stem(self.path, "train", entry["index"]))[name])
        return [rows(e, "mixture") for e in entries], [rows(e, "vocals") for e in entries]

    def train_frames(self, *, module=None, device_budget_bytes: int = 0, storage_dtype: str = "float16",
                     block_frames: int = DEFAULT_BLOCK_FRAMES, blocks_in_memory: int = DEFAULT_BLOCKS_IN_MEMORY):
        """A frame source over all training frames, scaled (see :mod:`nca_np.frames`).

        Args:
            module: array module of the batches (None: host NumPy).
            device_budget_bytes: device memory the frames may take; when they
                fit (at ``storage_dtype``) they are held on the device.
            storage_dtype: "float16" or "float32" for device-held frames.
            block_frames, blocks_in_memory: the chunked shuffle's settings.
        """
        mixture, vocals = self.train_arrays()
        return choose_frame_source(mixture, vocals, scale=self.scale, module=module,
                                   device_budget_bytes=device_budget_bytes, storage_dtype=storage_dtype,
                                   block_frames=block_frames, blocks_in_memory=blocks_in_memory)

    def excerpts(self) -> list:
        """The test excerpts (:class:`~nca_np.data.excerpts.Excerpt`), in track order."""
        return excerpt_module.read_cutlist(self.cutlist_path)

    def _segment_starts(self, n_frames_per_segment: int) -> list[tuple[dict, int]]:
        length = n_frames_per_segment
        if isinstance(length, bool) or not isinstance(length, (int, numpy.integer)) or length < 1:
            raise ConfigError(f"nca.segment_frames must be a positive number of frames, got {length!r}")
        length = int(length)
        return [(entry, start)
                for entry in self.manifest["test"]
                for start in range(0, entry["n_frames"] - length + 1, length)]

    def n_segments(self, n_frames_per_segment: int) -> int:
        """How many segments of T frames the test excerpts hold."""
        return len(self._segment_starts(n_frames_per_segment))

    def segment_positions(self, n_frames_per_segment: int) -> list[tuple[str, int, int]]:
        """``(track, index, start_frame)`` of every segment, as :meth:`segments` numbers them; reads no frames."""
        return [(entry["name"], index, start)
                for index, (entry, start) in enumerate(self._segment_starts(n_frames_per_segment))]

    def segments(self, n_frames_per_segment: int, *, indices=None, log=print) -> list[Segment]:
        """Consecutive, non-overlapping segments of T frames inside each test excerpt.

        Segments follow the track order, then time; frames after the last
        whole segment of an excerpt are left out, and an excerpt shorter than
        T gives none (logged).

        Args:
            n_frames_per_segment: T (``nca.segment_frames``).
            indices: the segment indices to load (e.g. one shard); None: all.
            log: callable for the line about short excerpts (None: silent).

        Returns:
            :class:`Segment` objects with ``(F, T)`` float32 scaled frames as columns.

        Raises:
            DataError: T is longer than every excerpt.
        """
        starts = self._segment_starts(n_frames_per_segment)
        short = [e["name"] for e in self.manifest["test"] if e["n_frames"] < n_frames_per_segment]
        if not starts:
            longest = max(entry["n_frames"] for entry in self.manifest["test"])
            raise DataError(f"segments of {n_frames_per_segment} frames do not fit in any test excerpt "
                            f"(the longest has {longest} frames): lower nca.segment_frames")
        if short and log:
            log(f"{len(short)} test excerpt(s) shorter than {n_frames_per_segment} frames give no segment: "
                f"{', '.join(short)}")
        wanted = range(len(starts)) if indices is None else [int(i) for i in indices]
        outside = [i for i in wanted if not 0 <= i < len(starts)]
        if outside:
            raise ValueError(f"segment index {outside[0]} is outside 0..{len(starts) - 1}")
        return [self._segment(index, *starts[index], n_frames_per_segment) for index in wanted]

    def _segment(self, index: int, entry: dict, start: int, length: int) -> Segment:
        def scaled_columns(name):
            rows = numpy.asarray(self._arrays("test", entry, name)[start : start + length], dtype=numpy.float32)
            return numpy.ascontiguousarray(self.scaler.transform(rows, frames_as="rows").T)

        return Segment(entry["name"], index, start, scaled_columns("mixture"), scaled_columns("vocals"))


#: What to do about a damaged cache: preparing again repairs it in place.
REPAIR_HINT = "run `nca-np prepare` again: it recomputes the damaged tracks and keeps the rest"


def _damaged_file(path: Path, manifest: dict) -> str | None:
    """The first feature file of the cache at ``path`` that is missing or
    not what ``manifest`` says, and how (None: every file is intact)."""
    n_freq = manifest["n_freq"]
    for subset in ("train", "test"):
        for entry in manifest[subset]:
            files = _unit_files(_unit_stem(path, subset, entry["index"]))
            for name in ("mixture", "vocals"):
                found = _npy_shape(files[name])
                expected = ((entry["n_frames"], n_freq), numpy.dtype(numpy.float32))
                if found != expected:
                    what = "is missing or unreadable" if found is None else f"holds {found[0]} {found[1]}"
                    return f"feature cache file {files[name]} {what}, expected {expected[0]} float32"
    return None


def _check_files(path: Path, manifest: dict) -> None:
    damaged = _damaged_file(path, manifest)
    if damaged is not None:
        raise DataError(f"{damaged}: the cache is damaged; {REPAIR_HINT}")


def open_cache(path) -> FeatureCache:
    """Open a finished feature cache (a folder written by :func:`prepare_cache`).

    Imports neither musdb nor soundfile and needs no dataset.

    Raises:
        DataError: missing or unfinished cache, an older format, or missing
            or damaged files; saying to run the prepare stage.
    """
    path = Path(path)
    manifest_path = path / MANIFEST
    if not path.is_dir():
        raise DataError(f"no feature cache at {path}: {PREPARE_HINT}")
    if not manifest_path.is_file():
        raise DataError(f"feature cache {path} is incomplete (no {MANIFEST}): {PREPARE_HINT}")
    manifest = _read_json(manifest_path)
    if not manifest or "key" not in manifest:
        raise DataError(f"{manifest_path} is not a readable manifest: delete {path} and {PREPARE_HINT}")
    if manifest.get("format_version") != FEATURE_FORMAT_VERSION:
        raise DataError(f"feature cache {path} has format {manifest.get('format_version')}, this version reads "
                        f"format {FEATURE_FORMAT_VERSION}: {PREPARE_HINT} again")
    _check_files(path, manifest)
    scaler = Scaler.load(path / SCALER)
    if scaler.n_freq != manifest["n_freq"]:
        raise DataError(f"{path / SCALER} has {scaler.n_freq} bands, the features {manifest['n_freq']}: "
                        f"delete {path} and {PREPARE_HINT}")
    return FeatureCache(path, manifest, scaler)


def find_cache(config: dict, cache_root, *, current_key=None) -> Path:
    """The finished cache under ``cache_root`` made with ``config``'s settings.

    For machines without the dataset (where :func:`cache_key` cannot be
    computed): matches the STFT settings, corpus, ``is_wav`` and excerpt
    length recorded in each manifest.

    Args:
        current_key: called when several caches match (after the data
            changed): the key of the data as it is now, or None when the
            data is not on this machine; that cache is taken.

    Raises:
        DataError: no matching cache, or several that ``current_key`` does
            not settle (name them: remove the stale ones or open one by path).
    """
    stft, data = _settings(config)
    wanted = {"stft": stft.as_dict(), "corpus": data.corpus, "is_wav": data.is_wav,
              "excerpt_seconds": data.excerpt_seconds}
    matches = []
    for manifest_path in sorted(Path(cache_root).glob(f"*/{MANIFEST}")):
        manifest = _read_json(manifest_path) or {}
        recorded = manifest.get("data", {})
        found = {"stft": manifest.get("stft"), "corpus": recorded.get("corpus"), "is_wav": recorded.get("is_wav"),
                 "excerpt_seconds": recorded.get("excerpt_seconds")}
        if manifest.get("format_version") == FEATURE_FORMAT_VERSION and found == wanted:
            matches.append(manifest_path.parent)
    if not matches:
        raise DataError(f"no feature cache under {cache_root} matches this configuration: {PREPARE_HINT}")
    if len(matches) > 1 and current_key is not None:
        key = current_key()
        matches = [match for match in matches if match.name == key] or matches
    if len(matches) > 1:
        raise DataError(f"{len(matches)} feature caches under {cache_root} match this configuration "
                        f"({', '.join(m.name for m in matches)}): remove the stale ones")
    return matches[0]
