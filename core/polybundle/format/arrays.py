"""safetensors bytes, written and read here so bfloat16 and float8 work.

The bundle's array members (``<role>/optimizer.safetensors``,
``params.safetensors``) use this codec: :func:`save_arrays` writes the
safetensors layout, :func:`load_arrays` checks the header, every dtype, shape
and byte range before it returns read-only views of the data.

Example:
    >>> import numpy as np
    >>> data = save_arrays({"w": np.arange(3, dtype=np.int16)})
    >>> load_arrays(data, where="x.safetensors")["w"].tolist()
    [0, 1, 2]
"""

from __future__ import annotations

import io
import json
import math
import struct
from typing import Any, BinaryIO

import numpy as np

from polybundle.errors import FormatError, UnsupportedOptimizerError
from polybundle.format.jsondoc import load_json
from polybundle.safety.budget import charge
from polybundle.safety.dtypes import check_shape, count_bytes, dtype_label, resolve_dtype

SAFETENSORS_DTYPES = {
    "BOOL": "bool", "U8": "uint8", "I8": "int8", "U16": "uint16", "I16": "int16",
    "U32": "uint32", "I32": "int32", "U64": "uint64", "I64": "int64",
    "F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "C64": "complex64",
}
"""safetensors dtype codes and the dtype names they hold (bfloat16 and float8 via ml_dtypes)."""
_SAFETENSORS_CODES = {name: code for code, name in SAFETENSORS_DTYPES.items()}
MAX_HEADER_BYTES = 100 * 1024 * 1024
"""Largest safetensors header accepted (the safetensors library's own limit)."""


ARRAY_ALIGNMENT = 64
"""Byte boundary of the arrays :func:`read_array` allocates (a cache line; what TensorFlow's
kernels assume of a tensor's buffer)."""


def empty_aligned(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """Return a new uninitialised C-ordered array whose data starts on :data:`ARRAY_ALIGNMENT`.

    Example:
        >>> array = empty_aligned((3, 5), "float32")
        >>> array.shape, array.ctypes.data % ARRAY_ALIGNMENT, array.flags.c_contiguous
        ((3, 5), 0, True)
    """
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    raw = np.empty(nbytes + ARRAY_ALIGNMENT, dtype=np.uint8)
    start = -raw.ctypes.data % ARRAY_ALIGNMENT
    return raw[start : start + nbytes].view(dtype).reshape(shape)


def read_array(stream: BinaryIO, shape: tuple[int, ...], dtype: Any, *, what: str) -> np.ndarray:
    """Read one ``shape`` x ``dtype`` array's bytes from ``stream`` into a new array.

    The array's size is charged to the memory budget (labelled ``what``) before
    it is allocated; a stream that ends early is a :class:`FormatError` naming
    ``what``. The one routine every weights reader uses to fill an array. The
    array starts on :data:`ARRAY_ALIGNMENT` bytes (:func:`empty_aligned`), so a
    framework can adopt its memory as a tensor without copying it.

    Example:
        >>> import io
        >>> read_array(io.BytesIO(bytes(8)), (2,), "float32", what="doc tensor")
        array([0., 0.], dtype=float32)
        >>> read_array(io.BytesIO(bytes(4)), (2,), "float32", what="doc tensor")
        Traceback (most recent call last):
        ...
        polybundle.errors.FormatError: doc tensor ends after 4 of 8 bytes; the file is truncated...
    """
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    charge(nbytes, what)
    array = empty_aligned(shape, dtype)
    view = memoryview(array.reshape(-1).view(np.uint8))
    done = 0
    while done < nbytes:
        count = stream.readinto(view[done:])
        if not count:
            raise FormatError(
                f"{what} ends after {done} of {nbytes} bytes; the file is truncated or damaged."
            )
        done += count
    return array


def safetensors_layout(
    arrays: dict[str, np.ndarray], metadata: dict[str, str] | None = None
) -> tuple[bytes, list[np.ndarray]]:
    """Return the safetensors header bytes of ``arrays`` and the arrays in file order.

    Tensors are laid out by item size, largest first, then by name, as the
    safetensors library does, so every tensor stays aligned. Every dtype is
    checked here, before any byte is written; nothing is copied.

    Example:
        >>> header, ordered = safetensors_layout({"a": np.zeros(2, np.int8),
        ...                                       "b": np.zeros(1, np.float64)})
        >>> len(header) % 8, [array.dtype.name for array in ordered]
        (0, ['float64', 'int8'])
    """
    header: dict[str, Any] = {}
    ordered = []
    offset = 0
    for name, array in sorted(arrays.items(), key=lambda item: (-item[1].dtype.itemsize, item[0])):
        code = _SAFETENSORS_CODES.get(dtype_label(array.dtype))
        if code is None:
            raise UnsupportedOptimizerError(
                f"slot array {name!r} is {array.dtype}; safetensors stores "
                f"{', '.join(SAFETENSORS_DTYPES.values())}. Cast the optimizer state to one."
            )
        end = offset + array.nbytes
        header[name] = {"dtype": code, "shape": list(array.shape), "data_offsets": [offset, end]}
        ordered.append(array)
        offset += array.nbytes
    if metadata:
        header["__metadata__"] = dict(metadata)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text, ordered


def write_arrays(
    arrays: dict[str, np.ndarray], stream: BinaryIO, metadata: dict[str, str] | None = None
) -> None:
    """Write the safetensors file of ``arrays`` into ``stream``, array by array, without a copy.

    Every dtype is checked before the first byte is written (see
    :func:`safetensors_layout`); big-endian arrays are written little-endian.

    Example:
        >>> import io
        >>> stream = io.BytesIO()
        >>> write_arrays({"w": np.arange(3, dtype=np.int16)}, stream)
        >>> load_arrays(stream.getvalue(), where="x.safetensors")["w"].tolist()
        [0, 1, 2]
    """
    header, ordered = safetensors_layout(arrays, metadata)
    stream.write(header)
    for array in ordered:
        raw = np.ascontiguousarray(array)
        if raw.dtype.byteorder == ">":
            raw = raw.byteswap()
        stream.write(memoryview(raw.reshape(-1).view(np.uint8)))


def save_arrays(arrays: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> bytes:
    """Return the safetensors bytes of ``arrays`` (bfloat16 and float8 included).

    The bytes :func:`write_arrays` writes.

    Example:
        >>> import ml_dtypes
        >>> data = save_arrays({"m/w": np.ones(3, ml_dtypes.bfloat16)})
        >>> load_arrays(data, where="net/optimizer.safetensors")["m/w"].dtype.name
        'bfloat16'
    """
    stream = io.BytesIO()
    write_arrays(arrays, stream, metadata)
    return stream.getvalue()


ArrayEntry = tuple[str, tuple[int, ...], int, int]
"""One safetensors header entry, checked: ``(dtype name, shape, begin, end)``."""


def index_arrays(data: Any, *, where: str) -> tuple[int, dict[str, ArrayEntry]]:
    """Check the safetensors header of ``data``; return where the data starts and each entry.

    ``data`` is any buffer (bytes, a read-only ``mmap``); nothing past the
    header is read. Each entry is ``(dtype name, shape, begin, end)`` with
    offsets relative to the data start. The checks are :func:`load_arrays`'
    (a bounded strict-JSON header, known dtypes, valid shapes, byte ranges of
    exactly each tensor's size that tile the data); anything else raises
    :class:`FormatError` naming ``where``.

    Example:
        >>> start, entries = index_arrays(save_arrays({"w": np.zeros(2, np.int8)}), where="x")
        >>> start, entries
        (64, {'w': ('int8', (2,), 0, 2)})
    """
    if len(data) < 8:
        raise FormatError(f"{where} is {len(data)} bytes; a safetensors file has at least 8.")
    (length,) = struct.unpack("<Q", data[:8])
    if length > min(len(data) - 8, MAX_HEADER_BYTES):
        raise FormatError(
            f"{where} declares a header of {length} bytes, but the file holds {len(data) - 8} "
            f"after the length (and at most {MAX_HEADER_BYTES} are accepted). The file is "
            "truncated or not safetensors; re-save it."
        )
    header = load_json(bytes(data[8 : 8 + length]), where=f"{where} header")
    if not isinstance(header, dict):
        raise FormatError(f"{where} header is a {type(header).__name__}; expected an object.")
    size = len(data) - 8 - length
    header.pop("__metadata__", None)
    entries = {}
    for name, entry in header.items():
        dtype, shape, begin, end = _tensor_entry(name, entry, where)
        if not 0 <= begin <= end <= size or end - begin != count_bytes(
            shape, dtype, where=f"{where} tensor {name[:100]!r}"
        ):
            raise FormatError(
                f"{where} tensor {name[:100]!r} ({dtype}, shape {list(shape)}) spans bytes "
                f"{begin}..{end} of {size}; expected exactly its size inside the file. "
                "The file is damaged or hostile."
            )
        entries[name] = (dtype, shape, begin, end)
    _check_tiling([(begin, end) for _, _, begin, end in entries.values()], size, where)
    return 8 + length, entries


def load_arrays(data: bytes, *, where: str) -> dict[str, np.ndarray]:
    """Return the arrays of safetensors ``data`` as read-only views; check everything first.

    The header must be at most :data:`MAX_HEADER_BYTES` of strict JSON; each
    tensor's dtype must be known, its shape valid, and its byte range exactly
    ``prod(shape) * itemsize`` long; the ranges must tile the data with no gap
    or overlap (:func:`index_arrays`). Anything else raises
    :class:`FormatError` naming ``where``. No array memory is allocated: each
    array views ``data``.

    Example:
        >>> load_arrays(bytes([2]) + bytes(7) + b"{}", where="x.safetensors")
        {}
        >>> load_arrays(bytes([255]) * 8, where="x.safetensors")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        polybundle.errors.FormatError: x.safetensors declares a header of ...
    """
    data = bytes(data)
    start, entries = index_arrays(data, where=where)
    body = memoryview(data)[start:]
    return {
        name: np.frombuffer(
            body, dtype=resolve_dtype(dtype), count=math.prod(shape), offset=begin
        ).reshape(shape)
        for name, (dtype, shape, begin, _) in entries.items()
    }


def _tensor_entry(name: str, entry: Any, where: str) -> tuple[str, tuple[int, ...], int, int]:
    """Return ``(dtype name, shape, begin, end)`` of one header entry, checked."""
    what = f"{where} tensor {name[:100]!r}"
    offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
    valid = (
        isinstance(entry, dict)
        and isinstance(entry.get("dtype"), str)
        and entry["dtype"] in SAFETENSORS_DTYPES
        and isinstance(offsets, list)
        and len(offsets) == 2
        and all(isinstance(x, int) and not isinstance(x, bool) for x in offsets)
    )
    if not valid:
        raise FormatError(
            f"{what} is {repr(entry)[:120]}; expected {{'dtype': one of "
            f"{sorted(SAFETENSORS_DTYPES)}, 'shape': [...], 'data_offsets': [begin, end]}}. "
            "The file is damaged or not safetensors."
        )
    shape = check_shape(entry.get("shape"), where=what)
    return SAFETENSORS_DTYPES[entry["dtype"]], shape, offsets[0], offsets[1]


def _check_tiling(spans: list[tuple[int, int]], size: int, where: str) -> None:
    position = 0
    for begin, end in sorted(spans):
        if begin != position:
            raise FormatError(
                f"{where} has tensors whose byte ranges overlap or leave a gap at byte "
                f"{position}; safetensors tensors tile the data exactly. The file is damaged "
                "or hostile."
            )
        position = end
    if position != size:
        raise FormatError(
            f"{where} holds {size - position} bytes after its last tensor; expected none. "
            "The file is damaged or hostile."
        )
