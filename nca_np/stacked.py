"""R runs of one model kind as one stacked model (docs/gradients.md#stacked-training).

The parameters of all R runs live in one flat ``(R, P)`` buffer, run ``r``'s
parameters ``[W_1, b_1, …, W_L, b_L]`` side by side in row ``r``. A stacked
parameter is a strided view of that buffer: ``W_l`` is ``(R, F, F)`` (``W_l[r]``
is run r's ``(out, in)`` weights) and ``b_l`` is ``(R, F)``. The gradients
live in a second buffer of the same layout, Adam's moments in two more, so
one update of the whole buffer updates every run (:class:`StackedAdam`).

Every run sees the same batch ``X`` (B, F), frames as rows; activations are
``(R, B, F)``. Run r's loss depends only on run r's parameters, so the
gradient of ``Σ_r L_r`` with respect to run r's parameters is exactly run
r's own gradient: stacking changes which products are issued together, not
what any run computes. On NumPy the numbers are those of R separate runs bit
for bit (each batched product is R calls of the same BLAS routine).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy

from . import backend
from .kernels import (
    adam_kernel,
    batched_matmul,
    bias_relu,
    output_delta,
    relu_backward,
    squared_error,
)
from .models import Model, build_model, model_kind
from .optim import CHUNK, FLUSH_EVERY, Adam, update_range, flush_tiny_moments

#: Each parameter starts at a multiple of this many elements of its run's
#: row (256 bytes in float32), so every matrix is aligned as GPU libraries
#: prefer; the padding is never read, and its gradient stays zero.
ALIGN = 64


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


@dataclass(frozen=True)
class StackLayout:
    """Where each parameter of a run lies in the run's row of the flat buffer.

    Attributes:
        shapes: one run's parameter shapes, ``[(F, F), (F,), …]``.
        offsets: first element of each parameter in the row.
        row_size: P, elements per run (padding included).
    """

    shapes: tuple
    offsets: tuple
    row_size: int

    @classmethod
    def of(cls, kind: str, n_freq: int) -> "StackLayout":
        shapes = []
        for _ in range(model_kind(kind).n_layers):
            shapes += [(n_freq, n_freq), (n_freq,)]
        offsets, position = [], 0
        for shape in shapes:
            offsets.append(position)
            position = _aligned(position + math.prod(shape))
        return cls(tuple(shapes), tuple(offsets), position)

    def views(self, flat) -> list:
        """The stacked parameters: views ``(R, *shape)`` of the ``(R, P)`` buffer."""
        views = []
        for shape, offset in zip(self.shapes, self.offsets):
            view = flat[:, offset : offset + math.prod(shape)].reshape((flat.shape[0],) + shape)
            if flat.shape[0] > 1 and view.strides[0] != flat.strides[0]:
                raise RuntimeError("a stacked parameter became a copy instead of a view of the flat buffer")
            views.append(view)
        return views

    def row_views(self, row) -> list:
        """One run's parameters: views of its ``(P,)`` row, in the shapes of a :class:`Model`."""
        return [row[offset : offset + math.prod(shape)].reshape(shape)
                for shape, offset in zip(self.shapes, self.offsets)]


class StackedModel:
    """R models of one kind, trained together (see the module docstring).

    Attributes:
        kind: the kind's name; spec: its :class:`~nca_np.models.ModelKind`.
        flat: the ``(R, P)`` parameter buffer.
        params: stacked views ``[W_1 (R, F, F), b_1 (R, F), …]``, encoder first.
    """

    def __init__(self, kind: str, n_freq: int, flat):
        self.kind = kind
        self.spec = model_kind(kind)
        self.n_freq = int(n_freq)
        self.layout = StackLayout.of(kind, n_freq)
        if flat.ndim != 2 or flat.shape[1] != self.layout.row_size:
            raise ValueError(f"a stacked {kind} buffer at F = {n_freq} is (R, {self.layout.row_size}), "
                             f"got {tuple(flat.shape)}")
        self.flat = flat
        self.params = self.layout.views(flat)
        self._workspaces = {}

    @classmethod
    def from_models(cls, models: list) -> "StackedModel":
        """A stack holding copies of ``models`` (one kind, one F, one dtype and module)."""
        first = models[0]
        module = backend.array_module(first.params[0])
        layout = StackLayout.of(first.kind, first.n_freq)
        flat = module.zeros((len(models), layout.row_size), dtype=first.dtype)
        for r, model in enumerate(models):
            if (model.kind, model.n_freq, model.dtype) != (first.kind, first.n_freq, first.dtype):
                raise ValueError("a stack holds models of one kind, width and dtype")
            for view, param in zip(layout.row_views(flat[r]), model.params):
                view[...] = param
        return cls(first.kind, first.n_freq, flat)

    @classmethod
    def build(cls, kind: str, n_freq: int, seeds, *, dtype=numpy.float32, module=None) -> "StackedModel":
        """A stack of fresh models, run r initialised as ``build_model(kind, F, seed=seeds[r])``."""
        module = module if module is not None else backend.xp()
        return cls.from_models([build_model(kind, n_freq, seed=seed, dtype=dtype, module=module) for seed in seeds])

    @property
    def n_runs(self) -> int:
        return int(self.flat.shape[0])

    @property
    def n_layers(self) -> int:
        return self.spec.n_layers

    @property
    def dtype(self):
        return self.flat.dtype

    @property
    def module(self):
        return backend.array_module(self.flat)

    def run_params(self, run: int) -> list:
        """Run ``run``'s parameters as views of its row (writing them changes the stack)."""
        return self.layout.row_views(self.flat[run])

    def run_model(self, run: int) -> Model:
        """Run ``run`` as a :class:`~nca_np.models.Model` over views of the stack."""
        return Model(self.kind, self.run_params(run))

    def select(self, runs) -> "StackedModel":
        """A new stack holding copies of the given runs, in that order."""
        module = self.module
        flat = module.stack([self.flat[r] for r in runs]) if len(runs) else self.flat[:0].copy()
        return StackedModel(self.kind, self.n_freq, flat)

    def _workspace(self, batch: int) -> dict:
        """Activation and delta buffers for batches of ``batch`` frames, reused at every step."""
        space = self._workspaces.get(batch)
        if space is None:
            shape = (self.n_runs, batch, self.n_freq)
            empty = self.module.empty
            space = {"a": [empty(shape, dtype=self.dtype) for _ in range(self.n_layers)],
                     "delta": [empty(shape, dtype=self.dtype) for _ in range(2)]}
            self._workspaces[batch] = space
        return space

    def forward(self, X) -> list:
        """Every layer's ReLU output ``a_l = g(a_{l−1} W_lᵀ + b_l)``, (R, B, F) each,
        for one batch ``X`` (B, F) shared by the runs (``a_0 = X``)."""
        activations = self._workspace(X.shape[0])["a"]
        h = X
        for layer in range(self.n_layers):
            W, b = self.params[2 * layer], self.params[2 * layer + 1]
            batched_matmul(h, W, transpose_b=True, out=activations[layer])
            h = bias_relu(activations[layer], b[:, None, :])
        return activations

    def loss_and_grads(self, X, Y, grads, squared_errors) -> None:
        """One batch: every run's squared error and the gradient of its loss.

        The loss of run r is the MSE of Eq. 3, ``L_r = S_r / (B F)`` with
        ``S_r = Σ_bf (ŷ_r − y)²``; the backward pass is that of
        ``Model.loss_and_grads`` (docs/gradients.md §7), for all runs at once.

        Args:
            X, Y: (B, F) mixture and target frames as rows, the model's dtype.
            grads: the ``(R, P)`` gradient buffer (layout of ``flat``), overwritten.
            squared_errors: (R,) float64 array for ``S_r``.
        """
        batch = X.shape[0]
        activations = self.forward(X)
        v = activations[-1]
        mask_input = X if self.spec.masks_input else None
        squared_error(v, Y, mask_input, out=squared_errors)
        deltas = self._workspace(batch)["delta"]
        delta = output_delta(v, Y, mask_input, scale=2.0 / (batch * self.n_freq), out=deltas[0])
        gradients = self.layout.views(grads)
        for layer in reversed(range(self.n_layers)):
            below = X if layer == 0 else activations[layer - 1]
            batched_matmul(delta, below, transpose_a=True, out=gradients[2 * layer])
            self.module.sum(delta, axis=1, out=gradients[2 * layer + 1])
            if layer > 0:
                spare = deltas[1] if delta is deltas[0] else deltas[0]
                batched_matmul(delta, self.params[2 * layer], out=spare)
                delta = relu_backward(spare, below)


class StackedAdam:
    """Adam for every run of a stack: one fused update of the flat buffer,
    each run with its own step size η (docs/gradients.md#stacked-training).

    Each run is also an :class:`~nca_np.optim.Adam` over views of its row
    (:attr:`runs`), which holds that run's η and step count and reads and
    writes its moments through ``state_dict`` / ``load_state_dict``: a run's
    checkpoint is what a single run's would be. Every run of a stack takes
    the same steps, so they share ``t``.

    Args:
        stack: the :class:`StackedModel` whose ``flat`` buffer is updated.
        lr: η of every run (a number), or one per run.
        beta1, beta2, eps: as :class:`~nca_np.optim.Adam`.
        moments: optional ``(m, v)`` flat buffers to adopt (shape of ``stack.flat``).
        t: steps already taken.
    """

    def __init__(self, stack: StackedModel, *, lr=1e-4, beta1=0.9, beta2=0.999, eps=1e-8, moments=None, t=0):
        module = stack.module
        self.stack = stack
        self.m, self.v = moments if moments is not None else (module.zeros_like(stack.flat),
                                                              module.zeros_like(stack.flat))
        lrs = [lr] * stack.n_runs if numpy.ndim(lr) == 0 else list(lr)
        if len(lrs) != stack.n_runs:
            raise ValueError(f"{len(lrs)} learning rates for a stack of {stack.n_runs} runs")
        self.runs = []
        for r in range(stack.n_runs):
            moments_r = (stack.layout.row_views(self.m[r]), stack.layout.row_views(self.v[r]))
            run = Adam(stack.run_params(r), lr=lrs[r], beta1=beta1, beta2=beta2, eps=eps, moments=moments_r)
            run.t = t
            self.runs.append(run)
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)
        self._lr_column, self._lr_values = None, None
        self._scratch = None

    @property
    def t(self) -> int:
        return self.runs[0].t if self.runs else 0

    def step(self, grads) -> None:
        """One Adam step of every run; ``grads`` is the ``(R, P)`` gradient buffer."""
        t = self.t + 1
        for run in self.runs:
            run.t = t
        c = math.sqrt(1.0 - self.beta2 ** t)
        p, module = self.stack.flat, self.stack.module
        kernel = adam_kernel(module)
        if kernel is not None:
            typed = p.dtype.type
            kernel(grads, self._learning_rates(), typed(self.beta1), typed(self.beta2), typed(self.eps * c),
                   typed(c / (1.0 - self.beta1 ** t)), p, self.m, self.v)
        else:
            scratch = self._scratch_vector(module, p.dtype)
            for r, run in enumerate(self.runs):
                coefficients = (self.beta1, self.beta2, self.eps * c, run.lr * c / (1.0 - self.beta1 ** t))
                update_range(module, (p[r], grads[r], self.m[r], self.v[r]), 0, p.shape[1], scratch.shape[0],
                              scratch, coefficients)
        if t % FLUSH_EVERY == 0:
            flush_tiny_moments([self.m, self.v])

    def _learning_rates(self):
        """η of every run as an (R, 1) column on the device, moved there only when one changed."""
        values = tuple(run.lr for run in self.runs)
        if values != self._lr_values:
            column = numpy.array(values, dtype=self.stack.dtype).reshape(-1, 1)
            self._lr_column, self._lr_values = backend.to_device(column, self.stack.module), values
        return self._lr_column

    def _scratch_vector(self, module, dtype):
        size = min(CHUNK if module is numpy else self.stack.flat.shape[1], self.stack.flat.shape[1])
        if self._scratch is None or self._scratch.shape[0] != size or self._scratch.dtype != dtype:
            self._scratch = module.empty(size, dtype=dtype)
        return self._scratch

    def select(self, runs, stack: StackedModel) -> "StackedAdam":
        """The optimiser of ``stack`` = ``self.stack.select(runs)``: those runs'
        moments, η and step count."""
        module = self.stack.module
        moments = tuple(module.stack([buffer[r] for r in runs]) if len(runs) else buffer[:0].copy()
                        for buffer in (self.m, self.v))
        return StackedAdam(stack, lr=[self.runs[r].lr for r in runs], beta1=self.beta1, beta2=self.beta2,
                           eps=self.eps, moments=moments, t=self.t)
