"""The one registry: backends, builders, eras and tensor maps share one lifetime and one reset.

Plugins here are real plugin objects registered on the real plugin manager;
nothing of polybundle is mocked.
"""

from __future__ import annotations

import ast
import zipfile
from pathlib import Path

import numpy as np
import pytest

import polybundle
from polybundle.api.loading import detect
from polybundle.format.archive import ArchiveReader
from polybundle.hooks import manager, registry
from polybundle.hooks.manager import get_plugin_manager
from polybundle.hooks.registry import get_registry, tensor_map
from polybundle.plugin import Backend, EraReader, TensorSpec, hookimpl

HOOKS = Path(polybundle.__file__).parent / "hooks"


class LateBackend(Backend):
    """A backend of NumPy-array dicts, named ``late`` (alias ``lt``)."""

    name = "late"
    aliases = ("lt",)
    modules = ("numpy",)

    def owns(self, model: object) -> bool:
        return isinstance(model, dict)

    def describe(self, model: dict) -> list[TensorSpec]:
        return [TensorSpec(k, k, v.shape, str(v.dtype), "opaque") for k, v in model.items()]

    def write(self, model: dict, stream) -> None:
        np.savez(stream, **model)

    def read_tensors(self, source, specs) -> dict:
        with np.load(source) as npz:
            return {k: npz[k] for k in npz.files}

    def load_into(self, model: dict, source, specs) -> None:
        model.update(self.read_tensors(source, specs))


class LateEra(EraReader):
    """An era of zips holding ``late-era.txt``, written by backend alias ``lt``."""

    format = "legacy-late"
    backend = "lt"
    description = "late-era test archive"

    def claims(self, archive: ArchiveReader) -> bool:
        return archive.has("late-era.txt")

    def read(self, archive: ArchiveReader):
        raise NotImplementedError

    def read_tensors(self, archive: ArchiveReader, role) -> dict:
        raise NotImplementedError


def build_late(config: dict) -> dict:
    return {"w": np.full((2,), config.get("fill", 0.0), dtype=np.float32)}


LATE_MAP = {"w": ("w", "opaque", "opaque")}


class LatePlugin:
    """One plugin supplying all four kinds; its builder names the backend by alias."""

    @hookimpl
    def polybundle_register_architectures(self, register):
        register("late-arch", "LT", build_late)  # called before the backend hook (pluggy order)

    @hookimpl
    def polybundle_register_backends(self, register):
        register(LateBackend())

    @hookimpl
    def polybundle_register_eras(self, register):
        register(LateEra())

    @hookimpl
    def polybundle_register_tensor_maps(self, register):
        register("late-arch", "lt", "pt", LATE_MAP)


def _late_era_zip(folder: Path) -> Path:
    path = folder / "late.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("late-era.txt", "written by an old writer")
    return path


def _assert_late_plugin_seen(folder: Path) -> None:
    assert polybundle.get_backend("LT").name == "late"
    assert polybundle.build("late-arch", {"fill": 2.0}, backend="late")["w"].tolist() == [2, 2]
    assert get_registry().era("legacy-late").description == "late-era test archive"
    assert tensor_map("late-arch", "late", "torch") == LATE_MAP
    with ArchiveReader(_late_era_zip(folder)) as archive:
        found = detect(archive)
    assert (found.format, found.backend) == ("legacy-late", "late")  # alias resolved


def test_a_plugin_registered_after_first_use_is_seen_without_reset(fresh_plugins, tmp_path):
    first = get_registry()
    assert "late" not in first.backends
    get_plugin_manager().register(LatePlugin())
    assert get_registry() is first
    _assert_late_plugin_seen(tmp_path)


def test_a_plugin_registered_before_first_use_is_seen_too(fresh_plugins, tmp_path):
    get_plugin_manager().register(LatePlugin())
    _assert_late_plugin_seen(tmp_path)


def test_one_reset_clears_all_four_kinds_and_keeps_application_declarations(
    fresh_plugins, tmp_path
):
    @polybundle.architecture("kept-arch", backend="keras")
    def build_kept(config):
        return ("kept", config)

    polybundle.register_tensor_map("kept-arch", source="tf", target="pytorch", mapping={"a": "b"})
    get_plugin_manager().register(LatePlugin())
    _assert_late_plugin_seen(tmp_path)

    assert registry.reset is manager.reset  # one reset, not two
    manager.reset()

    fresh = get_registry()
    with pytest.raises(polybundle.UnknownBackendError, match="'late'"):
        polybundle.get_backend("late")
    assert not any(name == "late-arch" for name, _ in fresh.builders)
    assert "legacy-late" not in fresh.eras
    with pytest.raises(polybundle.FormatError, match="legacy-late"):
        fresh.era("legacy-late")
    assert tensor_map("late-arch", "late", "torch") == {}
    with ArchiveReader(_late_era_zip(tmp_path)) as archive, pytest.raises(polybundle.FormatError):
        detect(archive)
    # what application code declared is declared again; built-in plugins come back
    assert polybundle.build("kept-arch", {"k": 1}, backend="tensorflow") == ("kept", {"k": 1})
    assert tensor_map("kept-arch", "tensorflow", "torch") == {"a": "b"}
    assert {"torch", "tensorflow"} <= set(fresh.backends)
    assert {"legacy-tf-dill", "legacy-torch-dill", "legacy-torch-json"} <= set(fresh.eras)


def test_aliases_are_resolved_in_every_table():
    table = registry.Registry()
    table.register_builder("alias-arch", "PyTorch", build_late)
    table.register_tensor_map("alias-arch", "pt", "Keras", {"x": "y"})
    assert table.tensor_map("alias-arch", "torch", "tensorflow") == {}  # backends not known yet
    table.register_backend(polybundle.get_backend("torch"))
    table.register_backend(polybundle.get_backend("tensorflow"))
    for label in ("torch", "pt", "PYTORCH"):
        assert table.builder("alias-arch", label) is build_late
        assert table.has_builder("alias-arch", label)
        assert table.tensor_map("alias-arch", label, "tf") == {"x": "y"}
    assert set(table.builders) == {("alias-arch", "torch")}
    assert table.canonical("Keras") == "tensorflow"


def test_builder_declared_for_an_unknown_backend_says_so():
    table = registry.Registry()
    table.register_backend(polybundle.get_backend("torch"))
    table.register_builder("typo-arch", "trch", build_late)
    with pytest.raises(polybundle.UnknownArchitectureError, match=r"typo-arch \(trch: no such"):
        table.builder("typo-arch", "torch")


class ClashingBackendPlugin:
    @hookimpl
    def polybundle_register_backends(self, register):
        class Clash(LateBackend):
            name = "clash"
            aliases = ("tf",)

        register(Clash())


class ClashingEraPlugin:
    @hookimpl
    def polybundle_register_eras(self, register):
        class Clash(LateEra):
            format = "legacy-torch-dill"

        register(Clash())


class ClashingBuilderPlugin:
    @hookimpl
    def polybundle_register_architectures(self, register):
        register("late-arch", "late", lambda config: "other")


class ClashingMapPlugin:
    @hookimpl
    def polybundle_register_tensor_maps(self, register):
        register("late-arch", "late", "torch", {"w": "other"})


@pytest.mark.parametrize(
    ("plugin", "error", "message"),
    [
        (ClashingBackendPlugin, polybundle.BackendError, "'tf' is already registered by the "
                                                        "'tensorflow' backend"),
        (ClashingEraPlugin, polybundle.PolybundleError, "'legacy-torch-dill' is registered twice"),
        (ClashingBuilderPlugin, polybundle.PolybundleError, "already has a builder for 'late'"),
        (ClashingMapPlugin, polybundle.PolybundleError, "already has a different tensor map"),
    ],
)
def test_two_plugins_claiming_one_name_raise_a_typed_error(fresh_plugins, plugin, error, message):
    get_plugin_manager().register(LatePlugin())
    get_registry()
    with pytest.raises(error, match=message):
        get_plugin_manager().register(plugin())
    # the first holder keeps the name
    assert get_registry().era("legacy-torch-dill").backend in ("torch", "pytorch")
    assert polybundle.get_backend("tf").name == "tensorflow"
    assert polybundle.build("late-arch", {}, backend="lt")["w"].shape == (2,)
    assert tensor_map("late-arch", "lt", "pt") == LATE_MAP


def test_one_builder_under_two_aliases_of_a_later_backend_is_refused():
    table = registry.Registry()
    table.register_builder("two-alias-arch", "pt", build_late)
    table.register_builder("two-alias-arch", "pytorch", lambda config: None)
    with pytest.raises(polybundle.PolybundleError, match="two builders for the 'torch' backend"):
        table.register_backend(polybundle.get_backend("torch"))


def _imports(path: Path) -> list[tuple[str, bool]]:
    """Return (imported module, is at module top) for every import in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = {id(node) for node in tree.body}
    for node in tree.body:  # `if TYPE_CHECKING:` imports are module-top too
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            top |= {id(child) for child in node.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.module, id(node) in top))
        elif isinstance(node, ast.Import):
            found += [(alias.name, id(node) in top) for alias in node.names]
    return found


def test_hooks_have_no_cycle_and_no_function_local_import():
    for path in sorted(HOOKS.glob("*.py")):
        for module, at_top in _imports(path):
            assert at_top, f"{path.name} imports {module} inside a function"
    assert not any(m.startswith("polybundle.hooks.registry")
                   for m, _ in _imports(HOOKS / "manager.py"))
    assert not any(m.startswith(("polybundle.hooks.manager", "polybundle.hooks.registry"))
                   for m, _ in _imports(HOOKS / "hookspecs.py"))
