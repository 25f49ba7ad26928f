"""Every hook spec is documented and exercised by a test.

The meta-tests introspect :mod:`polybundle.hooks.hookspecs` and search the test
files (``tests/`` and each plugin's ``tests/``) for a test that calls the hook
(``.hook.<name>(``) or a plugin in a test that implements it
(``def <name>(``). The hooks no other test file reaches are called here.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

import polybundle
from polybundle.hooks import hookspecs
from polybundle.hooks.manager import get_plugin_manager

REPO = Path(__file__).resolve().parents[1]
TEST_FILES = sorted([*REPO.glob("tests/**/*.py"), *REPO.glob("plugins/*/tests/**/*.py")])
SPECS = sorted(
    name for name, function in vars(hookspecs).items()
    if name.startswith("polybundle_") and inspect.isfunction(function)
    and hasattr(function, f"{hookspecs.PROJECT_NAME}_spec")
)


def test_the_hookspec_module_declares_the_known_hooks():
    assert {"polybundle_register_backends", "polybundle_detect_archive",
            "polybundle_register_architectures", "polybundle_params_loaded"} <= set(SPECS)
    assert set(SPECS) == set(get_plugin_manager().hook.__dict__) & set(SPECS)


@pytest.mark.parametrize("name", SPECS)
def test_hook_spec_has_a_docstring_with_an_example(name):
    doc = inspect.getdoc(getattr(hookspecs, name)) or ""
    assert len(doc.split()) >= 20, f"{name} needs a docstring saying what, when and returns"
    assert "firstresult" in doc, f"{name}'s docstring must say whether it is firstresult"
    assert "Example:" in doc and f"def {name}(" in doc, f"{name}'s docstring needs an example"


@pytest.mark.parametrize("name", SPECS)
def test_hook_is_called_by_a_test(name):
    callers = [
        path.relative_to(REPO).as_posix() for path in TEST_FILES
        if f".hook.{name}(" in (text := path.read_text(encoding="utf-8"))
        or f"def {name}(" in text
    ]
    assert callers, f"no test calls or implements {name}; add one that checks its effect"


class BuilderPlugin:
    """A plugin registering a builder through the hook, not the decorator."""

    @polybundle.hookimpl
    def polybundle_register_architectures(self, register):
        register("meta-hook-arch", "torch", lambda config: ("built", config))


def test_register_architectures_hook_feeds_the_registry(fresh_plugins):
    manager = get_plugin_manager()
    seen = []
    manager.hook.polybundle_register_architectures(
        register=lambda name, backend, builder: seen.append((name, backend))
    )
    assert seen == []  # no built-in plugin registers builders through the hook
    plugin = BuilderPlugin()
    manager.register(plugin)
    try:
        polybundle.hooks.registry.reset()
        assert polybundle.build("meta-hook-arch", {"k": 1}, backend="pt") == ("built", {"k": 1})
    finally:
        manager.unregister(plugin)
        polybundle.hooks.registry.reset()
    with pytest.raises(polybundle.UnknownArchitectureError):
        polybundle.build("meta-hook-arch", {}, backend="torch")


def test_register_eras_hook_lists_the_builtin_eras():
    from polybundle.legacy import EraReader

    readers = []
    get_plugin_manager().hook.polybundle_register_eras(register=readers.append)
    assert readers and all(isinstance(r, EraReader) and r.format for r in readers)
    assert len({r.format for r in readers}) == len(readers)
    assert {polybundle.get_backend(r.backend).name for r in readers} <= {"torch", "tensorflow"}


@pytest.mark.parametrize("name", SPECS)
def test_plugin_guide_documents_the_hook(name):
    guide = (REPO / "docs" / "plugins.md").read_text(encoding="utf-8")
    assert f"### `{name}(" in guide, f"docs/plugins.md's hook reference lacks {name}"
