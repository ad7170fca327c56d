"""Tests of nca_np.data.synth: the built-in synthetic corpus."""

import shutil

import numpy
import pytest
import soundfile

from nca_np import features
from nca_np.data import synth
from nca_np.errors import ConfigError

RATE = 44100
SMALL = {"n_train": 2, "n_test": 1, "seconds": 8.0, "test_seconds": 12.0, "seed": 0}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return synth.generate_corpus(tmp_path_factory.mktemp("synth") / "corpus", **SMALL)


def _read(folder, name, dtype="int16"):
    samples, rate = soundfile.read(str(folder / f"{name}.wav"), dtype=dtype, always_2d=True)
    assert rate == RATE
    return samples


def _tracks(root):
    return sorted(path for subset in synth.SUBSETS for path in (root / subset).iterdir())


def _snapshot(root):
    return {path.relative_to(root): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def test_layout_and_file_set(corpus):
    assert sorted(p.name for p in corpus.iterdir()) == ["test", "train"]
    assert sorted(p.name for p in (corpus / "train").iterdir()) == ["Synth 001 - Train", "Synth 002 - Train"]
    assert sorted(p.name for p in (corpus / "test").iterdir()) == ["Synth 001 - Test"]
    for track in _tracks(corpus):
        assert sorted(p.name for p in track.iterdir()) == sorted(f"{name}.wav" for name in synth.FILES)


def test_files_are_16_bit_stereo_at_44100_of_the_requested_length(corpus):
    for track in _tracks(corpus):
        seconds = SMALL["seconds"] if track.parent.name == "train" else SMALL["test_seconds"]
        for name in synth.FILES:
            info = soundfile.info(str(track / f"{name}.wav"))
            assert (info.samplerate, info.channels, info.subtype, info.format) == (RATE, 2, "PCM_16", "WAV")
            assert info.frames == int(seconds * RATE)


def test_mixture_is_the_sum_of_the_stems_and_nothing_clips(corpus):
    for track in _tracks(corpus):
        stems = sum(_read(track, name).astype(numpy.int32) for name in synth.STEMS)
        mixture = _read(track, "mixture").astype(numpy.int32)
        # Exact in 16-bit integers, hence within quantisation in floats.
        numpy.testing.assert_array_equal(mixture, stems)
        for name in synth.FILES:
            peak = numpy.abs(_read(track, name, dtype="float64")).max()
            assert peak <= synth.PEAK + 1e-4 and peak < 0.9
        assert all(numpy.abs(_read(track, name)).max() > 1000 for name in synth.FILES)


def test_same_seed_gives_identical_bytes_and_tracks_do_not_depend_on_the_count(corpus, tmp_path):
    again = synth.generate_corpus(tmp_path / "again", n_train=1, n_test=0, seconds=8.0, seed=0)
    name = "train/Synth 001 - Train"
    for file in synth.FILES:
        assert (again / name / f"{file}.wav").read_bytes() == (corpus / name / f"{file}.wav").read_bytes()
    other = synth.generate_corpus(tmp_path / "other", n_train=1, n_test=0, seconds=8.0, seed=1)
    assert (other / name / "vocals.wav").read_bytes() != (corpus / name / "vocals.wav").read_bytes()
    second = _read(corpus / "train" / "Synth 002 - Train", "mixture")
    assert not numpy.array_equal(second, _read(corpus / name, "mixture"))


def test_vocals_have_active_and_silent_stretches(corpus):
    for track in _tracks(corpus):
        vocals = _read(track, "vocals", dtype="float64").mean(axis=1)
        blocks = vocals[: vocals.size // 4410 * 4410].reshape(-1, 4410)  # 100 ms
        rms = numpy.sqrt(numpy.mean(blocks**2, axis=1))
        silent = numpy.mean(rms < 1e-4)
        active = numpy.mean(rms > 0.01)
        assert silent >= 0.15, f"{track.name}: only {silent:.0%} of the vocals is silent"
        assert active >= 0.2, f"{track.name}: only {active:.0%} of the vocals is active"


def _mean_power_spectrum(signal):
    settings = features.StftSettings()
    return numpy.mean(features.stft_magnitude(features.to_mono(signal), settings).astype(numpy.float64) ** 2, axis=0)


def test_voice_overlaps_other_in_frequency(corpus):
    track = corpus / "test" / "Synth 001 - Test"
    frequencies = numpy.arange(features.StftSettings().n_freq) * RATE / 4096
    vocals, other, bass = (
        _mean_power_spectrum(_read(track, name, dtype="float32")) for name in ("vocals", "other", "bass")
    )
    band = (frequencies >= 150) & (frequencies <= 1000)
    assert vocals[band].sum() / vocals.sum() > 0.5
    assert other[band].sum() / other.sum() > 0.5
    # Share of the two energy distributions over third-octave bands (1 = same, 0 = disjoint).
    edges = 100.0 * 2.0 ** (numpy.arange(22) / 3.0)
    index = numpy.digitize(frequencies, edges)
    vocal_bands, other_bands = (numpy.bincount(index, weights=p, minlength=23)[1:22] for p in (vocals, other))
    overlap = numpy.minimum(vocal_bands / vocal_bands.sum(), other_bands / other_bands.sum()).sum()
    assert overlap > 0.3
    # The bass lives below: most of its energy under 150 Hz.
    assert bass[frequencies < 150].sum() / bass.sum() > 0.8


def test_resume_regenerates_exactly_the_missing_file(tmp_path):
    root = synth.generate_corpus(tmp_path / "corpus", n_train=2, n_test=0, seconds=4.0, seed=3)
    before = _snapshot(root)
    kept = root / "train" / "Synth 002 - Train" / "mixture.wav"
    kept_time = kept.stat().st_mtime_ns
    (root / "train" / "Synth 001 - Train" / "vocals.wav").unlink()
    (root / "train" / "Synth 001 - Train" / ".bass.123.tmp").write_bytes(b"interrupted")
    synth.generate_corpus(root, n_train=2, n_test=0, seconds=4.0, seed=3)
    assert _snapshot(root) == before
    assert kept.stat().st_mtime_ns == kept_time  # the complete track was skipped


def test_a_track_of_the_wrong_length_is_regenerated(tmp_path):
    root = synth.generate_corpus(tmp_path / "corpus", n_train=1, n_test=0, seconds=3.0, seed=4)
    synth.generate_corpus(root, n_train=1, n_test=0, seconds=4.0, seed=4)
    assert soundfile.info(str(root / "train" / "Synth 001 - Train" / "other.wav")).frames == 4 * RATE


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"n_train": -1}, "n_train"),
        ({"seconds": 1.0}, "seconds"),
        ({"test_seconds": "35"}, "test_seconds"),
        ({"seed": 1.5}, "seed"),
        ({"sample_rate": 8000}, "sample_rate"),
    ],
)
def test_invalid_settings_are_clear_errors(tmp_path, arguments, message):
    with pytest.raises(ConfigError, match=message):
        synth.generate_corpus(tmp_path, **arguments)


@pytest.mark.musdb
@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="musdb needs ffmpeg")
def test_musdb_reads_the_tree(corpus):
    musdb = pytest.importorskip("musdb")
    database = musdb.DB(root=str(corpus), is_wav=True, subsets="train")
    assert [track.name for track in database.tracks] == ["Synth 001 - Train", "Synth 002 - Train"]
    track = database.tracks[0]
    assert track.rate == RATE and track.audio.shape == (int(SMALL["seconds"] * RATE), 2)
    sources = sum(track.targets[name].audio for name in ("vocals", "drums", "bass", "other"))
    numpy.testing.assert_allclose(track.audio, sources, atol=1e-12)
    assert len(musdb.DB(root=str(corpus), is_wav=True, subsets="test").tracks) == 1
