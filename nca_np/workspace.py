"""Where an experiment's files live, and what every stage shares.

One working folder holds every artefact (see :mod:`nca_np.experiment` for
the flow of the stages): :class:`Workspace` names its folders,
:class:`Shard` deals the units of a stage to the machines running it. Every
stage imports this module, and nothing here imports a stage: the code
version and configuration hashes stamped on every artefact, each stage's
wall-time record and progress bar, the prepared feature cache, the seed of
a training run, and the check that the runs a stage needs are trained.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from . import __version__, backend
from .atomic import write_json
from .config import config_hash
from .data.cache import cache_key, find_cache, open_cache
from .errors import UserError
from .train import FINAL_MODEL

# ----------------------------------------------------------------------------
# Where things live


def code_version() -> str:
    """``nca_np`` version plus the git commit of the source tree, if any."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).resolve().parent, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    return f"{__version__}+{commit}"


def train_hash(config: dict) -> str:
    """Hash of what shapes the trained models (features, data, training)."""
    return config_hash({k: config[k] for k in ("stft", "data", "train")})


@dataclass
class Workspace:
    """The folders of one experiment (one profile, one configuration)."""

    root: Path
    config: dict
    #: the ``--set`` overrides given on the command line (recorded in the report)
    overrides: tuple = ()

    @property
    def profile(self) -> str:
        return self.config["profile"]["name"]

    @property
    def synthetic_root(self) -> Path:
        return Path(self.config["data"]["root"] or self.root / "data" / "synthetic")

    @property
    def uses_builtin_corpus(self) -> bool:
        """True when the data is the built-in corpus, generated in the work
        folder (corpus "synthetic" with no data.root of the user's)."""
        return self.config["data"]["corpus"] == "synthetic" and not self.config["data"]["root"]

    @property
    def cache_root(self) -> Path:
        return self.root / "cache"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs" / f"{self.profile}-{train_hash(self.config)}"

    @property
    def couplings_dir(self) -> Path:
        return self.root / "couplings" / f"{self.profile}-{config_hash(self.config)}"

    @property
    def results_dir(self) -> Path:
        return self.root / "results" / f"{self.profile}-{config_hash(self.config)}"

    @property
    def latest_results(self) -> Path:
        """The link to the last results folder of this profile."""
        return self.root / "results" / f"{self.profile}-latest"

    @property
    def timings_dir(self) -> Path:
        """The couplings stage's wall-time records (each stage keeps its own
        ``timings/`` beside what it made: cache, runs, couplings)."""
        return self.couplings_dir / "timings"

    def run_dir(self, kind: str, run: int) -> Path:
        return self.runs_dir / kind / f"run_{run:02d}"


@dataclass(frozen=True)
class Shard:
    """Every ``count``-th unit, starting at ``index`` (0-based)."""

    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str | None) -> "Shard":
        """``"i/n"`` as a shard; None is the whole; an empty text is refused
        (it would silently mean "no sharding", every unit)."""
        if text is None:
            return cls()
        if not text.strip():
            raise UserError(f"--shard {text!r} is empty: write it as i/n, e.g. 0/4 for the first of four, "
                            "or leave the option out to do every unit")
        try:
            index, count = (int(part) for part in text.split("/"))
        except ValueError:
            raise UserError(f"--shard {text!r}: write it as i/n, e.g. 0/4 for the first of four") from None
        if count < 1 or not 0 <= index < count:
            raise UserError(f"--shard {text!r}: need 0 <= i < n")
        return cls(index, count)

    def select(self, units: list, cost=None) -> list:
        """This shard's units, in their order.

        Without ``cost``, every ``count``-th unit from ``index``. With
        ``cost`` (a function of a unit), units are dealt, dearest first, each
        to the shard with the least cost so far (ties: lower index), so that
        the shards' totals differ by at most one unit's cost.
        """
        if cost is None:
            return units[self.index::self.count]
        loads = [0.0] * self.count
        mine = set()
        for position in sorted(range(len(units)), key=lambda i: (-cost(units[i]), i)):
            shard = min(range(self.count), key=lambda s: (loads[s], s))
            loads[shard] += cost(units[position])
            if shard == self.index:
                mine.add(position)
        return [unit for position, unit in enumerate(units) if position in mine]

    def __str__(self) -> str:
        return f"{self.index}of{self.count}"


def record_time(folder: Path, stage: str, shard: Shard, seconds: float) -> None:
    """Add a stage's wall time to its record in ``folder/timings`` (summed
    over resumptions), beside what the stage made, with the device it ran
    on (:func:`nca_np.backend.device_record`): each stage, and each shard of
    one, may run on another machine. A resumption on another device keeps
    the earlier ones' lines under ``earlier_devices``; a damaged record
    starts again from zero rather than stop the stage."""
    path = Path(folder) / "timings" / f"{stage}-{shard}.json"
    previous = _previous_record(path)
    device = backend.device_record()
    earlier = list(previous.get("earlier_devices", []))
    before = previous.get("device")
    before_line = before.get("line") if isinstance(before, dict) else before
    if before_line and device_key(before) != device_key(device) and before_line not in earlier:
        earlier.append(before_line)
    record = {"stage": stage, "shard": str(shard), "seconds": previous.get("seconds", 0.0) + seconds,
              "backend": backend.name(), "device": device, "tf32": backend.tf32_settings()}
    write_json(path, {**record, **({"earlier_devices": earlier} if earlier else {})})


def _previous_record(path: Path) -> dict:
    """A stage's wall-time record so far; empty when missing or damaged."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(record, dict) or not isinstance(record.get("seconds"), (int, float)):
        return {}
    return record


def device_key(device) -> tuple:
    """What tells two devices apart in a wall-time record: (backend, device
    name). ``device`` is a :func:`nca_np.backend.device_record` dict or, in
    records written before those, the device's description string."""
    if isinstance(device, dict):
        return (device.get("backend"), device.get("device"))
    return (None, device)


def bars_can_draw(stream=None) -> bool:
    """Whether progress bars can draw on ``stream`` (default standard error):
    a terminal at least one column wide, by its own size and by ``COLUMNS``
    when that is set. A terminal of no width (a fresh pseudo-terminal,
    ``COLUMNS=0``) would get bars that draw nothing; the stages log a line
    per unit (and training per epoch) instead."""
    stream = sys.stderr if stream is None else stream
    try:
        if not stream.isatty():
            return False
        columns = os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        return False
    setting = os.environ.get("COLUMNS", "").strip()
    if setting:
        try:
            columns = min(columns, int(setting))
        except ValueError:
            pass
    return columns > 0


def unit_bar(units, desc: str, progress: bool):
    """A progress bar over a stage's units (nothing when ``progress`` is False)."""
    return tqdm(units, desc=desc, disable=not progress, unit="unit", dynamic_ncols=True)


# ----------------------------------------------------------------------------
# What the stages read


def open_prepared_cache(ws: Workspace):
    """The cache that ``prepare`` made for this configuration, found by its
    recorded settings (the audio itself may be on another machine)."""
    return open_cache(find_cache(ws.config, ws.cache_root, current_key=lambda: _current_cache_key(ws)))


def _current_cache_key(ws: Workspace) -> str | None:
    """The cache key of the data as it is now, or None where it is not here."""
    root = ws.synthetic_root if ws.config["data"]["corpus"] == "synthetic" else None
    try:
        return cache_key(ws.config, musdb_root=root)
    except UserError:
        return None


def training_units(config: dict, kinds=None, runs=None) -> list[tuple[str, int]]:
    """All (kind, run) pairs, sorted, optionally restricted."""
    kinds = [k for k in config["train"]["kinds"] if kinds is None or k in kinds]
    every_run = range(config["train"]["runs"])
    outside = sorted(set(runs or ()) - set(every_run))
    if outside:
        raise UserError(f"run numbers {outside} are outside this profile's train.runs = {len(every_run)} "
                        f"(runs are numbered 0 to {len(every_run) - 1})")
    return [(kind, run) for kind in kinds for run in (every_run if runs is None else sorted(set(runs)))]


def run_seed(config: dict, run: int) -> int:
    """The seed of run ``run``'s initial weights. The batch order is shared by
    every run of a kind: drawn from ``train.seed`` (:func:`nca_np.train.order_rng`)."""
    return config["train"]["seed"] + run


def require_trained(ws: Workspace, pairs, needed_by: str) -> None:
    """Stop with one line unless every ``(kind, run)`` of ``pairs`` has its
    final model; ``needed_by`` names the stage, e.g. "evaluate"."""
    missing = sorted(f"{kind} run {run}" for kind, run in pairs if not (ws.run_dir(kind, run) / FINAL_MODEL).exists())
    if missing:
        raise UserError(f"{needed_by} needs trained models that are not finished: {', '.join(missing[:6])}"
                        f"{' …' if len(missing) > 6 else ''}; run `nca-np train` (all shards) first")
