"""The evaluate stage: BSS Eval v4 of every trained run on the test excerpts (docs/method.md#separation).

Each unit of work is one (model kind, run, test track): the run separates
the track's test excerpt — the same samples ``prepare`` took the features
of — as ``nca-np separate`` would (:class:`nca_np.separate.Separator`), and
``museval`` scores the vocals and the accompaniment (mixture minus vocals)
against the references: musdb's vocals and accompaniment targets, at the
files' channel count. The models are mono, so their estimate is put on
every channel, as a mono system's output is scored in SiSEC. The scores
come from ``museval.evaluate`` with the settings of ``museval.eval_mus_track``
(BSS Eval v4, one-second windows and hops, vocals and accompaniment
evaluated together); ``museval.TrackStore`` keeps the frame values and its
``frames_agg`` takes their median, infinite frames left out, as SiSEC
reports them. A unit ends by writing::

    evaluation/<profile>-<train hash>/<kind>/run_NN/tNNNNN.json

atomically, so a rerun skips finished units; ``--shard i/n`` takes every
n-th unit of the sorted list. The stage needs the audio: on a machine with
only the feature cache it stops with one line (:class:`EvaluationUnavailable`),
``reproduce`` goes on without it and the report leaves the table out with a
note.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy

from . import backend
from .atomic import write_json
from .audio import AUDIO_INSTALL, audio_module
from .data import musdb_io
from .errors import DataError
from .features import stft_magnitude
from .separate import Separator
from .workspace import (Shard, code_version, open_prepared_cache, record_time, require_trained, run_seed,
                        train_hash, training_units, unit_bar)

TARGETS = ("vocals", "accompaniment")
METRICS = ("SDR", "SIR", "SAR", "ISR")
#: BSS Eval window and hop in seconds (museval.eval_mus_track's defaults).
WINDOW_SECONDS = 1.0
MODE = "v4"
#: The test tracks the units cover, written by the stage for the report.
TRACKS = "tracks.json"


class EvaluationUnavailable(DataError):
    """This machine cannot evaluate: no test audio, no museval or no ffmpeg."""


# ---------------------------------------------------------------- units


def evaluation_dir(ws) -> Path:
    """``<workdir>/evaluation/<profile>-<train hash>``: scores belong to the trained runs."""
    return ws.root / "evaluation" / f"{ws.profile}-{train_hash(ws.config)}"


def evaluation_units(config: dict, test_entries: list, kinds=None) -> list[tuple[str, int, dict]]:
    """Every (kind, run, test entry), sorted by kind (profile order), run, track."""
    return [(kind, run, entry) for kind, run in training_units(config, kinds) for entry in test_entries]


def unit_path(ws, kind: str, run: int, entry: dict) -> Path:
    return evaluation_dir(ws) / kind / f"run_{run:02d}" / f"t{entry['index']:05d}.json"


# ---------------------------------------------------------------- scores


def upmix(signal: numpy.ndarray, channels: int) -> numpy.ndarray:
    """A mono ``(n,)`` estimate on every one of ``channels``: ``(n, channels)``."""
    return numpy.repeat(numpy.asarray(signal)[:, None], channels, axis=1)


def score_excerpt(references: dict, estimates: dict, sample_rate: int, track_name: str = "") -> dict:
    """BSS Eval v4 of vocals and accompaniment estimates, as SiSEC scores them.

    Args:
        references: {"vocals", "accompaniment"}: ``(n, channels)`` true signals.
        estimates: the same names: ``(n,)`` mono estimates (put on every
            channel) or ``(n, channels)``.
        sample_rate: Hz; windows and hops are :data:`WINDOW_SECONDS` long.

    Returns:
        ``{target: {"median": {metric: float}, "frames": {metric: [float]}}}``
        for ``target`` in :data:`TARGETS`, ``metric`` in :data:`METRICS`:
        museval's frame values (infinite ones as NaN, quantised to 1e-5 as
        museval stores them) and their median over the finite ones.
    """
    museval = audio_module("museval")

    channels = references[TARGETS[0]].shape[1]
    ests = [estimates[t] if numpy.ndim(estimates[t]) == 2 else upmix(estimates[t], channels) for t in TARGETS]
    window = int(WINDOW_SECONDS * sample_rate)
    sdr, isr, sir, sar = museval.evaluate([references[t] for t in TARGETS], ests, win=window, hop=window,
                                          mode=MODE)
    store = museval.TrackStore(win=WINDOW_SECONDS, hop=WINDOW_SECONDS, track_name=track_name)
    for index, target in enumerate(TARGETS):
        store.add_target(target_name=target, values={"SDR": sdr[index].tolist(), "SIR": sir[index].tolist(),
                                                     "SAR": sar[index].tolist(), "ISR": isr[index].tolist()})
    return {target["name"]: _target_scores(store, target) for target in store.scores["targets"]}


def _target_scores(store, target: dict) -> dict:
    frames = {metric: [float(frame["metrics"][metric]) for frame in target["frames"]] for metric in METRICS}
    medians = {metric: float(store.frames_agg(values)) if numpy.isfinite(values).any() else float("nan")
               for metric, values in frames.items()}
    return {"median": medians, "frames": frames}


# ---------------------------------------------------------------- audio


def _require_museval() -> None:
    try:
        musdb_io.require_ffmpeg()
        audio_module("museval")  # imports musdb and soundfile; musdb needs ffmpeg
        audio_module("soundfile")
    except (DataError, ImportError, RuntimeError) as exc:
        raise EvaluationUnavailable(f"evaluate scores with museval, which cannot be used here ({exc}); "
                                    f"install the audio extra ({AUDIO_INSTALL}) and ffmpeg") from None


def _test_tracks(cache, musdb_root) -> dict:
    """The test tracks of the prepared data, by name, from ``musdb_root`` or
    the root ``prepare`` read."""
    recorded = cache.manifest["data"]
    root = Path(musdb_root if musdb_root else recorded["root"]).expanduser()
    if not (root / "test").is_dir():
        raise EvaluationUnavailable(
            f"evaluate reads the test tracks' audio, and {root / 'test'} is not on this machine (the feature "
            "cache holds magnitudes only): run `nca-np evaluate` where the dataset is, or pass --musdb-root")
    _require_museval()
    refs = {ref.name: ref for ref in musdb_io.list_tracks(root, "test", is_wav=recorded["is_wav"])}
    missing = [entry["name"] for entry in cache.manifest["test"] if entry["name"] not in refs]
    if missing:
        raise DataError(f"test track {missing[0]!r} of the feature cache is not in {root / 'test'}: "
                        "pass the --musdb-root that `nca-np prepare` read")
    return refs


def _excerpt(cache, entry: dict, ref):
    """The test excerpt's audio, checked against the cached features."""
    start = entry["start_sample"]
    excerpt = musdb_io.load_excerpt(ref, start, start + entry["n_samples"])
    cached = numpy.asarray(cache.test_magnitudes(entry["index"]))
    found = stft_magnitude(excerpt.mixture, cache.settings)
    if found.shape != cached.shape or not numpy.allclose(found, cached, rtol=1e-5, atol=1e-6 * cached.max()):
        raise DataError(f"the audio of test track {entry['name']!r} in {ref.path} is not what `nca-np prepare` "
                        "read (its features differ): pass the --musdb-root it read, or prepare again")
    return excerpt


# ---------------------------------------------------------------- the stage


def evaluate_stage(ws, *, musdb_root=None, shard=None, kinds=None, progress=True, log=print) -> None:
    """Separate and score every (kind, run, test track) unit of this shard not done yet.

    Raises:
        EvaluationUnavailable: the test audio, museval or ffmpeg is missing here.
        UserError: runs not trained, audio that differs from the prepared features.
    """
    shard = shard or Shard()
    config = ws.config
    cache = open_prepared_cache(ws)
    units = shard.select(evaluation_units(config, cache.manifest["test"], kinds))
    todo = [unit for unit in units if not unit_path(ws, *unit).exists()]
    log(f"evaluate: {len(units)} (model, run, track) units in this shard, {len(units) - len(todo)} already done")
    if not todo:
        return
    require_trained(ws, {(kind, run) for kind, run, _ in todo}, "evaluate")
    refs = _test_tracks(cache, musdb_root)
    _record_tracks(ws, cache)
    record = {"cache_key": cache.key, "code_version": code_version(), "window_seconds": WINDOW_SECONDS,
              "mode": MODE, "versions": backend.versions("museval", "scipy", "soundfile")}
    module = backend.xp()
    started = time.perf_counter()
    excerpt = None
    try:
        # by track, so each excerpt is read once
        for kind, run, entry in unit_bar(sorted(todo, key=lambda u: u[2]["index"]), "evaluate", progress):
            if excerpt is None or excerpt.name != entry["name"]:
                excerpt = _excerpt(cache, entry, refs[entry["name"]])
            unit = evaluate_unit(ws, kind, run, entry, excerpt, module=module, record=record)
            log(_unit_line(unit))
    finally:
        record_time(evaluation_dir(ws), "evaluate", shard, time.perf_counter() - started)


def _record_tracks(ws, cache) -> None:
    """``tracks.json``: the test tracks the units cover, for the report (which reads no cache)."""
    tracks = {"cache_key": cache.key,
              "tracks": [{key: entry[key] for key in ("index", "name")} for entry in cache.manifest["test"]]}
    path = evaluation_dir(ws) / TRACKS
    if not path.exists() or json.loads(path.read_text()) != tracks:
        write_json(path, tracks)


def evaluate_unit(ws, kind: str, run: int, entry: dict, excerpt, *, module=None, record=None) -> dict:
    """Separate one excerpt with one run, score it, write the unit file; returns the unit."""
    started = time.perf_counter()
    separator = Separator.from_run(ws.run_dir(kind, run), module=module)
    vocals, accompaniment = separator.separate(excerpt.mixture, excerpt.sample_rate)
    scores = score_excerpt(excerpt.references, {"vocals": vocals, "accompaniment": accompaniment},
                           excerpt.sample_rate, entry["name"])
    unit = {**(record or {}), "kind": kind, "run": run, "model_seed": run_seed(ws.config, run),
            "track": entry["name"], "track_index": entry["index"],
            "excerpt": {key: entry[key] for key in ("start_s", "end_s", "source", "start_sample", "n_samples")},
            "sample_rate": excerpt.sample_rate, "channels": int(excerpt.references["vocals"].shape[1]),
            "scores": {target: scores[target]["median"] for target in TARGETS},
            "frames": {target: scores[target]["frames"] for target in TARGETS},
            "seconds": time.perf_counter() - started}
    write_json(unit_path(ws, kind, run, entry), unit)
    return unit


def _unit_line(unit: dict) -> str:
    vocals, accompaniment = unit["scores"]["vocals"], unit["scores"]["accompaniment"]
    return (f"evaluate {unit['kind']} run {unit['run']} {unit['track']}: vocals SDR {vocals['SDR']:.2f} dB "
            f"(SIR {vocals['SIR']:.2f}, SAR {vocals['SAR']:.2f}), accompaniment SDR {accompaniment['SDR']:.2f} dB")


# ---------------------------------------------------------------- for the report


def report_inputs(ws) -> dict:
    """What the report shows of the evaluation: ``{"units": [...], "note": str | None}``.

    Reads only the evaluation folder (no cache, no audio). The units are
    given only when every expected unit exists and all were made from one
    feature cache by one code version; otherwise ``units`` is empty and
    ``note`` says why the table is left out.
    """
    hint = ("`nca-np evaluate` separates the test excerpts and scores them; it reads their audio, so run it "
            "where the dataset is")
    tracks_path = evaluation_dir(ws) / TRACKS
    if not tracks_path.exists():
        return {"units": [], "note": f"no evaluation results for these runs. {hint}."}
    tracks = json.loads(tracks_path.read_text())
    paths = [unit_path(ws, *unit) for unit in evaluation_units(ws.config, tracks["tracks"])]
    missing = sum(1 for path in paths if not path.exists())
    if missing:
        return {"units": [], "note": f"{missing} of {len(paths)} evaluation units are missing. {hint} "
                                     "(every shard)."}
    units = [json.loads(path.read_text()) for path in paths]
    if {unit["cache_key"] for unit in units} != {tracks["cache_key"]}:
        return {"units": [], "note": f"the evaluation results in {evaluation_dir(ws)} were made from another "
                                     "feature cache; delete them and run `nca-np evaluate` again."}
    versions = sorted({unit["code_version"] for unit in units})
    if len(versions) > 1:
        return {"units": [], "note": f"the evaluation results mix code versions ({', '.join(versions)}); "
                                     f"delete {evaluation_dir(ws)} and run `nca-np evaluate` again."}
    return {"units": units, "note": None}
