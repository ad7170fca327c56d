"""Small float64 problems at which the NCA's gradients are checked (docs/gradients.md).

The NCA loss is piecewise linear, so a finite-difference check is fair only
where no difference crosses a kink: every entry of ``C X − V`` and of every
``Z_l`` at least :data:`MARGIN` from zero, with both signs present, so that
the signs and the ReLU gates are really exercised (:func:`is_fair`,
:func:`chain_is_fair`). Each registered strategy declares its check points
(:attr:`nca_np.nca.Strategy.check_points`) from the functions here;
:mod:`nca_np.gradcheck` checks every registered strategy at its points.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy

from . import backend, nca_textbook

#: Smallest distance of any entry of C X − V or Z_l from a kink at an NCA check point.
MARGIN = 1e-3
def is_fair(array, *, margin: float = MARGIN) -> bool:
    """Both signs present and every entry at least ``margin`` from zero."""
    array = backend.to_host(array)
    return bool((array < 0).any() and (array > 0).any() and numpy.abs(array).min() > margin)


def student_check_point(*, seed=3, n_freq=8, n_frames=5, module=numpy):
    """Float64 ``(C, X, V)`` on ``module`` with ``V = C X +`` noise of unit
    size, so that ``C X − V`` has both signs. X is non-negative, like
    magnitudes. Shapes (F, F), (F, T), (F, T), frames as columns."""
    rng = backend.rng(seed)
    C = rng.normal(0.0, 0.5, (n_freq, n_freq))
    X = rng.uniform(0.1, 2.0, (n_freq, n_frames))
    V = C @ X + rng.normal(0.0, 1.0, (n_freq, n_frames))
    return tuple(backend.to_device(a, module) for a in (C, X, V))


def chain_check_point(depth, composition, *, seed=0, n_freq=8, n_frames=5, module=numpy):
    """A float64 NCA check point ``(weights, biases, Ps, X, V)`` of a depth-L chain.

    ``W ~ N(0, 4/F)`` keeps the chain's scale about constant with depth; V is
    ``C X`` (composed by :func:`nca_np.nca_textbook.compose`) plus noise of
    its own size, so ``C X − V`` has both signs. Drawn on the host, then
    moved to ``module``.
    """
    rng = backend.rng(seed)
    F, T = n_freq, n_frames
    weights = [rng.normal(0.0, 2.0 / F**0.5, (F, F)) for _ in range(depth)]
    biases = [rng.normal(0.0, 0.3, F) for _ in range(depth)]
    Ps = [rng.normal(0.0, 1.0 / F**0.5, (F, F)) for _ in range(depth)]
    X = rng.uniform(0.1, 2.0, (F, T))  # magnitudes: non-negative
    CX = nca_textbook.compose(weights, biases, Ps, composition) @ X
    V = CX + rng.normal(0.0, float(CX.std()), (F, T))
    weights, biases, Ps = ([backend.to_device(a, module) for a in group] for group in (weights, biases, Ps))
    return weights, biases, Ps, backend.to_device(X, module), backend.to_device(V, module)


def chain_is_fair(weights, biases, Ps, X, V, composition) -> bool:
    """Every ``Z_l`` and ``C X − V`` of a chain is fair (:func:`is_fair`);
    computed on host copies with :mod:`nca_np.nca_textbook`."""
    weights, biases, Ps = ([backend.to_host(a) for a in group] for group in (weights, biases, Ps))
    X, V = backend.to_host(X), backend.to_host(V)
    if not all(is_fair(nca_textbook.pre_activation(W, b, P, composition)) for W, b, P in zip(weights, biases, Ps)):
        return False
    return is_fair(nca_textbook.compose(weights, biases, Ps, composition) @ X - V)


def fair_chain_check_point(depth, composition, *, tries=50, n_freq=8, n_frames=5, module=numpy):
    """The :func:`chain_check_point` of the first seed below ``tries`` that
    :func:`chain_is_fair` accepts; the last one tried if none is (a check
    made there reports ``fair`` False)."""
    if tries < 1:
        raise ValueError(f"tries is {tries}: at least one check point must be tried")
    for seed in range(tries):
        point = chain_check_point(depth, composition, seed=seed, n_freq=n_freq, n_frames=n_frames, module=module)
        if chain_is_fair(*point, composition):
            break
    return point


@dataclass
class Chain:
    """The layers a compositional fit reads of a model: ``weights`` (F, F)
    and ``biases`` (F,), encoder first."""

    weights: list
    biases: list

    @property
    def n_layers(self) -> int:
        return len(self.weights)

    @property
    def n_freq(self) -> int:
        return int(self.weights[0].shape[0])


@dataclass
class GradientCheckPoint:
    """The inputs of one strategy's gradient check.

    Attributes:
        label: what the check is called, e.g. "student" or "compositional paper L=2".
        model: what the strategy's ``start`` reads of a model (a :class:`Chain`,
            or None where its step reads no layer).
        X, V: (F, T) segment and target, float64.
        initial: the unknowns the check perturbs, float64 (F, F) arrays.
        names: their names, e.g. ``["C"]`` or ``["P_1", "P_2"]``.
        composition: the reading of Eqs. 18–19 the step uses.
        fair: whether the point keeps every kink away (:func:`is_fair`).
    """

    label: str
    model: object
    X: object
    V: object
    initial: list
    names: list
    composition: str
    fair: bool


def student_check_points(module=numpy) -> list[GradientCheckPoint]:
    """The student's check point: :func:`student_check_point`, C the unknown."""
    C, X, V = student_check_point(module=module)
    return [GradientCheckPoint("student", None, X, V, [C], ["C"], "paper", is_fair(C @ X - V))]


def chain_gradient_check_point(depth: int, composition: str, *, module=numpy) -> GradientCheckPoint:
    """A compositional check point: :func:`fair_chain_check_point`, the ``P_l`` the unknowns."""
    weights, biases, Ps, X, V = fair_chain_check_point(depth, composition, module=module)
    return GradientCheckPoint(f"compositional {composition} L={depth}", Chain(weights, biases), X, V, Ps,
                              [f"P_{layer}" for layer in range(1, depth + 1)], composition,
                              chain_is_fair(weights, biases, Ps, X, V, composition))
