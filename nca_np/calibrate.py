"""Timings on this machine, against its own matrix-product rate.

One calibration for the plan (``reproduce --plan``, :mod:`nca_np.plan`), the
GPU self-check (``scripts/gpucheck.py``) and the training benchmark: the time
of a stacked training step and of an NCA iteration, measured on random data
of the given sizes with the active array module, and the floating-point
rate of plain matrix products of the same shapes, measured in the same run.
A ratio ``(work / rate) / time`` near 1 means the step does little besides
its matrix products.
"""

from __future__ import annotations

import time

import numpy

from . import backend
from .kernels import batched_matmul
from .models import build_model, model_kind
from .nca import fit_couplings, get_strategy
from .stacked import StackedAdam, StackedModel


def seconds_per_call(fn, module, *, budget: float = 0.3, min_calls: int = 2) -> float:
    """Mean seconds of ``fn()`` after one warm-up call, over at least
    ``min_calls`` calls and ``budget`` seconds (device work included)."""
    fn()
    backend.synchronize(module)
    calls, begin = 0, time.perf_counter()
    while calls < min_calls or time.perf_counter() - begin < budget:
        fn()
        calls += 1
    backend.synchronize(module)
    return (time.perf_counter() - begin) / calls


def _uniform(module, shape, dtype, seed=0):
    return backend.to_device(backend.rng(seed).uniform(0.0, 1.0, size=shape).astype(dtype), module)


def batched_matmul_rate(module, *, n_freq: int, batch: int, runs: int, dtype=numpy.float32,
                        budget: float = 0.3) -> float:
    """FLOP/s of the training step's products, ``X Wᵀ`` for R stacked
    ``(F, F)`` weights and a shared (B, F) batch: ``2 R B F²`` per call."""
    X = _uniform(module, (batch, n_freq), dtype)
    W = _uniform(module, (runs, n_freq, n_freq), dtype, seed=1)
    out = module.empty((runs, batch, n_freq), dtype=dtype)
    seconds = seconds_per_call(lambda: batched_matmul(X, W, transpose_b=True, out=out), module, budget=budget)
    return 2.0 * runs * batch * n_freq**2 / seconds


def square_matmul_rate(module, *, n: int, dtype=numpy.float32, budget: float = 0.3) -> float:
    """FLOP/s of one ``(n, n) @ (n, n)`` product (the NCA's largest): ``2 n³`` per call."""
    A, B = _uniform(module, (n, n), dtype), _uniform(module, (n, n), dtype, seed=1)
    out = module.empty((n, n), dtype=dtype)
    return 2.0 * n**3 / seconds_per_call(lambda: module.matmul(A, B, out=out), module, budget=budget)


def training_step_flops(kind: str, *, n_freq: int, batch: int, runs: int) -> float:
    """Multiply–adds ×2 of the products of one stacked step: per layer ``X Wᵀ``,
    ``δzᵀ X`` and (above the first) ``δz W``, ``2 B F²`` each, for R runs."""
    n_layers = model_kind(kind).n_layers
    return runs * (3 * n_layers - 1) * 2.0 * batch * n_freq**2


def nca_iteration_flops(kind: str, strategy: str, *, n_freq: int, frames: int) -> float:
    """FLOPs of the products of one NCA iteration, as the strategy declares
    them (docs/gradients.md §12): the student ``2 F²T`` multiply–adds, the
    compositional ``2L F³ + (3L−1) F²T``."""
    return get_strategy(strategy).flops(model_kind(kind).n_layers, n_freq, frames)


def stacked_step(kind: str, *, runs: int, n_freq: int, batch: int, module, dtype=numpy.float32, seed: int = 0):
    """A closure running one training step of a fresh stack of ``runs`` models
    (forward, backward, Adam) on a fixed random batch."""
    stack = StackedModel.build(kind, n_freq, [seed + r for r in range(runs)], dtype=dtype, module=module)
    optimizer = StackedAdam(stack, lr=1e-4)
    X = _uniform(module, (batch, n_freq), dtype, seed=seed + 100)
    Y = _uniform(module, (batch, n_freq), dtype, seed=seed + 101)
    grads = module.zeros_like(stack.flat)
    squared = module.zeros(runs, dtype=numpy.float64)

    def step():
        stack.loss_and_grads(X, Y, grads, squared)
        optimizer.step(grads)
    return step


def training_step_seconds(kind: str, *, runs: int, n_freq: int, batch: int, module, dtype=numpy.float32,
                          budget: float = 0.3) -> float:
    """Seconds of one stacked training step of ``runs`` runs."""
    step = stacked_step(kind, runs=runs, n_freq=n_freq, batch=batch, module=module, dtype=dtype)
    return seconds_per_call(step, module, budget=budget)


def nca_iteration_seconds(kind: str, strategy: str, *, n_freq: int, frames: int, composition: str = "paper",
                          module, budget: float = 0.3) -> float:
    """Seconds of one iteration of an NCA fit, its setup excluded: the
    difference of a 6-iteration and a 2-iteration fit, over 4."""

    model = build_model(kind, n_freq, module=module)
    segment = _uniform(module, (n_freq, frames), numpy.float32, seed=7)

    def fit(iterations):
        return lambda: fit_couplings(model, segment, strategy, iterations=iterations, composition=composition)
    long, short = (seconds_per_call(fit(n), module, budget=budget) for n in (6, 2))
    return max(long - short, 0.0) / 4
