"""Tests of nca_np.features: STFT, inverse, mono, settings and the Scaler."""

import numpy
import pytest
import scipy.signal

from nca_np import backend, features
from nca_np.errors import ConfigError, DataError
from nca_np.features import Scaler, StftSettings

PAPER = StftSettings()
SMALL = StftSettings(sample_rate=8000, window_length=255, n_fft=512, hop=64)


def _noise(n, seed=0, dtype=numpy.float64):
    return numpy.random.default_rng(seed).standard_normal(n).astype(dtype)


def test_paper_settings_match_math_md():
    assert PAPER.as_dict() == {
        "sample_rate": 44100, "window_length": 2049, "n_fft": 4096, "hop": 384, "window": "hamming"
    }
    assert PAPER.n_freq == 2049


HANN = StftSettings(window="hann", window_length=1023, n_fft=1024, hop=256)


@pytest.mark.parametrize("settings", [PAPER, SMALL, HANN])
def test_inverse_of_forward_reproduces_the_signal(settings):
    signal = _noise(3 * settings.sample_rate // 2 + 17)
    spectrum = features.stft(signal, settings, dtype=numpy.complex128)
    rebuilt = features.istft(numpy.abs(spectrum), spectrum, settings, signal.shape[0], dtype=numpy.float64)
    assert rebuilt.dtype == numpy.float64 and rebuilt.shape == signal.shape
    # Every sample lies near a frame centre, so the inverse is exact even at the edges.
    assert numpy.linalg.norm(rebuilt - signal) / numpy.linalg.norm(signal) < 1e-6
    assert numpy.max(numpy.abs(rebuilt - signal)) < 1e-9


def test_float32_round_trip_stays_float32_and_close():
    signal = _noise(20_000, dtype=numpy.float32)
    spectrum = features.stft(signal, SMALL)
    assert spectrum.dtype == numpy.complex64
    rebuilt = features.istft(features.magnitude(spectrum), spectrum, SMALL, signal.shape[0])
    assert rebuilt.dtype == numpy.float32
    assert numpy.max(numpy.abs(rebuilt - signal)) < 1e-5


def test_pure_tone_peaks_at_its_bin():
    settings = PAPER
    bin_index = 100
    frequency = bin_index * settings.sample_rate / settings.n_fft
    time = numpy.arange(settings.sample_rate) / settings.sample_rate
    mags = features.stft_magnitude(numpy.sin(2 * numpy.pi * frequency * time), settings)
    middle = mags[5:-5]
    assert numpy.all(numpy.argmax(middle, axis=1) == bin_index)
    # Hamming-windowed sine of amplitude 1: peak = sum(w) / 2.
    expected = features.analysis_window(settings).sum() / 2
    numpy.testing.assert_allclose(middle[:, bin_index], expected, rtol=1e-4)


@pytest.mark.parametrize("settings", [PAPER, SMALL])
def test_stft_agrees_with_scipy_short_time_fft(settings):
    signal = _noise(settings.sample_rate // 2 + 5, seed=3)
    ours = features.stft(signal, settings, dtype=numpy.complex128)
    reference = scipy.signal.ShortTimeFFT(
        features.analysis_window(settings), hop=settings.hop, fs=settings.sample_rate, mfft=settings.n_fft
    ).stft(signal, p0=0, p1=features.n_frames(signal.shape[0], settings)).T
    scale = numpy.abs(reference).max()
    assert ours.shape == reference.shape
    numpy.testing.assert_allclose(numpy.abs(ours), numpy.abs(reference), rtol=0, atol=1e-12 * scale)
    # Zero-phase windowing measures phase from the frame centre, as scipy does.
    numpy.testing.assert_allclose(ours, reference, rtol=0, atol=1e-12 * scale)


def test_stft_magnitude_equals_magnitude_of_stft_and_is_float32():
    signal = _noise(30_000, seed=4, dtype=numpy.float32)
    mags = features.stft_magnitude(signal, SMALL)
    assert mags.dtype == numpy.float32
    numpy.testing.assert_array_equal(mags, features.magnitude(features.stft(signal, SMALL)))


@pytest.mark.parametrize("n_samples", [1, 63, 64, 65, 1000, 44100])
def test_n_frames_consistent_with_stft(n_samples):
    assert features.stft(numpy.zeros(n_samples), SMALL).shape == (features.n_frames(n_samples, SMALL), SMALL.n_freq)
    assert features.n_frames(n_samples, SMALL) == n_samples // SMALL.hop + 1


def test_n_frames_rejects_an_empty_signal():
    with pytest.raises(ValueError, match="at least one sample"):
        features.n_frames(0, SMALL)


def test_long_signal_is_processed_in_chunks_without_seams():
    # More frames than one FFT batch: chunk boundaries must not show.
    settings = StftSettings(sample_rate=8000, window_length=65, n_fft=64 * 2, hop=16)
    signal = _noise(16 * 3000, seed=5)
    spectrum = features.stft(signal, settings, dtype=numpy.complex128)
    assert spectrum.shape[0] > 2 * 1024
    rebuilt = features.istft(numpy.abs(spectrum), spectrum, settings, signal.shape[0], dtype=numpy.float64)
    assert numpy.max(numpy.abs(rebuilt - signal)) < 1e-9


def test_istft_uses_the_phase_source():
    signal = _noise(5000, seed=6)
    spectrum = features.stft(signal, SMALL, dtype=numpy.complex128)
    halved = features.istft(0.5 * numpy.abs(spectrum), spectrum, SMALL, signal.shape[0], dtype=numpy.float64)
    numpy.testing.assert_allclose(halved, 0.5 * signal, atol=1e-9)


def test_istft_rejects_mismatched_shapes():
    spectrum = features.stft(_noise(1000), SMALL)
    with pytest.raises(ValueError, match="same shape"):
        features.istft(numpy.abs(spectrum)[:, :-1], spectrum, SMALL, 1000)
    with pytest.raises(ValueError, match="frames"):
        features.istft(numpy.abs(spectrum), spectrum, SMALL, 5000)


def test_to_mono_averages_channels():
    stereo = numpy.array([[1.0, 3.0], [-2.0, 0.0], [0.5, 0.5]])
    mono = features.to_mono(stereo)
    assert mono.dtype == numpy.float32
    numpy.testing.assert_array_equal(mono, numpy.array([2.0, -1.0, 0.5], dtype=numpy.float32))
    numpy.testing.assert_array_equal(features.to_mono(numpy.arange(4.0)), numpy.arange(4, dtype=numpy.float32))


def test_to_mono_rejects_channels_first_audio():
    with pytest.raises(ValueError, match="channels-first"):
        features.to_mono(numpy.zeros((2, 1000)))


def test_stft_rejects_multichannel_input():
    with pytest.raises(ValueError, match="to_mono"):
        features.stft(numpy.zeros((1000, 2)), SMALL)


@pytest.mark.parametrize(
    "section, message",
    [
        ({"window_length": 5001}, "exceeds n_fft"),
        ({"hop": 0}, "at least 1"),
        ({"hop": 4000}, "exceeds window_length"),
        ({"window": "kaiser"}, "unknown"),
        ({"window_length": 2048}, "odd"),
        ({"n_fft": 4096.0}, "integer"),
        ({"hop_size": 384}, "unknown key"),
    ],
)
def test_settings_validation(section, message):
    with pytest.raises(ConfigError, match=message):
        StftSettings.from_config(section)


def test_settings_from_config_round_trip():
    section = {"sample_rate": 44100, "window": "hamming", "window_length": 2049, "n_fft": 4096, "hop": 384}
    assert StftSettings.from_config(section) == PAPER
    assert StftSettings.from_config(PAPER.as_dict()).as_dict() == section


def _magnitude_frames(seed=7, shape=(1000, 33)):
    frames = numpy.abs(numpy.random.default_rng(seed).standard_normal(shape)) * numpy.linspace(0.1, 10.0, shape[1])
    return frames.astype(numpy.float32)


def test_scaler_streaming_fit_equals_one_shot_std():
    frames = _magnitude_frames()
    scaler = Scaler()
    for start in range(0, frames.shape[0], 77):
        scaler.partial_fit(frames[start : start + 77])
    assert scaler.count == frames.shape[0]
    numpy.testing.assert_allclose(scaler.std, frames.astype(numpy.float64).std(axis=0), rtol=1e-12)
    numpy.testing.assert_allclose(Scaler.fit(frames).std, scaler.std, rtol=1e-12)


def test_scaler_transform_divides_by_std_and_keeps_dtype():
    frames = _magnitude_frames()
    scaler = Scaler.fit(frames)
    scaled = scaler.transform(frames)
    assert scaled.dtype == numpy.float32 and numpy.all(scaled >= 0)
    numpy.testing.assert_allclose(scaled.astype(numpy.float64).std(axis=0), 1.0, rtol=1e-5)
    columns = scaler.transform(frames.T.copy(), frames_as="columns")
    numpy.testing.assert_array_equal(columns, scaled.T)
    numpy.testing.assert_allclose(scaler.inverse_transform(scaled), frames, rtol=1e-6)
    as64 = scaler.transform(frames.astype(numpy.float64))
    assert as64.dtype == numpy.float64


def test_scaler_works_on_device_arrays(xp_module):
    frames = _magnitude_frames()
    scaler = Scaler().partial_fit(backend.to_device(frames[:400], xp_module)).partial_fit(frames[400:])
    numpy.testing.assert_allclose(scaler.std, frames.astype(numpy.float64).std(axis=0), rtol=1e-12)
    rows = scaler.transform(backend.to_device(frames, xp_module))
    columns = scaler.transform(backend.to_device(frames.T.copy(), xp_module), frames_as="columns")
    restored = scaler.inverse_transform(rows)
    for result in (rows, columns, restored):
        assert backend.array_module(result) is xp_module and result.dtype == numpy.float32
    numpy.testing.assert_array_equal(backend.to_host(rows), scaler.transform(frames))
    numpy.testing.assert_array_equal(backend.to_host(columns), scaler.transform(frames).T)
    numpy.testing.assert_allclose(backend.to_host(restored), frames, rtol=1e-6)


def test_scaler_constant_band_gets_scale_one():
    frames = _magnitude_frames(shape=(50, 4)).astype(numpy.float64)
    frames[:, 1] = 0.0
    frames[:, 2] = 0.3
    scaler = Scaler.fit(frames)
    assert scaler.std[1] == 1.0 and scaler.std[2] == 1.0
    numpy.testing.assert_array_equal(scaler.transform(frames)[:, 1:3], frames[:, 1:3])


def test_scaler_rejects_wrong_shapes_and_unfitted_use():
    with pytest.raises(ValueError, match="not been fitted"):
        Scaler().transform(numpy.ones((2, 3)))
    scaler = Scaler.fit(_magnitude_frames())
    with pytest.raises(ValueError, match="F = 33"):
        scaler.transform(numpy.ones((4, 32), dtype=numpy.float32))
    with pytest.raises(ValueError, match="33 bands"):
        scaler.partial_fit(numpy.ones((4, 32)))
    with pytest.raises(ValueError, match="frames_as"):
        scaler.transform(numpy.ones((4, 33)), frames_as="cols")


def test_scaler_save_load_round_trip(tmp_path):
    scaler = Scaler.fit(_magnitude_frames())
    path = scaler.save(tmp_path / "sub" / "scaler.npz")
    assert [p.name for p in path.parent.iterdir()] == ["scaler.npz"]
    loaded = Scaler.load(path)
    assert loaded.count == scaler.count
    numpy.testing.assert_array_equal(loaded.std, scaler.std)
    frames = _magnitude_frames(seed=8)
    numpy.testing.assert_array_equal(loaded.transform(frames), scaler.transform(frames))
    numpy.testing.assert_array_equal(Scaler.from_state(scaler.state_dict()).std, scaler.std)


def test_scaler_load_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        Scaler.load(tmp_path / "missing.npz")
    numpy.savez(tmp_path / "other.npz", mean=numpy.ones(3))
    with pytest.raises(DataError, match="lacks count, m2"):
        Scaler.load(tmp_path / "other.npz")
    (tmp_path / "junk.npz").write_bytes(b"not an archive")
    with pytest.raises(DataError, match="not a readable"):
        Scaler.load(tmp_path / "junk.npz")
