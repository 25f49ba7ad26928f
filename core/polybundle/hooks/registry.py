"""The registry of backends (with aliases) and architecture builders.

The core owns names: plugins hand backends and builders to it through the
``polybundle_register_backends`` and ``polybundle_register_architectures``
hooks, and application code adds builders with :func:`architecture`. A name or
alias can belong to one backend only; a builder can be registered once per
(architecture, backend) unless ``replace=True``.

Example:
    >>> get_backend("pt").name
    'torch'
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Any

from polybundle.errors import (
    BackendError,
    PolybundleError,
    UnknownArchitectureError,
    UnknownBackendError,
)
from polybundle.model.backend import Backend

Builder = Callable[[dict[str, Any]], Any]


class Registry:
    """Backends by name and alias, and builders by (architecture, backend).

    Example:
        >>> registry = Registry()
        >>> registry.register_backend(TorchBackend())  # doctest: +SKIP
    """

    def __init__(self) -> None:
        self.backends: dict[str, Backend] = {}
        self._names: dict[str, str] = {}
        self.builders: dict[tuple[str, str], Builder] = {}

    def register_backend(self, backend: Backend) -> None:
        """Add ``backend`` under its name and aliases; refuse names already taken."""
        if not isinstance(backend, Backend) or not backend.name:
            raise BackendError(
                f"register() was given {backend!r}; expected an instance of "
                "polybundle.model.backend.Backend with a non-empty name."
            )
        for label in (backend.name, *backend.aliases):
            key = label.lower()
            holder = self._names.get(key)
            if holder is not None and self.backends[holder] is not backend:
                raise BackendError(
                    f"backend name or alias {label!r} is already registered by the "
                    f"{holder!r} backend; each name belongs to one backend. Rename "
                    "the new backend or its alias."
                )
        self.backends[backend.name] = backend
        for label in (backend.name, *backend.aliases):
            self._names[label.lower()] = backend.name

    def backend(self, name: str) -> Backend:
        """Return the backend called ``name`` (any alias, any case)."""
        canonical = self._names.get(name.lower())
        if canonical is None:
            raise UnknownBackendError(
                f"no backend is called {name!r}; known backends and aliases: "
                f"{', '.join(sorted(self._names)) or 'none'}. A third-party backend "
                "must be installed as a plugin package (entry-point group 'polybundle')."
            )
        return self.backends[canonical]

    def register_builder(
        self, name: str, backend: str, builder: Builder, *, replace: bool = False
    ) -> None:
        """Register ``builder`` for architecture ``name`` in ``backend``."""
        key = (name, self.backend(backend).name)
        existing = self.builders.get(key)
        if existing is not None and existing is not builder and not replace:
            raise PolybundleError(
                f"architecture {name!r} already has a builder for {key[1]!r} "
                f"({getattr(existing, '__qualname__', existing)!r}); pass replace=True "
                "to replace it."
            )
        self.builders[key] = builder

    def builder(self, name: str, backend: str) -> Builder:
        """Return the builder of architecture ``name`` for ``backend``."""
        canonical = self.backend(backend).name
        try:
            return self.builders[(name, canonical)]
        except KeyError:
            known = sorted(f"{n} ({b})" for n, b in self.builders)
            raise UnknownArchitectureError(
                f"no builder for architecture {name!r} in the {canonical!r} backend; "
                f"registered: {', '.join(known) or 'none'}. Register one with "
                f"@polybundle.architecture({name!r}, backend={canonical!r}) on a "
                "function config -> model, or through the "
                "polybundle_register_architectures hook."
            ) from None

    def has_builder(self, name: str, backend: str) -> bool:
        """Return True when a builder exists for ``name`` in ``backend``."""
        return (name, self.backend(backend).name) in self.builders


_lock = threading.RLock()
_registry: Registry | None = None
_built: weakref.WeakKeyDictionary[Any, tuple[str, dict[str, Any]]] = weakref.WeakKeyDictionary()
_declared: list[tuple[str, str, Builder, bool]] = []
"""Builders registered by :func:`architecture`; they survive :func:`reset`."""


def get_registry() -> Registry:
    """Return the process-wide registry, filling it from the plugins on first use.

    Example:
        >>> sorted(get_registry().backends)
        ['tensorflow', 'torch']
    """
    global _registry
    with _lock:
        if _registry is None:
            from polybundle.hooks.manager import get_plugin_manager

            registry = Registry()
            hook = get_plugin_manager().hook
            hook.polybundle_register_backends(register=registry.register_backend)
            hook.polybundle_register_architectures(register=registry.register_builder)
            for name, backend, builder, replace in _declared:
                registry.register_builder(name, backend, builder, replace=replace)
            _registry = registry
        return _registry


def reset() -> None:
    """Forget the registry; the next use fills it again from the plugins.

    Builders registered with :func:`architecture` are registered again.

    Example:
        >>> reset()
    """
    global _registry
    with _lock:
        _registry = None


def get_backend(name: str) -> Backend:
    """Return the registered backend called ``name`` or one of its aliases.

    Example:
        >>> get_backend("keras").name
        'tensorflow'
    """
    return get_registry().backend(name)


def backend_for_model(model: Any) -> Backend:
    """Return the backend whose framework ``model`` belongs to.

    Example:
        >>> backend_for_model(torch.nn.Linear(2, 2)).name  # doctest: +SKIP
        'torch'
    """
    for backend in get_registry().backends.values():
        if backend.owns(model):
            return backend
    raise UnknownBackendError(
        f"no registered backend recognises a model of type {type(model).__qualname__!r} "
        f"(from module {type(model).__module__!r}); registered backends: "
        f"{', '.join(sorted(get_registry().backends))}. Pass a torch.nn.Module or a "
        "keras.Model, or install the plugin for your framework."
    )


def architecture(name: str, *, backend: str, replace: bool = False) -> Callable[[Builder], Builder]:
    """Decorator: register a builder ``config -> model`` for ``name`` in ``backend``.

    Example:
        >>> @architecture("mlp", backend="torch")
        ... def build_mlp(config):
        ...     import torch
        ...     return torch.nn.Linear(config["inputs"], config["outputs"])
    """

    def decorate(builder: Builder) -> Builder:
        with _lock:
            get_registry().register_builder(name, backend, builder, replace=replace)
            _declared.append((name, backend, builder, replace))
        return builder

    return decorate


def build(name: str, config: dict[str, Any] | None = None, *, backend: str) -> Any:
    """Build a model of architecture ``name`` and remember its name and config.

    A model built this way needs no ``architectures=`` argument in
    :func:`polybundle.save`.

    Example:
        >>> model = build("mlp", {"inputs": 3, "outputs": 1}, backend="torch")  # doctest: +SKIP
    """
    config = dict(config or {})
    model = get_registry().builder(name, backend)(config)
    remember_architecture(model, name, config)
    return model


def remember_architecture(model: Any, name: str, config: dict[str, Any]) -> None:
    """Record that ``model`` is architecture ``name`` built from ``config``.

    Example:
        >>> remember_architecture(model, "mlp", {"inputs": 3})  # doctest: +SKIP
    """
    try:
        _built[model] = (name, config)
    except TypeError:  # not weak-referenceable: save() then needs architectures=
        pass


def remembered_architecture(model: Any) -> tuple[str, dict[str, Any]] | None:
    """Return the (name, config) recorded for ``model`` by :func:`build`, if any.

    Example:
        >>> remembered_architecture(build("mlp", {}, backend="torch"))  # doctest: +SKIP
        ('mlp', {})
    """
    try:
        return _built.get(model)
    except TypeError:  # not weak-referenceable, so never recorded
        return None
