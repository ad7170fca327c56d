"""The GPU self-check: does this machine's GPU compute what NumPy computes, and how fast?

    python scripts/gpucheck.py [--device gpu|cpu|auto] [--sizes paper|small]   (make gpucheck [DEVICE=cpu])

On the chosen device, one PASS/FAIL line per check:

1. every finite-difference gradient check of scripts/gradcheck.py (layers,
   models alone and stacked, the NCA in both readings), in float64;
2. the fused Adam update (one step size per run) against each run's NumPy
   update, in float64 and float32;
3. the batch gather with its float16 → float32 cast against NumPy;
4. one stacked training step of each model (R runs, float64) against R
   NumPy models, each with its own Adam;
5. two NCA iterations of each strategy on each model against NumPy;
6. kernel launches per training step, counted on the counting stand-in
   module of tests/strict_xp.py (it runs the same code, kernels included):
   the same for 1 run as for R runs;

then timings at the paper's sizes (F = 2049, B = 64, T = 360, R = 10; tiny
ones with ``--sizes small``, the default on the CPU): the device's matrix-product rate measured in the
same run, and each stacked training step and NCA iteration as a time and
as the ratio (its products at that rate) / (its time). The exit status is 1
if any check fails. With ``--device cpu`` the same checks run on NumPy,
which is how CI tests this script (``make gpucheck DEVICE=cpu``). Meant to take
under 5 minutes on one GPU.
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
from nca_np.models import build_model, kind_names  # noqa: E402
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
    for kind in kind_names():
        seconds = calibrate.training_step_seconds(kind, runs=runs, n_freq=n_freq, batch=batch, module=module,
                                                  budget=budget)
        bound = calibrate.training_step_flops(kind, n_freq=n_freq, batch=batch, runs=runs) / rate
        print(f"TIME  training step {kind:8} ×{runs}: {seconds * 1e3:8.2f} ms ({seconds / runs * 1e3:.2f} ms per run), "
              f"products alone {bound * 1e3:.2f} ms: ratio {bound / seconds:.2f}", flush=True)
    for kind in kind_names():
        for strategy in strategy_names():
            seconds = calibrate.nca_iteration_seconds(kind, strategy, n_freq=n_freq, frames=frames, module=module,
                                                      budget=budget)
            bound = calibrate.nca_iteration_flops(kind, strategy, n_freq=n_freq, frames=frames) / square
            ratio = f"{bound / seconds:.2f}" if seconds > 0 else "-"
            print(f"TIME  NCA iteration {strategy:13} {kind:8}: {seconds * 1e3:8.2f} ms, "
                  f"products alone {bound * 1e3:.2f} ms: ratio {ratio}", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("gpu", "cpu", "auto"), default="gpu")
    parser.add_argument("--sizes", choices=sorted(SIZES), default=None,
                        help="timing sizes: the paper's (default on a GPU) or tiny ones (default on the CPU)")
    parser.add_argument("--small", dest="sizes", action="store_const", const="small", help="same as --sizes small")
    args = parser.parse_args(argv)
    try:
        module = backend.use(args.device)
    except backend.BackendError as exc:
        print(f"gpucheck.py: error: {exc}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    print(f"self-check on {backend.device_description()}")
    checks = Checks()
    gradient_checks(checks)
    adam_checks(checks, module)
    gather_checks(checks, module)
    step_checks(checks, module)
    nca_checks(checks, module)
    sizes = SIZES[args.sizes or ("small" if module is numpy else "paper")]
    launch_checks(checks, sizes["runs"])
    timings(module, **sizes)
    print(f"\n{checks.count - checks.failures} of {checks.count} checks pass "
          f"({time.perf_counter() - started:.0f} s)")
    return 1 if checks.failures else 0


if __name__ == "__main__":
    sys.exit(main())
