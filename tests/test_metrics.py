"""Tests of the couplings measures (nca_np.metrics, docs/method.md#measures)."""

from __future__ import annotations

import math

import numpy
import pytest

from nca_np import backend
from nca_np.metrics import reconstruct, snr_db, tod_r


# ------------------------------------------------------------ TOD-R (Eq. 22)


def test_tod_r_of_a_diagonal_matrix_is_infinite_without_warning():
    # RuntimeWarnings are errors in this test suite (setup.cfg), so a
    # division by zero would fail here.
    assert tod_r(numpy.eye(5)) == math.inf
    assert tod_r(numpy.diag([1.0, -2.0, 3.0]).astype(numpy.float32)) == math.inf


def test_tod_r_of_the_zero_matrix_is_nan():
    assert math.isnan(tod_r(numpy.zeros((3, 3))))


@pytest.mark.parametrize(
    "C, expected",
    [
        # F = 2: Tr|C| = 2 + 3 = 5, off-diagonal |1| + |−1| = 2: 1 · 5 / 2
        ([[2.0, 1.0], [-1.0, 3.0]], 2.5),
        # F = 3: Tr|C| = 1 + 1 + 2 = 4, off-diagonal 2 + 1 + 1 = 4: 2 · 4 / 4
        ([[1.0, 2.0, 0.0], [0.0, -1.0, 1.0], [-1.0, 0.0, 2.0]], 2.0),
        # no diagonal at all
        ([[0.0, 1.0], [1.0, 0.0]], 0.0),
        # every entry equal in size: a flat matrix scores exactly 1
        ([[1.0, -1.0, 1.0], [-1.0, 1.0, -1.0], [1.0, 1.0, -1.0]], 1.0),
    ],
)
def test_tod_r_hand_computed_values(C, expected):
    assert tod_r(numpy.array(C)) == pytest.approx(expected, rel=1e-15)
    assert tod_r(numpy.array(C, dtype=numpy.float32)) == pytest.approx(expected, rel=1e-6)


def test_tod_r_of_a_random_gaussian_matrix_is_about_one():
    C = backend.rng(0).normal(size=(400, 400))
    # mean |diagonal| over 400 draws has a relative spread of ~4%
    assert tod_r(C) == pytest.approx(1.0, abs=0.15)


def test_tod_r_is_not_fooled_by_a_dominant_diagonal():
    C = numpy.eye(4) * 1e8
    C[0, 1] = 1e-9  # below the spacing of float64 near 4e8: sum(|C|) − Tr(|C|) would give 0
    assert tod_r(C) == pytest.approx(3 * 4e8 / 1e-9, rel=1e-12)


def test_tod_r_returns_a_python_float_and_leaves_C_alone():
    C = numpy.array([[2.0, -1.0], [1.0, -3.0]], dtype=numpy.float32)
    before = C.copy()
    value = tod_r(C)
    assert type(value) is float
    numpy.testing.assert_array_equal(C, before)


@pytest.mark.parametrize("shape", [(3, 4), (4,), (1, 1)])
def test_tod_r_rejects_non_square_input(shape):
    with pytest.raises(ValueError, match=r"square \(F, F\) matrix with F >= 2, got shape"):
        tod_r(numpy.ones(shape))


# ------------------------------------------------------------ SNR


def test_snr_db_hand_computed_values():
    ref = numpy.array([[3.0, 4.0]])  # ‖ref‖² = 25
    assert snr_db(ref, numpy.array([[3.0, 3.0]])) == pytest.approx(10 * math.log10(25.0), rel=1e-15)
    assert snr_db(ref, numpy.zeros((1, 2))) == pytest.approx(0.0, abs=1e-15)
    assert snr_db(ref, 0.9 * ref) == pytest.approx(20.0, rel=1e-12)  # error 0.1·ref → 10·log10(100)
    assert snr_db(ref, -ref) == pytest.approx(10 * math.log10(1 / 4), rel=1e-12)


def test_snr_db_limits_without_warnings():
    ref = numpy.array([1.0, 2.0])
    assert snr_db(ref, ref.copy()) == math.inf
    assert snr_db(numpy.zeros(2), ref) == -math.inf
    assert math.isnan(snr_db(numpy.zeros(2), numpy.zeros(2)))


def test_snr_db_float32_returns_python_float():
    rng = backend.rng(1)
    ref = rng.uniform(size=(6, 5)).astype(numpy.float32)
    est = ref + numpy.float32(0.01)
    value = snr_db(ref, est)
    assert type(value) is float
    expected = 10 * math.log10(float((ref.astype(numpy.float64) ** 2).sum()) / (30 * 0.01**2))
    assert value == pytest.approx(expected, abs=1e-3)


def test_snr_db_rejects_different_shapes():
    with pytest.raises(ValueError, match=r"ref \(2, 3\), est \(3, 2\)"):
        snr_db(numpy.ones((2, 3)), numpy.ones((3, 2)))


# ------------------------------------------------------------ Ŷ(C)


def test_reconstruct_for_each_model_kind():
    C = numpy.array([[1.0, 2.0], [0.0, -1.0]])
    X = numpy.array([[1.0, 3.0, 0.0], [2.0, 1.0, 4.0]])  # (F=2, T=3), frames as columns
    CX = numpy.array([[5.0, 5.0, 8.0], [-2.0, -1.0, -4.0]])

    numpy.testing.assert_array_equal(reconstruct("dae", C, X), CX)
    numpy.testing.assert_array_equal(reconstruct("mss-dae", C, X), CX)
    numpy.testing.assert_array_equal(reconstruct("sf", C, X), numpy.array([[5.0, 15.0, 0.0], [-4.0, -1.0, -16.0]]))


def test_reconstruct_keeps_float32():
    C = numpy.eye(3, dtype=numpy.float32)
    X = numpy.ones((3, 2), dtype=numpy.float32)
    assert reconstruct("sf", C, X).dtype == numpy.float32


def test_reconstruct_rejects_bad_kind_and_shapes():
    with pytest.raises(ValueError, match=r"unknown model kind 'vae'"):
        reconstruct("vae", numpy.eye(2), numpy.ones((2, 3)))
    with pytest.raises(ValueError, match=r"shape \(2, 2\) cannot be applied to X of shape \(3, 2\)"):
        reconstruct("dae", numpy.eye(2), numpy.ones((3, 2)))


# ------------------------------------------------------------ totality: any values, never an exception


@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
def test_snr_db_of_an_overflowing_estimate_is_minus_infinity(dtype):
    """A diverged fit's reconstruction: its error energy overflows, the ratio
    is 0 and log10(0) used to raise 'math domain error'."""
    ref = numpy.ones((4, 3), dtype=dtype)
    huge = numpy.full((4, 3), numpy.finfo(dtype).max / 2, dtype=dtype)
    assert snr_db(ref, huge) == -math.inf
    tiny_ref = numpy.full((4, 3), 1e-30)
    assert snr_db(tiny_ref, numpy.full((4, 3), 1e200)) == -math.inf  # ratio underflows to 0


@pytest.mark.parametrize("ref_value, est_value, expected", [
    (1.0, math.inf, -math.inf), (1.0, -math.inf, -math.inf), (1.0, math.nan, math.nan),
    (math.nan, 1.0, math.nan), (math.inf, 1.0, math.nan), (math.inf, math.inf, math.nan),
    (0.0, math.inf, -math.inf), (0.0, math.nan, math.nan)])
def test_snr_db_of_non_finite_inputs_is_a_number(ref_value, est_value, expected):
    result = snr_db(numpy.full((2, 2), ref_value), numpy.full((2, 2), est_value))
    assert isinstance(result, float)
    assert (math.isnan(result) and math.isnan(expected)) or result == expected, result


def test_snr_db_values_of_normal_inputs_are_unchanged():
    rng = numpy.random.default_rng(3)
    ref, est = rng.standard_normal((5, 7)), rng.standard_normal((5, 7))
    expected = 10 * math.log10(float((ref ** 2).sum()) / float(((ref - est) ** 2).sum()))
    assert snr_db(ref, est) == expected


@pytest.mark.parametrize("entries, expected", [
    ([[math.nan, 1.0], [1.0, 1.0]], math.nan), ([[1.0, math.nan], [1.0, 1.0]], math.nan),
    ([[math.inf, 1.0], [1.0, 1.0]], math.inf), ([[1.0, math.inf], [1.0, 1.0]], 0.0),
    ([[math.inf, math.inf], [1.0, 1.0]], math.nan), ([[math.inf, 0.0], [0.0, 1.0]], math.inf)])
def test_tod_r_of_non_finite_entries_is_a_number(entries, expected):
    result = tod_r(numpy.array(entries))
    assert isinstance(result, float)
    assert (math.isnan(result) and math.isnan(expected)) or result == expected, result


def test_tod_r_of_entries_whose_sums_overflow_float32():
    big = numpy.finfo(numpy.float32).max
    C = numpy.full((3, 3), big, dtype=numpy.float32)  # every sum overflows to inf
    assert math.isnan(tod_r(C))
    C[numpy.diag_indices(3)] = 1.0
    assert tod_r(C) == 0.0  # the diagonal is finite, the off-diagonal sum infinite
