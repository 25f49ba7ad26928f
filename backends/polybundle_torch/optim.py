"""PyTorch optimizer and RNG state to and from the neutral form.

Supported: ``torch.optim.Adam``, ``AdamW``, ``SGD`` and ``RMSprop`` (exact
classes; a subclass may change the update, so it is refused), with any
``torch.optim.lr_scheduler`` whose ``state_dict()`` is plain data. Slots are
keyed by the model's ``state_dict`` names and keep the parameter's shape, so
their layout is the weight's (``out,in`` for ``Linear``, ...).

Neutral slot names: ``exp_avg`` -> ``m``, ``exp_avg_sq`` -> ``v``,
``max_exp_avg_sq`` -> ``v_max``, ``momentum_buffer`` -> ``momentum``,
``square_avg`` and ``grad_avg`` unchanged.

Conversion to and from other backends goes through the neutral convention of
:mod:`polybundle.model.optimizer_conversion`, which uses PyTorch's units: slots
keep their values (:func:`optimizer_to_neutral`, :func:`optimizer_from_neutral`).

Example:
    >>> import torch
    >>> model = torch.nn.Linear(3, 2)
    >>> state = export_optimizer(model, torch.optim.Adam(model.parameters()))
    >>> restore_optimizer(model, torch.optim.Adam(model.parameters()), state, [])
"""

from __future__ import annotations

import base64
import math
from typing import Any

import numpy as np

from polybundle.errors import FormatError, OptimizerMismatchError, UnsupportedOptimizerError
from polybundle.model.backend import TensorSpec
from polybundle.model.optimizer import (
    MAX_STEP,
    OptimizerState,
    check_hyperparameter,
    from_plain,
    to_plain,
)
from polybundle.model.optimizer_conversion import NeutralOptimizer, refuse
from polybundle_torch.arrays import from_numpy, host_copy

_ALGORITHMS = {"Adam": "adam", "AdamW": "adamw", "SGD": "sgd", "RMSprop": "rmsprop"}
_SLOTS = {
    "exp_avg": "m",
    "exp_avg_sq": "v",
    "max_exp_avg_sq": "v_max",
    "momentum_buffer": "momentum",
    "square_avg": "square_avg",
    "grad_avg": "grad_avg",
}
_NATIVE_SLOTS = {neutral: native for native, neutral in _SLOTS.items()}
NATIVE_CLASSES = {
    "adam": "torch.optim.adam.Adam",
    "adamw": "torch.optim.adamw.AdamW",
    "sgd": "torch.optim.sgd.SGD",
    "rmsprop": "torch.optim.rmsprop.RMSprop",
}
"""The qualified class of each neutral algorithm (what :func:`export_optimizer` records)."""
_HYPER = {
    "lr": "learning_rate",
    "eps": "epsilon",
    "weight_decay": "weight_decay",
    "amsgrad": "amsgrad",
    "momentum": "momentum",
    "dampening": "dampening",
    "nesterov": "nesterov",
    "alpha": "rho",
    "centered": "centered",
    "maximize": "maximize",
}


def _qualified(obj: Any) -> str:
    kind = type(obj)
    return f"{kind.__module__}.{kind.__qualname__}"


def _algorithm(optimizer: Any) -> str:
    import torch

    kind = type(optimizer)
    if getattr(torch.optim, kind.__name__, None) is kind and kind.__name__ in _ALGORITHMS:
        return _ALGORITHMS[kind.__name__]
    raise UnsupportedOptimizerError(
        f"the PyTorch optimizer {_qualified(optimizer)} is not supported for neutral state; "
        f"supported: {', '.join(f'torch.optim.{n}' for n in _ALGORITHMS)}. Save the weights "
        "without optimizers=, or use a supported optimizer."
    )


def _neutral_hyperparameters(group: dict[str, Any]) -> dict[str, Any]:
    neutral = {_HYPER[key]: group[key] for key in _HYPER if key in group}
    if "betas" in group:
        neutral["beta_1"], neutral["beta_2"] = (float(b) for b in group["betas"])
    if hasattr(neutral.get("learning_rate"), "item"):
        neutral["learning_rate"] = float(neutral["learning_rate"])
    return neutral


def _parameter_names(model: Any) -> dict[int, str]:
    return {id(parameter): name for name, parameter in model.named_parameters()}


def _optimizer_names(model: Any, optimizer: Any, *, saving: bool) -> list[list[str]]:
    """Return each group's parameter names; raise if one is not ``model``'s."""
    names = _parameter_names(model)
    groups = [[names.get(id(p)) for p in group["params"]] for group in optimizer.param_groups]
    unbound = sum(name is None for group in groups for name in group)
    if unbound:
        action = "saved" if saving else "restored into"
        raise OptimizerMismatchError(
            f"{_qualified(optimizer)} updates {unbound} parameter(s) that are not parameters "
            f"of the {type(model).__name__} being {action}; expected "
            "an optimizer made from that model's parameters, e.g. "
            "torch.optim.Adam(model.parameters())."
        )
    return groups  # type: ignore[return-value]


def _schedule(scheduler: Any, optimizer: Any) -> dict[str, Any] | None:
    if scheduler is None:
        return None
    if getattr(scheduler, "optimizer", None) is not optimizer:
        raise OptimizerMismatchError(
            f"the scheduler {_qualified(scheduler)} is not attached to the optimizer being "
            "saved; pass the scheduler made for that optimizer."
        )
    state = to_plain(scheduler.state_dict(), f"{_qualified(scheduler)}.state_dict()")
    return {"class": _qualified(scheduler), "state": state}


def export_optimizer(
    model: Any, optimizer: Any, scheduler: Any | None = None, reuse: OptimizerState | None = None
) -> OptimizerState:
    """Return the neutral state of a PyTorch optimizer bound to ``model``'s parameters.

    Slots are host copies; with ``reuse`` (an earlier export of the same
    optimizer that nothing reads any more) they are copied into its arrays.

    Example:
        >>> import torch
        >>> model = torch.nn.Linear(3, 2)
        >>> export_optimizer(model, torch.optim.SGD(model.parameters(), lr=0.1)).algorithm
        'sgd'
    """
    import torch

    algorithm = _algorithm(optimizer)
    groups = _optimizer_names(model, optimizer, saving=True)
    native = optimizer.state_dict()
    index_names = [name for group in groups for name in group]
    slots: dict[str, dict[str, np.ndarray]] = {}
    steps: dict[str, float] = {}
    for index, entry in native["state"].items():
        name = index_names[index]
        for key, value in entry.items():
            if key == "step":
                steps[name] = float(value)
            elif value is None:
                continue
            elif isinstance(value, torch.Tensor) and key in _SLOTS:
                previous = None if reuse is None else reuse.slots.get(name, {}).get(_SLOTS[key])
                slots.setdefault(name, {})[_SLOTS[key]] = host_copy(value, into=previous)
            else:
                raise UnsupportedOptimizerError(
                    f"{_qualified(optimizer)} keeps state {key!r} ({type(value).__name__}) "
                    f"for {name!r}, which polybundle does not know how to store."
                )
    settings = [
        to_plain({k: v for k, v in group.items() if k != "params"}, f"{_qualified(optimizer)}")
        for group in native["param_groups"]
    ]
    distinct_steps = set(steps.values())
    step = int(max(distinct_steps)) if distinct_steps else (None if algorithm == "sgd" else 0)
    extra: dict[str, Any] = {"param_groups": settings}
    if len(distinct_steps) > 1:
        extra["steps"] = steps
    return OptimizerState(
        algorithm=algorithm,
        backend="torch",
        native_class=_qualified(optimizer),
        step=step,
        groups=[
            {"parameters": names, "hyperparameters": _neutral_hyperparameters(group)}
            for names, group in zip(groups, optimizer.param_groups, strict=True)
        ],
        slots=slots,
        schedule=_schedule(scheduler, optimizer),
        native=extra,
    )


def _check_kind(optimizer: Any, state: OptimizerState) -> None:
    if state.backend != "torch" or state.native_class != _qualified(optimizer):
        raise OptimizerMismatchError(
            f"the bundle holds state of {state.native_class} ({state.backend}, "
            f"{state.algorithm}), but the optimizer given is {_qualified(optimizer)}; restore "
            f"into a freshly made {state.native_class.rpartition('.')[2]} of the same framework."
        )


def _check_groups(model: Any, optimizer: Any, state: OptimizerState) -> list[str]:
    groups = _optimizer_names(model, optimizer, saving=False)
    saved = [group["parameters"] for group in state.groups]
    if groups != saved:
        mine = [n for g in groups for n in g]
        raise OptimizerMismatchError(
            f"the optimizer's parameter groups {[len(g) for g in groups]} (tensors missing from "
            f"the bundle: {sorted(set(mine) - set(state.parameters))[:5]}) differ from the saved "
            f"ones {[len(g) for g in saved]} (tensors not in the optimizer: "
            f"{sorted(set(state.parameters) - set(mine))[:5]}); make the optimizer with the "
            "same parameters and groups, in the same order, as the one saved."
        )
    return [name for group in groups for name in group]


def _native_groups(optimizer: Any, state: OptimizerState) -> list[dict[str, Any]]:
    """Return the saved native settings of each group, checked against the fresh optimizer.

    Each setting must be one the optimizer has, of a plain type, in range, and
    agree with the neutral hyperparameter it mirrors; otherwise FormatError.
    """
    where = f"optimizer.json native settings of {state.native_class}"
    saved = state.native.get("param_groups")
    if not isinstance(saved, list) or len(saved) != len(state.groups):
        raise FormatError(
            f"{where}: 'param_groups' is {repr(saved)[:80]}; expected a list with one object "
            f"per group ({len(state.groups)}). The optimizer state is damaged; re-save it."
        )
    fresh = optimizer.param_groups[0]
    groups = []
    for index, (settings, group) in enumerate(zip(saved, state.groups, strict=True)):
        settings = from_plain(settings)
        if not isinstance(settings, dict):
            raise FormatError(f"{where}: group {index} is {repr(settings)[:80]}; expected an "
                              "object. The optimizer state is damaged; re-save it.")
        unknown = sorted(
            key for key, value in settings.items()
            if key == "params" or key not in fresh and not _harmless(value)
        )
        if unknown:
            raise FormatError(
                f"{where}: group {index} sets {unknown[:5]}, which "
                f"{type(optimizer).__name__} does not have, to values that are not flags or "
                "numbers. The optimizer state is damaged; re-save it."
            )
        for key, value in settings.items():
            _check_native_setting(key, value, fresh.get(key), f"{where} group {index}")
            neutral = group["hyperparameters"].get(_HYPER.get(key, ""), value)
            if key in _HYPER and neutral != value:
                raise FormatError(
                    f"{where}: group {index} has {key}={value!r} but the neutral "
                    f"{_HYPER[key]} is {neutral!r}; they must agree. The optimizer state was "
                    "altered; re-save it."
                )
        groups.append(settings)
    return groups


def _harmless(value: Any) -> bool:
    """Return True for a setting a newer torch may add: None, a flag or a finite number."""
    if value is None or isinstance(value, bool):
        return True
    return isinstance(value, (int, float)) and math.isfinite(value)


def _kind(value: Any) -> str:
    """Return ``"flag"``, ``"number"``, ``"text"``, ``"tuple"`` or ``"other"``."""
    if isinstance(value, bool):
        return "flag"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "text", tuple: "tuple"}.get(type(value), "other")


def _check_native_setting(key: str, value: Any, default: Any, where: str) -> None:
    if key in _HYPER or key == "initial_lr":
        check_hyperparameter(_HYPER.get(key, "learning_rate"), value, where=where)
    elif key == "betas":
        if not isinstance(value, tuple) or len(value) != 2:
            raise FormatError(f"{where}: betas is {repr(value)[:60]}; expected two numbers. "
                              "The optimizer state is damaged; re-save it.")
        for beta in value:
            check_hyperparameter("beta_1", beta, where=where)
    if value is None or default is None:  # an optional flag or number (foreach, fused, ...)
        same_kind = _harmless(value)
    else:
        same_kind = _kind(value) == _kind(default)
    if not same_kind:
        raise FormatError(
            f"{where}: {key} is {repr(value)[:60]}, but {type(default).__name__} settings are "
            "expected there. The optimizer state is damaged; re-save it."
        )


def _steps(state: OptimizerState, names: list[str]) -> dict[str, float]:
    """Return the per-parameter step counts kept in ``native``, checked."""
    steps = state.native.get("steps", {})
    valid = isinstance(steps, dict) and all(
        name in names
        and isinstance(value, (int, float))
        and not isinstance(value, bool)
        and 0 <= value <= MAX_STEP
        for name, value in steps.items()
    )
    if not valid:
        raise FormatError(
            f"optimizer.json: native 'steps' is {repr(steps)[:80]}; expected an object mapping "
            "the optimizer's tensor names to step counts >= 0. The optimizer state is "
            "damaged; re-save it."
        )
    return steps


def _check_slots(model: Any, state: OptimizerState) -> None:
    parameters = dict(model.named_parameters())
    for name, slots in state.slots.items():
        for slot, array in slots.items():
            if slot not in _NATIVE_SLOTS:
                raise OptimizerMismatchError(
                    f"slot {slot!r} of {name!r} is not one PyTorch optimizers keep "
                    f"({sorted(_NATIVE_SLOTS)}); the state is not a PyTorch optimizer's."
                )
            if tuple(array.shape) != tuple(parameters[name].shape):
                raise OptimizerMismatchError(
                    f"slot {slot!r} of {name!r} has shape {array.shape}, but the parameter has "
                    f"{tuple(parameters[name].shape)}; the model differs from the one saved."
                )


def restore_optimizer(
    model: Any,
    optimizer: Any,
    state: OptimizerState,
    specs: list[TensorSpec],
    scheduler: Any | None = None,
) -> None:
    """Load neutral ``state`` into a fresh PyTorch optimizer bound to ``model``.

    ``specs`` are unused: PyTorch's neutral names are its ``state_dict`` keys.
    Everything is checked before the optimizer changes: its kind, groups,
    slot names and shapes, and the saved native settings (types, ranges,
    agreement with the neutral hyperparameters).

    Example:
        >>> import torch
        >>> model = torch.nn.Linear(3, 2)
        >>> state = export_optimizer(model, torch.optim.Adam(model.parameters(), lr=0.1))
        >>> fresh = torch.optim.Adam(model.parameters())
        >>> restore_optimizer(model, fresh, state, [])
        >>> fresh.param_groups[0]["lr"]
        0.1
    """
    import torch

    _check_kind(optimizer, state)
    names = _check_groups(model, optimizer, state)
    _check_slots(model, state)
    if state.schedule is not None:
        if scheduler is None or state.schedule["class"] != _qualified(scheduler):
            raise OptimizerMismatchError(
                f"the bundle holds {state.schedule['class']} state, but the scheduler given is "
                f"{None if scheduler is None else _qualified(scheduler)}; pass a fresh one of "
                "the same class, attached to this optimizer."
            )
    settings = _native_groups(optimizer, state)
    steps = _steps(state, names)
    native_state: dict[int, dict[str, Any]] = {}
    for index, name in enumerate(names):
        entry: dict[str, Any] = {}
        if name in steps or (state.step is not None and name in state.slots):
            entry["step"] = torch.tensor(float(steps.get(name, state.step)), dtype=torch.float32)
        for slot, array in state.slots.get(name, {}).items():
            entry[_NATIVE_SLOTS[slot]] = from_numpy(array)
        if entry:
            native_state[index] = entry
    param_groups = []
    start = 0
    for group, native in zip(state.groups, settings, strict=True):
        count = len(group["parameters"])
        param_groups.append({**native, "params": list(range(start, start + count))})
        start += count
    optimizer.load_state_dict({"state": native_state, "param_groups": param_groups})
    if scheduler is not None and state.schedule is not None:
        scheduler.load_state_dict(from_plain(state.schedule.get("state")))


def capture_rng() -> dict[str, Any]:
    """Return torch's CPU generator state (base64 of its bytes).

    Example:
        >>> sorted(capture_rng())
        ['cpu']
    """
    import torch

    return {"cpu": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode("ascii")}


def restore_rng(state: dict[str, Any]) -> None:
    """Put back the CPU generator state from :func:`capture_rng`; a bad one is a FormatError.

    Example:
        >>> restore_rng(capture_rng())
    """
    import binascii

    import torch

    encoded = state.get("cpu")
    try:
        raw = base64.b64decode(encoded, validate=True) if isinstance(encoded, str) else None
    except (binascii.Error, ValueError):
        raw = None
    expected = torch.get_rng_state().numel()
    if raw is None or len(raw) != expected:
        raise FormatError(
            f"rng.json: the torch CPU generator state is {repr(encoded)[:60]}; expected base64 "
            f"of {expected} bytes. The RNG state is damaged or from another torch; re-save it."
        )
    try:
        torch.set_rng_state(torch.frombuffer(bytearray(raw), dtype=torch.uint8))
    except RuntimeError as exc:
        raise FormatError(
            f"rng.json: torch refuses the recorded CPU generator state ({exc}). Re-save it."
        ) from None


# --- conversion: the neutral convention is PyTorch's own units, so slots keep their values ----


def optimizer_to_neutral(state: OptimizerState) -> NeutralOptimizer:
    """Describe a PyTorch optimizer state in the neutral convention.

    Refused: ``maximize``, ``dampening``, weight decay added to the gradient
    (L2: ``Adam`` without ``decoupled_weight_decay``, ``SGD``, ``RMSprop``) and
    parameters that have taken different numbers of steps.

    Example:
        >>> state = OptimizerState("sgd", "torch", NATIVE_CLASSES["sgd"], None,
        ...     [{"parameters": ["w"], "hyperparameters": {"learning_rate": 0.1,
        ...       "momentum": 0.9, "dampening": 0, "weight_decay": 0, "nesterov": False,
        ...       "maximize": False}}], {"w": {"momentum": np.ones(2, np.float32)}})
        >>> neutral = optimizer_to_neutral(state)
        >>> neutral.step, neutral.hyperparameters["momentum"]
        (0, 0.9)
    """
    hyper = dict(state.hyperparameters)
    for key, allowed in (("maximize", False), ("dampening", 0)):
        if hyper.pop(key, allowed) != allowed:
            raise refuse(state, f"{key}={state.hyperparameters[key]!r} has no neutral form",
                         f"Train with {key}={allowed!r} to convert its state.")
    if state.native.get("steps"):
        raise refuse(state, "its parameters have taken different numbers of steps",
                     "The neutral form keeps one step count for all parameters; convert a "
                     "state where every parameter was updated at every step.")
    first = (state.native.get("param_groups") or [{}])[0]
    decoupled = bool(first.get("decoupled_weight_decay", state.algorithm == "adamw"))
    weight_decay = float(hyper.get("weight_decay") or 0.0)
    if weight_decay and (not decoupled or state.algorithm in ("sgd", "rmsprop")):
        raise refuse(
            state, f"weight_decay={weight_decay} is added to the gradient (L2) in "
            f"{state.native_class}, but converted weight decay is applied to the weights "
            "(decoupled)", "Use AdamW (or Adam with decoupled_weight_decay=True), or no "
            "weight decay.",
        )
    hyper["weight_decay"] = weight_decay
    return NeutralOptimizer(
        algorithm=state.algorithm,
        hyperparameters=hyper,
        step=state.step or 0,
        parameters=state.parameters,
        slots=state.slots,
    )


def _group(neutral: NeutralOptimizer) -> dict[str, Any]:
    """Return the ``param_groups`` entry a fresh optimizer would have for ``neutral``."""
    hyper, algorithm = neutral.hyperparameters, neutral.algorithm
    if hyper.get("epsilon_root"):
        raise neutral.refuse(f"epsilon_root={hyper['epsilon_root']} (epsilon inside the square "
                             "root) has no PyTorch counterpart", "Train with epsilon_root=0.",
                             "torch")
    decay = hyper["weight_decay"]
    if decay and algorithm in ("sgd", "rmsprop"):
        raise neutral.refuse(
            f"weight_decay={decay} is applied to the weights (decoupled), but "
            f"{NATIVE_CLASSES[algorithm]} adds it to the gradient (L2)",
            "Train without weight decay, or with AdamW.", "torch",
        )
    common = {"maximize": False, "foreach": None, "differentiable": False}
    if algorithm in ("adam", "adamw"):
        return {"lr": hyper["learning_rate"], "betas": (hyper["beta_1"], hyper["beta_2"]),
                "eps": hyper["epsilon"], "weight_decay": decay, "amsgrad": hyper["amsgrad"],
                **common, "capturable": False, "fused": None,
                "decoupled_weight_decay": algorithm == "adamw" or bool(decay)}
    if algorithm == "sgd":
        return {"lr": hyper["learning_rate"], "momentum": hyper["momentum"], "dampening": 0,
                "weight_decay": 0, "nesterov": hyper["nesterov"], **common, "fused": None}
    return {"lr": hyper["learning_rate"], "momentum": hyper["momentum"], "alpha": hyper["rho"],
            "eps": hyper["epsilon"], "centered": hyper["centered"], "weight_decay": 0,
            "capturable": False, **common}


def optimizer_from_neutral(neutral: NeutralOptimizer, specs: list[TensorSpec]) -> OptimizerState:
    """Return the PyTorch optimizer state for a converted ``neutral`` description.

    PyTorch's ``SGD`` counts no steps, so its state has ``step=None``.

    Example:
        >>> neutral = NeutralOptimizer("sgd", {"learning_rate": 0.1, "momentum": 0.9}, 3,
        ...     ["w"], {"w": {"momentum": np.ones(2, np.float32)}})
        >>> state = optimizer_from_neutral(neutral, [])
        >>> state.native_class, state.step, state.native["param_groups"][0]["lr"]
        ('torch.optim.sgd.SGD', None, 0.1)
    """
    group = _group(neutral)
    return OptimizerState(
        algorithm=neutral.algorithm,
        backend="torch",
        native_class=NATIVE_CLASSES[neutral.algorithm],
        step=None if neutral.algorithm == "sgd" else neutral.step,
        groups=[{"parameters": list(neutral.parameters),
                 "hyperparameters": _neutral_hyperparameters(group)}],
        slots={name: dict(held) for name, held in neutral.slots.items()},
        native={"param_groups": [to_plain(group, "converted PyTorch settings")]},
    )
