"""Adam (MATH.md §3) and the plateau learning-rate schedule.

Adam, with the paper's names, for each parameter θ with gradient ∇ at step
``t`` (incremented first):

.. math::
    m ← β1 m + (1 − β1) ∇
    v ← β2 v + (1 − β2) ∇²
    θ ← θ − η · (m / (1 − β1ᵗ)) / (√(v / (1 − β2ᵗ)) + ε)

The update is a single pass over memory where the array module allows it:
a fused elementwise kernel on a GPU module that offers one, and on NumPy a
loop over cache-sized chunks, so the temporaries of the dozen elementwise
operations never leave the CPU cache and each of θ, ∇, m, v is read from
main memory once.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy

from .backend import array_module

#: Elements per chunk of the NumPy update: 32 Ki float32 = 128 KiB per
#: array, so the five live chunks fit in a core's L2 cache.
CHUNK = 32768

_FUSED_SOURCE = """
    m = beta1 * m + (1 - beta1) * g;
    v = beta2 * v + (1 - beta2) * g * g;
    p -= step_size * m / (sqrt(v) * inv_sqrt_bc2 + eps);
"""
_fused_kernels: dict[int, object] = {}


def _fused_kernel(module):
    """The fused Adam kernel of a module with ``ElementwiseKernel`` (CuPy)."""
    kernel = _fused_kernels.get(id(module))
    if kernel is None:
        kernel = module.ElementwiseKernel(
            "T g, T beta1, T beta2, T eps, T step_size, T inv_sqrt_bc2",
            "T p, T m, T v", _FUSED_SOURCE, "nca_np_adam_update")
        _fused_kernels[id(module)] = kernel
    return kernel


class Adam:
    """Adam over a list of arrays, updated in place (MATH.md §3).

    Args:
        params: list of parameter arrays (e.g. ``model.params``); the list
            is kept, so arrays assigned into it later are the ones updated.
        lr: step size η.
        beta1, beta2: decay rates of the first and second moments.
        eps: ε, added to the bias-corrected √v.

    Attributes:
        t: number of steps taken.
        m, v: first and second moment estimates, one per parameter.
    """

    def __init__(self, params, *, lr=1e-4, beta1=0.9, beta2=0.999, eps=1e-8):
        self.params = params
        self.lr = float(lr)
        self.beta1 = float(beta1)
        self.beta2 = float(beta2)
        self.eps = float(eps)
        self.t = 0
        self.m = [array_module(p).zeros_like(p) for p in params]
        self.v = [array_module(p).zeros_like(p) for p in params]
        self._scratch = None

    def step(self, grads) -> None:
        """One Adam update of every parameter with its gradient.

        Args:
            grads: list of arrays in the order and shapes of ``params``.
        """
        if len(grads) != len(self.params):
            raise ValueError(f"{len(grads)} gradients for {len(self.params)} parameters")
        self.t += 1
        bias1 = 1.0 - self.beta1 ** self.t
        bias2 = 1.0 - self.beta2 ** self.t
        step_size = self.lr / bias1
        inv_sqrt_bc2 = 1.0 / math.sqrt(bias2)
        for p, g, m, v in zip(self.params, grads, self.m, self.v):
            if g.shape != p.shape:
                raise ValueError(f"gradient of shape {tuple(g.shape)} for a parameter of shape {tuple(p.shape)}")
            module = array_module(p)
            if hasattr(module, "ElementwiseKernel"):
                _fused_kernel(module)(g, p.dtype.type(self.beta1), p.dtype.type(self.beta2),
                                      p.dtype.type(self.eps), p.dtype.type(step_size),
                                      p.dtype.type(inv_sqrt_bc2), p, m, v)
            else:
                self._chunked_update(p, g, m, v, step_size, inv_sqrt_bc2)

    def _chunked_update(self, p, g, m, v, step_size, inv_sqrt_bc2):
        """The update on flat chunks; Python floats keep float32 in float32."""
        module = array_module(p)
        flat = [a.reshape(-1) for a in (p, g, m, v)]
        size = flat[0].size
        chunk = CHUNK if module is numpy else size
        scratch = self._scratch_for(module, min(chunk, size), p.dtype)
        b1, b2 = self.beta1, self.beta2
        for start in range(0, size, chunk):
            stop = min(start + chunk, size)
            p_c, g_c, m_c, v_c = (a[start:stop] for a in flat)
            tmp = scratch[: stop - start]
            m_c *= b1
            module.multiply(g_c, 1.0 - b1, out=tmp)
            m_c += tmp
            v_c *= b2
            module.multiply(g_c, g_c, out=tmp)
            tmp *= 1.0 - b2
            v_c += tmp
            module.sqrt(v_c, out=tmp)
            tmp *= inv_sqrt_bc2
            tmp += self.eps
            module.divide(m_c, tmp, out=tmp)
            tmp *= step_size
            p_c -= tmp

    def _scratch_for(self, module, size, dtype):
        s = self._scratch
        if s is None or array_module(s) is not module or s.size < size or s.dtype != dtype:
            self._scratch = module.empty(size, dtype=dtype)
        return self._scratch

    def state_dict(self) -> dict:
        """Hyper-parameters, step count and moments (arrays stay on their module)."""
        return {"lr": self.lr, "beta1": self.beta1, "beta2": self.beta2, "eps": self.eps,
                "t": self.t, "m": list(self.m), "v": list(self.v)}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned; moments are copied into
        this optimiser's arrays (so they keep this optimiser's module)."""
        self.lr, self.beta1, self.beta2, self.eps = (float(state[k]) for k in ("lr", "beta1", "beta2", "eps"))
        self.t = int(state["t"])
        for mine, theirs in zip(self.m + self.v, list(state["m"]) + list(state["v"])):
            mine[...] = theirs


@dataclass
class PlateauSchedule:
    """Halve η after ``patience_halve`` epochs without improvement of the
    epoch's mean loss; stop after ``patience_stop``, or at ``max_epochs``
    (MATH.md §3).

    Call :meth:`update` once per epoch with that epoch's mean loss; it
    returns the decision and keeps the state needed to resume.
    """

    patience_halve: int = 2
    patience_stop: int = 4
    max_epochs: int = 100
    factor: float = 0.5
    best: float = math.inf
    epochs_without_improvement: int = 0
    epochs_done: int = 0

    def update(self, epoch_loss: float) -> str:
        """Record one epoch; returns "improved", "same", "reduce" or "stop".

        "reduce" asks the caller to multiply η by ``factor``. "stop" takes
        precedence over "reduce".
        """
        self.epochs_done += 1
        if epoch_loss < self.best:
            self.best = float(epoch_loss)
            self.epochs_without_improvement = 0
            decision = "improved"
        else:
            self.epochs_without_improvement += 1
            decision = "same"
            if self.epochs_without_improvement % self.patience_halve == 0:
                decision = "reduce"
        if self.epochs_without_improvement >= self.patience_stop or self.epochs_done >= self.max_epochs:
            decision = "stop"
        return decision

    def state_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict) -> "PlateauSchedule":
        return cls(**state)
