"""``import polybundle`` and ``polybundle.inspect`` work where no framework can be imported."""

from __future__ import annotations

import ast
import json
import subprocess
import sys

import pytest

import polybundle
from tests import models
from tests.conftest import REPO, needs_tensorflow, needs_torch

BLOCKER = """
import importlib.abc, sys
BLOCKED = ("torch", "tensorflow", "keras", "jax", "flax")
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked in this test")
sys.meta_path.insert(0, Blocker())
"""

FRAMEWORK_MODULES = {"torch", "tensorflow", "keras", "jax", "flax"}


def _run_blocked(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BLOCKER + code],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )


@needs_torch
def test_import_and_inspect_without_any_framework(tmp_path):
    path = tmp_path / "t.bundle"
    polybundle.save(path, {"net": models.trained_torch(0)}, params={"N": 6})
    code = f"""
import json, sys
import polybundle
from polybundle.tools.cli import main
report = polybundle.inspect({str(path)!r})
main(["inspect", {str(path)!r}])
loaded = sorted(m for m in sys.modules if m.split(".")[0] in {sorted(FRAMEWORK_MODULES)!r})
print(json.dumps({{"loaded": loaded, "backend": report["backend"], "n": len(report["tensors"])}}))
"""
    result = _run_blocked(code)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary == {"loaded": [], "backend": "torch", "n": 9}
    assert "0.weight" in result.stdout


@needs_torch
@needs_tensorflow
def test_verify_and_lazy_load_without_any_framework(tmp_path):
    """The writing backend checks and maps its weights file without importing its framework."""
    paths = {"torch": tmp_path / "t.bundle", "tensorflow": tmp_path / "k.bundle"}
    polybundle.save(paths["torch"], {"net": models.trained_torch(0)})
    polybundle.save(paths["tensorflow"], {"net": models.trained_keras(0)})
    expected = {
        name: {k: float(v.sum()) for k, v in polybundle.load(path).tensors("net").items()}
        for name, path in paths.items()
    }
    code = f"""
import json, sys
import polybundle
paths = {{k: v for k, v in {({k: str(v) for k, v in paths.items()})!r}.items()}}
out = {{}}
for name, path in paths.items():
    report = polybundle.verify(path)
    lazy = polybundle.load(path, lazy=True).tensors("net")
    out[name] = {{"ok": report.ok, "problems": report.problems, "checked": report.checked,
                 "sums": {{k: float(lazy[k].sum()) for k in lazy}}}}
out["loaded"] = sorted(m for m in sys.modules if m.split(".")[0] in {sorted(FRAMEWORK_MODULES)!r})
print(json.dumps(out))
"""
    result = _run_blocked(code)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary.pop("loaded") == []
    for name, found in summary.items():
        assert found["ok"], (name, found["problems"])
        assert any("tensors read without a framework" in line for line in found["checked"])
        assert found["sums"] == pytest.approx(expected[name], rel=1e-6), name


def test_loading_without_the_framework_names_the_extra(tmp_path):
    source = tmp_path / "tiny.bundle"
    code = """
import polybundle
from polybundle.errors import BackendUnavailableError
try:
    polybundle.get_backend("torch").require()
except BackendUnavailableError as exc:
    print("OK", exc)
"""
    result = _run_blocked(code)
    assert result.returncode == 0, result.stderr
    assert "pip install 'polybundle[torch]'" in result.stdout
    assert not source.exists()


def test_core_never_imports_a_framework_at_module_top():
    offenders = []
    for folder in ("core", "backends"):
        for path in sorted((REPO / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in tree.body:
                names = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                for name in names:
                    if name.split(".")[0] in FRAMEWORK_MODULES:
                        offenders.append(f"{path.relative_to(REPO)}: import {name}")
    assert offenders == []
