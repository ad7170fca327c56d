"""Exact references for the NCA's couplings (docs/method.md#exact-references).

The NCA fits ``C`` by gradient descent from a random start; these are the
matrices the same question has in closed form, to judge its fits against:

- :func:`min_norm_couplings`: ``V X⁺``, the least-squares couplings of
  smallest Frobenius norm;
- :func:`nearest_exact_couplings`: ``C0 + (V − C0 X) X⁺``, the
  least-squares couplings nearest to a given ``C0`` (the NCA's initial
  ``C``, the identity, …): with :func:`min_norm_couplings` it shows how wide
  the family of exact solutions is when ``rank X < F``;
- :func:`local_map`, :func:`local_offset`: the network's exact affine map at
  one frame, ``v = J x + c`` with ``J = D_L W_L ⋯ D_1 W_1`` (Eq. 14 with the
  true ReLU gates ``D_l``);
- :func:`mean_local_map`: the mean of ``J`` over a segment's frames;
- :func:`ridge_couplings`, :func:`ridge_path`: ``V Xᵀ (X Xᵀ + α σ₁² I)⁻¹``,
  least squares with a penalty on ``‖C‖_F`` (docs/method.md#ridge-couplings).

Convention as in :mod:`nca_np.nca`: frames are *columns*; ``X`` and ``V``
(the decoder output: the estimate for DAE and MSS-DAE, the mask for SF) are
(F, T), couplings (F, F). Every result is float64 in the array module of its
inputs (NumPy or CuPy), whatever their dtype: a pseudo-inverse of a
spectrogram segment is too ill-conditioned for float32. Derivations and
costs: docs/gradients.md §14.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy

from . import backend
from .errors import UserError


class ReferenceError(UserError, ValueError):
    """Inputs an exact reference cannot be computed from (shapes)."""


# ------------------------------------------------------------ pseudo-inverse


@dataclass
class PseudoInverse:
    """``X⁺`` of one segment and the numerical rank of ``X``.

    Attributes:
        matrix: (T, F) float64 ``X⁺``.
        rank: the number of singular values of ``X`` above
            ``σ_max · max(F, T) · ε`` (NumPy's ``matrix_rank`` rule, with
            ``ε`` of the dtype ``X`` was given in); the smaller ones are
            treated as zero in ``X⁺``.
        n_freq: F; ``rank < F`` means the student problem ``C X = V`` does
            not determine ``C`` (docs/method.md#exact-references).
    """

    matrix: object
    rank: int
    n_freq: int

    @property
    def determined(self) -> bool:
        """True when ``rank X = F``: at most one ``C`` gives ``C X = V``."""
        return self.rank >= self.n_freq


def _float64(array):
    xp = backend.array_module(array)
    return xp.asarray(array, dtype=xp.float64)


def _check_segment(X, V=None) -> None:
    if X.ndim != 2:
        raise ReferenceError(f"X has shape {tuple(X.shape)}: it must be (F, T), frames as columns")
    if V is not None and V.shape != X.shape:
        raise ReferenceError(f"V has shape {tuple(V.shape)} but X has shape {tuple(X.shape)}: both must be (F, T)")


def _rank_cutoff(X, largest):
    """The singular values of ``X`` at or below this count as zero.

    ``σ_max · max(F, T) · ε`` with ``ε`` of ``X``'s own floating dtype (float64's
    for integer data): the values a float32 segment holds are only known to
    about 1e-7 of ``σ_max``, so smaller singular values are rounding, even
    after the cast to float64 (docs/method.md#exact-references).
    """
    dtype = X.dtype if numpy.issubdtype(numpy.dtype(X.dtype), numpy.floating) else numpy.float64
    return largest * max(X.shape) * float(numpy.finfo(dtype).eps)


def _svd64(X):
    """The thin SVD of ``X`` (F, T) in float64 and the rank cutoff of its
    dtype: ``(U (F, K), s (K,), Wᵀ (K, T), cutoff)``, ``K = min(F, T)``."""
    xp = backend.array_module(X)
    U, s, Wt = xp.linalg.svd(_float64(X), full_matrices=False)
    largest = backend.to_float(s[0]) if s.size else 0.0
    return U, s, Wt, _rank_cutoff(X, largest)


def pseudo_inverse(X) -> PseudoInverse:
    """The Moore–Penrose pseudo-inverse of a segment, by its thin SVD.

    .. math::
        X = U Σ Wᵀ,   X⁺ = W_r Σ_r⁻¹ U_rᵀ   (the r singular values kept)

    The rank ``r`` counts the singular values above
    ``σ_max · max(F, T) · ε(dtype of X)``: a float32 segment is ranked with
    float32's ε, before the solve is done in float64.

    Args:
        X: (F, T) frames as columns.

    Returns:
        :class:`PseudoInverse` (float64, in the module of ``X``).
    """
    _check_segment(X)
    xp = backend.array_module(X)
    U, s, Wt, cutoff = _svd64(X)
    if s.size == 0:
        return PseudoInverse(xp.zeros(X.shape[::-1]), 0, int(X.shape[0]))
    rank = int(backend.to_float((s > cutoff).sum())) if cutoff > 0 else 0
    matrix = (Wt[:rank].T / s[:rank]) @ U[:, :rank].T
    return PseudoInverse(matrix, rank, int(X.shape[0]))


def _pinv_of(X, pinv: PseudoInverse | None) -> PseudoInverse:
    if pinv is None:
        return pseudo_inverse(X)
    if pinv.matrix.shape != X.shape[::-1]:
        raise ReferenceError(f"pseudo-inverse of shape {tuple(pinv.matrix.shape)} does not belong to X of "
                             f"shape {tuple(X.shape)}")
    return pinv


def min_norm_couplings(X, V, *, pinv: PseudoInverse | None = None):
    """The minimum-norm least-squares couplings ``C = V X⁺``.

    Of all ``C`` minimising ``‖V − C X‖_F``, the one of smallest ``‖C‖_F``;
    when ``rank X = T ≤ F`` it solves ``C X = V`` exactly. It is zero on the
    directions no frame of the segment has, so it carries nothing of any
    initialisation.

    Args:
        X: (F, T) input frames as columns.
        V: (F, T) target frames (the decoder output) as columns.
        pinv: ``pseudo_inverse(X)`` when already computed.

    Returns:
        (F, F) float64.
    """
    _check_segment(X, V)
    return _float64(V) @ _pinv_of(X, pinv).matrix


def nearest_exact_couplings(X, V, C0, *, pinv: PseudoInverse | None = None):
    """The least-squares couplings nearest to ``C0``: ``C0 + (V − C0 X) X⁺``.

    ``C0`` keeps what it does outside the span of the frames (``C0 (I − X X⁺)``)
    and is corrected inside it, so ``C X`` is the least-squares fit of ``V``
    (exact when ``rank X = T``) and no such ``C`` is closer to ``C0`` in
    Frobenius norm. ``C0 = 0`` gives :func:`min_norm_couplings`.

    Args:
        X, V: (F, T) frames as columns.
        C0: (F, F) the matrix to stay near (the NCA's initial ``C``, the
            identity, …).
        pinv: ``pseudo_inverse(X)`` when already computed.

    Returns:
        (F, F) float64.
    """
    _check_segment(X, V)
    if C0.shape != (X.shape[0], X.shape[0]):
        raise ReferenceError(f"C0 has shape {tuple(C0.shape)}, not ({X.shape[0]}, {X.shape[0]})")
    C0 = _float64(C0)
    return C0 + (_float64(V) - C0 @ _float64(X)) @ _pinv_of(X, pinv).matrix


# ------------------------------------------------------------ ridge


def _ridge_factors(s, alpha: float, cutoff: float):
    """``s / (s² + α σ₁²)`` (K,); at ``α = 0`` the pseudo-inverse's ``1/s``
    on the singular values above ``cutoff`` and 0 below."""
    xp = backend.array_module(s)
    if s.size == 0 or backend.to_float(s[0]) == 0.0:
        return xp.zeros_like(s)
    if alpha == 0:
        kept = s > cutoff
        return xp.where(kept, 1.0 / xp.where(kept, s, 1.0), 0.0)
    return s / (s * s + alpha * s[0] * s[0])


def ridge_path(X, V, alphas):
    """Ridge couplings for several ``α`` from one SVD of ``X``.

    .. math::
        C(α) = V Xᵀ (X Xᵀ + α σ₁² I)⁻¹ = (V W) diag(s / (s² + α σ₁²)) Uᵀ,
        X = U diag(s) Wᵀ (thin SVD),  σ₁ = s₁

    (docs/method.md#ridge-couplings). ``α`` is in units of ``σ₁(X)²``, so it
    does not depend on the scale of the features; ``α = 0`` is ``V X⁺``.

    Args:
        X: (F, T) input frames as columns.
        V: (F, T) target frames (the decoder output) as columns.
        alphas: iterable of ``α ≥ 0``.

    Returns:
        A generator of (F, F) float64 ``C(α)`` in the module of ``X``, in the order of
        ``alphas``. The SVD costs ``O(F T min(F, T))`` and ``V W`` ``F T K``
        once; each ``α`` then costs ``F² K`` (``K = min(F, T)``).
    """
    _check_segment(X, V)
    alphas = [float(alpha) for alpha in alphas]
    for alpha in alphas:
        if alpha < 0 or not numpy.isfinite(alpha):
            raise ReferenceError(f"ridge alpha is {alpha}: it must be a finite number >= 0")
    U, s, Wt, cutoff = _svd64(X)
    VW = _float64(V) @ Wt.T
    return ((VW * _ridge_factors(s, alpha, cutoff)) @ U.T for alpha in alphas)


def ridge_couplings(X, V, alpha: float):
    """The ridge couplings ``C = V Xᵀ (X Xᵀ + α σ₁(X)² I)⁻¹``.

    The minimiser of ``‖V − C X‖_F² + α σ₁² ‖C‖_F²``: least squares with a
    penalty on the size of ``C``, so directions the frames barely cover are
    not fitted at the price of huge entries (docs/method.md#ridge-couplings).
    ``α → 0`` tends to ``V X⁺``; ``‖C‖_F`` falls like ``1/α`` for large ``α``.

    Args:
        X: (F, T) input frames as columns.
        V: (F, T) target frames as columns.
        alpha: the penalty in units of ``σ₁(X)²`` (≥ 0).

    Returns:
        (F, F) float64 in the module of ``X``.
    """
    return next(ridge_path(X, V, [alpha]))


# ------------------------------------------------------------ local maps


def _layers64(model):
    """The model's (W_l, b_l), encoder first, as float64 arrays."""
    return [(_float64(W), _float64(b)) for W, b in zip(model.weights, model.biases)]


def _model_frames(model, X):
    """``X`` (F, T) as float64 in the model's module, checked against its F."""
    if X.ndim != 2 or X.shape[0] != model.n_freq:
        raise ReferenceError(f"X has shape {tuple(X.shape)} but the model takes {model.n_freq} bins: "
                             f"it must be ({model.n_freq}, T), frames as columns")
    module = backend.array_module(model.weights[0])
    if backend.array_module(X) is not module:
        X = backend.to_device(backend.to_host(X), module)
    return _float64(X)


def gates(model, X) -> list:
    """The ReLU gates of every layer at every frame.

    .. math::  z_l = W_l h_{l−1} + b_l,   a_l = 1[z_l > 0],   h_l = a_l ⊙ z_l

    (``g'(0) = 0``, as in training). Args: ``X`` (F, T) frames as columns.
    Returns: L float64 0/1 arrays (F_l, T), encoder first: the activation
    patterns ``A_l``.
    """
    h = _model_frames(model, X)
    patterns = []
    for W, b in _layers64(model):
        z = W @ h
        z += b[:, None]
        active = (z > 0).astype(numpy.float64)
        patterns.append(active)
        h = z * active
    return patterns


def _local_affine(model, x):
    """``(J, c)`` of the decoder output at frame ``x`` (F,): ``v = J x + c``.

    .. math::
        J_0 = I,  c_0 = 0,   J_l = D_l W_l J_{l−1},   c_l = D_l (W_l c_{l−1} + b_l)
    """
    if x.ndim != 1:
        raise ReferenceError(f"x has shape {tuple(x.shape)}: one frame of shape (F,) is expected")
    active = [a[:, 0] for a in gates(model, x[:, None])]
    J = c = None
    for (W, b), a in zip(_layers64(model), active):
        J = W if J is None else W @ J
        c = b if c is None else W @ c + b
        J = a[:, None] * J
        c = a * c
    return J, c


def local_map(model, x):
    """The exact Jacobian of the decoder output at one frame (Eq. 14).

    .. math::  J(x) = D_L W_L ⋯ D_2 W_2 D_1 W_1,   D_l = diag(1[z_l(x) > 0])

    The network is affine on the region of inputs sharing ``x``'s gates,
    and ``J`` is its matrix there: the decoder output ``v`` (the mask for
    SF) is ``J x + local_offset(model, x)`` exactly.

    Args:
        model: a :class:`nca_np.models.Model` (any depth, square layers).
        x: (F,) one input frame.

    Returns:
        (F, F) float64, rows output bins, columns input bins. Costs
        ``(L − 1) F³`` multiply–adds.
    """
    return _local_affine(model, x)[0]


def local_offset(model, x):
    """The offset ``c`` of the local affine map: ``v = local_map(x) x + c``.

    .. math::  c = Σ_l D_L W_L ⋯ D_{l+1} W_{l+1} D_l b_l

    (zero when every bias is zero).

    Args:
        model: a :class:`nca_np.models.Model`.
        x: (F,) one input frame.

    Returns:
        (F,) float64.
    """
    return _local_affine(model, x)[1]


def local_offsets(model, X):
    """The offsets of every frame, ``c(x_t)`` as columns, in one pass.

    Args:
        X: (F, T) frames as columns.

    Returns:
        (F, T) float64; column ``t`` is ``local_offset(model, X[:, t])``.
        Costs ``L F² T``.
    """
    offsets = None
    for (W, b), active in zip(_layers64(model), gates(model, X)):
        pre = b[:, None] if offsets is None else W @ offsets + b[:, None]
        offsets = active * pre
    return offsets


def mean_local_map(model, X, *, frame_stride: int = 1):
    """The mean of :func:`local_map` over a segment's frames.

    .. math::
        J̄ = (1/T) Σ_t D_L(t) W_L ⋯ D_1(t) W_1
           = [(1/T) Σ_t D_L(t) K_t D_1(t)] W_1,   K_t = W_L D_{L−1}(t) W_{L−1} ⋯ D_2(t) W_2

    ``D_L(t) K D_1(t)`` is ``K ⊙ a_L(t) a_1(t)ᵀ``, so:

    - ``L = 1``: ``J̄ = diag(A_1 1 / T) W_1``;
    - ``L = 2`` (DAE, SF): ``K_t = W_2`` for every frame and
      ``J̄ = [W_2 ⊙ (A_2 A_1ᵀ / T)] W_1``: ``F² T + F³`` in all;
    - ``L > 2``: ``K_t`` depends on the frame through the middle gates; the
      chain costs ``(L − 2) F³`` per frame plus ``F³`` once. For MSS-DAE
      (``L = 4``) at ``F = 2049`` that is ``2 F³ = 1.7·10¹⁰`` multiply–adds
      per frame, ``6.2·10¹²`` (1.2·10¹³ floating-point operations) for a
      segment of 360 frames: a fraction of a second on a GPU with tens of
      TFLOP/s in float64, but 4 to 20 minutes on two CPU cores (10–50
      GFLOP/s) — hence ``frame_stride``.

    Args:
        model: a :class:`nca_np.models.Model` (square layers).
        X: (F, T) frames as columns.
        frame_stride: average over frames ``0, s, 2s, …`` only (``s = 1``:
            every frame, exact; ``nca.local_map_stride`` in the
            configuration).

    Returns:
        (F, F) float64.
    """
    if int(frame_stride) < 1:
        raise ReferenceError(f"frame_stride is {frame_stride}: it must be at least 1")
    X = _model_frames(model, X)[:, ::int(frame_stride)]
    patterns = gates(model, X)
    layers = _layers64(model)
    n_frames = X.shape[1]
    W1 = layers[0][0]
    if len(layers) == 1:
        return (patterns[0].sum(axis=1) / n_frames)[:, None] * W1
    first, last = patterns[0], patterns[-1]
    if len(layers) == 2:
        return (layers[1][0] * (last @ first.T / n_frames)) @ W1
    xp = backend.array_module(W1)
    total = xp.zeros((last.shape[0], first.shape[0]))
    for t in range(n_frames):
        K = layers[1][0]
        for (W, _), gate in zip(layers[2:], patterns[1:-1]):
            K = (W * gate[:, t][None, :]) @ K  # W_l D_{l−1}(t) K
        total += (last[:, t][:, None] * K) * first[:, t][None, :]
    return (total / n_frames) @ W1


def frames_used(n_frames: int, frame_stride: int) -> int:
    """How many frames :func:`mean_local_map` averages over."""
    return len(range(0, int(n_frames), int(frame_stride)))
