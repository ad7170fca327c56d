"""Finite-difference gradient checks: central differences in float64,
relative error with a floor.

The relative error of an analytic gradient ``a`` against the numerical
``n`` is ``max_i |a_i − n_i| / max(|a_i| + |n_i|, floor)``. Central
differences in float64 with ``h = 1e-6`` agree with a correct gradient to
about 1e-8; a missing factor of 2 gives 1/3, a sign error 1, a transposed
weight O(1). :data:`THRESHOLD` sits far between the two.

Three groups of checks, each returning ``(name, max relative error)`` pairs:

- the layer pairs of :mod:`nca_np.layers` (:func:`check_layer_pairs`);
- every parameter of a model (:func:`check_model_gradients`);
- the NCA: every registered strategy's step at its own check points
  (:func:`check_strategy_gradients`), and the student and compositional
  functions themselves (:func:`check_student_gradient`,
  :func:`check_compositional_gradients`); the loss is piecewise linear:
  its check points keep every entry of ``C X − V`` and of every ``Z_l`` at
  least :data:`MARGIN` from zero, with both signs present, so that the
  differences never cross a kink while the signs and the ReLU gates are
  really exercised (:mod:`nca_np.check_points`); and the fast NCA gradients
  against the equations as written (:func:`compare_with_textbook`,
  :func:`compare_student_with_textbook`).

``scripts/gradcheck.py`` (``make gradcheck``) prints them all as a table;
the tests assert them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy

from . import backend, nca, nca_textbook
from .check_points import (MARGIN, chain_check_point, chain_is_fair, fair_chain_check_point, is_fair,
                           student_check_point)
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
from .stacked import StackedModel

#: Default pass/fail threshold on the relative error.
THRESHOLD = 1e-5
#: Threshold of the NCA checks: E sums F·T absolute values, so float64
#: rounding over a central difference is ~1e-8 absolute, up to ~1e-5
#: relative on the smallest entries; a factor 2, a sign or a transpose gives
#: 0.3 to 1.
NCA_THRESHOLD = 1e-4
#: Threshold of a fast form against its textbook form, both exact in float64
#: up to rounding (~1e-15).
TEXTBOOK_THRESHOLD = 1e-10


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


def check_stacked_gradients(kind, *, runs=2, n_freq=6, batch=5, seed=0, module=numpy) -> list[tuple[str, float]]:
    """The stacked model's gradients (docs/gradients.md#stacked-training)
    against central differences of ``Σ_r L_r``, the sum of its runs' MSE
    losses, with respect to every entry of the flat parameter buffer.

    Run r is :func:`model_check_point`'s float64 model of seed ``seed + r``.
    Returns ``[("<kind> stacked ×R", max relative error)]``.
    """
    models, X, Y = [], None, None
    for r in range(runs):
        model, X_r, Y_r = model_check_point(kind, n_freq=n_freq, batch=batch, seed=seed + r, module=module)
        models.append(model)
        X, Y = (X_r, Y_r) if X is None else (X, Y)
    stack = StackedModel.from_models(models)
    grads = module.zeros_like(stack.flat)
    squared = module.zeros(runs, dtype=numpy.float64)

    def total_loss() -> float:
        stack.loss_and_grads(X, Y, grads, squared)
        return float(backend.to_host(squared).sum()) / (batch * n_freq)

    numeric = numerical_gradient(total_loss, stack.flat)
    stack.loss_and_grads(X, Y, grads, squared)
    return [(f"{kind} stacked ×{runs}", max_relative_error(grads, numeric))]


# ---------------------------------------------------------------- the NCA


@dataclass
class NcaCheck:
    """One NCA gradient check.

    Attributes:
        label: what was checked, e.g. "student" or "compositional paper L=2".
        fair: whether the check point keeps every kink at least
            :data:`MARGIN` away with both signs present (see :func:`is_fair`).
        errors: ``[(name, max relative error), …]``, e.g. ``("dP_1", 3e-9)``.
    """

    label: str
    fair: bool
    errors: list


def check_student_gradient(*, seed=3, n_freq=8, n_frames=5, module=numpy) -> NcaCheck:
    """``nca.student_loss_and_grad``'s ``dC`` (Eq. 16) against central
    differences of its ``E`` at :func:`student_check_point`."""
    C, X, V = student_check_point(seed=seed, n_freq=n_freq, n_frames=n_frames, module=module)
    _, dC = nca.student_loss_and_grad(C, X, V)
    numeric = numerical_gradient(lambda: backend.to_float(nca.student_loss_and_grad(C, X, V)[0]), C)
    return NcaCheck("student", is_fair(C @ X - V), [("dC", max_relative_error(dC, numeric))])


def check_strategy_gradients(name: str, *, module=numpy) -> list[NcaCheck]:
    """A registered strategy's gradients against central differences of its
    loss ``E``, at each of its check points (:attr:`nca_np.nca.Strategy.check_points`).

    The step under check is the one the fits run: ``strategy.start``'s
    ``loss_and_grads``, with the check point's unknowns as its parameters.
    Returns one :class:`NcaCheck` per check point; none for a strategy that
    declares no check points.
    """
    strategy = nca.get_strategy(name)
    points = strategy.check_points(module) if strategy.check_points is not None else []
    return [_check_at(strategy, point) for point in points]


def _check_at(strategy, point) -> NcaCheck:
    fitting = strategy.start(point.model, point.X, point.V, point.initial, point.composition)
    _, grads = fitting.loss_and_grads()
    grads = [grad.copy() for grad in grads]  # the step may reuse its gradient buffers

    def loss():
        return backend.to_float(fitting.loss_and_grads()[0])

    errors = [(f"d{name}", max_relative_error(grad, numerical_gradient(loss, param)))
              for name, param, grad in zip(point.names, fitting.params, grads)]
    return NcaCheck(point.label, point.fair, errors)


def check_compositional_gradients(depth, composition, *, n_freq=8, n_frames=5, module=numpy,
                                  loss_and_grads=None) -> NcaCheck:
    """Every ``∂E/∂P_l`` of a depth-L chain against central differences of
    ``E``, at :func:`fair_chain_check_point`.

    Args:
        depth: L, the number of layers.
        composition: "paper" or "authors-code".
        loss_and_grads: the function under check, called like
            :func:`nca_np.nca.compositional_loss_and_grads` (the default);
            the tests pass wrong ones to show that the check fails.
    """
    loss_and_grads = loss_and_grads or nca.compositional_loss_and_grads
    point = fair_chain_check_point(depth, composition, n_freq=n_freq, n_frames=n_frames, module=module)
    _, dPs = loss_and_grads(*point, composition=composition)

    def loss():
        return backend.to_float(loss_and_grads(*point, composition=composition)[0])

    errors = [(f"dP_{layer}", max_relative_error(dP, numerical_gradient(loss, P)))
              for layer, (P, dP) in enumerate(zip(point[2], dPs), start=1)]
    return NcaCheck(f"compositional {composition} L={depth}", chain_is_fair(*point, composition), errors)


def compare_with_textbook(composition, *, seed=5, module=numpy, loss_and_grads=None) -> list[tuple[str, float]]:
    """The fast two-layer compositional gradients against Eqs. 20–21 as
    written (:func:`nca_np.nca_textbook.eq20_eq21_gradients`).

    Args:
        composition: reading of Eqs. 18–19.
        seed: seed of the :func:`chain_check_point` (any point will do: both
            sides are exact up to rounding).
        module: array module of the fast form; the textbook runs on the host.
        loss_and_grads: the function under comparison, called like (and by
            default) :func:`nca_np.nca.compositional_loss_and_grads`.

    Returns:
        ``[(name, max relative error), …]`` for ``E``, ``dP_enc``, ``dP_dec``.
    """
    loss_and_grads = loss_and_grads or nca.compositional_loss_and_grads
    point = chain_check_point(2, composition, seed=seed, module=module)
    weights, biases, Ps = ([backend.to_host(a) for a in group] for group in point[:3])
    E, (dP_enc, dP_dec) = loss_and_grads(*point, composition=composition)
    E_ref, (dP_enc_ref, dP_dec_ref) = nca_textbook.eq20_eq21_gradients(
        weights, biases, Ps, backend.to_host(point[3]), backend.to_host(point[4]), composition)
    return [("E (Eq. 15)", max_relative_error(backend.to_float(E), E_ref)),
            ("dP_enc (Eq. 21)", max_relative_error(dP_enc, dP_enc_ref)),
            ("dP_dec (Eq. 20)", max_relative_error(dP_dec, dP_dec_ref))]


def compare_student_with_textbook(*, seed=3, module=numpy) -> list[tuple[str, float]]:
    """``nca.student_loss_and_grad`` against Eqs. 15–16 as written
    (:func:`nca_np.nca_textbook.student_loss_and_gradient`) at
    :func:`student_check_point`. Returns the errors of ``E`` and ``dC``."""
    C, X, V = student_check_point(seed=seed, module=module)
    E, dC = nca.student_loss_and_grad(C, X, V)
    E_ref, dC_ref = nca_textbook.student_loss_and_gradient(*(backend.to_host(a) for a in (C, X, V)))
    return [("E (Eq. 15)", max_relative_error(backend.to_float(E), E_ref)),
            ("dC (Eq. 16)", max_relative_error(dC, dC_ref))]
