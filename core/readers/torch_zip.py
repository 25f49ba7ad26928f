"""Read a ``torch.save`` state_dict (``model.pth``) into NumPy arrays without torch.

A ``torch.save`` file is a zip: ``<prefix>/data.pkl`` is a pickle that
describes the tensors, ``<prefix>/data/<key>`` holds each storage's raw
bytes, ``<prefix>/byteorder`` says their byte order. The pickle is read by a
restricted unpickler whose only globals are the tensor-rebuilding functions,
the storage types and ``collections.OrderedDict``, all implemented here
without torch; any other global, and any persistent id that is not a storage,
raises :class:`UnsafeContentError`. Storages are read straight into NumPy
buffers; a STORED member of a bundle is reached through a sub-range of the
outer file, so nothing is copied on the way.

Example:
    >>> with open("model.pth", "rb") as f:  # doctest: +SKIP
    ...     read_pth(f)["0.bias"]
    array([0.1, -0.2], dtype=float32)
"""

from __future__ import annotations

import collections
import io
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

from ..archive import MemberRange, NestedZip
from ..errors import FormatError, UnsafeContentError

MAX_PICKLE_BYTES = 64 * 1024 * 1024
"""Largest ``data.pkl`` read; a state_dict's pickle is a few bytes per tensor."""

_STORAGE_DTYPES = {
    "FloatStorage": "float32",
    "DoubleStorage": "float64",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128",
}


@dataclass(frozen=True)
class _StorageType:
    """Stands in for ``torch.<X>Storage``: only its element dtype matters."""

    dtype: str


@dataclass
class _Storage:
    key: str
    dtype: np.dtype
    numel: int
    array: np.ndarray | None = None


def _numpy_dtype(name: str) -> np.dtype:
    if name == "bfloat16":
        try:
            import ml_dtypes
        except ImportError:
            raise FormatError(
                "model.pth holds bfloat16 tensors, which NumPy cannot represent; install "
                "ml_dtypes (pip install ml_dtypes) or read the file with torch."
            ) from None
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def _rebuild_tensor(
    storage: _Storage, offset: int, size: tuple[int, ...], stride: tuple[int, ...], *_: Any
) -> np.ndarray:
    """Build the NumPy view of a tensor, refusing one that reaches outside its storage."""
    if not isinstance(storage, _Storage):
        raise UnsafeContentError("data.pkl rebuilds a tensor from something that is not a storage.")
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if len(size) != len(stride) or offset < 0 or any(s < 0 for s in (*size, *stride)):
        raise FormatError(f"tensor over storage {storage.key!r} has an invalid size/stride.")
    count = int(np.prod(size, dtype=np.int64))
    reach = sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    last = offset + reach if count else offset - 1
    if last >= storage.numel:
        raise FormatError(
            f"a tensor reaches element {last} of storage {storage.key!r}, which holds "
            f"{storage.numel}; model.pth is damaged."
        )
    assert storage.array is not None
    item = storage.array.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage.array[offset:], shape=size, strides=tuple(s * item for s in stride), writeable=False
    )
    whole = offset == 0 and count == storage.numel and view.flags.c_contiguous
    return storage.array.reshape(size) if whole else np.array(view)


def _rebuild_parameter(data: np.ndarray, *_: Any) -> np.ndarray:
    return data


_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(dtype) for name, dtype in _STORAGE_DTYPES.items()},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickle ``data.pkl`` with only tensor-rebuilding globals available."""

    def __init__(self, file: BinaryIO, load_storage: Callable[[str, _StorageType, int], _Storage]):
        super().__init__(file)
        self._load_storage = load_storage

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _GLOBALS[(module, name)]
        except KeyError:
            raise UnsafeContentError(
                f"model.pth refers to {module}.{name}, which is not a tensor-rebuilding "
                "global; polybundle refuses it (it could run code). Expected a plain "
                "state_dict saved with torch.save(model.state_dict())."
            ) from None

    def persistent_load(self, pid: Any) -> _Storage:
        if (
            not isinstance(pid, tuple)
            or len(pid) != 5
            or pid[0] != "storage"
            or not isinstance(pid[1], _StorageType)
            or not isinstance(pid[2], str)
            or not isinstance(pid[4], int)
        ):
            raise UnsafeContentError(
                f"model.pth has persistent id {pid!r}; only storages "
                "('storage', <type>, key, location, numel) are accepted."
            )
        return self._load_storage(pid[2], pid[1], pid[4])


def _container(source: BinaryIO | MemberRange) -> BinaryIO | MemberRange:
    """Return ``source`` as a range over its file when it is a plain file (zero copy)."""
    if isinstance(source, MemberRange) or isinstance(source, io.BytesIO):
        return source
    try:
        fd = source.fileno()
        size = os.fstat(fd).st_size
    except (AttributeError, OSError, io.UnsupportedOperation):
        return source
    return MemberRange(fd, 0, size, getattr(source, "name", "model.pth"))


def _prefix(inner: NestedZip) -> str:
    pickles = [name for name in inner.names() if name.endswith("data.pkl") and name.count("/") == 1]
    if len(pickles) != 1:
        raise FormatError(
            f"model.pth holds {len(pickles)} '<prefix>/data.pkl' members; expected exactly one "
            "(a file written by torch.save). Legacy (pre-1.6, non-zip) files are not read."
        )
    return pickles[0].rpartition("/")[0]


def _byteorder(inner: NestedZip, prefix: str) -> str:
    if f"{prefix}/byteorder" not in inner.names():
        return "little"
    with inner.open(f"{prefix}/byteorder") as stream:
        order = stream.read(16).decode("ascii", "replace")
    if order not in ("little", "big"):
        raise FormatError(f"model.pth says byteorder {order!r}; expected 'little' or 'big'.")
    return order


def _flatten(value: Any, prefix: str, out: dict[str, np.ndarray]) -> None:
    if isinstance(value, np.ndarray):
        out[prefix] = value
    elif isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise FormatError(f"model.pth has a non-string key {key!r}; expected a state_dict.")
            _flatten(item, f"{prefix}.{key}" if prefix else key, out)
    else:
        raise FormatError(
            f"model.pth holds a {type(value).__name__} at {prefix or 'the top'}; expected a "
            "state_dict (a dict of tensors)."
        )


def read_pth(source: BinaryIO | MemberRange) -> dict[str, np.ndarray]:
    """Return the tensors of the ``torch.save`` state_dict in ``source`` by name.

    ``source`` is a seekable binary file: an open ``model.pth``, a bundle
    member, or bytes in a :class:`io.BytesIO`. torch is never imported, and the
    pickle can only rebuild tensors. Nested dicts are flattened with ``.``.

    Example:
        >>> import io, torch
        >>> buffer = io.BytesIO(); torch.save({"w": torch.ones(2)}, buffer)
        >>> read_pth(buffer)["w"]
        array([1., 1.], dtype=float32)
    """
    inner = NestedZip(_container(source))
    prefix = _prefix(inner)
    swap = _byteorder(inner, prefix) != ("little" if np.little_endian else "big")
    storages: dict[str, _Storage] = {}

    def load_storage(key: str, kind: _StorageType, numel: int) -> _Storage:
        dtype = _numpy_dtype(kind.dtype)
        if key in storages:
            if storages[key].dtype != dtype:
                raise FormatError(f"storage {key!r} is used with two dtypes; model.pth is damaged.")
            return storages[key]
        array = np.empty(numel, dtype=dtype)
        with inner.open(f"{prefix}/data/{key}") as stream:
            view = memoryview(array.view(np.uint8))
            done = 0
            while done < array.nbytes:
                count = stream.readinto(view[done:])
                if not count:
                    raise FormatError(
                        f"storage {key!r} holds {done} bytes; expected {array.nbytes} "
                        f"({numel} x {dtype}). model.pth is damaged."
                    )
                done += count
        if swap:
            array = array.byteswap()
        storages[key] = _Storage(key, dtype, numel, array)
        return storages[key]

    with inner.open(f"{prefix}/data.pkl") as stream:
        payload = stream.read(MAX_PICKLE_BYTES + 1)
    if len(payload) > MAX_PICKLE_BYTES:
        raise UnsafeContentError(f"data.pkl is over {MAX_PICKLE_BYTES} bytes; not a state_dict.")
    try:
        state = _RestrictedUnpickler(io.BytesIO(payload), load_storage).load()
    except (UnsafeContentError, FormatError):
        raise
    except Exception as exc:  # a malformed pickle raises anything pickle can raise
        raise FormatError(f"data.pkl in model.pth is not a readable pickle ({exc}).") from None
    tensors: dict[str, np.ndarray] = {}
    _flatten(state, "", tensors)
    return tensors
