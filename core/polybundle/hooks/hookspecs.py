"""Hook specifications: the contract between polybundle and its plugins.

polybundle uses pluggy with the project name ``"polybundle"``. A plugin is any
module or object with functions marked ``@hookimpl`` whose names match the
specs below. Built-in plugins are listed in
:data:`polybundle.hooks.manager.DEFAULT_PLUGINS`; the built-in backends and
third-party plugins are found through the ``"polybundle"`` entry-point group.

Each spec documents every argument with ``:param name:`` and its answer with
``:returns:``; ``docs/hooks.md`` is generated from these docstrings by
:mod:`polybundle.tools.hookref`.

Example (a plugin module):
    >>> from polybundle.plugin import hookimpl
    >>> @hookimpl
    ... def polybundle_register_architectures(register):
    ...     register("tiny-mlp", "torch", lambda config: ("tiny-mlp", config))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from polybundle.format.archive import ArchiveReader
    from polybundle.format.detection import Detection
    from polybundle.legacy.era import EraReader
    from polybundle.model.backend import Backend

PROJECT_NAME = "polybundle"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec(historic=True)
def polybundle_register_backends(register: Callable[[Backend], None]) -> None:
    """Register backends (frameworks) by calling ``register(backend)`` once per backend.

    Historic: called when the registry is first used, and at once for a plugin
    registered later (``get_plugin_manager().register(plugin)``). The registry
    owns names and aliases. Not firstresult.

    :param register: call it with an instance of :class:`polybundle.plugin.Backend`
        for each backend the plugin provides. It raises
        :class:`polybundle.plugin.BackendError` when the backend's name or an
        alias is already held by another backend.
    :returns: nothing.

    Example:
        >>> @hookimpl
        ... def polybundle_register_backends(register):
        ...     register(MyBackend())
    """


@hookspec(firstresult=True)
def polybundle_detect_archive(archive: ArchiveReader) -> Detection | None:
    """Say which format and backend wrote an archive, or pass.

    Called by :func:`polybundle.load`, :func:`polybundle.inspect` and friends
    after the zip's directory has been checked and before any member is
    trusted. firstresult: the first non-None answer wins. The built-in
    detectors are ``trylast``, so a plugin's detector runs before them and can
    claim a file first.

    :param archive: the checked archive (:class:`polybundle.plugin.ArchiveReader`).
        Look at member names (``archive.names()``, ``archive.has(name)``), read
        small members and the first bytes of large ones (``archive.head(name, 16)``);
        never execute its content.
    :returns: a :class:`polybundle.plugin.Detection` naming the format and the
        backend, or None when the archive is not one the plugin recognises.

    Example:
        >>> @hookimpl
        ... def polybundle_detect_archive(archive):
        ...     if archive.has("net/model.npz"):
        ...         return Detection(format="polybundle", backend="arrays")
        ...     return None
    """


@hookspec(historic=True)
def polybundle_register_architectures(
    register: Callable[[str, str, Callable[[dict[str, Any]], Any]], None],
) -> None:
    """Register model builders by calling ``register(name, backend, builder)``.

    :func:`polybundle.load` uses the builders to rebuild models from a
    bundle's manifest. Historic: called when the registry is first used, and at
    once for a plugin registered later. Not firstresult. The
    :func:`polybundle.architecture` decorator does the same from application
    code.

    :param register: call it with the architecture ``name``, the ``backend``
        (a name or any alias; it may be registered later than the builder) and
        ``builder(config) -> native model``, which builds an untrained model
        from a JSON ``config``. Pass ``replace=True`` to replace a builder
        registered before; otherwise a second builder for the same pair raises
        :class:`polybundle.plugin.PolybundleError`.
    :returns: nothing.

    Example:
        >>> @hookimpl
        ... def polybundle_register_architectures(register):
        ...     register("mlp", "torch", build_torch_mlp)
    """


@hookspec
def polybundle_params_loaded(params: dict[str, Any], manifest: dict[str, Any], path: str) -> None:
    """React to the params of a bundle that :func:`polybundle.load` just read.

    For applications that keep a global configuration and must sync it with a
    loaded bundle. Called once per load, after the models were built. Not
    firstresult.

    :param params: the bundle's params; mutating it changes what
        :attr:`polybundle.Bundle.params` holds.
    :param manifest: the validated manifest of the bundle.
    :param path: the bundle's path, as a string.
    :returns: nothing.

    Example:
        >>> @hookimpl
        ... def polybundle_params_loaded(params, manifest, path):
        ...     GLOBAL_CONFIG.update(params)
    """


@hookspec(historic=True)
def polybundle_register_eras(register: Callable[[EraReader], None]) -> None:
    """Register readers of older archive layouts by calling ``register(reader)``.

    An era reader's ``claims(archive)`` is asked (after the format-2 detector
    passes) whether an archive is of its era; when it is,
    :func:`polybundle.load`, :func:`polybundle.migrate` and
    :func:`polybundle.verify` use its ``read``, ``read_tensors`` and
    ``load_standalone`` instead of the format-2 path. Readers must never
    execute archive content (use :func:`polybundle.plugin.safe_loads` for
    pickles). Historic: called when the registry is first used, and at once
    for a plugin registered later. Not firstresult. The built-in TensorFlow
    dill, PyTorch dill and PyTorch JSON eras are registered through this hook
    by :mod:`polybundle.legacy.plugin`.

    :param register: call it with an instance of :class:`polybundle.plugin.EraReader`
        with a unique ``format`` name, the ``backend`` (name or alias) that wrote
        the weights and a one-line ``description``. A format registered twice
        raises :class:`polybundle.plugin.PolybundleError`.
    :returns: nothing.

    Example:
        >>> @hookimpl
        ... def polybundle_register_eras(register):
        ...     register(MyOldWriterEra())
    """


@hookspec(historic=True)
def polybundle_register_tensor_maps(
    register: Callable[[str, str, str, dict[str, Any]], None],
) -> None:
    """Register explicit tensor maps by calling ``register(architecture, source, target, mapping)``.

    A map says how the tensors of one architecture go from backend ``source``
    to backend ``target`` where the canonical kinds do not pair them (a layer
    of a class no backend knows). :func:`polybundle.convert` and a
    cross-backend :func:`polybundle.load` use it. Historic: called when the
    registry is first used, and at once for a plugin registered later. Not
    firstresult. :func:`polybundle.register_tensor_map` does the same from
    application code.

    :param register: call it with the ``architecture`` name, the ``source`` and
        ``target`` backends (names or aliases) and ``mapping``:
        ``{source tensor: target tensor}`` or ``{source tensor: (target tensor,
        source layout tag, target layout tag)}``. Pass ``replace=True`` to replace
        a different map registered before; otherwise that raises
        :class:`polybundle.plugin.PolybundleError`.
    :returns: nothing.

    Example:
        >>> @hookimpl
        ... def polybundle_register_tensor_maps(register):
        ...     register("scaled", "torch", "tensorflow", {"scale.w": "scale/w"})
    """


@hookspec
def polybundle_conformance_adapters() -> list[Any]:
    """Hand the conformance feature matrix the adapters that drive a backend.

    Called by :func:`polybundle.plugin.feature_matrix` (``polybundle conformance``
    and the test suite) to check every feature for every installed backend. An
    adapter (:class:`polybundle.plugin.Adapter`) says how to build the shared
    conformance model, its inputs and predictions, an optimizer and a training
    step. Not firstresult: every plugin's adapters are collected.

    :returns: a list of :class:`polybundle.plugin.Adapter` instances, one per
        backend the plugin provides (an empty list when it provides none).

    Example:
        >>> @hookimpl
        ... def polybundle_conformance_adapters():
        ...     return [MyAdapter()]
    """
