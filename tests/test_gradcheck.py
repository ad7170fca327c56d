"""Every layer pair and every parameter of every model against central
finite differences in float64 — and proof that the checker catches the
mistakes it is there for. The NCA's checks are exercised in test_nca.py;
here, their check points and their run on a device module."""

import dataclasses
import importlib.util
from pathlib import Path

import numpy
import pytest

from nca_np import gradcheck, layers, nca
from nca_np.gradcheck import THRESHOLD, check_layer_pairs, check_model_gradients
from nca_np.models import kind_names, model_kind

_SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "gradcheck.py"
_spec = importlib.util.spec_from_file_location("gradcheck_script", _SCRIPT)
gradcheck_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gradcheck_script)


def test_layer_pairs_match_finite_differences():
    results = check_layer_pairs()
    assert len(results) == 9
    for name, error in results:
        assert error < THRESHOLD, name


@pytest.mark.parametrize("kind", kind_names())
def test_every_model_parameter_matches_finite_differences(kind):
    results = check_model_gradients(kind)
    assert len(results) == 2 * model_kind(kind).n_layers
    for name, error in results:
        assert error < THRESHOLD, name


@pytest.mark.parametrize("kind", kind_names())
def test_check_point_has_active_and_inactive_relus(kind):
    model, X, _ = gradcheck.model_check_point(kind)
    h = X
    for W, b in zip(model.weights, model.biases):
        z = h @ W.T + b
        assert (z > 0).any() and (z < 0).any()
        h = numpy.maximum(z, 0)


def test_numerical_gradient_of_a_known_function():
    x = numpy.array([1.0, -2.0, 0.5])
    grad = gradcheck.numerical_gradient(lambda: float((x ** 3).sum()), x)
    numpy.testing.assert_allclose(grad, 3 * x ** 2, rtol=1e-8)
    numpy.testing.assert_array_equal(x, [1.0, -2.0, 0.5])  # restored
    with pytest.raises(ValueError, match="float64"):
        gradcheck.numerical_gradient(lambda: 0.0, x.astype(numpy.float32))


def test_relative_error_uses_the_floor():
    assert gradcheck.max_relative_error(numpy.zeros(3), numpy.zeros(3)) == 0.0
    assert gradcheck.max_relative_error(numpy.array([2.0]), numpy.array([1.0])) == pytest.approx(1 / 3)


@pytest.mark.parametrize("mistake", ["half", "transpose", "no-mask", "sign"])
def test_checker_catches_planted_mistakes(monkeypatch, mistake):
    correct = layers.dense_relu_backward

    def wrong(da, cache, **kwargs):
        if mistake == "no-mask":  # forget δz = δa ⊙ g'(z)
            x, W, a = cache
            return da @ W if kwargs.get("need_dx", True) else None, da.T @ x, da.sum(axis=0)
        dx, dW, db = correct(da, cache, **kwargs)
        if mistake == "half":
            dW = dW / 2
        elif mistake == "transpose":
            dW = dW.T.copy()
        elif mistake == "sign":
            dW = -dW
        return dx, dW, db

    import nca_np.models
    monkeypatch.setattr(nca_np.models, "dense_relu_backward", wrong)
    errors = dict(check_model_gradients("dae"))
    assert max(errors["dae W_1"], errors["dae W_2"]) > 100 * THRESHOLD


def test_checker_catches_a_missing_factor_of_two_in_the_loss(monkeypatch):
    import nca_np.models
    monkeypatch.setattr(nca_np.models, "mse_backward", lambda cache: cache[0] / cache[1])
    errors = dict(check_model_gradients("sf"))
    assert errors["sf W_2"] == pytest.approx(1 / 3, rel=1e-3)


@pytest.mark.parametrize("kind", kind_names())
def test_checks_run_on_a_device_module(kind):
    from strict_xp import strict
    assert max(e for _, e in check_layer_pairs(module=strict)) < THRESHOLD
    assert max(e for _, e in check_model_gradients(kind, module=strict)) < THRESHOLD


def test_fairness_needs_both_signs_and_a_margin():
    assert gradcheck.is_fair(numpy.array([-1.0, 0.5]))
    assert not gradcheck.is_fair(numpy.array([1.0, 0.5]))  # one sign only: the sign is never exercised
    assert not gradcheck.is_fair(numpy.array([-1.0, 0.5 * gradcheck.MARGIN]))  # too close to a kink


@pytest.mark.parametrize("composition", ["paper", "authors-code"])
def test_fair_chain_check_points_are_fair_and_seeded(composition):
    point = gradcheck.fair_chain_check_point(4, composition)
    again = gradcheck.fair_chain_check_point(4, composition)
    assert gradcheck.chain_is_fair(*point, composition)
    for first, second in zip(point[2], again[2]):
        numpy.testing.assert_array_equal(first, second)
    with pytest.raises(ValueError, match="at least one"):
        gradcheck.fair_chain_check_point(2, composition, tries=0)


def test_nca_checks_run_on_a_device_module():
    from strict_xp import strict
    student = gradcheck.check_student_gradient(module=strict)
    chain = gradcheck.check_compositional_gradients(2, "authors-code", module=strict)
    assert student.fair and chain.fair
    assert max(e for _, e in student.errors + chain.errors) < gradcheck.NCA_THRESHOLD
    written = gradcheck.compare_with_textbook("paper", module=strict) + gradcheck.compare_student_with_textbook(
        module=strict)
    assert max(e for _, e in written) < gradcheck.TEXTBOOK_THRESHOLD


@pytest.fixture
def restored_strategies():
    """The strategy registry as it was, whatever a test registers."""
    before = dict(nca.STRATEGIES)
    yield nca.STRATEGIES
    nca.STRATEGIES.clear()
    nca.STRATEGIES.update(before)


@pytest.mark.parametrize("strategy", nca.strategy_names())
def test_every_registered_strategy_matches_finite_differences(strategy):
    checks = gradcheck.check_strategy_gradients(strategy)
    assert checks, f"{strategy} declares no gradient check points"
    for check in checks:
        assert check.fair, check.label
        assert [name for name, _ in check.errors] and all(name.startswith("d") for name, _ in check.errors)
        for name, error in check.errors:
            assert error < gradcheck.NCA_THRESHOLD, f"{check.label} {name}"


def _sign_flipped(start):
    """A strategy start whose gradients have the wrong sign (its loss is right)."""
    def flipped(model, X, V, initial, composition):
        fitting = start(model, X, V, initial, composition)
        correct = fitting.loss_and_grads

        def loss_and_grads():
            loss, grads = correct()
            return loss, [-grad for grad in grads]

        fitting.loss_and_grads = loss_and_grads
        return fitting
    return flipped


@pytest.mark.parametrize("base", nca.strategy_names())
def test_a_registered_strategy_with_a_wrong_gradient_fails_the_check(restored_strategies, base):
    declared = nca.get_strategy(base)
    nca.register_strategy(dataclasses.replace(declared, name=f"{base}-flipped", start=_sign_flipped(declared.start)))
    assert f"{base}-flipped" in nca.strategy_names()
    checks = gradcheck.check_strategy_gradients(f"{base}-flipped")
    assert len(checks) == len(gradcheck.check_strategy_gradients(base))
    for check in checks:
        assert all(error > 0.5 for _, error in check.errors), check  # a sign error gives 1
    rows = gradcheck_script.all_checks()
    failing = [row[0] for row in rows if not row[3]]
    assert failing and all(what.startswith(tuple(c.label for c in checks)) for what in failing)


def test_the_registry_is_restored_after_a_test_registers_a_strategy():
    assert not any(name.endswith("-flipped") for name in nca.strategy_names())
