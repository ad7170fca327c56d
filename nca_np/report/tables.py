"""The numbers of Tables 1–3 and how they are shown (docs/method.md#measures).

:func:`summarise` turns the per-segment couplings results into the numbers
of the paper's three tables; :func:`markdown_table` and :func:`table_csv`
show them. This module knows nothing of where results are stored: the
report stage (:mod:`nca_np.report.stage`) gathers them and hands them over
as plain data.

Statistics: each table cell is the mean and the *population* standard
deviation (ddof = 0) over the finite values of its segments; infinite and
NaN values (e.g. the TOD-R of a diagonal matrix, an exact reconstruction's
SNR) are left out of both and counted, and the counts are shown.
"""

from __future__ import annotations

import csv
import io
import math

import numpy

from ..errors import UserError
from ..models import MODEL_KINDS, display_name
from ..nca import STRATEGIES, get_strategy, strategy_names


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


def number(value, where: str) -> float:
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
    return number(value, f"{_unit_name(unit)}.{'.'.join(path)}")


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


def _fit_field(unit: dict, path: tuple) -> float:
    """:func:`_field`, but nan for a strategy's value when its fit diverged
    (its numbers mean nothing: they are counted as left out, not averaged)."""
    if path[0] == "strategies" and unit.get("strategies", {}).get(path[1], {}).get("diverged"):
        return math.nan
    return _field(unit, path)


def _summarise_table(table: str, by_kind: dict, kinds, strategies) -> dict:
    columns = _table_columns(table, strategies)
    rows = []
    for kind in kinds:
        units = by_kind[kind]
        cells = {key: cell_statistics(_fit_field(u, path) for u in units) for key, _, path in columns}
        rows.append({"kind": kind, "model": display_name(kind), "n_segments": len(units), "cells": cells})
    return {
        "title": TABLE_TITLES[table],
        "unit": "" if table == TABLE1 else "dB",
        "std": STD_NOTE,
        "columns": [{"key": key, "label": label} for key, label, _ in columns],
        "rows": rows,
    }


def strategy_label(strategy: str) -> str:
    """The registered strategy's label ("NCA student", …)."""
    return get_strategy(strategy).label


# ------------------------------------------------------------- validation


def _check_kinds_strategies(kinds, strategies) -> None:
    if not kinds:
        raise ReportError(f"no model kinds to report: pass kinds, e.g. {list(MODEL_KINDS)}")
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
        kinds: the model kinds in display order (registered ones, e.g.
            "dae", "mss-dae", "sf").
        strategies: the NCA strategies in display order, a subset of the
            registered ones (:func:`nca_np.nca.strategy_names`).

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
        "frames": distinct(u["segment"].get("frames") for u in units),
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


def markdown(header: list[str], rows) -> str:
    """A Markdown table: ``header`` and each of ``rows`` list cell texts."""
    def line(cells) -> str:
        return "| " + " | ".join(cells) + " |"
    return "\n".join([line(header), "|" + "---|" * len(header)] + [line(cells) for cells in rows]) + "\n"


def markdown_table(table: dict, decimals: int, *, bold_smallest: bool = False, no_bold=()) -> str:
    """A summarised table as Markdown: model, n, one "mean (std)" per column;
    with ``bold_smallest``, the smallest mean of each column not in ``no_bold`` in bold."""
    bold = _smallest_means(table) if bold_smallest else {}
    bold = {key: kinds for key, kinds in bold.items() if key not in no_bold}
    header = ["Model", "n"] + [c["label"] for c in table["columns"]]
    rows = [[row["model"], str(row["n_segments"])]
            + [format_cell(row["cells"][c["key"]], decimals, bold=row["kind"] in bold.get(c["key"], ()))
               for c in table["columns"]]
            for row in table["rows"]]
    return markdown(header, rows)


def csv_number(value) -> str:
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
            mean = csv_number(cell["mean"]) if cell["n"] else _undefined_mean(cell).replace("–", "nan")
            record += [mean, csv_number(cell["std"]), str(cell["n"])]
        writer.writerow(record)
    return buffer.getvalue()



def distinct(values) -> str:
    """'10' for one distinct value, '8, 10' for several (numbers first)."""
    def order(value):
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        return (not is_number, value if is_number else str(value))
    return ", ".join(str(v) for v in sorted(set(values), key=order))
