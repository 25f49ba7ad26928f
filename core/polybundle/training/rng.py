"""Random-number-generator state as plain data, so data order and dropout continue.

:func:`capture_rng` records Python's :mod:`random`, NumPy's global generator
and, for every registered backend whose framework is already imported, that
backend's generators (PyTorch's CPU generator, TensorFlow's global generator).
A framework that was never imported has drawn no numbers, so it is skipped and
never imported here. :func:`restore_rng` puts everything back. In a bundle the
state is the member ``rng.json``; nothing in it can run code.

Example:
    >>> import random
    >>> state = capture_rng()
    >>> first = random.random()
    >>> restore_rng(state)
    >>> random.random() == first
    True
"""

from __future__ import annotations

import json
import math
import random
import sys
from typing import Any

import numpy as np

from polybundle.errors import FormatError
from polybundle.format.jsondoc import load_json
from polybundle.hooks.registry import get_backend, get_registry

RNG_MEMBER = "rng.json"
"""Bundle member holding the captured RNG state."""
DOCUMENT_FORMAT = "polybundle-rng"


def _python_state() -> dict[str, Any]:
    version, internal, gauss_next = random.getstate()
    return {"version": version, "state": list(internal), "gauss_next": gauss_next}


def _numpy_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    return {
        "kind": kind,
        "keys": [int(k) for k in keys],
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached),
    }


def capture_rng() -> dict[str, Any]:
    """Return the state of every global generator in use, as plain data.

    Example:
        >>> sorted(capture_rng())  # torch/tensorflow appear under "backends" once imported
        ['backends', 'format', 'numpy', 'python']
    """
    backends = {}
    for name, backend in sorted(get_registry().backends.items()):
        if backend.modules and all(module in sys.modules for module in backend.modules):
            state = backend.capture_rng()
            if state is not None:
                backends[name] = state
    return {
        "format": DOCUMENT_FORMAT,
        "python": _python_state(),
        "numpy": _numpy_state(),
        "backends": backends,
    }


def _words(value: Any, length: int) -> bool:
    return (
        isinstance(value, list)
        and len(value) == length
        and all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 2**32 for x in value)
    )


def _damaged(what: str, found: Any, expected: str) -> FormatError:
    return FormatError(
        f"{RNG_MEMBER}: {what} is {repr(found)[:80]}; expected {expected}. The RNG state is "
        "damaged; re-save it."
    )


def _python_setstate(python: Any) -> tuple[Any, ...]:
    """Return the argument of ``random.setstate`` after checking ``python``."""
    if not isinstance(python, dict) or python.get("version") != 3:
        raise _damaged("the Python state", python, "version 3 of random's Mersenne Twister")
    state = python.get("state")
    if not _words(state, 625) or state[-1] > 624:
        raise _damaged("the Python generator words", state, "625 32-bit words, the last <= 624")
    gauss = python.get("gauss_next")
    if gauss is not None and not (isinstance(gauss, float) and math.isfinite(gauss)):
        raise _damaged("Python's gauss_next", gauss, "null or a finite float")
    return (3, tuple(state), gauss)


def _numpy_setstate(numpy: Any) -> tuple[Any, ...]:
    """Return the argument of ``np.random.set_state`` after checking ``numpy``."""
    valid = (
        isinstance(numpy, dict)
        and numpy.get("kind") == "MT19937"
        and _words(numpy.get("keys"), 624)
        and isinstance(numpy.get("pos"), int) and 0 <= numpy["pos"] <= 624
        and numpy.get("has_gauss") in (0, 1)
        and isinstance(numpy.get("cached_gaussian"), (int, float))
        and math.isfinite(numpy["cached_gaussian"])
    )
    if not valid:
        raise _damaged("the NumPy state", numpy, "MT19937 with 624 keys, pos, has_gauss")
    return (
        "MT19937",
        np.asarray(numpy["keys"], dtype=np.uint32),
        numpy["pos"],
        numpy["has_gauss"],
        float(numpy["cached_gaussian"]),
    )


def restore_rng(state: dict[str, Any]) -> None:
    """Put back every generator recorded by :func:`capture_rng`.

    A recorded backend's framework is imported (and must be installed).
    Python's and NumPy's states are checked before anything changes; a
    malformed value raises :class:`FormatError`.

    Example:
        >>> restore_rng(capture_rng())
    """
    python = _python_setstate(state.get("python"))
    numpy = _numpy_setstate(state.get("numpy"))
    backends = state.get("backends")
    if not isinstance(backends, dict) or not all(isinstance(v, dict) for v in backends.values()):
        raise _damaged("'backends'", backends, "an object of objects")
    for name in backends:
        get_backend(name).require()
    for name, backend_state in backends.items():  # first: restoring one may draw numbers
        get_backend(name).restore_rng(backend_state)  # (Keras seeds a new generator from random)
    random.setstate(python)
    np.random.set_state(numpy)


def encode_rng(state: dict[str, Any]) -> bytes:
    """Return the ``rng.json`` bytes of a state from :func:`capture_rng`.

    Example:
        >>> encode_rng(capture_rng())[:10]
        b'{"format":'
    """
    return json.dumps(state, allow_nan=False).encode("utf-8")


def decode_rng(data: bytes) -> dict[str, Any]:
    """Parse and check ``rng.json`` bytes.

    Example:
        >>> decode_rng(b"[]")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        polybundle.errors.FormatError: rng.json is not a polybundle RNG state; ...
    """
    document = load_json(data, where=RNG_MEMBER)
    valid = (
        isinstance(document, dict)
        and document.get("format") == DOCUMENT_FORMAT
        and isinstance(document.get("python"), dict)
        and isinstance(document.get("numpy"), dict)
        and isinstance(document.get("backends"), dict)
    )
    if not valid:
        raise FormatError(
            f"{RNG_MEMBER} is not a polybundle RNG state; expected an object with format "
            f"{DOCUMENT_FORMAT!r} and python, numpy and backends entries. The bundle is damaged."
        )
    return document


def check_rng(data: bytes) -> dict[str, Any]:
    """Decode ``rng.json`` and check Python's and NumPy's states without restoring them.

    Example:
        >>> check_rng(encode_rng(capture_rng()))["format"]
        'polybundle-rng'
    """
    state = decode_rng(data)
    _python_setstate(state["python"])
    _numpy_setstate(state["numpy"])
    return state
