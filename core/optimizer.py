"""Neutral optimizer state and its two bundle members.

An :class:`OptimizerState` says what an optimizer is (``algorithm``, the
backend's class), where it is (``step``), how it is set (hyperparameters per
parameter group) and what it remembers (``slots``: per-parameter arrays such as
Adam's first and second moments). Slots are keyed by the same neutral tensor
names as the model's weights and have the same shape and layout as the weight
they belong to, so a conversion of the weights converts their moments with them.

In a bundle the state is two members of the role's folder:
``optimizer.json`` (everything but the arrays) and ``optimizer.safetensors``
(the arrays, key ``"<slot>/<tensor name>"``). Neither can run code when read.

Example:
    >>> state = OptimizerState("adam", "torch", "torch.optim.adam.Adam", 3,
    ...     groups=[{"parameters": ["w"], "hyperparameters": {"learning_rate": 0.1}}],
    ...     slots={"w": {"m": np.zeros(2, np.float32)}})
    >>> decode_optimizer(*encode_optimizer(state), where="net").step
    3
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import FormatError, UnsupportedOptimizerError

STATE_MEMBER = "optimizer.json"
"""Member name (inside ``<role>/``) of the JSON part of the state."""
SLOTS_MEMBER = "optimizer.safetensors"
"""Member name (inside ``<role>/``) of the slot arrays."""
DOCUMENT_FORMAT = "polybundle-optimizer"
DOCUMENT_VERSION = 1

ALGORITHMS = ("adam", "adamw", "sgd", "rmsprop")
"""Neutral algorithm names the built-in backends write."""


@dataclass
class OptimizerState:
    """An optimizer's state in neutral form.

    ``groups`` is a list of ``{"parameters": [tensor names], "hyperparameters":
    {neutral name: value}}`` (one per parameter group; Keras has one).
    ``slots`` maps a tensor name to ``{slot name: array}``. ``step`` is the
    number of updates applied (``None`` where the optimizer does not count
    them, e.g. PyTorch SGD). ``schedule`` is the learning-rate schedule state
    (plain data) or ``None``; ``native`` holds the backend's own exact settings
    so a restore in the same framework is exact.

    Example:
        >>> state.algorithm, state.step, sorted(state.slots["0.weight"])  # doctest: +SKIP
        ('adam', 10, ['m', 'v'])
    """

    algorithm: str
    backend: str
    native_class: str
    step: int | None
    groups: list[dict[str, Any]]
    slots: dict[str, dict[str, np.ndarray]]
    schedule: dict[str, Any] | None = None
    native: dict[str, Any] = field(default_factory=dict)

    @property
    def parameters(self) -> list[str]:
        """Return the tensor names the optimizer updates, in its own order.

        Example:
            >>> state.parameters[:2]  # doctest: +SKIP
            ['0.weight', '0.bias']
        """
        return [name for group in self.groups for name in group["parameters"]]

    @property
    def hyperparameters(self) -> dict[str, Any]:
        """Return the first parameter group's neutral hyperparameters.

        Example:
            >>> state.hyperparameters["learning_rate"]  # doctest: +SKIP
            0.001
        """
        return self.groups[0]["hyperparameters"] if self.groups else {}

    def slot_names(self) -> list[str]:
        """Return every slot name used by any tensor, sorted.

        Example:
            >>> state.slot_names()  # doctest: +SKIP
            ['m', 'v']
        """
        return sorted({slot for slots in self.slots.values() for slot in slots})

    def nbytes(self) -> int:
        """Return the total size of the slot arrays in bytes.

        Example:
            >>> state.nbytes()  # doctest: +SKIP
            1024
        """
        return sum(a.nbytes for slots in self.slots.values() for a in slots.values())

    def summary(self) -> dict[str, Any]:
        """Return a JSON-ready summary: algorithm, step, hyperparameters, slots.

        Example:
            >>> state.summary()["slots"]  # doctest: +SKIP
            {'m': 2, 'v': 2}
        """
        counts = {slot: 0 for slot in self.slot_names()}
        for slots in self.slots.values():
            for slot in slots:
                counts[slot] += 1
        return {
            "algorithm": self.algorithm,
            "class": self.native_class,
            "step": self.step,
            "hyperparameters": self.hyperparameters,
            "parameters": len(self.parameters),
            "slots": counts,
            "slot_bytes": self.nbytes(),
            "schedule": None if self.schedule is None else self.schedule.get("class"),
        }


def to_plain(value: Any, where: str) -> Any:
    """Return ``value`` as JSON-ready data that :func:`from_plain` turns back exactly.

    Tuples become ``{"__tuple__": [...]}`` and non-finite floats
    ``{"__float__": "inf"}``; anything that is not plain data raises
    :class:`UnsupportedOptimizerError` naming ``where``.

    Example:
        >>> to_plain({"betas": (0.9, 0.999), "best": float("inf")}, "adam")
        {'betas': {'__tuple__': [0.9, 0.999]}, 'best': {'__float__': 'inf'}}
    """
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"__float__": repr(value)}
    if isinstance(value, tuple):
        return {"__tuple__": [to_plain(item, f"{where}[{i}]") for i, item in enumerate(value)]}
    if isinstance(value, list):
        return [to_plain(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, dict) and all(isinstance(key, str) for key in value):
        if {"__tuple__", "__float__"} & value.keys():
            raise UnsupportedOptimizerError(f"{where} uses a reserved key {sorted(value)}.")
        return {key: to_plain(item, f"{where}[{key!r}]") for key, item in value.items()}
    raise UnsupportedOptimizerError(
        f"{where} is a {type(value).__module__}.{type(value).__qualname__}, which is not plain "
        "data (None, bool, int, float, str, list, tuple, dict with str keys); polybundle "
        "stores optimizer and schedule state without pickle. Use plain values there."
    )


def from_plain(value: Any) -> Any:
    """Invert :func:`to_plain`.

    Example:
        >>> from_plain({"__tuple__": [0.9, 0.999]})
        (0.9, 0.999)
    """
    if isinstance(value, list):
        return [from_plain(item) for item in value]
    if isinstance(value, dict):
        if value.keys() == {"__tuple__"}:
            return tuple(from_plain(item) for item in value["__tuple__"])
        if value.keys() == {"__float__"}:
            return float(value["__float__"])
        return {key: from_plain(item) for key, item in value.items()}
    return value


def encode_optimizer(state: OptimizerState) -> tuple[bytes, bytes]:
    """Return ``(optimizer.json bytes, optimizer.safetensors bytes)`` for ``state``.

    Example:
        >>> document, arrays = encode_optimizer(state)  # doctest: +SKIP
    """
    from safetensors.numpy import save

    arrays: dict[str, np.ndarray] = {}
    for tensor, slots in state.slots.items():
        for slot, array in slots.items():
            if "/" in slot or not slot:
                raise UnsupportedOptimizerError(f"slot name {slot!r} must be non-empty, no '/'.")
            arrays[f"{slot}/{tensor}"] = np.ascontiguousarray(array)
    document = {
        "format": DOCUMENT_FORMAT,
        "version": DOCUMENT_VERSION,
        "algorithm": state.algorithm,
        "backend": state.backend,
        "class": state.native_class,
        "step": state.step,
        "groups": state.groups,
        "slots": {tensor: sorted(slots) for tensor, slots in state.slots.items()},
        "schedule": state.schedule,
        "native": state.native,
    }
    try:
        text = json.dumps(document, allow_nan=False, indent=1)
    except (TypeError, ValueError) as exc:
        raise UnsupportedOptimizerError(
            f"the {state.native_class} state is not plain JSON ({exc}); it cannot be stored "
            "without pickle."
        ) from None
    return text.encode("utf-8"), save(arrays, metadata={"format": DOCUMENT_FORMAT})


_REQUIRED = {
    "format": str, "version": int, "algorithm": str, "backend": str, "class": str,
    "groups": list, "slots": dict, "native": dict,
}


def _check_document(document: Any, where: str) -> None:
    if not isinstance(document, dict):
        raise FormatError(f"{where}/{STATE_MEMBER} holds a {type(document).__name__}; expected "
                          "a JSON object.")
    for key, kind in _REQUIRED.items():
        if not isinstance(document.get(key), kind):
            raise FormatError(
                f"{where}/{STATE_MEMBER}: {key!r} is {document.get(key)!r}; expected a "
                f"{kind.__name__}. The optimizer state is damaged or not polybundle's."
            )
    if document["format"] != DOCUMENT_FORMAT or document["version"] > DOCUMENT_VERSION:
        raise FormatError(
            f"{where}/{STATE_MEMBER} is {document['format']!r} version {document['version']}; "
            f"this polybundle reads {DOCUMENT_FORMAT!r} up to version {DOCUMENT_VERSION}. "
            "Upgrade polybundle."
        )
    step = document.get("step")
    if step is not None and (not isinstance(step, int) or step < 0):
        raise FormatError(f"{where}/{STATE_MEMBER}: step is {step!r}; expected an int >= 0.")
    for group in document["groups"]:
        if not isinstance(group, dict) or not isinstance(group.get("parameters"), list) \
                or not isinstance(group.get("hyperparameters"), dict):
            raise FormatError(
                f"{where}/{STATE_MEMBER}: group {group!r} needs 'parameters' (a list) and "
                "'hyperparameters' (an object)."
            )


def summarize_document(document_bytes: bytes, *, where: str) -> dict[str, Any]:
    """Summarize ``optimizer.json`` alone (no arrays read): algorithm, step, slots.

    Example:
        >>> summarize_document(encode_optimizer(state)[0], where="net")["slots"]  # doctest: +SKIP
        {'m': 4, 'v': 4}
    """
    try:
        document = json.loads(document_bytes)
    except (ValueError, UnicodeDecodeError) as exc:
        raise FormatError(f"{where}/{STATE_MEMBER} is not valid JSON ({exc}).") from None
    _check_document(document, where)
    counts: dict[str, int] = {}
    for names in document["slots"].values():
        for slot in names:
            counts[slot] = counts.get(slot, 0) + 1
    groups = document["groups"]
    schedule = document.get("schedule")
    return {
        "algorithm": document["algorithm"],
        "class": document["class"],
        "step": document.get("step"),
        "hyperparameters": groups[0]["hyperparameters"] if groups else {},
        "parameters": sum(len(group["parameters"]) for group in groups),
        "slots": dict(sorted(counts.items())),
        "schedule": schedule.get("class") if isinstance(schedule, dict) else None,
    }


def decode_optimizer(document_bytes: bytes, arrays_bytes: bytes, *, where: str) -> OptimizerState:
    """Parse the two members written by :func:`encode_optimizer` and cross-check them.

    ``where`` (the role) is used in error messages.

    Example:
        >>> decode_optimizer(b"{}", b"", where="net")
        Traceback (most recent call last):
        ...
        polybundle.errors.FormatError: net/optimizer.json: 'format' is None; ...
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load

    try:
        document = json.loads(document_bytes)
    except (ValueError, UnicodeDecodeError) as exc:
        raise FormatError(f"{where}/{STATE_MEMBER} is not valid JSON ({exc}).") from None
    _check_document(document, where)
    try:
        arrays = load(arrays_bytes)
    except (SafetensorError, ValueError) as exc:
        raise FormatError(f"{where}/{SLOTS_MEMBER} is not a safetensors file ({exc}).") from None
    listed = {f"{slot}/{tensor}" for tensor, slots in document["slots"].items() for slot in slots}
    if listed != arrays.keys():
        raise FormatError(
            f"{where}/{STATE_MEMBER} lists slot arrays {sorted(listed - arrays.keys())[:5]} "
            f"that {SLOTS_MEMBER} lacks, or {SLOTS_MEMBER} holds unlisted ones "
            f"{sorted(arrays.keys() - listed)[:5]}. The optimizer state is damaged."
        )
    slots = {
        tensor: {slot: arrays[f"{slot}/{tensor}"] for slot in names}
        for tensor, names in document["slots"].items()
    }
    return OptimizerState(
        algorithm=document["algorithm"],
        backend=document["backend"],
        native_class=document["class"],
        step=document.get("step"),
        groups=document["groups"],
        slots=slots,
        schedule=document.get("schedule"),
        native=document["native"],
    )
