"""Every example runs: docstrings (doctest) and Markdown docs (Sybil).

pytest collects the modules under :data:`DOCTEST_ROOTS` as doctest modules; each folder
equals its import path under its source root, so a module is imported once, under its
real name. The Python blocks of ``README.md`` and ``docs/*.md`` run with Sybil, one
namespace per document, in order (a ``pycon``/``>>>`` block compares its output).

Every example runs in a fresh temporary working directory that holds ``run.bundle``: a
tiny PyTorch model (``nn.Sequential(Linear(4, 3), ReLU(), Linear(3, 2))``, role
``net``, params ``{"N": 4, "lr": 0.001}``), ``wts.h5.zip``: a real TensorFlow-era
legacy archive (``tests/fixtures/legacy/tf_era_shared.zip``), and ``model.keras``: the Keras 3
file of that archive's ``autoencoder`` role (a Functional model with a custom last layer,
saved after training: its weights file holds optimizer slots too), and ``sharded``: a sharded
bundle (a folder) of ``Sequential(Linear(3, 4))``, role ``model``, params ``{"lr": 0.01}``,
saved through ``torch.distributed.checkpoint`` in one process. Its namespace holds ``np``,
``Path``, ``polybundle``, ``torch`` and ``net`` (a fresh copy of the saved model).
"""

from __future__ import annotations

import copy
import importlib
import os
import re
import shutil
import tempfile
import warnings
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _pytest.doctest import DoctestItem, DoctestModule
from sybil import Document, Region, Sybil
from sybil.parsers.markdown import PythonCodeBlockParser

import polybundle
import polybundle.hooks.manager
from polybundle.hooks.registry import scoped_declarations

# pytest-xdist starts its workers with COLUMNS=80 and LINES=24, and the command honours
# COLUMNS (rich would wrap its output there): every test sees the console a plain run sees.
for _variable in ("COLUMNS", "LINES"):
    os.environ.pop(_variable, None)

ROOT = Path(__file__).resolve().parent

DOCTEST_ROOTS = (
    "core/polybundle",
    "backends",
    "plugins/polybundle-jax/polybundle_jax",
    "tests",
    "plugins/polybundle-jax/tests",
    "benchmarks",
)
"""Folders whose modules' docstring examples run (relative to the repository root): the
sources and the tests' and benchmarks' own helpers, so no example goes unrun."""

DOCS = ("README.md", "plugins/polybundle-jax/README.md", "docs/*.md", "docs/tutorials/*.md")
"""Markdown files whose Python blocks run."""

SELF_TESTED = re.compile(r"<!-- (walkthrough|source: [^>]*) -->\s*\Z")
"""A block after this comment is run or compared by ``tests/test_seed_project.py``."""

_made: dict[str, Any] = {}


def _example_files() -> tuple[Path, Any]:
    """Return the folder holding ``run.bundle`` and the saved model (made once a session)."""
    if not _made:
        torch = importlib.import_module("torch")
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
        folder = Path(tempfile.mkdtemp(prefix="polybundle-examples-"))
        polybundle.save(folder / "run.bundle", {"net": net}, params={"N": 4, "lr": 0.001})
        legacy = ROOT / "tests" / "fixtures" / "legacy" / "tf_era_shared.zip"
        shutil.copy(legacy, folder / "wts.h5.zip")
        with zipfile.ZipFile(legacy) as archive:
            (folder / "model.keras").write_bytes(archive.read("autoencoder/model.keras"))
        _write_sharded(folder / "sharded", torch)
        _made.update(folder=folder, net=net, torch=torch)
    return _made["folder"], _made["net"]


def _write_sharded(path: Path, torch: Any) -> None:
    """Write ``sharded``: a sharded bundle of ``Sequential(Linear(3, 4))`` saved through DCP."""
    import torch.distributed.checkpoint as dcp

    from polybundle_torch.distributed import BundleWriter

    model = torch.nn.Sequential(torch.nn.Linear(3, 4))
    with warnings.catch_warnings():  # DCP warns that it saves in one process: that is the point
        warnings.simplefilter("ignore", UserWarning)
        dcp.save({"model": model.state_dict()},
                 storage_writer=BundleWriter(path, params={"lr": 0.01}), no_dist=True)


def example_namespace(workdir: Path) -> dict[str, Any]:
    """Fill ``workdir`` with the example files; return the names every example sees."""
    folder, net = _example_files()
    for path in folder.iterdir():
        if path.is_dir():
            shutil.copytree(path, workdir / path.name)
        else:
            shutil.copy(path, workdir / path.name)
    return {"np": np, "Path": Path, "polybundle": polybundle, "torch": _made["torch"],
            "net": copy.deepcopy(net)}


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Remove the session's example files."""
    if _made:
        shutil.rmtree(_made["folder"], ignore_errors=True)


@pytest.fixture(autouse=True)
def _doctest_workdir(request: pytest.FixtureRequest) -> Iterator[None]:
    """Run each docstring example in a fresh working directory with the shared names.

    Builders and tensor maps an example declares are forgotten after it.
    """
    if not isinstance(request.node, DoctestItem):
        yield
        return
    workdir = request.getfixturevalue("tmp_path")
    request.getfixturevalue("monkeypatch").chdir(workdir)
    request.getfixturevalue("doctest_namespace").update(example_namespace(workdir))
    with scoped_declarations():
        yield


def _is_doctest_module(file_path: Path) -> bool:
    relative = file_path.resolve().relative_to(ROOT).as_posix()
    return (
        file_path.suffix == ".py"
        and file_path.name != "conftest.py"
        and any(relative.startswith(root + "/") for root in DOCTEST_ROOTS)
    )


class _DocBlocks:
    """Python blocks of a Markdown file, except those ``tests/test_seed_project.py`` runs."""

    def __init__(self) -> None:
        self.parser = PythonCodeBlockParser()

    def __call__(self, document: Document) -> Iterable[Region]:
        for region in self.parser(document):
            if not SELF_TESTED.search(document.text[: region.start]):
                yield region


def _docs_setup(namespace: dict[str, Any]) -> None:
    namespace["_previous_cwd"] = os.getcwd()
    workdir = Path(tempfile.mkdtemp(prefix="polybundle-doc-"))
    namespace["_workdir"] = workdir
    os.chdir(workdir)
    namespace.update(example_namespace(workdir))
    # builders and maps a document declares are its own: later documents and tests never see them
    namespace["_declarations"] = scoped_declarations()
    namespace["_declarations"].__enter__()


def _docs_teardown(namespace: dict[str, Any]) -> None:
    namespace["_declarations"].__exit__(None, None, None)
    os.chdir(namespace["_previous_cwd"])
    shutil.rmtree(namespace["_workdir"], ignore_errors=True)


_collect_docs = Sybil(
    parsers=[_DocBlocks()], patterns=DOCS, setup=_docs_setup, teardown=_docs_teardown
).pytest()


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    """Collect source modules as doctest modules and Markdown docs with Sybil."""
    try:
        file_path.resolve().relative_to(ROOT)
    except ValueError:
        return None
    if file_path.suffix == ".md":
        return _collect_docs(file_path, parent)
    if _is_doctest_module(file_path) and not parent.config.option.doctestmodules:
        return DoctestModule.from_parent(parent, path=file_path)
    return None
