"""Params: a plain JSON object that must come back exactly as it was saved.

Example:
    >>> encode_params({"N": 64, "probe.big": True})
    b'{"N": 64, "probe.big": true}'
    >>> decode_params(b'{"N": 64}', where="params.json")
    {'N': 64}
"""

from __future__ import annotations

import json
import math
from typing import Any

from .errors import ParamsError
from .jsondoc import MAX_DEPTH, load_json
from .schemas import validate


def _check_value(value: Any, path: str, depth: int = 0) -> None:
    if isinstance(value, (list, dict)) and depth >= MAX_DEPTH:
        raise ParamsError(
            f"{path} nests lists/dicts more than {MAX_DEPTH} deep; polybundle reads params "
            f"back only to that depth. Flatten the structure."
        )
    if value is None or isinstance(value, (bool, int, str)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ParamsError(
                f"{path} is {value!r}; JSON has no NaN or infinity. Store it as a string "
                "or as null."
            )
        return
    if isinstance(value, list):
        for index, item in enumerate(value):
            _check_value(item, f"{path}[{index}]", depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ParamsError(
                    f"{path} has key {key!r} of type {type(key).__name__}; JSON object keys "
                    "are strings. Convert the key with str()."
                )
            _check_value(item, f"{path}[{key!r}]", depth + 1)
        return
    hint = "use a list" if isinstance(value, tuple) else "convert it to a plain value"
    if hasattr(value, "item") and hasattr(value, "dtype"):
        hint = "call .item() (scalars) or .tolist() (arrays); tensors belong in a model"
    raise ParamsError(
        f"{path} is a {type(value).__module__}.{type(value).__qualname__}; params hold "
        f"only JSON values (str, int, float, bool, None, list, dict) so they load back "
        f"exactly: {hint}."
    )


def encode_params(params: dict[str, Any]) -> bytes:
    """Check ``params`` and return its JSON encoding; raise :class:`ParamsError` if unfit.

    Example:
        >>> encode_params({"shape": (1, 2)})
        Traceback (most recent call last):
        ...
        polybundle.errors.ParamsError: params['shape'] is a builtins.tuple; ...
    """
    if not isinstance(params, dict):
        raise ParamsError(f"params is a {type(params).__name__}; expected a dict.")
    _check_value(params, "params")
    validate("params", params, where="params")
    return json.dumps(params, allow_nan=False).encode("utf-8")


def decode_params(data: bytes, *, where: str) -> dict[str, Any]:
    """Parse and schema-check the bytes of a ``params.json`` member.

    Parsing is :func:`polybundle.jsondoc.load_json` (depth, number sizes, NaN and
    duplicate keys refused before anything recurses); the schema constrains only
    the top level, so checking costs the same as parsing, whatever the size.

    Example:
        >>> decode_params(b"[]", where="params.json")
        Traceback (most recent call last):
        ...
        polybundle.errors.SchemaError: params.json does not match the params schema ...
    """
    document = load_json(data, where=where)
    validate("params", document, where=where)
    return document
