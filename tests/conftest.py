"""Shared fixtures and markers for polybundle's tests.

Tests that need a framework use the ``needs_torch`` / ``needs_tensorflow``
markers (skip with a reason when it is absent; CI installs both). Fixture
archives made by the original writers live in ``tests/fixtures/legacy`` (copied from
the project's shared fixtures, so a fresh clone runs every test) and are reached
through ``legacy_dir``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

import polybundle.hooks.manager

REPO = Path(__file__).resolve().parents[1]
LEGACY_DIR = REPO / "tests" / "fixtures" / "legacy"

HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_TENSORFLOW = (
    importlib.util.find_spec("tensorflow") is not None
    and importlib.util.find_spec("keras") is not None
)

needs_torch = pytest.mark.skipif(
    not HAS_TORCH, reason="PyTorch is not installed (pip install 'polybundle[torch]')"
)
needs_tensorflow = pytest.mark.skipif(
    not HAS_TENSORFLOW,
    reason="TensorFlow/Keras is not installed (pip install 'polybundle[tensorflow]')",
)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


@pytest.fixture
def legacy_dir() -> Path:
    """The folder of real legacy archives (``tests/fixtures/legacy``)."""
    return LEGACY_DIR


@pytest.fixture
def fresh_plugins():
    """Forget discovered plugins before and after the test (for entry-point tests)."""
    polybundle.hooks.manager.reset()
    yield
    polybundle.hooks.manager.reset()


def snapshot_tree(folder: Path) -> dict[str, int]:
    """Return ``{relative path: size}`` under ``folder`` (proves nothing was written)."""
    return {
        str(p.relative_to(folder)): p.stat().st_size
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


PTYCHO_CUSTOM_LAYERS = (
    "import keras\n"
    "@keras.saving.register_keras_serializable(package='ptycho')\n"
    "class SquareLayer(keras.layers.Layer):\n"
    "    def call(self, x):\n        return x * x\n"
    "class ScaleLayer(keras.layers.Layer):\n    pass\n"
)


@pytest.fixture
def ptycho_package(tmp_path, monkeypatch):
    """The seed project's ``ptycho.custom_layers`` importable for one test, then forgotten.

    Legacy TF-era archives pickle these classes by reference; ``trust_code=True``
    imports them. Teardown removes every ``ptycho`` module the test imported, so
    later tests see a process that never ran the project's code.
    """
    package = tmp_path / "ptycho"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "custom_layers.py").write_text(PTYCHO_CUSTOM_LAYERS)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield package
    for name in [n for n in sys.modules if n == "ptycho" or n.startswith("ptycho.")]:
        del sys.modules[name]

