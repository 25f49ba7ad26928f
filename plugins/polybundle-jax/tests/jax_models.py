"""Small Flax NNX models and a training step shared by the JAX plugin's tests.

``jax-test-convnet`` (Conv -> BatchNorm -> ReLU -> mean -> Linear) is
registered for the ``jax`` backend so bundles can rebuild it.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np
import pytest

import polybundle

HAS_JAX = all(importlib.util.find_spec(m) is not None for m in ("jax", "flax", "optax"))
needs_jax = pytest.mark.skipif(
    not HAS_JAX, reason="JAX is not installed (pip install -e plugins/polybundle-jax)"
)

ARCH = "jax-test-convnet"
CONFIG = {"size": 6, "filters": 3, "outputs": 2}
OTHER_CONFIG = {"size": 6, "filters": 5, "outputs": 2}


def convnet(config: dict[str, Any], seed: int = 0) -> Any:
    """Return the NNX convnet of ``config``, initialised from ``seed``."""
    from flax import nnx

    class ConvNet(nnx.Module):
        def __init__(self, rngs: nnx.Rngs) -> None:
            self.conv = nnx.Conv(1, config["filters"], (3, 3), padding="SAME", rngs=rngs)
            self.bn = nnx.BatchNorm(config["filters"], momentum=0.9, rngs=rngs)
            self.head = nnx.Linear(config["filters"], config["outputs"], rngs=rngs)

        def __call__(self, x: Any) -> Any:
            return self.head(nnx.relu(self.bn(self.conv(x))).mean(axis=(1, 2)))

    return ConvNet(nnx.Rngs(seed))


if HAS_JAX:
    polybundle.architecture(ARCH, backend="jax")(convnet)


def inputs(config: dict[str, Any], seed: int) -> np.ndarray:
    """A batch of 4 channels-last inputs."""
    size = config["size"]
    return np.random.default_rng(seed).standard_normal((4, size, size, 1)).astype(np.float32)


def warmed(config: dict[str, Any], seed: int) -> Any:
    """A convnet whose batch-norm statistics moved away from their initial values."""
    model = convnet(config, seed)
    model(inputs(config, seed + 100) * 2 + 1)
    return model


def predict(model: Any, x: np.ndarray) -> np.ndarray:
    """Inference-mode output through the backend's own ``predict``."""
    return polybundle.get_backend("jax").predict(model, {"input": x})["output"]


def train_step(model: Any, optimizer: Any, x: np.ndarray) -> None:
    """One jitted step of mean-squared-output descent."""
    _jitted_step()(model, optimizer, x)


_STEP: list[Any] = []


def _jitted_step() -> Any:
    if not _STEP:
        from flax import nnx

        @nnx.jit
        def step(model: Any, optimizer: Any, x: Any) -> None:
            def loss(model: Any) -> Any:
                return (model(x) ** 2).mean()

            grads = nnx.grad(loss)(model)
            optimizer.update(model, grads)

        _STEP.append(step)
    return _STEP[0]
