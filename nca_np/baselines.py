"""Reference separations that give the scores a scale (docs/method.md#separating-a-song).

- ``mixture``: the mixture as the estimate of each source, scaled by one
  half so that the two estimates add up to the mixture. BSS Eval's SDR
  allows a distortion filter (v4: 512 taps), so it does not change with a
  constant gain: the scores are those of the field's usual "mix" baseline
  (the unscaled mixture as every estimate). What a separator scores below
  it, it has made worse than doing nothing.
- ``oracle-irm``: the ideal ratio mask from the true stems,
  ``m = |V_c| / (|V_c| + |A_c|)`` per channel and time-frequency point
  (magnitudes, ``V_c`` and ``A_c`` the true vocals' and accompaniment's STFTs
  with the models' settings), applied to the mixture's STFT ``X_c`` and
  inverted; accompaniment = mixture − vocals. What a mask on this STFT
  reaches with perfect knowledge: a ceiling for mask-like separators at
  these settings (not a bound on every method).
"""

from __future__ import annotations

import numpy

from .features import StftSettings, istft, stft

NAMES = ("mixture", "oracle-irm")


def estimates(name: str, mixture, stems: dict, settings: StftSettings) -> dict:
    """The baseline ``name``'s vocals and accompaniment.

    Args:
        name: one of :data:`NAMES`.
        mixture: ``(N,)`` or ``(N, C)`` samples.
        stems: the true ``"vocals"`` (and ``"accompaniment"``; when absent,
            mixture − vocals), shaped like ``mixture``; unused by ``mixture``.
        settings: the STFT the models use (the oracle's masks are on it).

    Returns:
        ``{"vocals": ..., "accompaniment": ...}``, float32 shaped like ``mixture``.
    """
    mixture = numpy.asarray(mixture, dtype=numpy.float32)
    if name == "mixture":
        half = (0.5 * mixture).astype(numpy.float32)
        return {"vocals": half, "accompaniment": mixture - half}
    if name != "oracle-irm":
        raise ValueError(f"unknown baseline {name!r}: use one of {', '.join(NAMES)}")
    vocals_true = numpy.asarray(stems["vocals"], dtype=numpy.float32)
    accompaniment_true = numpy.asarray(stems.get("accompaniment", mixture - vocals_true), dtype=numpy.float32)
    if vocals_true.shape != mixture.shape or accompaniment_true.shape != mixture.shape:
        raise ValueError(f"stems must be shaped like the mixture {mixture.shape}")
    columns = [_oracle_channel(m, v, a, settings) for m, v, a in
               zip(*(x.reshape(x.shape[0], -1).T for x in (mixture, vocals_true, accompaniment_true)))]
    vocals = numpy.stack(columns, axis=-1).reshape(mixture.shape)
    return {"vocals": vocals, "accompaniment": mixture - vocals}


def ideal_ratio_mask(vocals_stft, accompaniment_stft) -> numpy.ndarray:
    """``|V| / (|V| + |A|)`` (0 where both are 0), float32, shaped like the inputs."""
    vocals, accompaniment = numpy.abs(vocals_stft), numpy.abs(accompaniment_stft)
    total = vocals + accompaniment
    return numpy.where(total > 0, vocals / numpy.where(total > 0, total, 1.0), 0.0).astype(numpy.float32)


def _oracle_channel(mixture, vocals, accompaniment, settings: StftSettings) -> numpy.ndarray:
    """One channel's oracle vocals: ``istft(m ⊙ X)`` with the ideal ratio mask ``m``."""
    spectrum = stft(mixture, settings)
    mask = ideal_ratio_mask(stft(vocals, settings), stft(accompaniment, settings))
    return istft(mask * numpy.abs(spectrum), spectrum, settings, mixture.shape[0])
