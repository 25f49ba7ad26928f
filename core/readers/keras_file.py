"""Read the weights of a Keras 3 ``model.keras`` file with h5py, without Keras.

A ``.keras`` file is a zip holding ``config.json`` (the architecture) and
``model.weights.h5``. Keras stores each layer's variables as
``layers/<snake_case(class)>[_<n>]/vars/<i>``: the folder is named after the
layer's *class*, numbered in the order the model lists its layers, and ``i``
is the variable's position in the layer (trainable ones first). This module
walks ``config.json`` the same way to give every dataset its variable path
(``<layer name>/<variable>``, as ``keras.Variable.path`` says) and its
canonical kind (:mod:`polybundle.canonical`).

It is also the one place that opens ``model.weights.h5`` and reads its
datasets, for the TensorFlow backend, lazy loading and legacy archives:
:func:`read_dataset` reads a contiguous, uncompressed dataset of a bundle
member with one ``preadv`` into its array (or, given ``mapped``, views it in
a memory map of the bundle) and leaves anything else to h5py.

Example:
    >>> with open("model.keras", "rb") as f:  # doctest: +SKIP
    ...     sorted(read_keras(f))[:2]
    ['enc_bn/beta', 'enc_bn/gamma']
"""

from __future__ import annotations

import contextlib
import io
import json
import mmap
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

from ..archive import (
    MAX_JSON_BYTES,
    MemberRange,
    NestedZip,
    check_member_kind,
    check_member_name,
    open_nested,
)
from ..canonical import Canonical, keras_canonical
from ..errors import FormatError, PolybundleError, UnsafeContentError

WEIGHTS_H5 = "model.weights.h5"
CONFIG_JSON = "config.json"

_MODELS = {"Functional", "Sequential", "Model"}
_H5_ERRORS = (OSError, ValueError, KeyError, TypeError, RuntimeError)

Source = bytes | BinaryIO | MemberRange
"""A ``.keras`` file: its bytes, or a seekable binary file or bundle member."""


def _snake_case(name: str) -> str:
    """Keras' ``to_snake_case``, which names the weight folders."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _variable_names(class_name: str, config: dict[str, Any]) -> list[str] | None:
    """Return the variable names of a layer in Keras' storage order, or None if unknown."""
    if class_name in ("Dense",) or class_name.startswith(("Conv", "DepthwiseConv")):
        return ["kernel", *(["bias"] if config.get("use_bias", True) else [])]
    if class_name in ("LayerNormalization", "GroupNormalization"):
        return [
            *(["gamma"] if config.get("scale", True) else []),
            *(["beta"] if config.get("center", True) else []),
        ]
    if class_name == "BatchNormalization":
        return [
            *(["gamma"] if config.get("scale", True) else []),
            *(["beta"] if config.get("center", True) else []),
            "moving_mean",
            "moving_variance",
        ]
    if class_name == "Embedding":
        return ["embeddings"]
    if class_name == "PReLU":
        return ["alpha"]
    return None


@dataclass(frozen=True)
class KerasWeight:
    """One stored variable of a ``.keras`` file.

    ``name`` is ``<layer name>/<variable>`` (``keras.Variable.path``), ``key``
    the dataset in ``model.weights.h5``, ``layer_class`` the layer's class.

    Example:
        >>> KerasWeight("fc/kernel", "layers/dense/vars/0", "fc", "Dense", "kernel",
        ...             (3, 4), "float32", Canonical("dense", "kernel", "in,out")).slot
        'kernel'
    """

    name: str
    key: str
    layer: str
    layer_class: str
    variable: str
    shape: tuple[int, ...]
    dtype: str
    canonical: Canonical

    @property
    def slot(self) -> str:
        """Return the canonical slot (``kernel``, ``gamma``, ...; ``""`` if unknown)."""
        return self.canonical.slot


def _walk(model: dict[str, Any], prefix: str, h5: Any, out: list[KerasWeight]) -> None:
    """Append the weights of every layer of ``model`` (a config dict) found under ``prefix``."""
    import h5py

    layers = model.get("config", {}).get("layers", [])
    if model.get("class_name") == "Sequential":
        layers = [layer for layer in layers if layer.get("class_name") != "InputLayer"]
    used: dict[str, int] = {}
    for layer in layers:
        class_name = layer.get("class_name", "")
        config = layer.get("config", {})
        base = _snake_case(class_name)
        used[base] = used.get(base, -1) + 1
        folder = f"{prefix}layers/{base}" + (f"_{used[base]}" if used[base] else "")
        if class_name in _MODELS or "layers" in config:
            _walk(layer, f"{folder}/", h5, out)
            continue
        group = h5.get(f"{folder}/vars")
        if not isinstance(group, h5py.Group) or not len(group):
            continue
        keys = sorted(group, key=int)
        datasets = [group[k] for k in keys]
        names = _variable_names(class_name, config)
        if names is None or len(names) != len(keys):
            names = [f"vars/{k}" for k in keys]
        shapes = {n: tuple(d.shape) for n, d in zip(names, datasets, strict=True)}
        groups = int(config.get("groups", 1) or 1)
        kernel = shapes.get("kernel", ())
        group_channels = kernel[-2] if len(kernel) >= 2 else 0
        layer_name = config.get("name", base)
        for key, name, dataset in zip(keys, names, datasets, strict=True):
            out.append(
                KerasWeight(
                    name=f"{layer_name}/{name}",
                    key=f"{folder}/vars/{key}",
                    layer=layer_name,
                    layer_class=class_name,
                    variable=name,
                    shape=tuple(dataset.shape),
                    dtype=str(dataset.dtype),
                    canonical=keras_canonical(
                        class_name, name, tuple(dataset.shape),
                        groups=groups, group_channels=group_channels,
                    ),
                )
            )


def _container(source: Source) -> BinaryIO | MemberRange:
    """Return ``source`` as a seekable file (bytes become a :class:`io.BytesIO`)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return io.BytesIO(source)
    return source


def read_config(source: BinaryIO) -> dict[str, Any]:
    """Read only ``config.json`` of the ``.keras`` zip in the seekable ``source``.

    Example:
        >>> read_config(archive.open("net/model.keras"))["class_name"]  # doctest: +SKIP
        'Sequential'
    """
    where = getattr(source, "name", "model.keras")
    try:
        inner = zipfile.ZipFile(source)
        info = inner.getinfo(CONFIG_JSON)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError) as exc:
        raise FormatError(f"{where} is not a Keras file with {CONFIG_JSON} ({exc}).") from None
    check_member_name(info.filename)
    check_member_kind(info)
    if info.file_size > MAX_JSON_BYTES:
        raise UnsafeContentError(f"{where}: {CONFIG_JSON} declares {info.file_size} bytes.")
    try:
        config = json.loads(inner.read(info))
    except PolybundleError:
        raise
    except Exception as exc:  # BadZipFile (CRC), zlib.error, JSON and recursion errors
        raise FormatError(f"{where}: {CONFIG_JSON} is damaged ({str(exc)[:80]}).") from None
    if not isinstance(config, dict):
        raise FormatError(f"{where}: {CONFIG_JSON} is not a JSON object.")
    return config


def _open(source: Source) -> tuple[dict[str, Any], BinaryIO | MemberRange]:
    """Return the ``.keras`` file's config and its opened ``model.weights.h5``."""
    container = _container(source)
    config = read_config(container)
    return config, NestedZip(container).open(WEIGHTS_H5)


@contextlib.contextmanager
def weights_file(stream: BinaryIO | MemberRange, *, where: str = "") -> Iterator[Any]:
    """Open the ``model.weights.h5`` in ``stream`` with h5py, read-only.

    What h5py raises for a damaged file, inside the ``with`` block too,
    becomes :class:`FormatError` (prefixed with ``where`` when given).

    Example:
        >>> with weights_file(io.BytesIO(b"not hdf5")) as h5:  # doctest: +ELLIPSIS
        ...     pass
        Traceback (most recent call last):
        ...
        polybundle.errors.FormatError: model.weights.h5 is not a readable HDF5 file (...
    """
    import h5py

    prefix = f"{where}: " if where else ""
    try:
        with h5py.File(stream, "r") as h5:
            yield h5
    except _H5_ERRORS as exc:
        raise FormatError(
            f"{prefix}{WEIGHTS_H5} is not a readable HDF5 file ({str(exc)[:120]})."
        ) from None


def _contiguous_offset(stream: BinaryIO | MemberRange, dataset: Any) -> int | None:
    """Return where a plain dataset's bytes start in ``stream``, or None if h5py must read it.

    Plain: contiguous, uncompressed, in native byte order, in a bundle member.
    """
    offset = dataset.id.get_offset()
    plain = (
        isinstance(stream, MemberRange)
        and dataset.chunks is None
        and dataset.compression is None
        and offset is not None
        and dataset.dtype.isnative
    )
    return offset if plain else None


def _window(mapped: mmap.mmap, dataset: Any, start: int) -> np.ndarray:
    """Return ``dataset`` as a read-only view of ``mapped`` from byte ``start``."""
    dtype = np.dtype(dataset.dtype)
    count = int(np.prod(dataset.shape, dtype=np.int64))
    if start < 0 or start + count * dtype.itemsize > len(mapped):
        raise FormatError(
            f"a tensor claims bytes {start}..{start + count * dtype.itemsize} of a "
            f"{len(mapped)}-byte bundle; the file is truncated or damaged."
        )
    return np.frombuffer(mapped, dtype=dtype, count=count, offset=start).reshape(dataset.shape)


def read_dataset(
    stream: BinaryIO | MemberRange, dataset: Any, *, mapped: mmap.mmap | None = None
) -> np.ndarray:
    """Return the h5py ``dataset`` of the ``model.weights.h5`` open in ``stream`` as an array.

    A contiguous, uncompressed dataset of a bundle member (a
    :class:`MemberRange`) is read with one ``preadv`` straight into its
    array, or, given ``mapped`` (a read-only memory map of the bundle file),
    is a read-only view of it and nothing is read now. Anything else is
    decoded by h5py (read-only too when ``mapped`` is given).

    Example:
        >>> with weights_file(stream) as h5:  # doctest: +SKIP
        ...     read_dataset(stream, h5["layers/dense/vars/0"]).shape
        (3, 4)
    """
    offset = _contiguous_offset(stream, dataset)
    if offset is None:  # chunked, compressed or held in memory: HDF5 decodes it
        array = np.asarray(dataset[()])
        if mapped is not None:
            array.flags.writeable = False
        return array
    if mapped is not None:
        return _window(mapped, dataset, stream.offset + offset)
    array = np.empty(dataset.shape, dtype=dataset.dtype)
    stream.seek(offset)
    if stream.readinto(array) != array.nbytes:
        raise FormatError(
            f"{WEIGHTS_H5}: dataset {dataset.name!r} runs past the end of the file; "
            "the weights file is truncated."
        )
    return array


def read_datasets(
    source: Source, keys: list[str], *, mapped: mmap.mmap | None = None
) -> list[np.ndarray]:
    """Return the datasets ``keys`` of the ``.keras`` file in ``source``, in that order.

    Each is read as :func:`read_dataset` says (views of ``mapped`` when
    given). A missing key raises :class:`FormatError`. Neither TensorFlow nor
    Keras is imported.

    Example:
        >>> with open("model.keras", "rb") as f:  # doctest: +SKIP
        ...     read_datasets(f, ["layers/dense/vars/0"])[0].shape
        (3, 4)
    """
    import h5py

    stream = open_nested(_container(source), WEIGHTS_H5)
    with weights_file(stream) as h5:
        arrays = []
        for key in keys:
            dataset = h5.get(key)
            if not isinstance(dataset, h5py.Dataset):
                raise FormatError(
                    f"{WEIGHTS_H5} has no dataset {key!r}, which the manifest lists; "
                    "the weights file does not match its manifest."
                )
            arrays.append(read_dataset(stream, dataset, mapped=mapped))
        return arrays


def read_keras_weights(
    source: Source, *, with_arrays: bool = True
) -> list[tuple[KerasWeight, np.ndarray | None]]:
    """Return every stored layer variable of the ``.keras`` file in ``source``, in model order.

    Each item is ``(KerasWeight, array)`` (``array`` is None when
    ``with_arrays`` is False). The order is the model's ``weights`` order for
    Sequential and Functional models. Neither TensorFlow nor Keras is imported.

    Example:
        >>> with open("model.keras", "rb") as f:  # doctest: +SKIP
        ...     [(w.name, w.canonical.kind) for w, _ in read_keras_weights(f)][:1]
        [('enc_conv1/kernel', 'conv2d')]
    """
    config, stream = _open(source)
    with weights_file(stream) as h5:
        weights: list[KerasWeight] = []
        _walk(config, "", h5, weights)
        return [(w, read_dataset(stream, h5[w.key]) if with_arrays else None) for w in weights]


def read_keras(source: Source) -> dict[str, np.ndarray]:
    """Return ``{variable path: array}`` for the weights of the ``.keras`` file in ``source``.

    Example:
        >>> with open("model.keras", "rb") as f:  # doctest: +SKIP
        ...     read_keras(f)["enc_conv1/kernel"].shape
        (3, 3, 1, 8)
    """
    return {weight.name: array for weight, array in read_keras_weights(source)}
