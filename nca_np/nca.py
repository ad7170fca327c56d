"""The neural couplings algorithm (NCA): a matrix ``C`` with ``C X ≈ V``.

Paper convention throughout (docs/method.md#nca): frames are *columns*. ``X`` is a
segment of ``T`` mixture frames, shape (F, T); ``V`` is the model's decoder
output on it, shape (F, T); couplings ``C`` and every per-layer matrix
``W``, ``P`` are (F, F), biases ``b`` are (F,). Layers are listed encoder
first. Every function works in the dtype of its inputs (float32 stays
float32) and in the array module they belong to (NumPy or CuPy).

Two strategies fit ``C`` by minimising the entry-wise L1 error
``E = Σ |V − C X|`` (Eq. 15) with Adam:

- **student** (Eqs. 15–16): ``C`` is the unknown, ``∂E/∂C = sign(C X − V) Xᵀ``.
- **compositional** (Eqs. 17–21): one unknown ``P_l`` per layer,
  ``Z_l = P_l (W_l ⊕ b_l)ᵀ``, ``W̃_l = W_l ⊙ g(Z_l)``, ``C = W̃_L ⋯ W̃_1``.
  ``composition="authors-code"`` selects the other reading of Eqs. 18–19
  (``M_l = W_l + 1 b_lᵀ``, ``Z_l = M_l P_lᵀ``); see docs/method.md#nca.

Baselines: :func:`linear_composition` (Eqs. 11–13) and
:func:`identity_couplings`. Derivations: ``docs/gradients.md``. Exact
references to judge a fit by: :mod:`nca_np.references`. Every fit records
its diagnostics — relative error, the fall of its loss, a convergence
verdict (docs/method.md#convergence), a trajectory of checkpoints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy

from . import backend, metrics
from .check_points import chain_gradient_check_point, student_check_points
from .errors import UserError
from .models import glorot_normal
from .optim import Adam

#: The two readings of Eqs. 18–19 (docs/method.md#nca); the configuration accepts these.
COMPOSITIONS = ("paper", "authors-code")


class CouplingsError(UserError, ValueError):
    """Inputs the NCA cannot work with: shapes, layers, strategy, reading."""


#: The convergence rule (docs/method.md#convergence): a fit has converged
#: when its mean loss over the last CONVERGENCE_WINDOW of its iterations is
#: within ``tolerance`` (relative) of the mean over the window before.
CONVERGENCE_WINDOW = 0.1
CONVERGENCE_TOLERANCE = 0.01
#: Iterations between two trajectory checkpoints (and convergence checks).
CHECKPOINT_EVERY = 50


@dataclass
class CouplingsFit:
    """The result of :func:`fit_couplings`, with its diagnostics.

    Attributes:
        C: (F, F) couplings matrix, in the model's array module and dtype.
            For the compositional strategy it is composed once from the
            final ``Ps`` (Eq. 17).
        Ps: the learned (F, F) matrices ``P_l``, encoder first; empty for
            the student strategy.
        losses: (iterations,) host NumPy array; ``losses[i]`` is ``E``
            (Eq. 15) at the parameters *before* the i-th Adam step.
        strategy: "student" or "compositional".
        composition: the reading of Eqs. 18–19 that was asked for ("paper"
            or "authors-code"); it only changes the compositional strategy.
        C_initial: (F, F) the couplings at the start (the Glorot ``C`` of
            the student, the ``C`` composed from the initial ``P_l``).
        relative_error: ``‖V − C X‖₁ / ‖V‖₁`` of the final ``C`` (``C = 0``
            scores 1).
        loss_fall: :func:`loss_fall` of the losses of the last stage: how
            much the loss still fell over its last 10 % of iterations.
        converged: the verdict of the rule (``|loss_fall| < tolerance``).
        stopped: why the fit ended: "iterations" (the fixed count ran out),
            "tolerance" (converged before the cap), "cap" (reached
            ``max_iterations`` without converging) or "diverged" (a
            checkpoint found the loss NaN or infinite: the fit stopped there).
        diverged: the loss became NaN or infinite (found at a checkpoint, or
            in the final ``C``'s error): ``C`` and the measures of this fit
            mean nothing; never ``converged``.
        trajectory: checkpoints ``{"iteration", "tod_r", "relative_error"}``
            every ``checkpoint_every`` iterations (``iteration`` = Adam steps
            taken), then the final ``C``.
        tolerance: the tolerance of the verdict.
        stages: ``[first iteration, learning rate]`` of each stage: one for
            the paper's fixed count, one more after each halving of η.
    """

    C: object
    Ps: list
    losses: numpy.ndarray
    strategy: str
    composition: str
    C_initial: object = None
    relative_error: float = math.nan
    loss_fall: float = math.nan
    converged: bool = False
    stopped: str = "iterations"
    trajectory: list = field(default_factory=list)
    tolerance: float = CONVERGENCE_TOLERANCE
    stages: list = field(default_factory=list)
    diverged: bool = False

    @property
    def iterations(self) -> int:
        """Adam steps taken."""
        return int(self.losses.shape[0])

    def diagnostics(self) -> dict:
        """The JSON-able diagnostics (docs/method.md#convergence)."""
        return {"relative_error": self.relative_error, "loss_fall": self.loss_fall,
                "converged": bool(self.converged), "diverged": bool(self.diverged), "stopped": self.stopped,
                "iterations": self.iterations,
                "tolerance": self.tolerance, "stages": list(self.stages), "trajectory": list(self.trajectory)}


def loss_fall(losses, window: float = CONVERGENCE_WINDOW) -> float:
    """Relative fall of the loss over the last ``window`` of the iterations.

    .. math::
        n = len(losses),   w = max(1, round(window · n))
        before = mean losses[n−2w : n−w],   last = mean losses[n−w : n]
        fall = (before − last) / before

    Means over windows rather than single values, because a fixed-step Adam
    on an L1 loss dithers about its minimum; a negative fall is a loss that
    rose (a fit that diverges or oscillates).

    Args:
        losses: (n,) losses per iteration, host or device (reads two
            scalars).

    Returns:
        The fall (at most 1, negative when the loss rose); 0.0 when both
        windows are all zero; NaN for fewer than two losses (nothing to
        judge).
    """
    n = int(losses.shape[0])
    if n < 2:
        return math.nan
    width = min(max(1, int(round(window * n))), n // 2)
    xp = backend.array_module(losses)
    before = backend.to_float(xp.mean(losses[n - 2 * width:n - width]))
    last = backend.to_float(xp.mean(losses[n - width:]))
    if before <= 0.0:
        return 0.0 if last <= 0.0 else -math.inf
    return (before - last) / before


def is_converged(fall: float, tolerance: float = CONVERGENCE_TOLERANCE) -> bool:
    """The convergence rule: the loss changed by less than ``tolerance``
    (relative, either way) over the last 10 % of the iterations, i.e.
    ``|loss_fall| < tolerance`` (NaN: not converged)."""
    return bool(abs(fall) < tolerance)


# ---------------------------------------------------------------- checks


def _check_composition(composition: str) -> None:
    if composition not in COMPOSITIONS:
        raise CouplingsError(
            f"unknown composition {composition!r}: use 'paper' (Eqs. 18-19 as printed) "
            "or 'authors-code' (the released code's reading)"
        )


def _check_segment(X, V, n_freq: int, what: str) -> None:
    """X and V must both be (F, T) with the F of the couplings."""
    if X.ndim != 2 or X.shape[0] != n_freq:
        raise CouplingsError(
            f"X has shape {tuple(X.shape)} but {what} needs ({n_freq}, T): frames as columns"
        )
    if V.shape != X.shape:
        raise CouplingsError(
            f"V has shape {tuple(V.shape)} but X has shape {tuple(X.shape)}: both must be (F, T)"
        )


def _check_same_dtype(**arrays) -> None:
    """Refuse mixed dtypes, which would silently promote float32 to float64."""
    dtypes = {name: numpy.dtype(a.dtype) for name, a in arrays.items()}
    first_name, dtype = next(iter(dtypes.items()))
    odd = [f"{name}: {other}" for name, other in dtypes.items() if other != dtype]
    if odd:
        raise CouplingsError(
            f"arrays of mixed dtypes ({first_name}: {dtype}, {', '.join(odd)}): convert them to one float dtype"
        )
    if dtype.kind != "f":
        raise CouplingsError(f"arrays have dtype {dtype}: the NCA needs a floating-point dtype")


def _check_layers(weights, biases, Ps=None) -> int:
    """Every layer square (F, F) with an (F,) bias; returns F.

    The compositional strategy multiplies ``W_l ⊙ g(Z_l)`` into one (F, F)
    chain, and the authors-code reading adds ``b`` along rows, so only
    square layers of one width make sense (the study keeps all layers F×F).
    """
    if len(weights) == 0:
        raise CouplingsError("no layers given: the compositional strategy needs at least one (F, F) layer")
    if len(biases) != len(weights):
        raise CouplingsError(f"{len(weights)} weight matrices but {len(biases)} bias vectors")
    if Ps is not None and len(Ps) != len(weights):
        raise CouplingsError(f"{len(weights)} layers but {len(Ps)} matrices P: one P per layer")
    n_freq = weights[0].shape[-1]
    for index, W in enumerate(weights):
        if W.ndim != 2 or W.shape != (n_freq, n_freq):
            raise CouplingsError(
                f"layer {index + 1} has weights of shape {tuple(W.shape)}, not ({n_freq}, {n_freq}): "
                "the compositional strategy needs every layer square and of one width F"
            )
        if biases[index].shape != (n_freq,):
            raise CouplingsError(
                f"layer {index + 1} has a bias of shape {tuple(biases[index].shape)}, not ({n_freq},)"
            )
        if Ps is not None and Ps[index].shape != (n_freq, n_freq):
            raise CouplingsError(
                f"P_{index + 1} has shape {tuple(Ps[index].shape)}, not ({n_freq}, {n_freq})"
            )
    return n_freq


def _layer_arrays(weights, biases, Ps) -> dict:
    """Name → array for every layer's W, b and P (for dtype messages)."""
    named = {}
    for index, (W, b, P) in enumerate(zip(weights, biases, Ps), start=1):
        named.update({f"W_{index}": W, f"b_{index}": b, f"P_{index}": P})
    return named


# ---------------------------------------------------------------- student


def student_loss_and_grad(C, X, V):
    """L1 error of ``C X`` against ``V`` and its gradient (Eqs. 15–16).

    .. math::
        E = Σ |V − C X|,   ∂E/∂C = Δ = sign(C X − V) Xᵀ   (sign(0) = 0)

    Args:
        C: (F, F) couplings.
        X: (F, T) input frames as columns.
        V: (F, T) target frames as columns (the decoder output).

    Returns:
        (E, dC): ``E`` a 0-d array of the inputs' dtype (left on the device,
        so a loop need not synchronise), ``dC`` (F, F).
    """
    if C.ndim != 2 or C.shape[0] != C.shape[1]:
        raise CouplingsError(f"C has shape {tuple(C.shape)}: couplings must be square (F, F)")
    _check_segment(X, V, C.shape[1], f"C of shape {tuple(C.shape)}")
    _check_same_dtype(C=C, X=X, V=V)
    return _student_step(C, X, V)


def _student_step(C, X, V, *, grad_out=None):
    """:func:`student_loss_and_grad` after validation; ``dC`` written into
    ``grad_out`` when given (a fit reuses one (F, F) array)."""
    xp = backend.array_module(C, X, V)
    residual = C @ X
    residual -= V
    loss = xp.abs(residual).sum()
    sign = xp.sign(residual, out=residual)
    return loss, xp.matmul(sign, X.T, out=grad_out)


# ---------------------------------------------------------- compositional


def augment(W, b, composition: str = "paper"):
    """The bias-augmented weights that ``P`` is applied to (Eq. 19).

    - "paper": ``W ⊕ b = W + b 1ᵀ``, entry (j, i) is ``W_ji + b_j`` (the bias
      added to every column, as Eq. 19's text defines it).
    - "authors-code": ``M = W + 1 bᵀ``, entry (j, i) is ``W_ji + b_i``
      (PyTorch broadcasting in the released code).

    Args:
        W: (F, F) weights, (out, in).
        b: (F,) bias.

    Returns:
        (F, F) new array, same dtype and module as ``W``.
    """
    _check_composition(composition)
    if composition == "paper":
        return W + b[:, None]
    return W + b[None, :]


def _pre_activation(P, augmented, composition: str, *, out=None):
    """``Z = P (W ⊕ b)ᵀ`` ("paper") or ``Z = M Pᵀ`` ("authors-code"), Eq. 18.

    ``out``: an (F, F) array to write Z into, or None for a new one.
    """
    xp = backend.array_module(P, augmented)
    if composition == "paper":
        return xp.matmul(P, augmented.T, out=out)
    return xp.matmul(augmented, P.T, out=out)


def _p_gradient(dZ, augmented, composition: str, *, out=None):
    """``∂E/∂P`` from ``∂E/∂Z``: ``dZ (W ⊕ b)`` or ``dZᵀ M`` (transposed chain rule of Eq. 18)."""
    xp = backend.array_module(dZ, augmented)
    if composition == "paper":
        return xp.matmul(dZ, augmented, out=out)
    return xp.matmul(dZ.T, augmented, out=out)


def _gated_weights(W, P, augmented, composition: str, *, gated_out=None, slope_out=None):
    """``W̃ = W ⊙ g(Z)`` (Eqs. 18–19) and its slope ``∂W̃/∂Z = W ⊙ g'(Z)``.

    Returns:
        (W̃, slope): two (F, F) arrays of W's dtype, written into
        ``gated_out`` and ``slope_out`` when given. Backward needs only the
        slope (``∂E/∂Z = G ⊙ slope``), so keeping it saves a pass over an
        (F, F) array per layer and iteration; ``g(Z) = Z ⊙ g'(Z)`` gives
        ``W̃ = Z ⊙ slope``.
    """
    xp = backend.array_module(W, P)
    Z = _pre_activation(P, augmented, composition, out=gated_out)
    slope = xp.multiply(W, Z > 0, out=slope_out)
    Z *= slope
    return Z, slope


def compose(weights, biases, Ps, *, composition: str = "paper"):
    """The compositional couplings matrix ``C = W̃_L ⋯ W̃_2 W̃_1`` (Eqs. 17–19).

    Args:
        weights: L arrays (F, F), encoder first, ``W`` as (out, in).
        biases: L arrays (F,).
        Ps: L arrays (F, F), the learned ``P_l``.
        composition: "paper" or "authors-code" (see :func:`augment`).

    Returns:
        (F, F) couplings ``C`` in the dtype and module of the weights.
    """
    _check_composition(composition)
    _check_layers(weights, biases, Ps)
    _check_same_dtype(**_layer_arrays(weights, biases, Ps))
    C = None
    for W, b, P in zip(weights, biases, Ps):
        gated, _ = _gated_weights(W, P, augment(W, b, composition), composition)
        C = gated if C is None else gated @ C
    return C


def compositional_loss_and_grads(weights, biases, Ps, X, V, *, composition: str = "paper"):
    """L1 error of the composed couplings and its gradients for every ``P_l``.

    For a chain of any depth L (docs/method.md#nca; Eqs. 20–21 when L = 2), with
    ``S = sign(C X − V)``, ``Aft_l = W̃_L ⋯ W̃_{l+1}``, ``Bef_l = W̃_{l−1} ⋯ W̃_1``:

    .. math::
        E = Σ |V − C X|                                        (Eq. 15)
        G_l = ∂E/∂W̃_l = Aft_lᵀ Δ Bef_lᵀ = (Aft_lᵀ S)(Bef_l X)ᵀ
        ∂E/∂Z_l = G_l ⊙ W_l ⊙ g'(Z_l)
        ∂E/∂P_l = (∂E/∂Z_l)(W_l ⊕ b_l)       ("paper")
                = (∂E/∂Z_l)ᵀ M_l              ("authors-code")

    Neither ``C`` nor ``Δ`` is formed: ``Bef_l X`` is carried up the chain
    and ``Aft_lᵀ S`` down it, both (F, T), so the chain costs (3L − 1) F² T
    multiply–adds besides the 2L F³ of the ``Z_l`` and ``∂E/∂P_l`` products
    (docs/gradients.md counts it). The two-layer case written out as
    Eqs. 20–21, every matrix formed, is
    :func:`nca_np.nca_textbook.eq20_eq21_gradients`.

    Args:
        weights: L arrays (F, F), encoder first.
        biases: L arrays (F,).
        Ps: L arrays (F, F).
        X: (F, T) input frames as columns.
        V: (F, T) target frames as columns.
        composition: "paper" or "authors-code".

    Returns:
        (E, dPs): ``E`` a 0-d array of the inputs' dtype, ``dPs`` a list of L
        (F, F) arrays in the order of ``Ps``.
    """
    _check_composition(composition)
    n_freq = _check_layers(weights, biases, Ps)
    _check_segment(X, V, n_freq, f"layers of shape ({n_freq}, {n_freq})")
    _check_same_dtype(X=X, V=V, **_layer_arrays(weights, biases, Ps))
    augmented = [augment(W, b, composition) for W, b in zip(weights, biases)]
    buffers = _StepBuffers.allocate(weights[0], len(weights))
    return _compositional_step(weights, augmented, Ps, X, V, composition, buffers)


@dataclass
class _StepBuffers:
    """The (F, F) arrays of one compositional iteration, reused by a fit.

    A fit writes into the same arrays at every iteration instead of asking
    for new ones: at F = 2049 each new array is 16 MiB of fresh pages.
    """

    gated: list  # W̃_l
    slopes: list  # W_l ⊙ g'(Z_l)
    grads: list  # ∂E/∂P_l
    grad_z: object  # G_l, turned into ∂E/∂Z_l in place; one layer at a time

    @classmethod
    def allocate(cls, like, n_layers: int) -> "_StepBuffers":
        """Buffers with the shape, dtype and module of ``like`` (an (F, F) array)."""
        xp = backend.array_module(like)

        def new():
            return xp.empty(like.shape, dtype=like.dtype)

        return cls([new() for _ in range(n_layers)], [new() for _ in range(n_layers)],
                   [new() for _ in range(n_layers)], new())


def _compositional_step(weights, augmented, Ps, X, V, composition: str, buffers: _StepBuffers):
    """:func:`compositional_loss_and_grads` after validation, with ``W ⊕ b`` given.

    :func:`fit_couplings` calls this directly: the augmented weights do not
    change between iterations, so they are computed once, and ``buffers``
    are reused. The returned gradients *are* ``buffers.grads``.
    """
    xp = backend.array_module(X, V, *weights, *Ps)
    # forward: frames[l] = Bef_{l+1} X, built as frames[l] = W̃_l frames[l−1]
    frames = [X]
    for layer, (W, A, P) in enumerate(zip(weights, augmented, Ps)):
        W_tilde, _ = _gated_weights(W, P, A, composition,
                                    gated_out=buffers.gated[layer], slope_out=buffers.slopes[layer])
        frames.append(W_tilde @ frames[-1])

    residual = frames.pop()  # C X, no longer needed as a forward value
    residual -= V
    loss = xp.abs(residual).sum()
    upstream = xp.sign(residual, out=residual)  # Aft_Lᵀ S = S

    for layer in reversed(range(len(Ps))):
        dZ = xp.matmul(upstream, frames[layer].T, out=buffers.grad_z)  # G_l = (Aft_lᵀ S)(Bef_l X)ᵀ
        dZ *= buffers.slopes[layer]  # ∂E/∂Z_l = G_l ⊙ W_l ⊙ g'(Z_l)
        _p_gradient(dZ, augmented[layer], composition, out=buffers.grads[layer])
        if layer > 0:
            upstream = buffers.gated[layer].T @ upstream  # Aft_{l−1}ᵀ S = W̃_lᵀ (Aft_lᵀ S)
    return loss, list(buffers.grads)


# ---------------------------------------------------------------- baselines


def linear_composition(model):
    """The linear composition of a model's weights, biases neglected (Eqs. 11–13).

    ``C_lin = W_L ⋯ W_2 W_1``: ``W_dec W_enc`` for DAE and SF,
    ``W'_dec W'_2 W'_1 W'_enc`` for MSS-DAE.

    Args:
        model: an object with ``weights``, the list of (out, in) matrices,
            encoder first.

    Returns:
        (F_out, F_in) array in the weights' module and dtype.
    """
    weights = list(model.weights)
    C = weights[0]
    for W in weights[1:]:
        if W.shape[1] != C.shape[0]:
            raise CouplingsError(
                f"weights of shapes {tuple(W.shape)} and {tuple(C.shape)} cannot be chained"
            )
        C = W @ C
    return C.copy() if len(weights) == 1 else C


def identity_couplings(n_freq: int, *, like=None):
    """The identity baseline ``C = I`` (F, F).

    Args:
        n_freq: F.
        like: an array whose module and dtype the result takes; None gives
            float32 in the active backend.
    """
    if like is None:
        return backend.xp().eye(n_freq, dtype=numpy.float32)
    return backend.array_module(like).eye(n_freq, dtype=like.dtype)


# ---------------------------------------------------------------- Algorithm 1


def initial_draws(strategy: str, n_freq: int, n_layers: int, seed: int) -> list:
    """The initial unknowns of one fit, drawn on the host.

    Each unknown (``C``, or every ``P_l`` encoder first) is an (F, F) draw
    of ``N(0, 2 / (F + F))`` (the models' Glorot normal) from
    ``backend.rng(seed, backend.stream_key("nca-init", strategy))``: a
    stream of the NCA's own, so a fit never starts at the weights a model
    built with the same seed started from (``build_model`` draws from the
    seed's plain stream).

    Args:
        strategy: a registered strategy's name.
        n_freq: F.
        n_layers: the model's number of layers (the compositional strategy
            draws one ``P_l`` per layer).
        seed: the fit's seed.

    Returns:
        A list of (F, F) float64 host arrays; :func:`fit_couplings` casts and
        moves them, so CPU and GPU start from the same numbers.
    """
    spec = get_strategy(strategy)
    generator = backend.rng(seed, backend.stream_key("nca-init", strategy))
    return [glorot_normal(generator, n_freq, n_freq) for _ in range(spec.unknowns(n_layers))]


def _model_segment(model, X):
    """X in the model's module and dtype, checked against the model's F."""
    weights = list(model.weights)
    module = backend.array_module(weights[0])
    dtype = weights[0].dtype
    n_freq = weights[0].shape[1]
    if X.ndim != 2 or X.shape[0] != n_freq:
        raise CouplingsError(
            f"X has shape {tuple(X.shape)} but the model's input layer has shape "
            f"{tuple(weights[0].shape)}: X must be ({n_freq}, T), frames as columns"
        )
    if weights[-1].shape[0] != n_freq:
        raise CouplingsError(
            f"the model maps {n_freq} bins to {weights[-1].shape[0]}: couplings need output F = input F"
        )
    if backend.array_module(X) is not module:
        X = backend.to_device(backend.to_host(X), module)
    return X.astype(dtype, copy=False), module


@dataclass
class _Fitting:
    """What one strategy hands the common fitting loop of :func:`fit_couplings`.

    Attributes:
        params: the unknowns Adam updates in place (``[C]`` or ``[P_1, …, P_L]``).
        loss_and_grads: ``() -> (E, grads)`` at the current ``params``.
        couplings: ``() -> C`` at the ``params`` of the last
            ``loss_and_grads`` call (for the trajectory's checkpoints).
        result: ``() -> (C, Ps)``, the couplings of the current ``params``.
    """

    params: list
    loss_and_grads: Callable[[], tuple]
    couplings: Callable[[], object]
    result: Callable[[], tuple]


def _one_unknown(n_layers: int) -> int:
    return 1


def _one_per_layer(n_layers: int) -> int:
    return n_layers


def chain_iteration_flops(n_layers: int, n_freq: int, frames: int) -> float:
    """FLOPs of the products of one compositional iteration: ``2L F³`` for
    the ``Z_l`` and ``∂E/∂P_l`` products and ``(3L − 1) F² T`` along the
    chain, multiply–adds counted twice (docs/gradients.md counts them)."""
    return 2.0 * (2 * n_layers * n_freq**3 + (3 * n_layers - 1) * n_freq**2 * frames)


def student_iteration_flops(n_layers: int, n_freq: int, frames: int) -> float:
    """FLOPs of one student iteration: ``C X`` and ``S Xᵀ``, ``F² T``
    multiply–adds each."""
    return 2.0 * 2 * n_freq**2 * frames


def chain_iteration_products(n_layers: int, n_freq: int, frames: int) -> list[tuple]:
    """The matrix products of one compositional iteration, as they are called:
    per layer (paper reading) ``P Aᵀ`` (Z), ``W̃ H`` (forward chain), ``U Hᵀ``
    (G), ``dZ A`` (∂E/∂P), and ``W̃ᵀ U`` below the top layer (backward chain).
    Each is ``(lhs shape, transpose lhs, rhs shape, transpose rhs)``, the
    shapes of the stored arrays."""
    F, T = n_freq, frames
    per_layer = [((F, F), False, (F, F), True), ((F, F), False, (F, T), False),
                 ((F, T), False, (F, T), True), ((F, F), False, (F, F), False)]
    return per_layer * n_layers + [((F, F), True, (F, T), False)] * (n_layers - 1)


def student_iteration_products(n_layers: int, n_freq: int, frames: int) -> list[tuple]:
    """The matrix products of one student iteration (Eqs. 15–16): ``C X`` and
    ``S Xᵀ``, as in :func:`chain_iteration_products`."""
    F, T = n_freq, frames
    return [((F, F), False, (F, T), False), ((F, T), False, (F, T), True)]


@dataclass(frozen=True)
class Strategy:
    """One NCA strategy, declared once in :data:`STRATEGIES`.

    Attributes:
        name: the name used in configurations and unit files.
        label: what tables and figures call it.
        start: ``(model, X, V, initial, composition) -> _Fitting``: takes
            the initial unknowns ``initial`` (device arrays of X's dtype,
            drawn by :func:`initial_draws`) as its parameters and returns
            the step.
        equations: where the paper defines it.
        unknowns: ``n_layers -> `` how many (F, F) unknowns it starts from.
        flops: ``(n_layers, n_freq, frames) ->`` FLOPs of one iteration's
            matrix products, for time estimates and bounds (the plan,
            gpucheck); a strategy that does not say is costed as the chain.
        products: ``(n_layers, n_freq, frames) ->`` the matrix products of
            one iteration (:func:`chain_iteration_products`), which
            ``scripts/bench_nca.py`` times on their own as the iteration's
            bound; the chain's when a strategy does not say.
        free: whether C itself is unconstrained, so that every exact
            couplings matrix — the least-squares ones included — is within
            its reach (docs/method.md#exact-references); the report reads it
            where a fit is compared with the least-squares reference.
        check_points: ``module -> [GradientCheckPoint, …]``: small float64
            problems at which :mod:`nca_np.gradcheck` compares the gradients
            of ``start``'s step with central differences (see
            :mod:`nca_np.check_points`).
    """

    name: str
    label: str
    start: Callable
    equations: str = ""
    unknowns: Callable[[int], int] = _one_unknown
    flops: Callable[[int, int, int], float] = chain_iteration_flops
    products: Callable[[int, int, int], list] = chain_iteration_products
    free: bool = False
    check_points: Callable | None = None

    @property
    def matrix_key(self) -> str:
        """The key of its couplings matrix in the saved arrays (Figure 3), e.g. "C_student"."""
        return f"C_{self.name}"


def _start_student(model, X, V, initial, composition) -> _Fitting:
    """``C`` itself is the unknown (Eqs. 15–16)."""
    C = initial[0]
    grad = backend.array_module(C).empty_like(C)

    def loss_and_grads():
        loss, dC = _student_step(C, X, V, grad_out=grad)
        return loss, [dC]

    return _Fitting([C], loss_and_grads, lambda: C, lambda: (C, []))


def _start_compositional(model, X, V, initial, composition) -> _Fitting:
    """One unknown ``P_l`` per layer (Eqs. 17–21), encoder first."""
    weights, biases = list(model.weights), list(model.biases)
    _check_layers(weights, biases)
    Ps = list(initial)
    augmented = [augment(W, b, composition) for W, b in zip(weights, biases)]
    buffers = _StepBuffers.allocate(Ps[0], len(Ps))

    def loss_and_grads():
        return _compositional_step(weights, augmented, Ps, X, V, composition, buffers)

    def couplings():
        C = buffers.gated[0].copy()  # W̃_l of the last step: C = W̃_L ⋯ W̃_1
        for gated in buffers.gated[1:]:
            C = gated @ C
        return C

    def result():
        return compose(weights, biases, Ps, composition=composition), list(Ps)

    return _Fitting(Ps, loss_and_grads, couplings, result)


def _chain_check_points(module=numpy) -> list:
    """The compositional gradient checks: both readings of Eqs. 18–19,
    chains of 2 and 4 layers (Eqs. 20–21 and their general form)."""
    return [chain_gradient_check_point(depth, composition, module=module)
            for composition in COMPOSITIONS for depth in (2, 4)]


#: The registry of NCA strategies: a new strategy is declared here, once,
#: with :func:`register_strategy`; configuration, experiment and report read it.
STRATEGIES: dict[str, Strategy] = {}


def register_strategy(strategy: Strategy) -> Strategy:
    """Add a strategy to the registry (a name may be declared only once)."""
    if strategy.name in STRATEGIES:
        raise ValueError(f"NCA strategy {strategy.name!r} is already registered")
    STRATEGIES[strategy.name] = strategy
    return strategy


register_strategy(Strategy("student", "NCA student", _start_student, "Eqs. 15–16",
                           flops=student_iteration_flops, products=student_iteration_products, free=True,
                           check_points=student_check_points))
register_strategy(Strategy("compositional", "NCA compositional", _start_compositional, "Eqs. 17–21",
                           _one_per_layer, check_points=_chain_check_points))


def strategy_names() -> tuple[str, ...]:
    """The registered strategies' names, in the order they were declared."""
    return tuple(STRATEGIES)


def get_strategy(name: str) -> Strategy:
    """The registered strategy called ``name``; one line listing the known ones if none."""
    try:
        return STRATEGIES[name]
    except (KeyError, TypeError):
        raise CouplingsError(f"unknown NCA strategy {name!r}: use one of {', '.join(strategy_names())}") from None


@dataclass
class _Schedule:
    """When a fit run to the tolerance halves its step and when it stops
    (docs/method.md#convergence); a fit of fixed length (``cap ==
    iterations``) never does either.

    Attributes:
        stages: ``[first iteration, learning rate]`` of each stage so far.
    """

    iterations: int
    cap: int
    tolerance: float
    halvings: int
    stages: list

    def stop_at(self, iteration: int, losses, optimizer) -> bool:
        """At a checkpoint: True to stop here. When the rule holds over the
        current stage (of at least ``iterations`` steps) and halvings are
        left, halves the optimizer's η and starts a new stage instead."""
        start = self.stages[-1][0]
        if self.cap == self.iterations or iteration - start < self.iterations:
            return False
        if not is_converged(loss_fall(losses[start:iteration]), self.tolerance):
            return False
        if len(self.stages) > self.halvings:
            return True
        optimizer.lr /= 2.0
        self.stages.append([iteration, optimizer.lr])
        return False


def _check_schedule(iterations: int, max_iterations: int | None, tolerance: float,
                    checkpoint_every: int) -> int:
    """The iteration cap, after checking the fit's schedule."""
    if iterations < 1:
        raise CouplingsError(f"iterations is {iterations}: it must be at least 1")
    cap = iterations if max_iterations is None else int(max_iterations)
    if cap < iterations:
        raise CouplingsError(f"max_iterations is {cap} but iterations is {iterations}: the cap cannot be "
                             "below the number of iterations")
    if not tolerance > 0:
        raise CouplingsError(f"tolerance is {tolerance}: it must be positive")
    if checkpoint_every < 1:
        raise CouplingsError(f"checkpoint_every is {checkpoint_every}: it must be at least 1")
    return cap


def _initial_params(initial, strategy: str, n_freq: int, n_layers: int, seed: int, X, module) -> list:
    """The fit's starting unknowns on the device, in X's dtype: ``initial``
    (host arrays from :func:`initial_draws`) when given, else drawn now."""
    if initial is None:
        initial = initial_draws(strategy, n_freq, n_layers, seed)
    expected = get_strategy(strategy).unknowns(n_layers)
    if len(initial) != expected or any(tuple(a.shape) != (n_freq, n_freq) for a in initial):
        raise CouplingsError(f"initial holds {len(initial)} arrays of shapes "
                             f"{[tuple(a.shape) for a in initial]}: the {strategy} strategy needs "
                             f"{expected} of shape ({n_freq}, {n_freq})")
    # a copy each: Adam updates the unknowns in place, the caller's draws stay intact
    return [backend.to_device(numpy.array(a, dtype=X.dtype), module) for a in initial]


def fit_couplings(
    model,
    X,
    strategy: str,
    *,
    iterations: int = 600,
    lr: float = 1e-4,
    seed: int = 0,
    composition: str = "paper",
    callback: Callable[[int, object], None] | None = None,
    max_iterations: int | None = None,
    tolerance: float = CONVERGENCE_TOLERANCE,
    halvings: int = 0,
    checkpoint_every: int = CHECKPOINT_EVERY,
    initial: list | None = None,
    on_checkpoint: Callable[[dict], None] | None = None,
) -> CouplingsFit:
    """Algorithm 1: fit couplings to a trained model on one segment.

    The target is the model's decoder output (estimate for DAE/MSS-DAE, mask
    for SF): ``V = decoder_output(Xᵀ)ᵀ``, since the model takes frames as
    rows. ``C`` (student) or every ``P_l`` (compositional, encoder first)
    starts from :func:`initial_draws` (a Glorot normal draw from the NCA's
    own stream of ``seed``); then full-batch Adam steps on ``E`` (Eq. 15):

    - ``max_iterations`` None (or equal to ``iterations``): exactly
      ``iterations`` steps, the paper's Algorithm 1;
    - ``max_iterations > iterations``: at least ``iterations`` steps, then
      on until the convergence rule holds at a checkpoint
      (:func:`loss_fall` below ``tolerance``) or ``max_iterations`` is
      reached. With ``halvings = h > 0`` the first ``h`` times the rule
      holds η is halved instead, and the fit goes on (a stage of at least
      ``iterations`` steps per learning rate, the rule applied to the
      stage's own losses): a fixed-step Adam on an L1 loss dithers about
      its minimum with an amplitude that scales with η, so each halving
      lowers the floor the loss can reach.

    Every ``checkpoint_every`` iterations the fit records a checkpoint of
    its trajectory (TOD-R and relative error of the current ``C``); that is
    the only time it reads anything back from the device, so a GPU runs the
    iterations in between without waiting on the host.

    Args:
        model: a trained model (``weights``, ``biases``, ``decoder_output``).
        X: (F, T) mixture frames as columns; moved to the model's array
            module and dtype if needed.
        strategy: "student" or "compositional".
        iterations: number of Adam steps (the least number when
            ``max_iterations`` is larger).
        lr: Adam learning rate (β1 = 0.9, β2 = 0.999, ε = 1e-8).
        seed: seed of the initialisation.
        composition: reading of Eqs. 18–19 for the compositional strategy.
        callback: called as ``callback(iteration, loss)`` after each step,
            ``loss`` a 0-d array on the model's device (read it with
            ``backend.to_float`` only when needed: each read synchronises).
        max_iterations: the cap of a fit run to the tolerance.
        tolerance: of the convergence rule (docs/method.md#convergence).
        halvings: how many times a fit run to the tolerance halves η when
            the rule holds, before it stops.
        checkpoint_every: iterations between trajectory checkpoints.
        initial: the initial unknowns as :func:`initial_draws` returns them
            (drawn ahead of time, e.g. while another fit runs); None draws
            them here. Either way the same numbers for the same seed.
        on_checkpoint: called with each trajectory checkpoint (a dict), e.g.
            to show progress.

    Returns:
        :class:`CouplingsFit`, with its diagnostics.
    """
    spec = get_strategy(strategy)
    cap = _check_fit_settings(composition, iterations, max_iterations, tolerance, checkpoint_every, halvings)
    X, module = _model_segment(model, X)
    # contiguous, so each iteration's C X − V reads it with unit stride
    V = module.ascontiguousarray(model.decoder_output(X.T).T)
    params = _initial_params(initial, strategy, X.shape[0], len(list(model.weights)), seed, X, module)
    fitting = spec.start(model, X, V, params, composition)
    loop = _FitLoop(fitting, module.empty(cap, dtype=X.dtype), Adam(fitting.params, lr=lr),
                    _Schedule(iterations, cap, tolerance, halvings, [[0, float(lr)]]),
                    v_norm=backend.to_float(module.abs(V).sum()), checkpoint_every=checkpoint_every,
                    callback=callback, on_checkpoint=on_checkpoint)
    # A fit that diverges overflows on its way; it is recorded (``diverged``), not warned about.
    with _quiet_floats(module):
        loop.run()
        return loop.result(X, V, strategy, composition, tolerance)


def _check_fit_settings(composition: str, iterations: int, max_iterations: int | None, tolerance: float,
                        checkpoint_every: int, halvings: int) -> int:
    """The iteration cap, after checking every setting of the fit."""
    _check_composition(composition)
    cap = _check_schedule(iterations, max_iterations, tolerance, checkpoint_every)
    if halvings < 0:
        raise CouplingsError(f"halvings is {halvings}: it must be zero or positive")
    return cap


def _quiet_floats(module):
    """NumPy's floating-point warnings silenced (a diverging fit is reported
    by its ``diverged`` flag, not by warnings printed along the way)."""
    import contextlib

    errstate = getattr(module, "errstate", None)
    return errstate(all="ignore") if errstate is not None else contextlib.nullcontext()


@dataclass
class _FitLoop:
    """The iterations of :func:`fit_couplings` (Algorithm 1) and what they record.

    ``losses`` is the (cap,) device buffer of ``E`` before each step;
    ``stopped`` says why the loop ended ("iterations", "tolerance", "cap"
    or "diverged": a checkpoint read a loss that is NaN or infinite).
    """

    fitting: _Fitting
    losses: object
    optimizer: Adam
    schedule: _Schedule
    v_norm: float
    checkpoint_every: int
    callback: Callable | None = None
    on_checkpoint: Callable | None = None
    trajectory: list = field(default_factory=list)
    C_initial: object = None
    iteration: int = 0
    stopped: str = ""

    def run(self) -> None:
        """Adam steps until the count, the cap, the tolerance or a non-finite loss stops them."""
        schedule = self.schedule
        self.stopped = "iterations" if schedule.cap == schedule.iterations else "cap"
        while self.iteration < schedule.cap:
            loss, grads = self.fitting.loss_and_grads()
            self.losses[self.iteration] = loss
            if self.iteration == 0:
                self.C_initial = self.fitting.couplings().copy()
            if self.iteration % self.checkpoint_every == 0 and self._stops_at_checkpoint(loss):
                break
            self.optimizer.step(grads)
            if self.callback is not None:
                self.callback(self.iteration, loss)
            self.iteration += 1

    def _stops_at_checkpoint(self, loss) -> bool:
        """The checks of a checkpoint (the only reads from the device): the
        schedule's rule, then the trajectory record, whose loss must be finite."""
        if self.schedule.stop_at(self.iteration, self.losses, self.optimizer):
            self.stopped = "tolerance"
            return True
        record = self.checkpoint(self.iteration, self.fitting.couplings(), loss)
        if not math.isfinite(record["relative_error"]) and math.isfinite(self.v_norm) and self.v_norm > 0:
            self.stopped = "diverged"
            return True
        return False

    def checkpoint(self, iteration: int, C, loss) -> dict:
        """Record (and hand ``on_checkpoint``) the trajectory's point at ``iteration``."""
        record = {"iteration": iteration, "tod_r": metrics.tod_r(C),
                  "relative_error": _relative(backend.to_float(loss), self.v_norm)}
        self.trajectory.append(record)
        if self.on_checkpoint is not None:
            self.on_checkpoint(record)
        return record

    def result(self, X, V, strategy: str, composition: str, tolerance: float) -> CouplingsFit:
        """The :class:`CouplingsFit` of the loop as it ended (a final checkpoint at the final ``C``)."""
        module = backend.array_module(X)
        C, Ps = self.fitting.result()
        final = self.checkpoint(self.iteration, C, module.abs(C @ X - V).sum())
        # the loss can turn non-finite between the last checkpoint and the end
        diverged = self.stopped == "diverged" or (not math.isfinite(final["relative_error"])
                                                  and math.isfinite(self.v_norm) and self.v_norm > 0)
        host_losses = backend.to_host(self.losses[:self.iteration])
        fall = loss_fall(host_losses[self.schedule.stages[-1][0]:])
        return CouplingsFit(C, Ps, host_losses, strategy, composition, C_initial=self.C_initial,
                            relative_error=final["relative_error"], loss_fall=fall,
                            converged=not diverged and is_converged(fall, tolerance), stopped=self.stopped,
                            trajectory=self.trajectory, tolerance=tolerance, stages=self.schedule.stages,
                            diverged=diverged)


def _relative(error: float, norm: float) -> float:
    """``error / norm``; NaN when the target is zero."""
    return error / norm if norm > 0 else math.nan
