"""The conformance feature matrix: every feature passes for torch, tensorflow, jax and numpy.

One test per cell (backend x feature, x target for pairwise features), run
through :func:`polybundle.testing.run_cell`, the same call ``polybundle
conformance`` makes. ``numpy`` is the test-only backend of
``tests/numpy_backend``, registered here through a plugin fixture. A cell is
n.a. only where :data:`NOT_APPLICABLE_CELLS` says why; any other n.a. fails.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections.abc import Iterator

import numpy as np
import pytest

from polybundle.plugin import get_plugin_manager, hookimpl, reset
from polybundle.testing import (
    FAIL,
    FEATURES,
    NOT_APPLICABLE,
    PASS,
    Adapter,
    Cell,
    conformance_adapters,
    matrix_table,
    run_cell,
)
from polybundle.tools.cli import main
from tests.conftest import HAS_TENSORFLOW, HAS_TORCH, REPO
from tests.numpy_backend import plugin as numpy_plugin
from tests.numpy_backend.adapter import NumpyAdapter

HAS_JAX = all(importlib.util.find_spec(m) is not None for m in ("jax", "flax", "optax"))
BACKENDS = {"torch": HAS_TORCH, "tensorflow": HAS_TENSORFLOW, "jax": HAS_JAX, "numpy": True}
"""Every backend the matrix must cover, and whether it is installed here."""

NO_OPTIMIZER = "the 'numpy' adapter declares no optimizer support"
NOT_APPLICABLE_CELLS = {
    **{("numpy", "optimizer", other): NO_OPTIMIZER for other in BACKENDS if other != "numpy"},
    **{(other, "optimizer", "numpy"): NO_OPTIMIZER for other in BACKENDS if other != "numpy"},
    ("numpy", "resume", None): NO_OPTIMIZER,
}
"""The cells that do not apply, with the reason the matrix must give."""


def _cells() -> list[tuple[str, str, str | None]]:
    out: list[tuple[str, str, str | None]] = []
    for backend in BACKENDS:
        for feature in FEATURES:
            targets = [o for o in BACKENDS if o != backend] if feature.pairwise else [None]
            out.extend((backend, feature.name, target) for target in targets)
    return out


@pytest.fixture(scope="module")
def numpy_backend() -> Iterator[None]:
    """Register the test-only NumPy backend's plugin for the module, then forget it."""
    reset()
    get_plugin_manager().register(numpy_plugin)
    yield
    reset()


@pytest.fixture(scope="module")
def adapters(numpy_backend: None) -> dict[str, Adapter]:
    """The adapters the plugins hand over, by backend."""
    return {adapter.backend: adapter for adapter in conformance_adapters()}


@pytest.mark.parametrize(
    ("backend", "feature", "target"), _cells(),
    ids=[f"{b}-{f.replace(' ', '_')}" + (f"-{t}" if t else "") for b, f, t in _cells()],
)
def test_cell(adapters: dict[str, Adapter], backend: str, feature: str, target: str | None):
    for name in (backend, target):
        if name is not None and not BACKENDS[name]:
            pytest.skip(f"{name} is not installed")
    chosen = next(f for f in FEATURES if f.name == feature)
    cell = run_cell(adapters[backend], chosen, adapters[target] if target else None)
    expected = NOT_APPLICABLE_CELLS.get((backend, feature, target))
    if expected is not None:
        assert (cell.status, cell.detail) == (NOT_APPLICABLE, expected)
        return
    assert cell.status == PASS, f"{cell.label} for {backend}: {cell.status}: {cell.detail}"


def test_every_installed_backend_hands_over_an_adapter(adapters: dict[str, Adapter]):
    assert set(adapters) == {name for name, present in BACKENDS.items() if present}


class LyingAdapter(NumpyAdapter):
    """The NumPy adapter whose predictions do not depend on the weights: a wrong adapter."""

    @property
    def label(self) -> str:
        return "numpy (lying)"

    def predict(self, model: object, x: np.ndarray) -> np.ndarray:
        return np.zeros((len(x), 2), np.float32)


class LyingPlugin:
    @hookimpl
    def polybundle_conformance_adapters(self) -> list[Adapter]:
        return [LyingAdapter()]


def test_a_failing_cell_is_reported_with_its_error_and_the_command_exits_1(
    numpy_backend: None, capsys: pytest.CaptureFixture[str]
):
    plugin = LyingPlugin()
    get_plugin_manager().register(plugin)
    try:
        status = main(["conformance", "--backend", "numpy", "--feature", "round trip", "--json"])
    finally:
        get_plugin_manager().unregister(plugin)
    cells = {c["backend"]: c for c in json.loads(capsys.readouterr().out)}
    assert status == 1
    assert cells["numpy"]["status"] == PASS
    assert cells["numpy (lying)"]["status"] == FAIL
    assert "two seeds gave the same model" in cells["numpy (lying)"]["detail"]


def test_the_table_shows_every_status_and_each_pairwise_target():
    cells = [Cell("numpy", "verify", None, PASS), Cell("numpy", "convert", "torch", FAIL, "x"),
             Cell("numpy", "convert", "jax", NOT_APPLICABLE, "y")]
    table = matrix_table(cells)
    assert [c.header for c in table.columns] == ["backend", "verify", "convert"]
    assert str(table.columns[2]._cells[0]) == "-> torch: fail\n-> jax: n.a."


def test_polybundle_conformance_prints_the_matrix(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "polybundle.tools.cli", "conformance", "--plugin",
         "tests.numpy_backend.plugin", "--backend", "numpy"],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "feature matrix" in done.stdout
    for feature in FEATURES:
        assert feature.pairwise or feature.name in done.stdout  # pairwise: no other backend
    assert "numpy / resume: n.a.: " + NO_OPTIMIZER in done.stdout


def test_a_plugin_module_that_does_not_import_is_a_one_line_error():
    """Before: `polybundle conformance --plugin tests.numpy_backend.plugin` from the console
    script (whose sys.path lacks the working folder) ended in a ModuleNotFoundError traceback."""
    done = subprocess.run(
        [sys.executable, "-m", "polybundle.tools.cli", "conformance", "--plugin",
         "no_such_plugin_module"],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert "BackendError" in done.stderr and "'no_such_plugin_module'" in done.stderr
