"""Multichannel Wiener filtering of magnitude estimates (docs/method.md#separating-a-song).

The field's usual post-processing of a magnitude-domain separator (open-unmix
applies it the same way): the vocals and accompaniment magnitude estimates
of every channel give each source a local Gaussian model (a power spectral
density per time-frequency point and a spatial covariance matrix per
frequency); the multichannel Wiener filter then separates the mixture's
STFT, and each expectation-maximisation iteration re-estimates the models
from the filtered sources. The computation is ``norbert.wiener`` (NumPy
only), imported only here.
"""

from __future__ import annotations

import warnings

import numpy

from .errors import UserError


def filter(mixture_stft, vocals_magnitude, accompaniment_magnitude, iterations: int, *,
           eps: float | None = None) -> tuple[numpy.ndarray, numpy.ndarray]:
    """Vocals and accompaniment STFTs of a mixture by a multichannel Wiener filter.

    Args:
        mixture_stft: ``(T, F, C)`` complex STFT of the mixture, frames as
            rows (:func:`nca_np.features.stft` per channel, stacked last).
        vocals_magnitude: ``(T, F, C)`` (or ``(T, F)``, the same for every
            channel) non-negative vocals magnitude estimate.
        accompaniment_magnitude: the same for the accompaniment.
        iterations: EM iterations; 0 gives back the magnitudes with the
            mixture's phase (no filtering).
        eps: norbert's regulariser (its default: the float64 epsilon).

    Returns:
        ``(vocals, accompaniment)``, each ``(T, F, C)`` complex of the
        mixture's dtype.

    Raises:
        UserError: norbert is not installed.
    """
    if iterations < 0:
        raise ValueError(f"iterations must be 0 or more, got {iterations}")
    try:
        with warnings.catch_warnings():  # norbert imports from scipy's deprecated namespaces
            warnings.simplefilter("ignore", DeprecationWarning)
            import norbert
    except ImportError:
        raise UserError("Wiener filtering needs the norbert package: pip install 'nca_np[audio]' (or make setup)") from None
    mixture_stft = numpy.asarray(mixture_stft)
    if mixture_stft.ndim != 3:
        raise ValueError(f"mixture_stft must be (frames, bins, channels), got shape {mixture_stft.shape}")
    shape = mixture_stft.shape
    sources = numpy.stack([numpy.broadcast_to(_frames_bins_channels(m, shape), shape)
                           for m in (vocals_magnitude, accompaniment_magnitude)], axis=-1).astype(numpy.float64)
    # norbert works in place on its copy and recommends double precision
    estimates = norbert.wiener(sources, mixture_stft.astype(numpy.complex128), iterations=iterations,
                               use_softmask=False, eps=eps)
    dtype = numpy.result_type(mixture_stft.dtype, numpy.complex64)
    return estimates[..., 0].astype(dtype), estimates[..., 1].astype(dtype)


def _frames_bins_channels(magnitude, shape) -> numpy.ndarray:
    magnitude = numpy.asarray(magnitude)
    if magnitude.shape == shape[:2]:
        return magnitude[..., None]
    if magnitude.shape != shape:
        raise ValueError(f"a magnitude estimate must be {shape} or {shape[:2]}, got {magnitude.shape}")
    return magnitude
