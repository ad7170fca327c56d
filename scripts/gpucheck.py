"""The GPU self-check: does this machine's GPU compute what NumPy computes, and how fast?

    python scripts/gpucheck.py [--device gpu|cpu|auto] [--sizes paper|small] [--quick]
    (make gpucheck [DEVICE=cpu] [CUPY=cupy-cuda12x])

First the device line (``backend.device_line``), then on the chosen device
one PASS/FAIL line per check, with the measured error and its bound:

1. every finite-difference gradient check of scripts/gradcheck.py (layers,
   models alone and stacked, the NCA in both readings), in float64;
2. the fused Adam update (one step size per run) against each run's NumPy
   update, in float64 and float32, and in float32 at the paper's R = 10;
3. the batch gather with its float16 → float32 cast against NumPy, and from
   a float16 store above 2³¹ elements (64-bit indexing) where the GPU has
   room (a SKIP line where it has not, or on the CPU);
4. one stacked training step of each model (R runs, float64) against R
   NumPy models, each with its own Adam;
5. two NCA iterations of each strategy on each model against NumPy;
6. training through ``train`` on the device: a resume from a checkpoint
   equals an uninterrupted run bit for bit, and a NaN loss stops it with
   the last good checkpoint kept;
7. what the protocol computes, in float32 (on a GPU also with TF32): each
   model's stacked step (gradients, losses) and each NCA strategy's
   gradients against float64 on NumPy at F = 2049 (257 with ``--quick``),
   within bounds derived from the arithmetic (docs/gpu.md#float32-bounds);
8. kernel launches per training step, counted on the counting stand-in
   module of tests/strict_xp.py (it runs the same code, kernels included):
   the same for 1 run as for R runs;

then timings at the paper's sizes (F = 2049, B = 64, T = 360, R = 10; tiny
ones with ``--sizes small``, the default on the CPU): the device's matrix-product rate measured in the
same run, each stacked training step and NCA iteration as a time and as the
ratio (its products at that rate) / (its time), each step split into its
products against the device's nominal rate and the rest against its memory
bandwidth (docs/gpu.md#speed-against-the-device), and the protocol's hours
at these speeds. The exit status is 1 if any check fails. With ``--device
cpu`` the same checks run on NumPy (``make gpucheck DEVICE=cpu``, under a
minute on one core at F = 2049; the tests run it with ``--quick``). Meant
to take under 5 minutes on one GPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from nca_np import backend, calibrate, kernels  # noqa: E402
from nca_np.frames import ArrayFrames, DeviceFrames  # noqa: E402
from nca_np.models import build_model, kind_names, model_kind  # noqa: E402
from nca_np.nca import fit_couplings, strategy_names  # noqa: E402
from nca_np.optim import Adam  # noqa: E402
from nca_np.stacked import StackedAdam, StackedModel  # noqa: E402

#: Sizes of the comparisons with NumPy (small: they check numbers, not speed).
CHECK_FREQ, CHECK_BATCH, CHECK_FRAMES, CHECK_RUNS = 17, 8, 12, 3
SEEDS = [0, 1, 2]
RATES = [1e-2, 3e-3, 1e-3]
#: Sizes of the timings.
SIZES = {"paper": dict(n_freq=2049, batch=64, runs=10, frames=360, budget=0.5),
         "small": dict(n_freq=33, batch=16, runs=3, frames=24, budget=0.02)}
#: Thresholds on the largest relative difference from NumPy.
FLOAT64_THRESHOLD, FLOAT32_THRESHOLD = 1e-10, 1e-5
#: Unit roundoffs: float32, and TF32's inputs (10 explicit mantissa bits).
UNIT_FLOAT32, UNIT_TF32 = 2.0**-24, 2.0**-11
#: Sizes of the float32 comparisons: the paper's F; --quick (the tests) a smaller one.
FLOAT32_SIZES = {"paper": dict(n_freq=2049, batch=16, frames=24), "quick": dict(n_freq=257, batch=16, frames=24)}


class Checks:
    """Collects and prints one PASS/FAIL line per check."""

    def __init__(self):
        self.failures = 0
        self.count = 0

    def error(self, what: str, error: float, threshold: float) -> None:
        self.record(what, error < threshold, f"{error:.2e} (threshold {threshold:.0e})")

    def record(self, what: str, passed: bool, detail: str = "") -> None:
        self.count += 1
        self.failures += not passed
        print(f"{'PASS' if passed else 'FAIL'}  {what}{'  ' + detail if detail else ''}", flush=True)


def relative_error(device_array, host_array, floor=1e-12) -> float:
    """Largest entrywise ``|a − b| / max(|b|, floor)``."""
    a = numpy.asarray(backend.to_host(device_array), dtype=numpy.float64)
    b = numpy.asarray(host_array, dtype=numpy.float64)
    return float(numpy.max(numpy.abs(a - b) / numpy.maximum(numpy.abs(b), floor)))


def normwise_error(device_array, host_array) -> float:
    """``max |a − b| / max |b|``: for float32 results against float64 ones,
    where entries near zero carry float32's absolute, not relative, rounding."""
    a = numpy.asarray(backend.to_host(device_array), dtype=numpy.float64)
    b = numpy.asarray(host_array, dtype=numpy.float64)
    return float(numpy.abs(a - b).max() / max(numpy.abs(b).max(), 1e-300))


def _random(shape, seed, dtype=numpy.float64, low=0.0, high=1.0):
    return backend.rng(seed).uniform(low, high, size=shape).astype(dtype)


def gradient_checks(checks: Checks) -> None:
    import gradcheck as table  # scripts/gradcheck.py
    for what, error, threshold, passed in table.all_checks():
        checks.record(f"gradient {what}", passed, f"{error} (threshold {threshold})" if error != "-" else "")


def adam_checks(checks: Checks, module) -> None:
    for dtype, threshold in ((numpy.float64, FLOAT64_THRESHOLD), (numpy.float32, FLOAT32_THRESHOLD)):
        device = StackedModel.build("dae", CHECK_FREQ, SEEDS, dtype=dtype, module=module)
        host = [build_model("dae", CHECK_FREQ, seed=s, dtype=numpy.float64, module=numpy) for s in SEEDS]
        fused = StackedAdam(device, lr=RATES)
        plain = [Adam(model.params, lr=rate) for model, rate in zip(host, RATES)]
        for step in range(5):
            grads = _random(device.flat.shape, 10 + step, dtype, -1.0, 1.0)
            fused.step(backend.to_device(grads, module))
            for r, adam in enumerate(plain):
                adam.step([g.astype(numpy.float64) for g in device.layout.row_views(grads[r])])
        measure = relative_error if dtype == numpy.float64 else normwise_error
        error = max(measure(mine, theirs) for r in range(len(SEEDS))
                    for mine, theirs in zip(device.run_params(r), host[r].params))
        checks.error(f"fused Adam, one step size per run, {numpy.dtype(dtype).name}", error, threshold)


def gather_checks(checks: Checks, module) -> None:
    X, Y = _random((100, CHECK_FREQ), 1, numpy.float32), _random((100, CHECK_FREQ), 2, numpy.float32)
    for storage in ("float16", "float32"):
        device = DeviceFrames(X, Y, module=module, storage_dtype=storage, block_frames=16, blocks_in_memory=2)
        host = ArrayFrames(X, Y, block_frames=16, blocks_in_memory=2)
        worst = 0.0
        for (x, y), (hx, hy) in zip(device.batches(CHECK_BATCH, backend.rng(3)), host.batches(CHECK_BATCH, backend.rng(3))):
            for mine, theirs in ((x, hx), (y, hy)):
                expected = theirs.astype(storage).astype(numpy.float32)
                worst = max(worst, float(numpy.abs(backend.to_host(mine) - expected).max()))
        checks.record(f"batch gather from {storage} frames, cast to float32", worst == 0.0,
                      f"largest difference {worst:.1e}")


def step_checks(checks: Checks, module) -> None:
    X, Y = _random((CHECK_BATCH, CHECK_FREQ), 4), _random((CHECK_BATCH, CHECK_FREQ), 5)
    for kind in kind_names():
        host = [build_model(kind, CHECK_FREQ, seed=s, dtype=numpy.float64, module=numpy) for s in SEEDS]
        stack = StackedModel.build(kind, CHECK_FREQ, SEEDS, dtype=numpy.float64, module=module)
        optimizer = StackedAdam(stack, lr=RATES)
        adams = [Adam(model.params, lr=rate) for model, rate in zip(host, RATES)]
        # the squared errors go to a column of a (runs, steps) array, as in training
        grads, squared = module.zeros_like(stack.flat), module.zeros((len(SEEDS), 2), dtype=numpy.float64)
        X_dev, Y_dev = backend.to_device(X, module), backend.to_device(Y, module)
        loss_error = 0.0
        for step in range(2):
            stack.loss_and_grads(X_dev, Y_dev, grads, squared[:, step])
            optimizer.step(grads)
            for r, (model, adam) in enumerate(zip(host, adams)):
                loss, model_grads = model.loss_and_grads(X, Y)
                adam.step(model_grads)
                loss_error = max(loss_error, relative_error(backend.to_host(squared)[r, step] / Y.size, float(loss)))
        error = max(relative_error(mine, theirs) for r in range(len(SEEDS))
                    for mine, theirs in zip(stack.run_params(r), host[r].params))
        checks.error(f"stacked training step, {kind} ×{len(SEEDS)}: parameters", error, FLOAT64_THRESHOLD)
        checks.error(f"stacked training step, {kind} ×{len(SEEDS)}: losses", loss_error, FLOAT64_THRESHOLD)


def nca_checks(checks: Checks, module) -> None:
    segment = _random((CHECK_FREQ, CHECK_FRAMES), 6, low=0.1, high=2.0)
    for kind in kind_names():
        host_model = build_model(kind, CHECK_FREQ, seed=0, dtype=numpy.float64, module=numpy)
        device_model = build_model(kind, CHECK_FREQ, seed=0, dtype=numpy.float64, module=module)
        for strategy in strategy_names():
            fits = [fit_couplings(model, backend.to_device(segment, backend.array_module(model.params[0])), strategy,
                                  iterations=2, lr=1e-3, seed=0) for model in (host_model, device_model)]
            checks.error(f"NCA {strategy}, {kind}: C after two iterations",
                         relative_error(fits[1].C, backend.to_host(fits[0].C)), FLOAT64_THRESHOLD)


def product_bound(n_products: int, inner: int, tf32: bool) -> float:
    """The normwise bound of docs/gpu.md#float32-bounds on a float32 result
    against float64: each of ``n_products`` chained products of inner
    dimension K adds at most γ_K ≈ K u (float32 accumulation) and, with
    TF32, 2 u_tf32 (its rounded inputs), relative to its operands' size."""
    per_product = inner * UNIT_FLOAT32 + (2 * UNIT_TF32 if tf32 else 2 * UNIT_FLOAT32)
    return n_products * per_product


def float32_step_checks(checks: Checks, module, *, n_freq: int, batch: int, tf32: bool) -> None:
    """One stacked training step in float32 (TF32 when asked) against the
    same step in float64 on NumPy from the same float32 weights and batch:
    every run's loss and gradient (docs/gpu.md#float32-bounds)."""
    label = "TF32" if tf32 else "float32"
    X = _random((batch, n_freq), 31, numpy.float32)
    Y = _random((batch, n_freq), 32, numpy.float32)
    for kind in kind_names():
        device = StackedModel.build(kind, n_freq, SEEDS, dtype=numpy.float32, module=module)
        host = StackedModel(kind, n_freq, backend.to_host(device.flat).astype(numpy.float64))
        results = []
        for stack, x, y in ((device, backend.to_device(X, module), backend.to_device(Y, module)),
                            (host, X.astype(numpy.float64), Y.astype(numpy.float64))):
            xp = stack.module
            grads, squared = xp.zeros_like(stack.flat), xp.zeros(len(SEEDS), dtype=numpy.float64)
            stack.loss_and_grads(x, y, grads, squared)
            results.append((backend.to_host(grads), backend.to_host(squared)))
        depth = model_kind(kind).n_layers
        bound = product_bound(3 * depth - 1, n_freq, tf32)
        grad_error = max(normwise_error(results[0][0][r], results[1][0][r]) for r in range(len(SEEDS)))
        loss_error = relative_error(results[0][1], results[1][1])
        checks.error(f"{label} training step, {kind} ×{len(SEEDS)} at F = {n_freq}: gradients", grad_error, bound)
        checks.error(f"{label} training step, {kind} ×{len(SEEDS)} at F = {n_freq}: losses", loss_error,
                     product_bound(depth, n_freq, tf32))


def float32_nca_checks(checks: Checks, module, *, n_freq: int, frames: int, tf32: bool) -> None:
    """Each NCA strategy's loss and gradients at its initial draws, float32
    (TF32 when asked) against float64 on NumPy, on every model."""
    from nca_np.nca import get_strategy, initial_draws

    label = "TF32" if tf32 else "float32"
    segment = _random((n_freq, frames), 33, numpy.float32, 0.1, 2.0)
    for kind in kind_names():
        device_model = build_model(kind, n_freq, seed=0, dtype=numpy.float32, module=module)
        host_model = build_model(kind, n_freq, seed=0, dtype=numpy.float64, module=numpy)
        for mine, theirs in zip(device_model.params, host_model.params):
            theirs[...] = backend.to_host(mine)  # the same (float32) weights
        depth = model_kind(kind).n_layers
        for strategy in strategy_names():
            draws = initial_draws(strategy, n_freq, depth, seed=0)
            outcome = []
            for model, dtype in ((device_model, numpy.float32), (host_model, numpy.float64)):
                xp = backend.array_module(model.params[0])
                X = backend.to_device(segment.astype(dtype), xp)
                V = model.decoder_output(X.T).T
                initial = [backend.to_device(numpy.asarray(d, dtype=numpy.float32).astype(dtype), xp) for d in draws]
                fitting = get_strategy(strategy).start(model, X, V, initial, "paper")
                loss, grads = fitting.loss_and_grads()
                outcome.append((backend.to_float(loss), [backend.to_host(g) for g in grads]))
            bound = product_bound(chained_products(strategy, depth, n_freq), n_freq, tf32)
            checks.error(f"{label} NCA {strategy}, {kind} at F = {n_freq}: loss",
                         relative_error(outcome[0][0], outcome[1][0]), bound)
            error, beyond = 0.0, 0.0
            for mine, theirs in zip(outcome[0][1], outcome[1][1]):
                difference = numpy.abs(mine.astype(numpy.float64) - theirs)
                error = max(error, float(numpy.linalg.norm(difference) / numpy.linalg.norm(theirs)))
                beyond = max(beyond, float(numpy.mean(difference > bound * numpy.abs(theirs).max())))
            checks.record(f"{label} NCA {strategy}, {kind} at F = {n_freq}: gradients", error < bound,
                          f"{error:.2e} (bound {bound:.0e}; {beyond:.2%} of the entries beyond it)")


def chained_products(strategy: str, depth: int, n_freq: int) -> int:
    """Products one after another in a strategy's iteration, read off its
    declared FLOPs ``a + b T``: ``a / 2F³`` products of two (F, F) matrices
    and ``b / 2F²`` of an (F, F) and an (F, T) one."""
    from nca_np.nca import get_strategy

    flops = get_strategy(strategy).flops
    slope = (flops(depth, n_freq, 200) - flops(depth, n_freq, 100)) / 100
    constant = flops(depth, n_freq, 100) - 100 * slope
    return max(1, round(constant / (2.0 * n_freq**3) + slope / (2.0 * n_freq**2)))


def stacked_adam_paper_runs(checks: Checks, module, runs: int = 10) -> None:
    """The fused Adam at the paper's R = 10 (its step-size column broadcast
    over a 2-D launch), float32, against each run's float64 update."""
    seeds = list(range(runs))
    rates = [10.0**-(2 + r / 3) for r in range(runs)]
    device = StackedModel.build("dae", CHECK_FREQ, seeds, dtype=numpy.float32, module=module)
    host = [StackedModel(device.kind, CHECK_FREQ, backend.to_host(device.flat)[r : r + 1].astype(numpy.float64))
            for r in range(runs)]
    fused = StackedAdam(device, lr=rates)
    plain = [StackedAdam(stack, lr=[rate]) for stack, rate in zip(host, rates)]
    for step in range(5):
        grads = _random(device.flat.shape, 40 + step, numpy.float32, -1.0, 1.0)
        fused.step(backend.to_device(grads, module))
        for r, adam in enumerate(plain):
            adam.step(grads[r : r + 1].astype(numpy.float64))
    mine = backend.to_host(device.flat)
    error = max(normwise_error(mine[r], host[r].flat[0]) for r in range(runs))
    checks.error(f"fused Adam at R = {runs} runs (one step size each), float32", error, FLOAT32_THRESHOLD)


def large_gather_check(checks: Checks, module, *, n_freq: int = 2049, elements: int = 2**31) -> None:
    """The gather from a float16 store of more than ``elements`` (2³¹: 64-bit
    indexing), where the device has room for it; one line either way."""
    frames = elements // n_freq + 64
    needed = 2 * frames * n_freq * 2 + 2**30
    free = backend.free_device_bytes(module)
    if free is None or free < needed:
        where = "on the CPU" if free is None else f"{free / 2**30:.1f} GiB free"
        print(f"SKIP  batch gather from a float16 store above 2^31 elements: needs {needed / 2**30:.1f} GiB "
              f"on a GPU ({where})")
        return
    mixture = module.empty((frames, n_freq), dtype=numpy.float16)
    vocals = module.empty((frames, n_freq), dtype=numpy.float16)
    rows_host = numpy.array([0, frames // 2, frames - 2, frames - 1], dtype=numpy.int64).reshape(-1, 1)
    expected = []
    for row in rows_host[:, 0]:  # distinct values in the rows read, written from the host
        line = (_random((1, n_freq), int(row) % 1000, numpy.float32) * 4).astype(numpy.float16)
        mixture[int(row)] = backend.to_device(line[0], module)
        vocals[int(row)] = backend.to_device(line[0, ::-1].copy(), module)
        expected.append(line)
    x = module.empty((4, n_freq), dtype=numpy.float32)
    y = module.empty((4, n_freq), dtype=numpy.float32)
    kernels.gather_rows(mixture, vocals, backend.to_device(rows_host, module),
                        backend.to_device(numpy.arange(n_freq, dtype=numpy.int64).reshape(1, -1), module), x, y)
    want = numpy.concatenate(expected).astype(numpy.float32)
    worst = max(float(numpy.abs(backend.to_host(x) - want).max()),
                float(numpy.abs(backend.to_host(y) - want[:, ::-1]).max()))
    checks.record(f"batch gather from a float16 store of {frames * n_freq / 2**31:.3g}·2^31 elements "
                  "(64-bit indexing)", worst == 0.0, f"largest difference {worst:.1e}")
    del mixture, vocals
    backend.free_memory_pool(module)


class _Interrupt(Exception):
    pass


def training_checks(checks: Checks, module) -> None:
    """Training on the device through ``train``: a run interrupted after its
    second epoch and resumed from its checkpoint ends with the parameters
    and losses of an uninterrupted run, bit for bit; a NaN in the frames
    stops training with the last good checkpoint kept."""
    import tempfile
    from pathlib import Path

    from nca_np.train import CHECKPOINT, FINAL_MODEL, TrainingDiverged, TrainSettings, read_state, train

    X, Y = _random((160, CHECK_FREQ), 50, numpy.float32), _random((160, CHECK_FREQ), 51, numpy.float32)
    settings = TrainSettings(batch_size=32, learning_rate=3e-3, max_epochs=4)

    def run(folder, frames=X, on_epoch_end=None):
        source = DeviceFrames(frames, Y, module=module, storage_dtype="float32")
        return train("mss-dae", source, folder, settings=settings, seed=1, progress=False, module=module,
                     on_epoch_end=on_epoch_end)

    def stop_after_epoch_2(record):
        if record["epoch"] == 2:
            raise _Interrupt

    with tempfile.TemporaryDirectory() as scratch:
        whole, cut, bad = Path(scratch, "whole"), Path(scratch, "cut"), Path(scratch, "diverging")
        expected = run(whole)
        try:
            run(cut, on_epoch_end=stop_after_epoch_2)
        except _Interrupt:
            pass
        resumed = run(cut)
        same = all(numpy.array_equal(p, q) for p, q in zip(*(
            [arrays[k] for k in sorted(arrays) if k.startswith("param_")]
            for arrays, _ in (read_state(folder / FINAL_MODEL) for folder in (whole, cut)))))
        losses = [[record["loss"] for record in meta["history"]] for meta in (expected, resumed)]
        checks.record("training on the device: resumed after epoch 2 from its checkpoint = uninterrupted",
                      same and losses[0] == losses[1], f"parameters {'equal' if same else 'differ'}, "
                      f"losses {'equal' if losses[0] == losses[1] else 'differ'}")
        try:
            run(bad, on_epoch_end=stop_after_epoch_2)
        except _Interrupt:
            pass
        kept = (bad / CHECKPOINT).read_bytes()
        poisoned = X.copy()
        poisoned[5, 3] = numpy.nan
        try:
            run(bad, frames=poisoned)
            stopped, message = False, "training went on"
        except TrainingDiverged as exc:
            stopped, message = True, str(exc)
        intact = (bad / CHECKPOINT).read_bytes() == kept
        checks.record("training on the device: a NaN loss stops it, the last good checkpoint kept",
                      stopped and intact and "epoch 3" in message,
                      f"{message[:80]}{'' if intact else '; the checkpoint changed'}")


def launch_checks(checks: Checks, runs: int) -> None:
    try:
        sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))
        from strict_xp import counting
    except ImportError:
        print("----  kernel launches per step: not countable here (tests/strict_xp.py is not beside this script)")
        return
    for kind in kind_names():
        counts = [launches_of_one_step(counting, kind, r) for r in (1, runs)]
        checks.record(f"kernel launches per training step, {kind}: the same for 1 and {runs} runs",
                      counts[0] == counts[1], f"{counts[0]} and {counts[1]}")


def launches_of_one_step(counting, kind: str, runs: int) -> int:
    """Launches of the second step of an epoch (gather, forward, backward, Adam)."""
    X, Y = _random((64, CHECK_FREQ), 7, numpy.float32), _random((64, CHECK_FREQ), 8, numpy.float32)
    frames = DeviceFrames(X, Y, module=counting, storage_dtype="float16")
    stack = StackedModel.build(kind, CHECK_FREQ, list(range(runs)), module=counting)
    optimizer = StackedAdam(stack, lr=1e-3)
    grads, squared = counting.zeros_like(stack.flat), counting.zeros(runs, dtype=numpy.float64)
    batches = frames.batches(16, backend.rng(0))
    for _ in range(2):  # the first step also moves the epoch's order and the step sizes to the device
        counting.reset()
        X_batch, Y_batch = next(batches)
        stack.loss_and_grads(X_batch, Y_batch, grads, squared)
        optimizer.step(grads)
    return counting.launches


def timings(module, *, n_freq: int, batch: int, runs: int, frames: int, budget: float) -> None:
    rate = calibrate.batched_matmul_rate(module, n_freq=n_freq, batch=batch, runs=runs, budget=budget)
    square = calibrate.square_matmul_rate(module, n=n_freq, budget=budget)
    print(f"\ntimings at F = {n_freq}, B = {batch}, R = {runs}, T = {frames}, float32; TF32 "
          f"{'allowed' if kernels.tf32_enabled() else 'off'} ({backend.tf32_settings()})")
    print(f"matrix products: {rate / 1e12:.3f} TFLOP/s for the step's (R·B×F)·(F×F), "
          f"{square / 1e12:.3f} TFLOP/s for F×F·F×F")
    print(calibrate.device_promise_line(module))
    steps, iterations = {}, {}
    for kind in kind_names():
        seconds = calibrate.training_step_seconds(kind, runs=runs, n_freq=n_freq, batch=batch, module=module,
                                                  budget=budget)
        steps[kind] = seconds
        bound = calibrate.training_step_flops(kind, n_freq=n_freq, batch=batch, runs=runs) / rate
        print(f"TIME  training step {kind:8} ×{runs}: {seconds * 1e3:8.2f} ms ({seconds / runs * 1e3:.2f} ms per run), "
              f"products alone {bound * 1e3:.2f} ms: ratio {bound / seconds:.2f}", flush=True)
        print("      " + calibrate.step_split_line(module, kind, seconds, runs=runs, n_freq=n_freq, batch=batch,
                                                   budget=budget), flush=True)
    for kind in kind_names():
        for strategy in strategy_names():
            seconds = calibrate.nca_iteration_seconds(kind, strategy, n_freq=n_freq, frames=frames, module=module,
                                                      budget=budget)
            bound = calibrate.nca_iteration_flops(kind, strategy, n_freq=n_freq, frames=frames) / square
            ratio = f"{bound / seconds:.2f}" if seconds > 0 else "-"
            iterations[kind, strategy] = seconds
            print(f"TIME  NCA iteration {strategy:13} {kind:8}: {seconds * 1e3:8.2f} ms, "
                  f"products alone {bound * 1e3:.2f} ms: ratio {ratio}", flush=True)
    protocol_estimate(steps, iterations, runs=runs, n_freq=n_freq, batch=batch, frames=frames)


def float32_checks(checks: Checks, module, sizes: dict) -> None:
    """What the protocol computes, in float32, against float64; on a GPU once
    more with TF32 tensor cores allowed (CUPY_TF32=1, as a run would set it)."""
    modes = [False] + ([True] if module is not numpy else [])
    saved = os.environ.get("CUPY_TF32"), _cupy_float32_compute_type(module)
    try:
        for tf32 in modes:
            _allow_tf32(module, tf32)
            float32_step_checks(checks, module, n_freq=sizes["n_freq"], batch=sizes["batch"], tf32=tf32)
            float32_nca_checks(checks, module, n_freq=sizes["n_freq"], frames=sizes["frames"], tf32=tf32)
    finally:
        if saved[0] is None:
            os.environ.pop("CUPY_TF32", None)
        else:
            os.environ["CUPY_TF32"] = saved[0]
        if saved[1] is not None:
            from cupy._core import _routines_linalg as linalg
            linalg.set_compute_type(numpy.float32, saved[1])


def _cupy_float32_compute_type(module):
    if module is numpy or not hasattr(module, "cuda"):
        return None
    from cupy._core import _routines_linalg as linalg
    return linalg.get_compute_type(numpy.float32)


def _allow_tf32(module, allowed: bool) -> None:
    """TF32 on or off for this process's float32 products: the batched
    products read CUPY_TF32 at each call (kernels.tf32_enabled); CuPy's own
    matmul reads it once, so its compute type is set as well."""
    os.environ["CUPY_TF32"] = "1" if allowed else "0"
    if _cupy_float32_compute_type(module) is not None:
        from cupy._core import _routines_linalg as linalg
        linalg.set_compute_type(numpy.float32, linalg.COMPUTE_TYPE_TF32 if allowed else linalg.COMPUTE_TYPE_DEFAULT)


def protocol_estimate(steps: dict, iterations: dict, *, runs: int, n_freq: int, batch: int, frames: int) -> None:
    """The paper's protocol in hours at these speeds, when they were measured at its sizes."""
    from nca_np.config import load_profile

    config = load_profile("paper", [])
    paper = (config["train"]["runs"], config["stft"]["n_fft"] // 2 + 1, config["train"]["batch_size"],
             config["nca"]["segment_frames"])
    if (runs, n_freq, batch, frames) != paper:
        print(f"protocol estimate: not at these sizes (the paper's: R, F, B, T = {paper})")
        return
    training, nca = calibrate.protocol_hours(config, steps, iterations)
    print(f"protocol estimate at these speeds (MUSDB18, every run to max_epochs = {config['train']['max_epochs']}): "
          f"training {training:.1f} h, NCA {nca:.1f} h, together {training + nca:.1f} h on this device")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("gpu", "cpu", "auto"), default="gpu")
    parser.add_argument("--sizes", choices=sorted(SIZES), default=None,
                        help="timing sizes: the paper's (default on a GPU) or tiny ones (default on the CPU)")
    parser.add_argument("--small", dest="sizes", action="store_const", const="small", help="same as --sizes small")
    parser.add_argument("--quick", action="store_true",
                        help=f"float32 comparisons at F = {FLOAT32_SIZES['quick']['n_freq']}, not the paper's 2049 "
                             "(for the tests on a CPU)")
    args = parser.parse_args(argv)
    try:
        module = backend.use(args.device)
    except backend.BackendError as exc:
        print(f"gpucheck.py: error: {exc}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    print(backend.device_line())
    checks = Checks()
    gradient_checks(checks)
    adam_checks(checks, module)
    stacked_adam_paper_runs(checks, module)
    gather_checks(checks, module)
    large_gather_check(checks, module)
    step_checks(checks, module)
    nca_checks(checks, module)
    training_checks(checks, module)
    float32_checks(checks, module, FLOAT32_SIZES["quick" if args.quick else "paper"])
    sizes = SIZES[args.sizes or ("small" if module is numpy else "paper")]
    launch_checks(checks, sizes["runs"])
    timings(module, **sizes)
    print(f"\n{checks.count - checks.failures} of {checks.count} checks pass "
          f"({time.perf_counter() - started:.0f} s)")
    return 1 if checks.failures else 0


if __name__ == "__main__":
    sys.exit(main())
