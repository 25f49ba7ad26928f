"""The hook implementations polybundle finds through the ``polybundle`` entry point.

``pyproject.toml`` declares ``[project.entry-points.polybundle] tensorflow =
"polybundle_tensorflow.plugin"``: the built-in TensorFlow backend is registered exactly
as a third-party plugin is.

Example:
    >>> registered = []
    >>> polybundle_register_backends(registered.append)
    >>> registered[0].name
    'tensorflow'
"""

from __future__ import annotations

from collections.abc import Callable

from polybundle.hooks.hookspecs import hookimpl
from polybundle.model.backend import Backend

from .backend import TensorFlowBackend


@hookimpl
def polybundle_register_backends(register: Callable[[Backend], None]) -> None:
    """Register the built-in TensorFlow backend."""
    register(TensorFlowBackend())
