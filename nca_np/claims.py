"""The paper's claims, each given a computed verdict (docs/method.md#the-papers-claims-tested).

Input: couplings unit records, one per (model kind, segment), as the
couplings stage writes them::

    {"kind": "dae", "segment": {"number": 3, ...}, "run": 2,
     "strategies": {"student": {"tod_r": ..., "snr_model_db": ...}, ...},
     "baselines": {"linear": {...}, "identity": {...}}, "references": {...}}

Every claim reads its numbers through :class:`Measure` (a dotted path into
the record, or a function), so new measures (ridge couplings, held-out
scores) are tested the same way. Each claim compares two *sides* (a kind
and a measure) paired by segment, and its verdict is "holds", "does not
hold" or "not identified on this data", decided from a confidence interval
by the rules of docs/method.md#the-papers-claims-tested — never written by hand.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from typing import Callable

from .models import display_name

HOLDS = "holds"
FAILS = "does not hold"
UNIDENTIFIED = "not identified on this data"

#: Confidence of the intervals.
CONFIDENCE = 0.95
#: "≈" holds when the ratio's interval lies within this factor of the
#: claimed ratio either way (fixed before looking at any result).
APPROX_FACTOR = 2.0
#: "≫" holds when the SNR gain's interval lies above this many dB.
WIDE_MARGIN_DB = 10.0
#: An interval needs at least this many runs (clusters).
MIN_RUNS = 2


@dataclass(frozen=True)
class Measure:
    """A number of a unit record: ``path`` is dotted keys
    ("strategies.student.tod_r") or a function of the record."""

    label: str
    path: str | Callable

    def read(self, record: dict) -> float:
        """The value, or nan when the record lacks it."""
        if callable(self.path):
            value = self.path(record)
        else:
            value = record
            for key in self.path.split("."):
                if not isinstance(value, dict) or key not in value:
                    return math.nan
                value = value[key]
        try:
            return float(value)
        except (TypeError, ValueError):
            return math.nan


def tod_r_of(strategy: str) -> Measure:
    return Measure(f"{strategy} TOD-R", f"strategies.{strategy}.tod_r")


def snr_of(strategy: str) -> Measure:
    return Measure(f"{strategy} SNR", f"strategies.{strategy}.snr_model_db")


LINEAR_SNR = Measure("linear composition SNR", "baselines.linear.snr_model_db")

#: The TOD-R of couplings that depend on no NCA fit (docs/method.md#ridge-couplings,
#: docs/method.md#exact-references).
RIDGE_TOD_R = Measure("ridge (cross-validated) TOD-R", "references.ridge.tod_r")
POOLED_RIDGE_TOD_R = Measure("pooled ridge TOD-R", "references.pooled_ridge.tod_r")
MEAN_LOCAL_MAP_TOD_R = Measure("mean local map TOD-R", "references.mean_local_map.tod_r")
#: Claim (i) on every TOD-R the report shows.
ALL_TOD_R = (tod_r_of("student"), tod_r_of("compositional"), RIDGE_TOD_R, POOLED_RIDGE_TOD_R, MEAN_LOCAL_MAP_TOD_R)


def heldout_snr_of(name: str, group: str = "other_tracks", label: str | None = None) -> Measure:
    """The held-out SNR of a scored matrix (a strategy, ``linear``,
    ``ridge`` …) on one group of held-out blocks (docs/method.md#held-out-scores)."""
    return Measure(f"{label or name} held-out SNR ({group.replace('_', ' ')})",
                   f"heldout.scores.{name}.{group}.snr_model_db")


# ------------------------------------------------------------ pairing and intervals


def _by_segment(records, kind: str) -> dict:
    return {r["segment"]["number"]: r for r in records if r.get("kind") == kind}


def paired(records, side_a: tuple, side_b: tuple, log_ratio: bool) -> dict:
    """The per-segment contrasts of two sides ``(kind, Measure)``.

    A segment counts when both kinds have a unit on it and both values are
    finite (and positive, for a log ratio); the contrast is
    ``log(a / b)`` or ``a − b``.

    Returns:
        ``{"diffs", "runs_a", "runs_b", "a", "b", "dropped"}`` (lists, and
        the number of common segments left out).
    """
    units_a, units_b = _by_segment(records, side_a[0]), _by_segment(records, side_b[0])
    out = {"diffs": [], "runs_a": [], "runs_b": [], "a": [], "b": [], "dropped": 0}
    for number in sorted(set(units_a) & set(units_b)):
        a, b = side_a[1].read(units_a[number]), side_b[1].read(units_b[number])
        usable = math.isfinite(a) and math.isfinite(b) and (not log_ratio or (a > 0 and b > 0))
        if not usable:
            out["dropped"] += 1
            continue
        out["diffs"].append(math.log(a / b) if log_ratio else a - b)
        out["runs_a"].append(units_a[number].get("run"))
        out["runs_b"].append(units_b[number].get("run"))
        out["a"].append(a)
        out["b"].append(b)
    return out


def _half_width(values, clusters, confidence: float) -> tuple[float, int]:
    """Half-width of the t-interval over cluster means, and the cluster count
    (nan below :data:`MIN_RUNS` clusters)."""
    from scipy.stats import t as student_t

    groups: dict = {}
    for value, cluster in zip(values, clusters):
        groups.setdefault(cluster, []).append(value)
    means = [sum(g) / len(g) for key, g in groups.items() if key is not None]
    n = len(means)
    if n < MIN_RUNS or None in groups:
        return math.nan, n
    centre = sum(means) / n
    sd = math.sqrt(sum((m - centre) ** 2 for m in means) / (n - 1))
    return float(student_t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n), n


def interval(pairs: dict, confidence: float = CONFIDENCE) -> dict:
    """The mean contrast over segments and its confidence interval.

    Units that share a trained run are not independent, so the interval is
    a t-interval over run means: the contrasts are averaged within each run
    of the first side, and separately within each run of the second, and
    the wider of the two half-widths is kept (centred on the mean over
    segments). Fewer than :data:`MIN_RUNS` runs, or a unit without a run,
    give no interval (nan).
    """
    diffs = pairs["diffs"]
    if not diffs:
        return {"estimate": math.nan, "low": math.nan, "high": math.nan, "runs": 0}
    half_a, n_a = _half_width(diffs, pairs["runs_a"], confidence)
    half_b, n_b = _half_width(diffs, pairs["runs_b"], confidence)
    half = math.nan if math.isnan(half_a) or math.isnan(half_b) else max(half_a, half_b)
    estimate = sum(diffs) / len(diffs)
    return {"estimate": estimate, "low": estimate - half, "high": estimate + half, "runs": min(n_a, n_b)}


# ------------------------------------------------------------ verdict rules


def verdict_below(low: float, high: float, threshold: float) -> str:
    """``<``: holds when the interval lies below ``threshold``, does not
    hold when it lies at or above it, else not identified."""
    if math.isnan(low) or math.isnan(high):
        return UNIDENTIFIED
    return HOLDS if high < threshold else FAILS if low >= threshold else UNIDENTIFIED


def verdict_above(low: float, high: float, threshold: float) -> str:
    """``>`` (and ``≫`` with a margin as threshold): the mirror of :func:`verdict_below`."""
    if math.isnan(low) or math.isnan(high):
        return UNIDENTIFIED
    return HOLDS if low > threshold else FAILS if high <= threshold else UNIDENTIFIED


def verdict_within(low: float, high: float, centre: float, half_band: float) -> str:
    """``≈``: holds when the interval lies inside ``centre ± half_band``,
    does not hold when it lies wholly outside, else not identified."""
    if math.isnan(low) or math.isnan(high):
        return UNIDENTIFIED
    if centre - half_band <= low and high <= centre + half_band:
        return HOLDS
    return FAILS if high < centre - half_band or low > centre + half_band else UNIDENTIFIED


def _reason(pairs: dict, stats: dict) -> str:
    if not pairs["diffs"] and not pairs["dropped"]:
        return "no segment has units of both sides"
    if not pairs["diffs"]:
        return f"all {pairs['dropped']} common segments have unusable (non-finite or non-positive) values"
    if math.isnan(stats["low"]):
        return f"{stats['runs']} run(s): an interval needs at least {MIN_RUNS}"
    return ""


def _row(claim: str, statement: str, side_a, side_b, log_ratio: bool, rule: str, decide, records) -> dict:
    """One claim row: the paired contrast of two sides, its interval and verdict."""
    pairs = paired(records, side_a, side_b, log_ratio)
    stats = interval(pairs)
    mean = lambda values: sum(values) / len(values) if values else math.nan  # noqa: E731
    return {"claim": claim, "statement": statement, "measure_a": side_a[1].label, "measure_b": side_b[1].label,
            "side_a": display_name(side_a[0]), "side_b": display_name(side_b[0]),
            "mean_a": mean(pairs["a"]), "mean_b": mean(pairs["b"]),
            "statistic": "log ratio" if log_ratio else "difference (dB)",
            "estimate": stats["estimate"], "ci_low": stats["low"], "ci_high": stats["high"], "rule": rule,
            "pairs": len(pairs["diffs"]), "runs": stats["runs"], "dropped": pairs["dropped"],
            "verdict": decide(stats["low"], stats["high"]), "reason": _reason(pairs, stats)}


# ------------------------------------------------------------ the claims


DEFAULT_TOD_R = (tod_r_of("student"), tod_r_of("compositional"))
LOG_BAND = math.log(APPROX_FACTOR)


def _both(rows: list[dict], claim: str, statement: str) -> dict:
    """The conjunction of two rows: holds when both hold, does not hold when
    either does not, else not identified."""
    verdicts = {row["verdict"] for row in rows}
    verdict = FAILS if FAILS in verdicts else HOLDS if verdicts == {HOLDS} else UNIDENTIFIED
    return {"claim": claim, "statement": statement, "measure_a": rows[0]["measure_a"],
            "measure_b": rows[0]["measure_b"], "side_a": rows[0]["side_a"],
            "side_b": " and ".join(row["side_b"] for row in rows), "statistic": "both comparisons",
            "rule": "holds when every comparison holds", "verdict": verdict,
            "reason": "", "pairs": min(row["pairs"] for row in rows), "runs": min(row["runs"] for row in rows)}


def claim_sf_least_diagonal(records, measures=DEFAULT_TOD_R, *, sf="sf", others=("dae", "mss-dae")) -> list[dict]:
    """(i) SF has the smallest TOD-R: ``log(TOD-R_SF / TOD-R_k) < 0`` for
    each other kind ``k``, for each measure."""
    rows = []
    for measure in measures:
        statement = f"SF has the smallest {measure.label}"
        pair_rows = [_row("i", statement, (sf, measure), (other, measure), True, "holds if CI of the ratio < 1",
                          lambda lo, hi: verdict_below(lo, hi, 0.0), records) for other in others]
        rows += pair_rows + [_both(pair_rows, "i", statement)]
    return rows


def claim_compositional_ratio(records, measures=(tod_r_of("compositional"),), *, sf="sf", dae="dae",
                              ratio: float = 1 / 12) -> list[dict]:
    """(ii) The compositional TOD-R of SF is about 1/12 of DAE's:
    ``log(TOD-R_SF / TOD-R_DAE)`` within ``log(ratio) ± log 2``."""
    rule = f"holds if CI within ratio {ratio:.3g} × / ÷ {APPROX_FACTOR:g}"
    return [_row("ii", f"{measure.label} of SF ≈ {ratio:.3g} × DAE's", (sf, measure), (dae, measure), True, rule,
                 lambda lo, hi: verdict_within(lo, hi, math.log(ratio), LOG_BAND), records)
            for measure in measures]


def claim_student_equal(records, measures=(tod_r_of("student"),), *, dae="dae", mss="mss-dae") -> list[dict]:
    """(iii) The student TOD-R of DAE equals MSS-DAE's: ``log`` ratio within ``± log 2``."""
    rule = f"holds if CI within ratio 1 × / ÷ {APPROX_FACTOR:g}"
    return [_row("iii", f"{measure.label} of DAE ≈ MSS-DAE's", (dae, measure), (mss, measure), True, rule,
                 lambda lo, hi: verdict_within(lo, hi, 0.0, LOG_BAND), records)
            for measure in measures]


def claim_nca_beats_linear(records, measures=(snr_of("student"), snr_of("compositional")), *,
                           kind="mss-dae", baseline=LINEAR_SNR) -> list[dict]:
    """(iv) For MSS-DAE the NCA's SNR is far above the linear composition's:
    ``SNR_NCA − SNR_linear > WIDE_MARGIN_DB`` on the same unit."""
    rule = f"holds if CI > {WIDE_MARGIN_DB:g} dB"
    return [_row("iv", f"{measure.label} ≫ {baseline.label} ({display_name(kind)})", (kind, measure),
                 (kind, baseline), False, rule, lambda lo, hi: verdict_above(lo, hi, WIDE_MARGIN_DB), records)
            for measure in measures]


def claim_student_beats_compositional(records, kinds=("dae", "mss-dae", "sf"), *,
                                      better=snr_of("student"), worse=snr_of("compositional")) -> list[dict]:
    """(v) The student strategy's SNR is above the compositional one's,
    for each kind: ``SNR_student − SNR_compositional > 0`` on the same unit."""
    return [_row("v", f"{better.label} > {worse.label} ({display_name(kind)})", (kind, better), (kind, worse), False,
                 "holds if CI > 0 dB", lambda lo, hi: verdict_above(lo, hi, 0.0), records)
            for kind in kinds]


def claims(records, *, tod_r_measures=DEFAULT_TOD_R, heldout_group: str | None = None) -> list[dict]:
    """Every claim's rows, in the paper's order; ``tod_r_measures`` are the
    measures claim (i) is tested on (e.g. :data:`ALL_TOD_R`). With
    ``heldout_group`` (e.g. "other_tracks"), the SNR claims (iv), (v) are
    also tested on the held-out SNRs of that group, beside the in-sample ones."""
    records = list(records)
    rows = (claim_sf_least_diagonal(records, tod_r_measures) + claim_compositional_ratio(records)
            + claim_student_equal(records) + claim_nca_beats_linear(records))
    if heldout_group:
        rows += claim_nca_beats_linear(records, (heldout_snr_of("student", heldout_group),
                                                 heldout_snr_of("compositional", heldout_group)),
                                       baseline=heldout_snr_of("linear", heldout_group, "linear composition"))
    rows += claim_student_beats_compositional(records)
    if heldout_group:
        rows += claim_student_beats_compositional(records, better=heldout_snr_of("student", heldout_group),
                                                  worse=heldout_snr_of("compositional", heldout_group))
    return rows


# ------------------------------------------------------------ renderers


COLUMNS = ("claim", "statement", "side_a", "side_b", "measure_a", "measure_b", "mean_a", "mean_b", "statistic",
           "estimate", "ci_low", "ci_high", "rule", "pairs", "runs", "dropped", "verdict", "reason")


def _shown(row: dict) -> str:
    """The estimate and interval as the reader takes them: a ratio for log
    ratios, dB for differences."""
    if row["statistic"] == "both comparisons":
        return ""
    convert = math.exp if row["statistic"] == "log ratio" else (lambda v: v)
    unit = "×" if row["statistic"] == "log ratio" else " dB"
    values = [row["estimate"], row["ci_low"], row["ci_high"]]
    if math.isnan(values[0]):
        return "–"
    text = f"{convert(values[0]):.3g}{unit}"
    return text + ("" if math.isnan(values[1]) else f" [{convert(values[1]):.3g}, {convert(values[2]):.3g}]")


def _number(value) -> str:
    return "" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def claims_markdown(rows: list[dict]) -> str:
    """A Markdown table, one line per row."""
    lines = ["| claim | statement | compared | means | estimate [95 % CI] | rule | pairs / runs | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        means = (f"{_number(row['mean_a'])} vs {_number(row['mean_b'])}" if "mean_a" in row else "")
        verdict = row["verdict"] + (f" ({row['reason']})" if row.get("reason") else "")
        lines.append(f"| {row['claim']} | {row['statement']} | {row['side_a']} vs {row['side_b']} | {means} | "
                     f"{_shown(row)} | {row['rule']} | {row['pairs']} / {row['runs']} | {verdict} |")
    return "\n".join(lines) + "\n"


def claims_csv(rows: list[dict]) -> str:
    """CSV text with :data:`COLUMNS` (numbers in full precision; the
    estimate and interval on the statistic's own scale)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({column: row.get(column, "") for column in COLUMNS})
    return buffer.getvalue()
