"""The one module that touches Keras' private API (``keras.src``).

Everything polybundle needs from Keras that Keras does not export publicly is
wrapped here, so a Keras release that moves it breaks one module: saving and
loading a ``.keras`` file from a stream, the walk Keras' saver makes over a
model's variables (:func:`saved_state`), the JSON members Keras writes,
deserializing a config, creating variables with their initialisers deferred,
and Keras' global seed generator.

Keras is imported inside each function: importing it loads TensorFlow (seconds),
and ``polybundle_tensorflow`` is imported by every polybundle session through
its entry point, also where TensorFlow is not installed.

Example:
    >>> import keras
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3)])
    >>> {path: sorted(slots) for path, slots in saved_variable_slots(model).items() if slots}
    {'layers/dense': ['0', '1']}
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

_PENDING = "uninitialized_variables"
"""Keras' global list of variables created in a ``StatelessScope`` and not yet initialised."""


def save_model(model: Any, stream: BinaryIO) -> None:
    """Write ``model`` as a ``.keras`` file (config and weights) to the binary ``stream``.

    Example:
        >>> import io, keras
        >>> stream = io.BytesIO()
        >>> save_model(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]), stream)
        >>> stream.getvalue()[:2]
        b'PK'
    """
    from keras.src.saving import saving_lib

    saving_lib.save_model(model, stream)


def load_model(stream: BinaryIO, *, custom_objects: dict[str, Any] | None = None) -> Any:
    """Rebuild the model of a checked ``.keras`` stream: ``safe_mode=True``, not compiled.

    Example:
        >>> import io, keras
        >>> stream = io.BytesIO()
        >>> save_model(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]), stream)
        >>> _ = stream.seek(0)
        >>> load_model(stream).output_shape
        (None, 1)
    """
    from keras.src.saving import saving_lib

    return saving_lib.load_model(
        stream, custom_objects=custom_objects, compile=False, safe_mode=True
    )


@dataclass(frozen=True)
class SavedGroup:
    """One object Keras' saver visits: its folder, its ``name`` attribute, what it stores.

    ``path`` is the folder in ``model.weights.h5`` (``""`` for the model
    itself), ``name`` the ``name`` attribute Keras gives the folder's
    ``vars`` group (None when it gives none), ``values`` the slots the object
    stores, ``{"0": variable, ...}``, in order (a variable, or an array or
    tensor a layer computes, such as a kernel with LoRA merged in).

    Example:
        >>> SavedGroup("layers/dense", "fc", {}).path
        'layers/dense'
    """

    path: str
    name: str | None
    values: dict[str, Any]


def saved_state(model: Any) -> list[SavedGroup]:
    """Return what Keras' saver writes for ``model``, in the order it writes it.

    The saver's own walk is run into a recording store; nothing is written.

    Example:
        >>> import keras
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3, name="fc")],
        ...                          name="net")
        >>> [(group.path, group.name, list(group.values)) for group in saved_state(model)]
        [('', 'net', []), ('layers/dense', 'fc', ['0', '1'])]
    """
    from keras.src.saving import saving_lib

    class RecordingStore(saving_lib.NpzIOStore):  # _save_state accepts Keras' stores only
        def __init__(self) -> None:
            super().__init__("polybundle-walk", mode="w")
            self.groups: list[SavedGroup] = []

        def make(self, path: str, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
            name = (metadata or {}).get("name")
            self.groups.append(SavedGroup(path, name if isinstance(name, str) else None, {}))
            return self.groups[-1].values

    store = RecordingStore()
    saving_lib._save_state(
        model, weights_store=store, assets_store=None, inner_path="", visited_saveables=set()
    )
    return store.groups


def saved_variable_slots(model: Any) -> dict[str, dict[str, Any]]:
    """Return ``{h5 folder: {slot: variable}}``: where Keras' saver puts each variable.

    The root's folder is ``"__root__"`` (see :func:`saved_state`). Example:
    see the module docstring.
    """
    return {group.path or "__root__": group.values for group in saved_state(model)}


def serialized_members(model: Any) -> tuple[str, str]:
    """Return the ``config.json`` and ``metadata.json`` texts Keras writes for ``model``.

    Example:
        >>> import json, keras
        >>> config, metadata = serialized_members(keras.Sequential([keras.Input((2,))]))
        >>> json.loads(config)["class_name"], sorted(json.loads(metadata))
        ('Sequential', ['date_saved', 'keras_version'])
    """
    from keras.src.saving import saving_lib

    return saving_lib._serialize_model_as_json(model)


def deserialize(config: dict[str, Any]) -> Any:
    """Build the model ``config`` describes, as ``keras.saving.load_model`` does (no compile).

    Example:
        >>> import keras
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        >>> from keras.saving import serialize_keras_object
        >>> deserialize(serialize_keras_object(model)).output_shape
        (None, 1)
    """
    from keras.src.saving.serialization_lib import ObjectSharingScope, deserialize_keras_object

    config = {**config, "compile_config": None}
    with ObjectSharingScope():
        return deserialize_keras_object(config, None, safe_mode=True)


@contextlib.contextmanager
def deferred_initialization() -> Iterator[None]:
    """Create variables inside without running their initialisers (Keras' ``StatelessScope``).

    A deferred variable has ``_value`` None until it is given one
    (``variable._initialize(array)``) or :func:`initialize_pending` runs its
    initialiser.

    Example:
        >>> import keras
        >>> with deferred_initialization():
        ...     layer = keras.layers.Dense(2)
        ...     layer.build((None, 3))
        >>> layer.kernel._value is None
        True
        >>> initialize_pending()
        >>> tuple(layer.kernel.shape)
        (3, 2)
    """
    from keras.src.backend.common.stateless_scope import StatelessScope

    with StatelessScope(initialize_variables=False):
        yield


def forget_pending() -> None:
    """Drop every deferred variable from Keras' pending list (a build that failed).

    Example:
        >>> forget_pending()
    """
    from keras.src.backend.common import global_state

    global_state.set_global_attribute(_PENDING, [])


def keep_uninitialized_pending() -> None:
    """Keep on Keras' pending list only the deferred variables still without a value.

    Example:
        >>> keep_uninitialized_pending()
    """
    from keras.src.backend.common import global_state

    pending = global_state.get_global_attribute(_PENDING) or []
    global_state.set_global_attribute(_PENDING, [v for v in pending if v._value is None])


def initialize_pending() -> None:
    """Run the initialiser of every deferred variable still pending.

    Example: see :func:`deferred_initialization`.
    """
    from keras.src.backend.common.variables import initialize_all_variables

    initialize_all_variables()


def keras_seed_generator(*, create: bool) -> Any:
    """Return Keras' global seed generator; None when none was made and ``create`` is False.

    Example:
        >>> keras_seed_generator(create=True) is keras_seed_generator(create=False)
        True
    """
    from keras.src.backend.common import global_state
    from keras.src.random.seed_generator import GLOBAL_SEED_GENERATOR, global_seed_generator

    if create:
        return global_seed_generator()
    return global_state.get_global_attribute(GLOBAL_SEED_GENERATOR)
