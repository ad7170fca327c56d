"""Adam (docs/method.md#training) and the plateau learning-rate schedule.

Adam, with the paper's names, for each parameter θ with gradient ∇ at step
``t`` (incremented first):

.. math::
    m ← β1 m + (1 − β1) ∇
    v ← β2 v + (1 − β2) ∇²
    θ ← θ − η · (m / (1 − β1ᵗ)) / (√(v / (1 − β2ᵗ)) + ε)

The update is a single pass over memory where the array module allows it:
a fused elementwise kernel on a GPU module that offers one
(:data:`nca_np.kernels.ADAM`), and on NumPy a
loop over cache-sized chunks, so the temporaries of the dozen elementwise
operations never leave the CPU cache and each of θ, ∇, m, v is read from
main memory once.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy

from .backend import array_module, to_device, to_host
from .kernels import adam_kernel


def adam_step_textbook(theta, grad, m, v, t, lr, beta1, beta2, eps):
    """One Adam step written as the paper writes it: the reference for
    :class:`Adam`'s chunked and fused updates (slow; not used in training).

    .. math::
        m ← β1 m + (1 − β1) ∇
        v ← β2 v + (1 − β2) ∇²
        m̂ = m / (1 − β1ᵗ),   v̂ = v / (1 − β2ᵗ)
        θ ← θ − η m̂ / (√v̂ + ε)

    Args:
        theta, grad, m, v: arrays of one shape: the parameter, its gradient
            and the two moments before the step (zeros before the first).
        t: the number of this step, counted from 1.
        lr, beta1, beta2, eps: η, β1, β2, ε.

    Returns:
        ``(theta, m, v)`` after the step, as new arrays; the inputs are untouched.
    """
    xp = array_module(theta)
    m = beta1 * m + (1 - beta1) * grad
    v = beta2 * v + (1 - beta2) * grad * grad
    m_hat = m / (1 - beta1 ** t)
    v_hat = v / (1 - beta2 ** t)
    theta = theta - lr * m_hat / (xp.sqrt(v_hat) + eps)
    return theta, m, v


#: Elements per chunk of the NumPy update: 128 Ki float32 = 512 KiB per
#: array, so the five live chunks stay in the core's L2 cache (the best
#: of 16 Ki to 256 Ki on the two-core machine of scripts/bench_*.py). The
#: update stays single-threaded: BLAS threads spinning after a matrix
#: product occupy the other core, and splitting the update gained nothing.
CHUNK = 131072

def update_range(module, flat, start, stop, chunk, scratch, coefficients):
    """Adam on ``[start, stop)`` of the flat (θ, ∇, m, v), chunk by chunk.

    ``coefficients`` = (β1, β2, ε c, η c / (1 − β1ᵗ)) with c = √(1 − β2ᵗ),
    which is the update of docs/method.md#training with one pass fewer over the chunk. Python
    floats keep float32 arrays in float32.
    """
    b1, b2, eps_scaled, step_scaled = coefficients
    for begin in range(start, stop, chunk):
        end = min(begin + chunk, stop)
        p_c, g_c, m_c, v_c = (a[begin:end] for a in flat)
        tmp = scratch[: end - begin]
        m_c *= b1
        module.multiply(g_c, 1.0 - b1, out=tmp)
        m_c += tmp
        v_c *= b2
        module.multiply(g_c, g_c, out=tmp)
        tmp *= 1.0 - b2
        v_c += tmp
        module.sqrt(v_c, out=tmp)
        tmp += eps_scaled
        module.divide(m_c, tmp, out=tmp)
        tmp *= step_scaled
        p_c -= tmp


def flush_tiny_moments(moments) -> None:
    """Set every entry below ``tiny · 2³⁰`` of each array to zero, in place
    (see :meth:`Adam._flush_tiny_moments`)."""
    for moment in moments:
        module = array_module(moment)
        threshold = float(numpy.finfo(moment.dtype).tiny) * 2.0**30
        module.multiply(moment, module.abs(moment) >= threshold, out=moment)


#: Steps between two flushes of negligible moments (see Adam._flush_tiny_moments).
FLUSH_EVERY = 100


class Adam:
    """Adam over a list of arrays, updated in place (docs/method.md#training); the same
    update written as the paper writes it is :func:`adam_step_textbook`.

    Args:
        params: list of parameter arrays (e.g. ``model.params``); the list
            is kept, so arrays assigned into it later are the ones updated.
        lr: step size η.
        beta1, beta2: decay rates of the first and second moments.
        eps: ε, added to the bias-corrected √v.
        moments: optional ``(m, v)``, two lists of zero arrays shaped like
            ``params`` to hold the moments (a stacked optimiser hands each
            run views of its flat buffers, :class:`nca_np.stacked.StackedAdam`).

    Attributes:
        t: number of steps taken.
        m, v: first and second moment estimates, one per parameter.
    """

    def __init__(self, params, *, lr=1e-4, beta1=0.9, beta2=0.999, eps=1e-8, moments=None):
        self.params = params
        self.lr = float(lr)
        self.beta1 = float(beta1)
        self.beta2 = float(beta2)
        self.eps = float(eps)
        self.t = 0
        if moments is None:
            moments = ([array_module(p).zeros_like(p) for p in params], [array_module(p).zeros_like(p) for p in params])
        self.m, self.v = (list(moment) for moment in moments)
        self._scratch = {}

    def step(self, grads) -> None:
        """One Adam update of every parameter with its gradient.

        Args:
            grads: list of arrays in the order and shapes of ``params``.
        """
        if len(grads) != len(self.params):
            raise ValueError(f"{len(grads)} gradients for {len(self.params)} parameters")
        self.t += 1
        # With c = √(1 − β2ᵗ): θ ← θ − (η c / (1 − β1ᵗ)) · m / (√v + ε c), the
        # update of docs/method.md#training with the bias corrections folded into scalars.
        c = math.sqrt(1.0 - self.beta2 ** self.t)
        coefficients = (self.beta1, self.beta2, self.eps * c, self.lr * c / (1.0 - self.beta1 ** self.t))
        for p, g, m, v in zip(self.params, grads, self.m, self.v):
            if g.shape != p.shape:
                raise ValueError(f"gradient of shape {tuple(g.shape)} for a parameter of shape {tuple(p.shape)}")
            kernel = adam_kernel(array_module(p))
            if kernel is not None:
                typed = p.dtype.type
                kernel(g, typed(self.lr), typed(self.beta1), typed(self.beta2), typed(self.eps * c),
                       typed(c / (1.0 - self.beta1 ** self.t)), p, m, v)
            else:
                self._chunked_update(p, g, m, v, coefficients)
        if self.t % FLUSH_EVERY == 0:
            self._flush_tiny_moments()

    def _flush_tiny_moments(self):
        """Set moments too small to matter to zero before they turn subnormal.

        A unit whose ReLU never fires gets exact zero gradients, and its
        moments decay geometrically (by β1, β2 per step) into the subnormal
        range, where a CPU computes about ten times slower (measured: Adam
        on 4.2 M subnormal float32 moments took 63 ms instead of 9 ms). A
        moment below ``tiny · 2³⁰`` (1.3e-29 in float32) moves θ by less
        than 1e-20 η; flushed every 100 steps it never becomes subnormal.
        """
        flush_tiny_moments(self.m + self.v)

    def _chunked_update(self, p, g, m, v, coefficients):
        """The update over flat views, in cache-sized chunks on NumPy."""
        module = array_module(p)
        flat = [a.reshape(-1) for a in (p, g, m, v)]
        size = flat[0].size
        chunk = CHUNK if module is numpy else size
        update_range(module, flat, 0, size, chunk, self._scratch_for(module, min(chunk, size), p.dtype),
                      coefficients)

    def _scratch_for(self, module, size, dtype):
        """A reusable scratch vector."""
        key = (id(module), numpy.dtype(dtype).str)
        scratch = self._scratch.get(key)
        if scratch is None or scratch.size < size:
            scratch = self._scratch[key] = module.empty(size, dtype=dtype)
        return scratch

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
            mine[...] = to_device(to_host(theirs), array_module(mine))


@dataclass
class PlateauSchedule:
    """Halve η after ``patience_halve`` epochs without improvement of the
    epoch's mean loss; stop after ``patience_stop``, or at ``max_epochs``
    (docs/method.md#training).

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
