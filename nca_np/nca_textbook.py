"""The NCA's equations exactly as the paper writes them: slow reference forms.

:mod:`nca_np.nca` computes the same quantities in a factored, in-place form
that never builds ``C`` or ``Δ`` during a fit. The functions here build every
matrix the equations name, one step per line, so that a reader can check
them against docs/method.md#compositional and the tests can use them as
oracles for the fast forms. They are not used by the experiment.

Frames are columns: ``X``, ``V`` are (F, T); ``C``, ``W``, ``P`` are (F, F),
``b`` is (F,); layers are listed encoder first. Host NumPy arrays, any float
dtype (the tests use float64). ``composition`` selects the reading of
Eqs. 18–19 (docs/method.md#two-readings): "paper" or "authors-code".
"""

from __future__ import annotations

import numpy

READINGS = ("paper", "authors-code")


def _check_reading(composition: str) -> None:
    if composition not in READINGS:
        raise ValueError(f"unknown composition {composition!r}: use 'paper' or 'authors-code'")


def augmented_weights(W, b, composition: str = "paper"):
    """The bias-augmented weights, entry by entry (Eq. 19).

    "paper": ``(W ⊕ b)_ji = W_ji + b_j`` (``W + b 1ᵀ``, the bias added to every
    column); "authors-code": ``M_ji = W_ji + b_i`` (``W + 1 bᵀ``).

    Returns:
        (F, F) new array.
    """
    _check_reading(composition)
    n_out, n_in = W.shape
    augmented = numpy.empty_like(W)
    for j in range(n_out):
        for i in range(n_in):
            augmented[j, i] = W[j, i] + (b[j] if composition == "paper" else b[i])
    return augmented


def pre_activation(W, b, P, composition: str = "paper"):
    """``Z = P (W ⊕ b)ᵀ`` ("paper") or ``Z = M Pᵀ`` ("authors-code") (Eq. 18). Returns (F, F)."""
    augmented = augmented_weights(W, b, composition)
    return P @ augmented.T if composition == "paper" else augmented @ P.T


def gated_weights(W, b, P, composition: str = "paper"):
    """``W̃ = W ⊙ g(Z)`` (Eq. 19), g the ReLU. Returns (F, F)."""
    return W * numpy.maximum(pre_activation(W, b, P, composition), 0.0)


def compose(weights, biases, Ps, composition: str = "paper"):
    """``C = W̃_L ⋯ W̃_2 W̃_1`` (Eq. 17), the encoder's ``W̃_1`` rightmost. Returns (F, F)."""
    C = None
    for W, b, P in zip(weights, biases, Ps):
        W_tilde = gated_weights(W, b, P, composition)
        C = W_tilde if C is None else W_tilde @ C
    return C


def student_loss_and_gradient(C, X, V):
    """Eqs. 15–16 as written.

    .. math::
        E = Σ |V − C X|                      (Eq. 15)
        ∂E/∂C = Δ = sign(C X − V) Xᵀ         (Eq. 16), sign(0) = 0

    Returns:
        ``(E, Δ)``: a Python float and an (F, F) array.
    """
    E = float(numpy.abs(V - C @ X).sum())
    Delta = numpy.sign(C @ X - V) @ X.T
    return E, Delta


def eq20_eq21_gradients(weights, biases, Ps, X, V, composition: str = "paper"):
    """The compositional gradients of a two-layer chain, Eq. 20 and Eq. 21 as written.

    With ``W̃ = W ⊙ g(Z)`` for the encoder and the decoder,
    ``C = W̃_dec W̃_enc`` and ``Δ = sign(C X − V) Xᵀ`` formed explicitly:

    .. math::
        ∂E/∂P_dec = [(Δ W̃_encᵀ) ⊙ W_dec ⊙ g'(Z_dec)] (W_dec ⊕ b_dec)    (Eq. 20)
        ∂E/∂P_enc = [(W̃_decᵀ Δ) ⊙ W_enc ⊙ g'(Z_enc)] (W_enc ⊕ b_enc)    (Eq. 21)

    with ``g'(z) = 1[z > 0]``. In the "authors-code" reading the bracket
    ``[…]`` is transposed and multiplies ``M = W + 1 bᵀ``:
    ``∂E/∂P = […]ᵀ M``.

    Args:
        weights: ``[W_enc, W_dec]``, each (F, F), (out, in).
        biases: ``[b_enc, b_dec]``, each (F,).
        Ps: ``[P_enc, P_dec]``, each (F, F).
        X: (F, T) input frames as columns.
        V: (F, T) target frames as columns.
        composition: "paper" or "authors-code".

    Returns:
        ``(E, [∂E/∂P_enc, ∂E/∂P_dec])``, the order of
        :func:`nca_np.nca.compositional_loss_and_grads`: E (Eq. 15) a Python
        float, the gradients (F, F) arrays.
    """
    if len(weights) != 2 or len(biases) != 2 or len(Ps) != 2:
        raise ValueError("Eqs. 20-21 are the two-layer case: give [encoder, decoder] weights, biases and Ps")
    (W_enc, W_dec), (b_enc, b_dec), (P_enc, P_dec) = weights, biases, Ps
    Z_enc = pre_activation(W_enc, b_enc, P_enc, composition)
    Z_dec = pre_activation(W_dec, b_dec, P_dec, composition)
    W_enc_tilde = W_enc * numpy.maximum(Z_enc, 0.0)
    W_dec_tilde = W_dec * numpy.maximum(Z_dec, 0.0)
    C = W_dec_tilde @ W_enc_tilde
    E = float(numpy.abs(V - C @ X).sum())
    Delta = numpy.sign(C @ X - V) @ X.T

    bracket_dec = (Delta @ W_enc_tilde.T) * W_dec * (Z_dec > 0)  # Eq. 20's [·]
    bracket_enc = (W_dec_tilde.T @ Delta) * W_enc * (Z_enc > 0)  # Eq. 21's [·]
    A_dec = augmented_weights(W_dec, b_dec, composition)
    A_enc = augmented_weights(W_enc, b_enc, composition)
    if composition == "paper":
        return E, [bracket_enc @ A_enc, bracket_dec @ A_dec]
    return E, [bracket_enc.T @ A_enc, bracket_dec.T @ A_dec]
