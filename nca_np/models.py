"""The three separation models of docs/method.md#models: DAE, MSS-DAE and SF.

Each model is a chain of dense+ReLU layers (:mod:`nca_np.layers`); SF adds
the mask product with its input. Frames are rows: ``X``, ``Y`` are (B, F).

``model.params`` is the list ``[W_1, b_1, W_2, b_2, …]``, encoder first,
``W`` of shape (out, in); the forward pass reads the list every time, so
assigning a new array into it (or writing into one) changes the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy

from . import backend
from .errors import UserError
from .layers import (
    dense_relu_backward,
    dense_relu_forward,
    mask_backward,
    mask_forward,
    mse_backward,
    mse_forward,
)


@dataclass(frozen=True)
class ModelKind:
    """Everything the project needs to know about one kind of model.

    Attributes:
        name: the name used in configurations, folders and the command line.
        n_layers: number of ``F×F`` dense+ReLU layers, encoder first.
        masks_input: True when the decoder output is a mask applied to the
            input (``ŷ = x ⊙ m``, skip filtering); False when it is the
            estimate itself.
        display_name: the name tables and figures show.
        equations: where the paper defines it.
    """

    name: str
    n_layers: int
    masks_input: bool
    display_name: str
    equations: str = ""


class UnknownKind(UserError, ValueError):
    """A model kind that is not in :data:`MODEL_KINDS`."""


#: The registry of model kinds: a new kind is declared here, once, with
#: :func:`register_kind`; configuration, command line, NCA, report and
#: figures all read it.
MODEL_KINDS: dict[str, ModelKind] = {}


def register_kind(kind: ModelKind) -> ModelKind:
    """Add a model kind to the registry (a name may be declared only once)."""
    if kind.name in MODEL_KINDS:
        raise ValueError(f"model kind {kind.name!r} is already registered")
    if kind.n_layers < 1:
        raise ValueError(f"model kind {kind.name!r} needs at least one layer")
    MODEL_KINDS[kind.name] = kind
    return kind


register_kind(ModelKind("dae", 2, False, "DAE", "Eqs. 4–5"))
register_kind(ModelKind("mss-dae", 4, False, "MSS-DAE", "Eqs. 6–7"))
register_kind(ModelKind("sf", 2, True, "SF", "Eqs. 8–9"))


def kind_names() -> tuple[str, ...]:
    """The registered kinds' names, in the order they were declared."""
    return tuple(MODEL_KINDS)


def display_name(kind: str) -> str:
    """The registered kind's display name ("DAE", "MSS-DAE", "SF"), the
    name itself for a kind that is not registered."""
    spec = MODEL_KINDS.get(kind)
    return spec.display_name if spec is not None else kind


def model_kind(name: str) -> ModelKind:
    """The registered kind called ``name``.

    Raises:
        UnknownKind: one line listing the known kinds.
    """
    try:
        return MODEL_KINDS[name]
    except (KeyError, TypeError):
        raise UnknownKind(f"unknown model kind {name!r}: use one of {', '.join(kind_names())}") from None


def glorot_normal(rng: numpy.random.Generator, n_out: int, n_in: int) -> numpy.ndarray:
    """Host draw of ``W ~ N(0, 2/(n_in + n_out))``, shape (n_out, n_in), float64."""
    return rng.normal(0.0, numpy.sqrt(2.0 / (n_in + n_out)), size=(n_out, n_in))


class Model:
    """A stack of ``F×F`` dense+ReLU layers; for SF, a mask on the input.

    Attributes:
        kind: a registered kind's name ("dae", "mss-dae", "sf", …).
        spec: its :class:`ModelKind`.
        params: ``[W_1, b_1, …, W_L, b_L]``, encoder first.
    """

    def __init__(self, kind: str, params: list):
        spec = model_kind(kind)
        if len(params) != 2 * spec.n_layers:
            raise ValueError(f"a {kind} model has {spec.n_layers} layers, i.e. "
                             f"{2 * spec.n_layers} parameters; got {len(params)}")
        self.kind = kind
        self.spec = spec
        self.params = params

    @property
    def weights(self) -> list:
        """``[W_1, …, W_L]``, encoder first."""
        return self.params[0::2]

    @property
    def biases(self) -> list:
        """``[b_1, …, b_L]``, encoder first."""
        return self.params[1::2]

    @property
    def n_layers(self) -> int:
        return len(self.params) // 2

    @property
    def n_freq(self) -> int:
        return int(self.params[0].shape[1])

    @property
    def dtype(self):
        return self.params[0].dtype

    def _as_input(self, X):
        """Check ``X`` is (B, F); give it the model's array module and dtype
        (a float32 model never silently computes in float64)."""
        if X.ndim != 2 or X.shape[1] != self.n_freq:
            raise ValueError(f"input of shape {tuple(X.shape)} does not fit a model of "
                             f"{self.n_freq} bins: expected (B, {self.n_freq})")
        module = backend.array_module(self.params[0])
        if backend.array_module(X) is not module:
            X = backend.to_device(backend.to_host(X), module)
        return X if X.dtype == self.dtype else X.astype(self.dtype)

    def _forward(self, X):
        """Run the layer chain; returns the decoder output and the caches."""
        caches = []
        h = X
        for W, b in zip(self.weights, self.biases):
            h, cache = dense_relu_forward(h, W, b)
            caches.append(cache)
        return h, caches

    def decoder_output(self, X):
        """The last layer's ReLU output ``v`` (B, F): the estimate for DAE and
        MSS-DAE, the mask ``m`` for SF (docs/method.md#models). This is what the NCA
        approximates."""
        return self._forward(self._as_input(X))[0]

    def predict(self, X):
        """The estimated vocals magnitude ŷ (B, F) (Eqs. 5, 7, 9)."""
        X = self._as_input(X)
        v, _ = self._forward(X)
        return mask_forward(X, v)[0] if self.spec.masks_input else v

    def loss_and_grads(self, X, Y, out=None):
        """MSE loss (Eq. 3) and its gradient for every parameter.

        For SF, ``ŷ = x ⊙ m`` uses the input twice (encoder and mask); the
        input is data, so only the mask path carries a gradient.

        Args:
            X: (B, F) mixture magnitudes, frames as rows.
            Y: (B, F) target vocals magnitudes.
            out: optional list of arrays shaped like ``params`` to write the
                gradients into, so that a caller stepping repeatedly
                allocates them once. (Training runs the stacked form of
                :mod:`nca_np.stacked` and :mod:`nca_np.kernels`, checked
                against this one; this is the textbook pass.)

        Returns:
            ``(loss, grads)``: loss a 0-d array of the model's module and
            dtype, grads a list in the order of ``params``.
        """
        X, Y = self._as_input(X), self._as_input(Y)
        v, caches = self._forward(X)
        if self.spec.masks_input:
            y_hat, mask_cache = mask_forward(X, v)
            loss, mse_cache = mse_forward(y_hat, Y)
            delta = mask_backward(mse_backward(mse_cache), mask_cache)
        else:
            loss, mse_cache = mse_forward(v, Y)
            delta = mse_backward(mse_cache)
        grads = [None] * len(self.params)
        for layer in reversed(range(self.n_layers)):
            dW_out = out[2 * layer] if out is not None else None
            db_out = out[2 * layer + 1] if out is not None else None
            delta, grads[2 * layer], grads[2 * layer + 1] = dense_relu_backward(
                delta, caches[layer], need_dx=layer > 0, dW_out=dW_out, db_out=db_out)
        return loss, grads


def build_model(kind: str, n_freq: int, *, seed: int = 0, dtype=numpy.float32, module=None) -> Model:
    """A model with Glorot-normal weights and zero biases (docs/method.md#models).

    The weights are drawn on the host from ``backend.rng(seed)``, encoder
    first, and then moved to ``module`` (default: the active backend), so a
    seed gives the same initial weights on CPU and GPU.

    Args:
        kind: a registered kind's name ("dae", "mss-dae", "sf", …).
        n_freq: F, the width of every layer.
        seed: seed of the initialisation.
        dtype: parameter dtype (float32 for training, float64 for checks).
        module: array module (default ``backend.xp()``).
    """
    spec = model_kind(kind)
    if int(n_freq) < 1:
        raise ValueError(f"n_freq must be a positive number of bins, got {n_freq}")
    module = module if module is not None else backend.xp()
    rng = backend.rng(seed)
    params = []
    for _ in range(spec.n_layers):
        W = glorot_normal(rng, n_freq, n_freq).astype(dtype)
        params.append(backend.to_device(W, module))
        params.append(module.zeros(n_freq, dtype=dtype))
    return Model(kind, params)
