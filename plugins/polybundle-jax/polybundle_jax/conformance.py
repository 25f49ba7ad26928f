"""The JAX conformance adapter and its model, registered by :mod:`polybundle_jax.plugin`.

``polybundle conformance`` (and ``polybundle demo``) drive the JAX backend
through :class:`JaxAdapter`: a Flax NNX convnet trained with
:func:`polybundle_jax.adam`. Nothing here imports JAX until a model is built.

Example:
    >>> JaxAdapter().backend, JaxAdapter().algorithm
    ('jax', 'adam')
"""

from __future__ import annotations

from typing import Any

import numpy as np

from polybundle.plugin import Adapter

from .backend import JaxBackend
from .optim import adam

_STEP: list[Any] = []


def build_conformance_model(config: dict[str, Any], seed: int = 0) -> Any:
    """Build :data:`polybundle.tools.conformance.ARCHITECTURE` in Flax NNX (input N,H,W,1).

    Example:
        >>> build_conformance_model({"size": 6, "filters": 3, "outputs": 2}).head.kernel.shape
        (3, 2)
    """
    from flax import nnx

    class ConformanceConvNet(nnx.Module):
        def __init__(self, rngs: nnx.Rngs) -> None:
            self.conv = nnx.Conv(1, config["filters"], (3, 3), padding="SAME", rngs=rngs)
            self.bn = nnx.BatchNorm(config["filters"], momentum=0.9, epsilon=1e-5, rngs=rngs)
            self.head = nnx.Linear(config["filters"], config["outputs"], rngs=rngs)

        def __call__(self, x: Any) -> Any:
            return self.head(nnx.relu(self.bn(self.conv(x))).mean(axis=(1, 2)))

    return ConformanceConvNet(nnx.Rngs(seed))


def _jitted_step() -> Any:
    """Return the jitted training step (mean squared output), made once."""
    if not _STEP:
        from flax import nnx

        @nnx.jit
        def step(model: Any, optimizer: Any, x: Any) -> Any:
            def loss(model: Any) -> Any:
                return (model(x) ** 2).mean()

            value, grads = nnx.value_and_grad(loss)(model)
            optimizer.update(model, grads)
            return value

        _STEP.append(step)
    return _STEP[0]


class JaxAdapter(Adapter):
    """The conformance convnet with ``nnx.Optimizer(model, polybundle_jax.adam(1e-2))``.

    Example:
        >>> JaxAdapter().inputs(JaxAdapter().config, seed=0).shape
        (4, 6, 6, 1)
    """

    backend = "jax"
    algorithm = "adam"

    def make_model(self, config: dict[str, Any], seed: int) -> Any:
        """Build the model from ``seed`` and move its batch-norm statistics."""
        model = build_conformance_model(config, seed)
        warm = np.random.default_rng(seed + 100).standard_normal(
            (8, config["size"], config["size"], 1)).astype(np.float32)
        model(warm * 2 + 1)
        return model

    def predict(self, model: Any, x: np.ndarray) -> np.ndarray:
        """Return the inference-mode output through the backend's ``predict``."""
        return JaxBackend().predict(model, {"input": x})["output"]

    def make_optimizer(self, model: Any) -> Any:
        """Return ``nnx.Optimizer(model, adam(1e-2, eps=1e-7), wrt=nnx.Param)``."""
        from flax import nnx

        return nnx.Optimizer(model, self.transformation(), wrt=nnx.Param)

    def transformation(self) -> Any:
        """Return the optax transformation :meth:`make_optimizer` uses."""
        return adam(1e-2, eps=1e-7)

    def train_step(self, model: Any, optimizer: Any, x: np.ndarray) -> float:
        """One jitted step on the mean squared output; return the loss."""
        return float(_jitted_step()(model, optimizer, x))
