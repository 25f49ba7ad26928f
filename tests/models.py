"""Small models with dense, convolution and batch-norm layers, in both frameworks.

Registered as architecture ``"test-convnet"`` so bundles can rebuild them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import polybundle

ARCH = "test-convnet"
CONFIG = {"size": 6, "filters": 3, "outputs": 2}


@polybundle.architecture(ARCH, backend="torch")
def torch_convnet(config: dict[str, Any]) -> Any:
    """Conv2d -> BatchNorm2d -> ReLU -> Flatten -> Linear, input (N, 1, size, size)."""
    import torch

    return torch.nn.Sequential(
        torch.nn.Conv2d(1, config["filters"], 3, padding=1),
        torch.nn.BatchNorm2d(config["filters"]),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(config["filters"] * config["size"] ** 2, config["outputs"]),
    )


@polybundle.architecture(ARCH, backend="tensorflow")
def keras_convnet(config: dict[str, Any]) -> Any:
    """Conv2D -> BatchNormalization -> ReLU -> Flatten -> Dense, input (N, size, size, 1)."""
    import keras

    inputs = keras.Input((config["size"], config["size"], 1))
    x = keras.layers.Conv2D(config["filters"], 3, padding="same", name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.Flatten(name="flat")(x)
    outputs = keras.layers.Dense(config["outputs"], name="head")(x)
    return keras.Model(inputs, outputs, name="convnet")


def inputs(framework: str, seed: int = 0) -> np.ndarray:
    """A batch of 4 inputs in the framework's layout."""
    x = np.random.default_rng(seed).standard_normal((4, CONFIG["size"], CONFIG["size"]))
    x = x.astype(np.float32)
    return x[:, None] if framework == "torch" else x[..., None]


def trained_torch(seed: int) -> Any:
    """A torch convnet with random weights and non-trivial batch-norm statistics."""
    import torch

    torch.manual_seed(seed)
    model = polybundle.build(ARCH, CONFIG, backend="torch")
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 1, CONFIG["size"], CONFIG["size"]) * 2 + 1)
    return model.eval()


def trained_keras(seed: int) -> Any:
    """A Keras convnet with random weights and non-trivial batch-norm statistics."""
    import keras

    keras.utils.set_random_seed(seed)
    model = polybundle.build(ARCH, CONFIG, backend="tensorflow")
    for _ in range(3):
        model(
            np.random.default_rng(seed).standard_normal((8, 6, 6, 1)).astype("float32") * 2 + 1,
            training=True,
        )
    return model


def predict(model: Any, x: np.ndarray) -> np.ndarray:
    """Inference-mode predictions as NumPy, whichever framework ``model`` is."""
    if polybundle.get_backend("torch").owns(model):
        import torch

        with torch.no_grad():
            return model.eval()(torch.from_numpy(x)).numpy()
    return np.asarray(model(x, training=False))
