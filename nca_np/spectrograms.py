"""A figure for listening: spectrograms of a mixture and its vocal estimate.

``nca-np separate --figure`` writes ``spectrograms.png`` beside the outputs:
the log magnitude (dB, relative to the mixture's loudest point) of the
mixture, of the vocal estimate and, where the input comes with them
(MUSDB18), of the true vocals, over the first :data:`SECONDS` seconds, with
the run's STFT settings. matplotlib is
imported only when a figure is drawn (Agg, no pyplot).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy

from .atomic import atomic_open
from .features import StftSettings, stft_magnitude, to_mono

#: Seconds drawn: a figure of a whole song would show nothing legible.
SECONDS = 30.0
FLOOR_DB = -80.0


def log_magnitude(signal, settings: StftSettings, peak: float | None = None) -> numpy.ndarray:
    """``20 log10 |STFT|`` of a mono signal relative to ``peak`` (default:
    its own loudest point), floored at :data:`FLOOR_DB`; ``(F, frames)`` for drawing."""
    magnitude = stft_magnitude(numpy.asarray(signal, dtype=numpy.float32), settings).T
    if peak is None:
        peak = float(magnitude.max()) if magnitude.size else 0.0
    if peak <= 0:
        return numpy.full(magnitude.shape, FLOOR_DB, dtype=numpy.float32)
    return numpy.maximum(20 * numpy.log10(numpy.maximum(magnitude / peak, 1e-12)), FLOOR_DB)


def spectrogram_figure(path, mixture, vocals, sample_rate: int, settings: StftSettings, *, true_vocals=None,
                       title: str = "") -> Path:
    """Draw the spectrograms of ``mixture``, ``vocals`` (and ``true_vocals``) to ``path`` (PNG).

    Args:
        mixture, vocals, true_vocals: ``(n,)`` or ``(n, C)`` samples at
            ``sample_rate`` (channels averaged for the figure).
        settings: the STFT drawn (the run's; its hop sets the time axis).
    """
    from matplotlib.figure import Figure

    length = int(SECONDS * sample_rate)
    panels = [("mixture", mixture), ("vocal estimate", vocals)]
    if true_vocals is not None:
        panels.append(("true vocals", true_vocals))
    figure = Figure(figsize=(10, 2.6 * len(panels)), layout="constrained")
    axes = figure.subplots(len(panels), 1, sharex=True, sharey=True, squeeze=False)[:, 0]
    settings_here = dataclasses.replace(settings, sample_rate=sample_rate)
    # one reference level, the mixture's loudest point, so the panels compare
    peak = float(stft_magnitude(to_mono(numpy.asarray(mixture))[:length], settings_here).max())
    for ax, (label, signal) in zip(axes, panels):
        image = log_magnitude(to_mono(numpy.asarray(signal))[:length], settings_here, peak)
        extent = (0, image.shape[1] * settings.hop / sample_rate, 0, sample_rate / 2000)
        shown = ax.imshow(image, origin="lower", aspect="auto", extent=extent, vmin=FLOOR_DB, vmax=0,
                          cmap="magma", interpolation="nearest")
        ax.set_ylabel("kHz")
        ax.set_title(label, loc="left", fontsize=10)
    axes[-1].set_xlabel("seconds")
    figure.colorbar(shown, ax=list(axes), label="dB (re. the mixture's loudest point)")
    if title:
        figure.suptitle(title)
    with atomic_open(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=100)
    return Path(path)
