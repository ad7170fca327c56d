"""Scores of couplings on frames they were not fitted on (docs/method.md#held-out-scores),
and ridge couplings chosen by them (docs/method.md#ridge-couplings).

A matrix fitted to one segment describes the network only if it also
reproduces the network's output on other frames. This module

- chooses, reproducibly, the held-out segments of a fitting segment
  (:func:`heldout_segments`): some of the same track, some of other tracks,
  never overlapping the fitting frames;
- scores named matrices on held-out frames, pooled per group
  (:func:`score_on_frames`, :func:`score_matrices`);
- fits ridge couplings along a path of ``α`` and chooses ``α`` by the SNR on
  validation frames (:func:`cross_validated_ridge`), on one segment or on
  several pooled (:func:`pooled_ridge`).

Frames are columns, as everywhere: ``X``, the model's output and the
decoder output are (F, T). Arrays stay in the module of the inputs (NumPy
or CuPy); the solves are float64 (:mod:`nca_np.references`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy

from . import backend
from .errors import UserError
from .metrics import snr_db, tod_r
from .models import model_kind
from .references import ridge_path

#: The ridge path: 13 values of ``α`` (units of ``σ₁(X)²``), two per decade
#: from 1e-6 to 1. ``α`` halves the directions of singular value
#: ``s = √α σ₁`` and keeps the larger ones, so the path runs from keeping
#: every direction above ``10⁻³ σ₁`` (just above the float32 rank cutoff,
#: ``max(F, T) ε₃₂ σ₁ ≈ 2.4·10⁻⁴ σ₁`` at F = 2049: below α ≈ 1e-7 ridge only
#: fits rounding, like ``V X⁺``) to halving even the strongest (α = 1).
#: A step of half a decade changes any direction's weight by at most √10;
#: the range and the step were fixed before any held-out score was seen.
DEFAULT_ALPHAS = tuple(float(a) for a in numpy.logspace(-6.0, 0.0, 13))


class HeldOutError(UserError, ValueError):
    """Held-out frames or segments that cannot be used (shapes, counts)."""


@dataclass
class Frames:
    """One block of frames and what the network made of them.

    Attributes:
        X: (F, T) mixture magnitudes, frames as columns.
        output: (F, T) the model's output (what SNRs are measured against).
        target: (F, T) the decoder output (``V``: the estimate for DAE and
            MSS-DAE, the mask for SF): what couplings are fitted to.
        label: a name for the block (e.g. the segment id).
    """

    X: object
    output: object
    target: object
    label: str = ""

    def __post_init__(self):
        shapes = {tuple(self.X.shape), tuple(self.output.shape), tuple(self.target.shape)}
        if self.X.ndim != 2 or len(shapes) != 1:
            raise HeldOutError(f"frames {self.label!r}: X, output and target must share one (F, T) shape, "
                               f"got {sorted(shapes)}")

    @property
    def n_frames(self) -> int:
        return int(self.X.shape[1])


# ------------------------------------------------------------ choosing segments


def _overlaps(a: dict, b: dict) -> bool:
    """True when two segments share a frame of the same track."""
    return (a["track"] == b["track"] and a["start_frame"] < b["start_frame"] + b["frames"]
            and b["start_frame"] < a["start_frame"] + a["frames"])


def _round_robin_by_track(segments: list[dict]) -> list[dict]:
    """Reorder (already shuffled) segments so each track's first comes
    before any track's second, and so on: other-track draws spread over
    as many tracks as they can."""
    seen: dict[str, int] = {}
    order = []
    for position, segment in enumerate(segments):
        order.append((seen.get(segment["track"], 0), position))
        seen[segment["track"]] = seen.get(segment["track"], 0) + 1
    return [segments[position] for _, position in sorted(order)]


def heldout_segments(table: list[dict], segment: dict, n_same: int, n_other: int, *, seed: int) -> dict:
    """The held-out segments of one fitting segment (docs/method.md#held-out-scores).

    Up to ``n_same`` segments of the same track and up to ``n_other`` of
    other tracks (one per track before any track gives a second), drawn
    without replacement from a stream of ``seed`` keyed by the fitting
    segment's number only, so every model kind fitted on this segment is
    scored on the same frames, and adding segments, kinds or runs changes
    no draw. A segment sharing any frame with the fitting one (same track,
    overlapping frame ranges) is never chosen.

    Args:
        table: the segment table (dicts with ``id, number, track, index,
            start_frame, frames``).
        segment: the fitting segment (one of ``table``'s rows).
        n_same, n_other: how many to choose of each (fewer when fewer exist).
        seed: the seed of the draws (``nca.seed``).

    Returns:
        ``{"same": [rows], "other": [rows]}``, each sorted by number.
    """
    if n_same < 0 or n_other < 0:
        raise HeldOutError(f"held-out counts must be >= 0, got n_same={n_same}, n_other={n_other}")
    rng = backend.rng(seed, stream=backend.stream_key("heldout", segment["number"]))
    candidates = sorted((row for row in table if not _overlaps(row, segment)), key=lambda row: row["number"])
    same = [row for row in candidates if row["track"] == segment["track"]]
    other = [row for row in candidates if row["track"] != segment["track"]]
    same = [same[i] for i in rng.permutation(len(same))][:n_same]
    other = _round_robin_by_track([other[i] for i in rng.permutation(len(other))])[:n_other]
    return {"same": sorted(same, key=lambda row: row["number"]),
            "other": sorted(other, key=lambda row: row["number"])}


# ------------------------------------------------------------ scoring


def pool(blocks: list[Frames], label: str = "") -> Frames:
    """The blocks' frames side by side: (F, ΣT) each."""
    if not blocks:
        raise HeldOutError("no frames to pool")
    xp = backend.array_module(blocks[0].X)
    return Frames(*(xp.concatenate([getattr(b, name) for b in blocks], axis=1)
                    for name in ("X", "output", "target")), label=label)


def score_on_frames(kind: str, C, frames: Frames) -> dict:
    """How well ``C`` (F, F) reproduces the network on ``frames``.

    Returns:
        ``{"snr_model_db": SNR(output, Ŷ(C)), "relative_error": ‖V − C X‖₁/‖V‖₁,
        "frames": T}`` with ``Ŷ`` of docs/method.md#measures
        (:func:`nca_np.metrics.reconstruct`) and the relative error of
        docs/method.md#convergence, in float64.
    """
    xp = backend.array_module(frames.X)
    X = xp.asarray(frames.X, dtype=xp.float64)
    C = xp.asarray(C, dtype=xp.float64)
    CX = C @ X  # once: the relative error needs C X, the SNR Ŷ(C)
    estimate = CX * X if model_kind(kind).masks_input else CX  # Ŷ(C), as metrics.reconstruct
    V = xp.asarray(frames.target, dtype=xp.float64)
    whole = backend.to_float(xp.abs(V).sum())
    error = backend.to_float(xp.abs(V - CX).sum()) / whole if whole > 0 else math.nan
    return {"snr_model_db": snr_db(xp.asarray(frames.output, dtype=xp.float64), estimate),
            "relative_error": error, "frames": frames.n_frames}


def score_group(kind: str, C, blocks: list[Frames]) -> dict:
    """:func:`score_on_frames` on the blocks pooled, plus the SNR of each block.

    Pooled, a block counts in proportion to its energy (SNR of the summed
    energies); the per-block SNRs show how much the blocks differ.
    """
    scores = score_on_frames(kind, C, pool(blocks))
    scores["per_block_snr_db"] = {b.label: score_on_frames(kind, C, b)["snr_model_db"] for b in blocks}
    return scores


def score_matrices(kind: str, matrices: dict, groups: dict) -> dict:
    """Score every named matrix on every group of held-out blocks.

    Args:
        kind: the model kind (decides ``Ŷ``).
        matrices: name → (F, F) couplings.
        groups: group name (e.g. "same track", "other tracks") → list of
            :class:`Frames`; empty groups are left out.

    Returns:
        ``{name: {group: score_group(...)}}``.
    """
    return {name: {group: score_group(kind, C, blocks) for group, blocks in groups.items() if blocks}
            for name, C in matrices.items()}


# ------------------------------------------------------------ ridge chosen by held-out SNR


@dataclass
class RidgeChoice:
    """The ridge couplings chosen by validation SNR, and the path behind it.

    Attributes:
        alpha: the chosen ``α`` (units of ``σ₁(X)²`` of the fitting frames).
        C: (F, F) float64 couplings at ``alpha``.
        in_sample_snr_db: SNR on the fitting frames.
        heldout_snr_db: SNR on the validation frames (optimistic by the
            choice: the best of the path's values).
        path: one dict per ``α``: ``alpha, in_sample_snr_db,
            heldout_snr_db, tod_r, norm``.
    """

    alpha: float
    C: object
    in_sample_snr_db: float
    heldout_snr_db: float
    path: list = field(default_factory=list)


def _choice_key(entry: dict) -> tuple[float, float]:
    """Higher validation SNR first (nan counts as the worst), then larger α."""
    snr = entry["heldout_snr_db"]
    return (-math.inf if math.isnan(snr) else snr, entry["alpha"])


def cross_validated_ridge(kind: str, fit: Frames, validation: Frames, alphas=DEFAULT_ALPHAS) -> RidgeChoice:
    """Ridge couplings of ``fit`` with ``α`` chosen by SNR on ``validation``
    (docs/method.md#ridge-couplings).

    Args:
        kind: the model kind.
        fit: the fitting frames (F, T).
        validation: held-out frames (F, T') the choice is made on; not the
            frames the result is finally reported on.
        alphas: the path (default :data:`DEFAULT_ALPHAS`).

    Returns:
        :class:`RidgeChoice`; ties go to the larger ``α`` (the smaller ``C``).
    """
    if fit.X.shape[0] != validation.X.shape[0]:
        raise HeldOutError(f"fitting frames have {fit.X.shape[0]} bins, validation frames {validation.X.shape[0]}")
    xp = backend.array_module(fit.X)
    alphas = [float(alpha) for alpha in alphas]
    if not alphas:
        raise HeldOutError("the ridge path has no alpha")
    best, path = None, []
    for alpha, C in zip(alphas, ridge_path(fit.X, fit.target, alphas)):
        entry = {"alpha": alpha, "in_sample_snr_db": score_on_frames(kind, C, fit)["snr_model_db"],
                 "heldout_snr_db": score_on_frames(kind, C, validation)["snr_model_db"],
                 "tod_r": tod_r(C), "norm": backend.to_float(xp.linalg.norm(C))}
        path.append(entry)
        if best is None or _choice_key(entry) > _choice_key(best[0]):
            best = (entry, C)
    entry, C = best
    return RidgeChoice(entry["alpha"], C, entry["in_sample_snr_db"], entry["heldout_snr_db"], path)


def pool_count(n_freq: int, n_frames: int, available: int) -> int:
    """How many same-track held-out segments a pooled ridge fit takes.

    Enough for the pooled frames to outnumber the bins (``(1 + k) T ≥ F``,
    the fewest that can make ``C X = V`` determined; at least one), but
    always leaving one same-track segment to validate or score on.
    """
    wanted = max(1, math.ceil(n_freq / n_frames) - 1)
    return max(0, min(wanted, available - 1))


def pooled_ridge(kind: str, fit: Frames, same_track: list[Frames], validation: Frames,
                 alphas=DEFAULT_ALPHAS) -> tuple[RidgeChoice, list[Frames]]:
    """Ridge couplings fitted on the fitting segment and ``k`` same-track
    segments pooled (``k`` from :func:`pool_count`), ``α`` chosen on
    ``validation``.

    Returns:
        ``(choice, unused)``: the :class:`RidgeChoice` (its in-sample SNR is
        on the pooled frames) and the same-track blocks not pooled, which
        are left to score on.
    """
    k = pool_count(int(fit.X.shape[0]), fit.n_frames, len(same_track))
    pooled = pool([fit, *same_track[:k]], label="pooled")
    return cross_validated_ridge(kind, pooled, validation, alphas), list(same_track[k:])
