"""The text of report.md: captions, the paragraph on what was run, the
training and cost tables, the metadata list (deterministic: a function of
its inputs, so the same results give byte-identical text)."""

from __future__ import annotations

import json
import math

from .. import claims as paper_claims
from .. import metrics
from ..models import model_kind
from . import diagnostics as nca_diagnostics
from .figures import CLIP_PERCENTILE, FIGURE_FILES, ZOOM_CLIP_PERCENTILE, ZOOM_HZ, zoom_bins
from .separation import separation_section
from .tables import (CSV_FILES, DECIMALS, STD_NOTE, TABLE1, TABLE2, TABLE3, cell_statistics, describe_units,
                     display_name, format_cell, markdown, markdown_table, number, strategy_label)

COMPOSITION_READINGS = {
    "paper": "Couplings composed with the paper's reading (W ⊕ b = W + b1ᵀ, Z = P(W ⊕ b)ᵀ)",
    "authors-code": "Couplings composed with the authors'-code reading (M = W + 1bᵀ, Z = M Pᵀ)",
}

#: Said under Tables 2 and 3: where the SNRs are measured.
SNR_DOMAIN = (" SNRs are computed over the whole F×T segment on the models' features: magnitudes with "
              "each frequency band divided by its standard deviation over the training mixtures.")
TABLE_CAPTIONS = {
    TABLE1: ("Trace-to-off-diagonal ratio of the couplings matrices C fitted by the NCA, mean (std) over "
             "segments. Large values: the activity sits on the main diagonal, i.e. scalar filtering "
             "(mask-like); small values: activity off the diagonal, i.e. inter-frequency structure. "
             "A structureless random matrix scores about 1. Bold: the smallest value per strategy."),
    TABLE2: ("How well Ŷ(C) reproduces the model's own output ŷ ({reconstruction}), mean (std) over "
             "segments; higher is a more faithful approximation. Baselines: the linear composition of the "
             "weights (Eqs. 11–13, biases neglected) and the identity C = I (the mixture itself)." + SNR_DOMAIN),
    TABLE3: ("SNR between the true vocals and Ŷ(C) for each NCA strategy, and between the true vocals "
             "and the model's own output ŷ, mean (std) over segments: how much separation quality the "
             "approximation keeps or loses." + SNR_DOMAIN),
}


def listed(names) -> str:
    """'DAE', 'DAE and SF', 'DAE, MSS-DAE and SF'."""
    names = list(names)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _masking(kinds) -> list[str]:
    """The display names of the kinds whose decoder output is a mask on the input."""
    return [display_name(k) for k in kinds if model_kind(k).masks_input]


def reconstruction_text(kinds) -> str:
    """How Ŷ(C) is formed for each of ``kinds`` (docs/method.md#measures), e.g.
    'Ŷ(C) = C X for DAE and MSS-DAE, X ⊙ (C X) for SF, whose ŷ is the masked mixture'."""
    direct = [display_name(k) for k in kinds if not model_kind(k).masks_input]
    parts = [f"C X for {listed(direct)}"] if direct else []
    if _masking(kinds):
        parts.append(f"X ⊙ (C X) for {listed(_masking(kinds))}, whose ŷ is the masked mixture")
    return "Ŷ(C) = " + ", ".join(parts)


def table_caption(table: str, kinds) -> str:
    """The caption under a table, naming the models reported."""
    return TABLE_CAPTIONS[table].format(reconstruction=reconstruction_text(kinds))


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
    """'Data from root …; test excerpts from ….
    Command-line overrides: …', from ``metadata["data"]`` and
    ``metadata["overrides"]`` (None when neither is there). The opening
    names the audio by what it is (``data["audio"]``); here, real audio
    prepared under a profile whose corpus setting is "synthetic" is said
    not to be synthetic."""
    data, overrides = metadata.get("data"), metadata.get("overrides")
    parts = []
    if isinstance(data, dict):
        audio = data.get("audio")
        parts.append(f"Data from "
                     f"`{_escape(data.get('root') or 'an unrecorded folder')}`; test excerpts from "
                     f"{_escape(data.get('cut_list') or 'an unrecorded cut list')}.")
        if audio and audio != "the built-in synthetic corpus" and data.get("corpus") == "synthetic":
            parts.append("(The profile's data.corpus = \"synthetic\" sets only how the test excerpts are "
                         "chosen here, by activation confidence; the audio is not synthetic.)")
    if overrides is not None:
        listed = ", ".join(f"`{_escape(item)}`" for item in overrides)
        parts.append(f"Command-line overrides of the profile: {listed or 'none'}.")
    return " ".join(parts) or None


def _run_paragraph(context: dict, kinds, strategies, histories, metadata, n_freq, sample_rate, n_fft) -> str:
    profile = _lookup(metadata, "profile", "profile.name", "profile_name", "config.profile.name",
                      "configuration.profile.name")
    corpus = _lookup(metadata, "corpus", "config.data.corpus", "configuration.data.corpus")
    audio = _lookup(metadata, "data.audio")
    parts = [
        f"Profile **{profile or 'not recorded'}** on " + (f"**{_escape(audio)}**." if audio else
                                                          f"the **{corpus or 'not recorded'}** corpus."),
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
        seconds = sum(number(r.get("seconds"), "history seconds") for run in runs for r in run
                      if r.get("seconds") is not None)
        span = f"{min(epochs)}–{max(epochs)}" if epochs else "–"
        rows.append([display_name(kind), str(len(runs)), span, format_cell(best, 6), f"{seconds:.1f}"])
    return markdown(header, rows)


def _best_loss(run) -> float:
    losses = [number(r.get("loss"), "history loss") for r in run]
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
    return markdown(header, rows)


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
         "beside the diagonal); the last row shows the target V (the model's decoder output"
         f"{', the mask for ' + listed(_masking(kinds)) if _masking(kinds) else ''}) of the same segment in dB, "
         "over all bins and over the zoomed bins.\n"),
        f"![Figure 3: couplings of one segment]({FIGURE_FILES['figure3']})\n",
        ("**Training loss** per epoch of every run (thin) and, per epoch, the mean over the runs still "
         "training then (thick), log scale.\n" if _runs_per_model(histories) != 1 else
         "**Training loss** per epoch of each model's one run, log scale.\n"),
        f"![Training loss]({FIGURE_FILES['training']})\n",
        "**NCA convergence**: the relative error ‖V − C X‖₁ / ‖V‖₁ (the L1 loss E of Eq. 15 divided by "
        "‖V‖₁, so that models compare; 1 is C = 0) per iteration, median and inter-quartile band over "
        "segments, log scale.\n",
        f"![NCA convergence]({FIGURE_FILES['convergence']})\n",
        "**NCA trajectories**: TOD-R (top) and relative error ‖V − C X‖₁ / ‖V‖₁ (bottom) of each fit's C at "
        "its checkpoints, one line per segment; the horizontal lines are the median TOD-R of the minimum-norm "
        "couplings V X⁺ (dashed), of the mean local map (dotted) and, for a strategy whose C is free, of the exact "
        "solution nearest its initial C; the line at relative error 1 is C = 0; log scales.\n",
        f"![NCA trajectories]({FIGURE_FILES['trajectories']})\n",
    ]


def render_report(tables: dict, *, units, kinds, strategies, histories, linear_compositions, figure_segment,
                  sample_rate, n_fft, metadata, n_freq, separation=None, diagnostics=None, heldout=None,
                  claims=None) -> str:
    """The text of report.md (deterministic: a function of its arguments).

    Args:
        tables: the :func:`~nca_np.report.tables.summarise` dict of the same units.
        n_freq: F, or None when no matrix was given.
        separation: None (no separation section), or ``(table, units,
            note)``: the :func:`~nca_np.report.separation.summarise_separation`
            table (None when left out), its units, and the note saying why
            it was left out.
        diagnostics: :func:`nca_np.report.diagnostics.diagnose` of the same
            units (computed here when None); its ``skipped`` lists the
            units left out because their drawn run was dead.
        heldout: :func:`nca_np.report.diagnostics.heldout_table` of the
            same units, or None (no held-out section).
        claims: the rows of :func:`nca_np.claims.claims`, or None (no claims section).
        The others: as for :func:`nca_np.report.write.write_report`.
    """
    diagnostics = diagnostics or nca_diagnostics.diagnose(units, kinds=kinds, strategies=strategies)
    sections = _opening(units, kinds, strategies, histories, metadata, n_freq, sample_rate, n_fft, diagnostics)
    sections[1:1] = _headline(units, diagnostics, heldout, strategies)
    separated = separation is not None and separation[0] is not None
    sections.append(reading_guide(diagnostics, strategies, separation=separated) + "\n")
    sections += device_lines(metadata)
    stayed = [s for s in strategies if nca_diagnostics.stayed_at_initialisation(units, s)]
    body = _heldout_section(heldout) + _claims_section(claims, stayed)
    body += _table_sections(tables, kinds, no_bold=nca_diagnostics.artefact_strategies(units, diagnostics,
                                                                                       strategies))
    body += _diagnostics_sections(diagnostics)
    if separation is not None:
        body += separation_section(*separation)
    sections += with_symbols(body)
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
        markdown(["Key", "Value"], ([_escape(k), _escape(v)] for k, v in _flatten(metadata))),
    ]
    return "\n".join(sections)


def _opening(units, kinds, strategies, histories, metadata, n_freq, sample_rate, n_fft, diagnostics) -> list[str]:
    """The title, the note on what TOD-R measures (if any), the reading of
    Eqs. 18–19 and the paragraph on what was run."""
    context = describe_units(units)
    reading = COMPOSITION_READINGS.get(context["composition"],
                                       f"Couplings composed with the reading {context['composition']!r}")
    note = nca_diagnostics.measurement_note(diagnostics, strategies)
    return [
        "# Mapping functions of denoising autoencoders: reproduction report\n",
        *([note + "\n"] if note else []),
        f"> **{reading}.**\n",
        _run_paragraph(context, kinds, strategies, histories, metadata, n_freq, sample_rate, n_fft) + " "
        + nca_diagnostics.regime_sentence(diagnostics) + "\n",
        f"Each cell is the mean (std) over segments; std is the {STD_NOTE}. The column n counts the "
        "segments per model; values left out of a cell (inf, nan) are named in it.\n",
    ]


def _table_sections(tables: dict, kinds, no_bold=()) -> list[str]:
    """The replication of the paper's Tables 1–3, each with its title,
    caption and links; Table 1 bolds no column of ``no_bold`` (strategies
    whose TOD-R the notes call an artefact)."""
    sections = ["## Replication of the paper's tables\n",
                "The paper's three tables, recomputed with its protocol. They are kept as a replication: what "
                "their numbers can be taken to measure is said in the opening, under Held-out scores and in The "
                "paper's claims, tested.\n"]
    for table in (TABLE1, TABLE2, TABLE3):
        caption = table_caption(table, kinds)
        if table == TABLE1 and no_bold:
            caption += (f" No bold in the column{'s' if len(no_bold) > 1 else ''} of "
                        f"{listed([strategy_label(s) for s in no_bold])}: no fit's loss stopped changing, or the "
                        "TOD-R stayed at its initial C's (within "
                        f"{100 * nca_diagnostics.INIT_SHARE:g} %, median over segments), so its smallest mean "
                        "says nothing of the models.")
        sections += [f"### {tables[table]['title']}\n", caption + "\n",
                     markdown_table(tables[table], DECIMALS[table], bold_smallest=table == TABLE1,
                                    no_bold=no_bold if table == TABLE1 else ()),
                     f"CSV: [{CSV_FILES[table]}]({CSV_FILES[table]}); "
                     "all numbers: [tables.json](tables.json).\n"]
    return sections


def _diagnostics_sections(diagnostics: dict) -> list[str]:
    """The exact references and the convergence of the NCA (:mod:`nca_np.report.diagnostics`)."""
    return [
        "## Exact references\n", nca_diagnostics.references_caption(diagnostics) + "\n",
        nca_diagnostics.references_markdown(diagnostics),
        f"CSV: [{nca_diagnostics.REFERENCES_CSV}]({nca_diagnostics.REFERENCES_CSV}); all numbers: "
        f"[{nca_diagnostics.DIAGNOSTICS_JSON}]({nca_diagnostics.DIAGNOSTICS_JSON}).\n",
        "## Convergence of the NCA\n", nca_diagnostics.convergence_caption(diagnostics) + "\n",
        nca_diagnostics.convergence_markdown(diagnostics),
        f"CSV: [{nca_diagnostics.CONVERGENCE_CSV}]({nca_diagnostics.CONVERGENCE_CSV}).\n",
    ]


# ---------------------------------------------------------------- reading guide, devices, glossary links

#: The glossary of the project's account of the method, and its per-term anchors.
GLOSSARY = "docs/method.md#glossary"
#: The terms each section's numbers are made of: (section title's start, [(term, glossary anchor)]).
SECTION_SYMBOLS = (
    ("Table 1", [("TOD-R", "glossary-tod-r"), ("C", "glossary-c"), ("segment", "glossary-segment")]),
    ("Table 2", [("SNR (model)", "glossary-snr"), ("linear composition", "glossary-linear-composition"),
                 ("identity", "glossary-identity")]),
    ("Table 3", [("SNR (true)", "glossary-snr"), ("V", "glossary-v")]),
    ("Exact references", [("min-norm V X⁺", "glossary-min-norm"), ("nearest least-squares couplings",
                                                                    "glossary-nearest"),
                          ("mean local map", "glossary-mean-local-map"), ("rank X", "glossary-rank-x")]),
    ("Convergence of the NCA", [("relative error", "glossary-relative-error"), ("converged", "glossary-converged")]),
    ("Separation quality", [("excerpt", "glossary-excerpt"), ("run", "glossary-run")]),
    ("Held-out scores", [("held-out SNR", "glossary-held-out-snr"), ("ridge couplings", "glossary-ridge"),
                         ("segment", "glossary-segment")]),
    ("The paper's claims", [("TOD-R", "glossary-tod-r"), ("run", "glossary-run")]),
)


def glossary_link(term: str, anchor: str = "glossary") -> str:
    """A Markdown link to ``term``'s entry in docs/method.md's glossary."""
    return f"[{term}](docs/method.md#{anchor})"


def symbols_line(title: str) -> str | None:
    """"Symbols: …" with a glossary link per term of the section ``title``
    (None for a section without an entry in :data:`SECTION_SYMBOLS`)."""
    for start, terms in SECTION_SYMBOLS:
        if title.startswith(start):
            links = ", ".join(glossary_link(term, anchor) for term, anchor in terms)
            return f"Symbols ({glossary_link('glossary')}): {links}.\n"
    return None


def with_symbols(sections: list[str]) -> list[str]:
    """``sections`` with a :func:`symbols_line` closing each section (from
    one ``## title`` to the next) that has one."""
    out, title = [], None

    def close() -> None:
        line = symbols_line(title) if title is not None else None
        if line is not None:
            out.append(line)
    for section in sections:
        if section.startswith(("## ", "### ")):
            close()
            title = section.lstrip("#").strip()
        out.append(section)
    close()
    return out


def reading_guide(diagnostics: dict, strategies, *, separation: bool) -> str:
    """The "how to read this report" paragraph: what each table answers,
    which to trust, from the sections present (``separation``: the
    separation table is in the report)."""
    note = nca_diagnostics.measurement_note(diagnostics, strategies)
    trust = ("The note above says where the TOD-R of the fits cannot be taken at face value: read those cells "
             "beside the exact references." if note else
             "Trust a strategy's TOD-R where its fits converged, its SNR (model) is high and it lies near the "
             "exact references, which reproduce the network exactly.")
    separated = (" The separation table answers how well each model separates whole excerpts (SDR, BSS Eval), "
                 "the quality the couplings are read against." if separation else "")
    return (f"**How to read this report.** Table 1 answers how mask-like each model's couplings C are (TOD-R: "
            "large for a per-frequency filter, about 1 for no structure); Table 2 answers whether those C "
            "reproduce the model at all (a TOD-R says something about the model only where its SNR (model) is "
            "high), Table 3 how much separation quality they keep; the exact references and the convergence "
            f"table say what an exact C scores and whether each fit finished. {trust}{separated} Every symbol is "
            f"defined in the {glossary_link('glossary', 'glossary')} of docs/method.md.")


def device_lines(metadata: dict) -> list[str]:
    """Where each stage computed (one line per stage, from the metadata's
    ``stage_devices``), flagged when stages or shards differ; nothing when
    the metadata records no devices."""
    stages = metadata.get("stage_devices")
    if not isinstance(stages, dict) or not stages:
        return []
    lines = []
    for stage, shards in stages.items():
        shown = {entry["line"] for entry in shards}
        if len(shown) == 1:
            lines.append(f"- {_escape(stage)}: {_escape(shards[0]['line'])}")
        else:
            lines.append(f"- {_escape(stage)}: " + "; ".join(f"shard {_escape(e['shard'])} on {_escape(e['line'])}"
                                                            for e in shards))
    differ = metadata.get("devices_differ")
    flag = f"\n**The devices differ:** {_escape(differ)}; their numbers may differ in the last digits.\n" \
        if differ else ""
    return ["Computed on (per stage, as its wall-time records say):\n", "\n".join(lines) + "\n" + flag]


def _headline(units, diagnostics: dict, heldout, strategies) -> list[str]:
    """The opening's computed findings: which couplings generalise to
    held-out frames, whether a strategy's TOD-R is its initialisation's,
    that V X⁺ is one exact solution among many, and the skipped units."""
    parts = []
    if heldout is not None:
        parts.append(nca_diagnostics.generalisation_sentence(heldout))
    regime = diagnostics["regime"]
    if regime["determined"] < regime["segments"]:
        parts.append(f"Where rank X < F ({regime['segments'] - regime['determined']} of {regime['segments']} "
                     "segments), the least-squares couplings of C X = V form a family that differs outside the "
                     "span of the frames; the minimum-norm V X⁺ is one member of it, the one nearest C = 0 "
                     "(section Exact references).")
    stayed = [s for s in strategies if nca_diagnostics.stayed_at_initialisation(units, s)]
    if stayed:
        parts.append(f"The TOD-R of the {listed([strategy_label(s) for s in stayed])} is its initialisation's: "
                     f"its median change from the initial C's TOD-R is below "
                     f"{100 * nca_diagnostics.INIT_SHARE:g} % (the trajectories' first checkpoint).")
    skipped = diagnostics.get("skipped") or []
    if skipped:
        parts.append(f"{_count(len(skipped), 'unit')} left out, their drawn run dead: "
                     + "; ".join(f"{display_name(u['kind'])} {u['segment']} (run {u['run']})" for u in skipped)
                     + ".")
    return [" ".join(p for p in parts if p) + "\n"] if any(parts) else []


def _heldout_section(heldout) -> list[str]:
    """The held-out table of every couplings matrix (:func:`nca_np.report.diagnostics.heldout_table`)."""
    if heldout is None:
        return []
    return [f"## Held-out scores\n", nca_diagnostics.heldout_caption(heldout) + "\n",
            nca_diagnostics.heldout_markdown(heldout)]


def _claims_section(rows, stayed=()) -> list[str]:
    """The paper's claims with their computed verdicts (:mod:`nca_np.claims`);
    ``stayed``: the strategies whose TOD-R stayed at its initialisation's,
    whose TOD-R rows compare what the random start set, not the models."""
    if rows is None:
        return []
    caveat = (f"The rows on the TOD-R of the {listed([strategy_label(s) for s in stayed])} compare values "
              "their random initialisation set (see the opening): whatever their verdict, they say nothing about "
              "the models.\n" if stayed else None)
    return ["## The paper's claims, tested\n",
            "Each claim of the paper compared on the segments both sides were fitted on, per measure: the mean "
            "of the per-segment contrasts (a ratio for TOD-R, a difference for SNR), its "
            f"{100 * paper_claims.CONFIDENCE:g} % confidence interval over training runs, and the verdict the "
            "rule gives it (docs/method.md#the-papers-claims-tested); every verdict is computed from the "
            "interval. TOD-R measures: the NCA's two strategies, the ridge couplings (cross-validated on the same "
            "track, and pooled) and the mean local map; SNR measures: in-sample, and held-out on the headline "
            "group of Held-out scores. CSV: [claims.csv](claims.csv).\n",
            *([caveat] if caveat else []),
            paper_claims.claims_markdown(rows)]


def render_without_fits(tables, *, units, kinds, strategies, histories, linear_compositions, figure_segment,
                        sample_rate, n_fft, metadata, n_freq, separation=None, diagnostics=None, **_) -> str:
    """The text of report.md when every couplings unit was skipped (every
    drawn run dead): what was skipped and why, the separation section, the
    figures and the training table; no NCA table, for there is no fit."""
    skipped = (diagnostics or {}).get("skipped") or []
    reasons = sorted({u["reason"] for u in skipped})
    sections = [
        "# Mapping functions of denoising autoencoders: reproduction report\n",
        f"**No couplings were fitted.** All {_count(len(skipped), 'couplings unit')} were skipped, their drawn "
        f"runs dead ({'; '.join(reasons)}): there is no network mapping left to explain, so the report has no "
        "NCA table, held-out score or claim.\n",
    ]
    if separation is not None:
        sections += separation_section(*separation)
    sections.append("## Figures\n")
    sections += _figure_section(linear_compositions, figure_segment, kinds, strategies,
                                _zoom_text(n_freq, sample_rate, n_fft), histories)
    sections += ["## Training runs\n", _training_table(histories, kinds), "## Metadata\n",
                 "All of it in [metadata.json](metadata.json).\n",
                 markdown(["Key", "Value"], ([_escape(k), _escape(v)] for k, v in _flatten(metadata)))]
    return "\n".join(sections)
