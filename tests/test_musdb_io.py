"""MUSDB18 listing, validation and loading on tiny generated trees."""

import os
import shutil

import numpy
import pytest
import soundfile

from audio_trees import copy_example_stem, truncate, write_track, write_tree
from nca_np.data import musdb_io
from nca_np.data.musdb_io import list_tracks, load_track, resolve_root, scan_tracks
from nca_np.errors import DataError

needs_ffmpeg = pytest.mark.skipif(not musdb_io.ffmpeg_available(), reason="ffmpeg/ffprobe not installed")


@pytest.fixture
def tree(tmp_path):
    return write_tree(tmp_path / "musdb", train=("Beta - Two", "Alpha - One"), test=("Gamma - Three",))


# --- the root -----------------------------------------------------------------------------

def test_resolve_root_prefers_argument_then_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MUSDB_PATH", str(tmp_path / "from_env"))
    assert resolve_root(str(tmp_path / "given")) == (tmp_path / "given").resolve()
    assert resolve_root("") == (tmp_path / "from_env").resolve()
    assert resolve_root(None) == (tmp_path / "from_env").resolve()


def test_resolve_root_without_any_says_what_to_do(monkeypatch):
    monkeypatch.delenv("MUSDB_PATH", raising=False)
    with pytest.raises(DataError, match="--musdb-root.*MUSDB_PATH.*make demo"):
        resolve_root(None)


def test_missing_root_is_named(tmp_path):
    with pytest.raises(DataError, match=f"{tmp_path / 'nowhere'} does not exist"):
        scan_tracks(tmp_path / "nowhere", "train", is_wav=True)


def test_root_without_subsets_is_named(tmp_path):
    (tmp_path / "songs").mkdir()
    with pytest.raises(DataError, match=f"{tmp_path / 'songs'} has neither train/ nor test/"):
        scan_tracks(tmp_path / "songs", "train", is_wav=True)


def test_root_pointing_at_a_subset_suggests_the_parent(tree):
    with pytest.raises(DataError, match=f"pass its parent {tree}"):
        scan_tracks(tree / "train", "train", is_wav=True)


def test_missing_subset_folder_is_named(tree):
    shutil.rmtree(tree / "test")
    with pytest.raises(DataError, match=f"{tree / 'test'} is missing"):
        scan_tracks(tree, "test", is_wav=True)


def test_unknown_subset_name(tree):
    with pytest.raises(DataError, match="unknown subset 'valid'"):
        scan_tracks(tree, "valid", is_wav=True)


def test_empty_subset_is_named(tree):
    shutil.rmtree(tree / "test")
    (tree / "test").mkdir()
    with pytest.raises(DataError, match=f"{tree / 'test'} is empty"):
        scan_tracks(tree, "test", is_wav=True)


# --- the layout ---------------------------------------------------------------------------

def test_wav_tree_read_as_stems_says_set_is_wav(tree):
    with pytest.raises(DataError, match=f"{tree / 'train'} holds track folders with .wav.*is_wav = true"):
        scan_tracks(tree, "train", is_wav=False)


def test_stems_tree_read_as_wav_says_unset_is_wav(tmp_path):
    copy_example_stem(tmp_path / "train")
    with pytest.raises(DataError, match=f"{tmp_path / 'train'} holds 1 .stem.mp4.*is_wav = false"):
        scan_tracks(tmp_path, "train", is_wav=True)


def test_missing_source_file_is_named(tree):
    os.remove(tree / "train" / "Alpha - One" / "drums.wav")
    with pytest.raises(DataError, match=f"track folder {tree / 'train' / 'Alpha - One'} lacks drums.wav"):
        scan_tracks(tree, "train", is_wav=True)


def test_sub_folder_inside_a_track_is_a_phantom(tree):
    (tree / "train" / "Alpha - One" / "extra").mkdir()
    with pytest.raises(DataError, match=f"{tree / 'train' / 'Alpha - One' / 'extra'} is a folder inside"):
        scan_tracks(tree, "train", is_wav=True)


def test_folder_without_audio_is_a_phantom(tree):
    (tree / "train" / "notes").mkdir()
    (tree / "train" / "notes" / "readme.txt").write_text("not a track")
    with pytest.raises(DataError, match=f"{tree / 'train' / 'notes'} holds no .wav audio"):
        scan_tracks(tree, "train", is_wav=True)


def test_nested_stem_file_is_named(tmp_path):
    copy_example_stem(tmp_path / "train")
    nested = copy_example_stem(tmp_path / "train" / "more", name="Other - Song")
    with pytest.raises(DataError, match=f"{nested} lies in a sub-folder"):
        scan_tracks(tmp_path, "train", is_wav=False)


def test_scan_lists_tracks_sorted_by_name(tree):
    refs = scan_tracks(tree, "train", is_wav=True)
    assert [ref.name for ref in refs] == ["Alpha - One", "Beta - Two"]
    assert refs[0].path == tree / "train" / "Alpha - One"
    assert refs[0].subset == "train" and refs[0].is_wav
    assert [path.name for path in refs[0].audio_files()] == list(musdb_io.WAV_FILES)


# --- musdb --------------------------------------------------------------------------------

@needs_ffmpeg
@pytest.mark.musdb
def test_list_tracks_through_musdb_agrees_with_the_scan(tree):
    refs = list_tracks(tree, "train", is_wav=True, through_musdb=True)
    assert [ref.name for ref in refs] == ["Alpha - One", "Beta - Two"]
    assert all(ref.handle is not None and ref.handle.name == ref.name for ref in refs)
    assert refs[0].handle.rate == 44100


def test_missing_ffmpeg_is_a_clear_error_and_wav_trees_do_without(tree, monkeypatch):
    monkeypatch.setattr(musdb_io.shutil, "which", lambda tool: None)
    with pytest.raises(DataError, match="ffmpeg/ffprobe not found: install it"):
        list_tracks(tree, "train", is_wav=True, through_musdb=True)
    refs = list_tracks(tree, "train", is_wav=True)  # automatic: the scan is enough for wav
    assert [ref.name for ref in refs] == ["Alpha - One", "Beta - Two"]
    assert load_track(refs[0]).n_samples == 44100


@needs_ffmpeg
@pytest.mark.musdb
def test_stem_track_loads_through_musdb(tmp_path):
    import stempeg

    stem = copy_example_stem(tmp_path / "train")
    copy_example_stem(tmp_path / "test")
    (ref,) = list_tracks(tmp_path, "train", is_wav=False)
    assert ref.name == "Example - Song" and ref.path == stem
    track = load_track(ref)
    stems, rate = stempeg.read_stems(str(stem), ffmpeg_format="s16le")
    assert rate == 44100 and track.sample_rate == 44100
    assert set(track.sources) == {"vocals", "drums", "bass", "other"}
    for signal in [track.mixture, *track.sources.values()]:
        assert signal.shape == (stems.shape[1],) and signal.dtype == numpy.float32
    # musdb's stream order: mixture 0, drums 1, bass 2, other 3, vocals 4
    numpy.testing.assert_allclose(track.mixture, stems[0].mean(axis=1), rtol=1e-6, atol=1e-7)
    numpy.testing.assert_allclose(track.vocals, stems[4].mean(axis=1), rtol=1e-6, atol=1e-7)
    numpy.testing.assert_allclose(track.sources["bass"], stems[2].mean(axis=1), rtol=1e-6, atol=1e-7)


@needs_ffmpeg
@pytest.mark.musdb
def test_damaged_stem_file_is_named(tmp_path):
    copy_example_stem(tmp_path / "test", name="Good - Song")
    damaged = tmp_path / "test" / "Bad - Song.stem.mp4"
    damaged.write_bytes(b"not an mp4 file" * 10)
    with pytest.raises(DataError, match=f"musdb could not list .*: {damaged} cannot be read by ffprobe"):
        list_tracks(tmp_path, "test", is_wav=False)


# --- loading ------------------------------------------------------------------------------

def test_load_track_averages_channels_to_float32(tree):
    ref = scan_tracks(tree, "train", is_wav=True)[0]
    track = load_track(ref)
    assert track.name == "Alpha - One" and track.subset == "train" and track.sample_rate == 44100
    assert set(track.sources) == {"vocals", "drums", "bass", "other"}
    assert track.vocals is track.sources["vocals"]
    for name, signal in [("mixture", track.mixture), *track.sources.items()]:
        stereo, _ = soundfile.read(str(ref.path / f"{name}.wav"), dtype="float32")
        assert stereo.shape == (44100, 2)
        assert signal.shape == (44100,) and signal.dtype == numpy.float32
        numpy.testing.assert_allclose(signal, (stereo[:, 0] + stereo[:, 1]) / 2, rtol=1e-6, atol=1e-8)


def test_mono_files_load_unchanged(tmp_path):
    write_tree(tmp_path, channels=1)
    track = load_track(scan_tracks(tmp_path, "test", is_wav=True)[0])
    mono, _ = soundfile.read(str(tmp_path / "test" / "Gamma - Three" / "bass.wav"), dtype="float32")
    numpy.testing.assert_array_equal(track.sources["bass"], mono)


def test_unreadable_file_is_named(tree):
    damaged = truncate(tree / "train" / "Alpha - One" / "bass.wav", 30)
    with pytest.raises(DataError, match=f"cannot read {damaged}"):
        load_track(scan_tracks(tree, "train", is_wav=True)[0])


def test_truncated_file_shows_as_different_lengths(tree):
    truncate(tree / "train" / "Alpha - One" / "other.wav", 20000)
    lengths = r"Alpha - One has sources of different lengths \(mixture.wav 44100.*other.wav 2\d\d\d "
    with pytest.raises(DataError, match=lengths):
        load_track(scan_tracks(tree, "train", is_wav=True)[0])


def test_sources_of_different_lengths_are_named(tmp_path):
    write_tree(tmp_path, lengths={"vocals": 30000})
    with pytest.raises(DataError, match="vocals.wav 30000"):
        load_track(scan_tracks(tmp_path, "train", is_wav=True)[0])


def test_wrong_sample_rate_is_named(tmp_path):
    write_tree(tmp_path, rates={"drums": 22050})
    folder = tmp_path / "train" / "Alpha - One"
    with pytest.raises(DataError, match=f"{folder / 'drums.wav'} is sampled at 22050 Hz"):
        load_track(scan_tracks(tmp_path, "train", is_wav=True)[0])


def test_silent_vocals_are_rejected_in_test_tracks_only(tmp_path):
    write_tree(tmp_path, silent=("vocals",))
    with pytest.raises(DataError, match="vocals of test track .*Gamma - Three are silent"):
        load_track(scan_tracks(tmp_path, "test", is_wav=True)[0])
    # a training track without vocals is valid data: the models learn to output silence
    training = load_track(scan_tracks(tmp_path, "train", is_wav=True)[0])
    assert not training.vocals.any() and training.mixture.any()


def test_non_finite_samples_are_rejected(tmp_path):
    folder = write_track(tmp_path / "train" / "Alpha - One")
    audio, rate = soundfile.read(str(folder / "bass.wav"), dtype="float32")
    audio[100, 0] = numpy.nan
    soundfile.write(str(folder / "bass.wav"), audio, rate, subtype="FLOAT")
    with pytest.raises(DataError, match="bass of track .* NaN"):
        load_track(scan_tracks(tmp_path, "train", is_wav=True)[0])


def test_fingerprint_changes_when_a_file_changes(tree):
    refs = scan_tracks(tree, "train", is_wav=True)
    before = musdb_io.data_fingerprint(refs)
    assert len(before) == 10 and before[0][0] == "train/Alpha - One/bass.wav"
    path = tree / "train" / "Beta - Two" / "vocals.wav"
    status = path.stat()
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns + 1_000_000))
    assert musdb_io.data_fingerprint(refs) != before
