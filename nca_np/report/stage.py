"""The report stage: gather the saved runs, couplings and evaluation of one
configuration, check that they belong together, and write the report folder
(:func:`nca_np.report.write.write_report`)::

    results/<profile>-<hash>/        tables, figures, metadata
    results/<profile>-latest         the last one reported

``results/<profile>-latest`` is a relative symbolic link to the folder the
last report of that profile went to; where the file system has no symbolic
links it is a text file ``results/<profile>-latest.txt`` holding the
folder's name instead.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy

from .. import backend, preflight
from ..atomic import remove_stale_temporaries, temporary_path, write_text
from ..config import config_hash
from ..data.synth import track_name
from ..couplings import FIGURE_SEGMENT, couplings_units, unit_json_damage, unit_path
from ..errors import UserError
from ..evaluate import evaluation_dir, report_inputs
from ..features import StftSettings
from ..nca import linear_composition
from ..train import FINAL_MODEL, load_model
from ..workspace import Workspace, device_key, open_prepared_cache, require_trained, run_seed, training_units
from .write import write_report


def report_stage(ws: Workspace, *, log=print) -> Path:
    """Tables, figures and metadata from the saved runs and couplings."""
    config = ws.config
    remove_stale_temporaries(ws.results_dir, log=log)
    segments = _read_segments(ws)
    units = _load_units(ws, segments)
    kinds = list(config["train"]["kinds"])
    training = _training_summary(ws, kinds)
    figure = _figure_segment(ws, segments[FIGURE_SEGMENT], kinds)
    settings = StftSettings.from_config(config["stft"])
    metadata = _metadata(ws, units, segments, training, log=log)
    preflight.check_output_folder(ws.results_dir, preflight.REPORT_BYTES, "the report")
    paths = write_report(ws.results_dir, units=units, kinds=kinds, strategies=list(config["nca"]["strategies"]),
                         histories=training["histories"], linear_compositions=training["linear_compositions"],
                         figure_segment=figure, sample_rate=settings.sample_rate, n_fft=settings.n_fft,
                         metadata=metadata, hop=settings.hop, separation=report_inputs(ws))
    latest = _point_latest(ws)
    log(f"report written to {ws.results_dir / 'report.md'} ({len(paths)} files; latest of profile "
        f"{ws.profile}: {latest.relative_to(ws.root)})")
    return ws.results_dir / "report.md"


def _read_segments(ws: Workspace) -> list[dict]:
    """The NCA segments the couplings stage fitted (``segments.json``), checked."""
    segments_path = ws.couplings_dir / "segments.json"
    if not segments_path.exists():
        raise UserError(f"cannot report: no couplings results for this configuration in {ws.couplings_dir}; "
                        "run `nca-np couplings` first")
    if preflight.json_damage(segments_path, holds=list) is not None:
        raise UserError(f"cannot report: {segments_path} is damaged; run `nca-np couplings` again to rewrite it")
    segments = json.loads(segments_path.read_text())
    if not segments:
        raise UserError(f"cannot report: {segments_path} lists no NCA segment (nca.segment_frames is longer than "
                        "every test excerpt); run `nca-np couplings` again for its advice")
    return segments


def _training_summary(ws: Workspace, kinds) -> dict:
    """What the report shows of the training runs: loss histories and the
    mean linear composition per kind, the library versions, frame sources
    and TF32 settings they recorded."""
    histories = {kind: [] for kind in kinds}
    sums, versions, frame_sources, tf32 = {}, [], set(), []
    for kind, run, model, meta in _trained_models(ws):
        histories[kind].append(meta["history"])
        linear = linear_composition(model)
        sums[kind] = linear if kind not in sums else sums[kind] + linear
        if meta["versions"] not in versions:
            versions.append(meta["versions"])
        frame_sources.update(meta.get("frame_sources", []))
        tf32 += [setting for setting in meta.get("tf32", []) if setting not in tf32]
    return {"histories": histories, "versions": versions, "frame_sources": frame_sources, "tf32": tf32,
            "linear_compositions": {kind: sums[kind] / ws.config["train"]["runs"] for kind in kinds}}


def _metadata(ws: Workspace, units, segments, training: dict, *, log=print) -> dict:
    """The report's metadata.json: configuration, seeds, versions, devices, wall times, data."""
    config = ws.config
    cache = _prepared_cache_or_none(ws)
    timings = _timing_records(ws, cache, log=log)
    return {
        "profile": ws.profile, "config": config, "config_hash": config_hash(config),
        "composition": config["nca"]["composition"], "code_version": units[0]["code_version"],
        "seeds": {"train": {str(r): run_seed(config, r) for r in range(config["train"]["runs"])},
                  "nca": config["nca"]["seed"],
                  "drawn_runs": {f"{u['kind']}/{u['segment']['id']}": u["run"] for u in units}},
        "versions": {"training": training["versions"], "report": backend.versions()},
        "backend": sorted({record.get("backend", "unknown") for record in timings}),
        "device": sorted({_device_line(record) for record in timings}),
        "stage_devices": stage_devices(timings), "devices_differ": devices_differ(timings),
        "wall_time_seconds": _stage_times(timings), "n_segments": len(segments),
        "data": data_record(ws, cache), "overrides": list(ws.overrides),
        "training": {"frame_sources": sorted(training["frame_sources"]), "tf32": training["tf32"],
                     "batch_order": "one shuffled order per epoch shared by the runs of a model kind "
                                    "(stream batch-order/<kind> of train.seed)"},
    }


def _load_units(ws: Workspace, segments: list[dict]) -> list[dict]:
    """Every couplings unit, checked: none missing, one configuration, one
    code version."""
    config = ws.config
    expected = couplings_units(config, segments)
    missing = [f"{kind}/{seg['id']}" for kind, seg in expected if not unit_path(ws, kind, seg).exists()]
    if missing:
        raise UserError(f"cannot report: {len(missing)} of {len(expected)} couplings units are missing "
                        f"({', '.join(missing[:5])}{' …' if len(missing) > 5 else ''}); "
                        "run `nca-np couplings` for every shard first")
    for kind, seg in expected:
        reason = unit_json_damage(unit_path(ws, kind, seg))
        if reason is not None:
            raise UserError(f"cannot report: the couplings unit {unit_path(ws, kind, seg)} is damaged ({reason}); "
                            "run `nca-np couplings` again: it recomputes that unit")
    units = [json.loads(unit_path(ws, kind, seg).read_text()) for kind, seg in expected]
    for what, values in (("configurations", {u["config_hash"] for u in units}),
                         ("code versions", {u["code_version"] for u in units})):
        if len(values) > 1:
            raise UserError(f"cannot report: the couplings results were made with different {what} "
                            f"({', '.join(sorted(values))}); rerun the shards made with the old one")
    if units[0]["config_hash"] != config_hash(config):
        raise UserError("cannot report: the couplings results were made with another configuration "
                        f"({units[0]['config_hash']}, this one is {config_hash(config)})")
    return units


def _trained_models(ws: Workspace):
    """(kind, run, model, meta) of every finished run; error if one is missing."""
    pairs = training_units(ws.config)
    require_trained(ws, pairs, "the NCA")
    for kind, run in pairs:
        model, meta, _ = load_model(ws.run_dir(kind, run) / FINAL_MODEL, module=numpy)
        yield kind, run, model, meta


def _prepared_cache_or_none(ws: Workspace):
    """The prepared cache, or None where it is not (the report can be made
    on a machine holding only the runs and couplings)."""
    try:
        return open_prepared_cache(ws)
    except UserError:
        return None


def _timing_records(ws: Workspace, cache, *, log=print) -> list[dict]:
    """The wall-time records of every stage, each kept with what it made;
    a damaged one is named in a log line and left out."""
    folders = [ws.synthetic_root, cache.path if cache is not None else None, ws.runs_dir, ws.couplings_dir,
               evaluation_dir(ws)]
    records = []
    for path in (path for folder in folders if folder is not None
                 for path in sorted((Path(folder) / "timings").glob("*.json"))):
        record, reason = _timing_record(path)
        if reason is None:
            records.append(record)
        else:
            log(f"report: leaving out the wall-time record {path}: {reason}")
    return records


def _timing_record(path: Path) -> tuple[dict | None, str | None]:
    """``(record, None)`` for an intact wall-time record, ``(None, why)`` otherwise."""
    reason = preflight.json_damage(path, ("stage", "seconds"))
    if reason is not None:
        return None, reason
    record = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(record["stage"], str) or isinstance(record["seconds"], bool) \
            or not isinstance(record["seconds"], (int, float)):
        return None, "its stage is not a name or its seconds not a number"
    return record, None


def _stage_times(records: list[dict]) -> dict:
    """Wall time per stage, summed over shards and resumptions."""
    totals: dict[str, float] = {}
    for record in records:
        totals[record["stage"]] = totals.get(record["stage"], 0.0) + record["seconds"]
    return {stage: round(seconds, 1) for stage, seconds in sorted(totals.items())}


#: The stages in the order they run (the report lists their devices so).
STAGE_ORDER = ("synth", "prepare", "train", "evaluate", "couplings")


def _device_line(record: dict) -> str:
    """The device line of a wall-time record: its :func:`nca_np.backend.device_line`,
    or, in a record written before those, its backend and device description."""
    device = record.get("device")
    if isinstance(device, dict) and isinstance(device.get("line"), str):
        return device["line"]
    if isinstance(device, str):
        return device if record.get("backend") in (None, "numpy") else f"{device} ({record['backend']})"
    return "unknown (not recorded)"


def _device_key(record: dict) -> tuple:
    return device_key(record.get("device")) if record.get("device") is not None else ("unknown",)


def stage_devices(records: list[dict]) -> dict:
    """``{stage: [{"shard", "line", "record"}]}``: where each shard of each
    stage computed, stages in the order they run."""
    order = {stage: position for position, stage in enumerate(STAGE_ORDER)}
    devices: dict[str, list] = {}
    for record in sorted(records, key=lambda r: (order.get(r["stage"], len(order)), r["stage"], r.get("shard", ""))):
        device = record.get("device")
        devices.setdefault(record["stage"], []).append(
            {"shard": str(record.get("shard", "0of1")), "line": _device_line(record),
             "record": device if isinstance(device, dict) else None,
             **({"earlier_devices": record["earlier_devices"]} if record.get("earlier_devices") else {})})
    return devices


def devices_differ(records: list[dict]) -> str | None:
    """None when every stage and shard computed on one kind of device;
    otherwise what differs, in words."""
    shards_apart = sorted({r["stage"] for r in records
                           if len({_device_key(other) for other in records if other["stage"] == r["stage"]}) > 1
                           or r.get("earlier_devices")})
    if shards_apart:
        return f"the shards or resumptions of {', '.join(shards_apart)} ran on different devices"
    if len({_device_key(r) for r in records}) > 1:
        return "the stages ran on different devices"
    return None


#: How the report names each source of test excerpts (see nca_np.data.excerpts).
CUT_LISTS = {"sisec2018": "the published SiSEC 2018 list", "activation-confidence": "activation confidence",
             "whole-track": "whole track (shorter than an excerpt)"}


def data_record(ws: Workspace, cache) -> dict:
    """Where the data came from: corpus, root, and the cut list the test
    excerpts were taken from (counted in the prepared cache)."""
    record = {"corpus": ws.config["data"]["corpus"], "root": None, "cut_list": None, "cache": None}
    if cache is None:
        record["cut_list"] = "not recorded (the feature cache is not on this machine)"
        return record
    counts: dict[str, int] = {}
    for entry in cache.manifest["test"]:
        counts[entry["source"]] = counts.get(entry["source"], 0) + 1
    record["root"] = cache.manifest["data"]["root"]
    record["audio"] = audio_description(ws, cache)
    record["cut_list"] = "; ".join(f"{CUT_LISTS.get(source, source)} ({n} excerpt{'s' if n != 1 else ''})"
                                   for source, n in sorted(counts.items()))
    record["cache"] = cache.key
    return record


def audio_description(ws: Workspace, cache) -> str:
    """What the prepared audio is, whatever the corpus setting (which picks
    the excerpt rule): the built-in synthetic corpus — read from the work
    folder's own copy, or with the synthetic tracks' names — or a MUSDB18
    (or MUSDB18-HQ) tree."""
    recorded = cache.manifest["data"]
    names = [entry["name"] for entry in cache.manifest["test"]]
    builtin = [track_name("test", i) for i in range(len(names))]
    if Path(recorded["root"]).expanduser().resolve() == ws.synthetic_root.resolve() or sorted(names) == builtin:
        return "the built-in synthetic corpus"
    return "a MUSDB18-HQ tree (.wav)" if recorded.get("is_wav") else "a MUSDB18 tree (.stem.mp4)"


def _point_latest(ws: Workspace) -> Path:
    """Make ``results/<profile>-latest`` point at this report's folder: a
    relative symbolic link, replaced atomically; where the file system has
    none, the text file ``<profile>-latest.txt`` holding the folder's name."""
    link, target = ws.latest_results, ws.results_dir.name
    pointer = link.with_name(link.name + ".txt")
    tmp = temporary_path(link)
    try:
        os.symlink(target, tmp, target_is_directory=True)
        os.replace(tmp, link)
    except OSError:
        tmp.unlink(missing_ok=True)
        write_text(pointer, target + "\n")
        return pointer
    pointer.unlink(missing_ok=True)
    return link


def _figure_segment(ws: Workspace, segment: dict, kinds) -> dict:
    figure = {"track": segment["track"], "segment_index": segment["index"]}
    for kind in kinds:
        path = unit_path(ws, kind, segment).with_suffix(".npz")
        if not path.exists() and "skipped" in json.loads(path.with_suffix(".json").read_text()):
            continue  # the drawn run is dead: Figure 3 draws that model as not run
        if not path.exists():
            raise UserError(f"cannot report: {path} (the matrices of Figure 3) is missing; delete "
                            f"{path.with_suffix('.json')} and run `nca-np couplings` again to redo that unit")
        with numpy.load(path) as data:
            figure[kind] = {k: data[k] for k in data.files}
    return figure

