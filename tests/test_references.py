"""Tests of the exact references (nca_np.references,
docs/method.md#exact-references), in float64 at tiny sizes.

The network is piecewise affine, so a central difference of its output is
exact (up to rounding) as long as no unit's pre-activation crosses zero
within the step; the frames used keep every unit further from its kink than
the step can move it.
"""

from __future__ import annotations

import numpy
import pytest

from nca_np import backend, metrics, references
from nca_np.models import build_model, kind_names

F = 12
STEP = 1e-7
#: No unit of a check frame lies within this distance of its kink.
KINK_MARGIN = 1e-6


def model_with_biases(kind, seed=0, n_freq=F):
    """A float64 model with Glorot weights and non-zero biases (so the
    offsets of the local maps are not trivially zero)."""
    model = build_model(kind, n_freq, seed=seed, dtype=numpy.float64, module=numpy)
    rng = backend.rng(seed + 100)
    for b in model.biases:
        b[...] = rng.normal(0.0, 0.2, b.shape)
    return model


def pre_activations(model, x):
    """z_l at frame x, written from the layer equations."""
    zs, h = [], x
    for W, b in zip(model.weights, model.biases):
        z = W @ h + b
        zs.append(z)
        h = numpy.maximum(z, 0.0)
    return zs


def safe_frames(model, n_frames, seed=1):
    """Non-negative frames at which every unit is more than KINK_MARGIN from
    its kink and some units of every layer are active and some not."""
    rng = backend.rng(seed)
    found = []
    while len(found) < n_frames:
        x = rng.uniform(0.0, 2.0, model.n_freq)
        zs = pre_activations(model, x)
        if all(numpy.abs(z).min() > KINK_MARGIN and (z > 0).any() and (z < 0).any() for z in zs):
            found.append(x)
    return numpy.stack(found, axis=1)


def decoder(model, x):
    return model.decoder_output(x[None, :])[0]


def finite_difference_jacobian(model, x):
    """Column i: (v(x + h e_i) − v(x − h e_i)) / 2h."""
    columns = []
    for i in range(x.size):
        step = numpy.zeros_like(x)
        step[i] = STEP
        columns.append((decoder(model, x + step) - decoder(model, x - step)) / (2 * STEP))
    return numpy.stack(columns, axis=1)


def assert_step_cannot_cross_a_kink(model, x):
    """|Δz_l| ≤ ‖∂z_l/∂x‖_∞ · STEP must stay below each unit's distance to its kink."""
    J = numpy.eye(x.size)
    for W, z in zip(model.weights, pre_activations(model, x)):
        reach = numpy.abs(W @ J).sum(axis=1) * STEP
        assert (reach < numpy.abs(z)).all()
        J = (z > 0)[:, None] * (W @ J)


@pytest.mark.parametrize("kind", kind_names())
def test_local_map_equals_the_finite_difference_jacobian(kind):
    model = model_with_biases(kind)
    for x in safe_frames(model, 3).T:
        assert_step_cannot_cross_a_kink(model, x)
        J = references.local_map(model, x)
        numeric = finite_difference_jacobian(model, x)
        assert J.shape == (F, F) and J.dtype == numpy.float64
        assert numpy.abs(J).max() > 0.05  # a real map, not a dead network
        numpy.testing.assert_allclose(J, numeric, rtol=0, atol=1e-7 * numpy.abs(J).max())


@pytest.mark.parametrize("kind", kind_names())
def test_local_map_and_offset_reproduce_the_output(kind):
    model = model_with_biases(kind, seed=3)
    X = safe_frames(model, 4, seed=5)
    offsets = references.local_offsets(model, X)
    for t, x in enumerate(X.T):
        c = references.local_offset(model, x)
        v = decoder(model, x)
        numpy.testing.assert_allclose(references.local_map(model, x) @ x + c, v, rtol=1e-12, atol=1e-12)
        numpy.testing.assert_allclose(offsets[:, t], c, rtol=1e-12, atol=1e-14)
        assert numpy.abs(c).max() > 1e-3  # the biases really contribute


def test_local_map_of_a_two_layer_model_is_eq_14_written_out():
    model = model_with_biases("dae", seed=2)
    x = safe_frames(model, 1)[:, 0]
    (W1, W2), (b1, b2) = model.weights, model.biases
    z1 = W1 @ x + b1
    z2 = W2 @ numpy.maximum(z1, 0) + b2
    D1, D2 = numpy.diag((z1 > 0) * 1.0), numpy.diag((z2 > 0) * 1.0)
    numpy.testing.assert_allclose(references.local_map(model, x), D2 @ W2 @ D1 @ W1, rtol=1e-13)
    numpy.testing.assert_allclose(references.local_offset(model, x), D2 @ W2 @ D1 @ b1 + D2 @ b2, rtol=1e-13)


@pytest.mark.parametrize("kind", kind_names())
def test_mean_local_map_is_the_mean_of_the_local_maps(kind):
    model = model_with_biases(kind, seed=4)
    X = backend.rng(6).uniform(0.0, 2.0, (F, 10))
    maps = [references.local_map(model, x) for x in X.T]

    mean = references.mean_local_map(model, X)
    strided = references.mean_local_map(model, X, frame_stride=3)

    numpy.testing.assert_allclose(mean, numpy.mean(maps, axis=0), rtol=1e-12, atol=1e-14)
    numpy.testing.assert_allclose(strided, numpy.mean(maps[::3], axis=0), rtol=1e-12, atol=1e-14)
    assert references.frames_used(10, 3) == 4
    assert not numpy.allclose(mean, strided)


def test_mean_local_map_two_layer_closed_form():
    model = model_with_biases("dae", seed=8)
    X = backend.rng(9).uniform(0.0, 2.0, (F, 6))
    A1, A2 = references.gates(model, X)
    W1, W2 = model.weights
    numpy.testing.assert_allclose(references.mean_local_map(model, X), (W2 * (A2 @ A1.T / 6)) @ W1, rtol=1e-13)


def test_mean_local_map_rejects_a_bad_stride():
    model = model_with_biases("dae")
    with pytest.raises(references.ReferenceError, match="frame_stride is 0"):
        references.mean_local_map(model, numpy.ones((F, 3)), frame_stride=0)
    with pytest.raises(references.ReferenceError, match=r"\(12, T\)"):
        references.mean_local_map(model, numpy.ones((5, 3)))


# ------------------------------------------------------------ exact solutions


def random_segment(n_freq, n_frames, seed=0):
    rng = backend.rng(seed)
    X = rng.uniform(0.0, 1.0, (n_freq, n_frames))
    V = rng.uniform(0.0, 1.0, (n_freq, n_frames))  # any target: no C needs to have made it
    return X, V


def test_min_norm_and_nearest_couplings_reproduce_V_when_T_is_at_most_the_rank():
    X, V = random_segment(F, 7)
    pinv = references.pseudo_inverse(X)
    assert pinv.rank == 7 and not pinv.determined
    C0 = backend.rng(3).normal(0.0, 1.0, (F, F))

    C_min = references.min_norm_couplings(X, V)
    C_near = references.nearest_exact_couplings(X, V, C0, pinv=pinv)

    numpy.testing.assert_allclose(C_min @ X, V, rtol=0, atol=1e-10)
    numpy.testing.assert_allclose(C_near @ X, V, rtol=0, atol=1e-10)
    # the family: C0 is kept outside the frames' span, changed only inside it
    outside = numpy.eye(F) - X @ pinv.matrix
    numpy.testing.assert_allclose(C_near @ outside, C0 @ outside, atol=1e-10)
    numpy.testing.assert_allclose(C_min @ outside, 0.0, atol=1e-10)
    assert numpy.linalg.norm(C_min) < numpy.linalg.norm(C_near)
    # no exact solution is nearer C0: moving along the family away from C_near only adds distance
    other = references.nearest_exact_couplings(X, V, C0 + backend.rng(4).normal(0.0, 1.0, (F, F)))
    assert numpy.linalg.norm(C_near - C0) < numpy.linalg.norm(other - C0)
    numpy.testing.assert_allclose(references.nearest_exact_couplings(X, V, numpy.zeros((F, F))), C_min,
                                  atol=1e-12)


def test_with_more_frames_than_bins_every_exact_solution_is_the_same():
    X, _ = random_segment(F, 30, seed=1)
    C_true = backend.rng(2).normal(0.0, 1.0, (F, F))
    V = C_true @ X
    pinv = references.pseudo_inverse(X)
    assert pinv.rank == F and pinv.determined
    numpy.testing.assert_allclose(references.min_norm_couplings(X, V, pinv=pinv), C_true, atol=1e-10)
    numpy.testing.assert_allclose(references.nearest_exact_couplings(X, V, numpy.eye(F), pinv=pinv), C_true,
                                  atol=1e-10)


def test_the_exact_solutions_span_a_wide_range_of_tod_r_when_underdetermined():
    n_freq = 33
    X, V = random_segment(n_freq, 8, seed=5)
    glorot = backend.rng(6).normal(0.0, (1.0 / n_freq) ** 0.5, (n_freq, n_freq))

    near_random = references.nearest_exact_couplings(X, V, glorot)
    near_identity = references.nearest_exact_couplings(X, V, numpy.eye(n_freq))

    for C in (near_random, near_identity):
        numpy.testing.assert_allclose(C @ X, V, atol=1e-9)
    low, high = metrics.tod_r(near_random), metrics.tod_r(near_identity)
    assert low < 2.0 and high > 5.0 * low, (low, high)


def test_rank_counts_repeated_and_silent_frames_once():
    X, _ = random_segment(F, 5, seed=7)
    X = numpy.concatenate([X, X[:, :2], numpy.zeros((F, 2))], axis=1)
    assert references.pseudo_inverse(X).rank == 5
    numpy.testing.assert_allclose(references.pseudo_inverse(X).matrix, numpy.linalg.pinv(X), atol=1e-10)
    assert references.pseudo_inverse(numpy.zeros((F, 3))).rank == 0


def test_float32_inputs_give_float64_references():
    X, V = random_segment(F, 7)
    C = references.min_norm_couplings(X.astype(numpy.float32), V.astype(numpy.float32))
    assert C.dtype == numpy.float64
    model = build_model("sf", F, seed=0)  # float32
    assert references.mean_local_map(model, X).dtype == numpy.float64


def test_shape_errors_are_clear():
    X, V = random_segment(F, 7)
    with pytest.raises(references.ReferenceError, match=r"V has shape \(12, 6\) but X has shape \(12, 7\)"):
        references.min_norm_couplings(X, V[:, :6])
    with pytest.raises(references.ReferenceError, match=r"C0 has shape \(5, 5\)"):
        references.nearest_exact_couplings(X, V, numpy.eye(5))
    with pytest.raises(references.ReferenceError, match="one frame"):
        references.local_map(build_model("dae", F, dtype=numpy.float64, module=numpy), X)


def test_float32_data_is_ranked_with_float32_precision():
    rng = backend.rng(21)
    left = rng.normal(size=(40, 5)).astype(numpy.float32)
    right = rng.normal(size=(5, 30)).astype(numpy.float32)
    X32 = left @ right  # rank 5, held to float32's precision
    assert references.pseudo_inverse(X32).rank == 5
    # the same numbers in float64 keep float64's rule: float32 rounding is then signal
    assert references.pseudo_inverse(X32.astype(numpy.float64)).rank > 5
    X64 = left.astype(numpy.float64) @ right.astype(numpy.float64)
    assert references.pseudo_inverse(X64).rank == 5
    assert references.pseudo_inverse(X64).matrix.dtype == numpy.float64


def ridge_by_solve(X, V, alpha):
    """``V Xᵀ (X Xᵀ + α σ₁² I)⁻¹`` written out (the matrix is symmetric)."""
    s1 = numpy.linalg.norm(X, 2)
    gram = X @ X.T + alpha * s1 ** 2 * numpy.eye(X.shape[0])
    return numpy.linalg.solve(gram, X @ V.T).T


@pytest.mark.parametrize("n_frames", [7, 20])
@pytest.mark.parametrize("alpha", [1e-3, 0.1, 2.0])
def test_ridge_couplings_equal_the_normal_equations(n_frames, alpha):
    X, V = random_segment(F, n_frames, seed=3)
    C = references.ridge_couplings(X, V, alpha)
    assert C.shape == (F, F) and C.dtype == numpy.float64
    numpy.testing.assert_allclose(C, ridge_by_solve(X, V, alpha), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("n_frames", [7, 20])  # underdetermined (T < F) and determined (T > F)
def test_ridge_tends_to_the_minimum_norm_couplings(n_frames):
    X, V = random_segment(F, n_frames, seed=4)
    exact = references.min_norm_couplings(X, V)
    errors = [numpy.linalg.norm(references.ridge_couplings(X, V, a) - exact) for a in (1e-4, 1e-6, 1e-8)]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-5 * numpy.linalg.norm(exact), errors
    numpy.testing.assert_allclose(references.ridge_couplings(X, V, 0.0), exact, atol=1e-10)


def test_ridge_of_rank_deficient_frames_tends_to_the_minimum_norm_couplings():
    X, V = random_segment(F, 5, seed=5)
    X = numpy.concatenate([X, X[:, :3] * 2.0, numpy.zeros((F, 2))], axis=1)  # rank 5 < T = 10 < F
    V = numpy.concatenate([V, V[:, :3], V[:, :2]], axis=1)  # inconsistent: no C solves C X = V
    exact = references.min_norm_couplings(X, V)
    numpy.testing.assert_allclose(references.ridge_couplings(X, V, 1e-10), exact, atol=1e-6)
    numpy.testing.assert_allclose(exact, V @ numpy.linalg.pinv(X), atol=1e-10)


def test_large_ridge_shrinks_like_one_over_alpha():
    X, V = random_segment(F, 9, seed=6)
    norms = [numpy.linalg.norm(references.ridge_couplings(X, V, a)) for a in (1e2, 1e3, 1e4)]
    assert norms[0] > norms[1] > norms[2] > 0
    numpy.testing.assert_allclose([norms[0] / norms[1], norms[1] / norms[2]], [10.0, 10.0], rtol=2e-2)
    s1 = numpy.linalg.norm(X, 2)
    limit = V @ X.T / (1e4 * s1 ** 2)  # α σ₁² dominates X Xᵀ
    numpy.testing.assert_allclose(references.ridge_couplings(X, V, 1e4), limit, rtol=1e-3)


def test_ridge_path_reuses_one_svd_and_matches_each_alpha():
    X, V = random_segment(F, 8, seed=8)
    alphas = [0.0, 1e-4, 1e-1, 3.0]
    path = list(references.ridge_path(X.astype(numpy.float32), V.astype(numpy.float32), alphas))
    assert len(path) == 4 and all(C.dtype == numpy.float64 for C in path)
    for alpha, C in zip(alphas, path):
        expected = references.ridge_couplings(X.astype(numpy.float32), V.astype(numpy.float32), alpha)
        numpy.testing.assert_allclose(C, expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(references.ReferenceError, match="alpha is -1.0"):
        references.ridge_path(X, V, [0.1, -1.0])
    assert not references.ridge_couplings(numpy.zeros((F, 3)), V[:, :3], 0.1).any()
