"""The experiment of MATH.md §6 as stages over units of work.

Data flows one way, through files under one working folder::

    synth     ► data/synthetic/                  (built-in corpus only)
    prepare   ► cache/<key>/                     features, scaler, cut list
    train     ► runs/<profile>-<hash>/<kind>/run_NN/       checkpoint, model
    evaluate  ► evaluation/<profile>-<hash>/<kind>/run_NN/tNNNNN.json  BSS Eval per test track
    couplings ► couplings/<profile>-<hash>/<kind>/sNNNN.json  one per segment
    report    ► results/<profile>/               tables, figures, metadata

A unit of work — one training run, one (model, segment) pair of NCA fits —
ends by writing its file atomically, so a rerun skips what exists and
continues what was interrupted. ``--shard i/n`` takes every n-th unit of
the sorted unit list, starting at i (0 ≤ i < n). Every artefact carries the
hash of the configuration that made it and the code version; the report
refuses to mix them.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy

from . import __version__, backend
from .atomic import save_npz, write_json
from .config import config_hash
from .errors import UserError
from .train import FINAL_MODEL, TrainSettings, load_model, train

FIGURE_SEGMENT = 0  # Figure 3 shows the first segment of the first test excerpt


# ----------------------------------------------------------------------------
# Where things live


def code_version() -> str:
    """``nca_np`` version plus the git commit of the source tree, if any."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).resolve().parent, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    return f"{__version__}+{commit}"


def train_hash(config: dict) -> str:
    """Hash of what shapes the trained models (features, data, training)."""
    return config_hash({k: config[k] for k in ("stft", "data", "train")})


@dataclass
class Workspace:
    """The folders of one experiment (one profile, one configuration)."""

    root: Path
    config: dict

    @property
    def profile(self) -> str:
        return self.config["profile"]["name"]

    @property
    def synthetic_root(self) -> Path:
        return Path(self.config["data"]["root"] or self.root / "data" / "synthetic")

    @property
    def uses_builtin_corpus(self) -> bool:
        """True when the data is the built-in corpus, generated in the work
        folder (corpus "synthetic" with no data.root of the user's)."""
        return self.config["data"]["corpus"] == "synthetic" and not self.config["data"]["root"]

    @property
    def cache_root(self) -> Path:
        return self.root / "cache"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs" / f"{self.profile}-{train_hash(self.config)}"

    @property
    def couplings_dir(self) -> Path:
        return self.root / "couplings" / f"{self.profile}-{config_hash(self.config)}"

    @property
    def results_dir(self) -> Path:
        return self.root / "results" / self.profile

    @property
    def timings_dir(self) -> Path:
        return self.couplings_dir / "timings"

    def run_dir(self, kind: str, run: int) -> Path:
        return self.runs_dir / kind / f"run_{run:02d}"


@dataclass(frozen=True)
class Shard:
    """Every ``count``-th unit, starting at ``index`` (0-based)."""

    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str | None) -> "Shard":
        if not text:
            return cls()
        try:
            index, count = (int(part) for part in text.split("/"))
        except ValueError:
            raise UserError(f"--shard {text!r}: write it as i/n, e.g. 0/4 for the first of four") from None
        if count < 1 or not 0 <= index < count:
            raise UserError(f"--shard {text!r}: need 0 <= i < n")
        return cls(index, count)

    def select(self, units: list) -> list:
        return units[self.index::self.count]

    def __str__(self) -> str:
        return f"{self.index}of{self.count}"


def _record_time(ws: Workspace, stage: str, shard: Shard, seconds: float) -> None:
    """Add a stage's wall time to its record (summed over resumptions)."""
    path = ws.timings_dir / f"{stage}-{shard}.json"
    previous = json.loads(path.read_text())["seconds"] if path.exists() else 0.0
    write_json(path, {"stage": stage, "shard": str(shard), "seconds": previous + seconds,
                      "backend": backend.name(), "device": backend.device_description()})


def _unit_bar(units, desc, progress):
    from tqdm.auto import tqdm
    return tqdm(units, desc=desc, disable=not progress, unit="unit", dynamic_ncols=True)


# ----------------------------------------------------------------------------
# synth and prepare: the only stages that read or write audio


def synth_stage(ws: Workspace, *, log=print) -> Path:
    """Generate the built-in corpus (idempotent: finished tracks are kept)."""
    from .data.synth import generate_corpus

    data = ws.config["data"]
    started = time.perf_counter()
    root = generate_corpus(ws.synthetic_root, n_train=data["synth_train_tracks"], n_test=data["synth_test_tracks"],
                           seconds=data["synth_seconds"], test_seconds=data["synth_test_seconds"],
                           seed=data["synth_seed"])
    seconds = time.perf_counter() - started
    _record_time(ws, "synth", Shard(), seconds)
    log(f"synthetic corpus ready at {root} ({seconds:.1f} s)")
    return root


def prepare_stage(ws: Workspace, *, musdb_root=None, progress=True, log=print) -> Path:
    """Features, scaler, cut list (reads audio). The built-in corpus is
    generated first when it is the data and no other root is given."""
    from .data.cache import prepare_cache

    if ws.uses_builtin_corpus and musdb_root is None:
        synth_stage(ws, log=log)
    if ws.config["data"]["corpus"] == "synthetic" and musdb_root is None:
        musdb_root = ws.synthetic_root
    started = time.perf_counter()
    path = prepare_cache(ws.config, ws.cache_root, musdb_root=musdb_root, progress=progress, log=log)
    _record_time(ws, "prepare", Shard(), time.perf_counter() - started)
    log(f"features ready in {path}")
    return path


def open_prepared_cache(ws: Workspace):
    """The cache that ``prepare`` made for this configuration, found by its
    recorded settings (the audio itself may be on another machine)."""
    from .data.cache import find_cache, open_cache

    return open_cache(find_cache(ws.config, ws.cache_root))


# ----------------------------------------------------------------------------
# train


def training_units(config: dict, kinds=None, runs=None) -> list[tuple[str, int]]:
    """All (kind, run) pairs, sorted, optionally restricted."""
    kinds = [k for k in config["train"]["kinds"] if kinds is None or k in kinds]
    every_run = range(config["train"]["runs"])
    outside = sorted(set(runs or ()) - set(every_run))
    if outside:
        raise UserError(f"run numbers {outside} are outside this profile's train.runs = {len(every_run)} "
                        f"(runs are numbered 0 to {len(every_run) - 1})")
    return [(kind, run) for kind in kinds for run in (every_run if runs is None else sorted(set(runs)))]


def run_seed(config: dict, run: int) -> int:
    """The seed of run ``run`` (its initial weights and batch order)."""
    return config["train"]["seed"] + run


def _device_budget(data: dict, module, log) -> int:
    """Bytes the training frames may take on the device: the configured
    budget, but never more than 80 % of the memory free right now."""
    budget = int(data["device_budget_gb"] * 2**30)
    free = backend.free_device_bytes(module)
    if free is not None and budget > 0.8 * free:
        log(f"device frame budget lowered from {budget / 2**30:.1f} GiB to 80% of the free "
            f"{free / 2**30:.1f} GiB")
        budget = int(0.8 * free)
    return budget


def train_stage(ws: Workspace, *, shard=Shard(), kinds=None, runs=None, progress=True, log=print) -> None:
    """Train every (kind, run) unit of this shard that is not finished."""
    config = ws.config
    units = shard.select(training_units(config, kinds, runs))
    todo = [u for u in units if not (ws.run_dir(*u) / FINAL_MODEL).exists()]
    log(f"train: {len(units)} runs in this shard, {len(units) - len(todo)} already finished")
    if not todo:
        return
    cache = open_prepared_cache(ws)
    module = backend.xp()
    data = config["data"]
    source = cache.train_frames(module=module, device_budget_bytes=_device_budget(data, module, log),
                                storage_dtype=data["device_storage"])
    settings = TrainSettings.from_config(config["train"])
    started = time.perf_counter()
    try:
        for kind, run in _unit_bar(todo, "train", progress):
            meta = train(kind, source, ws.run_dir(kind, run), settings=settings, seed=run_seed(config, run),
                         scaler_state=cache.scaler.state_dict(), config=config, progress=progress,
                         log=None if progress else log, module=module)
            last = meta["history"][-1]
            log(f"trained {kind} run {run}: {len(meta['history'])} epochs, final loss {last['loss']:.6g}")
    finally:
        _record_time(ws, "train", shard, time.perf_counter() - started)


# ----------------------------------------------------------------------------
# couplings


def _segment_id(number: int) -> str:
    return f"s{number:04d}"


def segment_table(cache, n_frames: int) -> list[dict]:
    """The NCA segments of all test excerpts, numbered in track order;
    ``index`` counts the segments within their track. Reads no frames."""
    table, per_track = [], {}
    for number, (track, _, start_frame) in enumerate(cache.segment_positions(n_frames)):
        index = per_track[track] = per_track.get(track, -1) + 1
        table.append({"id": _segment_id(number), "number": number, "track": track, "index": index,
                      "start_frame": start_frame, "frames": n_frames})
    return table


def unit_draws(config: dict, kind: str, segment_number: int) -> tuple[int, int]:
    """Which trained run explains this segment, and the NCA's init seed.

    Drawn from a stream of ``nca.seed`` keyed by the kind's name and the
    segment's number, so sharding, resuming and adding kinds or strategies
    never change the draw.
    """
    rng = backend.rng(config["nca"]["seed"], stream=backend.stream_key("couplings", kind, segment_number))
    return int(rng.integers(config["train"]["runs"])), int(rng.integers(2**31 - 1))


def couplings_units(config: dict, segments: list[dict], kinds=None) -> list[tuple[str, dict]]:
    kinds = [k for k in config["train"]["kinds"] if kinds is None or k in kinds]
    return [(kind, segment) for kind in kinds for segment in segments]


def _unit_path(ws: Workspace, kind: str, segment: dict) -> Path:
    return ws.couplings_dir / kind / f"{segment['id']}.json"


def fit_unit(config: dict, model, mixture, vocals, *, init_seed: int) -> tuple[dict, dict]:
    """All NCA fits and measures for one (model, segment) pair.

    Args:
        mixture, vocals: (F, T) scaled magnitudes of the segment (frames as
            columns), on the model's module.

    Returns:
        ``(measures, matrices)``: the JSON-able numbers of the unit, and the
        host couplings matrices by strategy (for Figure 3).
    """
    from .metrics import reconstruct, snr_db, tod_r
    from .nca import fit_couplings, identity_couplings, linear_composition

    nca = config["nca"]
    kind = model.kind
    output = model.predict(mixture.T).T
    measures = {"strategies": {}, "baselines": {}, "model_snr_true_db": snr_db(vocals, output)}
    matrices = {}
    for strategy in nca["strategies"]:
        started = time.perf_counter()
        fit = fit_couplings(model, mixture, strategy, iterations=nca["iterations"], lr=nca["learning_rate"],
                            seed=init_seed, composition=nca["composition"])
        estimate = reconstruct(kind, fit.C, mixture)
        measures["strategies"][strategy] = {
            "tod_r": tod_r(fit.C), "snr_model_db": snr_db(output, estimate), "snr_true_db": snr_db(vocals, estimate),
            "losses": [float(x) for x in fit.losses], "seconds": time.perf_counter() - started,
            "init_seed": init_seed}
        matrices[f"C_{strategy}"] = backend.to_host(fit.C)
    linear = linear_composition(model)
    measures["baselines"]["linear"] = {"snr_model_db": snr_db(output, reconstruct(kind, linear, mixture)),
                                       "tod_r": tod_r(linear)}
    identity = identity_couplings(model.n_freq, like=mixture)
    measures["baselines"]["identity"] = {"snr_model_db": snr_db(output, reconstruct(kind, identity, mixture))}
    return measures, matrices


def couplings_stage(ws: Workspace, *, shard=Shard(), kinds=None, progress=True, log=print) -> None:
    """Fit both NCA strategies for every (kind, segment) unit of this shard."""
    config = ws.config
    cache = open_prepared_cache(ws)
    segments = segment_table(cache, config["nca"]["segment_frames"])
    segments_path = ws.couplings_dir / "segments.json"
    if not segments_path.exists() or json.loads(segments_path.read_text()) != segments:
        write_json(segments_path, segments)
    units = shard.select(couplings_units(config, segments, kinds))
    todo = [u for u in units if not _unit_path(ws, *u).exists()]
    log(f"couplings: {len(units)} (model, segment) units in this shard, {len(units) - len(todo)} already done")
    if not todo:
        return
    _require_trained(ws, {(kind, unit_draws(config, kind, seg["number"])[0]) for kind, seg in todo})
    module = backend.xp()
    version, chash = code_version(), config_hash(config)
    started = time.perf_counter()
    models = {}  # the runs of the current kind, loaded once (units are sorted by kind)
    try:
        for kind, segment in _unit_bar(todo, "couplings", progress):
            run, init_seed = unit_draws(config, kind, segment["number"])
            if (kind, run) not in models:
                models = {key: m for key, m in models.items() if key[0] == kind}
                models[kind, run] = load_model(ws.run_dir(kind, run) / FINAL_MODEL, module=module)[0]
            model = models[kind, run]
            data = cache.segments(config["nca"]["segment_frames"], indices=[segment["number"]], log=None)[0]
            mixture = backend.to_device(data.mixture, module)
            vocals = backend.to_device(data.vocals, module)
            measures, matrices = fit_unit(config, model, mixture, vocals, init_seed=init_seed)
            if segment["number"] == FIGURE_SEGMENT:
                target = model.decoder_output(mixture.T).T
                save_npz(_unit_path(ws, kind, segment).with_suffix(".npz"),
                         {**matrices, "mixture": data.mixture, "vocals": data.vocals,
                          "target": backend.to_host(target)})
            unit = {"config_hash": chash, "code_version": version, "kind": kind, "segment": segment,
                    "run": run, "model_seed": run_seed(config, run), "composition": config["nca"]["composition"],
                    **measures}
            write_json(_unit_path(ws, kind, segment), unit)
            log(_unit_line(unit))
    finally:
        _record_time(ws, "couplings", shard, time.perf_counter() - started)


def _unit_line(unit: dict) -> str:
    parts = [f"{s} TOD-R {m['tod_r']:.3g}, SNR {m['snr_model_db']:.1f} dB" for s, m in unit["strategies"].items()]
    seg = unit["segment"]
    return f"couplings {unit['kind']} {seg['id']} ({seg['track']} #{seg['index']}, run {unit['run']}): " + "; ".join(parts)


def _require_trained(ws: Workspace, pairs) -> None:
    missing = sorted(f"{kind} run {run}" for kind, run in pairs if not (ws.run_dir(kind, run) / FINAL_MODEL).exists())
    if missing:
        raise UserError(f"the NCA needs trained models that are not finished: {', '.join(missing[:6])}"
                        f"{' …' if len(missing) > 6 else ''}; run `nca-np train` (all shards) first")


# ----------------------------------------------------------------------------
# evaluate (nca_np/evaluate.py holds the stage)


def evaluate_where_possible(ws: Workspace, *, musdb_root=None, shard=Shard(), progress=True, log=print) -> None:
    """The evaluate stage, or one line saying why this machine cannot run it
    (no test audio, museval or ffmpeg): ``reproduce`` goes on without it."""
    from .evaluate import EvaluationUnavailable, evaluate_stage

    try:
        evaluate_stage(ws, musdb_root=musdb_root, shard=shard, progress=progress, log=log)
    except EvaluationUnavailable as exc:
        log(f"evaluate skipped: {exc}")


def _separation_results(ws: Workspace) -> dict:
    from .evaluate import report_inputs

    return report_inputs(ws)


# ----------------------------------------------------------------------------
# report


def _load_units(ws: Workspace, segments: list[dict]) -> list[dict]:
    """Every couplings unit, checked: none missing, one configuration, one
    code version."""
    config = ws.config
    expected = couplings_units(config, segments)
    missing = [f"{kind}/{seg['id']}" for kind, seg in expected if not _unit_path(ws, kind, seg).exists()]
    if missing:
        raise UserError(f"cannot report: {len(missing)} of {len(expected)} couplings units are missing "
                        f"({', '.join(missing[:5])}{' …' if len(missing) > 5 else ''}); "
                        "run `nca-np couplings` for every shard first")
    units = [json.loads(_unit_path(ws, kind, seg).read_text()) for kind, seg in expected]
    for what, values in (("configurations", {u["config_hash"] for u in units}),
                         ("code versions", {u["code_version"] for u in units})):
        if len(values) > 1:
            raise UserError(f"cannot report: the couplings results were made with different {what} "
                            f"({', '.join(sorted(values))}); rerun the shards made with the old one")
    if units[0]["config_hash"] != config_hash(config):
        raise UserError("cannot report: the couplings results were made with another configuration "
                        f"({units[0]['config_hash']}, this one is {config_hash(config)})")
    return units


def _trained_models(ws: Workspace):
    """(kind, run, model, meta) of every finished run; error if one is missing."""
    pairs = training_units(ws.config)
    _require_trained(ws, pairs)
    for kind, run in pairs:
        model, meta, _ = load_model(ws.run_dir(kind, run) / FINAL_MODEL, module=numpy)
        yield kind, run, model, meta


def _stage_times(ws: Workspace) -> dict:
    """Wall time per stage, summed over shards and resumptions."""
    totals: dict[str, float] = {}
    for path in sorted(ws.timings_dir.glob("*.json")):
        record = json.loads(path.read_text())
        totals[record["stage"]] = totals.get(record["stage"], 0.0) + record["seconds"]
    return {stage: round(seconds, 1) for stage, seconds in sorted(totals.items())}


def report_stage(ws: Workspace, *, log=print) -> Path:
    """Tables, figures and metadata from the saved runs and couplings."""
    from .features import StftSettings
    from .nca import linear_composition
    from .report import write_report

    config = ws.config
    segments_path = ws.couplings_dir / "segments.json"
    if not segments_path.exists():
        raise UserError(f"cannot report: no couplings results for this configuration in {ws.couplings_dir}; "
                        "run `nca-np couplings` first")
    segments = json.loads(segments_path.read_text())
    units = _load_units(ws, segments)
    kinds = list(config["train"]["kinds"])
    histories = {kind: [] for kind in kinds}
    sums, training_versions = {}, []
    for kind, run, model, meta in _trained_models(ws):
        histories[kind].append(meta["history"])
        linear = linear_composition(model)
        sums[kind] = linear if kind not in sums else sums[kind] + linear
        if meta["versions"] not in training_versions:
            training_versions.append(meta["versions"])
    linear_compositions = {kind: sums[kind] / config["train"]["runs"] for kind in kinds}
    figure = _figure_segment(ws, segments[FIGURE_SEGMENT], kinds)
    settings = StftSettings.from_config(config["stft"])
    metadata = {
        "profile": ws.profile, "config": config, "config_hash": config_hash(config),
        "composition": config["nca"]["composition"], "code_version": units[0]["code_version"],
        "seeds": {"train": {str(r): run_seed(config, r) for r in range(config["train"]["runs"])},
                  "nca": config["nca"]["seed"],
                  "drawn_runs": {f"{u['kind']}/{u['segment']['id']}": u["run"] for u in units}},
        "versions": {"training": training_versions, "report": backend.versions()}, "backend": _stage_records(ws, "backend"), "device": _stage_records(ws, "device"),
        "wall_time_seconds": _stage_times(ws), "n_segments": len(segments),
    }
    paths = write_report(ws.results_dir, units=units, kinds=kinds, strategies=list(config["nca"]["strategies"]),
                         histories=histories, linear_compositions=linear_compositions, figure_segment=figure,
                         sample_rate=settings.sample_rate, n_fft=settings.n_fft, metadata=metadata,
                         separation=_separation_results(ws))
    log(f"report written to {ws.results_dir / 'report.md'} ({len(paths)} files)")
    return ws.results_dir / "report.md"


def _stage_records(ws: Workspace, key: str) -> list[str]:
    """The distinct values of ``key`` (backend, device) over the stages run."""
    return sorted({json.loads(p.read_text()).get(key, "unknown") for p in ws.timings_dir.glob("*.json")})


def _figure_segment(ws: Workspace, segment: dict, kinds) -> dict:
    figure = {"track": segment["track"], "segment_index": segment["index"]}
    for kind in kinds:
        path = _unit_path(ws, kind, segment).with_suffix(".npz")
        if not path.exists():
            raise UserError(f"cannot report: {path} (the matrices of Figure 3) is missing; delete "
                            f"{path.with_suffix('.json')} and run `nca-np couplings` again to redo that unit")
        with numpy.load(path) as data:
            figure[kind] = {k: data[k] for k in data.files}
    return figure


# ----------------------------------------------------------------------------
# reproduce


def reproduce(ws: Workspace, *, musdb_root=None, shard=Shard(), progress=True, log=print) -> Path | None:
    """Every stage in order; each skips what is already done."""
    if shard.count == 1:
        prepare_stage(ws, musdb_root=musdb_root, progress=progress, log=log)
    else:  # shards started together must not all write the same cache
        try:
            open_prepared_cache(ws)
        except UserError:
            raise UserError("sharded runs read a prepared cache: run `nca-np prepare` once before "
                            "starting the shards") from None
    train_stage(ws, shard=shard, progress=progress, log=log)
    evaluate_where_possible(ws, musdb_root=musdb_root, shard=shard, progress=progress, log=log)
    couplings_stage(ws, shard=shard, progress=progress, log=log)
    if shard.count > 1:
        log(f"shard {shard.index}/{shard.count} done; run `nca-np report` once every shard has finished")
        return None
    return report_stage(ws, log=log)
