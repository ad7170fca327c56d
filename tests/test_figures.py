"""Tests of the figures (nca_np.report.figures): the array functions against hand
computation, and the four PNGs, with every piece present and with pieces
missing (a strategy not run, a model without a matrix or a history)."""

from __future__ import annotations

import math

import numpy
import pytest

from nca_np.models import kind_names, model_kind
from nca_np.nca import get_strategy, strategy_names
from nca_np.report import figures

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MODELS = {kind: model_kind(kind).display_name for kind in kind_names()}
STRATEGIES = list(strategy_names())
N_FREQ, N_FRAMES, SAMPLE_RATE, N_FFT = 16, 8, 44100, 30
#: Small figures keep the tests fast; the layout is the same at any dpi.
TEST_DPI = 30


# ---------------------------------------------------------------- arrays


def test_block_mean_averages_blocks_with_partial_edges():
    matrix = numpy.arange(25, dtype=numpy.float32).reshape(5, 5)
    blocks, factor = figures.block_mean(matrix, max_bins=3)
    assert factor == 2 and blocks.dtype == numpy.float32 and blocks.shape == (3, 3)
    assert blocks[0, 0] == pytest.approx((0 + 1 + 5 + 6) / 4)
    assert blocks[2, 2] == 24.0 and blocks[0, 2] == pytest.approx((4 + 9) / 2)
    assert figures.block_mean(matrix, max_bins=5)[1] == 1


def test_colour_limit_is_a_percentile_of_finite_magnitudes():
    values = numpy.array([-4.0, 1.0, 2.0, math.inf, math.nan])
    assert figures.colour_limit(values, 100.0) == 4.0
    assert figures.colour_limit(values, 50.0) == 2.0
    assert figures.colour_limit(numpy.zeros(3)) == 1.0


def test_zoom_bins_cover_low_frequencies():
    assert figures.zoom_bins(2049, 44100, 4096) == 140  # bins up to 1.5 kHz
    assert figures.zoom_bins(16, 44100, 30) == 8  # at least MIN_ZOOM_BINS
    assert figures.zoom_bins(4, 44100, 6) == 4


def test_loss_quartiles_of_ragged_curves_skip_undrawable_values():
    quartiles = figures.loss_quartiles([[1.0, 2.0, 3.0], [3.0, 0.0, 5.0, math.inf]])
    assert quartiles.shape == (3, 4)
    numpy.testing.assert_allclose(quartiles[:, :3], [[1.5, 2.0, 3.5], [2.0, 2.0, 4.0], [2.5, 2.0, 4.5]])
    assert numpy.isnan(quartiles[:, 3]).all()  # only an inf there
    assert figures.loss_quartiles([]).shape == (3, 0)


def test_decibels_floor_below_peak():
    levels, top = figures.decibels(numpy.array([[0.0, 1.0, 10.0]], dtype=numpy.float32), 60.0)
    assert top == pytest.approx(20.0) and levels.dtype == numpy.float32
    numpy.testing.assert_allclose(levels, [[-40.0, 0.0, 20.0]], atol=1e-5)


# ---------------------------------------------------------------- figures


def losses(seed):
    return (100.0 * numpy.exp(-numpy.arange(20) / (5.0 + seed))).tolist()


def figure_inputs(strategies=STRATEGIES):
    """Host inputs of write_figures, as nca_np.report checks them."""
    rng = numpy.random.default_rng(0)
    entry = {"target": rng.random((N_FREQ, N_FRAMES))}
    for strategy in strategies:
        entry[get_strategy(strategy).matrix_key] = numpy.eye(N_FREQ) + 0.1 * rng.standard_normal((N_FREQ, N_FREQ))
    units = [{"kind": kind, "strategies": {s: {"losses": losses(i)} for i, s in enumerate(strategies)}}
             for kind in MODELS for _ in range(3)]
    history = [{"epoch": e + 1, "loss": 1.0 / (e + 1)} for e in range(4)]
    return {
        "units": units, "models": MODELS, "strategies": STRATEGIES,
        "histories": {kind: [history, history[:3]] for kind in MODELS},
        "linear_compositions": {kind: numpy.eye(N_FREQ) + 0.05 * rng.standard_normal((N_FREQ, N_FREQ))
                                for kind in MODELS},
        "figure_segment": {**{kind: dict(entry) for kind in MODELS}, "track": "track 0", "segment_index": 1},
        "sample_rate": SAMPLE_RATE, "n_fft": N_FFT,
    }


def assert_drawn(paths):
    from matplotlib.image import imread

    assert [p.name for p in paths] == list(figures.FIGURE_FILES.values())
    for path in paths:
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        pixels = imread(path)
        assert pixels.shape[0] > 50 and pixels.shape[1] > 100
        assert pixels[..., :3].std() > 0.05  # something is drawn


def test_write_figures_draws_valid_pngs_byte_identical_twice(tmp_path):
    paths = [figures.write_figures(tmp_path / name, dpi=TEST_DPI, **figure_inputs())
             for name in ("first", "second")]
    assert_drawn(paths[0])
    for first, second in zip(*paths):
        assert first.read_bytes() == second.read_bytes(), first.name


def test_write_figures_with_missing_pieces(tmp_path):
    inputs = figure_inputs(["student"])  # compositional: "not run"
    del inputs["linear_compositions"]["sf"]
    del inputs["figure_segment"]["mss-dae"]
    inputs["figure_segment"]["sf"].pop("target")
    inputs["histories"]["dae"] = []
    inputs["units"] = [u for u in inputs["units"] if u["kind"] != "sf"]
    assert_drawn(figures.write_figures(tmp_path, dpi=TEST_DPI, **inputs))


def test_figure3_labels_every_colour_bar_and_gives_time_in_seconds():
    inputs = figure_inputs()
    hop = 3
    figure = figures.couplings_figure(inputs["figure_segment"], MODELS, STRATEGIES, sample_rate=SAMPLE_RATE,
                                      n_fft=N_FFT, hop=hop)
    bars = [axis for axis in figure.axes if axis.get_label() == "<colorbar>"]
    assert len(bars) == 2 * len(MODELS) * (len(STRATEGIES) + 1)
    assert {bar.get_ylabel() for bar in bars} == {figures.COUPLING_LABEL, "level (dB)"}
    spectra = [axis for axis in figure.axes if axis.get_xlabel() == "time in the segment (s)"]
    assert len(spectra) == 2 * len(MODELS)
    seconds_per_frame = hop / SAMPLE_RATE
    assert spectra[0].get_xlim() == pytest.approx((-0.5 * seconds_per_frame, (N_FRAMES - 0.5) * seconds_per_frame))


def test_no_label_touches_the_edge_of_a_figure(tmp_path):
    """Tick labels of the right-most colour bars (long ones, like 0.00012)
    and every other label lie inside the picture: its outer band is blank."""
    from matplotlib.image import imread

    n_freq = 257  # the demo's F: at this size the edges used to cut labels
    rng = numpy.random.default_rng(1)
    inputs = figure_inputs()
    inputs["n_fft"] = 2 * (n_freq - 1)
    inputs["linear_compositions"] = {kind: 1.234e-4 * rng.standard_normal((n_freq, n_freq)) for kind in MODELS}
    for kind in MODELS:
        inputs["figure_segment"][kind] = {"target": rng.random((n_freq, N_FRAMES)),
                                          **{get_strategy(s).matrix_key: 1.234e-4 * rng.standard_normal((n_freq, n_freq))
                                             for s in STRATEGIES}}
    paths = figures.write_figures(tmp_path, dpi=figures.DPI, **inputs)
    for path in paths:
        pixels = imread(path)[..., :3]
        band = numpy.concatenate([pixels[:2].reshape(-1, 3), pixels[-2:].reshape(-1, 3),
                                  pixels[:, :2].reshape(-1, 3), pixels[:, -2:].reshape(-1, 3)])
        assert band.min() > 0.95, path.name


def test_figure3_panel_titles_keep_clear_of_the_colour_bars():
    """At the demo's F every panel title lies within its own column: it
    overlaps no colour bar (ticks and label included) of a neighbour."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    n_freq = 257
    rng = numpy.random.default_rng(2)
    inputs = figure_inputs()
    segment = {kind: {"target": rng.random((n_freq, N_FRAMES)),
                      **{get_strategy(s).matrix_key: 1.234e-4 * rng.standard_normal((n_freq, n_freq))
                         for s in STRATEGIES}} for kind in MODELS}
    segment.update(track=inputs["figure_segment"].get("track", "t"), segment_index=0)
    figure = figures.couplings_figure(segment, MODELS, STRATEGIES, sample_rate=SAMPLE_RATE, n_fft=2 * (n_freq - 1))
    renderer = FigureCanvasAgg(figure).get_renderer()
    figure.draw(renderer)
    bars = [axis.get_tightbbox(renderer) for axis in figure.axes if axis.get_label() == "<colorbar>"]
    panels = [axis for axis in figure.axes if axis.get_label() != "<colorbar>"]
    assert len(panels) == 2 * len(MODELS) * (len(STRATEGIES) + 1)
    for panel in panels:
        title = panel.title.get_window_extent(renderer)
        assert not any(title.overlaps(bar) for bar in bars), panel.get_title()


def test_relative_curve_divides_the_losses_by_the_norm_of_v():
    fit = {"losses": [8.0, 4.0, 2.0], "trajectory": [{"iteration": 0, "relative_error": 2.0},
                                                     {"iteration": 2, "relative_error": 0.5}]}
    assert figures.relative_curve(fit) == [2.0, 1.0, 0.5]  # ‖V‖₁ = 8 / 2 = 4
    assert figures.relative_curve({"losses": [1.0], "trajectory": []}) == []


def test_the_sdr_axis_spans_a_few_db_and_takes_in_the_baselines(tmp_path):
    """SDRs 0.1 dB apart do not fill the plot: the axis spans at least
    MIN_SDR_SPAN_DB, and reaches the baselines' levels when given."""
    from matplotlib.figure import Figure

    axis = Figure().subplots()
    figures._sdr_limits(axis, [2.0, 2.1])
    low, high = axis.get_ylim()
    assert high - low == pytest.approx(figures.MIN_SDR_SPAN_DB) and low < 2.0 and high > 2.1
    figures._sdr_limits(axis, [2.0, 2.1, -14.0, 6.5])
    low, high = axis.get_ylim()
    assert low < -14.0 and high > 6.5 and high - low < 1.2 * 20.5
    sdr = {kind: [2.0, 2.1] for kind in MODELS}
    tod_r = {"NCA student": {kind: [0.9, 1.1] for kind in MODELS}}
    figures.plot_sdr_vs_tod_r(tmp_path / "sdr.png", sdr, tod_r, MODELS, dpi=TEST_DPI,
                              run_sdr={kind: [2.0, 2.1] for kind in MODELS},
                              baselines={"Mixture (baseline)": -14.0, "Oracle IRM stereo (baseline)": 6.5})
    assert (tmp_path / "sdr.png").read_bytes().startswith(PNG_SIGNATURE)


def test_trajectories_show_the_levels_a_fit_is_read_against(tmp_path, monkeypatch):
    drawn = {}
    monkeypatch.setattr(figures, "_save_png", lambda figure, path, dpi: drawn.setdefault("figure", figure))

    def unit(number):
        fit = {"trajectory": [{"iteration": i, "tod_r": 2.0 + i / 10, "relative_error": 3.0 - i / 10}
                              for i in (0, 5, 10)], "nearest_exact_to_init": {"tod_r": 1.5 + number}}
        return {"kind": "dae", "segment": {"number": number},
                "strategies": {"student": fit, "compositional": dict(fit)},
                "references": {"min_norm": {"tod_r": 0.2}, "mean_local_map": {"tod_r": 1.1}}}

    figures.plot_nca_trajectories(tmp_path / "t.png", [unit(0)], {"dae": "DAE"}, ["student", "compositional"])
    top, bottom = drawn["figure"].axes[:2]
    labels = [line.get_label() for line in top.get_lines()]
    assert "student (1 segment)" in labels and "student (1 segments)" not in labels
    assert [level.get_ydata()[0] for level in top.get_lines() if "nearest the" in level.get_label()] == [1.5]
    assert not any("compositional's initial" in label for label in labels)  # not free: not drawn
    assert [line.get_ydata()[0] for line in bottom.get_lines() if line.get_label() == "C = 0"] == [1.0]
    for formatter in (top.yaxis.get_major_formatter(), top.yaxis.get_minor_formatter()):
        assert formatter(4.0) in ("4", "") and formatter(0.5) in ("0.5", "")  # plain, not 4×10⁰
    assert top.yaxis.get_minor_formatter()._num_to_string(4.0, 1.0, 10.0) == "4"
