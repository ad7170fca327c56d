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

atomically, so a rerun skips finished units (a unit file found damaged is
named and computed again); ``--shard i/n`` takes every n-th unit of the
sorted list. A unit that cannot be scored — a run that training recorded as
dead (:func:`nca_np.train.run_health`), an all-zero estimate, museval
failing on the excerpt — is written with ``failed`` (the reason) in place of
its scores: it counts as done, and the report leaves it out of the table
and counts it in its note. The stage needs the audio: on a machine with
only the feature cache it stops with one line (:class:`EvaluationUnavailable`),
``reproduce`` goes on without it and the report leaves the table out with a
note.

Beside the models' mono estimates (the paper's systems, scored on every
channel) each model unit also scores the stereo estimate: the mask of the
mono estimate applied to every channel of the mixture
(:meth:`nca_np.separate.Separator.separate` on the stereo excerpt). With
``--wiener-iterations N`` (N > 0) the stage scores the stereo estimates
refined by N iterations of the multichannel Wiener filter instead, in units
of their own (``wiener-N/<kind>/run_NN/tNNNNN.json``), so one evaluation
folder holds both. Two baselines give the scores a scale
(:mod:`nca_np.baselines`, docs/method.md#separating-a-song), one unit per
(baseline, test track), resumable and damage-checked like the models'::

    evaluation/<profile>-<train hash>/baselines/<name>/tNNNNN.json

the mixture as the estimate, and the oracle ideal ratio mask from the true
stems on the models' STFT, per channel (``scores``) and on the channel
average, upmixed as the models' mono estimates are (``mono``): their
difference is what mono output costs a mask-based separator.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy

from . import backend, baselines, preflight
from .atomic import write_json
from .audio import AUDIO_INSTALL, audio_module
from .data import musdb_io
from .errors import DataError, UserError
from .features import stft_magnitude, to_mono
from .separate import Separator
from .train import recorded_health
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


def unit_path(ws, kind: str, run: int, entry: dict, wiener_iterations: int = 0) -> Path:
    """A model unit's file; with Wiener filtering, under ``wiener-N/``."""
    folder = evaluation_dir(ws) / (f"wiener-{wiener_iterations}" if wiener_iterations else "")
    return folder / kind / f"run_{run:02d}" / f"t{entry['index']:05d}.json"


def baseline_units(test_entries: list) -> list[tuple[str, dict]]:
    """Every (baseline, test entry), by baseline (:data:`nca_np.baselines.NAMES` order), then track."""
    return [(name, entry) for name in baselines.NAMES for entry in test_entries]


def baseline_path(ws, name: str, entry: dict) -> Path:
    return evaluation_dir(ws) / "baselines" / name / f"t{entry['index']:05d}.json"


def wiener_settings(ws) -> list[int]:
    """The Wiener iteration counts evaluated so far (folders ``wiener-N``), sorted."""
    found = [p.name[len("wiener-"):] for p in evaluation_dir(ws).glob("wiener-*") if p.is_dir()]
    return sorted(int(n) for n in found if n.isdigit() and int(n) > 0)


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
    museval = _museval()
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


def _museval():
    """``museval``, made to work with NumPy 2.

    museval 0.4.1 catches ``np.linalg.linalg.LinAlgError`` around its
    distortion filters' solve; NumPy 2 removed ``numpy.linalg.linalg``, so
    evaluating that ``except`` clause raised AttributeError in place of
    whatever was raised (a singular matrix, Ctrl-C). The alias restores
    museval's own handling (least squares for a singular matrix) and lets
    an interruption through.
    """
    import types

    museval = audio_module("museval")
    if not hasattr(numpy.linalg, "linalg"):
        numpy.linalg.linalg = types.SimpleNamespace(LinAlgError=numpy.linalg.LinAlgError)
    return museval


class UnitFailed(Exception):
    """A unit that cannot be scored: recorded as failed, with its reason."""


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
    """The test tracks of the prepared data, by name, from the dataset root
    ``musdb_root`` (see :func:`_audio_root`)."""
    recorded = cache.manifest["data"]
    root = Path(musdb_root).expanduser()
    if not (root / "test").is_dir():
        raise EvaluationUnavailable(
            f"evaluate reads the test tracks' audio, and {root / 'test'} is not on this machine (the feature "
            "cache holds magnitudes only): run `nca-np evaluate` where the dataset is, or pass --musdb-root")
    _require_museval()
    layout = "MUSDB18-HQ (.wav)" if recorded["is_wav"] else "MUSDB18 (.stem.mp4)"
    advice = (f"the features were prepared from the {layout} release, which evaluate reads again: pass the "
              "--musdb-root of that release (the one `nca-np prepare` read)")
    refs = {ref.name: ref for ref in musdb_io.list_tracks(root, "test", is_wav=recorded["is_wav"],
                                                          layout_advice=advice)}
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


def evaluate_stage(ws, *, musdb_root=None, shard=None, kinds=None, wiener_iterations: int = 0, progress=True,
                   log=print) -> None:
    """Separate and score every (kind, run, test track) unit and every
    (baseline, test track) unit of this shard not done yet.

    ``wiener_iterations`` N > 0 scores the models' stereo estimates refined
    by N Wiener iterations, in units of their own (the baselines are the
    same either way). A unit file found damaged is named and computed
    again; ``tracks.json`` is written again when missing or damaged. A unit
    that cannot be scored (a dead run, museval failing on its excerpt) is
    written as failed, with the reason (``failed``), and counts as done.

    Raises:
        EvaluationUnavailable: the test audio, museval or ffmpeg is missing here.
        UserError: runs not trained, audio that differs from the prepared
            features, a negative ``wiener_iterations``.
    """
    if wiener_iterations < 0:
        raise UserError(f"--wiener-iterations must be 0 or more, got {wiener_iterations}")
    shard = shard or Shard()
    cache = open_prepared_cache(ws)
    units = shard.select(evaluation_units(ws.config, cache.manifest["test"], kinds))
    references = shard.select(baseline_units(cache.manifest["test"]))
    if evaluation_dir(ws).is_dir():
        _record_tracks(ws, cache, log)
    preflight.discard_damaged(
        [(unit_path(ws, *unit, wiener_iterations), unit_damage, ()) for unit in units]
        + [(baseline_path(ws, *unit), baseline_damage, ()) for unit in references], log=log)
    todo = [unit for unit in units if not unit_path(ws, *unit, wiener_iterations).exists()]
    todo_references = [unit for unit in references if not baseline_path(ws, *unit).exists()]
    log(f"evaluate: {len(units)} (model, run, track) units{_wiener_text(wiener_iterations)} in this shard, "
        f"{len(units) - len(todo)} already done")
    log(f"evaluate: {len(references)} (baseline, track) units in this shard, "
        f"{len(references) - len(todo_references)} already done")
    if not todo and not todo_references:
        return
    if todo:
        require_trained(ws, {(kind, run) for kind, run, _ in todo}, "evaluate")
    refs = _test_tracks(cache, _audio_root(ws, cache, musdb_root))
    _record_tracks(ws, cache, log)
    started = time.perf_counter()
    try:
        _evaluate_units(ws, cache, refs, todo, todo_references, wiener_iterations, progress, log)
    finally:
        record_time(evaluation_dir(ws), "evaluate", shard, time.perf_counter() - started)


def _wiener_text(wiener_iterations: int) -> str:
    return f" (stereo, Wiener filter {wiener_iterations} iteration(s))" if wiener_iterations else ""


def _evaluate_units(ws, cache, refs, todo, todo_references, wiener_iterations, progress, log) -> None:
    """The units to do, track by track, so that each excerpt is read once."""
    record = {"cache_key": cache.key, "code_version": code_version(), "window_seconds": WINDOW_SECONDS,
              "mode": MODE, "versions": backend.versions("museval", "scipy", "soundfile")}
    module = backend.xp()
    work = [("model", unit) for unit in todo] + [("baseline", unit) for unit in todo_references]
    excerpt = None
    for group, unit in unit_bar(sorted(work, key=lambda w: w[1][-1]["index"]), "evaluate", progress):
        entry = unit[-1]
        if excerpt is None or excerpt.name != entry["name"]:
            excerpt = _excerpt(cache, entry, refs[entry["name"]])
        if group == "model":
            done = evaluate_unit(ws, *unit, excerpt, module=module, record=record,
                                 wiener_iterations=wiener_iterations)
        else:
            done = evaluate_baseline(ws, *unit, excerpt, cache.settings, record=record)
        log(_unit_line(done))


#: What every unit file holds, scored or failed.
UNIT_KEYS = ("kind", "run", "track", "cache_key", "code_version")
#: What every baseline unit file holds.
BASELINE_KEYS = ("baseline", "track", "cache_key", "code_version", "scores")


def _lacks_scores(record) -> bool:
    scores = record.get("scores") if isinstance(record, dict) else None
    return not isinstance(scores, dict) or any(not isinstance(scores.get(t), dict) for t in TARGETS)


def unit_damage(path) -> str | None:
    """Why an evaluation unit file cannot count as done (None: it can): not
    JSON, keys missing, or neither scores nor a failure recorded; a unit
    without Wiener filtering also needs its stereo scores."""
    reason = preflight.json_damage(path, UNIT_KEYS)
    if reason is not None:
        return reason
    unit = json.loads(Path(path).read_text(encoding="utf-8"))
    if "failed" in unit:
        return None
    if _lacks_scores(unit):
        return "lacks scores"
    if not unit.get("wiener_iterations") and _lacks_scores(unit.get("stereo")):
        return "lacks the stereo estimate's scores"
    return None


def baseline_damage(path) -> str | None:
    """Why a baseline unit file cannot count as done (None: it can)."""
    reason = preflight.json_damage(path, BASELINE_KEYS)
    if reason is not None:
        return reason
    unit = json.loads(Path(path).read_text(encoding="utf-8"))
    if _lacks_scores(unit):
        return "lacks scores"
    if unit["baseline"] == "oracle-irm" and _lacks_scores(unit.get("mono")):
        return "lacks the mono oracle's scores"
    return None


def _audio_root(ws, cache, musdb_root) -> Path:
    """Where the test audio is: ``--musdb-root`` when given; else the first
    of these that holds a test/ folder: the work folder's own synthetic
    corpus (a copied or moved work folder reads its copy, not the path
    recorded when it was prepared) or ``data.root``, ``$MUSDB_PATH``, the
    root ``prepare`` read."""
    import os

    if musdb_root:
        return Path(musdb_root).expanduser()
    data = ws.config["data"]
    candidates = [ws.root / "data" / "synthetic" if data["corpus"] == "synthetic" and not data["root"]
                  else Path(data["root"]) if data["root"] else None,
                  Path(os.environ["MUSDB_PATH"].strip()) if os.environ.get("MUSDB_PATH", "").strip() else None,
                  Path(cache.manifest["data"]["root"])]
    candidates = [path.expanduser() for path in candidates if path is not None]
    return next((path for path in candidates if (path / "test").is_dir()), candidates[0])


def _record_tracks(ws, cache, log=None) -> None:
    """``tracks.json``: the test tracks the units cover, for the report (which
    reads no cache); written again when missing, damaged or out of date."""
    tracks = {"cache_key": cache.key,
              "tracks": [{key: entry[key] for key in ("index", "name")} for entry in cache.manifest["test"]]}
    path = evaluation_dir(ws) / TRACKS
    damage = preflight.json_damage(path, ("cache_key", "tracks"))
    if damage is None and json.loads(path.read_text(encoding="utf-8")) == tracks:
        return
    if damage not in (None, "missing") and log:
        log(f"{path} is damaged ({damage}): written again")
    write_json(path, tracks)


def evaluate_unit(ws, kind: str, run: int, entry: dict, excerpt, *, module=None, record=None,
                  wiener_iterations: int = 0) -> dict:
    """Separate one excerpt with one run, score it, write the unit file; returns the unit.

    Without Wiener filtering ``scores`` and ``frames`` are the mono
    estimate's (put on every channel) and ``stereo`` holds the stereo
    estimate's; with it (``wiener_iterations`` > 0) they are the filtered
    stereo estimate's. A unit that cannot be scored is written with
    ``failed`` (the reason) in their place: a dead run (recorded by
    training, or an all-zero estimate of this excerpt), or museval failing.
    """
    started = time.perf_counter()
    unit = {**(record or {}), "kind": kind, "run": run, "model_seed": run_seed(ws.config, run),
            **_excerpt_record(entry, excerpt), "wiener_iterations": wiener_iterations,
            "estimate": "stereo" if wiener_iterations else "mono"}
    try:
        unit.update(_scores(ws, kind, run, entry, excerpt, module, wiener_iterations))
    except UnitFailed as exc:
        unit["failed"] = str(exc)
    unit["seconds"] = time.perf_counter() - started
    write_json(unit_path(ws, kind, run, entry, wiener_iterations), unit)
    return unit


def _excerpt_record(entry: dict, excerpt) -> dict:
    return {"track": entry["name"], "track_index": entry["index"],
            "excerpt": {key: entry[key] for key in ("start_s", "end_s", "source", "start_sample", "n_samples")},
            "sample_rate": excerpt.sample_rate, "channels": int(excerpt.references["vocals"].shape[1])}


def _stereo_mixture(excerpt) -> numpy.ndarray:
    """The excerpt's ``(n, channels)`` mixture as read."""
    if excerpt.channels is None:
        raise DataError(f"the excerpt of {excerpt.name!r} holds only its mono mixture")
    return numpy.asarray(excerpt.channels, dtype=numpy.float32)


def _scores(ws, kind: str, run: int, entry: dict, excerpt, module, wiener_iterations: int = 0) -> dict:
    """``{"scores", "frames"}`` of one run on one excerpt (and ``stereo``
    without Wiener filtering; see :func:`evaluate_unit`).

    Raises:
        UnitFailed: a dead run, or museval failing on this excerpt.
    """
    run_dir = ws.run_dir(kind, run)
    health = recorded_health(run_dir)
    if health is not None and health.get("dead"):
        raise UnitFailed(f"the run is dead ({health.get('reason')}): it separates nothing")
    separator = Separator.from_run(run_dir, module=module)
    stereo = separator.separate(_stereo_mixture(excerpt), excerpt.sample_rate, wiener_iterations=wiener_iterations)
    if wiener_iterations:
        return _scored(stereo, excerpt, entry)
    mono = separator.separate(excerpt.mixture, excerpt.sample_rate)
    return {**_scored(mono, excerpt, entry), "stereo": _scored(stereo, excerpt, entry)}


def _scored(estimate: tuple, excerpt, entry: dict) -> dict:
    """``{"scores", "frames"}`` of a ``(vocals, accompaniment)`` estimate.

    Raises:
        UnitFailed: an all-zero vocals estimate, or museval failing.
    """
    vocals, accompaniment = estimate
    if not numpy.any(vocals):
        raise UnitFailed("the run's vocals estimate of this excerpt is all zeros (a dead network): "
                         "BSS Eval cannot score silence")
    where = f"{entry['name']!r} {entry['start_s']:g}-{entry['end_s']:g} s"
    try:
        scores = score_excerpt(excerpt.references, {"vocals": vocals, "accompaniment": accompaniment},
                               excerpt.sample_rate, entry["name"])
    except (ValueError, ArithmeticError, AttributeError) as exc:  # numpy.linalg.LinAlgError is a ValueError
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise UnitFailed(f"museval failed on the excerpt {where}: {type(exc).__name__}: {text}") from exc
    return {"scores": {target: scores[target]["median"] for target in TARGETS},
            "frames": {target: scores[target]["frames"] for target in TARGETS}}


def evaluate_baseline(ws, name: str, entry: dict, excerpt, settings, *, record=None) -> dict:
    """Score one baseline on one excerpt, write its unit file; returns the unit.

    ``scores``/``frames``: the baseline on every channel of the mixture
    (:func:`nca_np.baselines.estimates`); the oracle also gets ``mono``:
    the oracle of the channel averages, upmixed as the models' mono
    estimates are. museval failing here is an error (a baseline has no
    dead network to blame).
    """
    started = time.perf_counter()
    unit = {**(record or {}), "baseline": name, **_excerpt_record(entry, excerpt)}
    mixture = _stereo_mixture(excerpt)
    try:
        unit.update(_scored(_pair(baselines.estimates(name, mixture, excerpt.references, settings)), excerpt, entry))
        if name == "oracle-irm":
            stems = {t: to_mono(excerpt.references[t]) for t in TARGETS}
            unit["mono"] = _scored(_pair(baselines.estimates(name, excerpt.mixture, stems, settings)), excerpt, entry)
    except UnitFailed as exc:
        raise DataError(f"baseline {name}: {exc}") from exc
    unit["seconds"] = time.perf_counter() - started
    write_json(baseline_path(ws, name, entry), unit)
    return unit


def _pair(estimates: dict) -> tuple:
    return estimates["vocals"], estimates["accompaniment"]


def _unit_line(unit: dict) -> str:
    if "baseline" in unit:
        where = f"evaluate baseline {unit['baseline']} {unit['track']}"
    else:
        where = f"evaluate {unit['kind']} run {unit['run']} {unit['track']}"
    if "failed" in unit:
        return f"warning: {where} failed: {unit['failed']}"
    vocals, accompaniment = unit["scores"]["vocals"], unit["scores"]["accompaniment"]
    line = (f"{where}: vocals SDR {vocals['SDR']:.2f} dB "
            f"(SIR {vocals['SIR']:.2f}, SAR {vocals['SAR']:.2f}), accompaniment SDR {accompaniment['SDR']:.2f} dB")
    other = unit.get("stereo") or unit.get("mono")
    if other:
        line += f"; {'stereo' if 'stereo' in unit else 'mono'} vocals SDR {other['scores']['vocals']['SDR']:.2f} dB"
    return line


# ---------------------------------------------------------------- for the report


def report_inputs(ws) -> dict:
    """What the report shows of the evaluation:
    ``{"units": [...], "failed": [...], "note": str | None}``.

    Reads only the evaluation folder (no cache, no audio) and never fails on
    what it finds there: a damaged ``tracks.json`` or unit file is named in
    the note and skipped. The scored units are given only when every
    expected unit (every model's and every baseline's) exists intact and all
    were made from one feature cache by one code version; otherwise
    ``units`` is empty and ``note`` says why the table is left out. Each
    unit of ``units`` is one row's score of one excerpt (:func:`row_units`):
    ``estimate`` ("mono" or "stereo"), ``wiener_iterations`` and either
    ``kind`` and ``run`` or ``baseline``. The units of a Wiener setting are
    added when all of them are there (else the note says which are missing).
    ``failed`` holds the units recorded as failed (a dead run, museval
    failing on an excerpt: ``kind``, ``run``, ``track``, ``failed``); they
    are left out of the table and counted in the note.
    """
    hint = ("`nca-np evaluate` separates the test excerpts and scores them; it reads their audio, so run it "
            "where the dataset is")
    tracks_path = evaluation_dir(ws) / TRACKS
    damage = preflight.json_damage(tracks_path, ("cache_key", "tracks"))
    if damage == "missing":
        return {"units": [], "failed": [], "note": f"no evaluation results for these runs. {hint}."}
    if damage is not None:
        return {"units": [], "failed": [], "note": f"{tracks_path} is damaged ({damage}); `nca-np evaluate` "
                                                   "writes it again."}
    tracks = json.loads(tracks_path.read_text(encoding="utf-8"))
    checks = ([(unit_path(ws, *unit), unit_damage) for unit in evaluation_units(ws.config, tracks["tracks"])]
              + [(baseline_path(ws, *unit), baseline_damage) for unit in baseline_units(tracks["tracks"])])
    problem = _incomplete(checks)
    if problem:
        return {"units": [], "failed": [], "note": f"{problem}. {hint} (every shard): it computes them again."}
    units = [json.loads(path.read_text(encoding="utf-8")) for path, _ in checks]
    versions = {str(unit["code_version"]) for unit in units}
    notes = []
    for iterations in wiener_settings(ws):
        paths = [(unit_path(ws, *unit, iterations), unit_damage)
                 for unit in evaluation_units(ws.config, tracks["tracks"])]
        problem = _incomplete(paths)
        filtered = [] if problem else [json.loads(path.read_text(encoding="utf-8")) for path, _ in paths]
        if not problem and ({u["cache_key"] for u in filtered} != {tracks["cache_key"]}
                            or {str(u["code_version"]) for u in filtered} != versions):
            problem = "they were made by another code version or from another feature cache"
        if problem:
            notes.append(f"the rows with {iterations} Wiener iteration(s) are left out: {problem} "
                         f"(`nca-np evaluate --wiener-iterations {iterations}` computes them; delete "
                         f"{evaluation_dir(ws) / f'wiener-{iterations}'} first when they are out of date)")
        else:
            units += filtered
    return _consistent(ws, tracks, units, notes)


def _incomplete(checks) -> str | None:
    """What is missing or damaged among ``(path, damage)`` pairs (None: nothing)."""
    missing = sum(1 for path, _ in checks if not path.exists())
    damaged = [(path, reason) for path, damage in checks if path.exists() and (reason := damage(path)) is not None]
    if not missing and not damaged:
        return None
    named = "; ".join(f"{path} is damaged ({reason})" for path, reason in damaged[:3])
    what = [f"{missing} of {len(checks)} evaluation units are missing"] if missing else []
    what += [f"{len(damaged)} of {len(checks)} are damaged ({named}{' …' if len(damaged) > 3 else ''})"
             if damaged else ""]
    return "; ".join(w for w in what if w)


def row_units(unit: dict) -> list[dict]:
    """The scores of one unit file as one unit per table row: a model unit
    without Wiener filtering gives its mono and its stereo estimate; the
    oracle baseline gives its stereo and its mono oracle."""
    first = {**{k: v for k, v in unit.items() if k not in ("stereo", "mono")},
             "estimate": unit.get("estimate") or ("stereo" if "baseline" in unit else "mono"),
             "wiener_iterations": int(unit.get("wiener_iterations") or 0)}
    return [first] + [{**first, **unit[name], "estimate": name} for name in ("stereo", "mono")
                      if isinstance(unit.get(name), dict)]


def _consistent(ws, tracks: dict, units: list, notes=()) -> dict:
    """:func:`report_inputs`' answer for intact units: refused when they mix
    caches or code versions, else the scored ones (one per row,
    :func:`row_units`) and the failed ones."""
    if {unit["cache_key"] for unit in units} != {tracks["cache_key"]}:
        return {"units": [], "failed": [], "note": f"the evaluation results in {evaluation_dir(ws)} were made "
                                                   "from another feature cache; delete them and run "
                                                   "`nca-np evaluate` again."}
    versions = sorted({str(unit["code_version"]) for unit in units})
    if len(versions) > 1:
        return {"units": [], "failed": [], "note": f"the evaluation results mix code versions "
                                                   f"({', '.join(versions)}); delete {evaluation_dir(ws)} and "
                                                   "run `nca-np evaluate` again."}
    failed = [{key: unit[key] for key in ("kind", "run", "track", "failed")} for unit in units if "failed" in unit]
    scored = [row for unit in units if "failed" not in unit for row in row_units(unit)]
    notes = list(notes)
    if failed:
        first = failed[0]
        models = sum(1 for unit in units if "baseline" not in unit)
        notes.insert(0, f"{len(failed)} of {models} evaluation units failed and are left out of the table "
                        f"(e.g. {first['kind']} run {first['run']} on {first['track']!r}: {first['failed']})")
    return {"units": scored, "failed": failed, "note": "; ".join(notes) + "." if notes else None}
