"""optax optimizer state to and from polybundle's neutral form.

An optax transformation is a pair of closures: its hyperparameters cannot be
read back from it or from its state. So the transformations polybundle can
store are made with :func:`adam`, :func:`adamw` and :func:`sgd` below (the
same arguments as ``optax.adam``, ``optax.adamw`` and ``optax.sgd``, with
float learning rates), which record what they built. The native optimizer is
a ``flax.nnx.Optimizer`` over such a transformation; any other is refused at
save time with :class:`polybundle.errors.UnsupportedOptimizerError`.

Neutral slot names: optax ``mu`` -> ``m``, ``nu`` -> ``v``, ``trace`` ->
``momentum``; they are keyed by the model's tensor names and have the weight's
shape and layout. Hyperparameters: ``learning_rate``, ``beta_1``, ``beta_2``,
``epsilon`` (added outside the square root, as PyTorch does), ``epsilon_root``
(inside it), ``weight_decay`` (AdamW, decoupled and scaled by the learning
rate, as PyTorch's ``AdamW``), ``momentum`` and ``nesterov``.

Example:
    >>> from flax import nnx
    >>> model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    >>> optimizer = nnx.Optimizer(model, adam(1e-3), wrt=nnx.Param)
    >>> export_optimizer(model, optimizer).slot_names()
    ['m', 'v']
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np

from polybundle.plugin import (
    NeutralOptimizer,
    OptimizerMismatchError,
    OptimizerState,
    TensorSpec,
    UnsupportedOptimizerError,
)

from .naming import definition_order

_SLOTS = {"mu": "m", "nu": "v", "trace": "momentum"}
_NATIVE_SLOTS = {neutral: native for native, neutral in _SLOTS.items()}
_MUST_BE_OFF = ("amsgrad", "maximize", "centered")
_RECIPE_KEYS = {
    "adam": ("learning_rate", "beta_1", "beta_2", "epsilon", "epsilon_root"),
    "adamw": ("learning_rate", "beta_1", "beta_2", "epsilon", "epsilon_root", "weight_decay"),
    "sgd": ("learning_rate", "momentum", "nesterov"),
}
"""The hyperparameters each recipe records (its neutral names)."""


@dataclass(frozen=True)
class Recipe:
    """What :func:`adam`, :func:`adamw` or :func:`sgd` built: algorithm and hyperparameters.

    Example:
        >>> recipe(adam(0.1)).hyperparameters["learning_rate"]
        0.1
    """

    algorithm: str
    hyperparameters: dict[str, Any]


_RECIPES: weakref.WeakKeyDictionary[Any, Recipe] = weakref.WeakKeyDictionary()


def _record(transformation: Any, algorithm: str, hyperparameters: dict[str, Any]) -> Any:
    for key, value in hyperparameters.items():
        if not isinstance(value, (bool, int, float)) or not math.isfinite(float(value)):
            raise UnsupportedOptimizerError(
                f"{algorithm}({key}={value!r}): polybundle-jax records plain finite numbers "
                "only (no schedules or arrays); pass a float."
            )
    _RECIPES[transformation.init] = Recipe(algorithm, dict(hyperparameters))
    return transformation


def adam(
    learning_rate: float, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
    eps_root: float = 0.0,
) -> Any:
    """Return ``optax.adam(...)`` with its hyperparameters recorded for polybundle.

    Example:
        >>> recipe(adam(1e-3)).algorithm
        'adam'
    """
    import optax

    transformation = optax.adam(learning_rate, b1=b1, b2=b2, eps=eps, eps_root=eps_root)
    return _record(transformation, "adam", {
        "learning_rate": learning_rate, "beta_1": b1, "beta_2": b2, "epsilon": eps,
        "epsilon_root": eps_root,
    })


def adamw(
    learning_rate: float, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
    eps_root: float = 0.0, weight_decay: float = 1e-4,
) -> Any:
    """Return ``optax.adamw(...)`` with its hyperparameters recorded for polybundle.

    Example:
        >>> transformation = adamw(1e-3, weight_decay=0.01)
        >>> recipe(transformation).hyperparameters["weight_decay"]
        0.01
    """
    import optax

    transformation = optax.adamw(
        learning_rate, b1=b1, b2=b2, eps=eps, eps_root=eps_root, weight_decay=weight_decay
    )
    return _record(transformation, "adamw", {
        "learning_rate": learning_rate, "beta_1": b1, "beta_2": b2, "epsilon": eps,
        "epsilon_root": eps_root, "weight_decay": weight_decay,
    })


def sgd(learning_rate: float, momentum: float | None = None, nesterov: bool = False) -> Any:
    """Return ``optax.sgd(...)`` with its hyperparameters recorded for polybundle.

    Example:
        >>> recipe(sgd(0.1, momentum=0.9)).hyperparameters["momentum"]
        0.9
    """
    import optax

    transformation = optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov)
    return _record(transformation, "sgd", {
        "learning_rate": learning_rate, "momentum": 0.0 if momentum is None else momentum,
        "nesterov": nesterov,
    })


def recipe(transformation: Any) -> Recipe:
    """Return the :class:`Recipe` of a transformation made by :func:`adam`, :func:`adamw`
    or :func:`sgd`; raise :class:`UnsupportedOptimizerError` for any other.

    Example:
        >>> recipe(sgd(0.1, momentum=0.9)).algorithm
        'sgd'
    """
    found = _RECIPES.get(getattr(transformation, "init", None))
    if found is None:
        raise UnsupportedOptimizerError(
            f"the optax transformation {transformation!r} was not made by polybundle_jax.adam, "
            "adamw or sgd: optax keeps hyperparameters in closures, so polybundle cannot "
            "describe it. Build it with polybundle_jax.adam(...) (same arguments as optax)."
        )
    return found


def _params(model: Any, optimizer: Any) -> dict[str, tuple[int, ...]]:
    from flax import nnx

    state = nnx.state(model, optimizer.wrt)
    shapes = {
        ".".join(str(p) for p in path): tuple(variable[...].shape)
        for path, variable in nnx.to_flat_state(state)
    }
    order = definition_order(model)
    ranked = sorted(shapes, key=lambda n: (order.get(n, len(order)), n))
    return {name: shapes[name] for name in ranked}


def _optimizer_variables(optimizer: Any) -> tuple[Any, list[Any], dict[tuple[str, str], Any]]:
    """Return ``(step variable, count variables, {(tensor, neutral slot): variable})``."""
    from flax import nnx

    step = None
    counts: list[Any] = []
    slots: dict[tuple[str, str], Any] = {}
    for path, variable in nnx.to_flat_state(nnx.state(optimizer)):
        if path == ("step",):
            step = variable
        elif len(path) == 3 and path[0] == "opt_state" and path[2] == "count":
            counts.append(variable)
        elif len(path) > 3 and path[0] == "opt_state" and path[2] in _SLOTS:
            slots[(".".join(str(p) for p in path[3:]), _SLOTS[path[2]])] = variable
        else:
            raise UnsupportedOptimizerError(
                f"nnx.Optimizer keeps state {'/'.join(map(str, path))!r}, which polybundle-jax "
                "does not know how to store."
            )
    return step, counts, slots


def _check_bound(
    model: Any, optimizer: Any, slots: dict[tuple[str, str], Any], action: str
) -> list[str]:
    params = _params(model, optimizer)
    stray = sorted({name for name, _ in slots} - params.keys())
    wrong = sorted(
        f"{name} ({slot})" for (name, slot), v in slots.items()
        if name in params and tuple(v[...].shape) != params[name]
    )
    lacking = sorted(params.keys() - {name for name, _ in slots}) if slots else []
    if stray or wrong or lacking:
        raise OptimizerMismatchError(
            f"the nnx.Optimizer being {action} is not bound to this "
            f"{type(model).__name__}'s parameters (slots for tensors it lacks: {stray[:5]}; "
            f"shapes differ: {wrong[:5]}; parameters without slots: {lacking[:5]}). Make the "
            "optimizer with nnx.Optimizer(model, transformation, wrt=nnx.Param) for that model."
        )
    return list(params)


def export_optimizer(model: Any, optimizer: Any, scheduler: Any | None = None) -> OptimizerState:
    """Return the neutral state of ``optimizer`` (an ``nnx.Optimizer`` bound to ``model``).

    Example:
        >>> from flax import nnx
        >>> model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
        >>> export_optimizer(model, nnx.Optimizer(model, sgd(0.1), wrt=nnx.Param)).step
        0
    """
    if scheduler is not None:
        raise UnsupportedOptimizerError(
            "polybundle-jax takes no schedulers=: optax schedules live in the transformation."
        )
    made = recipe(getattr(optimizer, "tx", None))
    step, _, slots = _optimizer_variables(optimizer)
    names = _check_bound(model, optimizer, slots, "saved")
    arrays: dict[str, dict[str, np.ndarray]] = {}
    for (name, slot), variable in slots.items():
        arrays.setdefault(name, {})[slot] = np.asarray(variable[...])
    return OptimizerState(
        algorithm=made.algorithm,
        backend="jax",
        native_class=f"optax.{made.algorithm}",
        step=int(step[...]) if step is not None else 0,
        groups=[{"parameters": names, "hyperparameters": dict(made.hyperparameters)}],
        slots=arrays,
        native={"wrt": getattr(optimizer.wrt, "__name__", str(optimizer.wrt))},
    )


def _check_kind(made: Recipe, state: OptimizerState) -> None:
    saved = state.hyperparameters
    differ = [
        f"{key}: saved {saved[key]!r}, given {value!r}"
        for key, value in made.hyperparameters.items()
        if key in saved and not (saved[key] == value or (
            isinstance(value, float) and math.isclose(float(saved[key]), value, rel_tol=1e-7)))
    ]
    unsupported = [key for key in _MUST_BE_OFF if saved.get(key)]
    if made.algorithm == "adam" and saved.get("weight_decay"):
        unsupported.append("weight_decay (L2, coupled)")
    if state.algorithm != made.algorithm or differ or unsupported:
        raise OptimizerMismatchError(
            f"the bundle holds {state.algorithm} state ({state.native_class}, {state.backend}) "
            f"but the optimizer given is {made.algorithm} {made.hyperparameters}"
            f"{'; ' + '; '.join(differ) if differ else ''}"
            f"{'; optax cannot do ' + ', '.join(unsupported) if unsupported else ''}. "
            f"Make it with polybundle_jax.{state.algorithm}(...) and the saved hyperparameters "
            f"{saved}."
        )


def restore_optimizer(
    model: Any, optimizer: Any, state: OptimizerState, scheduler: Any | None = None
) -> None:
    """Load neutral ``state`` into a fresh ``nnx.Optimizer`` bound to ``model``.

    Everything is checked (algorithm, hyperparameters, bound tensors, slot
    names and shapes) before anything changes.

    Example:
        >>> from flax import nnx
        >>> model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
        >>> state = export_optimizer(model, nnx.Optimizer(model, adam(1e-3), wrt=nnx.Param))
        >>> fresh = nnx.Optimizer(model, adam(1e-3), wrt=nnx.Param)
        >>> restore_optimizer(model, fresh, state)
    """
    import jax.numpy as jnp

    if scheduler is not None:
        raise UnsupportedOptimizerError("polybundle-jax takes no scheduler on restore.")
    made = recipe(getattr(optimizer, "tx", None))
    _check_kind(made, state)
    step, counts, slots = _optimizer_variables(optimizer)
    names = _check_bound(model, optimizer, slots, "restored into")
    saved = {(name, slot): array for name, by_slot in state.slots.items()
             for slot, array in by_slot.items()}
    wrong = sorted(
        f"{name} ({slot})" for key, variable in slots.items()
        if key in saved and saved[key].shape != tuple(variable[...].shape)
        for name, slot in [key]
    )
    if set(state.parameters) != set(names) or saved.keys() != slots.keys() or wrong:
        raise OptimizerMismatchError(
            f"the saved optimizer state does not fit this model's optimizer: tensors "
            f"{sorted(set(state.parameters) ^ set(names))[:5]} differ, slots "
            f"{sorted(map(str, saved.keys() ^ slots.keys()))[:5]} differ, shapes {wrong[:5]} "
            "differ. Restore into an optimizer made for the model the bundle holds."
        )
    for key, variable in slots.items():
        variable[...] = jnp.asarray(saved[key], dtype=variable[...].dtype)
    value = 0 if state.step is None else state.step
    for variable in counts:
        variable[...] = jnp.asarray(value, dtype=variable[...].dtype)
    if step is not None:
        step[...] = jnp.asarray(value, dtype=step[...].dtype)


# --- conversion: optax's mu, nu and trace are the neutral slots, in the neutral units ---------


def optimizer_to_neutral(state: OptimizerState) -> NeutralOptimizer:
    """Describe an optax state (made by :func:`adam`, :func:`adamw` or :func:`sgd`) neutrally.

    optax's ``trace`` is the velocity in gradient units and ``adamw``'s decay
    is decoupled and scaled by the learning rate: both are the neutral
    convention, so values are kept as they are.

    Example:
        >>> state = OptimizerState("sgd", "jax", "optax.sgd", 2, [{"parameters": ["w"],
        ...     "hyperparameters": {"learning_rate": 0.1, "momentum": 0.9, "nesterov": False}}],
        ...     {"w": {"momentum": np.ones(2, np.float32)}})
        >>> optimizer_to_neutral(state).hyperparameters["weight_decay"]
        0.0
    """
    return NeutralOptimizer(
        algorithm=state.algorithm,
        hyperparameters=dict(state.hyperparameters),
        step=state.step or 0,
        parameters=state.parameters,
        slots=state.slots,
    )


def optimizer_from_neutral(neutral: NeutralOptimizer, specs: list[TensorSpec]) -> OptimizerState:
    """Return the optax state for a converted ``neutral`` description.

    Restore it into an ``nnx.Optimizer`` over ``polybundle_jax.<algorithm>(...)``
    made with the same hyperparameters. AMSGrad, RMSprop and weight decay on
    ``adam`` or ``sgd`` are not recipes here, so they are refused.

    Example:
        >>> neutral = NeutralOptimizer("sgd", {"learning_rate": 0.1, "momentum": 0.9}, 2,
        ...     ["w"], {"w": {"momentum": np.ones(2, np.float32)}})
        >>> state = optimizer_from_neutral(neutral, [TensorSpec("w", "w", (2,), "float32", "")])
        >>> state.native_class, state.hyperparameters
        ('optax.sgd', {'learning_rate': 0.1, 'momentum': 0.9, 'nesterov': False})
    """
    algorithm, hyper = neutral.algorithm, neutral.hyperparameters
    if algorithm not in _RECIPE_KEYS:
        raise neutral.refuse(f"{algorithm} is not one of the recipes {sorted(_RECIPE_KEYS)}",
                             "Convert adam, adamw or sgd state.", "jax")
    if hyper.get("amsgrad"):
        raise neutral.refuse("amsgrad is on, and polybundle_jax.adam has no AMSGrad",
                             "Train without amsgrad to convert its state.", "jax")
    if hyper["weight_decay"] and algorithm != "adamw":
        raise neutral.refuse(
            f"{algorithm} has weight_decay={hyper['weight_decay']}, and "
            f"polybundle_jax.{algorithm} has none", "Train with AdamW, or without weight decay.",
            "jax",
        )
    return OptimizerState(
        algorithm=algorithm,
        backend="jax",
        native_class=f"optax.{algorithm}",
        step=neutral.step,
        groups=[{"parameters": list(neutral.parameters),
                 "hyperparameters": {key: hyper[key] for key in _RECIPE_KEYS[algorithm]}}],
        slots=neutral.complete_slots(specs, target="jax"),
        native={"wrt": "Param"},
    )
