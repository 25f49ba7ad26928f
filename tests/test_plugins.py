"""The plugin system: registry, aliases, a third-party backend found through an entry point.

A third-party plugin, the JAX plugin and the plugin guide use only the public
plugin module :mod:`polybundle.plugin`.
"""

from __future__ import annotations

import ast
import re
import textwrap
from pathlib import Path

import numpy as np
import pytest

import polybundle
import polybundle.plugin
from polybundle.hooks.manager import get_plugin_manager
from polybundle.hooks.registry import Registry, get_registry
from polybundle.plugin import Backend
from tests.conftest import needs_torch

REPO = Path(__file__).resolve().parents[1]
JAX_PACKAGE = REPO / "plugins" / "polybundle-jax" / "polybundle_jax"

FAKE_PLUGIN = textwrap.dedent(
    '''
    """A third-party backend for models that are plain dicts of NumPy arrays."""
    import io

    import numpy as np

    import polybundle
    from polybundle.plugin import Backend, TensorSpec

    DETECT_CALLS = []


    class ArrayModel:
        def __init__(self, arrays):
            self.arrays = dict(arrays)

        def predict(self, x):
            return x @ self.arrays["w"] + self.arrays["b"]


    class ArrayBackend(Backend):
        name = "arrays"
        aliases = ("npz",)
        extra = "fake-polybundle-arrays"
        modules = ("numpy",)
        distribution = "numpy"
        weights_member = "model.npz"

        def owns(self, model):
            return isinstance(model, ArrayModel)

        def describe(self, model):
            arrays = model.arrays.items()
            return [TensorSpec(k, k, v.shape, str(v.dtype), "opaque") for k, v in arrays]

        def write(self, model, stream):
            buffer = io.BytesIO()
            np.savez(buffer, **model.arrays)
            stream.write(buffer.getvalue())

        def _read(self, source):
            with np.load(io.BytesIO(source.read()), allow_pickle=False) as npz:
                return {k: npz[k] for k in npz.files}

        def load_into(self, model, source, specs):
            model.arrays = self._read(source)

        def read_tensors(self, source, specs):
            return self._read(source)

        def load_standalone(self, source, specs=None):
            return ArrayModel(self._read(source))


    @polybundle.hookimpl
    def polybundle_register_backends(register):
        register(ArrayBackend())


    @polybundle.hookimpl
    def polybundle_detect_archive(archive):
        DETECT_CALLS.append(archive.path)
        if any(name.endswith("/model.npz") for name in archive.names()):
            return polybundle.Detection("polybundle", "arrays")
        return None
    '''
)


@pytest.fixture
def fake_plugin(tmp_path, monkeypatch, fresh_plugins):
    """Install a real third-party plugin: a module plus a dist-info with an entry point."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "fake_polybundle_arrays.py").write_text(FAKE_PLUGIN)
    dist = site / "fake_polybundle_arrays-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: fake-polybundle-arrays\nVersion: 1.0\n"
    )
    (dist / "entry_points.txt").write_text("[polybundle]\narrays = fake_polybundle_arrays\n")
    monkeypatch.syspath_prepend(str(site))
    import importlib

    importlib.invalidate_caches()
    yield importlib.import_module("fake_polybundle_arrays")
    monkeypatch.delitem(__import__("sys").modules, "fake_polybundle_arrays", raising=False)


def test_third_party_backend_is_found_detected_first_and_used(fake_plugin, tmp_path):
    backend = polybundle.get_backend("npz")
    assert backend.name == "arrays"

    impls = get_plugin_manager().hook.polybundle_detect_archive.get_hookimpls()
    order = [impl.plugin_name for impl in reversed(impls)]  # pluggy calls the last one first
    assert order.index("arrays") < order.index("polybundle.hooks.builtin")
    assert impls[0].trylast

    model = fake_plugin.ArrayModel({"w": np.eye(2, dtype=np.float32), "b": np.ones(2, np.float32)})
    path = tmp_path / "arrays.bundle"
    manifest = polybundle.save(path, {"net": model}, params={"k": 1})
    assert manifest["backend"] == "arrays"
    assert manifest["models"][0]["weights"] == "net/model.npz"

    fake_plugin.DETECT_CALLS.clear()
    bundle = polybundle.load(path, backend="npz")
    assert fake_plugin.DETECT_CALLS == [path]
    assert bundle.backend == "arrays"
    x = np.array([[1.0, 2.0]], dtype=np.float32)
    assert np.array_equal(bundle.models["net"].predict(x), model.predict(x))
    assert np.array_equal(bundle.tensors("net")["w"], model.arrays["w"])


def test_builtin_backends_and_aliases():
    for alias in ("torch", "pytorch", "PT"):
        assert polybundle.get_backend(alias).name == "torch"
    for alias in ("tensorflow", "tf", "keras"):
        assert polybundle.get_backend(alias).name == "tensorflow"
    with pytest.raises(polybundle.UnknownBackendError, match="pytorch"):
        polybundle.get_backend("no-such-framework")


def test_duplicate_backend_names_are_refused():
    class Clash(Backend):
        name = "mine"
        aliases = ("pt",)

        def owns(self, model):
            return False

        describe = write = load_into = read_tensors = None  # type: ignore[assignment]

    registry = Registry()
    registry.register_backend(polybundle.get_backend("torch"))
    with pytest.raises(polybundle.BackendError, match="'pt' is already registered by the 'torch'"):
        registry.register_backend(Clash())
    assert "mine" not in registry.backends


def test_architecture_duplicates_need_replace():
    registry = get_registry()

    def first(config):
        return "first"

    def second(config):
        return "second"

    registry.register_builder("dup-arch", "torch", first)
    registry.register_builder("dup-arch", "pt", first)  # the same builder again is fine
    with pytest.raises(polybundle.PolybundleError, match="replace=True"):
        registry.register_builder("dup-arch", "torch", second)
    registry.register_builder("dup-arch", "torch", second, replace=True)
    assert registry.builder("dup-arch", "pytorch")({}) == "second"


def test_unknown_architecture_says_how_to_register():
    with pytest.raises(polybundle.UnknownArchitectureError, match=r"@polybundle.architecture"):
        polybundle.build("no-such-arch", {}, backend="torch")


def test_architecture_decorator_survives_plugin_reset(fresh_plugins):
    class Model:
        def __init__(self, config):
            self.config = config

    @polybundle.architecture("survivor", backend="tf")
    def build_survivor(config):
        return Model(config)

    polybundle.hooks.manager.reset()
    model = polybundle.build("survivor", {"a": 1}, backend="keras")
    assert model.config == {"a": 1}
    assert polybundle.hooks.registry.remembered_architecture(model) == ("survivor", {"a": 1})


@needs_torch
def test_params_loaded_hook_sees_params(tmp_path):
    import torch

    seen = []

    class Listener:
        @polybundle.hookimpl
        def polybundle_params_loaded(self, params, manifest, path):
            seen.append((dict(params), manifest["backend"], path))
            params["synced"] = True

    path = tmp_path / "p.bundle"
    polybundle.save(path, {"net": torch.nn.Linear(2, 2)}, params={"N": 3})
    manager = get_plugin_manager()
    listener = Listener()
    manager.register(listener)
    try:
        bundle = polybundle.load(path, into={"net": torch.nn.Linear(2, 2)})
    finally:
        manager.unregister(listener)
    assert seen == [({"N": 3}, "torch", str(path))]
    assert bundle.params == {"N": 3, "synced": True}


def test_missing_framework_error_names_the_extra(monkeypatch):
    import importlib.util

    backend = polybundle.get_backend("tensorflow")
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "tensorflow" else real(name, *a),
    )
    assert not backend.is_available()
    with pytest.raises(
        polybundle.BackendUnavailableError, match=r"pip install 'polybundle\[tensorflow\]'"
    ):
        backend.require()


def test_the_plugin_module_exports_what_an_author_needs():
    surface = polybundle.plugin
    for name in surface.__all__:
        assert hasattr(surface, name), name
    needed = {"Backend", "TensorSpec", "KINDS", "Canonical", "OPAQUE", "SCALAR", "conv_tag",
              "relayout", "Detection", "OptimizerState", "NeutralOptimizer", "hookimpl",
              "EraReader", "Adapter", "feature_matrix", "ArchiveReader", "MemberRange",
              "BackendError", "FormatError", "TensorMismatchError", "OptimizerMismatchError",
              "UnsupportedOptimizerError", "get_plugin_manager", "reset"}
    assert needed <= set(surface.__all__)
    assert surface.Backend is polybundle.Backend and surface.hookimpl is polybundle.hookimpl


def _polybundle_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
    return [name for name in found if name.split(".")[0] == "polybundle"]


@pytest.mark.parametrize("path", sorted(JAX_PACKAGE.glob("*.py")), ids=lambda p: p.name)
def test_the_jax_plugin_imports_only_the_public_modules(path):
    assert set(_polybundle_imports(path)) <= {"polybundle", "polybundle.plugin"}


def test_the_plugin_guide_uses_only_the_public_modules():
    guide = (REPO / "docs" / "plugins.md").read_text(encoding="utf-8")
    assert "touches nothing in the core" not in guide
    blocks = re.findall(r"```python\n(.*?)```", guide, flags=re.S)
    assert blocks
    imported = {name for block in blocks
                for name in re.findall(r"^(?:from|import) (polybundle[\w.]*)", block, re.M)}
    assert imported <= {"polybundle", "polybundle.plugin", "polybundle_jax",
                        "polybundle_jax.backend"}
