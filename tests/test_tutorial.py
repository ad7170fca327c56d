"""docs/tutorial.md runs as written: every ```python block, in order, in one
namespace, with the numbers the text states asserted in the blocks."""

import contextlib
import io
import math
import re
from pathlib import Path

import pytest

from nca_np import references

TUTORIAL = Path(__file__).resolve().parents[1] / "docs" / "tutorial.md"
#: A block preceded by this marker calls a function of nca_np.references
#: that the tree may not have yet; it is skipped while that is so.
NEEDS = re.compile(r"<!--\s*needs:\s*references\.(\w+)\s*-->\s*$")
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
#: The listing of what a block prints: "Prints:", a blank line, lines indented by four spaces.
PRINTS = re.compile(r"^Prints:\n\n((?:    .*\n)+)", re.M)


def tutorial_blocks(text=None):
    """``[(code, needed function or None, printed lines)]`` of every
    ```python block: the function of nca_np.references its marker names, and
    the lines of the indented listing after "Prints:" that follows it
    (before the next block)."""
    text = TUTORIAL.read_text() if text is None else text
    matches = list(BLOCK.finditer(text))
    blocks = []
    for number, match in enumerate(matches):
        before = text[:match.start()].rstrip("\n").splitlines()
        marker = NEEDS.match(before[-1].strip()) if before else None
        after = text[match.end():matches[number + 1].start() if number + 1 < len(matches) else len(text)]
        listing = PRINTS.search(after)
        lines = [line[4:] for line in listing.group(1).splitlines()] if listing else []
        blocks.append((match.group(1), marker.group(1) if marker else None, lines))
    return blocks


def run_blocks(blocks):
    """Execute the blocks in one namespace, checking what each prints.

    Returns:
        The namespace, and the numbers of the blocks skipped for a missing
        function.
    """
    namespace = {"__name__": "tutorial"}
    skipped = []
    for number, (code, needs, expected) in enumerate(blocks, start=1):
        if needs is not None and not hasattr(references, needs):
            skipped.append(number)
            continue
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(compile(code, f"docs/tutorial.md block {number}", "exec"), namespace)
        assert printed.getvalue().splitlines() == expected, f"block {number} printed:\n{printed.getvalue()}"
    return namespace, skipped


@pytest.fixture(scope="module")
def tutorial():
    return run_blocks(tutorial_blocks())


def test_the_tutorial_has_its_blocks_and_links(tutorial):
    blocks = tutorial_blocks()
    assert len(blocks) >= 10
    text = TUTORIAL.read_text()
    for anchor in re.findall(r"\(method\.md#([\w-]+)\)", text):
        assert f'<a id="{anchor}"></a>' in (TUTORIAL.parent / "method.md").read_text(), anchor
    gradients = (TUTORIAL.parent / "gradients.md").read_text()
    headings = {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
                for h in re.findall(r"^#+ (.*)$", gradients, re.M)}
    for anchor in re.findall(r"\(gradients\.md#([\w-]+)\)", text):
        assert anchor in headings or f'<a id="{anchor}"></a>' in gradients, anchor


def test_every_block_runs_and_prints_what_the_text_says(tutorial):
    namespace, skipped = tutorial
    blocks = tutorial_blocks()
    assert sum(1 for _, _, lines in blocks if lines) >= 8  # the listings are found, not silently skipped
    assert all(blocks[number - 1][1] is not None for number in skipped)
    assert namespace["hand_error"] < 1e-6


def test_the_mask_scores_far_above_the_mixing_map_on_every_measure_that_recovers_it(tutorial):
    namespace, _ = tutorial
    recovered = namespace["recovers_truth"]
    table = namespace["tod_r_table"]
    assert {"min-norm V X⁺", "mean local map", "student"} <= set(recovered)
    for measure in recovered:
        mask, mixing = table[measure]["mask"], table[measure]["mixing"]
        assert mask > 50 * mixing, (measure, mask, mixing)
        assert math.isfinite(mixing) and mixing > 0.5


def test_a_sign_error_in_the_backward_pass_fails_the_tutorials_own_gradient_check():
    blocks = tutorial_blocks()
    right = "dh1 = dz2 @ W2"
    where = [i for i, (code, _, _) in enumerate(blocks) if right in code]
    assert len(where) == 1
    broken = list(blocks)
    code, needs, lines = broken[where[0]]
    broken[where[0]] = (code.replace(right, "dh1 = -(dz2 @ W2)"), needs, lines)
    check = next(i for i, (code, _, _) in enumerate(blocks) if "numerical_gradient" in code)
    assert check > where[0]
    with pytest.raises(AssertionError, match="the hand gradients are wrong: relative error 1"):
        run_blocks(broken[:check + 1])
    run_blocks(blocks[:check + 1])  # the blocks as written pass the same check


def test_the_ridge_block_states_the_numbers_of_its_formula(monkeypatch):
    """While nca_np.references has no ridge_couplings, run the ridge block
    with the formula the tutorial states, C = V Xᵀ (X Xᵀ + α σ₁(X)² I)⁻¹,
    so that its printed numbers are checked all the same."""
    if hasattr(references, "ridge_couplings"):
        pytest.skip("the tutorial runs the real ridge_couplings in the other tests")
    import numpy

    def ridge_couplings(X, V, alpha):
        sigma1 = numpy.linalg.norm(X, 2)
        return numpy.linalg.solve(X @ X.T + alpha * sigma1**2 * numpy.eye(X.shape[0]), X @ V.T).T

    monkeypatch.setattr(references, "ridge_couplings", ridge_couplings, raising=False)
    blocks = tutorial_blocks()
    assert [number for number, (_, needs, _) in enumerate(blocks, 1) if needs] != []
    _, skipped = run_blocks(blocks)
    assert skipped == []


def test_the_last_step_runs_the_tiny_profile_and_points_at_its_report():
    """The tutorial ends on the whole protocol: a shell block (not run here)
    with the tiny profile's reproduce, and where its report lands."""
    text = TUTORIAL.read_text()
    last = text[text.rindex("\n## "):]
    shell = re.findall(r"^```bash\n(.*?)^```", last, re.S | re.M)
    assert shell and "nca-np reproduce --profile tiny" in shell[0]
    assert "results/tiny-latest/report.md" in last and "(method.md#glossary)" in last
    assert (TUTORIAL.parent.parent / "configs" / "tiny.toml").exists()
