"""Time one NCA iteration (loss, gradients, Adam step) of each strategy.

Cases: every registered strategy (the student; the compositional strategy
for a chain of 2 layers, DAE and SF, and of 4, MSS-DAE), at the study's size F = 2049, T = 360,
float32, on the active backend. Each case runs in a fresh process. Each
iteration is timed inside ``nca.fit_couplings`` itself (through its
callback), so what is measured is exactly the loop the experiment runs.

Columns:
  s/iter     seconds per iteration, the best of --repeats (after one
             warm-up iteration): the least disturbed by other work on the
             machine
  600 iters  the estimate for a whole fit (Algorithm 1's 600 iterations)
  peak MiB   memory a fit needs beyond its inputs: on CPU the peak resident
             set (ru_maxrss) less the resident set just before the fit; on
             GPU the bytes CuPy's memory pool acquired during the fit (the
             pool keeps freed blocks for reuse, so this is the high-water
             mark of in-use memory, rounded to its blocks)
  bound s    the time of the iteration's own matrix products run as plain
             matmuls of the same shapes and transpositions, alternating with
             the iterations (best of --repeats): no implementation of the
             iteration can beat it
  ratio      bound / (s/iter), at most about 1; what remains is the
             elementwise work (signs, ReLU gates, Adam)

Usage:
  python scripts/bench_nca.py [--device cpu|gpu|auto] [--repeats 3]
                              [--freq 2049] [--frames 360]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nca_np import backend, nca  # noqa: E402
from nca_np.models import MODEL_KINDS, build_model  # noqa: E402

FULL_FIT_ITERATIONS = 600


def benchmark_cases() -> dict:
    """case name → (strategy, model kind whose depth the chain has), for
    every registered strategy: one case when its number of unknowns does not
    depend on the depth (e.g. "student"), else one per depth of the
    registered kinds (e.g. "compositional L=2", "compositional L=4")."""
    depths = {}
    for kind in MODEL_KINDS.values():
        depths.setdefault(kind.n_layers, kind.name)
    cases = {}
    for name, strategy in nca.STRATEGIES.items():
        if len({strategy.unknowns(depth) for depth in depths}) == 1:
            cases[name] = (name, depths[min(depths)])
        else:
            cases.update({f"{name} L={depth}": (name, depths[depth]) for depth in sorted(depths)})
    return cases


CASES = benchmark_cases()


def matmul_shapes(strategy: str, n_layers: int, n_freq: int, n_frames: int):
    """The matrix products of one iteration, as the strategy declares them
    (:attr:`nca_np.nca.Strategy.products`): ``(lhs shape, transpose lhs,
    rhs shape, transpose rhs)`` each, the shapes of the stored arrays."""
    return nca.get_strategy(strategy).products(n_layers, n_freq, n_frames)


def bound_operands(shapes, module, dtype):
    """Random operands for the products in ``shapes``, as ``[(lhs, rhs), …]``."""
    generator = backend.rng(1)
    # One array per (side, shape) keeps the bound's memory small. The two
    # sides stay distinct arrays: NumPy computes ``A @ A.T`` with a faster
    # symmetric kernel, which the iteration never gets to use.
    arrays = {}

    def operand(side, shape, transpose):
        if (side, shape) not in arrays:
            arrays[side, shape] = backend.to_device(generator.standard_normal(shape).astype(dtype), module)
        return arrays[side, shape].T if transpose else arrays[side, shape]

    return [(operand("lhs", a, ta), operand("rhs", b, tb)) for a, ta, b, tb in shapes]


def time_products(products, module) -> float:
    """Seconds to run every product once, back to back."""
    backend.synchronize(module)
    start = time.perf_counter()
    for lhs, rhs in products:
        lhs @ rhs
    backend.synchronize(module)
    return time.perf_counter() - start


def peak_resident_mib() -> float:
    """This process's peak resident set so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_resident_mib() -> float:
    """This process's resident set now, in MiB (/proc on Linux; else the peak).

    The baseline of a case is the *current* resident set: the set-up's own
    transient peak (host draws in float64) would otherwise hide part of the
    fit's growth.
    """
    try:
        with open("/proc/self/statm") as statm:
            resident_pages = int(statm.read().split()[1])
    except (OSError, IndexError, ValueError):
        return peak_resident_mib()
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2.0**20


def build_case(name: str, n_freq: int, n_frames: int):
    """A float32 model of the case's depth (Glorot weights, small random
    biases) and a non-negative segment X (F, T), on the active module."""
    module = backend.xp()
    generator = backend.rng(0)
    model = build_model(CASES[name][1], n_freq, seed=0, dtype=numpy.float32, module=module)
    for b in model.biases:  # the bias path costs the same either way; make it non-trivial
        b[...] = backend.to_device(generator.normal(0.0, 0.1, n_freq).astype(numpy.float32), module)
    X = backend.to_device(generator.uniform(0.0, 2.0, (n_freq, n_frames)).astype(numpy.float32), module)
    return model, X


def measure_peak_mib(model, X, strategy: str) -> float:
    """Memory a two-iteration fit needs beyond what is already allocated."""
    module = backend.xp()
    backend.synchronize(module)
    if module is numpy:
        before = current_resident_mib()
        nca.fit_couplings(model, X, strategy, iterations=2)
        return peak_resident_mib() - before
    pool = module.get_default_memory_pool()
    pool.free_all_blocks()
    before = pool.total_bytes()
    nca.fit_couplings(model, X, strategy, iterations=2)
    return (pool.total_bytes() - before) / 2.0**20


def measure_times(model, X, strategy: str, repeats: int) -> tuple[float, float]:
    """Best seconds per fit iteration and per round of its bound's products.

    The two alternate — after each iteration (in the fit's callback) one
    round of the bound's products runs — so load from other processes on
    the machine falls on both alike. The first of each is a warm-up.
    """
    module = backend.xp()
    shapes = matmul_shapes(strategy, model.n_layers, X.shape[0], X.shape[1])
    products = bound_operands(shapes, module, numpy.float32)
    iteration_times, bound_times = [], []
    started = [0.0]

    def after_iteration(iteration, loss):
        backend.synchronize(module)
        iteration_times.append(time.perf_counter() - started[0])
        bound_times.append(time_products(products, module))
        started[0] = time.perf_counter()

    backend.synchronize(module)
    started[0] = time.perf_counter()
    nca.fit_couplings(model, X, strategy, iterations=repeats + 1, seed=0, callback=after_iteration)
    return min(iteration_times[1:]), min(bound_times[1:])


def run_case(name: str, n_freq: int, n_frames: int, repeats: int) -> dict:
    """Memory first (in a process that has run nothing else), then times."""
    strategy = CASES[name][0]
    model, X = build_case(name, n_freq, n_frames)
    peak_mib = measure_peak_mib(model, X, strategy)
    seconds, bound = measure_times(model, X, strategy, repeats)
    return {"case": name, "seconds": seconds, "peak_mib": peak_mib, "bound": bound, "ratio": bound / seconds}


def run_case_in_fresh_process(name: str, args) -> dict:
    """Run one case in a new interpreter, so its peak resident set is its own."""
    # the device this process resolved (auto included), so every case runs on it
    device = "cpu" if backend.name() == "numpy" else "gpu"
    command = [sys.executable, os.path.abspath(__file__), "--device", device,
               "--repeats", str(args.repeats), "--freq", str(args.freq),
               "--frames", str(args.frames), "--one-case", name]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"case {name!r} failed:\n{done.stderr.strip()}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def print_table(rows, args) -> None:
    print(f"NCA iteration on {backend.device_description()}: F={args.freq}, T={args.frames}, "
          f"float32, best of {args.repeats}")
    print(f"{'case':<20} {'s/iter':>9} {'600 iters':>10} {'peak MiB':>9} {'bound s':>9} {'ratio':>6}")
    for row in rows:
        full = row["seconds"] * FULL_FIT_ITERATIONS
        print(f"{row['case']:<20} {row['seconds']:>9.3g} {full / 60.0:>8.3g} m {row['peak_mib']:>9.1f} "
              f"{row['bound']:>9.3g} {row['ratio']:>6.2f}")


def parse_arguments(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "gpu", "auto"), default="cpu",
                        help="auto: the GPU, and the CPU only when no GPU is visible (as bench_train.py)")
    parser.add_argument("--repeats", type=int, default=3, help="timed iterations per case")
    parser.add_argument("--freq", type=int, default=2049, help="F, frequency bins")
    parser.add_argument("--frames", type=int, default=360, help="T, frames per segment")
    parser.add_argument("--one-case", choices=tuple(CASES), help=argparse.SUPPRESS)
    # `make bench ARGS=...` hands the same options to bench_train.py, whose
    # own (such as --batch) are not errors here, only noted.
    args, others = parser.parse_known_args(argv)
    if others and not args.one_case:
        print(f"bench_nca.py: ignoring options it does not take: {' '.join(others)}", file=sys.stderr)
    if args.repeats < 1 or args.freq < 2 or args.frames < 1:
        parser.error("--repeats and --frames must be at least 1, --freq at least 2")
    return args


def main(argv=None) -> int:
    args = parse_arguments(argv)
    try:
        backend.use(args.device)
    except backend.BackendError as exc:
        print(f"bench_nca.py: error: {exc}", file=sys.stderr)
        return 2
    if args.one_case:
        print(json.dumps(run_case(args.one_case, args.freq, args.frames, args.repeats)))
        return 0
    print(backend.device_line())  # first, so a run on the CPU is never silent
    rows = [run_case_in_fresh_process(name, args) for name in CASES]
    print_table(rows, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
