"""Measures of a couplings matrix (docs/method.md#measures, Secs. 4.1–4.2 of the paper).

Frames are columns, as in the NCA: ``X`` is (F, T), ``C`` is (F, F). The
measures accept NumPy or CuPy arrays and return Python floats (one explicit
transfer of a scalar each).
"""

from __future__ import annotations

import math

from . import backend
from .models import model_kind


def tod_r(C) -> float:
    """Trace-to-off-diagonal ratio (Eq. 22).

    .. math::
        TOD-R(C) = (F − 1) · Tr(|C|) / ‖C ⊙ (1 1ᵀ − I)‖₁

    i.e. the mean absolute diagonal entry over the mean absolute off-diagonal
    entry, so a structureless random matrix scores about 1 (the (F − 1)
    scale is this project's choice, docs/method.md#measures). Large values mean scalar
    filtering (a mask), small values inter-frequency structure.

    Args:
        C: (F, F) couplings, F ≥ 2.

    Returns:
        The ratio as a Python float: ``inf`` when every off-diagonal entry is
        zero (a diagonal matrix), ``nan`` for the all-zero matrix and for
        entries that are NaN or sums that overflow on both sides; never an
        exception for any values (a diverged fit's ``C`` included).
    """
    if C.ndim != 2 or C.shape[0] != C.shape[1] or C.shape[0] < 2:
        raise ValueError(f"TOD-R needs a square (F, F) matrix with F >= 2, got shape {tuple(C.shape)}")
    xp = backend.array_module(C)
    with _quiet(xp):
        magnitudes = xp.abs(C)
        diagonal = backend.to_float(xp.trace(magnitudes))
        # Zero the diagonal and sum, rather than subtract the trace from the
        # total, so a dominant diagonal does not cancel the off-diagonal sum.
        xp.fill_diagonal(magnitudes, 0)
        off_diagonal = backend.to_float(magnitudes.sum())
    if math.isnan(diagonal) or math.isnan(off_diagonal) or (math.isinf(diagonal) and math.isinf(off_diagonal)):
        return math.nan
    if off_diagonal == 0.0:
        return math.inf if diagonal > 0.0 else math.nan
    return (C.shape[0] - 1) * diagonal / off_diagonal


def snr_db(ref, est) -> float:
    """Signal-to-noise ratio in dB over the whole array (Sec. 4.2).

    .. math::
        SNR(ref, est) = 10 log10(‖ref‖² / ‖ref − est‖²)

    Args:
        ref: reference, any shape (an (F, T) segment in the study).
        est: estimate of the same shape.

    Returns:
        A Python float: ``inf`` when ``est`` equals ``ref``, ``-inf`` when
        ``ref`` is zero and ``est`` is not or when the error's energy is
        infinite (or so large that the ratio underflows) while the signal's
        is finite, ``nan`` when both are zero, both infinite or either NaN;
        never an exception for any values.
    """
    if ref.shape != est.shape:
        raise ValueError(f"SNR of arrays of different shapes: ref {tuple(ref.shape)}, est {tuple(est.shape)}")
    xp = backend.array_module(ref, est)
    # Overflowing or non-finite inputs are expected (a diverged fit): no warning.
    with _quiet(xp):
        error = ref - est
        signal_energy = backend.to_float((ref * ref).sum())
        error_energy = backend.to_float((error * error).sum())
    return _decibels(signal_energy, error_energy)


def _decibels(signal_energy: float, error_energy: float) -> float:
    """``10 log10(signal / error)`` for any two energies ≥ 0 or non-finite:
    never an exception (docs/method.md#measures)."""
    if math.isnan(signal_energy) or math.isnan(error_energy):
        return math.nan
    if error_energy == 0.0:
        return math.inf if signal_energy > 0.0 else math.nan
    if signal_energy == 0.0:
        return -math.inf
    if math.isinf(signal_energy) and math.isinf(error_energy):
        return math.nan
    ratio = signal_energy / error_energy
    if ratio == 0.0:  # the ratio underflows: the error dwarfs the signal
        return -math.inf
    return 10.0 * math.log10(ratio)


def _quiet(xp):
    """A context in which ``xp``'s floating-point warnings are silenced."""
    import contextlib

    errstate = getattr(xp, "errstate", None)
    return errstate(all="ignore") if errstate is not None else contextlib.nullcontext()


def reconstruct(kind: str, C, X):
    """The model output predicted by couplings ``C`` (Sec. 4.2).

    .. math::
        Ŷ(C) = C X          (DAE, MSS-DAE: C maps the mixture to the estimate)
        Ŷ(C) = X ⊙ (C X)    (SF, any kind that masks its input: C X approximates the mask)

    Args:
        kind: a registered model kind; its ``masks_input`` decides the form.
        C: (F, F) couplings.
        X: (F, T) mixture magnitudes, frames as columns.

    Returns:
        (F, T) array in the module and dtype of the inputs.
    """
    masks_input = model_kind(kind).masks_input
    if C.ndim != 2 or X.ndim != 2 or C.shape[1] != X.shape[0]:
        raise ValueError(
            f"couplings of shape {tuple(C.shape)} cannot be applied to X of shape {tuple(X.shape)}: "
            "X must be (F, T), frames as columns"
        )
    estimate = C @ X
    if masks_input:
        estimate *= X
    return estimate
