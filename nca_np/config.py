"""Configuration profiles (``configs/*.toml``), overrides and their hash.

A profile is a TOML file with the sections ``stft``, ``data``, ``train`` and
``nca`` (see ``configs/paper.toml``, where every value of docs/method.md lives).
``--set section.key=value`` overrides any value; the value is parsed as
TOML (``--set train.runs=3``, ``--set nca.composition='"authors-code"'`` or
simply ``--set nca.composition=authors-code``). Unknown keys are errors, so
a typo never silently falls back to a default.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import tomllib
from pathlib import Path

from .errors import ConfigError
from .features import StftSettings
from .models import kind_names
from .nca import COMPOSITIONS, strategy_names

#: Where the shipped profiles live (the repository's ``configs/``).
PROFILE_DIR = Path(__file__).resolve().parent.parent / "configs"
SECTIONS = ("profile", "stft", "data", "train", "nca")


def profile_path(name_or_path: str) -> Path:
    """Resolve a profile name ("paper", "demo") or a path to a TOML file."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.is_file():
        candidate = path
    else:
        candidate = PROFILE_DIR / f"{name_or_path}.toml"
    if not candidate.is_file():
        known = ", ".join(sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))) or "none found"
        raise ConfigError(f"profile {name_or_path!r} not found (looked for {candidate}); "
                          f"known profiles: {known}")
    return candidate


def load_profile(name_or_path: str, overrides=()) -> dict:
    """Read a profile and apply ``section.key=value`` overrides.

    Returns:
        A plain dict of dicts (a fresh copy).
    """
    path = profile_path(name_or_path)
    try:
        config = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    missing = [s for s in SECTIONS if s not in config]
    if missing:
        raise ConfigError(f"{path}: missing section(s) {', '.join(missing)}")
    config = apply_overrides(config, overrides)
    validate(config)
    return config


def _number(value) -> bool:
    """An int or float, not a bool (TOML's true would pass ``> 0``)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _positive(value) -> bool:
    return _number(value) and value > 0


def _finite_positive(value) -> bool:
    return _positive(value) and math.isfinite(value)


def _natural(value) -> bool:
    """An integer ≥ 0 (a seed, a count that may be zero)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _counting(value) -> bool:
    """An integer ≥ 1 (epochs, runs, iterations, frames)."""
    return _natural(value) and value >= 1


def _fraction(value) -> bool:
    return _number(value) and 0 < value < 1


def _momentum(value) -> bool:
    """Adam's β: 0 allowed (no averaging), 1 not (the average would never move)."""
    return _number(value) and 0 <= value < 1


def _choices(*allowed):
    return lambda value: value in allowed


def _subset(*allowed):
    return lambda values: len(values) > 0 and len(set(values)) == len(values) and set(values) <= set(allowed)


#: What each setting must satisfy, with the words the error uses.
RULES = {
    "data.corpus": (_choices("musdb18", "synthetic"), "'musdb18' or 'synthetic'"),
    "data.excerpt_seconds": (_finite_positive, "a finite positive number of seconds"),
    "data.device_budget_gb": (lambda v: _number(v) and 0 <= v < math.inf, "zero or a finite positive number"),
    "data.device_storage": (_choices("float16", "float32"), "'float16' or 'float32'"),
    "data.synth_train_tracks": (_counting, "an integer of at least 1"),
    "data.synth_test_tracks": (_counting, "an integer of at least 1"),
    "data.synth_seconds": (_finite_positive, "a finite positive number of seconds"),
    "data.synth_test_seconds": (_finite_positive, "a finite positive number of seconds"),
    "data.synth_seed": (_natural, "an integer of at least 0 (seeds are never negative)"),
    "train.kinds": (lambda v: _subset(*kind_names())(v), lambda: f"a list of distinct kinds from {', '.join(kind_names())}"),
    "train.runs": (_counting, "an integer of at least 1"),
    "train.batch_size": (_counting, "an integer of at least 1"),
    "train.learning_rate": (_finite_positive, "a finite positive number"),
    "train.beta1": (_momentum, "at least 0 and below 1"),
    "train.beta2": (_momentum, "at least 0 and below 1"),
    "train.eps": (_finite_positive, "a finite positive number"),
    "train.patience_halve": (_counting, "an integer of at least 1"),
    "train.patience_stop": (_counting, "an integer of at least 1"),
    "train.max_epochs": (_counting, "an integer of at least 1"),
    "train.seed": (_natural, "an integer of at least 0 (seeds are never negative)"),
    "train.dtype": (_choices("float32", "float64"), "'float32' or 'float64'"),
    "nca.strategies": (lambda v: _subset(*strategy_names())(v), lambda: f"a list from {', '.join(strategy_names())}"),
    "nca.segment_frames": (_counting, "an integer of at least 1"),
    "nca.iterations": (_counting, "an integer of at least 1"),
    "nca.learning_rate": (_finite_positive, "a finite positive number"),
    "nca.composition": (_choices(*COMPOSITIONS), " or ".join(repr(c) for c in COMPOSITIONS)),
    "nca.seed": (_natural, "an integer of at least 0 (seeds are never negative)"),
    "nca.max_iterations": (_counting, "an integer of at least 1 (and at least nca.iterations)"),
    "nca.tolerance": (_fraction, "between 0 and 1"),
    "nca.halvings": (_natural, "an integer of at least 0"),
    "nca.checkpoint_every": (_counting, "an integer of at least 1"),
    "nca.init_seeds": (_natural, "an integer of at least 0"),
    "nca.spread_segments": (_natural, "an integer of at least 0"),
    "nca.local_map_stride": (_counting, "an integer of at least 1"),
    "nca.heldout_same": (_natural, "an integer of at least 0"),
    "nca.heldout_other": (_natural, "an integer of at least 0"),
}


#: Settings with no constraint beyond their type (checked by overrides).
FREE_KEYS = ("data.root", "data.is_wav")


def _check_known_keys(config: dict) -> None:
    """Every section holds only known keys, so a typo in a profile is an
    error (as it is in an override), never a silently ignored value."""
    known = set(RULES) | set(FREE_KEYS)
    for section in SECTIONS[2:]:
        unknown = sorted(key for key in config[section] if f"{section}.{key}" not in known)
        if unknown:
            expected = sorted(k.split(".", 1)[1] for k in known if k.startswith(section + "."))
            raise ConfigError(f"[{section}] unknown key(s) {', '.join(unknown)}: expected {', '.join(expected)}")


def validate(config: dict) -> None:
    """Check every setting before any work starts, so a bad value fails in
    a second with one line, not after hours of training.

    Raises:
        ConfigError: naming the setting, its value and what it must be.
    """
    StftSettings.from_config(config["stft"])
    _check_known_keys(config)
    for dotted, (holds, wanted) in RULES.items():
        section, key = dotted.split(".")
        if key not in config[section]:
            raise ConfigError(f"setting {dotted} is missing from the profile")
        value = config[section][key]
        if not holds(value):
            wanted = wanted() if callable(wanted) else wanted
            raise ConfigError(f"setting {dotted} = {value!r} is invalid: it must be {wanted}")
    nca = config["nca"]
    if nca["max_iterations"] < nca["iterations"]:
        raise ConfigError(f"setting nca.max_iterations = {nca['max_iterations']} is below nca.iterations = "
                          f"{nca['iterations']}: the cap must be at least the number of iterations")


def _parse_value(text: str):
    """A TOML value, or the bare text as a string when it is not one."""
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(config: dict, overrides) -> dict:
    """A copy of ``config`` with each ``"section.key=value"`` applied.

    The new value must have the type of the old one (an int may replace a
    float), so ``--set train.runs=ten`` fails here and not an hour later.
    """
    config = copy.deepcopy(config)
    for item in overrides:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        dotted, text = item.split("=", 1)
        section, key = dotted.strip().split(".", 1)
        if section not in config or key not in config[section]:
            known = ", ".join(f"{section}.{k}" for k in config.get(section, {})) or ", ".join(config)
            raise ConfigError(f"unknown setting {dotted!r}; known: {known}")
        old, new = config[section][key], _parse_value(text.strip())
        if isinstance(old, float) and isinstance(new, int) and not isinstance(new, bool):
            new = float(new)
        if type(new) is not type(old):
            raise ConfigError(f"setting {dotted} expects {type(old).__name__} "
                              f"(like {old!r}), got {text!r}")
        config[section][key] = new
    return config


def config_hash(config: dict) -> str:
    """A short, stable hash of everything that changes results.

    The profile's name is left out: two profiles with the same values give
    the same results.
    """
    relevant = {k: v for k, v in config.items() if k != "profile"}
    canonical = json.dumps(relevant, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]
