"""The built-in PyTorch and TensorFlow backends pass polybundle's conformance suite."""

from __future__ import annotations

from typing import Any

import numpy as np

from polybundle.testing import Adapter, BackendConformance
from tests import models
from tests.conftest import needs_tensorflow, needs_torch

OTHER_CONFIG = {**models.CONFIG, "filters": 5}


class TorchAdapter(Adapter):
    """The ``test-convnet`` of ``tests/models.py`` with ``torch.optim.Adam``."""

    backend = "torch"
    architecture = models.ARCH
    config = models.CONFIG
    other_config = OTHER_CONFIG
    algorithm = "adam"

    def make_model(self, config: dict[str, Any], seed: int) -> Any:
        import torch

        torch.manual_seed(seed)
        model = models.torch_convnet(config).train()
        with torch.no_grad():
            model(torch.randn(8, 1, config["size"], config["size"]) * 2 + 1)
        return model.eval()

    def inputs(self, config: dict[str, Any], seed: int) -> np.ndarray:
        size = config["size"]
        return np.random.default_rng(seed).standard_normal((4, 1, size, size)).astype(np.float32)

    def predict(self, model: Any, x: np.ndarray) -> np.ndarray:
        return models.predict(model, x)

    def make_optimizer(self, model: Any) -> Any:
        import torch

        return torch.optim.Adam(model.parameters(), lr=1e-2)

    def train_step(self, model: Any, optimizer: Any, x: np.ndarray) -> None:
        import torch

        model.train()
        optimizer.zero_grad()
        model(torch.from_numpy(x)).square().mean().backward()
        optimizer.step()
        model.eval()


class KerasAdapter(Adapter):
    """The ``test-convnet`` of ``tests/models.py`` with ``keras.optimizers.Adam``."""

    backend = "tensorflow"
    architecture = models.ARCH
    config = models.CONFIG
    other_config = OTHER_CONFIG
    standalone = True
    algorithm = "adam"

    def make_model(self, config: dict[str, Any], seed: int) -> Any:
        import keras

        keras.utils.set_random_seed(seed)
        model = models.keras_convnet(config)
        size = config["size"]
        warm = np.random.default_rng(seed).standard_normal((8, size, size, 1)).astype("float32")
        model(warm * 2 + 1, training=True)
        return model

    def inputs(self, config: dict[str, Any], seed: int) -> np.ndarray:
        size = config["size"]
        return np.random.default_rng(seed).standard_normal((4, size, size, 1)).astype(np.float32)

    def predict(self, model: Any, x: np.ndarray) -> np.ndarray:
        return np.asarray(model(x, training=False))

    def make_optimizer(self, model: Any) -> Any:
        import keras

        optimizer = keras.optimizers.Adam(learning_rate=1e-2)
        optimizer.build(model.trainable_variables)
        return optimizer

    def train_step(self, model: Any, optimizer: Any, x: np.ndarray) -> None:
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(x, training=True)))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))


@needs_torch
class TestTorchConformance(BackendConformance):
    adapter = TorchAdapter()


@needs_tensorflow
class TestTensorFlowConformance(BackendConformance):
    adapter = KerasAdapter()
