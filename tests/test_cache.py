"""The feature cache on tiny generated MUSDB18-HQ trees."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy
import pytest

from audio_trees import write_tree
from nca_np.data import cache, musdb_io
from nca_np.data.cache import open_cache, prepare_cache
from nca_np.errors import ConfigError, DataError
from nca_np.features import StftSettings, stft_magnitude

REPO = Path(__file__).resolve().parent.parent
STFT = {"sample_rate": 44100, "window_length": 255, "n_fft": 256, "hop": 128, "window": "hamming"}
N_FREQ = 129
TRAIN = ("Alpha - One", "Beta - Two")
TEST = ("Delta - Four", "Gamma - Three")


def make_config(root, **data):
    section = {"corpus": "synthetic", "root": str(root), "is_wav": True, "excerpt_seconds": 1.0,
               "device_budget_gb": 1.0, "device_storage": "float16"}
    section.update(data)
    return {"stft": dict(STFT), "data": section}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """2 training tracks of 2 s, 2 test tracks of 3 s (activation-confidence excerpts of 1 s)."""
    return write_tree(tmp_path_factory.mktemp("musdb"), train=TRAIN, test=TEST, seconds=2.0, test_seconds=3.0)


@pytest.fixture(scope="module")
def prepared(dataset, tmp_path_factory):
    """One finished cache, shared by the read-only tests."""
    folder = prepare_cache(make_config(dataset), tmp_path_factory.mktemp("cache"), progress=False, log=None)
    return folder


def file_contents(folder: Path) -> dict:
    """Every file of a cache folder, arrays as arrays, the manifest without its creation record."""
    contents = {}
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).as_posix()
        if path.suffix == ".npy":
            contents[relative] = numpy.load(path)
        elif path.suffix == ".npz":
            with numpy.load(path) as archive:
                contents[relative] = {key: archive[key] for key in archive.files}
        elif path.name == "manifest.json":
            manifest = json.loads(path.read_text())
            manifest.pop("created")
            contents[relative] = manifest
        elif path.is_file():
            contents[relative] = path.read_bytes()
    return contents


def assert_same_contents(left: dict, right: dict):
    assert sorted(left) == sorted(right)
    for name, value in left.items():
        if isinstance(value, numpy.ndarray):
            numpy.testing.assert_array_equal(value, right[name], err_msg=name)
        elif isinstance(value, dict) and all(isinstance(v, numpy.ndarray) for v in value.values()):
            assert sorted(value) == sorted(right[name]), name
            for key in value:
                numpy.testing.assert_array_equal(value[key], right[name][key], err_msg=f"{name}:{key}")
        else:
            assert value == right[name], name


# --- what is stored ---------------------------------------------------------------------------

def test_training_features_are_the_magnitudes_of_each_track(prepared, dataset):
    features = open_cache(prepared)
    assert features.n_freq == N_FREQ and features.settings == StftSettings(**STFT)
    assert [entry["name"] for entry in features.manifest["train"]] == list(TRAIN)
    mixtures, vocals = features.train_arrays()
    assert [m.shape for m in mixtures] == [(88200 // 128 + 1, N_FREQ)] * 2
    track = musdb_io.load_track(musdb_io.scan_tracks(dataset, "train", is_wav=True)[1])
    numpy.testing.assert_array_equal(mixtures[1], stft_magnitude(track.mixture, features.settings))
    numpy.testing.assert_array_equal(vocals[1], stft_magnitude(track.vocals, features.settings))


def test_scaled_training_mixture_has_unit_std_per_band(prepared):
    features = open_cache(prepared)
    source = features.train_frames()
    assert source.n_frames == 2 * 690 and source.n_freq == N_FREQ
    batches = list(source.batches(100, numpy.random.default_rng(0)))
    X = numpy.concatenate([x for x, _ in batches])
    Y = numpy.concatenate([y for _, y in batches])
    assert X.dtype == numpy.float32 and X.shape == (1380, N_FREQ)
    numpy.testing.assert_allclose(X.astype(numpy.float64).std(axis=0), 1.0, rtol=1e-4)
    # The vocals are scaled by the mixture's factors (docs/method.md#features), not their own.
    _, raw_vocals = features.train_arrays()
    raw = numpy.concatenate(raw_vocals).astype(numpy.float64)
    numpy.testing.assert_allclose(numpy.sort(Y, axis=0), numpy.sort(raw * features.scale, axis=0), rtol=1e-6)
    assert not numpy.allclose(Y.std(axis=0), 1.0, rtol=0.05)


def test_test_excerpts_follow_the_activation_confidence(prepared, dataset):
    from nca_np.data.excerpts import activation_confidence_excerpt, read_cutlist

    features = open_cache(prepared)
    excerpts = read_cutlist(features.cutlist_path)
    assert [e.track for e in excerpts] == list(TEST)
    for excerpt, ref, entry in zip(excerpts, musdb_io.scan_tracks(dataset, "test", is_wav=True),
                                   features.manifest["test"]):
        track = musdb_io.load_track(ref)
        expected = activation_confidence_excerpt([track.sources[s] for s in musdb_io.SOURCES], 44100, 1.0)
        assert (excerpt.start_s, excerpt.end_s) == expected and excerpt.source == "activation-confidence"
        start = int(expected[0] * 44100)
        stored = numpy.load(prepared / "test" / f"{entry['index']:05d}.mixture.npy")
        numpy.testing.assert_array_equal(stored, stft_magnitude(track.mixture[start : start + 44100],
                                                                features.settings))


def test_short_test_track_is_used_whole(dataset, tmp_path):
    folder = prepare_cache(make_config(dataset, excerpt_seconds=5.0), tmp_path, progress=False, log=None)
    entries = open_cache(folder).manifest["test"]
    assert [(e["start_s"], e["end_s"], e["source"]) for e in entries] == [(0.0, 3.0, "whole-track")] * 2
    assert entries[0]["n_frames"] == 3 * 44100 // 128 + 1


def test_manifest_records_settings_tracks_and_versions(prepared):
    manifest = json.loads((prepared / "manifest.json").read_text())
    assert manifest["key"] == prepared.name and manifest["stft"] == STFT and manifest["n_freq"] == N_FREQ
    assert manifest["data"]["corpus"] == "synthetic" and manifest["data"]["is_wav"] is True
    assert [(e["name"], e["n_frames"]) for e in manifest["train"]] == [(name, 690) for name in TRAIN]
    assert manifest["n_train_frames"] == 1380
    assert manifest["created"]["versions"]["numpy"] == numpy.__version__


@pytest.mark.musdb
@pytest.mark.skipif(not musdb_io.ffmpeg_available(), reason="ffmpeg/ffprobe not installed")
def test_synthetic_corpus_is_listed_through_musdb_and_prepared(tmp_path, monkeypatch):
    from nca_np.data.synth import generate_corpus, track_name

    root = generate_corpus(tmp_path / "synthetic", n_train=2, n_test=1, seconds=2.0, test_seconds=4.0, seed=0)
    listed, real_list = [], musdb_io.list_tracks

    def recording_list(*args, **kwargs):
        refs = real_list(*args, **kwargs)
        listed.extend(refs)
        return refs

    monkeypatch.setattr(musdb_io, "list_tracks", recording_list)
    folder = prepare_cache(make_config(root, excerpt_seconds=2.0), tmp_path / "cache", progress=False, log=None)
    assert [ref.name for ref in listed] == [track_name("train", 0), track_name("train", 1), track_name("test", 0)]
    assert all(ref.handle is not None and ref.handle.name == ref.name for ref in listed)  # musdb's own tracks
    features = open_cache(folder)
    assert [m.shape for m in features.train_arrays()[0]] == [(2 * 44100 // 128 + 1, N_FREQ)] * 2
    (entry,) = features.manifest["test"]
    assert entry["source"] == "activation-confidence" and entry["end_s"] - entry["start_s"] == 2.0
    assert entry["n_frames"] == 2 * 44100 // 128 + 1
    X = numpy.concatenate([x for x, _ in features.train_frames().batches(256, numpy.random.default_rng(0))])
    numpy.testing.assert_allclose(X.astype(numpy.float64).std(axis=0), 1.0, rtol=1e-4)


# --- keys, reuse, resume ------------------------------------------------------------------------

def test_second_call_reuses_the_cache_without_reading_audio(dataset, prepared, monkeypatch):
    before = {p: p.stat().st_mtime_ns for p in prepared.rglob("*")}

    def refuse(*args, **kwargs):
        raise AssertionError("audio was read")

    monkeypatch.setattr(musdb_io, "load_track", refuse)
    monkeypatch.setattr(musdb_io, "list_tracks", refuse)
    lines = []
    again = prepare_cache(make_config(dataset), prepared.parent, progress=False, log=lines.append)
    assert again == prepared and lines == [f"feature cache {prepared} is up to date"]
    assert {p: p.stat().st_mtime_ns for p in prepared.rglob("*")} == before


def test_any_stft_change_gives_a_new_key(dataset):
    base = make_config(dataset)
    keys = {cache.cache_key(base)}
    for setting, value in [("hop", 64), ("n_fft", 512), ("window_length", 201), ("window", "hann")]:
        changed = make_config(dataset)
        changed["stft"][setting] = value
        keys.add(cache.cache_key(changed))
    keys.add(cache.cache_key(make_config(dataset, excerpt_seconds=2.0)))
    assert len(keys) == 6 and all(len(key) == 16 for key in keys)
    assert cache.cache_key(make_config(dataset)) == cache.cache_key(make_config(dataset))


def test_changed_stft_setting_builds_a_new_cache(dataset, prepared, tmp_path):
    config = make_config(dataset)
    config["stft"]["hop"] = 200
    folder = prepare_cache(config, prepared.parent, progress=False, log=None)
    assert folder != prepared and folder.parent == prepared.parent
    assert open_cache(folder).manifest["train"][0]["n_frames"] == 88200 // 200 + 1
    assert open_cache(prepared).manifest["train"][0]["n_frames"] == 690


def test_changed_audio_file_changes_the_key(tmp_path):
    root = write_tree(tmp_path, seconds=0.5)
    key = cache.cache_key(make_config(root))
    path = root / "train" / "Alpha - One" / "bass.wav"
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert cache.cache_key(make_config(root)) != key


@pytest.mark.parametrize("fail_on_call", [2, 4])  # during the training pass / during the test pass
def test_interrupted_preparation_resumes_and_matches_an_uninterrupted_one(dataset, prepared, tmp_path,
                                                                          monkeypatch, fail_on_call):
    real_load = musdb_io.load_track
    calls = []

    def failing_load(ref):
        calls.append(ref.name)
        if len(calls) == fail_on_call:
            raise KeyboardInterrupt
        return real_load(ref)

    monkeypatch.setattr(musdb_io, "load_track", failing_load)
    with pytest.raises(KeyboardInterrupt):
        prepare_cache(make_config(dataset), tmp_path, progress=False, log=None)
    folder = tmp_path / prepared.name
    assert folder.is_dir() and not (folder / "manifest.json").exists()
    with pytest.raises(DataError, match="incomplete.*run `nca-np prepare` first"):
        open_cache(folder)

    calls.clear()
    monkeypatch.setattr(musdb_io, "load_track", lambda ref: calls.append(ref.name) or real_load(ref))
    assert prepare_cache(make_config(dataset), tmp_path, progress=False, log=None) == folder
    finished_before = fail_on_call - 1
    assert calls == (list(TRAIN) + list(TEST))[finished_before:]  # finished tracks are not read again
    assert_same_contents(file_contents(folder), file_contents(prepared))


# --- reading -------------------------------------------------------------------------------------

def test_segments_are_consecutive_scaled_columns(prepared):
    features = open_cache(prepared)
    segments = features.segments(100, log=None)
    assert features.n_segments(100) == len(segments) == 2 * (345 // 100)
    assert [(s.track, s.index, s.start_frame) for s in segments] == features.segment_positions(100) == [
        (TEST[0], 0, 0), (TEST[0], 1, 100), (TEST[0], 2, 200), (TEST[1], 3, 0), (TEST[1], 4, 100), (TEST[1], 5, 200)]
    raw = numpy.load(prepared / "test" / "00001.vocals.npy")
    segment = segments[4]
    assert segment.mixture.shape == segment.vocals.shape == (N_FREQ, 100)
    assert segment.mixture.dtype == numpy.float32 and segment.mixture.flags.c_contiguous
    numpy.testing.assert_allclose(segment.vocals, (raw[100:200] * features.scale).T, rtol=1e-6)
    (only,) = features.segments(100, indices=[4], log=None)
    numpy.testing.assert_array_equal(only.mixture, segment.mixture)


def test_segments_longer_than_every_excerpt_are_an_error(prepared):
    features = open_cache(prepared)
    with pytest.raises(DataError, match="segments of 400 frames do not fit.*longest has 345 frames"):
        features.segments(400)


def test_short_excerpt_gives_no_segment_and_is_logged(prepared):
    features = open_cache(prepared)
    features.manifest["test"][0]["n_frames"] = 50  # as if the first excerpt were short
    lines = []
    segments = features.segments(100, log=lines.append)
    assert [s.track for s in segments] == [TEST[1]] * 3
    assert lines == [f"1 test excerpt(s) shorter than 100 frames give no segment: {TEST[0]}"]


def test_open_cache_reads_without_musdb_or_soundfile(prepared):
    script = f"""
import sys
sys.modules["musdb"] = None
sys.modules["soundfile"] = None
import numpy
from nca_np.data.cache import open_cache
features = open_cache({str(prepared)!r})
source = features.train_frames()
count = sum(x.shape[0] for x, _ in source.batches(64, numpy.random.default_rng(1)))
segments = features.segments(100, log=None)
assert "stempeg" not in sys.modules
print(count, len(segments), segments[0].mixture.shape)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1380", "6", f"({N_FREQ},", "100)"]


def test_open_cache_errors_say_to_prepare(tmp_path, prepared):
    with pytest.raises(DataError, match=f"no feature cache at {tmp_path / 'none'}: run `nca-np prepare` first"):
        open_cache(tmp_path / "none")
    (tmp_path / "half").mkdir()
    with pytest.raises(DataError, match="incomplete \\(no manifest.json\\): run `nca-np prepare` first"):
        open_cache(tmp_path / "half")


def test_damaged_file_is_named_and_repaired_by_preparing_again(dataset, tmp_path):
    folder = prepare_cache(make_config(dataset), tmp_path, progress=False, log=None)
    intact = file_contents(folder)
    damaged = folder / "train" / "00000.vocals.npy"
    damaged.write_bytes(damaged.read_bytes()[:1000])
    with pytest.raises(DataError, match=f"{damaged} is missing or unreadable"):
        open_cache(folder)
    lines = []
    assert prepare_cache(make_config(dataset), tmp_path, progress=False, log=lines.append) == folder
    assert lines[0].startswith(f"repairing the feature cache {folder}: feature cache file {damaged}")
    assert [line.split(":")[0] for line in lines[1:3]] == [f"train 1/2 {TRAIN[0]}", f"train 2/2 {TRAIN[1]}"]
    assert_same_contents(file_contents(folder), intact)


def test_find_cache_matches_settings(prepared, dataset):
    assert cache.find_cache(make_config("/elsewhere"), prepared.parent) in {
        p.parent for p in prepared.parent.glob("*/manifest.json")}
    other = make_config(dataset)
    other["stft"]["hop"] = 100
    with pytest.raises(DataError, match="no feature cache under .* matches this configuration"):
        cache.find_cache(other, prepared.parent)


# --- corpus "musdb18" and bad settings -------------------------------------------------------------

def test_musdb18_corpus_uses_the_sisec_previews(dataset, tmp_path, monkeypatch):
    from nca_np.data import excerpts

    # The real previews are 30 s into long tracks; scale the protocol down to the tiny tracks.
    monkeypatch.setattr(cache, "SISEC_SECONDS", 1.0)
    monkeypatch.setattr(excerpts, "sisec_previews", lambda: {TEST[0]: (2.0, 3.0), TEST[1]: (0.0, 1.0)})
    config = make_config(dataset, corpus="musdb18")
    folder = prepare_cache(config, tmp_path, progress=False, log=None)
    entries = open_cache(folder).manifest["test"]
    assert [(e["start_s"], e["end_s"], e["source"]) for e in entries] == [(2.0, 3.0, "sisec2018"),
                                                                         (0.0, 1.0, "sisec2018")]
    monkeypatch.setattr(excerpts, "sisec_previews", lambda: {TEST[0]: (2.0, 3.0)})
    with pytest.raises(DataError, match=f"'{TEST[1]}' of .*test are not in the SiSEC 2018 previews"):
        prepare_cache(config, tmp_path / "other", progress=False, log=None)


def test_musdb18_corpus_needs_30_second_excerpts(dataset):
    with pytest.raises(ConfigError, match="excerpt_seconds = 1.0 but the SiSEC 2018 previews .* are 30 s"):
        cache.cache_key(make_config(dataset, corpus="musdb18"))


@pytest.mark.parametrize("data, message", [
    ({"corpus": "medleydb"}, "corpus = 'medleydb' is unknown"),
    ({"is_wav": "yes"}, "is_wav must be true or false"),
    ({"excerpt_seconds": 0}, "excerpt_seconds must be a positive number"),
])
def test_bad_data_settings_are_config_errors(dataset, data, message):
    with pytest.raises(ConfigError, match=message):
        cache.cache_key(make_config(dataset, **data))


def test_bad_dataset_fails_before_any_audio_is_read(tmp_path, monkeypatch):
    root = write_tree(tmp_path, seconds=0.5)
    os.remove(root / "test" / "Gamma - Three" / "other.wav")
    monkeypatch.setattr(musdb_io, "load_track", lambda ref: pytest.fail("audio was read"))
    with pytest.raises(DataError, match="Gamma - Three lacks other.wav"):
        prepare_cache(make_config(root), tmp_path / "cache", progress=False, log=None)


@pytest.mark.musdb
@pytest.mark.skipif(not musdb_io.ffmpeg_available(), reason="reading .stem.mp4 needs ffmpeg")
def test_real_music_through_the_stems_path_matches_features_read_another_way(tmp_path):
    """stempeg's six-second excerpt of a real MUSDB18 track, put under train/
    and test/ of a stems-release root and prepared through musdb, has the
    features of the same audio decoded by stempeg directly."""
    import stempeg
    from audio_trees import copy_example_stem

    copy_example_stem(tmp_path / "musdb" / "train")
    copy_example_stem(tmp_path / "musdb" / "test")
    config = make_config(tmp_path / "musdb", is_wav=False, excerpt_seconds=30.0)
    folder = prepare_cache(config, tmp_path / "cache", progress=False, log=None)
    features = open_cache(folder)
    (excerpt,) = features.excerpts()
    assert excerpt.source == "whole-track"  # a 6 s track is shorter than the 30 s excerpt

    stems, rate = stempeg.read_stems(stempeg.example_stem_path(), ffmpeg_format="s16le")
    settings = StftSettings(**STFT)
    # musdb's stream order: mixture 0, drums 1, bass 2, other 3, vocals 4
    mixture = stft_magnitude(stems[0].mean(axis=1), settings)
    vocals = stft_magnitude(stems[4].mean(axis=1), settings)
    segment_frames = 200
    segments = features.segments(segment_frames, log=None)
    assert len(segments) == mixture.shape[0] // segment_frames
    std = features.scaler.std[:, None]
    for segment in segments:
        rows = slice(segment.start_frame, segment.start_frame + segment_frames)
        numpy.testing.assert_allclose(segment.mixture * std, mixture[rows].T, rtol=1e-4, atol=1e-5)
        numpy.testing.assert_allclose(segment.vocals * std, vocals[rows].T, rtol=1e-4, atol=1e-5)
    train_mixture, _ = features.train_arrays()
    numpy.testing.assert_allclose(numpy.asarray(train_mixture[0]), mixture, rtol=1e-4, atol=1e-5)


def test_a_damaged_cache_is_repaired_without_advice_to_delete_it(dataset, tmp_path):
    folder = prepare_cache(make_config(dataset), tmp_path, progress=False, log=None)
    damaged = folder / "test" / "00000.mixture.npy"
    damaged.write_bytes(damaged.read_bytes()[:200])
    with pytest.raises(DataError) as caught:
        open_cache(folder)
    assert "delete" not in str(caught.value) and "run `nca-np prepare` again" in str(caught.value)
    lines = []
    prepare_cache(make_config(dataset), tmp_path, progress=False, log=lines.append)
    assert lines[0].startswith(f"repairing the feature cache {folder}: feature cache file {damaged} is missing")
    assert lines[0].endswith("float32; its damaged tracks are computed again") and "delete" not in lines[0]
