"""The registries of model kinds and NCA strategies: a kind or a strategy is
declared in one place, everything else reads it, and adding one changes no
existing unit's random draws."""

import json
from pathlib import Path

import numpy
import pytest

import re

from nca_np import experiment, nca
from nca_np.couplings import NcaSettings, couplings_stage, unit_draws
from nca_np.config import load_profile
from nca_np.errors import UserError
from nca_np.models import MODEL_KINDS, ModelKind, build_model, kind_names, model_kind
from nca_np.report import display_name, report_stage
from nca_np.train import FINAL_MODEL, load_model
from nca_np.workspace import Workspace

PROFILE = Path(__file__).resolve().parents[1] / "configs" / "tiny.toml"
DAE3 = ModelKind("dae3", 3, False, "DAE-3", "a three-layer DAE, added by a test")


@pytest.fixture
def dae3(monkeypatch):
    """A fourth kind, declared in the one place kinds are declared."""
    monkeypatch.setitem(MODEL_KINDS, DAE3.name, DAE3)
    return DAE3


def test_unknown_kind_names_the_known_ones():
    with pytest.raises(UserError, match=re.escape(f"unknown model kind 'dea': use one of {', '.join(kind_names())}")):
        build_model("dea", 4)


def test_unknown_strategy_names_the_known_ones():
    model = build_model("dae", 4)
    known = ", ".join(nca.strategy_names())
    with pytest.raises(UserError, match=re.escape(f"unknown NCA strategy 'pupil': use one of {known}")):
        nca.fit_couplings(model, numpy.ones((4, 3), numpy.float32), "pupil", iterations=1)


def test_configuration_and_command_line_read_the_registry(dae3):
    config = load_profile(str(PROFILE), ['train.kinds=["dae", "dae3"]'])
    assert config["train"]["kinds"] == ["dae", "dae3"]
    with pytest.raises(UserError, match=re.escape(f"kinds from {', '.join(kind_names())}")):
        load_profile(str(PROFILE), ['train.kinds=["dae4"]'])
    from nca_np.cli import build_parser
    args = build_parser().parse_args(["train", "--kinds", "dae3"])
    assert args.kinds == ["dae3"]
    assert display_name("dae3") == "DAE-3" and model_kind("dae3").n_layers == 3


def test_adding_a_kind_or_strategy_leaves_existing_draws_unchanged(monkeypatch):
    config = load_profile(str(PROFILE))
    before = {(kind, s): unit_draws(config, kind, s) for kind in kind_names() for s in range(12)}
    monkeypatch.setitem(MODEL_KINDS, DAE3.name, DAE3)
    monkeypatch.setitem(nca.STRATEGIES, "student-again",
                        nca.Strategy("student-again", "NCA student (again)", nca.STRATEGIES["student"].start,
                                     flops=nca.student_iteration_flops))
    kinds = ["dae3", *reversed(config["train"]["kinds"])]
    reordered = load_profile(str(PROFILE), [f"train.kinds={json.dumps(kinds)}"])
    after = {(kind, s): unit_draws(reordered, kind, s) for kind, s in before}
    assert after == before
    # the draws are not all alike: keyed streams still differ between units
    assert len(set(before.values())) == len(before)


@pytest.mark.slow
def test_a_fourth_kind_runs_through_training_couplings_and_report(dae3, tmp_path):
    config = load_profile(str(PROFILE), ['train.kinds=["dae", "dae3"]', "train.runs=1"])
    ws = Workspace(tmp_path, config)
    lines = []
    experiment.prepare_stage(ws, progress=False, log=lines.append)
    experiment.train_stage(ws, progress=False, log=lines.append)
    couplings_stage(ws, progress=False, log=lines.append)
    report = report_stage(ws, log=lines.append)
    model = load_model(ws.run_dir("dae3", 0) / FINAL_MODEL)[0]
    assert model.kind == "dae3" and len(model.params) == 6
    unit = json.loads(next((ws.couplings_dir / "dae3").glob("s0000.json")).read_text())
    assert set(unit["strategies"]) == set(config["nca"]["strategies"])
    assert numpy.isfinite(unit["strategies"]["compositional"]["tod_r"])
    text = report.read_text()
    assert "| DAE-3 |" in text and "| DAE |" in text


def test_time_estimates_read_each_strategys_declared_cost():
    from nca_np.calibrate import nca_iteration_flops
    F, T = 2049, 360
    assert nca_iteration_flops("dae", "student", n_freq=F, frames=T) == 4.0 * F**2 * T
    assert nca_iteration_flops("mss-dae", "compositional", n_freq=F, frames=T) == 2.0 * (8 * F**3 + 11 * F**2 * T)


def _product_flops(lhs, transpose_lhs, rhs, transpose_rhs) -> int:
    """2 m k n of one product, from the stored shapes and transpositions."""
    m, k = lhs[::-1] if transpose_lhs else lhs
    k_rhs, n = rhs[::-1] if transpose_rhs else rhs
    assert k == k_rhs, "the declared product does not chain"
    return 2 * m * k * n


@pytest.mark.parametrize("strategy", nca.strategy_names())
def test_each_strategys_declared_products_make_its_declared_flops(strategy):
    declared = nca.get_strategy(strategy)
    for depth in sorted({model_kind(kind).n_layers for kind in kind_names()}):
        products = declared.products(depth, 7, 5)
        assert sum(_product_flops(*product) for product in products) == declared.flops(depth, 7, 5)
    assert declared.matrix_key == f"C_{strategy}"


def test_nca_settings_default_to_the_papers_and_read_the_nca_section():
    paper = load_profile("paper")["nca"]
    assert NcaSettings.from_config(paper) == NcaSettings()
    tiny = load_profile(str(PROFILE))["nca"]
    settings = NcaSettings.from_config(tiny)
    assert settings.strategies == tuple(tiny["strategies"])
    assert settings.fit_arguments()["lr"] == tiny["learning_rate"]
    assert settings.fit_arguments()["max_iterations"] == tiny["max_iterations"]
