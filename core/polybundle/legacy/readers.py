"""The three built-in legacy eras: TensorFlow dill, PyTorch dill, PyTorch JSON.

Facts about the older writers (see ``docs/legacy.md``):

- TensorFlow dill era: ``manifest.dill`` ``{'models': [...], 'version': '1.0'}``;
  per role ``model.keras``, ``custom_objects.dill``, ``params.dill``, ``model.h5``.
- PyTorch dill era: ``manifest.dill`` ``{'models', 'version': '2.0-pytorch'}``
  (later with ``'backend': 'pytorch'``); per role ``model.pth``, ``params.dill``.
- PyTorch JSON era: ``manifest.json`` with ``manifest_version:
  'torch-manifest-v1'``; per role ``params.json``, ``model.pth``.

Example:
    >>> TorchDillEra().format
    'legacy-torch-dill'
"""

from __future__ import annotations

import io
import json
from typing import TYPE_CHECKING, Any

import numpy as np

from polybundle.errors import FormatError, UnsafeContentError
from polybundle.format.archive import MAX_JSON_BYTES
from polybundle.legacy.era import EraReader, LegacyContent, LegacyRole, check_roles, read_member
from polybundle.legacy.kerasfile import (
    check_config,
    keras_stream,
    open_keras,
    read_weights,
    weight_specs,
)
from polybundle.model.backend import TensorSpec
from polybundle.model.layouts import OPAQUE, SCALAR
from polybundle.safety.unpickle import list_globals, safe_loads
from polybundle_tensorflow.keras_file import check_layer_fields, check_layer_shapes
from polybundle_torch.pth_reader import read_pth

if TYPE_CHECKING:
    from polybundle.format.archive import ArchiveReader

MAX_MANIFEST_BYTES = 1024 * 1024
"""Largest legacy manifest read."""

TF_VERSION = "1.0"
TORCH_VERSION = "2.0-pytorch"
TORCH_MANIFEST_VERSION = "torch-manifest-v1"


def _dill_manifest(archive: ArchiveReader) -> dict[str, Any] | None:
    if not archive.has("manifest.dill"):
        return None
    data = read_member(archive, "manifest.dill", limit=MAX_MANIFEST_BYTES)
    manifest = safe_loads(data, where="manifest.dill")
    if not isinstance(manifest, dict):
        raise FormatError(f"manifest.dill holds a {type(manifest).__name__}; expected a dict.")
    return manifest


def _params(archive: ArchiveReader, name: str) -> dict[str, Any]:
    data = read_member(archive, name, limit=MAX_JSON_BYTES)
    if name.endswith(".json"):
        try:
            params = json.loads(data)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise FormatError(f"{name} is not JSON ({str(exc)[:80]}).") from None
    else:
        params = safe_loads(data, where=name)
    if not isinstance(params, dict) or not all(isinstance(k, str) for k in params):
        raise FormatError(f"{name} is not a dict with string keys; expected the params snapshot.")
    return params


def _torch_specs(state: dict[str, np.ndarray]) -> list[TensorSpec]:
    return [
        TensorSpec(
            key, key, tuple(array.shape), str(array.dtype), SCALAR if not array.shape else OPAQUE
        )
        for key, array in state.items()
    ]


class _TorchEra(EraReader):
    """What both PyTorch eras share: ``<role>/model.pth`` read without torch."""

    backend = "torch"
    params_file = ""

    def _roles(self, archive: ArchiveReader, models: Any, where: str) -> list[LegacyRole]:
        roles = []
        for role in check_roles(models, where=where):
            weights = f"{role}/model.pth"
            state = read_pth(read_member(archive, weights), where=weights)
            params = _params(archive, f"{role}/{self.params_file}")
            roles.append(LegacyRole(role, weights, _torch_specs(state), params))
        return roles

    def read_tensors(self, archive: ArchiveReader, role: LegacyRole) -> dict[str, np.ndarray]:
        """Return the role's state_dict as NumPy arrays (torch is not imported).

        Example:
            >>> TorchDillEra().read_tensors(archive, role)["0.weight"].shape  # doctest: +SKIP
            (8, 1, 3, 3)
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
        manifest = _dill_manifest(archive)
        return manifest is not None and manifest.get("version") == TORCH_VERSION

    def read(self, archive: ArchiveReader) -> LegacyContent:
        """Read the manifest, each role's params and tensor specs; nothing runs."""
        manifest = _dill_manifest(archive) or {}
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


class TensorFlowDillEra(EraReader):
    """TensorFlow dill era: ``manifest.dill`` with version ``1.0`` and no backend key.

    ``custom_objects.dill`` is never unpickled unless ``trust_code=True`` is
    passed to :meth:`load_standalone`; its names are listed statically.

    Example:
        >>> TensorFlowDillEra().backend
        'tensorflow'
    """

    format = "legacy-tf-dill"
    backend = "tensorflow"
    description = "TensorFlow dill era (manifest.dill, version 1.0, model.keras per role)"

    def claims(self, archive: ArchiveReader) -> bool:
        """Claim archives whose ``manifest.dill`` says version ``1.0`` without a backend."""
        manifest = _dill_manifest(archive)
        return (
            manifest is not None
            and manifest.get("version") == TF_VERSION
            and "backend" not in manifest
        )

    def read(self, archive: ArchiveReader) -> LegacyContent:
        """Read manifest, params and weight specs; list custom objects without unpickling."""
        manifest = _dill_manifest(archive) or {}
        roles = []
        ignored = []
        for role in check_roles(manifest.get("models"), where="manifest.dill"):
            custom_member = f"{role}/custom_objects.dill"
            custom: list[str] = []
            if archive.has(custom_member):
                data = read_member(archive, custom_member, limit=MAX_JSON_BYTES)
                custom = list_globals(data, where=custom_member)
            else:
                custom_member = None
            weights = f"{role}/model.keras"
            keras_file = open_keras(read_member(archive, weights), where=weights)
            check_config(keras_file.config, where=weights, declared=custom)
            check_layer_fields(keras_file.config, where=weights)
            check_layer_shapes(keras_file.config, io.BytesIO(keras_file.weights), where=weights)
            params = _params(archive, f"{role}/params.dill")
            if archive.has(f"{role}/model.h5"):
                ignored.append(f"{role}/model.h5")
            roles.append(
                LegacyRole(
                    role,
                    weights,
                    weight_specs(keras_file),
                    params,
                    custom,
                    custom_member,
                    keras_file.config,
                )
            )
        return LegacyContent(self.format, TF_VERSION, "tensorflow", manifest, roles, ignored)

    def read_tensors(self, archive: ArchiveReader, role: LegacyRole) -> dict[str, np.ndarray]:
        """Return the role's layer weights keyed by h5 path (h5py only, no TensorFlow).

        Example:
            >>> era.read_tensors(archive, role)["layers/conv2d/vars/0"].shape  # doctest: +SKIP
            (3, 3, 1, 8)
        """
        return read_weights(open_keras(read_member(archive, role.weights), where=role.weights))

    def load_standalone(self, archive: ArchiveReader, role: LegacyRole, *, trust_code: bool) -> Any:
        """Rebuild the Keras model from ``model.keras``; custom objects need ``trust_code``.

        Without custom objects, Keras loads the file with ``safe_mode=True``.
        With them, ``trust_code=True`` unpickles ``custom_objects.dill`` (which
        imports and may run the code it names); otherwise an
        :class:`UnsafeContentError` lists the names the file holds.

        Example:
            >>> era.load_standalone(archive, role, trust_code=True)  # doctest: +SKIP
            <Functional name=autoencoder, built=True>
        """
        custom_objects = None
        if role.custom_objects and role.custom_member:
            if not trust_code:
                raise UnsafeContentError(
                    f"role {role.role!r} needs the custom objects in {role.custom_member} "
                    f"({', '.join(role.custom_objects)}), and unpickling that file imports "
                    "and can run code, so polybundle did not. Either register a builder "
                    f"(@polybundle.architecture({role.role!r}, backend='tensorflow')) and "
                    "let polybundle load only the weights, or, if you trust this archive, "
                    "load it with trust_code=True."
                )
            custom_objects = _trusted_unpickle(read_member(archive, role.custom_member))
        from keras.src.saving import saving_lib

        data = read_member(archive, role.weights)
        try:
            return saving_lib.load_model(
                keras_stream(io.BytesIO(data), where=role.weights),
                custom_objects=custom_objects, compile=False, safe_mode=True,
            )
        except (ValueError, TypeError, KeyError, OSError) as exc:
            raise FormatError(
                f"Keras could not rebuild role {role.role!r} from {role.weights} "
                f"({str(exc)[:200]})."
            ) from None


def _trusted_unpickle(data: bytes) -> dict[str, Any]:
    """Unpickle ``custom_objects.dill`` with dill or pickle: only under ``trust_code``."""
    try:
        import dill as unpickler
    except ImportError:
        import pickle as unpickler
    objects = unpickler.loads(data)  # noqa: S301 - the caller passed trust_code=True
    if not isinstance(objects, dict):
        raise FormatError(f"custom_objects.dill holds a {type(objects).__name__}; expected a dict.")
    return objects


BUILTIN_ERAS: tuple[EraReader, ...] = (TensorFlowDillEra(), TorchDillEra(), TorchJsonEra())
"""The era readers polybundle registers itself (through the same hook as plugins)."""
