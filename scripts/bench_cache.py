"""Memory and speed of training from a feature cache that outgrows memory.

Builds two feature caches with the paper's STFT (F = 2049) from the built-in
synthetic corpus, the larger four times the smaller (several GB), trains one
epoch of the DAE from each in a fresh process, and prints the peak resident
memory and the frames per second of both. Training reads the cache in
groups of blocks (nca_np.frames), so its memory is bounded by

    budget = 2 groups (mixture, vocals) + 4 × the parameters (θ, ∇, m, v) + 512 MiB

whatever the size of the cache. Pass: both peaks within the budget, and the
larger cache's throughput at least 80 % of the smaller's.

    python scripts/bench_cache.py [--minutes 10] [--workdir DIR] [--keep]

``--minutes`` is the training audio of the smaller cache (60-second tracks).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nca_np.config import load_profile
from nca_np.frames import DEFAULT_BLOCK_FRAMES, DEFAULT_BLOCKS_IN_MEMORY

TRACK_SECONDS = 60.0
MIB = 2**20


def build_cache(folder: Path, minutes: int) -> Path:
    """A synthetic corpus of ``minutes`` 60-second training tracks, prepared
    with the paper's STFT; returns the cache folder."""
    from nca_np.data.cache import prepare_cache
    from nca_np.data.synth import generate_corpus

    root = generate_corpus(folder / "audio", n_train=minutes, n_test=1, seconds=TRACK_SECONDS,
                           test_seconds=35.0, seed=0)
    config = load_profile("paper", ["data.corpus=synthetic", "data.is_wav=true"])
    return prepare_cache(config, folder / "cache", musdb_root=root, progress=False, log=None)


def one_epoch(cache_path: str) -> dict:
    """Train the DAE for one epoch from the cache; runs in its own process."""
    from nca_np.data.cache import open_cache
    from nca_np.train import TrainSettings, train

    cache = open_cache(Path(cache_path))
    source = cache.train_frames()
    with tempfile.TemporaryDirectory() as run_dir:
        meta = train("dae", source, run_dir, settings=TrainSettings(max_epochs=1), seed=0, progress=False)
    record = meta["history"][0]
    return {"frames": source.n_frames, "frames_per_second": record["frames_per_second"],
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def budget_mib(n_freq: int) -> float:
    group = 2 * DEFAULT_BLOCKS_IN_MEMORY * DEFAULT_BLOCK_FRAMES * n_freq * 4
    parameters = 2 * (n_freq * n_freq + n_freq) * 4  # the DAE's two layers
    return (group + 4 * parameters) / MIB + 512


def folder_mib(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*.npy")) / MIB


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=int, default=10, help="training audio of the smaller cache")
    parser.add_argument("--workdir", type=Path, default=None, help="where to build the caches (default: a temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the caches afterwards")
    parser.add_argument("--one-epoch", help=argparse.SUPPRESS)
    args, others = parser.parse_known_args(argv)
    if args.one_epoch:
        print(json.dumps(one_epoch(args.one_epoch)))
        return 0
    if others:
        print(f"bench_cache.py: ignoring options it does not take: {' '.join(others)}", file=sys.stderr)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="nca_np-bench-cache-"))
    n_freq = load_profile("paper")["stft"]["n_fft"] // 2 + 1
    rows = []
    try:
        for label, minutes in (("small", args.minutes), ("large", 4 * args.minutes)):
            started = time.perf_counter()
            cache = build_cache(workdir / label, minutes)
            built = time.perf_counter() - started
            os.sync()  # the build's writes reach the disk now, not during the timed epoch
            out = subprocess.run([sys.executable, __file__, "--one-epoch", str(cache)], check=True,
                                 capture_output=True, text=True).stdout
            rows.append({"label": label, "minutes": minutes, "cache_mib": folder_mib(cache), "build_s": built,
                         **json.loads(out.strip().splitlines()[-1])})
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    budget = budget_mib(n_freq)
    print(f"one DAE epoch from a feature cache, F = {n_freq}, float32; memory budget {budget:.0f} MiB")
    print(f"{'cache':6} {'audio min':>9} {'cache MiB':>10} {'frames':>8} {'frames/s':>9} {'peak RSS MiB':>13}")
    for row in rows:
        print(f"{row['label']:6} {row['minutes']:9d} {row['cache_mib']:10.0f} {row['frames']:8d} "
              f"{row['frames_per_second']:9.0f} {row['peak_rss_mib']:13.0f}")
    small, large = rows
    throughput = large["frames_per_second"] / small["frames_per_second"]
    within = all(row["peak_rss_mib"] <= budget for row in rows)
    print(f"peak memory within budget: {'yes' if within else 'NO'}; "
          f"larger cache / budget: {large['cache_mib'] / budget:.1f}×; "
          f"throughput large/small: {throughput:.2f} ({'ok' if throughput >= 0.8 else 'BELOW 0.8'})")
    return 0 if within and throughput >= 0.8 else 1


if __name__ == "__main__":
    sys.exit(main())
