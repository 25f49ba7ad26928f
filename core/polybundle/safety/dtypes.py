"""Tensor dtype names and shapes, checked before anything is sized or allocated.

Every dtype and shape polybundle reads (a manifest, a safetensors header, a
pickled storage, an HDF5 dataset) goes through :func:`resolve_dtype`,
:func:`check_shape` or :func:`count_bytes` first, so a hostile file gets a
typed error instead of an object dtype or an int64 wrap-around. These names
sit below the format and the neutral model, which both use them.

Example:
    >>> count_bytes(check_shape([4, 3]), dtype_label(resolve_dtype("bfloat16")))
    24
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from polybundle.errors import FormatError, UnsafeContentError

NUMPY_DTYPES = (
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64", "complex64", "complex128",
)
"""Tensor dtype names NumPy itself holds."""
ML_DTYPES = (
    "bfloat16", "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz",
    "float8_e8m0fnu",
)
"""Tensor dtype names held through ``ml_dtypes`` (PyTorch and Keras use these names)."""
MAX_TENSOR_BYTES = 2**63 - 1
"""Largest tensor size accepted: no file or address space holds more."""
MAX_NDIM = 64
"""Most axes a tensor may have (PyTorch and NumPy allow 64 at most)."""


def resolve_dtype(name: Any, *, where: str = "tensor") -> np.dtype:
    """Return the NumPy dtype of a manifest dtype name; bfloat16 and float8 via ``ml_dtypes``.

    Only numeric and bool names are known; anything else (``object``,
    ``"<U8"``, a number) raises :class:`FormatError` naming ``where``.

    Example:
        >>> resolve_dtype("float32").itemsize, resolve_dtype("bfloat16").itemsize
        (4, 2)
        >>> resolve_dtype("object", where="fc.weight")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        polybundle.errors.FormatError: fc.weight has dtype 'object'; expected one of ...
    """
    if isinstance(name, str) and name in NUMPY_DTYPES:
        return np.dtype(name)
    if isinstance(name, str) and name in ML_DTYPES:
        import ml_dtypes  # only when asked: a process that never needs bfloat16 never loads it

        kind = getattr(ml_dtypes, name, None)
        if kind is not None:
            return np.dtype(kind)
        raise FormatError(
            f"{where} has dtype {name!r}, which the installed ml_dtypes "
            f"{getattr(ml_dtypes, '__version__', '?')} lacks; upgrade it (pip install -U "
            "ml_dtypes)."
        )
    shown = repr(name)[:60]
    raise FormatError(
        f"{where} has dtype {shown}; expected one of {', '.join(NUMPY_DTYPES + ML_DTYPES)}. "
        "The manifest is damaged or was written for tensors polybundle does not store."
    )


def dtype_label(dtype: Any) -> str:
    """Return the manifest name of a NumPy or ``ml_dtypes`` dtype (``"bfloat16"``).

    A manifest name is returned as it is; another dtype string (``"<f4"``) is
    named through NumPy.

    Example:
        >>> import ml_dtypes
        >>> dtype_label(np.float32), dtype_label(ml_dtypes.bfloat16), dtype_label("<f4")
        ('float32', 'bfloat16', 'float32')
    """
    if isinstance(dtype, str) and dtype in NUMPY_DTYPES + ML_DTYPES:
        return dtype
    return np.dtype(dtype).name


def count_bytes(shape: Any, dtype: Any, *, where: str = "tensor") -> int:
    """Return ``prod(shape) * itemsize`` with Python ints, after checking both.

    ``shape`` must be a sequence of at most :data:`MAX_NDIM` non-negative
    ints (bools refused) and ``dtype`` a known name (see :func:`resolve_dtype`),
    else :class:`FormatError`; a size past :data:`MAX_TENSOR_BYTES` raises
    :class:`UnsafeContentError` (no silent int64 wrap to 0).

    Example:
        >>> count_bytes((4, 3), "bfloat16")
        24
        >>> count_bytes((2**32, 2**32), "float32")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        polybundle.errors.UnsafeContentError: tensor declares shape (4294967296, 4294967296) ...
    """
    axes = check_shape(shape, where=where)
    itemsize = resolve_dtype(dtype, where=where).itemsize
    count = math.prod(axes)
    if count * itemsize > MAX_TENSOR_BYTES:
        raise UnsafeContentError(
            f"{where} declares shape {axes} of {dtype}, {count * itemsize} bytes; expected at "
            f"most {MAX_TENSOR_BYTES}. No real tensor is that large: the archive is hostile "
            "or damaged."
        )
    return count * itemsize


def check_shape(shape: Any, *, where: str = "tensor") -> tuple[int, ...]:
    """Return ``shape`` as a tuple after checking it is a list of non-negative ints.

    Example:
        >>> check_shape([4, 3])
        (4, 3)
        >>> check_shape([4, -3], where="fc.weight")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        polybundle.errors.FormatError: fc.weight has shape [4, -3]; expected a list of ...
    """
    valid = (
        isinstance(shape, (list, tuple))
        and len(shape) <= MAX_NDIM
        and all(
            isinstance(axis, int) and not isinstance(axis, bool) and 0 <= axis <= MAX_TENSOR_BYTES
            for axis in shape
        )
    )
    if not valid:
        raise FormatError(
            f"{where} has shape {repr(shape)[:100]}; expected a list of at most {MAX_NDIM} "
            f"integers from 0 to {MAX_TENSOR_BYTES}. The manifest is damaged or hostile."
        )
    return tuple(shape)
