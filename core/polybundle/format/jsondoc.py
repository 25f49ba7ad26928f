"""One reader of the JSON documents inside an archive: typed errors, bounded work.

``json.loads`` on bytes an attacker wrote can raise ``RecursionError`` (deep
nesting), ``ValueError`` (an integer literal past Python's digit limit),
``UnicodeDecodeError``, or quietly accept ``NaN`` and duplicate keys (the last
one wins, so two readers may disagree on what the document says).
:func:`load_json` refuses all of these with a :class:`~polybundle.errors.FormatError`
that says what was found, what was expected and what to do. The nesting depth is
measured over the bytes *before* the parser recurses.

Example:
    >>> load_json(b'{"a": [1, 2.5, null]}', where="params.json")
    {'a': [1, 2.5, None]}
    >>> load_json(b'{"a": 1, "a": 2}', where="params.json")
    Traceback (most recent call last):
    ...
    polybundle.errors.FormatError: params.json has the key 'a' twice in one object; ...
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import numpy as np

from polybundle.errors import FormatError

MAX_DEPTH = 64
"""Default deepest nesting of arrays and objects a document may have."""

MAX_NUMBER_DIGITS = 4300
"""Default longest number literal, in characters (Python's own int digit limit)."""

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_BIG_EXPONENT = re.compile(rb"[eE][+-]?[0-9]{3}")


def _outside_strings(data: bytes) -> bytes:
    """Return ``data`` with every complete string literal removed."""
    return _STRING.sub(b"", data)


def _depth(outside: bytes) -> int:
    codes = np.frombuffer(outside, dtype=np.uint8)
    steps = ((codes == ord("[")) | (codes == ord("{"))).astype(np.int32)
    steps -= (codes == ord("]")) | (codes == ord("}"))
    return int(np.cumsum(steps).max(initial=0)) if steps.size else 0


def _longest_number(outside: bytes, limit: int) -> int:
    """Return the length of a number literal longer than ``limit``, or 0 when none is."""
    found = re.search(rb"[-+0-9.eE]{%d,}" % (limit + 1), outside)
    return len(found.group()) if found else 0


def nesting_depth(data: bytes) -> int:
    """Return the deepest nesting of ``[``/``{`` in ``data``, brackets in strings ignored.

    Linear in ``len(data)`` and never recursive, so it is safe on any input.

    Example:
        >>> nesting_depth(b'{"a": [[1], "]]]"]}')
        3
        >>> nesting_depth(b'"[[[["')
        0
    """
    return _depth(_outside_strings(data))


def _strict_pairs(where: str):  # noqa: ANN202 - a closure handed to json
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        document = dict(pairs)
        if len(document) == len(pairs):
            return document
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise FormatError(
                    f"{where} has the key {key[:80]!r} twice in one object; expected each key "
                    "once (readers disagree on which copy counts). The file was altered or "
                    "written by a faulty tool; re-create it."
                )
            seen.add(key)
        return document

    return hook


def _float_parser(where: str):  # noqa: ANN202 - a closure handed to json
    def parse_float(literal: str) -> float:
        value = float(literal)
        if not math.isfinite(value):
            raise FormatError(
                f"{where} holds the number {literal[:40]!r}, which overflows to infinity; "
                "expected a finite number. Re-create the file with a finite value."
            )
        return value

    return parse_float


def _constant_parser(where: str, allow_nan: bool):  # noqa: ANN202 - a closure handed to json
    def parse_constant(name: str) -> float:
        if not allow_nan:
            raise FormatError(
                f"{where} holds {name}, which is not JSON; expected a finite number. "
                "Store such a value as a string or null."
            )
        return float(name)

    return parse_constant


def load_json(
    data: bytes,
    *,
    where: str,
    max_depth: int = MAX_DEPTH,
    max_bytes: int | None = None,
    max_digits: int = MAX_NUMBER_DIGITS,
    allow_nan: bool = False,
) -> Any:
    """Parse ``data`` as strict JSON in UTF-8; raise :class:`FormatError` on anything else.

    Refused, each with its own message: more than ``max_bytes`` bytes, invalid
    UTF-8, nesting deeper than ``max_depth`` (checked before parsing), number
    literals longer than ``max_digits``, ``NaN``/``Infinity`` (unless
    ``allow_nan``), a float that overflows, duplicate keys, and malformed JSON.

    Example:
        >>> load_json(b"[" * 100 + b"]" * 100, where="manifest.json")
        Traceback (most recent call last):
        ...
        polybundle.errors.FormatError: manifest.json nests arrays/objects 100 deep; ...
        >>> load_json(b"NaN", where="optimizer.json")
        Traceback (most recent call last):
        ...
        polybundle.errors.FormatError: optimizer.json holds NaN, which is not JSON; ...
        >>> load_json(b"NaN", where="x", allow_nan=True)
        nan
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"load_json takes bytes, not {type(data).__name__}")
    data = bytes(data)
    if max_bytes is not None and len(data) > max_bytes:
        raise FormatError(
            f"{where} is {len(data)} bytes; expected at most {max_bytes}. The file was "
            "altered or is not what it claims to be."
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FormatError(
            f"{where} is not valid UTF-8 (byte {exc.start}: {exc.reason}); expected a JSON "
            "document in UTF-8. The file is damaged; re-copy it."
        ) from None
    outside = _outside_strings(data)
    depth = _depth(outside)
    if depth > max_depth:
        raise FormatError(
            f"{where} nests arrays/objects {depth} deep; expected at most {max_depth}. "
            "No polybundle document nests that deep: the file was altered."
        )
    longest = _longest_number(outside, max_digits)
    if longest:
        raise FormatError(
            f"{where} holds a number literal of {longest} characters; expected at most "
            f"{max_digits}. Such a number is no real setting; the file was altered or "
            "damaged. Re-create it."
        )
    check_floats = not allow_nan and _BIG_EXPONENT.search(outside) is not None
    try:
        return json.loads(
            text,
            object_pairs_hook=_strict_pairs(where),
            parse_float=_float_parser(where) if check_floats else None,
            parse_constant=_constant_parser(where, allow_nan),
        )
    except FormatError:
        raise
    except (ValueError, RecursionError) as exc:
        raise FormatError(
            f"{where} is not valid JSON ({str(exc)[:200]}); expected a JSON document. "
            "The file is damaged or not a polybundle document; re-copy it."
        ) from None
