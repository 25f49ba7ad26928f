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
    >>> state = OptimizerState("adam", "numpy", "numpy.Adam", 3,
    ...     groups=[{"parameters": ["w"], "hyperparameters": {"learning_rate": 0.1}}],
    ...     slots={"w": {"m": np.zeros(2, np.float32)}})
    >>> decode_optimizer(*encode_optimizer(state), where="net").step
    3
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np

from polybundle.errors import FormatError, UnsupportedOptimizerError
from polybundle.format.arrays import load_arrays, safetensors_layout, save_arrays, write_arrays
from polybundle.format.jsondoc import load_json
from polybundle.safety.dtypes import dtype_label

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
    {neutral name: value}}`` (one per parameter group; some frameworks have one).
    ``slots`` maps a tensor name to ``{slot name: array}``. ``step`` is the
    number of updates applied (``None`` where the optimizer does not count
    them, e.g. some SGD implementations). ``schedule`` is the learning-rate schedule state
    (plain data) or ``None``; ``native`` holds the backend's own exact settings
    so a restore in the same framework is exact.

    Example:
        >>> state = OptimizerState("adam", "numpy", "numpy.Adam", 10,
        ...     groups=[{"parameters": ["w", "b"], "hyperparameters": {"learning_rate": 0.001}}],
        ...     slots={"w": {"m": np.zeros((2, 3), np.float32), "v": np.zeros((2, 3), np.float32)},
        ...            "b": {"m": np.zeros(2, np.float32), "v": np.zeros(2, np.float32)}})
        >>> state.algorithm, state.step, sorted(state.slots["w"])
        ('adam', 10, ['m', 'v'])
        >>> state.parameters, state.hyperparameters["learning_rate"], state.slot_names()
        (['w', 'b'], 0.001, ['m', 'v'])
        >>> state.nbytes(), state.summary()["slots"]
        (64, {'m': 2, 'v': 2})
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
            >>> OptimizerState("sgd", "numpy", "numpy.SGD", None, [{"parameters": ["w", "b"],
            ...     "hyperparameters": {}}], {}).parameters
            ['w', 'b']
        """
        return [name for group in self.groups for name in group["parameters"]]

    @property
    def hyperparameters(self) -> dict[str, Any]:
        """Return the first parameter group's neutral hyperparameters.

        Example:
            >>> OptimizerState("sgd", "numpy", "numpy.SGD", None, [{"parameters": [],
            ...     "hyperparameters": {"learning_rate": 0.001}}], {}).hyperparameters
            {'learning_rate': 0.001}
        """
        return self.groups[0]["hyperparameters"] if self.groups else {}

    def slot_names(self) -> list[str]:
        """Return every slot name used by any tensor, sorted.

        Example:
            >>> OptimizerState("adam", "numpy", "numpy.Adam", 1, [], {"w": {
            ...     "v": np.zeros(2), "m": np.zeros(2)}}).slot_names()
            ['m', 'v']
        """
        return sorted({slot for slots in self.slots.values() for slot in slots})

    def nbytes(self) -> int:
        """Return the total size of the slot arrays in bytes.

        Example:
            >>> OptimizerState("sgd", "numpy", "numpy.SGD", 1, [], {"w": {
            ...     "momentum": np.zeros(256, np.float32)}}).nbytes()
            1024
        """
        return sum(a.nbytes for slots in self.slots.values() for a in slots.values())

    def summary(self) -> dict[str, Any]:
        """Return a JSON-ready summary: algorithm, step, hyperparameters, slots.

        Example:
            >>> slots = {name: {"m": np.zeros(1), "v": np.zeros(1)} for name in ("w", "b")}
            >>> OptimizerState("adam", "numpy", "numpy.Adam", 1, [], slots).summary()["slots"]
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
    """Invert :func:`to_plain`; a malformed ``__tuple__``/``__float__`` raises FormatError.

    Example:
        >>> from_plain({"__tuple__": [0.9, 0.999]})
        (0.9, 0.999)
        >>> from_plain({"__float__": "-inf"})
        -inf
    """
    if isinstance(value, list):
        return [from_plain(item) for item in value]
    if isinstance(value, dict):
        if value.keys() == {"__tuple__"}:
            if not isinstance(value["__tuple__"], list):
                raise FormatError(
                    f"optimizer state holds {{'__tuple__': {repr(value['__tuple__'])[:60]}}}; "
                    "expected a list inside. The optimizer state is damaged."
                )
            return tuple(from_plain(item) for item in value["__tuple__"])
        if value.keys() == {"__float__"}:
            text = value["__float__"]
            if text not in ("inf", "-inf", "nan"):
                raise FormatError(
                    f"optimizer state holds {{'__float__': {repr(text)[:60]}}}; expected 'inf', "
                    "'-inf' or 'nan'. The optimizer state is damaged."
                )
            return float(text)
        return {key: from_plain(item) for key, item in value.items()}
    return value


def slot_arrays(state: OptimizerState) -> dict[str, np.ndarray]:
    """Return ``state``'s slot arrays keyed as ``optimizer.safetensors`` stores them.

    Keys are ``"<slot>/<tensor name>"``; the arrays are not copied.

    Example:
        >>> state = OptimizerState("sgd", "numpy", "numpy.SGD", 2, [], {"w": {"momentum":
        ...     np.ones(2)}})
        >>> sorted(slot_arrays(state))
        ['momentum/w']
    """
    arrays: dict[str, np.ndarray] = {}
    for tensor, slots in state.slots.items():
        for slot, array in slots.items():
            if "/" in slot or not slot:
                raise UnsupportedOptimizerError(f"slot name {slot!r} must be non-empty, no '/'.")
            arrays[f"{slot}/{tensor}"] = np.asarray(array, order="C")  # 0-d stays 0-d
    return arrays


def encode_optimizer_document(state: OptimizerState) -> bytes:
    """Return the ``optimizer.json`` bytes of ``state`` (everything but the slot arrays).

    Raises :class:`UnsupportedOptimizerError` when the state is not plain JSON
    or a slot name or slot dtype cannot be stored, so a save can refuse
    before it writes anything.

    Example:
        >>> state = OptimizerState("sgd", "numpy", "numpy.SGD", 2, [{"parameters": ["w"],
        ...     "hyperparameters": {"learning_rate": 0.1}}], {"w": {"momentum": np.ones(2)}})
        >>> json.loads(encode_optimizer_document(state))["slots"]
        {'w': ['momentum']}
    """
    safetensors_layout(slot_arrays(state))  # every slot name and dtype can be stored
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
    return text.encode("utf-8")


def write_slots(state: OptimizerState, stream: BinaryIO) -> None:
    """Write ``state``'s ``optimizer.safetensors`` into ``stream``, array by array.

    Example:
        >>> import io
        >>> state = OptimizerState("sgd", "numpy", "numpy.SGD", 2, [], {"w": {"momentum":
        ...     np.ones(2)}})
        >>> stream = io.BytesIO()
        >>> write_slots(state, stream)
        >>> load_arrays(stream.getvalue(), where="net")["momentum/w"].tolist()
        [1.0, 1.0]
    """
    write_arrays(slot_arrays(state), stream, metadata={"format": DOCUMENT_FORMAT})


def encode_optimizer(state: OptimizerState) -> tuple[bytes, bytes]:
    """Return ``(optimizer.json bytes, optimizer.safetensors bytes)`` for ``state``.

    Example:
        >>> state = OptimizerState("sgd", "numpy", "numpy.SGD", 2, [{"parameters": ["w"],
        ...     "hyperparameters": {"learning_rate": 0.1}}], {"w": {"momentum": np.ones(2)}})
        >>> document, arrays = encode_optimizer(state)
        >>> json.loads(document)["slots"], sorted(load_arrays(arrays, where="net"))
        ({'w': ['momentum']}, ['momentum/w'])
    """
    document = encode_optimizer_document(state)
    return document, save_arrays(slot_arrays(state), metadata={"format": DOCUMENT_FORMAT})


_REQUIRED = {
    "format": str, "version": int, "algorithm": str, "backend": str, "class": str,
    "groups": list, "slots": dict, "native": dict,
}
COUNTING = ("adam", "adamw", "rmsprop")
"""Algorithms whose state always has a step count (bias correction; RMSprop counts too)."""
MAX_STEP = 2**63 - 1
"""Largest step count accepted (frameworks hold it in 64 bits at most)."""

_NON_NEGATIVE = ("learning_rate", "epsilon", "weight_decay", "momentum", "dampening")
_UNIT_INTERVAL = ("beta_1", "beta_2", "rho")
_FLAGS = ("amsgrad", "nesterov", "centered", "maximize")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_hyperparameter(name: str, value: Any, *, where: str) -> None:
    """Refuse a neutral hyperparameter of the wrong type or out of range (FormatError).

    ``learning_rate``, ``epsilon``, ``weight_decay``, ``momentum`` and
    ``dampening`` are finite numbers >= 0 (``weight_decay`` may be ``None``);
    ``beta_1``, ``beta_2`` and ``rho`` lie in [0, 1]; ``amsgrad``,
    ``nesterov``, ``centered`` and ``maximize`` are booleans. Other names are
    not checked here.

    Example:
        >>> check_hyperparameter("learning_rate", 0.1, where="net/optimizer.json")
        >>> check_hyperparameter("learning_rate", "0.1", where="net/optimizer.json")
        ... # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        polybundle.errors.FormatError: net/optimizer.json: learning_rate is '0.1'; expected ...
    """
    if name in _NON_NEGATIVE:
        if name == "weight_decay" and value is None:
            return
        valid = _is_number(value) and math.isfinite(value) and value >= 0
        expected = "a finite number >= 0"
    elif name in _UNIT_INTERVAL:
        valid = _is_number(value) and 0 <= value <= 1
        expected = "a number from 0 to 1"
    elif name in _FLAGS:
        valid = isinstance(value, bool)
        expected = "true or false"
    else:
        return
    if not valid:
        raise FormatError(
            f"{where}: {name} is {repr(value)[:60]}; expected {expected}. The optimizer state "
            "is damaged; re-save it."
        )


def _fail(where: str, found: str, expected: str) -> FormatError:
    return FormatError(
        f"{where}/{STATE_MEMBER}: {found}; expected {expected}. The optimizer state is "
        "damaged or not polybundle's; re-save it."
    )


def _check_header(document: Any, where: str) -> None:
    if not isinstance(document, dict):
        raise FormatError(f"{where}/{STATE_MEMBER} holds a {type(document).__name__}; expected "
                          "a JSON object.")
    for key, kind in _REQUIRED.items():
        value = document.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise _fail(where, f"{key!r} is {repr(value)[:80]}", f"a {kind.__name__}")
    if document["format"] != DOCUMENT_FORMAT or not 1 <= document["version"] <= DOCUMENT_VERSION:
        raise FormatError(
            f"{where}/{STATE_MEMBER} is {document['format'][:80]!r} version "
            f"{document['version']}; this polybundle reads {DOCUMENT_FORMAT!r} versions 1 to "
            f"{DOCUMENT_VERSION}. Upgrade polybundle if the bundle is newer."
        )
    step = document.get("step")
    if step is not None and (not _is_number(step) or not isinstance(step, int)
                             or not 0 <= step <= MAX_STEP):
        raise _fail(where, f"step is {repr(step)[:60]}", f"null or an integer from 0 to {MAX_STEP}")
    if step is None and document["algorithm"] in COUNTING:
        raise _fail(where, f"step is null for {document['algorithm'][:40]!r}",
                    "an integer: that algorithm's update depends on its step count")
    schedule = document.get("schedule")
    if schedule is not None and not (
        isinstance(schedule, dict) and isinstance(schedule.get("class"), str)
    ):
        raise _fail(where, f"schedule is {repr(schedule)[:80]}", "null or an object with 'class'")


def _check_groups(document: dict[str, Any], where: str) -> list[str]:
    """Check every group; return the parameter names in order (each exactly once)."""
    names: list[str] = []
    for index, group in enumerate(document["groups"]):
        if not isinstance(group, dict) or not isinstance(group.get("parameters"), list) \
                or not isinstance(group.get("hyperparameters"), dict):
            raise _fail(where, f"group {index} is {repr(group)[:80]}",
                        "an object with 'parameters' (a list) and 'hyperparameters' (an object)")
        for name in group["parameters"]:
            if not isinstance(name, str) or not name:
                raise _fail(where, f"group {index} names a parameter {repr(name)[:60]}",
                            "tensor names (non-empty strings)")
        for key, value in group["hyperparameters"].items():
            check_hyperparameter(key, value, where=f"{where}/{STATE_MEMBER} group {index}")
        names += group["parameters"]
    if len(set(names)) != len(names):
        twice = sorted({name for name in names if names.count(name) > 1})[:5]
        raise _fail(where, f"parameters {twice} appear more than once", "each tensor once")
    return names


def _check_slots(document: dict[str, Any], parameters: list[str], where: str) -> None:
    known = set(parameters)
    for tensor, slots in document["slots"].items():
        if tensor not in known:
            raise _fail(where, f"slots are given for {tensor[:100]!r}, which no group updates",
                        "slots only for the groups' parameters")
        valid = isinstance(slots, list) and all(
            isinstance(slot, str) and slot and "/" not in slot for slot in slots
        )
        if not valid or len(set(slots)) != len(slots):
            raise _fail(where, f"slots of {tensor[:100]!r} are {repr(slots)[:80]}",
                        "a list of distinct non-empty slot names without '/'")


def _check_document(document: Any, where: str) -> None:
    """Check ``optimizer.json`` fully: header, groups, hyperparameters, slot names."""
    _check_header(document, where)
    parameters = _check_groups(document, where)
    _check_slots(document, parameters, where)


def _parse_document(document_bytes: bytes, where: str) -> dict[str, Any]:
    document = load_json(document_bytes, where=f"{where}/{STATE_MEMBER}")
    _check_document(document, where)
    return document


def summarize_document(document_bytes: bytes, *, where: str) -> dict[str, Any]:
    """Summarize ``optimizer.json`` alone (no arrays read): algorithm, step, slots.

    Example:
        >>> state = OptimizerState("adam", "numpy", "numpy.Adam", 4, [{"parameters": ["w", "b"],
        ...     "hyperparameters": {}}], {name: {"m": np.zeros(1), "v": np.zeros(1)}
        ...                            for name in ("w", "b")})
        >>> summarize_document(encode_optimizer(state)[0], where="net")["slots"]
        {'m': 2, 'v': 2}
    """
    document = _parse_document(document_bytes, where)
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


def _check_arrays(
    arrays: dict[str, np.ndarray], specs: Sequence[Any] | None, parameters: list[str], where: str
) -> None:
    """Slot arrays are floating point; with ``specs``, each has its tensor's shape."""
    for key, array in arrays.items():
        if array.dtype.kind != "f" and dtype_label(array.dtype) not in _FLOAT8_AND_BF16:
            raise FormatError(
                f"{where}/{SLOTS_MEMBER}: {key[:100]!r} is {array.dtype}; expected a floating "
                "point slot array. The optimizer state is damaged."
            )
    if specs is None:
        return
    shapes = {spec.name: tuple(spec.shape) for spec in specs}
    unknown = [name for name in parameters if name not in shapes]
    if unknown:
        raise FormatError(
            f"{where}/{STATE_MEMBER} updates {unknown[:5]}, which the manifest does not list "
            "for this role. The optimizer state does not belong to this model."
        )
    for key, array in arrays.items():
        tensor = key.partition("/")[2]
        if tuple(array.shape) != shapes[tensor]:
            raise FormatError(
                f"{where}/{SLOTS_MEMBER}: {key[:100]!r} has shape {tuple(array.shape)}, but the "
                f"manifest gives {tensor[:100]!r} the shape {shapes[tensor]}. The optimizer state "
                "does not belong to this model, or was altered."
            )


_FLOAT8_AND_BF16 = ("bfloat16", "float8_e4m3fn", "float8_e5m2")


def decode_optimizer(
    document_bytes: bytes,
    arrays_bytes: bytes,
    *,
    where: str,
    specs: Sequence[Any] | None = None,
) -> OptimizerState:
    """Parse the two members written by :func:`encode_optimizer` and cross-check them.

    ``where`` (the role) is used in error messages. With ``specs`` (the
    role's :class:`~polybundle.model.backend.TensorSpec` list from the manifest),
    every updated tensor must be listed and every slot array must have its
    tensor's shape. Every problem raises :class:`FormatError`.

    Example:
        >>> decode_optimizer(b"{}", b"", where="net")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        polybundle.errors.FormatError: net/optimizer.json: 'format' is None; ...
    """
    document = _parse_document(document_bytes, where)
    arrays = load_arrays(arrays_bytes, where=f"{where}/{SLOTS_MEMBER}")
    listed = {f"{slot}/{tensor}" for tensor, slots in document["slots"].items() for slot in slots}
    if listed != arrays.keys():
        raise FormatError(
            f"{where}/{STATE_MEMBER} lists slot arrays {sorted(listed - arrays.keys())[:5]} "
            f"that {SLOTS_MEMBER} lacks, or {SLOTS_MEMBER} holds unlisted ones "
            f"{sorted(arrays.keys() - listed)[:5]}. The optimizer state is damaged."
        )
    parameters = [name for group in document["groups"] for name in group["parameters"]]
    _check_arrays(arrays, specs, parameters, where)
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
