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
from typing import Any

from polybundle.format.archive import ArchiveReader
from polybundle.format.detection import Detection
from polybundle.hooks.hookspecs import hookimpl
from polybundle.legacy.era import EraReader
from polybundle.model.backend import Backend
from polybundle.tools.conformance import ARCHITECTURE, Adapter

from .backend import TensorFlowBackend
from .conformance import KerasAdapter, build_conformance_model
from .keras_file import KERAS_MEMBERS
from .legacy_era import ERAS


@hookimpl
def polybundle_register_backends(register: Callable[[Backend], None]) -> None:
    """Register the built-in TensorFlow backend."""
    register(TensorFlowBackend())


@hookimpl
def polybundle_register_eras(register: Callable[[EraReader], None]) -> None:
    """Register the TensorFlow dill legacy era.

    Example:
        >>> formats = []
        >>> polybundle_register_eras(lambda reader: formats.append(reader.format))
        >>> formats
        ['legacy-tf-dill']
    """
    for reader in ERAS:
        register(reader)


@hookimpl(trylast=True)
def polybundle_detect_archive(archive: ArchiveReader) -> Detection | None:
    """Claim a plain Keras 3 ``model.save("model.keras")`` file by its member names alone.

    It holds ``config.json``, ``metadata.json`` and ``model.weights.h5``, and
    nothing else but layer ``assets/``; it is read as a one-role bundle
    (``TensorFlowBackend.plain_format``).
    """
    names = archive.names()
    extra = set(names) - KERAS_MEMBERS
    if KERAS_MEMBERS <= set(names) and all(name.startswith("assets/") for name in extra):
        return Detection(TensorFlowBackend.plain_format, TensorFlowBackend.name)
    return None


@hookimpl
def polybundle_register_architectures(
    register: Callable[[str, str, Callable[[dict[str, Any]], Any]], None],
) -> None:
    """Register the builder of the conformance model (``polybundle conformance``, the demo)."""
    register(ARCHITECTURE, TensorFlowBackend.name, build_conformance_model)


@hookimpl
def polybundle_conformance_adapters() -> list[Adapter]:
    """Return the adapter that drives this backend through the conformance feature matrix."""
    return [KerasAdapter()]
