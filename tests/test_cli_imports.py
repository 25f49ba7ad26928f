"""The command line finds user code, explicitly (issue 17, item 2).

A bundle records the module that defined each architecture's builder
(``architecture.module``); a process where that module was not imported says
so, naming the architecture, the backend and the module, and imports nothing
itself. ``polybundle --import MODULE`` and ``[tool.polybundle] imports`` in
``pyproject.toml`` import the user's modules first. The demo's own bundles
work with ``plan`` and ``parity`` out of the box.

A "fresh process" is had in-process: the user module is imported inside
:func:`scoped_declarations` and dropped from ``sys.modules`` after, so the
registry no longer knows its builder (one subprocess test checks the real one).
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

import polybundle
from polybundle.errors import (
    ConversionUnavailableError,
    SchemaError,
    UnknownArchitectureError,
    UserCodeError,
)
from polybundle.hooks.registry import builder_module, get_registry, scoped_declarations
from polybundle.tools import demo
from polybundle.tools.cli import main
from polybundle.tools.user_code import configured_imports, import_user_modules
from tests.conftest import HAS_TENSORFLOW, HAS_TORCH, needs_torch

MODULE_SOURCE = '''\
import torch

import polybundle


@polybundle.architecture({arch!r}, backend="torch")
def build(config):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(config["inputs"], 2))
'''


@dataclass
class UserBundle:
    """A bundle whose builder lives in a user module that is no longer imported."""

    folder: Path
    module: str
    architecture: str
    path: Path


@pytest.fixture
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Work in ``tmp_path``; undo what importing user code changes (sys.path, registry)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    with scoped_declarations():
        yield tmp_path
    for name in set(sys.modules) - before:
        if name.startswith("user_models_"):
            del sys.modules[name]


def _write_module(folder: Path, source: str = MODULE_SOURCE) -> tuple[str, str]:
    tag = uuid.uuid4().hex[:10]
    module, arch = f"user_models_{tag}", f"user-net-{tag}"
    (folder / f"{module}.py").write_text(source.format(arch=arch))
    return module, arch


def _forget(module: str) -> None:
    sys.modules.pop(module, None)


@pytest.fixture
def user_bundle(isolated: Path) -> Iterator[UserBundle]:
    """Save a bundle built by a user module, then forget the module and its builder."""
    module, arch = _write_module(isolated)
    sys.path.insert(0, str(isolated))
    path = isolated / "user.bundle"
    with scoped_declarations():
        importlib.import_module(module)
        model = polybundle.build(arch, {"inputs": 3}, backend="torch")
        x = np.linspace(-1, 1, 6, dtype="f4").reshape(2, 3)
        polybundle.save(path, {"net": model}, parity_inputs=x)
    _forget(module)
    sys.path.remove(str(isolated))
    assert not get_registry().has_builder(arch, "torch")
    yield UserBundle(isolated, module, arch, path)


def _architecture(path: Path) -> dict:
    with zipfile.ZipFile(path) as archive:
        return json.loads(archive.read("manifest.json"))["models"][0]["architecture"]


# ---------------------------------------------------------------- the manifest


@needs_torch
def test_a_bundle_records_the_module_that_defined_the_builder(user_bundle):
    recorded = _architecture(user_bundle.path)
    assert recorded == {"name": user_bundle.architecture, "config": {"inputs": 3},
                        "module": user_bundle.module}


@needs_torch
def test_architectures_given_at_save_record_the_registered_builders_module(isolated):
    import torch

    module, arch = _write_module(isolated)
    sys.path.insert(0, str(isolated))
    importlib.import_module(module)
    net = torch.nn.Sequential(torch.nn.Linear(3, 2))
    polybundle.save("given.bundle", {"net": net}, architectures={"net": (arch, {"inputs": 3})})
    assert _architecture(isolated / "given.bundle")["module"] == module
    # no builder registered under the name: nothing to record, and the key is left out
    polybundle.save("unknown.bundle", {"net": net},
                    architectures={"net": ("never-registered", {})})
    assert _architecture(isolated / "unknown.bundle") == {"name": "never-registered",
                                                          "config": {}}


def test_builder_module_follows_partials_and_refuses_scripts():
    import functools

    def builder(config):
        return config

    assert builder_module(builder) == __name__
    assert builder_module(functools.partial(functools.partial(builder))) == __name__
    builder.__module__ = "__main__"
    assert builder_module(builder) is None


@needs_torch
def test_bundles_without_the_module_field_still_load(user_bundle):
    """Bundles written before the field existed (no ``module``) load as before."""
    with zipfile.ZipFile(user_bundle.path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    manifest = json.loads(members["manifest.json"])
    del manifest["models"][0]["architecture"]["module"]
    members["manifest.json"] = json.dumps(manifest).encode()
    old = user_bundle.folder / "old.bundle"
    with zipfile.ZipFile(old, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    with pytest.raises(UnknownArchitectureError, match="does not record which module"):
        polybundle.load(old)
    sys.path.insert(0, str(user_bundle.folder))
    importlib.import_module(user_bundle.module)
    assert polybundle.load(old).models["net"][0].out_features == 2


@needs_torch
def test_a_module_name_that_is_not_dotted_identifiers_is_refused_by_the_schema(user_bundle):
    with zipfile.ZipFile(user_bundle.path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    manifest = json.loads(members["manifest.json"])
    manifest["models"][0]["architecture"]["module"] = "os; \x1b[2J"
    members["manifest.json"] = json.dumps(manifest).encode()
    bad = user_bundle.folder / "bad.bundle"
    with zipfile.ZipFile(bad, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    with pytest.raises(SchemaError):
        polybundle.load(bad, lazy=True)


# ------------------------------------------------- a process that lacks the builder


@needs_torch
def test_load_without_the_builder_names_architecture_backend_and_module(user_bundle):
    with pytest.raises(UnknownArchitectureError) as caught:
        polybundle.load(user_bundle.path)
    message = str(caught.value)
    assert repr(user_bundle.architecture) in message
    assert "'torch' backend" in message
    assert f"import {user_bundle.module}" in message
    assert f"--import {user_bundle.module}" in message
    assert "[tool.polybundle]" in message


@needs_torch
def test_nothing_a_bundle_names_is_imported_unasked(user_bundle):
    """The recorded module is importable from the current folder, yet load never imports it."""
    sys.path.insert(0, str(user_bundle.folder))
    with pytest.raises(UnknownArchitectureError):
        polybundle.load(user_bundle.path)
    with pytest.raises(ConversionUnavailableError, match=user_bundle.module):
        polybundle.load(user_bundle.path, backend="tensorflow")
    assert main(["parity", str(user_bundle.path)]) == 2
    assert user_bundle.module not in sys.modules
    assert not get_registry().has_builder(user_bundle.architecture, "torch")


@needs_torch
def test_fresh_process_error_is_one_line_naming_the_module(user_bundle):
    result = subprocess.run(
        [sys.executable, "-m", "polybundle.tools.cli", "parity", str(user_bundle.path)],
        capture_output=True, text=True, timeout=300, cwd=user_bundle.folder,
    )
    assert result.returncode == 2, result.stderr
    error = result.stderr.strip()
    assert "Traceback" not in error
    assert error.startswith("error (UnknownArchitectureError)")
    assert repr(user_bundle.architecture) in error and "'torch' backend" in error
    assert f"--import {user_bundle.module}" in " ".join(error.split())


# --------------------------------------------------------------- --import, pyproject


@needs_torch
def test_import_option_registers_the_builder_for_the_command(user_bundle, capsys):
    assert main(["--import", user_bundle.module, "parity", str(user_bundle.path)]) == 0
    out = capsys.readouterr().out
    assert "torch" in out and "pass" in out
    assert user_bundle.module in sys.modules


@needs_torch
def test_pyproject_imports_register_the_builder(user_bundle, capsys):
    (user_bundle.folder / "pyproject.toml").write_text(
        f'[project]\nname = "mine"\n\n[tool.polybundle]\nimports = ["{user_bundle.module}"]\n'
    )
    below = user_bundle.folder / "notebooks" / "deeper"
    below.mkdir(parents=True)
    os.chdir(below)  # found in a folder above; that folder goes on sys.path
    assert main(["plan", str(user_bundle.path), "--to", "torch"]) == 0
    assert user_bundle.module in sys.modules
    capsys.readouterr()


def test_pyproject_is_looked_up_from_the_current_folder_upwards(isolated):
    assert configured_imports(isolated) == ([], None)
    (isolated / "pyproject.toml").write_text('[tool.other]\nx = 1\n')
    assert configured_imports(isolated) == ([], isolated / "pyproject.toml")
    (isolated / "pyproject.toml").write_text('[tool.polybundle]\nimports = ["a", "b.c"]\n')
    (isolated / "sub").mkdir()
    assert configured_imports(isolated / "sub") == (["a", "b.c"], isolated / "pyproject.toml")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[tool.polybundle]\nimports = "mine"\n', "imports is 'mine'; expected a list"),
        ("[tool.polybundle]\nimports = [1]\n", "imports is [1]; expected a list"),
        ("[tool.polybundle\n", "not readable as TOML"),
        ('[tool]\npolybundle = "x"\n', "[tool.polybundle] is 'x'; expected a table"),
    ],
)
def test_a_bad_pyproject_is_a_one_line_error_naming_the_file(isolated, capsys, text, expected):
    (isolated / "pyproject.toml").write_text(text)
    assert main(["inspect", "nothing.bundle"]) == 2
    error = " ".join(capsys.readouterr().err.split())
    assert error.startswith("error (UserCodeError)")
    assert "pyproject.toml" in error and expected in error


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (None, "the module could not be found (ModuleNotFoundError"),
        ("raise RuntimeError('boom in user code')\n",
         "importing it failed (RuntimeError: boom in user code at "),
        ("import no_such_dependency_xyz\n",
         "importing it failed (ModuleNotFoundError: No module named 'no_such_dependency_xyz'"),
        ("def broken(:\n", "importing it failed (SyntaxError"),
    ],
)
def test_a_module_that_fails_to_import_is_a_one_line_error_exit_2(
    isolated, capsys, source, expected
):
    name = f"user_models_{uuid.uuid4().hex[:10]}"
    if source is not None:
        (isolated / f"{name}.py").write_text(source)
    assert main(["--import", name, "inspect", "nothing.bundle"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    error = " ".join(err.split())
    assert error.startswith(f"error (UserCodeError): --import {name}: {expected}")
    assert f"'{name}'" in error


def test_pyproject_module_failures_name_the_pyproject(isolated, capsys):
    (isolated / "pyproject.toml").write_text('[tool.polybundle]\nimports = ["user_models_none"]\n')
    with pytest.raises(UserCodeError, match=r"pyproject.toml \[tool.polybundle\] imports "
                                            "user_models_none: the module could not be found"):
        import_user_modules([], start=isolated)


# ------------------------------------------------------------- the demo's bundles


@pytest.fixture(scope="module")
def demo_bundles(tmp_path_factory) -> list[demo.DemoResult]:
    if not (HAS_TORCH or HAS_TENSORFLOW):
        pytest.skip("the demo needs PyTorch or TensorFlow")
    return demo.run(tmp_path_factory.mktemp("demo"), steps=1, console=Console(quiet=True))


def test_plan_and_parity_work_on_the_demos_bundles_out_of_the_box(demo_bundles, capsys):
    backends = [result.backend for result in demo_bundles]
    for result in demo_bundles:
        for target in backends:
            assert main(["plan", str(result.path), "--to", target, "--json"]) == 0, target
        capsys.readouterr()
        assert main(["parity", str(result.path), "--json"]) == 0, result.backend
        rows = json.loads(capsys.readouterr().out)
        compared = rows["rows"] if isinstance(rows, dict) else rows
        assert {row["backend"] for row in compared} == set(backends), compared
        assert all(row["passed"] for row in compared)
