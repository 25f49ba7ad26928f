"""The plugin module of the NumPy test backend: backend, builder and conformance adapter.

Registered by the tests with ``get_plugin_manager().register(plugin)`` (see the
``numpy_backend`` fixture in ``tests/test_feature_matrix.py``).

Example:
    >>> registered = []
    >>> polybundle_register_backends(registered.append)
    >>> registered[0].name
    'numpy'
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from polybundle.plugin import ARCHITECTURE, Adapter, Backend, hookimpl

from .adapter import NumpyAdapter
from .backend import NumpyBackend

BACKEND = NumpyBackend()


@hookimpl
def polybundle_register_backends(register: Callable[[Backend], None]) -> None:
    """Register the NumPy backend."""
    register(NumpyBackend())


@hookimpl
def polybundle_register_architectures(
    register: Callable[[str, str, Callable[[dict[str, Any]], Any]], None],
) -> None:
    """Register the builder of the conformance convnet for ``numpy``."""
    register(ARCHITECTURE, NumpyBackend.name, BACKEND.build)


@hookimpl
def polybundle_conformance_adapters() -> list[Adapter]:
    """Return the NumPy adapter."""
    return [NumpyAdapter()]
