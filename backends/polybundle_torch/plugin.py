"""The hook implementations polybundle finds through the ``polybundle`` entry point.

``pyproject.toml`` declares ``[project.entry-points.polybundle] torch =
"polybundle_torch.plugin"``: the built-in PyTorch backend is registered exactly
as a third-party plugin is.

Example:
    >>> registered = []
    >>> polybundle_register_backends(registered.append)
    >>> registered[0].name
    'torch'
"""

from __future__ import annotations

from collections.abc import Callable

from polybundle.hooks.hookspecs import hookimpl
from polybundle.model.backend import Backend

from .backend import TorchBackend


@hookimpl
def polybundle_register_backends(register: Callable[[Backend], None]) -> None:
    """Register the built-in PyTorch backend."""
    register(TorchBackend())
