"""The TensorFlow dill legacy era.

Facts about the older writer (see ``docs/legacy.md``): ``manifest.dill``
``{'models': [...], 'version': '1.0'}``; per role ``model.keras``,
``custom_objects.dill``, ``params.dill``, ``model.h5``. Each ``model.keras``
passes the Keras gate (:mod:`polybundle_tensorflow.keras_archive`) before
anything reads it; a ``params.dill`` may hold TensorFlow ``EagerTensor``
values, read as NumPy arrays (:data:`TF_PARAMS`).

Example:
    >>> TensorFlowDillEra().format
    'legacy-tf-dill'
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from polybundle.errors import FormatError, UnsafeContentError
from polybundle.format.archive import MAX_JSON_BYTES
from polybundle.legacy.era import (
    EraReader,
    LegacyContent,
    LegacyRole,
    check_roles,
    dill_manifest,
    read_member,
    read_params,
)
from polybundle.safety.unpickle import Allowed, is_numpy_value, list_globals
from polybundle_tensorflow import keras_compat
from polybundle_tensorflow.keras_archive import check_config, read_weights, weight_specs
from polybundle_tensorflow.keras_file import (
    check_layer_fields,
    check_layer_shapes,
    keras_stream,
    open_keras,
)

if TYPE_CHECKING:
    from polybundle.format.archive import ArchiveReader

TF_VERSION = "1.0"


def _eager_tensor(value: Any, *rest: Any) -> Any:
    """What ``tensorflow.python.framework.ops.convert_to_tensor`` becomes: its NumPy value.

    Example:
        >>> _eager_tensor([1.0])
        Traceback (most recent call last):
        ...
        polybundle.errors.UnsafeContentError: a pickled TensorFlow tensor does not hold ...
    """
    if not is_numpy_value(value):
        raise UnsafeContentError(
            "a pickled TensorFlow tensor does not hold a NumPy array; an EagerTensor pickles "
            "as convert_to_tensor(<array>). Refused before anything ran."
        )
    return value


TF_PARAMS: Mapping[tuple[str, str], Any] = {
    ("tensorflow.python.framework.ops", "convert_to_tensor"): Allowed(_eager_tensor),
}
"""The names a ``params.dill`` of the TensorFlow era may use besides plain data."""


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
        manifest = dill_manifest(archive)
        return (
            manifest is not None
            and manifest.get("version") == TF_VERSION
            and "backend" not in manifest
        )

    def read(self, archive: ArchiveReader) -> LegacyContent:
        """Read manifest, params and weight specs; list custom objects without unpickling."""
        manifest = dill_manifest(archive) or {}
        roles = []
        ignored = []
        for role in check_roles(manifest.get("models"), where="manifest.dill"):
            custom_member: str | None = f"{role}/custom_objects.dill"
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
            check_layer_shapes(keras_file.config, keras_file.weights(), where=weights)
            params = read_params(archive, f"{role}/params.dill", extra=TF_PARAMS)
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

        Example: ``era.read_tensors(archive, role)["layers/conv2d/vars/0"].shape``.
        """
        return read_weights(open_keras(read_member(archive, role.weights), where=role.weights))

    def load_standalone(self, archive: ArchiveReader, role: LegacyRole, *, trust_code: bool) -> Any:
        """Rebuild the Keras model from ``model.keras``; custom objects need ``trust_code``.

        Without custom objects, Keras loads the file with ``safe_mode=True``.
        With them, ``trust_code=True`` unpickles ``custom_objects.dill`` (which
        imports and may run the code it names); otherwise an
        :class:`UnsafeContentError` lists the names the file holds.

        Example: ``era.load_standalone(archive, role, trust_code=True)``.
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
        data = read_member(archive, role.weights)
        try:
            return keras_compat.load_model(
                keras_stream(io.BytesIO(data), where=role.weights), custom_objects=custom_objects
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


ERAS: tuple[EraReader, ...] = (TensorFlowDillEra(),)
"""The era readers :mod:`polybundle_tensorflow.plugin` registers."""
