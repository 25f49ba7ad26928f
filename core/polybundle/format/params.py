"""Params: a JSON object, plus NumPy arrays, that must come back exactly as saved.

``params.json`` holds the JSON. From format 2.1, each NumPy array or NumPy
scalar in params (at any depth, as a dict value or a list item) is written
as a reference object ``{"$ndarray": key, "dtype": ..., "shape": [...]}``
(with ``"scalar": true`` for a NumPy scalar) and its bytes go to the member
``params.safetensors`` under ``key``, the JSON Pointer of its place in params
(``"/probe"``, ``"/cfg/masks/0"``). Complex arrays are stored as their real
view (a trailing axis of 2: real, imaginary), float8 kinds that safetensors
has no code for as their bytes (``U8``); the reference says the true dtype
and shape. Reading gives back writable, C-ordered NumPy arrays of the same
dtype, shape and bytes, and NumPy scalars of the same type.

Example:
    >>> import numpy as np
    >>> encode_params({"N": 64, "probe.big": True}).document
    b'{"N": 64, "probe.big": true}'
    >>> encoded = encode_params({"probe": np.full((2, 2), 1 + 2j, np.complex64)})
    >>> encoded.document
    b'{"probe": {"$ndarray": "/probe", "dtype": "complex64", "shape": [2, 2]}}'
    >>> params = decode_params(encoded.document, where="params.json")
    >>> resolve_arrays(params, encoded.arrays, where="params.safetensors")["probe"][0]
    array([1.+2.j, 1.+2.j], dtype=complex64)
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from polybundle.errors import FormatError, ParamsError
from polybundle.format.arrays import MAX_HEADER_BYTES, SAFETENSORS_DTYPES, load_arrays, save_arrays
from polybundle.format.jsondoc import MAX_DEPTH, load_json
from polybundle.format.manifest import PARAMS_MEMBER
from polybundle.format.schemas import validate
from polybundle.safety import budget
from polybundle.safety.dtypes import (
    ML_DTYPES,
    NUMPY_DTYPES,
    check_shape,
    dtype_label,
    resolve_dtype,
)

if TYPE_CHECKING:
    from polybundle.format.archive import ArchiveReader

ARRAYS_MEMBER = "params.safetensors"
"""The member holding the arrays of params (format 2.1 and later; only when there are some)."""

REFERENCE = "$ndarray"
"""The key that marks a reference object in ``params.json`` (reserved in user dicts)."""

ARRAYS_SINCE = (2, 1)
"""The first format version whose ``params.json`` may hold array references."""

DTYPES = NUMPY_DTYPES + ML_DTYPES
"""The dtypes a params array may have (bfloat16 and float8 through ``ml_dtypes``)."""

_REFERENCE_KEYS = {REFERENCE, "dtype", "shape", "scalar"}


@dataclass(frozen=True)
class EncodedParams:
    """The bytes of the params members: ``params.json`` and ``params.safetensors``.

    ``arrays`` is None when params hold no array (no member is written).

    Example:
        >>> EncodedParams(b"{}", None).arrays is None
        True
    """

    document: bytes
    arrays: bytes | None


# --- where each dtype is stored ----------------------------------------------------------------


def storage(dtype: str, shape: tuple[int, ...]) -> tuple[str, tuple[int, ...]]:
    """Return the safetensors dtype name and shape that hold an array of ``dtype``/``shape``.

    Complex arrays are stored as their real view (trailing axis of 2); dtypes
    safetensors has no code for (float8 ``fnuz``/``e8m0`` kinds) as ``uint8``
    bytes of the same shape; every other dtype as itself.

    Example:
        >>> storage("complex64", (16, 16)), storage("float32", (3,))
        (('float32', (16, 16, 2)), ('float32', (3,)))
    """

    if dtype in ("complex64", "complex128"):
        return ("float32" if dtype == "complex64" else "float64"), (*shape, 2)
    if dtype in SAFETENSORS_DTYPES.values():
        return dtype, shape
    return "uint8", shape


def _stored_view(array: np.ndarray) -> np.ndarray:
    """Return ``array`` (C-ordered) as the dtype and shape :func:`storage` names."""
    name, shape = storage(dtype_label(array.dtype), array.shape)
    flat = np.ascontiguousarray(array).reshape(-1)  # 1-d: a 0-d array cannot change its dtype
    return flat.view(np.dtype(name).newbyteorder(array.dtype.byteorder)).reshape(shape)


# --- writing ----------------------------------------------------------------------------------


def pointer(path: list[str]) -> str:
    """Return the JSON Pointer (RFC 6901) of a place in params, the key of its array.

    Example:
        >>> pointer(["cfg", "a/b", "0"])
        '/cfg/a~1b/0'
    """
    return "".join("/" + part.replace("~", "~0").replace("/", "~1") for part in path)


def _label(path: list[str]) -> str:
    return "params" + "".join(f"[{part!r}]" for part in path)


def _array_reference(value: Any, path: list[str], arrays: dict[str, np.ndarray]) -> dict:
    """Check a NumPy array or scalar; keep it under its pointer; return its reference."""
    scalar = isinstance(value, np.generic)
    if not scalar and type(value) is not np.ndarray and not isinstance(value, np.memmap):
        raise ParamsError(
            f"{_label(path)} is a {type(value).__module__}.{type(value).__qualname__}, a "
            "NumPy array subclass whose extra state (a mask, matrix semantics) would not "
            "come back; store numpy.asarray(value) (and a masked array's mask as a second "
            "array)."
        )
    array = np.asarray(value)
    name = dtype_label(array.dtype)
    if name not in DTYPES or array.dtype.hasobject:
        raise ParamsError(
            f"{_label(path)} is a NumPy {'scalar' if scalar else 'array'} of dtype "
            f"{array.dtype}; params arrays hold {', '.join(DTYPES)}. Convert it (strings "
            "and objects belong in plain JSON values)."
        )
    key = pointer(path)
    arrays[key] = array
    reference: dict[str, Any] = {REFERENCE: key, "dtype": name, "shape": list(array.shape)}
    if scalar:
        reference["scalar"] = True
    return reference


def _refuse(value: Any, path: list[str]) -> None:
    hint = "use a list" if isinstance(value, tuple) else "convert it to a plain value"
    if isinstance(value, complex):
        hint = "numpy.complex128(value) keeps it (stored in params.safetensors)"
    elif hasattr(value, "numpy") and hasattr(value, "dtype"):
        hint = "convert a tensor to NumPy (tensor.numpy()) to keep it as a params array"
    raise ParamsError(
        f"{_label(path)} is a {type(value).__module__}.{type(value).__qualname__}; params "
        f"hold JSON values (str, int, float, bool, None, list, dict) and NumPy arrays and "
        f"scalars, so they load back exactly: {hint}."
    )


def _encode(value: Any, path: list[str], arrays: dict[str, np.ndarray], depth: int) -> Any:
    """Return ``value`` as JSON, with arrays replaced by references kept in ``arrays``."""
    if isinstance(value, (list, dict)) and depth >= MAX_DEPTH:
        raise ParamsError(
            f"{_label(path)} nests lists/dicts more than {MAX_DEPTH} deep; polybundle reads "
            f"params back only to that depth. Flatten the structure."
        )
    if isinstance(value, (np.ndarray, np.generic)) and not isinstance(value, (str, bytes)):
        if depth >= MAX_DEPTH - 1:  # its reference object holds a list one level deeper
            raise ParamsError(
                f"{_label(path)} is an array nested {depth} deep; its reference in "
                f"params.json needs two more levels and JSON is read back only {MAX_DEPTH} "
                "deep. Flatten the structure."
            )
        return _array_reference(value, path, arrays)
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ParamsError(
                f"{_label(path)} is {value!r}; JSON has no NaN or infinity. Store it as a "
                "string or null, or as numpy.float64(value) (kept in params.safetensors)."
            )
        return value
    if isinstance(value, list):
        return [_encode(item, [*path, str(i)], arrays, depth + 1) for i, item in enumerate(value)]
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ParamsError(
                    f"{_label(path)} has key {key!r} of type {type(key).__name__}; JSON object "
                    "keys are strings. Convert the key with str()."
                )
            if key == REFERENCE:
                raise ParamsError(
                    f"{_label(path)} has the key {REFERENCE!r}, which format 2 reserves for "
                    "references to params arrays (a reader could not tell your dict from "
                    "one). Rename the key."
                )
            out[key] = _encode(item, [*path, key], arrays, depth + 1)
        return out
    _refuse(value, path)
    return None  # pragma: no cover - _refuse raises


def encode_params(params: dict[str, Any]) -> EncodedParams:
    """Check ``params`` and return its members' bytes; raise :class:`ParamsError` if unfit.

    Arrays and NumPy scalars (dtypes :data:`DTYPES`) go to ``params.safetensors``;
    everything else must be JSON (str, int, finite float, bool, None, list,
    dict with str keys). A dict with the key ``"$ndarray"`` is refused.

    Example:
        >>> encode_params({"shape": (1, 2)})
        Traceback (most recent call last):
        ...
        polybundle.errors.ParamsError: params['shape'] is a builtins.tuple; ...
        >>> encode_params({"scale": np.float32(1.5)}).document
        b'{"scale": {"$ndarray": "/scale", "dtype": "float32", "shape": [], "scalar": true}}'
    """
    if not isinstance(params, dict):
        raise ParamsError(f"params is a {type(params).__name__}; expected a dict.")
    arrays: dict[str, np.ndarray] = {}
    document = _encode(params, [], arrays, 0)
    validate("params", document, where="params")
    data = None
    if arrays:

        data = save_arrays({key: _stored_view(array) for key, array in arrays.items()})
    return EncodedParams(json.dumps(document, allow_nan=False).encode("utf-8"), data)


# --- reading ----------------------------------------------------------------------------------


def decode_params(data: bytes, *, where: str) -> dict[str, Any]:
    """Parse and schema-check the bytes of a ``params.json`` member (references left as they are).

    Parsing is :func:`polybundle.format.jsondoc.load_json` (depth, number sizes, NaN and
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


def _check_reference(value: dict[str, Any], where: str) -> tuple[str, str, tuple[int, ...], bool]:
    """Return ``(key, dtype, shape, scalar)`` of a reference object, checked."""
    shown = repr(value)[:160]
    key, dtype = value.get(REFERENCE), value.get("dtype")
    valid = (
        set(value) <= _REFERENCE_KEYS
        and {REFERENCE, "dtype", "shape"} <= set(value)
        and isinstance(key, str)
        and isinstance(dtype, str)
        and dtype in DTYPES
        and value.get("scalar", True) is True
    )
    if not valid:
        raise FormatError(
            f"{where} holds {shown}; a params array reference is exactly "
            f'{{"$ndarray": key, "dtype": one of {list(DTYPES)}, "shape": [...]}} (and '
            '"scalar": true for a NumPy scalar). The file is damaged or was edited.'
        )
    shape = check_shape(value["shape"], where=f"{where} array {key[:100]!r}")
    scalar = value.get("scalar", False)
    if scalar and shape:
        raise FormatError(
            f"{where}: scalar reference {shown} has shape {list(shape)}; expected []."
        )
    return key, dtype, shape, scalar


def references(document: Any, *, where: str) -> dict[str, tuple[str, tuple[int, ...], bool]]:
    """Return ``{key: (dtype, shape, scalar)}`` of every reference in ``document``, checked.

    A dict with the key ``"$ndarray"`` must be a whole reference object, and
    no key may be referenced twice; else :class:`FormatError`.

    Example:
        >>> references({"a": [{"$ndarray": "/a/0", "dtype": "bool", "shape": [2]}]}, where="p")
        {'/a/0': ('bool', (2,), False)}
    """
    found: dict[str, tuple[str, tuple[int, ...], bool]] = {}
    stack = [document]
    while stack:
        value = stack.pop()
        if isinstance(value, list):
            stack.extend(value)
        elif isinstance(value, dict) and REFERENCE in value:
            key, dtype, shape, scalar = _check_reference(value, where)
            if key in found:
                raise FormatError(
                    f"{where} references array {key[:100]!r} twice; each array is referenced "
                    "once. The file is damaged or was edited."
                )
            found[key] = (dtype, shape, scalar)
        elif isinstance(value, dict):
            stack.extend(value.values())
    return found


def _check_keys(declared: set[str], stored: set[str], where: str) -> None:
    missing, extra = sorted(declared - stored), sorted(stored - declared)
    if missing or extra:
        raise FormatError(
            f"params.json and {where} disagree: arrays referenced but missing "
            f"{[k[:100] for k in missing[:10]]}, arrays never referenced "
            f"{[k[:100] for k in extra[:10]]}; expected the same keys. The bundle was "
            "damaged or edited."
        )


def _disagree(where: str, key: str, dtype: str, shape: Any, found: str) -> FormatError:
    want_dtype, want_shape = storage(dtype, tuple(shape))
    return FormatError(
        f"{where} array {key[:100]!r} is {found}; params.json says {dtype} shape "
        f"{list(shape)}, stored as {want_dtype} shape {list(want_shape)}. The bundle was "
        "damaged or edited."
    )


def _replace(value: Any, arrays: dict[str, Any]) -> Any:
    if isinstance(value, list):
        return [_replace(item, arrays) for item in value]
    if isinstance(value, dict) and REFERENCE in value:
        return arrays[value[REFERENCE]]
    if isinstance(value, dict):
        return {key: _replace(item, arrays) for key, item in value.items()}
    return value


def resolve_arrays(document: dict[str, Any], data: bytes | None, *, where: str) -> dict[str, Any]:
    """Return ``document`` with each reference replaced by its array from ``data``.

    ``data`` is the ``params.safetensors`` member (None when the bundle has
    none). Every referenced key must be stored and every stored key
    referenced, each with the dtype and shape :func:`storage` gives for its
    reference; else :class:`FormatError`. Arrays come back writable and
    C-ordered, NumPy scalars as NumPy scalars of their dtype.

    Example:
        >>> resolve_arrays({"N": 4}, None, where="params.safetensors")
        {'N': 4}
    """

    declared = references(document, where=PARAMS_MEMBER)
    stored = {} if data is None else load_arrays(data, where=where)
    _check_keys(set(declared), set(stored), where)
    arrays: dict[str, Any] = {}
    for key, (dtype, shape, scalar) in declared.items():
        view = stored[key]
        want_dtype, want_shape = storage(dtype, shape)
        if dtype_label(view.dtype) != want_dtype or view.shape != want_shape:
            found = f"{dtype_label(view.dtype)} shape {list(view.shape)}"
            raise _disagree(where, key, dtype, shape, found)
        array = view.reshape(-1).view(resolve_dtype(dtype)).reshape(shape).copy()
        arrays[key] = array[()] if scalar else array
    return _replace(document, arrays)


def _read_header(archive: ArchiveReader, where: str) -> dict[str, Any]:
    """Read only the safetensors header of ``where`` (the tensor bytes stay unread)."""

    size = archive.size(where)
    with archive.open(where) as stream:
        head = stream.read(8)
        length = struct.unpack("<Q", head)[0] if len(head) == 8 else size
        if length > min(size - 8, MAX_HEADER_BYTES):
            raise FormatError(
                f"{where} declares a header of {length} bytes in a member of {size}; the "
                "member is damaged or not safetensors."
            )
        budget.charge(length, f"{where} header")
        header = load_json(stream.read(length), where=f"{where} header")
    if not isinstance(header, dict):
        raise FormatError(f"{where} header is a {type(header).__name__}; expected an object.")
    header.pop("__metadata__", None)
    return header


def _check_header(declared: dict[str, Any], header: dict[str, Any], where: str) -> None:
    """Compare each reference with its header entry (dtype code and shape)."""

    _check_keys(set(declared), set(header), where)
    for key, (dtype, shape, _) in declared.items():
        entry = header[key]
        code = entry.get("dtype") if isinstance(entry, dict) else None
        found_shape = entry.get("shape") if isinstance(entry, dict) else None
        if (SAFETENSORS_DTYPES.get(code), found_shape) != (
            storage(dtype, shape)[0], list(storage(dtype, shape)[1])
        ):
            raise _disagree(where, key, dtype, shape, f"{code!r} shape {found_shape!r}"[:120])


def holds_references(manifest: dict[str, Any]) -> bool:
    """Return True when the bundle's format version gives ``$ndarray`` objects their meaning.

    Format 2.0 params are plain JSON: a dict ``{"$ndarray": ...}`` there is
    the user's own value and stays one.

    Example:
        >>> holds_references({"format_version": "2.1.0"}), holds_references(
        ...     {"format_version": "2.0.0"})
        (True, False)
    """
    major, minor = (int(part) for part in manifest["format_version"].split(".")[:2])
    return (major, minor) >= ARRAYS_SINCE


def read_params(
    archive: ArchiveReader, manifest: dict[str, Any], *, arrays: bool = True
) -> dict[str, Any]:
    """Read a format-2 bundle's params, arrays included; charge the budget before reading.

    With ``arrays=False`` (what :func:`polybundle.inspect` shows) references
    stay in place as summaries (key, dtype, shape): only the header of
    ``params.safetensors`` is read, to check it agrees.

    Example:
        >>> from polybundle.format.archive import ArchiveReader
        >>> from polybundle.format.manifest import read_manifest
        >>> probe = np.ones((2, 2), np.complex64)
        >>> _ = polybundle.save("p.bundle", {"net": net}, params={"probe": probe})
        >>> with ArchiveReader("p.bundle") as archive:
        ...     read_params(archive, read_manifest(archive))["probe"].dtype
        dtype('complex64')
    """
    budget.charge(archive.size(PARAMS_MEMBER), PARAMS_MEMBER)
    document = decode_params(archive.read(PARAMS_MEMBER), where=PARAMS_MEMBER)
    listed = ARRAYS_MEMBER in manifest["members"]
    if not holds_references(manifest):
        if listed:
            raise FormatError(
                f"the manifest says format {manifest['format_version']}, which has no "
                f"{ARRAYS_MEMBER}, yet lists one; expected format 2.1 or later for params "
                "arrays. The bundle was edited."
            )
        return document
    if not arrays:
        declared = references(document, where=PARAMS_MEMBER)
        header = _read_header(archive, ARRAYS_MEMBER) if listed else {}
        _check_header(declared, header, ARRAYS_MEMBER)
        return document
    data = None
    if listed:
        size = archive.size(ARRAYS_MEMBER)
        budget.charge(2 * size, f"{ARRAYS_MEMBER} and its arrays")
        data = archive.read(ARRAYS_MEMBER, limit=size)
    return resolve_arrays(document, data, where=ARRAYS_MEMBER)
