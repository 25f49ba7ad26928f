"""The JAX backend passes polybundle's conformance suite (Adam and SGD with momentum)."""

from __future__ import annotations

from typing import Any

import jax_models
import numpy as np

from polybundle.testing import Adapter, BackendConformance

pytestmark = jax_models.needs_jax


class JaxAdapter(Adapter):
    """Drives the JAX backend with the NNX convnet and polybundle_jax.adam."""

    backend = "jax"
    architecture = jax_models.ARCH
    config = jax_models.CONFIG
    other_config = jax_models.OTHER_CONFIG
    algorithm = "adam"

    def make_model(self, config: dict[str, Any], seed: int) -> Any:
        return jax_models.warmed(config, seed)

    def inputs(self, config: dict[str, Any], seed: int) -> np.ndarray:
        return jax_models.inputs(config, seed)

    def predict(self, model: Any, x: np.ndarray) -> np.ndarray:
        return jax_models.predict(model, x)

    def make_optimizer(self, model: Any) -> Any:
        from flax import nnx

        import polybundle_jax

        return nnx.Optimizer(model, polybundle_jax.adam(1e-2), wrt=nnx.Param)

    def train_step(self, model: Any, optimizer: Any, x: np.ndarray) -> None:
        jax_models.train_step(model, optimizer, x)


class SgdMomentumAdapter(JaxAdapter):
    """The same, with SGD and Nesterov momentum."""

    algorithm = "sgd"

    def make_optimizer(self, model: Any) -> Any:
        from flax import nnx

        import polybundle_jax

        return nnx.Optimizer(model, polybundle_jax.sgd(0.05, momentum=0.9, nesterov=True),
                             wrt=nnx.Param)


class TestJaxConformance(BackendConformance):
    adapter = JaxAdapter()


class TestJaxSgdConformance(BackendConformance):
    adapter = SgdMomentumAdapter()
