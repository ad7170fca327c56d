"""The report: Tables 1–3, Figures 2–3, curves and metadata (MATH.md §5–§6).

This module knows nothing of where runs and couplings are stored: the
experiment gathers and validates the saved results and hands them over as
plain data. :func:`summarise` turns the per-segment results into the numbers
of the paper's three tables; :func:`write_report` writes the report folder:

- ``report.md``: what was run, Tables 1–3, the figures, the metadata;
- ``table1_tod_r.csv``, ``table2_snr_model.csv``, ``table3_snr_true.csv``
  and ``tables.json`` (the :func:`summarise` dict);
- ``metadata.json`` (the caller's metadata, verbatim);
- ``figure2_linear_compositions.png``, ``figure3_couplings.png``,
  ``training_loss.png``, ``nca_convergence.png``.

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

from . import backend, metrics
from .atomic import atomic_open, write_json, write_text
from .errors import UserError

DISPLAY_NAMES = {"dae": "DAE", "mss-dae": "MSS-DAE", "sf": "SF"}
STRATEGY_LABELS = {"student": "NCA student", "compositional": "NCA compositional"}
KNOWN_STRATEGIES = tuple(STRATEGY_LABELS)
COMPOSITION_READINGS = {
    "paper": "Couplings composed with the paper's reading (W ⊕ b = W + b1ᵀ, Z = P(W ⊕ b)ᵀ)",
    "authors-code": "Couplings composed with the authors'-code reading (M = W + 1bᵀ, Z = M Pᵀ)",
}

TABLE1, TABLE2, TABLE3 = "table1_tod_r", "table2_snr_model_db", "table3_snr_true_db"
CSV_FILES = {TABLE1: "table1_tod_r.csv", TABLE2: "table2_snr_model.csv", TABLE3: "table3_snr_true.csv"}
FIGURE_FILES = {
    "figure2": "figure2_linear_compositions.png",
    "figure3": "figure3_couplings.png",
    "training": "training_loss.png",
    "convergence": "nca_convergence.png",
}

#: Decimals of the "mean (std)" cells in report.md; the CSVs carry six.
DECIMALS = {TABLE1: 2, TABLE2: 2, TABLE3: 2}
CSV_FORMAT = ".6f"
STD_NOTE = "population standard deviation (ddof = 0) over the finite values"

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
DPI = 120


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
        return [(s, STRATEGY_LABELS[s], ("strategies", s, "tod_r")) for s in strategies]
    if table == TABLE2:
        return ([(s, STRATEGY_LABELS[s], ("strategies", s, "snr_model_db")) for s in strategies]
                + [("linear", "linear composition", ("baselines", "linear", "snr_model_db")),
                   ("identity", "identity", ("baselines", "identity", "snr_model_db"))])
    return ([(s, STRATEGY_LABELS[s], ("strategies", s, "snr_true_db")) for s in strategies]
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
    """"DAE", "MSS-DAE", "SF" for the model kinds, the kind itself otherwise."""
    return DISPLAY_NAMES.get(kind, kind)


# ------------------------------------------------------------- validation


def _check_kinds_strategies(kinds, strategies) -> None:
    if not kinds:
        raise ReportError("no model kinds to report: pass kinds, e.g. ['dae', 'mss-dae', 'sf']")
    if len(set(kinds)) != len(kinds):
        raise ReportError(f"kinds lists a model twice: {list(kinds)}")
    unknown = [s for s in strategies if s not in KNOWN_STRATEGIES]
    if unknown:
        raise ReportError(f"unknown NCA strategy {unknown[0]!r}: use a subset of {list(KNOWN_STRATEGIES)}")
    if not strategies:
        raise ReportError("no NCA strategy to report: pass strategies, a subset of "
                          f"{list(KNOWN_STRATEGIES)}")
    if len(set(strategies)) != len(strategies):
        raise ReportError(f"strategies lists a strategy twice: {list(strategies)}")


def _the_one(units, key: str, what: str):
    """The value of ``unit[key]`` shared by every unit, or a clear error."""
    found = sorted({str(u.get(key)) for u in units})
    if len(found) != 1:
        raise ReportError(f"the results mix {what}s {', '.join(found)}: report one experiment at a time "
                          "(re-run the stages that are out of date)")
    return units[0].get(key)


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
        segment_id = unit.get("segment", {}).get("id")
        if (kind, segment_id) in seen:
            raise ReportError(f"{_unit_name(unit)} appears twice: "
                              "each (model, segment) must be reported once")
        seen.add((kind, segment_id))
        by_kind[kind].append(unit)
    for kind in kinds:
        by_kind[kind].sort(key=lambda u: (u["segment"].get("number", 0), str(u["segment"].get("id"))))
    return by_kind


def summarise(units, *, kinds, strategies) -> dict:
    """The numbers of Tables 1–3 (MATH.md §6), as a JSON-able dict.

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
    _the_one(units, "config_hash", "configuration hash")
    _the_one(units, "composition", "composition reading")
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


def _plain(value: float, decimals: int) -> str:
    """Fixed-decimal text of a float ('inf', '-inf', 'nan' when not finite)."""
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.{decimals}f}"


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


def markdown_table(table: dict, decimals: int, *, bold_smallest: bool = False) -> str:
    """A summarised table as Markdown: model, n, one "mean (std)" per column."""
    bold = _smallest_means(table) if bold_smallest else {}
    header = ["Model", "n"] + [c["label"] for c in table["columns"]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table["rows"]:
        cells = [format_cell(row["cells"][c["key"]], decimals, bold=row["kind"] in bold.get(c["key"], ()))
                 for c in table["columns"]]
        lines.append("| " + " | ".join([row["model"], str(row["n_segments"])] + cells) + " |")
    return "\n".join(lines) + "\n"


def _csv_number(value) -> str:
    if value is None:
        return "nan"
    return format(value, CSV_FORMAT) if math.isfinite(value) else _plain(value, 6)


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


TABLE_CAPTIONS = {
    TABLE1: ("Trace-to-off-diagonal ratio of the couplings matrices C fitted by the NCA, mean (std) over "
             "segments. Large values: the activity sits on the main diagonal, i.e. scalar filtering "
             "(mask-like); small values: activity off the diagonal, i.e. inter-frequency structure. "
             "A structureless random matrix scores about 1. Bold: the smallest value per strategy."),
    TABLE2: ("How well Ŷ(C) reproduces the model's own output ŷ (Ŷ(C) = C X for DAE and MSS-DAE, "
             "X ⊙ (C X) for SF, whose ŷ is the masked mixture), mean (std) over segments; higher is a "
             "more faithful approximation. Baselines: the linear composition of the weights "
             "(Eqs. 11–13, biases neglected) and the identity C = I (the mixture itself)."),
    TABLE3: ("SNR between the true vocals and Ŷ(C) for each NCA strategy, and between the true vocals "
             "and the model's own output ŷ, mean (std) over segments: how much separation quality the "
             "approximation keeps or loses."),
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
    if len(set(counts.values())) == 1:
        return f"each trained {counts[kinds[0]]} times from different random initialisations"
    per_model = ", ".join(f"{display_name(k)} {n}" for k, n in counts.items())
    return f"trained from different random initialisations ({per_model} runs)"


def _run_paragraph(context: dict, kinds, strategies, histories, metadata, n_freq, sample_rate, n_fft) -> str:
    profile = _lookup(metadata, "profile", "profile.name", "profile_name", "config.profile.name",
                      "configuration.profile.name")
    corpus = _lookup(metadata, "corpus", "config.data.corpus", "configuration.data.corpus")
    parts = [
        f"Profile **{profile or 'not recorded'}** on the **{corpus or 'not recorded'}** corpus.",
        f"Models {', '.join(display_name(k) for k in kinds)}, {_training_text(histories, kinds)}.",
        f"Neural couplings ({', '.join(strategies)}) fitted on {_count(context['n_segments'], 'segment')} "
        f"of T = {context['frames']} frames from {_count(context['n_tracks'], 'test track')}; for each "
        "segment and model one trained run, drawn at random.",
    ]
    if n_freq:
        parts.append(f"F = {n_freq} frequency bins, {sample_rate / n_fft:.2f} Hz apart "
                     f"(sample rate {sample_rate} Hz, FFT size {n_fft}).")
    parts.append(f"Configuration hash `{context['config_hash']}`, code version "
                 f"`{', '.join(context['code_versions'])}`.")
    return " ".join(parts)


def _training_table(histories: dict, kinds) -> str:
    lines = ["| Model | runs | epochs (min–max) | best training loss, mean (std) "
             "| training time (s, all runs) |", "|---|---|---|---|---|"]
    for kind in kinds:
        runs = histories.get(kind, [])
        epochs = [len(run) for run in runs]
        best = cell_statistics(_best_loss(run) for run in runs)
        seconds = sum(_number(r.get("seconds"), "history seconds") for run in runs for r in run
                      if r.get("seconds") is not None)
        span = f"{min(epochs)}–{max(epochs)}" if epochs else "–"
        lines.append(f"| {display_name(kind)} | {len(runs)} | {span} | {format_cell(best, 6)} "
                     f"| {seconds:.1f} |")
    return "\n".join(lines) + "\n"


def _best_loss(run) -> float:
    losses = [_number(r.get("loss"), "history loss") for r in run]
    finite = [v for v in losses if math.isfinite(v)]
    return min(finite) if finite else math.nan


def _nca_time_table(units, kinds, strategies) -> str:
    header = ["Model"] + [f"{STRATEGY_LABELS[s]}: s per segment, mean (std)" for s in strategies]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for kind in kinds:
        of_kind = [u for u in units if u["kind"] == kind]
        cells = [format_cell(cell_statistics(u["strategies"][s].get("seconds") for u in of_kind), 2)
                 for s in strategies]
        lines.append("| " + " | ".join([display_name(kind)] + cells) + " |")
    return "\n".join(lines) + "\n"


def _linear_tod_r_text(linear_compositions: dict, kinds) -> str:
    values = [f"{display_name(k)} {_plain(metrics.tod_r(linear_compositions[k]), 2)}"
              for k in kinds if k in linear_compositions]
    return f" TOD-R of these matrices: {', '.join(values)}." if values else ""


def _zoom_text(n_freq, sample_rate, n_fft) -> str:
    if not n_freq:
        return f"{ZOOM_HZ / 1000:g} kHz"
    return f"{(zoom_bins(n_freq, sample_rate, n_fft) - 1) * sample_rate / n_fft / 1000:.2g} kHz"


def _figure_section(linear_compositions: dict, figure_segment, kinds, strategies, zoom: str) -> list[str]:
    """Captions and links of the four figures (``zoom``: where Figure 3's
    zoom ends, as text)."""
    track = figure_segment.get("track", "?") if figure_segment else "?"
    index = figure_segment.get("segment_index", "?") if figure_segment else "?"
    return [
        ("**Figure 2.** The linear composition of each model's weights (Eqs. 11–13), averaged over the "
         f"training runs; colour scale clipped at the {CLIP_PERCENTILE:g}th percentile of |values|."
         f"{_linear_tod_r_text(linear_compositions, kinds)}\n"),
        f"![Figure 2: linear compositions]({FIGURE_FILES['figure2']})\n",
        (f"**Figure 3.** Couplings matrices of track {_escape(track)}, segment {index}: one row per NCA "
         f"strategy ({', '.join(strategies)}), per model the full matrix and a zoom on the bins up to "
         f"{zoom} (colours clipped at the {CLIP_PERCENTILE:g}th and "
         f"{ZOOM_CLIP_PERCENTILE:g}th percentiles of |values|, so the zoom shows the weaker structure "
         "beside the diagonal); the last row shows the target V (the model's decoder output, the mask "
         "for SF) of the same segment in dB, over all bins and over the zoomed bins.\n"),
        f"![Figure 3: couplings of one segment]({FIGURE_FILES['figure3']})\n",
        "**Training loss** per epoch of every run (thin) and, per epoch, the mean over the runs still "
        "training then (thick), log scale.\n",
        f"![Training loss]({FIGURE_FILES['training']})\n",
        "**NCA convergence**: the L1 error E (Eq. 15) per iteration, median and inter-quartile band over "
        "segments, log scale.\n",
        f"![NCA convergence]({FIGURE_FILES['convergence']})\n",
    ]


def render_report(tables: dict, *, units, kinds, strategies, histories, linear_compositions, figure_segment,
                  sample_rate, n_fft, metadata, n_freq) -> str:
    """The text of report.md (deterministic: a function of its arguments).

    Args:
        tables: the :func:`summarise` dict of the same units.
        n_freq: F, or None when no matrix was given.
        The others: as for :func:`write_report`.
    """
    context = describe_units(units)
    reading = COMPOSITION_READINGS.get(context["composition"],
                                       f"Couplings composed with the reading {context['composition']!r}")
    sections = [
        "# Mapping functions of denoising autoencoders: reproduction report\n",
        f"> **{reading}.**\n",
        _run_paragraph(context, kinds, strategies, histories, metadata, n_freq, sample_rate, n_fft) + "\n",
        f"Each cell is the mean (std) over segments; std is the {STD_NOTE}. The column n counts the "
        "segments per model; values left out of a cell (inf, nan) are named in it.\n",
    ]
    for table in (TABLE1, TABLE2, TABLE3):
        sections += [f"## {tables[table]['title']}\n", TABLE_CAPTIONS[table] + "\n",
                     markdown_table(tables[table], DECIMALS[table], bold_smallest=table == TABLE1),
                     f"CSV: [{CSV_FILES[table]}]({CSV_FILES[table]}); "
                     "all numbers: [tables.json](tables.json).\n"]
    zoom = _zoom_text(n_freq, sample_rate, n_fft)
    sections.append("## Figures\n")
    sections += _figure_section(linear_compositions, figure_segment, kinds, strategies, zoom)
    sections += [
        "## Training runs\n",
        _training_table(histories, kinds),
        "## NCA cost\n",
        _nca_time_table(units, kinds, strategies),
        "## Metadata\n",
        "All of it in [metadata.json](metadata.json).\n",
        "| Key | Value |\n|---|---|\n" + "".join(f"| {_escape(k)} | {_escape(v)} |\n"
                                            for k, v in _flatten(metadata)),
    ]
    return "\n".join(sections)


# ---------------------------------------------------------------- arrays


def host_matrix(array, what: str, *, ndim: int = 2) -> numpy.ndarray:
    """A host NumPy array (device arrays are copied back), shape-checked."""
    host = backend.to_host(array) if backend.array_module(array) is not numpy else numpy.asarray(array)
    if host.ndim != ndim:
        raise ReportError(f"{what} must be {ndim}-D, got shape {tuple(host.shape)}")
    return host


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
    """The ``percentile``-th percentile of the finite |values| (1.0 if 0)."""
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


# --------------------------------------------------------------- figures


def _figure(width: float, height: float):
    """A figure that renders with Agg, without pyplot or any global backend
    switch (so a caller's interactive backend is left alone)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _save_png(figure, path: Path, dpi: int) -> None:
    # No "Software" entry: the PNG then depends on the pixels only.
    with atomic_open(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=dpi, metadata={"Software": None})


def _not_available(axis, text: str) -> None:
    axis.text(0.5, 0.5, text, ha="center", va="center", transform=axis.transAxes, color="0.4")
    axis.set_xticks([])
    axis.set_yticks([])


def _show_couplings(figure, axis, matrix: numpy.ndarray, bins: int, khz_per_bin: float, title: str,
                    *, percentile: float = CLIP_PERCENTILE) -> None:
    """One (output × input) couplings matrix over its lowest ``bins`` bins,
    frequencies in kHz, diverging colours symmetric about 0 and clipped at
    the ``percentile``-th percentile of |values|."""
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
    figure.colorbar(image, ax=axis, shrink=0.85)


def decibels(spectrum: numpy.ndarray,
             dynamic_range_db: float = DYNAMIC_RANGE_DB) -> tuple[numpy.ndarray, float]:
    """``20 log10`` of a non-negative (F, T) host spectrum, floored
    ``dynamic_range_db`` below its largest finite value (zeros, e.g. from a
    ReLU, sit at the floor).

    Returns:
        ``(levels, top)``: levels in dB (the input's float dtype) and the
        largest level; an all-zero spectrum gives 0 dB everywhere.
    """
    finite = spectrum[numpy.isfinite(spectrum)]
    peak = float(finite.max()) if finite.size else 0.0
    if peak <= 0.0:
        return numpy.zeros_like(spectrum), 0.0
    floor = peak * 10.0 ** (-dynamic_range_db / 20.0)
    top = 20.0 * math.log10(peak)
    return 20.0 * numpy.log10(numpy.clip(spectrum, floor, peak)), top


def _show_spectrum(figure, axis, spectrum: numpy.ndarray, bins: int, khz_per_bin: float, title: str) -> None:
    """The lowest ``bins`` bins of an (F, T) spectrum in dB, frames along x
    (magnitudes span a wide range; dB is how spectrograms are read)."""
    levels, top = decibels(spectrum[:bins])
    image = axis.imshow(levels, origin="lower", aspect="auto", cmap="magma", interpolation="antialiased",
                        vmin=top - DYNAMIC_RANGE_DB, vmax=top,
                        extent=(-0.5, levels.shape[1] - 0.5, -0.5 * khz_per_bin, (bins - 0.5) * khz_per_bin))
    axis.set_xlabel("frame")
    axis.set_ylabel("frequency (kHz)")
    axis.set_title(title, fontsize="medium")
    figure.colorbar(image, ax=axis, shrink=0.85, label="dB")


def plot_linear_compositions(path: Path, linear_compositions: dict, kinds, *, sample_rate, n_fft,
                             dpi=DPI) -> None:
    """Figure 2: the run-averaged linear composition of each model (F × F)."""
    khz_per_bin = sample_rate / n_fft / 1000.0
    figure = _figure(3.9 * len(kinds), 3.7)
    axes = figure.subplots(1, len(kinds), squeeze=False)[0]
    for axis, kind in zip(axes, kinds):
        if kind not in linear_compositions:
            axis.set_title(display_name(kind))
            _not_available(axis, "not available")
            continue
        matrix = host_matrix(linear_compositions[kind], f"linear composition of {kind}")
        title = f"{display_name(kind)}: TOD-R {_plain(metrics.tod_r(matrix), 2)}"
        _show_couplings(figure, axis, matrix, matrix.shape[0], khz_per_bin, title)
    figure.suptitle("Figure 2: linear compositions (Eqs. 11–13), mean over training runs")
    _save_png(figure, path, dpi)


def _check_figure_entry(kind: str, entry: dict, strategies) -> dict:
    """The host arrays of one model's Figure 3 entry, shapes checked."""
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


def plot_couplings(path: Path, figure_segment: dict, kinds, strategies, *, sample_rate, n_fft,
                   dpi=DPI) -> None:
    """Figure 3: per model, each strategy's couplings (full and low-bin zoom)
    in one row per strategy, and a last row with the target V."""
    khz_per_bin = sample_rate / n_fft / 1000.0
    figure = _figure(3.3 * 2 * len(kinds), 3.0 * (len(strategies) + 1))
    grid = figure.subplots(len(strategies) + 1, 2 * len(kinds), squeeze=False)
    for column, kind in enumerate(kinds):
        entry = _check_figure_entry(kind, (figure_segment or {}).get(kind, {}), strategies)
        name = display_name(kind)
        for row, strategy in enumerate(strategies):
            full, zoom = grid[row, 2 * column], grid[row, 2 * column + 1]
            matrix = entry.get(f"C_{strategy}")
            if matrix is None:
                for axis, title in ((full, f"{name} · {strategy}"), (zoom, f"{name} · zoom")):
                    axis.set_title(title, fontsize="medium")
                    _not_available(axis, "not run")
                continue
            bins = zoom_bins(matrix.shape[0], sample_rate, n_fft)
            _show_couplings(figure, full, matrix, matrix.shape[0], khz_per_bin, f"{name} · {strategy}")
            _show_couplings(figure, zoom, matrix, bins, khz_per_bin,
                            f"{name} · zoom ≤ {(bins - 1) * khz_per_bin:.2g} kHz",
                            percentile=ZOOM_CLIP_PERCENTILE)
        target = entry.get("target")
        full, zoom = grid[-1, 2 * column], grid[-1, 2 * column + 1]
        label = f"{name}: V ({'mask' if kind == 'sf' else 'decoder output'})"
        if target is None:
            for axis in (full, zoom):
                axis.set_title(label, fontsize="medium")
                _not_available(axis, "not available")
            continue
        bins = zoom_bins(target.shape[0], sample_rate, n_fft)
        _show_spectrum(figure, full, target, target.shape[0], khz_per_bin, label)
        _show_spectrum(figure, zoom, target, bins, khz_per_bin,
                       f"{name}: V · zoom ≤ {(bins - 1) * khz_per_bin:.2g} kHz")
    track = (figure_segment or {}).get("track", "?")
    index = (figure_segment or {}).get("segment_index", "?")
    figure.suptitle(f"Figure 3: couplings matrices, track {track}, segment {index}")
    _save_png(figure, path, dpi)


def _positive(values) -> numpy.ndarray:
    """Float64 host copy with non-finite and non-positive values as NaN
    (they cannot be drawn on a log axis)."""
    array = numpy.array([math.nan if v is None else float(v) for v in values], dtype=numpy.float64)
    array[~(numpy.isfinite(array) & (array > 0.0))] = math.nan
    return array


def _mean_by_epoch(runs) -> tuple[list[int], list[float]]:
    """Per epoch, the mean loss over the runs with a drawable loss there."""
    by_epoch: dict[int, list[float]] = {}
    for run in runs:
        for position, record in enumerate(run):
            loss = _positive([record.get("loss")])[0]
            if not math.isnan(loss):
                by_epoch.setdefault(int(record.get("epoch", position + 1)), []).append(float(loss))
    epochs = sorted(by_epoch)
    return epochs, [float(numpy.mean(by_epoch[e])) for e in epochs]


def plot_training_loss(path: Path, histories: dict, kinds, *, dpi=DPI) -> None:
    """Training loss (Eq. 3) per epoch: every run thin, the mean thick."""
    from matplotlib.ticker import MaxNLocator

    figure = _figure(3.9 * len(kinds), 3.2)
    axes = figure.subplots(1, len(kinds), squeeze=False)[0]
    for axis, kind in zip(axes, kinds):
        axis.set_title(display_name(kind))
        runs = histories.get(kind, [])
        epochs, means = _mean_by_epoch(runs)
        if not epochs:
            _not_available(axis, "no training history")
            continue
        for run in runs:
            x = [int(r.get("epoch", i + 1)) for i, r in enumerate(run)]
            axis.plot(x, _positive(r.get("loss") for r in run), color="0.55", linewidth=0.7, alpha=0.8)
        axis.plot(epochs, means, color="C3", linewidth=2.0,
                  label=f"mean over the {len(runs)} runs\n(of those still training)")
        axis.set_yscale("log")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_xlabel("epoch")
        axis.set_ylabel("training loss (MSE, Eq. 3)")
        axis.legend(fontsize="small")
    figure.suptitle("Training loss per epoch")
    _save_png(figure, path, dpi)


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
    drawable = ~numpy.isnan(stack).all(axis=0) if len(curves) else numpy.zeros(0, dtype=bool)
    if drawable.any():
        quartiles[:, drawable] = numpy.nanpercentile(stack[:, drawable], [25.0, 50.0, 75.0], axis=0)
    return quartiles


def plot_nca_convergence(path: Path, units, kinds, strategies, *, dpi=DPI) -> None:
    """NCA loss E (Eq. 15) per iteration: median and inter-quartile band
    over segments, per model and strategy."""
    figure = _figure(3.9 * len(kinds), 3.2)
    axes = figure.subplots(1, len(kinds), squeeze=False)[0]
    for axis, kind in zip(axes, kinds):
        axis.set_title(display_name(kind))
        drawn = False
        for colour, strategy in enumerate(strategies):
            curves = [u["strategies"][strategy].get("losses") or [] for u in units
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
        axis.set_ylabel("E = Σ|V − C X| (Eq. 15)")
        axis.legend(fontsize="small")
    figure.suptitle("NCA convergence (median and inter-quartile band over segments)")
    _save_png(figure, path, dpi)


# ---------------------------------------------------------------- report


def _check_spectral_settings(sample_rate, n_fft) -> None:
    if not (isinstance(sample_rate, numbers.Real) and sample_rate > 0):
        raise ReportError(f"sample_rate must be a positive number of Hz, got {sample_rate!r}")
    if not (isinstance(n_fft, numbers.Integral) and n_fft > 0):
        raise ReportError(f"n_fft must be a positive integer, got {n_fft!r}")


def _frequency_bins(linear_compositions: dict, figure_segment: dict, kinds) -> int | None:
    """F, read from the first matrix given (None when there is none)."""
    for kind in kinds:
        if kind in linear_compositions:
            return int(host_matrix(linear_compositions[kind], f"linear composition of {kind}").shape[0])
        entry = (figure_segment or {}).get(kind, {})
        for key in ("C_student", "C_compositional", "target"):
            if key in entry:
                return int(host_matrix(entry[key], f"figure_segment[{kind!r}][{key!r}]").shape[0])
    return None


def _check_linear_compositions(linear_compositions: dict, kinds) -> dict:
    checked = {}
    for kind in kinds:
        if kind in linear_compositions:
            matrix = host_matrix(linear_compositions[kind], f"linear composition of {kind}")
            if matrix.shape[0] != matrix.shape[1] or matrix.shape[0] < 2:
                raise ReportError(f"linear composition of {kind} must be square (F, F) with F >= 2, "
                                  f"got shape {matrix.shape}")
            checked[kind] = matrix
    return checked


def write_report(out_dir, *, units, kinds, strategies, histories, linear_compositions,
                 figure_segment, sample_rate, n_fft, metadata, dpi: int = DPI) -> list[Path]:
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

    Returns:
        The paths written, in the order written.

    Raises:
        ReportError: inputs :func:`summarise` rejects, non-square or
            inconsistent matrices, bad spectral settings, metadata that is
            not JSON-serialisable.
    """
    _check_spectral_settings(sample_rate, n_fft)
    units, kinds, strategies = list(units), list(kinds), list(strategies)
    tables = summarise(units, kinds=kinds, strategies=strategies)
    linear = _check_linear_compositions(linear_compositions or {}, kinds)
    histories = histories or {}
    metadata = dict(metadata or {})
    try:
        json.dumps(metadata)
    except (TypeError, ValueError) as exc:
        raise ReportError(f"metadata cannot be written as JSON: {exc}") from None

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []

    def text_file(name: str, text: str) -> None:
        write_text(out_dir / name, text)
        written.append(out_dir / name)

    for table, name in CSV_FILES.items():
        text_file(name, table_csv(tables[table]))
    write_json(out_dir / "tables.json", tables)
    write_json(out_dir / "metadata.json", metadata)
    written += [out_dir / "tables.json", out_dir / "metadata.json"]

    figures = out_dir / FIGURE_FILES["figure2"], out_dir / FIGURE_FILES["figure3"]
    plot_linear_compositions(figures[0], linear, kinds, sample_rate=sample_rate, n_fft=n_fft, dpi=dpi)
    plot_couplings(figures[1], figure_segment, kinds, strategies, sample_rate=sample_rate, n_fft=n_fft,
                   dpi=dpi)
    plot_training_loss(out_dir / FIGURE_FILES["training"], histories, kinds, dpi=dpi)
    plot_nca_convergence(out_dir / FIGURE_FILES["convergence"], units, kinds, strategies, dpi=dpi)
    written += [out_dir / FIGURE_FILES[key] for key in ("figure2", "figure3", "training", "convergence")]

    n_freq = _frequency_bins(linear, figure_segment, kinds)
    text = render_report(tables, units=units, kinds=kinds, strategies=strategies, histories=histories,
                         linear_compositions=linear,
                         figure_segment=figure_segment, sample_rate=sample_rate, n_fft=n_fft,
                         metadata=metadata, n_freq=n_freq)
    text_file("report.md", text)
    return written
