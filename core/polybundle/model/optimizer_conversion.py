"""Neutral optimizer math: describe a state in one convention and move it with the weights.

Converting optimizer state between backends takes three steps. The source
backend describes its :class:`~polybundle.model.optimizer.OptimizerState` as
a :class:`NeutralOptimizer` (``Backend.optimizer_to_neutral``); here every
slot moves with the very :class:`~polybundle.model.conversion.TensorMove` that
moves its weight (same target name, permutation and shape check); the target
backend makes its own state from the moved description
(``Backend.optimizer_from_neutral``). Each backend knows only its own names,
units and limits, and refuses with a typed error what it cannot express.

The neutral convention, for gradient ``g``, learning rate ``lr`` and step
``t`` (the number of updates applied; the same for every parameter):

* ``adam``/``adamw``: ``m`` and ``v`` are the moving averages of ``g`` and
  ``g**2`` (``beta_1``, ``beta_2``), not bias-corrected; ``v_max`` the running
  maximum of ``v`` (``amsgrad``). The update is ``lr * m_hat / (sqrt(v_hat +
  epsilon_root) + epsilon)``.
* ``sgd``: ``momentum`` is the velocity in gradient units,
  ``momentum <- mu * momentum + g``; the update is ``lr * momentum`` (or
  ``lr * (g + mu * momentum)`` with ``nesterov``).
* ``rmsprop``: ``square_avg`` and ``grad_avg`` are the moving averages of
  ``g**2`` and ``g`` (``rho``); ``momentum <- mu * momentum + g / denominator``
  and the update is ``lr * momentum``.
* ``weight_decay`` is decoupled: ``w <- w - lr * weight_decay * w`` before the
  update, for every algorithm. A decay added to the gradient (L2) has no
  neutral form.

Example:
    >>> neutral = NeutralOptimizer("sgd", {"learning_rate": 0.1, "momentum": 0.9}, step=3,
    ...     parameters=["w"], slots={"w": {"momentum": np.ones(2, np.float32)}})
    >>> neutral.hyperparameters["nesterov"], neutral.required_slots()
    (False, ['momentum'])
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from polybundle.errors import ConversionError, OptimizerMismatchError, UnsupportedOptimizerError
from polybundle.model.backend import TensorSpec
from polybundle.model.conversion import ConversionPlan, TensorMove
from polybundle.model.optimizer import OptimizerState

if TYPE_CHECKING:
    from polybundle.model.backend import Backend

SLOTS: dict[str, tuple[str, ...]] = {
    "adam": ("m", "v", "v_max"),
    "adamw": ("m", "v", "v_max"),
    "sgd": ("momentum",),
    "rmsprop": ("square_avg", "momentum", "grad_avg"),
}
"""Neutral slot names each algorithm may hold."""

REQUIRED = object()
"""Marks a hyperparameter in :data:`HYPERPARAMETERS` that has no default."""

HYPERPARAMETERS: dict[str, dict[str, Any]] = {
    "adam": {"learning_rate": REQUIRED, "beta_1": REQUIRED, "beta_2": REQUIRED,
             "epsilon": REQUIRED, "epsilon_root": 0.0, "amsgrad": False, "weight_decay": 0.0},
    "adamw": {"learning_rate": REQUIRED, "beta_1": REQUIRED, "beta_2": REQUIRED,
              "epsilon": REQUIRED, "epsilon_root": 0.0, "amsgrad": False, "weight_decay": 0.0},
    "sgd": {"learning_rate": REQUIRED, "momentum": 0.0, "nesterov": False, "weight_decay": 0.0},
    "rmsprop": {"learning_rate": REQUIRED, "rho": REQUIRED, "momentum": 0.0,
                "epsilon": REQUIRED, "centered": False, "weight_decay": 0.0},
}
"""Neutral hyperparameters of each algorithm and their defaults (:data:`REQUIRED`: none)."""

BIAS_CORRECTED = ("adam", "adamw")
"""Algorithms whose update depends on the step count: a slot missing after a step is not zero."""


@dataclass
class NeutralOptimizer:
    """An optimizer state in the neutral convention (see the module docstring).

    ``hyperparameters`` are completed with the algorithm's defaults and
    checked; ``slots`` are keyed by tensor name like the weights (a tensor
    the source has not updated yet may have none); ``origin`` names the state
    in messages and ``sources`` maps a moved tensor's name to its source name.

    Example:
        >>> NeutralOptimizer("adam", {"learning_rate": 0.1}, 0, [], {})
        Traceback (most recent call last):
        ...
        polybundle.errors.UnsupportedOptimizerError: the adam state cannot be converted: \
hyperparameters ['beta_1', 'beta_2', 'epsilon'] are missing. Save it with every adam \
hyperparameter set.
    """

    algorithm: str
    hyperparameters: dict[str, Any]
    step: int
    parameters: list[str]
    slots: dict[str, dict[str, np.ndarray]]
    origin: str = ""
    sources: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.origin = self.origin or f"the {self.algorithm}"
        if self.algorithm not in HYPERPARAMETERS:
            raise self.refuse(f"algorithm {self.algorithm!r} is not one of "
                              f"{sorted(HYPERPARAMETERS)}", "Use a supported optimizer.")
        known = HYPERPARAMETERS[self.algorithm]
        unknown = sorted(set(self.hyperparameters) - set(known))
        missing = [key for key, default in known.items()
                   if default is REQUIRED and key not in self.hyperparameters]
        if unknown or missing:
            found = f"hyperparameters {missing} are missing" if missing else \
                f"hyperparameters {unknown} have no neutral meaning"
            raise self.refuse(found, f"Save it with every {self.algorithm} hyperparameter set.")
        self.hyperparameters = {key: self.hyperparameters.get(key, default)
                                for key, default in known.items()}
        rate = self.hyperparameters["learning_rate"]
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not rate > 0:
            raise self.refuse(f"learning rate {rate!r} is not a positive number",
                              "Save it with a positive float learning rate.")
        held = sorted({slot for slots in self.slots.values() for slot in slots})
        stray = [slot for slot in held if slot not in SLOTS[self.algorithm]]
        if stray:
            raise self.refuse(f"slots {stray} are not {self.algorithm} slots",
                              f"Expected only {list(SLOTS[self.algorithm])}.")

    def refuse(self, what: str, advice: str, target: str = "") -> UnsupportedOptimizerError:
        """Return the typed refusal to convert this state (for ``target``, if given).

        Example:
            >>> neutral = NeutralOptimizer("sgd", {"learning_rate": 0.1}, 0, [], {})
            >>> str(neutral.refuse("nesterov is on", "Train without it.", "numpy"))
            'the sgd state cannot be converted for numpy: nesterov is on. Train without it.'
        """
        into = f" for {target}" if target else ""
        return UnsupportedOptimizerError(
            f"{self.origin} state cannot be converted{into}: {what}. {advice}"
        )

    def required_slots(self) -> list[str]:
        """Return the slots every parameter has once it has been updated with these settings.

        Example:
            >>> NeutralOptimizer("adam", {"learning_rate": 0.1, "beta_1": 0.9, "beta_2": 0.99,
            ...     "epsilon": 1e-8, "amsgrad": True}, 0, [], {}).required_slots()
            ['m', 'v', 'v_max']
        """
        hyper = self.hyperparameters
        if self.algorithm in BIAS_CORRECTED:
            return ["m", "v", "v_max"] if hyper["amsgrad"] else ["m", "v"]
        if self.algorithm == "sgd":
            return ["momentum"] if hyper["momentum"] else []
        return ["square_avg"] + (["momentum"] if hyper["momentum"] else []) \
            + (["grad_avg"] if hyper["centered"] else [])

    def complete_slots(
        self, specs: list[TensorSpec], *, target: str
    ) -> dict[str, dict[str, np.ndarray]]:
        """Return the slots with every parameter holding every required slot.

        For a target (named ``target`` in messages) that keeps all slots of
        every parameter: a missing slot becomes zeros of its tensor's spec
        where that is exact (before the first step, or where the update does
        not depend on the step); otherwise :class:`ConversionError`.

        Example:
            >>> neutral = NeutralOptimizer("sgd", {"learning_rate": 0.1, "momentum": 0.9}, 3,
            ...                            parameters=["w"], slots={})
            >>> spec = TensorSpec("w", "w", (2,), "float32", "out")
            >>> neutral.complete_slots([spec], target="numpy")["w"]["momentum"]
            array([0., 0.], dtype=float32)
        """
        required = self.required_slots()
        shapes = {spec.name: spec for spec in specs}
        slots = {name: dict(held) for name, held in self.slots.items()}
        for name in self.parameters:
            have = slots.setdefault(name, {})
            missing = [slot for slot in required if slot not in have]
            if missing and (have or self.algorithm in BIAS_CORRECTED and self.step):
                source = self.sources.get(name, name)
                raise ConversionError(
                    f"{self.origin} state holds no {missing} for {source!r} ({target} "
                    f"{name!r}) at step {self.step}; {target} keeps one step count and every "
                    "slot for all parameters, so a parameter that has not been updated yet "
                    "cannot be converted exactly. Convert after every parameter has had a "
                    "step, or before the first."
                )
            for slot in missing:
                have[slot] = np.zeros(shapes[name].shape, dtype=shapes[name].numpy_dtype)
            if not have:
                del slots[name]
        return slots


def refuse(state: OptimizerState, what: str, advice: str) -> UnsupportedOptimizerError:
    """Return the typed refusal to describe ``state`` in the neutral form.

    Example:
        >>> state = OptimizerState("sgd", "numpy", "numpy.SGD", 0, [], {})
        >>> str(refuse(state, "it clips gradients", "Turn clipping off."))
        'the numpy numpy.SGD state cannot be converted: it clips gradients. Turn clipping off.'
    """
    return UnsupportedOptimizerError(
        f"the {state.backend} {state.native_class} state cannot be converted: {what}. {advice}"
    )


def rescale(array: np.ndarray, factor: float) -> np.ndarray:
    """Return ``array * factor`` computed in float64 and cast back to ``array``'s dtype.

    Example:
        >>> rescale(np.ones(2, np.float32), -0.5)
        array([-0.5, -0.5], dtype=float32)
    """
    return (np.asarray(array).astype(np.float64) * factor).astype(np.asarray(array).dtype)


def _check_convertible(state: OptimizerState) -> None:
    """Refuse what no neutral description holds: several settings or a schedule."""
    distinct = [group["hyperparameters"] for group in state.groups]
    if any(h != distinct[0] for h in distinct[1:]):
        raise refuse(state, f"its {len(distinct)} parameter groups have different settings",
                     "The neutral form has one group of settings; use one group before saving.")
    if state.schedule is not None:
        raise refuse(state, f"it has a learning-rate schedule ({state.schedule.get('class')}), "
                     "whose state differs between backends", "Convert a state saved with a "
                     "constant learning rate, and make the schedule again in the target.")


def _moves_by_source(neutral: NeutralOptimizer, plan: ConversionPlan) -> dict[str, TensorMove]:
    """Return the weight move of every tensor the optimizer updates; raise when one has none."""
    moves = {move.source: move for move in plan.moves if move.source is not None}
    names = list(dict.fromkeys([*neutral.parameters, *neutral.slots]))
    fused = {name for move in plan.moves if move.action in ("split", "merge")
             for name in (move.source, *move.merged)}
    if fused & set(names):
        raise ConversionError(
            f"optimizer state is kept for {sorted(fused & set(names))[:5]}, tensors that "
            "convert split or merged (fused attention projections); polybundle does not "
            "convert optimizer slots of those yet. Convert the weights alone (without the "
            "optimizer), or train the target from a fresh optimizer."
        )
    unknown = [name for name in names if name not in moves]
    if unknown or len(set(neutral.parameters)) != len(neutral.parameters):
        raise OptimizerMismatchError(
            f"{neutral.origin} state names tensors {unknown[:5]} that the bundle's weights do "
            f"not have (or names a parameter twice: {len(neutral.parameters)} names, "
            f"{len(set(neutral.parameters))} distinct); the optimizer state is not this model's."
        )
    dropped = [name for name in names if moves[name].action != "relayout"]
    if dropped:
        raise ConversionError(
            f"optimizer state is kept for {dropped[:5]}, which have no counterpart in the target "
            "backend (their weights are dropped when converting); expected slots only for "
            "tensors that convert. Register an explicit map for them."
        )
    targets = [moves[name].target for name in names]
    if len(set(targets)) != len(targets):
        raise ConversionError(
            f"two optimized tensors map to one target tensor ({targets}); every slot must map "
            "exactly once. Check the registered explicit map."
        )
    return {name: moves[name] for name in names}


def move_slots(
    neutral: NeutralOptimizer, plan: ConversionPlan, target_specs: list[TensorSpec]
) -> NeutralOptimizer:
    """Return ``neutral`` with its tensors renamed and slots rearranged as ``plan`` moves weights.

    Parameters come in the order of ``target_specs`` (the order a fresh
    target optimizer has). A slot on a tensor the plan drops or lacks, or two
    tensors meeting in one target, raise a typed error.

    Example:
        >>> neutral = NeutralOptimizer("sgd", {"learning_rate": 0.1}, 0, ["w"], {})
        >>> move_slots(neutral, ConversionPlan(), [])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        polybundle.errors.OptimizerMismatchError: the sgd state names tensors ['w'] that ...
    """
    moves = _moves_by_source(neutral, plan)

    def moved(name: str, array: np.ndarray) -> np.ndarray:
        move = moves[name]
        assert move.source is not None
        return move.convert(array, name=f"optimizer slot of {move.source}")

    order = {spec.name: index for index, spec in enumerate(target_specs)}
    targets = {name: str(moves[name].target) for name in moves}
    return dataclasses.replace(
        neutral,
        parameters=sorted((targets[name] for name in neutral.parameters),
                          key=lambda name: order.get(name, len(order))),
        slots={targets[name]: {slot: moved(name, array) for slot, array in held.items()}
               for name, held in neutral.slots.items()},
        sources={targets[name]: neutral.sources.get(name, name) for name in moves},
    )


def convert_optimizer(
    state: OptimizerState,
    plan: ConversionPlan,
    *,
    source: Backend,
    target: Backend,
    target_specs: list[TensorSpec],
) -> OptimizerState:
    """Return ``state`` (of backend ``source``) converted for backend ``target``.

    ``plan`` is the weights' :class:`~polybundle.model.conversion.ConversionPlan`
    and ``target_specs`` the target model's tensors. ``source`` describes the
    state in the neutral form, the slots move with their weights, ``target``
    makes its own state; whatever either cannot express, and a slot on a
    tensor the weights lack or drop, raise a typed error before anything is
    returned. The result's ``native["converted_from"]`` names the source.

    Example:
        >>> from types import SimpleNamespace
        >>> state = OptimizerState("sgd", "numpy", "numpy.SGD", 0, [], {})
        >>> same = SimpleNamespace(name="numpy")  # stands for a Backend
        >>> convert_optimizer(state, ConversionPlan(), source=same, target=same,
        ...                   target_specs=[]) is state
        True
    """
    if state.backend == target.name:
        return state
    if state.backend != source.name:
        raise OptimizerMismatchError(
            f"the optimizer state is {state.backend}'s ({state.native_class}) but was given "
            f"as {source.name}'s; convert it from the backend that wrote it."
        )
    plan.check(context=f"optimizer state from {source.name} to {target.name}")
    _check_convertible(state)
    neutral = dataclasses.replace(source.optimizer_to_neutral(state),
                                  origin=f"the {state.backend} {state.native_class}")
    converted = target.optimizer_from_neutral(move_slots(neutral, plan, target_specs),
                                              target_specs)
    converted.native = {**converted.native,
                        "converted_from": {"backend": state.backend, "class": state.native_class}}
    return converted


def check_state_fits(state: OptimizerState, backend: str, specs: list[TensorSpec]) -> None:
    """Raise :class:`OptimizerMismatchError` unless ``state`` belongs to a ``backend`` model.

    Used when a neutral state (e.g. a converted one) is saved beside a model:
    every parameter must be one of the model's tensors (``specs``) and every
    slot must have its tensor's shape.

    Example:
        >>> state = OptimizerState("sgd", "numpy", "numpy.SGD", 0,
        ...     [{"parameters": ["w"], "hyperparameters": {}}], {})
        >>> check_state_fits(state, "numpy", [])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        polybundle.errors.OptimizerMismatchError: the optimizer state does not fit the model: ...
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
