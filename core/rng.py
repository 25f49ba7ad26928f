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
import random
import sys
from typing import Any

import numpy as np

from .errors import FormatError

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
    from .registry import get_registry

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


def restore_rng(state: dict[str, Any]) -> None:
    """Put back every generator recorded by :func:`capture_rng`.

    A recorded backend's framework is imported (and must be installed).

    Example:
        >>> restore_rng(capture_rng())
    """
    from .registry import get_backend

    python = state["python"]
    random.setstate((python["version"], tuple(python["state"]), python["gauss_next"]))
    numpy = state["numpy"]
    np.random.set_state(
        (
            numpy["kind"],
            np.asarray(numpy["keys"], dtype=np.uint32),
            numpy["pos"],
            numpy["has_gauss"],
            numpy["cached_gaussian"],
        )
    )
    for name, backend_state in state["backends"].items():
        backend = get_backend(name)
        backend.require()
        backend.restore_rng(backend_state)


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
        >>> decode_rng(b"[]")
        Traceback (most recent call last):
        ...
        polybundle.errors.FormatError: rng.json is not a polybundle RNG state; ...
    """
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise FormatError(f"{RNG_MEMBER} is not valid JSON ({exc}).") from None
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
