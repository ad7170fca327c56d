"""A couplings fit whose loss turns NaN or infinite stops at the checkpoint
that finds it and says so (``diverged``), with no warning printed and no
exception; the measures of its ``C`` are numbers (nca_np.metrics is total)."""

import math
import warnings

import numpy
import pytest

from nca_np import metrics
from nca_np.models import build_model
from nca_np.nca import fit_couplings


def _segment(n_freq=17, frames=40):
    return numpy.abs(numpy.random.default_rng(0).standard_normal((n_freq, frames))).astype(numpy.float32)


@pytest.mark.parametrize("strategy", ["student", "compositional"])
def test_a_fit_whose_loss_overflows_stops_as_diverged(strategy):
    model = build_model("mss-dae", 17, seed=1)
    X = _segment()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing printed on the way
        fit = fit_couplings(model, X, strategy, lr=1e36, iterations=200, checkpoint_every=5)
    assert fit.diverged and fit.stopped == "diverged" and not fit.converged
    assert fit.iterations == 5  # the first checkpoint after the overflow ends it
    assert not math.isfinite(fit.trajectory[-1]["relative_error"])
    diagnostics = fit.diagnostics()
    assert diagnostics["diverged"] is True and diagnostics["stopped"] == "diverged"
    V = model.decoder_output(X.T).T
    estimate = metrics.reconstruct("mss-dae", fit.C, X)
    assert isinstance(metrics.snr_db(V, estimate), float)
    assert isinstance(metrics.tod_r(fit.C), float)


def test_an_ordinary_fit_is_not_diverged():
    fit = fit_couplings(build_model("dae", 17, seed=1), _segment(), "student", lr=1e-2, iterations=20,
                        checkpoint_every=5)
    assert not fit.diverged and fit.stopped == "iterations" and fit.iterations == 20
    assert fit.diagnostics()["diverged"] is False
    assert math.isfinite(fit.relative_error)


def test_a_dead_model_is_not_mistaken_for_a_diverged_fit():
    """A dead network outputs zeros: V = 0, the relative error is NaN by
    definition, and the fit is not called diverged for it."""
    model = build_model("dae", 17, seed=1)
    for bias in model.biases:
        bias[...] = -1e3
    fit = fit_couplings(model, _segment(), "student", lr=1e-2, iterations=10, checkpoint_every=5)
    assert not fit.diverged and fit.iterations == 10
