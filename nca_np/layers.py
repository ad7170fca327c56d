"""Forward/backward function pairs: dense layer, ReLU, mask product, MSE.

Convention: frames as rows. A batch ``x`` has shape ``(B, n_in)``; a layer
holds ``W`` of shape ``(n_out, n_in)`` and ``b`` of shape ``(n_out,)``, so the
math of docs/method.md#models, ``z = W h + b`` for a column ``h``, reads
``z = x Wᵀ + bᵀ`` for the batch.

Every ``*_forward`` returns ``(out, cache)``; the matching ``*_backward``
reads exactly that cache and nothing else. The derivations are written out
in ``docs/gradients.md``.
"""

from __future__ import annotations

from .backend import array_module


def dense_forward(x, W, b):
    """Affine map ``z = x Wᵀ + bᵀ`` (the pre-activation of Eqs. 4–9).

    Args:
        x: (B, n_in) input frames as rows.
        W: (n_out, n_in) weights.
        b: (n_out,) bias.

    Returns:
        z: (B, n_out), and the cache ``(x, W)``.
    """
    z = x @ W.T
    z += b
    return z, (x, W)


def dense_backward(dz, cache):
    """Gradients of the affine map.

    .. math::  ∂L/∂W = δzᵀ x,   ∂L/∂b = Σ_batch δz,   ∂L/∂x = δz W

    (the batched form of docs/method.md#models: ``∂L/∂W = δz hᵀ``, ``δh = Wᵀ δz``).

    Args:
        dz: (B, n_out) gradient of the loss with respect to ``z``.
        cache: ``(x, W)`` from :func:`dense_forward`.

    Returns:
        ``(dx, dW, db)`` of shapes (B, n_in), (n_out, n_in), (n_out,).
    """
    x, W = cache
    return dz @ W, dz.T @ x, dz.sum(axis=0)


def relu_forward(z):
    """ReLU ``a = max(z, 0)`` (Eq. 10).

    Returns:
        a: same shape as ``z``, and the cache ``a`` itself: ``a > 0`` exactly
        where ``z > 0``, which is all the backward pass needs.
    """
    xp = array_module(z)
    a = xp.maximum(z, 0)
    return a, a


def relu_backward(da, cache):
    """``δz = δa ⊙ g'(z)`` with ``g'(z) = 1[z > 0]`` (0 at z = 0).

    Args:
        da: gradient with respect to the ReLU output.
        cache: the ReLU output ``a`` from :func:`relu_forward`.
    """
    return da * (cache > 0)


def dense_relu_forward(x, W, b):
    """One layer of the models: ``a = g(x Wᵀ + bᵀ)``, computed in place.

    The fused form of :func:`dense_forward` followed by :func:`relu_forward`:
    the pre-activation buffer is rectified where it lies, so a layer costs one
    matrix product and one pass over a (B, n_out) array.

    Args:
        x: (B, n_in) input frames as rows.
        W: (n_out, n_in) weights.
        b: (n_out,) bias.

    Returns:
        a: (B, n_out), and the cache ``(x, W, a)``.
    """
    xp = array_module(x, W)
    a = x @ W.T
    a += b
    xp.maximum(a, 0, out=a)
    return a, (x, W, a)


def dense_relu_backward(da, cache, *, need_dx=True, dW_out=None, db_out=None):
    """Backward pass of one layer ``a = g(W h + b)`` (docs/method.md#models):

    .. math::  δz = δa ⊙ 1[z > 0],  ∂L/∂W = δzᵀ x,  ∂L/∂b = Σ_batch δz,
               ∂L/∂x = δz W

    Args:
        da: (B, n_out) gradient with respect to the layer output; it is
            overwritten with ``δz`` (the caller no longer needs it).
        cache: ``(x, W, a)`` from :func:`dense_relu_forward`.
        need_dx: False for the first layer, whose input is data: skips one
            matrix product.
        dW_out, db_out: optional preallocated outputs for ``∂L/∂W`` and
            ``∂L/∂b``, so that a caller stepping repeatedly allocates no
            large array per step. (Training runs the stacked form of
            :mod:`nca_np.stacked` and :mod:`nca_np.kernels`, which fuses
            these steps; these pairs are its textbook reference.)

    Returns:
        ``(dx, dW, db)``; ``dx`` is None when ``need_dx`` is False.
    """
    x, W, a = cache
    xp = array_module(da, W)
    dz = da
    dz *= a > 0
    dW = xp.matmul(dz.T, x, out=dW_out)
    db = xp.sum(dz, axis=0, out=db_out)
    dx = dz @ W if need_dx else None
    return dx, dW, db


def mask_forward(x, m):
    """Skip-filtering output ``ŷ = x ⊙ m`` (Eq. 9).

    Args:
        x: (B, F) mixture magnitudes, a constant of the mask path.
        m: (B, F) mask.

    Returns:
        ŷ: (B, F), and the cache ``x``.
    """
    return x * m, x


def mask_backward(dy, cache):
    """``δm = δŷ ⊙ x`` (docs/method.md#models). No gradient flows into ``x``: it is
    the input data, not a parameter, so the second path through ``x`` (the
    encoder) needs no accumulation."""
    return dy * cache


def mse_forward(y_hat, y):
    """Mean squared error over all elements (Eq. 3).

    .. math::  L = (1/(B F)) Σ_b ‖y_b − ŷ_b‖²

    Args:
        y_hat: (B, F) estimate.
        y: (B, F) target.

    Returns:
        L as a 0-d array of ``y_hat``'s module and dtype (no host
        transfer), and the cache ``(ŷ − y, B·F)``.
    """
    diff = y_hat - y
    n = diff.size
    loss = (diff * diff).sum() / n
    return loss, (diff, n)


def mse_backward(cache):
    """``δŷ = 2 (ŷ − y) / (B F)`` (docs/method.md#models). Returns (B, F)."""
    diff, n = cache
    return diff * (2.0 / n)
