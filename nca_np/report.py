"""The report: Tables 1–3, Figures 2–3, curves and metadata (docs/method.md#measures and docs/method.md#protocol).

This module knows nothing of where runs and couplings are stored: the
experiment gathers and validates the saved results and hands them over as
plain data. :func:`summarise` turns the per-segment results into the numbers
of the paper's three tables; :func:`write_report` checks every input, then
writes the report folder:

- ``report.md``: what was run, Tables 1–3, the figures, the metadata;
- ``table1_tod_r.csv``, ``table2_snr_model.csv``, ``table3_snr_true.csv``
  and ``tables.json`` (the :func:`summarise` dict);
- ``metadata.json`` (the caller's metadata, verbatim);
- the PNGs of :mod:`nca_np.figures` (``figure2_linear_compositions.png``,
  ``figure3_couplings.png``, ``training_loss.png``, ``nca_convergence.png``,
  ``nca_trajectories.png``), drawn from the host copies of the matrices
  checked here;
- the NCA's diagnostics (:mod:`nca_np.nca_report`): the exact references
  and the convergence tables (``exact_references.csv``,
  ``nca_convergence.csv``, ``nca_diagnostics.json``), and at the top of
  ``report.md`` a note on what the TOD-R column measures when fits did not
  converge or the student problem is underdetermined.

Every file is written atomically, and the text files are a pure function of
the inputs (no clock, sorted keys, fixed float formats), so the same results
give byte-identical tables and report.

Statistics: each table cell is the mean and the *population* standard
deviation (ddof = 0) over the finite values of its segments; infinite and
NaN values (e.g. the TOD-R of a diagonal matrix, an exact reconstruction's
SNR) are left out of both and counted, and the counts are shown.

Matrices follow the paper: rows are output frequencies, columns input
frequencies (``C x`` maps an input frame to an output frame); bin ``k`` lies
at ``k · sample_rate / n_fft`` Hz.
"""

from __future__ import annotations

import csv
import io
import json
import math
import numbers
from pathlib import Path

import numpy

from . import backend, metrics, nca_report
from .atomic import write_json, write_text
from .errors import UserError
from .models import MODEL_KINDS
from .nca import STRATEGIES, get_strategy, strategy_names
from .figures import (CLIP_PERCENTILE, DPI, FIGURE_FILES, SEPARATION_FIGURE, ZOOM_CLIP_PERCENTILE, ZOOM_HZ,
                      median_and_quartiles, plot_sdr_vs_tod_r, write_figures, zoom_bins)

COMPOSITION_READINGS = {
    "paper": "Couplings composed with the paper's reading (W ⊕ b = W + b1ᵀ, Z = P(W ⊕ b)ᵀ)",
    "authors-code": "Couplings composed with the authors'-code reading (M = W + 1bᵀ, Z = M Pᵀ)",
}

TABLE1, TABLE2, TABLE3 = "table1_tod_r", "table2_snr_model_db", "table3_snr_true_db"
CSV_FILES = {TABLE1: "table1_tod_r.csv", TABLE2: "table2_snr_model.csv", TABLE3: "table3_snr_true.csv"}
#: Decimals of the "mean (std)" cells in report.md; the CSVs carry six.
DECIMALS = {TABLE1: 2, TABLE2: 2, TABLE3: 2}
CSV_FORMAT = ".6f"
STD_NOTE = "population standard deviation (ddof = 0) over the finite values"


class ReportError(UserError, ValueError):
    """Results that cannot be reported as given (shapes, kinds, mixed runs)."""


# ------------------------------------------------------------- statistics


def cell_statistics(values) -> dict:
    """Mean and population std of the finite values, with counts.

    Args:
        values: iterable of Python or NumPy numbers (``None`` counts as NaN).

    Returns:
        ``{"mean", "std", "n", "n_segments", "n_pos_inf", "n_neg_inf",
        "n_nan"}``: ``mean`` and ``std`` (ddof = 0) are Python floats over
        the ``n`` finite values, or ``None`` when there are none;
        ``n_segments`` counts all values.
    """
    array = numpy.array([math.nan if v is None else float(v) for v in values], dtype=numpy.float64)
    finite = array[numpy.isfinite(array)]
    n = int(finite.size)
    return {
        "mean": float(finite.mean()) if n else None,
        "std": float(finite.std()) if n else None,
        "n": n,
        "n_segments": int(array.size),
        "n_pos_inf": int(numpy.count_nonzero(array == math.inf)),
        "n_neg_inf": int(numpy.count_nonzero(array == -math.inf)),
        "n_nan": int(numpy.count_nonzero(numpy.isnan(array))),
    }


def _number(value, where: str) -> float:
    """A unit's value as a float (``None`` → NaN), or a clear error."""
    if value is None:
        return math.nan
    if isinstance(value, bool):
        raise ReportError(f"{where}: expected a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ReportError(f"{where}: expected a number, got {value!r}") from None


def _unit_name(unit: dict) -> str:
    segment = unit.get("segment", {})
    return f"unit ({unit.get('kind')!r}, segment {segment.get('id', '?')!r})"


def _field(unit: dict, path: tuple) -> float:
    """``unit[path[0]][path[1]]…`` as a float, with the path in any error."""
    value = unit
    for key in path:
        if not isinstance(value, dict) or key not in value:
            raise ReportError(f"{_unit_name(unit)} has no {'.'.join(path)}: "
                              "re-run the couplings stage for it")
        value = value[key]
    return _number(value, f"{_unit_name(unit)}.{'.'.join(path)}")


def _table_columns(table: str, strategies) -> list[tuple[str, str, tuple]]:
    """(key, label, path in a unit) of each column of one table."""
    if table == TABLE1:
        return [(s, strategy_label(s), ("strategies", s, "tod_r")) for s in strategies]
    if table == TABLE2:
        return ([(s, strategy_label(s), ("strategies", s, "snr_model_db")) for s in strategies]
                + [("linear", "linear composition", ("baselines", "linear", "snr_model_db")),
                   ("identity", "identity", ("baselines", "identity", "snr_model_db"))])
    return ([(s, strategy_label(s), ("strategies", s, "snr_true_db")) for s in strategies]
            + [("model_output", "model output", ("model_snr_true_db",))])


TABLE_TITLES = {
    TABLE1: "Table 1: TOD-R of the couplings matrices (Eq. 22)",
    TABLE2: "Table 2: SNR (dB) between the model's output and Ŷ(C)",
    TABLE3: "Table 3: SNR (dB) between the true vocals and Ŷ(C), and the model's own output",
}


def _summarise_table(table: str, by_kind: dict, kinds, strategies) -> dict:
    columns = _table_columns(table, strategies)
    rows = []
    for kind in kinds:
        units = by_kind[kind]
        cells = {key: cell_statistics(_field(u, path) for u in units) for key, _, path in columns}
        rows.append({"kind": kind, "model": display_name(kind), "n_segments": len(units), "cells": cells})
    return {
        "title": TABLE_TITLES[table],
        "unit": "" if table == TABLE1 else "dB",
        "std": STD_NOTE,
        "columns": [{"key": key, "label": label} for key, label, _ in columns],
        "rows": rows,
    }


def display_name(kind: str) -> str:
    """The registered kind's display name ("DAE", "MSS-DAE", "SF"), the
    name itself for a kind that is not registered."""
    spec = MODEL_KINDS.get(kind)
    return spec.display_name if spec is not None else kind


def strategy_label(strategy: str) -> str:
    """The registered strategy's label ("NCA student", …)."""
    return get_strategy(strategy).label


# ------------------------------------------------------------- validation


def _check_kinds_strategies(kinds, strategies) -> None:
    if not kinds:
        raise ReportError("no model kinds to report: pass kinds, e.g. ['dae', 'mss-dae', 'sf']")
    if len(set(kinds)) != len(kinds):
        raise ReportError(f"kinds lists a model twice: {list(kinds)}")
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        raise ReportError(f"unknown NCA strategy {unknown[0]!r}: use a subset of {list(strategy_names())}")
    if not strategies:
        raise ReportError("no NCA strategy to report: pass strategies, a subset of "
                          f"{list(strategy_names())}")
    if len(set(strategies)) != len(strategies):
        raise ReportError(f"strategies lists a strategy twice: {list(strategies)}")


def _check_shared(units, key: str, what: str) -> None:
    """A clear error unless every unit has the same ``unit[key]``."""
    found = sorted({str(u.get(key)) for u in units})
    if len(found) != 1:
        raise ReportError(f"the results mix {what}s {', '.join(found)}: report one experiment at a time "
                          "(re-run the stages that are out of date)")


def _group_units(units, kinds) -> dict:
    """Units by kind, sorted by segment number then id; checks duplicates."""
    by_kind = {kind: [] for kind in kinds}
    seen = set()
    for unit in units:
        if not isinstance(unit, dict) or not isinstance(unit.get("segment"), dict):
            raise ReportError(f"a result is not a unit dict with a 'segment' dict: {str(unit)[:80]}")
        kind = unit.get("kind")
        if kind not in by_kind:
            raise ReportError(f"{_unit_name(unit)}: model kind {kind!r} is not among kinds {list(kinds)}")
        segment_id = unit["segment"].get("id")
        if (kind, segment_id) in seen:
            raise ReportError(f"{_unit_name(unit)} appears twice: "
                              "each (model, segment) must be reported once")
        seen.add((kind, segment_id))
        by_kind[kind].append(unit)
    for kind in kinds:
        by_kind[kind].sort(key=lambda u: (u["segment"].get("number", 0), str(u["segment"].get("id"))))
    return by_kind


def summarise(units, *, kinds, strategies) -> dict:
    """The numbers of Tables 1–3 (docs/method.md#protocol), as a JSON-able dict.

    - ``table1_tod_r``: TOD-R (Eq. 22) of each strategy's couplings.
    - ``table2_snr_model_db``: SNR(model output ŷ, Ŷ(C)) in dB for C = NCA
      student, NCA compositional, linear composition, identity.
    - ``table3_snr_true_db``: SNR(true vocals, Ŷ(C)) for each NCA strategy,
      and SNR(true vocals, ŷ) of the model itself.

    Args:
        units: one dict per (model kind, segment) with the keys ``kind``,
            ``segment`` (``id``, ``number``, ``track`` …), ``config_hash``,
            ``code_version``, ``composition``, ``strategies`` (per strategy
            ``tod_r``, ``snr_model_db``, ``snr_true_db``, ``losses`` …),
            ``baselines`` (``linear``: ``snr_model_db``, ``tod_r``;
            ``identity``: ``snr_model_db``) and ``model_snr_true_db``.
        kinds: the model kinds in display order ("dae", "mss-dae", "sf").
        strategies: the NCA strategies in display order, a subset of
            ("student", "compositional").

    Returns:
        The three tables by name, each ``{"title", "unit", "std",
        "columns": [{"key", "label"}], "rows": [{"kind", "model",
        "n_segments", "cells": {column key: cell}}]}``, rows in the order
        of ``kinds``, a cell as in :func:`cell_statistics`.

    Raises:
        ReportError: no units, an unknown kind or strategy, a (model,
            segment) twice, a missing or non-numeric value, or results of
            different configurations or compositions mixed together.
    """
    kinds, strategies = list(kinds), list(strategies)
    _check_kinds_strategies(kinds, strategies)
    units = list(units)
    if not units:
        raise ReportError("no couplings results to report: run the couplings stage first")
    _check_shared(units, "config_hash", "configuration hash")
    _check_shared(units, "composition", "composition reading")
    by_kind = _group_units(units, kinds)
    return {table: _summarise_table(table, by_kind, kinds, strategies) for table in (TABLE1, TABLE2, TABLE3)}


def describe_units(units) -> dict:
    """What the results are of: the reading of Eqs. 18–19, configuration
    hash, code versions, numbers of segments and tracks, segment lengths.

    Args:
        units: as for :func:`summarise` (which validates them).
    """
    return {
        "composition": units[0].get("composition"),
        "config_hash": units[0].get("config_hash"),
        "code_versions": sorted({str(u.get("code_version")) for u in units}),
        "n_segments": len({u["segment"].get("id") for u in units}),
        "n_tracks": len({str(u["segment"].get("track")) for u in units}),
        "frames": _distinct(u["segment"].get("frames") for u in units),
    }


# ------------------------------------------------------------------ text


def _undefined_mean(cell: dict) -> str:
    """What a cell without finite values shows: 'inf' if all were +inf …"""
    if cell["n_segments"] == 0:
        return "–"
    if cell["n_pos_inf"] == cell["n_segments"]:
        return "inf"
    if cell["n_neg_inf"] == cell["n_segments"]:
        return "-inf"
    return "nan"


def format_cell(cell: dict, decimals: int, *, bold: bool = False) -> str:
    """"mean (std)" of one cell, with the left-out values named.

    Example: ``12.34 (1.20)``, or ``12.34 (1.20) [n = 28; 2 inf left out]``.
    """
    if cell["n"] == 0:
        text = _undefined_mean(cell)
    else:
        text = f"{cell['mean']:.{decimals}f} ({cell['std']:.{decimals}f})"
        if bold:
            text = f"**{text}**"
    left_out = [f"{cell[key]} {name}" for key, name in
                (("n_pos_inf", "inf"), ("n_neg_inf", "-inf"), ("n_nan", "nan")) if cell[key]]
    if left_out and cell["n"] > 0:
        text += f" [n = {cell['n']}; {', '.join(left_out)} left out]"
    return text


def _smallest_means(table: dict) -> dict:
    """Per column, the kinds whose finite mean is the smallest (≥ 2 rows)."""
    smallest = {}
    for column in table["columns"]:
        means = {row["kind"]: row["cells"][column["key"]]["mean"] for row in table["rows"]}
        finite = {k: m for k, m in means.items() if m is not None}
        if len(finite) >= 2:
            low = min(finite.values())
            smallest[column["key"]] = {k for k, m in finite.items() if m == low}
    return smallest


def _markdown(header: list[str], rows) -> str:
    """A Markdown table: ``header`` and each of ``rows`` list cell texts."""
    def line(cells) -> str:
        return "| " + " | ".join(cells) + " |"
    return "\n".join([line(header), "|" + "---|" * len(header)] + [line(cells) for cells in rows]) + "\n"


def markdown_table(table: dict, decimals: int, *, bold_smallest: bool = False) -> str:
    """A summarised table as Markdown: model, n, one "mean (std)" per column."""
    bold = _smallest_means(table) if bold_smallest else {}
    header = ["Model", "n"] + [c["label"] for c in table["columns"]]
    rows = [[row["model"], str(row["n_segments"])]
            + [format_cell(row["cells"][c["key"]], decimals, bold=row["kind"] in bold.get(c["key"], ()))
               for c in table["columns"]]
            for row in table["rows"]]
    return _markdown(header, rows)


def _csv_number(value) -> str:
    """CSV text of a float ('inf', '-inf', 'nan' when not finite) or None."""
    return "nan" if value is None else format(value, CSV_FORMAT)


def table_csv(table: dict) -> str:
    """A summarised table as CSV: ``model``, then ``<column>_mean``,
    ``<column>_std``, ``<column>_n`` per column (``n`` = finite values).

    A cell without finite values has mean 'inf', '-inf' or 'nan' (as
    :func:`format_cell` shows it) and std 'nan'.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = ["model"]
    for column in table["columns"]:
        header += [f"{column['key']}_{stat}" for stat in ("mean", "std", "n")]
    writer.writerow(header)
    for row in table["rows"]:
        record = [row["model"]]
        for column in table["columns"]:
            cell = row["cells"][column["key"]]
            mean = _csv_number(cell["mean"]) if cell["n"] else _undefined_mean(cell).replace("–", "nan")
            record += [mean, _csv_number(cell["std"]), str(cell["n"])]
        writer.writerow(record)
    return buffer.getvalue()


#: Said under Tables 2 and 3: where the SNRs are measured.
SNR_DOMAIN = (" SNRs are computed over the whole F×T segment on the models' features: magnitudes with "
              "each frequency band divided by its standard deviation over the training mixtures.")
TABLE_CAPTIONS = {
    TABLE1: ("Trace-to-off-diagonal ratio of the couplings matrices C fitted by the NCA, mean (std) over "
             "segments. Large values: the activity sits on the main diagonal, i.e. scalar filtering "
             "(mask-like); small values: activity off the diagonal, i.e. inter-frequency structure. "
             "A structureless random matrix scores about 1. Bold: the smallest value per strategy."),
    TABLE2: ("How well Ŷ(C) reproduces the model's own output ŷ (Ŷ(C) = C X for DAE and MSS-DAE, "
             "X ⊙ (C X) for SF, whose ŷ is the masked mixture), mean (std) over segments; higher is a "
             "more faithful approximation. Baselines: the linear composition of the weights "
             "(Eqs. 11–13, biases neglected) and the identity C = I (the mixture itself)." + SNR_DOMAIN),
    TABLE3: ("SNR between the true vocals and Ŷ(C) for each NCA strategy, and between the true vocals "
             "and the model's own output ŷ, mean (std) over segments: how much separation quality the "
             "approximation keeps or loses." + SNR_DOMAIN),
}


def _lookup(metadata: dict, *paths):
    """The first of the dotted ``paths`` that holds a plain value (text or
    number) in ``metadata``, or None."""
    for path in paths:
        value = metadata
        for key in path.split("."):
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return value
    return None


#: report.md lists metadata dicts of at most this many entries one by one
#: and cuts values at this many characters; metadata.json has everything.
METADATA_MAX_ENTRIES = 24
METADATA_MAX_CHARS = 160


def _flatten(value, prefix: str = "") -> list[tuple[str, str]]:
    """(dotted key, compact JSON text) of every leaf of a nested dict; a
    dict with many entries (e.g. one per segment) becomes one summary row."""
    if isinstance(value, dict) and len(value) > METADATA_MAX_ENTRIES and prefix:
        return [(prefix, f"{len(value)} entries (see metadata.json)")]
    if isinstance(value, dict) and value:
        items = []
        for key in sorted(value, key=str):
            items += _flatten(value[key], f"{prefix}.{key}" if prefix else str(key))
        return items
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, ensure_ascii=False)
    if len(text) > METADATA_MAX_CHARS:
        text = text[:METADATA_MAX_CHARS - 1] + "…"
    return [(prefix, text)]


def _escape(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _distinct(values) -> str:
    """'10' for one distinct value, '8, 10' for several (numbers first)."""
    def order(value):
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        return (not is_number, value if is_number else str(value))
    return ", ".join(str(v) for v in sorted(set(values), key=order))


def _count(n: int, noun: str) -> str:
    """'1 segment', '3 segments'."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _training_text(histories: dict, kinds) -> str:
    """'each trained 10 times …', or the count per model when they differ."""
    counts = {kind: len(histories.get(kind, [])) for kind in kinds}
    shared = "the runs of a model sharing one shuffled batch order per epoch"
    if len(set(counts.values())) == 1:
        count = counts[kinds[0]]
        if count == 1:
            return "each trained once from a random initialisation"
        return f"each trained {count} times from different random initialisations, {shared}"
    per_model = ", ".join(f"{display_name(k)} {_count(n, 'run')}" for k, n in counts.items())
    return f"trained from different random initialisations ({per_model}), {shared}"


def _data_text(metadata: dict) -> str | None:
    """'Data: root …; test excerpts from …. Command-line overrides: …', from
    ``metadata["data"]`` and ``metadata["overrides"]`` (None when neither is there)."""
    data, overrides = metadata.get("data"), metadata.get("overrides")
    parts = []
    if isinstance(data, dict):
        parts.append(f"Data from `{_escape(data.get('root') or 'an unrecorded folder')}`; test excerpts from "
                     f"{_escape(data.get('cut_list') or 'an unrecorded cut list')}.")
    if overrides is not None:
        listed = ", ".join(f"`{_escape(item)}`" for item in overrides)
        parts.append(f"Command-line overrides of the profile: {listed or 'none'}.")
    return " ".join(parts) or None


def _run_paragraph(context: dict, kinds, strategies, histories, metadata, n_freq, sample_rate, n_fft) -> str:
    profile = _lookup(metadata, "profile", "profile.name", "profile_name", "config.profile.name",
                      "configuration.profile.name")
    corpus = _lookup(metadata, "corpus", "config.data.corpus", "configuration.data.corpus")
    parts = [
        f"Profile **{profile or 'not recorded'}** on the **{corpus or 'not recorded'}** corpus.",
        f"Models {', '.join(display_name(k) for k in kinds)}, {_training_text(histories, kinds)}.",
        f"Neural couplings ({', '.join(strategies)}) fitted on {_count(context['n_segments'], 'segment')} "
        f"of T = {context['frames']} frames from {_count(context['n_tracks'], 'test track')}; "
        + ("for each segment and model one trained run, drawn at random." if _runs_per_model(histories) != 1
           else "each model through its one trained run."),
    ]
    data_text = _data_text(metadata)
    if data_text:
        parts.append(data_text)
    if n_freq:
        parts.append(f"F = {n_freq} frequency bins, {sample_rate / n_fft:.2f} Hz apart "
                     f"(sample rate {sample_rate} Hz, FFT size {n_fft}).")
    parts.append(f"Configuration hash `{context['config_hash']}`, code version "
                 f"`{', '.join(context['code_versions'])}`.")
    return " ".join(parts)


def _training_table(histories: dict, kinds) -> str:
    """Per model: runs, epochs, best training loss, training time."""
    header = ["Model", "runs", "epochs (min–max)", "best training loss, mean (std)",
              "training time (s, all runs)"]
    rows = []
    for kind in kinds:
        runs = histories.get(kind, [])
        epochs = [len(run) for run in runs]
        best = cell_statistics(_best_loss(run) for run in runs)
        seconds = sum(_number(r.get("seconds"), "history seconds") for run in runs for r in run
                      if r.get("seconds") is not None)
        span = f"{min(epochs)}–{max(epochs)}" if epochs else "–"
        rows.append([display_name(kind), str(len(runs)), span, format_cell(best, 6), f"{seconds:.1f}"])
    return _markdown(header, rows)


def _best_loss(run) -> float:
    losses = [_number(r.get("loss"), "history loss") for r in run]
    finite = [v for v in losses if math.isfinite(v)]
    return min(finite) if finite else math.nan


def _nca_time_table(units, kinds, strategies) -> str:
    """Per model and strategy: seconds of NCA per segment."""
    header = ["Model"] + [f"{strategy_label(s)}: s per segment, mean (std)" for s in strategies]
    rows = []
    for kind in kinds:
        of_kind = [u for u in units if u["kind"] == kind]
        rows.append([display_name(kind)] + [
            format_cell(cell_statistics(u["strategies"][s].get("seconds") for u in of_kind), 2)
            for s in strategies])
    return _markdown(header, rows)


def _linear_tod_r_text(linear_compositions: dict, kinds) -> str:
    values = [f"{display_name(k)} {metrics.tod_r(linear_compositions[k]):.2f}"
              for k in kinds if k in linear_compositions]
    return f" TOD-R of these matrices: {', '.join(values)}." if values else ""


def _zoom_text(n_freq, sample_rate, n_fft) -> str:
    if not n_freq:
        return f"{ZOOM_HZ / 1000:g} kHz"
    return f"{(zoom_bins(n_freq, sample_rate, n_fft) - 1) * sample_rate / n_fft / 1000:.2g} kHz"


def _runs_per_model(histories: dict) -> int | None:
    """The number of runs of every model, or None when it differs."""
    counts = {len(runs) for runs in (histories or {}).values()}
    return counts.pop() if len(counts) == 1 else None


def _figure_section(linear_compositions: dict, figure_segment, kinds, strategies, zoom: str,
                    histories=None) -> list[str]:
    """Captions and links of the figures (``zoom``: where Figure 3's
    zoom ends, as text)."""
    track = figure_segment.get("track", "?") if figure_segment else "?"
    index = figure_segment.get("segment_index", "?") if figure_segment else "?"
    runs = "of its one training run" if _runs_per_model(histories) == 1 else "averaged over the training runs"
    return [
        ("**Figure 2.** The linear composition of each model's weights (Eqs. 11–13), "
         f"{runs}; colour scale clipped at the {CLIP_PERCENTILE:g}th percentile of |values|."
         f"{_linear_tod_r_text(linear_compositions, kinds)}\n"),
        f"![Figure 2: linear compositions]({FIGURE_FILES['figure2']})\n",
        (f"**Figure 3.** Couplings matrices of track {_escape(track)}, segment {index}: one row per NCA "
         f"strategy ({', '.join(strategies)}), per model the full matrix and a zoom on the bins up to "
         f"{zoom} (colours clipped at the {CLIP_PERCENTILE:g}th and "
         f"{ZOOM_CLIP_PERCENTILE:g}th percentiles of |values|, so the zoom shows the weaker structure "
         "beside the diagonal); the last row shows the target V (the model's decoder output, the mask "
         "for SF) of the same segment in dB, over all bins and over the zoomed bins.\n"),
        f"![Figure 3: couplings of one segment]({FIGURE_FILES['figure3']})\n",
        ("**Training loss** per epoch of every run (thin) and, per epoch, the mean over the runs still "
         "training then (thick), log scale.\n" if _runs_per_model(histories) != 1 else
         "**Training loss** per epoch of each model's one run, log scale.\n"),
        f"![Training loss]({FIGURE_FILES['training']})\n",
        "**NCA convergence**: the L1 error E (Eq. 15) per iteration, median and inter-quartile band over "
        "segments, log scale.\n",
        f"![NCA convergence]({FIGURE_FILES['convergence']})\n",
        "**NCA trajectories**: TOD-R (top) and relative error ‖V − C X‖₁ / ‖V‖₁ (bottom) of each fit's C at "
        "its checkpoints, one line per segment; the horizontal lines are the median TOD-R of the minimum-norm "
        "couplings V X⁺ (dashed) and of the mean local map (dotted), log scales.\n",
        f"![NCA trajectories]({FIGURE_FILES['trajectories']})\n",
    ]


def render_report(tables: dict, *, units, kinds, strategies, histories, linear_compositions, figure_segment,
                  sample_rate, n_fft, metadata, n_freq, separation=None, diagnostics=None) -> str:
    """The text of report.md (deterministic: a function of its arguments).

    Args:
        tables: the :func:`summarise` dict of the same units.
        n_freq: F, or None when no matrix was given.
        separation: None (no separation section), or ``(table, units,
            note)``: the :func:`summarise_separation` table (None when left
            out), its units, and the note saying why it was left out.
        diagnostics: :func:`nca_np.nca_report.diagnose` of the same units
            (computed here when None).
        The others: as for :func:`write_report`.
    """
    context = describe_units(units)
    reading = COMPOSITION_READINGS.get(context["composition"],
                                       f"Couplings composed with the reading {context['composition']!r}")
    diagnostics = diagnostics or nca_report.diagnose(units, kinds=kinds, strategies=strategies)
    note = nca_report.measurement_note(diagnostics, strategies)
    sections = [
        "# Mapping functions of denoising autoencoders: reproduction report\n",
        *([note + "\n"] if note else []),
        f"> **{reading}.**\n",
        _run_paragraph(context, kinds, strategies, histories, metadata, n_freq, sample_rate, n_fft) + " "
        + nca_report.regime_sentence(diagnostics) + "\n",
        f"Each cell is the mean (std) over segments; std is the {STD_NOTE}. The column n counts the "
        "segments per model; values left out of a cell (inf, nan) are named in it.\n",
    ]
    for table in (TABLE1, TABLE2, TABLE3):
        sections += [f"## {tables[table]['title']}\n", TABLE_CAPTIONS[table] + "\n",
                     markdown_table(tables[table], DECIMALS[table], bold_smallest=table == TABLE1),
                     f"CSV: [{CSV_FILES[table]}]({CSV_FILES[table]}); "
                     "all numbers: [tables.json](tables.json).\n"]
    sections += [
        "## Exact references\n", nca_report.references_caption(diagnostics) + "\n",
        nca_report.references_markdown(diagnostics),
        f"CSV: [{nca_report.REFERENCES_CSV}]({nca_report.REFERENCES_CSV}); all numbers: "
        f"[{nca_report.DIAGNOSTICS_JSON}]({nca_report.DIAGNOSTICS_JSON}).\n",
        "## Convergence of the NCA\n", nca_report.convergence_caption(diagnostics) + "\n",
        nca_report.convergence_markdown(diagnostics),
        f"CSV: [{nca_report.CONVERGENCE_CSV}]({nca_report.CONVERGENCE_CSV}).\n",
    ]
    if separation is not None:
        sections += separation_section(*separation)
    zoom = _zoom_text(n_freq, sample_rate, n_fft)
    sections.append("## Figures\n")
    sections += _figure_section(linear_compositions, figure_segment, kinds, strategies, zoom, histories)
    sections += [
        "## Training runs\n",
        _training_table(histories, kinds),
        "## NCA cost\n",
        _nca_time_table(units, kinds, strategies),
        "## Metadata\n",
        "All of it in [metadata.json](metadata.json).\n",
        _markdown(["Key", "Value"], ([_escape(k), _escape(v)] for k, v in _flatten(metadata))),
    ]
    return "\n".join(sections)


# ---------------------------------------------------------------- report


def _check_spectral_settings(sample_rate, n_fft) -> None:
    if not (isinstance(sample_rate, numbers.Real) and sample_rate > 0):
        raise ReportError(f"sample_rate must be a positive number of Hz, got {sample_rate!r}")
    if not (isinstance(n_fft, numbers.Integral) and n_fft > 0):
        raise ReportError(f"n_fft must be a positive integer, got {n_fft!r}")


def host_matrix(array, what: str, *, ndim: int = 2) -> numpy.ndarray:
    """A host NumPy array (device arrays are copied back), shape-checked."""
    host = backend.to_host(array) if backend.array_module(array) is not numpy else numpy.asarray(array)
    if host.ndim != ndim:
        raise ReportError(f"{what} must be {ndim}-D, got shape {tuple(host.shape)}")
    return host


def _check_linear_compositions(linear_compositions: dict, kinds) -> dict:
    """``{kind: (F, F) host array}`` of the kinds given, F >= 2 checked."""
    checked = {}
    for kind in kinds:
        if kind in linear_compositions:
            matrix = host_matrix(linear_compositions[kind], f"linear composition of {kind}")
            if matrix.shape[0] != matrix.shape[1] or matrix.shape[0] < 2:
                raise ReportError(f"linear composition of {kind} must be square (F, F) with F >= 2, "
                                  f"got shape {matrix.shape}")
            checked[kind] = matrix
    return checked


def _check_figure_entry(kind: str, entry: dict, strategies) -> dict:
    """The host arrays Figure 3 draws of one model: ``target`` (F, T) and
    ``C_<strategy>`` (F, F) for the strategies given, where present."""
    arrays = {}
    # the mixture and the true vocals travel with the entry but are not drawn
    if "target" in entry:
        arrays["target"] = host_matrix(entry["target"], f"figure_segment[{kind!r}]['target']")
    for strategy in strategies:
        key = f"C_{strategy}"
        if key in entry:
            arrays[key] = host_matrix(entry[key], f"figure_segment[{kind!r}][{key!r}]")
            n_freq = arrays[key].shape[0]
            if arrays[key].shape != (n_freq, n_freq):
                raise ReportError(f"figure_segment[{kind!r}][{key!r}] must be square (F, F), "
                                  f"got shape {arrays[key].shape}")
            if "target" in arrays and arrays["target"].shape[0] != n_freq:
                raise ReportError(f"figure_segment[{kind!r}]: target has {arrays['target'].shape[0]} bins "
                                  f"but {key} is {arrays[key].shape}: both must use the same F")
    return arrays


def _check_figure_segment(figure_segment, kinds, strategies) -> dict:
    """Figure 3's segment as :func:`nca_np.figures.plot_couplings` draws it:
    ``{kind: _check_figure_entry(…)}`` for every kind, with the ``track``
    and ``segment_index`` given."""
    figure_segment = figure_segment or {}
    checked = {key: figure_segment[key] for key in ("track", "segment_index") if key in figure_segment}
    for kind in kinds:
        checked[kind] = _check_figure_entry(kind, figure_segment.get(kind, {}), strategies)
    return checked


def _check_metadata(metadata) -> dict:
    """A copy of ``metadata`` (``None`` → empty), checked to be JSON-able."""
    metadata = dict(metadata or {})
    try:
        json.dumps(metadata)
    except (TypeError, ValueError) as exc:
        raise ReportError(f"metadata cannot be written as JSON: {exc}") from None
    return metadata


def _frequency_bins(linear_compositions: dict, figure_segment: dict, kinds) -> int | None:
    """F, read from the first matrix drawn (None when there is none).

    Args:
        linear_compositions, figure_segment: as the checks above return them.
    """
    for kind in kinds:
        if kind in linear_compositions:
            return linear_compositions[kind].shape[0]
        entry = figure_segment[kind]
        for key in ("C_student", "C_compositional", "target"):
            if key in entry:
                return entry[key].shape[0]
    return None


def write_report(out_dir, *, units, kinds, strategies, histories, linear_compositions,
                 figure_segment, sample_rate, n_fft, metadata, dpi: int = DPI, hop=None, separation=None,
                 extra_tod_r=None) -> list[Path]:
    """Write the report folder (see the module docstring for its files).

    Args:
        out_dir: the folder (created when missing; files in it are replaced).
        units, kinds, strategies: as for :func:`summarise`.
        histories: ``{kind: [run records]}``, a run's records being one dict
            per epoch with ``epoch``, ``loss``, ``learning_rate``,
            ``seconds``, ``frames_per_second``, ``decision``.
        linear_compositions: ``{kind: (F, F) array}``, the linear
            composition (Eqs. 11–13) averaged over the training runs.
        figure_segment: the segment of Figure 3: ``{kind: {"C_student",
            "C_compositional": (F, F), "mixture", "target", "vocals":
            (F, T)}, "track": str, "segment_index": int}``; a missing
            matrix is drawn as "not run".
        sample_rate: Hz; ``n_fft``: FFT size; bin k lies at
            ``k · sample_rate / n_fft`` Hz.
        metadata: JSON-able dict, written verbatim to metadata.json and
            listed in report.md; its ``profile`` (or ``config.profile.name``)
            and ``corpus`` (or ``config.data.corpus``) name the run in the
            report's opening paragraph.
        dpi: resolution of the PNG figures.
        hop: the STFT hop (samples), for Figure 3's time axis in seconds.
        separation: None (no separation section), or ``{"units": [...],
            "note": str | None}`` (:func:`nca_np.evaluate.report_inputs`):
            with units, the separation table (``table_separation.csv``,
            ``separation.json``) and the SDR-beside-TOD-R figure; without,
            the note in their place.
        extra_tod_r: ``{series label: {kind: [TOD-R]}}`` drawn in that
            figure beside the NCA strategies; None: the exact references
            of the units (least squares V X⁺, mean local map).

    Returns:
        The paths written, in the order written.

    Raises:
        ReportError: inputs :func:`summarise` rejects, non-square or
            inconsistent matrices, bad spectral settings, metadata that is
            not JSON-serialisable; all are checked before the first file is
            written.
    """
    _check_spectral_settings(sample_rate, n_fft)
    units, kinds, strategies = list(units), list(kinds), list(strategies)
    tables = summarise(units, kinds=kinds, strategies=strategies)
    diagnostics = nca_report.diagnose(units, kinds=kinds, strategies=strategies)
    linear = _check_linear_compositions(linear_compositions or {}, kinds)
    segment = _check_figure_segment(figure_segment, kinds, strategies)
    histories = histories or {}
    metadata = _check_metadata(metadata)
    separation_units = list((separation or {}).get("units") or [])
    separation_table = summarise_separation(separation_units, kinds) if separation_units else None

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for table, name in CSV_FILES.items():
        write_text(out_dir / name, table_csv(tables[table]))
    write_json(out_dir / "tables.json", tables)
    write_json(out_dir / "metadata.json", metadata)
    write_text(out_dir / nca_report.REFERENCES_CSV, nca_report.references_csv(diagnostics))
    write_text(out_dir / nca_report.CONVERGENCE_CSV, nca_report.convergence_csv(diagnostics))
    write_json(out_dir / nca_report.DIAGNOSTICS_JSON, diagnostics)
    written = [out_dir / name for name in [*CSV_FILES.values(), "tables.json", "metadata.json",
                                           nca_report.REFERENCES_CSV, nca_report.CONVERGENCE_CSV,
                                           nca_report.DIAGNOSTICS_JSON]]
    written += write_figures(out_dir, units=units, models={kind: display_name(kind) for kind in kinds},
                             strategies=strategies, histories=histories, linear_compositions=linear,
                             figure_segment=segment, sample_rate=sample_rate, n_fft=n_fft, dpi=dpi, hop=hop)
    if separation_table is not None:
        if extra_tod_r is None:
            extra_tod_r = nca_report.reference_tod_r_series(units, kinds)
        written += _write_separation(out_dir, separation_table, separation_units, units, kinds, strategies,
                                     extra_tod_r, dpi)
    text = render_report(tables, units=units, kinds=kinds, strategies=strategies, histories=histories,
                         linear_compositions=linear, figure_segment=segment, sample_rate=sample_rate,
                         n_fft=n_fft, metadata=metadata, n_freq=_frequency_bins(linear, segment, kinds),
                         separation=None if separation is None else
                         (separation_table, separation_units, separation.get("note")),
                         diagnostics=diagnostics)
    write_text(out_dir / "report.md", text)
    return written + [out_dir / "report.md"]


# ------------------------------------------------------------ separation

SEPARATION_CSV = "table_separation.csv"
SEPARATION_JSON = "separation.json"
SEPARATION_TARGETS = ("vocals", "accompaniment")
SEPARATION_METRICS = ("SDR", "SIR", "SAR", "ISR")
SEPARATION_TITLE = "Separation quality: BSS Eval v4 of the test excerpts (dB)"


def _quartile_cell(values) -> dict:
    """Median and quartiles of the finite values (None when there are none), with counts."""
    finite = [v for v in values if math.isfinite(v)]
    median, q25, q75 = median_and_quartiles(finite)
    def plain(x):
        return None if math.isnan(x) else x
    return {"median": plain(median), "q25": plain(q25), "q75": plain(q75), "n": len(finite),
            "n_units": len(values)}


def _separation_value(unit: dict, target: str, metric: str) -> float:
    scores = unit.get("scores", {}).get(target, {})
    if metric not in scores:
        raise ReportError(f"evaluation unit ({unit.get('kind')!r}, run {unit.get('run')}, {unit.get('track')!r}) "
                          f"has no {target} {metric}: run `nca-np evaluate` again for it")
    return _number(scores[metric], f"evaluation unit {unit.get('kind')}/{unit.get('run')}/{target}.{metric}")


def summarise_separation(units, kinds) -> dict:
    """The separation table: per model, the median over runs and tracks of
    each (run, track)'s BSS Eval scores (themselves medians over one-second
    frames, docs/method.md#separation).

    Args:
        units: evaluation units (:mod:`nca_np.evaluate`): ``kind``, ``run``,
            ``track`` and ``scores[target][metric]``.
        kinds: the models in display order.

    Returns:
        ``{"title", "unit", "columns": [{"key", "label", "target", "metric"}],
        "rows": [{"kind", "model", "n_units", "n_runs", "n_tracks",
        "cells": {key: {"median", "q25", "q75", "n", "n_units"}}}]}``.
    """
    units = list(units)
    unknown = sorted({str(u.get("kind")) for u in units} - set(kinds))
    if unknown:
        raise ReportError(f"evaluation results of model kind {unknown[0]!r}, not among kinds {list(kinds)}")
    columns = [{"key": f"{t}_{m}", "label": f"{t} {m}", "target": t, "metric": m}
               for t in SEPARATION_TARGETS for m in SEPARATION_METRICS]
    rows = []
    for kind in kinds:
        of_kind = [u for u in units if u["kind"] == kind]
        cells = {c["key"]: _quartile_cell([_separation_value(u, c["target"], c["metric"]) for u in of_kind])
                 for c in columns}
        rows.append({"kind": kind, "model": display_name(kind), "n_units": len(of_kind),
                     "n_runs": len({u["run"] for u in of_kind}), "n_tracks": len({u["track"] for u in of_kind}),
                     "cells": cells})
    return {"title": SEPARATION_TITLE, "unit": "dB", "columns": columns, "rows": rows}


def separation_markdown(table: dict) -> str:
    """The separation table as Markdown: the medians, two decimals."""
    header = ["Model", "runs × tracks"] + [c["label"] for c in table["columns"]]
    rows = [[row["model"], f"{row['n_runs']} × {row['n_tracks']}"]
            + ["–" if row["cells"][c["key"]]["median"] is None else f"{row['cells'][c['key']]['median']:.2f}"
               for c in table["columns"]]
            for row in table["rows"]]
    return _markdown(header, rows)


def separation_csv(table: dict) -> str:
    """The separation table as CSV: per column median, q25, q75 and n (finite values)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = ["model", "n_runs", "n_tracks"]
    for column in table["columns"]:
        header += [f"{column['key']}_{stat}" for stat in ("median", "q25", "q75", "n")]
    writer.writerow(header)
    for row in table["rows"]:
        record = [row["model"], str(row["n_runs"]), str(row["n_tracks"])]
        for column in table["columns"]:
            cell = row["cells"][column["key"]]
            record += [_csv_number(cell[stat]) for stat in ("median", "q25", "q75")] + [str(cell["n"])]
        writer.writerow(record)
    return buffer.getvalue()


def tod_r_series(units, kinds, strategies, extra=None) -> dict:
    """``{series label: {kind: [TOD-R]}}`` for the separation figure: each NCA
    strategy's TOD-R per segment (Table 1's values), then ``extra`` series
    by name (e.g. exact references), in that order."""
    series = {strategy_label(s): {k: [u["strategies"][s]["tod_r"] for u in units if u["kind"] == k]
                                   for k in kinds}
              for s in strategies}
    for label, values in (extra or {}).items():
        series[label] = {kind: list(values.get(kind, [])) for kind in kinds}
    return series


def _channels_text(units) -> str:
    channels = sorted({int(u.get("channels", 0)) for u in units})
    return "/".join(str(c) for c in channels)


def separation_section(table, units, note) -> list[str]:
    """The separation section of report.md: the table and figure, or the note
    that says why they are left out."""
    section = [f"## {SEPARATION_TITLE}\n"]
    if table is None:
        return section + [f"*The separation table is left out: {note}*\n"]
    section += [
        ("Every trained run separates every test excerpt (vocals: the model's magnitude estimate through the "
         "inverse STFT with the mixture's phase; accompaniment: the mixture minus that estimate), and "
         "`museval` scores both against the true vocals and accompaniment with BSS Eval v4: SDR, SIR, SAR "
         "and ISR, each the median over one-second frames as SiSEC reports them. A cell is the median of "
         "those over runs and tracks. The models are mono; their estimates are scored on every channel of "
         f"the references ({_channels_text(units)} channels).\n"),
        separation_markdown(table),
        f"CSV with inter-quartile ranges: [{SEPARATION_CSV}]({SEPARATION_CSV}); every frame's values are in "
        "the evaluation units.\n",
        ("**Separation and diagonality.** Each model's vocals SDR (median over runs and tracks) beside the "
         "TOD-R of its couplings (median over segments, Table 1's values); bars span the 25th to 75th "
         "percentiles. Points further left come from less diagonal mappings.\n"),
        f"![SDR beside TOD-R]({SEPARATION_FIGURE})\n",
    ]
    return section


def _write_separation(out_dir: Path, table: dict, separation_units, units, kinds, strategies, extra_tod_r,
                      dpi) -> list[Path]:
    """The separation table's files and its figure."""
    write_text(out_dir / SEPARATION_CSV, separation_csv(table))
    write_json(out_dir / SEPARATION_JSON, table)
    sdr = {kind: [u["scores"]["vocals"]["SDR"] for u in separation_units if u["kind"] == kind] for kind in kinds}
    plot_sdr_vs_tod_r(out_dir / SEPARATION_FIGURE, sdr, tod_r_series(units, kinds, strategies, extra_tod_r),
                      {kind: display_name(kind) for kind in kinds}, dpi=dpi)
    return [out_dir / SEPARATION_CSV, out_dir / SEPARATION_JSON, out_dir / SEPARATION_FIGURE]
