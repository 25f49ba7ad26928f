"""Keras 3 optimizer and TensorFlow RNG state to and from the neutral form.

Supported: ``keras.optimizers.Adam``, ``AdamW``, ``SGD`` and ``RMSprop``
(exact classes), with a float learning rate or a serializable
``LearningRateSchedule`` (its config is stored; its position is the
optimizer's ``iterations``). ``use_ema``, gradient accumulation and loss
scaling add state the neutral form does not describe, so they are refused.

Slots are keyed by the model variables' neutral names (``variable.path``, as
in the manifest) and have the variable's shape, so their layout is the
weight's (``in,out`` for ``Dense``...). Neutral slot names: Adam's
``_momentums`` -> ``m``, ``_velocities`` -> ``v``, ``_velocity_hats`` ->
``v_max``; SGD's ``momentums`` -> ``momentum``; RMSprop's ``_velocities`` ->
``square_avg``, ``_momentums`` -> ``momentum``, ``_average_gradients`` ->
``grad_avg``.

Conversion to and from other backends goes through the neutral convention of
:mod:`polybundle.model.optimizer_conversion` (:func:`optimizer_to_neutral`,
:func:`optimizer_from_neutral`): SGD's and RMSprop's momentum are rescaled by
the learning rate, gradient clipping is refused.

Example:
    >>> import keras
    >>> import polybundle
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    >>> backend = polybundle.get_backend("tensorflow")
    >>> state = backend.export_optimizer(model, keras.optimizers.Adam())
    >>> backend.restore_optimizer(model, keras.optimizers.Adam(), state, backend.describe(model))
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from polybundle.errors import FormatError, OptimizerMismatchError, UnsupportedOptimizerError
from polybundle.model.backend import TensorSpec
from polybundle.model.optimizer import OptimizerState, to_plain
from polybundle.model.optimizer_conversion import NeutralOptimizer, refuse, rescale
from polybundle_tensorflow import keras_compat

_ALGORITHMS = {"Adam": "adam", "AdamW": "adamw", "SGD": "sgd", "RMSprop": "rmsprop"}
_SLOT_LISTS = {
    "adam": {"m": "_momentums", "v": "_velocities", "v_max": "_velocity_hats"},
    "adamw": {"m": "_momentums", "v": "_velocities", "v_max": "_velocity_hats"},
    "sgd": {"momentum": "momentums"},
    "rmsprop": {
        "square_avg": "_velocities", "momentum": "_momentums", "grad_avg": "_average_gradients"
    },
}
_NEUTRAL = {
    "weight_decay": "weight_decay", "beta_1": "beta_1", "beta_2": "beta_2",
    "epsilon": "epsilon", "amsgrad": "amsgrad", "momentum": "momentum",
    "nesterov": "nesterov", "rho": "rho", "centered": "centered",
}
_UNTOUCHED = {"name", "learning_rate"}
"""Config keys that are not set as attributes when restoring."""
NATIVE_CLASSES = {
    "adam": "keras.src.optimizers.adam.Adam",
    "adamw": "keras.src.optimizers.adamw.AdamW",
    "sgd": "keras.src.optimizers.sgd.SGD",
    "rmsprop": "keras.src.optimizers.rmsprop.RMSprop",
}
"""The qualified class of each neutral algorithm (what :func:`export_optimizer` records)."""
_CLIPPING = ("clipnorm", "clipvalue", "global_clipnorm")
_LR_SCALED = {("sgd", "momentum"): -1.0, ("rmsprop", "momentum"): 1.0}
"""Slots Keras keeps as ``sign * lr * (the neutral slot)``."""
_CONFIG_KEYS = {
    "adam": ("beta_1", "beta_2", "epsilon", "amsgrad"),
    "adamw": ("beta_1", "beta_2", "epsilon", "amsgrad"),
    "sgd": ("momentum", "nesterov"),
    "rmsprop": ("rho", "momentum", "epsilon", "centered"),
}
"""The neutral hyperparameters each Keras optimizer's config holds under the same names."""


def _qualified(obj: Any) -> str:
    kind = type(obj)
    return f"{kind.__module__}.{kind.__qualname__}"


def _algorithm(optimizer: Any) -> str:
    import keras

    kind = type(optimizer)
    name = kind.__name__
    if name in _ALGORITHMS and getattr(keras.optimizers, name, None) is kind:
        unsupported = [
            setting
            for setting in ("use_ema", "gradient_accumulation_steps", "loss_scale_factor")
            if getattr(optimizer, setting, None)
        ]
        if unsupported:
            raise UnsupportedOptimizerError(
                f"{_qualified(optimizer)} uses {', '.join(unsupported)}, whose extra state "
                "the neutral optimizer state does not describe; turn it off to save state."
            )
        return _ALGORITHMS[name]
    raise UnsupportedOptimizerError(
        f"the Keras optimizer {_qualified(optimizer)} is not supported for neutral state; "
        f"supported: {', '.join(f'keras.optimizers.{n}' for n in _ALGORITHMS)}. Save the "
        "weights without optimizers=, or use a supported optimizer."
    )


Variables = list[tuple[str, str, Any]]
"""A model's variables as ``(neutral name, weights-file key, variable)``, from the backend."""


def _slot_lists(optimizer: Any, algorithm: str) -> dict[str, list[Any]]:
    lists = {}
    for slot, attribute in _SLOT_LISTS[algorithm].items():
        variables = getattr(optimizer, attribute, None) or []
        if variables:
            lists[slot] = variables
    return lists


def _learning_rate(optimizer: Any) -> tuple[float, dict[str, Any] | None]:
    from keras.optimizers import schedules

    current = optimizer._learning_rate
    if isinstance(current, schedules.LearningRateSchedule):
        config = to_plain(schedules.serialize(current), f"{_qualified(current)} config")
        schedule = {"class": _qualified(current), "config": config}
        return float(current(optimizer._iterations)), schedule
    if callable(current) and not hasattr(current, "assign"):
        raise UnsupportedOptimizerError(
            f"{_qualified(optimizer)} has a plain callable learning rate ({current!r}), which "
            "is code, not data; use a float or a keras.optimizers.schedules schedule."
        )
    return float(np.asarray(current)), None


def export_optimizer(
    model: Any, optimizer: Any, scheduler: Any | None = None, *, variables: Variables
) -> OptimizerState:
    """Return the neutral state of a Keras optimizer that updates ``model``'s variables.

    ``variables`` names ``model``'s variables as the backend's ``describe``
    does (the backend's ``export_optimizer`` passes them).

    An optimizer that was never built is built on ``model.trainable_variables``
    first (its slots are then zeros, as Keras would make them). Keras keeps its
    schedule inside the optimizer, so ``scheduler`` must be ``None``.

    Example:
        >>> import keras
        >>> import polybundle
        >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        >>> backend = polybundle.get_backend("keras")
        >>> backend.export_optimizer(model, keras.optimizers.SGD(momentum=0.9)).algorithm
        'sgd'
    """
    algorithm = _algorithm(optimizer)
    if scheduler is not None:
        raise UnsupportedOptimizerError(
            f"Keras keeps the learning-rate schedule inside the optimizer; got a separate "
            f"{_qualified(scheduler)}. Pass the schedule as the optimizer's learning_rate."
        )
    if not optimizer.built:
        optimizer.build(model.trainable_variables)
    names = {id(variable): (name, variable) for name, _, variable in variables}
    unbound = [v.path for v in optimizer._trainable_variables if id(v) not in names]
    if unbound:
        raise OptimizerMismatchError(
            f"{_qualified(optimizer)} updates variables that are not the model's: "
            f"{unbound[:5]}; expected an optimizer built on this model's trainable variables "
            "(the one compiled with it or used in its training loop)."
        )
    parameters = [names[id(v)][0] for v in optimizer._trainable_variables]
    lists = _slot_lists(optimizer, algorithm)
    known = {id(optimizer._iterations), id(optimizer._learning_rate)}
    known.update(id(v) for variables in lists.values() for v in variables)
    unknown = [v.path for v in optimizer.variables if id(v) not in known]
    if unknown:
        raise UnsupportedOptimizerError(
            f"{_qualified(optimizer)} holds variables polybundle does not describe: "
            f"{unknown[:5]}; its state cannot be saved without losing them."
        )
    slots: dict[str, dict[str, np.ndarray]] = {}
    for slot, variables in lists.items():
        for name, variable in zip(parameters, variables, strict=True):
            slots.setdefault(name, {})[slot] = np.asarray(variable.numpy())
    config = to_plain(optimizer.get_config(), f"{_qualified(optimizer)}.get_config()")
    learning_rate, schedule = _learning_rate(optimizer)
    hyperparameters = {"learning_rate": learning_rate}
    hyperparameters.update({_NEUTRAL[k]: config[k] for k in _NEUTRAL if k in config})
    return OptimizerState(
        algorithm=algorithm,
        backend="tensorflow",
        native_class=_qualified(optimizer),
        step=int(optimizer._iterations.numpy()),
        groups=[{"parameters": parameters, "hyperparameters": hyperparameters}],
        slots=slots,
        schedule=schedule,
        native={"config": config},
    )


def _saved_variables(variables: Variables, specs: list[TensorSpec]) -> dict[str, Any]:
    """Return ``{saved neutral name: model variable}``, matched by the weights-file key."""
    own = {key: variable for _, key, variable in variables}
    return {spec.name: own[spec.key] for spec in specs if spec.key in own}


def _check(
    optimizer: Any, state: OptimizerState, by_name: dict[str, Any], scheduler: Any | None
) -> None:
    if state.backend != "tensorflow" or state.native_class != _qualified(optimizer):
        raise OptimizerMismatchError(
            f"the bundle holds state of {state.native_class} ({state.backend}, "
            f"{state.algorithm}), but the optimizer given is {_qualified(optimizer)}; restore "
            f"into a freshly made {state.native_class.rpartition('.')[2]} of the same framework."
        )
    if scheduler is not None:
        raise UnsupportedOptimizerError(
            "Keras keeps the learning-rate schedule inside the optimizer; pass scheduler=None."
        )
    _algorithm(optimizer)
    if state.schedule is None and not hasattr(optimizer._learning_rate, "assign"):
        raise OptimizerMismatchError(
            f"the saved optimizer has a float learning rate, but {_qualified(optimizer)} has a "
            f"schedule ({_qualified(optimizer._learning_rate)}); make it with a float one."
        )
    missing = [name for name in state.parameters if name not in by_name]
    if missing:
        raise OptimizerMismatchError(
            f"the saved optimizer updates {missing[:5]}, which the model does not have; "
            "restore into the model loaded from the same bundle."
        )
    for name, slots in state.slots.items():
        for slot, array in slots.items():
            if tuple(array.shape) != tuple(int(d) for d in by_name[name].shape):
                raise OptimizerMismatchError(
                    f"slot {slot!r} of {name!r} has shape {array.shape}, but the variable has "
                    f"{tuple(by_name[name].shape)}; the model differs from the one saved."
                )
    if optimizer.built:
        bound = [id(v) for v in optimizer._trainable_variables]
        if bound != [id(by_name[name]) for name in state.parameters]:
            raise OptimizerMismatchError(
                f"{_qualified(optimizer)} is already built on {len(bound)} variables that are "
                f"not the loaded model's {len(state.parameters)} saved ones, in order; pass a "
                "fresh, unbuilt optimizer (it is built on the model's variables here)."
            )


def _fail(state: OptimizerState, found: str, expected: str) -> FormatError:
    return FormatError(
        f"optimizer.json native config of {state.native_class}: {found}; expected {expected}. "
        "The optimizer state is damaged or was altered; re-save it."
    )


def _checked_config(optimizer: Any, state: OptimizerState) -> dict[str, Any]:
    """Return the saved Keras config after checking it against a fresh one's keys and types.

    Only keys the optimizer's own ``get_config()`` has are kept (a newer
    Keras' extra flags are dropped); hyperparameters must be in range and
    agree with the neutral ones; the EMA, accumulation and loss-scale
    settings the neutral state does not describe must be off.
    """
    from polybundle.model.optimizer import check_hyperparameter, from_plain

    config = from_plain(state.native.get("config"))
    if not isinstance(config, dict):
        raise _fail(state, f"the config is {repr(config)[:60]}", "an object")
    fresh = optimizer.get_config()
    checked = {}
    for key, value in config.items():
        if key not in fresh or key == "name":
            continue
        if key == "learning_rate" and state.schedule is not None:
            continue
        neutral_name = "learning_rate" if key == "learning_rate" else _NEUTRAL.get(key)
        if neutral_name is not None:
            check_hyperparameter(neutral_name, value, where="optimizer.json native config")
            neutral = state.hyperparameters.get(neutral_name, value)
            if None not in (neutral, value) and neutral != value:
                raise _fail(state, f"{key}={value!r} but the neutral {neutral_name} is "
                            f"{neutral!r}", "the two to agree")
        elif key in ("use_ema", "gradient_accumulation_steps", "loss_scale_factor") and value:
            raise _fail(state, f"{key} is {value!r}", "it off (the neutral state lacks its state)")
        default = fresh[key]
        plain = value is None or isinstance(value, (bool, int, float, str))
        same = value is None or default is None or (
            isinstance(value, bool) == isinstance(default, bool)
            and isinstance(value, (int, float)) == isinstance(default, (int, float))
        )
        if not plain or not same:
            raise _fail(state, f"{key} is {repr(value)[:60]}",
                        f"a {type(default).__name__} like the optimizer's own")
        checked[key] = value
    if state.schedule is None and "learning_rate" not in checked:
        raise _fail(state, "no learning_rate", "a float learning rate")
    return checked


def _schedule(state: OptimizerState) -> Any:
    """Return the saved learning-rate schedule, rebuilt only from Keras' own schedule classes."""
    from keras.optimizers import schedules

    from polybundle.model.optimizer import from_plain

    config = from_plain((state.schedule or {}).get("config"))
    valid = (
        isinstance(config, dict)
        and config.get("module") in ("keras.optimizers.schedules", None)
        and isinstance(config.get("class_name"), str)
        and isinstance(getattr(schedules, config["class_name"], None), type)
        and issubclass(getattr(schedules, config["class_name"]), schedules.LearningRateSchedule)
        and isinstance(config.get("config"), dict)
    )
    if not valid:
        raise _fail(state, f"the schedule is {repr(config)[:80]}",
                    "a serialized keras.optimizers.schedules schedule")
    try:
        return schedules.deserialize(config)
    except (TypeError, ValueError) as exc:
        raise _fail(state, f"Keras refuses the schedule ({str(exc)[:100]})",
                    "a schedule config Keras can rebuild") from None


def _set_hyperparameters(optimizer: Any, config: dict[str, Any], schedule: Any | None) -> None:
    for key, value in config.items():
        if key not in _UNTOUCHED and hasattr(optimizer, key):
            setattr(optimizer, key, value)
    if schedule is not None:
        optimizer.learning_rate = schedule
    else:
        optimizer._learning_rate.assign(config["learning_rate"])


def restore_optimizer(
    model: Any,
    optimizer: Any,
    state: OptimizerState,
    specs: list[TensorSpec],
    scheduler: Any | None = None,
    *,
    variables: Variables,
) -> None:
    """Load neutral ``state`` into a Keras optimizer for ``model`` (built here if fresh).

    ``specs`` (the saved model's tensors) map the state's names to ``model``'s
    variables through their weights-file keys, so auto-generated layer names
    (``dense_1`` vs ``dense``) do not matter.

    Example:
        >>> import keras
        >>> import polybundle
        >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        >>> backend = polybundle.get_backend("keras")
        >>> state = backend.export_optimizer(model, keras.optimizers.Adam(learning_rate=0.5))
        >>> fresh = keras.optimizers.Adam()
        >>> backend.restore_optimizer(model, fresh, state, backend.describe(model))
        >>> float(fresh.learning_rate)
        0.5
    """
    by_name = _saved_variables(variables, specs)
    _check(optimizer, state, by_name, scheduler)
    config = _checked_config(optimizer, state)
    schedule = None if state.schedule is None else _schedule(state)
    built = optimizer.built
    _set_hyperparameters(optimizer, config, schedule)
    if not built:
        optimizer.build([by_name[name] for name in state.parameters])
    lists = _slot_lists(optimizer, state.algorithm)
    saved = set(state.slot_names())
    if set(lists) != saved:
        raise OptimizerMismatchError(
            f"{_qualified(optimizer)} keeps slots {sorted(lists)} but the bundle holds "
            f"{sorted(saved)}; an optimizer built before restoring keeps its own settings "
            "(amsgrad, momentum, centered): pass a fresh, unbuilt one."
        )
    optimizer._iterations.assign(state.step or 0)
    for name, slots in state.slots.items():
        index = optimizer._get_variable_index(by_name[name])
        for slot, array in slots.items():
            lists[slot][index].assign(array)


def optimizer_to_neutral(state: OptimizerState) -> NeutralOptimizer:
    """Describe a Keras optimizer state in the neutral convention.

    Keras keeps SGD's momentum as ``-lr`` times the neutral velocity and
    RMSprop's as ``lr`` times it; both are rescaled. Gradient clipping has no
    neutral form and is refused. Keras reports its float32 learning rate
    (0.009999999776...); the neutral one is the shortest decimal giving the
    same float32 (0.01).

    Example:
        >>> state = OptimizerState("sgd", "tensorflow", NATIVE_CLASSES["sgd"], 4,
        ...     [{"parameters": ["w"], "hyperparameters": {"learning_rate": 0.5,
        ...       "momentum": 0.9, "nesterov": False, "weight_decay": None}}],
        ...     {"w": {"momentum": np.ones(2, np.float32)}}, native={"config": {}})
        >>> optimizer_to_neutral(state).slots["w"]["momentum"]
        array([-2., -2.], dtype=float32)
    """
    config = state.native.get("config", {})
    clipping = [key for key in _CLIPPING if isinstance(config, dict) and config.get(key)]
    if clipping:
        raise refuse(state, f"gradient clipping ({', '.join(clipping)}) is part of the Keras "
                     "optimizer, and has no neutral form", "Clip in the target's training loop "
                     "and save the Keras optimizer without clipping to convert it.")
    hyper = dict(state.hyperparameters)
    hyper["weight_decay"] = float(hyper.get("weight_decay") or 0.0)
    if isinstance(hyper.get("learning_rate"), float):
        hyper["learning_rate"] = float(str(np.float32(hyper["learning_rate"])))
    neutral = NeutralOptimizer(
        algorithm=state.algorithm,
        hyperparameters=hyper,
        step=state.step or 0,
        parameters=state.parameters,
        slots={},
    )
    rate = float(neutral.hyperparameters["learning_rate"])
    neutral.slots = {
        name: {slot: _scaled(array, state.algorithm, slot, 1.0 / rate)
               for slot, array in held.items()}
        for name, held in state.slots.items()
    }
    return neutral


def _scaled(array: np.ndarray, algorithm: str, slot: str, factor: float) -> np.ndarray:
    """Return ``array`` times ``sign * factor`` for the slots Keras keeps in units of ``lr``."""
    sign = _LR_SCALED.get((algorithm, slot))
    return array if sign is None else rescale(array, sign * factor)


def optimizer_from_neutral(neutral: NeutralOptimizer, specs: list[TensorSpec]) -> OptimizerState:
    """Return the Keras optimizer state for a converted ``neutral`` description.

    Every variable gets every slot the optimizer keeps (zeros where the
    source had none yet and that is exact); the step is Keras' one
    ``iterations`` count.

    Example:
        >>> neutral = NeutralOptimizer("sgd", {"learning_rate": 0.5, "momentum": 0.9}, 4,
        ...     ["w"], {"w": {"momentum": np.ones(2, np.float32)}})
        >>> state = optimizer_from_neutral(neutral, [TensorSpec("w", "w", (2,), "float32", "")])
        >>> state.native_class, state.slots["w"]["momentum"]
        ('keras.src.optimizers.sgd.SGD', array([-0.5, -0.5], dtype=float32))
    """
    hyper = neutral.hyperparameters
    if hyper.get("epsilon_root"):
        raise neutral.refuse(f"epsilon_root={hyper['epsilon_root']} (epsilon inside the square "
                             "root) has no Keras counterpart", "Train with epsilon_root=0.",
                             "tensorflow")
    keys = _CONFIG_KEYS[neutral.algorithm]
    config = {"learning_rate": hyper["learning_rate"], **{key: hyper[key] for key in keys},
              "weight_decay": hyper["weight_decay"] or None, **dict.fromkeys(_CLIPPING)}
    rate = float(hyper["learning_rate"])
    slots = {
        name: {slot: _scaled(array, neutral.algorithm, slot, rate)
               for slot, array in held.items()}
        for name, held in neutral.complete_slots(specs, target="tensorflow").items()
    }
    return OptimizerState(
        algorithm=neutral.algorithm,
        backend="tensorflow",
        native_class=NATIVE_CLASSES[neutral.algorithm],
        step=neutral.step,
        groups=[{"parameters": list(neutral.parameters),
                 "hyperparameters": {"learning_rate": hyper["learning_rate"],
                                     **{_NEUTRAL[k]: config[k] for k in _NEUTRAL if k in config}}}],
        slots=slots,
        native={"config": to_plain(config, "converted Keras config")},
    )


@contextmanager
def without_optimizer(model: Any) -> Iterator[None]:
    """Hide ``model.optimizer`` while the body runs (so ``.keras`` omits its variables).

    Keras writes a compiled model's optimizer variables into
    ``model.weights.h5`` as positional, undocumented slots; polybundle keeps
    optimizer state only in its neutral members, so it is not duplicated.

    Example:
        >>> import keras
        >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        >>> model.compile(optimizer="adam", loss="mse")
        >>> with without_optimizer(model):
        ...     print(model.optimizer)
        None
        >>> model.optimizer is not None
        True
    """
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None:
        yield
        return
    model.optimizer = None
    try:
        yield
    finally:
        model.optimizer = optimizer


_NO_GLOBAL_GENERATOR = (
    "TensorFlow op determinism is enabled and no global generator was set "
    "(tf.random.set_global_generator), so there is none to record; TensorFlow refuses to "
    "create one then"
)


def _global_generator() -> Any | None:
    """Return TensorFlow's global generator, or None where asking for it would fail.

    With op determinism on (``tf.config.experimental.enable_op_determinism()``)
    and none set, ``tf.random.get_global_generator()`` raises rather than
    creating a non-deterministic one; no such generator has then drawn numbers.
    """
    import tensorflow as tf

    try:
        return tf.random.get_global_generator()
    except RuntimeError as exc:  # TensorFlow has no public "is determinism on?" query
        if "determinism" in str(exc):
            return None
        raise


def capture_rng() -> dict[str, Any]:
    """Return TensorFlow's global generator state (and Keras' global seed generator, if made).

    Where op determinism is on and no global generator was set, ``state`` is
    ``None`` and ``skipped`` says why (Keras' seed generator is still recorded).

    Example:
        >>> sorted(capture_rng())
        ['algorithm', 'keras_seed', 'state']
    """
    generator = _global_generator()
    keras_seed = keras_compat.keras_seed_generator(create=False)
    state: dict[str, Any] = {
        "algorithm": None if generator is None else int(generator.algorithm),
        "state": None if generator is None else [int(x) for x in generator.state.numpy()],
        "keras_seed": None if keras_seed is None else [int(x) for x in keras_seed.state.numpy()],
    }
    if generator is None:
        state["skipped"] = _NO_GLOBAL_GENERATOR
    return state


def _int_list(value: Any, length: int | None, name: str) -> np.ndarray:
    valid = (
        isinstance(value, list)
        and (length is None or len(value) == length)
        and 0 < len(value) <= 16
        and all(isinstance(x, int) and not isinstance(x, bool) and -(2**63) <= x < 2**64
                for x in value)
    )
    if not valid:
        raise FormatError(
            f"rng.json: the TensorFlow {name} is {repr(value)[:80]}; expected a short list of "
            "64-bit integers. The RNG state is damaged; re-save it."
        )
    return np.asarray([x - 2**64 if x >= 2**63 else x for x in value], dtype=np.int64)


def restore_rng(state: dict[str, Any]) -> None:
    """Put back the state from :func:`capture_rng`; check every value first.

    A state recorded without a global generator (op determinism on, none set)
    leaves TensorFlow's global generator as it is.

    Example:
        >>> restore_rng(capture_rng())
    """
    import tensorflow as tf

    generator = None
    if state.get("state") is not None:
        algorithm = state.get("algorithm")
        if algorithm not in (1, 2, 3):  # Philox, ThreeFry, auto-select
            raise FormatError(
                f"rng.json: the TensorFlow generator algorithm is {repr(algorithm)[:40]}; "
                "expected 1, 2 or 3. The RNG state is damaged; re-save it."
            )
        generator = _int_list(state["state"], None, "generator state")
    keras_seed = state.get("keras_seed")
    seed = None if keras_seed is None else _int_list(keras_seed, None, "Keras seed state")
    keras_generator = None if seed is None else keras_compat.keras_seed_generator(create=True)
    if keras_generator is not None and tuple(seed.shape) != tuple(keras_generator.state.shape):
        raise FormatError(
            f"rng.json: the Keras seed state has {seed.shape[0]} values; this Keras keeps "
            f"{tuple(keras_generator.state.shape)}. Re-save the RNG state with this Keras."
        )
    if generator is not None:
        try:
            made = tf.random.Generator.from_state(generator, alg=state["algorithm"])
        except (ValueError, tf.errors.InvalidArgumentError) as exc:
            raise FormatError(
                f"rng.json: TensorFlow refuses the recorded generator state ({exc}). The RNG "
                "state is damaged; re-save it."
            ) from None
        tf.random.set_global_generator(made)
    if keras_generator is not None:
        keras_generator.state.assign(seed.astype(keras_generator.state.dtype))
