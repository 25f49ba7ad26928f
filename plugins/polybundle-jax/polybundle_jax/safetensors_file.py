"""Read ``model.safetensors`` without JAX: its header, then each tensor where it lies.

A safetensors file is an 8-byte little-endian header length, a JSON header
``{key: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``
and the tensors' bytes, each at ``data_offsets`` from the end of the header.
polybundle writes the member STORED, so every tensor lies at a fixed offset of
the bundle file: :func:`read_stored` checks the header against the manifest's
specs, then reads each tensor into a new array, or views it in a read-only
memory map of the bundle (``load(..., lazy=True)``), reading nothing now.

Example:
    >>> import io, safetensors.numpy
    >>> from polybundle import TensorSpec
    >>> data = safetensors.numpy.save({"w": np.arange(3, dtype="float32")})
    >>> spec = TensorSpec("w", "w", (3,), "float32", "out")
    >>> read_stored(io.BytesIO(data), [spec])["w"]
    array([0., 1., 2.], dtype=float32)
"""

from __future__ import annotations

import io
import json
import math
import mmap
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

from polybundle.plugin import (
    FormatError,
    MemberRange,
    TensorSpec,
    charge,
    check_index,
    read_array,
    resolve_dtype,
)

MAX_HEADER_BYTES = 100 * 1024 * 1024
"""Largest safetensors header accepted (the safetensors library's own limit)."""

DTYPES = {
    "BOOL": "bool", "U8": "uint8", "I8": "int8", "U16": "uint16", "I16": "int16",
    "U32": "uint32", "I32": "int32", "U64": "uint64", "I64": "int64", "F16": "float16",
    "BF16": "bfloat16", "F32": "float32", "F64": "float64", "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
}
"""safetensors dtype codes and the manifest dtype names they hold."""


@dataclass(frozen=True)
class StoredTensor:
    """One tensor of a safetensors file: its key, shape, dtype and byte range in the file.

    Example:
        >>> StoredTensor("w", (2,), "float32", 16, 8).end
        24
    """

    key: str
    shape: tuple[int, ...]
    dtype: str
    start: int
    nbytes: int

    @property
    def end(self) -> int:
        """Return the offset just past the tensor's last byte."""
        return self.start + self.nbytes


def _size(stream: BinaryIO | MemberRange) -> int:
    size = stream.seek(0, io.SEEK_END)
    stream.seek(0)
    return size


def _read_exactly(stream: BinaryIO | MemberRange, count: int, where: str) -> bytes:
    data = stream.read(count) or b""
    if len(data) != count:
        raise FormatError(f"{where} ends early: the safetensors file is truncated.")
    return data


def _entry(key: str, value: Any, data_size: int, data_start: int, where: str) -> StoredTensor:
    """Check one header entry; return where the tensor lies in the file."""
    if not isinstance(value, dict):
        raise FormatError(f"{where}: header entry {key[:80]!r} is not an object.")
    code, shape, offsets = value.get("dtype"), value.get("shape"), value.get("data_offsets")
    if code not in DTYPES:
        raise FormatError(
            f"{where}: tensor {key[:80]!r} has dtype {str(code)[:20]!r}; expected one of "
            f"{', '.join(DTYPES)}."
        )
    if not isinstance(shape, list) or not all(
        type(axis) is int and axis >= 0 for axis in shape
    ):
        raise FormatError(f"{where}: tensor {key[:80]!r} has shape {str(shape)[:80]}.")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(type(o) is int for o in offsets)
        or not 0 <= offsets[0] <= offsets[1] <= data_size
    ):
        raise FormatError(
            f"{where}: tensor {key[:80]!r} claims bytes {str(offsets)[:80]} of a "
            f"{data_size}-byte data section; the file is damaged or hostile."
        )
    dtype = DTYPES[code]
    nbytes = math.prod(shape) * resolve_dtype(dtype, where=f"{where}: {key[:80]!r}").itemsize
    if offsets[1] - offsets[0] != nbytes:
        raise FormatError(
            f"{where}: tensor {key[:80]!r} is {shape} {dtype} ({nbytes} bytes) but spans "
            f"{offsets[1] - offsets[0]} bytes; the file is damaged or hostile."
        )
    return StoredTensor(key, tuple(shape), dtype, data_start + offsets[0], nbytes)


def index(stream: BinaryIO | MemberRange, *, where: str) -> dict[str, StoredTensor]:
    """Return every tensor of the safetensors file in ``stream``, checked, by key.

    Reads only the header. Raises :class:`~polybundle.FormatError` for a
    header that is not safetensors or a tensor outside the data section.

    Example:
        >>> import io, safetensors.numpy
        >>> data = safetensors.numpy.save({"w": np.ones((2, 2), "float32")})
        >>> index(io.BytesIO(data), where="w.safetensors")["w"].shape
        (2, 2)
    """
    size = _size(stream)
    (length,) = struct.unpack("<Q", _read_exactly(stream, 8, where))
    if length > MAX_HEADER_BYTES or 8 + length > size:
        raise FormatError(
            f"{where} declares a {length}-byte header in a {size}-byte file; expected a "
            "safetensors file polybundle-jax wrote."
        )
    charge(length, f"{where} header")
    try:
        header = json.loads(_read_exactly(stream, length, where))
    except (ValueError, RecursionError) as exc:
        raise FormatError(f"{where}: the safetensors header is not JSON ({exc}).") from None
    if not isinstance(header, dict):
        raise FormatError(f"{where}: the safetensors header is not a JSON object.")
    data_start = 8 + length
    return {
        key: _entry(key, value, size - data_start, data_start, where)
        for key, value in header.items()
        if key != "__metadata__"
    }


def _checked(
    stored: dict[str, StoredTensor], specs: Sequence[TensorSpec], where: str
) -> list[StoredTensor]:
    """Return the stored tensors of ``specs`` in order, once the file holds exactly them."""
    check_index(specs, {key: (tensor.shape, tensor.dtype) for key, tensor in stored.items()},
                where=where)
    return [stored[spec.key] for spec in specs]


def _read(stream: BinaryIO | MemberRange, tensor: StoredTensor, where: str) -> np.ndarray:
    stream.seek(tensor.start)
    return read_array(stream, tensor.shape, resolve_dtype(tensor.dtype),
                      what=f"{where} tensor {tensor.key[:80]!r}")


def _view(mapped: mmap.mmap, start: int, tensor: StoredTensor, where: str) -> np.ndarray:
    if start < 0 or start + tensor.nbytes > len(mapped):
        raise FormatError(f"{where}: tensor {tensor.key[:80]!r} lies past the end of the file.")
    dtype = resolve_dtype(tensor.dtype)
    count = math.prod(tensor.shape)
    return np.frombuffer(mapped, dtype=dtype, count=count, offset=start).reshape(tensor.shape)


def read_stored(
    stream: BinaryIO | MemberRange,
    specs: Sequence[TensorSpec],
    *,
    where: str = "model.safetensors",
    mapped: mmap.mmap | None = None,
) -> dict[str, np.ndarray]:
    """Return ``{spec.name: array}`` of the safetensors file in ``stream``, checked first.

    The file must hold exactly the tensors of ``specs`` (keys, shapes,
    dtypes), else :class:`~polybundle.IntegrityError` before anything is read.
    Given ``mapped``, a read-only memory map of the file that ``stream`` (a
    bundle member) lies in, the arrays are read-only views of it; otherwise
    each tensor is read into a new array, charged to the memory budget first.

    Example:
        >>> import io, safetensors.numpy
        >>> from polybundle import TensorSpec
        >>> data = safetensors.numpy.save({"w": np.ones(2, "float32")})
        >>> read_stored(io.BytesIO(data), [TensorSpec("w", "w", (3,), "float32", "out")])
        ... # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        polybundle.errors.IntegrityError: model.safetensors stores w as (2,) float32, ...
    """
    tensors = _checked(index(stream, where=where), specs, where)
    if mapped is not None and isinstance(stream, MemberRange):
        arrays = [_view(mapped, stream.offset + t.start, t, where) for t in tensors]
    else:
        arrays = [_read(stream, t, where) for t in tensors]
    return {spec.name: array for spec, array in zip(specs, arrays, strict=True)}


def read_all(stream: BinaryIO | MemberRange, *, where: str) -> dict[str, np.ndarray]:
    """Return every tensor of the safetensors file in ``stream`` by key (for ``verify``).

    Example:
        >>> import io, safetensors.numpy
        >>> data = safetensors.numpy.save({"w": np.ones(2, "float32")})
        >>> read_all(io.BytesIO(data), where="x")["w"]
        array([1., 1.], dtype=float32)
    """
    return {key: _read(stream, t, where) for key, t in index(stream, where=where).items()}
