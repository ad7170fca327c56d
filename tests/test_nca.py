"""Tests of the neural couplings algorithm (nca_np.nca, docs/method.md#nca).

The gradient checks live in :mod:`nca_np.gradcheck`: float64 central
differences at check points where every entry of ``C X − V`` and of every
``Z_l`` lies at least ``gradcheck.MARGIN`` from its kink while both signs
occur, so that the sign and the ReLU gate of the gradient are exercised.
The equations as the paper writes them (:mod:`nca_np.nca_textbook`) are the
oracles of the fast forms.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy
import pytest

from nca_np import backend, gradcheck, metrics, nca, nca_textbook
from nca_np.couplings import InitialDraws
from nca_np.gradcheck import NCA_THRESHOLD, TEXTBOOK_THRESHOLD, chain_check_point
from nca_np.models import build_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def largest(errors):
    """The largest error of ``[(name, error), …]``."""
    return max(error for _, error in errors)


# ------------------------------------------------------------ student


def test_student_loss_and_gradient_match_eqs_15_16_and_finite_differences():
    check = gradcheck.check_student_gradient()
    assert check.fair
    assert largest(check.errors) < NCA_THRESHOLD

    C, X, V = gradcheck.student_check_point()
    E, dC = nca.student_loss_and_grad(C, X, V)
    E_written, dC_written = nca_textbook.student_loss_and_gradient(C, X, V)
    assert float(E) == pytest.approx(E_written, rel=1e-14)
    numpy.testing.assert_allclose(dC, dC_written, rtol=1e-14)
    assert largest(gradcheck.compare_student_with_textbook()) < TEXTBOOK_THRESHOLD


def test_student_sign_of_zero_residual_is_zero():
    C = numpy.eye(3)
    X = numpy.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    V = X.copy()
    V[0, 0] += 1.0  # one residual entry non-zero, the rest exactly zero
    expected = numpy.zeros((3, 3))
    expected[0] = -X[:, 0]  # sign(C X − V) is −1 at (0, 0), 0 elsewhere

    for E, dC in (nca.student_loss_and_grad(C, X, V), nca_textbook.student_loss_and_gradient(C, X, V)):
        assert float(E) == 1.0
        numpy.testing.assert_array_equal(dC, expected)


# ------------------------------------------------------------ compositional


@pytest.mark.parametrize("composition", nca.COMPOSITIONS)
@pytest.mark.parametrize("depth", [2, 4])
def test_compositional_gradients_match_finite_differences(depth, composition):
    check = gradcheck.check_compositional_gradients(depth, composition)
    assert check.fair
    assert [name for name, _ in check.errors] == [f"dP_{layer}" for layer in range(1, depth + 1)]
    assert largest(check.errors) < NCA_THRESHOLD, check.errors


@pytest.mark.parametrize("composition", nca.COMPOSITIONS)
def test_two_layer_gradients_equal_eqs_20_21_as_written(composition):
    assert largest(gradcheck.compare_with_textbook(composition)) < TEXTBOOK_THRESHOLD


@pytest.mark.parametrize("composition", nca.COMPOSITIONS)
def test_eqs_20_21_as_written_match_finite_differences(composition):
    """The oracle is checked on its own, so that it cannot share a mistake with the fast form."""
    def written(weights, biases, Ps, X, V, *, composition):
        return nca_textbook.eq20_eq21_gradients(weights, biases, Ps, X, V, composition)

    check = gradcheck.check_compositional_gradients(2, composition, loss_and_grads=written)
    assert check.fair and largest(check.errors) < NCA_THRESHOLD


def with_mistake_in_every_dP(mistake):
    """:func:`nca.compositional_loss_and_grads` with ``mistake`` applied to each ``∂E/∂P_l``."""
    def loss_and_grads(*point, composition):
        E, dPs = nca.compositional_loss_and_grads(*point, composition=composition)
        return E, [mistake(dP) for dP in dPs]
    return loss_and_grads


def eqs_20_21_with_mistake(mistake):
    """Eqs. 20–21 with one planted mistake: "gate forgotten" drops
    ``g'(Z)`` from the brackets, "other reading" multiplies the bracket of
    the paper's reading the authors'-code way, ``[·]ᵀ (W ⊕ b)``."""
    def loss_and_grads(weights, biases, Ps, X, V, *, composition):
        Zs = [nca_textbook.pre_activation(W, b, P, composition) for W, b, P in zip(weights, biases, Ps)]
        (W_enc, W_dec), (Z_enc, Z_dec) = weights, Zs
        W_enc_t, W_dec_t = W_enc * numpy.maximum(Z_enc, 0.0), W_dec * numpy.maximum(Z_dec, 0.0)
        residual = W_dec_t @ W_enc_t @ X - V
        Delta = numpy.sign(residual) @ X.T
        gate_enc, gate_dec = (1.0, 1.0) if mistake == "gate forgotten" else (Z_enc > 0, Z_dec > 0)
        brackets = [(W_dec_t.T @ Delta) * W_enc * gate_enc, (Delta @ W_enc_t.T) * W_dec * gate_dec]
        augmented = [nca_textbook.augmented_weights(W, b, composition) for W, b in zip(weights, biases)]
        if mistake == "other reading":
            brackets = [bracket.T for bracket in brackets]
        return float(numpy.abs(residual).sum()), [bracket @ A for bracket, A in zip(brackets, augmented)]
    return loss_and_grads


PLANTED = {
    "transposed dP": with_mistake_in_every_dP(lambda dP: dP.T.copy()),
    "extra factor 2": with_mistake_in_every_dP(lambda dP: 2.0 * dP),
    "flipped sign": with_mistake_in_every_dP(lambda dP: -dP),
    "ReLU gate forgotten": eqs_20_21_with_mistake("gate forgotten"),
    "other reading's dP": eqs_20_21_with_mistake("other reading"),
}


@pytest.mark.parametrize("mistake", PLANTED)
def test_planted_gradient_mistakes_fail_both_checks(mistake):
    wrong = PLANTED[mistake]
    check = gradcheck.check_compositional_gradients(2, "paper", loss_and_grads=wrong)
    assert check.fair and largest(check.errors) > 0.3
    assert largest(gradcheck.compare_with_textbook("paper", loss_and_grads=wrong)) > 0.3


def test_augment_is_the_entrywise_definition():
    W, b = chain_check_point(1, "paper", seed=2)[:2]
    for composition in nca.COMPOSITIONS:
        numpy.testing.assert_array_equal(nca.augment(W[0], b[0], composition),
                                         nca_textbook.augmented_weights(W[0], b[0], composition))


@pytest.mark.parametrize("composition", nca.COMPOSITIONS)
@pytest.mark.parametrize("depth", [1, 2, 4])
def test_compose_matches_the_literal_definitions_and_the_loss(depth, composition):
    weights, biases, Ps, X, V = chain_check_point(depth, composition, seed=11)

    C = nca.compose(weights, biases, Ps, composition=composition)
    E, _ = nca.compositional_loss_and_grads(weights, biases, Ps, X, V, composition=composition)

    numpy.testing.assert_allclose(C, nca_textbook.compose(weights, biases, Ps, composition), rtol=1e-12, atol=1e-13)
    assert float(E) == pytest.approx(numpy.abs(V - C @ X).sum(), rel=1e-12)


def test_the_two_readings_differ():
    weights, biases, Ps, _, _ = chain_check_point(2, "paper", seed=1)
    paper = nca.compose(weights, biases, Ps, composition="paper")
    authors = nca.compose(weights, biases, Ps, composition="authors-code")
    assert numpy.abs(paper - authors).max() > 0.1


def test_float32_stays_float32_and_inputs_are_untouched():
    weights, biases, Ps, X, V = chain_check_point(3, "paper", seed=4)
    weights, biases, Ps = ([a.astype(numpy.float32) for a in arrays] for arrays in (weights, biases, Ps))
    X, V = X.astype(numpy.float32), V.astype(numpy.float32)
    before = [a.copy() for a in [*weights, *biases, *Ps, X, V]]

    E, dPs = nca.compositional_loss_and_grads(weights, biases, Ps, X, V)
    E_student, dC = nca.student_loss_and_grad(Ps[0], X, V)

    assert E.dtype == numpy.float32 and E_student.dtype == numpy.float32 and dC.dtype == numpy.float32
    assert all(dP.dtype == numpy.float32 for dP in dPs)
    assert nca.compose(weights, biases, Ps).dtype == numpy.float32
    for old, new in zip(before, [*weights, *biases, *Ps, X, V]):
        numpy.testing.assert_array_equal(old, new)


# ------------------------------------------------------------ input errors


def test_bad_inputs_raise_clear_errors():
    weights, biases, Ps, X, V = chain_check_point(2, "paper", seed=0)

    with pytest.raises(ValueError, match=r"composition 'pytorch'"):
        nca.compositional_loss_and_grads(weights, biases, Ps, X, V, composition="pytorch")
    with pytest.raises(ValueError, match=r"X has shape \(9, 5\).*\(8, T\)"):
        nca.compositional_loss_and_grads(weights, biases, Ps, numpy.ones((9, 5)), V)
    with pytest.raises(ValueError, match=r"V has shape \(8, 4\) but X has shape \(8, 5\)"):
        nca.compositional_loss_and_grads(weights, biases, Ps, X, V[:, :4])
    with pytest.raises(ValueError, match=r"layer 2 has weights of shape \(8, 6\), not \(8, 8\).*square"):
        nca.compositional_loss_and_grads([weights[0], weights[1][:, :6]], biases, Ps, X, V)
    with pytest.raises(ValueError, match=r"2 layers but 1 matrices P"):
        nca.compose(weights, biases, Ps[:1])
    with pytest.raises(ValueError, match=r"mixed dtypes.*X: float32"):
        nca.compositional_loss_and_grads(weights, biases, Ps, X.astype(numpy.float32), V)
    with pytest.raises(ValueError, match=r"C has shape \(8, 5\).*square"):
        nca.student_loss_and_grad(numpy.ones((8, 5)), X, V)


# ------------------------------------------------------------ baselines


def test_linear_composition_is_the_product_of_the_weights_decoder_last():
    model = build_model("mss-dae", 5, seed=2, dtype=numpy.float64, module=numpy)
    W1, W2, W3, W4 = model.weights
    numpy.testing.assert_allclose(nca.linear_composition(model), W4 @ W3 @ W2 @ W1, rtol=1e-13)


def test_identity_couplings_takes_module_and_dtype_from_like():
    identity = nca.identity_couplings(4, like=numpy.zeros(1, dtype=numpy.float64))
    numpy.testing.assert_array_equal(identity, numpy.eye(4))
    assert identity.dtype == numpy.float64
    assert nca.identity_couplings(3).dtype == numpy.float32


# ------------------------------------------------------------ fit_couplings


class LinearTarget:
    """A stand-in model whose decoder output is exactly ``C* x`` (one layer)."""

    def __init__(self, C_star):
        self.weights = [C_star]
        self.biases = [numpy.zeros(C_star.shape[0], dtype=C_star.dtype)]

    def decoder_output(self, X_rows):
        return X_rows @ self.weights[0].T


def test_student_recovers_a_linear_target():
    rng = backend.rng(7)
    F, T = 8, 40
    C_star = rng.normal(0.0, 0.5, (F, F))
    X = rng.uniform(0.0, 1.0, (F, T))
    assert numpy.linalg.matrix_rank(X) == F  # so C* is the unique zero of E

    fit = nca.fit_couplings(LinearTarget(C_star), X, "student", iterations=2000, lr=3e-3, seed=0)

    # Adam's constant step leaves an L1 fit dithering around C* at about the
    # step size: 2000 steps of 3e-3 from a Glorot start land within 1.2e-3
    # of C* (entries of size ~0.5) and cut E by 800×.
    assert numpy.abs(fit.C - C_star).max() < 5e-3
    assert fit.losses[-1] < 5e-3 * fit.losses[0]
    assert fit.Ps == [] and fit.strategy == "student"


@pytest.mark.parametrize("strategy", nca.STRATEGIES)
def test_fit_couplings_decreases_the_loss_and_is_reproducible(strategy):
    model = build_model("dae", 12, seed=1)
    X = backend.rng(2).uniform(0.0, 2.0, (12, 20)).astype(numpy.float32)
    calls = []

    fit = nca.fit_couplings(model, X, strategy, iterations=150, lr=1e-2, seed=3,
                            callback=lambda i, loss: calls.append(i))
    again = nca.fit_couplings(model, X, strategy, iterations=150, lr=1e-2, seed=3)
    other = nca.fit_couplings(model, X, strategy, iterations=150, lr=1e-2, seed=4)

    assert fit.losses.shape == (150,) and isinstance(fit.losses, numpy.ndarray)
    assert fit.losses[-10:].mean() < 0.5 * fit.losses[:10].mean()
    assert calls == list(range(150))
    assert fit.C.shape == (12, 12) and fit.C.dtype == numpy.float32
    numpy.testing.assert_array_equal(fit.C, again.C)
    numpy.testing.assert_array_equal(fit.losses, again.losses)
    assert not numpy.array_equal(fit.C, other.C)
    if strategy == "compositional":
        assert len(fit.Ps) == 2
        numpy.testing.assert_array_equal(fit.C, nca.compose(model.weights, model.biases, fit.Ps))
        V = model.decoder_output(X.T).T
        E, _ = nca.compositional_loss_and_grads(model.weights, model.biases, fit.Ps, X, V)
        assert float(E) < fit.losses[-1] * 1.1  # the final C is as good as the last iterate


def test_fit_couplings_losses_are_the_loss_before_each_step():
    model = build_model("sf", 6, seed=0, dtype=numpy.float64, module=numpy)
    X = backend.rng(1).uniform(0.0, 2.0, (6, 4))
    fit = nca.fit_couplings(model, X, "student", iterations=1, seed=9)
    C0 = nca.initial_draws("student", 6, model.n_layers, seed=9)[0]
    V = model.decoder_output(X.T).T
    assert fit.losses[0] == pytest.approx(numpy.abs(V - C0 @ X).sum(), rel=1e-14)


def test_loss_fall_compares_the_last_tenth_with_the_tenth_before():
    losses = numpy.linspace(20.0, 1.0, 20)  # windows of 2 iterations
    before, last = losses[16:18].mean(), losses[18:].mean()
    assert nca.loss_fall(losses) == pytest.approx((before - last) / before, rel=1e-12)
    assert not nca.is_converged(nca.loss_fall(losses))
    dither = 1.0 + 0.1 * (numpy.arange(200) % 2)  # Adam dithering about its minimum: no progress
    assert nca.loss_fall(dither) == 0.0 and nca.is_converged(0.0)
    rising = numpy.linspace(1.0, 3.0, 100)  # a diverging fit is not converged either
    assert nca.loss_fall(rising) < -0.01 and not nca.is_converged(nca.loss_fall(rising))
    assert math.isnan(nca.loss_fall(numpy.array([1.0]))) and not nca.is_converged(math.nan)
    assert nca.loss_fall(numpy.zeros(5)) == 0.0


def linear_problem():
    rng = backend.rng(7)
    F, T = 8, 40
    C_star = rng.normal(0.0, 0.5, (F, F))
    return LinearTarget(C_star), rng.uniform(0.0, 1.0, (F, T))


def test_diagnostics_flag_an_early_stop_as_not_converged():
    model, X = linear_problem()
    fit = nca.fit_couplings(model, X, "student", iterations=60, lr=3e-3, seed=0, checkpoint_every=20)

    V = model.decoder_output(X.T).T
    assert fit.stopped == "iterations" and fit.iterations == 60
    assert not fit.converged and fit.loss_fall > 0.01
    assert fit.relative_error == pytest.approx(numpy.abs(V - fit.C @ X).sum() / numpy.abs(V).sum(), rel=1e-12)
    assert fit.relative_error > 0.05
    assert [r["iteration"] for r in fit.trajectory] == [0, 20, 40, 60]
    assert fit.trajectory[0]["relative_error"] == pytest.approx(fit.losses[0] / numpy.abs(V).sum(), rel=1e-12)
    assert fit.trajectory[1]["relative_error"] == pytest.approx(fit.losses[20] / numpy.abs(V).sum(), rel=1e-12)
    assert fit.trajectory[-1]["tod_r"] == metrics.tod_r(fit.C)
    assert fit.trajectory[0]["tod_r"] == metrics.tod_r(fit.C_initial)
    diagnostics = fit.diagnostics()
    assert diagnostics["converged"] is False and diagnostics["iterations"] == 60


def test_diagnostics_flag_a_fit_run_to_the_tolerance_as_converged():
    model, X = linear_problem()
    fit = nca.fit_couplings(model, X, "student", iterations=60, lr=3e-3, seed=0, checkpoint_every=20,
                            max_iterations=20000, tolerance=0.01)

    assert fit.stopped == "tolerance" and fit.converged
    assert 60 < fit.iterations < 20000 and fit.iterations % 20 == 0
    assert abs(fit.loss_fall) < 0.01
    assert fit.relative_error < 0.01  # and it really is near the answer
    assert numpy.abs(fit.C - model.weights[0]).max() < 0.02
    assert fit.trajectory[-1]["iteration"] == fit.iterations


def test_halving_the_step_when_the_rule_holds_lowers_the_floor():
    model, X = linear_problem()
    plain = nca.fit_couplings(model, X, "student", iterations=200, lr=1e-2, max_iterations=20000,
                              checkpoint_every=20)
    halved = nca.fit_couplings(model, X, "student", iterations=200, lr=1e-2, max_iterations=20000,
                               checkpoint_every=20, halvings=4)

    assert plain.stages == [[0, 1e-2]] and plain.stopped == "tolerance"
    assert [lr for _, lr in halved.stages] == [1e-2, 5e-3, 2.5e-3, 1.25e-3, 6.25e-4]
    starts = [start for start, _ in halved.stages]
    assert all(b - a >= 200 for a, b in zip(starts, starts[1:]))  # each stage at least `iterations` steps
    assert halved.stopped == "tolerance" and halved.converged
    assert halved.relative_error < 0.25 * plain.relative_error


def test_a_fit_that_reaches_its_cap_says_so():
    model, X = linear_problem()
    fit = nca.fit_couplings(model, X, "student", iterations=40, lr=3e-3, max_iterations=100, checkpoint_every=20)
    assert fit.stopped == "cap" and fit.iterations == 100 and not fit.converged


@pytest.mark.parametrize("strategy", nca.STRATEGIES)
@pytest.mark.parametrize("seed", [0, 1, 7])
def test_the_nca_never_starts_from_the_models_initial_weights(strategy, seed):
    F = 16
    model = build_model("dae", F, seed=seed, dtype=numpy.float64, module=numpy)  # untrained: its initial weights
    X = backend.rng(2).uniform(0.0, 2.0, (F, 20))

    fit = nca.fit_couplings(model, X, strategy, iterations=1, seed=seed)
    drawn = nca.initial_draws(strategy, F, model.n_layers, seed)

    for P in drawn:
        for W in model.weights:
            assert abs(numpy.corrcoef(P.ravel(), W.ravel())[0, 1]) < 0.3
    if strategy == "compositional":
        numpy.testing.assert_allclose(fit.C_initial, nca.compose(model.weights, model.biases, drawn), rtol=1e-12)
        same_stream = nca.compose(model.weights, model.biases, model.weights)
        assert numpy.abs(fit.C_initial - same_stream).max() > 0.1
    else:
        numpy.testing.assert_array_equal(fit.C_initial, drawn[0])


@pytest.mark.parametrize("strategy", nca.STRATEGIES)
def test_draws_made_ahead_give_the_same_fit(strategy):
    model = build_model("mss-dae", 10, seed=0)
    X = backend.rng(2).uniform(0.0, 2.0, (10, 12)).astype(numpy.float32)
    drawn = nca.initial_draws(strategy, 10, model.n_layers, seed=5)
    kept = [a.copy() for a in drawn]

    ahead = nca.fit_couplings(model, X, strategy, iterations=30, lr=1e-2, seed=5, initial=drawn)
    now = nca.fit_couplings(model, X, strategy, iterations=30, lr=1e-2, seed=5)

    numpy.testing.assert_array_equal(ahead.C, now.C)
    for a, b in zip(drawn, kept):
        numpy.testing.assert_array_equal(a, b)
    with pytest.raises(nca.CouplingsError, match="needs"):
        nca.fit_couplings(model, X, strategy, initial=drawn[:1] + drawn if strategy == "compositional" else drawn * 2)


def test_the_iteration_loop_reads_nothing_back_between_checkpoints(monkeypatch):
    from strict_xp import StrictArray, strict
    model = build_model("dae", 8, seed=0, module=strict)
    X = backend.to_device(backend.rng(1).uniform(0.0, 2.0, (8, 6)).astype(numpy.float32), strict)
    reads = []
    original = StrictArray.get
    monkeypatch.setattr(StrictArray, "get", lambda self: reads.append(1) or original(self))

    def reads_of(iterations):
        reads.clear()
        for strategy in nca.STRATEGIES:
            nca.fit_couplings(model, X, strategy, iterations=iterations, checkpoint_every=1000)
        return len(reads)

    assert reads_of(5) == reads_of(105) > 0


def test_draws_made_on_a_thread_ahead_are_the_same_numbers():
    requests = [("student", 9, 2, 4), ("compositional", 9, 2, 4), ("compositional", 9, 4, 11)]
    draws = InitialDraws(requests)
    try:
        for request in requests:
            got = draws.take(*request)
            expected = nca.initial_draws(*request)
            assert len(got) == len(expected)
            for a, b in zip(got, expected):
                numpy.testing.assert_array_equal(a, b)
        # a fit nobody announced is drawn on the spot, with the same numbers
        numpy.testing.assert_array_equal(draws.take("student", 9, 2, 99)[0], nca.initial_draws("student", 9, 2, 99)[0])
    finally:
        draws.close()


def test_fit_couplings_rejects_bad_requests():
    model = build_model("dae", 6, seed=0)
    X = numpy.ones((6, 4), dtype=numpy.float32)
    with pytest.raises(ValueError, match=r"strategy 'teacher'"):
        nca.fit_couplings(model, X, "teacher")
    with pytest.raises(ValueError, match=r"X has shape \(5, 4\).*\(6, 6\).*\(6, T\)"):
        nca.fit_couplings(model, numpy.ones((5, 4), dtype=numpy.float32), "student")
    with pytest.raises(ValueError, match=r"composition 'torch'"):
        nca.fit_couplings(model, X, "compositional", composition="torch")

    rng = backend.rng(0)
    bottleneck = build_model("dae", 6, seed=0)
    bottleneck.params[:] = [rng.normal(size=(4, 6)).astype(numpy.float32), numpy.zeros(4, numpy.float32),
                            rng.normal(size=(6, 4)).astype(numpy.float32), numpy.zeros(6, numpy.float32)]
    with pytest.raises(ValueError, match=r"layer 1 has weights of shape \(4, 6\), not \(6, 6\).*square"):
        nca.fit_couplings(bottleneck, X, "compositional", iterations=2)
    fit = nca.fit_couplings(bottleneck, X, "student", iterations=2)  # the student needs no square layers
    assert fit.C.shape == (6, 6)


# ------------------------------------------------------------ scripts


def run_script(*args):
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120, check=False)


def test_bench_script_runs_at_tiny_size():
    done = run_script(os.path.join("scripts", "bench_nca.py"), "--freq", "24", "--frames", "6", "--repeats", "1")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    for case in ("student", "compositional L=2", "compositional L=4"):
        row = next(line for line in lines if line.startswith(case + " "))
        ratio = float(row.split()[-1])
        assert 0.0 < ratio < 100.0


def test_bench_script_takes_device_auto_as_make_bench_passes_it():
    """`make bench ARGS="--device auto"` hands the same options to every bench script."""
    done = run_script(os.path.join("scripts", "bench_nca.py"), "--device", "auto", "--freq", "12", "--frames", "4",
                      "--repeats", "1", "--batch", "8")
    assert done.returncode == 0, done.stderr
    first = done.stdout.splitlines()[0]
    assert first.startswith(("CPU", "GPU")), first  # the device line, before any case
    assert any(line.startswith("student ") for line in done.stdout.splitlines())


def test_gradcheck_script_passes():
    done = run_script(os.path.join("scripts", "gradcheck.py"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "FAIL" not in done.stdout
    assert "compositional paper L=4" in done.stdout and "student dC" in done.stdout
    assert "compositional authors-code L=2 vs textbook dP_enc (Eq. 21)" in done.stdout


@pytest.mark.parametrize("strategy", nca.STRATEGIES)
def test_fit_couplings_runs_on_a_device_module(strategy):
    """No implicit host conversion anywhere in Algorithm 1 or the measures."""
    from strict_xp import strict
    from nca_np.metrics import reconstruct, snr_db, tod_r

    X = backend.rng(0).uniform(0.0, 1.0, size=(6, 9)).astype(numpy.float32)
    host = nca.fit_couplings(build_model("sf", 6, seed=1), X, strategy, iterations=5, lr=1e-2, seed=2)
    model = build_model("sf", 6, seed=1, module=strict)
    device = nca.fit_couplings(model, backend.to_device(X, strict), strategy, iterations=5, lr=1e-2, seed=2)
    numpy.testing.assert_allclose(device.losses, host.losses, rtol=1e-5)
    numpy.testing.assert_allclose(backend.to_host(device.C), host.C, rtol=1e-4, atol=1e-6)
    X_device = backend.to_device(X, strict)
    estimate = reconstruct("sf", device.C, X_device)
    assert tod_r(device.C) == pytest.approx(tod_r(host.C), rel=1e-4)
    assert snr_db(model.predict(X_device.T).T, estimate) == pytest.approx(
        snr_db(build_model("sf", 6, seed=1).predict(X.T).T, reconstruct("sf", host.C, X)), rel=1e-4)
