"""How fast stacked training runs, against what this machine allows.

For each model, one stacked training step of R runs (forward, backward,
Adam; R = 3 on the CPU, 10 on a GPU by default) at F = 2049, B = 64,
float32, is timed beside R separate steps — a one-run stack (what
``train`` runs for a single run) and the model-and-Adam path of one run
(``Model.loss_and_grads`` and ``Adam.step``) — and compared with a bound
measured in the same run:

* the step's own matrix products, run as plain batched products of the same
  shapes for the R runs (per layer: the forward ``x Wᵀ``, the weight gradient
  ``δzᵀ x`` and, above the first layer, the input gradient ``δz W``), plus
* one pass of Adam's memory traffic — read θ, ∇, m, v and write θ, m, v,
  7 × 4 bytes per parameter — at the copy bandwidth measured here.

Every time is per run-step (a step's time over its runs); ``ratio = bound /
time``: 1.0 would mean nothing but matrix products and one pass over Adam's
state. ``speed-up`` is the one-run stack's time over the stacked one's. The
four are timed in turn, round after round, and each keeps its fastest
round, so load from other work on the machine slows them alike. Usage::

    python scripts/bench_train.py [--device cpu|gpu|auto] [--freq 2049] [--batch 64] [--runs R]

Then each model's stacked step split into its products (TFLOP/s against the
device's nominal float32 or TF32 rate) and the rest (GB/s of its elementwise
traffic against the memory bandwidth, and per launch), as ``make gpucheck``
prints it (``nca_np.calibrate.step_split_line``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import tracemalloc

import numpy

from nca_np import backend, calibrate
from nca_np.calibrate import stacked_step
from nca_np.models import build_model, kind_names, model_kind
from nca_np.optim import Adam

ADAM_BYTES_PER_PARAM = 7 * 4


def timed(fn, *, repeats, module) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs after one warm-up."""
    fn()
    backend.synchronize(module)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        backend.synchronize(module)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def timed_together(fns, *, repeats, module) -> list[float]:
    """Least seconds of each ``fns[i]()`` over ``repeats`` rounds, each round
    running every function once in turn after one warm-up round: on a shared
    machine, load that comes and goes slows them alike."""
    best = [float("inf")] * len(fns)
    for round_number in range(repeats + 1):
        for i, fn in enumerate(fns):
            backend.synchronize(module)
            start = time.perf_counter()
            fn()
            backend.synchronize(module)
            if round_number:
                best[i] = min(best[i], time.perf_counter() - start)
    return best


def copy_bandwidth(module, *, n_bytes=256 * 2**20, repeats=5) -> float:
    """Bytes per second moved by a large array copy (read + write)."""
    src = module.ones(n_bytes // 4, dtype=numpy.float32)
    dst = module.empty_like(src)
    seconds = timed(lambda: module.copyto(dst, src), repeats=repeats, module=module)
    return 2 * n_bytes / seconds


def model_step(kind, module, n_freq, batch, seed=0):
    """One step of the model-and-Adam path of a single run."""
    model = build_model(kind, n_freq, seed=seed, module=module)
    rng = backend.rng(seed + 1)
    X = backend.to_device(rng.uniform(0, 1, size=(batch, n_freq)).astype(numpy.float32), module)
    Y = backend.to_device(rng.uniform(0, 1, size=(batch, n_freq)).astype(numpy.float32), module)
    optimizer = Adam(model.params, lr=1e-4)
    buffers = [module.empty_like(p) for p in model.params]

    def step():
        _, grads = model.loss_and_grads(X, Y, out=buffers)
        optimizer.step(grads)
    return step


def peak_step_memory(step, module) -> int:
    """Peak bytes allocated during one step, on top of what existed before."""
    if module is numpy:
        tracemalloc.start()
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        step()
        peak = tracemalloc.get_traced_memory()[1] - base
        tracemalloc.stop()
        return peak
    pool = module.get_default_memory_pool()
    backend.synchronize(module)
    pool.free_all_blocks()  # else the blocks of earlier steps hide the peak
    before = pool.total_bytes()
    step()
    backend.synchronize(module)
    return pool.total_bytes() - before


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "gpu", "auto"], default="cpu")
    parser.add_argument("--freq", type=int, default=2049)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--runs", type=int, default=None, help="runs stacked (default: 3 on the CPU, 10 on a GPU)")
    parser.add_argument("--repeats", type=int, default=10)
    # `make bench ARGS=...` hands the same options to bench_nca.py, whose
    # own (such as --frames) are not errors here, only noted.
    args, others = parser.parse_known_args(argv)
    if others:
        print(f"bench_train.py: ignoring options it does not take: {' '.join(others)}", file=sys.stderr)
    try:
        module = backend.use(args.device)
    except backend.BackendError as exc:
        print(f"bench_train.py: error: {exc}", file=sys.stderr)
        return 2
    runs = args.runs or (3 if module is numpy else 10)
    print(backend.device_line())
    bandwidth = copy_bandwidth(module)
    print(f"training step per run, {runs} runs stacked, F = {args.freq}, B = {args.batch}, float32, "
          f"on {backend.device_description()}")
    print(f"copy bandwidth {bandwidth / 1e9:.1f} GB/s; times in ms per run-step, ratio = bound / time")
    header = (f"{'model':8} {'stacked':>8} {'one-run':>8} {'model+Adam':>10} {'bound':>7} {'ratio':>6} "
              f"{'ratio 1-run':>11} {'speed-up':>8} {'peak extra MB':>13}")
    print(header)
    print("-" * len(header))
    steps = {}
    for kind in kind_names():
        depth = model_kind(kind).n_layers
        stacked = stacked_step(kind, runs=runs, n_freq=args.freq, batch=args.batch, module=module)
        single = stacked_step(kind, runs=1, n_freq=args.freq, batch=args.batch, module=module)
        model = model_step(kind, module, args.freq, args.batch)
        products = calibrate.step_products(kind, runs=runs, n_freq=args.freq, batch=args.batch, module=module)
        stacked_s, single_s, model_s, products_s = timed_together([stacked, single, model, products],
                                                                  repeats=args.repeats, module=module)
        stacked_s /= runs
        n_params = 2 * depth * (args.freq**2 + args.freq)
        bound_s = products_s / runs + ADAM_BYTES_PER_PARAM * n_params / bandwidth
        peak = peak_step_memory(stacked, module)
        print(f"{kind:8} {stacked_s * 1e3:8.1f} {single_s * 1e3:8.1f} {model_s * 1e3:10.1f} {bound_s * 1e3:7.1f} "
              f"{bound_s / stacked_s:6.2f} {bound_s / single_s:11.2f} {single_s / stacked_s:8.2f} "
              f"{peak / 2**20:13.1f}", flush=True)
        steps[kind] = stacked_s * runs
    print(f"\nthe stacked step against the device ({calibrate.device_promise_line(module)}):")
    for kind, seconds in steps.items():
        print("  " + calibrate.step_split_line(module, kind, seconds, runs=runs, n_freq=args.freq, batch=args.batch),
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
