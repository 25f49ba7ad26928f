"""The architecture of issue 11, checked: layers, no cycles, a core that names no framework.

``test_import_contracts`` runs the import-linter contracts of ``pyproject.toml``
(``[tool.importlinter]``): the core's layers, a core that imports no backend and no
framework, backends independent of one another, and no import cycle (function-local
imports included). ``test_core_names_no_framework`` reads every core module outside
``legacy/`` (the readers of historical files) with :mod:`ast`: framework knowledge
lives in the backends, so no string outside a docstring and no identifier in the core
names a framework or a backend's weights file.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grimp
import pytest
from importlinter.api import read_configuration

REPO = Path(__file__).resolve().parents[1]
CORE = REPO / "core" / "polybundle"

FRAMEWORK = re.compile(
    r"(?<![a-z])(?:py)?torch(?![a-z])|(?<![a-z])(?:tensorflow|keras|jax|flax|optax)(?![a-z])",
    re.IGNORECASE,
)
"""A framework named in a string: ``torch``, ``PyTorch``, ``keras.layers``, ``tensorflow-cpu``."""

WEIGHTS_FILE = re.compile(r"model\.(?:pth|pt|keras|safetensors|msgpack)\b|\.h5\b|\.pth\b")
"""A backend's weights-file name (``params.safetensors`` and ``optimizer.safetensors`` are the
format's own members, so only ``model.safetensors`` counts)."""

FRAMEWORK_WORDS = {"torch", "pytorch", "keras", "tensorflow", "jax", "flax", "optax"}
"""Words that, as a part of an identifier (``_torch_layout``, ``KERAS_KINDS``), name a framework."""


def test_import_contracts() -> None:
    """Every ``[tool.importlinter]`` contract is kept; the broken ones are listed if not."""
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from importlinter.cli import lint_imports; "
            "sys.exit(lint_imports(no_cache=True, no_logo=True))",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    report = run.stdout + run.stderr
    if run.returncode != 0 or "0 broken" not in report:
        pytest.fail(f"import-linter contracts broken:\n{report}", pytrace=False)


def test_the_contracts_cover_layers_neutrality_independence_and_cycles() -> None:
    """The configuration holds the four contracts (a dropped contract would pass silently)."""
    config = read_configuration(str(REPO / "pyproject.toml"))
    contracts = {c["id"]: c for c in config["contracts_options"]}
    assert {c: contracts[c]["type"] for c in sorted(contracts)} == {
        "acyclic": "acyclic_siblings",
        "backends-independent": "independence",
        "core-neutral": "forbidden",
        "layers": "layers",
    }
    assert config["session_options"]["exclude_type_checking_imports"] in (True, "True", "true")
    layers = contracts["layers"]["layers"]
    assert layers[:2] == ["__main__", "tools : testing : (plugin)"]  # python -m polybundle
    assert layers[2:4] == ["api", "training | legacy"] and layers[-1] == "errors | _version"


def test_core_never_imports_the_package_root() -> None:
    """No core module imports ``polybundle`` itself: its ``__init__`` sits above every layer."""
    graph = grimp.build_graph("polybundle", cache_dir=None)
    importers = sorted(graph.find_modules_that_directly_import("polybundle"))
    lines = [
        f"{importer}:{detail['line_number']}"
        for importer in importers
        for detail in graph.get_import_details(importer=importer, imported="polybundle")
    ]
    if lines:
        pytest.fail(
            "these core modules import the package root `polybundle` (its __init__ imports "
            "the API, so the import goes up every layer); import from the defining module "
            "instead:\n" + "\n".join(lines),
            pytrace=False,
        )


def _core_modules() -> Iterator[Path]:
    for path in sorted(CORE.rglob("*.py")):
        if "legacy" not in path.relative_to(CORE).parts:
            yield path


def _documentation(tree: ast.Module) -> set[int]:
    """Return the ids of the string nodes that are documentation (docstrings, attribute docs).

    A bare string statement is documentation wherever it stands: a module, class or
    function docstring, or the string that documents the attribute above it.
    """
    return {
        id(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
    }


def _identifiers(node: ast.AST) -> Iterator[str]:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        yield node.name
    elif isinstance(node, ast.Name):
        yield node.id
    elif isinstance(node, ast.Attribute):
        yield node.attr
    elif isinstance(node, ast.arg):
        yield node.arg
    elif isinstance(node, ast.keyword) and node.arg:
        yield node.arg
    elif isinstance(node, ast.alias):
        yield from node.name.split(".")
        if node.asname:
            yield node.asname


def framework_mentions(path: Path) -> list[str]:
    """Return ``file:line: what`` for each framework or weights-file name in ``path``'s code.

    Docstrings and comments are prose and may name frameworks; strings the code uses
    (error messages, table keys, compared values) and identifiers may not.

    Example:
        >>> framework_mentions(CORE / "errors.py")
        []
    """
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source, filename=str(path))
    docs = _documentation(tree)
    where = path.relative_to(REPO)
    found: set[tuple[int, str]] = set()
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            named = FRAMEWORK.findall(node.value) + WEIGHTS_FILE.findall(node.value)
            if named:
                found.add((line, f"string names {sorted(set(named))}: {node.value[:120]!r}"))
        for name in _identifiers(node):
            words = {word.lower() for word in re.split(r"_|(?<=[a-z])(?=[A-Z])", name)}
            if words & FRAMEWORK_WORDS:
                found.add((line, f"identifier {name!r} names a framework"))
    return [f"{where}:{line}: {what}" for line, what in sorted(found)]


def test_core_names_no_framework() -> None:
    """Outside ``legacy/``, the core's code names no framework and no backend weights file.

    Framework knowledge (layer tables, native layouts, weights readers, error texts
    naming a framework) belongs to the backends; the core asks a backend, and an error
    message takes the name from it (``backend.name``).
    """
    found = [line for path in _core_modules() for line in framework_mentions(path)]
    if found:
        pytest.fail(
            f"{len(found)} framework or weights-file names in the core's code (move the "
            "knowledge to the backend and ask it through the Backend interface; take names "
            "from backend.name):\n" + "\n".join(found),
            pytrace=False,
        )


def test_the_scan_finds_what_it_must() -> None:
    """The scanner flags framework names in code and leaves docstrings and neutral words alone."""
    sample = REPO / "tests" / "fixtures" / "_architecture_sample.py"
    sample.write_text(
        '"""Docstring naming torch, keras and model.pth is prose."""\n'
        "LAYOUTS = {'torch': 'oi'}\n"
        "def _keras_kind(backend):\n"
        "    '''Its docstring may say PyTorch.'''\n"
        "    if backend.name == 'jax':\n"
        "        return f'read {backend.name} weights from model.pth'\n"
        "    return 'params.safetensors, optimizer.safetensors, torchvision-free'\n",
        encoding="utf-8",
    )
    try:
        found = framework_mentions(sample)
    finally:
        sample.unlink()
    assert [line.split(":", 1)[1] for line in found] == [
        "2: string names ['torch']: 'torch'",
        "3: identifier '_keras_kind' names a framework",
        "5: string names ['jax']: 'jax'",
        "6: string names ['model.pth']: ' weights from model.pth'",
    ], found
