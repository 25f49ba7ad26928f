"""Turn legacy params (which may hold NumPy values and tuples) into plain JSON.

Each change is recorded, so :func:`polybundle.migrate` can print what was
converted and what was dropped: NumPy scalars become Python numbers, tuples
and sets become lists, real NumPy arrays (and tensors read from params)
of booleans, integers and floats become nested lists of the same values, and
values JSON cannot hold (complex numbers and complex arrays such as a probe,
bytes, NaN and infinity) are dropped, each with the reason.

Example:
    >>> import numpy as np
    >>> result = to_json({"scale": np.float32(2.5), "shape": (1, 2), "z": 1j})
    >>> result.value, result.converted, result.dropped
    ({'scale': 2.5, 'shape': [1, 2]}, ['scale: numpy float32 -> number', \
'shape: tuple -> list'], ['z: complex (JSON has no complex numbers)'])
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np


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


def _label(path: str) -> str:
    return path or "(top)"


def _convert(value: Any, path: str, result: JsonResult) -> Any:
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
            child = _convert(item, f"{path}.{key}" if path else key, result)
            if child is not _DROP:
                out[key] = child
        return out
    if isinstance(value, (list, tuple, set, frozenset)):
        if not isinstance(value, list):
            result.converted.append(f"{_label(path)}: {type(value).__name__} -> list")
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        out_list = []
        for index, item in enumerate(items):
            child = _convert(item, f"{path}[{index}]", result)
            out_list.append(None if child is _DROP else child)
        return out_list
    kind = "complex" if isinstance(value, (complex, np.complexfloating)) else type(value).__name__
    if isinstance(value, np.ndarray):
        kind = f"array {value.dtype} shape {list(value.shape)}"
    result.dropped.append(f"{_label(path)}: {kind} (JSON has no {_plural(kind)})")
    return _DROP


def _plural(kind: str) -> str:
    if kind.startswith("array"):
        numbers = "complex numbers" if " complex" in kind else "arrays of this dtype"
        return (
            f"{numbers}, and a format-2 bundle has no member for params arrays; it stays "
            "readable in the source archive: polybundle.load(source).params"
        )
    return "complex numbers" if kind == "complex" else f"{kind} values"
