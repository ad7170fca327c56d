"""The fused dense+ReLU layer that training runs, against its textbook
form: :func:`layers.dense_forward` then :func:`layers.relu_forward`, and
back through :func:`layers.relu_backward` then :func:`layers.dense_backward`
(docs/gradients.md §2–§4). A planted mistake in the fused form fails the
comparison."""

import numpy
import pytest

from nca_np import backend, layers


def layer_point(seed=0, batch=6, n_in=7, n_out=5):
    """Float64 ``x``, ``W``, ``b`` and an upstream gradient ``da``; about half
    the pre-activations are negative, so the ReLU gate matters."""
    rng = backend.rng(seed)
    return (rng.normal(size=(batch, n_in)), rng.normal(size=(n_out, n_in)), rng.normal(size=n_out),
            rng.normal(size=(batch, n_out)))


def composed(x, W, b, da):
    """The textbook form: ``(a, dx, dW, db)`` from the plain pairs."""
    z, dense_cache = layers.dense_forward(x, W, b)
    a, relu_cache = layers.relu_forward(z)
    dz = layers.relu_backward(da, relu_cache)
    dx, dW, db = layers.dense_backward(dz, dense_cache)
    return a, dx, dW, db


def fused(x, W, b, da, **backward_options):
    """The fused form, ``(a, dx, dW, db)``; ``da`` is copied (the fused
    backward overwrites it)."""
    a, cache = layers.dense_relu_forward(x, W, b)
    dx, dW, db = layers.dense_relu_backward(da.copy(), cache, **backward_options)
    return a, dx, dW, db


def largest_difference(x, W, b, da):
    """Max absolute difference between the fused and the composed outputs."""
    return max(float(numpy.max(numpy.abs(f - c))) for f, c in zip(fused(x, W, b, da), composed(x, W, b, da)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fused_layer_equals_the_composed_pairs(seed):
    x, W, b, da = layer_point(seed)
    z, _ = layers.dense_forward(x, W, b)
    assert (z > 0).any() and (z < 0).any()
    for got, want in zip(fused(x, W, b, da), composed(x, W, b, da)):
        numpy.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_fused_backward_options_give_the_same_numbers():
    x, W, b, da = layer_point(3)
    _, _, dW_ref, db_ref = composed(x, W, b, da)
    dW_out, db_out = numpy.empty_like(W), numpy.empty_like(b)
    _, dx, dW, db = fused(x, W, b, da, need_dx=False, dW_out=dW_out, db_out=db_out)
    assert dx is None and dW is dW_out and db is db_out
    numpy.testing.assert_allclose(dW, dW_ref, rtol=1e-12, atol=1e-12)
    numpy.testing.assert_allclose(db, db_ref, rtol=1e-12, atol=1e-12)


def test_inputs_other_than_da_are_untouched():
    x, W, b, da = layer_point(4)
    before = [x.copy(), W.copy(), b.copy()]
    fused(x, W, b, da)
    for old, new in zip(before, (x, W, b)):
        numpy.testing.assert_array_equal(old, new)


def _forgotten_bias(x, W, b):
    a = x @ W.T
    numpy.maximum(a, 0, out=a)
    return a, (x, W, a)


def _gate_always_open(da, cache, **options):
    x, W, a = cache
    dz = da * (a >= 0)  # a = g(z) ≥ 0 everywhere: the gate 1[z > 0] is lost
    return dz @ W, dz.T @ x, dz.sum(axis=0)


def _input_gradient_before_the_gate(da, cache, **options):
    x, W, a = cache
    dx = da @ W  # δa W instead of δz W
    dz = da * (a > 0)
    return dx, dz.T @ x, dz.sum(axis=0)


_correct_backward = layers.dense_relu_backward


def _bias_gradient_not_summed(da, cache, **options):
    dx, dW, db = _correct_backward(da, cache, **options)
    return dx, dW, db / da.shape[0]


@pytest.mark.parametrize(("name", "planted"), [
    ("dense_relu_forward", _forgotten_bias),
    ("dense_relu_backward", _gate_always_open),
    ("dense_relu_backward", _input_gradient_before_the_gate),
    ("dense_relu_backward", _bias_gradient_not_summed),
], ids=["bias forgotten", "ReLU gate lost", "δx before the gate", "mean instead of sum for δb"])
def test_a_planted_mistake_in_the_fused_form_fails_the_comparison(monkeypatch, name, planted):
    x, W, b, da = layer_point(5)
    assert largest_difference(x, W, b, da) < 1e-12
    monkeypatch.setattr(layers, name, planted)
    assert largest_difference(x, W, b, da) > 1e-3
