"""The built-in synthetic corpus: small, seeded, music-like multitracks.

:func:`generate_corpus` writes a tree in the MUSDB18-HQ layout,
``root/{train,test}/<track name>/{mixture,vocals,drums,bass,other}.wav``
(16-bit PCM, stereo), that the rest of the pipeline reads like MUSDB18.

Each track is a short song in a random key and tempo over a four-chord
progression, with an intro, sung phrases separated by rests, and sometimes a
breakdown without drums:

- vocals: a sung melody (f0 about 150-600 Hz) with glides between notes and
  5-6 Hz vibrato; harmonics shaped by vowel formants that move between
  /a/, /e/, /i/, /o/, /u/; a little breath noise; silent between phrases;
- bass: decaying harmonic notes at 40-150 Hz on the chord roots and fifths;
- drums: kick (pitch-swept sine), snare (tone and band-passed noise) and
  hi-hat (high-passed noise bursts) on the tempo grid;
- other: saw-like chords with fundamentals in 200-1000 Hz, following the
  same progression, so their harmonics overlap the voice's.

The mixture is exactly the sum of the written stems: each stem is quantised
to 16 bits and the mixture's integers are the sum of the stems' integers;
all stems of a track share one gain chosen so that no file clips.

Every random choice comes from a ``numpy.random.Generator`` derived from
``(seed, subset, track index)``, so a track does not depend on the others:
the same seed gives byte-identical files, and an interrupted generation
resumes by regenerating exactly the tracks that are incomplete.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy
import scipy.signal

from .. import backend
from ..atomic import atomic_open, is_stale_temporary
from ..audio import audio_module
from ..errors import ConfigError

STEMS = ("vocals", "drums", "bass", "other")
FILES = ("mixture",) + STEMS
SUBSETS = ("train", "test")
PEAK = 0.85  # the loudest of mixture and stems after the track's gain
_PCM_SCALE = 32767
_CONTROL_HOP = 64  # samples between control-rate values (envelopes, f0, formants)
_CHUNK = 64 * 1024  # samples per block of additive synthesis

_SCALE = numpy.array([0, 2, 4, 5, 7, 9, 11])  # major scale, semitones
_PROGRESSIONS = ((0, 4, 5, 3), (5, 3, 0, 4), (0, 5, 3, 4), (1, 4, 0, 5), (0, 3, 4, 3))
_BASS_PATTERNS = (  # onsets in eighths of a 4/4 bar
    (0, 3, 4, 6), (0, 2, 4, 6), (0, 3, 5, 6), (0, 4, 5, 7),
)
# Vowel formants (Hz) and relative gains, adult averages (Peterson & Barney).
_VOWELS = {
    "a": ((730.0, 1090.0, 2440.0), (1.0, 0.5, 0.2)),
    "e": ((530.0, 1840.0, 2480.0), (1.0, 0.45, 0.25)),
    "i": ((270.0, 2290.0, 3010.0), (1.0, 0.3, 0.25)),
    "o": ((570.0, 840.0, 2410.0), (1.0, 0.6, 0.1)),
    "u": ((300.0, 870.0, 2240.0), (1.0, 0.35, 0.08)),
}
_FORMANT_BANDWIDTHS = numpy.array([90.0, 110.0, 170.0])
_SUBSET_CODES = {"train": 0, "test": 1}


def track_name(subset: str, index: int) -> str:
    """Name of track ``index`` (0-based) of ``subset``: "Synth 001 - Train", …"""
    return f"Synth {index + 1:03d} - {subset.capitalize()}"


def generate_corpus(
    root,
    *,
    n_train: int = 4,
    n_test: int = 2,
    seconds: float = 20.0,
    test_seconds: float = 35.0,
    seed: int = 0,
    sample_rate: int = 44100,
) -> Path:
    """Write the synthetic corpus in the MUSDB18-HQ layout.

    A track whose five files all exist with the expected length, rate and
    channel count is left alone; any other track is (re)generated whole, so
    an interrupted run resumes. Delete the tree to change the seed (a
    changed seed is not detected).

    Args:
        root: folder to write into (created).
        n_train: number of training tracks.
        n_test: number of test tracks.
        seconds: length of each training track (below 30 s a track is
            "shorter than the excerpt" and is used whole).
        test_seconds: length of each test track (above 30 s the
            activation-confidence excerpt is selected from it).
        seed: master seed (non-negative integer).
        sample_rate: Hz.

    Returns:
        ``root`` as a Path.
    """
    _validate(n_train, n_test, seconds, test_seconds, seed, sample_rate)
    root = Path(root)
    for subset, count, length in (("train", n_train, seconds), ("test", n_test, test_seconds)):
        n_samples = int(round(length * sample_rate))
        for index in range(count):
            folder = root / subset / track_name(subset, index)
            if _is_complete(folder, n_samples, sample_rate):
                continue
            stems = synthesize_track(_track_rng(seed, subset, index), n_samples, sample_rate)
            _write_track(folder, stems, sample_rate)
    return root


def _validate(n_train, n_test, seconds, test_seconds, seed, sample_rate):
    for label, value in (("n_train", n_train), ("n_test", n_test), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, (int, numpy.integer)) or value < 0:
            raise ConfigError(f"synthetic corpus: {label} must be a non-negative integer, got {value!r}")
    for label, value in (("seconds", seconds), ("test_seconds", test_seconds)):
        if not (isinstance(value, (int, float)) and 2.0 <= value <= 3600.0):
            raise ConfigError(f"synthetic corpus: {label} must be between 2 and 3600 seconds, got {value!r}")
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, numpy.integer)) or sample_rate < 16000:
        raise ConfigError(f"synthetic corpus: sample_rate must be an integer of at least 16000 Hz, got {sample_rate!r}")


def _track_rng(seed: int, subset: str, index: int) -> numpy.random.Generator:
    """The generator of one track, independent of every other track."""
    sequence = numpy.random.SeedSequence([seed, _SUBSET_CODES[subset], index])
    return backend.rng(int(sequence.generate_state(1, numpy.uint64)[0]))


def _is_complete(folder: Path, n_samples: int, sample_rate: int) -> bool:
    for name in FILES:
        path = folder / f"{name}.wav"
        if not path.is_file():
            return False
        try:
            info = audio_module("soundfile").info(str(path))
        except RuntimeError:
            return False
        if (info.frames, info.samplerate, info.channels) != (n_samples, sample_rate, 2):
            return False
    return True


def _write_track(folder: Path, stems: dict, sample_rate: int) -> None:
    """Quantise the stems, sum their integers into the mixture, write atomically
    (each write creates the folder; one that fails leaves no empty folder)."""
    for stale in folder.glob(".*.tmp"):
        if is_stale_temporary(stale):  # another process writing this corpus keeps its own
            stale.unlink(missing_ok=True)
    integers = {name: numpy.round(stems[name] * _PCM_SCALE).astype(numpy.int32) for name in STEMS}
    mixture = sum(integers[name] for name in STEMS)
    if numpy.abs(mixture).max() > _PCM_SCALE:
        raise AssertionError("mixture would clip: the track gain is wrong")
    integers["mixture"] = mixture
    for name in FILES:
        _write_wav(folder / f"{name}.wav", integers[name].astype(numpy.int16), sample_rate)


def _write_wav(path: Path, samples: numpy.ndarray, sample_rate: int) -> None:
    # Encoded in memory first: soundfile swallows the OSError of a failed
    # write into a file object (a full disk) and fails with an assertion.
    encoded = io.BytesIO()
    audio_module("soundfile").write(encoded, samples, sample_rate, subtype="PCM_16", format="WAV")
    with atomic_open(path, "wb") as stream:
        stream.write(encoded.getbuffer())


# --------------------------------------------------------------------------
# The score: tempo, key, chords, sections, notes.


def _score(rng: numpy.random.Generator, seconds: float) -> dict:
    """All musical decisions of one track, in seconds and MIDI numbers."""
    beat = 60.0 / rng.uniform(88.0, 132.0)
    bar = 4 * beat
    n_bars = int(math.ceil(seconds / bar)) + 1
    key = int(rng.integers(0, 12))
    progression = _PROGRESSIONS[int(rng.integers(len(_PROGRESSIONS)))]
    degrees = [progression[b % 4] for b in range(n_bars)]
    drums_on = numpy.ones(n_bars, dtype=bool)
    drums_on[: 1 + int(rng.integers(0, 2))] = False  # intro without drums
    if n_bars >= 10 and rng.random() < 0.6:  # a two-bar breakdown
        start = int(rng.integers(6, n_bars - 3))
        drums_on[start : start + 2] = False
    return {
        "beat": beat,
        "bar": bar,
        "n_bars": n_bars,
        "key": key,
        "degrees": degrees,
        "drums_on": drums_on,
        "bass_from_bar": 1,
        "voice_from_bar": 2,
    }


def _pitch_class(key: int, degree: int) -> int:
    return (key + int(_SCALE[degree % 7])) % 12


def _chord_pitch_classes(key: int, degree: int) -> list[int]:
    return [_pitch_class(key, degree + step) for step in (0, 2, 4)]


def _melody(rng: numpy.random.Generator, score: dict) -> tuple[numpy.ndarray, numpy.ndarray, numpy.ndarray, list[str]]:
    """Sung notes: (onsets_s, durations_s, midi, vowels); phrases with rests between."""
    beat, key = score["beat"], score["key"]
    centre = rng.uniform(57.0, 66.0)
    low, high = max(51, int(centre) - 8), min(74, int(centre) + 8)
    allowed = numpy.array([m for m in range(low, high + 1) if (m - key) % 12 in _SCALE])
    onsets, durations, pitches, vowels = [], [], [], []
    bar_index = score["voice_from_bar"]
    position = int(numpy.argmin(numpy.abs(allowed - centre)))
    while bar_index < score["n_bars"]:
        phrase_bars = int(rng.choice([2, 2, 3, 4]))
        time = bar_index * score["bar"] + beat * float(rng.choice([0.0, 0.5, 1.0]))
        phrase_end = (bar_index + phrase_bars) * score["bar"] - beat * float(rng.choice([0.5, 1.0]))
        while time < phrase_end - 0.25 * beat:
            length = beat * float(rng.choice([0.5, 1.0, 1.0, 1.5, 2.0]))
            length = min(length, phrase_end - time)
            chord = _chord_pitch_classes(key, score["degrees"][min(int(time // score["bar"]), score["n_bars"] - 1)])
            step = int(rng.choice([-2, -1, -1, 0, 1, 1, 2]))
            position = int(numpy.clip(position + step, 0, allowed.size - 1))
            if rng.random() < 0.5:  # lean towards a chord tone on strong notes
                tones = numpy.flatnonzero(numpy.isin(allowed % 12, chord))
                position = int(tones[numpy.argmin(numpy.abs(tones - position))])
            onsets.append(time)
            durations.append(length)
            pitches.append(float(allowed[position]))
            vowels.append(str(rng.choice(list(_VOWELS))))
            time += length
        bar_index += phrase_bars + int(rng.choice([1, 1, 2]))  # then a rest of a bar or two
    return numpy.array(onsets), numpy.array(durations), numpy.array(pitches), vowels


# --------------------------------------------------------------------------
# Signal helpers.


def _one_pole(values: numpy.ndarray, time_constant: float, rate: float) -> numpy.ndarray:
    """Smooth along the last axis with ``y += a (x − y)``, starting at ``x[0]``."""
    alpha = 1.0 - math.exp(-1.0 / (time_constant * rate))
    initial = (1.0 - alpha) * numpy.asarray(values)[..., :1]
    smoothed, _ = scipy.signal.lfilter([alpha], [1.0, alpha - 1.0], values, axis=-1, zi=initial)
    return smoothed


def _midi_to_hz(midi):
    return 440.0 * 2.0 ** ((midi - 69.0) / 12.0)


def _wrapped_phase(frequency: numpy.ndarray, sample_rate: int) -> numpy.ndarray:
    """Running phase in cycles of an audio-rate frequency track, wrapped to [0, 1), float64."""
    cycles = numpy.cumsum(frequency / sample_rate)
    return cycles - numpy.floor(cycles)


def _additive(f0_control: numpy.ndarray, gains: numpy.ndarray, n_samples: int, sample_rate: int) -> numpy.ndarray:
    """Sum of harmonics ``sum_h g_h(t) sin(h φ(t))``; f0 and gains at control rate.

    Args:
        f0_control: ``(n_control,)`` Hz, one value every ``_CONTROL_HOP`` samples.
        gains: ``(H, n_control)`` amplitude of harmonic ``h = 1..H``.

    Returns:
        ``(n_samples,)`` float32.
    """
    positions = numpy.arange(f0_control.shape[0]) * _CONTROL_HOP
    f0 = numpy.interp(numpy.arange(n_samples), positions, f0_control)
    phase = (2.0 * math.pi * _wrapped_phase(f0, sample_rate)).astype(numpy.float32)
    harmonics = numpy.arange(1, gains.shape[0] + 1, dtype=numpy.float32)[:, None]
    ramp = (numpy.arange(_CONTROL_HOP, dtype=numpy.float32) / _CONTROL_HOP)[None, None, :]
    gains = gains.astype(numpy.float32)
    output = numpy.zeros(n_samples, dtype=numpy.float32)
    for start in range(0, n_samples, _CHUNK):
        stop = min(start + _CHUNK, n_samples)
        first, blocks = start // _CONTROL_HOP, -(-(stop - start) // _CONTROL_HOP)
        left = gains[:, first : first + blocks]
        right = gains[:, first + 1 : first + blocks + 1]
        interpolated = (left[:, :, None] + (right - left)[:, :, None] * ramp).reshape(gains.shape[0], -1)
        waves = numpy.sin(harmonics * phase[None, start:stop])
        output[start:stop] = numpy.einsum("hc,hc->c", interpolated[:, : stop - start], waves)
    return output


def _control_times(n_samples: int, sample_rate: int) -> numpy.ndarray:
    """Times of the control-rate values, covering the signal plus one hop."""
    return numpy.arange(n_samples // _CONTROL_HOP + 2) * (_CONTROL_HOP / sample_rate)


def _note_index(onsets: numpy.ndarray, times: numpy.ndarray) -> numpy.ndarray:
    """Index of the last note started at each time (−1 before the first)."""
    return numpy.searchsorted(onsets, times, side="right") - 1


def _pan(mono: numpy.ndarray, position: float) -> numpy.ndarray:
    """Constant-power pan, position in [−1, 1]: ``(n,)`` → ``(n, 2)`` float64."""
    angle = (position + 1.0) * math.pi / 4.0
    return numpy.stack([mono * math.cos(angle), mono * math.sin(angle)], axis=1).astype(numpy.float64)


def _rms(signal: numpy.ndarray) -> float:
    return float(numpy.sqrt(numpy.mean(numpy.square(signal, dtype=numpy.float64))))


def _reverb(rng: numpy.random.Generator, stereo: numpy.ndarray, sample_rate: int, wet: float) -> numpy.ndarray:
    """A short decaying-noise room (0.4 s), different per channel, added to the dry signal."""
    length = int(0.4 * sample_rate)
    decay = numpy.exp(-numpy.arange(length) / (0.07 * sample_rate))
    result = stereo.copy()
    for channel in range(2):
        response = rng.standard_normal(length) * decay
        response *= wet / numpy.sqrt(numpy.sum(response * response))
        result[:, channel] += scipy.signal.oaconvolve(stereo[:, channel], response)[: stereo.shape[0]]
    return result


# --------------------------------------------------------------------------
# The four sources.


def _vocals(rng: numpy.random.Generator, score: dict, n_samples: int, sample_rate: int) -> numpy.ndarray:
    """Sung melody with glides, vibrato, moving vowel formants and breath: ``(n, 2)``."""
    onsets, durations, pitches, vowels = _melody(rng, score)
    if onsets.size == 0:
        return numpy.zeros((n_samples, 2))
    control_rate = sample_rate / _CONTROL_HOP
    times = _control_times(n_samples, sample_rate)
    current = _note_index(onsets, times)
    started = numpy.maximum(current, 0)
    sounding = (current >= 0) & (times < onsets[started] + 0.95 * durations[started])
    upcoming = numpy.minimum(numpy.searchsorted(onsets, times, side="right"), onsets.size - 1)
    # In a rest the pitch already moves to the next note, so phrases start on pitch.
    target = numpy.where(sounding, pitches[started], pitches[upcoming])
    pitch = _one_pole(target, 0.04, control_rate)
    since_onset = numpy.where(sounding, times - onsets[started], 0.0)
    vibrato_depth = rng.uniform(0.25, 0.55) * numpy.clip((since_onset - 0.12) / 0.3, 0.0, 1.0)
    vibrato = numpy.sin(2.0 * math.pi * rng.uniform(5.0, 6.0) * times + rng.uniform(0.0, 2.0 * math.pi))
    drift = _one_pole(rng.standard_normal(times.size), 0.15, control_rate) * 1.5  # ≈ 0.1 semitone
    f0 = _midi_to_hz(pitch + vibrato_depth * vibrato + drift)

    loudness = rng.uniform(0.7, 1.0, size=onsets.size)
    amplitude = _one_pole(numpy.where(sounding, loudness[started], 0.0), 0.03, control_rate)
    amplitude *= 1.0 + 0.06 * vibrato_depth * vibrato  # a little tremolo with the vibrato
    formant_targets = numpy.array([_VOWELS[vowel][0] for vowel in vowels])[started]
    formant_gains = numpy.array([_VOWELS[vowel][1] for vowel in vowels])[started]
    formants = _one_pole(formant_targets.T, 0.05, control_rate)  # (3, n_control)
    weights = _one_pole(formant_gains.T, 0.05, control_rate)

    n_harmonics = int(5500.0 // 150.0)
    frequencies = numpy.arange(1, n_harmonics + 1)[:, None] * f0[None, :]  # (H, n_control)
    offsets = (frequencies[None] - formants[:, None, :]) / (_FORMANT_BANDWIDTHS[:, None, None] / 2.0)
    envelope = numpy.sum(weights[:, None, :] / (1.0 + offsets**2), axis=0) + 0.02
    source = numpy.arange(1, n_harmonics + 1)[:, None] ** -0.8
    audible = frequencies < min(5500.0, 0.45 * sample_rate)
    gains = envelope * source * audible * amplitude[None, :]
    voiced = _additive(f0, gains, n_samples, sample_rate).astype(numpy.float64)
    voiced /= max(_rms(voiced), 1e-12)

    breath = _breath(rng, onsets, amplitude, n_samples, sample_rate)
    dry = _pan(voiced + breath, 0.0)
    return _reverb(rng, dry, sample_rate, wet=0.25)


def _breath(rng, onsets, amplitude_control, n_samples, sample_rate) -> numpy.ndarray:
    """Band-passed noise under the voice, and a short inhale before each phrase."""
    sos = scipy.signal.butter(2, [1500.0, 6000.0], btype="bandpass", fs=sample_rate, output="sos")
    noise = scipy.signal.sosfilt(sos, rng.standard_normal(n_samples))
    noise /= max(_rms(noise), 1e-12)
    positions = numpy.arange(amplitude_control.shape[0]) * _CONTROL_HOP
    envelope = 0.05 * numpy.interp(numpy.arange(n_samples), positions, amplitude_control)
    gaps = numpy.diff(onsets, prepend=-numpy.inf)
    inhale_length = int(0.25 * sample_rate)
    shape = 0.12 * numpy.hanning(inhale_length)
    for onset in onsets[gaps > 0.6]:  # phrase starts: notes after a pause
        stop = min(int(onset * sample_rate), n_samples)
        start = max(stop - inhale_length, 0)
        envelope[start:stop] += shape[inhale_length - (stop - start) :]
    return noise * envelope


def _bass(rng: numpy.random.Generator, score: dict, n_samples: int, sample_rate: int) -> numpy.ndarray:
    """Decaying harmonic notes on roots and fifths, 40-150 Hz: ``(n, 2)``."""
    eighth = score["beat"] / 2.0
    pattern = _BASS_PATTERNS[int(rng.integers(len(_BASS_PATTERNS)))]
    onsets, midis = [], []
    for bar_index in range(score["bass_from_bar"], score["n_bars"]):
        root = _pitch_class(score["key"], score["degrees"][bar_index])
        root_midi = 31 + (root - 31) % 12  # MIDI 31-42: 49-92 Hz
        for slot in pattern:
            onsets.append(bar_index * score["bar"] + slot * eighth)
            midis.append(root_midi + (7 if rng.random() < 0.2 else 0))
    onsets = numpy.array(onsets)
    midis = numpy.array(midis, dtype=numpy.float64)
    times = _control_times(n_samples, sample_rate)
    current = _note_index(onsets, times)
    started = numpy.maximum(current, 0)
    next_onset = numpy.append(onsets[1:], numpy.inf)[started]
    since = times - onsets[started]
    gate = (current >= 0) * numpy.clip((next_onset - 0.02 - times) / 0.02, 0.0, 1.0)
    attack = numpy.clip(since / 0.006, 0.0, 1.0)
    velocity = rng.uniform(0.75, 1.0, size=onsets.size)[started]
    harmonics = numpy.arange(1, 11)[:, None]
    decay = numpy.exp(-since[None, :] * (1.0 + 0.35 * (harmonics - 1)) / rng.uniform(0.35, 0.6))
    gains = harmonics**-1.3 * decay * (gate * attack * velocity)[None, :]
    signal = _additive(_midi_to_hz(midis[started]), gains, n_samples, sample_rate).astype(numpy.float64)
    return _pan(signal / max(_rms(signal), 1e-12), 0.0)


def _drum_sounds(rng: numpy.random.Generator, sample_rate: int) -> dict:
    """One-shot kick, snare variants and hi-hat variants (float64)."""
    def seconds(duration):
        return numpy.arange(int(duration * sample_rate)) / sample_rate

    t = seconds(0.4)
    kick_frequency = rng.uniform(42.0, 55.0) + 110.0 * numpy.exp(-t / 0.03)
    kick = numpy.sin(2.0 * math.pi * numpy.cumsum(kick_frequency) / sample_rate) * numpy.exp(-t / 0.13)
    t = seconds(0.3)
    snare_band = scipy.signal.butter(2, [1000.0, 6000.0], btype="bandpass", fs=sample_rate, output="sos")
    tone = 0.5 * numpy.sin(2.0 * math.pi * rng.uniform(170.0, 210.0) * t) * numpy.exp(-t / 0.05)
    snares = [
        tone + scipy.signal.sosfilt(snare_band, rng.standard_normal(t.size)) * numpy.exp(-t / 0.1)
        for _ in range(4)
    ]
    t = seconds(0.12)
    hat_band = scipy.signal.butter(4, 7000.0, btype="highpass", fs=sample_rate, output="sos")
    hats = [scipy.signal.sosfilt(hat_band, rng.standard_normal(t.size)) * numpy.exp(-t / 0.025) for _ in range(4)]
    return {"kick": kick, "snares": snares, "hats": hats}


def _place(track: numpy.ndarray, sound: numpy.ndarray, time: float, gain: float, sample_rate: int) -> None:
    start = int(round(time * sample_rate))
    if start >= track.shape[0]:
        return
    stop = min(start + sound.shape[0], track.shape[0])
    track[start:stop] += gain * sound[: stop - start]


def _drums(rng: numpy.random.Generator, score: dict, n_samples: int, sample_rate: int) -> numpy.ndarray:
    """Kick on 1 and 3, snare on 2 and 4, hi-hat on eighths (or sixteenths): ``(n, 2)``."""
    sounds = _drum_sounds(rng, sample_rate)
    kick_snare = numpy.zeros(n_samples)
    hats = numpy.zeros(n_samples)
    beat = score["beat"]
    hat_step = 0.5 if rng.random() < 0.7 else 0.25
    for bar_index in numpy.flatnonzero(score["drums_on"]):
        bar_start = bar_index * score["bar"]
        for kick_beat in (0.0, 2.0) + ((2.5,) if rng.random() < 0.4 else ()):
            _place(kick_snare, sounds["kick"], bar_start + kick_beat * beat, rng.uniform(0.85, 1.0), sample_rate)
        for snare_beat in (1.0, 3.0):
            snare = sounds["snares"][int(rng.integers(4))]
            _place(kick_snare, snare, bar_start + snare_beat * beat, 0.45 * rng.uniform(0.8, 1.0), sample_rate)
        for step in numpy.arange(0.0, 4.0, hat_step):
            hat = sounds["hats"][int(rng.integers(4))]
            accent = 1.0 if step % 1.0 == 0.0 else 0.6
            _place(hats, hat, bar_start + step * beat, 0.35 * accent * rng.uniform(0.7, 1.0), sample_rate)
    stereo = _pan(kick_snare, 0.0) + _pan(hats, 0.35)
    return stereo / max(_rms(stereo), 1e-12)


def _saw(frequency: numpy.ndarray, sample_rate: int) -> numpy.ndarray:
    """Band-limited sawtooth (PolyBLEP) of an audio-rate frequency track, float64."""
    phase = _wrapped_phase(frequency, sample_rate)
    step = frequency / sample_rate
    wave = 2.0 * phase - 1.0
    rising = phase < step
    x = phase[rising] / step[rising]
    wave[rising] -= 2.0 * x - x * x - 1.0
    falling = phase > 1.0 - step
    x = (phase[falling] - 1.0) / step[falling]
    wave[falling] -= x * x + 2.0 * x + 1.0
    return wave


def _other(rng: numpy.random.Generator, score: dict, n_samples: int, sample_rate: int) -> numpy.ndarray:
    """Saw-organ chords, fundamentals 200-1000 Hz, pads or eighth-note stabs: ``(n, 2)``."""
    times = numpy.arange(n_samples) / sample_rate
    bar_of_sample = numpy.minimum((times // score["bar"]).astype(int), score["n_bars"] - 1)
    voicings = []
    for degree in score["degrees"]:
        classes = _chord_pitch_classes(score["key"], degree)
        notes = [60 + (pc - 60) % 12 for pc in classes]  # MIDI 60-71: 262-494 Hz
        notes.append(notes[0] + 12)  # the root an octave up, up to 988 Hz
        voicings.append(notes)
    voicings = numpy.array(voicings, dtype=numpy.float64)  # (n_bars, 4)
    since_bar = times - bar_of_sample * score["bar"]
    if rng.random() < 0.5:  # sustained pad
        envelope = numpy.clip(since_bar / 0.08, 0.0, 1.0) * numpy.clip((score["bar"] - since_bar) / 0.1, 0.0, 1.0)
    else:  # stabs on the eighths
        eighth = score["beat"] / 2.0
        since_stab = since_bar % eighth
        envelope = numpy.clip(since_stab / 0.005, 0.0, 1.0) * numpy.exp(-since_stab / (0.4 * eighth))
    chord = numpy.zeros(n_samples)
    for voice in range(voicings.shape[1]):
        for detune in (-0.08, 0.08):
            chord += _saw(_midi_to_hz(voicings[:, voice] + detune)[bar_of_sample], sample_rate)
    lowpass = scipy.signal.butter(2, rng.uniform(2500.0, 4500.0), fs=sample_rate, output="sos")
    chord = scipy.signal.sosfilt(lowpass, chord) * envelope
    stereo = _pan(chord, -0.3)
    stereo[:, 1] = 0.8 * stereo[:, 1] + 0.2 * numpy.roll(stereo[:, 0], int(0.012 * sample_rate))
    stereo = _reverb(rng, stereo, sample_rate, wet=0.2)
    return stereo / max(_rms(stereo), 1e-12)


# --------------------------------------------------------------------------
# One track.


def synthesize_track(rng: numpy.random.Generator, n_samples: int, sample_rate: int = 44100) -> dict:
    """The four stems of one track, scaled so that nothing clips after summing.

    Args:
        rng: the track's generator (consumed).
        n_samples: track length in samples.
        sample_rate: Hz.

    Returns:
        {"vocals", "drums", "bass", "other"}: ``(n_samples, 2)`` float64 each,
        with ``max |stem|`` and ``max |sum of stems|`` at most :data:`PEAK`.
    """
    score = _score(rng, n_samples / sample_rate)
    levels_db = {"vocals": 0.0, "drums": -2.0, "bass": -3.0, "other": -4.0}
    makers = {"vocals": _vocals, "drums": _drums, "bass": _bass, "other": _other}
    stems = {}
    for name in STEMS:
        gain = 10.0 ** ((levels_db[name] + rng.uniform(-2.0, 2.0)) / 20.0)
        stems[name] = gain * makers[name](rng, score, n_samples, sample_rate)
    mixture = sum(stems.values())
    # One gain for the whole track; leave room for the 16-bit rounding of four stems.
    loudest = max([numpy.abs(mixture).max()] + [numpy.abs(stem).max() for stem in stems.values()])
    scale = PEAK / max(loudest, 1e-12)
    return {name: stem * scale for name, stem in stems.items()}
