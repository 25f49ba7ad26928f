"""Every hook spec is documented, in the generated reference and exercised by a test.

The meta-tests introspect :mod:`polybundle.hooks.hookspecs` and search the test
files (``tests/`` and each plugin's ``tests/``) for a test that calls the hook
(``.hook.<name>(``) or a plugin in a test that implements it
(``def <name>(``). The hooks no other test file reaches are called here.
``docs/hooks.md`` must equal what :mod:`polybundle.tools.hookref` renders.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

import polybundle
from polybundle.hooks import hookspecs
from polybundle.hooks.manager import get_plugin_manager
from polybundle.hooks.registry import get_registry
from polybundle.legacy import EraReader
from polybundle.tools import hookref

REPO = Path(__file__).resolve().parents[1]
TEST_FILES = sorted([*REPO.glob("tests/**/*.py"), *REPO.glob("plugins/*/tests/**/*.py")])
SPECS = sorted(
    name for name, function in vars(hookspecs).items()
    if name.startswith("polybundle_") and inspect.isfunction(function)
    and hasattr(function, f"{hookspecs.PROJECT_NAME}_spec")
)


def test_the_hookspec_module_declares_the_known_hooks():
    assert {"polybundle_register_backends", "polybundle_detect_archive",
            "polybundle_register_architectures", "polybundle_params_loaded",
            "polybundle_register_eras", "polybundle_register_tensor_maps"} <= set(SPECS)
    assert set(SPECS) == set(get_plugin_manager().hook.__dict__) & set(SPECS)


REGISTRATION_HOOKS = sorted(name for name in SPECS if name.startswith("polybundle_register_"))


@pytest.mark.parametrize("name", REGISTRATION_HOOKS)
def test_registration_hooks_are_historic(name):
    assert getattr(hookspecs, name).polybundle_spec["historic"]
    assert getattr(get_plugin_manager().hook, name).is_historic()


@pytest.mark.parametrize("name", SPECS)
def test_hook_spec_has_a_docstring_with_an_example(name):
    doc = inspect.getdoc(getattr(hookspecs, name)) or ""
    assert len(doc.split()) >= 20, f"{name} needs a docstring saying what, when and returns"
    assert "firstresult" in doc, f"{name}'s docstring must say whether it is firstresult"
    assert "Example:" in doc and f"def {name}(" in doc, f"{name}'s docstring needs an example"


@pytest.mark.parametrize("name", SPECS)
def test_every_hook_argument_has_a_param_and_the_answer_a_returns(name):
    function = getattr(hookspecs, name)
    doc = inspect.getdoc(function) or ""
    for argument in inspect.signature(function).parameters:
        assert f":param {argument}:" in doc, f"{name}'s docstring lacks :param {argument}:"
    assert doc.count(":returns:") == 1, f"{name}'s docstring needs one :returns:"
    spec = next(s for s in hookref.hook_specs() if s.name == name)
    assert set(spec.params) == set(spec.arguments) and all(spec.params.values())
    assert spec.returns


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
    with pytest.raises(polybundle.UnknownArchitectureError):
        polybundle.build("meta-hook-arch", {}, backend="torch")
    get_plugin_manager().register(BuilderPlugin())  # after first use: no reset needed
    assert polybundle.build("meta-hook-arch", {"k": 1}, backend="pt") == ("built", {"k": 1})
    polybundle.hooks.manager.reset()
    with pytest.raises(polybundle.UnknownArchitectureError):
        polybundle.build("meta-hook-arch", {}, backend="torch")


def test_register_eras_hook_lists_the_builtin_eras():
    readers = list(get_registry().eras.values())
    assert readers and all(isinstance(r, EraReader) and r.format for r in readers)
    assert len({r.format for r in readers}) == len(readers)
    assert {polybundle.get_backend(r.backend).name for r in readers} <= {"torch", "tensorflow"}


def test_the_committed_hook_reference_is_the_generated_one():
    committed = (REPO / "docs" / "hooks.md").read_text(encoding="utf-8")
    assert committed == hookref.render(), (
        "docs/hooks.md is stale: run python -m polybundle.tools.hookref > docs/hooks.md"
    )
    for name in SPECS:
        assert f"### `{name}(" in committed


def test_the_plugin_guide_links_to_the_hook_reference_instead_of_copying_it():
    guide = (REPO / "docs" / "plugins.md").read_text(encoding="utf-8")
    assert "(hooks.md)" in guide
    assert not any(f"### `{name}(" in guide for name in SPECS)
