"""The zoo's Keras side: keras.applications models as shipped, and twins of PyTorch models.

keras.applications models are built with ``weights=None``, a small input and few
classes, logits out (``classifier_activation=None``). Twins of PyTorch models are
written as a Keras user would: functional API, channels-last, ``Flatten`` heads.

Usage::

    import tests.zoo_keras  # registers the "zoo-*" tensorflow builders
    model = polybundle.build("zoo-mobilenet_v2", {"size": 32, "classes": 5}, backend="tf")
"""

from __future__ import annotations

from typing import Any

import keras

import polybundle


def _application(factory: Any) -> Any:
    def build(config: dict[str, Any]) -> Any:
        return factory(weights=None, input_shape=(config["size"], config["size"], 3),
                       classes=config["classes"], classifier_activation=None)

    return build


def classic_cnn(config: dict[str, Any]) -> Any:
    """The Keras twin of ``zoo_torch.ClassicCNN``: conv, BN, pool, Flatten, Dense."""
    layers = keras.layers
    inputs = keras.Input((config["size"], config["size"], 3))
    x = inputs
    for index, filters in enumerate((8, 16), start=1):
        x = layers.Conv2D(filters, 3, padding="same", name=f"conv{index}")(x)
        x = layers.ReLU()(layers.BatchNormalization(epsilon=1e-3, name=f"bn{index}")(x))
        x = layers.MaxPooling2D(2)(x)
    x = layers.Dense(32, activation="relu", name="fc1")(layers.Flatten()(x))
    outputs = layers.Dense(config["classes"], name="fc2")(x)
    return keras.Model(inputs, outputs, name="classic_cnn")


class ClassToken(keras.layers.Layer):
    """Prepends a learned class token to a sequence."""

    def build(self, shape: Any) -> None:
        self.token = self.add_weight(shape=(1, 1, shape[-1]), initializer="zeros", name="token")

    def call(self, x: Any) -> Any:
        token = keras.ops.broadcast_to(self.token, (keras.ops.shape(x)[0], 1, x.shape[-1]))
        return keras.ops.concatenate([token, x], axis=1)


class AddPosition(keras.layers.Layer):
    """Adds a learned position embedding."""

    def build(self, shape: Any) -> None:
        self.position = self.add_weight(shape=(1, shape[1], shape[2]), initializer="zeros",
                                        name="position")

    def call(self, x: Any) -> Any:
        return x + self.position


def vit(config: dict[str, Any], patch: int = 8, dim: int = 32) -> Any:
    """The Keras twin of ``zoo_torch.ViT``, with keras.layers.MultiHeadAttention."""
    layers = keras.layers
    inputs = keras.Input((config["size"], config["size"], 3))
    x = layers.Conv2D(dim, patch, strides=patch, name="patch_embed")(inputs)
    x = layers.Reshape((-1, dim))(x)
    x = AddPosition(name="pos_embed")(ClassToken(name="cls_token")(x))
    for i in range(2):
        y = layers.LayerNormalization(epsilon=1e-6, name=f"block{i}_norm1")(x)
        x = x + layers.MultiHeadAttention(4, dim // 4, name=f"block{i}_attn")(y, y)
        y = layers.LayerNormalization(epsilon=1e-6, name=f"block{i}_norm2")(x)
        y = layers.Dense(2 * dim, activation="gelu", name=f"block{i}_mlp1")(y)
        x = x + layers.Dense(dim, name=f"block{i}_mlp2")(y)
    x = layers.LayerNormalization(epsilon=1e-6, name="norm")(x)
    return keras.Model(inputs, layers.Dense(config["classes"], name="head")(x[:, 0]), name="vit")


BUILDERS: dict[str, Any] = {
    "zoo-mobilenet_v2": _application(keras.applications.MobileNetV2),
    "zoo-resnet50": _application(keras.applications.ResNet50),
    "zoo-vgg16": _application(keras.applications.VGG16),
    "zoo-efficientnet_b0": _application(keras.applications.EfficientNetB0),
    "zoo-convnext_tiny": _application(keras.applications.ConvNeXtTiny),
    "zoo-vit": vit,
    "zoo-classic_cnn": classic_cnn,
}
"""Architecture name -> Keras builder (config -> model)."""

for _name, _builder in BUILDERS.items():
    polybundle.architecture(_name, backend="tensorflow", replace=True)(_builder)
