"""Rewrite every old "MATH.md §N" citation into its docs/method.md anchor.

A one-off tool: run it once from the repository root, then delete it.
It rewrites the files under nca_np/, configs/, docs/, scripts/, tests/ and
README.md in place, then exits with status 1, listing them, if any
"MATH.md" is left anywhere in the working tree. Running it twice changes
nothing the second time.

    python scripts/replace_math_refs.py
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLACES = ("nca_np", "configs", "docs", "scripts", "tests", "README.md")
SKIP_DIRS = {".git", ".venv", "__pycache__", ".pytest_cache", "build", "results", "cache", "runs"}
OLD = "MATH" + ".md"  # spelt so that this file passes its own check
NEW = "docs/method.md"
#: Old section number → anchor of docs/method.md.
ANCHORS = {"0": "models", "1": "features", "2": "models", "3": "training", "4": "nca", "5": "measures",
           "6": "protocol"}
SECTION = r"§(\d)(?:\.\d)?"


def link(number: str) -> str:
    return f"{NEW}#{ANCHORS[number]}"


#: (pattern, replacement), most specific first; each consumes the old name.
RULES = [
    (rf"`?{re.escape(OLD)}`? {SECTION} describes it step by step", lambda m: f"{NEW}#excerpts describes it step by step"),
    (rf"`?{re.escape(OLD)}`? {SECTION} steps (\d+)\s*[-–]\s*(\d+)", lambda m: f"{NEW}#excerpts, steps {m[2]}-{m[3]}"),
    (rf"`?{re.escape(OLD)}`? {SECTION}\s*[-–]\s*{SECTION}", lambda m: f"{link(m[1])} and {link(m[2])}"),
    (rf"`?{re.escape(OLD)}`? {SECTION}, {SECTION}", lambda m: f"{link(m[1])}, {link(m[2])}"),
    (rf"`?{re.escape(OLD)}`? {SECTION}'s (\w+)", lambda m: f"the {m[2]} of {link(m[1])}"),
    (rf"`{re.escape(OLD)}` {SECTION}", lambda m: f"`{link(m[1])}`"),
    (rf"{re.escape(OLD)} {SECTION}", lambda m: link(m[1])),
    (rf"`{re.escape(OLD)}`", lambda m: f"`{NEW}`"),
    (re.escape(OLD), lambda m: NEW),
]


def text_files(paths):
    """Every readable text file under ``paths`` (files or folders), but this one."""
    for path in paths:
        candidates = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for candidate in candidates:
            if SKIP_DIRS & set(candidate.relative_to(ROOT).parts) or candidate.resolve() == Path(__file__).resolve():
                continue
            try:
                yield candidate, candidate.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue


def rewrite(text: str) -> str:
    for pattern, replacement in RULES:
        text = re.sub(pattern, replacement, text)
    return text


def main() -> int:
    changed = 0
    for path, text in text_files([ROOT / place for place in PLACES if (ROOT / place).exists()]):
        new = rewrite(text)
        if new != text:
            path.write_text(new, encoding="utf-8")
            changed += 1
    left = [f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
            for path, text in text_files([ROOT])
            for number, line in enumerate(text.splitlines(), start=1) if OLD in line]
    print(f"rewrote {changed} file(s)")
    if left:
        print(f"error: {OLD} is still cited:\n" + "\n".join(left), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
