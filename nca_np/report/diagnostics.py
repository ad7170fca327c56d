"""What the report says about the NCA's fits themselves: the exact
references beside them, their convergence, and what the TOD-R column
measures (docs/method.md#exact-references, docs/method.md#convergence).

:func:`diagnose` turns the couplings units into two tables and the facts
the report's opening note needs:

- ``exact_references``: per model, TOD-R and SNR(ŷ, Ŷ(C)) of the exact
  references (minimum-norm couplings ``V X⁺``, the mean local map, the
  exact solutions nearest each NCA strategy's initial ``C`` and nearest the
  identity) beside the NCA's couplings, the linear composition and the
  identity;
- ``convergence``: per model and strategy, the share of fits converged,
  their relative error and loss fall, iterations, whether the student
  problem is determined (rank X against F), and the spread of TOD-R over
  initialisations;
- ``regime``: the ranks of the segments against F.

Everything here is a pure function of the units, so the text is
byte-identical for the same results.
"""

from __future__ import annotations

import csv
import io
import math

import numpy

from ..errors import UserError
from ..nca import CONVERGENCE_WINDOW, get_strategy
from .tables import display_name

REFERENCES_CSV = "exact_references.csv"
CONVERGENCE_CSV = "nca_convergence.csv"
DIAGNOSTICS_JSON = "nca_diagnostics.json"


class DiagnosticsError(UserError, ValueError):
    """Units without the diagnostics this report needs."""


def _get(unit: dict, path: tuple):
    value = unit
    for key in path:
        if not isinstance(value, dict) or key not in value:
            segment = unit.get("segment", {}).get("id", "?")
            raise DiagnosticsError(f"unit ({unit.get('kind')!r}, segment {segment!r}) has no {'.'.join(path)}: "
                                   "it was made by an older version; re-run the couplings stage for it")
        value = value[key]
    return value


def _number(value) -> float:
    return math.nan if value is None else float(value)


def _stats(values) -> dict:
    """Mean, population std, median, min and max of the finite values; the
    count of values left out."""
    array = numpy.array([_number(v) for v in values], dtype=numpy.float64)
    finite = array[numpy.isfinite(array)]
    if finite.size == 0:
        return {"n": 0, "n_values": int(array.size), "mean": None, "std": None, "median": None, "min": None,
                "max": None, "all_inf": bool(array.size and (array == math.inf).all())}
    return {"n": int(finite.size), "n_values": int(array.size), "mean": float(finite.mean()),
            "std": float(finite.std()), "median": float(numpy.median(finite)), "min": float(finite.min()),
            "max": float(finite.max()), "all_inf": False}


# ------------------------------------------------------------------ tables


def _reference_rows(strategies) -> list[tuple[str, str, tuple | None, tuple]]:
    """(key, label, path of the TOD-R or None for ∞, path of the SNR)."""
    rows = [("min_norm", "least squares, minimum norm: V X⁺", ("references", "min_norm", "tod_r"),
             ("references", "min_norm", "snr_model_db")),
            ("mean_local_map", "mean local map (Eq. 14, true gates)", ("references", "mean_local_map", "tod_r"),
             ("references", "mean_local_map", "snr_model_db"))]
    rows += [(f"nearest_init_{s}", f"least squares, nearest the {get_strategy(s).label}'s initial C"
              + ("" if get_strategy(s).free else " (outside the C the strategy can reach)"),
              ("strategies", s, "nearest_exact_to_init", "tod_r"),
              ("strategies", s, "nearest_exact_to_init", "snr_model_db")) for s in strategies]
    rows.append(("nearest_identity", "least squares, nearest the identity", ("references", "nearest_identity", "tod_r"),
                 ("references", "nearest_identity", "snr_model_db")))
    rows += [(s, get_strategy(s).label, ("strategies", s, "tod_r"), ("strategies", s, "snr_model_db"))
             for s in strategies]
    rows += [("linear", "linear composition", ("baselines", "linear", "tod_r"),
              ("baselines", "linear", "snr_model_db")),
             ("identity", "identity", None, ("baselines", "identity", "snr_model_db"))]
    return rows


def _references_table(by_kind: dict, kinds, strategies) -> dict:
    rows = []
    for key, label, tod_path, snr_path in _reference_rows(strategies):
        cells = {}
        for kind in kinds:
            units = by_kind[kind]
            tod = [math.inf] * len(units) if tod_path is None else [_get(u, tod_path) for u in units]
            cells[kind] = {"tod_r": _stats(tod), "snr_model_db": _stats(_get(u, snr_path) for u in units)}
            for group in HELDOUT_GROUPS:  # the nearest-init solutions are not scored on held-out frames
                cells[kind][group] = _stats(_value(u, ("heldout", "scores", key, group, "snr_model_db"))
                                            for u in units)
        rows.append({"key": key, "label": label, "cells": cells})
    return {"title": "Exact references beside the NCA: TOD-R and SNR (dB) between ŷ and Ŷ(C)",
            "kinds": list(kinds), "rows": rows}


def _spread(units, strategy: str) -> dict:
    """TOD-R range over initialisations, on the segments that have one."""
    ranges = [_get(u, ("strategies", strategy, "tod_r_range")) for u in units
              if "tod_r_range" in u["strategies"][strategy]]
    widths = [hi - lo for lo, hi in ranges if math.isfinite(hi - lo)]
    seeds = [1 + len(u["strategies"][strategy].get("spread", [])) for u in units
             if "tod_r_range" in u["strategies"][strategy]]
    return {"segments": len(ranges), "seeds": max(seeds, default=0),
            "median_width": float(numpy.median(widths)) if widths else None,
            "max_width": max(widths, default=None),
            "lowest": min((lo for lo, _ in ranges), default=None),
            "highest": max((hi for _, hi in ranges), default=None)}


def _convergence_table(by_kind: dict, kinds, strategies) -> dict:
    rows = []
    for kind in kinds:
        units = by_kind[kind]
        ranks = [int(_get(u, ("references", "rank"))) for u in units]
        n_freq = int(_get(units[0], ("references", "n_freq"))) if units else None
        determined = sum(bool(_get(u, ("references", "determined"))) for u in units)
        least_squares = _stats(_get(u, ("references", "min_norm", "relative_error")) for u in units)
        for strategy in strategies:
            def values(key, strategy=strategy):
                return [_get(u, ("strategies", strategy, key)) for u in units]
            rows.append({
                "kind": kind, "model": display_name(kind), "strategy": strategy,
                "label": get_strategy(strategy).label, "fits": len(units),
                "converged": sum(bool(v) for v in values("converged")),
                "diverged": sum(bool(u["strategies"][strategy].get("diverged")) for u in units),
                "relative_error": _stats(values("relative_error")),
                "least_squares_error": least_squares,
                "loss_fall": _stats(values("loss_fall")),
                "iterations": _stats(values("iterations")),
                "determined": determined, "segments": len(units), "rank": _stats(ranks), "n_freq": n_freq,
                "spread": _spread(units, strategy),
            })
    return {"title": "Convergence of the NCA's fits", "window": CONVERGENCE_WINDOW, "rows": rows}


def diagnose(units, *, kinds, strategies) -> dict:
    """The NCA diagnostics of the report, as a JSON-able dict.

    Args:
        units: the couplings units (as for :func:`nca_np.report.summarise`,
            which validates them), each with ``references`` and the
            strategies' diagnostics.
        kinds, strategies: display order.

    Returns:
        ``{"exact_references", "convergence", "regime", "tolerance"}``.

    Raises:
        DiagnosticsError: a unit made before the diagnostics existed.
    """
    by_kind = {kind: [u for u in units if u["kind"] == kind] for kind in kinds}
    for kind in kinds:
        by_kind[kind].sort(key=lambda u: (u["segment"].get("number", 0), str(u["segment"].get("id"))))
    references = _references_table(by_kind, kinds, strategies)
    convergence = _convergence_table(by_kind, kinds, strategies)
    ranks = [int(_get(u, ("references", "rank"))) for u in units]
    regime = {"segments": len(units), "determined": sum(bool(_get(u, ("references", "determined"))) for u in units),
              "rank_min": min(ranks), "rank_max": max(ranks),
              "n_freq": int(_get(units[0], ("references", "n_freq"))),
              "frames": sorted({int(_get(u, ("references", "frames"))) for u in units}),
              "strides": sorted({int(_get(u, ("references", "mean_local_map", "frame_stride"))) for u in units}),
              "offset_share": {kind: _stats(_get(u, ("references", "offset_share")) for u in by_kind[kind])
                               for kind in kinds}}
    tolerance = _get(units[0], ("strategies", strategies[0], "tolerance"))
    return {"exact_references": references, "convergence": convergence, "regime": regime, "tolerance": tolerance}


def reference_tod_r_series(units, kinds) -> dict:
    """``{series label: {kind: [TOD-R per segment]}}`` of the references
    that depend on no initialisation (and the cross-validated ridge, where
    every unit has it), for figures beside the NCA's TOD-R."""
    series = {"least squares V X⁺": ("references", "min_norm", "tod_r"),
              "mean local map": ("references", "mean_local_map", "tod_r")}
    if units and all("ridge" in u.get("references", {}) for u in units):
        series["ridge (cross-validated)"] = ("references", "ridge", "tod_r")
    return {label: {kind: [_get(u, path) for u in units if u["kind"] == kind] for kind in kinds}
            for label, path in series.items()}


# ------------------------------------------------------------------ text


def _fmt(value, decimals: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.{decimals}f}"


def _mean_std(stats: dict, decimals: int = 2) -> str:
    if stats["n"] == 0:
        return "inf" if stats["all_inf"] else "–"
    text = f"{stats['mean']:.{decimals}f} ({stats['std']:.{decimals}f})"
    left_out = stats["n_values"] - stats["n"]
    return text + (f" [{left_out} left out]" if left_out else "")


def _markdown(header, rows) -> str:
    def line(cells) -> str:
        return "| " + " | ".join(cells) + " |"
    return "\n".join([line(header), "|" + "---|" * len(header)] + [line(cells) for cells in rows]) + "\n"


def references_markdown(diagnostics: dict) -> str:
    table = diagnostics["exact_references"]
    header = ["Couplings C"] + [f"{display_name(k)} {what}" for k in table["kinds"]
                                for what in ("TOD-R", "SNR (dB)", "held-out SNR, same / other tracks")]
    rows = [[row["label"]] + [text for k in table["kinds"] for text in (
                _mean_std(row["cells"][k]["tod_r"]), _mean_std(row["cells"][k]["snr_model_db"]),
                " / ".join(_mean_std(row["cells"][k].get(g, _stats([]))) for g in HELDOUT_GROUPS))]
            for row in table["rows"]]
    return _markdown(header, rows)


def _percent(value) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


def _ratio(part: int, whole: int) -> str:
    return f"{part} of {whole}"


def _spread_text(spread: dict) -> str:
    if not spread["segments"]:
        return "–"
    return (f"{_fmt(spread['median_width'], 3)} (largest {_fmt(spread['max_width'], 3)}; "
            f"{spread['segments']} segment{'s' if spread['segments'] > 1 else ''} × {spread['seeds']} seeds)")


def convergence_markdown(diagnostics: dict) -> str:
    header = ["Model", "Strategy", "loss stopped changing (diverged)",
              "relative error ‖V − CX‖₁/‖V‖₁, median (max)",
              "same for V X⁺, median", "loss fall over the last 10 %, median", "iterations", "student problem determined (rank X of F)",
              "TOD-R range over seeds, median width"]
    rows = []
    for row in diagnostics["convergence"]["rows"]:
        error, fall, its, rank = row["relative_error"], row["loss_fall"], row["iterations"], row["rank"]
        iterations = (f"{its['min']:.0f}" if its["min"] == its["max"] else f"{its['min']:.0f}–{its['max']:.0f}") \
            if its["n"] else "–"
        ranks = f"{rank['min']:.0f}" if rank["min"] == rank["max"] else f"{rank['min']:.0f}–{rank['max']:.0f}"
        rows.append([row["model"], row["label"], _ratio(row["converged"], row["fits"])
                     + (f" ({row.get('diverged', 0)} diverged)" if row.get("diverged") else ""),
                     f"{_fmt(error['median'], 3)} ({_fmt(error['max'], 3)})",
                     _fmt(row["least_squares_error"]["median"], 3), _percent(fall["median"]),
                     iterations, f"{_ratio(row['determined'], row['segments'])} (rank {ranks} of {row['n_freq']})",
                     _spread_text(row["spread"])])
    return _markdown(header, rows)


def _csv(header, rows) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def _csv_number(value) -> str:
    return "nan" if value is None else format(value, ".6f")


def references_csv(diagnostics: dict) -> str:
    """One row per couplings matrix and model: TOD-R and SNR, mean, std, n."""
    rows = []
    for row in diagnostics["exact_references"]["rows"]:
        for kind, cell in row["cells"].items():
            tod, snr = cell["tod_r"], cell["snr_model_db"]
            tod_mean = "inf" if tod["all_inf"] else _csv_number(tod["mean"])
            heldout = [v for g in HELDOUT_GROUPS for v in (_csv_number(cell[g]["mean"]), _csv_number(cell[g]["std"]),
                                                           cell[g]["n"])]
            rows.append([row["key"], display_name(kind), tod_mean, _csv_number(tod["std"]), tod["n"],
                         _csv_number(snr["mean"]), _csv_number(snr["std"]), snr["n"], *heldout])
    return _csv(["couplings", "model", "tod_r_mean", "tod_r_std", "tod_r_n", "snr_model_db_mean",
                 "snr_model_db_std", "snr_model_db_n"]
                + [f"heldout_{g}_snr_db_{s}" for g in HELDOUT_GROUPS for s in ("mean", "std", "n")], rows)


def convergence_csv(diagnostics: dict) -> str:
    rows = [[r["model"], r["strategy"], r["fits"], r["converged"], _csv_number(r["relative_error"]["median"]),
             _csv_number(r["relative_error"]["max"]), _csv_number(r["least_squares_error"]["median"]),
             _csv_number(r["loss_fall"]["median"]),
             _csv_number(r["iterations"]["min"]), _csv_number(r["iterations"]["max"]), r["determined"],
             r["segments"], _csv_number(r["rank"]["median"]), r["n_freq"], _csv_number(r["spread"]["median_width"]),
             r.get("diverged", 0)]
            for r in diagnostics["convergence"]["rows"]]
    return _csv(["model", "strategy", "fits", "converged", "relative_error_median", "relative_error_max",
                 "least_squares_relative_error_median", "loss_fall_median", "iterations_min", "iterations_max", "determined", "segments", "rank_median",
                 "n_freq", "tod_r_range_median_width", "diverged"], rows)


def _row(diagnostics: dict, key: str) -> dict:
    return next(r for r in diagnostics["exact_references"]["rows"] if r["key"] == key)


def _per_model(diagnostics: dict, key: str, what: str = "tod_r") -> str:
    """'DAE 4.10, MSS-DAE 4.31, SF 1.40': a reference row's means per model."""
    cells = _row(diagnostics, key)["cells"]
    return ", ".join(f"{display_name(k)} {_mean_std_short(cells[k][what])}" for k in cells)


def _mean_std_short(stats: dict) -> str:
    if stats["n"] == 0:
        return "inf" if stats["all_inf"] else "–"
    return f"{stats['mean']:.2f}"


def regime_sentence(diagnostics: dict) -> str:
    """Which regime the student problem is in, said plainly."""
    regime = diagnostics["regime"]
    frames = ", ".join(str(t) for t in regime["frames"])
    ranks = (f"{regime['rank_min']}" if regime["rank_min"] == regime["rank_max"]
             else f"{regime['rank_min']} to {regime['rank_max']}")
    if regime["determined"] == regime["segments"]:
        return (f"The student problem C X = V is determined on every segment (rank X = F = {regime['n_freq']}, "
                f"from T = {frames} frames): it has at most one exact solution, and the loss sees all of C.")
    return (f"The student problem C X = V is underdetermined on {regime['segments'] - regime['determined']} of "
            f"{regime['segments']} segments (rank X = {ranks} < F = {regime['n_freq']}, T = {frames} frames): "
            "the loss never sees what C does outside the span of the segment's frames.")


def _range_per_model(diagnostics: dict, low_key: str, high_key: str) -> str:
    """'DAE 1.31 to 150.20, SF …': two reference rows' mean TOD-R per model."""
    low, high = _row(diagnostics, low_key)["cells"], _row(diagnostics, high_key)["cells"]
    return ", ".join(f"{display_name(k)} {_mean_std_short(low[k]['tod_r'])} to {_mean_std_short(high[k]['tod_r'])}"
                     for k in low)


def _free_above_least_squares(rows) -> list:
    """The rows of free strategies (C unconstrained, :attr:`nca_np.nca.Strategy.free`)
    whose median error exceeds that of V X⁺: fits short of the minimum of
    their own loss (V X⁺ is a C they can reach)."""
    return [r for r in rows if get_strategy(r["strategy"]).free and r["relative_error"]["median"] is not None
            and r["least_squares_error"]["median"] is not None
            and r["relative_error"]["median"] > r["least_squares_error"]["median"]]


def _unconverged_text(diagnostics: dict, strategies, converged: int, fits: int) -> str:
    """How many fits converged, per strategy, and what that means for TOD-R."""
    rows = diagnostics["convergence"]["rows"]
    window = 100 * diagnostics["convergence"]["window"]
    per_strategy = "; ".join(
        f"{get_strategy(s).label} {sum(r['converged'] for r in rows if r['strategy'] == s)} of "
        f"{sum(r['fits'] for r in rows if r['strategy'] == s)} (median relative error "
        + ", ".join(f"{r['model']} {_fmt(r['relative_error']['median'], 2)}" for r in rows if r["strategy"] == s)
        + ")" for s in strategies)
    return (f"{converged} of {fits} NCA fits stopped changing by this project's rule (their loss changed by less "
            f"than {100 * diagnostics['tolerance']:g} % over the last {window:g} % of their iterations, "
            f"docs/method.md#convergence; a loss can stop moving far from its minimum, so the relative error is "
            f"given beside it): {per_strategy}; the relative error ‖V − C X‖₁ / ‖V‖₁ is 1 for C = 0. "
            "The TOD-R of a fit that has not converged is a snapshot of a matrix that was still changing, "
            "not yet a property of the model.")


def measurement_note(diagnostics: dict, strategies) -> str:
    """The report's opening paragraph when its TOD-R column does not simply
    measure the models: fits that did not converge, student fits that stop
    above the least-squares error, or an underdetermined student problem.
    Empty when none of these happened."""
    rows = diagnostics["convergence"]["rows"]
    fits = sum(r["fits"] for r in rows)
    converged = sum(r["converged"] for r in rows)
    regime = diagnostics["regime"]
    underdetermined = regime["determined"] < regime["segments"]
    above = _free_above_least_squares(rows)
    if converged == fits and not underdetermined and not above:
        return ""
    parts = ["**What the TOD-R column measures here.**"]
    if converged < fits:
        parts.append(_unconverged_text(diagnostics, strategies, converged, fits))
    if above:
        who = " and ".join(dict.fromkeys(r["strategy"] for r in above))
        parts.append(
            f"The {who}'s fits stop above the minimum of their own loss: the least-squares couplings V X⁺, "
            f"a C the {who} can reach, have the smaller median relative error ("
            + ", ".join(f"{r['model']} {_fmt(r['least_squares_error']['median'], 2)} against "
                        f"{_fmt(r['relative_error']['median'], 2)}" for r in above) + ").")
    if underdetermined:
        first = strategies[0]
        parts.append(
            regime_sentence(diagnostics)[:-1] + ", so that part of a fitted C stays what its random "
            f"initialisation made it. Exact solutions of C X = V on the same segments have TOD-R from the one "
            f"nearest the {get_strategy(first).label}'s initial C to the one nearest the identity: "
            f"{_range_per_model(diagnostics, f'nearest_init_{first}', 'nearest_identity')}.")
    parts.append(
        "References that depend on no initialisation: the minimum-norm couplings V X⁺ have TOD-R "
        f"{_per_model(diagnostics, 'min_norm')}; the mean over each segment's frames of the network's exact "
        f"local map has {_per_model(diagnostics, 'mean_local_map')} (section Exact references).")
    return " ".join(parts)


def references_caption(diagnostics: dict) -> str:
    regime = diagnostics["regime"]
    strides = regime["strides"]
    frames = ("every frame of the segment" if strides == [1] else
              f"every {', '.join(str(s) for s in strides)}-th frame of the segment (nca.local_map_stride)")
    offsets = ", ".join(f"{display_name(k)} {_percent(s['median'])}" for k, s in regime["offset_share"].items())
    return (
        "TOD-R (Eq. 22) and SNR(ŷ, Ŷ(C)) in dB, mean (std) over segments, of matrices known in closed form "
        "beside the NCA's fits (docs/method.md#exact-references). *Least squares*: C0 + (V − C0 X) X⁺, the "
        "couplings nearest C0 among those minimising ‖V − C X‖ in the least-squares sense; C0 = 0 gives the "
        "minimum-norm V X⁺. When rank X = T (T ≤ F) they all solve C X = V exactly and differ only outside the "
        "span of the frames, so together they show how wide the family of exact solutions is; when rank X = F "
        "they coincide. *Mean local map*: "
        f"the network's exact Jacobian D_L W_L ⋯ D_1 W_1 at each frame (Eq. 14 with the true ReLU gates), "
        f"averaged over {frames}; each frame's output is its own local map applied to the input plus an offset "
        f"from the biases, whose size relative to V (‖offsets‖₁ / ‖V‖₁, median) is {offsets}. "
        "The identity's TOD-R is infinite (no off-diagonal entry).")


def convergence_caption(diagnostics: dict) -> str:
    return (
        "Per model and strategy: how many fits' loss stopped changing by the convergence rule (changed by less than "
        f"{100 * diagnostics['tolerance']:g} % between the mean over the last "
        f"{100 * diagnostics['convergence']['window']:g} % of the iterations and the mean over the "
        f"{100 * diagnostics['convergence']['window']:g} % before; a fit whose loss became NaN or infinite is "
        "counted as diverged, and its numbers are left out of every table); the rule says the loss stopped moving, "
        "which with step halvings can happen far from the minimum, hence the relative error of the final C (C = 0 "
        "scores 1), beside that of the least-squares couplings V X⁺ (a C the student strategy can reach, so "
        "its L1 optimum is at most that; the compositional C is confined to the form W̃_L ⋯ W̃_1); the fall "
        "of the loss over the last 10 % of iterations (of the last stage when η was halved, nca.halvings); iterations run; on how many segments "
        "rank X = F, so that C X = V has at most one solution; and the width max − min of TOD-R over fits of one "
        "segment from different initialisations (nca.init_seeds extra seeds on the first nca.spread_segments "
        "segments).")


# ------------------------------------------------------------------ held-out scores

HELDOUT_CSV = "heldout_scores.csv"
HELDOUT_JSON = "heldout_scores.json"
#: The groups of held-out blocks (as the units name them) and how the report names them.
HELDOUT_GROUPS = {"same_track": "same track", "other_tracks": "other tracks"}
#: A strategy's TOD-R "stayed at its initialisation's" when its median
#: |TOD-R(final) / TOD-R(initial C) − 1| over segments is below this share
#: (fixed before any result was looked at).
INIT_SHARE = 0.05


def _value(unit: dict, path: tuple) -> float:
    """``unit`` at ``path`` as a float, nan where the unit lacks it (a unit
    without held-out blocks of a group, or without ridge couplings)."""
    value = unit
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return math.nan
        value = value[key]
    return _number(value)


def _heldout_rows(strategies) -> list[tuple[str, str, tuple | None, tuple]]:
    """(key = the matrix's name in ``heldout.scores``, label, path of its
    TOD-R or None for ∞, path of its in-sample SNR) of every scored matrix."""
    rows = [(s, get_strategy(s).label, ("strategies", s, "tod_r"), ("strategies", s, "snr_model_db"))
            for s in strategies]
    rows += [(key, label, ("references", key, "tod_r"), ("references", key, "snr_model_db")) for key, label in (
        ("min_norm", "least squares, minimum norm: V X⁺"),
        ("nearest_identity", "least squares, nearest the identity"),
        ("mean_local_map", "mean local map (Eq. 14, true gates)"),
        ("ridge", "ridge, α chosen on same-track segments"),
        ("pooled_ridge", "ridge fitted on k + 1 segments of the track, α chosen on the others"))]
    rows += [("linear", "linear composition", ("baselines", "linear", "tod_r"),
              ("baselines", "linear", "snr_model_db")),
             ("identity", "identity", None, ("baselines", "identity", "snr_model_db"))]
    return rows


def _heldout_cell(units, key: str, tod_path, snr_path) -> dict:
    cell = {"tod_r": _stats([math.inf] * len(units) if tod_path is None else [_value(u, tod_path) for u in units]),
            "snr_model_db": _stats(_value(u, snr_path) for u in units)}
    for group in HELDOUT_GROUPS:
        cell[group] = _stats(_value(u, ("heldout", "scores", key, group, "snr_model_db")) for u in units)
    return cell


def _ridge_choices(units) -> dict:
    """Per ridge: the chosen α (median, min, max over segments) and the segments pooled."""
    out = {}
    for key in ("ridge", "pooled_ridge"):
        out[key] = {"alpha": _stats(_value(u, ("references", key, "alpha")) for u in units),
                    "pooled_segments": _stats(_value(u, ("references", key, "pooled_segments")) for u in units)}
    return out


def heldout_table(units, *, kinds, strategies) -> dict | None:
    """Every scored matrix's TOD-R, in-sample SNR and held-out SNRs per
    model (docs/method.md#held-out-scores); None when no unit has held-out scores.

    Returns:
        ``{"title", "kinds", "rows": [{"key", "label", "cells": {kind:
        {"tod_r", "snr_model_db", "same_track", "other_tracks"}}}],
        "ridge": {kind: …}, "blocks": {kind: {group: stats of the count}}}``.
    """
    if not any("heldout" in u for u in units):
        return None
    by_kind = {kind: [u for u in units if u["kind"] == kind] for kind in kinds}
    rows = [{"key": key, "label": label,
             "cells": {kind: _heldout_cell(by_kind[kind], key, tod, snr) for kind in kinds}}
            for key, label, tod, snr in _heldout_rows(strategies)]
    blocks = {kind: {group: _stats(len(u.get("heldout", {}).get("segments", {}).get(group, []))
                                   for u in by_kind[kind]) for group in HELDOUT_GROUPS} for kind in kinds}
    return {"title": "Held-out scores: SNR (dB) between ŷ and Ŷ(C) on segments C was not fitted on",
            "kinds": list(kinds), "rows": rows, "ridge": {kind: _ridge_choices(by_kind[kind]) for kind in kinds},
            "blocks": blocks}


def heldout_markdown(table: dict) -> str:
    header = ["Couplings C"] + [f"{display_name(k)} {what}" for k in table["kinds"]
                                for what in ("TOD-R", "SNR (dB)", "held-out SNR, same track",
                                             "held-out SNR, other tracks")]
    rows = [[row["label"]] + [_mean_std(row["cells"][k][what]) for k in table["kinds"]
                              for what in ("tod_r", "snr_model_db", *HELDOUT_GROUPS)]
            for row in table["rows"]]
    return _markdown(header, rows)


def heldout_csv(table: dict) -> str:
    """One row per matrix and model: TOD-R, in-sample and held-out SNRs, mean, std, n."""
    measures = ("tod_r", "snr_model_db", *(f"heldout_{g}_snr_db" for g in HELDOUT_GROUPS))
    rows = []
    for row in table["rows"]:
        for kind, cell in row["cells"].items():
            record = [row["key"], display_name(kind)]
            for stats in (cell["tod_r"], cell["snr_model_db"], *(cell[g] for g in HELDOUT_GROUPS)):
                mean = "inf" if stats["all_inf"] else _csv_number(stats["mean"])
                record += [mean, _csv_number(stats["std"]), stats["n"]]
            rows.append(record)
    return _csv(["couplings", "model"] + [f"{m}_{s}" for m in measures for s in ("mean", "std", "n")], rows)


def _count_text(stats: dict) -> str:
    if stats["n"] == 0:
        return "0"
    return f"{stats['min']:.0f}" if stats["min"] == stats["max"] else f"{stats['min']:.0f}–{stats['max']:.0f}"


def heldout_caption(table: dict) -> str:
    """What the held-out table shows, with the chosen α and the blocks used, per model."""
    alphas = "; ".join(
        f"{display_name(k)}: ridge α median {_fmt(r['ridge']['alpha']['median'], 6)} (range "
        f"{_fmt(r['ridge']['alpha']['min'], 6)}–{_fmt(r['ridge']['alpha']['max'], 6)}), pooled ridge α median "
        f"{_fmt(r['pooled_ridge']['alpha']['median'], 6)} (range {_fmt(r['pooled_ridge']['alpha']['min'], 6)}–"
        f"{_fmt(r['pooled_ridge']['alpha']['max'], 6)}, k = {_count_text(r['pooled_ridge']['pooled_segments'])})"
        for k, r in table["ridge"].items())
    blocks = "; ".join(f"{display_name(k)} {_count_text(b['same_track'])} same-track and "
                       f"{_count_text(b['other_tracks'])} other-track segments"
                       for k, b in table["blocks"].items())
    return (
        "Every couplings matrix of a unit scored on segments it was not fitted on (docs/method.md#held-out-scores): "
        "segments of the same test excerpt and segments of other test tracks, never overlapping the fitting "
        f"segment, drawn per fitting segment from nca.seed ({blocks} per unit; fewer where fewer exist). "
        "SNR(ŷ, Ŷ(C)) in dB on each group's frames pooled, mean (std) over segments; C = 0 scores 0 dB, so a "
        "matrix below 0 dB describes the network on new frames worse than no matrix at all. TOD-R and SNR (dB) "
        "are in-sample, on the fitting segment. The ridge couplings (docs/method.md#ridge-couplings) choose α "
        "on the same-track segments, so their same-track SNR is optimistic by that choice (the pooled ridge's is "
        "on the same-track segments it did not pool); the other-tracks SNR is untouched by any choice and is "
        f"the headline number. Chosen α (units of σ₁(X)²): {alphas}. "
        f"CSV: [{HELDOUT_CSV}]({HELDOUT_CSV}); all numbers: [{HELDOUT_JSON}]({HELDOUT_JSON}).")


def headline_group(table: dict) -> str | None:
    """The held-out group the report's headline reads: other tracks where
    any unit has them, else the same track; None without held-out scores."""
    for group in ("other_tracks", "same_track"):
        if any(cell[group]["n"] for row in table["rows"] for cell in row["cells"].values()):
            return group
    return None


def generalisation_sentence(table: dict) -> str:
    """Which matrices beat C = 0 (mean held-out SNR above 0 dB) on frames
    they were not fitted on, for every model, and which do not (computed)."""
    group = headline_group(table)
    if group is None:
        return ""
    beat, fail = [], []
    for row in table["rows"]:
        cells = row["cells"]
        means = {k: cells[k][group]["mean"] for k in table["kinds"]}
        text = f"{row['label']} (" + ", ".join(f"{display_name(k)} {_fmt(m, 1)}" for k, m in means.items()) + ")"
        known = [m for m in means.values() if m is not None]
        if known and all(m > 0 for m in known):
            beat.append(text)
        else:
            fail.append(text)
    where = "segments of other test tracks" if group == "other_tracks" else \
        "other segments of the same track (no other test track; the ridge α was chosen on them)"
    return (f"**Which couplings describe the network beyond the frames they were fitted on.** On {where}, "
            "the couplings whose mean held-out SNR(ŷ, Ŷ(C)) in dB beats C = 0's 0 dB for every model: "
            f"{'; '.join(beat) or 'none'}. Those that do not: {'; '.join(fail) or 'none'} "
            "(section Held-out scores).")


def stayed_at_initialisation(units, strategy: str) -> bool:
    """True when the strategy's median |TOD-R / TOD-R(initial C) − 1| over
    its fits is below :data:`INIT_SHARE`: its TOD-R is its initialisation's."""
    changes = []
    for unit in units:
        entry = unit.get("strategies", {}).get(strategy, {})
        trajectory = entry.get("trajectory") or []
        if trajectory and trajectory[0].get("iteration") == 0 and _number(trajectory[0].get("tod_r")) > 0:
            changes.append(abs(_number(entry.get("tod_r")) / _number(trajectory[0]["tod_r"]) - 1))
    finite = [c for c in changes if math.isfinite(c)]
    return bool(finite) and float(numpy.median(finite)) < INIT_SHARE


def artefact_strategies(units, diagnostics: dict, strategies) -> list[str]:
    """The strategies whose TOD-R column the report calls an artefact: no
    fit converged, or their TOD-R stayed at their initialisation's."""
    rows = diagnostics["convergence"]["rows"]
    return [s for s in strategies
            if sum(r["converged"] for r in rows if r["strategy"] == s) == 0 or stayed_at_initialisation(units, s)]
