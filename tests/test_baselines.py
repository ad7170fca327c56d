"""Baselines that give the scores a scale: the mixture as the estimate and
the oracle ideal ratio mask, on synthetic two-source signals."""

import numpy
import pytest
import scipy.signal

from nca_np.baselines import NAMES, estimates, ideal_ratio_mask
from nca_np.features import StftSettings, stft

SETTINGS = StftSettings(sample_rate=44100, window_length=255, n_fft=256, hop=64)


def sdr_db(reference, estimate):
    return 10 * numpy.log10(numpy.sum(reference**2) / numpy.sum((reference - estimate) ** 2))


def sources(channels, seconds=0.5, seed=0):
    """Vocals: gated harmonic tones; accompaniment: louder low tones and
    low-passed noise (they overlap little in frequency)."""
    rate = SETTINGS.sample_rate
    t = numpy.arange(int(seconds * rate)) / rate
    rng = numpy.random.default_rng(seed)
    voice = (numpy.sin(2 * numpy.pi * 4 * t) > 0) * sum(numpy.sin(2 * numpy.pi * f * t) for f in (880, 1760))
    noise = scipy.signal.sosfilt(scipy.signal.butter(8, 400, fs=rate, output="sos"), rng.standard_normal(t.size))
    backing = numpy.sin(2 * numpy.pi * 110 * t) + numpy.sin(2 * numpy.pi * 165 * t) + noise
    gains = numpy.linspace(1.0, 0.5, channels)
    vocals = (0.3 * voice[:, None] * gains).astype(numpy.float32)
    accompaniment = (backing[:, None] * gains[::-1]).astype(numpy.float32)
    return vocals.squeeze(), accompaniment.squeeze()


@pytest.mark.parametrize("channels", [1, 2])
def test_oracle_mask_scores_far_above_the_mixture(channels):
    vocals, accompaniment = sources(channels)
    mixture = vocals + accompaniment
    stems = {"vocals": vocals, "accompaniment": accompaniment}
    scores = {}
    for name in NAMES:
        result = estimates(name, mixture, stems, SETTINGS)
        assert result["vocals"].shape == mixture.shape and result["vocals"].dtype == numpy.float32
        numpy.testing.assert_allclose(result["vocals"] + result["accompaniment"], mixture, rtol=0, atol=1e-6)
        scores[name] = sdr_db(vocals, result["vocals"])
    # the mixture scaled by 1/2 keeps half the accompaniment: SDR = 10 log10(|v|² / |v/2 - a/2|²)
    expected = 10 * numpy.log10(numpy.sum(vocals**2) / numpy.sum((0.5 * vocals - 0.5 * accompaniment) ** 2))
    assert scores["mixture"] == pytest.approx(expected, abs=1e-3)
    assert scores["oracle-irm"] > scores["mixture"] + 10, scores


def test_oracle_mask_of_each_channel_uses_that_channels_stems():
    vocals, accompaniment = sources(2)
    vocals[:, 1] = 0.0  # no voice on the right: the oracle's right channel is silent
    result = estimates("oracle-irm", vocals + accompaniment, {"vocals": vocals}, SETTINGS)
    assert numpy.abs(result["vocals"][:, 1]).max() < 1e-6
    assert sdr_db(vocals[:, 0], result["vocals"][:, 0]) > 10


def test_ideal_ratio_mask_values():
    V = numpy.array([3 + 4j, 0, 0, 1])
    A = numpy.array([0, 2j, 0, -1])
    numpy.testing.assert_allclose(ideal_ratio_mask(V, A), [1.0, 0.0, 0.0, 0.5])
    spectrum = stft(numpy.ones(1000, dtype=numpy.float32), SETTINGS)
    assert ideal_ratio_mask(spectrum, spectrum).max() == pytest.approx(0.5)


def test_unknown_baseline_is_refused():
    with pytest.raises(ValueError, match="unknown baseline 'oracle'"):
        estimates("oracle", numpy.zeros(100), {}, SETTINGS)
