"""The weights and models every benchmark operation works on.

One set of float32 arrays (a stack of square dense layers) is made per size
and put into a PyTorch ``nn.Sequential`` of ``Linear`` layers and a Keras
``Sequential`` of ``Dense`` layers, so each framework saves exactly the same
numbers. Both architectures are registered with polybundle as ``bench-mlp``,
so ``polybundle.load`` rebuilds them as it would a user's model.

Example:
    >>> w = Weights.of_size(mib=1)
    >>> round(w.nbytes / 2**20)
    1
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

import polybundle

ARCHITECTURE = "bench-mlp"
LAYERS = 8
MANY = 500
"""Layers of the many-tensor workload: 500 ``Linear`` layers hold 1,000 tensors."""


@dataclass
class Weights:
    """``layers`` dense layers of ``width`` x ``width`` float32 plus biases.

    Example:
        >>> weights = Weights.of_size(mib=10)
        >>> weights.width, len(weights.kernels), round(weights.width**2 * 4 * LAYERS / 2**20, 1)
        (572, 8, 10.0)
    """

    width: int
    kernels: list[np.ndarray]
    biases: list[np.ndarray]

    @classmethod
    def of_size(cls, mib: float, *, layers: int = LAYERS, seed: int = 0) -> Weights:
        """Return random weights of about ``mib`` MiB in ``layers`` layers."""
        width = max(1, int(math.sqrt(mib * 2**20 / 4 / layers)))
        rng = np.random.default_rng(seed)
        kernels = [rng.standard_normal((width, width), dtype=np.float32) for _ in range(layers)]
        biases = [rng.standard_normal(width, dtype=np.float32) for _ in range(layers)]
        return cls(width, kernels, biases)

    @property
    def config(self) -> dict[str, int]:
        """Return the architecture config shared by both frameworks."""
        return {"width": self.width, "layers": len(self.kernels)}

    @property
    def nbytes(self) -> int:
        """Return the total size of the weights in bytes."""
        return sum(a.nbytes for a in self.kernels + self.biases)

    def flat(self) -> np.ndarray:
        """Return every weight concatenated in one float32 array."""
        return np.concatenate([a.ravel() for a in self.kernels + self.biases])


def build_torch(config: dict[str, Any]) -> Any:
    """Build the PyTorch ``bench-mlp``: ``layers`` ``Linear(width, width)``.

    Usage::

        build_torch({"width": 4, "layers": 2})[0].weight.shape
        # -> torch.Size([4, 4])
    """
    import torch

    width = config["width"]
    return torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(config["layers"])])


def build_keras(config: dict[str, Any]) -> Any:
    """Build the Keras ``bench-mlp``: ``layers`` ``Dense(width)`` on a ``width`` input.

    Usage::

        build_keras({"width": 4, "layers": 2}).count_params()
        # -> 40
    """
    import keras

    width = config["width"]
    layers = [keras.layers.Dense(width) for _ in range(config["layers"])]
    return keras.Sequential([keras.Input((width,)), *layers])


def register_architectures() -> None:
    """Register ``bench-mlp`` for both backends (idempotent).

    Usage::

        register_architectures()
    """
    polybundle.architecture(ARCHITECTURE, backend="torch", replace=True)(build_torch)
    polybundle.architecture(ARCHITECTURE, backend="tensorflow", replace=True)(build_keras)


def torch_model(weights: Weights) -> Any:
    """Return the PyTorch model holding ``weights`` (kernels transposed to ``out,in``).

    Usage::

        torch_model(Weights.of_size(mib=1))
    """
    import torch

    model = polybundle.build(ARCHITECTURE, weights.config, backend="torch")
    with torch.no_grad():
        for layer, kernel, bias in zip(model, weights.kernels, weights.biases, strict=True):
            layer.weight.copy_(torch.from_numpy(np.ascontiguousarray(kernel.T)))
            layer.bias.copy_(torch.from_numpy(bias))
    return model


def keras_model_unregistered(weights: Weights) -> Any:
    """Return a Keras model holding ``weights``, built by hand: its bundle records no architecture.

    ``polybundle.load`` of its bundle rebuilds it from the ``.keras`` config (no builder),
    the default a Keras user gets.

    Usage::

        keras_model_unregistered(Weights.of_size(mib=1))
    """
    model = build_keras(weights.config)
    for layer, kernel, bias in zip(model.layers, weights.kernels, weights.biases, strict=True):
        layer.set_weights([kernel, bias])
    return model


def keras_model(weights: Weights) -> Any:
    """Return the Keras model holding ``weights``.

    Usage::

        keras_model(Weights.of_size(mib=1))
    """
    model = polybundle.build(ARCHITECTURE, weights.config, backend="tensorflow")
    for layer, kernel, bias in zip(model.layers, weights.kernels, weights.biases, strict=True):
        layer.set_weights([kernel, bias])
    return model


def many_tensors(mib: float) -> Weights:
    """Return :data:`MANY` square layers of about ``mib`` MiB in all: 1,000 tensors.

    Example:
        >>> weights = many_tensors(1)
        >>> len(weights.kernels) + len(weights.biases)
        1000
    """
    return Weights.of_size(mib, layers=MANY)


def adam_state(model: Any) -> Any:
    """Return an Adam optimizer of ``model`` after one step: its two moments filled.

    Usage::

        adam_state(torch_model(Weights.of_size(mib=1))).state_dict()["state"][0].keys()
        # -> dict_keys(['step', 'exp_avg', 'exp_avg_sq'])
    """
    import torch

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for parameter in model.parameters():
        parameter.grad = torch.full_like(parameter, 1e-3)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return optimizer
