"""Held-out scores of couplings fitted to trained models (docs/method.md#held-out-scores).

For a few fitting segments of each model kind, fits ``V X⁺``, ridge
couplings (α chosen on same-track held-out segments), pooled ridge and,
with ``--nca``, the student NCA, and scores each in sample and on
held-out frames: "same track" (the segments ``α`` was chosen on — and,
for pooled ridge, partly fitted on — so flattering ridge) and "other
tracks" (used for nothing else: the fair comparison).

Usage::

    python scripts/heldout_demo.py --cache WORKDIR/cache/KEY --runs WORKDIR/runs/RUNSKEY \
        [--segments 3] [--run 0] [--nca]

Reads a finished feature cache and trained runs; writes nothing.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy

from nca_np import backend, heldout, references
from nca_np.data.cache import open_cache
from nca_np.metrics import tod_r
from nca_np.train import FINAL_MODEL, load_model

T = 360


def segment_rows(cache) -> list[dict]:
    """The segment table (as the couplings stage numbers segments)."""
    rows, per_track = [], {}
    for number, (track, _, start) in enumerate(cache.segment_positions(T)):
        index = per_track[track] = per_track.get(track, -1) + 1
        rows.append({"id": f"s{number:04d}", "number": number, "track": track, "index": index,
                     "start_frame": start, "frames": T})
    return rows


def frames_of(model, segment) -> heldout.Frames:
    X = segment.mixture.astype(numpy.float64)
    return heldout.Frames(X, model.predict(X.T).T, model.decoder_output(X.T).T, f"s{segment.index:04d}")


def matrices_of(model, fit, same, use_nca: bool) -> tuple[dict, dict]:
    """The named couplings of one fitting segment, and notes on the ridge choices."""
    kind = model.kind
    choice = heldout.cross_validated_ridge(kind, fit, heldout.pool(same))
    pooled, unused = heldout.pooled_ridge(kind, fit, same, heldout.pool(same[1:] or same))
    matrices = {"V X⁺": references.min_norm_couplings(fit.X, fit.target), "ridge": choice.C,
                "ridge pooled": pooled.C, "zero": numpy.zeros((fit.X.shape[0],) * 2)}
    if use_nca:
        from nca_np.nca import fit_couplings
        matrices["student NCA"] = fit_couplings(model, fit.X.astype(numpy.float32), "student", seed=0).C
    return matrices, {"alpha": choice.alpha, "alpha_pooled": pooled.alpha, "pooled_unused": len(unused)}


def report(kind, segment_id, matrices, fit, groups, notes) -> None:
    scores = heldout.score_matrices(kind, matrices, groups)
    print(f"\n{kind} {segment_id}: ridge α = {notes['alpha']:.2g}, pooled α = {notes['alpha_pooled']:.2g}")
    print(f"  {'matrix':<14}{'‖C‖_F':>10}{'TOD-R':>8}{'in-sample':>11}{'same track':>12}{'other tracks':>14}")
    for name, C in matrices.items():
        own = heldout.score_on_frames(kind, C, fit)["snr_model_db"]
        norm = float(numpy.linalg.norm(C))
        ratio = tod_r(C) if norm > 0 else math.nan
        cells = [scores[name][group]["snr_model_db"] for group in ("same track", "other tracks")]
        print(f"  {name:<14}{norm:>10.3g}{ratio:>8.3g}{own:>11.2f}{cells[0]:>12.2f}{cells[1]:>14.2f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--runs", type=Path, required=True)
    parser.add_argument("--segments", type=int, default=3, help="fitting segments per kind")
    parser.add_argument("--run", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--nca", action="store_true", help="also fit the student NCA (600 iterations)")
    args = parser.parse_args(argv)
    backend.use("numpy")
    cache = open_cache(args.cache)
    table = segment_rows(cache)
    segments = {s.index: s for s in cache.segments(T, log=None)}
    fitting = [table[i] for i in backend.rng(args.seed).permutation(len(table))[:args.segments]]
    for kind_dir in sorted(p for p in args.runs.iterdir() if (p / f"run_{args.run:02d}" / FINAL_MODEL).exists()):
        model = load_model(kind_dir / f"run_{args.run:02d}" / FINAL_MODEL, module=numpy)[0]
        for row in fitting:
            chosen = heldout.heldout_segments(table, row, 3, 3, seed=args.seed)
            fit = frames_of(model, segments[row["number"]])
            same = [frames_of(model, segments[r["number"]]) for r in chosen["same"]]
            other = [frames_of(model, segments[r["number"]]) for r in chosen["other"]]
            if not same or not other:
                print(f"{row['id']}: too few held-out segments, skipped", file=sys.stderr)
                continue
            matrices, notes = matrices_of(model, fit, same, args.nca)
            report(model.kind, row["id"], matrices, fit, {"same track": same, "other tracks": other}, notes)
            print(f"  rank X {references.pseudo_inverse(fit.X.astype(numpy.float32)).rank} of {fit.X.shape[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
