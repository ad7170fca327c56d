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


def write_separation(out_dir: Path, table: dict, separation_units, units, kinds, strategies, extra_tod_r,
                      dpi) -> list[Path]:
    """The separation table's files and its figure."""
    write_text(out_dir / SEPARATION_CSV, separation_csv(table))
    write_json(out_dir / SEPARATION_JSON, table)
    sdr = {kind: [u["scores"]["vocals"]["SDR"] for u in separation_units if u["kind"] == kind] for kind in kinds}
    plot_sdr_vs_tod_r(out_dir / SEPARATION_FIGURE, sdr, tod_r_series(units, kinds, strategies, extra_tod_r),
                      {kind: display_name(kind) for kind in kinds}, dpi=dpi)
    return [out_dir / SEPARATION_CSV, out_dir / SEPARATION_JSON, out_dir / SEPARATION_FIGURE]
