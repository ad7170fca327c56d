"""What ``reproduce`` would do, what is done, and how long the rest takes.

:func:`plan` counts the units of work of every stage and those already
finished, then estimates the time left from a short calibration on this
machine (:func:`measure_step_times`): seconds per training step and per NCA iteration
of each model, measured on random data of the configuration's sizes, with
the runs of a model stacked as training stacks them (:mod:`nca_np.calibrate`,
the same calibration as ``scripts/gpucheck.py``: GPU time on a GPU). The
calibration takes minutes at the paper's sizes, so it says so first, with
its own estimate (:func:`calibration_seconds`), and it is skipped when
nothing is left to do. While it runs, one line per model goes to standard
error; its result is kept in ``<workdir>/timings/`` under a key of this
machine, its device, the code version and the configuration's sizes
(:func:`calibration_key`), so a second plan here reuses it. Without the
calibration (``calibrate=False``, ``reproduce --plan --no-calibrate``) the
times come from the same arithmetic as :func:`calibration_seconds`: three
probes of a few milliseconds and an operation count per step and iteration
(:func:`arithmetic_step_times`), a rougher figure.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from pathlib import Path

import numpy

from . import backend
from .atomic import write_json
from .calibrate import nca_iteration_seconds, training_step_seconds
from .config import config_hash
from .errors import UserError
from .models import model_kind
from .nca import get_strategy
from .train import CHECKPOINT, FINAL_MODEL
from .workspace import Workspace, code_version, open_prepared_cache, training_units



def plan(ws: Workspace, *, calibrate=True, log=None) -> str:
    """What ``reproduce`` would do, what is done, and how long the rest
    should take on this machine (from a short calibration, announced to
    ``log`` with its expected length before it starts)."""
    config = ws.config
    lines = [f"profile {ws.profile} (configuration {config_hash(config)}), backend {backend.device_description()}"]
    trainings = training_units(config)
    finished = [u for u in trainings if (ws.run_dir(*u) / FINAL_MODEL).exists()]
    started = [u for u in trainings if u not in finished and (ws.run_dir(*u) / CHECKPOINT).exists()]
    lines.append(f"trainings: {len(trainings)} ({len(config['train']['kinds'])} models × {config['train']['runs']} run{'s' if config['train']['runs'] != 1 else ''}); "
                 f"{len(finished)} finished, {len(started)} interrupted (will resume)")
    n_frames, n_segments, source = _data_size(ws)
    done = sum(1 for p in ws.couplings_dir.glob("*/s[0-9]*.json")) if ws.couplings_dir.exists() else 0
    n_units = n_segments * len(config["train"]["kinds"])
    lines.append(f"NCA: {n_segments} segments × {len(config['train']['kinds'])} models = {n_units} units, "
                 f"strategies {', '.join(config['nca']['strategies'])}, {config['nca']['iterations']} iterations; "
                 f"{done} done  ({source})")
    if len(finished) == len(trainings) and done >= n_units:
        lines.append("estimate: nothing left to do")
    else:
        step, iterations, how = step_times(ws, calibrate=calibrate, log=log)
        epochs = config["train"]["max_epochs"]
        batches = -(-n_frames // config["train"]["batch_size"])
        epoch_s = sum(step[kind] for kind, run in trainings if (kind, run) not in finished) * batches
        nca_left = max(n_units - done, 0) / max(len(config["train"]["kinds"]), 1)
        nca = config["nca"]
        # the extra fits of the spread over seeds, on the first segments of each model
        spread = min(nca["spread_segments"], n_segments) * nca["init_seeds"]
        fits = nca_left * (1.0 + spread / n_segments) if n_segments else 0.0
        per_fit = sum(iterations[k] for k in config["train"]["kinds"])
        nca_s = per_fit * nca["iterations"] * fits
        capped = (f" (up to {_duration(per_fit * nca['max_iterations'] * fits)} if every fit runs to "
                  f"nca.max_iterations = {nca['max_iterations']})" if nca["max_iterations"] > nca["iterations"] else "")
        lines.append(f"estimate: training {_duration(epoch_s)} per epoch of every unfinished run, at most "
                     f"{_duration(epoch_s * epochs)} if all use {epochs} epochs; NCA about {_duration(nca_s)}{capped}"
                     + ("" if how == "calibrated" else f" ({how})"))
    return "\n".join(lines)


def step_times(ws: Workspace, *, calibrate: bool = True, log=None, progress=None) -> tuple[dict, dict, str]:
    """Seconds per run-step and per NCA iteration of each model, and how they were had.

    A calibration kept in ``<workdir>/timings/`` under :func:`calibration_key`
    is reused; otherwise :func:`measure_step_times` runs (announced to
    ``log``, one line per model to ``progress``, default standard error)
    and its result is kept; ``calibrate=False`` gives
    :func:`arithmetic_step_times` instead.
    """
    config = ws.config
    if not calibrate:
        step, iterations = arithmetic_step_times(config)
        return step, iterations, "arithmetic, not calibrated"
    key = calibration_key(config)
    path = ws.root / "timings" / f"calibration-{config_hash(key)}.json"
    kept = _read_calibration(path, key)
    if kept is not None:
        if log:
            log(f"reusing the calibration of {kept['measured']} on this machine ({path}; delete it to calibrate again)")
        return kept["step"], kept["iteration"], "calibrated"
    if log:
        log(f"calibrating on {backend.device_description()}: timing a training step and the NCA iterations "
            f"of each model on random data of this configuration's sizes (about "
            f"{_duration(calibration_seconds(config))}) …")
    progress = progress or (lambda line: print(line, file=sys.stderr, flush=True))
    begin = time.perf_counter()
    step, iterations = measure_step_times(config, progress=progress if log else None)
    if log:
        log(f"calibrated in {_duration(time.perf_counter() - begin)}")
    try:
        write_json(path, {"key": key, "step": step, "iteration": iterations,
                          "measured": time.strftime("%Y-%m-%d %H:%M:%S %Z")})
    except OSError:  # a read-only work folder: the plan is still right, only not kept
        pass
    return step, iterations, "calibrated"


def calibration_key(config: dict) -> dict:
    """What a calibration's times depend on: this machine, its device, the
    code version and the sizes the calibration times."""
    module = backend.xp()
    return {"host": socket.gethostname(), "device": backend.device_description(), "code": code_version(),
            "n_freq": config["stft"]["n_fft"] // 2 + 1, "batch_size": config["train"]["batch_size"],
            "runs": calibration_runs(config, module), "dtype": config["train"]["dtype"],
            "kinds": list(config["train"]["kinds"]), "segment_frames": config["nca"]["segment_frames"],
            "strategies": list(config["nca"]["strategies"]), "composition": config["nca"]["composition"]}


def _read_calibration(path: Path, key: dict) -> dict | None:
    """The calibration kept at ``path`` when it was made under ``key``; else None."""
    try:
        kept = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(kept, dict) or kept.get("key") != key:
        return None
    return kept if {"step", "iteration", "measured"} <= kept.keys() else None


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


def _fastest(fn, module, repeats: int = 5) -> float:
    """The shortest of ``repeats`` timed calls of ``fn()`` (after one warm-up)."""
    fn()
    backend.synchronize(module)
    best = float("inf")
    for _ in range(repeats):
        begin = time.perf_counter()
        fn()
        backend.synchronize(module)
        best = min(best, time.perf_counter() - begin)
    return best


def _probes(config: dict) -> dict:
    """Three probes of a few milliseconds on the active device: one (F, F)·(F, T)
    product, one elementwise pass over F² values, one host draw of F² normals."""
    module = backend.xp()
    n_freq, frames = config["stft"]["n_fft"] // 2 + 1, config["nca"]["segment_frames"]
    rng = backend.rng(0)
    square = backend.to_device(rng.uniform(0, 1, (n_freq, n_freq)).astype(numpy.float32), module)
    segment = backend.to_device(rng.uniform(0, 1, (n_freq, frames)).astype(numpy.float32), module)
    product = _fastest(lambda: square @ segment, module)
    return {"product": product, "elementwise": _fastest(lambda: module.multiply(square, 0.5, out=square), module),
            "draw": _fastest(lambda: rng.standard_normal((n_freq, n_freq)), numpy, repeats=1),
            "square_product": product * n_freq / frames}


def _step_cost(config: dict, kind: str, probes: dict) -> float:
    """Seconds of one stacked training step of R runs: ≈ R times 3L products
    of B frames and Adam over the weights."""
    layers = model_kind(kind).n_layers
    step = (3 * layers * probes["product"] * config["train"]["batch_size"] / config["nca"]["segment_frames"]
            + 30 * layers * probes["elementwise"])
    return calibration_runs(config, backend.xp()) * step


def _fit_cost(config: dict, kind: str, strategy: str, n: int, probes: dict) -> float:
    """Seconds of an NCA fit of ``n`` iterations: the model's forward pass and
    the initial draws, then per iteration the strategy's products."""
    layers = model_kind(kind).n_layers
    n_freq, frames = config["stft"]["n_fft"] // 2 + 1, config["nca"]["segment_frames"]
    spec = get_strategy(strategy)
    per_product = spec.flops(layers, n_freq, frames) / (2.0 * n_freq**2 * frames)
    unknowns = spec.unknowns(layers)
    return (layers * probes["product"] + unknowns * (probes["draw"] + probes["square_product"])
            + n * (per_product * probes["product"] + 25 * unknowns * probes["elementwise"]))


def arithmetic_step_times(config: dict) -> tuple[dict, dict]:
    """:func:`measure_step_times`'s two tables from the probes' arithmetic
    alone (milliseconds, not minutes; rougher: no caches, no launches)."""
    probes = _probes(config)
    runs = calibration_runs(config, backend.xp())
    step = {kind: _step_cost(config, kind, probes) / runs for kind in config["train"]["kinds"]}
    iteration = {kind: sum((_fit_cost(config, kind, strategy, 6, probes) - _fit_cost(config, kind, strategy, 2, probes))
                           / 4 for strategy in config["nca"]["strategies"]) for kind in config["train"]["kinds"]}
    return step, iteration


def calibration_seconds(config: dict, *, budget: float = 0.3) -> float:
    """About how long :func:`measure_step_times` takes here, from :func:`_probes`.

    Each timed call of :func:`nca_np.calibrate.seconds_per_call` costs a
    warm-up and at least two calls or ``budget`` seconds. Counted per call,
    per model of L layers: a stacked training step of R runs
    (:func:`calibration_runs`) ≈ R times 3L products of B frames and Adam
    over the weights; an NCA fit of n iterations ≈ the model's forward pass and the
    initial draws, then per iteration 2 products (student) or 3L products
    and L (F, F)·(F, F) ones (compositional and any other strategy).
    """
    probes = _probes(config)

    def timed(cost):
        return cost + max(2 * cost, budget + cost / 2)

    total = 0.0
    for kind in config["train"]["kinds"]:
        total += timed(_step_cost(config, kind, probes))
        for strategy in config["nca"]["strategies"]:
            for n in (6, 2):
                total += timed(_fit_cost(config, kind, strategy, n, probes))
    return total


#: Runs stacked during the calibration on the CPU, where a step's time grows
#: in proportion to R (see :func:`calibration_runs`).
CPU_CALIBRATION_RUNS = 2


def calibration_runs(config: dict, module) -> int:
    """Runs stacked in the calibration: on a GPU the protocol's own count (the
    launches of a step are shared by the runs, so the time per run falls with
    R); on the CPU at most :data:`CPU_CALIBRATION_RUNS`."""
    runs = config["train"]["runs"]
    return runs if module is not numpy else min(runs, CPU_CALIBRATION_RUNS)


def measure_step_times(config: dict, *, progress=None) -> tuple[dict, dict]:
    """Per model: seconds per run-step of stacked training (a stacked step's
    time over its runs), and seconds per NCA iteration of all strategies
    (setup excluded), each model said to ``progress`` once timed. See
    :mod:`nca_np.calibrate`."""
    module = backend.xp()
    n_freq = config["stft"]["n_fft"] // 2 + 1
    runs = calibration_runs(config, module)
    step, iteration = {}, {}
    for kind in config["train"]["kinds"]:
        step[kind] = training_step_seconds(kind, runs=runs, n_freq=n_freq, batch=config["train"]["batch_size"],
                                           module=module, dtype=numpy.dtype(config["train"]["dtype"])) / runs
        iteration[kind] = sum(nca_iteration_seconds(kind, strategy, n_freq=n_freq,
                                                    frames=config["nca"]["segment_frames"],
                                                    composition=config["nca"]["composition"], module=module)
                              for strategy in config["nca"]["strategies"])
        if progress:
            progress(f"  calibrated {kind} ({len(step)}/{len(config['train']['kinds'])}): "
                     f"{step[kind] * 1e3:.3g} ms per run-step, {iteration[kind] * 1e3:.3g} ms per NCA iteration")
    return step, iteration
