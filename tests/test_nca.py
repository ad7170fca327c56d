"""Tests of the neural couplings algorithm (nca_np.nca, MATH.md §4).

Gradient checks run in float64 at points where the loss is linear in a
neighbourhood much wider than the finite-difference step: every entry of
``C X − V`` and of every ``Z_l`` is at least ``MARGIN`` away from zero (the
kinks of |·| and of the ReLU), while both signs occur, so the sign and the
gate of the gradient are really exercised.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys

import numpy
import pytest

from nca_np import backend, nca
from nca_np.gradcheck import max_relative_error, numerical_gradient
from nca_np.models import build_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Pass threshold of the L1 gradient checks. E sums F·T absolute values, so
#: float64 rounding over the 2h of a central difference is ~1e-8 absolute,
#: i.e. up to ~1e-5 relative on the smallest gradient entries; the mistakes
#: the check must catch (a factor 2, a sign, a transpose) give 0.3 to 1.
THRESHOLD = 1e-4
#: Smallest distance of any entry of C X − V or Z_l from zero at a check point.
MARGIN = 1e-3


# ------------------------------------------------------------ check points


def pre_activation(W, b, P, composition):
    """Z of Eq. 18 written from MATH.md's definitions, entry by entry for ⊕."""
    F = W.shape[0]
    added = numpy.empty_like(W)
    for j in range(F):
        for i in range(F):
            # "paper": W ⊕ b adds b_j to row j (b added to every column);
            # "authors-code": M adds b_i to column i (PyTorch broadcasting)
            added[j, i] = W[j, i] + (b[j] if composition == "paper" else b[i])
    return P @ added.T if composition == "paper" else added @ P.T


def literal_gated(W, b, P, composition):
    """W̃ = W ⊙ g(Z) (Eq. 19) from the literal Z."""
    return W * numpy.maximum(pre_activation(W, b, P, composition), 0.0)


def literal_compose(weights, biases, Ps, composition):
    """C = W̃_L ⋯ W̃_1 (Eq. 17), W̃_1 rightmost."""
    gated = [literal_gated(W, b, P, composition) for W, b, P in zip(weights, biases, Ps)]
    return functools.reduce(lambda C, W_tilde: W_tilde @ C, gated[1:], gated[0])


def chain_point(depth, composition, *, seed=0, n_freq=8, n_frames=5):
    """A float64 check point (weights, biases, Ps, X, V) of a depth-L chain.

    W ~ N(0, 4/F) keeps the chain's scale about constant with depth; V is
    C X plus noise of its own size, so C X − V has both signs.
    """
    rng = backend.rng(seed)
    F, T = n_freq, n_frames
    weights = [rng.normal(0.0, 2.0 / F**0.5, (F, F)) for _ in range(depth)]
    biases = [rng.normal(0.0, 0.3, F) for _ in range(depth)]
    Ps = [rng.normal(0.0, 1.0 / F**0.5, (F, F)) for _ in range(depth)]
    X = rng.uniform(0.1, 2.0, (F, T))  # magnitudes: non-negative
    CX = literal_compose(weights, biases, Ps, composition) @ X
    V = CX + rng.normal(0.0, float(CX.std()), (F, T))
    return weights, biases, Ps, X, V


def is_fair(array):
    """Both signs present and every entry at least MARGIN from zero."""
    return bool((array < 0).any() and (array > 0).any() and numpy.abs(array).min() > MARGIN)


def fair_chain_point(depth, composition):
    """The first seed's :func:`chain_point` at which every Z_l and C X − V is fair."""
    for seed in range(50):
        point = chain_point(depth, composition, seed=seed)
        weights, biases, Ps, X, V = point
        Zs = [pre_activation(W, b, P, composition) for W, b, P in zip(weights, biases, Ps)]
        if all(map(is_fair, Zs)) and is_fair(literal_compose(weights, biases, Ps, composition) @ X - V):
            return point
    raise AssertionError(f"no fair check point for depth {depth}, {composition}")


def assert_both_signs_away_from_zero(array, what):
    assert (array < 0).any() and (array > 0).any(), f"{what} must have entries of both signs"
    assert numpy.abs(array).min() > MARGIN, f"{what} has an entry within {MARGIN} of a kink"


def assert_check_point_is_fair(weights, biases, Ps, X, V, composition):
    for layer, (W, b, P) in enumerate(zip(weights, biases, Ps), start=1):
        assert_both_signs_away_from_zero(pre_activation(W, b, P, composition), f"Z_{layer}")
    C = literal_compose(weights, biases, Ps, composition)
    assert_both_signs_away_from_zero(C @ X - V, "C X − V")


def numeric_P_gradients(weights, biases, Ps, X, V, composition):
    def loss():
        return float(nca.compositional_loss_and_grads(weights, biases, Ps, X, V, composition=composition)[0])

    return [numerical_gradient(loss, P) for P in Ps]


# ------------------------------------------------------------ student


def test_student_loss_and_gradient_match_eqs_15_16_and_finite_differences():
    rng = backend.rng(3)
    F, T = 7, 6
    C = rng.normal(0.0, 0.5, (F, F))
    X = rng.uniform(0.1, 2.0, (F, T))
    V = C @ X + rng.normal(0.0, 1.0, (F, T))
    assert_both_signs_away_from_zero(C @ X - V, "C X − V")

    E, dC = nca.student_loss_and_grad(C, X, V)

    assert float(E) == pytest.approx(numpy.abs(V - C @ X).sum(), rel=1e-14)
    numpy.testing.assert_allclose(dC, numpy.sign(C @ X - V) @ X.T, rtol=1e-14)
    numeric = numerical_gradient(lambda: float(nca.student_loss_and_grad(C, X, V)[0]), C)
    assert max_relative_error(dC, numeric) < THRESHOLD


def test_student_sign_of_zero_residual_is_zero():
    C = numpy.eye(3)
    X = numpy.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    V = X.copy()
    V[0, 0] += 1.0  # one residual entry non-zero, the rest exactly zero

    E, dC = nca.student_loss_and_grad(C, X, V)

    assert float(E) == 1.0
    expected = numpy.zeros((3, 3))
    expected[0] = -X[:, 0]  # sign(C X − V) is −1 at (0, 0), 0 elsewhere
    numpy.testing.assert_array_equal(dC, expected)


# ------------------------------------------------------------ compositional


@pytest.mark.parametrize("composition", nca.COMPOSITIONS)
@pytest.mark.parametrize("depth", [2, 4])
def test_compositional_gradients_match_finite_differences(depth, composition):
    point = fair_chain_point(depth, composition)
    assert_check_point_is_fair(*point, composition)

    _, dPs = nca.compositional_loss_and_grads(*point, composition=composition)
    numeric = numeric_P_gradients(*point, composition)

    errors = [max_relative_error(a, n) for a, n in zip(dPs, numeric)]
    assert max(errors) < THRESHOLD, f"relative errors per layer: {errors}"


@pytest.mark.parametrize(
    "mistake",
    [
        pytest.param(lambda dZ, A: (dZ @ A).T, id="transposed dP"),
        pytest.param(lambda dZ, A: dZ.T @ A, id="other reading's dP"),
        pytest.param(lambda dZ, A: 2.0 * (dZ @ A), id="extra factor 2"),
        pytest.param(lambda dZ, A: -(dZ @ A), id="flipped sign"),
    ],
)
def test_planted_gradient_mistakes_fail_the_check(monkeypatch, mistake):
    point = fair_chain_point(2, "paper")
    numeric = numeric_P_gradients(*point, "paper")  # before planting

    def planted(dZ, augmented, composition, *, out):
        out[...] = mistake(dZ, augmented)
        return out

    monkeypatch.setattr(nca, "_p_gradient", planted)
    _, wrong = nca.compositional_loss_and_grads(*point, composition="paper")

    assert max(max_relative_error(a, n) for a, n in zip(wrong, numeric)) > 0.3


def test_missing_relu_gate_fails_the_check(monkeypatch):
    point = fair_chain_point(2, "paper")
    numeric = numeric_P_gradients(*point, "paper")
    original = nca._gated_weights

    def ungated(W, P, augmented, composition, *, gated_out, slope_out):
        gated, _ = original(W, P, augmented, composition, gated_out=gated_out, slope_out=slope_out)
        slope_out[...] = W  # slope W instead of W ⊙ g'(Z): the ReLU gate forgotten
        return gated, slope_out

    monkeypatch.setattr(nca, "_gated_weights", ungated)
    _, wrong = nca.compositional_loss_and_grads(*point, composition="paper")

    assert max(max_relative_error(a, n) for a, n in zip(wrong, numeric)) > 0.3


@pytest.mark.parametrize("composition", nca.COMPOSITIONS)
def test_two_layer_gradients_equal_eqs_20_21_as_written(composition):
    (W_enc, W_dec), (b_enc, b_dec), (P_enc, P_dec), X, V = chain_point(2, composition, seed=5)
    Z_enc = pre_activation(W_enc, b_enc, P_enc, composition)
    Z_dec = pre_activation(W_dec, b_dec, P_dec, composition)
    W_enc_t = W_enc * numpy.maximum(Z_enc, 0.0)
    W_dec_t = W_dec * numpy.maximum(Z_dec, 0.0)
    Delta = numpy.sign(W_dec_t @ W_enc_t @ X - V) @ X.T
    dZ_dec = (Delta @ W_enc_t.T) * W_dec * (Z_dec > 0)  # Eq. 20, inner bracket
    dZ_enc = (W_dec_t.T @ Delta) * W_enc * (Z_enc > 0)  # Eq. 21, inner bracket
    if composition == "paper":
        dP_dec = dZ_dec @ (W_dec + b_dec[:, None])  # (W ⊕ b) = W + b 1ᵀ
        dP_enc = dZ_enc @ (W_enc + b_enc[:, None])
    else:
        dP_dec = dZ_dec.T @ (W_dec + b_dec[None, :])  # dZᵀ M, M = W + 1 bᵀ
        dP_enc = dZ_enc.T @ (W_enc + b_enc[None, :])

    E, (got_enc, got_dec) = nca.compositional_loss_and_grads(
        [W_enc, W_dec], [b_enc, b_dec], [P_enc, P_dec], X, V, composition=composition)

    assert float(E) == pytest.approx(numpy.abs(V - W_dec_t @ W_enc_t @ X).sum(), rel=1e-13)
    numpy.testing.assert_allclose(got_dec, dP_dec, rtol=1e-12, atol=1e-12)
    numpy.testing.assert_allclose(got_enc, dP_enc, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("composition", nca.COMPOSITIONS)
@pytest.mark.parametrize("depth", [1, 2, 4])
def test_compose_matches_the_literal_definitions_and_the_loss(depth, composition):
    weights, biases, Ps, X, V = chain_point(depth, composition, seed=11)

    C = nca.compose(weights, biases, Ps, composition=composition)
    E, _ = nca.compositional_loss_and_grads(weights, biases, Ps, X, V, composition=composition)

    numpy.testing.assert_allclose(C, literal_compose(weights, biases, Ps, composition), rtol=1e-12, atol=1e-13)
    assert float(E) == pytest.approx(numpy.abs(V - C @ X).sum(), rel=1e-12)


def test_the_two_readings_differ():
    weights, biases, Ps, _, _ = chain_point(2, "paper", seed=1)
    paper = nca.compose(weights, biases, Ps, composition="paper")
    authors = nca.compose(weights, biases, Ps, composition="authors-code")
    assert numpy.abs(paper - authors).max() > 0.1


def test_float32_stays_float32_and_inputs_are_untouched():
    weights, biases, Ps, X, V = chain_point(3, "paper", seed=4)
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
    weights, biases, Ps, X, V = chain_point(2, "paper", seed=0)

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
    C0 = nca._glorot_couplings(6, backend.rng(9), numpy.float64, numpy)
    V = model.decoder_output(X.T).T
    assert fit.losses[0] == pytest.approx(numpy.abs(V - C0 @ X).sum(), rel=1e-14)


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


def test_gradcheck_script_passes():
    done = run_script(os.path.join("scripts", "gradcheck.py"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "FAIL" not in done.stdout
    assert "compositional paper L=4" in done.stdout and "student dC" in done.stdout


@pytest.mark.parametrize("strategy", ["student", "compositional"])
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
