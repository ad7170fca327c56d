"""Finite-difference gradient checks: central differences in float64,
relative error with a floor.

The relative error of an analytic gradient ``a`` against the numerical
``n`` is ``max_i |a_i − n_i| / max(|a_i| + |n_i|, floor)``. Central
differences in float64 with ``h = 1e-6`` agree with a correct gradient to
about 1e-8; a missing factor of 2 gives 1/3, a sign error 1, a transposed
weight O(1). :data:`THRESHOLD` sits far between the two.
"""

from __future__ import annotations

import numpy

from . import backend
from .layers import (
    dense_backward,
    dense_forward,
    dense_relu_backward,
    dense_relu_forward,
    mask_backward,
    mask_forward,
    mse_backward,
    mse_forward,
    relu_backward,
    relu_forward,
)
from .models import build_model

#: Default pass/fail threshold on the relative error.
THRESHOLD = 1e-5


def numerical_gradient(f, x, *, h=1e-6) -> numpy.ndarray:
    """Central differences ``(f(x + h e_i) − f(x − h e_i)) / 2h`` for every i.

    Args:
        f: callable with no arguments returning a float; it must read ``x``.
        x: float64 array, perturbed in place entry by entry and restored.
        h: step.

    Returns:
        A host float64 array of ``x``'s shape.
    """
    if x.dtype != numpy.float64:
        raise ValueError(f"finite differences need float64, got {x.dtype}")
    grad = numpy.zeros(x.shape)
    flat = x.reshape(-1)
    for i in range(flat.size):
        original = float(backend.to_host(flat[i]))
        flat[i] = original + h
        f_plus = float(f())
        flat[i] = original - h
        f_minus = float(f())
        flat[i] = original
        grad.reshape(-1)[i] = (f_plus - f_minus) / (2 * h)
    return grad


def max_relative_error(analytic, numeric, *, floor=1e-8) -> float:
    """``max |a − n| / max(|a| + |n|, floor)`` over all entries (host arrays)."""
    a = numpy.asarray(backend.to_host(analytic), dtype=numpy.float64)
    n = numpy.asarray(backend.to_host(numeric), dtype=numpy.float64)
    if a.shape != n.shape:
        raise ValueError(f"analytic gradient {a.shape} and numerical {n.shape} differ in shape")
    return float(numpy.max(numpy.abs(a - n) / numpy.maximum(numpy.abs(a) + numpy.abs(n), floor)))


def _weighted_sum(out, weights) -> float:
    """A scalar loss ``Σ out ⊙ weights`` whose gradient with respect to
    ``out`` is ``weights``: used to check a layer pair on its own."""
    return backend.to_float((out * weights).sum())


def check_layer_pairs(*, seed=0, batch=5, n_in=6, n_out=4, module=numpy) -> list[tuple[str, float]]:
    """Check every forward/backward pair of :mod:`nca_np.layers` on its own.

    Inputs are drawn on the host (so that some ReLUs are inactive) and moved
    to ``module``. Returns a list of ``(name, max relative error)``.
    """
    rng = backend.rng(seed)

    def draw(draw_fn, *args, **kwargs):
        return backend.to_device(draw_fn(*args, **kwargs), module)

    x = draw(rng.normal, size=(batch, n_in))
    W = draw(rng.normal, size=(n_out, n_in))
    b = draw(rng.normal, size=n_out)
    up = draw(rng.normal, size=(batch, n_out))
    results = []

    _, cache = dense_forward(x, W, b)
    dx, dW, db = dense_backward(up, cache)
    for name, arr, grad in (("dense dx", x, dx), ("dense dW", W, dW), ("dense db", b, db)):
        num = numerical_gradient(lambda: _weighted_sum(dense_forward(x, W, b)[0], up), arr)
        results.append((name, max_relative_error(grad, num)))

    z = draw(rng.normal, size=(batch, n_out))
    _, cache = relu_forward(z)
    num = numerical_gradient(lambda: _weighted_sum(relu_forward(z)[0], up), z)
    results.append(("relu dz", max_relative_error(relu_backward(up, cache), num)))

    _, cache = dense_relu_forward(x, W, b)
    dx, dW, db = dense_relu_backward(up.copy(), cache)
    for name, arr, grad in (("dense+relu dx", x, dx), ("dense+relu dW", W, dW), ("dense+relu db", b, db)):
        num = numerical_gradient(lambda: _weighted_sum(dense_relu_forward(x, W, b)[0], up), arr)
        results.append((name, max_relative_error(grad, num)))

    m = draw(rng.uniform, size=(batch, n_out))
    xm = draw(rng.uniform, size=(batch, n_out))
    _, cache = mask_forward(xm, m)
    num = numerical_gradient(lambda: _weighted_sum(mask_forward(xm, m)[0], up), m)
    results.append(("mask dm", max_relative_error(mask_backward(up, cache), num)))

    y_hat = draw(rng.normal, size=(batch, n_out))
    y = draw(rng.normal, size=(batch, n_out))
    _, cache = mse_forward(y_hat, y)
    num = numerical_gradient(lambda: backend.to_float(mse_forward(y_hat, y)[0]), y_hat)
    results.append(("mse dŷ", max_relative_error(mse_backward(cache), num)))
    return results


def model_check_point(kind, *, n_freq=6, batch=5, seed=0, module=numpy):
    """A float64 model and a batch at which some ReLUs of every layer are
    inactive and some active. Biases are set to small random values so
    their gradients are exercised away from zero.

    Returns:
        ``(model, X, Y)`` with X, Y of shape (batch, n_freq), on ``module``.
    """
    model = build_model(kind, n_freq, seed=seed, dtype=numpy.float64, module=module)
    rng = backend.rng(seed + 1)
    for b in model.biases:
        b[...] = backend.to_device(rng.normal(0.0, 0.3, size=b.shape), module)
    X = backend.to_device(rng.uniform(0.0, 2.0, size=(batch, n_freq)), module)
    Y = backend.to_device(rng.uniform(0.0, 1.0, size=(batch, n_freq)), module)
    return model, X, Y


def check_model_gradients(kind, *, n_freq=6, batch=5, seed=0, module=numpy) -> list[tuple[str, float]]:
    """Compare ``model.loss_and_grads`` with central differences of the loss
    for every parameter of a float64 model on ``module``.

    Returns:
        ``[(name, max relative error), …]`` with names like ``"dae W_1"``.
    """
    model, X, Y = model_check_point(kind, n_freq=n_freq, batch=batch, seed=seed, module=module)
    _, grads = model.loss_and_grads(X, Y)
    results = []
    for i, (param, grad) in enumerate(zip(model.params, grads)):
        name = f"{kind} {'W' if i % 2 == 0 else 'b'}_{i // 2 + 1}"
        num = numerical_gradient(lambda: backend.to_float(model.loss_and_grads(X, Y)[0]), param)
        results.append((name, max_relative_error(grad, num)))
    return results
