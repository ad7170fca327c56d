"""The couplings stage and the NCA science of one segment (docs/method.md#nca).

A unit of work is one (model kind, segment) pair: one trained run, drawn
from the NCA's own stream (:func:`unit_draws`), explains the segment; every
configured strategy is fitted to it (:func:`fit_unit`), with the exact
references of docs/method.md#exact-references beside them. The unit ends by
writing::

    couplings/<profile>-<hash>/<kind>/sNNNN.json

atomically (and, for the segment of Figure 3, the matrices beside it in
``sNNNN.npz``), so a rerun skips what exists. ``--shard i/n`` takes every
n-th unit of the sorted list.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy
from tqdm.auto import tqdm

from . import backend, preflight
from .atomic import remove_stale_temporaries, save_npz, write_json
from .config import config_hash
from .metrics import reconstruct, snr_db, tod_r
from .models import model_kind
from .nca import fit_couplings, get_strategy, identity_couplings, initial_draws, linear_composition
from .heldout import Frames, cross_validated_ridge, heldout_segments, pool, pool_count, pooled_ridge, score_matrices
from .references import (frames_used, local_offsets, mean_local_map, min_norm_couplings, nearest_exact_couplings,
                         pseudo_inverse)
from .train import FINAL_MODEL, load_model, recorded_health
from .workspace import (Shard, Workspace, code_version, open_prepared_cache, record_time, require_trained,
                        run_seed, unit_bar)

FIGURE_SEGMENT = 0  # Figure 3 shows the first segment of the first test excerpt


@dataclass(frozen=True)
class NcaSettings:
    """The ``[nca]`` values that shape the fits of one segment (docs/method.md#nca)."""

    strategies: tuple = ("student", "compositional")
    iterations: int = 600
    learning_rate: float = 1e-4
    composition: str = "paper"
    max_iterations: int = 600
    tolerance: float = 0.01
    halvings: int = 0
    checkpoint_every: int = 50
    local_map_stride: int = 1
    heldout_same: int = 8
    heldout_other: int = 8

    @classmethod
    def from_config(cls, section: dict) -> "NcaSettings":
        """The fits' values from an ``[nca]`` table; its other keys (seed,
        segment_frames, init_seeds, spread_segments) belong to the
        experiment (``heldout_same``, ``heldout_other`` are read by the
        stage, which chooses and loads the held-out segments). Unknown keys are rejected when the profile is loaded
        (:func:`nca_np.config.validate`), as for every section."""
        values = {k: section[k] for k in cls.__dataclass_fields__ if k in section}
        if "strategies" in values:
            values["strategies"] = tuple(values["strategies"])
        return cls(**values)

    def fit_arguments(self) -> dict:
        """The keyword arguments of :func:`nca_np.nca.fit_couplings` these settings fix."""
        return {"iterations": self.iterations, "lr": self.learning_rate, "composition": self.composition,
                "max_iterations": self.max_iterations, "tolerance": self.tolerance, "halvings": self.halvings,
                "checkpoint_every": self.checkpoint_every}


# ----------------------------------------------------------------------------
# units

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


def spread_seeds(config: dict, kind: str, segment_number: int) -> list[int]:
    """The seeds of the extra fits that measure the spread over
    initialisations: ``nca.init_seeds`` of them on the first
    ``nca.spread_segments`` segments, none elsewhere.

    Drawn from a stream of ``nca.seed`` of their own, keyed like
    :func:`unit_draws`, so they never repeat the unit's own seed's draw.
    """
    nca = config["nca"]
    if segment_number >= nca["spread_segments"] or nca["init_seeds"] < 1:
        return []
    rng = backend.rng(nca["seed"], stream=backend.stream_key("couplings-spread", kind, segment_number))
    return [int(seed) for seed in rng.integers(2**31 - 1, size=nca["init_seeds"])]


def couplings_units(config: dict, segments: list[dict], kinds=None) -> list[tuple[str, dict]]:
    """Every (kind, segment) unit, by kind (profile order) then segment, optionally restricted."""
    kinds = [k for k in config["train"]["kinds"] if kinds is None or k in kinds]
    return [(kind, segment) for kind in kinds for segment in segments]


def unit_path(ws: Workspace, kind: str, segment: dict) -> Path:
    """``couplings/<profile>-<hash>/<kind>/sNNNN.json``: one unit's file."""
    return ws.couplings_dir / kind / f"{segment['id']}.json"


def _share(part: float, whole: float) -> float:
    return part / whole if whole > 0 else float("nan")


def _relative_error(C, X, V) -> float:
    """``‖V − C X‖₁ / ‖V‖₁`` (docs/method.md#convergence)."""
    xp = backend.array_module(C, X, V)
    return _share(backend.to_float(xp.abs(V - C @ X).sum()), backend.to_float(xp.abs(V).sum()))



# ----------------------------------------------------------------------------
# the science of one segment


@dataclass(frozen=True)
class _Segment:
    """One segment seen through one model: the arrays every measure compares with.

    ``mixture`` X and ``vocals`` are (F, T) scaled magnitudes (frames as
    columns); ``output`` is the model's estimate Ŷ, ``target`` its decoder
    output V (what C X must reproduce), ``pinv`` X's pseudo-inverse.
    """

    model: object
    mixture: object
    vocals: object
    output: object
    target: object
    pinv: object

    @classmethod
    def of(cls, model, mixture, vocals) -> "_Segment":
        return cls(model, mixture, vocals, model.predict(mixture.T).T, model.decoder_output(mixture.T).T,
                   pseudo_inverse(mixture))

    def estimate(self, C):
        """Ŷ(C), the model's output with its mapping replaced by ``C`` (docs/method.md#measures)."""
        return reconstruct(self.model.kind, C, self.mixture)

    def measure(self, C) -> dict:
        """TOD-R, SNR(Ŷ, Ŷ(C)) and relative error of a couplings matrix."""
        return {"tod_r": tod_r(C), "snr_model_db": snr_db(self.output, self.estimate(C)),
                "relative_error": _relative_error(C, self.mixture, self.target)}


def fit_unit(settings: NcaSettings, model, mixture, vocals, *, init_seed: int, spread_seeds=(), draws=None,
             watch=None, heldout=None) -> tuple[dict, dict]:
    """All NCA fits, exact references and measures for one (model, segment) pair.

    Args:
        settings: the ``[nca]`` values of the fits (:class:`NcaSettings`).
        mixture, vocals: (F, T) scaled magnitudes of the segment (frames as
            columns), on the model's module.
        init_seed: the seed of each strategy's fit.
        spread_seeds: seeds of extra fits of each strategy, to measure the
            spread of the result over initialisations.
        draws: ``(strategy, n_freq, n_layers, seed) -> initial matrices``
            (e.g. :meth:`InitialDraws.take`); default: drawn when needed.
        watch: ``(label, iterations cap) -> on_checkpoint callback or None``,
            to show a fit's progress.
        heldout: None (no held-out scores), or ``{"same_track": [Frames],
            "other_tracks": [Frames]}`` (:func:`heldout_frames`): the
            blocks every matrix is also scored on, and the ridge couplings
            chosen on (docs/method.md#held-out-scores).

    Returns:
        ``(measures, matrices)``: the JSON-able numbers of the unit, and the
        host couplings matrices by their strategy's ``matrix_key`` (for Figure 3).
        With ``heldout``, ``measures`` also holds ``heldout`` (the blocks'
        ids and every matrix's scores on them) and ``references`` the
        ``ridge`` and ``pooled_ridge`` couplings.
    """
    segment = _Segment.of(model, mixture, vocals)
    draws = draws or initial_draws
    arguments = settings.fit_arguments()

    def fit(strategy, seed):
        on_checkpoint = watch(f"{strategy} seed {seed}", settings.max_iterations) if watch else None
        return fit_couplings(model, mixture, strategy, seed=seed, on_checkpoint=on_checkpoint,
                             initial=draws(strategy, model.n_freq, model.n_layers, seed), **arguments)

    measures = {"strategies": {}, "baselines": {}, "model_snr_true_db": snr_db(vocals, segment.output)}
    matrices, fitted = {}, {}
    for strategy in settings.strategies:
        entry, C = _strategy_entry(segment, fit, strategy, init_seed, spread_seeds)
        measures["strategies"][strategy] = entry
        matrices[get_strategy(strategy).matrix_key] = backend.to_host(C)
        fitted[strategy] = C
    baselines = _baseline_matrices(segment)
    measures["baselines"] = _baselines(segment, baselines)
    references = _reference_matrices(settings, segment)
    measures["references"] = _references(settings, segment, references)
    if heldout is not None:
        record, ridges = score_unit_heldout(segment, {**fitted, **references, **baselines}, heldout)
        measures["heldout"] = record
        measures["references"].update(ridges)
    return measures, matrices


def _strategy_entry(segment: _Segment, fit, strategy: str, init_seed: int, spread_seeds) -> tuple[dict, object]:
    """One strategy's fit of the segment (and its extra fits from
    ``spread_seeds``): ``(its measures, its couplings matrix C)``."""
    started = time.perf_counter()
    result = fit(strategy, init_seed)
    seconds = time.perf_counter() - started
    estimate = segment.estimate(result.C)
    nearest = nearest_exact_couplings(segment.mixture, segment.target, result.C_initial, pinv=segment.pinv)
    entry = {"tod_r": tod_r(result.C), "snr_model_db": snr_db(segment.output, estimate),
             "snr_true_db": snr_db(segment.vocals, estimate), "losses": [float(x) for x in result.losses],
             "seconds": seconds, "init_seed": init_seed, **result.diagnostics(),
             "nearest_exact_to_init": segment.measure(nearest)}
    if spread_seeds:
        entry["spread"] = [_spread_record(fit(strategy, seed), seed) for seed in spread_seeds]
        values = [entry["tod_r"]] + [record["tod_r"] for record in entry["spread"]]
        entry["tod_r_range"] = [min(values), max(values)]
    return entry, result.C


def _baseline_matrices(segment: _Segment) -> dict:
    """The linear composition of the model and the identity, as (F, F) couplings."""
    return {"linear": linear_composition(segment.model),
            "identity": identity_couplings(segment.model.n_freq, like=segment.mixture)}


def _baselines(segment: _Segment, matrices: dict) -> dict:
    """The baselines' measures on the fitting segment."""
    linear, identity = matrices["linear"], matrices["identity"]
    return {"linear": {"snr_model_db": snr_db(segment.output, segment.estimate(linear)), "tod_r": tod_r(linear)},
            "identity": {"snr_model_db": snr_db(segment.output, segment.estimate(identity))}}


def _spread_record(fit, seed: int) -> dict:
    """What the spread over initialisations keeps of one extra fit."""
    return {"init_seed": seed, "tod_r": tod_r(fit.C), "relative_error": fit.relative_error,
            "converged": bool(fit.converged), "iterations": fit.iterations}


def _local_map_stride(settings: NcaSettings, model) -> int:
    """``nca.local_map_stride`` where the exact mean local map is expensive
    (models deeper than two layers); every frame elsewhere."""
    return settings.local_map_stride if model.n_layers > 2 else 1


def _reference_matrices(settings: NcaSettings, segment: _Segment) -> dict:
    """The exact references of one segment as (F, F) couplings
    (docs/method.md#exact-references): ``min_norm`` V X⁺, the
    ``mean_local_map`` and the exact solution ``nearest_identity``."""
    model, mixture, target, pinv = segment.model, segment.mixture, segment.target, segment.pinv
    identity = backend.array_module(mixture).eye(model.n_freq, dtype=numpy.float64)  # the solves are float64
    return {"min_norm": min_norm_couplings(mixture, target, pinv=pinv),
            "mean_local_map": mean_local_map(model, mixture, frame_stride=_local_map_stride(settings, model)),
            "nearest_identity": nearest_exact_couplings(mixture, target, identity, pinv=pinv)}


def _references(settings: NcaSettings, segment: _Segment, matrices: dict) -> dict:
    """The measures of the exact references of one segment (docs/method.md#exact-references)."""
    started = time.perf_counter()
    mixture, target, pinv = segment.mixture, segment.target, segment.pinv
    xp = backend.array_module(mixture)
    stride = _local_map_stride(settings, segment.model)
    offsets = local_offsets(segment.model, mixture)
    n_freq, n_frames = mixture.shape
    return {
        "rank": pinv.rank, "n_freq": int(n_freq), "frames": int(n_frames), "determined": pinv.determined,
        "offset_share": _share(backend.to_float(xp.abs(offsets).sum()), backend.to_float(xp.abs(target).sum())),
        "min_norm": segment.measure(matrices["min_norm"]),
        "mean_local_map": {**segment.measure(matrices["mean_local_map"]),
                           "frame_stride": stride, "frames_used": frames_used(n_frames, stride)},
        "nearest_identity": segment.measure(matrices["nearest_identity"]),
        "seconds": time.perf_counter() - started,
    }


# ----------------------------------------------------------------------------
# held-out scores (docs/method.md#held-out-scores)

#: The groups of held-out blocks, as a unit's JSON names them. The ridge
#: couplings choose α on the same-track blocks, so the other-tracks scores
#: are the ones untouched by any choice.
SAME_TRACK, OTHER_TRACKS = "same_track", "other_tracks"


def heldout_frames(model, blocks: dict) -> dict:
    """The held-out :class:`~nca_np.heldout.Frames` of one unit.

    Args:
        model: the unit's trained model.
        blocks: ``{"same_track" | "other_tracks": [(segment id, X)]}`` with
            X the (F, T) scaled mixture of a held-out segment, on the
            model's module.

    Returns:
        ``{group: [Frames]}``: each block with the model's output and its
        decoder output V on it (what couplings are scored against).
    """
    return {group: [Frames(X, model.predict(X.T).T, model.decoder_output(X.T).T, label=label) for label, X in items]
            for group, items in blocks.items()}


def _ridge_record(segment: _Segment, choice, *, pooled: int) -> dict:
    """What a unit keeps of a :class:`~nca_np.heldout.RidgeChoice`: its α,
    its measures on the fitting segment, its validation SNR and path."""
    return {**segment.measure(choice.C), "alpha": choice.alpha, "validation_snr_db": choice.heldout_snr_db,
            "pooled_segments": pooled, "path": choice.path}


def score_unit_heldout(segment: _Segment, matrices: dict, heldout: dict) -> tuple[dict, dict]:
    """Every named matrix, and the ridge couplings, scored on the held-out blocks.

    The cross-validated ridge fits the segment and chooses α on the
    same-track blocks pooled; the pooled ridge also fits ``k`` of them
    (:func:`~nca_np.heldout.pool_count`), chooses α on the others and is
    scored on those only. Without same-track blocks there is no ridge.

    Returns:
        ``(heldout record, {"ridge": …, "pooled_ridge": …})``: the record is
        ``{"segments": {group: [ids]}, "scores": {name: {group: score}},
        "seconds"}`` (:func:`~nca_np.heldout.score_matrices`).
    """
    started = time.perf_counter()
    kind = segment.model.kind
    same, other = list(heldout.get(SAME_TRACK) or []), list(heldout.get(OTHER_TRACKS) or [])
    fit = Frames(segment.mixture, segment.output, segment.target, label="fit")
    ridges, scores = {}, {}
    if same:
        choice = cross_validated_ridge(kind, fit, pool(same, label="validation"))
        ridges["ridge"] = _ridge_record(segment, choice, pooled=0)
        k = pool_count(int(segment.mixture.shape[0]), fit.n_frames, len(same))
        pooled, unused = pooled_ridge(kind, fit, same, pool(same[k:], label="validation"))
        ridges["pooled_ridge"] = _ridge_record(segment, pooled, pooled=k)
        ridges["pooled_ridge"]["scored_same_track"] = [block.label for block in unused]
        scores.update(score_matrices(kind, {"pooled_ridge": pooled.C}, {SAME_TRACK: unused, OTHER_TRACKS: other}))
        matrices = {**matrices, "ridge": choice.C}
    scores.update(score_matrices(kind, matrices, {SAME_TRACK: same, OTHER_TRACKS: other}))
    record = {"segments": {SAME_TRACK: [b.label for b in same], OTHER_TRACKS: [b.label for b in other]},
              "scores": {name: scores[name] for name in sorted(scores)}, "seconds": time.perf_counter() - started}
    return record, ridges


class InitialDraws:
    """Every fit's initial matrices, drawn on a host thread ahead of the fit.

    Drawing the (F, F) Glorot matrices of a fit on the host takes tens of
    milliseconds at F = 2049, during which a GPU would wait. The fits of a
    stage are known in advance, so a worker thread draws the next ones while
    the current one runs. The numbers are :func:`nca_np.nca.initial_draws`'s,
    whether drawn ahead or not, on CPU and GPU alike.

    Args:
        requests: ``(strategy, n_freq, n_layers, seed)`` of every fit, in
            the order the fits will ask for them.
        ahead: how many fits' draws may wait ready at once.
    """

    def __init__(self, requests, *, ahead: int = 2):
        self._requests = list(requests)
        self._position = 0
        self._ahead = ahead
        self._futures: dict = {}
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nca-draws")
        self._fill()

    def _fill(self) -> None:
        while self._position < len(self._requests) and len(self._futures) < self._ahead:
            request = self._requests[self._position]
            self._position += 1
            if request not in self._futures:
                self._futures[request] = self._pool.submit(initial_draws, *request)

    def take(self, strategy: str, n_freq: int, n_layers: int, seed: int) -> list:
        """The initial matrices of one fit (drawn now if they were not asked for ahead)."""
        request = (strategy, n_freq, n_layers, seed)
        future = self._futures.pop(request, None)
        self._fill()
        return future.result() if future is not None else initial_draws(*request)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class FitBar:
    """A progress bar over one fit's iterations, moved at each checkpoint
    (so it costs no device read of its own); nothing without a terminal."""

    def __init__(self, enabled: bool, prefix: str = ""):
        self.enabled, self.prefix, self.bar = enabled, prefix, None

    def __call__(self, label: str, total: int):
        self.close()
        if not self.enabled:
            return None
        self.bar = tqdm(total=total, desc=f"{self.prefix} {label}", unit="it", leave=False, position=1,
                        dynamic_ncols=True)

        def update(record: dict) -> None:
            self.bar.update(record["iteration"] - self.bar.n)
            self.bar.set_postfix(tod_r=f"{record['tod_r']:.3g}", error=f"{record['relative_error']:.3g}")
        return update

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _fit_requests(config: dict, todo) -> list[tuple]:
    """``(strategy, n_freq, n_layers, seed)`` of every fit of ``todo``, in
    the order :func:`fit_unit` makes them."""
    n_freq = config["stft"]["n_fft"] // 2 + 1
    requests = []
    for kind, segment in todo:
        seeds = [unit_draws(config, kind, segment["number"])[1], *spread_seeds(config, kind, segment["number"])]
        n_layers = model_kind(kind).n_layers
        requests += [(strategy, n_freq, n_layers, seed) for strategy in config["nca"]["strategies"]
                     for seed in seeds]
    return requests



# ----------------------------------------------------------------------------
# the stage


def couplings_stage(ws: Workspace, *, shard=Shard(), kinds=None, progress=True, log=print) -> None:
    """Fit the NCA strategies and the exact references for every (kind,
    segment) unit of this shard."""
    remove_stale_temporaries(ws.couplings_dir, log=log)
    cache = open_prepared_cache(ws)
    segments = _write_segments(ws, cache)
    todo = _units_to_do(ws, shard.select(couplings_units(ws.config, segments, kinds)), log)
    if not todo:
        return
    _check_before_fitting(ws, todo)
    started = time.perf_counter()
    try:
        _fit_units(ws, cache, todo, segments, progress=progress, log=log)
    finally:
        record_time(ws.couplings_dir, "couplings", shard, time.perf_counter() - started)


def _write_segments(ws: Workspace, cache) -> list[dict]:
    """The segment table, checked, and written to ``segments.json`` (for the
    report) unless it is there already."""
    config = ws.config
    segments = segment_table(cache, config["nca"]["segment_frames"])
    preflight.check_segments(segments, cache, config)
    segments_path = ws.couplings_dir / "segments.json"
    if preflight.json_damage(segments_path, holds=list) or json.loads(segments_path.read_text()) != segments:
        write_json(segments_path, segments)
    return segments


def _units_to_do(ws: Workspace, units, log) -> list:
    """The shard's units without an intact unit file (damaged ones are discarded)."""
    preflight.discard_damaged(((unit_path(ws, *u), unit_damage, [unit_path(ws, *u).with_suffix(".npz")])
                               for u in units), log=log)
    todo = [u for u in units if not unit_path(ws, *u).exists()]
    log(f"couplings: {len(units)} (model, segment) units in this shard, {len(units) - len(todo)} already done")
    return todo


def _check_before_fitting(ws: Workspace, todo) -> None:
    """The drawn runs are trained and the units' files fit on the disk."""
    config = ws.config
    require_trained(ws, {(kind, unit_draws(config, kind, seg["number"])[0]) for kind, seg in todo}, "the NCA")
    n_figure = sum(seg["number"] == FIGURE_SEGMENT for _, seg in todo)
    preflight.check_output_folder(ws.couplings_dir, preflight.couplings_bytes(config, len(todo), n_figure),
                                  f"the {len(todo)} couplings unit(s)")


class _RunModels:
    """The trained runs of the current kind, each loaded once (units come sorted by kind)."""

    def __init__(self, ws: Workspace, module):
        self.ws, self.module, self.models = ws, module, {}

    def get(self, kind: str, run: int):
        if (kind, run) not in self.models:
            self.models = {key: m for key, m in self.models.items() if key[0] == kind}
            self.models[kind, run] = load_model(self.ws.run_dir(kind, run) / FINAL_MODEL, module=self.module)[0]
        return self.models[kind, run]

    def clear(self) -> None:
        self.models.clear()


def dead_runs(ws: Workspace, todo) -> dict:
    """``{(kind, run): reason}`` of the drawn runs of ``todo`` that training
    recorded as dead (:func:`nca_np.train.recorded_health`): nothing is left
    for the NCA to explain in them."""
    dead = {}
    for kind, run in sorted({(kind, unit_draws(ws.config, kind, seg["number"])[0]) for kind, seg in todo}):
        health = recorded_health(ws.run_dir(kind, run))
        if health and health.get("dead"):
            dead[kind, run] = health.get("reason") or "the run is dead"
    return dead


def _fit_units(ws: Workspace, cache, todo, segments: list[dict], *, progress: bool, log) -> None:
    """Fit every unit of ``todo`` and write its file; log one line per unit.
    A unit whose drawn run is dead is written as skipped, without fits."""
    module = backend.xp()
    stamp = {"config_hash": config_hash(ws.config), "code_version": code_version()}
    models = _RunModels(ws, module)
    dead = dead_runs(ws, todo)
    alive = [(kind, seg) for kind, seg in todo if (kind, unit_draws(ws.config, kind, seg["number"])[0]) not in dead]
    draws = InitialDraws(_fit_requests(ws.config, alive))
    bar = FitBar(progress)
    try:
        for kind, segment in unit_bar(todo, "couplings", progress):
            run = unit_draws(ws.config, kind, segment["number"])[0]
            if (kind, run) in dead:
                unit = _skip_unit(ws, kind, segment, run, dead[kind, run], stamp=stamp)
            else:
                unit = _fit_one_unit(ws, cache, kind, segment, models=models, draws=draws, bar=bar, stamp=stamp,
                                     table=segments)
            log(unit_line(unit))
    finally:
        bar.close()
        draws.close()
        models.clear()
        backend.free_memory_pool(module)


def _skip_unit(ws: Workspace, kind: str, segment: dict, run: int, reason: str, *, stamp) -> dict:
    """The file of a unit whose drawn run is dead: why, and no fit."""
    unit = {**stamp, "kind": kind, "segment": segment, "run": run, "model_seed": run_seed(ws.config, run),
            "composition": ws.config["nca"]["composition"], "skipped": f"run {run} is dead: {reason}"}
    write_json(unit_path(ws, kind, segment), unit)
    return unit


def unit_heldout_segments(config: dict, table: list[dict], segment: dict) -> dict:
    """The held-out segments of a unit (:func:`nca_np.heldout.heldout_segments`
    with ``nca.heldout_same`` and ``nca.heldout_other``, drawn from ``nca.seed``):
    ``{"same_track": [rows], "other_tracks": [rows]}``."""
    nca = config["nca"]
    chosen = heldout_segments(table, segment, nca["heldout_same"], nca["heldout_other"], seed=nca["seed"])
    return {SAME_TRACK: chosen["same"], OTHER_TRACKS: chosen["other"]}


def _load_heldout(cache, config: dict, table: list[dict], segment: dict, model, module) -> dict:
    """The unit's held-out :class:`~nca_np.heldout.Frames`, read from the cache."""
    chosen = unit_heldout_segments(config, table, segment)
    rows = [row for group in (SAME_TRACK, OTHER_TRACKS) for row in chosen[group]]
    if not rows:
        return {SAME_TRACK: [], OTHER_TRACKS: []}
    data = cache.segments(config["nca"]["segment_frames"], indices=[row["number"] for row in rows], log=None)
    mixtures = {row["id"]: backend.to_device(item.mixture, module) for row, item in zip(rows, data)}
    return heldout_frames(model, {group: [(row["id"], mixtures[row["id"]]) for row in chosen[group]]
                                  for group in (SAME_TRACK, OTHER_TRACKS)})


def _fit_one_unit(ws: Workspace, cache, kind: str, segment: dict, *, models, draws, bar, stamp, table) -> dict:
    """One (kind, segment) unit: its fits, its held-out scores, its file (and
    Figure 3's matrices); returns the unit."""
    config = ws.config
    started = time.perf_counter()
    run, init_seed = unit_draws(config, kind, segment["number"])
    model = models.get(kind, run)
    data = cache.segments(config["nca"]["segment_frames"], indices=[segment["number"]], log=None)[0]
    mixture = backend.to_device(data.mixture, models.module)
    vocals = backend.to_device(data.vocals, models.module)
    heldout = _load_heldout(cache, config, table, segment, model, models.module)
    bar.prefix = f"{kind} {segment['id']}"
    measures, matrices = fit_unit(NcaSettings.from_config(config["nca"]), model, mixture, vocals,
                                  init_seed=init_seed, spread_seeds=spread_seeds(config, kind, segment["number"]),
                                  draws=draws.take, watch=bar, heldout=heldout)
    bar.close()
    if segment["number"] == FIGURE_SEGMENT:
        target = model.decoder_output(mixture.T).T
        save_npz(unit_path(ws, kind, segment).with_suffix(".npz"),
                 {**matrices, "mixture": data.mixture, "vocals": data.vocals, "target": backend.to_host(target)})
    unit = {**stamp, "kind": kind, "segment": segment, "run": run, "model_seed": run_seed(config, run),
            "composition": config["nca"]["composition"], **measures, "seconds": time.perf_counter() - started}
    write_json(unit_path(ws, kind, segment), unit)
    return unit


#: What every couplings unit file holds (a file without them is damaged).
UNIT_KEYS = ("config_hash", "code_version", "kind", "segment", "run", "strategies", "baselines", "references",
             "heldout")
#: What the file of a skipped unit (its drawn run is dead) holds.
SKIPPED_KEYS = ("config_hash", "code_version", "kind", "segment", "run", "skipped")


def unit_json_damage(path: Path) -> str | None:
    """Why a couplings unit's JSON file is damaged (None: it is not): not
    JSON, or without :data:`UNIT_KEYS` (:data:`SKIPPED_KEYS` for a skipped unit)."""
    reason = preflight.json_damage(path, SKIPPED_KEYS[:5])
    if reason is not None:
        return reason
    unit = json.loads(Path(path).read_text(encoding="utf-8"))
    return preflight.json_damage(path, SKIPPED_KEYS if "skipped" in unit else UNIT_KEYS)


def unit_damage(path: Path) -> str | None:
    """Why a couplings unit file cannot count as done (None: it can): not
    JSON, keys missing (a unit without held-out scores is incomplete), or,
    for the segment of Figure 3, its matrices (the ``.npz`` beside it)
    missing or damaged. A skipped unit needs only :data:`SKIPPED_KEYS`."""
    reason = unit_json_damage(path)
    if reason is not None:
        return reason
    unit = json.loads(path.read_text(encoding="utf-8"))
    if "skipped" in unit:
        return None
    if unit["segment"].get("number") != FIGURE_SEGMENT:
        return None
    matrices = path.with_suffix(".npz")
    if not matrices.exists():
        return f"the matrices of Figure 3 ({matrices.name}) are missing"
    reason = preflight.npz_damage(matrices, ["mixture", "vocals", "target"]
                                  + [get_strategy(strategy).matrix_key for strategy in unit["strategies"]])
    return None if reason is None else f"its Figure 3 matrices {matrices.name}: {reason}"


def unit_line(unit: dict) -> str:
    seg = unit["segment"]
    if "skipped" in unit:
        return f"couplings {unit['kind']} {seg['id']} ({seg['track']} #{seg['index']}): skipped, {unit['skipped']}"
    parts = [f"{s} TOD-R {m['tod_r']:.3g}, SNR {m['snr_model_db']:.1f} dB, error {m['relative_error']:.3g}"
             f"{'' if m['converged'] else ' (not converged)'}" for s, m in unit["strategies"].items()]
    refs = unit["references"]
    parts.append(f"min-norm TOD-R {refs['min_norm']['tod_r']:.3g}, mean local map TOD-R "
                 f"{refs['mean_local_map']['tod_r']:.3g}, rank X {refs['rank']} of F {refs['n_freq']}")
    scores = unit.get("heldout", {}).get("scores", {})
    if "ridge" in scores and OTHER_TRACKS in scores["ridge"]:
        parts.append(f"held-out SNR (other tracks) ridge {scores['ridge'][OTHER_TRACKS]['snr_model_db']:.1f} dB, "
                     f"V X⁺ {scores['min_norm'][OTHER_TRACKS]['snr_model_db']:.1f} dB")
    return (f"couplings {unit['kind']} {seg['id']} ({seg['track']} #{seg['index']}, run {unit['run']}, "
            f"{unit['seconds']:.1f} s): " + "; ".join(parts))

