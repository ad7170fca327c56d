"""The report's figures: Figures 2–3, training loss, NCA convergence (docs/method.md#measures and docs/method.md#protocol).

:func:`write_figures` draws the PNGs of the report folder:

- ``figure2_linear_compositions.png``: the linear composition of each model;
- ``figure3_couplings.png``: the couplings of one segment, full and zoomed
  on the lowest bins, with the target V;
- ``training_loss.png``: the training loss per epoch of every run;
- ``nca_convergence.png``: the NCA loss per iteration over segments;
- ``nca_trajectories.png``: TOD-R and relative error of the NCA's ``C``
  at its checkpoints, beside the exact references' TOD-R.

The report (:mod:`nca_np.report`) validates the inputs first, so every
matrix here is a host NumPy array of a checked shape. Figures render with
Agg through :class:`matplotlib.figure.Figure`, without pyplot or any global
backend switch, so a caller's interactive backend is left alone.

Matrices follow the paper: rows are output frequencies, columns input
frequencies (``C x`` maps an input frame to an output frame); bin ``k`` lies
at ``k · sample_rate / n_fft`` Hz.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogFormatter, LogLocator, MaxNLocator, NullFormatter

from .. import metrics
from ..models import model_kind
from ..nca import get_strategy
from ..atomic import atomic_open

FIGURE_FILES = {
    "figure2": "figure2_linear_compositions.png",
    "figure3": "figure3_couplings.png",
    "training": "training_loss.png",
    "convergence": "nca_convergence.png",
    "trajectories": "nca_trajectories.png",
}
DPI = 120

#: Figure 3 zooms on the bins up to this frequency (at least MIN_ZOOM_BINS).
ZOOM_HZ = 1500.0
MIN_ZOOM_BINS = 8
#: Colour scales of whole matrices end at this percentile of |values|: a
#: dominant diagonal (1/F of the entries) then keeps its full colour and
#: visibly dominates, while a lone outlier cannot wash out the picture.
CLIP_PERCENTILE = 99.9
#: The zooms on the lowest bins end lower, so that the diagonal saturates
#: and the weaker off-diagonal structure near it becomes visible.
ZOOM_CLIP_PERCENTILE = 99.0
#: Spectra in Figure 3 are shown over this many dB below their peak.
DYNAMIC_RANGE_DB = 60.0
#: Matrices larger than this are shown as means over square blocks of bins
#: (about the panels' size in pixels), so the picture is a faithful average
#: rather than a resampling artefact that drops rows.
MAX_DISPLAY_BINS = 320


# ---------------------------------------------------------------- arrays


def block_mean(matrix: numpy.ndarray, max_bins: int = MAX_DISPLAY_BINS) -> tuple[numpy.ndarray, int]:
    """Means over square ``b × b`` blocks, with ``b`` the smallest factor
    that brings both sides to at most ``max_bins``.

    Args:
        matrix: (R, K) host array (float32 stays float32).

    Returns:
        ``(blocks, b)``: ``blocks`` of shape (ceil(R/b), ceil(K/b)), each the
        mean of the entries it covers (edge blocks cover fewer); ``b = 1``
        returns ``matrix`` itself.
    """
    factor = max(1, math.ceil(max(matrix.shape) / max_bins))
    if factor == 1:
        return matrix, 1
    rows, cols = (math.ceil(n / factor) for n in matrix.shape)
    padded = numpy.zeros((rows * factor, cols * factor), dtype=matrix.dtype)
    padded[:matrix.shape[0], :matrix.shape[1]] = matrix
    counts = numpy.zeros(padded.shape, dtype=matrix.dtype)
    counts[:matrix.shape[0], :matrix.shape[1]] = 1
    sums = padded.reshape(rows, factor, cols, factor).sum(axis=(1, 3))
    return sums / counts.reshape(rows, factor, cols, factor).sum(axis=(1, 3)), factor


def colour_limit(values: numpy.ndarray, percentile: float = CLIP_PERCENTILE) -> float:
    """The ``percentile``-th percentile of the finite |values| (1.0 if 0).

    Args:
        values: host array of any shape.
    """
    magnitudes = numpy.abs(values[numpy.isfinite(values)])
    if magnitudes.size == 0:
        return 1.0
    limit = float(numpy.percentile(magnitudes, percentile))
    return limit if limit > 0.0 else (float(magnitudes.max()) or 1.0)


def zoom_bins(n_freq: int, sample_rate: float, n_fft: int) -> int:
    """How many of the lowest bins Figure 3 zooms on: those up to
    :data:`ZOOM_HZ`, at least :data:`MIN_ZOOM_BINS`, at most ``n_freq``."""
    up_to_zoom = int(math.floor(ZOOM_HZ * n_fft / sample_rate)) + 1
    return min(n_freq, max(MIN_ZOOM_BINS, up_to_zoom))


def decibels(spectrum: numpy.ndarray,
             dynamic_range_db: float = DYNAMIC_RANGE_DB) -> tuple[numpy.ndarray, float]:
    """``20 log10`` of a non-negative (F, T) host spectrum, floored
    ``dynamic_range_db`` below its largest finite value (zeros, e.g. from a
    ReLU, sit at the floor).

    Returns:
        ``(levels, top)``: (F, T) levels in dB (the input's float dtype) and
        the largest level; an all-zero spectrum gives 0 dB everywhere.
    """
    finite = spectrum[numpy.isfinite(spectrum)]
    peak = float(finite.max()) if finite.size else 0.0
    if peak <= 0.0:
        return numpy.zeros_like(spectrum), 0.0
    floor = peak * 10.0 ** (-dynamic_range_db / 20.0)
    top = 20.0 * math.log10(peak)
    return 20.0 * numpy.log10(numpy.clip(spectrum, floor, peak)), top


def _positive(values) -> numpy.ndarray:
    """(N,) float64 host copy of N numbers (``None`` allowed), non-finite and
    non-positive values as NaN (they cannot be drawn on a log axis)."""
    array = numpy.array([math.nan if v is None else float(v) for v in values], dtype=numpy.float64)
    array[~(numpy.isfinite(array) & (array > 0.0))] = math.nan
    return array


def loss_quartiles(curves) -> numpy.ndarray:
    """Per iteration, the 25th, 50th and 75th percentiles over segments.

    Args:
        curves: one sequence of losses per segment (lengths may differ).

    Returns:
        (3, max length) float64 host array; NaN where no segment has a
        drawable (finite, positive) loss at that iteration.
    """
    length = max((len(c) for c in curves), default=0)
    stack = numpy.full((len(curves), length), math.nan)
    for row, curve in enumerate(curves):
        stack[row, :len(curve)] = _positive(curve)
    quartiles = numpy.full((3, length), math.nan)
    drawable = ~numpy.isnan(stack).all(axis=0)
    if drawable.any():
        quartiles[:, drawable] = numpy.nanpercentile(stack[:, drawable], [25.0, 50.0, 75.0], axis=0)
    return quartiles


def _run_curve(run) -> tuple[list[int], numpy.ndarray]:
    """(epochs, losses) of one training run's per-epoch records: E epoch
    numbers and an (E,) array with undrawable losses as NaN."""
    epochs = [int(record.get("epoch", position + 1)) for position, record in enumerate(run)]
    return epochs, _positive(record.get("loss") for record in run)


def _mean_by_epoch(curves) -> tuple[list[int], list[float]]:
    """Per epoch, the mean loss over the :func:`_run_curve` curves with a
    drawable loss there (runs stop at different epochs)."""
    by_epoch: dict[int, list[float]] = {}
    for epochs, losses in curves:
        for epoch, loss in zip(epochs, losses):
            if not math.isnan(loss):
                by_epoch.setdefault(epoch, []).append(float(loss))
    epochs = sorted(by_epoch)
    return epochs, [float(numpy.mean(by_epoch[e])) for e in epochs]


# ----------------------------------------------------------------- panels


def _figure(width: float, height: float) -> Figure:
    """A figure of ``width × height`` inches with a constrained layout; not
    pyplot's, so no global backend is switched."""
    return Figure(figsize=(width, height), layout="constrained")


def _panel_row(n_panels: int, height: float):
    """A figure with one row of ``n_panels`` axes, 3.9 inches wide each."""
    figure = _figure(3.9 * n_panels, height)
    return figure, figure.subplots(1, n_panels, squeeze=False)[0]


def _save_png(figure: Figure, path: Path, dpi: int) -> None:
    # No "Software" entry: the PNG then depends on the pixels only. A tight
    # box keeps every label, the outermost colour bars' ticks included.
    with atomic_open(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=dpi, metadata={"Software": None}, bbox_inches="tight",
                       pad_inches=0.08)


def _colour_bar(figure, axis, image, label: str) -> None:
    """A labelled colour bar beside ``axis``; values below 0.01 or from 1000
    up are written as a few digits times a power of ten shown once on top,
    so the tick labels stay short."""
    bar = figure.colorbar(image, ax=axis, shrink=0.85, label=label)
    bar.formatter.set_powerlimits((-2, 3))
    bar.update_ticks()


def _not_available(axis, text: str) -> None:
    """An empty panel that says why (``text``)."""
    axis.text(0.5, 0.5, text, ha="center", va="center", transform=axis.transAxes, color="0.4")
    axis.set_xticks([])
    axis.set_yticks([])


def _zoom_label(bins: int, khz_per_bin: float) -> str:
    """'zoom ≤ 1.5 kHz': where a zoom on the lowest ``bins`` bins ends."""
    return f"zoom ≤ {(bins - 1) * khz_per_bin:.2g} kHz"


#: The colour bars' labels: what a matrix entry of each figure is.
COUPLING_LABEL = "coupling weight"
COMPOSITION_LABEL = "composition weight"


def _show_couplings(figure, axis, matrix: numpy.ndarray, bins: int, khz_per_bin: float, title: str,
                    *, percentile: float = CLIP_PERCENTILE, label: str = COUPLING_LABEL) -> None:
    """One (F, F) (output × input) couplings matrix over its lowest ``bins``
    bins, frequencies in kHz, diverging colours symmetric about 0 and
    clipped at the ``percentile``-th percentile of |values|."""
    block, factor = block_mean(matrix[:bins, :bins])
    limit = colour_limit(block, percentile)
    # pixel p covers bins [p·b, (p+1)·b), bin k is centred on k·Δ
    edge = (block.shape[0] * factor - 0.5) * khz_per_bin
    image = axis.imshow(block, origin="lower", cmap="RdBu_r", vmin=-limit, vmax=limit,
                        interpolation="antialiased",
                        extent=(-0.5 * khz_per_bin, edge, -0.5 * khz_per_bin, edge))
    top = (bins - 0.5) * khz_per_bin
    axis.set_xlim(-0.5 * khz_per_bin, top)
    axis.set_ylim(-0.5 * khz_per_bin, top)
    axis.set_xlabel("input frequency (kHz)")
    axis.set_ylabel("output frequency (kHz)")
    axis.set_title(title + (f"\n(means of {factor}×{factor} bins)" if factor > 1 else ""), fontsize="medium")
    _colour_bar(figure, axis, image, label)


def _show_spectrum(figure, axis, spectrum: numpy.ndarray, bins: int, khz_per_bin: float, title: str,
                   seconds_per_frame: float | None = None) -> None:
    """The lowest ``bins`` bins of an (F, T) spectrum in dB, time along x:
    seconds from the segment's start when ``seconds_per_frame`` (hop /
    sample rate) is known, else frames (magnitudes span a wide range; dB is
    how spectrograms are read)."""
    levels, top = decibels(spectrum[:bins])
    step = seconds_per_frame or 1.0
    image = axis.imshow(levels, origin="lower", aspect="auto", cmap="magma", interpolation="antialiased",
                        vmin=top - DYNAMIC_RANGE_DB, vmax=top,
                        extent=(-0.5 * step, (levels.shape[1] - 0.5) * step,
                                -0.5 * khz_per_bin, (bins - 0.5) * khz_per_bin))
    axis.set_xlabel("time in the segment (s)" if seconds_per_frame else "frame")
    axis.set_ylabel("frequency (kHz)")
    axis.set_title(title, fontsize="medium")
    _colour_bar(figure, axis, image, "level (dB)")


def _show_missing(axes, titles, text: str) -> None:
    """A pair of Figure 3 panels for a matrix that is not there."""
    for axis, title in zip(axes, titles):
        axis.set_title(title, fontsize="medium")
        _not_available(axis, text)


def _couplings_pair(figure, axes, matrix, name: str, strategy: str, sample_rate, n_fft) -> None:
    """Two Figure 3 panels: an (F, F) couplings matrix in full and zoomed on
    its lowest bins, or "not run" when ``matrix`` is None."""
    full, zoom = axes
    if matrix is None:
        _show_missing(axes, (f"{name} · {strategy}", "zoom"), "not run")
        return
    khz_per_bin = sample_rate / n_fft / 1000.0
    bins = zoom_bins(matrix.shape[0], sample_rate, n_fft)
    _show_couplings(figure, full, matrix, matrix.shape[0], khz_per_bin, f"{name} · {strategy}")
    # the zoom's title leaves the model out (the panel to its left names it), so that it stays
    # within its panel and clear of the neighbouring colour bar
    _show_couplings(figure, zoom, matrix, bins, khz_per_bin, _zoom_label(bins, khz_per_bin),
                    percentile=ZOOM_CLIP_PERCENTILE)


def _target_pair(figure, axes, target, kind: str, name: str, sample_rate, n_fft, hop=None) -> None:
    """Two Figure 3 panels: the (F, T) target V in full and zoomed on its
    lowest bins, or "not available" when ``target`` is None."""
    full, zoom = axes
    label = f"{name}: V ({'mask' if model_kind(kind).masks_input else 'decoder output'})"
    if target is None:
        _show_missing(axes, (label, "V · zoom"), "not available")
        return
    khz_per_bin = sample_rate / n_fft / 1000.0
    bins = zoom_bins(target.shape[0], sample_rate, n_fft)
    seconds = hop / sample_rate if hop else None
    _show_spectrum(figure, full, target, target.shape[0], khz_per_bin, label, seconds)
    _show_spectrum(figure, zoom, target, bins, khz_per_bin, f"V · {_zoom_label(bins, khz_per_bin)}", seconds)


# ---------------------------------------------------------------- figures


def plot_linear_compositions(path: Path, linear_compositions: dict, models: dict, *, sample_rate, n_fft,
                             dpi=DPI) -> None:
    """Figure 2: the run-averaged linear composition of each model.

    Args:
        linear_compositions: ``{kind: (F, F) host array}``; a kind left out
            is drawn as "not available".
        models: ``{kind: display name}``, one panel each, in this order.
    """
    khz_per_bin = sample_rate / n_fft / 1000.0
    figure, axes = _panel_row(len(models), 3.7)
    for axis, (kind, name) in zip(axes, models.items()):
        if kind not in linear_compositions:
            axis.set_title(name)
            _not_available(axis, "not available")
            continue
        matrix = linear_compositions[kind]
        title = f"{name}: TOD-R {metrics.tod_r(matrix):.2f}"
        _show_couplings(figure, axis, matrix, matrix.shape[0], khz_per_bin, title, label=COMPOSITION_LABEL)
    figure.suptitle("Figure 2: linear compositions (Eqs. 11–13), mean over training runs")
    _save_png(figure, path, dpi)


def plot_couplings(path: Path, figure_segment: dict, models: dict, strategies, *, sample_rate, n_fft,
                   dpi=DPI, hop=None) -> None:
    """Figure 3: per model, each strategy's couplings (full and low-bin zoom)
    in one row per strategy, and a last row with the target V.

    Args:
        figure_segment: ``{kind: {"C_<strategy>": (F, F), "target": (F, T)
            host arrays}, "track": str, "segment_index": int}``; a missing
            matrix is drawn as "not run", a missing target as "not
            available".
        models: ``{kind: display name}``, two columns each, in this order.
        strategies: the NCA strategies, one row each, in this order.
        hop: the STFT hop in samples; with it the target's time axis is in
            seconds, without it in frames.
    """
    figure = couplings_figure(figure_segment, models, strategies, sample_rate=sample_rate, n_fft=n_fft, hop=hop)
    _save_png(figure, path, dpi)


def couplings_figure(figure_segment: dict, models: dict, strategies, *, sample_rate, n_fft, hop=None) -> Figure:
    """The :class:`~matplotlib.figure.Figure` that :func:`plot_couplings` saves."""
    figure_segment = figure_segment or {}
    # 3.9 inches a panel: a panel, its colour bar and a two-line title side by side
    figure = _figure(3.9 * 2 * len(models), 3.1 * (len(strategies) + 1))
    grid = figure.subplots(len(strategies) + 1, 2 * len(models), squeeze=False)
    for column, (kind, name) in enumerate(models.items()):
        entry = figure_segment.get(kind, {})
        pairs = grid[:, 2 * column:2 * column + 2]  # (strategies + 1, 2) axes
        for axes, strategy in zip(pairs, strategies):
            _couplings_pair(figure, axes, entry.get(get_strategy(strategy).matrix_key), name, strategy,
                            sample_rate, n_fft)
        _target_pair(figure, pairs[-1], entry.get("target"), kind, name, sample_rate, n_fft, hop)
    track = figure_segment.get("track", "?")
    index = figure_segment.get("segment_index", "?")
    figure.suptitle(f"Figure 3: couplings matrices, track {track}, segment {index}")
    return figure


def plot_training_loss(path: Path, histories: dict, models: dict, *, dpi=DPI) -> None:
    """Training loss (Eq. 3) per epoch: every run thin, the mean thick.

    Args:
        histories: ``{kind: [run records]}``, a run's records being one dict
            per epoch with ``epoch`` and ``loss``.
        models: ``{kind: display name}``, one panel each, in this order.
    """
    figure, axes = _panel_row(len(models), 3.2)
    for axis, (kind, name) in zip(axes, models.items()):
        axis.set_title(name)
        runs = histories.get(kind, [])
        curves = [_run_curve(run) for run in runs]
        epochs, means = _mean_by_epoch(curves)
        if not epochs:
            _not_available(axis, "no training history")
            continue
        for run_epochs, losses in curves:
            axis.plot(run_epochs, losses, color="0.55", linewidth=0.7, alpha=0.8)
        axis.plot(epochs, means, color="C3", linewidth=2.0,
                  label=(f"mean over the {len(runs)} runs\n(of those still training)" if len(runs) != 1
                         else "the only run"))
        axis.set_yscale("log")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_xlabel("epoch")
        axis.set_ylabel("training loss (MSE, Eq. 3)")
        axis.legend(fontsize="small")
    figure.suptitle("Training loss per epoch")
    _save_png(figure, path, dpi)


def relative_curve(fit: dict) -> list[float]:
    """One fit's loss curve as the relative error ‖V − C X‖₁ / ‖V‖₁ per iteration.

    The fit records its losses ``E = ‖V − C X‖₁`` (Eq. 15) and, at its
    checkpoints, the relative error of the same ``C``; their ratio at a
    checkpoint is ``‖V‖₁``, which turns the whole curve relative (so that
    fits of targets of different sizes can be compared). Empty when no
    checkpoint gives a usable ratio.
    """
    losses = [float(x) for x in fit.get("losses") or []]
    for point in fit.get("trajectory") or []:
        index, relative = point.get("iteration"), point.get("relative_error")
        if not isinstance(index, int) or not 0 <= index < len(losses) or not isinstance(relative, (int, float)):
            continue
        if math.isfinite(relative) and relative > 0 and math.isfinite(losses[index]) and losses[index] > 0:
            norm = losses[index] / relative
            return [loss / norm for loss in losses]
    return []


def plot_nca_convergence(path: Path, units, models: dict, strategies, *, dpi=DPI) -> None:
    """NCA relative error ‖V − C X‖₁ / ‖V‖₁ (Eq. 15 over ‖V‖₁) per
    iteration: median and inter-quartile band over segments, per model and
    strategy (:func:`relative_curve`; the absolute loss depends on the size
    of each model's target V and cannot be compared across models).

    Args:
        units: the couplings results (see :func:`nca_np.report.summarise`);
            each strategy's ``losses`` and ``trajectory`` give its curve.
        models: ``{kind: display name}``, one panel each, in this order.
        strategies: the NCA strategies, one colour each.
    """
    figure, axes = _panel_row(len(models), 3.2)
    for axis, (kind, name) in zip(axes, models.items()):
        axis.set_title(name)
        drawn = False
        for colour, strategy in enumerate(strategies):
            curves = [relative_curve(u["strategies"][strategy]) for u in units
                      if u["kind"] == kind and strategy in u.get("strategies", {})]
            quartiles = loss_quartiles(curves)
            if numpy.isnan(quartiles).all():
                continue
            iterations = numpy.arange(quartiles.shape[1])
            axis.fill_between(iterations, quartiles[0], quartiles[2], color=f"C{colour}", alpha=0.25,
                              linewidth=0)
            axis.plot(iterations, quartiles[1], color=f"C{colour}", linewidth=1.5,
                      label=f"{strategy} (median of {len(curves)})")
            drawn = True
        if not drawn:
            _not_available(axis, "not run")
            continue
        axis.set_yscale("log")
        axis.set_xlabel("iteration")
        axis.set_ylabel("relative error ‖V − C X‖₁ / ‖V‖₁")
        axis.legend(fontsize="small")
    figure.suptitle("NCA convergence: relative error (median and inter-quartile band over segments)")
    _save_png(figure, path, dpi)


def _trajectory(fit: dict, key: str) -> tuple[numpy.ndarray, numpy.ndarray]:
    """(iterations, values) of one fit's checkpoints; undrawable values NaN."""
    points = fit.get("trajectory") or []
    return (numpy.array([p["iteration"] for p in points], dtype=numpy.float64),
            _positive(p.get(key) for p in points))


def _reference_median(units, kind: str, name: str) -> float:
    values = _positive(u.get("references", {}).get(name, {}).get("tod_r") for u in units if u["kind"] == kind)
    return float(numpy.nanmedian(values)) if not numpy.isnan(values).all() else math.nan


class _PlainLogFormatter(LogFormatter):
    """Log-axis tick labels as plain numbers ("4", "0.5"), not "4×10⁰"."""

    def _num_to_string(self, x, vmin, vmax):
        return f"{x:g}"


def _plain_log_ticks(axis) -> None:
    axis.yaxis.set_major_formatter(_PlainLogFormatter())
    axis.yaxis.set_minor_formatter(_PlainLogFormatter(labelOnlyBase=False))


def _nearest_init_median(units, kind: str, strategy: str) -> float:
    """Median TOD-R of the exact solutions nearest a strategy's initial C."""
    values = _positive(u["strategies"][strategy].get("nearest_exact_to_init", {}).get("tod_r") for u in units
                       if u["kind"] == kind and strategy in u.get("strategies", {}))
    return float(numpy.nanmedian(values)) if values.size and not numpy.isnan(values).all() else math.nan


def _segments_label(strategy: str, n: int) -> str:
    return f"{strategy} ({n} segment{'' if n == 1 else 's'})"


def _draw_trajectories(top, bottom, units, kind: str, strategies) -> bool:
    """One thin line per fit and measure; True when anything was drawn."""
    drawn = False
    for colour, strategy in enumerate(strategies):
        fits = [u["strategies"][strategy] for u in units if u["kind"] == kind and strategy in u.get("strategies", {})]
        for index, fit in enumerate(fits):
            label = _segments_label(strategy, len(fits)) if index == 0 else None
            for axis, key in ((top, "tod_r"), (bottom, "relative_error")):
                iterations, values = _trajectory(fit, key)
                if iterations.size and not numpy.isnan(values).all():
                    axis.plot(iterations, values, color=f"C{colour}", linewidth=0.8, alpha=0.5, label=label)
                    drawn = True
    return drawn


def _draw_levels(top, bottom, units, kind: str, strategies) -> None:
    """The reference levels: V X⁺ and the mean local map (black), the exact
    solution nearest each free strategy's initial C (its colour; the
    compositional's lies outside what it can reach), and C = 0's error 1."""
    for reference, style, label in (("min_norm", "--", "min-norm V X⁺"), ("mean_local_map", ":", "mean local map")):
        level = _reference_median(units, kind, reference)
        if not math.isnan(level):
            top.axhline(level, color="black", linestyle=style, linewidth=1.2, label=f"{label} (median)")
    for colour, strategy in enumerate(strategies):
        level = _nearest_init_median(units, kind, strategy) if get_strategy(strategy).free else math.nan
        if not math.isnan(level):
            top.axhline(level, color=f"C{colour}", linestyle="-.", linewidth=1.2,
                        label=f"exact, nearest the {strategy}'s initial C (median)")
    bottom.axhline(1.0, color="grey", linestyle="--", linewidth=1.0, label="C = 0")


def plot_nca_trajectories(path: Path, units, models: dict, strategies, *, dpi=DPI) -> None:
    """TOD-R (top) and relative error ``‖V − C X‖₁ / ‖V‖₁`` (bottom) of the
    NCA's ``C`` against iterations: one thin line per segment and strategy,
    with the median TOD-R of the minimum-norm couplings, of the mean local
    map and of the exact solution nearest each free strategy's initial C as
    horizontal lines (docs/method.md#exact-references), and the relative
    error of C = 0 (1) below.

    Args:
        units: the couplings results; each strategy's ``trajectory`` is a
            list of ``{"iteration", "tod_r", "relative_error"}``.
        models: ``{kind: display name}``, one column each.
        strategies: one colour each.
    """
    figure = _figure(3.9 * len(models), 6.0)
    axes = figure.subplots(2, len(models), squeeze=False)
    for column, (kind, name) in enumerate(models.items()):
        top, bottom = axes[0, column], axes[1, column]
        top.set_title(name)
        if not _draw_trajectories(top, bottom, units, kind, strategies):
            _not_available(top, "no trajectory")
            _not_available(bottom, "no trajectory")
            continue
        _draw_levels(top, bottom, units, kind, strategies)
        for axis in (top, bottom):
            axis.set_yscale("log")
            _plain_log_ticks(axis)
            axis.set_xlabel("iteration")
        top.set_ylabel("TOD-R (Eq. 22)")
        bottom.set_ylabel("‖V − C X‖₁ / ‖V‖₁")
        top.legend(fontsize="x-small")
        bottom.legend(fontsize="x-small")
    figure.suptitle("NCA trajectories: TOD-R and relative error of C at its checkpoints")
    _save_png(figure, path, dpi)


def write_figures(out_dir: Path, *, units, models: dict, strategies, histories: dict,
                  linear_compositions: dict, figure_segment: dict, sample_rate, n_fft,
                  dpi: int = DPI, hop=None) -> list[Path]:
    """Draw the figures into ``out_dir`` (file names in :data:`FIGURE_FILES`).

    Args:
        units, strategies: as for :func:`plot_nca_convergence`.
        models: ``{kind: display name}`` in display order.
        histories: as for :func:`plot_training_loss`.
        linear_compositions: as for :func:`plot_linear_compositions`.
        figure_segment: as for :func:`plot_couplings`.
        sample_rate: Hz; ``n_fft``: FFT size; ``hop``: STFT hop (samples),
            for Figure 3's time axis (None: frames).
        dpi: resolution of the PNGs.

    Returns:
        The paths written, in the order of :data:`FIGURE_FILES`.
    """
    paths = {key: Path(out_dir) / name for key, name in FIGURE_FILES.items()}
    plot_linear_compositions(paths["figure2"], linear_compositions, models, sample_rate=sample_rate,
                             n_fft=n_fft, dpi=dpi)
    plot_couplings(paths["figure3"], figure_segment, models, strategies, sample_rate=sample_rate, n_fft=n_fft,
                   dpi=dpi, hop=hop)
    plot_training_loss(paths["training"], histories, models, dpi=dpi)
    plot_nca_convergence(paths["convergence"], units, models, strategies, dpi=dpi)
    plot_nca_trajectories(paths["trajectories"], units, models, strategies, dpi=dpi)
    return list(paths.values())


# ------------------------------------------------------------ separation

#: The figure of the separation section (drawn only when there are scores).
SEPARATION_FIGURE = "sdr_vs_tod_r.png"
_SERIES_MARKERS = ("o", "s", "^", "D", "v", "P", "X")


def _baseline_lines(axis, baselines: dict) -> list:
    """A dashed horizontal line per baseline level; the lines, for the legend."""
    return [axis.axhline(value, color="0.3", linestyle=style, linewidth=1.0, label=f"{label}: {value:.1f} dB")
            for (label, value), style in zip(baselines.items(), ("--", ":", "-.")) if math.isfinite(value)]


def _sdr_limits(axis, values) -> None:
    """Vertical limits covering ``values`` and at least :data:`MIN_SDR_SPAN_DB`."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return
    low, high = min(finite), max(finite)
    margin = max(0.08 * (high - low), (MIN_SDR_SPAN_DB - (high - low)) / 2, 0.0)
    axis.set_ylim(low - margin, high + margin)


def median_and_quartiles(values) -> tuple[float, float, float]:
    """(median, 25th, 75th percentile) of the finite values; NaNs when none."""
    array = numpy.array([math.nan if v is None else float(v) for v in values], dtype=numpy.float64)
    finite = array[numpy.isfinite(array)]
    if finite.size == 0:
        return math.nan, math.nan, math.nan
    q25, median, q75 = numpy.percentile(finite, [25.0, 50.0, 75.0])
    return float(median), float(q25), float(q75)


#: The SDR axis spans at least this many dB, so that differences of a tenth
#: of a dB do not fill the plot as if they were large.
MIN_SDR_SPAN_DB = 6.0


def _tod_r_axis(axis) -> None:
    """A log TOD-R axis labelled with plain numbers ("0.9", "2"): TOD-R often
    spans less than a decade, where only the minor ticks fall inside and need
    labels of their own; over a decade or more, labels at 1, 2, 5 of each."""
    axis.set_xscale("log")
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    low, high = axis.get_xlim()
    if high >= 20 * low:
        axis.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.xaxis.set_major_formatter(plain)
    axis.xaxis.set_minor_formatter(plain if high < 20 * low else NullFormatter())


def plot_sdr_vs_tod_r(path: Path, sdr: dict, tod_r: dict, models: dict, *, dpi=DPI, run_sdr=None,
                      baselines=None) -> None:
    """Each model's vocals SDR beside the TOD-R of its mappings.

    One point per model and TOD-R series at (median TOD-R, median SDR),
    bars from the 25th to the 75th percentile on both axes; the points of one
    model share its colour and are joined, each series has its marker. Less
    diagonal mappings (smaller TOD-R) lie to the left, so the picture shows
    whether they separate better. Each run's SDR is a small grey point
    beside its model's first point (the spread over runs), the baselines
    are dashed horizontal lines, and the SDR axis spans at least
    :data:`MIN_SDR_SPAN_DB`.

    Args:
        sdr: ``{kind: [vocals SDR (dB) of each (run, track)]}``.
        tod_r: ``{series label: {kind: [TOD-R values]}}``, any number of
            series (the NCA strategies, exact references …); infinite and
            non-positive values are left out (a log axis).
        models: ``{kind: display name}`` in display order.
        run_sdr: ``{kind: [vocals SDR (dB) of each run]}`` (optional).
        baselines: ``{label: vocals SDR (dB)}`` (optional), e.g. the mixture
            and the oracle ideal ratio mask.
    """
    figure = _figure(8.6, 4.4)  # room on the right for the legend, clear of the points
    axis = figure.subplots()
    drawn = False
    levels = []
    for colour, (kind, name) in enumerate(models.items()):
        y, y25, y75 = median_and_quartiles(sdr.get(kind, []))
        points = []
        for marker, (label, series) in zip(_SERIES_MARKERS, tod_r.items()):
            x, x25, x75 = median_and_quartiles(_positive(series.get(kind, [])))
            if math.isnan(x) or math.isnan(y):
                continue
            axis.errorbar([x], [y], xerr=[[x - x25], [x75 - x]], yerr=[[y - y25], [y75 - y]], fmt=marker,
                          color=f"C{colour}", markersize=7, capsize=3, linewidth=1.0)
            points.append(x)
            levels += [y25, y75]
        if points:
            axis.plot(sorted(points), [y] * len(points), color=f"C{colour}", linewidth=0.8, alpha=0.6)
            runs = [v for v in (run_sdr or {}).get(kind, []) if v is not None and math.isfinite(v)]
            axis.plot([points[0]] * len(runs), runs, ".", color="0.45", markersize=4, zorder=1)
            levels += runs
            drawn = True
    if not drawn:
        _not_available(axis, "no SDR or TOD-R to draw")
    else:
        lines = _baseline_lines(axis, baselines or {})
        _sdr_limits(axis, levels + [v for v in (baselines or {}).values() if math.isfinite(v)])
        _tod_r_axis(axis)
        axis.set_xlabel("TOD-R of the couplings (median; smaller = less diagonal)")
        axis.set_ylabel("vocals SDR (dB, median over runs and tracks)")
        colours = [axis.plot([], [], color=f"C{i}", linewidth=6)[0] for i in range(len(models))]
        markers = [axis.plot([], [], _SERIES_MARKERS[i], color="0.3")[0] for i in range(len(tod_r))]
        runs = [axis.plot([], [], ".", color="0.45")[0]] if run_sdr else []
        axis.legend(colours + markers + runs + lines,
                    list(models.values()) + list(tod_r) + ["one run"] * len(runs) + [l.get_label() for l in lines],
                    fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
        axis.grid(True, which="both", alpha=0.25)
    figure.suptitle("Separation quality beside the diagonality of the mappings")
    _save_png(figure, path, dpi)
