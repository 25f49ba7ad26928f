"""Flax NNX builders of polybundle's reference architectures (``tests/reference_architectures.py``).

Each computes the same function as the PyTorch and Keras builders of the same
name from the same weights, on the same channels-last inputs. Transposed
convolutions use ``transpose_kernel=True`` (Keras' and PyTorch's semantics).
Registered for the ``jax`` backend on import.
"""

from __future__ import annotations

from typing import Any

import polybundle


def _prelu(features: int, rngs: Any) -> Any:
    """A per-channel PReLU (``nnx.PReLU`` has one slope for all channels)."""
    import jax.numpy as jnp
    from flax import nnx

    class PReLU(nnx.Module):
        def __init__(self) -> None:
            self.negative_slope = nnx.Param(jnp.full((features,), 0.25, jnp.float32))

        def __call__(self, x: Any) -> Any:
            return jnp.where(x >= 0, x, self.negative_slope[...] * x)

    return PReLU()


def jax_mlp(config: dict[str, Any]) -> Any:
    """Linear -> PReLU -> Linear -> tanh -> Linear (JAX)."""
    import jax.numpy as jnp
    from flax import nnx

    rngs, hidden = nnx.Rngs(0), config["hidden"]

    class Mlp(nnx.Module):
        def __init__(self) -> None:
            self.fc1 = nnx.Linear(config["inputs"], hidden, rngs=rngs)
            self.act = _prelu(hidden, rngs)
            self.fc2 = nnx.Linear(hidden, hidden, rngs=rngs)
            self.fc3 = nnx.Linear(hidden, config["outputs"], rngs=rngs)

        def __call__(self, x: Any) -> Any:
            return self.fc3(jnp.tanh(self.fc2(self.act(self.fc1(x)))))

    return Mlp()


def jax_conv_autoencoder(config: dict[str, Any]) -> Any:
    """Conv -> BN -> pool -> conv -> transposed convs, like the ptychography model (JAX)."""
    from flax import nnx

    rngs, f = nnx.Rngs(0), config["filters"]

    class AutoEncoder(nnx.Module):
        def __init__(self) -> None:
            self.conv1 = nnx.Conv(1, f, (3, 3), padding="SAME", rngs=rngs)
            self.bn = nnx.BatchNorm(f, epsilon=1e-3, rngs=rngs)
            self.conv2 = nnx.Conv(f, f // 2, (3, 3), padding="SAME", rngs=rngs)
            self.up = nnx.ConvTranspose(f // 2, f // 2, (2, 2), strides=2, padding="VALID",
                                        transpose_kernel=True, rngs=rngs)
            self.out = nnx.ConvTranspose(f // 2, 1, (3, 3), padding="SAME",
                                         transpose_kernel=True, rngs=rngs)

        def __call__(self, x: Any) -> Any:
            x = nnx.max_pool(self.bn(nnx.relu(self.conv1(x))), (2, 2), strides=(2, 2))
            return self.out(nnx.relu(self.up(nnx.relu(self.conv2(x)))))

    return AutoEncoder()


def jax_resnet(config: dict[str, Any]) -> Any:
    """Stem conv+BN, residual blocks (conv-BN-relu-conv-BN + identity), pooling, dense."""
    from flax import nnx

    rngs, width = nnx.Rngs(0), config["width"]

    class Block(nnx.Module):
        def __init__(self) -> None:
            self.conv1 = nnx.Conv(width, width, (3, 3), padding="SAME", use_bias=False, rngs=rngs)
            self.bn1 = nnx.BatchNorm(width, epsilon=1e-3, rngs=rngs)
            self.conv2 = nnx.Conv(width, width, (3, 3), padding="SAME", use_bias=False, rngs=rngs)
            self.bn2 = nnx.BatchNorm(width, epsilon=1e-3, rngs=rngs)

        def __call__(self, x: Any) -> Any:
            y = nnx.relu(self.bn1(self.conv1(x)))
            return nnx.relu(x + self.bn2(self.conv2(y)))

    class ResNet(nnx.Module):
        def __init__(self) -> None:
            self.stem = nnx.Conv(config["channels"], width, (3, 3), padding="SAME", rngs=rngs)
            self.stem_bn = nnx.BatchNorm(width, epsilon=1e-3, rngs=rngs)
            self.blocks = nnx.List([Block() for _ in range(config["blocks"])])
            self.head = nnx.Linear(width, config["classes"], rngs=rngs)

        def __call__(self, x: Any) -> Any:
            x = nnx.relu(self.stem_bn(self.stem(x)))
            for block in self.blocks:
                x = block(x)
            return self.head(x.mean(axis=(1, 2)))

    return ResNet()


def jax_embed(config: dict[str, Any]) -> Any:
    """Embed -> LayerNorm -> Linear (JAX)."""
    from flax import nnx

    rngs = nnx.Rngs(0)
    return nnx.Sequential(
        nnx.Embed(config["vocab"], config["dim"], rngs=rngs),
        nnx.LayerNorm(config["dim"], epsilon=1e-5, rngs=rngs),
        nnx.Linear(config["dim"], config["outputs"], rngs=rngs),
    )


def jax_conv_zoo(config: dict[str, Any]) -> Any:
    """Depthwise conv, grouped 1x1 conv and a transposed conv (JAX)."""
    from flax import nnx

    rngs, c, m = nnx.Rngs(0), config["channels"], config["multiplier"]

    class Zoo(nnx.Module):
        def __init__(self) -> None:
            self.depthwise = nnx.Conv(c, c * m, (3, 3), padding="SAME", feature_group_count=c,
                                      rngs=rngs)
            self.grouped = nnx.Conv(c * m, c * m, (1, 1), feature_group_count=2, rngs=rngs)
            self.up = nnx.ConvTranspose(c * m, 2, (2, 2), strides=2, padding="VALID",
                                        transpose_kernel=True, rngs=rngs)

        def __call__(self, x: Any) -> Any:
            return self.up(nnx.relu(self.grouped(nnx.relu(self.depthwise(x)))))

    return Zoo()


BUILDERS = {
    "ref-mlp": jax_mlp,
    "ref-conv-autoencoder": jax_conv_autoencoder,
    "ref-resnet": jax_resnet,
    "ref-embed": jax_embed,
    "ref-conv-zoo": jax_conv_zoo,
}
"""Architecture name -> JAX builder."""


def register() -> None:
    """Register every builder for the ``jax`` backend (idempotent)."""
    for name, builder in BUILDERS.items():
        polybundle.architecture(name, backend="jax", replace=True)(builder)
