"""Every example runs (issue 11 item 6): none is skipped, none lives where nothing collects it.

The root ``conftest.py`` collects the docstring examples of every module under its
``DOCTEST_ROOTS`` and the Python blocks of ``README.md`` and ``docs/*.md``. These tests fail when
an example is hidden behind ``+SKIP`` or written in a file no collector reaches.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from conftest import DOCS, DOCTEST_ROOTS

from .conftest import REPO

SKIP = re.compile(r"doctest:\s*\+SKIP")


def _tracked(*patterns: str) -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", *patterns],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.split()
    return [REPO / name for name in listed if (REPO / name).is_file()]


def test_no_example_is_skipped() -> None:
    """Before issue 11, 159 examples carried ``# doctest: +SKIP`` and never ran."""
    offenders = [
        f"{path.relative_to(REPO)}:{text[: match.start()].count(chr(10)) + 1}"
        for path in _tracked("*.py", "*.md")
        if path.name != "test_examples_run.py"
        for text in [path.read_text(encoding="utf-8")]
        for match in SKIP.finditer(text)
    ]
    assert offenders == [], f"skipped examples: {offenders}"


def test_every_example_is_where_a_collector_finds_it() -> None:
    """A ``>>>`` example in a module outside the doctest roots would never run."""
    outside = [
        str(path.relative_to(REPO))
        for path in _tracked("*.py")
        if ">>> " in path.read_text(encoding="utf-8")
        and path.name != "conftest.py"
        and not any(path.relative_to(REPO).as_posix().startswith(root + "/")
                    for root in DOCTEST_ROOTS)
    ]
    assert outside == [], f"examples no collector runs: {outside}"


def test_the_docs_the_collector_runs_are_the_docs_there_are() -> None:
    documents = {path.relative_to(REPO).as_posix() for path in _tracked("*.md")}
    collected = {
        path.relative_to(REPO).as_posix() for pattern in DOCS for path in REPO.glob(pattern)
    }
    python_blocks = {
        name for name in documents if "```python" in (REPO / name).read_text(encoding="utf-8")
    }
    assert python_blocks <= collected, sorted(python_blocks - collected)
