"""Convert neutral optimizer state between PyTorch and Keras with the weights' plan.

Slots (Adam's ``m`` and ``v``, SGD's ``momentum`` ...) are keyed by the same
neutral tensor names as the weights and have their layout, so
:func:`convert_optimizer` moves each slot with the very
:class:`~polybundle.model.conversion.TensorMove` that moves its weight (same target
name, same permutation, same shape check). The step and hyperparameters are
carried; the native class and settings are those of the target framework.

Where the two frameworks store a slot in different units it is rescaled:
SGD's momentum is ``-lr * buffer`` in Keras and ``buffer`` (a sum of
gradients) in PyTorch; RMSprop's momentum is ``lr * buffer`` in Keras. Adam's
moments mean the same in both; the frameworks differ only in where epsilon
sits (see ``docs/conversion.md``, where its effect is measured). Settings one
framework cannot express (L2-coupled weight decay in Keras, PyTorch's
``maximize`` or ``dampening``, Keras' gradient clipping, learning-rate
schedules) are refused, never dropped.

Example:
    >>> state = bundle.optimizer_state("net")  # doctest: +SKIP
    >>> torch_state = convert_optimizer(state, plan, target="torch", target_specs=specs)
    >>> torch_state.native_class
    'torch.optim.adam.Adam'
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from polybundle.errors import ConversionError, OptimizerMismatchError, UnsupportedOptimizerError
from polybundle.model.backend import TensorSpec
from polybundle.model.canonical import relayout
from polybundle.model.conversion import ConversionPlan, TensorMove
from polybundle.model.optimizer import OptimizerState, to_plain

if TYPE_CHECKING:
    from polybundle.api.bundle import Bundle

NATIVE_CLASSES: dict[str, dict[str, str]] = {
    "torch": {
        "adam": "torch.optim.adam.Adam",
        "adamw": "torch.optim.adamw.AdamW",
        "sgd": "torch.optim.sgd.SGD",
        "rmsprop": "torch.optim.rmsprop.RMSprop",
    },
    "tensorflow": {
        "adam": "keras.src.optimizers.adam.Adam",
        "adamw": "keras.src.optimizers.adamw.AdamW",
        "sgd": "keras.src.optimizers.sgd.SGD",
        "rmsprop": "keras.src.optimizers.rmsprop.RMSprop",
    },
}
"""The native optimizer class of each neutral algorithm, per backend that converts state."""

SLOTS: dict[str, tuple[str, ...]] = {
    "adam": ("m", "v", "v_max"),
    "adamw": ("m", "v", "v_max"),
    "sgd": ("momentum",),
    "rmsprop": ("square_avg", "momentum", "grad_avg"),
}
"""Neutral slot names each algorithm may hold."""

_LR_SCALED = {("sgd", "momentum"): -1.0, ("rmsprop", "momentum"): 1.0}
"""Slots Keras stores as ``sign * lr * (PyTorch's buffer)``."""

_KERAS_CLIPPING = ("clipnorm", "clipvalue", "global_clipnorm")


def _refuse(state: OptimizerState, what: str, advice: str) -> UnsupportedOptimizerError:
    return UnsupportedOptimizerError(
        f"the {state.backend} {state.native_class} state cannot be converted: {what}. {advice}"
    )


def _source_hyperparameters(state: OptimizerState) -> dict[str, Any]:
    """Return the single group's neutral hyperparameters; refuse what the target cannot do."""
    distinct = [g["hyperparameters"] for g in state.groups]
    if any(h != distinct[0] for h in distinct[1:]):
        raise _refuse(state, f"its {len(distinct)} parameter groups have different settings",
                      "Keras optimizers have one group; use one group before saving.")
    hyper = dict(distinct[0]) if distinct else {}
    if state.backend == "torch":
        first = (state.native.get("param_groups") or [{}])[0]
        decoupled = bool(first.get("decoupled_weight_decay", state.algorithm == "adamw"))
        for key, allowed in (("maximize", False), ("dampening", 0)):
            if hyper.get(key, allowed) != allowed:
                raise _refuse(state, f"{key}={hyper[key]!r} has no Keras counterpart",
                              f"Train with {key}={allowed!r} to convert its state.")
        if state.native.get("steps"):
            raise _refuse(state, "its parameters have taken different numbers of steps",
                          "Keras keeps one step count for all variables; convert a state "
                          "where every parameter was updated at every step.")
    else:
        config = state.native.get("config", {})
        clipping = [key for key in _KERAS_CLIPPING if config.get(key) is not None]
        if clipping:
            raise _refuse(state, f"gradient clipping ({', '.join(clipping)}) is part of the Keras "
                          "optimizer but not of PyTorch's", "Clip in the PyTorch training loop "
                          "and save the Keras optimizer without clipping to convert it.")
        decoupled = True
    weight_decay = hyper.get("weight_decay") or 0.0
    if weight_decay and (not decoupled or state.algorithm in ("sgd", "rmsprop")):
        raise _refuse(
            state, f"weight_decay={weight_decay} is added to the gradient (L2) in PyTorch's "
            f"{state.algorithm} but applied to the weights (decoupled) in Keras'",
            "Use AdamW (or Adam with decoupled_weight_decay=True), or no weight decay.",
        )
    hyper["weight_decay"] = float(weight_decay)
    if state.backend == "tensorflow" and isinstance(hyper.get("learning_rate"), float):
        # Keras reports its float32 variable (0.009999999776...); keep the same float32 value,
        # written as the shortest decimal that gives it back (0.01).
        hyper["learning_rate"] = float(str(np.float32(hyper["learning_rate"])))
    if state.schedule is not None:
        raise _refuse(state, f"it has a learning-rate schedule ({state.schedule.get('class')}), "
                      "whose state differs between frameworks", "Convert a state saved with a "
                      "constant learning rate, and make the schedule again in the target.")
    if not isinstance(hyper.get("learning_rate"), (int, float)) or hyper["learning_rate"] <= 0:
        raise _refuse(state, f"learning rate {hyper.get('learning_rate')!r} is not a positive "
                      "number", "Save it with a positive float learning rate.")
    return hyper


def _neutral_target(algorithm: str, hyper: dict[str, Any]) -> dict[str, Any]:
    """Return the converted state's neutral hyperparameters (the algorithm's own keys)."""
    keys = {
        "adam": ("learning_rate", "beta_1", "beta_2", "epsilon", "amsgrad", "weight_decay"),
        "adamw": ("learning_rate", "beta_1", "beta_2", "epsilon", "amsgrad", "weight_decay"),
        "sgd": ("learning_rate", "momentum", "nesterov"),
        "rmsprop": ("learning_rate", "rho", "momentum", "epsilon", "centered"),
    }[algorithm]
    defaults = {"amsgrad": False, "momentum": 0.0, "nesterov": False, "centered": False}
    return {key: hyper.get(key, defaults.get(key)) for key in keys}


def _native_settings(target: str, algorithm: str, hyper: dict[str, Any]) -> dict[str, Any]:
    """Return the ``native`` part of the converted state, as the target backend restores it."""
    if target == "tensorflow":
        config = {**hyper, "weight_decay": hyper.get("weight_decay") or None,
                  **dict.fromkeys(_KERAS_CLIPPING)}
        return {"config": to_plain(config, "converted Keras config")}
    lr, group = hyper["learning_rate"], {}
    if algorithm in ("adam", "adamw"):
        group = {"lr": lr, "betas": (hyper["beta_1"], hyper["beta_2"]), "eps": hyper["epsilon"],
                 "weight_decay": hyper["weight_decay"], "amsgrad": hyper["amsgrad"],
                 "maximize": False, "foreach": None, "capturable": False,
                 "differentiable": False, "fused": None,
                 "decoupled_weight_decay": algorithm == "adamw" or bool(hyper["weight_decay"])}
    elif algorithm == "sgd":
        group = {"lr": lr, "momentum": hyper["momentum"], "dampening": 0, "weight_decay": 0,
                 "nesterov": hyper["nesterov"], "maximize": False, "foreach": None,
                 "differentiable": False, "fused": None}
    else:
        group = {"lr": lr, "momentum": hyper["momentum"], "alpha": hyper["rho"],
                 "eps": hyper["epsilon"], "centered": hyper["centered"], "weight_decay": 0,
                 "capturable": False, "foreach": None, "maximize": False,
                 "differentiable": False}
    return {"param_groups": [to_plain(group, "converted PyTorch settings")]}


def _required_slots(algorithm: str, hyper: dict[str, Any]) -> list[str]:
    """Return the slots a Keras optimizer with these settings keeps for every variable."""
    if algorithm in ("adam", "adamw"):
        return ["m", "v", "v_max"] if hyper["amsgrad"] else ["m", "v"]
    if algorithm == "sgd":
        return ["momentum"] if hyper["momentum"] else []
    return ["square_avg"] + (["momentum"] if hyper["momentum"] else []) \
        + (["grad_avg"] if hyper["centered"] else [])


def _moves_by_source(state: OptimizerState, plan: ConversionPlan) -> dict[str, TensorMove]:
    """Return the weight move of every tensor the optimizer updates; raise when one has none."""
    moves = {move.source: move for move in plan.moves if move.source is not None}
    names = list(dict.fromkeys([*state.parameters, *state.slots]))
    unknown = [name for name in names if name not in moves]
    if unknown or len(set(state.parameters)) != len(state.parameters):
        raise OptimizerMismatchError(
            f"the {state.native_class} state names tensors {unknown[:5]} that the bundle's "
            f"weights do not have (or names a parameter twice: {len(state.parameters)} names, "
            f"{len(set(state.parameters))} distinct); the optimizer state is not this model's."
        )
    dropped = [name for name in names if moves[name].action != "relayout"]
    if dropped:
        raise ConversionError(
            f"optimizer state is kept for {dropped[:5]}, which have no counterpart in the target "
            "framework (their weights are dropped when converting); expected slots only for "
            "tensors that convert. Register an explicit map for them."
        )
    targets = [moves[name].target for name in names]
    if len(set(targets)) != len(targets):
        raise ConversionError(
            f"two optimized tensors map to one target tensor ({targets}); every slot must map "
            "exactly once. Check the registered explicit map."
        )
    return {name: moves[name] for name in names}


def _convert_slot(
    array: np.ndarray, move: TensorMove, algorithm: str, slot: str, source: str, lr: float
) -> np.ndarray:
    """Move ``array`` as its weight moves; rescale the slots Keras keeps in units of ``lr``."""
    assert move.source is not None
    moved = relayout(np.asarray(array), move.source_layout, move.target_layout,
                     move.target_shape or (), name=f"optimizer slot of {move.source}")
    sign = _LR_SCALED.get((algorithm, slot))
    if sign is None:
        return moved
    factor = sign * lr if source == "torch" else 1.0 / (sign * lr)
    return (moved.astype(np.float64) * factor).astype(array.dtype)


def convert_optimizer(
    state: OptimizerState, plan: ConversionPlan, *, target: str, target_specs: list[TensorSpec]
) -> OptimizerState:
    """Return ``state`` (of the plan's source backend) converted for backend ``target``.

    ``plan`` is the weights' :class:`~polybundle.model.conversion.ConversionPlan`
    and ``target_specs`` the target model's tensors (they give the parameter
    order a fresh target optimizer has). Every slot moves with its weight and
    is checked the same way; a slot on a tensor the target lacks, a tensor the
    weights do not have, or settings the target cannot express raise a typed
    error before anything is returned.

    Example:
        >>> state = bundle.optimizer_state("net")  # doctest: +SKIP
        >>> convert_optimizer(state, plan, target="torch", target_specs=specs).backend
        'torch'
    """
    if target == state.backend:
        return state
    for name in (state.backend, target):
        if name not in NATIVE_CLASSES:
            raise UnsupportedOptimizerError(
                f"optimizer state converts between {sorted(NATIVE_CLASSES)}; {name!r} is not "
                "one of them. Load without optimizer state, or restore in the writer's backend."
            )
    if state.algorithm not in SLOTS:
        raise _refuse(state, f"algorithm {state.algorithm!r} is not one of {sorted(SLOTS)}",
                      "Use a supported optimizer.")
    plan.check(context=f"optimizer state from {state.backend} to {target}")
    hyper = _source_hyperparameters(state)
    neutral = _neutral_target(state.algorithm, hyper)
    moves = _moves_by_source(state, plan)
    held = {slot for slots in state.slots.values() for slot in slots}
    unknown = sorted(held - set(SLOTS[state.algorithm]))
    if unknown:
        raise _refuse(state, f"slots {unknown} are not {state.algorithm} slots",
                      f"Expected only {list(SLOTS[state.algorithm])}.")
    slots = {
        moves[name].target: {
            slot: _convert_slot(array, moves[name], state.algorithm, slot, state.backend,
                                float(hyper["learning_rate"]))
            for slot, array in tensor_slots.items()
        }
        for name, tensor_slots in state.slots.items()
    }
    order = {spec.name: index for index, spec in enumerate(target_specs)}
    parameters = sorted((moves[name].target for name in state.parameters),
                        key=lambda name: order.get(name, len(order)))
    if target == "tensorflow":
        sources = {moves[name].target: name for name in state.parameters}
        _fill_keras_slots(state, neutral, sources, slots, target_specs)
    step = state.step or 0
    return OptimizerState(
        algorithm=state.algorithm,
        backend=target,
        native_class=NATIVE_CLASSES[target][state.algorithm],
        step=None if target == "torch" and state.algorithm == "sgd" else step,
        groups=[{"parameters": parameters, "hyperparameters": neutral}],
        slots=slots,
        native={**_native_settings(target, state.algorithm, neutral),
                "converted_from": {"backend": state.backend, "class": state.native_class}},
    )


def _fill_keras_slots(
    state: OptimizerState, hyper: dict[str, Any], sources: dict[str, str],
    slots: dict[str, dict[str, np.ndarray]], target_specs: list[TensorSpec],
) -> None:
    """Give every variable every slot Keras keeps; zeros are exact where PyTorch had none yet.

    ``sources`` maps each target parameter name to its source name (for messages).
    """
    required = _required_slots(state.algorithm, hyper)
    specs = {spec.name: spec for spec in target_specs}
    for name, source in sources.items():
        have = slots.setdefault(name, {})
        missing = [slot for slot in required if slot not in have]
        if missing and have or missing and state.algorithm in ("adam", "adamw") and state.step:
            raise ConversionError(
                f"{state.native_class} holds no {missing} for {source!r} (Keras {name!r}) at "
                f"step {state.step}; "
                "Keras keeps one step count for all variables, so a PyTorch parameter that has "
                "not been updated yet cannot be converted exactly. Convert after every "
                "parameter has had a step, or before the first."
            )
        for slot in missing:
            have[slot] = np.zeros(specs[name].shape, dtype=specs[name].dtype)
        if not have:
            del slots[name]


def optimizer_state_for(bundle: Bundle, role: str) -> OptimizerState:
    """Return ``role``'s optimizer state for the bundle's loaded backend.

    As stored when the bundle was loaded in the framework that wrote it;
    converted with the plan of the role's weights when it was loaded in the
    other framework (``polybundle.load(path, backend=...)``).

    Example:
        >>> bundle = polybundle.load("tf.bundle", backend="torch")  # doctest: +SKIP
        >>> optimizer_state_for(bundle, "net").slots["0.weight"]["m"].shape
        (16, 6)
    """
    state = bundle.optimizer_state(role)
    plan = bundle.conversions.get(role)
    if plan is None:
        return state
    from polybundle.hooks.registry import get_backend

    specs = get_backend(bundle.backend).describe(bundle.models[role])
    return convert_optimizer(state, plan, target=bundle.backend, target_specs=specs)


def check_state_fits(state: OptimizerState, backend: str, specs: list[TensorSpec]) -> None:
    """Raise :class:`OptimizerMismatchError` unless ``state`` belongs to a ``backend`` model.

    Used when a neutral state (e.g. a converted one) is saved beside a model:
    every parameter must be one of the model's tensors (``specs``) and every
    slot must have its tensor's shape.

    Example:
        >>> check_state_fits(state, "torch", backend.describe(model))  # doctest: +SKIP
    """
    if state.backend != backend:
        raise OptimizerMismatchError(
            f"the optimizer state is {state.backend}'s ({state.native_class}) but the models are "
            f"{backend}'s; convert it first "
            "(polybundle.model.optimizer_conversion.convert_optimizer)."
        )
    shapes = {spec.name: tuple(spec.shape) for spec in specs}
    unknown = [name for name in [*state.parameters, *state.slots] if name not in shapes]
    wrong = [
        f"{name}/{slot} {array.shape} vs {shapes[name]}"
        for name, slots in state.slots.items() if name in shapes
        for slot, array in slots.items() if tuple(array.shape) != shapes[name]
    ]
    if unknown or wrong:
        raise OptimizerMismatchError(
            f"the optimizer state does not fit the model: tensors not in it {unknown[:5]}, "
            f"slot shapes that differ {wrong[:5]}; pass the state made for this model."
        )
