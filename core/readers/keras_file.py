"""Read the weights of a Keras 3 ``model.keras`` file with h5py, without Keras.

A ``.keras`` file is a zip holding ``config.json`` (the architecture) and
``model.weights.h5``. Keras stores each layer's variables as
``layers/<snake_case(class)>[_<n>]/vars/<i>``: the folder is named after the
layer's *class*, numbered in the order the model lists its layers, and ``i``
is the variable's position in the layer (trainable ones first). This module
walks ``config.json`` the same way to give every dataset its variable path
(``<layer name>/<variable>``, as ``keras.Variable.path`` says) and its
canonical kind (:mod:`polybundle.canonical`).

Example:
    >>> with open("model.keras", "rb") as f:  # doctest: +SKIP
    ...     sorted(read_keras(f))[:2]
    ['enc_bn/beta', 'enc_bn/gamma']
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

from ..archive import MemberRange, NestedZip
from ..canonical import Canonical, keras_canonical
from ..errors import FormatError

WEIGHTS_H5 = "model.weights.h5"
CONFIG_JSON = "config.json"
MAX_CONFIG_BYTES = 64 * 1024 * 1024

_MODELS = {"Functional", "Sequential", "Model"}


def _snake_case(name: str) -> str:
    """Keras' ``to_snake_case``, which names the weight folders."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _variable_names(class_name: str, config: dict[str, Any]) -> list[str] | None:
    """Return the variable names of a layer in Keras' storage order, or None if unknown."""
    if class_name in ("Dense",) or class_name.startswith(("Conv", "DepthwiseConv")):
        return ["kernel", *(["bias"] if config.get("use_bias", True) else [])]
    if class_name in ("LayerNormalization", "GroupNormalization"):
        return [
            *(["gamma"] if config.get("scale", True) else []),
            *(["beta"] if config.get("center", True) else []),
        ]
    if class_name == "BatchNormalization":
        return [
            *(["gamma"] if config.get("scale", True) else []),
            *(["beta"] if config.get("center", True) else []),
            "moving_mean",
            "moving_variance",
        ]
    if class_name == "Embedding":
        return ["embeddings"]
    if class_name == "PReLU":
        return ["alpha"]
    return None


@dataclass(frozen=True)
class KerasWeight:
    """One stored variable of a ``.keras`` file.

    ``name`` is ``<layer name>/<variable>`` (``keras.Variable.path``), ``key``
    the dataset in ``model.weights.h5``, ``layer_class`` the layer's class.

    Example:
        >>> KerasWeight("fc/kernel", "layers/dense/vars/0", "fc", "Dense", "kernel",
        ...             (3, 4), "float32", Canonical("dense", "kernel", "in,out")).slot
        'kernel'
    """

    name: str
    key: str
    layer: str
    layer_class: str
    variable: str
    shape: tuple[int, ...]
    dtype: str
    canonical: Canonical

    @property
    def slot(self) -> str:
        """Return the canonical slot (``kernel``, ``gamma``, ...; ``""`` if unknown)."""
        return self.canonical.slot


def _walk(model: dict[str, Any], prefix: str, h5: Any, out: list[KerasWeight]) -> None:
    """Append the weights of every layer of ``model`` (a config dict) found under ``prefix``."""
    import h5py

    layers = model.get("config", {}).get("layers", [])
    if model.get("class_name") == "Sequential":
        layers = [layer for layer in layers if layer.get("class_name") != "InputLayer"]
    used: dict[str, int] = {}
    for layer in layers:
        class_name = layer.get("class_name", "")
        config = layer.get("config", {})
        base = _snake_case(class_name)
        used[base] = used.get(base, -1) + 1
        folder = f"{prefix}layers/{base}" + (f"_{used[base]}" if used[base] else "")
        if class_name in _MODELS or "layers" in config:
            _walk(layer, f"{folder}/", h5, out)
            continue
        group = h5.get(f"{folder}/vars")
        if not isinstance(group, h5py.Group) or not len(group):
            continue
        keys = sorted(group, key=int)
        datasets = [group[k] for k in keys]
        names = _variable_names(class_name, config)
        if names is None or len(names) != len(keys):
            names = [f"vars/{k}" for k in keys]
        shapes = {n: tuple(d.shape) for n, d in zip(names, datasets, strict=True)}
        groups = int(config.get("groups", 1) or 1)
        kernel = shapes.get("kernel", ())
        group_channels = kernel[-2] if len(kernel) >= 2 else 0
        layer_name = config.get("name", base)
        for key, name, dataset in zip(keys, names, datasets, strict=True):
            out.append(
                KerasWeight(
                    name=f"{layer_name}/{name}",
                    key=f"{folder}/vars/{key}",
                    layer=layer_name,
                    layer_class=class_name,
                    variable=name,
                    shape=tuple(dataset.shape),
                    dtype=str(dataset.dtype),
                    canonical=keras_canonical(
                        class_name, name, tuple(dataset.shape),
                        groups=groups, group_channels=group_channels,
                    ),
                )
            )


def _open(source: BinaryIO | MemberRange) -> tuple[dict[str, Any], Any]:
    inner = NestedZip(source)
    with inner.open(CONFIG_JSON) as stream:
        raw = stream.read(MAX_CONFIG_BYTES + 1)
    if len(raw) > MAX_CONFIG_BYTES:
        raise FormatError(f"{CONFIG_JSON} of model.keras is over {MAX_CONFIG_BYTES} bytes.")
    try:
        config = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise FormatError(f"{CONFIG_JSON} of model.keras is not JSON ({exc}).") from None
    if not isinstance(config, dict):
        raise FormatError(f"{CONFIG_JSON} of model.keras is not a JSON object.")
    return config, inner.open(WEIGHTS_H5)


def read_keras_weights(
    source: BinaryIO | MemberRange, *, with_arrays: bool = True
) -> list[tuple[KerasWeight, np.ndarray | None]]:
    """Return every stored layer variable of the ``.keras`` file in ``source``, in model order.

    Each item is ``(KerasWeight, array)`` (``array`` is None when
    ``with_arrays`` is False). The order is the model's ``weights`` order for
    Sequential and Functional models. Neither TensorFlow nor Keras is imported.

    Example:
        >>> with open("model.keras", "rb") as f:  # doctest: +SKIP
        ...     [(w.name, w.canonical.kind) for w, _ in read_keras_weights(f)][:1]
        [('enc_conv1/kernel', 'conv2d')]
    """
    import h5py

    config, stream = _open(source)
    try:
        with h5py.File(stream, "r") as h5:
            weights: list[KerasWeight] = []
            _walk(config, "", h5, weights)
            return [(w, h5[w.key][()] if with_arrays else None) for w in weights]
    except OSError as exc:
        raise FormatError(f"{WEIGHTS_H5} is not a readable HDF5 file ({exc}).") from None


def read_keras(source: BinaryIO | MemberRange) -> dict[str, np.ndarray]:
    """Return ``{variable path: array}`` for the weights of the ``.keras`` file in ``source``.

    Example:
        >>> with open("model.keras", "rb") as f:  # doctest: +SKIP
        ...     read_keras(f)["enc_conv1/kernel"].shape
        (3, 3, 1, 8)
    """
    return {weight.name: array for weight, array in read_keras_weights(source)}
