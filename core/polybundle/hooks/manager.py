"""The plugin manager: built-in plugins and entry points, loaded lazily.

Built-in plugins are listed in :data:`DEFAULT_PLUGINS` and registered the same
way a third-party plugin is; third-party plugins are found through the
entry-point group ``"polybundle"`` the first time the manager is asked for.
The registry (:mod:`polybundle.hooks.registry`) lives as long as the manager
it was filled from, so :func:`reset` is the one reset of both.

Writing a plugin (the short guide; ``docs/plugins.md`` has the long one):

1. Make a module with functions marked ``@polybundle.plugin.hookimpl`` whose
   names are hooks from :mod:`polybundle.hooks.hookspecs` (``docs/hooks.md``).
2. Point an entry point at it in your ``pyproject.toml``::

       [project.entry-points.polybundle]
       mybackend = "polybundle_mybackend.plugin"

3. ``pip install`` your package; polybundle finds it on next start.

Example:
    >>> pm = get_plugin_manager()
    >>> "polybundle.legacy.plugin" in [pm.get_name(p) for p in pm.get_plugins()]
    True
"""

from __future__ import annotations

import importlib
import threading

import pluggy

from polybundle.hooks import hookspecs

ENTRY_POINT_GROUP = "polybundle"
"""The entry-point group third-party plugins register under."""

DEFAULT_PLUGINS = (
    "polybundle.hooks.builtin",
    "polybundle.legacy.plugin",
)
"""Built-in plugin modules, registered like any third-party plugin."""

_lock = threading.Lock()
_manager: pluggy.PluginManager | None = None


def _create_manager() -> pluggy.PluginManager:
    manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    manager.add_hookspecs(hookspecs)
    for module_name in DEFAULT_PLUGINS:
        manager.register(importlib.import_module(module_name), name=module_name)
    manager.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    manager.check_pending()
    return manager


def get_plugin_manager() -> pluggy.PluginManager:
    """Return the process-wide plugin manager, creating it on first use.

    Example:
        >>> get_plugin_manager().hook.polybundle_detect_archive  # doctest: +ELLIPSIS
        <HookCaller 'polybundle_detect_archive'>
    """
    global _manager
    with _lock:
        if _manager is None:
            _manager = _create_manager()
        return _manager


def reset() -> None:
    """Forget the manager, and with it the registry, so the next use rediscovers plugins.

    Everything plugins registered (backends, builders, eras, tensor maps) is
    forgotten; builders and maps declared by application code with
    :func:`polybundle.architecture` and :func:`polybundle.register_tensor_map`
    are declared again. A plugin added at run time needs no reset: register it
    with ``get_plugin_manager().register(plugin)``.

    Example:
        >>> before = get_plugin_manager()
        >>> reset()
        >>> get_plugin_manager() is before
        False
    """
    global _manager
    with _lock:
        _manager = None
