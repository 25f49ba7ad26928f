"""Read the weights of a Keras 3 ``model.keras`` file with h5py, without Keras.

A ``.keras`` file is a zip holding ``config.json`` (the architecture) and
``model.weights.h5``. Keras stores each layer's variables as
``layers/<snake_case(class)>[_<n>]/vars/<i>``: the folder is named after the
layer's *class*, numbered in the order the model lists its layers, and ``i``
is the variable's position in the layer (trainable ones first). This module
walks ``config.json`` the same way to give every dataset its variable path
(``<layer name>/<variable>``, as ``keras.Variable.path`` says) and its
canonical kind (:mod:`polybundle.model.canonical`).

It is also the one opener of the ``.keras`` zip (:func:`open_keras`: the zip
checked like a bundle's, ``config.json`` read as strict JSON) and the one place
that opens ``model.weights.h5`` and reads its datasets, for the TensorFlow
backend, lazy loading, legacy archives, ``verify``, ``migrate`` and Keras
itself. Every dataset goes through :func:`check_dataset`
first, which accepts only what Keras writes: a group tree where each object has
one hard link, and datasets that are contiguous, unfiltered, of a plain numeric
or bool type, whose bytes lie inside the weights file and whose shape and dtype
are the manifest's. Nothing is read before that check, and HDF5 never reads
dataset bytes: :func:`read_stored` reads them straight from the weights file
(one ``preadv`` for a bundle member, or a view of a memory map of the bundle),
after charging :mod:`polybundle.safety.budget`.

Example (``model.keras``: a Functional model Keras 3 saved):
    >>> with open("model.keras", "rb") as f:
    ...     weights = read_keras(f)
    >>> list(weights)[:3]
    ['enc_conv1/kernel', 'enc_conv1/bias', 'enc_bn/gamma']
    >>> weights["enc_conv1/kernel"].shape
    (3, 3, 1, 8)
"""

from __future__ import annotations

import contextlib
import io
import math
import mmap
import re
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

from polybundle.errors import FormatError, IntegrityError, PolybundleError, UnsafeContentError
from polybundle.format.archive import MAX_JSON_BYTES, MemberRange, NestedZip, local_data_start
from polybundle.format.arrays import read_array
from polybundle.format.jsondoc import load_json
from polybundle.format.seekable import SeekableReader
from polybundle.format.tensor_check import check_stored
from polybundle.model.backend import TensorSpec, resolve_dtype
from polybundle.model.canonical import Canonical
from polybundle.safety import budget
from polybundle_tensorflow.layers import keras_canonical

WEIGHTS_H5 = "model.weights.h5"
CONFIG_JSON = "config.json"
METADATA_JSON = "metadata.json"
KERAS_MEMBERS = frozenset({CONFIG_JSON, METADATA_JSON, WEIGHTS_H5})
"""The members Keras 3 writes into a ``.keras`` file for a model without assets."""

MAX_KERAS_MEMBERS = 64
"""A ``.keras`` file holds three members (a few more with assets); more is refused."""

MAX_WEIGHTS_BYTES = 64 * 1024**3
"""Largest ``model.weights.h5`` a ``.keras`` file may declare."""

MAX_CONFIG_DEPTH = 200
"""Deepest nesting of ``config.json`` (each nested model adds a few levels)."""

MAX_H5_LINKS = 200_000
"""Most links walked in one ``model.weights.h5`` (Keras writes a few per layer)."""

_MODELS = {"Functional", "Sequential", "Model"}
_H5_ERRORS = (OSError, ValueError, KeyError, TypeError, RuntimeError)
_TO_DO = (
    "polybundle reads only plain HDF5 datasets inside the archive, as Keras writes them; "
    "re-save the model with polybundle.save (or Keras) from a trusted copy."
)

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


_BOOL_FIELDS = ("use_bias", "center", "scale", "trainable")
_SIZE_FIELDS = ("units", "filters")
_DTYPE_NAME = re.compile(r"(mixed_)?(b?float|u?int|complex)\d+(_\w+)?|bool|string")
_CONV_FIELDS = frozenset({"kernel_size", "filters", "strides", "dilation_rate", "groups"})
_ACTIVATIONS = frozenset({
    "celu", "elu", "exponential", "gelu", "glu", "hard_shrink", "hard_sigmoid", "hard_silu",
    "hard_swish", "hard_tanh", "leaky_relu", "linear", "log_sigmoid", "log_softmax", "mish",
    "relu", "relu6", "selu", "sigmoid", "silu", "soft_shrink", "softmax", "softplus",
    "softsign", "sparse_plus", "sparse_sigmoid", "sparsemax", "squareplus", "swish", "tanh",
    "tanh_shrink", "threshold",
})
"""Keras 3's activation names (``keras.activations.get`` takes these strings)."""
MAX_LAYER_SIZE = 2**31 - 1
"""Largest ``units``/``filters`` a layer field may hold (the weights are checked against it too)."""


def _layer_configs(value: Any, depth: int = 0) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``(class name, config)`` of every object in a Keras config that has both."""
    if depth > 200:
        raise UnsafeContentError("a Keras config nests deeper than 200 levels; refused.")
    if isinstance(value, dict):
        if isinstance(value.get("config"), dict) and "class_name" in value:
            yield str(value["class_name"]), value["config"]
        for item in value.values():
            yield from _layer_configs(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            yield from _layer_configs(item, depth + 1)


def _field_problem(key: str, value: Any) -> str | None:
    """Describe what is wrong with one layer field (None when Keras can take it)."""
    if key == "name" and not isinstance(value, str):
        return "a name that is not a string"
    if key in _BOOL_FIELDS and not isinstance(value, bool):
        return "a value that is not true or false"
    if key in _SIZE_FIELDS and (
        type(value) is not int or not 1 <= value <= MAX_LAYER_SIZE
    ):
        return f"a value that is not an integer from 1 to {MAX_LAYER_SIZE}"
    if key in ("kernel_size", "strides", "dilation_rate") and not (
        key == "strides" and value is None
    ):
        items = value if isinstance(value, list) else [value]
        if not items or any(type(v) is not int or not 1 <= v <= MAX_LAYER_SIZE for v in items):
            return "a value that is not a positive integer or a list of them"
    if key == "activation" and not (
        isinstance(value, (dict, type(None))) or (isinstance(value, str) and value in _ACTIVATIONS)
    ):
        return "a value that is not a Keras activation name"
    if key == "dtype" and isinstance(value, str) and not _DTYPE_NAME.fullmatch(value):
        return "a value that is not a dtype name"
    if key == "dtype" and not isinstance(value, (str, dict, type(None))):
        return "a value that is not a dtype name or policy"
    return None


def _foreign_field(class_name: str, key: str) -> str | None:
    """Name a field Keras' Dense or convolution layers refuse as an unknown argument."""
    if class_name == "Dense" and key in _CONV_FIELDS:
        return "a field of convolution layers, which Dense does not take"
    if class_name.startswith("Conv") and key == "units":
        return "a field of Dense layers, which convolutions do not take"
    return None


def layer_field_problems(config: dict[str, Any]) -> list[str]:
    """Return the layer fields of a Keras config that Keras cannot take (empty when fine).

    Checks, without Keras, the fields whose wrong type makes Keras fail with
    its own errors: ``name``, ``units``/``filters``, ``kernel_size``,
    ``strides``, ``dilation_rate``, ``activation``, ``dtype`` and the
    boolean switches (``use_bias``, ``center``, ``scale``, ``trainable``).

    Example:
        >>> layer_field_problems({"class_name": "Dense", "config": {"units": None}})
        ["Dense 'units' = None: a value that is not an integer from 1 to 2147483647"]
        >>> layer_field_problems({"class_name": "Dense", "config": {"units": 3, "name": "d"}})
        []
    """
    problems = []
    body = {k: v for k, v in config.items() if k != "compile_config"}
    for class_name, fields in _layer_configs(body):
        for key, value in fields.items():
            problem = _field_problem(key, value) or _foreign_field(class_name, key)
            if problem:
                problems.append(f"{class_name} {key!r} = {str(value)[:40]}: {problem}")
    return problems


def check_layer_fields(config: dict[str, Any], *, where: str) -> None:
    """Raise :class:`FormatError` when :func:`layer_field_problems` finds anything.

    Example:
        >>> check_layer_fields({"class_name": "Dense", "config": {"units": 4}}, where="x")
    """
    problems = layer_field_problems(config)
    if problems:
        raise FormatError(
            f"{where}: {CONFIG_JSON} holds layer fields Keras cannot use "
            f"({'; '.join(problems[:4])}); the file is damaged or was altered. Re-save the "
            "model from a trusted copy, or register a builder for its architecture."
        )


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


def _walk(
    model: dict[str, Any],
    prefix: str,
    h5: Any,
    out: list[KerasWeight],
    configs: dict[str, dict[str, Any]] | None = None,
) -> None:
    """Append the weights of every layer of ``model`` (a config dict) found under ``prefix``.

    ``configs``, when given, gets ``{weights folder: layer config}`` of each layer.
    """
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
            _walk(layer, f"{folder}/", h5, out, configs)
            continue
        if configs is not None:
            configs[f"{folder}/vars"] = config
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


class _BytesWindow(SeekableReader):
    """A read-only, seekable window of bytes in memory: a STORED member of an in-memory zip."""

    def __init__(self, view: memoryview, name: str) -> None:
        super().__init__(len(view))
        self._view = view
        self.name = name

    def readinto(self, buffer: Any) -> int:  # type: ignore[override]
        target = memoryview(buffer).cast("B")
        chunk = self._view[self._pos : self._pos + len(target)]
        target[: len(chunk)] = chunk
        self._pos += len(chunk)
        return len(chunk)


class KerasZip:
    """A ``.keras`` zip that passed :func:`open_keras`: its config and its weights file.

    ``config`` is the parsed ``config.json``; :meth:`weights` opens
    ``model.weights.h5`` for ranged reads (nothing of it is read up front);
    ``where`` names the file in messages.

    Example:
        >>> keras_zip = open_keras(Path("model.keras").read_bytes(), where="net/model.keras")
        >>> keras_zip.config["class_name"], sorted(keras_zip.names())
        ('Functional', ['config.json', 'metadata.json', 'model.weights.h5'])
        >>> keras_zip.weights().read(4)
        b'\\x89HDF'
    """

    def __init__(
        self,
        inner: NestedZip,
        config: dict[str, Any],
        where: str,
        memory: memoryview | None = None,
    ) -> None:
        self.config = config
        self.where = where
        self._inner = inner
        self._memory = memory

    def names(self) -> list[str]:
        """Return the member names, in directory order (each checked, none twice)."""
        return self._inner.names()

    def weights(self) -> BinaryIO | MemberRange:
        """Open ``model.weights.h5`` for ranged reads; each call gives a fresh stream.

        A STORED member of a bundle member is a sub-range of the bundle (lazy
        loading maps it); of bytes in memory, a view of them (no copy).
        """
        if self._memory is not None:
            return _BytesWindow(self._memory, WEIGHTS_H5)
        return self._inner.open(WEIGHTS_H5)


def _read_config(inner: NestedZip, info: zipfile.ZipInfo, where: str) -> dict[str, Any]:
    """Read ``config.json`` (size and CRC-32 as declared) and parse it as strict JSON."""
    budget.charge(info.file_size, f"{where}: {CONFIG_JSON!r}")
    try:
        with inner.open(CONFIG_JSON) as stream:
            data = stream.read(info.file_size + 1)
    except PolybundleError:
        raise
    except Exception as exc:  # BadZipFile (CRC), zlib.error, EOFError
        raise FormatError(f"{where}: member {CONFIG_JSON!r} is damaged ({exc}).") from None
    if len(data) != info.file_size or zlib.crc32(data) != info.CRC:
        raise FormatError(
            f"{where}: {CONFIG_JSON} holds {len(data)} bytes with another CRC-32 than the "
            f"{info.file_size} its zip directory records; the file is damaged or was altered. "
            "Re-copy it."
        )
    config = load_json(
        data, where=f"{where}: {CONFIG_JSON}", max_depth=MAX_CONFIG_DEPTH, max_bytes=MAX_JSON_BYTES
    )
    if not isinstance(config, dict):
        raise FormatError(
            f"{where}: {CONFIG_JSON} holds a JSON {type(config).__name__}; expected an object "
            "(a Keras model config). The file is damaged or not a Keras file."
        )
    return config


def open_keras(source: Source, *, where: str = "") -> KerasZip:
    """Check the ``.keras`` zip in ``source`` once; return its config and ranged weights.

    The one opener of a ``.keras`` file, for every reader (lazy loading, plain
    files, ``verify``, legacy archives, Keras' own load). Before anything is
    read it refuses what a bundle's zip refuses (member names, kinds,
    encryption, compression bombs, a name twice, members that share bytes or
    leave bytes to no member: :class:`~polybundle.format.archive.NestedZip`),
    more than :data:`MAX_KERAS_MEMBERS` members, and a missing or oversized
    ``config.json`` or ``model.weights.h5``. ``config.json`` is then read
    (charged to :mod:`polybundle.safety.budget`, its CRC-32 checked) and
    parsed by :func:`polybundle.format.jsondoc.load_json`: ``NaN``,
    ``Infinity``, duplicate keys and nesting past :data:`MAX_CONFIG_DEPTH`
    are refused. ``where`` names the file in messages (default: its name).

    Example:
        >>> open_keras(Path("model.keras").read_bytes(), where="net/model.keras").where
        'net/model.keras'
        >>> open_keras(b"not a zip", where="x.keras")
        Traceback (most recent call last):
        ...
        polybundle.errors.FormatError: x.keras is not a zip file (...); expected a zip ...
    """
    container = _container(source)
    where = where or _where(container)
    inner = NestedZip(container, label=where)
    infos = inner.infolist()
    if len(infos) > MAX_KERAS_MEMBERS:
        raise UnsafeContentError(
            f"{where} holds {len(infos)} members; a .keras file holds {len(KERAS_MEMBERS)} "
            f"(a few more with assets), at most {MAX_KERAS_MEMBERS}. It is not a Keras file "
            "polybundle reads; re-save the model from a trusted copy."
        )
    by_name = {info.filename: info for info in infos}
    for name, limit in ((CONFIG_JSON, MAX_JSON_BYTES), (WEIGHTS_H5, MAX_WEIGHTS_BYTES)):
        info = by_name.get(name)
        if info is None or info.is_dir():
            raise FormatError(
                f"{where} lacks {name!r}; expected a complete Keras file "
                f"({', '.join(sorted(KERAS_MEMBERS))}). Re-save the model with Keras."
            )
        if info.file_size > limit:
            raise UnsafeContentError(
                f"{where}: {name!r} declares {info.file_size} bytes; expected at most {limit}. "
                "The file is damaged or hostile."
            )
    config = _read_config(inner, by_name[CONFIG_JSON], where)
    memory = None
    weights = by_name[WEIGHTS_H5]
    if isinstance(container, io.BytesIO) and weights.compress_type == zipfile.ZIP_STORED:
        view = memoryview(container.getvalue())
        start = local_data_start(lambda at, count: bytes(view[at : at + count]), weights, where)
        memory = view[start : start + weights.file_size]
    return KerasZip(inner, config, where, memory)


def read_config(source: Source) -> dict[str, Any]:
    """Return ``config.json`` of the ``.keras`` file in ``source``, after :func:`open_keras`.

    Example:
        >>> with open("model.keras", "rb") as f:
        ...     config = read_config(f)
        >>> config["class_name"], [layer["name"] for layer in config["config"]["layers"]][1:3]
        ('Functional', ['enc_conv1', 'enc_bn'])
        >>> read_config(io.BytesIO(b"not a zip"))
        Traceback (most recent call last):
        ...
        polybundle.errors.FormatError: model.keras is not a zip file (...); expected a zip ...
    """
    return open_keras(source).config


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


@dataclass(frozen=True)
class StoredDataset:
    """A dataset of ``model.weights.h5`` that passed :func:`check_dataset`.

    Its ``nbytes`` bytes lie at ``offset`` of the weights file, holding a
    C-ordered array of ``shape`` and ``dtype``.

    Example:
        >>> StoredDataset("layers/dense/vars/1", (2,), np.dtype("float32"), 2048, 8).nbytes
        8
    """

    key: str
    shape: tuple[int, ...]
    dtype: np.dtype
    offset: int
    nbytes: int


def _unsafe(where: str, key: str, found: str, expected: str) -> UnsafeContentError:
    return UnsafeContentError(
        f"{where}: {WEIGHTS_H5} {key!r} {found}; expected {expected}. {_TO_DO}"
    )


def _link_kind(h5: Any, key: str) -> str:
    """Describe the non-hard link ``key`` (soft, external, user-defined) for a message."""
    import h5py

    link = h5.get(key, getlink=True)
    if isinstance(link, h5py.SoftLink):
        return f"a soft link to {link.path!r}"
    if isinstance(link, h5py.ExternalLink):
        return f"an external link to {link.path!r} in the file {link.filename!r}"
    return f"a link of type {type(link).__name__}"


@dataclass(frozen=True)
class CheckedTree:
    """An open ``model.weights.h5`` whose link structure passed :func:`check_tree`.

    ``datasets`` holds every dataset key; ``size`` is the weights file's
    length in bytes, ``where`` names it in messages.

    Example:
        >>> with open("model.keras", "rb") as f:
        ...     stream = open_keras(f).weights()
        ...     size = stream_size(stream)
        ...     with weights_file(stream) as h5:
        ...         tree = check_tree(h5, size=size)
        >>> sorted(tree.datasets)[:1], tree.size, tree.where
        (['layers/batch_normalization/vars/0'], 35240, 'model.keras')
    """

    h5: Any
    datasets: frozenset[str]
    size: int
    where: str


def _key(name: bytes, where: str) -> str:
    try:
        return name.decode()
    except UnicodeDecodeError:
        raise FormatError(f"{where}: {WEIGHTS_H5} holds a name that is not UTF-8.") from None


def _check_links(h5: Any, where: str) -> None:
    """Refuse links other than hard ones (soft, external, user-defined) and too many links."""
    from h5py import h5l

    count = 0
    other: list[str] = []

    def visit(name: bytes, info: Any) -> int | None:
        nonlocal count
        count += 1
        if info.type != h5l.TYPE_HARD:
            other.append(_key(name, where))
        return 1 if other or count > MAX_H5_LINKS else None

    h5.id.links.visit(visit, info=True)
    if other:
        key = other[0]
        raise _unsafe(where, key, f"is {_link_kind(h5, key)}", "a group or dataset stored here")
    if count > MAX_H5_LINKS:
        raise _unsafe(where, "/", f"holds more than {MAX_H5_LINKS} links", "a few per layer")


def check_tree(h5: Any, *, size: int, where: str = "") -> CheckedTree:
    """Check the link structure of the open weights file; return it with its dataset keys.

    Refuses (:class:`UnsafeContentError`) soft, external and user-defined
    links, any object reached by more than one hard link (one dataset under
    two names, or a group holding itself), objects other than groups and
    datasets, and more than :data:`MAX_H5_LINKS` links. Walks the file's own
    metadata only, in HDF5 (no link is followed out of the file). Every
    :func:`check_dataset` needs its result.

    Example:
        >>> with open("model.keras", "rb") as f:
        ...     stream = open_keras(f).weights()
        ...     with weights_file(stream) as h5:
        ...         "layers/conv2d/vars/0" in check_tree(h5, size=stream_size(stream)).datasets
        True
        >>> import h5py
        >>> with h5py.File("linked.h5", "w") as h5:
        ...     h5["a"] = np.zeros(2, "f4")
        ...     h5["b"] = h5py.SoftLink("/a")
        >>> with open("linked.h5", "rb") as f, weights_file(f) as h5:
        ...     check_tree(h5, size=stream_size(f), where="linked.h5")
        Traceback (most recent call last):
        ...
        polybundle.errors.UnsafeContentError: linked.h5: model.weights.h5 'b' is a soft link
        to '/a'; expected a group or dataset stored here. ...
    """
    import h5py
    from h5py import h5o

    label = where or "model.keras"
    _check_links(h5, label)
    root = h5o.get_info(h5.id).rc
    if root != 1:
        raise _unsafe(label, "/", f"is reachable under {root} names", "each object linked once")
    datasets: list[str] = []
    refused: list[tuple[str, str, str]] = []

    def visit(name: bytes, info: Any) -> int | None:
        key = _key(name, label)
        if info.rc != 1:
            refused.append((key, f"is reachable under {info.rc} names (hard links alias it)",
                            "each group and dataset linked once"))
        elif info.type == h5o.TYPE_DATASET:
            datasets.append(key)
        elif info.type != h5o.TYPE_GROUP:
            refused.append((key, f"is an HDF5 object of type {info.type}", "a group or dataset"))
        return 1 if refused else None

    h5py.h5o.visit(h5.id, visit, info=True)
    if refused:
        raise _unsafe(label, *refused[0])
    return CheckedTree(h5, frozenset(datasets), size, label)


def _check_storage(dataset: Any, key: str, where: str) -> None:
    """Refuse external files, virtual datasets, layouts other than contiguous and filters."""
    from h5py import h5d

    plist = dataset.id.get_create_plist()
    if plist.get_external_count():
        files = [plist.get_external(i)[0].decode(errors="replace")
                 for i in range(min(plist.get_external_count(), 4))]
        raise _unsafe(
            where, key, f"keeps its bytes in files outside the archive (HDF5 external "
            f"storage: {files})", "bytes stored in the weights file itself",
        )
    layout = plist.get_layout()
    names = {h5d.COMPACT: "compact", h5d.CHUNKED: "chunked", h5d.VIRTUAL: "virtual"}
    if layout == h5d.VIRTUAL:
        raise _unsafe(
            where, key, "is a virtual dataset (its bytes come from other datasets or files)",
            "a contiguous dataset",
        )
    if layout != h5d.CONTIGUOUS:
        raise _unsafe(
            where, key, f"has the {names.get(layout, str(layout))} layout",
            "the contiguous layout Keras writes",
        )
    if plist.get_nfilters():
        found = [plist.get_filter(i)[3].decode(errors="replace") or str(plist.get_filter(i)[0])
                 for i in range(min(plist.get_nfilters(), 4))]
        raise _unsafe(where, key, f"passes through filters {found}", "no filter (no compression)")


def _plain_types() -> dict[str, Any]:
    from h5py import h5t

    return {
        "float16": h5t.IEEE_F16LE, "float32": h5t.IEEE_F32LE, "float64": h5t.IEEE_F64LE,
        "int8": h5t.STD_I8LE, "int16": h5t.STD_I16LE, "int32": h5t.STD_I32LE,
        "int64": h5t.STD_I64LE, "uint8": h5t.STD_U8LE, "uint16": h5t.STD_U16LE,
        "uint32": h5t.STD_U32LE, "uint64": h5t.STD_U64LE,
    }


def _is_bool(stored: Any) -> bool:
    """Return True for h5py's bool: an int8 enum of FALSE=0 and TRUE=1."""
    from h5py import h5t

    return (
        stored.get_class() == h5t.ENUM
        and stored.get_super() == h5t.STD_I8LE
        and stored.get_nmembers() == 2
        and [(stored.get_member_name(i), stored.get_member_value(i)) for i in range(2)]
        == [(b"FALSE", 0), (b"TRUE", 1)]
    )


def _is_bfloat16(dataset: Any, stored: Any) -> bool:
    """Return True for Keras' bfloat16: two opaque bytes tagged ``dtype="bfloat16"``."""
    from h5py import h5t

    if stored.get_class() != h5t.OPAQUE or stored.get_size() != 2:
        return False
    tag = dataset.attrs.get("dtype") if "dtype" in dataset.attrs else None
    return isinstance(tag, (str, bytes)) and tag in ("bfloat16", b"bfloat16")


def _check_dtype(dataset: Any, key: str, where: str) -> np.dtype:
    """Return the NumPy dtype of a dataset of plain little-endian numbers or bools."""
    stored = dataset.id.get_type()
    for name, plain in _plain_types().items():
        if stored == plain:
            return np.dtype(name)
    if _is_bool(stored):
        return np.dtype(bool)
    if _is_bfloat16(dataset, stored):
        return resolve_dtype("bfloat16", where=f"{where}: {WEIGHTS_H5} {key!r}")
    try:
        shown = str(dataset.dtype)
    except Exception:  # a type NumPy cannot express at all
        shown = f"HDF5 type class {stored.get_class()}"
    raise _unsafe(
        where, key, f"holds values of type {shown}",
        "little-endian floats, integers or bools, as Keras writes",
    )


def _check_extent(dataset: Any, stored: StoredDataset, size: int, where: str) -> None:
    """Refuse a dataset whose bytes are not all inside the ``size``-byte weights file."""
    if stored.nbytes == 0:
        return
    end = stored.offset + stored.nbytes
    allocated = dataset.id.get_storage_size()
    if stored.offset < 0 or end > size or allocated != stored.nbytes:
        raise _unsafe(
            where, stored.key,
            f"declares {stored.nbytes} bytes ({stored.shape} {stored.dtype}) at bytes "
            f"{stored.offset}..{end} with {allocated} allocated, in a {size}-byte file",
            "all of its bytes stored inside the weights file",
        )


def check_dataset(
    tree: CheckedTree, key: str, *, spec: TensorSpec | None = None
) -> StoredDataset:
    """Check dataset ``key`` of a checked weights file before anything of it is read.

    The one gate of every HDF5 dataset polybundle reads (``tree`` comes from
    :func:`check_tree`, which refuses links out of the file and aliases). It
    refuses (:class:`UnsafeContentError`) external storage; virtual
    datasets; any layout but contiguous; any filter (compression, shuffle,
    checksums, scale-offset); types other than little-endian floats,
    integers, bools and Keras' tagged bfloat16; and bytes that do not all lie
    inside the weights file. Given the manifest's ``spec``, the stored shape
    and dtype must be its own (:func:`polybundle.format.tensor_check.check_stored`,
    an ``IntegrityError``). Only metadata is read: a 1 TiB declaration is
    refused at once.

    Example:
        >>> spec = TensorSpec("enc_conv1/kernel", "layers/conv2d/vars/0", (3, 3, 1, 4),
        ...                   "float32", "opaque")
        >>> f = open("model.keras", "rb")
        >>> stream = open_keras(f).weights()
        >>> with weights_file(stream) as h5:
        ...     check_dataset(check_tree(h5, size=stream_size(stream)), "layers/conv2d/vars/0")
        StoredDataset(key='layers/conv2d/vars/0', shape=(3, 3, 1, 8), dtype=dtype('float32'),
                      offset=10992, nbytes=288)
        >>> with weights_file(stream) as h5:
        ...     check_dataset(check_tree(h5, size=stream_size(stream)), "layers/conv2d/vars/0",
        ...                   spec=spec)
        Traceback (most recent call last):
        ...
        polybundle.errors.IntegrityError: model.keras: model.weights.h5 stores enc_conv1/kernel
        as (3, 3, 1, 8) float32, but the manifest declares (3, 3, 1, 4) float32; ...
        >>> f.close()
    """
    where = tree.where
    if key not in tree.datasets:
        raise FormatError(
            f"{where}: {WEIGHTS_H5} has no dataset {key!r}, which the manifest lists; the "
            "weights file does not match its manifest."
        )
    dataset = tree.h5[key]  # every link in the file is a hard one (check_tree)
    _check_storage(dataset, key, where)
    dtype = _check_dtype(dataset, key, where)
    shape = dataset.shape
    if shape is None:
        raise _unsafe(where, key, "has no shape (a null dataspace)", "an array")
    shape = tuple(int(axis) for axis in shape)
    if spec is not None:
        check_stored(spec, shape, dtype, where=f"{where}: {WEIGHTS_H5}")
    nbytes = math.prod(shape) * dtype.itemsize
    offset = dataset.id.get_offset()
    if offset is None and nbytes:
        raise _unsafe(
            where, key, f"declares {nbytes} bytes ({shape} {dtype}) but stores none "
            "(every read would be its fill value)", "its bytes stored in the weights file",
        )
    stored = StoredDataset(key, shape, dtype, int(offset or 0), nbytes)
    _check_extent(dataset, stored, tree.size, where)
    return stored


def stream_size(stream: BinaryIO | MemberRange) -> int:
    """Return the size of a seekable file in bytes (its position is left at 0).

    Example:
        >>> stream_size(io.BytesIO(b"abc"))
        3
    """
    size = stream.seek(0, io.SEEK_END)
    stream.seek(0)
    return size


def _window(mapped: mmap.mmap, stored: StoredDataset, start: int) -> np.ndarray:
    """Return ``stored`` as a read-only view of ``mapped`` from byte ``start``."""
    if start < 0 or start + stored.nbytes > len(mapped):
        raise FormatError(
            f"a tensor claims bytes {start}..{start + stored.nbytes} of a "
            f"{len(mapped)}-byte bundle; the file is truncated or damaged."
        )
    count = math.prod(stored.shape)
    return np.frombuffer(mapped, dtype=stored.dtype, count=count, offset=start).reshape(
        stored.shape
    )


def read_stored(
    stream: BinaryIO | MemberRange,
    stored: StoredDataset,
    *,
    mapped: mmap.mmap | None = None,
    where: str = "",
) -> np.ndarray:
    """Return the checked dataset ``stored`` of the weights file ``stream`` as an array.

    The bytes are read straight from ``stream`` (one ``preadv`` for a bundle
    member), never decoded by HDF5, after :func:`polybundle.safety.budget.charge`.
    Given ``mapped`` (a read-only memory map of the bundle) and a bundle
    member, the array is a read-only view of the map instead, and nothing is
    read or allocated now.

    Example:
        >>> read_stored(io.BytesIO(b"\\0" * 8), StoredDataset("k", (2,), np.dtype("f4"), 0, 8))
        array([0., 0.], dtype=float32)
    """
    if mapped is not None and isinstance(stream, MemberRange):
        return _window(mapped, stored, stream.offset + stored.offset)
    label = where or "model.keras"
    stream.seek(stored.offset)
    array = read_array(stream, stored.shape, stored.dtype,
                       what=f"{label}: {WEIGHTS_H5} dataset {stored.key!r}")
    if mapped is not None:
        array.flags.writeable = False
    return array


def _where(source: Any) -> str:
    return str(getattr(source, "name", "") or "model.keras")


def check_weights(
    stream: BinaryIO | MemberRange, *, where: str = "", specs: list[TensorSpec] | None = None
) -> list[StoredDataset]:
    """Check every dataset of the ``model.weights.h5`` in ``stream``; return them, by key.

    Each goes through :func:`check_dataset`. Given the manifest's ``specs``,
    the file must hold exactly their keys, each with its declared shape and
    dtype (:class:`~polybundle.errors.IntegrityError` otherwise). Reads only metadata.

    Example:
        >>> with open("model.keras", "rb") as f:
        ...     stored = check_weights(open_keras(f).weights())
        >>> [(d.key, d.shape) for d in stored][:2]
        [('layers/batch_normalization/vars/0', (8,)), ('layers/batch_normalization/vars/1', (8,))]
    """
    size = stream_size(stream)
    with weights_file(stream, where=where) as h5:
        tree = check_tree(h5, size=size, where=where)
        if specs is None:
            return [check_dataset(tree, key) for key in sorted(tree.datasets)]
        by_key = {spec.key: spec for spec in specs}
        check_listed(tree, by_key)
        return [check_dataset(tree, key, spec=by_key.get(key)) for key in sorted(tree.datasets)]


def check_listed(tree: CheckedTree, listed: Iterable[str]) -> None:
    """Refuse a weights file whose datasets are not exactly the manifest's ``listed`` keys.

    Optimizer slots Keras wrote for a compiled model (``optimizer/...``, as
    in legacy archives migrated byte for byte) may be there unlisted: no path
    reads them. Anything else unlisted, or anything listed but absent, is an
    :class:`~polybundle.errors.IntegrityError`; load, lazy reads and verify
    all refuse it alike.

    Example:
        >>> with open("model.keras", "rb") as f:
        ...     stream = open_keras(f).weights()
        ...     with weights_file(stream) as h5:
        ...         check_listed(check_tree(h5, size=stream_size(stream)), ["layers/conv2d/vars/0"])
        Traceback (most recent call last):
        ...
        polybundle.errors.IntegrityError: model.keras holds datasets
        ['layers/batch_normalization/vars/0', ...] the manifest does not list and lacks [] ...
    """
    listed = set(listed)
    missing = sorted(listed - tree.datasets)
    extra = sorted(key for key in tree.datasets - listed if not key.startswith("optimizer/"))
    if missing or extra:
        raise IntegrityError(
            f"{tree.where} holds datasets {extra[:4]} the manifest does not list and lacks "
            f"{missing[:4]} that it does; the bundle was altered or damaged. Re-copy it."
        )


def read_datasets(
    source: Source, specs: Sequence[TensorSpec | str], *, mapped: mmap.mmap | None = None
) -> list[np.ndarray]:
    """Return the datasets of the ``.keras`` file in ``source`` that ``specs`` list, in order.

    Each item is the manifest's :class:`TensorSpec` (its ``key`` is the
    dataset, its shape and dtype are checked) or a bare dataset key. The whole
    file's links and every listed dataset are checked (:func:`check_dataset`)
    before any is read; each is then read as :func:`read_stored` says (views
    of ``mapped`` when given). A missing key raises :class:`FormatError`. Given
    the manifest's specs, a dataset it does not list is refused
    (:func:`check_listed`).
    Neither TensorFlow nor Keras is imported.

    Example:
        >>> with open("model.keras", "rb") as f:
        ...     kernel, bias = read_datasets(f, ["layers/conv2d/vars/0", "layers/conv2d/vars/1"])
        >>> kernel.shape, bias.shape
        ((3, 3, 1, 8), (8,))
    """
    container = _container(source)
    where = _where(container)
    stream = open_keras(container, where=where).weights()
    size = stream_size(stream)
    with weights_file(stream, where=where) as h5:
        tree = check_tree(h5, size=size, where=where)
        if specs and all(isinstance(item, TensorSpec) for item in specs):
            check_listed(tree, (item.key for item in specs))
        checked = [
            check_dataset(tree, item)
            if isinstance(item, str)
            else check_dataset(tree, item.key, spec=item)
            for item in specs
        ]
    return [read_stored(stream, stored, mapped=mapped, where=where) for stored in checked]


class _Unnamed(io.RawIOBase):
    """A read-only view of a seekable file that has no ``name`` (see :func:`keras_stream`)."""

    def __init__(self, raw: BinaryIO | MemberRange) -> None:
        super().__init__()
        self._raw = raw

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:  # type: ignore[override]
        return self._raw.readinto(buffer)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell()


def _refuse_other_members(keras_zip: KerasZip) -> None:
    """Refuse a ``.keras`` zip holding members other than Keras' three (assets, anything)."""
    names = keras_zip.names()
    extra = sorted(set(names) - KERAS_MEMBERS)
    if extra:
        raise UnsafeContentError(
            f"{keras_zip.where} holds members {sorted(names)[:8]}; Keras loads a file of exactly "
            f"{sorted(KERAS_MEMBERS)} without writing to disk, and would extract the others "
            f"({extra[:4]}) to a temporary folder. polybundle extracts nothing "
            "to disk: register a builder with @polybundle.architecture(name, "
            "backend='tensorflow') so only the weights are read, or pass into={role: model}."
        )


def check_for_rebuild(
    keras_zip: KerasZip, specs: Sequence[TensorSpec]
) -> tuple[BinaryIO | MemberRange, list[StoredDataset]]:
    """Check a ``.keras`` file for a rebuild from its config, in one pass over its weights file.

    The checks :func:`keras_stream` and :func:`check_layer_shapes` run, with
    ``model.weights.h5`` opened once: the zip holds exactly Keras' members;
    the links pass :func:`check_tree`; the datasets are exactly the
    manifest's ``specs`` (:func:`check_listed`), each passing
    :func:`check_dataset` against its spec (unlisted optimizer slots too);
    and the layer sizes ``config.json`` declares are the stored ones. Returns
    the weights stream and the specs' datasets, in order, for
    :func:`read_stored`. Only metadata is read.

    Example:
        >>> with open("model.keras", "rb") as f:
        ...     keras_zip = open_keras(f)
        ...     specs = [TensorSpec(w.name, w.key, w.shape, w.dtype, "opaque")
        ...              for w, _ in read_keras_weights(f, with_arrays=False)]
        ...     stream, stored = check_for_rebuild(keras_zip, specs)
        ...     read_stored(stream, stored[1]).shape
        (8,)
    """
    where = keras_zip.where
    _refuse_other_members(keras_zip)
    stream = keras_zip.weights()
    size = stream_size(stream)
    by_key = {spec.key: spec for spec in specs}
    configs: dict[str, dict[str, Any]] = {}
    weights: list[KerasWeight] = []
    with weights_file(stream, where=where) as h5:
        tree = check_tree(h5, size=size, where=where)
        check_listed(tree, by_key)
        stored = {
            key: check_dataset(tree, key, spec=by_key.get(key)) for key in sorted(tree.datasets)
        }
        _walk(keras_zip.config, "", h5, weights, configs)
    problems = [
        problem
        for weight in weights
        if (problem := _declared_shape_problem(weight, configs[weight.key.rpartition("/")[0]]))
    ]
    if problems:
        raise _shape_error(where, problems)
    return stream, [stored[spec.key] for spec in specs]


def keras_stream(
    source: BinaryIO | MemberRange,
    *,
    where: str = "",
    specs: list[TensorSpec] | None = None,
    charge: bool = True,
) -> BinaryIO:
    """Check a ``.keras`` file for Keras itself to load; return the file object to give it.

    Keras (``keras.saving.load_model``) must see only what polybundle
    checked: the zip passes :func:`open_keras` and holds exactly ``config.json``,
    ``metadata.json`` and ``model.weights.h5`` (Keras extracts any other member, such as
    assets, to a temporary folder, and nothing is extracted to disk), and
    every dataset of the weights file passes :func:`check_dataset`; their
    declared bytes are charged to :mod:`polybundle.safety.budget`, since Keras
    allocates them (unless ``charge`` is False: the caller reads them itself
    through :func:`read_stored`, which charges). The returned view has no
    file name, so Keras reads the weights in memory or from the zip, never
    from a copy it extracts next to the file. Given the manifest's ``specs``,
    the stored datasets must be exactly those (:func:`check_weights`). The
    config is checked separately (:func:`polybundle_tensorflow.keras_archive.check_config`).

    Example:
        >>> import keras
        >>> from polybundle_tensorflow.keras_compat import load_model
        >>> small = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="head")])
        >>> small.save("small.keras")
        >>> with open("small.keras", "rb") as f:
        ...     model = load_model(keras_stream(f))  # Keras' loader, safe_mode=True
        >>> [weight.path for weight in model.weights]
        ['head/kernel', 'head/bias']
    """
    keras_zip = open_keras(source, where=where)
    where = keras_zip.where
    _refuse_other_members(keras_zip)
    stored = check_weights(keras_zip.weights(), where=where, specs=specs)
    if charge:
        budget.charge(sum(d.nbytes for d in stored), f"{where}: the weights Keras loads")
    source.seek(0)
    return _Unnamed(source)


def read_keras_weights(
    source: Source, *, with_arrays: bool = True
) -> list[tuple[KerasWeight, np.ndarray | None]]:
    """Return every stored layer variable of the ``.keras`` file in ``source``, in model order.

    Each item is ``(KerasWeight, array)`` (``array`` is None when
    ``with_arrays`` is False). The order is the model's ``weights`` order for
    Sequential and Functional models. Every dataset is checked first
    (:func:`check_dataset`). Neither TensorFlow nor Keras is imported.

    Example:
        >>> with open("model.keras", "rb") as f:
        ...     weights = read_keras_weights(f, with_arrays=False)
        >>> [(w.name, w.key, w.canonical.kind) for w, _ in weights][:2]
        [('enc_conv1/kernel', 'layers/conv2d/vars/0', 'conv2d'),
         ('enc_conv1/bias', 'layers/conv2d/vars/1', 'conv2d')]
    """
    keras_zip = open_keras(source)
    config, stream, where = keras_zip.config, keras_zip.weights(), keras_zip.where
    size = stream_size(stream)
    with weights_file(stream, where=where) as h5:
        tree = check_tree(h5, size=size, where=where)
        weights: list[KerasWeight] = []
        _walk(config, "", h5, weights)
        checked = [check_dataset(tree, w.key) for w in weights]
    return [
        (w, read_stored(stream, stored, where=where) if with_arrays else None)
        for w, stored in zip(weights, checked, strict=True)
    ]


def _declared_shape_problem(weight: KerasWeight, config: dict[str, Any]) -> str | None:
    """Compare a stored kernel or bias with its layer's units/filters and kernel_size.

    Dtypes are compared by :func:`polybundle_tensorflow.keras_archive.check_dtypes`.
    """
    size = config.get("units", config.get("filters"))
    shape = weight.shape
    if weight.variable == "bias" and type(size) is int and shape != (size,):
        return f"{weight.name} is stored as {shape}; its layer declares {size} units"
    if weight.variable != "kernel" or len(shape) < 2:
        return None
    axis = -2 if weight.layer_class.endswith("Transpose") else -1
    if type(size) is int and shape[axis] != size:
        return f"{weight.name} is stored as {shape}; its layer declares {size} units"
    kernel_size = config.get("kernel_size")
    if kernel_size is not None and len(shape) > 2:
        declared = kernel_size if isinstance(kernel_size, list) else [kernel_size] * (
            len(shape) - 2
        )
        if list(shape[:-2]) != declared:
            return f"{weight.name} is stored as {shape}; its layer declares kernel {declared}"
    return None


def layer_shape_problems(
    config: dict[str, Any], stream: BinaryIO | MemberRange, *, where: str = ""
) -> list[str]:
    """Return where ``config.json`` declares layer sizes its ``model.weights.h5`` does not hold.

    For each stored kernel and bias of a Dense or convolution layer, its
    ``units``/``filters`` and ``kernel_size`` must be the stored shape's:
    Keras builds (and allocates) what the config declares, so a config that
    claims more than the weights file holds is refused before Keras sees it.
    Every stored variable passes :func:`check_dataset` first. Only metadata is
    read. Run :func:`layer_field_problems` first.

    Example:
        >>> with open("model.keras", "rb") as f:
        ...     config = read_config(f)
        ...     print(layer_shape_problems(config, open_keras(f).weights()))
        ...     config["config"]["layers"][1]["config"]["filters"] = 64  # enc_conv1 has 8
        ...     layer_shape_problems(config, open_keras(f).weights())[1]
        []
        'enc_conv1/bias is stored as (8,); its layer declares 64 units'
    """
    where = where or _where(stream)
    size = stream_size(stream)
    configs: dict[str, dict[str, Any]] = {}
    weights: list[KerasWeight] = []
    with weights_file(stream, where=where) as h5:
        tree = check_tree(h5, size=size, where=where)
        _walk(config, "", h5, weights, configs)
        for weight in weights:  # unsafe storage or types are refused as such, first
            check_dataset(tree, weight.key)
    problems = []
    for weight in weights:
        problem = _declared_shape_problem(weight, configs[weight.key.rpartition("/")[0]])
        if problem:
            problems.append(problem)
    return problems


def check_layer_shapes(
    config: dict[str, Any], stream: BinaryIO | MemberRange, *, where: str
) -> None:
    """Raise :class:`FormatError` when :func:`layer_shape_problems` finds anything.

    Example:
        >>> with open("model.keras", "rb") as f:
        ...     config = read_config(f)
        ...     check_layer_shapes(config, open_keras(f).weights(), where="model.keras")
        ...     config["config"]["layers"][4]["config"]["kernel_size"] = [5, 5]  # dec_convT
        ...     check_layer_shapes(config, open_keras(f).weights(), where="model.keras")
        Traceback (most recent call last):
        ...
        polybundle.errors.FormatError: model.keras: config.json declares layers of other sizes
        than its weights hold (dec_convT/kernel is stored as (3, 3, 1, 4); its layer declares
        kernel [5, 5]); the file was altered or damaged. ...
    """
    problems = layer_shape_problems(config, stream, where=where)
    if problems:
        raise _shape_error(where, problems)


def _shape_error(where: str, problems: list[str]) -> FormatError:
    return FormatError(
        f"{where}: {CONFIG_JSON} declares layers of other sizes than its weights hold "
        f"({'; '.join(problems[:4])}); the file was altered or damaged. Re-save the model "
        "from a trusted copy, or register a builder for its architecture."
    )


def read_keras(source: Source) -> dict[str, np.ndarray]:
    """Return ``{variable path: array}`` for the weights of the ``.keras`` file in ``source``.

    Example:
        >>> with open("model.keras", "rb") as f:
        ...     read_keras(f)["enc_conv1/kernel"].shape
        (3, 3, 1, 8)
        >>> with open("model.keras", "rb") as f:  # the same bytes, from memory
        ...     sorted(read_keras(f.read()))[:2]
        ['dec_convT/bias', 'dec_convT/kernel']
    """
    return {weight.name: array for weight, array in read_keras_weights(source)}
