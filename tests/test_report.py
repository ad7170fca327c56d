"""Tests of the report (nca_np.report, docs/method.md#measures and docs/method.md#protocol): table statistics
against hand computation, the files written, their determinism, and
missing pieces (a strategy not run, a model without a matrix); the
figures themselves are tested in test_figures.py."""

from __future__ import annotations

import csv
import json
import math

import numpy
import pytest

from nca_np import report
from nca_np.models import MODEL_KINDS, ModelKind
from nca_np.nca import get_strategy
from nca_np.report import diagnostics as report_diagnostics
from nca_np.report.prose import reconstruction_text
from nca_np.errors import UserError
from strict_xp import strict

KINDS = ["dae", "mss-dae", "sf"]
#: What the tables call them.
MODELS = [report.display_name(kind) for kind in KINDS]
STRATEGIES = ["student", "compositional"]
N_FREQ, N_FRAMES, SAMPLE_RATE, N_FFT = 16, 8, 44100, 30
#: Small figures keep the tests fast; the layout is the same at any dpi.
TEST_DPI = 30
TEXT_FILES = ["report.md", "table1_tod_r.csv", "table2_snr_model.csv", "table3_snr_true.csv",
              "tables.json", "metadata.json", "exact_references.csv", "nca_convergence.csv",
              "nca_diagnostics.json", "claims.csv"]


def reference(tod_r, snr=12.0, error=0.0):
    return {"tod_r": tod_r, "snr_model_db": snr, "relative_error": error}


def strategy_result(tod_r, snr_model, snr_true, seed, converged=True):
    losses = (100.0 * numpy.exp(-numpy.arange(20) / (5.0 + seed))).tolist()
    trajectory = [{"iteration": i, "tod_r": 1.0 + i, "relative_error": 1.0 / (1 + i)}
                  for i in (0, 5, 10)]
    return {"tod_r": tod_r, "snr_model_db": snr_model, "snr_true_db": snr_true, "losses": losses,
            "seconds": 0.5 + seed, "init_seed": seed, "relative_error": 0.1 + 0.1 * seed,
            "loss_fall": 0.001 if converged else 0.05, "converged": converged,
            "stopped": "iterations", "iterations": 20, "tolerance": 0.01, "trajectory": trajectory,
            "nearest_exact_to_init": reference(1.2 + seed)}


def references_of(number, rank=N_FRAMES):
    return {"rank": rank, "n_freq": N_FREQ, "frames": N_FRAMES, "determined": rank >= N_FREQ,
            "offset_share": 0.01 * (1 + number),
            "min_norm": reference(4.0 + number), "mean_local_map": {**reference(5.0), "frame_stride": 1,
                                                                     "frames_used": N_FRAMES},
            "nearest_identity": reference(100.0 + number), "seconds": 0.1}


def make_unit(kind, number, *, tod_r=(3.0, 2.0), snr_model=(20.0, 15.0), linear=5.0, identity=1.0,
              snr_true=(4.0, 3.5), model_true=3.0, strategies=STRATEGIES, composition="paper",
              config_hash="abc123"):
    """One (kind, segment) result; the tuples give (student, compositional)."""
    values = dict(zip(STRATEGIES, zip(tod_r, snr_model, snr_true)))
    return {
        "config_hash": config_hash, "code_version": "0.1.0", "kind": kind,
        "segment": {"id": f"s{number:04d}", "number": number, "track": f"track {number // 2}",
                    "index": number % 2, "start_frame": 360 * (number % 2), "frames": N_FRAMES},
        "run": number % 2, "model_seed": 10 + number % 2, "composition": composition,
        "strategies": {s: strategy_result(*values[s], seed=i) for i, s in enumerate(strategies)},
        "baselines": {"linear": {"snr_model_db": linear, "tod_r": 7.0}, "identity": {"snr_model_db": identity}},
        "model_snr_true_db": model_true, "references": references_of(number),
    }


def make_units(strategies=STRATEGIES):
    """Three segments per model with distinct, hand-checkable values."""
    units = []
    for k, kind in enumerate(KINDS):
        for number in range(3):
            units.append(make_unit(kind, number, tod_r=(1.0 + number + k, 2.0 * number + k),
                                   snr_model=(10.0 + number, 5.0 + number), linear=float(number),
                                   identity=-1.0 * number, snr_true=(3.0 + number, 2.0), model_true=1.0 + k,
                                   strategies=strategies))
    return units


def history(run, epochs=4):
    return [{"epoch": e + 1, "loss": 1.0 / (e + 1 + run), "learning_rate": 1e-4, "seconds": 2.0,
             "frames_per_second": 1000.0, "decision": "improved"} for e in range(epochs)]


def figure_inputs(strategies=STRATEGIES, n_freq=N_FREQ):
    rng = numpy.random.default_rng(0)
    entry = {"mixture": rng.random((n_freq, N_FRAMES)), "target": rng.random((n_freq, N_FRAMES)),
             "vocals": rng.random((n_freq, N_FRAMES))}
    for strategy in strategies:
        entry[get_strategy(strategy).matrix_key] = numpy.eye(n_freq) + 0.1 * rng.standard_normal((n_freq, n_freq))
    segment = {kind: dict(entry) for kind in KINDS}
    segment.update(track="track 0", segment_index=1)
    return segment


def report_inputs(strategies=STRATEGIES):
    rng = numpy.random.default_rng(1)
    return {
        "units": make_units(strategies), "kinds": KINDS, "strategies": strategies,
        "histories": {kind: [history(0), history(1, epochs=3)] for kind in KINDS},
        "linear_compositions": {kind: numpy.eye(N_FREQ) + 0.05 * rng.standard_normal((N_FREQ, N_FREQ))
                                for kind in KINDS},
        "figure_segment": figure_inputs(strategies), "sample_rate": SAMPLE_RATE, "n_fft": N_FFT,
        "metadata": {"profile": "test", "config": {"data": {"corpus": "synthetic"}}, "backend": "numpy",
                     "wall_seconds": {"train": 1.5, "couplings": 2.25},
                     "drawn_runs": {f"dae/s{i:04d}": i % 2 for i in range(30)}},
    }


def run_paragraph(text):
    """The paragraph of report.md that says what was run."""
    return next(p for p in text.split("\n\n") if p.startswith("Profile **"))


def cell(summary, table, kind, column):
    row = next(r for r in summary[table]["rows"] if r["kind"] == kind)
    return row["cells"][column]


# ------------------------------------------------------------- statistics


def test_cell_statistics_population_std_and_counts():
    stats = report.cell_statistics([1.0, 2.0, 4.0, math.inf, math.nan, None, -math.inf])
    assert stats["mean"] == pytest.approx(7.0 / 3.0)
    assert stats["std"] == pytest.approx(math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 3))
    assert (stats["n"], stats["n_segments"]) == (3, 7)
    assert (stats["n_pos_inf"], stats["n_neg_inf"], stats["n_nan"]) == (1, 1, 2)


def test_cell_statistics_without_finite_values():
    stats = report.cell_statistics([math.inf, math.inf])
    assert stats["mean"] is None and stats["std"] is None and stats["n"] == 0
    assert report.format_cell(stats, 2) == "inf"
    assert report.format_cell(report.cell_statistics([]), 2) == "–"


def test_summarise_matches_hand_computation():
    summary = report.summarise(make_units(), kinds=KINDS, strategies=STRATEGIES)
    # MSS-DAE (k = 1): student TOD-R 2, 3, 4; compositional 1, 3, 5
    student = cell(summary, report.TABLE1, "mss-dae", "student")
    assert (student["mean"], student["std"], student["n"]) == (3.0, pytest.approx(math.sqrt(2 / 3)), 3)
    compositional = cell(summary, report.TABLE1, "mss-dae", "compositional")
    assert compositional["mean"] == 3.0 and compositional["std"] == pytest.approx(math.sqrt(8 / 3))
    assert cell(summary, report.TABLE2, "dae", "student")["mean"] == 11.0
    assert cell(summary, report.TABLE2, "dae", "linear")["mean"] == 1.0
    assert cell(summary, report.TABLE2, "sf", "identity")["mean"] == -1.0
    assert cell(summary, report.TABLE3, "sf", "model_output") == pytest.approx(
        {"mean": 3.0, "std": 0.0, "n": 3, "n_segments": 3, "n_pos_inf": 0, "n_neg_inf": 0, "n_nan": 0})
    assert cell(summary, report.TABLE3, "dae", "compositional")["std"] == 0.0
    assert list(summary) == [report.TABLE1, report.TABLE2, report.TABLE3]
    assert [c["key"] for c in summary[report.TABLE2]["columns"]] == [
        "student", "compositional", "linear", "identity"]
    assert [c["key"] for c in summary[report.TABLE3]["columns"]] == [
        "student", "compositional", "model_output"]
    assert [r["model"] for r in summary[report.TABLE1]["rows"]] == MODELS
    assert "ddof = 0" in summary[report.TABLE1]["std"]
    json.dumps(summary, allow_nan=False)  # strictly JSON-able
    context = report.describe_units(make_units())
    assert (context["n_segments"], context["n_tracks"], context["composition"], context["frames"]) == (
        3, 2, "paper", str(N_FRAMES))


def test_summarise_leaves_out_infinite_and_nan_values():
    units = [make_unit("dae", 0, tod_r=(math.inf, 4.0)), make_unit("dae", 1, tod_r=(2.0, math.nan)),
             make_unit("dae", 2, tod_r=(6.0, None), snr_model=(math.inf, 1.0))]
    summary = report.summarise(units, kinds=["dae"], strategies=STRATEGIES)
    student = cell(summary, report.TABLE1, "dae", "student")
    assert (student["mean"], student["std"], student["n"], student["n_pos_inf"]) == (4.0, 2.0, 2, 1)
    compositional = cell(summary, report.TABLE1, "dae", "compositional")
    assert (compositional["mean"], compositional["std"], compositional["n"], compositional["n_nan"]) == (4.0, 0.0, 1, 2)
    assert cell(summary, report.TABLE2, "dae", "student")["n"] == 2
    text = report.format_cell(student, 2)
    assert text == "4.00 (2.00) [n = 2; 1 inf left out]"


def test_summarise_with_one_strategy():
    summary = report.summarise(make_units(["compositional"]), kinds=KINDS, strategies=["compositional"])
    assert [c["key"] for c in summary[report.TABLE1]["columns"]] == ["compositional"]
    assert cell(summary, report.TABLE1, "dae", "compositional")["mean"] == 2.0


@pytest.mark.parametrize("change, message", [
    (lambda u: u[0].update(kind="cnn"), "not among kinds"),
    (lambda u: u.append(dict(u[0])), "appears twice"),
    (lambda u: u[0].update(config_hash="other"), "configuration hash"),
    (lambda u: u[0].update(composition="authors-code"), "composition reading"),
    (lambda u: u[0]["strategies"].pop("student"), "strategies.student.tod_r"),
    (lambda u: u[0]["strategies"]["student"].update(tod_r="big"), "expected a number"),
])
def test_summarise_rejects_inconsistent_units(change, message):
    units = make_units()
    change(units)
    with pytest.raises(report.ReportError, match=message):
        report.summarise(units, kinds=KINDS, strategies=STRATEGIES)


def test_summarise_rejects_bad_settings():
    with pytest.raises(report.ReportError, match="unknown NCA strategy 'teacher'"):
        report.summarise(make_units(), kinds=KINDS, strategies=["teacher"])
    with pytest.raises(report.ReportError, match="no couplings results"):
        report.summarise([], kinds=KINDS, strategies=STRATEGIES)


# ------------------------------------------------------------------ text


def test_markdown_table_bolds_smallest_tod_r():
    summary = report.summarise(make_units(), kinds=KINDS, strategies=STRATEGIES)
    lines = report.markdown_table(summary[report.TABLE1], 2, bold_smallest=True).splitlines()
    assert lines[0] == "| Model | n | NCA student | NCA compositional |"
    assert lines[2] == "| DAE | 3 | **2.00 (0.82)** | **2.00 (1.63)** |"
    assert lines[4] == "| SF | 3 | 4.00 (0.82) | 4.00 (1.63) |"


def test_host_matrix_copies_device_arrays_and_checks_shape():
    host = report.host_matrix(strict.asarray(numpy.eye(3)), "C")
    assert type(host) is numpy.ndarray and host.trace() == 3.0
    with pytest.raises(report.ReportError, match=r"C must be 2-D, got shape \(3,\)"):
        report.host_matrix(numpy.ones(3), "C")


# ---------------------------------------------------------------- report


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """The report folder of the full inputs, written twice (two folders)."""
    folders = [tmp_path_factory.mktemp(name) for name in ("first", "second")]
    paths = [report.write_report(folder, dpi=TEST_DPI, **report_inputs()) for folder in folders]
    return folders, paths


def test_write_report_writes_every_file(written):
    (folder, _), (paths, _) = written
    names = sorted(p.name for p in paths)
    assert names == sorted(TEXT_FILES + list(report.FIGURE_FILES.values()))
    assert all(p.parent == folder and p.stat().st_size > 0 for p in paths)
    assert not list(folder.glob(".*.tmp"))


def test_tables_csv_have_models_and_finite_numbers(written):
    folder = written[0][0]
    expected_columns = {"table1_tod_r.csv": ["student", "compositional"],
                        "table2_snr_model.csv": ["student", "compositional", "linear", "identity"],
                        "table3_snr_true.csv": ["student", "compositional", "model_output"]}
    for name, columns in expected_columns.items():
        rows = read_csv(folder / name)
        assert rows[0] == ["model"] + [f"{c}_{s}" for c in columns for s in ("mean", "std", "n")]
        assert [r[0] for r in rows[1:]] == MODELS
        numbers = [float(v) for r in rows[1:] for v in r[1:]]
        assert all(math.isfinite(v) for v in numbers)
    rows = read_csv(folder / "table1_tod_r.csv")
    assert rows[2][1:4] == ["3.000000", "0.816497", "3"]  # MSS-DAE student


def test_tables_json_and_metadata(written):
    folder = written[0][0]
    tables = json.loads((folder / "tables.json").read_text())
    assert tables == json.loads(json.dumps(report.summarise(make_units(), kinds=KINDS, strategies=STRATEGIES)))
    assert json.loads((folder / "metadata.json").read_text()) == report_inputs()["metadata"]


def test_report_md_states_reading_tables_and_metadata(written):
    text = (written[0][0] / "report.md").read_text()
    assert report.COMPOSITION_READINGS["paper"] in text
    assert "Profile **test** on the **synthetic** corpus" in text
    for title in ("Table 1", "Table 2", "Table 3"):
        assert f"## {title}:" in text
    assert "| MSS-DAE | 3 | 3.00 (0.82) | 3.00 (1.63) |" in text
    assert "ddof = 0" in text
    for name in report.FIGURE_FILES.values():
        assert f"]({name})" in text
    assert "| wall_seconds.couplings | 2.25 |" in text
    assert "| drawn_runs | 30 entries (see metadata.json) |" in text


def test_text_files_are_byte_identical_when_written_twice(written):
    first, second = written[0]
    for name in TEXT_FILES:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_missing_strategy_and_matrices_do_not_crash(tmp_path):
    inputs = report_inputs(["student"])
    del inputs["linear_compositions"]["sf"]
    del inputs["figure_segment"]["mss-dae"]
    # device arrays are drawn too (copied to the host explicitly)
    inputs["linear_compositions"]["dae"] = strict.asarray(inputs["linear_compositions"]["dae"])
    inputs["figure_segment"]["sf"]["C_student"] = strict.asarray(inputs["figure_segment"]["sf"]["C_student"])
    inputs["units"][0]["strategies"]["student"]["tod_r"] = math.inf
    paths = report.write_report(tmp_path, dpi=TEST_DPI, **inputs)
    assert len(paths) == len(TEXT_FILES) + len(report.FIGURE_FILES)
    rows = read_csv(tmp_path / "table1_tod_r.csv")
    assert rows[0] == ["model", "student_mean", "student_std", "student_n"]
    assert rows[1][3] == "2"  # one of DAE's three TOD-R values was inf
    assert "1 inf left out" in (tmp_path / "report.md").read_text()


def test_write_report_rejects_bad_matrices(tmp_path):
    inputs = report_inputs()
    inputs["linear_compositions"]["dae"] = numpy.ones((N_FREQ, N_FREQ + 1))
    with pytest.raises(report.ReportError, match=r"linear composition of dae must be square .*\(16, 17\)"):
        report.write_report(tmp_path, dpi=TEST_DPI, **inputs)
    inputs = report_inputs()
    inputs["n_fft"] = 0
    with pytest.raises(report.ReportError, match="n_fft must be a positive integer"):
        report.write_report(tmp_path, dpi=TEST_DPI, **inputs)
    inputs = report_inputs()
    inputs["figure_segment"]["sf"]["C_student"] = numpy.ones((N_FREQ, N_FREQ - 1))
    with pytest.raises(report.ReportError, match=r"figure_segment\['sf'\]\['C_student'\] must be square"):
        report.write_report(tmp_path / "late", dpi=TEST_DPI, **inputs)
    inputs["figure_segment"]["sf"]["C_student"] = numpy.eye(N_FREQ + 1)
    with pytest.raises(report.ReportError, match="target has 16 bins but C_student is"):
        report.write_report(tmp_path / "late", dpi=TEST_DPI, **inputs)
    assert not (tmp_path / "late").exists()  # every input is checked before any file is written


# ------------------------------------------------------------- separation


def separation_unit(kind, run, track, vocals_sdr, shift=0.0):
    """One evaluation unit; every metric of a target is its SDR plus a fixed offset."""
    offsets = {"SDR": 0.0, "SIR": 5.0, "SAR": 1.0, "ISR": 2.0}
    return {"kind": kind, "run": run, "track": track, "channels": 2,
            "scores": {"vocals": {m: vocals_sdr + o for m, o in offsets.items()},
                       "accompaniment": {m: vocals_sdr + shift + 6.0 + o for m, o in offsets.items()}}}


def separation_units():
    """Per model 2 runs x 3 tracks; DAE's vocals SDRs 1, 2, 3, 4, 10 and a NaN."""
    values = {"dae": [1.0, 2.0, 3.0, 4.0, 10.0, math.nan], "mss-dae": [5.0] * 6, "sf": [-1.0, 0.0, 1.0, 2.0, 3.0, 4.0]}
    return [separation_unit(kind, i // 3, f"track {i % 3}", value)
            for kind in KINDS for i, value in enumerate(values[kind])]


def test_separation_table_takes_medians_over_runs_and_tracks():
    table = report.summarise_separation(separation_units(), KINDS)
    rows = {row["kind"]: row for row in table["rows"]}
    assert rows["dae"]["n_runs"] == 2 and rows["dae"]["n_tracks"] == 3 and rows["dae"]["n_units"] == 6
    dae = rows["dae"]["cells"]["vocals_SDR"]
    assert (dae["median"], dae["q25"], dae["q75"], dae["n"], dae["n_units"]) == (3.0, 2.0, 4.0, 5, 6)
    assert rows["dae"]["cells"]["vocals_SIR"]["median"] == 8.0
    assert rows["sf"]["cells"]["vocals_SDR"]["median"] == 1.5
    assert rows["sf"]["cells"]["accompaniment_SDR"]["median"] == 7.5
    assert rows["mss-dae"]["cells"]["accompaniment_ISR"]["median"] == 13.0
    markdown = report.separation_markdown(table)
    assert "| DAE | 2 × 3 | 3.00 | 8.00 | 4.00 | 5.00 | 9.00 |" in markdown
    rows_csv = list(csv.reader(report.separation_csv(table).splitlines()))
    assert rows_csv[0][:7] == ["model", "n_runs", "n_tracks", "vocals_SDR_median", "vocals_SDR_q25",
                               "vocals_SDR_q75", "vocals_SDR_n"]
    assert rows_csv[1][:7] == ["DAE", "2", "3", "3.000000", "2.000000", "4.000000", "5"]


def test_separation_of_unknown_model_is_refused():
    with pytest.raises(report.ReportError, match="model kind 'xx'"):
        report.summarise_separation([separation_unit("xx", 0, "t", 1.0)], KINDS)


def test_report_without_separation_input_has_no_separation_section(written):
    folder = written[0][0]
    assert not (folder / report.SEPARATION_CSV).exists()
    assert "Separation quality" not in (folder / "report.md").read_text()


def test_report_with_separation_scores_and_with_a_note(tmp_path):
    inputs = report_inputs()
    extra = {"exact reference": {kind: [4.0, 5.0] for kind in KINDS}}
    paths = report.write_report(tmp_path / "with", dpi=TEST_DPI, separation={"units": separation_units()},
                                extra_tod_r=extra, **inputs)
    names = {p.name for p in paths}
    assert {report.SEPARATION_CSV, report.SEPARATION_JSON, report.SEPARATION_FIGURE} <= names
    text = (tmp_path / "with" / "report.md").read_text()
    assert "## Separation quality" in text and "(2 channels)" in text
    assert text.index("## Separation quality") < text.index("## Figures")
    assert json.loads((tmp_path / "with" / report.SEPARATION_JSON).read_text())["rows"][0]["model"] == "DAE"
    note = report.separation_section(None, [], "no audio here.")
    assert note[-1] == "*The separation table is left out: no audio here.*\n"
    series = report.tod_r_series(inputs["units"], KINDS, STRATEGIES, extra)
    assert list(series) == ["NCA student", "NCA compositional", "exact reference"]
    assert series["NCA student"]["sf"] == [u["strategies"]["student"]["tod_r"] for u in inputs["units"]
                                           if u["kind"] == "sf"]


def test_one_run_per_model_is_said_in_the_singular():
    inputs = report_inputs()
    inputs["histories"] = {kind: [history(0)] for kind in KINDS}
    inputs["metadata"].update(data={"root": "/data/musdb18", "cut_list": "the published SiSEC 2018 list (50 excerpts)"},
                              overrides=["train.runs=1", "nca.seed=3"])
    del inputs["units"], inputs["kinds"], inputs["strategies"]
    text = report.render_report(report.summarise(make_units(), kinds=KINDS, strategies=STRATEGIES),
                                units=make_units(), kinds=KINDS, strategies=STRATEGIES, n_freq=N_FREQ, **inputs)
    header = run_paragraph(text)
    assert "each trained once from a random initialisation" in header
    assert "each model through its one trained run" in header
    assert "Data from `/data/musdb18`; test excerpts from the published SiSEC 2018 list (50 excerpts)." in header
    assert "Command-line overrides of the profile: `train.runs=1`, `nca.seed=3`." in header
    assert "of its one training run" in text and "each model's one run" in text
    for plural in ("1 times", "the 1 runs", "drawn at random"):
        assert plural not in text


def test_several_runs_keep_the_plural():
    inputs = report_inputs()
    header = report.render_report(report.summarise(inputs.pop("units"), kinds=KINDS, strategies=STRATEGIES),
                                  units=make_units(), n_freq=N_FREQ, **inputs)
    header = run_paragraph(header)
    assert "each trained 2 times from different random initialisations" in header
    assert "Data from" not in header and "overrides" not in header  # neither was given


# ------------------------------------------------------------- NCA diagnostics


def test_diagnostics_count_converged_fits_ranks_and_spread():
    units = make_units()
    units[0]["strategies"]["student"]["converged"] = False  # DAE, segment 0
    units[0]["strategies"]["student"]["tod_r_range"] = [1.0, 1.5]
    units[1]["strategies"]["student"]["tod_r_range"] = [2.0, 2.1]
    units[1]["strategies"]["student"]["spread"] = [{"init_seed": 9, "tod_r": 2.1}]

    diagnostics = report_diagnostics.diagnose(units, kinds=KINDS, strategies=STRATEGIES)

    rows = {(r["kind"], r["strategy"]): r for r in diagnostics["convergence"]["rows"]}
    assert (rows["dae", "student"]["converged"], rows["dae", "student"]["fits"]) == (2, 3)
    assert rows["dae", "compositional"]["converged"] == 3
    assert rows["dae", "student"]["relative_error"]["median"] == pytest.approx(0.1)
    assert rows["dae", "student"]["spread"]["median_width"] == pytest.approx(0.3)  # widths 0.5 and 0.1
    assert rows["dae", "student"]["spread"]["segments"] == 2 and rows["dae", "student"]["spread"]["seeds"] == 2
    assert rows["sf", "student"]["spread"]["segments"] == 0
    assert diagnostics["regime"]["determined"] == 0 and diagnostics["regime"]["rank_max"] == N_FRAMES
    min_norm = next(r for r in diagnostics["exact_references"]["rows"] if r["key"] == "min_norm")
    assert min_norm["cells"]["mss-dae"]["tod_r"]["mean"] == 5.0  # 4, 5, 6
    identity = next(r for r in diagnostics["exact_references"]["rows"] if r["key"] == "identity")
    assert identity["cells"]["sf"]["tod_r"]["all_inf"]
    json.dumps(diagnostics, allow_nan=False)


def test_the_note_says_what_tod_r_measures_when_fits_did_not_converge_or_are_underdetermined():
    units = make_units()
    note = report_diagnostics.measurement_note(report_diagnostics.diagnose(units, kinds=KINDS, strategies=STRATEGIES), STRATEGIES)
    assert "underdetermined on 9 of 9 segments (rank X = 8 < F = 16" in note
    assert "DAE 1.20 to 101.00" in note  # nearest the student's initial C, nearest the identity
    assert "stopped changing by" not in note  # every fit converged
    assert "stop above the minimum of their own loss" in note and "DAE 0.00 against 0.10" in note

    units[4]["strategies"]["compositional"]["converged"] = False
    note = report_diagnostics.measurement_note(report_diagnostics.diagnose(units, kinds=KINDS, strategies=STRATEGIES), STRATEGIES)
    assert "17 of 18 NCA fits stopped changing" in note and "NCA compositional 8 of 9" in note

    for unit in units:
        unit["references"].update(rank=N_FREQ, determined=True)
        unit["references"]["min_norm"]["relative_error"] = 0.5  # the student fits (0.1) beat least squares
        unit["strategies"]["compositional"]["converged"] = True
    diagnostics = report_diagnostics.diagnose(units, kinds=KINDS, strategies=STRATEGIES)
    assert report_diagnostics.measurement_note(diagnostics, STRATEGIES) == ""
    assert "determined on every segment (rank X = F = 16" in report_diagnostics.regime_sentence(diagnostics)


def test_report_md_opens_with_the_note_and_has_the_new_tables(written):
    text = (written[0][0] / "report.md").read_text()
    title, rest = text.split("\n", 1)
    headline, note = rest.lstrip().split("\n\n")[:2]
    assert headline.startswith("Where rank X < F (9 of 9 segments), the least-squares couplings of C X = V form a family")  # rank 8 < F = 16
    assert note.startswith("**What the TOD-R column measures here.**")
    assert "## Exact references" in text and "## Convergence of the NCA" in text
    assert "| least squares, minimum norm: V X⁺ | 5.00 (0.82) | 12.00 (0.00) |" in text
    assert "| identity | inf |" in text
    rows = read_csv(written[0][0] / "nca_convergence.csv")
    assert rows[1][:4] == ["DAE", "student", "3", "3"]


def test_units_without_diagnostics_are_refused_with_a_way_out():
    units = make_units()
    del units[2]["references"]
    with pytest.raises(UserError, match="has no references.*re-run the couplings stage"):
        report_diagnostics.diagnose(units, kinds=KINDS, strategies=STRATEGIES)


def test_captions_name_the_models_reported_from_their_registered_names(monkeypatch, written):
    text = (written[0][0] / "report.md").read_text()
    direct = [report.display_name(k) for k in KINDS if not MODEL_KINDS[k].masks_input]
    masking = [report.display_name(k) for k in KINDS if MODEL_KINDS[k].masks_input]
    assert (f"Ŷ(C) = C X for {direct[0]} and {direct[1]}, X ⊙ (C X) for {masking[0]}, whose ŷ is the masked "
            "mixture") in text
    assert f"the mask for {masking[0]}) of the same segment" in text
    monkeypatch.setitem(MODEL_KINDS, "sf4", ModelKind("sf4", 4, True, "SF-4", "a deeper SF, added by a test"))
    assert reconstruction_text(["dae", "sf", "sf4"]) == (
        "Ŷ(C) = C X for DAE, X ⊙ (C X) for SF and SF-4, whose ŷ is the masked mixture")
    assert reconstruction_text(["sf4"]) == "Ŷ(C) = X ⊙ (C X) for SF-4, whose ŷ is the masked mixture"


# ------------------------------------------------------------- devices, reading guide, glossary


def test_report_md_says_where_each_stage_ran_and_flags_shards_that_differ():
    from nca_np.report.stage import devices_differ, stage_devices

    gpu = {"backend": "cupy", "device": "NVIDIA H200", "line": "GPU 0: NVIDIA H200, CuPy 14.0.1, CUDA 12.8"}
    cpu = {"backend": "numpy", "device": "CPU", "line": "CPU (NumPy 2.4.6): no GPU found"}
    records = [{"stage": "couplings", "shard": "1of2", "seconds": 1.0, "backend": "numpy", "device": cpu},
               {"stage": "couplings", "shard": "0of2", "seconds": 1.0, "backend": "cupy", "device": gpu},
               {"stage": "train", "shard": "0of1", "seconds": 2.0, "backend": "cupy", "device": gpu}]
    devices = stage_devices(records)
    assert list(devices) == ["train", "couplings"]  # the order the stages run in
    assert [entry["shard"] for entry in devices["couplings"]] == ["0of2", "1of2"]
    assert devices_differ(records) == "the shards or resumptions of couplings ran on different devices"
    assert devices_differ(records[1:]) is None
    inputs = report_inputs()
    inputs["metadata"].update(stage_devices=devices, devices_differ=devices_differ(records))
    text = report.render_report(report.summarise(inputs.pop("units"), kinds=KINDS, strategies=STRATEGIES),
                                units=make_units(), n_freq=N_FREQ, **inputs)
    assert "\n- train: GPU 0: NVIDIA H200, CuPy 14.0.1, CUDA 12.8\n" in text
    assert ("\n- couplings: shard 0of2 on GPU 0: NVIDIA H200, CuPy 14.0.1, CUDA 12.8; shard 1of2 on "
            "CPU (NumPy 2.4.6): no GPU found\n") in text
    assert "**The devices differ:** the shards or resumptions of couplings" in text
    assert text.index("- train:") < text.index("## Table 1")


def test_reading_guide_comes_before_the_tables_and_each_table_links_the_glossary(written):
    text = (written[0][0] / "report.md").read_text()
    guide = text.index("**How to read this report.**")
    assert guide < text.index("## Table 1")
    paragraph = text[guide:].split("\n", 1)[0]
    assert "Table 1" in paragraph and "Table 2" in paragraph and "separation table" not in paragraph
    for title, term in (("## Table 1", "[TOD-R](docs/method.md#glossary-tod-r)"),
                        ("## Table 2", "[SNR (model)](docs/method.md#glossary-snr)"),
                        ("## Exact references", "[rank X](docs/method.md#glossary-rank-x)"),
                        ("## Convergence of the NCA", "[converged](docs/method.md#glossary-converged)")):
        section = text[text.index(title):]
        section = section[:section.index("\n## ", 1)]
        assert term in section, title
    assert "Computed on" not in text  # no device records in these metadata: no device lines


def test_the_glossary_anchors_the_report_links_exist():
    from pathlib import Path

    from nca_np.report.prose import SECTION_SYMBOLS

    method = (Path(__file__).resolve().parents[1] / "docs" / "method.md").read_text(encoding="utf-8")
    for _, terms in SECTION_SYMBOLS:
        for _, anchor in terms:
            assert f'<a id="{anchor}"></a>' in method, anchor
    assert '<a id="glossary"></a>' in method


def test_the_glossary_names_functions_that_exist():
    """The glossary's entries for held-out scores, ridge and the couplings
    stage name the functions that compute them."""
    import importlib
    import re
    from pathlib import Path

    method = (Path(__file__).resolve().parents[1] / "docs" / "method.md").read_text(encoding="utf-8")
    glossary = method[method.index('<a id="glossary"></a>'):]
    named = set(re.findall(r"`((?:heldout|references|couplings|explain)\.\w+(?:\.\w+)?)", glossary))
    assert {"heldout.score_matrices", "heldout.cross_validated_ridge", "heldout.pooled_ridge",
            "references.ridge_couplings", "couplings.fit_unit"} <= named
    for name in sorted(named):
        module, *attributes = name.split(".")
        value = importlib.import_module(f"nca_np.{module}")
        for attribute in attributes:
            assert hasattr(value, attribute), name
            value = getattr(value, attribute)


# ------------------------------------------------------------- held-out scores and claims

HELDOUT_NAMES = ("student", "compositional", "min_norm", "nearest_identity", "mean_local_map", "ridge",
                 "pooled_ridge", "linear", "identity")


def with_heldout(unit, offset=0.0):
    """The unit with held-out scores of every matrix (other tracks: in-sample SNR − 10 dB + offset)
    and ridge couplings, as the couplings stage writes them."""
    unit = dict(unit)
    number = unit["segment"]["number"]
    scores = {name: {"same_track": {"snr_model_db": 1.0 + number, "relative_error": 0.5, "frames": 8},
                     "other_tracks": {"snr_model_db": -2.0 + number + offset + (5.0 if "ridge" in name else 0.0),
                                      "relative_error": 0.9, "frames": 8}} for name in HELDOUT_NAMES}
    unit["heldout"] = {"segments": {"same_track": ["s0009"], "other_tracks": ["s0010", "s0011"]},
                       "scores": scores, "seconds": 0.1}
    unit["references"] = {**unit["references"],
                          "ridge": {**reference(2.0 + number), "alpha": 10.0 ** -number, "pooled_segments": 0},
                          "pooled_ridge": {**reference(3.0), "alpha": 0.01, "pooled_segments": 1}}
    return unit


def heldout_inputs():
    inputs = report_inputs()
    inputs["units"] = [with_heldout(u) for u in inputs["units"]]
    return inputs


def test_report_has_the_heldout_table_and_the_claims_with_computed_verdicts(tmp_path):
    paths = report.write_report(tmp_path, dpi=TEST_DPI, **heldout_inputs())
    names = {p.name for p in paths}
    assert {"heldout_scores.csv", "heldout_scores.json", "claims.csv"} <= names
    text = (tmp_path / "report.md").read_text()
    assert "## Held-out scores" in text and "## The paper's claims, tested" in text
    assert "## Replication of the paper's tables" in text
    assert text.index("## Held-out scores") < text.index("## Replication of the paper's tables")
    # other tracks: segments 0, 1, 2 give −2, −1, 0 dB (mean −1) for most matrices, +5 dB for the ridges
    rows = {(r["couplings"], r["model"]): r for r in csv.DictReader((tmp_path / "heldout_scores.csv").open())}
    assert float(rows["min_norm", "DAE"]["heldout_other_tracks_snr_db_mean"]) == pytest.approx(-1.0)
    assert float(rows["ridge", "SF"]["heldout_other_tracks_snr_db_mean"]) == pytest.approx(4.0)
    assert float(rows["ridge", "SF"]["tod_r_mean"]) == pytest.approx(3.0)
    assert rows["identity", "DAE"]["tod_r_mean"] == "inf"
    # the opening says which generalise, from those numbers
    headline = next(p for p in text.split("\n\n") if p.startswith("**Which couplings"))
    beat, fail = headline.split("Those that do not:")
    assert "ridge, α chosen on same-track segments (DAE 4.0" in beat and "V X⁺" in fail and "V X⁺" not in beat
    # the exact references table carries the held-out SNR beside TOD-R and SNR
    assert "| least squares, minimum norm: V X⁺ | 5.00 (0.82) | 12.00 (0.00) | 2.00 (0.82) / -1.00 (0.82) |" in text
    claims_rows = list(csv.DictReader((tmp_path / "claims.csv").open()))
    verdicts = {r["verdict"] for r in claims_rows}
    assert verdicts <= {"holds", "does not hold", "not identified on this data"} and len(claims_rows) > 10
    held = [r for r in claims_rows if "held-out SNR (other tracks)" in r["measure_a"]]
    assert held and all(r["claim"] in ("iv", "v") for r in held)
    assert any(r["measure_a"] == "ridge (cross-validated) TOD-R" for r in claims_rows)


def test_the_ridge_alpha_per_model_is_reported():
    units = [with_heldout(u) for u in make_units()]
    table = report_diagnostics.heldout_table(units, kinds=KINDS, strategies=STRATEGIES)
    # α = 1, 0.1, 0.01 on segments 0, 1, 2
    assert table["ridge"]["dae"]["ridge"]["alpha"]["median"] == pytest.approx(0.1)
    assert (table["ridge"]["dae"]["ridge"]["alpha"]["min"], table["ridge"]["dae"]["ridge"]["alpha"]["max"]) == \
        pytest.approx((0.01, 1.0))
    assert "ridge α median 0.100000 (range 0.010000–1.000000)" in report_diagnostics.heldout_caption(table)


def test_skipped_dead_units_and_diverged_fits_are_counted_not_averaged(tmp_path):
    inputs = heldout_inputs()
    dead = inputs["units"][1]  # DAE, segment 1
    inputs["units"][1] = {key: dead[key] for key in ("config_hash", "code_version", "kind", "segment", "run",
                                                     "composition")}
    inputs["units"][1]["skipped"] = "run 1 is dead: the decoder output is zero on every frame"
    inputs["units"][3]["strategies"]["student"]["diverged"] = True  # MSS-DAE, segment 0
    inputs["units"][3]["strategies"]["student"]["tod_r"] = 1e30
    report.write_report(tmp_path, dpi=TEST_DPI, **inputs)
    text = (tmp_path / "report.md").read_text()
    assert "1 unit left out, their drawn run dead: DAE s0001 (run 1)." in text
    table1 = {r["model"]: r for r in csv.DictReader((tmp_path / "table1_tod_r.csv").open())}
    assert table1["DAE"]["student_n"] == "2"
    assert float(table1["DAE"]["student_mean"]) == pytest.approx((1.0 + 3.0) / 2)
    assert table1["MSS-DAE"]["student_n"] == "2"  # the diverged fit left out
    assert float(table1["MSS-DAE"]["student_mean"]) == pytest.approx((3.0 + 4.0) / 2)
    convergence = {(r["model"], r["strategy"]): r for r in csv.DictReader((tmp_path / "nca_convergence.csv").open())}
    assert convergence["MSS-DAE", "student"]["diverged"] == "1"
    assert "(1 diverged)" in text
    diagnostics = json.loads((tmp_path / "nca_diagnostics.json").read_text())
    assert diagnostics["skipped"] == [{"kind": "dae", "segment": "s0001", "run": 1,
                                       "reason": "run 1 is dead: the decoder output is zero on every frame"}]


def test_table1_bolds_no_strategy_whose_tod_r_stayed_at_its_initialisation(tmp_path):
    inputs = report_inputs()
    for unit in inputs["units"]:  # the student's TOD-R equals its initial C's
        entry = unit["strategies"]["student"]
        entry["trajectory"] = [{"iteration": 0, "tod_r": entry["tod_r"], "relative_error": 2.0}]
    report.write_report(tmp_path, dpi=TEST_DPI, **inputs)
    text = (tmp_path / "report.md").read_text()
    table1 = text[text.index("### Table 1"):text.index("### Table 2")]
    assert "No bold in the column of NCA student" in table1
    assert "| DAE | 3 | 2.00 (0.82) | **" in table1  # the compositional's smallest mean stays bold
    assert table1.count("**") == 2
    assert "The TOD-R of the NCA student is its initialisation's" in text
    claims = text[text.index("## The paper's claims, tested"):]
    assert "The rows on the TOD-R of the NCA student compare values their random initialisation set" in claims


def test_a_report_of_only_skipped_units_says_so_without_tables(tmp_path):
    inputs = report_inputs()
    inputs["units"] = [{**{key: u[key] for key in ("config_hash", "code_version", "kind", "segment", "run")},
                        "skipped": "run 0 is dead: its output is zero on all 8 sample frames"}
                       for u in inputs["units"]]
    inputs["figure_segment"] = {"track": "track 0", "segment_index": 1}
    paths = report.write_report(tmp_path, dpi=TEST_DPI, **inputs)
    text = (tmp_path / "report.md").read_text()
    assert "**No couplings were fitted.** All 9 couplings units were skipped" in text
    assert "its output is zero on all 8 sample frames" in text and "## Training runs" in text
    assert not (tmp_path / "table1_tod_r.csv").exists() and (tmp_path / "metadata.json") in paths
