"""The plugin manager: built-in plugins and entry points, loaded lazily.

Built-in plugins are listed in :data:`DEFAULT_PLUGINS` and registered the same
way a third-party plugin is; third-party plugins are found through the
entry-point group ``"polybundle"`` the first time the manager is asked for.

Writing a plugin (the short guide; ``docs/plugins.md`` has the long one):

1. Make a module with functions marked ``@polybundle.hookimpl`` whose names
   are hooks from :mod:`polybundle.hooks.hookspecs`.
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
    "polybundle.format.detection",
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
    """Forget the manager and the registry so the next use rediscovers plugins.

    For tests and for applications that install a plugin at run time.

    Example:
        >>> reset()
    """
    global _manager
    from polybundle.hooks import registry

    with _lock:
        _manager = None
    registry.reset()
