"""Tiny MUSDB18-HQ trees for tests, with knobs for each kind of bad input.

A track is five short wav files (mixture = vocals + drums + bass + other)
of deterministic, band-limited noise and tones, so their spectra are not
degenerate. Everything is written under the folder the test passes in
(``tmp_path``).
"""

from __future__ import annotations

from pathlib import Path

import numpy
import soundfile

SOURCES = ("vocals", "drums", "bass", "other")
RATE = 44100


def track_signals(seconds: float, *, seed: int, sample_rate: int = RATE, channels: int = 2) -> dict:
    """``{name: (n, channels) float32}`` for the four sources and their sum, the mixture."""
    rng = numpy.random.default_rng(seed)
    n = int(round(seconds * sample_rate))
    time = numpy.arange(n) / sample_rate
    signals = {}
    for index, name in enumerate(SOURCES):
        tone = numpy.sin(2 * numpy.pi * (110.0 * (index + 1) + 20.0 * rng.random()) * time)
        envelope = 0.5 + 0.5 * numpy.sin(2 * numpy.pi * (0.5 + index) * time + rng.random() * 6.0)
        noise = rng.standard_normal((n, channels))
        pan = numpy.linspace(0.6, 1.0, channels)
        signals[name] = (0.1 * (tone * envelope)[:, None] * pan + 0.02 * noise).astype(numpy.float32)
    signals["mixture"] = sum(signals[name] for name in SOURCES).astype(numpy.float32)
    return signals


def write_track(folder, *, seconds: float = 1.0, seed: int = 0, sample_rate: int = RATE, channels: int = 2,
                omit=(), silent=(), lengths=None, rates=None) -> Path:
    """Write one MUSDB18-HQ track folder.

    Args:
        folder: the track folder to create.
        seconds, seed, sample_rate, channels: the audio.
        omit: names ("vocals", …) whose file is not written.
        silent: names whose file is all zeros.
        lengths: {name: n_samples} to cut a file short.
        rates: {name: Hz} to write a file with another header rate.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    signals = track_signals(seconds, seed=seed, sample_rate=sample_rate, channels=channels)
    for name, audio in signals.items():
        if name in omit:
            continue
        if name in silent:
            audio = numpy.zeros_like(audio)
        if lengths and name in lengths:
            audio = audio[: lengths[name]]
        rate = (rates or {}).get(name, sample_rate)
        soundfile.write(str(folder / f"{name}.wav"), audio, rate, subtype="FLOAT")
    return folder


def write_tree(root, *, train=("Alpha - One", "Beta - Two"), test=("Gamma - Three",), seconds: float = 1.0,
               test_seconds: float | None = None, **track_options) -> Path:
    """Write a MUSDB18-HQ tree ``root/train/<name>/…`` and ``root/test/<name>/…``.

    Every track gets its own seed (its position in train + test), so tracks differ.
    """
    root = Path(root)
    seed = 0
    for subset, names, length in (("train", train, seconds), ("test", test, test_seconds or seconds)):
        (root / subset).mkdir(parents=True, exist_ok=True)
        for name in names:
            write_track(root / subset / name, seconds=length, seed=seed, **track_options)
            seed += 1
    return root


def truncate(path, keep_bytes: int) -> Path:
    """Cut a file down to its first ``keep_bytes`` bytes (a damaged download)."""
    path = Path(path)
    data = path.read_bytes()
    path.write_bytes(data[:keep_bytes])
    return path


def copy_example_stem(folder, name: str = "Example - Song") -> Path:
    """Copy stempeg's bundled example ``.stem.mp4`` (about 6 s) into ``folder``."""
    import shutil

    import stempeg

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{name}.stem.mp4"
    shutil.copyfile(stempeg.example_stem_path(), target)
    return target
