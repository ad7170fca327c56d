"""What ``reproduce`` would do, what is done, and how long the rest takes.

:func:`plan` counts the units of work of every stage and those already
finished, then estimates the time left from a short calibration on this
machine (:func:`measure_step_times`): seconds per training step and per NCA iteration
of each model, measured on random data of the configuration's sizes.
"""

from __future__ import annotations

import time

import numpy

from . import backend
from .config import config_hash
from .errors import UserError
from .experiment import Workspace, open_prepared_cache, training_units
from .models import build_model
from .train import CHECKPOINT, FINAL_MODEL



def plan(ws: Workspace, *, calibrate=True) -> str:
    """What ``reproduce`` would do, what is done, and how long the rest
    should take on this machine (from a short calibration)."""
    config = ws.config
    lines = [f"profile {ws.profile} (configuration {config_hash(config)}), backend {backend.device_description()}"]
    trainings = training_units(config)
    finished = [u for u in trainings if (ws.run_dir(*u) / FINAL_MODEL).exists()]
    started = [u for u in trainings if u not in finished and (ws.run_dir(*u) / CHECKPOINT).exists()]
    lines.append(f"trainings: {len(trainings)} ({len(config['train']['kinds'])} models × {config['train']['runs']} runs); "
                 f"{len(finished)} finished, {len(started)} interrupted (will resume)")
    n_frames, n_segments, source = _data_size(ws)
    done = sum(1 for p in ws.couplings_dir.glob("*/s[0-9]*.json")) if ws.couplings_dir.exists() else 0
    n_units = n_segments * len(config["train"]["kinds"])
    lines.append(f"NCA: {n_segments} segments × {len(config['train']['kinds'])} models = {n_units} units, "
                 f"strategies {', '.join(config['nca']['strategies'])}, {config['nca']['iterations']} iterations; "
                 f"{done} done  ({source})")
    if calibrate:
        step, iterations = measure_step_times(config)
        epochs = config["train"]["max_epochs"]
        batches = -(-n_frames // config["train"]["batch_size"])
        epoch_s = sum(step[kind] for kind, run in trainings if (kind, run) not in finished) * batches
        nca_left = max(n_units - done, 0) / max(len(config["train"]["kinds"]), 1)
        nca_s = sum(iterations[k] for k in config["train"]["kinds"]) * config["nca"]["iterations"] * nca_left
        lines.append(f"estimate: training {_duration(epoch_s)} per epoch of every unfinished run, at most "
                     f"{_duration(epoch_s * epochs)} if all use {epochs} epochs; NCA about {_duration(nca_s)}")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _data_size(ws: Workspace) -> tuple[int, int, str]:
    """Training frames and NCA segments: counted when prepared, else estimated."""
    config = ws.config
    try:
        cache = open_prepared_cache(ws)
    except UserError:
        cache = None
    if cache is not None:
        return cache.manifest["n_train_frames"], cache.n_segments(config["nca"]["segment_frames"]), "counted in the cache"
    stft, data = config["stft"], config["data"]
    if data["corpus"] == "synthetic":
        train_seconds = data["synth_train_tracks"] * data["synth_seconds"]
        n_test = data["synth_test_tracks"]
    else:  # MUSDB18: 100 training tracks, about 6.6 hours; 50 test tracks
        train_seconds, n_test = 23760.0, 50
    frames = int(train_seconds * stft["sample_rate"] / stft["hop"])
    per_excerpt = int(data["excerpt_seconds"] * stft["sample_rate"] / stft["hop"]) // config["nca"]["segment_frames"]
    return frames, per_excerpt * n_test, "estimated before preparation"


def _seconds_per_call(fn, module, *, budget=0.3) -> float:
    """Mean seconds of ``fn()`` after a warm-up call, over at least ``budget`` s."""
    fn()
    backend.synchronize(module)
    calls, begin = 0, time.perf_counter()
    while calls < 2 or time.perf_counter() - begin < budget:
        fn()
        calls += 1
    backend.synchronize(module)
    return (time.perf_counter() - begin) / calls


def measure_step_times(config: dict) -> tuple[dict, dict]:
    """Seconds per training step, and per NCA iteration of all strategies
    (setup excluded: the difference of a long and a short fit), per model."""
    from .nca import fit_couplings
    from .optim import Adam

    module = backend.xp()
    n_freq = config["stft"]["n_fft"] // 2 + 1
    batch, frames = config["train"]["batch_size"], config["nca"]["segment_frames"]
    rng = backend.rng(0)
    X = backend.to_device(rng.uniform(0, 1, (batch, n_freq)).astype(numpy.float32), module)
    segment = backend.to_device(rng.uniform(0, 1, (n_freq, frames)).astype(numpy.float32), module)
    step, iteration = {}, {}
    for kind in config["train"]["kinds"]:
        model = build_model(kind, n_freq, module=module)
        optimizer = Adam(model.params)
        step[kind] = _seconds_per_call(lambda: optimizer.step(model.loss_and_grads(X, X)[1]), module)
        iteration[kind] = 0.0
        for strategy in config["nca"]["strategies"]:
            def fit(n):
                return lambda: fit_couplings(model, segment, strategy, iterations=n,
                                             composition=config["nca"]["composition"])
            long, short = _seconds_per_call(fit(6), module), _seconds_per_call(fit(2), module)
            iteration[kind] += max(long - short, 0.0) / 4
    return step, iteration
