"""Tests of held-out scores and cross-validated ridge (nca_np.heldout,
docs/method.md#held-out-scores, docs/method.md#ridge-couplings)."""

from __future__ import annotations

import math

import numpy
import pytest

from nca_np import backend, heldout, metrics, references


def table_of(tracks: dict, frames: int = 10, step: int | None = None) -> list[dict]:
    """A segment table: ``tracks`` maps a name to its number of segments;
    consecutive segments start ``step`` frames apart (default: no overlap)."""
    rows, number = [], 0
    for track, count in tracks.items():
        for index in range(count):
            rows.append({"id": f"s{number:04d}", "number": number, "track": track, "index": index,
                         "start_frame": index * (step or frames), "frames": frames})
            number += 1
    return rows


def test_heldout_segments_follow_the_rule():
    table = table_of({"a": 6, "b": 4, "c": 4, "d": 4})
    chosen = heldout.heldout_segments(table, table[2], 3, 3, seed=5)
    assert len(chosen["same"]) == 3 and len(chosen["other"]) == 3
    assert all(row["track"] == "a" and row["number"] != 2 for row in chosen["same"])
    assert sorted(row["track"] for row in chosen["other"]) == ["b", "c", "d"]  # one per track first
    assert chosen == heldout.heldout_segments(table, table[2], 3, 3, seed=5)
    draws = {tuple(r["number"] for r in heldout.heldout_segments(table, table[2], 3, 3, seed=s)["same"])
             for s in range(8)}
    assert len(draws) > 1  # the seed decides
    more = heldout.heldout_segments(table_of({"a": 6, "b": 4, "c": 4, "d": 4, "e": 3}), table[2], 3, 3, seed=5)
    assert more["same"] == chosen["same"]  # other tracks added: the same-track draw stays


def test_heldout_segments_never_overlap_the_fitting_frames():
    table = table_of({"a": 8, "b": 2}, frames=10, step=5)  # each segment overlaps its neighbours
    fitting = table[3]  # frames 15..24 of track a
    chosen = heldout.heldout_segments(table, fitting, 10, 10, seed=0)
    numbers = [row["number"] for row in chosen["same"]]
    assert numbers == [0, 1, 5, 6, 7]  # 2 (10..19) and 4 (20..29) share frames with it
    assert [row["track"] for row in chosen["other"]] == ["b", "b"]
    assert heldout.heldout_segments(table, fitting, 0, 1, seed=0)["same"] == []
    with pytest.raises(heldout.HeldOutError, match=">= 0"):
        heldout.heldout_segments(table, fitting, -1, 1, seed=0)


def frames_of(n_freq, n_frames, seed, label="", masks=False):
    rng = backend.rng(seed)
    X = rng.uniform(0.1, 1.0, (n_freq, n_frames))
    target = rng.uniform(0.0, 1.0, (n_freq, n_frames))
    output = X * target if masks else target
    return heldout.Frames(X, output, target, label)


@pytest.mark.parametrize("kind", ["dae", "sf"])
def test_score_on_frames_is_the_report_s_snr_and_relative_error(kind):
    block = frames_of(6, 9, seed=1, masks=kind == "sf")
    C = backend.rng(2).normal(0.0, 0.3, (6, 6))
    scores = heldout.score_on_frames(kind, C, block)
    assert scores["snr_model_db"] == pytest.approx(metrics.snr_db(block.output, metrics.reconstruct(kind, C, block.X)))
    expected_error = numpy.abs(block.target - C @ block.X).sum() / numpy.abs(block.target).sum()
    assert scores["relative_error"] == pytest.approx(expected_error)
    assert scores["frames"] == 9
    exact = references.min_norm_couplings(block.X[:, :5], block.target[:, :5])
    on_its_frames = heldout.Frames(block.X[:, :5], metrics.reconstruct(kind, exact, block.X[:, :5]),
                                   block.target[:, :5])
    assert heldout.score_on_frames(kind, exact, on_its_frames)["snr_model_db"] > 150


def test_score_matrices_pools_frames_per_group():
    blocks = [frames_of(5, n, seed=n, label=f"b{n}") for n in (4, 7, 3)]
    C = backend.rng(3).normal(size=(5, 5))
    scores = heldout.score_matrices("dae", {"C": C, "zero": numpy.zeros((5, 5))},
                                    {"same track": blocks[:2], "other tracks": blocks[2:], "none": []})
    assert set(scores["C"]) == {"same track", "other tracks"}
    X = numpy.concatenate([b.X for b in blocks[:2]], axis=1)
    V = numpy.concatenate([b.output for b in blocks[:2]], axis=1)
    assert scores["C"]["same track"]["snr_model_db"] == pytest.approx(metrics.snr_db(V, C @ X))
    assert scores["C"]["same track"]["frames"] == 11
    assert scores["C"]["same track"]["per_block_snr_db"]["b7"] == pytest.approx(
        metrics.snr_db(blocks[1].output, C @ blocks[1].X))
    assert scores["zero"]["other tracks"]["snr_model_db"] == pytest.approx(0.0)


def noisy_linear_network(n_freq, n_frames, seed, rank=4, input_noise=1e-4, output_noise=0.05):
    """Frames of a linear "network" ``V = A x``, seen through noise: the
    frames lie near a rank-``rank`` subspace, so ``V X⁺`` divides the
    output noise by the tiny singular values and fails on new frames."""
    rng = backend.rng(seed)
    A = backend.rng(99).normal(0.0, 1.0 / math.sqrt(n_freq), (n_freq, n_freq))
    basis = backend.rng(98).normal(size=(n_freq, rank))
    clean = basis @ rng.normal(size=(rank, n_frames))
    X = clean + input_noise * rng.normal(size=clean.shape)
    V = A @ clean + output_noise * rng.normal(size=clean.shape)
    return heldout.Frames(X, V, V)


def test_cross_validated_ridge_beats_the_minimum_norm_couplings_held_out():
    # T = F: the noise part of X is a square random block, whose smallest
    # singular values are tiny, so V X⁺ blows its noise up most
    fit = noisy_linear_network(30, 30, seed=1)
    validation = noisy_linear_network(30, 30, seed=2)
    test = noisy_linear_network(30, 30, seed=3)
    choice = heldout.cross_validated_ridge("dae", fit, validation)
    assert [entry["alpha"] for entry in choice.path] == pytest.approx(numpy.logspace(-6, 0, 13))
    assert choice.heldout_snr_db == max(entry["heldout_snr_db"] for entry in choice.path)
    numpy.testing.assert_allclose(choice.C, references.ridge_couplings(fit.X, fit.target, choice.alpha))
    min_norm = references.min_norm_couplings(fit.X, fit.target)
    assert heldout.score_on_frames("dae", min_norm, fit)["snr_model_db"] > choice.in_sample_snr_db
    on_test = heldout.score_matrices("dae", {"ridge": choice.C, "min_norm": min_norm}, {"test": [test]})
    assert on_test["ridge"]["test"]["snr_model_db"] > 15.0
    assert on_test["ridge"]["test"]["snr_model_db"] > on_test["min_norm"]["test"]["snr_model_db"] + 10.0
    norms = [entry["norm"] for entry in choice.path]
    assert norms == sorted(norms, reverse=True)


def test_pool_count_and_pooled_ridge():
    assert heldout.pool_count(2049, 360, 10) == 5  # 6 × 360 = 2160 ≥ 2049
    assert heldout.pool_count(2049, 360, 3) == 2  # one left to score on
    assert heldout.pool_count(257, 360, 4) == 1
    assert heldout.pool_count(257, 360, 1) == 0
    fit = noisy_linear_network(30, 10, seed=1)
    same = [noisy_linear_network(30, 10, seed=s) for s in (2, 3, 4, 5)]
    choice, unused = heldout.pooled_ridge("dae", fit, same, noisy_linear_network(30, 10, seed=6))
    assert unused == same[2:]  # k = ceil(30 / 10) − 1 = 2 pooled
    pooled_X = numpy.concatenate([fit.X, same[0].X, same[1].X], axis=1)
    pooled_V = numpy.concatenate([fit.target, same[0].target, same[1].target], axis=1)
    numpy.testing.assert_allclose(choice.C, references.ridge_couplings(pooled_X, pooled_V, choice.alpha))


def test_frames_must_share_a_shape():
    with pytest.raises(heldout.HeldOutError, match="share one"):
        heldout.Frames(numpy.ones((3, 4)), numpy.ones((3, 4)), numpy.ones((3, 5)))
    with pytest.raises(heldout.HeldOutError, match="no frames"):
        heldout.pool([])


def test_ridge_choice_breaks_ties_towards_the_larger_alpha():
    fit = noisy_linear_network(8, 12, seed=1)
    silent = heldout.Frames(fit.X, numpy.zeros_like(fit.X), numpy.zeros_like(fit.X))  # every SNR is -inf
    choice = heldout.cross_validated_ridge("dae", fit, silent, alphas=[1e-3, 1.0, 1e-1])
    assert choice.alpha == 1.0 and [e["alpha"] for e in choice.path] == [1e-3, 1.0, 1e-1]
    with pytest.raises(heldout.HeldOutError, match="no alpha"):
        heldout.cross_validated_ridge("dae", fit, fit, alphas=[])


# ------------------------------------------------------------ a unit's held-out scores


def _unit_inputs(n_freq=12, n_frames=8):
    from nca_np.models import build_model

    rng = numpy.random.default_rng(5)
    model = build_model("sf", n_freq, seed=3)
    block = lambda: numpy.abs(rng.standard_normal((n_freq, n_frames))).astype(numpy.float32)  # noqa: E731
    return model, block(), block(), {"same_track": [("s1", block()), ("s2", block()), ("s3", block())],
                                      "other_tracks": [("s7", block()), ("s9", block())]}


def test_fit_unit_scores_every_matrix_on_both_groups_and_adds_only_new_keys():
    from nca_np import heldout as heldout_module
    from nca_np.couplings import NcaSettings, fit_unit, heldout_frames

    model, mixture, vocals, blocks = _unit_inputs()
    settings = NcaSettings(iterations=5, max_iterations=5, checkpoint_every=5)
    alone, matrices = fit_unit(settings, model, mixture, vocals, init_seed=1)
    measures, again = fit_unit(settings, model, mixture, vocals, init_seed=1,
                               heldout=heldout_frames(model, blocks))
    assert "heldout" not in alone and "ridge" not in alone["references"]
    # the existing numbers do not change when held-out blocks are given
    assert measures["strategies"]["student"]["tod_r"] == alone["strategies"]["student"]["tod_r"]
    assert measures["references"]["min_norm"] == alone["references"]["min_norm"]
    assert measures["baselines"] == alone["baselines"]
    assert all(numpy.array_equal(again[key], matrices[key]) for key in matrices)
    heldout = measures["heldout"]
    assert heldout["segments"] == {"same_track": ["s1", "s2", "s3"], "other_tracks": ["s7", "s9"]}
    assert set(heldout["scores"]) == {"student", "compositional", "min_norm", "nearest_identity", "mean_local_map",
                                      "linear", "identity", "ridge", "pooled_ridge"}
    for name, groups in heldout["scores"].items():
        assert set(groups) == {"same_track", "other_tracks"}, name
        assert groups["other_tracks"]["frames"] == 16 and math.isfinite(groups["other_tracks"]["snr_model_db"])
    # the pooled ridge pools k = max(1, ⌈12/8⌉ − 1) = 1 same-track segment and is scored on the other two only
    pooled = measures["references"]["pooled_ridge"]
    assert pooled["pooled_segments"] == 1 and pooled["scored_same_track"] == ["s2", "s3"]
    assert set(heldout["scores"]["pooled_ridge"]["same_track"]["per_block_snr_db"]) == {"s2", "s3"}
    ridge = measures["references"]["ridge"]
    assert ridge["alpha"] in heldout_module.DEFAULT_ALPHAS and ridge["pooled_segments"] == 0
    # the ridge's in-sample numbers are its measures on the fitting segment
    assert math.isfinite(ridge["tod_r"]) and math.isfinite(ridge["snr_model_db"])
    # the identity scores the SNR of the mixture against the model's output, as in sample
    identity = heldout["scores"]["identity"]["other_tracks"]["snr_model_db"]
    frames = heldout_frames(model, blocks)["other_tracks"]
    output = numpy.concatenate([f.output for f in frames], axis=1).astype(numpy.float64)
    X = numpy.concatenate([f.X for f in frames], axis=1).astype(numpy.float64)
    expected = 10 * math.log10((output ** 2).sum() / ((output - X * X) ** 2).sum())  # SF: Ŷ(I) = X ⊙ X
    assert identity == pytest.approx(expected, rel=1e-9)
