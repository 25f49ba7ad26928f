"""The two PyTorch legacy eras: PyTorch dill and PyTorch JSON.

Facts about the older writers (see ``docs/legacy.md``):

- PyTorch dill era: ``manifest.dill`` ``{'models', 'version': '2.0-pytorch'}``
  (later with ``'backend': 'pytorch'``); per role ``model.pth``, ``params.dill``.
- PyTorch JSON era: ``manifest.json`` with ``manifest_version:
  'torch-manifest-v1'``; per role ``params.json``, ``model.pth``.

Both read ``model.pth`` without torch (:func:`polybundle_torch.pth_reader.read_pth`).
A ``params.dill`` may hold torch tensors pickled with plain ``pickle``; they are
read with :data:`TORCH_PARAMS` and come back as NumPy arrays.

Example:
    >>> TorchDillEra().format, TorchJsonEra().format
    ('legacy-torch-dill', 'legacy-torch-json')
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from polybundle.errors import FormatError, UnsafeContentError
from polybundle.legacy.era import (
    MAX_MANIFEST_BYTES,
    EraReader,
    LegacyContent,
    LegacyRole,
    check_roles,
    dill_manifest,
    opaque_specs,
    read_member,
    read_params,
)
from polybundle.safety.unpickle import Allowed, safe_loads
from polybundle_torch.pickle_vocabulary import TORCH_TENSORS, TorchStorage, tensor_arrays
from polybundle_torch.pth_reader import read_pickled_storage, read_pth

if TYPE_CHECKING:
    from polybundle.format.archive import ArchiveReader

TORCH_VERSION = "2.0-pytorch"
TORCH_MANIFEST_VERSION = "torch-manifest-v1"


def _load_storage_bytes(data: Any) -> TorchStorage:
    """What ``torch.storage._load_from_bytes`` becomes: a whole weights file holding a storage.

    Example:
        >>> _load_storage_bytes("not bytes")
        Traceback (most recent call last):
        ...
        polybundle.errors.UnsafeContentError: torch.storage._load_from_bytes got something ...
    """
    if not isinstance(data, bytes):
        raise UnsafeContentError(
            "torch.storage._load_from_bytes got something other than bytes; a pickled "
            "torch tensor always gives it bytes. Refused."
        )
    return read_pickled_storage(data)


TORCH_PARAMS: Mapping[tuple[str, str], Any] = {
    **TORCH_TENSORS,
    ("torch.storage", "_load_from_bytes"): Allowed(_load_storage_bytes),
}
"""The names a ``params.dill`` of the PyTorch eras may use besides plain data."""


def load_params_pickle(data: bytes, *, where: str) -> Any:
    """Read a params pickle that may hold torch tensors; tensors become NumPy arrays.

    Example:
        >>> import pickle
        >>> load_params_pickle(pickle.dumps({"N": 64}), where="params.dill")
        {'N': 64}
    """
    return safe_loads(data, where=where, extra=TORCH_PARAMS, leaves=tensor_arrays(where))


class _TorchEra(EraReader):
    """What both PyTorch eras share: ``<role>/model.pth`` read without torch."""

    backend = "torch"
    params_file = ""

    def _roles(self, archive: ArchiveReader, models: Any, where: str) -> list[LegacyRole]:
        roles = []
        for role in check_roles(models, where=where):
            weights = f"{role}/model.pth"
            state = read_pth(read_member(archive, weights), where=weights)
            name = f"{role}/{self.params_file}"
            params = read_params(archive, name, extra=TORCH_PARAMS, leaves=tensor_arrays(name))
            roles.append(LegacyRole(role, weights, opaque_specs(state), params))
        return roles

    def read_tensors(self, archive: ArchiveReader, role: LegacyRole) -> dict[str, np.ndarray]:
        """Return the role's state_dict as NumPy arrays (torch is not imported).

        Example: ``TorchDillEra().read_tensors(archive, role)["0.weight"].shape``.
        """
        return read_pth(read_member(archive, role.weights), where=role.weights)


class TorchDillEra(_TorchEra):
    """PyTorch dill era: ``manifest.dill`` with version ``2.0-pytorch``.

    Example:
        >>> TorchDillEra().backend
        'torch'
    """

    format = "legacy-torch-dill"
    description = "PyTorch dill era (manifest.dill, version 2.0-pytorch)"
    params_file = "params.dill"

    def claims(self, archive: ArchiveReader) -> bool:
        """Claim archives whose ``manifest.dill`` says version ``2.0-pytorch``."""
        manifest = dill_manifest(archive)
        return manifest is not None and manifest.get("version") == TORCH_VERSION

    def read(self, archive: ArchiveReader) -> LegacyContent:
        """Read the manifest, each role's params and tensor specs; nothing runs."""
        manifest = dill_manifest(archive) or {}
        if manifest.get("backend", "pytorch") not in ("pytorch", "torch"):
            raise FormatError(
                f"manifest.dill says backend {manifest.get('backend')!r:.40}; the PyTorch dill "
                "era writes 'pytorch'."
            )
        roles = self._roles(archive, manifest.get("models"), "manifest.dill")
        return LegacyContent(self.format, TORCH_VERSION, "torch", manifest, roles)


class TorchJsonEra(_TorchEra):
    """PyTorch JSON era: ``manifest.json`` with ``manifest_version: torch-manifest-v1``.

    Example:
        >>> TorchJsonEra().format
        'legacy-torch-json'
    """

    format = "legacy-torch-json"
    description = "PyTorch JSON era (manifest.json, manifest_version torch-manifest-v1)"
    params_file = "params.json"

    def _manifest(self, archive: ArchiveReader) -> dict[str, Any] | None:
        if not archive.has("manifest.json"):
            return None
        try:
            document = json.loads(read_member(archive, "manifest.json", limit=MAX_MANIFEST_BYTES))
        except (ValueError, UnicodeDecodeError, RecursionError):
            return None
        if (
            isinstance(document, dict)
            and document.get("manifest_version") == TORCH_MANIFEST_VERSION
        ):
            return document
        return None

    def claims(self, archive: ArchiveReader) -> bool:
        """Claim archives whose ``manifest.json`` says ``torch-manifest-v1``."""
        return self._manifest(archive) is not None

    def read(self, archive: ArchiveReader) -> LegacyContent:
        """Read the manifest, each role's ``params.json`` and tensor specs."""
        manifest = self._manifest(archive) or {}
        version = manifest.get("version", TORCH_VERSION)
        roles = self._roles(archive, manifest.get("models"), "manifest.json")
        return LegacyContent(self.format, str(version), "torch", manifest, roles)


ERAS: tuple[EraReader, ...] = (TorchDillEra(), TorchJsonEra())
"""The era readers :mod:`polybundle_torch.plugin` registers."""
