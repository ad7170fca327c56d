"""How fast one training step runs, against what this machine allows.

For each model, one step (forward, backward, Adam) at F = 2049, B = 64,
float32 is timed and compared with a bound measured in the same run:

* the step's own matrix products, run as plain matmuls of the same shapes
  (per layer: the forward ``x Wᵀ``, the weight gradient ``δzᵀ x`` and, except
  for the first layer, the input gradient ``δz W``), plus
* one pass of Adam's memory traffic — read θ, ∇, m, v and write θ, m, v,
  7 × 4 bytes per parameter — at the copy bandwidth measured here.

``ratio = bound / step``: 1.0 would mean nothing but matrix products and one
pass over Adam's state. Usage::

    python scripts/bench_train.py [--device cpu|gpu] [--freq 2049] [--batch 64]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import tracemalloc

import numpy

from nca_np import backend
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


def copy_bandwidth(module, *, n_bytes=256 * 2**20, repeats=5) -> float:
    """Bytes per second moved by a large array copy (read + write)."""
    src = module.ones(n_bytes // 4, dtype=numpy.float32)
    dst = module.empty_like(src)
    seconds = timed(lambda: module.copyto(dst, src), repeats=repeats, module=module)
    return 2 * n_bytes / seconds


def matmul_bound(module, depth, n_freq, batch, *, repeats) -> float:
    """Seconds the step's matrix products take as plain matmuls."""
    x = module.ones((batch, n_freq), dtype=numpy.float32)
    W = module.ones((n_freq, n_freq), dtype=numpy.float32)
    out_act = module.empty((batch, n_freq), dtype=numpy.float32)
    out_w = module.empty((n_freq, n_freq), dtype=numpy.float32)

    def products():
        for layer in range(depth):
            module.matmul(x, W.T, out=out_act)
            module.matmul(x.T, x, out=out_w)
            if layer > 0:
                module.matmul(x, W, out=out_act)
    return timed(products, repeats=repeats, module=module)


def step_function(kind, module, n_freq, batch, seed=0):
    """A closure running one training step of a fresh model."""
    model = build_model(kind, n_freq, seed=seed, module=module)
    rng = backend.rng(seed + 1)
    X = backend.to_device(rng.uniform(0, 1, size=(batch, n_freq)).astype(numpy.float32), module)
    Y = backend.to_device(rng.uniform(0, 1, size=(batch, n_freq)).astype(numpy.float32), module)
    optimizer = Adam(model.params, lr=1e-4)
    buffers = [module.empty_like(p) for p in model.params]

    def step():
        _, grads = model.loss_and_grads(X, Y, out=buffers)
        optimizer.step(grads)
    return step, sum(int(p.size) for p in model.params)


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
    parser.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--freq", type=int, default=2049)
    parser.add_argument("--batch", type=int, default=64)
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

    bandwidth = copy_bandwidth(module)
    print(f"training step, F = {args.freq}, B = {args.batch}, float32, on {backend.device_description()}")
    print(f"copy bandwidth {bandwidth / 1e9:.1f} GB/s")
    header = f"{'model':8} {'step ms':>8} {'bound ms':>9} {'ratio':>6} {'frames/s':>9} {'weights MB':>10} {'peak extra MB':>13}"
    print(header)
    print("-" * len(header))
    for kind in kind_names():
        step, n_params = step_function(kind, module, args.freq, args.batch)
        step_s = timed(step, repeats=args.repeats, module=module)
        bound_s = (matmul_bound(module, model_kind(kind).n_layers, args.freq, args.batch, repeats=args.repeats)
                   + ADAM_BYTES_PER_PARAM * n_params / bandwidth)
        peak = peak_step_memory(step, module)
        print(f"{kind:8} {step_s * 1e3:8.1f} {bound_s * 1e3:9.1f} {bound_s / step_s:6.2f} "
              f"{args.batch / step_s:9.0f} {4 * n_params / 2**20:10.1f} {peak / 2**20:13.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
