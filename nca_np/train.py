"""Training: R runs of one model kind at once, checkpoints, exact resume.

A *frame source* (see :mod:`nca_np.frames`) has ``n_frames``, ``n_freq`` and
``batches(batch_size, rng)``, which yields ``(X, Y)`` pairs of shape (B, F),
frames as rows, in an order that depends only on ``rng``.

The runs of one model kind train together as one stacked model
(:mod:`nca_np.stacked`, docs/gradients.md#stacked-training): every run sees
the same shuffled batches, in an order drawn from the stream
``backend.stream_key("batch-order", kind)`` of the *order seed* (the
experiment's ``train.seed``), while each run keeps its own initial weights
(from its own seed), learning rate, plateau schedule and stopping. A run
that stops is written and leaves the stack; the others go on.

What is written per run is what a single run writes: after every epoch
``checkpoint.npz`` — parameters, Adam's moments and step count, the
schedule, the shuffling generator's state, the scaler, configuration, seed,
versions and loss history — and, when the schedule stops the run,
``model.npz``, whose existence marks the run as finished. The checkpoints of
one epoch are committed in two phases (every run's ``checkpoint.npz.next``,
then each renamed to ``checkpoint.npz``); a restart finishes or undoes a
commit that was interrupted (:func:`_settle`), so the runs of a stack always
resume from the same epoch, exactly as if they had never stopped.

:func:`train` is the same loop with one run.
"""

from __future__ import annotations

import json
import math
import os
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy

from . import backend
from .atomic import save_npz
from .errors import UserError
from .layers import dense_relu_forward
from .models import Model
from .optim import PlateauSchedule
from .stacked import StackedAdam, StackedModel

CHECKPOINT = "checkpoint.npz"
#: The new checkpoint of an epoch until every run of the stack has one (see _settle).
NEXT_CHECKPOINT = "checkpoint.npz.next"
FINAL_MODEL = "model.npz"
#: The runs of a kind share the batch order drawn from this named stream of
#: the order seed (see :func:`order_rng`).
ORDER_STREAM = "batch-order"


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass(frozen=True)
class TrainSettings:
    """The ``[train]`` values that shape one run (docs/method.md#training)."""

    batch_size: int = 64
    learning_rate: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    patience_halve: int = 2
    patience_stop: int = 4
    max_epochs: int = 100
    dtype: str = "float32"

    @classmethod
    def from_config(cls, section: dict) -> "TrainSettings":
        """The run's values from a ``[train]`` table; its other keys (kinds,
        runs, seed) belong to the experiment. Unknown keys are rejected when
        the profile is loaded (:func:`nca_np.config.validate`), as for every
        section."""
        return cls(**{k: section[k] for k in cls.__dataclass_fields__ if k in section})


def order_rng(kind: str, order_seed: int) -> numpy.random.Generator:
    """The generator of the batch order shared by every run of ``kind``:
    stream ``stream_key("batch-order", kind)`` of ``order_seed``."""
    return backend.rng(order_seed, backend.stream_key(ORDER_STREAM, kind))


# ----------------------------------------------------------------------------
# files


def _meta_array(meta: dict) -> numpy.ndarray:
    return numpy.array(json.dumps(meta, sort_keys=True))


def save_state(path, model: Model, meta: dict, *, optimizer=None, scaler_state=None) -> None:
    """Write parameters (and optionally an :class:`~nca_np.optim.Adam`'s
    moments, through its ``state_dict``, and the scaler) with a JSON
    ``meta`` record to ``path``, atomically."""
    arrays = {f"param_{i}": backend.to_host(p) for i, p in enumerate(model.params)}
    if optimizer is not None:
        state = optimizer.state_dict()
        arrays.update({f"adam_m_{i}": backend.to_host(m) for i, m in enumerate(state["m"])})
        arrays.update({f"adam_v_{i}": backend.to_host(v) for i, v in enumerate(state["v"])})
    for name, value in (scaler_state or {}).items():
        arrays[f"scaler_{name}"] = numpy.asarray(value)
    arrays["meta"] = _meta_array(meta)
    save_npz(path, arrays)


def read_state(path) -> tuple[dict, dict]:
    """The arrays (host) and the meta record of a file written by :func:`save_state`."""
    try:
        with numpy.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        meta = json.loads(str(arrays.pop("meta")))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise UserError(f"{path}: not a readable nca_np model or checkpoint ({type(exc).__name__}: {exc}); "
                        "delete it to start that run again") from exc
    return arrays, meta


def _epochs_in(path) -> int:
    """Epochs recorded in a checkpoint (its meta only)."""
    try:
        with numpy.load(path, allow_pickle=False) as data:
            return len(json.loads(str(data["meta"]))["history"])
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise UserError(f"{path}: not a readable nca_np checkpoint ({type(exc).__name__}: {exc}); "
                        "delete it to start that run again") from exc


def recorded_health(run_dir) -> dict | None:
    """The health :func:`run_health` recorded in a finished run's
    ``model.npz`` (``meta["health"]``, plus ``improved``, ``first_loss``
    and ``best_loss``); None for a run trained before health was recorded.
    Reads the meta record only."""
    path = Path(run_dir) / FINAL_MODEL
    try:
        with numpy.load(path, allow_pickle=False) as data:
            return json.loads(str(data["meta"])).get("health")
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise UserError(f"{path}: not a readable nca_np model ({type(exc).__name__}: {exc}); "
                        "delete it to train that run again") from exc


def load_model(path, *, module=None) -> tuple[Model, dict, dict]:
    """A model saved by training, on ``module`` (default: the active one).

    Returns:
        ``(model, meta, scaler_state)``.
    """
    arrays, meta = read_state(path)
    module = module if module is not None else backend.xp()
    n_params = sum(1 for k in arrays if k.startswith("param_"))
    params = [backend.to_device(arrays[f"param_{i}"], module) for i in range(n_params)]
    scaler_state = {k[len("scaler_"):]: v for k, v in arrays.items() if k.startswith("scaler_")}
    return Model(meta["kind"], params), meta, scaler_state


def frame_storage(source) -> str:
    """The precision the training frames are kept in ("float32" unless the
    source stores them more coarsely, as device-resident float16 frames)."""
    return str(getattr(source, "storage_dtype", "float32"))


def frame_source(source) -> str:
    """"device-resident" when the source holds every frame in device memory,
    else "streamed" (batches read from host arrays or disk)."""
    return "device-resident" if getattr(source, "device_resident", False) else "streamed"


# ----------------------------------------------------------------------------
# the runs and what they share


@dataclass
class _Job:
    """What every run of one :func:`train_stacked` call shares."""

    kind: str
    source: object
    settings: TrainSettings
    order_seed: int
    module: object
    scaler_state: dict | None
    config: dict | None
    progress: bool
    log: object
    on_epoch_end: object
    versions: dict = field(default_factory=backend.versions)
    health_frames: object = None

    @property
    def batch_order(self) -> dict:
        return {"seed": self.order_seed, "stream": [ORDER_STREAM, self.kind]}


@dataclass
class _Run:
    """One run of a stack: its folder, seed, schedule and history.

    ``saved`` holds the ``(arrays, meta)`` of the checkpoint it resumes from.
    """

    run_dir: Path
    seed: int
    schedule: PlateauSchedule
    history: list = field(default_factory=list)
    status: str = "running"
    frame_sources: list = field(default_factory=list)
    tf32: list = field(default_factory=list)
    saved: tuple | None = None


def train_stacked(kind: str, source, run_dirs, *, settings: TrainSettings, seeds, order_seed: int,
                  scaler_state: dict | None = None, config: dict | None = None, progress: bool = True,
                  log=None, on_epoch_end=None, module=None) -> list[dict]:
    """Train (or resume) R runs of one kind together, one folder per run.

    Args:
        kind: a registered model kind.
        source: a frame source (``n_frames``, ``n_freq``, ``batches``).
        run_dirs: one folder per run; each holds ``checkpoint.npz`` and, once
            finished, ``model.npz``.
        settings: batch size, Adam's hyper-parameters, the schedule.
        seeds: one per run: run r's initial weights come from ``seeds[r]``.
        order_seed: the shared batch order comes from :func:`order_rng`.
        scaler_state, config: saved with every model.
        progress: show a progress bar per epoch.
        log: callable taking one line per epoch, with the time it took (None: silent).
        on_epoch_end: optional callable ``(record) -> None``, once per run
            after each epoch's checkpoints (tests use it to interrupt).
        module: array module (default: the active backend).

    Returns:
        Each run's final meta record (history, status, …), in the order of
        ``run_dirs``. Finished runs are not trained again.
    """
    run_dirs, seeds = [Path(d) for d in run_dirs], [int(s) for s in seeds]
    if len(run_dirs) != len(seeds):
        raise ValueError(f"{len(run_dirs)} run folders for {len(seeds)} seeds")
    job = _Job(kind, source, settings, int(order_seed), module if module is not None else backend.xp(),
               scaler_state, config, progress, log, on_epoch_end)
    metas = {}
    pending = []
    for run_dir, seed in zip(run_dirs, seeds):
        if (run_dir / FINAL_MODEL).exists():
            metas[run_dir] = read_state(run_dir / FINAL_MODEL)[1]
        else:
            pending.append((run_dir, seed))
    _settle([run_dir for run_dir, _ in pending])
    runs = []
    for run_dir, seed in pending:
        run, finished = _open_run(job, run_dir, seed)
        if finished is not None:
            metas[run_dir] = finished
        else:
            runs.append(run)
    for group in _by_progress(runs):
        metas.update(_train_together(job, group))
    return [metas[run_dir] for run_dir in run_dirs]


def train(kind: str, source, run_dir, *, settings: TrainSettings, seed: int,
          scaler_state: dict | None = None, config: dict | None = None,
          progress: bool = True, log=None, on_epoch_end=None, module=None, order_seed: int | None = None) -> dict:
    """Train (or resume training) one model: :func:`train_stacked` with one run.

    Its initial weights come from ``seed``, its batch order from
    :func:`order_rng` of ``order_seed`` (default: ``seed``). Returns the
    final meta record (history, status, …); a finished run is not trained again.
    """
    return train_stacked(kind, source, [run_dir], settings=settings, seeds=[seed],
                         order_seed=seed if order_seed is None else order_seed, scaler_state=scaler_state,
                         config=config, progress=progress, log=log, on_epoch_end=on_epoch_end, module=module)[0]


# ----------------------------------------------------------------------------
# resume


def _settle(run_dirs) -> None:
    """Finish or undo an interrupted two-phase commit of the runs' checkpoints.

    If every run has a checkpoint of the newest epoch (renamed, or still
    ``checkpoint.npz.next``), the commit had finished writing: the renames
    are completed. Otherwise it stopped while writing: the new files are
    removed, and every run resumes from the epoch before.
    """
    pending = [d for d in run_dirs if (d / NEXT_CHECKPOINT).exists()]
    if not pending:
        return
    newest = {d: _epochs_in(d / NEXT_CHECKPOINT) for d in pending}
    target = max(newest.values())

    def has_target(d):
        return newest.get(d) == target or ((d / CHECKPOINT).exists() and _epochs_in(d / CHECKPOINT) == target)
    complete = all(has_target(d) for d in run_dirs)
    for d in pending:
        if complete and newest[d] == target:
            os.replace(d / NEXT_CHECKPOINT, d / CHECKPOINT)
        else:
            (d / NEXT_CHECKPOINT).unlink()


def _open_run(job: _Job, run_dir: Path, seed: int) -> tuple[_Run | None, dict | None]:
    """The run, fresh or as its checkpoint left it; or, for a run whose
    checkpoint says finished (stopped before ``model.npz`` was written),
    ``(None, meta)`` once that model is written."""
    settings = job.settings
    run = _Run(run_dir, seed, PlateauSchedule(settings.patience_halve, settings.patience_stop, settings.max_epochs))
    checkpoint = run_dir / CHECKPOINT
    if not checkpoint.exists():
        return run, None
    arrays, meta = read_state(checkpoint)
    _check_resumable(job, checkpoint, meta)
    if meta["status"] == "finished":
        params = [arrays[f"param_{i}"] for i in range(sum(k.startswith("param_") for k in arrays))]
        params = [backend.to_device(param, job.module) for param in params]
        return None, _finish(job, Model(meta["kind"], params), meta, run_dir)
    run.schedule = PlateauSchedule.from_state(meta["schedule"])
    run.history, run.saved = meta["history"], (arrays, meta)
    run.frame_sources, run.tf32 = list(meta.get("frame_sources", [])), list(meta.get("tf32", []))
    if job.log:
        job.log(f"{job.kind} seed {seed}: resuming after epoch {len(run.history)}")
    return run, None


def _check_resumable(job: _Job, checkpoint: Path, meta: dict) -> None:
    storage = frame_storage(job.source)
    if meta["frame_storage"] != storage:
        raise UserError(f"{checkpoint} was trained on {meta['frame_storage']} frames, this machine would "
                        f"feed {storage} ones: resume where it started, or set data.device_storage to match")
    if meta.get("batch_order") != job.batch_order:
        raise UserError(f"{checkpoint} was trained with another batch order ({meta.get('batch_order')}, "
                        f"this run would use {job.batch_order}); delete the run's folder to train it again")


def _by_progress(runs: list[_Run]) -> list[list[_Run]]:
    """The runs grouped by how far they are (epochs done and batch-order
    state): each group trains as one stack. Normally there is one group;
    runs of a folder trained with other shards or run lists may differ."""
    groups: dict[str, list[_Run]] = {}
    for run in runs:
        key = json.dumps([len(run.history), run.saved[1]["rng_state"] if run.saved else None], sort_keys=True)
        groups.setdefault(key, []).append(run)
    return sorted(groups.values(), key=lambda group: -len(group[0].history))


def _restore(stack: StackedModel, optimizer: StackedAdam, index: int, arrays: dict, meta: dict) -> None:
    """Load run ``index``'s checkpoint into the stack and, through
    ``Adam.load_state_dict``, into its optimiser."""
    for i, view in enumerate(stack.run_params(index)):
        view[...] = backend.to_device(arrays[f"param_{i}"], stack.module)
    n_params = len(stack.layout.shapes)
    optimizer.runs[index].load_state_dict({**meta["adam"], "m": [arrays[f"adam_m_{i}"] for i in range(n_params)],
                                           "v": [arrays[f"adam_v_{i}"] for i in range(n_params)]})


# ----------------------------------------------------------------------------
# the epochs


def _train_together(job: _Job, runs: list[_Run]) -> dict:
    """Train runs that are equally far as one stack until every one has
    stopped; returns ``{run_dir: final meta}``."""
    dtype = numpy.dtype(job.settings.dtype)
    stack = StackedModel.build(job.kind, job.source.n_freq, [run.seed for run in runs], dtype=dtype,
                               module=job.module)
    optimizer = StackedAdam(stack, lr=job.settings.learning_rate, beta1=job.settings.beta1,
                            beta2=job.settings.beta2, eps=job.settings.eps)
    rng = order_rng(job.kind, job.order_seed)
    for index, run in enumerate(runs):
        if run.saved is not None:
            _restore(stack, optimizer, index, *run.saved)
            rng.bit_generator.state = run.saved[1]["rng_state"]
            run.saved = None
    finished = {}
    while runs:
        squared_errors, seconds = _run_epoch(job, runs, stack, optimizer, rng)
        records = [_end_of_epoch(job, run, optimizer.runs[i], squared_errors[i], seconds, len(runs))
                   for i, run in enumerate(runs)]
        metas = _commit(job, runs, stack, optimizer, rng)
        for index, run in enumerate(runs):
            if run.status == "finished":
                finished[run.run_dir] = _finish(job, stack.run_model(index), metas[index], run.run_dir)
        if job.log:
            job.log(_epoch_line(job.kind, runs, records, seconds, job.source.n_frames))
        for record in records:
            if job.on_epoch_end is not None:
                job.on_epoch_end(record)
        keep = [i for i, run in enumerate(runs) if run.status == "running"]
        if keep and len(keep) < len(runs):
            stack, optimizer = _without_stopped(stack, optimizer, keep)
        runs = [runs[i] for i in keep]
    return finished


def _without_stopped(stack: StackedModel, optimizer: StackedAdam, keep: list[int]):
    """The stack and optimiser of the runs still going (stopped runs are frozen: written, and dropped)."""
    smaller = stack.select(keep)
    return smaller, optimizer.select(keep, smaller)


def _run_epoch(job: _Job, runs: list[_Run], stack: StackedModel, optimizer: StackedAdam, rng):
    """One pass over every training frame for the whole stack.

    Returns:
        ``(S, seconds)``: S the (R,) host float64 sums of every run's
        squared errors over the epoch (accumulated in float64 on the
        device), and the epoch's wall time.
    """
    from tqdm.auto import tqdm

    module, source, batch_size = job.module, job.source, job.settings.batch_size
    n_batches = math.ceil(source.n_frames / batch_size)
    dtype = stack.dtype
    # (R, batches): each run's sums in a contiguous row, so summing a row
    # adds the same numbers in the same order whatever R is.
    sums = module.zeros((stack.n_runs, n_batches), dtype=numpy.float64)
    grads = module.zeros_like(stack.flat)  # its padding stays zero, so the padding's parameters never move
    check_every = 1 if module is numpy else 200  # a check waits for the device
    epoch, checked = len(runs[0].history), 0
    started = time.perf_counter()
    bar = tqdm(source.batches(batch_size, rng), total=n_batches, disable=not job.progress, leave=False,
               desc=f"{job.kind} ×{stack.n_runs} epoch {epoch + 1}", unit="batch")
    for step, (X, Y) in enumerate(bar):
        if X.dtype != dtype:
            X, Y = X.astype(dtype), Y.astype(dtype)
        stack.loss_and_grads(X, Y, grads, sums[:, step])
        optimizer.step(grads)
        if (step + 1) % check_every == 0:
            _check_finite(job, runs, sums[:, checked : step + 1], epoch, step + 1)
            checked = step + 1
    backend.synchronize(module)
    seconds = time.perf_counter() - started
    _check_finite(job, runs, sums[:, checked:], epoch, n_batches)
    return backend.to_host(sums.sum(axis=1)), seconds


def _check_finite(job: _Job, runs: list[_Run], block, epoch: int, step: int) -> None:
    """Stop with one clear line when a run's loss became NaN or infinite."""
    totals = backend.to_host(block.sum(axis=1))
    bad = [i for i, value in enumerate(totals) if not math.isfinite(value)]
    if not bad:
        return
    run = runs[bad[0]]
    checkpoint = run.run_dir / CHECKPOINT
    kept = (f"the last good checkpoint is kept at {checkpoint}" if checkpoint.exists()
            else "no epoch had finished, so there is no checkpoint")
    seeds = ", ".join(str(runs[i].seed) for i in bad)
    raise TrainingDiverged(f"training stopped: the loss became {totals[bad[0]]} in epoch {epoch + 1} at step "
                           f"{step} ({job.kind} seed {seeds}); {kept}; try a lower train.learning_rate")


def _end_of_epoch(job: _Job, run: _Run, adam, squared_error: float, seconds: float, n_stacked: int) -> dict:
    """The schedule's decision for one run, its new η, and the epoch's record.

    The record's ``seconds`` is this run's share of the stack's epoch time
    (``stack_seconds`` / ``stacked_runs``), so that sums over runs stay wall time.
    """
    source = job.source
    mean_loss = float(squared_error) / (source.n_frames * source.n_freq)
    learning_rate = adam.lr
    decision = run.schedule.update(mean_loss)
    if decision == "reduce":
        adam.lr *= run.schedule.factor
    share = seconds / n_stacked
    record = {"epoch": len(run.history) + 1, "loss": mean_loss, "learning_rate": learning_rate,
              "seconds": share, "frames_per_second": source.n_frames / share if share > 0 else math.inf,
              "stack_seconds": seconds, "stacked_runs": n_stacked, "decision": decision}
    run.history.append(record)
    run.status = "finished" if decision == "stop" else "running"
    return record


def _commit(job: _Job, runs: list[_Run], stack: StackedModel, optimizer: StackedAdam, rng) -> list[dict]:
    """Every run's checkpoint of this epoch, in two phases (see :func:`_settle`)."""
    metas = []
    for index, run in enumerate(runs):
        meta = _checkpoint_meta(job, run, optimizer.runs[index], rng)
        save_state(run.run_dir / NEXT_CHECKPOINT, stack.run_model(index), meta, optimizer=optimizer.runs[index],
                   scaler_state=job.scaler_state)
        metas.append(meta)
    _promote([run.run_dir for run in runs])
    return metas


def _promote(run_dirs) -> None:
    """The commit's second phase: each run's new checkpoint replaces its old one."""
    for run_dir in run_dirs:
        os.replace(run_dir / NEXT_CHECKPOINT, run_dir / CHECKPOINT)


def _checkpoint_meta(job: _Job, run: _Run, adam, rng) -> dict:
    """Everything a run's checkpoint records besides its arrays."""
    used = frame_source(job.source)
    if used not in run.frame_sources:
        run.frame_sources.append(used)
    tf32 = backend.tf32_settings()
    if tf32 not in run.tf32:
        run.tf32.append(tf32)
    return {"kind": job.kind, "seed": run.seed, "n_freq": job.source.n_freq, "status": run.status,
            "history": run.history, "schedule": run.schedule.state_dict(),
            "adam": {k: v for k, v in adam.state_dict().items() if k not in ("m", "v")},
            "rng_state": rng.bit_generator.state, "batch_order": job.batch_order,
            "settings": asdict(job.settings), "frame_storage": frame_storage(job.source),
            "frame_sources": run.frame_sources, "tf32": run.tf32, "config": job.config, "versions": job.versions}


def _epoch_line(kind: str, runs: list[_Run], records: list[dict], seconds: float, n_frames: int) -> str:
    """One log line per epoch of a stack, with the time it took."""
    speed = f"{seconds:.1f} s, {n_frames / max(seconds, 1e-12):.0f} frames/s"
    parts = [f"loss {r['loss']:.6g} lr {r['learning_rate']:.3g} ({r['decision']})" for r in records]
    if len(runs) == 1:
        return f"{kind} seed {runs[0].seed}: epoch {records[0]['epoch']} {parts[0]}, {speed}"
    parts = [f"seed {run.seed} {part}" for run, part in zip(runs, parts)]
    return f"{kind} epoch {records[0]['epoch']} ({len(runs)} runs, {speed} per run): " + "; ".join(parts)


# ----------------------------------------------------------------------------
# the health of a finished run

#: How many training frames the health check of a finished run looks at,
#: drawn with their own generator (the batch order's is left alone).
HEALTH_FRAMES = 512
HEALTH_SEED = 0


def run_health(model: Model, frames) -> dict:
    """Whether a trained network is dead, judged on sample input frames.

    A network is dead when its decoder output (Eqs. 5, 7, 9: the estimate,
    or SF's mask) is identically zero on every frame, or when every ReLU of
    some layer is off on every frame (the layers after it then see a
    constant: the output no longer depends on the input). Such a run
    separates nothing, and nothing is left for the NCA to explain.

    Args:
        model: a trained model.
        frames: (B, F) input frames as rows (scaled mixtures), B ≥ 1.

    Returns:
        ``{"dead": bool, "reason": str | None, "zero_output_share": float,
        "dead_layers": [int], "frames": int}``: ``zero_output_share`` is
        the share of the frames whose output is all zeros, ``dead_layers``
        the layers (1-based, encoder first) with every unit off on every
        frame, ``reason`` one sentence when ``dead``.
    """

    h = model._as_input(frames)
    dead_layers = []
    for number, (W, b) in enumerate(zip(model.weights, model.biases), start=1):
        h, _ = dense_relu_forward(h, W, b)
        if not bool(backend.to_host((h != 0).any())):
            dead_layers.append(number)
    n_frames = int(h.shape[0])
    zero_rows = backend.to_host((h == 0).all(axis=1))
    share = float(zero_rows.mean()) if n_frames else 0.0
    reason = None
    if n_frames and share == 1.0:
        reason = f"its output is zero on all {n_frames} sample frames"
    elif dead_layers:
        reason = (f"every ReLU of layer {dead_layers[0]} is off on all {n_frames} sample frames, so its output "
                  "does not depend on the input")
    return {"dead": reason is not None, "reason": reason, "zero_output_share": share,
            "dead_layers": dead_layers, "frames": n_frames}


def _sample_frames(job: _Job):
    """The (B, F) training frames the health check looks at (drawn once per job)."""
    if job.health_frames is None:
        batches = job.source.batches(min(HEALTH_FRAMES, job.source.n_frames), numpy.random.default_rng(HEALTH_SEED))
        job.health_frames, _ = next(iter(batches))
        batches.close()
    return job.health_frames


def _health_at_end(job: _Job, model: Model, history: list) -> dict:
    """:func:`run_health` on the sample frames, plus whether the loss ever
    went below its first epoch's (``improved``; None after a single epoch)."""
    health = run_health(model, _sample_frames(job))
    losses = [record["loss"] for record in history]
    health["first_loss"] = losses[0] if losses else None
    health["best_loss"] = min(losses) if losses else None
    health["improved"] = None if len(losses) < 2 else bool(min(losses[1:]) < losses[0])
    return health


def _finish(job: _Job, model: Model, meta: dict, run_dir: Path) -> dict:
    """Write a finished run's ``model.npz``, its health in the meta record
    (``meta["health"]``), with a warning line for a dead run or one that
    never improved on its first epoch; returns the meta record."""
    meta["health"] = health = _health_at_end(job, model, meta["history"])
    folder = Path(run_dir)
    save_state(folder / FINAL_MODEL, model, meta, scaler_state=job.scaler_state)
    if job.log and health["dead"]:
        job.log(f"warning: {job.kind} seed {meta['seed']} ended dead: {health['reason']}; it separates nothing "
                f"and has nothing for the NCA to explain (lower train.learning_rate, or delete {folder} to train "
                "it again)")
    elif job.log and health["improved"] is False:
        job.log(f"warning: {job.kind} seed {meta['seed']} never improved on its first epoch's loss "
                f"({health['first_loss']:.6g}): check train.learning_rate")
    return meta
