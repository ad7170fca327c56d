"""The experiment of docs/method.md#protocol as stages over units of work.

Data flows one way, through files under one working folder::

    synth     ► data/synthetic/                  (built-in corpus only)
    prepare   ► cache/<key>/                     features, scaler, cut list
    train     ► runs/<profile>-<hash>/<kind>/run_NN/       checkpoint, model
    evaluate  ► evaluation/<profile>-<hash>/<kind>/run_NN/tNNNNN.json  BSS Eval per test track
    couplings ► couplings/<profile>-<hash>/<kind>/sNNNN.json  one per segment
    report    ► results/<profile>-<hash>/        tables, figures, metadata
                results/<profile>-latest         the last one reported (a link, see below)

A unit of work — one training run, one (model, segment) pair of NCA fits —
ends by writing its file atomically, so a rerun skips what exists and
continues what was interrupted. ``--shard i/n`` gives shard i (0 ≤ i < n)
its share of the sorted unit list: the training runs by cost (a run costs
its model's layer count, so shards finish together), the NCA units every
n-th one. The training runs of one kind in a shard train together as one
stacked model (docs/gradients.md#stacked-training). Every artefact carries the
hash of the configuration that made it and the code version; the report
refuses to mix them. Each stage's wall time is kept with what it made
(``timings/`` in the cache, the runs, the couplings), and each stage first
removes the temporaries a killed run left in its folder and runs the checks
of :mod:`nca_np.preflight`.

``results/<profile>-latest`` is a relative symbolic link to the folder the
last report of that profile went to; where the file system has no symbolic
links it is a text file ``results/<profile>-latest.txt`` holding the
folder's name instead.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy

from . import __version__, backend, preflight
from .atomic import remove_stale_temporaries, save_npz, write_json
from .config import config_hash
from .errors import UserError
from .models import model_kind
from .train import CHECKPOINT, FINAL_MODEL, TrainSettings, load_model, train_stacked

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
    #: the ``--set`` overrides given on the command line (recorded in the report)
    overrides: tuple = ()

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
        return self.root / "results" / f"{self.profile}-{config_hash(self.config)}"

    @property
    def latest_results(self) -> Path:
        """The link to the last results folder of this profile."""
        return self.root / "results" / f"{self.profile}-latest"

    @property
    def timings_dir(self) -> Path:
        """The couplings stage's wall-time records (each stage keeps its own
        ``timings/`` beside what it made: cache, runs, couplings)."""
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

    def select(self, units: list, cost=None) -> list:
        """This shard's units, in their order.

        Without ``cost``, every ``count``-th unit from ``index``. With
        ``cost`` (a function of a unit), units are dealt, dearest first, each
        to the shard with the least cost so far (ties: lower index), so that
        the shards' totals differ by at most one unit's cost.
        """
        if cost is None:
            return units[self.index::self.count]
        loads = [0.0] * self.count
        mine = set()
        for position in sorted(range(len(units)), key=lambda i: (-cost(units[i]), i)):
            shard = min(range(self.count), key=lambda s: (loads[s], s))
            loads[shard] += cost(units[position])
            if shard == self.index:
                mine.add(position)
        return [unit for position, unit in enumerate(units) if position in mine]

    def __str__(self) -> str:
        return f"{self.index}of{self.count}"


def _record_time(folder: Path, stage: str, shard: Shard, seconds: float) -> None:
    """Add a stage's wall time to its record in ``folder/timings`` (summed
    over resumptions), beside what the stage made."""
    path = Path(folder) / "timings" / f"{stage}-{shard}.json"
    previous = json.loads(path.read_text())["seconds"] if path.exists() else 0.0
    write_json(path, {"stage": stage, "shard": str(shard), "seconds": previous + seconds,
                      "backend": backend.name(), "device": backend.device_description(),
                      "tf32": backend.tf32_settings()})


def _unit_bar(units, desc, progress):
    from tqdm.auto import tqdm
    return tqdm(units, desc=desc, disable=not progress, unit="unit", dynamic_ncols=True)


# ----------------------------------------------------------------------------
# synth and prepare: the only stages that read or write audio


def synth_stage(ws: Workspace, *, log=print) -> Path:
    """Generate the built-in corpus (idempotent: finished tracks are kept)."""
    from .data.synth import generate_corpus

    data = ws.config["data"]
    # 16-bit stereo wav: the mixture and four sources
    corpus_bytes = 5 * 2 * 2 * 44100 * (data["synth_train_tracks"] * data["synth_seconds"]
                                        + data["synth_test_tracks"] * data["synth_test_seconds"])
    preflight.check_output_folder(ws.synthetic_root, corpus_bytes - preflight.bytes_under(ws.synthetic_root),
                                  "the synthetic corpus")
    started = time.perf_counter()
    root = generate_corpus(ws.synthetic_root, n_train=data["synth_train_tracks"], n_test=data["synth_test_tracks"],
                           seconds=data["synth_seconds"], test_seconds=data["synth_test_seconds"],
                           seed=data["synth_seed"])
    seconds = time.perf_counter() - started
    _record_time(root, "synth", Shard(), seconds)
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
    _record_time(path, "prepare", Shard(), time.perf_counter() - started)
    log(f"features ready in {path}")
    return path


def open_prepared_cache(ws: Workspace):
    """The cache that ``prepare`` made for this configuration, found by its
    recorded settings (the audio itself may be on another machine)."""
    from .data.cache import find_cache, open_cache

    return open_cache(find_cache(ws.config, ws.cache_root, current_key=lambda: _current_cache_key(ws)))


def _current_cache_key(ws: Workspace) -> str | None:
    """The cache key of the data as it is now, or None where it is not here."""
    from .data.cache import cache_key

    root = ws.synthetic_root if ws.config["data"]["corpus"] == "synthetic" else None
    try:
        return cache_key(ws.config, musdb_root=root)
    except UserError:
        return None


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
    """The seed of run ``run``'s initial weights. The batch order is shared by
    every run of a kind: drawn from ``train.seed`` (:func:`nca_np.train.order_rng`)."""
    return config["train"]["seed"] + run


def training_cost(unit: tuple[str, int]) -> int:
    """The relative cost of a training run: its model's number of layers
    (every layer is the same F×F product, so an MSS-DAE run costs twice a DAE run)."""
    return model_kind(unit[0]).n_layers


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
    """Train every (kind, run) unit of this shard that is not finished; the
    runs of one kind train together as one stacked model."""
    config = ws.config
    units = shard.select(training_units(config, kinds, runs), cost=training_cost)
    remove_stale_temporaries(ws.runs_dir, log=log)
    preflight.discard_damaged(_run_file_checks(ws, units), log=log,
                              consequence="that run is trained again from its last intact checkpoint, if any")
    todo = [u for u in units if not (ws.run_dir(*u) / FINAL_MODEL).exists()]
    log(f"train: {len(units)} runs in this shard, {len(units) - len(todo)} already finished")
    if not todo:
        return
    cache = open_prepared_cache(ws)
    preflight.check_segments(segment_table(cache, config["nca"]["segment_frames"]), cache, config)
    preflight.check_output_folder(ws.runs_dir, preflight.training_bytes(config, todo),
                                  f"the {len(todo)} training run(s)")
    module = backend.xp()
    data = config["data"]
    source = cache.train_frames(module=module, device_budget_bytes=_device_budget(data, module, log),
                                storage_dtype=data["device_storage"])
    settings = TrainSettings.from_config(config["train"])
    groups: dict[str, list[int]] = {}
    for kind, run in todo:
        groups.setdefault(kind, []).append(run)
    started = time.perf_counter()
    try:
        for kind, group in _unit_bar(list(groups.items()), "train", progress):
            metas = train_stacked(kind, source, [ws.run_dir(kind, run) for run in group], settings=settings,
                                  seeds=[run_seed(config, run) for run in group], order_seed=config["train"]["seed"],
                                  scaler_state=cache.scaler.state_dict(), config=config, progress=progress,
                                  log=None if progress else log, module=module)
            for run, meta in zip(group, metas):
                log(f"trained {kind} run {run}: {len(meta['history'])} epochs, "
                    f"final loss {meta['history'][-1]['loss']:.6g}")
    finally:
        del source
        backend.free_memory_pool(module)
        _record_time(ws.runs_dir, "train", shard, time.perf_counter() - started)


def _run_file_checks(ws: Workspace, units) -> list:
    """:func:`preflight.discard_damaged` checks of the runs' final models and checkpoints."""
    def damage(*arrays):
        return lambda path: preflight.npz_damage(path, arrays)
    checks = []
    for unit in units:
        folder = ws.run_dir(*unit)
        checks.append((folder / FINAL_MODEL, damage("meta", "param_0"), ()))
        checks.append((folder / CHECKPOINT, damage("meta", "param_0", "adam_m_0"), ()))
    return checks


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
    kinds = [k for k in config["train"]["kinds"] if kinds is None or k in kinds]
    return [(kind, segment) for kind in kinds for segment in segments]


def _unit_path(ws: Workspace, kind: str, segment: dict) -> Path:
    return ws.couplings_dir / kind / f"{segment['id']}.json"


def _fit_settings(nca: dict) -> dict:
    """The keyword arguments of ``fit_couplings`` that the configuration sets."""
    return {"iterations": nca["iterations"], "lr": nca["learning_rate"], "composition": nca["composition"],
            "max_iterations": nca["max_iterations"], "tolerance": nca["tolerance"], "halvings": nca["halvings"],
            "checkpoint_every": nca["checkpoint_every"]}


def _share(part: float, whole: float) -> float:
    return part / whole if whole > 0 else float("nan")


def _relative_error(C, X, V) -> float:
    """``‖V − C X‖₁ / ‖V‖₁`` (docs/method.md#convergence)."""
    xp = backend.array_module(C, X, V)
    return _share(backend.to_float(xp.abs(V - C @ X).sum()), backend.to_float(xp.abs(V).sum()))


def fit_unit(config: dict, model, mixture, vocals, *, init_seed: int, spread_seeds=(), draws=None,
             watch=None) -> tuple[dict, dict]:
    """All NCA fits, exact references and measures for one (model, segment) pair.

    Args:
        mixture, vocals: (F, T) scaled magnitudes of the segment (frames as
            columns), on the model's module.
        init_seed: the seed of each strategy's fit.
        spread_seeds: seeds of extra fits of each strategy, to measure the
            spread of the result over initialisations.
        draws: ``(strategy, n_freq, n_layers, seed) -> initial matrices``
            (e.g. :meth:`InitialDraws.take`); default: drawn when needed.
        watch: ``(label, iterations cap) -> on_checkpoint callback or None``,
            to show a fit's progress.

    Returns:
        ``(measures, matrices)``: the JSON-able numbers of the unit, and the
        host couplings matrices by strategy (for Figure 3).
    """
    from .metrics import reconstruct, snr_db, tod_r
    from .nca import fit_couplings, identity_couplings, initial_draws, linear_composition
    from .references import nearest_exact_couplings, pseudo_inverse

    nca = config["nca"]
    kind = model.kind
    draws = draws or initial_draws
    settings = _fit_settings(nca)
    output = model.predict(mixture.T).T
    target = model.decoder_output(mixture.T).T
    pinv = pseudo_inverse(mixture)

    def measure(C) -> dict:
        return {"tod_r": tod_r(C), "snr_model_db": snr_db(output, reconstruct(kind, C, mixture)),
                "relative_error": _relative_error(C, mixture, target)}

    def fit(strategy, seed):
        on_checkpoint = watch(f"{strategy} seed {seed}", settings["max_iterations"]) if watch else None
        return fit_couplings(model, mixture, strategy, seed=seed, on_checkpoint=on_checkpoint,
                             initial=draws(strategy, model.n_freq, model.n_layers, seed), **settings)

    measures = {"strategies": {}, "baselines": {}, "model_snr_true_db": snr_db(vocals, output)}
    matrices = {}
    for strategy in nca["strategies"]:
        started = time.perf_counter()
        result = fit(strategy, init_seed)
        seconds = time.perf_counter() - started
        estimate = reconstruct(kind, result.C, mixture)
        entry = {"tod_r": tod_r(result.C), "snr_model_db": snr_db(output, estimate),
                 "snr_true_db": snr_db(vocals, estimate), "losses": [float(x) for x in result.losses],
                 "seconds": seconds, "init_seed": init_seed, **result.diagnostics(),
                 "nearest_exact_to_init": measure(nearest_exact_couplings(mixture, target, result.C_initial,
                                                                          pinv=pinv))}
        if spread_seeds:
            entry["spread"] = [_spread_record(fit(strategy, seed), seed) for seed in spread_seeds]
            values = [entry["tod_r"]] + [record["tod_r"] for record in entry["spread"]]
            entry["tod_r_range"] = [min(values), max(values)]
        measures["strategies"][strategy] = entry
        matrices[f"C_{strategy}"] = backend.to_host(result.C)
    linear = linear_composition(model)
    measures["baselines"]["linear"] = {"snr_model_db": snr_db(output, reconstruct(kind, linear, mixture)),
                                       "tod_r": tod_r(linear)}
    identity = identity_couplings(model.n_freq, like=mixture)
    measures["baselines"]["identity"] = {"snr_model_db": snr_db(output, reconstruct(kind, identity, mixture))}
    measures["references"] = _references(nca, model, mixture, target, pinv, measure)
    return measures, matrices


def _spread_record(fit, seed: int) -> dict:
    """What the spread over initialisations keeps of one extra fit."""
    from .metrics import tod_r
    return {"init_seed": seed, "tod_r": tod_r(fit.C), "relative_error": fit.relative_error,
            "converged": bool(fit.converged), "iterations": fit.iterations}


def _references(nca: dict, model, mixture, target, pinv, measure) -> dict:
    """The exact references of one segment (docs/method.md#exact-references)."""
    from .nca import identity_couplings
    from .references import (frames_used, local_offsets, mean_local_map, min_norm_couplings,
                             nearest_exact_couplings)

    started = time.perf_counter()
    xp = backend.array_module(mixture)
    stride = nca["local_map_stride"]
    offsets = local_offsets(model, mixture)
    n_freq, n_frames = mixture.shape
    identity = identity_couplings(n_freq, like=offsets)
    return {
        "rank": pinv.rank, "n_freq": int(n_freq), "frames": int(n_frames), "determined": pinv.determined,
        "offset_share": _share(backend.to_float(xp.abs(offsets).sum()), backend.to_float(xp.abs(target).sum())),
        "min_norm": measure(min_norm_couplings(mixture, target, pinv=pinv)),
        "mean_local_map": {**measure(mean_local_map(model, mixture, frame_stride=stride)),
                           "frame_stride": stride, "frames_used": frames_used(n_frames, stride)},
        "nearest_identity": measure(nearest_exact_couplings(mixture, target, identity, pinv=pinv)),
        "seconds": time.perf_counter() - started,
    }


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
        from concurrent.futures import ThreadPoolExecutor

        self._requests = list(requests)
        self._position = 0
        self._ahead = ahead
        self._futures: dict = {}
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nca-draws")
        self._fill()

    def _fill(self) -> None:
        from .nca import initial_draws

        while self._position < len(self._requests) and len(self._futures) < self._ahead:
            request = self._requests[self._position]
            self._position += 1
            if request not in self._futures:
                self._futures[request] = self._pool.submit(initial_draws, *request)

    def take(self, strategy: str, n_freq: int, n_layers: int, seed: int) -> list:
        """The initial matrices of one fit (drawn now if they were not asked for ahead)."""
        from .nca import initial_draws

        request = (strategy, n_freq, n_layers, seed)
        future = self._futures.pop(request, None)
        self._fill()
        return future.result() if future is not None else initial_draws(*request)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class _FitBar:
    """A progress bar over one fit's iterations, moved at each checkpoint
    (so it costs no device read of its own); nothing without a terminal."""

    def __init__(self, enabled: bool, prefix: str = ""):
        self.enabled, self.prefix, self.bar = enabled, prefix, None

    def __call__(self, label: str, total: int):
        self.close()
        if not self.enabled:
            return None
        from tqdm.auto import tqdm
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
    from .models import model_kind

    n_freq = config["stft"]["n_fft"] // 2 + 1
    requests = []
    for kind, segment in todo:
        seeds = [unit_draws(config, kind, segment["number"])[1], *spread_seeds(config, kind, segment["number"])]
        n_layers = model_kind(kind).n_layers
        requests += [(strategy, n_freq, n_layers, seed) for strategy in config["nca"]["strategies"]
                     for seed in seeds]
    return requests


def couplings_stage(ws: Workspace, *, shard=Shard(), kinds=None, progress=True, log=print) -> None:
    """Fit the NCA strategies and the exact references for every (kind,
    segment) unit of this shard."""
    config = ws.config
    remove_stale_temporaries(ws.couplings_dir, log=log)
    cache = open_prepared_cache(ws)
    segments = segment_table(cache, config["nca"]["segment_frames"])
    preflight.check_segments(segments, cache, config)
    segments_path = ws.couplings_dir / "segments.json"
    if preflight.json_damage(segments_path, holds=list) or json.loads(segments_path.read_text()) != segments:
        write_json(segments_path, segments)
    units = shard.select(couplings_units(config, segments, kinds))
    preflight.discard_damaged(((_unit_path(ws, *u), _unit_damage, [_unit_path(ws, *u).with_suffix(".npz")])
                               for u in units), log=log)
    todo = [u for u in units if not _unit_path(ws, *u).exists()]
    log(f"couplings: {len(units)} (model, segment) units in this shard, {len(units) - len(todo)} already done")
    if not todo:
        return
    _require_trained(ws, {(kind, unit_draws(config, kind, seg["number"])[0]) for kind, seg in todo})
    n_figure = sum(seg["number"] == FIGURE_SEGMENT for _, seg in todo)
    preflight.check_output_folder(ws.couplings_dir, preflight.couplings_bytes(config, len(todo), n_figure),
                                  f"the {len(todo)} couplings unit(s)")
    module = backend.xp()
    version, chash = code_version(), config_hash(config)
    started = time.perf_counter()
    models = {}  # the runs of the current kind, loaded once (units are sorted by kind)
    draws = InitialDraws(_fit_requests(config, todo))
    bar = _FitBar(progress)
    try:
        for kind, segment in _unit_bar(todo, "couplings", progress):
            unit_started = time.perf_counter()
            run, init_seed = unit_draws(config, kind, segment["number"])
            if (kind, run) not in models:
                models = {key: m for key, m in models.items() if key[0] == kind}
                models[kind, run] = load_model(ws.run_dir(kind, run) / FINAL_MODEL, module=module)[0]
            model = models[kind, run]
            data = cache.segments(config["nca"]["segment_frames"], indices=[segment["number"]], log=None)[0]
            mixture = backend.to_device(data.mixture, module)
            vocals = backend.to_device(data.vocals, module)
            bar.prefix = f"{kind} {segment['id']}"
            measures, matrices = fit_unit(config, model, mixture, vocals, init_seed=init_seed,
                                          spread_seeds=spread_seeds(config, kind, segment["number"]),
                                          draws=draws.take, watch=bar)
            bar.close()
            if segment["number"] == FIGURE_SEGMENT:
                target = model.decoder_output(mixture.T).T
                save_npz(_unit_path(ws, kind, segment).with_suffix(".npz"),
                         {**matrices, "mixture": data.mixture, "vocals": data.vocals,
                          "target": backend.to_host(target)})
            unit = {"config_hash": chash, "code_version": version, "kind": kind, "segment": segment,
                    "run": run, "model_seed": run_seed(config, run), "composition": config["nca"]["composition"],
                    **measures, "seconds": time.perf_counter() - unit_started}
            write_json(_unit_path(ws, kind, segment), unit)
            log(_unit_line(unit))
    finally:
        bar.close()
        draws.close()
        models.clear()
        backend.free_memory_pool(module)
        _record_time(ws.couplings_dir, "couplings", shard, time.perf_counter() - started)


#: What every couplings unit file holds (a file without them is damaged).
UNIT_KEYS = ("config_hash", "code_version", "kind", "segment", "run", "strategies", "baselines", "references")


def _unit_damage(path: Path) -> str | None:
    """Why a couplings unit file cannot count as done (None: it can): not
    JSON, keys missing, or, for the segment of Figure 3, its matrices
    (the ``.npz`` beside it) missing or damaged."""
    reason = preflight.json_damage(path, UNIT_KEYS)
    if reason is not None:
        return reason
    unit = json.loads(path.read_text(encoding="utf-8"))
    if unit["segment"].get("number") != FIGURE_SEGMENT:
        return None
    matrices = path.with_suffix(".npz")
    if not matrices.exists():
        return f"the matrices of Figure 3 ({matrices.name}) are missing"
    reason = preflight.npz_damage(matrices, ["mixture", "vocals", "target"]
                                  + [f"C_{strategy}" for strategy in unit["strategies"]])
    return None if reason is None else f"its Figure 3 matrices {matrices.name}: {reason}"


def _unit_line(unit: dict) -> str:
    parts = [f"{s} TOD-R {m['tod_r']:.3g}, SNR {m['snr_model_db']:.1f} dB, error {m['relative_error']:.3g}"
             f"{'' if m['converged'] else ' (not converged)'}" for s, m in unit["strategies"].items()]
    refs = unit["references"]
    parts.append(f"min-norm TOD-R {refs['min_norm']['tod_r']:.3g}, mean local map TOD-R "
                 f"{refs['mean_local_map']['tod_r']:.3g}, rank X {refs['rank']} of F {refs['n_freq']}")
    seg = unit["segment"]
    return (f"couplings {unit['kind']} {seg['id']} ({seg['track']} #{seg['index']}, run {unit['run']}, "
            f"{unit['seconds']:.1f} s): " + "; ".join(parts))


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
    for kind, seg in expected:
        reason = preflight.json_damage(_unit_path(ws, kind, seg), UNIT_KEYS)
        if reason is not None:
            raise UserError(f"cannot report: the couplings unit {_unit_path(ws, kind, seg)} is damaged ({reason}); "
                            "run `nca-np couplings` again: it recomputes that unit")
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


def _prepared_cache_or_none(ws: Workspace):
    """The prepared cache, or None where it is not (the report can be made
    on a machine holding only the runs and couplings)."""
    try:
        return open_prepared_cache(ws)
    except UserError:
        return None


def _timing_records(ws: Workspace, cache) -> list[Path]:
    """The wall-time records of every stage, each kept with what it made."""
    from .evaluate import evaluation_dir

    folders = [ws.synthetic_root, cache.path if cache is not None else None, ws.runs_dir, ws.couplings_dir,
               evaluation_dir(ws)]
    return [path for folder in folders if folder is not None
            for path in sorted((Path(folder) / "timings").glob("*.json"))]


def _stage_times(records: list[Path]) -> dict:
    """Wall time per stage, summed over shards and resumptions."""
    totals: dict[str, float] = {}
    for path in records:
        record = json.loads(path.read_text())
        totals[record["stage"]] = totals.get(record["stage"], 0.0) + record["seconds"]
    return {stage: round(seconds, 1) for stage, seconds in sorted(totals.items())}


def report_stage(ws: Workspace, *, log=print) -> Path:
    """Tables, figures and metadata from the saved runs and couplings."""
    from .features import StftSettings
    from .nca import linear_composition
    from .report import write_report

    config = ws.config
    remove_stale_temporaries(ws.results_dir, log=log)
    segments_path = ws.couplings_dir / "segments.json"
    if not segments_path.exists():
        raise UserError(f"cannot report: no couplings results for this configuration in {ws.couplings_dir}; "
                        "run `nca-np couplings` first")
    if preflight.json_damage(segments_path, holds=list) is not None:
        raise UserError(f"cannot report: {segments_path} is damaged; run `nca-np couplings` again to rewrite it")
    segments = json.loads(segments_path.read_text())
    if not segments:
        raise UserError(f"cannot report: {segments_path} lists no NCA segment (nca.segment_frames is longer than "
                        "every test excerpt); run `nca-np couplings` again for its advice")
    units = _load_units(ws, segments)
    kinds = list(config["train"]["kinds"])
    histories = {kind: [] for kind in kinds}
    sums, training_versions, frame_sources, tf32 = {}, [], set(), []
    for kind, run, model, meta in _trained_models(ws):
        histories[kind].append(meta["history"])
        linear = linear_composition(model)
        sums[kind] = linear if kind not in sums else sums[kind] + linear
        if meta["versions"] not in training_versions:
            training_versions.append(meta["versions"])
        frame_sources.update(meta.get("frame_sources", []))
        tf32 += [setting for setting in meta.get("tf32", []) if setting not in tf32]
    linear_compositions = {kind: sums[kind] / config["train"]["runs"] for kind in kinds}
    figure = _figure_segment(ws, segments[FIGURE_SEGMENT], kinds)
    settings = StftSettings.from_config(config["stft"])
    cache = _prepared_cache_or_none(ws)
    timings = _timing_records(ws, cache)
    metadata = {
        "profile": ws.profile, "config": config, "config_hash": config_hash(config),
        "composition": config["nca"]["composition"], "code_version": units[0]["code_version"],
        "seeds": {"train": {str(r): run_seed(config, r) for r in range(config["train"]["runs"])},
                  "nca": config["nca"]["seed"],
                  "drawn_runs": {f"{u['kind']}/{u['segment']['id']}": u["run"] for u in units}},
        "versions": {"training": training_versions, "report": backend.versions()}, "backend": _stage_records(timings, "backend"), "device": _stage_records(timings, "device"),
        "wall_time_seconds": _stage_times(timings), "n_segments": len(segments),
        "data": data_record(ws, cache), "overrides": list(ws.overrides),
        "training": {"frame_sources": sorted(frame_sources), "tf32": tf32,
                     "batch_order": "one shuffled order per epoch shared by the runs of a model kind "
                                    "(stream batch-order/<kind> of train.seed)"},
    }
    preflight.check_output_folder(ws.results_dir, preflight.REPORT_BYTES, "the report")
    paths = write_report(ws.results_dir, units=units, kinds=kinds, strategies=list(config["nca"]["strategies"]),
                         histories=histories, linear_compositions=linear_compositions, figure_segment=figure,
                         sample_rate=settings.sample_rate, n_fft=settings.n_fft, metadata=metadata, hop=settings.hop,
                         separation=_separation_results(ws))
    latest = _point_latest(ws)
    log(f"report written to {ws.results_dir / 'report.md'} ({len(paths)} files; latest of profile "
        f"{ws.profile}: {latest.relative_to(ws.root)})")
    return ws.results_dir / "report.md"


def _stage_records(records: list[Path], key: str) -> list[str]:
    """The distinct values of ``key`` (backend, device) over the stages run."""
    return sorted({json.loads(p.read_text()).get(key, "unknown") for p in records})


#: How the report names each source of test excerpts (see nca_np.data.excerpts).
CUT_LISTS = {"sisec2018": "the published SiSEC 2018 list", "activation-confidence": "activation confidence",
             "whole-track": "whole track (shorter than an excerpt)"}


def data_record(ws: Workspace, cache) -> dict:
    """Where the data came from: corpus, root, and the cut list the test
    excerpts were taken from (counted in the prepared cache)."""
    record = {"corpus": ws.config["data"]["corpus"], "root": None, "cut_list": None, "cache": None}
    if cache is None:
        record["cut_list"] = "not recorded (the feature cache is not on this machine)"
        return record
    counts: dict[str, int] = {}
    for entry in cache.manifest["test"]:
        counts[entry["source"]] = counts.get(entry["source"], 0) + 1
    record["root"] = cache.manifest["data"]["root"]
    record["cut_list"] = "; ".join(f"{CUT_LISTS.get(source, source)} ({n} excerpt{'s' if n != 1 else ''})"
                                   for source, n in sorted(counts.items()))
    record["cache"] = cache.key
    return record


def _point_latest(ws: Workspace) -> Path:
    """Make ``results/<profile>-latest`` point at this report's folder: a
    relative symbolic link, replaced atomically; where the file system has
    none, the text file ``<profile>-latest.txt`` holding the folder's name."""
    import os

    from .atomic import temporary_path, write_text

    link, target = ws.latest_results, ws.results_dir.name
    pointer = link.with_name(link.name + ".txt")
    tmp = temporary_path(link)
    try:
        os.symlink(target, tmp, target_is_directory=True)
        os.replace(tmp, link)
    except OSError:
        tmp.unlink(missing_ok=True)
        write_text(pointer, target + "\n")
        return pointer
    pointer.unlink(missing_ok=True)
    return link


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
    """Every stage in order; each skips what is already done. What could
    fail late is checked first (:mod:`nca_np.preflight`)."""
    preflight.check_segment_length(ws.config)
    if shard.count == 1:
        prepare_stage(ws, musdb_root=musdb_root, progress=progress, log=log)
    else:  # shards started together must not all write the same cache
        try:
            open_prepared_cache(ws)
        except UserError:
            raise UserError("sharded runs read a prepared cache: run `nca-np prepare` once before "
                            "starting the shards") from None
    _check_room_for_the_rest(ws, shard)
    train_stage(ws, shard=shard, progress=progress, log=log)
    evaluate_where_possible(ws, musdb_root=musdb_root, shard=shard, progress=progress, log=log)
    couplings_stage(ws, shard=shard, progress=progress, log=log)
    if shard.count > 1:
        log(f"shard {shard.index}/{shard.count} done; run `nca-np report` once every shard has finished")
        return None
    return report_stage(ws, log=log)


def _check_room_for_the_rest(ws: Workspace, shard: Shard) -> None:
    """Before the first training: NCA segments exist, and the work folder
    has room for every unit left to this shard and the report."""
    config = ws.config
    cache = open_prepared_cache(ws)
    segments = segment_table(cache, config["nca"]["segment_frames"])
    preflight.check_segments(segments, cache, config)
    trainings = [u for u in shard.select(training_units(config)) if not (ws.run_dir(*u) / FINAL_MODEL).exists()]
    fits = [u for u in shard.select(couplings_units(config, segments)) if not _unit_path(ws, *u).exists()]
    n_figure = sum(seg["number"] == FIGURE_SEGMENT for _, seg in fits)
    needed = (preflight.training_bytes(config, trainings) + preflight.couplings_bytes(config, len(fits), n_figure)
              + preflight.REPORT_BYTES)
    preflight.check_output_folder(ws.root, needed, "the training runs, couplings and report left to do")
