"""Reference architectures with a builder in each framework, for conversion and parity tests.

Each architecture is registered for ``torch`` and ``tensorflow`` with the same
name; the two builders compute the same function from the same weights.
Inputs and outputs are channels-last in both (the PyTorch builders permute to
channels-first inside), so the same arrays feed both frameworks. Another
backend's tests (a JAX plugin) can import this module and add its builders.

Usage::

    import reference_architectures as ref
    model = polybundle.build("ref-mlp", ref.CONFIGS["ref-mlp"], backend="torch")
"""

from __future__ import annotations

from typing import Any

import numpy as np

import polybundle

CONFIGS: dict[str, dict[str, Any]] = {
    "ref-mlp": {"inputs": 6, "hidden": 16, "outputs": 3},
    "ref-conv-autoencoder": {"size": 16, "filters": 8},
    "ref-resnet": {"size": 8, "channels": 3, "width": 8, "blocks": 2, "classes": 5},
    "ref-embed": {"vocab": 20, "dim": 12, "outputs": 4},
    "ref-conv-zoo": {"size": 8, "channels": 4, "multiplier": 2},
}
"""A small config per architecture (the autoencoder is built twice, one per role)."""

ROLES: dict[str, dict[str, dict[str, Any]]] = {
    "ref-conv-autoencoder": {
        "autoencoder": {"size": 16, "filters": 8},
        "diffraction_to_obj": {"size": 16, "filters": 4},
    },
}
"""Architectures saved with several roles, and each role's config."""


def sample_inputs(name: str, config: dict[str, Any], batch: int = 4, seed: int = 0) -> np.ndarray:
    """Return a deterministic input batch for architecture ``name``.

    Example:
        >>> sample_inputs("ref-mlp", CONFIGS["ref-mlp"]).shape
        (4, 6)
    """
    rng = np.random.default_rng(seed)
    if name == "ref-mlp":
        return rng.standard_normal((batch, config["inputs"]), dtype=np.float32)
    if name == "ref-conv-autoencoder":
        return rng.standard_normal((batch, config["size"], config["size"], 1), dtype=np.float32)
    if name == "ref-resnet":
        shape = (batch, config["size"], config["size"], config["channels"])
        return rng.standard_normal(shape, dtype=np.float32)
    if name == "ref-embed":
        return rng.integers(0, config["vocab"], size=(batch, 7), dtype=np.int64)
    if name == "ref-conv-zoo":
        shape = (batch, config["size"], config["size"], config["channels"])
        return rng.standard_normal(shape, dtype=np.float32)
    raise KeyError(name)


# ---------------------------------------------------------------- PyTorch


def _torch_channels_last(body: Any) -> Any:
    import torch

    class ChannelsLast(torch.nn.Module):
        """Run a channels-first body on channels-last inputs, returning channels-last."""

        def __init__(self) -> None:
            super().__init__()
            self.body = body

        def forward(self, x):
            y = self.body(x.permute(0, 3, 1, 2))
            return y.permute(0, 2, 3, 1) if y.dim() == 4 else y

    return ChannelsLast()


@polybundle.architecture("ref-mlp", backend="torch")
def torch_mlp(config: dict[str, Any]) -> Any:
    """Linear -> PReLU -> Linear -> tanh -> Linear (PyTorch)."""
    import torch

    nn = torch.nn
    return nn.Sequential(
        nn.Linear(config["inputs"], config["hidden"]),
        nn.PReLU(config["hidden"]),
        nn.Linear(config["hidden"], config["hidden"]),
        nn.Tanh(),
        nn.Linear(config["hidden"], config["outputs"]),
    )


@polybundle.architecture("ref-conv-autoencoder", backend="torch")
def torch_conv_autoencoder(config: dict[str, Any]) -> Any:
    """Conv -> BN -> pool -> conv -> transposed convs, like the ptychography model (PyTorch)."""
    import torch

    nn, f = torch.nn, config["filters"]
    return _torch_channels_last(
        nn.Sequential(
            nn.Conv2d(1, f, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(f, eps=1e-3),
            nn.MaxPool2d(2),
            nn.Conv2d(f, f // 2, 3, padding=1), nn.ReLU(),
            nn.ConvTranspose2d(f // 2, f // 2, 2, stride=2), nn.ReLU(),
            nn.ConvTranspose2d(f // 2, 1, 3, padding=1),
        )
    )


@polybundle.architecture("ref-resnet", backend="torch")
def torch_resnet(config: dict[str, Any]) -> Any:
    """Stem conv+BN, residual blocks (conv-BN-relu-conv-BN + identity), pooling, dense."""
    import torch

    nn, width = torch.nn, config["width"]

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(width, eps=1e-3)
            self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(width, eps=1e-3)

        def forward(self, x):
            y = torch.relu(self.bn1(self.conv1(x)))
            return torch.relu(x + self.bn2(self.conv2(y)))

    class ResNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(config["channels"], width, 3, padding=1)
            self.stem_bn = nn.BatchNorm2d(width, eps=1e-3)
            self.blocks = nn.Sequential(*[Block() for _ in range(config["blocks"])])
            self.head = nn.Linear(width, config["classes"])

        def forward(self, x):
            x = torch.relu(self.stem_bn(self.stem(x)))
            return self.head(self.blocks(x).mean(dim=(2, 3)))

    return _torch_channels_last(ResNet())


@polybundle.architecture("ref-embed", backend="torch")
def torch_embed(config: dict[str, Any]) -> Any:
    """Embedding -> LayerNorm -> Linear (PyTorch)."""
    import torch

    nn = torch.nn
    return nn.Sequential(
        nn.Embedding(config["vocab"], config["dim"]),
        nn.LayerNorm(config["dim"], eps=1e-5),
        nn.Linear(config["dim"], config["outputs"]),
    )


@polybundle.architecture("ref-conv-zoo", backend="torch")
def torch_conv_zoo(config: dict[str, Any]) -> Any:
    """Depthwise conv, grouped 1x1 conv and a transposed conv (PyTorch)."""
    import torch

    nn, c, m = torch.nn, config["channels"], config["multiplier"]
    return _torch_channels_last(
        nn.Sequential(
            nn.Conv2d(c, c * m, 3, padding=1, groups=c), nn.ReLU(),
            nn.Conv2d(c * m, c * m, 1, groups=2), nn.ReLU(),
            nn.ConvTranspose2d(c * m, 2, 2, stride=2),
        )
    )


# ---------------------------------------------------------------- Keras


@polybundle.architecture("ref-mlp", backend="tensorflow")
def keras_mlp(config: dict[str, Any]) -> Any:
    """Dense -> PReLU -> Dense(tanh) -> Dense (Keras)."""
    import keras

    return keras.Sequential([
        keras.Input((config["inputs"],)),
        keras.layers.Dense(config["hidden"]),
        keras.layers.PReLU(),
        keras.layers.Dense(config["hidden"], activation="tanh"),
        keras.layers.Dense(config["outputs"]),
    ])


@polybundle.architecture("ref-conv-autoencoder", backend="tensorflow")
def keras_conv_autoencoder(config: dict[str, Any]) -> Any:
    """Conv -> BN -> pool -> conv -> transposed convs, like the ptychography model (Keras)."""
    import keras

    layers, f, n = keras.layers, config["filters"], config["size"]
    return keras.Sequential([
        keras.Input((n, n, 1)),
        layers.Conv2D(f, 3, padding="same", activation="relu"),
        layers.BatchNormalization(epsilon=1e-3),
        layers.MaxPooling2D(2),
        layers.Conv2D(f // 2, 3, padding="same", activation="relu"),
        layers.Conv2DTranspose(f // 2, 2, strides=2, activation="relu"),
        layers.Conv2DTranspose(1, 3, padding="same"),
    ])


@polybundle.architecture("ref-resnet", backend="tensorflow")
def keras_resnet(config: dict[str, Any]) -> Any:
    """Stem conv+BN, residual blocks (conv-BN-relu-conv-BN + identity), pooling, dense."""
    import keras

    layers, width, n = keras.layers, config["width"], config["size"]
    inputs = keras.Input((n, n, config["channels"]))
    x = layers.Conv2D(width, 3, padding="same")(inputs)
    x = layers.Activation("relu")(layers.BatchNormalization(epsilon=1e-3)(x))
    for _ in range(config["blocks"]):
        y = layers.Conv2D(width, 3, padding="same", use_bias=False)(x)
        y = layers.Activation("relu")(layers.BatchNormalization(epsilon=1e-3)(y))
        y = layers.Conv2D(width, 3, padding="same", use_bias=False)(y)
        y = layers.BatchNormalization(epsilon=1e-3)(y)
        x = layers.Activation("relu")(layers.Add()([x, y]))
    outputs = layers.Dense(config["classes"])(layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, outputs)


@polybundle.architecture("ref-embed", backend="tensorflow")
def keras_embed(config: dict[str, Any]) -> Any:
    """Embedding -> LayerNormalization -> Dense (Keras)."""
    import keras

    return keras.Sequential([
        keras.Input((None,), dtype="int64"),
        keras.layers.Embedding(config["vocab"], config["dim"]),
        keras.layers.LayerNormalization(epsilon=1e-5),
        keras.layers.Dense(config["outputs"]),
    ])


@polybundle.architecture("ref-conv-zoo", backend="tensorflow")
def keras_conv_zoo(config: dict[str, Any]) -> Any:
    """Depthwise conv, grouped 1x1 conv and a transposed conv (Keras)."""
    import keras

    layers, c, m, n = keras.layers, config["channels"], config["multiplier"], config["size"]
    return keras.Sequential([
        keras.Input((n, n, c)),
        layers.DepthwiseConv2D(3, depth_multiplier=m, padding="same", activation="relu"),
        layers.Conv2D(c * m, 1, groups=2, activation="relu"),
        layers.Conv2DTranspose(2, 2, strides=2),
    ])


def randomize(model: Any, seed: int = 0) -> Any:
    """Give every tensor of ``model`` (either framework) random, non-trivial values.

    Batch-norm statistics get positive variances, so inference is not the
    identity and conversion mistakes show in the outputs.

    Usage::

        randomize(polybundle.build("ref-mlp", {}, backend="torch"))
    """
    rng = np.random.default_rng(seed)
    backend = polybundle.hooks.registry.backend_for_model(model)
    arrays = {}
    for spec in backend.describe(model):
        if spec.dtype.startswith("int"):
            arrays[spec.name] = np.full(spec.shape, 3, dtype=spec.dtype)
        elif spec.slot == "moving_variance":
            arrays[spec.name] = rng.uniform(0.5, 2.0, spec.shape).astype(spec.dtype)
        else:
            arrays[spec.name] = (0.4 * rng.standard_normal(spec.shape)).astype(spec.dtype)
    backend.assign(model, arrays)
    return model
