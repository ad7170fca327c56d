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


#: Nominal dense rates of NVIDIA GPUs in FLOP/s, (float32, TF32 tensor
#: cores), by a part of the name CuPy reports, most specific first; from
#: NVIDIA's data sheets (A100: SXM 40/80 GB; H100/H200: SXM; L40S, L4, A10:
#: PCIe), without structured sparsity.
NOMINAL_PEAKS = (
    ("H100 PCIe", (51.2e12, 378e12)),
    ("H100 NVL", (60e12, 418e12)),
    ("H100", (66.9e12, 494.7e12)),
    ("H200", (66.9e12, 494.7e12)),
    ("GH200", (66.9e12, 494.7e12)),
    ("A100", (19.5e12, 156e12)),
    ("L40S", (91.6e12, 183e12)),
    ("L40", (90.5e12, 90.5e12)),
    ("L4", (30.3e12, 60e12)),
    ("A10", (31.2e12, 62.5e12)),
    ("V100", (15.7e12, None)),
)


def nominal_peaks(device_name: str) -> tuple[float | None, float | None]:
    """(float32, TF32) nominal FLOP/s of a GPU by name; (None, None) when unknown."""
    for part, peaks in NOMINAL_PEAKS:
        if part.lower() in device_name.lower():
            return peaks
    return None, None


def memory_bandwidth(module) -> float | None:
    """The device's nominal memory bandwidth in bytes/s: memory clock × bus
    width × 2 (double data rate), from CUDA's device attributes; None on NumPy."""
    if not hasattr(module, "cuda"):
        return None
    props = module.cuda.runtime.getDeviceProperties(module.cuda.Device().id)
    return props["memoryClockRate"] * 1e3 * props["memoryBusWidth"] / 8 * 2


def step_products(kind: str, *, runs: int, n_freq: int, batch: int, module, dtype=numpy.float32):
    """A closure running a stacked step's matrix products alone, as plain
    batched products of the same shapes: per layer ``X Wᵀ``, ``δzᵀ X`` and,
    above the first, ``δz W``."""
    depth = model_kind(kind).n_layers
    x = _uniform(module, (batch, n_freq), dtype)
    a = _uniform(module, (runs, batch, n_freq), dtype, seed=2)
    W = _uniform(module, (runs, n_freq, n_freq), dtype, seed=1)
    out_act = module.empty((runs, batch, n_freq), dtype=dtype)
    out_w = module.empty((runs, n_freq, n_freq), dtype=dtype)

    def products():
        for layer in range(depth):
            batched_matmul(x if layer == 0 else a, W, transpose_b=True, out=out_act)
            batched_matmul(a, x if layer == 0 else a, transpose_a=True, out=out_w)
            if layer > 0:
                batched_matmul(a, W, out=out_act)
    return products


def step_products_seconds(kind: str, *, runs: int, n_freq: int, batch: int, module, dtype=numpy.float32,
                          budget: float = 0.3) -> float:
    """Seconds of :func:`step_products`' call."""
    products = step_products(kind, runs=runs, n_freq=n_freq, batch=batch, module=module, dtype=dtype)
    return seconds_per_call(products, module, budget=budget)


def elementwise_step_bytes(kind: str, *, runs: int, n_freq: int, batch: int, itemsize: int = 4) -> float:
    """Bytes the elementwise work of a stacked step moves at least: Adam reads
    θ, ∇, m, v and writes θ, m, v (7 per parameter); per layer the bias and
    ReLU (read, write), the bias gradient (read) and the ReLU gate (read 2,
    write): 6 passes over the (R, B, F) activations; the gather writes 2 B F."""
    depth = model_kind(kind).n_layers
    params = 2 * depth * (n_freq**2 + n_freq)
    return itemsize * runs * (7 * params + 6 * depth * batch * n_freq) + itemsize * 2 * batch * n_freq


#: MUSDB18's training set, about 6.6 hours of audio (100 tracks); its test set, 50 tracks.
MUSDB_TRAIN_SECONDS, MUSDB_TEST_TRACKS = 23760.0, 50


def protocol_hours(config: dict, step_seconds: dict, nca_iteration_seconds: dict) -> tuple[float, float]:
    """(training, NCA) hours of the paper's protocol at the measured speeds,
    on MUSDB18 as ``reproduce --plan`` estimates it before preparation: every
    run trains ``max_epochs`` epochs (the most it can), its R runs stacked.

    Args:
        config: a profile (e.g. ``load_profile("paper")``).
        step_seconds: kind -> seconds of one stacked step of the profile's R runs.
        nca_iteration_seconds: (kind, strategy) -> seconds of one NCA iteration.
    """
    stft, train, nca = config["stft"], config["train"], config["nca"]
    frames = MUSDB_TRAIN_SECONDS * stft["sample_rate"] / stft["hop"]
    batches = -(-int(frames) // train["batch_size"])
    training = sum(step_seconds[kind] for kind in train["kinds"]) * batches * train["max_epochs"]
    per_excerpt = int(config["data"]["excerpt_seconds"] * stft["sample_rate"] / stft["hop"]) // nca["segment_frames"]
    segments = per_excerpt * MUSDB_TEST_TRACKS
    per_segment = sum(nca_iteration_seconds[kind, strategy] for kind in train["kinds"]
                      for strategy in nca["strategies"]) * nca["iterations"]
    return training / 3600, segments * per_segment / 3600


def device_promise_line(module) -> str:
    """What the device promises: its nominal float32 and TF32 rates (by name,
    :data:`NOMINAL_PEAKS`) and its memory bandwidth (from its attributes)."""
    name = backend.device_record()["device"]
    fp32, tf32 = nominal_peaks(name)
    bandwidth = memory_bandwidth(module)
    peaks = (f"nominal {fp32 / 1e12:.1f} TFLOP/s float32, " + (f"{tf32 / 1e12:.0f} TFLOP/s TF32" if tf32 else "no TF32")
             if fp32 else "nominal rates unknown for this device")
    memory = f"memory {bandwidth / 1e9:.0f} GB/s (clock × bus width × 2)" if bandwidth else "memory bandwidth unknown"
    return f"device {name}: {peaks}; {memory}"


def step_split_line(module, kind: str, seconds: float, *, runs: int, n_freq: int, batch: int,
                    budget: float = 0.3) -> str:
    """A stacked step of ``seconds`` split into its products (TFLOP/s, against
    the nominal float32 or TF32 peak as TF32 is off or on) and the rest (GB/s
    of its elementwise traffic against the memory bandwidth; per launch, over
    the step's launches: counted on a GPU by :func:`device_launches`, else
    the code's 6L + 2, docs/gradients.md#stacked-training)."""
    products = step_products_seconds(kind, runs=runs, n_freq=n_freq, batch=batch, module=module, budget=budget)
    flops = training_step_flops(kind, n_freq=n_freq, batch=batch, runs=runs)
    rest = max(seconds - products, 1e-12)
    moved = elementwise_step_bytes(kind, runs=runs, n_freq=n_freq, batch=batch)
    fp32, tf32 = nominal_peaks(backend.device_record()["device"])
    peak = tf32 if backend.tf32_enabled() and tf32 else fp32
    bandwidth = memory_bandwidth(module)
    expected = 6 * model_kind(kind).n_layers + 2
    measured = device_launches(stacked_step(kind, runs=runs, n_freq=n_freq, batch=batch, module=module), module)
    launches = measured if measured else expected
    counted = (f"{measured} launches on the device ({expected} from the code)" if measured
               else f"{expected} launches (counted from the code)")
    return (f"{kind}: products {products * 1e3:.2f} ms, {flops / products / 1e12:.2f} TFLOP/s"
            f"{f' ({flops / products / peak:.0%} of nominal)' if peak else ''}; "
            f"the rest {rest * 1e3:.2f} ms, {moved / rest / 1e9:.1f} GB/s"
            f"{f' ({moved / rest / bandwidth:.0%} of the memory bandwidth)' if bandwidth else ''}; "
            f"{counted}, {rest / launches * 1e6:.1f} µs each")


def device_launches(step, module) -> int | None:
    """Kernels, copies and memsets one call of ``step()`` puts on the GPU,
    counted in a CUDA graph captured from it (cuBLAS may launch more than one
    kernel per product); None on NumPy or when the step cannot be captured."""
    if not hasattr(module, "cuda"):
        return None
    import re

    step()  # compilations and allocations happen outside the capture
    backend.synchronize(module)
    stream = module.cuda.Stream(non_blocking=True)
    try:
        with stream:
            stream.begin_capture()
            try:
                step()
            finally:
                graph = stream.end_capture()
        text = graph.debug_dot_str()
    except Exception:  # a capture refused by the runtime or a library
        return None
    return len(re.findall(r'label="\{(?:KERNEL|MEMCPY|MEMSET)', text)) or None
