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

This module holds the stages that read audio or train (synth, prepare,
train) and :func:`reproduce`, which runs every stage in order; the others
live in their own modules — :mod:`nca_np.evaluate`, :mod:`nca_np.couplings`,
:mod:`nca_np.report.stage` — and all share :mod:`nca_np.workspace`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from . import backend, preflight
from .atomic import remove_stale_temporaries
from .couplings import FIGURE_SEGMENT, couplings_stage, couplings_units, segment_table, unit_path
from .data.cache import prepare_cache
from .data.synth import generate_corpus
from .errors import UserError
from .evaluate import EvaluationUnavailable, evaluate_stage
from .models import model_kind
from .report.stage import report_stage
from .train import CHECKPOINT, FINAL_MODEL, TrainSettings, train_stacked
from .workspace import Shard, Workspace, open_prepared_cache, record_time, run_seed, training_units, unit_bar

#: What the command line runs (each stage takes the workspace first).
__all__ = ["Shard", "Workspace", "couplings_stage", "evaluate_where_possible", "prepare_stage", "report_stage",
           "reproduce", "synth_stage", "train_stage"]


# ----------------------------------------------------------------------------
# synth and prepare: the only stages that read or write audio


def synth_stage(ws: Workspace, *, log=print) -> Path:
    """Generate the built-in corpus (idempotent: finished tracks are kept)."""
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
    record_time(root, "synth", Shard(), seconds)
    log(f"synthetic corpus ready at {root} ({seconds:.1f} s)")
    return root


def prepare_stage(ws: Workspace, *, musdb_root=None, progress=True, log=print) -> Path:
    """Features, scaler, cut list (reads audio). The built-in corpus is
    generated first when it is the data and no other root is given."""
    _refuse_ignored_dataset(ws, musdb_root)
    if ws.uses_builtin_corpus and musdb_root is None:
        synth_stage(ws, log=log)
    if ws.config["data"]["corpus"] == "synthetic" and musdb_root is None:
        musdb_root = ws.synthetic_root
    started = time.perf_counter()
    path = prepare_cache(ws.config, ws.cache_root, musdb_root=musdb_root, progress=progress, log=log)
    record_time(path, "prepare", Shard(), time.perf_counter() - started)
    log(f"features ready in {path}")
    return path


def _refuse_ignored_dataset(ws: Workspace, musdb_root) -> None:
    """``$MUSDB_PATH`` names a dataset, but a profile of the built-in corpus
    (data.corpus "synthetic", no data.root) would generate and read its own:
    refused, rather than ignored, with the two ways on. ``--musdb-root`` is
    used as given (its excerpts then follow the profile's corpus setting)."""
    from_env = os.environ.get("MUSDB_PATH", "").strip()
    if ws.uses_builtin_corpus and musdb_root is None and from_env:
        raise UserError(f"MUSDB_PATH is set ({from_env}) but profile {ws.profile!r} uses the built-in synthetic "
                        "corpus (data.corpus = 'synthetic', no data.root): unset MUSDB_PATH to run on the synthetic "
                        f"corpus, or pass --musdb-root {from_env} to use that dataset with this profile")


# ----------------------------------------------------------------------------
# train


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
        for kind, group in unit_bar(list(groups.items()), "train", progress):
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
        record_time(ws.runs_dir, "train", shard, time.perf_counter() - started)


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



def evaluate_where_possible(ws: Workspace, *, musdb_root=None, shard=Shard(), progress=True, log=print) -> None:
    """The evaluate stage, or one line saying why this machine cannot run it
    (no test audio, museval or ffmpeg): ``reproduce`` goes on without it."""
    try:
        evaluate_stage(ws, musdb_root=musdb_root, shard=shard, progress=progress, log=log)
    except EvaluationUnavailable as exc:
        log(f"evaluate skipped: {exc}")


# ----------------------------------------------------------------------------
# reproduce


def reproduce(ws: Workspace, *, musdb_root=None, shard=Shard(), progress=True, log=print) -> Path | None:
    """Every stage in order; each skips what is already done. What could
    fail late is checked first (:mod:`nca_np.preflight`).

    Only synth, prepare and evaluate read audio: where the prepared features
    of this configuration are already in ``cache/`` (a machine given only the
    cache, without the audio or the audio libraries), synth and prepare are
    skipped with one line, evaluate says in one line what it lacks, and the
    runs are trained, fitted and reported."""
    preflight.check_segment_length(ws.config)
    prepared = _prepared_cache_or_none(ws)
    if prepared is not None:
        log(f"synth and prepare skipped: the prepared features of this configuration are in {prepared.path}")
    elif shard.count == 1:
        prepare_stage(ws, musdb_root=musdb_root, progress=progress, log=log)
    else:  # shards started together must not all write the same cache
        raise UserError("sharded runs read a prepared cache: run `nca-np prepare` once before "
                        "starting the shards")
    _check_room_for_the_rest(ws, shard)
    train_stage(ws, shard=shard, progress=progress, log=log)
    evaluate_where_possible(ws, musdb_root=musdb_root, shard=shard, progress=progress, log=log)
    couplings_stage(ws, shard=shard, progress=progress, log=log)
    if shard.count > 1:
        log(f"shard {shard.index}/{shard.count} done; run `nca-np report` once every shard has finished")
        return None
    return report_stage(ws, log=log)


def _prepared_cache_or_none(ws: Workspace):
    """The prepared feature cache of this configuration, or None when
    ``prepare`` has not made it (or it is incomplete)."""
    try:
        return open_prepared_cache(ws)
    except UserError:
        return None


def _check_room_for_the_rest(ws: Workspace, shard: Shard) -> None:
    """Before the first training: NCA segments exist, and the work folder
    has room for every unit left to this shard and the report."""
    config = ws.config
    cache = open_prepared_cache(ws)
    segments = segment_table(cache, config["nca"]["segment_frames"])
    preflight.check_segments(segments, cache, config)
    trainings = [u for u in shard.select(training_units(config)) if not (ws.run_dir(*u) / FINAL_MODEL).exists()]
    fits = [u for u in shard.select(couplings_units(config, segments)) if not unit_path(ws, *u).exists()]
    n_figure = sum(seg["number"] == FIGURE_SEGMENT for _, seg in fits)
    needed = (preflight.training_bytes(config, trainings) + preflight.couplings_bytes(config, len(fits), n_figure)
              + preflight.REPORT_BYTES)
    preflight.check_output_folder(ws.root, needed, "the training runs, couplings and report left to do")
