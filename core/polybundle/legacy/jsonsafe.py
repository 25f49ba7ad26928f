"""Turn legacy params (which may hold NumPy values and tuples) into format-2 params.

Each change is recorded, so :func:`polybundle.migrate` can print what was
converted and what was dropped. :func:`to_params` gives what a format-2
bundle's params hold: JSON values plus NumPy arrays and scalars, which go to
``params.safetensors`` bit for bit (complex probes, boolean masks, bfloat16,
NaN included); tuples and sets become lists, a Python complex or non-finite
float becomes the NumPy scalar of the same value. Only values that have no
lossless form are dropped, each with the reason (bytes, non-string keys,
arrays of dtypes params do not store). :func:`to_json` gives pure JSON (for
manifests and builder configs): NumPy scalars become Python numbers, arrays of
booleans, integers and floats nested lists, and complex values and NaN are
dropped.

Example:
    >>> import numpy as np
    >>> result = to_json({"scale": np.float32(2.5), "shape": (1, 2), "z": 1j})
    >>> result.value, result.converted, result.dropped
    ({'scale': 2.5, 'shape': [1, 2]}, ['scale: numpy float32 -> number', \
'shape: tuple -> list'], ['z: complex (JSON has no complex numbers)'])
    >>> result = to_params({"probe": np.ones((2, 2), np.complex64), "z": 1j})
    >>> result.value["probe"].dtype, result.value["z"], result.dropped
    (dtype('complex64'), np.complex128(1j), [])
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from polybundle.format.params import DTYPES


@dataclass
class JsonResult:
    """A JSON-safe value and the list of changes made to get it.

    Example:
        >>> JsonResult({"a": 1}).dropped
        []
    """

    value: Any
    converted: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)


_DROP = object()


def to_json(value: Any) -> JsonResult:
    """Return ``value`` as plain JSON, with what was converted and dropped.

    Example:
        >>> to_json({"N": 64}).value
        {'N': 64}
    """
    result = JsonResult(None)
    converted = _convert(value, "", result)
    result.value = None if converted is _DROP else converted
    return result


def to_params(value: Any) -> JsonResult:
    """Return ``value`` as format-2 params (JSON plus NumPy arrays), with what changed.

    Arrays and NumPy scalars of the dtypes params store are kept as they
    are (arrays with another memory order or byte order come back C-ordered
    and native); only what has no lossless form is dropped.

    Example:
        >>> import numpy as np
        >>> result = to_params({"mask": np.eye(2, dtype=bool), "nan": float("nan"), "b": b"x"})
        >>> result.value
        {'mask': array([[ True, False],
               [False,  True]]), 'nan': np.float64(nan)}
        >>> result.dropped
        ['b: bytes (params have no bytes values)']
    """
    result = JsonResult(None)
    converted = _convert(value, "", result, arrays=True)
    result.value = None if converted is _DROP else converted
    return result


def _label(path: str) -> str:
    return path or "(top)"


def _keep_array(value: Any, path: str, result: JsonResult) -> Any:
    """Keep a NumPy array or scalar for ``params.safetensors``; drop what it cannot hold."""

    array = np.asarray(value)
    kind = "scalar" if isinstance(value, np.generic) else "array"
    if type(value) is np.ndarray or isinstance(value, np.generic):
        if array.dtype.name in DTYPES and not array.dtype.hasobject:
            if kind == "array":
                result.converted.append(
                    f"{_label(path)}: array {value.dtype} shape {list(value.shape)} -> "
                    "params.safetensors (bit for bit)"
                )
            return value
    result.dropped.append(
        f"{_label(path)}: {type(value).__name__} of dtype {array.dtype} (params store "
        f"arrays and scalars of {', '.join(DTYPES)} only); it stays readable in the source "
        "archive: polybundle.load(source).params"
    )
    return _DROP


def _convert(value: Any, path: str, result: JsonResult, arrays: bool = False) -> Any:
    if arrays and isinstance(value, (np.ndarray, np.generic)) and not isinstance(value, str):
        return _keep_array(value, path, result)
    if arrays and isinstance(value, (complex, float)) and not isinstance(value, bool):
        if isinstance(value, complex) or not math.isfinite(value):
            kind = "complex128" if isinstance(value, complex) else "float64"
            result.converted.append(
                f"{_label(path)}: {value!r} -> numpy {kind} (the same value; JSON has no "
                f"{'complex numbers' if kind == 'complex128' else 'NaN or infinity'})"
            )
            return np.complex128(value) if kind == "complex128" else np.float64(value)
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        result.dropped.append(f"{_label(path)}: {value} (JSON has no NaN or infinity)")
        return _DROP
    if isinstance(value, np.generic) and not isinstance(value, np.complexfloating):
        result.converted.append(f"{_label(path)}: numpy {value.dtype} -> number")
        return _convert(value.item(), path, result)
    if isinstance(value, np.ndarray) and value.dtype.kind == "f" and not np.isfinite(value).all():
        result.dropped.append(
            f"{_label(path)}: array {value.dtype} shape {list(value.shape)} holds NaN or "
            "infinity (JSON has neither); it stays readable in the source archive"
        )
        return _DROP
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
        result.converted.append(
            f"{_label(path)}: array {value.dtype} shape {list(value.shape)} -> nested list "
            f"(the same values: numpy.asarray(value, {value.dtype.name!r}) gives the array back)"
        )
        return _convert(value.tolist(), path, result)
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                result.dropped.append(f"{path}[{key!r}]: key is not a string")
                continue
            if arrays and key == "$ndarray":
                result.dropped.append(
                    f"{_label(path)}.$ndarray: the key '$ndarray' is reserved for array "
                    "references in format-2 params; it stays readable in the source archive"
                )
                continue
            child = _convert(item, f"{path}.{key}" if path else key, result, arrays)
            if child is not _DROP:
                out[key] = child
        return out
    if isinstance(value, (list, tuple, set, frozenset)):
        if not isinstance(value, list):
            result.converted.append(f"{_label(path)}: {type(value).__name__} -> list")
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        out_list = []
        for index, item in enumerate(items):
            child = _convert(item, f"{path}[{index}]", result, arrays)
            out_list.append(None if child is _DROP else child)
        return out_list
    kind = "complex" if isinstance(value, (complex, np.complexfloating)) else type(value).__name__
    if isinstance(value, np.ndarray):
        kind = f"array {value.dtype} shape {list(value.shape)}"
    if arrays:
        result.dropped.append(f"{_label(path)}: {kind} (params have no {kind} values)")
        return _DROP
    result.dropped.append(f"{_label(path)}: {kind} (JSON has no {_plural(kind)})")
    return _DROP


def _plural(kind: str) -> str:
    if kind.startswith("array"):
        numbers = "complex numbers" if " complex" in kind else "arrays of this dtype"
        return (
            f"{numbers}; as JSON it is left out, and format-2 params keep it in "
            "params.safetensors)"
        )
    return "complex numbers" if kind == "complex" else f"{kind} values"
