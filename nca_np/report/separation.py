"""The separation table: BSS Eval v4 of every trained run on the test
excerpts (docs/method.md#separation), its files, its section of report.md
and the figure of SDR beside TOD-R."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from ..atomic import write_json, write_text
from .figures import SEPARATION_FIGURE, median_and_quartiles, plot_sdr_vs_tod_r
from .tables import ReportError, csv_number, display_name, markdown, number, strategy_label

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
    return number(scores[metric], f"evaluation unit {unit.get('kind')}/{unit.get('run')}/{target}.{metric}")


#: Baselines' row labels (nca_np.baselines names; docs/method.md#separating-a-song).
BASELINE_LABELS = {"mixture": "Mixture (baseline)", "oracle-irm": "Oracle IRM"}


def _row_key(unit: dict) -> tuple:
    """``(baseline or None, kind or None, estimate, Wiener iterations)`` of a unit's row."""
    return (unit.get("baseline"), unit.get("kind") if not unit.get("baseline") else None,
            unit.get("estimate") or "mono", int(unit.get("wiener_iterations") or 0))


def _row_order(units, kinds) -> list[tuple]:
    """The rows present, in table order: the mixture first; the models' mono
    estimates (the paper's systems); their stereo estimates, unfiltered then
    by Wiener iterations; the oracle IRM, mono then stereo, last."""
    present = {_row_key(u) for u in units}
    wiener = sorted({key[3] for key in present if key[0] is None and key[3]})
    order = [("mixture", None, "stereo", 0)]
    order += [(None, kind, "mono", 0) for kind in kinds]
    order += [(None, kind, "stereo", n) for n in [0] + wiener for kind in kinds]
    order += [("oracle-irm", None, "mono", 0), ("oracle-irm", None, "stereo", 0)]
    return [key for key in order if key in present]


def _row_label(key: tuple) -> str:
    baseline, kind, estimate, wiener = key
    if baseline == "oracle-irm":
        return f"Oracle IRM {estimate} (baseline)"
    if baseline:
        return BASELINE_LABELS.get(baseline, f"{baseline} (baseline)")
    if estimate == "mono":
        return display_name(kind)  # the paper's systems keep their plain names
    return f"{display_name(kind)} stereo" + (f" (Wiener {wiener})" if wiener else "")


def summarise_separation(units, kinds) -> dict:
    """The separation table: per row, the median over runs and tracks of
    each (run, track)'s BSS Eval scores (themselves medians over one-second
    frames, docs/method.md#separation).

    Args:
        units: evaluation units, one per row and excerpt
            (:func:`nca_np.evaluate.report_inputs`): ``kind`` and ``run``, or
            ``baseline``; ``estimate`` ("mono" when absent),
            ``wiener_iterations``, ``track`` and ``scores[target][metric]``.
        kinds: the models in display order.

    Returns:
        ``{"title", "unit", "columns": [{"key", "label", "target", "metric"}],
        "rows": [{"kind", "baseline", "estimate", "wiener_iterations", "model",
        "n_units", "n_runs", "n_tracks", "cells": {key: {"median", "q25",
        "q75", "n", "n_units"}}}]}``; rows in the order of :func:`_row_order`
        (the baselines, when evaluated, first and last).
    """
    units = list(units)
    unknown = sorted({str(u.get("kind")) for u in units if not u.get("baseline")} - set(kinds))
    if unknown:
        raise ReportError(f"evaluation results of model kind {unknown[0]!r}, not among kinds {list(kinds)}")
    columns = [{"key": f"{t}_{m}", "label": f"{t} {m}", "target": t, "metric": m}
               for t in SEPARATION_TARGETS for m in SEPARATION_METRICS]
    rows = []
    for key in _row_order(units, kinds):
        of_row = [u for u in units if _row_key(u) == key]
        cells = {c["key"]: _quartile_cell([_separation_value(u, c["target"], c["metric"]) for u in of_row])
                 for c in columns}
        rows.append({"kind": key[1] or key[0], "baseline": key[0], "estimate": key[2],
                     "wiener_iterations": key[3], "model": _row_label(key), "n_units": len(of_row),
                     "n_runs": len({u.get("run") for u in of_row}) if not key[0] else 0,
                     "n_tracks": len({u["track"] for u in of_row}), "cells": cells})
    return {"title": SEPARATION_TITLE, "unit": "dB", "columns": columns, "rows": rows}


def separation_markdown(table: dict) -> str:
    """The separation table as Markdown: the medians, two decimals."""
    header = ["Model", "runs × tracks"] + [c["label"] for c in table["columns"]]
    rows = [[row["model"], f"{row['n_runs'] if not row.get('baseline') else '–'} × {row['n_tracks']}"]
            + ["–" if row["cells"][c["key"]]["median"] is None else f"{row['cells'][c['key']]['median']:.2f}"
               for c in table["columns"]]
            for row in table["rows"]]
    return markdown(header, rows)


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
            record += [csv_number(cell[stat]) for stat in ("median", "q25", "q75")] + [str(cell["n"])]
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


def _vocals_sdr(table: dict, baseline, kind, estimate, wiener=0):
    """The vocals SDR median of one row, or None when the row is not there."""
    for row in table["rows"]:
        if (row.get("baseline"), row["kind"] if not row.get("baseline") else None, row.get("estimate", "mono"),
                row.get("wiener_iterations", 0)) == (baseline, kind if not baseline else None, estimate, wiener):
            return row["cells"]["vocals_SDR"]["median"]
    return None


def scale_text(table: dict) -> str | None:
    """Where the models' mono estimates sit between the baselines (vocals
    SDR medians, computed from ``table``) and what mono output costs the
    oracle; None without both baselines."""
    low = _vocals_sdr(table, "mixture", None, "stereo")
    high = _vocals_sdr(table, "oracle-irm", None, "stereo")
    if low is None or high is None:
        return None
    span = high - low
    models = [(row["model"], row["cells"]["vocals_SDR"]["median"]) for row in table["rows"]
              if not row.get("baseline") and row.get("estimate", "mono") == "mono"]
    placed = ", ".join(f"{name} {value:.2f} dB ({100 * (value - low) / span:.0f} %)" if span > 0 and value is not None
                       else f"{name} {'–' if value is None else f'{value:.2f} dB'}" for name, value in models)
    text = (f"**On the scale of the baselines** (vocals SDR, medians): the mixture as the estimate scores "
            f"{low:.2f} dB and the oracle ideal ratio mask {high:.2f} dB"
            + (f"; the models' mono estimates score {placed}, the percentage being how far each sits from the "
               "mixture (0 %) towards the oracle (100 %)." if models else "; no model was scored."))
    mono = _vocals_sdr(table, "oracle-irm", None, "mono")
    if mono is not None:
        text += (f" Mono output costs the oracle {high - mono:.2f} dB (stereo {high:.2f} dB − mono {mono:.2f} dB): "
                 "a mono mask, put on every channel, cannot follow what differs between the channels.")
    return text + "\n"


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
        _rows_text(table),
        separation_markdown(table),
        scale_text(table),
        f"*{note}*\n" if note else None,
        f"CSV with inter-quartile ranges: [{SEPARATION_CSV}]({SEPARATION_CSV}); every frame's values are in "
        "the evaluation units.\n",
        ("**Separation and diagonality.** Each model's vocals SDR (median over runs and tracks of its mono "
         "estimates) beside the TOD-R of its couplings (median over segments: the NCA's fits of Table 1, and the "
         "references of the Exact references and Held-out scores sections, one marker each); bars span the "
         "25th to 75th percentiles, grey points each run's median over tracks, and dashed lines the "
         "baselines' vocals SDR where they were evaluated. Points further left come from less diagonal "
         "mappings.\n"),
        f"![SDR beside TOD-R]({SEPARATION_FIGURE})\n",
    ]
    return [part for part in section if part]


def _rows_text(table: dict) -> str | None:
    """What the rows beyond the models' mono estimates are, for those present."""
    present = {(row.get("baseline"), row.get("estimate", "mono"), bool(row.get("wiener_iterations")))
               for row in table["rows"]}
    parts = []
    if ("mixture", "stereo", False) in present:
        parts.append("*Mixture (baseline)*: the mixture itself as both estimates (halved, which BSS Eval's "
                     "distortion filter ignores), what doing nothing scores")
    if (None, "stereo", False) in present:
        parts.append("*stereo*: the model's estimate of the channel average turned into a mask and applied "
                     "to every channel's STFT (what `nca-np separate` writes for a stereo file)")
    if (None, "stereo", True) in present:
        parts.append("*(Wiener N)*: those stereo estimates refined by N iterations of the multichannel "
                     "Wiener filter (`nca-np evaluate --wiener-iterations N`)")
    if ("oracle-irm", "stereo", False) in present:
        parts.append("*Oracle IRM (baseline)*: the ideal ratio mask |V| / (|V| + |A|) of the true stems on "
                     "the models' STFT, per channel (stereo) or of the channel averages put on every channel "
                     "(mono): what a mask on this STFT reaches knowing the true sources")
    if not parts:
        return None
    return "Rows: the models' names alone are their mono estimates, as in the paper; " + "; ".join(parts) + ".\n"


def write_separation(out_dir: Path, table: dict, separation_units, units, kinds, strategies, extra_tod_r,
                      dpi) -> list[Path]:
    """The separation table's files and its figure (the models' mono estimates,
    with the baselines' levels)."""
    write_text(out_dir / SEPARATION_CSV, separation_csv(table))
    write_json(out_dir / SEPARATION_JSON, table)
    mono = [u for u in separation_units if not u.get("baseline") and (u.get("estimate") or "mono") == "mono"]
    sdr = {kind: [u["scores"]["vocals"]["SDR"] for u in mono if u["kind"] == kind] for kind in kinds}
    runs = {kind: _run_medians([u for u in mono if u["kind"] == kind]) for kind in kinds}
    levels = {row["model"]: row["cells"]["vocals_SDR"]["median"] for row in table["rows"]
              if row.get("baseline") and row.get("estimate") == "stereo"
              and row["cells"]["vocals_SDR"]["median"] is not None}
    plot_sdr_vs_tod_r(out_dir / SEPARATION_FIGURE, sdr, tod_r_series(units, kinds, strategies, extra_tod_r),
                      {kind: display_name(kind) for kind in kinds}, dpi=dpi, run_sdr=runs, baselines=levels)
    return [out_dir / SEPARATION_CSV, out_dir / SEPARATION_JSON, out_dir / SEPARATION_FIGURE]


def _run_medians(units) -> list[float]:
    """Each run's vocals SDR, the median over its tracks (finite values)."""
    by_run: dict = {}
    for unit in units:
        by_run.setdefault(unit.get("run"), []).append(unit["scores"]["vocals"]["SDR"])
    return [median_and_quartiles([v for v in values if math.isfinite(v)])[0] for values in by_run.values()]
