"""Every finite-difference gradient check of the project, in float64.

Checks, each against central differences (nca_np.gradcheck):

- every forward/backward pair of nca_np.layers on its own;
- every parameter of the three models (DAE, MSS-DAE, SF);
- the student gradient dC (Eq. 16);
- the compositional gradients dP_l for both readings of Eqs. 18–19, for
  chains of 2 and 4 layers (Eqs. 20–21 and their general form).

The NCA loss is piecewise linear, so its check points are chosen with every
entry of ``C X − V`` and of every ``Z_l`` at least ``MARGIN`` from zero and
with both signs present: the differences then never cross a kink, and the
sign and the ReLU gate of the gradient are both exercised. The script
verifies that and reports it as a row of its own.

Prints a table (what, max relative error, threshold, PASS/FAIL) and exits
with status 1 if anything fails. ``--device gpu`` runs every check with the
arrays on the GPU (CuPy), in float64 as well.

    python scripts/gradcheck.py [--device cpu|gpu]
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nca_np import backend, nca  # noqa: E402
from nca_np.gradcheck import (  # noqa: E402
    THRESHOLD,
    check_layer_pairs,
    check_model_gradients,
    max_relative_error,
    numerical_gradient,
)
from nca_np.models import kind_names  # noqa: E402

#: Threshold of the L1 (NCA) checks: E sums F·T absolute values, so float64
#: rounding over a central difference is ~1e-8 absolute, up to ~1e-5
#: relative on the smallest entries; a factor 2, a sign or a transpose gives
#: 0.3 to 1.
NCA_THRESHOLD = 1e-4
#: Smallest distance of any entry of C X − V or Z_l from a kink at a check point.
MARGIN = 1e-3
N_FREQ, N_FRAMES = 8, 5


def on_device(*arrays):
    """Host arrays moved to the active backend."""
    return [backend.to_device(a) for a in arrays]


def chain_point(depth: int, composition: str, seed: int):
    """Float64 (weights, biases, Ps, X, V) for a depth-L chain, V = C X + noise."""
    rng = backend.rng(seed)
    F, T = N_FREQ, N_FRAMES
    weights = [rng.normal(0.0, 2.0 / F**0.5, (F, F)) for _ in range(depth)]
    biases = [rng.normal(0.0, 0.3, F) for _ in range(depth)]
    Ps = [rng.normal(0.0, 1.0 / F**0.5, (F, F)) for _ in range(depth)]
    X = rng.uniform(0.1, 2.0, (F, T))
    CX = nca.compose(weights, biases, Ps, composition=composition) @ X
    V = CX + rng.normal(0.0, float(CX.std()), (F, T))
    return on_device(*weights), on_device(*biases), on_device(*Ps), *on_device(X, V)


def error_row(what: str, error: float, threshold: float):
    """A table row ``(what, error text, threshold text, passed)``."""
    return what, f"{error:.2e}", f"{threshold:.0e}", error < threshold


def condition_row(what: str, holds: bool):
    """A table row for a condition of a check point (no error to show)."""
    return what, "-", "-", holds


def is_fair(array) -> bool:
    """Both signs present and every entry at least MARGIN from zero."""
    array = backend.to_host(array)
    return bool((array < 0).any() and (array > 0).any() and numpy.abs(array).min() > MARGIN)


def chain_is_fair(weights, biases, Ps, X, V, composition) -> bool:
    for W, b, P in zip(weights, biases, Ps):
        Z = nca._pre_activation(P, nca.augment(W, b, composition), composition)
        if not is_fair(Z):
            return False
    return is_fair(nca.compose(weights, biases, Ps, composition=composition) @ X - V)


def student_checks():
    rng = backend.rng(3)
    C = rng.normal(0.0, 0.5, (N_FREQ, N_FREQ))
    X = rng.uniform(0.1, 2.0, (N_FREQ, N_FRAMES))
    V = C @ X + rng.normal(0.0, 1.0, (N_FREQ, N_FRAMES))
    C, X, V = on_device(C, X, V)
    _, dC = nca.student_loss_and_grad(C, X, V)
    numeric = numerical_gradient(lambda: backend.to_float(nca.student_loss_and_grad(C, X, V)[0]), C)
    return [condition_row("student check point (signs, margins)", is_fair(C @ X - V)),
            error_row("student dC", max_relative_error(dC, numeric), NCA_THRESHOLD)]


def fair_chain_point(depth: int, composition: str, *, tries: int = 50):
    """The first seed's chain point that :func:`chain_is_fair` accepts."""
    for seed in range(tries):
        point = chain_point(depth, composition, seed)
        if chain_is_fair(*point, composition):
            return point
    return point  # reported as a failed condition below


def compositional_checks(depth: int, composition: str):
    point = fair_chain_point(depth, composition)
    weights, biases, Ps, X, V = point
    label = f"compositional {composition} L={depth}"
    rows = [condition_row(f"{label} check point (signs, margins)", chain_is_fair(*point, composition))]
    _, dPs = nca.compositional_loss_and_grads(*point, composition=composition)

    def loss():
        return backend.to_float(nca.compositional_loss_and_grads(*point, composition=composition)[0])

    for layer, (P, dP) in enumerate(zip(Ps, dPs), start=1):
        rows.append(error_row(f"{label} dP_{layer}", max_relative_error(dP, numerical_gradient(loss, P)), NCA_THRESHOLD))
    return rows


def all_checks():
    module = backend.xp()
    rows = [error_row(f"layer {name}", error, THRESHOLD) for name, error in check_layer_pairs(module=module)]
    for kind in kind_names():
        rows += [error_row(f"model {name}", error, THRESHOLD)
                 for name, error in check_model_gradients(kind, module=module)]
    rows += student_checks()
    for composition in nca.COMPOSITIONS:
        for depth in (2, 4):
            rows += compositional_checks(depth, composition)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    args = parser.parse_args(argv)
    try:
        backend.use(args.device)
    except backend.BackendError as exc:
        print(f"gradcheck.py: error: {exc}", file=sys.stderr)
        return 2
    print(f"finite-difference checks in float64 on {backend.device_description()}")
    rows = all_checks()
    width = max(len(row[0]) for row in rows)
    print(f"{'what':<{width}}  {'max rel. error':>14}  {'threshold':>9}  result")
    failures = 0
    for what, error, threshold, passed in rows:
        failures += not passed
        print(f"{what:<{width}}  {error:>14}  {threshold:>9}  {'PASS' if passed else 'FAIL'}")
    print(f"{len(rows) - failures} of {len(rows)} checks pass")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
