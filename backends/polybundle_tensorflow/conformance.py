"""The Keras conformance adapter and its model, registered by :mod:`polybundle_tensorflow.plugin`.

``polybundle conformance`` (and ``polybundle demo``) drive the TensorFlow
backend through :class:`KerasAdapter`. Nothing here imports Keras until a
model is built.

Example:
    >>> KerasAdapter().backend, KerasAdapter().standalone
    ('tensorflow', True)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from polybundle.plugin import Adapter


def build_conformance_model(config: dict[str, Any]) -> Any:
    """Build :data:`polybundle.tools.conformance.ARCHITECTURE` in Keras (input N,H,W,1).

    Batch normalisation uses PyTorch's defaults (epsilon 1e-5, momentum 0.1).

    Example:
        >>> build_conformance_model({"size": 6, "filters": 3, "outputs": 2}).output.shape
        (None, 2)
    """
    import keras

    size = config["size"]
    inputs = keras.Input((size, size, 1))
    hidden = keras.layers.Conv2D(config["filters"], 3, padding="same", name="conv")(inputs)
    hidden = keras.layers.BatchNormalization(epsilon=1e-5, momentum=0.9, name="bn")(hidden)
    hidden = keras.layers.ReLU(name="relu")(hidden)
    hidden = keras.layers.GlobalAveragePooling2D(name="pool")(hidden)
    outputs = keras.layers.Dense(config["outputs"], name="head")(hidden)
    return keras.Model(inputs, outputs, name="conformance_convnet")


class KerasAdapter(Adapter):
    """The conformance convnet with ``keras.optimizers.Adam`` (learning rate 0.01).

    Example:
        >>> KerasAdapter().algorithm
        'adam'
    """

    backend = "tensorflow"
    standalone = True
    algorithm = "adam"

    def make_model(self, config: dict[str, Any], seed: int) -> Any:
        """Build the model from ``seed`` and move its batch-norm statistics."""
        import keras

        keras.utils.set_random_seed(seed)
        model = build_conformance_model(config)
        warm = np.random.default_rng(seed + 100).standard_normal(
            (8, config["size"], config["size"], 1)).astype(np.float32)
        model(warm * 2 + 1, training=True)
        return model

    def predict(self, model: Any, x: np.ndarray) -> np.ndarray:
        """Return the inference-mode output for ``x``."""
        return np.asarray(model(x, training=False))

    def make_optimizer(self, model: Any) -> Any:
        """Return ``keras.optimizers.Adam(learning_rate=1e-2)``, built for ``model``."""
        import keras

        optimizer = keras.optimizers.Adam(learning_rate=1e-2)
        optimizer.build(model.trainable_variables)
        return optimizer

    def train_step(self, model: Any, optimizer: Any, x: np.ndarray) -> float:
        """One step on the mean squared output; return the loss."""
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(x, training=True)))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return float(loss)
