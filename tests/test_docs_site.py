"""The documentation site builds, strictly, and says what the code does (issue 17 item 1).

``mkdocs build --strict`` fails on a broken link, a missing page, a page left out of the
navigation or an API reference target that does not resolve; CI runs only the README's
pytest command, so this test is where the site is built in CI.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from .conftest import REPO

DOCS = REPO / "docs"
sys.path.insert(0, str(DOCS / "_ext"))
from doctest_blocks import fence_examples  # noqa: E402

sys.path.remove(str(DOCS / "_ext"))


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=REPO, capture_output=True, text=True, env=env, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for page in ("index.html", "cli/index.html", "changelog/index.html",
                 "reference/polybundle/index.html", "tutorials/keras-to-pytorch/index.html"):
        assert (site / page).is_file(), page
    reference = (site / "reference" / "polybundle" / "index.html").read_text(encoding="utf-8")
    assert "converted_optimizer_state" in reference  # generated from the docstrings
    assert "&gt;&gt;&gt;" in reference and "<blockquote>" not in reference  # examples as code
    changelog = (site / "changelog" / "index.html").read_text(encoding="utf-8")
    assert "Unreleased" in changelog  # CHANGELOG.md is included, not copied


def _nav_pages(items: list) -> list[str]:
    pages: list[str] = []
    for item in items:
        for value in item.values():
            pages += _nav_pages(value) if isinstance(value, list) else [value]
    return pages


def test_every_page_is_in_the_navigation() -> None:
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text(encoding="utf-8"))
    listed = set(_nav_pages(config["nav"]))
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    assert pages == listed, (sorted(pages - listed), sorted(listed - pages))
    sections = [next(iter(item)) for item in config["nav"]]
    assert sections == ["Getting started", "Tutorials", "Concepts", "API reference",
                        "CLI reference", "Changelog"]


def test_training_state_does_not_deny_optimizer_conversion() -> None:
    """docs/training-state.md said optimizer state is not converted across frameworks."""
    text = (DOCS / "training-state.md").read_text(encoding="utf-8")
    assert "not offered" not in text
    assert "converted_optimizer_state" in text and 'backend="torch", into=' in text


def test_conversion_page_registers_one_architecture_twice_and_loads_into() -> None:
    text = (DOCS / "conversion.md").read_text(encoding="utf-8")
    section = text.split("## One architecture, two frameworks", 1)[1].split("\n## ", 1)[0]
    assert '@polybundle.architecture("two-layer", backend="tensorflow")' in section
    assert '@polybundle.architecture("two-layer", backend="torch")' in section
    assert 'backend="tensorflow", into={"net": keras_net}' in section


def test_docstring_examples_are_fenced() -> None:
    doc = 'Example:\n    >' + '>> f(x["a"](1))\n    2\n\nAfter.'
    assert fence_examples(doc) == (
        'Example:\n\n    ```pycon\n    >' + '>> f(x["a"](1))\n    2\n    ```\n\nAfter.'
    )


def test_readme_and_license() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "mkdocs serve" in readme and "LICENSE" in readme and "CHANGELOG.md" in readme
    license_text = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert license_text.startswith("MIT License")
    assert "Copyright (c) 2026 the polybundle authors" in license_text
