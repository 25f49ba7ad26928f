"""Check a Keras ``.keras`` file before anything reads it, and list its weights.

A ``.keras`` file is a zip (``config.json``, ``model.weights.h5``,
``metadata.json``). :func:`open_keras` checks the nested zip like the outer
one (names, member kinds, compression bombs) and reads only those exact
members; every dataset of its weights goes through
:func:`polybundle.readers.keras_file.check_dataset` before anything is read
(:func:`read_weights`, :func:`weight_specs`). :func:`config_problems` names
what in ``config.json`` would make Keras import or run code: ``Lambda``
layers (they carry marshalled bytecode) and classes from modules other than
Keras' own, unless the caller declares them (a legacy archive's
``custom_objects.dill`` names its own).

Example:
    >>> keras_file = open_keras(data, where="net/model.keras")  # doctest: +SKIP
    >>> config_problems(keras_file.config)  # doctest: +SKIP
    []
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import budget
from ..archive import MAX_JSON_BYTES, MAX_RATIO, RATIO_FLOOR, check_member_kind, check_member_name
from ..backend import TensorSpec
from ..errors import FormatError, UnsafeContentError
from ..layouts import OPAQUE, SCALAR
from ..readers.keras_file import (
    CONFIG_JSON,
    WEIGHTS_H5,
    check_weights,
    keras_stream,
    read_stored,
)

__all__ = [
    "KerasFile",
    "check_config",
    "config_problems",
    "keras_stream",
    "open_keras",
    "read_weights",
    "weight_specs",
]

MAX_KERAS_MEMBERS = 64
"""A ``.keras`` file holds three members (four with assets); more is refused."""

MAX_WEIGHTS_BYTES = 64 * 1024**3
"""Largest ``model.weights.h5`` read into memory."""

_KERAS_MODULES = ("keras", "keras.", "tf_keras.")
_CODE_CLASSES = {"Lambda", "TFOpLambda", "SlicingOpLambda"}


@dataclass
class KerasFile:
    """The checked contents of a ``.keras`` file held in memory.

    Example:
        >>> open_keras(data, where="net/model.keras").config["class_name"]  # doctest: +SKIP
        'Functional'
    """

    config: dict[str, Any]
    weights: bytes
    where: str


def open_keras(data: bytes, *, where: str) -> KerasFile:
    """Check the ``.keras`` zip in ``data`` and read its config and weights members.

    Example:
        >>> open_keras(b"not a zip", where="x")
        Traceback (most recent call last):
        ...
        polybundle.errors.FormatError: x is not a Keras file (...
    """
    try:
        inner = zipfile.ZipFile(io.BytesIO(data))
        infos = inner.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise FormatError(f"{where} is not a Keras file ({exc}); expected a .keras zip.") from None
    if len(infos) > MAX_KERAS_MEMBERS:
        raise UnsafeContentError(f"{where} holds {len(infos)} members; a .keras file has few.")
    by_name: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        check_member_name(info.filename)
        check_member_kind(info)
        if info.filename in by_name:
            raise UnsafeContentError(f"{where} holds member {info.filename!r} twice; refused.")
        by_name[info.filename] = info

    def member(name: str, limit: int) -> bytes:
        info = by_name.get(name)
        if info is None:
            raise FormatError(f"{where} lacks {name!r}; it is not a complete Keras file.")
        if info.file_size > limit:
            raise UnsafeContentError(f"{where}: {name!r} declares {info.file_size} bytes.")
        if info.file_size > MAX_RATIO * info.compress_size + RATIO_FLOOR:
            raise UnsafeContentError(
                f"{where}: {name!r} declares {info.file_size} bytes from "
                f"{info.compress_size} compressed (a compression bomb); refused."
            )
        budget.charge(info.file_size, f"{where}: {name!r}")
        try:
            return inner.read(info)
        except Exception as exc:  # BadZipFile (CRC), zlib.error, EOFError
            raise FormatError(f"{where}: member {name!r} is damaged ({exc}).") from None

    try:
        config = json.loads(member(CONFIG_JSON, MAX_JSON_BYTES))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise FormatError(f"{where}: {CONFIG_JSON} is not JSON ({str(exc)[:80]}).") from None
    if not isinstance(config, dict):
        raise FormatError(f"{where}: {CONFIG_JSON} is not a JSON object.")
    return KerasFile(config, member(WEIGHTS_H5, MAX_WEIGHTS_BYTES), where)


def _objects(value: Any, depth: int = 0) -> Iterator[dict[str, Any]]:
    if depth > 200:
        raise UnsafeContentError("a Keras config nests deeper than 200 levels; refused.")
    if isinstance(value, dict):
        if "class_name" in value:
            yield value
        for item in value.values():
            yield from _objects(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            yield from _objects(item, depth + 1)


def config_problems(config: dict[str, Any], declared: Iterable[str] = ()) -> list[str]:
    """Return what in a Keras config would import or run code (empty when safe).

    ``declared`` lists ``module.Class`` names the archive itself declares as
    its custom objects; those are expected, not problems.

    Example:
        >>> config_problems({"class_name": "Lambda", "module": "keras.layers"})
        ['a Lambda layer (it carries Python bytecode)']
        >>> config_problems({"class_name": "Evil", "module": "os"})
        ["class 'Evil' from module 'os', which is not Keras"]
    """
    allowed = set(declared)
    problems = []
    # compile_config (a custom loss is {"module": "builtins", "class_name": "function"}) is
    # never deserialized: every Keras load here passes compile=False.
    for item in _objects({k: v for k, v in config.items() if k != "compile_config"}):
        class_name = item.get("class_name")
        module = item.get("module")
        if class_name in _CODE_CLASSES:
            problems.append(f"a {class_name} layer (it carries Python bytecode)")
        elif isinstance(module, str) and not module.startswith(_KERAS_MODULES):
            if f"{module}.{class_name}" not in allowed:
                problems.append(f"class {class_name!r} from module {module!r}, which is not Keras")
    return sorted(set(problems))


def check_config(config: dict[str, Any], *, where: str, declared: Iterable[str] = ()) -> None:
    """Raise :class:`UnsafeContentError` when :func:`config_problems` finds anything.

    Example:
        >>> check_config({"class_name": "Dense", "module": "keras.layers"}, where="x")
    """
    problems = config_problems(config, declared)
    if problems:
        raise UnsafeContentError(
            f"{where}'s Keras config names {'; '.join(problems)}. Loading it would import or "
            "run code, so polybundle refuses. Register a builder for this model with "
            "@polybundle.architecture(...) and load its weights instead."
        )


def weight_specs(keras_file: KerasFile) -> list[TensorSpec]:
    """List the layer weights in ``model.weights.h5`` as specs keyed by their h5 path.

    Optimizer slots are left out. Layouts are not guessed (``opaque``, or
    ``scalar``); the tensor's name is its h5 key.

    Example:
        >>> [s.key for s in weight_specs(keras_file)][:1]  # doctest: +SKIP
        ['layers/batch_normalization/vars/0']
    """
    return [
        TensorSpec(key, key, shape, dtype, SCALAR if not shape else OPAQUE)
        for key, shape, dtype, _ in _datasets(keras_file, with_arrays=False)
    ]


def read_weights(keras_file: KerasFile) -> dict[str, np.ndarray]:
    """Return ``{h5 key: array}`` for every layer weight (h5py only, no Keras).

    Example:
        >>> read_weights(keras_file)["layers/conv2d/vars/0"].shape  # doctest: +SKIP
        (3, 3, 1, 8)
    """
    return {key: array for key, _, _, array in _datasets(keras_file, with_arrays=True)}


def _datasets(
    keras_file: KerasFile, *, with_arrays: bool
) -> list[tuple[str, tuple[int, ...], str, Any]]:
    """Check every dataset of the weights file; return the layer weights (optionally read).

    The whole file goes through :func:`polybundle.readers.keras_file.check_weights`
    (links, storage, type, extent), optimizer variables included, before
    anything is read; only the datasets under ``layers/`` are returned.
    """
    stream = io.BytesIO(keras_file.weights)
    return [
        (
            stored.key,
            stored.shape,
            str(stored.dtype),
            read_stored(stream, stored, where=keras_file.where) if with_arrays else None,
        )
        for stored in check_weights(stream, where=keras_file.where)
        if stored.key.startswith("layers/")
    ]
