"""``nca-np separate``: blocks equal one pass, files of the input's length and
rate, an identity model gives the mixture back, bounded memory, clear errors."""

import os
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
from nca_np.features import Scaler, StftSettings, n_frames, stft_magnitude, to_mono
from nca_np.models import build_model, kind_names
from nca_np.errors import UserError
from nca_np.separate import Separator, block_plan, output_name, read_mixture, separate_files
from nca_np.train import FINAL_MODEL, save_state

PROFILE = Path(__file__).resolve().parent / "tiny_profile.toml"
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
    mixture = to_mono(soundfile.read(source, dtype="float32", always_2d=True)[0])
    written = {}
    for name in ("vocals", "accompaniment"):
        info = soundfile.info(folder / f"{name}.wav")
        assert (info.frames, info.samplerate, info.channels, info.subtype) == (audio.shape[0], rate, 1, "FLOAT")
        written[name] = soundfile.read(folder / f"{name}.wav", dtype="float32")[0]
    numpy.testing.assert_allclose(written["vocals"] + written["accompaniment"], mixture, rtol=0, atol=1e-6)
    resampled = [line for line in lines if "resample" in line]
    if rate == 44100:  # the identity model gives the mixture back exactly
        numpy.testing.assert_allclose(written["vocals"], mixture, rtol=0, atol=1e-5)
        assert not resampled
    else:  # the mixture there and back through scipy's polyphase resampler, which drops 22.05-24 kHz
        assert len(resampled) == 1 and "48000 Hz" in resampled[0] and "44100 Hz" in resampled[0]
        round_trip = scipy.signal.resample_poly(scipy.signal.resample_poly(mixture, 147, 160), 160, 147)
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
    numpy.testing.assert_allclose(mixture, stems[0].mean(axis=1), rtol=0, atol=1e-5)


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


def assert_one_clear_line(code, err, *needles):
    assert code == 2, err
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
    mixture = to_mono(soundfile.read(source, dtype="float32")[0])
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
    assert_one_clear_line(code, err, "cannot write to", "choose another --out folder")
    assert in_the_way.read_text() == "not a folder"
    if os.geteuid() != 0:  # root writes anywhere: permissions can only be tried as another user
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        code, _, err = run_cli(capsys, source, "--run", identity_run, "--out", locked)
        assert_one_clear_line(code, err, "cannot write to", "permission denied")
        assert files_under(locked) == []
