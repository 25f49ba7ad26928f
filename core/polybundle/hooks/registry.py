"""The one registry: backends (with aliases), architecture builders, eras and tensor maps.

Plugins hand all four to the registry through the historic registration hooks
(``polybundle_register_backends``, ``polybundle_register_architectures``,
``polybundle_register_eras``, ``polybundle_register_tensor_maps``); application
code declares builders with :func:`architecture` and tensor maps with
:func:`register_tensor_map`, and those declarations go through the same hooks
as a built-in plugin of their own.

One lifetime: the registry belongs to the plugin manager it was filled from
(:func:`polybundle.hooks.manager.get_plugin_manager`). A plugin registered on
that manager after first use (``get_plugin_manager().register(module)``) is
asked at once, because the hooks are historic. :func:`reset` forgets the
manager and so everything plugins supplied; what application code declared is
declared again on next use. A name or alias belongs to one backend; a builder,
an era format and a tensor map are registered once unless ``replace=True``.
Backend names may be given by any alias in every table: they resolve to the
backend's name when it is registered, however late.

Example:
    >>> get_backend("pt").name
    'torch'
    >>> sorted(get_registry().eras)
    ['legacy-tf-dill', 'legacy-torch-dill', 'legacy-torch-json']
"""

from __future__ import annotations

import functools
import re
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import pluggy

from polybundle.errors import (
    BackendError,
    FormatError,
    PolybundleError,
    UnknownArchitectureError,
    UnknownBackendError,
)
from polybundle.hooks.hookspecs import hookimpl
from polybundle.hooks.manager import get_plugin_manager, reset
from polybundle.model.backend import Backend
from polybundle.model.conversion import TensorMap

if TYPE_CHECKING:
    from polybundle.legacy.era import EraReader

Builder = Callable[[dict[str, Any]], Any]
"""``builder(config) -> native model``."""

__all__ = [
    "MODULE_NAME",
    "Builder",
    "Registry",
    "TensorMap",
    "architecture",
    "backend_for_model",
    "build",
    "builder_module",
    "get_backend",
    "get_registry",
    "recorded_module",
    "register_tensor_map",
    "remember_architecture",
    "remembered_architecture",
    "reset",
    "scoped_declarations",
    "tensor_map",
    "unregistered_architecture",
]


def _label(thing: Any) -> str:
    return str(getattr(thing, "__qualname__", thing))


class Registry:
    """Backends by name and alias, builders, era readers and tensor maps.

    Tables keyed by a backend hold the backend's name once it is registered
    and the lower-cased label given until then, so a plugin may register a
    builder before the backend it names.

    Example:
        >>> registry = Registry()
        >>> registry.register_builder("mlp", "pt", lambda config: config)
        >>> registry.has_builder("mlp", "torch")
        False
        >>> registry.register_backend(get_backend("torch"))
        >>> registry.builder("mlp", "PyTorch")({"width": 3})
        {'width': 3}
    """

    def __init__(self) -> None:
        self.backends: dict[str, Backend] = {}
        self._names: dict[str, str] = {}
        self.builders: dict[tuple[str, str], Builder] = {}
        self._eras: dict[str, EraReader] = {}
        self._maps: dict[tuple[str, str, str], TensorMap] = {}

    # ------------------------------------------------------------------ names

    def _key(self, label: str) -> str:
        """Return the backend name ``label`` stands for, or ``label`` lower-cased if unknown."""
        return self._names.get(label.lower(), label.lower())

    def canonical(self, label: str) -> str:
        """Return the name of the backend called ``label`` (any alias, any case), or ``label``.

        Example:
            >>> get_registry().canonical("Keras"), get_registry().canonical("no-such")
            ('tensorflow', 'no-such')
        """
        return self._names.get(label.lower(), label)

    def register_backend(self, backend: Backend) -> None:
        """Add ``backend`` under its name and aliases; refuse names already taken.

        :param backend: an instance of :class:`polybundle.plugin.Backend` with a name.
        :raises BackendError: when the name or an alias belongs to another backend.
        """
        if not isinstance(backend, Backend) or not backend.name:
            raise BackendError(
                f"register() was given {backend!r}; expected an instance of "
                "polybundle.plugin.Backend with a non-empty name."
            )
        for label in (backend.name, *backend.aliases):
            holder = self._names.get(label.lower())
            if holder is not None and self.backends[holder] is not backend:
                raise BackendError(
                    f"backend name or alias {label!r} is already registered by the "
                    f"{holder!r} backend; each name belongs to one backend. Rename "
                    "the new backend or its alias, or uninstall one of the two plugins."
                )
        self.backends[backend.name] = backend
        for label in (backend.name, *backend.aliases):
            self._names[label.lower()] = backend.name
        self._settle()

    def _settle(self) -> None:
        """Re-key builders and tensor maps registered under a label that now names a backend."""
        builders: dict[tuple[str, str], Builder] = {}
        for (name, label), builder in self.builders.items():
            key = (name, self._key(label))
            if key in builders and builders[key] is not builder:
                raise PolybundleError(
                    f"architecture {name!r} has two builders for the {key[1]!r} backend "
                    f"({_label(builders[key])!r} and {_label(builder)!r}), registered "
                    "under two of its aliases; keep one."
                )
            builders[key] = builder
        maps: dict[tuple[str, str, str], TensorMap] = {}
        for (name, source, target), mapping in self._maps.items():
            map_key = (name, self._key(source), self._key(target))
            if map_key in maps and maps[map_key] != mapping:
                raise PolybundleError(
                    f"architecture {name!r} has two tensor maps from {map_key[1]!r} to "
                    f"{map_key[2]!r}, registered under aliases of those backends; keep one."
                )
            maps[map_key] = mapping
        self.builders, self._maps = builders, maps

    def backend(self, name: str) -> Backend:
        """Return the backend called ``name`` (any alias, any case).

        :raises UnknownBackendError: when no registered backend has that name or alias.
        """
        canonical = self._names.get(name.lower())
        if canonical is None:
            raise UnknownBackendError(
                f"no backend is called {name!r}; known backends and aliases: "
                f"{', '.join(sorted(self._names)) or 'none'}. A third-party backend "
                "must be installed as a plugin package (entry-point group 'polybundle')."
            )
        return self.backends[canonical]

    # --------------------------------------------------------------- builders

    def register_builder(
        self, name: str, backend: str, builder: Builder, *, replace: bool = False
    ) -> None:
        """Register ``builder`` for architecture ``name`` in ``backend`` (a name or alias).

        :raises PolybundleError: when another builder holds the pair and ``replace`` is False.
        """
        key = (name, self._key(backend))
        existing = self.builders.get(key)
        if existing is not None and existing is not builder and not replace:
            raise PolybundleError(
                f"architecture {name!r} already has a builder for {key[1]!r} "
                f"({_label(existing)!r}); pass replace=True to replace it."
            )
        self.builders[key] = builder

    def builder(self, name: str, backend: str) -> Builder:
        """Return the builder of architecture ``name`` for ``backend``.

        :raises UnknownArchitectureError: when none is registered; says how to register one.
        """
        canonical = self.backend(backend).name
        try:
            return self.builders[(name, canonical)]
        except KeyError:
            known = sorted(
                f"{n} ({b})" if b in self.backends else f"{n} ({b}: no such backend)"
                for n, b in self.builders
            )
            raise UnknownArchitectureError(
                f"no builder for architecture {name!r} in the {canonical!r} backend; "
                f"registered: {', '.join(known) or 'none'}. Register one with "
                f"@polybundle.architecture({name!r}, backend={canonical!r}) on a "
                "function config -> model, or through the "
                "polybundle_register_architectures hook."
            ) from None

    def builder_module(self, name: str, backend: str) -> str | None:
        """Return the module that defined the builder of ``name`` for ``backend``, if any.

        None when no builder is registered, or it comes from no importable
        module (a script run as ``__main__``). See :func:`builder_module`.

        Example:
            >>> get_registry().builder_module("polybundle-conformance-convnet", "pt")
            'polybundle_torch.conformance'
        """
        label = self._names.get(backend.lower(), backend.lower())
        return builder_module(self.builders.get((name, label)))

    def has_builder(self, name: str, backend: str) -> bool:
        """Return True when a builder exists for ``name`` in a registered ``backend``."""
        label = self._names.get(backend.lower())
        return label is not None and (name, label) in self.builders

    # ------------------------------------------------------------------- eras

    def register_era(self, reader: EraReader) -> None:
        """Add an era reader under its ``format`` name.

        :param reader: an instance of :class:`polybundle.plugin.EraReader`.
        :raises PolybundleError: when another reader holds the format.
        """
        if not isinstance(getattr(reader, "format", None), str) or not reader.format or not (
            callable(getattr(reader, "claims", None)) and callable(getattr(reader, "read", None))
        ):
            raise PolybundleError(
                f"register() was given {reader!r}; expected an instance of "
                "polybundle.plugin.EraReader with a non-empty format name."
            )
        holder = self._eras.get(reader.format)
        if holder is not None and holder is not reader:
            raise PolybundleError(
                f"era format {reader.format!r} is registered twice ({type(holder).__qualname__} "
                f"and {type(reader).__qualname__}); each format belongs to one reader. "
                "Rename the new reader's format, or uninstall one of the two plugins."
            )
        self._eras[reader.format] = reader

    @property
    def eras(self) -> dict[str, EraReader]:
        """Every era reader keyed by its format name (a copy)."""
        return dict(self._eras)

    def era(self, format_name: str) -> EraReader:
        """Return the era reader of ``format_name``.

        :raises FormatError: when no registered reader handles that format.
        """
        if format_name not in self._eras:
            raise FormatError(
                f"the archive was detected as {format_name!r}, but no era reader handles it; "
                f"registered: {', '.join(sorted(self._eras)) or 'none'}. Install the plugin "
                "that detected it."
            )
        return self._eras[format_name]

    # ------------------------------------------------------------ tensor maps

    def register_tensor_map(
        self, architecture: str, source: str, target: str, mapping: TensorMap,
        *, replace: bool = False,
    ) -> None:
        """Register how tensors of ``architecture`` map from ``source`` to ``target``.

        :raises PolybundleError: when a different map holds the triple and ``replace`` is False.
        """
        key = (architecture, self._key(source), self._key(target))
        existing = self._maps.get(key)
        if existing is not None and existing != mapping and not replace:
            raise PolybundleError(
                f"architecture {architecture!r} already has a different tensor map from "
                f"{key[1]!r} to {key[2]!r}; pass replace=True to replace it."
            )
        self._maps[key] = dict(mapping)

    def tensor_map(self, architecture: str | None, source: str, target: str) -> TensorMap:
        """Return the map of ``architecture`` from ``source`` to ``target`` ({} if none)."""
        key = (architecture or "", self._key(source), self._key(target))
        return dict(self._maps.get(key, {}))


class _Declarations:
    """Builders and tensor maps declared by application code: a built-in plugin.

    Declarations outlive :func:`reset` (the code that made them does not run
    again); the plugin replays them, in order and ``trylast``, into every new
    registry.
    """

    def __init__(self) -> None:
        self.builders: list[tuple[str, str, Builder, bool]] = []
        self.maps: list[tuple[str, str, str, TensorMap]] = []

    @hookimpl(trylast=True)
    def polybundle_register_architectures(self, register: Callable[..., None]) -> None:
        for name, backend, builder, replace in self.builders:
            register(name, backend, builder, replace=replace)

    @hookimpl(trylast=True)
    def polybundle_register_tensor_maps(self, register: Callable[..., None]) -> None:
        for architecture, source, target, mapping in self.maps:
            register(architecture, source, target, mapping, replace=True)


DECLARATIONS_PLUGIN = "polybundle.declarations"
"""The name the application's declarations are registered under."""

_lock = threading.RLock()
_state: tuple[pluggy.PluginManager, Registry] | None = None
_declarations = _Declarations()
_built: weakref.WeakKeyDictionary[Any, tuple[str, dict[str, Any]]] = weakref.WeakKeyDictionary()


def _fill(manager: pluggy.PluginManager) -> Registry:
    registry = Registry()
    if not manager.is_registered(_declarations):
        manager.register(_declarations, name=DECLARATIONS_PLUGIN)
    hook = manager.hook
    hook.polybundle_register_backends.call_historic(kwargs={"register": registry.register_backend})
    hook.polybundle_register_architectures.call_historic(
        kwargs={"register": registry.register_builder}
    )
    hook.polybundle_register_eras.call_historic(kwargs={"register": registry.register_era})
    hook.polybundle_register_tensor_maps.call_historic(
        kwargs={"register": registry.register_tensor_map}
    )
    return registry


def get_registry() -> Registry:
    """Return the registry of the current plugin manager, filling it on first use.

    Example:
        >>> {"tensorflow", "torch"} <= set(get_registry().backends)
        True
    """
    global _state
    with _lock:
        manager = get_plugin_manager()
        if _state is None or _state[0] is not manager:
            _state = (manager, _fill(manager))
        return _state[1]


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
        >>> backend_for_model(object())
        Traceback (most recent call last):
        ...
        polybundle.errors.UnknownBackendError: no registered backend recognises a model ...
    """
    backends = get_registry().backends
    for backend in backends.values():
        if backend.owns(model):
            return backend
    raise UnknownBackendError(
        f"no registered backend recognises a model of type {type(model).__qualname__!r} "
        f"(from module {type(model).__module__!r}); registered backends: "
        f"{', '.join(sorted(backends)) or 'none'}. Pass a model of one of those "
        "frameworks, or install the plugin for yours."
    )


MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
"""A module name a manifest may record (``architecture.module``): dotted ASCII identifiers."""


def builder_module(builder: Any) -> str | None:
    """Return the importable module that defined ``builder``, or None.

    A ``functools.partial`` is followed to its function, a callable object to
    its class. A builder from a script run as ``__main__``, or from
    ``builtins``, has no module another process could import: None; so is a
    name that is not dotted ASCII identifiers (:data:`MODULE_NAME`, the
    manifest schema's pattern).

    Example:
        >>> builder_module(functools.partial(remember_architecture, name="mlp"))
        'polybundle.hooks.registry'
        >>> builder_module(print) is None, builder_module(None) is None
        (True, True)
    """
    while isinstance(builder, functools.partial):
        builder = builder.func
    if builder is None:
        return None
    module = getattr(builder, "__module__", None) or getattr(type(builder), "__module__", None)
    if not isinstance(module, str) or module in ("__main__", "builtins"):
        return None
    return module if MODULE_NAME.fullmatch(module) else None


def recorded_module(architecture: dict[str, Any] | None) -> str | None:
    """Return the module a manifest's ``architecture`` says defined its builder, if valid.

    Example:
        >>> recorded_module({"name": "mlp", "config": {}, "module": "my_models.nets"})
        'my_models.nets'
        >>> recorded_module({"name": "mlp", "config": {}, "module": "x\\n"}) is None
        True
    """
    module = (architecture or {}).get("module")
    return module if isinstance(module, str) and MODULE_NAME.fullmatch(module) else None


def unregistered_architecture(
    name: str, backend: str, module: str | None, role: str
) -> UnknownArchitectureError:
    """Return the error for a bundle whose architecture has no builder registered here.

    ``module`` is the one the bundle records as having defined the builder
    (``architecture.module`` in the manifest). polybundle never imports it on
    its own: a bundle is data, and importing a module runs its code. The
    message says how the user asks for it.

    Example:
        >>> print(unregistered_architecture("mlp", "torch", "my_models", "net"))
        no builder for architecture 'mlp' is registered for the 'torch' backend, so role 'net'
        cannot be rebuilt. The bundle records that its builder was defined in module
        'my_models', which has not been imported: import my_models before loading (on the
        command line: polybundle --import my_models ..., or imports = ['my_models'] under
        [tool.polybundle] in pyproject.toml), or pass into={'net': model}. polybundle never
        imports a module a bundle names unless you ask.
    """
    if module:
        where = (
            f"The bundle records that its builder was defined in module {module!r}, which has "
            f"not been imported: import {module} before loading (on the command line: "
            f"polybundle --import {module} ..., or imports = ['{module}'] under "
            "[tool.polybundle] in pyproject.toml)"
        )
    else:
        where = (
            "The bundle does not record which module defined its builder: import the module "
            f"that registers it with @polybundle.architecture({name!r}, backend={backend!r}) "
            "(on the command line: polybundle --import MODULE ...)"
        )
    return UnknownArchitectureError(
        f"no builder for architecture {name!r} is registered for the {backend!r} backend, so "
        f"role {role!r} cannot be rebuilt. {where}, or pass into={{{role!r}: model}}. "
        "polybundle never imports a module a bundle names unless you ask."
    )


def architecture(name: str, *, backend: str, replace: bool = False) -> Callable[[Builder], Builder]:
    """Decorator: register a builder ``config -> model`` for ``name`` in ``backend``.

    Example:
        >>> @architecture("doc-pair", backend="torch")
        ... def build_pair(config):
        ...     return ("pair", config["n"])
        >>> build("doc-pair", {"n": 2}, backend="pytorch")
        ('pair', 2)
    """

    def decorate(builder: Builder) -> Builder:
        with _lock:
            get_registry().register_builder(name, backend, builder, replace=replace)
            _declarations.builders.append((name, backend, builder, replace))
        return builder

    return decorate


def register_tensor_map(architecture: str, *, source: str, target: str, mapping: TensorMap) -> None:
    """Declare how tensors of ``architecture`` map from backend ``source`` to ``target``.

    Entries override the canonical pairing for the tensors they name; a tuple
    gives the layout tags to use (needed when a tensor is tagged ``opaque``).
    Backends may be named by any alias. A later declaration for the same
    triple replaces an earlier one.

    Example:
        >>> register_tensor_map("doc-scaler", source="pt", target="keras",
        ...                     mapping={"scale.w": ("scale/w", "out,in", "in,out")})
        >>> tensor_map("doc-scaler", "torch", "tensorflow")
        {'scale.w': ('scale/w', 'out,in', 'in,out')}
    """
    with _lock:
        get_registry().register_tensor_map(architecture, source, target, mapping, replace=True)
        _declarations.maps.append((architecture, source, target, dict(mapping)))


@contextmanager
def scoped_declarations() -> Iterator[None]:
    """Forget the builders and tensor maps application code declares inside the block.

    On exit the registry is :func:`reset`, so it holds what the plugins and the
    declarations made before the block supply. For tests.

    Example:
        >>> with scoped_declarations():
        ...     register_tensor_map("doc-scoped", source="pt", target="tf", mapping={"a": "b"})
        ...     tensor_map("doc-scoped", "torch", "tensorflow")
        {'a': 'b'}
        >>> tensor_map("doc-scoped", "torch", "tensorflow")
        {}
    """
    with _lock:
        builders, maps = list(_declarations.builders), list(_declarations.maps)
    try:
        yield
    finally:
        with _lock:
            _declarations.builders[:] = builders
            _declarations.maps[:] = maps
            reset()


def tensor_map(architecture: str | None, source: str, target: str) -> TensorMap:
    """Return the map registered for ``architecture`` from ``source`` to ``target`` ({} if none).

    Example:
        >>> tensor_map("nothing-registered", "torch", "tensorflow")
        {}
    """
    return get_registry().tensor_map(architecture, source, target)


def build(name: str, config: dict[str, Any] | None = None, *, backend: str) -> Any:
    """Build a model of architecture ``name`` and remember its name and config.

    A model built this way needs no ``architectures=`` argument in
    :func:`polybundle.save`.

    Example:
        >>> @architecture("doc-box", backend="tf")
        ... def build_box(config):
        ...     return {"box": config}
        >>> build("doc-box", {"size": 3}, backend="keras")
        {'box': {'size': 3}}
    """
    config = dict(config or {})
    model = get_registry().builder(name, backend)(config)
    remember_architecture(model, name, config)
    return model


class _Remembered:
    """A weak-referenceable stand-in model for the examples below."""


def remember_architecture(model: Any, name: str, config: dict[str, Any]) -> None:
    """Record that ``model`` is architecture ``name`` built from ``config``.

    Example:
        >>> model = _Remembered()
        >>> remember_architecture(model, "mlp", {"inputs": 3})
        >>> remembered_architecture(model)
        ('mlp', {'inputs': 3})
    """
    try:
        _built[model] = (name, config)
    except TypeError:  # not weak-referenceable: save() then needs architectures=
        pass


def remembered_architecture(model: Any) -> tuple[str, dict[str, Any]] | None:
    """Return the (name, config) recorded for ``model`` by :func:`build`, if any.

    Example:
        >>> remembered_architecture(_Remembered()) is None
        True
    """
    try:
        return _built.get(model)
    except TypeError:  # not weak-referenceable, so never recorded
        return None
