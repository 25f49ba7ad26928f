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
from typing import Any

from polybundle.format.archive import ArchiveReader
from polybundle.format.detection import Detection
from polybundle.hooks.hookspecs import hookimpl
from polybundle.legacy.era import EraReader
from polybundle.model.backend import Backend
from polybundle.tools.conformance import ARCHITECTURE, Adapter

from .backend import TorchBackend
from .conformance import TorchAdapter, build_conformance_model
from .legacy_eras import ERAS
from .pth_reader import torch_zip_prefix


@hookimpl
def polybundle_register_backends(register: Callable[[Backend], None]) -> None:
    """Register the built-in PyTorch backend."""
    register(TorchBackend())


@hookimpl
def polybundle_register_eras(register: Callable[[EraReader], None]) -> None:
    """Register the PyTorch dill and PyTorch JSON legacy eras.

    Example:
        >>> formats = []
        >>> polybundle_register_eras(lambda reader: formats.append(reader.format))
        >>> formats
        ['legacy-torch-dill', 'legacy-torch-json']
    """
    for reader in ERAS:
        register(reader)


@hookimpl(trylast=True)
def polybundle_detect_archive(archive: ArchiveReader) -> Detection | None:
    """Claim a plain ``torch.save(state_dict)`` zip by its member names alone.

    Its members all lie in one folder with ``data.pkl`` and storages
    ``data/<n>`` (:func:`polybundle_torch.pth_reader.torch_zip_prefix`); it is
    read as a one-role bundle (``TorchBackend.plain_format``). Nothing is
    unpickled here.
    """
    if torch_zip_prefix(archive.names()) is None:
        return None
    return Detection(TorchBackend.plain_format, TorchBackend.name)


@hookimpl
def polybundle_register_architectures(
    register: Callable[[str, str, Callable[[dict[str, Any]], Any]], None],
) -> None:
    """Register the builder of the conformance model (``polybundle conformance``, the demo)."""
    register(ARCHITECTURE, TorchBackend.name, build_conformance_model)


@hookimpl
def polybundle_conformance_adapters() -> list[Adapter]:
    """Return the adapter that drives this backend through the conformance feature matrix."""
    return [TorchAdapter()]
