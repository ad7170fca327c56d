"""``nca-np separate``: blocks equal one pass, files of the input's length and
rate, an identity model gives the mixture back, bounded memory, clear errors."""

import json
import os
import socket
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy
import pytest
import scipy.signal
import soundfile

from audio_trees import track_signals
from nca_np.cli import main
from nca_np.config import load_profile
from nca_np.data import musdb_io
from nca_np.workspace import Workspace
from nca_np.atomic import write_wavs
from nca_np.features import Scaler, StftSettings, istft, n_frames, stft, stft_magnitude, to_mono
from nca_np.models import build_model, kind_names
from nca_np.errors import UserError
from nca_np.separate import (Options, Separator, block_plan, latest_runs, output_name, read_mixture, resolve_run,
                             separate_files, true_vocals_of)
from nca_np.train import FINAL_MODEL, save_state

PROFILE = Path(__file__).resolve().parents[1] / "configs" / "tiny.toml"
TINY = StftSettings(sample_rate=44100, window_length=63, n_fft=64, hop=32)


def noise(seconds, rate=44100, channels=1, seed=0):
    rng = numpy.random.default_rng(seed)
    shape = (int(round(seconds * rate)),) + ((channels,) if channels > 1 else ())
    return (0.2 * rng.standard_normal(shape)).astype(numpy.float32)


def identity_model(kind, n_freq, seed=0):
    """A real model whose output is its input: SF with a last layer of zero
    weights and unit biases masks with 1 everywhere; DAE with identity
    weights passes the (non-negative) magnitudes through both ReLUs."""
    model = build_model(kind, n_freq, seed=seed, module=numpy)
    if kind == "sf":
        model.params[2][...] = 0.0
        model.params[3][...] = 1.0
    else:
        for W, b in zip(model.weights, model.biases):
            W[...] = numpy.eye(n_freq, dtype=W.dtype)
            b[...] = 0.0
    return model


def save_run(run_dir, model, config, scaler):
    """A finished run as training leaves it: model.npz with meta, config and scaler."""
    meta = {"kind": model.kind, "seed": 0, "status": "finished", "history": [], "config": config}
    save_state(Path(run_dir) / FINAL_MODEL, model, meta, scaler_state=scaler.state_dict())
    return Path(run_dir)


def tiny_config():
    return load_profile(str(PROFILE))


def fitted_scaler(settings, seed=0):
    return Scaler.fit(stft_magnitude(noise(1.0, seed=seed), settings))


@pytest.fixture
def identity_run(tmp_path):
    config = tiny_config()
    settings = StftSettings.from_config(config["stft"])
    return save_run(tmp_path / "run", identity_model("sf", settings.n_freq), config, fitted_scaler(settings))


# --- blocks ---------------------------------------------------------------------------------

@pytest.mark.parametrize("n_samples", [1, 31, 32, 33, 64 * 32, 10_007])
def test_blocks_cover_every_sample_once(n_samples):
    for block_frames in (1, 2, 5, 1000):
        blocks = block_plan(n_samples, TINY, block_frames)
        kept = numpy.concatenate([numpy.arange(b.keep_start, b.keep_stop) for b in blocks])
        numpy.testing.assert_array_equal(kept, numpy.arange(n_samples))
        assert blocks[0].first_frame == 0 and blocks[-1].last_frame == n_frames(n_samples, TINY) - 1


@pytest.mark.parametrize("kind", kind_names())
def test_blocks_give_the_whole_file_result(kind):
    mixture = noise(0.4, seed=1)
    separator = Separator(build_model(kind, TINY.n_freq, seed=3, module=numpy), fitted_scaler(TINY), TINY, None)
    whole = separator.vocals(mixture, block_frames=10**9)
    assert numpy.abs(whole).max() > 1e-3  # the random model does output something
    for block_frames in (1, 3, 64):
        blocked = separator.vocals(mixture, block_frames=block_frames)
        numpy.testing.assert_allclose(blocked, whole, rtol=0, atol=1e-6 * numpy.abs(whole).max())


@pytest.mark.parametrize("kind", ["dae", "sf"])
def test_blocks_give_the_whole_file_result_on_every_channel(kind):
    mixture = noise(0.4, channels=2, seed=1)
    separator = Separator(build_model(kind, TINY.n_freq, seed=3, module=numpy), fitted_scaler(TINY), TINY, None)
    whole = separator.vocals(mixture, block_frames=10**9)
    assert whole.shape == mixture.shape and numpy.abs(whole).max() > 1e-3
    for block_frames in (1, 7):
        blocked = separator.vocals(mixture, block_frames=block_frames)
        numpy.testing.assert_allclose(blocked, whole, rtol=0, atol=1e-6 * numpy.abs(whole).max())


def test_identity_model_gives_back_the_mixture():
    mixture = noise(0.7, seed=2)
    for kind in ("sf", "dae"):
        separator = Separator(identity_model(kind, TINY.n_freq), fitted_scaler(TINY), TINY, None)
        vocals, accompaniment = separator.separate(mixture, TINY.sample_rate)
        numpy.testing.assert_allclose(vocals, mixture, rtol=0, atol=1e-5)
        numpy.testing.assert_allclose(accompaniment, 0.0, rtol=0, atol=1e-5)


# --- files ----------------------------------------------------------------------------------

@pytest.mark.parametrize("rate", [44100, 48000])
@pytest.mark.parametrize("channels", [1, 2])
def test_separate_writes_two_files_of_the_inputs_length(rate, channels, identity_run, tmp_path):
    audio = track_signals(0.8, seed=4, sample_rate=rate, channels=channels)["mixture"]
    audio = audio[:, 0] if channels == 1 else audio
    source = tmp_path / f"song {rate}.flac"
    soundfile.write(source, audio, rate, subtype="PCM_24")
    lines = []
    (folder,) = separate_files([source], Separator.from_run(identity_run), tmp_path / "out", log=lines.append)
    assert folder == tmp_path / "out" / f"song {rate}"
    mixture = soundfile.read(source, dtype="float32", always_2d=True)[0]
    written = {}
    for name in ("vocals", "accompaniment"):
        info = soundfile.info(folder / f"{name}.wav")
        assert (info.frames, info.samplerate, info.channels, info.subtype) == (audio.shape[0], rate, channels, "FLOAT")
        written[name] = soundfile.read(folder / f"{name}.wav", dtype="float32", always_2d=True)[0]
    numpy.testing.assert_allclose(written["vocals"] + written["accompaniment"], mixture, rtol=0, atol=1e-6)
    resampled = [line for line in lines if "resample" in line]
    if rate == 44100:  # the identity model masks with 1: the mixture back exactly, every channel
        numpy.testing.assert_allclose(written["vocals"], mixture, rtol=0, atol=1e-5)
        assert not resampled
    else:  # the mixture there and back through scipy's polyphase resampler, which drops 22.05-24 kHz
        assert len(resampled) == 1 and "48000 Hz" in resampled[0] and "44100 Hz" in resampled[0]
        round_trip = scipy.signal.resample_poly(scipy.signal.resample_poly(mixture, 147, 160, axis=0), 160, 147,
                                                axis=0)
        numpy.testing.assert_allclose(written["vocals"], round_trip[:mixture.shape[0]], rtol=0, atol=1e-5)


def test_two_minute_file_in_bounded_memory(tmp_path):
    """The block loop holds one block of frames, not the whole spectrogram:
    beyond its output, its peak memory is the same for 20 s and 2 min and a
    fraction of what one pass over the whole file needs (which holds the
    file's spectrogram several times over)."""
    settings = StftSettings(sample_rate=44100, window_length=255, n_fft=256, hop=64)
    config = dict(tiny_config(), stft=settings.as_dict())
    separator = Separator(build_model("dae", settings.n_freq, seed=0, module=numpy), fitted_scaler(settings),
                          settings, None)
    rate, seconds = 44100, 120
    source = tmp_path / "long.wav"
    rng = numpy.random.default_rng(5)
    with soundfile.SoundFile(source, "w", rate, 2, subtype="PCM_16") as handle:
        for _ in range(seconds):
            handle.write(0.2 * rng.standard_normal((rate, 2)))
    mixture, _ = read_mixture(source)
    assert mixture.shape == (seconds * rate,)

    def peak(signal, block_frames):
        """Peak traced bytes of the block loop beyond its output, and the output."""
        tracemalloc.start()
        vocals = separator.vocals(signal, block_frames=block_frames)
        peak_bytes = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return peak_bytes - vocals.nbytes, vocals

    block = separator.block_frames()
    short = mixture[:20 * rate]
    assert n_frames(short.shape[0], settings) > block  # both signals take several blocks
    blocked_short, _ = peak(short, block)
    blocked, vocals = peak(mixture, block)
    whole, whole_vocals = peak(mixture, 10**9)
    spectrogram = n_frames(mixture.shape[0], settings) * settings.n_freq * 8  # complex64, the whole file
    assert whole > 2 * spectrogram, (whole, spectrogram)
    assert blocked < 1.1 * blocked_short, (blocked, blocked_short)
    assert blocked < whole / 5, (blocked, whole)
    numpy.testing.assert_allclose(vocals, whole_vocals, rtol=0, atol=1e-6 * numpy.abs(whole_vocals).max())

    run = save_run(tmp_path / "run", separator.model, config, separator.scaler)
    (folder,) = separate_files([source], Separator.from_run(run), tmp_path / "out", log=None)
    for name in ("vocals", "accompaniment"):
        assert soundfile.info(folder / f"{name}.wav").frames == mixture.shape[0]


@pytest.mark.musdb
@pytest.mark.skipif(not musdb_io.ffmpeg_available(), reason="reading .stem.mp4 needs ffmpeg")
def test_stem_file_is_read_through_its_mixture_stream(identity_run, tmp_path):
    import stempeg

    from audio_trees import copy_example_stem

    stem = copy_example_stem(tmp_path, name="Example")
    (folder,) = separate_files([stem], Separator.from_run(identity_run), tmp_path / "out", log=None)
    assert folder.name == "Example"
    stems, rate = stempeg.read_stems(str(stem), ffmpeg_format="s16le")
    mixture = soundfile.read(folder / "vocals.wav", dtype="float32")[0]
    numpy.testing.assert_allclose(mixture, stems[0], rtol=0, atol=1e-5)  # both channels, each as it is


def test_output_folders_are_named_after_the_inputs():
    assert output_name(Path("/music/My Song.flac")) == "My Song"
    assert output_name(Path("/musdb/test/Artist - Title.stem.mp4")) == "Artist - Title"
    assert output_name(Path("/musdb-hq/test/Artist - Title/mixture.wav")) == "Artist - Title"


def test_two_inputs_for_one_folder_are_refused_before_any_work(identity_run, tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        soundfile.write(tmp_path / folder / "song.wav", noise(0.1), 44100)
    with pytest.raises(UserError, match="two inputs would write to the same folder 'song'"):
        separate_files([tmp_path / "a" / "song.wav", tmp_path / "b" / "song.wav"], Separator.from_run(identity_run),
                       tmp_path / "out", log=None)
    assert not (tmp_path / "out").exists()


# --- the command line -----------------------------------------------------------------------

def run_cli(capsys, *args):
    code = main(["separate", "--profile", str(PROFILE), "--quiet", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_clear_line(code, err, *needles, exit_status=2):
    assert code == exit_status, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert str(needle) in lines[0], (needle, lines[0])


def files_under(folder):
    return sorted(p for p in Path(folder).rglob("*") if p.is_file()) if Path(folder).exists() else []


def test_kind_picks_the_first_finished_run_of_the_work_folder(tmp_path, capsys):
    config = tiny_config()
    settings = StftSettings.from_config(config["stft"])
    runs = Workspace(tmp_path / "work", config)
    (runs.run_dir("sf", 0)).mkdir(parents=True)  # started, never finished
    save_run(runs.run_dir("sf", 1), identity_model("sf", settings.n_freq), config, fitted_scaler(settings))
    save_run(runs.run_dir("sf", 2), build_model("sf", settings.n_freq, module=numpy), config,
             fitted_scaler(settings))
    source = tmp_path / "song.wav"
    soundfile.write(source, noise(0.5, channels=2), 44100)
    code, out, err = run_cli(capsys, source, "--kind", "sf", "--workdir", tmp_path / "work",
                             "--out", tmp_path / "out")
    assert code == 0, err
    assert str(runs.run_dir("sf", 1)) in out
    vocals = soundfile.read(tmp_path / "out" / "song" / "vocals.wav", dtype="float32")[0]
    mixture = soundfile.read(source, dtype="float32")[0]
    numpy.testing.assert_allclose(vocals, mixture, rtol=0, atol=1e-5)


def test_corrupt_file_gives_one_clear_line_and_no_file(identity_run, tmp_path, capsys):
    source = tmp_path / "broken.wav"
    source.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(40)))
    code, _, err = run_cli(capsys, source, "--run", identity_run, "--out", tmp_path / "out")
    assert_one_clear_line(code, err, "cannot read", source)
    assert files_under(tmp_path / "out") == []


def test_missing_run_gives_one_clear_line_and_no_file(tmp_path, capsys):
    source = tmp_path / "song.wav"
    soundfile.write(source, noise(0.2), 44100)
    code, _, err = run_cli(capsys, source, "--run", tmp_path / "runs" / "sf" / "run_07", "--out", tmp_path / "out")
    assert_one_clear_line(code, err, "no trained model", "run_07")
    code, _, err = run_cli(capsys, source, "--kind", "mss-dae", "--workdir", tmp_path, "--out", tmp_path / "out")
    assert_one_clear_line(code, err, "no finished mss-dae run", "nca-np train --kinds mss-dae")
    assert files_under(tmp_path / "out") == []


def test_unwritable_output_folder_gives_one_clear_line_and_no_file(identity_run, tmp_path, capsys):
    source = tmp_path / "song.wav"
    soundfile.write(source, noise(0.2), 44100)
    in_the_way = tmp_path / "a file"
    in_the_way.write_text("not a folder")
    code, _, err = run_cli(capsys, source, "--run", identity_run, "--out", in_the_way / "out")
    assert_one_clear_line(code, err, f"cannot use {in_the_way / 'out'}", "is a file, not a folder", exit_status=74)
    code, _, err = run_cli(capsys, source, "--run", identity_run, "--out", in_the_way)
    assert_one_clear_line(code, err, f"cannot use {in_the_way}", "is a file, not a folder", exit_status=74)
    assert in_the_way.read_text() == "not a folder"
    if os.geteuid() != 0:  # root writes anywhere: permissions can only be tried as another user
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        code, _, err = run_cli(capsys, source, "--run", identity_run, "--out", locked)
        assert_one_clear_line(code, err, f"cannot use {locked}", "permission denied", exit_status=74)
        assert files_under(locked) == []


# --- channels, --mono, Wiener ---------------------------------------------------------------

def stereo_song(path, seconds=0.6, seed=7):
    """Two different channels: a tone on the left, another on the right, noise in both."""
    rate = 44100
    t = numpy.arange(int(seconds * rate)) / rate
    rng = numpy.random.default_rng(seed)
    audio = numpy.stack([0.3 * numpy.sin(2 * numpy.pi * 440 * t), 0.2 * numpy.sin(2 * numpy.pi * 1320 * t)], axis=1)
    audio = (audio + 0.05 * rng.standard_normal(audio.shape)).astype(numpy.float32)
    soundfile.write(path, audio, rate, subtype="FLOAT")
    return audio


def random_run(tmp_path, kind="dae", seed=3):
    config = tiny_config()
    settings = StftSettings.from_config(config["stft"])
    return save_run(tmp_path / f"run-{kind}", build_model(kind, settings.n_freq, seed=seed, module=numpy), config,
                    fitted_scaler(settings))


@pytest.mark.parametrize("kind", ["dae", "sf"])
def test_each_channel_gets_the_mask_of_the_mono_estimate(kind, tmp_path):
    """Vocals of channel c are istft(m ⊙ X_c) with m = clip(ŷ / |X_mono|, 0, 1);
    the outputs add up to the input channel by channel."""
    audio = stereo_song(tmp_path / "song.wav")
    separator = Separator.from_run(random_run(tmp_path, kind))
    (folder,) = separate_files([tmp_path / "song.wav"], separator, tmp_path / "out", log=None)
    vocals = soundfile.read(folder / "vocals.wav", dtype="float32")[0]
    accompaniment = soundfile.read(folder / "accompaniment.wav", dtype="float32")[0]
    assert vocals.shape == audio.shape
    numpy.testing.assert_allclose(vocals + accompaniment, audio, rtol=0, atol=1e-6)
    settings = separator.settings
    spectrum = stft(to_mono(audio), settings)
    features = separator.scaler.transform(numpy.abs(spectrum))
    estimate = separator.scaler.inverse_transform(separator.model.predict(features))
    mask = numpy.clip(estimate / numpy.abs(spectrum), 0, 1)
    assert 0.05 < mask.mean() < 0.95  # a mask that is neither all-pass nor all-stop
    for channel in range(2):
        own = stft(audio[:, channel], settings)
        expected = istft(mask * numpy.abs(own), own, settings, audio.shape[0])
        numpy.testing.assert_allclose(vocals[:, channel], expected, rtol=0, atol=2e-5)
    # the channels differ: the right's 1320 Hz tone is not in the left's estimate
    assert numpy.abs(vocals[:, 0] - vocals[:, 1]).max() > 0.05


def test_mono_option_writes_the_mono_pipelines_files_byte_for_byte(tmp_path, capsys):
    """--mono is the mono path: the channel average separated and written as
    before (same samples, same header; only libsndfile's PEAK chunk time
    stamp may differ)."""
    stereo_song(tmp_path / "song.wav")
    run = random_run(tmp_path)
    code, _, err = run_cli(capsys, tmp_path / "song.wav", "--run", run, "--mono", "--out", tmp_path / "out")
    assert code == 0, err
    mixture, rate = read_mixture(tmp_path / "song.wav")
    vocals, accompaniment = Separator.from_run(run).separate(mixture, rate)
    write_wavs({tmp_path / "ref" / "vocals.wav": vocals, tmp_path / "ref" / "accompaniment.wav": accompaniment}, rate)
    for name in ("vocals", "accompaniment"):
        written, reference = (bytearray((folder / f"{name}.wav").read_bytes())
                              for folder in (tmp_path / "out" / "song", tmp_path / "ref"))
        assert soundfile.info(tmp_path / "out" / "song" / f"{name}.wav").channels == 1
        assert len(written) == len(reference)
        for data in (written, reference):
            peak = data.find(b"PEAK")
            if peak >= 0:
                data[peak + 12:peak + 16] = b"\0\0\0\0"  # the chunk's time stamp
        assert written == reference


def sdr_db(reference, estimate):
    return 10 * numpy.log10(numpy.sum(reference**2) / numpy.sum((reference - estimate) ** 2))


def two_source_stereo(seconds=1.0, seed=0):
    """A 'voice' panned left (harmonic tones switching on and off) and an
    'accompaniment' panned right (noise), mixed in both channels."""
    rate = 44100
    t = numpy.arange(int(seconds * rate)) / rate
    rng = numpy.random.default_rng(seed)
    gate = (numpy.sin(2 * numpy.pi * 3 * t) > 0).astype(float)
    voice = gate * sum(numpy.sin(2 * numpy.pi * f * t) / k for k, f in enumerate((330, 660, 990), start=1))
    backing = 0.5 * rng.standard_normal(t.size)
    vocals = numpy.stack([0.9 * voice, 0.3 * voice], axis=1)
    accompaniment = numpy.stack([0.3 * backing, 0.9 * backing], axis=1)
    return vocals, accompaniment


def test_wiener_filter_improves_a_noisy_magnitude_estimate():
    """On a constructed two-source stereo mixture, magnitude estimates with
    30 % multiplicative noise: the multichannel Wiener filter's vocals score
    a higher SDR than the plain masked estimate, since it uses the sources'
    spatial covariances (each source is panned differently)."""
    from nca_np.wiener import filter as wiener_filter

    vocals, accompaniment = two_source_stereo()
    mixture = vocals + accompaniment
    settings = StftSettings(sample_rate=44100, window_length=511, n_fft=512, hop=128)

    def stft_channels(signal):
        return numpy.stack([stft(signal[:, c], settings, dtype=numpy.complex128) for c in range(2)], axis=-1)

    X, V, A = stft_channels(mixture), stft_channels(vocals), stft_channels(accompaniment)
    rng = numpy.random.default_rng(1)
    noisy_v = numpy.abs(V) * rng.uniform(0.7, 1.3, V.shape)
    noisy_a = numpy.abs(A) * rng.uniform(0.7, 1.3, A.shape)

    def signal_of(Y):
        return numpy.stack([istft(numpy.abs(Y[..., c]), Y[..., c], settings, mixture.shape[0], dtype=numpy.float64)
                            for c in range(2)], axis=-1)

    masked = signal_of(noisy_v / numpy.maximum(noisy_v + noisy_a, 1e-12) * X)
    plain, _ = wiener_filter(X, noisy_v, noisy_a, 0)
    numpy.testing.assert_allclose(numpy.abs(plain), noisy_v, rtol=1e-6, atol=1e-9)  # 0: magnitudes, mixture phase
    filtered, filtered_accompaniment = wiener_filter(X, noisy_v, noisy_a, 1)
    # the two filters add up to the identity but for the regulariser
    assert numpy.linalg.norm(filtered + filtered_accompaniment - X) < 1e-4 * numpy.linalg.norm(X)
    gain = sdr_db(vocals, signal_of(filtered)) - sdr_db(vocals, masked)
    print(f"SDR gain of one Wiener iteration: {gain:.2f} dB")
    assert gain > 1.0, gain


def test_wiener_option_changes_the_estimate_and_keeps_the_sum(tmp_path):
    audio = stereo_song(tmp_path / "song.wav")
    separator = Separator.from_run(random_run(tmp_path))
    plain, _ = separator.separate(audio, 44100)
    filtered, accompaniment = separator.separate(audio, 44100, wiener_iterations=1)
    numpy.testing.assert_allclose(filtered + accompaniment, audio, rtol=0, atol=1e-6)
    assert numpy.abs(filtered - plain).max() > 1e-3


# --- finding the runs -----------------------------------------------------------------------

def test_without_options_the_last_training_of_the_work_folder_is_used(tmp_path, capsys):
    config = tiny_config()
    settings = StftSettings.from_config(config["stft"])
    work = tmp_path / "work"
    older = Workspace(work, config)
    newer = Workspace(work, load_profile(str(PROFILE), ["train.batch_size=3"]))
    assert older.runs_dir != newer.runs_dir
    save_run(older.run_dir("sf", 0), identity_model("sf", settings.n_freq), config, fitted_scaler(settings))
    model = save_run(newer.run_dir("dae", 0), identity_model("dae", settings.n_freq), newer.config,
                     fitted_scaler(settings)) / FINAL_MODEL
    os.utime(model, (model.stat().st_atime, model.stat().st_mtime + 10))
    source = tmp_path / "song.wav"
    soundfile.write(source, noise(0.3, channels=2), 44100)
    code = main(["separate", str(source), "--workdir", str(work), "--out", str(tmp_path / "out"), "--quiet"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert f"using {newer.run_dir('dae', 0)}" in out and "newest training" in out
    code = main(["separate", str(source), "--workdir", str(work), "--out", str(tmp_path / "out"), "--quiet",
                 "--kind", "sf"])
    assert code == 2  # the newest training has no sf run
    assert "no finished sf run" in capsys.readouterr().err
    assert latest_runs(work) == newer.runs_dir
    assert latest_runs(tmp_path / "empty") is None


def test_run_accepts_a_training_folder_and_a_report_folder(tmp_path):
    config = tiny_config()
    settings = StftSettings.from_config(config["stft"])
    ws = Workspace(tmp_path, config)
    for run in (1, 0):
        save_run(ws.run_dir("mss-dae", run), identity_model("dae", settings.n_freq), config, fitted_scaler(settings))
    save_run(ws.run_dir("sf", 2), identity_model("sf", settings.n_freq), config, fitted_scaler(settings))
    first_kind = [k for k in config["train"]["kinds"] if k in ("sf", "mss-dae")][0]
    first = {"sf": ws.run_dir("sf", 2), "mss-dae": ws.run_dir("mss-dae", 0)}
    assert resolve_run(ws.runs_dir) == first[first_kind]
    assert resolve_run(ws.runs_dir, "mss-dae") == ws.run_dir("mss-dae", 0)
    assert resolve_run(ws.run_dir("sf", 2)) == ws.run_dir("sf", 2)
    report = tmp_path / "results" / "tiny-0123"
    report.mkdir(parents=True)
    (report / "metadata.json").write_text(json.dumps({"profile": ws.profile, "config": config}))
    assert resolve_run(report, "sf") == ws.run_dir("sf", 2)
    (tmp_path / "results" / "tiny-latest.txt").write_text("tiny-0123\n")
    assert resolve_run(tmp_path / "results" / "tiny-latest.txt", "mss-dae") == ws.run_dir("mss-dae", 0)
    with pytest.raises(UserError, match="no such folder"):
        resolve_run(tmp_path / "nowhere")


# --- disk failures --------------------------------------------------------------------------

def test_full_disk_is_one_line_with_status_74_and_no_file(identity_run, tmp_path):
    """A write beyond the file size limit (EFBIG, as a full disk's ENOSPC)
    ends in one line and exit status 74, no traceback, no file left."""
    source = tmp_path / "song.wav"
    soundfile.write(source, noise(0.5, channels=2), 44100)
    out = tmp_path / "out"
    script = ("import resource, signal, sys\n"
              "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
              "resource.setrlimit(resource.RLIMIT_FSIZE, (20000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))\n"
              "from nca_np.cli import main\n"
              f"sys.exit(main(['separate', {str(source)!r}, '--run', {str(identity_run)!r}, '--out', {str(out)!r},"
              "'--quiet']))\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1])))
    assert result.returncode == 74, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr and "cffi" not in result.stderr, result.stderr
    assert str(out / "song" / "vocals.wav") in lines[0] and "ulimit -f" in lines[0]
    assert "choose another --out" in lines[0] and "--workdir" not in lines[0]
    assert files_under(out) == []


def test_an_unwritable_out_folder_names_the_out_option(identity_run, tmp_path, capsys):
    """The advice names the option that chose the failing folder: --out, not --workdir."""
    source = tmp_path / "song.wav"
    soundfile.write(source, noise(0.2), 44100)
    (tmp_path / "a-file").write_text("")
    code, out, err = run_cli(capsys, source, "--run", identity_run, "--out", tmp_path / "a-file" / "out")
    assert code == 74, err
    line, = err.strip().splitlines()
    assert str(tmp_path / "a-file") in line and "is a file, not a folder" in line
    assert "choose another --out" in line and "--workdir" not in line


def test_temporaries_of_a_killed_run_are_removed(identity_run, tmp_path, capsys):
    source = tmp_path / "song.wav"
    soundfile.write(source, noise(0.2), 44100)
    folder = tmp_path / "out" / "song"
    folder.mkdir(parents=True)
    dead = folder / f".vocals.wav.{2**31 - 1}@{socket.gethostname()}.tmp"  # no such process
    dead.write_bytes(b"half a file")
    code, out, err = run_cli(capsys, source, "--run", identity_run, "--out", tmp_path / "out")
    assert code == 0, err
    assert not dead.exists() and "removed 1 temporary file" in out
    assert [p.name for p in files_under(tmp_path / "out")] == ["accompaniment.wav", "vocals.wav"]


def test_figure_is_written_beside_the_outputs(identity_run, tmp_path):
    soundfile.write(tmp_path / "mixture.wav", noise(0.3, channels=2), 44100)
    soundfile.write(tmp_path / "vocals.wav", noise(0.3, channels=2, seed=9), 44100)
    options = Options(figure=True)
    (folder,) = separate_files([tmp_path / "mixture.wav"], Separator.from_run(identity_run), tmp_path / "out",
                               options=options, log=None)
    assert (folder / "spectrograms.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert true_vocals_of(tmp_path / "mixture.wav", 44100, int(0.3 * 44100)) is not None
