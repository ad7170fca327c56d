"""Every finite-difference gradient check of the project, in float64.

Checks, each against central differences (nca_np.gradcheck):

- every forward/backward pair of nca_np.layers on its own;
- every parameter of every registered model kind, alone and as a stack of runs;
- every registered NCA strategy's gradients at its own check points: the
  student's dC (Eq. 16); the compositional dP_l for both readings of
  Eqs. 18–19, for chains of 2 and 4 layers (Eqs. 20–21 and their general form);

and the fast NCA gradients against the equations as written
(nca_np.nca_textbook: Eq. 16, Eqs. 20–21), which agree to rounding.

The NCA loss is piecewise linear, so its check points keep every entry of
``C X − V`` and of every ``Z_l`` at least ``gradcheck.MARGIN`` from zero,
with both signs present: the differences then never cross a kink, and the
sign and the ReLU gate of the gradient are both exercised. Each NCA check
reports that as a row of its own.

Prints a table (what, max relative error, threshold, PASS/FAIL) and exits
with status 1 if anything fails. ``--device gpu`` runs every check with the
arrays on the GPU (CuPy), in float64 as well.

    python scripts/gradcheck.py [--device cpu|gpu]
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nca_np import backend, gradcheck, nca  # noqa: E402
from nca_np.models import kind_names  # noqa: E402


def error_row(what: str, error: float, threshold: float):
    """A table row ``(what, error text, threshold text, passed)``."""
    return what, f"{error:.2e}", f"{threshold:.0e}", error < threshold


def condition_row(what: str, holds: bool):
    """A table row for a condition of a check point (no error to show)."""
    return what, "-", "-", holds


def nca_rows(check: gradcheck.NcaCheck):
    """The fairness row and one error row per gradient of an NCA check."""
    return ([condition_row(f"{check.label} check point (signs, margins)", check.fair)]
            + [error_row(f"{check.label} {name}", error, gradcheck.NCA_THRESHOLD) for name, error in check.errors])


def textbook_rows(label: str, results):
    return [error_row(f"{label} {name}", error, gradcheck.TEXTBOOK_THRESHOLD) for name, error in results]


def all_checks():
    module = backend.xp()
    rows = [error_row(f"layer {name}", error, gradcheck.THRESHOLD)
            for name, error in gradcheck.check_layer_pairs(module=module)]
    for kind in kind_names():
        rows += [error_row(f"model {name}", error, gradcheck.THRESHOLD)
                 for name, error in gradcheck.check_model_gradients(kind, module=module)]
        rows += [error_row(f"model {name}", error, gradcheck.THRESHOLD)
                 for name, error in gradcheck.check_stacked_gradients(kind, module=module)]
    for strategy in nca.strategy_names():
        for check in gradcheck.check_strategy_gradients(strategy, module=module):
            rows += nca_rows(check)
    rows += textbook_rows("student vs textbook", gradcheck.compare_student_with_textbook(module=module))
    for composition in nca.COMPOSITIONS:
        rows += textbook_rows(f"compositional {composition} L=2 vs textbook",
                              gradcheck.compare_with_textbook(composition, module=module))
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
