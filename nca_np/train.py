"""Training: epochs of shuffled mini-batches, checkpoints, exact resume.

A *frame source* (see :mod:`nca_np.frames`) has ``n_frames``, ``n_freq`` and
``batches(batch_size, rng)``, which yields ``(X, Y)`` pairs of shape (B, F),
frames as rows, in an order that depends only on ``rng``.

After every epoch the whole training state — parameters, Adam's moments and
step count, the schedule, the shuffling generator's state, the scaler, the
configuration, seed, versions and the loss history — is written atomically
to ``checkpoint.npz``. A run that is stopped and restarted continues from
there exactly as if it had never stopped. When the schedule stops the run,
``model.npz`` is written: its existence marks the run as finished.
"""

from __future__ import annotations

import json
import math
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy

from . import backend
from .atomic import save_npz
from .errors import UserError
from .models import Model, build_model
from .optim import Adam, PlateauSchedule

CHECKPOINT = "checkpoint.npz"
FINAL_MODEL = "model.npz"
#: The batch order is drawn from this stream of the run's seed; the initial
#: weights come from the seed itself.
SHUFFLE_STREAM = 1


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass(frozen=True)
class TrainSettings:
    """The ``[train]`` values that shape one run (MATH.md §3)."""

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


def _meta_array(meta: dict) -> numpy.ndarray:
    return numpy.array(json.dumps(meta, sort_keys=True))


def save_state(path, model: Model, meta: dict, *, optimizer: Adam | None = None, scaler_state=None) -> None:
    """Write parameters (and optionally Adam's moments and the scaler) with
    a JSON ``meta`` record to ``path``, atomically."""
    arrays = {f"param_{i}": backend.to_host(p) for i, p in enumerate(model.params)}
    if optimizer is not None:
        arrays.update({f"adam_m_{i}": backend.to_host(m) for i, m in enumerate(optimizer.m)})
        arrays.update({f"adam_v_{i}": backend.to_host(v) for i, v in enumerate(optimizer.v)})
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


def _restore(path, model: Model, optimizer: Adam) -> dict:
    """Load a checkpoint into ``model`` and ``optimizer``; returns its meta."""
    arrays, meta = read_state(path)
    module = backend.array_module(model.params[0])
    for i in range(len(model.params)):
        model.params[i] = backend.to_device(arrays[f"param_{i}"], module)
        optimizer.m[i][...] = backend.to_device(arrays[f"adam_m_{i}"], module)
        optimizer.v[i][...] = backend.to_device(arrays[f"adam_v_{i}"], module)
    optimizer.t = meta["adam"]["t"]
    optimizer.lr = meta["adam"]["lr"]
    return meta


def _check_finite(value: float, epoch: int, step: int, checkpoint: Path) -> None:
    if math.isfinite(value):
        return
    kept = (f"the last good checkpoint is kept at {checkpoint}" if checkpoint.exists()
            else "no epoch had finished, so there is no checkpoint")
    raise TrainingDiverged(f"training stopped: the loss became {value} in epoch {epoch + 1} "
                           f"at step {step}; {kept}; try a lower train.learning_rate")


def frame_storage(source) -> str:
    """The precision the training frames are kept in ("float32" unless the
    source stores them more coarsely, as device-resident float16 frames)."""
    return str(getattr(source, "storage_dtype", "float32"))


def train(kind: str, source, run_dir, *, settings: TrainSettings, seed: int,
          scaler_state: dict | None = None, config: dict | None = None,
          progress: bool = True, log=None, on_epoch_end=None, module=None) -> dict:
    """Train (or resume training) one model on a frame source.

    Args:
        kind: "dae", "mss-dae" or "sf".
        source: a frame source (``n_frames``, ``n_freq``, ``batches``).
        run_dir: folder of this run; holds ``checkpoint.npz`` and, once
            finished, ``model.npz``.
        settings: batch size, Adam's hyper-parameters, the schedule.
        seed: initial weights come from ``seed``, batch order from its
            :data:`SHUFFLE_STREAM`.
        scaler_state: the feature scaler, saved with the model.
        config: the full configuration, saved with the model.
        progress: show a progress bar per epoch.
        log: callable taking one line per finished epoch (None: silent).
        on_epoch_end: optional callable ``(record) -> None`` after each
            checkpoint (tests use it to interrupt a run).
        module: array module (default: the active backend).

    Returns:
        The final meta record (history, status, …). A run already finished
        is not trained again.
    """
    from tqdm.auto import tqdm

    run_dir = Path(run_dir)
    final_path, checkpoint = run_dir / FINAL_MODEL, run_dir / CHECKPOINT
    if final_path.exists():
        return read_state(final_path)[1]
    module = module if module is not None else backend.xp()
    dtype = numpy.dtype(settings.dtype)
    model = build_model(kind, source.n_freq, seed=seed, dtype=dtype, module=module)
    optimizer = Adam(model.params, lr=settings.learning_rate, beta1=settings.beta1,
                     beta2=settings.beta2, eps=settings.eps)
    schedule = PlateauSchedule(settings.patience_halve, settings.patience_stop, settings.max_epochs)
    rng = backend.rng(seed, SHUFFLE_STREAM)
    history: list[dict] = []
    storage = frame_storage(source)
    if checkpoint.exists():
        meta = _restore(checkpoint, model, optimizer)
        if meta["frame_storage"] != storage:
            raise UserError(f"{checkpoint} was trained on {meta['frame_storage']} frames, this machine would "
                            f"feed {storage} ones: resume where it started, or set data.device_storage to match")
        if meta["status"] == "finished":  # stopped between the last checkpoint and model.npz
            save_state(final_path, model, meta, scaler_state=scaler_state)
            return meta
        schedule = PlateauSchedule.from_state(meta["schedule"])
        rng.bit_generator.state = meta["rng_state"]
        history = meta["history"]
        if log:
            log(f"{kind} seed {seed}: resuming after epoch {len(history)}")
    grad_buffers = [module.empty_like(p) for p in model.params]
    check_every = 1 if module is numpy else 200
    n_batches = math.ceil(source.n_frames / settings.batch_size)
    status = "running"

    while status == "running":
        epoch = len(history)
        lr_used = optimizer.lr
        started = time.perf_counter()
        total = module.zeros((), dtype=dtype)
        bar = tqdm(source.batches(settings.batch_size, rng), total=n_batches, disable=not progress,
                   desc=f"{kind} seed {seed} epoch {epoch + 1}", leave=False, unit="batch")
        for step, (X, Y) in enumerate(bar, start=1):
            loss, grads = model.loss_and_grads(X, Y, out=grad_buffers)
            total += loss * X.shape[0]
            optimizer.step(grads)
            if step % check_every == 0:
                _check_finite(backend.to_float(total), epoch, step, checkpoint)
        backend.synchronize(module)
        seconds = time.perf_counter() - started
        mean_loss = backend.to_float(total) / source.n_frames
        _check_finite(mean_loss, epoch, n_batches, checkpoint)
        decision = schedule.update(mean_loss)
        if decision == "reduce":
            optimizer.lr *= schedule.factor
        record = {"epoch": epoch + 1, "loss": mean_loss, "learning_rate": lr_used, "seconds": seconds,
                  "frames_per_second": source.n_frames / seconds if seconds > 0 else math.inf,
                  "decision": decision}
        history.append(record)
        status = "finished" if decision == "stop" else "running"
        meta = {"kind": kind, "seed": seed, "n_freq": source.n_freq, "status": status,
                "history": history, "schedule": schedule.state_dict(),
                "adam": {k: v for k, v in optimizer.state_dict().items() if k not in ("m", "v")},
                "rng_state": rng.bit_generator.state, "settings": asdict(settings), "frame_storage": storage,
                "config": config, "versions": backend.versions()}
        save_state(checkpoint, model, meta, optimizer=optimizer, scaler_state=scaler_state)
        if log:
            log(f"{kind} seed {seed}: epoch {epoch + 1} loss {mean_loss:.6g} lr {lr_used:.3g} "
                f"{record['frames_per_second']:.0f} frames/s ({decision})")
        if on_epoch_end is not None:
            on_epoch_end(record)
    save_state(final_path, model, meta, scaler_state=scaler_state)
    return meta
