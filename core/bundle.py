"""The :class:`Bundle` that :func:`polybundle.load` returns.

Example:
    >>> bundle = polybundle.load("run.bundle")  # doctest: +SKIP
    >>> bundle.backend, bundle.roles
    ('torch', ['net'])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .archive import ArchiveReader
from .backend import TensorSpec
from .errors import IntegrityError, PolybundleError
from .manifest import read_manifest
from .registry import get_backend


def model_entry(manifest: dict[str, Any], role: str) -> dict[str, Any]:
    """Return the manifest entry of ``role``; raise listing the roles when absent.

    Example:
        >>> model_entry(manifest, "net")["weights"]  # doctest: +SKIP
        'net/model.pth'
    """
    for entry in manifest["models"]:
        if entry["role"] == role:
            return entry
    roles = [entry["role"] for entry in manifest["models"]]
    raise PolybundleError(f"the bundle has no role {role!r}; its roles are {roles}.")


@dataclass
class Bundle:
    """A loaded bundle: its manifest, params and models, and access to its tensors.

    ``models`` maps each loaded role to a native model of :attr:`backend`.

    Example:
        >>> bundle = polybundle.load("run.bundle")  # doctest: +SKIP
        >>> bundle.models["net"](x)
    """

    path: Path
    manifest: dict[str, Any]
    params: dict[str, Any]
    backend: str
    models: dict[str, Any] = field(default_factory=dict)

    @property
    def roles(self) -> list[str]:
        """Return every role the bundle holds, in manifest order."""
        return [entry["role"] for entry in self.manifest["models"]]

    def tensor_specs(self, role: str) -> list[TensorSpec]:
        """Return the :class:`TensorSpec` of each tensor of ``role``.

        Example:
            >>> [s.layout for s in bundle.tensor_specs("net")]  # doctest: +SKIP
            ['out,in', 'out']
        """
        return [TensorSpec.from_json(t) for t in model_entry(self.manifest, role)["tensors"]]

    def tensors(self, role: str) -> dict[str, np.ndarray]:
        """Read the tensors of ``role`` from the file as ``{name: numpy array}``.

        The file is re-opened; it must still hold the manifest this bundle was
        loaded with.

        Example:
            >>> bundle.tensors("net")["weight"].shape  # doctest: +SKIP
            (1, 3)
        """
        entry = model_entry(self.manifest, role)
        with ArchiveReader(self.path) as archive:
            if read_manifest(archive) != self.manifest:
                raise IntegrityError(
                    f"{str(self.path)!r} changed since it was loaded; load it again."
                )
            with archive.open(entry["weights"]) as source:
                return get_backend(self.backend).read_tensors(source, self.tensor_specs(role))
