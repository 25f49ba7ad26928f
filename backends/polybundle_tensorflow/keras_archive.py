"""The Keras gate: check a ``.keras`` file's config before anything reads it; list its weights.

Format 2 (``verify``, loading without a builder) and the TensorFlow dill era
both rely on it.

A ``.keras`` file is a zip (``config.json``, ``model.weights.h5``,
``metadata.json``), opened by the one opener
:func:`polybundle_tensorflow.keras_file.open_keras` (the zip checked like the
outer one, ``config.json`` read as strict JSON); every dataset of its weights goes through
:func:`polybundle_tensorflow.keras_file.check_dataset` before anything is read
(:func:`read_weights`, :func:`weight_specs`). :func:`config_problems` names
what in ``config.json`` would make Keras import or run code: ``Lambda``
layers (they carry marshalled bytecode) and classes from modules other than
Keras' own, unless the caller declares them (a legacy archive's
``custom_objects.dill`` names its own). A legacy archive has no manifest, so
the only declaration of a variable's dtype is its layer's dtype policy in
``config.json``: :func:`declared_dtypes` reads it and every floating dataset
must hold exactly that dtype (:class:`IntegrityError` otherwise).

Example: a legacy archive's ``.keras`` file whose config names a custom layer;
the archive's ``custom_objects.dill`` declares it.

    >>> from polybundle_tensorflow.keras_file import open_keras
    >>> keras_file = open_keras(Path("model.keras").read_bytes(), where="net/model.keras")
    >>> config_problems(keras_file.config)
    ["class 'SquareLayer' from module 'ptycho.custom_layers', which is not Keras"]
    >>> config_problems(keras_file.config, declared=["ptycho.custom_layers.SquareLayer"])
    []
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from polybundle.errors import IntegrityError, UnsafeContentError
from polybundle.model.backend import TensorSpec
from polybundle.model.layouts import OPAQUE, SCALAR
from polybundle_tensorflow.keras_file import (
    _MODELS,
    CONFIG_JSON,
    WEIGHTS_H5,
    KerasZip,
    StoredDataset,
    _snake_case,
    check_weights,
    read_stored,
)

__all__ = [
    "check_config",
    "check_dtypes",
    "config_problems",
    "declared_dtypes",
    "read_weights",
    "variable_dtype",
    "weight_specs",
]

_KERAS_MODULES = ("keras", "keras.", "tf_keras.")
_CODE_CLASSES = {"Lambda", "TFOpLambda", "SlicingOpLambda"}
_FLOATS = frozenset({"float16", "bfloat16", "float32", "float64"})
"""The floating dtypes a Keras variable can have (the ones checked against the config)."""


def _objects(value: Any, depth: int = 0) -> Iterator[dict[str, Any]]:
    if depth > 200:
        raise UnsafeContentError("a Keras config nests deeper than 200 levels; refused.")
    if isinstance(value, dict):
        if "class_name" in value:
            yield value
        for item in value.values():
            yield from _objects(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            yield from _objects(item, depth + 1)


def config_problems(config: dict[str, Any], declared: Iterable[str] = ()) -> list[str]:
    """Return what in a Keras config would import or run code (empty when safe).

    ``declared`` lists ``module.Class`` names the archive itself declares as
    its custom objects; those are expected, not problems.

    Example:
        >>> config_problems({"class_name": "Lambda", "module": "keras.layers"})
        ['a Lambda layer (it carries Python bytecode)']
        >>> config_problems({"class_name": "Evil", "module": "os"})
        ["class 'Evil' from module 'os', which is not Keras"]
    """
    allowed = set(declared)
    problems = []
    # compile_config (a custom loss is {"module": "builtins", "class_name": "function"}) is
    # never deserialized: every Keras load here passes compile=False.
    for item in _objects({k: v for k, v in config.items() if k != "compile_config"}):
        class_name = item.get("class_name")
        module = item.get("module")
        if class_name in _CODE_CLASSES:
            problems.append(f"a {class_name} layer (it carries Python bytecode)")
        elif isinstance(module, str) and not module.startswith(_KERAS_MODULES):
            if f"{module}.{class_name}" not in allowed:
                problems.append(f"class {class_name!r} from module {module!r}, which is not Keras")
    return sorted(set(problems))


def check_config(config: dict[str, Any], *, where: str, declared: Iterable[str] = ()) -> None:
    """Raise :class:`UnsafeContentError` when :func:`config_problems` finds anything.

    Example:
        >>> check_config({"class_name": "Dense", "module": "keras.layers"}, where="x")
    """
    problems = config_problems(config, declared)
    if problems:
        raise UnsafeContentError(
            f"{where}'s Keras config names {'; '.join(problems)}. Loading it would import or "
            "run code, so polybundle refuses. Register a builder for this model with "
            "@polybundle.architecture(...) and load its weights instead."
        )


def weight_specs(keras_file: KerasZip) -> list[TensorSpec]:
    """List the layer weights in ``model.weights.h5`` as specs keyed by their h5 path.

    Optimizer slots are left out. Layouts are not guessed (``opaque``, or
    ``scalar``); the tensor's name is its h5 key.

    Example:
        >>> from polybundle_tensorflow.keras_file import open_keras
        >>> keras_file = open_keras(Path("model.keras").read_bytes(), where="net/model.keras")
        >>> [(s.key, s.shape, s.layout) for s in weight_specs(keras_file)][:1]
        [('layers/batch_normalization/vars/0', (8,), 'opaque')]
        >>> any(s.key.startswith("optimizer/") for s in weight_specs(keras_file))
        False
    """
    return [
        TensorSpec(key, key, shape, dtype, SCALAR if not shape else OPAQUE)
        for key, shape, dtype, _ in _datasets(keras_file, with_arrays=False)
    ]


def read_weights(keras_file: KerasZip) -> dict[str, np.ndarray]:
    """Return ``{h5 key: array}`` for every layer weight (h5py only, no Keras).

    Example:
        >>> from polybundle_tensorflow.keras_file import open_keras
        >>> keras_file = open_keras(Path("model.keras").read_bytes(), where="net/model.keras")
        >>> read_weights(keras_file)["layers/conv2d/vars/0"].shape
        (3, 3, 1, 8)
    """
    return {key: array for key, _, _, array in _datasets(keras_file, with_arrays=True)}


def _datasets(
    keras_file: KerasZip, *, with_arrays: bool
) -> list[tuple[str, tuple[int, ...], str, Any]]:
    """Check every dataset of the weights file; return the layer weights (optionally read).

    The whole file goes through :func:`polybundle_tensorflow.keras_file.check_weights`
    (links, storage, type, extent), optimizer variables included, before
    anything is read; only the datasets under ``layers/`` are returned.
    """
    stream = keras_file.weights()
    stored = check_weights(stream, where=keras_file.where)
    layers = [dataset for dataset in stored if dataset.key.startswith("layers/")]
    check_dtypes(keras_file, layers)
    return [
        (
            stored.key,
            stored.shape,
            str(stored.dtype),
            read_stored(stream, stored, where=keras_file.where) if with_arrays else None,
        )
        for stored in layers
    ]


def variable_dtype(policy: Any) -> str | None:
    """Return the variables' floating dtype a layer's ``dtype`` config declares, or None.

    ``policy`` is a dtype name or a ``DTypePolicy`` dict. Mixed policies keep
    their variables in ``float32``; quantized ones (``int8_from_<policy>``, or a
    ``QuantizedDTypePolicy`` with its ``source_name``) keep their floating
    variables in the policy they were quantized from (their int8 kernels are
    not floating, so never compared). None when nothing floating is declared.

    Example:
        >>> variable_dtype("float32")
        'float32'
        >>> variable_dtype({"class_name": "DTypePolicy", "config": {"name": "mixed_float16"}})
        'float32'
        >>> variable_dtype({"class_name": "DTypePolicy", "config": {"name": "int8_from_float16"}})
        'float16'
        >>> variable_dtype({"config": {"mode": "int8", "source_name": "mixed_bfloat16"}})
        'float32'
        >>> variable_dtype(None) is None
        True
    """
    if isinstance(policy, dict):
        config = policy.get("config")
        config = config if isinstance(config, dict) else {}
        policy = config.get("source_name", config.get("name"))
    if not isinstance(policy, str):
        return None
    if "_from_" in policy:
        policy = policy.split("_from_", 1)[1]
    if policy.startswith("mixed_"):
        return "float32"
    return policy if policy in _FLOATS else None


def declared_dtypes(
    model: dict[str, Any], prefix: str = "", depth: int = 0
) -> dict[str, tuple[str, str]]:
    """Map each layer's ``<folder>/vars/`` in the weights file to (layer name, variable dtype).

    Folders are named as Keras names them (and as
    :func:`polybundle_tensorflow.keras_file.read_keras_weights` finds them): the
    layer class in snake case, numbered per model; nested models recurse.
    Layers whose config declares no floating dtype are left out.

    Example:
        >>> declared_dtypes({"class_name": "Sequential", "config": {"layers": [
        ...     {"class_name": "Dense", "config": {"name": "fc", "dtype": "float32"}},
        ...     {"class_name": "Dense", "config": {"name": "out", "dtype": "float64"}}]}})
        {'layers/dense/vars/': ('fc', 'float32'), 'layers/dense_1/vars/': ('out', 'float64')}
    """
    if depth > 50:
        raise UnsafeContentError("a Keras config nests models deeper than 50 levels; refused.")
    config = model.get("config")
    layers = config.get("layers") if isinstance(config, dict) else None
    if not isinstance(layers, list):
        return {}
    layers = [layer for layer in layers if isinstance(layer, dict)]
    if model.get("class_name") == "Sequential":
        layers = [layer for layer in layers if layer.get("class_name") != "InputLayer"]
    found: dict[str, tuple[str, str]] = {}
    used: dict[str, int] = {}
    for layer in layers:
        class_name = layer.get("class_name")
        layer_config = layer.get("config")
        if not isinstance(class_name, str) or not isinstance(layer_config, dict):
            continue
        base = _snake_case(class_name)
        used[base] = used.get(base, -1) + 1
        folder = f"{prefix}layers/{base}" + (f"_{used[base]}" if used[base] else "")
        if class_name in _MODELS or "layers" in layer_config:
            found.update(declared_dtypes(layer, f"{folder}/", depth + 1))
            continue
        dtype = variable_dtype(layer_config.get("dtype"))
        if dtype is not None:
            found[f"{folder}/vars/"] = (str(layer_config.get("name", base)), dtype)
    return found


def check_dtypes(keras_file: KerasZip, layers: list[StoredDataset]) -> None:
    """Refuse a floating dataset whose dtype is not its layer's declared variable dtype.

    Only a layer's own variables (``<folder>/vars/<i>``) of a floating dtype
    are compared; integer or bool variables (seed states, counters) keep
    their own dtype, and layers the config declares no dtype for are not
    checked. Raises :class:`IntegrityError` before anything is read.

    Example: the file as saved passes; a config altered to declare ``float16`` is refused.

        >>> from polybundle_tensorflow.keras_file import open_keras
        >>> keras_file = open_keras(Path("model.keras").read_bytes(), where="net/model.keras")
        >>> stored = check_weights(keras_file.weights(), where=keras_file.where)
        >>> check_dtypes(keras_file, stored)
        >>> layer = next(layer for layer in keras_file.config["config"]["layers"]
        ...              if layer["config"]["name"] == "enc_conv1")
        >>> layer["config"]["dtype"] = "float16"
        >>> check_dtypes(keras_file, stored)
        Traceback (most recent call last):
        polybundle.errors.IntegrityError: net/model.keras: model.weights.h5 'layers/conv2d/vars/0'
        holds float32 values, but layer 'enc_conv1' in config.json keeps its variables in
        float16; the archive was altered or damaged, so nothing was read. Re-save the model
        from a trusted copy.
    """
    declared = declared_dtypes(keras_file.config)
    for stored in layers:
        folder, _, index = stored.key.rpartition("/")
        expected = declared.get(f"{folder}/")
        found = str(stored.dtype)
        if expected is None or not index.isdigit() or found not in _FLOATS:
            continue
        layer, dtype = expected
        if found != dtype:
            raise IntegrityError(
                f"{keras_file.where}: {WEIGHTS_H5} {stored.key!r} holds {found} values, but "
                f"layer {layer!r} in {CONFIG_JSON} keeps its variables in {dtype}; the archive "
                "was altered or damaged, so nothing was read. Re-save the model from a trusted "
                "copy."
            )
