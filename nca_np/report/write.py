"""Writing the report folder: every input checked first, then every file
written atomically.

The folder holds:

- ``report.md``: what was run, how to read it, where each stage computed,
  Tables 1–3, the figures, the metadata;
- ``table1_tod_r.csv``, ``table2_snr_model.csv``, ``table3_snr_true.csv``
  and ``tables.json`` (the :func:`~nca_np.report.tables.summarise` dict);
- ``metadata.json`` (the caller's metadata, verbatim);
- the PNGs of :mod:`nca_np.report.figures` (``figure2_linear_compositions.png``,
  ``figure3_couplings.png``, ``training_loss.png``, ``nca_convergence.png``,
  ``nca_trajectories.png``), drawn from the host copies of the matrices
  checked in :mod:`nca_np.report.checks`;
- the NCA's diagnostics (:mod:`nca_np.report.diagnostics`): the exact
  references and the convergence tables (``exact_references.csv``,
  ``nca_convergence.csv``, ``nca_diagnostics.json``), and at the top of
  ``report.md`` a note on what the TOD-R column measures when fits did not
  converge or the student problem is underdetermined;
- the held-out scores of every couplings matrix (``heldout_scores.csv``,
  ``heldout_scores.json``; docs/method.md#held-out-scores) and the paper's
  claims with computed verdicts (``claims.csv``, :mod:`nca_np.claims`);
- with evaluation results, the separation table (:mod:`nca_np.report.separation`).

Units whose drawn run was dead (``skipped``) are counted and named, never
averaged; a diverged fit's numbers are left out of the tables and counted.

The text files are a pure function of the inputs (no clock, sorted keys,
fixed float formats), so the same results give byte-identical tables and
report. Bin ``k`` lies at ``k · sample_rate / n_fft`` Hz.
"""

from __future__ import annotations

from pathlib import Path

from .. import claims as paper_claims
from ..atomic import write_json, write_text
from . import diagnostics as nca_diagnostics
from .checks import (check_figure_segment, check_linear_compositions, check_metadata, check_spectral_settings,
                     frequency_bins)
from .figures import DPI, write_figures
from .prose import render_report, render_without_fits
from .separation import summarise_separation, write_separation
from .tables import CSV_FILES, display_name, summarise, table_csv


def write_report(out_dir, *, units, kinds, strategies, histories, linear_compositions,
                 figure_segment, sample_rate, n_fft, metadata, dpi: int = DPI, hop=None, separation=None,
                 extra_tod_r=None) -> list[Path]:
    """Write the report folder (see the module docstring for its files).

    Args:
        out_dir: the folder (created when missing; files in it are replaced).
        units, kinds, strategies: as for :func:`~nca_np.report.tables.summarise`.
        histories: ``{kind: [run records]}``, a run's records being one dict
            per epoch with ``epoch``, ``loss``, ``learning_rate``,
            ``seconds``, ``frames_per_second``, ``decision``.
        linear_compositions: ``{kind: (F, F) array}``, the linear
            composition (Eqs. 11–13) averaged over the training runs.
        figure_segment: the segment of Figure 3: ``{kind: {each strategy's
            ``matrix_key`` (e.g. "C_student"): (F, F), "mixture", "target",
            "vocals": (F, T)}, "track": str, "segment_index": int}``; a missing
            matrix is drawn as "not run".
        sample_rate: Hz; ``n_fft``: FFT size; bin k lies at
            ``k · sample_rate / n_fft`` Hz.
        metadata: JSON-able dict, written verbatim to metadata.json and
            listed in report.md; its ``profile`` (or ``config.profile.name``)
            and ``corpus`` (or ``config.data.corpus``) name the run in the
            report's opening paragraph; its ``stage_devices`` (``{stage:
            [{"shard", "line", "record"}]}``) and ``devices_differ`` (None or
            what differs), as :mod:`nca_np.report.stage` gathers them from
            the stages' wall-time records, become the report's device lines,
            one per stage (none without them).
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
        ReportError: inputs :func:`~nca_np.report.tables.summarise` rejects, non-square or
            inconsistent matrices, bad spectral settings, metadata that is
            not JSON-serialisable; all are checked before the first file is
            written.
    """
    check_spectral_settings(sample_rate, n_fft)
    units, kinds, strategies = list(units), list(kinds), list(strategies)
    skipped = [u for u in units if isinstance(u, dict) and "skipped" in u]
    units = [u for u in units if not (isinstance(u, dict) and "skipped" in u)]
    tables, diagnostics, heldout, claim_rows = _nca_results(units, skipped, kinds, strategies)
    linear = check_linear_compositions(linear_compositions or {}, kinds)
    segment = check_figure_segment(figure_segment, kinds, strategies)
    histories = histories or {}
    metadata = check_metadata(metadata)
    separation_units = list((separation or {}).get("units") or [])
    separation_table = summarise_separation(separation_units, kinds) if separation_units else None

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if tables is None:
        write_json(out_dir / "metadata.json", metadata)
        written = [out_dir / "metadata.json"]
    else:
        written = _write_tables(out_dir, tables, metadata, diagnostics)
        written += _write_heldout_and_claims(out_dir, heldout, claim_rows)
    written += write_figures(out_dir, units=units, models={kind: display_name(kind) for kind in kinds},
                             strategies=strategies, histories=histories, linear_compositions=linear,
                             figure_segment=segment, sample_rate=sample_rate, n_fft=n_fft, dpi=dpi, hop=hop)
    if separation_table is not None:
        if extra_tod_r is None:
            extra_tod_r = nca_diagnostics.reference_tod_r_series(units, kinds)
        written += write_separation(out_dir, separation_table, separation_units, units, kinds, strategies,
                                    extra_tod_r, dpi)
    render = render_without_fits if tables is None else render_report
    text = render(tables, units=units, kinds=kinds, strategies=strategies, histories=histories,
                  linear_compositions=linear, figure_segment=segment, sample_rate=sample_rate, n_fft=n_fft,
                  metadata=metadata, n_freq=frequency_bins(linear, segment, kinds),
                  separation=None if separation is None else
                  (separation_table, separation_units, separation.get("note")),
                  diagnostics=diagnostics, heldout=heldout, claims=claim_rows)
    write_text(out_dir / "report.md", text)
    return written + [out_dir / "report.md"]


def _nca_results(units, skipped, kinds, strategies) -> tuple:
    """``(tables, diagnostics, held-out table, claim rows)`` of the fitted
    units; all None but the diagnostics' ``skipped`` list when every unit
    was skipped (its drawn run dead)."""
    skipped_list = [{"kind": u.get("kind"), "segment": u["segment"].get("id"), "run": u.get("run"),
                     "reason": u["skipped"]} for u in skipped]
    if skipped and not units:
        return None, {"skipped": skipped_list}, None, None
    tables = summarise(units, kinds=kinds, strategies=strategies)
    diagnostics = nca_diagnostics.diagnose(units, kinds=kinds, strategies=strategies)
    diagnostics["skipped"] = skipped_list
    heldout = nca_diagnostics.heldout_table(units, kinds=kinds, strategies=strategies)
    group = nca_diagnostics.headline_group(heldout) if heldout else None
    claim_rows = paper_claims.claims(units, tod_r_measures=paper_claims.ALL_TOD_R, heldout_group=group)
    return tables, diagnostics, heldout, claim_rows


def _write_tables(out_dir: Path, tables: dict, metadata: dict, diagnostics: dict) -> list[Path]:
    """Tables 1–3 (CSV and JSON), the metadata and the NCA diagnostics' files."""
    for table, name in CSV_FILES.items():
        write_text(out_dir / name, table_csv(tables[table]))
    write_json(out_dir / "tables.json", tables)
    write_json(out_dir / "metadata.json", metadata)
    write_text(out_dir / nca_diagnostics.REFERENCES_CSV, nca_diagnostics.references_csv(diagnostics))
    write_text(out_dir / nca_diagnostics.CONVERGENCE_CSV, nca_diagnostics.convergence_csv(diagnostics))
    write_json(out_dir / nca_diagnostics.DIAGNOSTICS_JSON, diagnostics)
    return [out_dir / name for name in [*CSV_FILES.values(), "tables.json", "metadata.json",
                                        nca_diagnostics.REFERENCES_CSV, nca_diagnostics.CONVERGENCE_CSV,
                                        nca_diagnostics.DIAGNOSTICS_JSON]]


CLAIMS_CSV = "claims.csv"


def _write_heldout_and_claims(out_dir: Path, heldout: dict | None, claim_rows: list[dict]) -> list[Path]:
    """The held-out table (CSV and JSON, when the units have held-out
    scores) and the claims' verdicts (CSV)."""
    written = []
    if heldout is not None:
        write_text(out_dir / nca_diagnostics.HELDOUT_CSV, nca_diagnostics.heldout_csv(heldout))
        write_json(out_dir / nca_diagnostics.HELDOUT_JSON, heldout)
        written += [out_dir / nca_diagnostics.HELDOUT_CSV, out_dir / nca_diagnostics.HELDOUT_JSON]
    write_text(out_dir / CLAIMS_CSV, paper_claims.claims_csv(claim_rows))
    return written + [out_dir / CLAIMS_CSV]
