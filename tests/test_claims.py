"""Tests of the computed verdicts on the paper's claims (nca_np.claims,
docs/method.md#the-papers-claims-tested), on constructed unit records."""

from __future__ import annotations

import csv
import io
import math

import pytest
from scipy.stats import t as student_t

from nca_np import backend, claims

KINDS = ("dae", "mss-dae", "sf")


def records_of(tod_r: dict, snr: dict, *, runs=4, segments=16, noise=0.1, seed=0, ridge=None):
    """One unit per (kind, segment), its run drawn at random.

    ``tod_r[kind] = (student, compositional)`` and
    ``snr[kind] = (student, compositional, linear)`` are the typical values;
    each unit multiplies TOD-R by ``exp(noise · z)`` and adds ``noise · z``
    (in units of 10 dB) to SNRs.
    """
    rng = backend.rng(seed)
    records = []
    for kind in KINDS:
        for number in range(segments):
            z = rng.normal(size=6)
            student, compositional = (v * math.exp(noise * e) for v, e in zip(tod_r[kind], z[:2]))
            snrs = [v + 10 * noise * e for v, e in zip(snr[kind], z[2:5])]
            record = {"kind": kind, "segment": {"id": f"s{number:04d}", "number": number},
                      "run": int(rng.integers(runs)),
                      "strategies": {"student": {"tod_r": student, "snr_model_db": snrs[0]},
                                     "compositional": {"tod_r": compositional, "snr_model_db": snrs[1]}},
                      "baselines": {"linear": {"snr_model_db": snrs[2], "tod_r": 1.0}, "identity": {}}}
            if ridge is not None:
                record["references"] = {"ridge": {"tod_r": ridge[kind] * math.exp(noise * z[5])}}
            records.append(record)
    return records


PAPER_TOD_R = {"dae": (12.0, 24.0), "mss-dae": (12.0, 30.0), "sf": (3.0, 2.0)}
PAPER_SNR = {"dae": (20.0, 15.0, 10.0), "mss-dae": (20.0, 14.0, -5.0), "sf": (22.0, 18.0, 12.0)}


def verdicts(rows):
    return {(row["claim"], row["statement"], row["side_b"]): row["verdict"] for row in rows}


def test_every_claim_holds_where_the_data_say_so():
    rows = claims.claims(records_of(PAPER_TOD_R, PAPER_SNR))
    assert {row["verdict"] for row in rows} == {claims.HOLDS}, claims.claims_markdown(rows)
    assert [row["claim"] for row in rows] == ["i"] * 6 + ["ii", "iii", "iv", "iv", "v", "v", "v"]
    ratio = next(row for row in rows if row["claim"] == "ii")
    assert math.exp(ratio["estimate"]) == pytest.approx(2.0 / 24.0, rel=0.1)
    assert ratio["mean_a"] == pytest.approx(2.0, rel=0.1) and ratio["mean_b"] == pytest.approx(24.0, rel=0.1)
    assert all(row["runs"] == 4 and row["pairs"] == 16 for row in rows)


def test_every_claim_fails_where_the_data_contradict_it():
    tod_r = {"dae": (12.0, 24.0), "mss-dae": (60.0, 30.0), "sf": (100.0, 60.0)}  # SF most; no 1/12; not equal
    snr = {"dae": (15.0, 20.0, 10.0), "mss-dae": (10.0, 12.0, 8.0), "sf": (18.0, 22.0, 12.0)}
    rows = claims.claims(records_of(tod_r, snr))
    assert {row["verdict"] for row in rows} == {claims.FAILS}, claims.claims_markdown(rows)


def straddling(values: dict, segments=16, runs=4) -> list[dict]:
    """Units whose contrasts alternate about a rule's boundary: ``values``
    maps a kind to ``{path: (base, amplitude, multiply)}``; a unit on segment
    ``s`` holds ``base · exp(±amplitude)`` (multiply) or ``base ± amplitude``,
    the sign alternating with ``s``; run ``s mod runs``, so the run means
    alternate too and every interval is centred on ``base``'s contrast."""
    records = []
    for kind, paths in values.items():
        for number in range(segments):
            sign = 1.0 if number % 2 == 0 else -1.0
            record = {"kind": kind, "segment": {"number": number}, "run": number % runs}
            for path, (base, amplitude, multiply) in paths.items():
                *parents, leaf = path.split(".")
                node = record
                for key in parents:
                    node = node.setdefault(key, {})
                node[leaf] = base * math.exp(sign * amplitude) if multiply else base + sign * amplitude
            records.append(record)
    return records


def test_claims_are_not_identified_with_one_run_or_a_straddling_interval():
    one_run = claims.claims(records_of(PAPER_TOD_R, PAPER_SNR, runs=1))
    assert {row["verdict"] for row in one_run} == {claims.UNIDENTIFIED}
    assert "1 run(s)" in one_run[0]["reason"]
    student, compositional = "strategies.student.tod_r", "strategies.compositional.tod_r"
    equal_tod_r = straddling({"sf": {student: (10.0, 0.5, True)}, "dae": {student: (10.0, 0.0, True)},
                              "mss-dae": {student: (10.0, 0.0, True)}})
    at_band_edge = straddling({"sf": {compositional: (4.0, 0.5, True)}, "dae": {compositional: (24.0, 0.0, True)},
                               "mss-dae": {}})  # ratio 1/6: the band's upper edge
    twice = straddling({"dae": {student: (20.0, 0.5, True)}, "mss-dae": {student: (10.0, 0.0, True)}})
    snr = "strategies.student.snr_model_db", "strategies.compositional.snr_model_db", "baselines.linear.snr_model_db"
    at_margin = straddling({"mss-dae": {snr[0]: (10.0, 3.0, False), snr[2]: (0.0, 0.0, False)}})
    tied = straddling({kind: {snr[0]: (15.0, 3.0, False), snr[1]: (15.0, 0.0, False)} for kind in KINDS})
    rows = (claims.claim_sf_least_diagonal(equal_tod_r, [claims.tod_r_of("student")])
            + claims.claim_compositional_ratio(at_band_edge) + claims.claim_student_equal(twice)
            + claims.claim_nca_beats_linear(at_margin, [claims.snr_of("student")])
            + claims.claim_student_beats_compositional(tied))
    assert len(rows) == 9
    assert {row["verdict"] for row in rows} == {claims.UNIDENTIFIED}, claims.claims_markdown(rows)
    assert all(row["ci_low"] < row["ci_high"] for row in rows if row["statistic"] != "both comparisons")


def test_interval_is_a_t_interval_over_run_means():
    pairs = {"diffs": [1.0, 3.0, 2.0, 6.0, 4.0, 8.0], "runs_a": [0, 0, 1, 1, 2, 2], "runs_b": [5, 5, 5, 5, 5, 6]}
    stats = claims.interval(pairs)
    means = [2.0, 4.0, 6.0]  # by the first side's runs: sd 2 over 3 clusters
    half_a = student_t.ppf(0.975, 2) * 2.0 / math.sqrt(3)
    second = [sum(pairs["diffs"][:5]) / 5, 8.0]  # by the second side's runs
    sd_b = abs(second[0] - second[1]) / math.sqrt(2)
    half_b = student_t.ppf(0.975, 1) * sd_b / math.sqrt(2)
    assert stats["estimate"] == pytest.approx(4.0)
    assert half_b > half_a  # two clusters only: the second side's grouping is the wider
    assert stats["high"] - stats["estimate"] == pytest.approx(half_b)
    assert stats["estimate"] - stats["low"] == pytest.approx(half_b)
    assert stats["runs"] == 2 and sum(means) / 3 == pytest.approx(4.0)
    assert math.isnan(claims.interval({**pairs, "runs_b": [None] * 6})["low"])  # a unit without a run


def test_claim_one_reads_any_measure_and_drops_unusable_values():
    records = records_of(PAPER_TOD_R, PAPER_SNR, ridge={"dae": 5.0, "mss-dae": 4.0, "sf": 1.0})
    records[-1]["strategies"]["student"]["tod_r"] = math.inf  # an SF unit with a diagonal matrix
    ridge = claims.Measure("ridge TOD-R", "references.ridge.tod_r")
    by_hand = claims.Measure("ridge TOD-R (function)", lambda r: r["references"]["ridge"]["tod_r"])
    rows = claims.claim_sf_least_diagonal(records, [claims.tod_r_of("student"), ridge, by_hand])
    assert [row["verdict"] for row in rows] == [claims.HOLDS] * 9
    assert rows[0]["dropped"] == 1 and rows[0]["pairs"] == 15
    assert rows[3]["estimate"] == pytest.approx(rows[6]["estimate"])
    missing = claims.claim_sf_least_diagonal(records, [claims.Measure("absent", "references.heldout.tod_r")])
    assert missing[0]["verdict"] == claims.UNIDENTIFIED and "unusable" in missing[0]["reason"]
    no_sf = claims.claim_sf_least_diagonal([r for r in records if r["kind"] != "sf"])
    assert no_sf[0]["reason"] == "no segment has units of both sides" and no_sf[0]["pairs"] == 0


def test_renderers_show_every_row():
    rows = claims.claims(records_of(PAPER_TOD_R, PAPER_SNR))
    table = claims.claims_markdown(rows)
    assert table.count("\n") == len(rows) + 2 and "| holds |" in table
    assert "0.0" in table  # the ratio of claim ii, shown as a ratio (≈ 0.083×)
    parsed = list(csv.DictReader(io.StringIO(claims.claims_csv(rows))))
    assert len(parsed) == len(rows) and tuple(parsed[0]) == claims.COLUMNS
    assert parsed[0]["verdict"] == claims.HOLDS and float(parsed[0]["estimate"]) < 0


def test_snr_claims_are_also_tested_on_heldout_scores():
    records = records_of(PAPER_TOD_R, PAPER_SNR)
    for record in records:  # held out, the student falls below the compositional and the linear composition
        record["heldout"] = {"scores": {
            "student": {"other_tracks": {"snr_model_db": record["strategies"]["student"]["snr_model_db"] - 40}},
            "compositional": {"other_tracks": {"snr_model_db": record["strategies"]["compositional"]["snr_model_db"]}},
            "linear": {"other_tracks": {"snr_model_db": record["baselines"]["linear"]["snr_model_db"]}}}}
    rows = claims.claims(records, heldout_group="other_tracks")
    assert len(rows) == len(claims.claims(records)) + 2 + 3
    held = [row for row in rows if "held-out" in row["measure_a"]]
    assert [row["claim"] for row in held] == ["iv", "iv", "v", "v", "v"]
    assert all(row["verdict"] == claims.FAILS for row in held if row["measure_a"].startswith("student"))
    in_sample = [row for row in rows if row["claim"] in ("iv", "v") and "held-out" not in row["measure_a"]]
    assert {row["verdict"] for row in in_sample} == {claims.HOLDS}
    compositional = next(row for row in held if row["claim"] == "iv" and row["measure_a"].startswith("compositional"))
    assert compositional["verdict"] == claims.HOLDS and "(other tracks)" in compositional["measure_b"]
    # a measure the records lack drops every pair and is not identified
    rows = claims.claims(records, tod_r_measures=claims.ALL_TOD_R)
    ridge = [row for row in rows if row["measure_a"] == "pooled ridge TOD-R"]
    assert ridge and all(row["verdict"] == claims.UNIDENTIFIED for row in ridge)
