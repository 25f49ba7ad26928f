"""Layer kinds by behaviour: subclasses, registered rules, plain variables, new kinds.

Each test writes a small model in both frameworks as a user of each would, converts
it through a bundle both ways and compares outputs on the same logical input
(NCHW for PyTorch, NHWC for Keras).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import polybundle
from polybundle.errors import ConversionError
from polybundle.tools.parity import errors
from tests.conftest import needs_tensorflow, needs_torch
from tests.zoo_weights import randomize

pytestmark = [needs_torch, needs_tensorflow]

MAX_REL = 1e-5


def _register(name: str, torch_builder: Callable[[dict], Any],
              keras_builder: Callable[[dict], Any]) -> None:
    polybundle.architecture(name, backend="torch", replace=True)(torch_builder)
    polybundle.architecture(name, backend="tensorflow", replace=True)(keras_builder)


def _agree(tmp_path, name: str, x_nhwc: np.ndarray, *, source: str) -> float:
    """Build ``name`` in ``source``, randomize it, convert it to the other backend, compare."""
    target = "tensorflow" if source == "torch" else "torch"
    model = randomize(polybundle.build(name, {}, backend=source), seed=1)
    inputs = {backend: x_nhwc if backend == "tensorflow" or x_nhwc.ndim != 4
              else x_nhwc.transpose(0, 3, 1, 2) for backend in (source, target)}
    polybundle.save(tmp_path / f"{name}.bundle", {"net": model}, parity_inputs=inputs[source])
    converted = polybundle.load(tmp_path / f"{name}.bundle", backend=target).models["net"]
    outputs = {}
    for backend, net in ((source, model), (target, converted)):
        x = inputs[backend]
        out = polybundle.get_backend(backend).predict(net, {"input": x})["output"]
        outputs[backend] = out if backend == "tensorflow" or out.ndim != 4 else out.transpose(
            0, 2, 3, 1)
    assert np.std(outputs[source]) > 1e-3
    return errors(outputs[target], outputs[source])[1]


def _images(channels: int = 4, size: int = 6) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((2, size, size, channels), dtype=np.float32)


def _subclass_pair() -> None:
    import keras
    import torch

    class BatchNormAct2d(torch.nn.BatchNorm2d):  # as timm writes it: norm, then activation
        def forward(self, x):
            return torch.relu(super().forward(x))

    class LayerNorm2d(torch.nn.LayerNorm):  # as torchvision writes it: channels-first
        def forward(self, x):
            x = x.permute(0, 2, 3, 1)
            x = torch.nn.functional.layer_norm(x, self.normalized_shape, self.weight, self.bias,
                                               self.eps)
            return x.permute(0, 3, 1, 2)

    def torch_net(config):
        return torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3, padding=1), BatchNormAct2d(8),
                                   LayerNorm2d(8, eps=1e-6))

    def keras_net(config):
        return keras.Sequential([
            keras.Input((6, 6, 4)), keras.layers.Conv2D(8, 3, padding="same"),
            keras.layers.BatchNormalization(epsilon=1e-5), keras.layers.ReLU(),
            keras.layers.LayerNormalization(epsilon=1e-6),
        ])

    _register("kinds-subclass", torch_net, keras_net)


@pytest.mark.parametrize("source", ["torch", "tensorflow"])
def test_subclasses_of_standard_layers_keep_their_kind(tmp_path, source):
    # before: BatchNormAct2d and LayerNorm2d were "no canonical kind" (matched by class name)
    _subclass_pair()
    model = polybundle.build("kinds-subclass", {}, backend="torch")
    kinds = {s.layer: s.kind for s in polybundle.get_backend("torch").describe(model)}
    assert kinds == {"0": "conv2d", "1": "batchnorm", "2": "layernorm"}
    assert _agree(tmp_path, "kinds-subclass", _images(), source=source) <= MAX_REL


def test_keras_subclass_and_registered_predicate_are_kinds():
    import keras
    import torch

    from polybundle_tensorflow.layers import layer_kind
    from polybundle_torch.layers import module_canonical, register_kind, unregister_kind

    class FrozenBatchNorm(keras.layers.BatchNormalization):
        pass

    assert layer_kind(FrozenBatchNorm())[0] == "batchnorm"

    class Affine(torch.nn.Module):  # a user's dense layer, recognised by what it holds
        def __init__(self):
            super().__init__()
            self.matrix = torch.nn.Parameter(torch.zeros(2, 3))

    rule = register_kind(lambda m: hasattr(m, "matrix"), "dense", slots={"matrix": "kernel"})
    try:
        assert module_canonical(Affine(), "matrix", (2, 3)).kind == "dense"
    finally:
        unregister_kind(rule)
    assert module_canonical(Affine(), "matrix", (2, 3)).kind == "variable"
    with pytest.raises(ConversionError, match="not a canonical kind"):
        register_kind(Affine, "affine")


def _normalization_pair() -> Any:
    import keras
    import torch

    from polybundle_torch.layers import register_kind

    class Standardize(torch.nn.Module):  # the PyTorch twin of keras.layers.Normalization
        def __init__(self, channels):
            super().__init__()
            self.register_buffer("mean", torch.zeros(channels))
            self.register_buffer("variance", torch.ones(channels))
            self.register_buffer("count", torch.zeros((), dtype=torch.int64))

        def forward(self, x):
            shape = (1, -1, 1, 1)
            scale = torch.sqrt(torch.clamp(self.variance, min=1e-7)).view(shape)
            return (x - self.mean.view(shape)) / scale

    rule = register_kind(Standardize, "normalization")

    def torch_net(config):
        return torch.nn.Sequential(Standardize(4), torch.nn.Conv2d(4, 3, 1))

    def keras_net(config):
        return keras.Sequential([keras.Input((6, 6, 4)), keras.layers.Normalization(),
                                 keras.layers.Conv2D(3, 1)])

    _register("kinds-normalization", torch_net, keras_net)
    return rule


@pytest.mark.parametrize("source", ["torch", "tensorflow"])
def test_keras_normalization_statistics_convert(tmp_path, source):
    from polybundle_torch.layers import unregister_kind

    rule = _normalization_pair()
    try:
        backend = polybundle.get_backend(source)
        model = polybundle.build("kinds-normalization", {}, backend=source)
        slots = {s.slot for s in backend.describe(model) if s.kind == "normalization"}
        assert slots == {"mean", "variance", "count"}
        assert _agree(tmp_path, "kinds-normalization", _images(), source=source) <= MAX_REL
    finally:
        unregister_kind(rule)


def _separable_pair() -> None:
    import keras
    import torch

    def torch_net(config):
        return torch.nn.Sequential(
            torch.nn.Conv2d(4, 8, 3, padding=1, groups=4, bias=False),  # depthwise, multiplier 2
            torch.nn.Conv2d(8, 5, 1),  # pointwise
        )

    def keras_net(config):
        return keras.Sequential([keras.Input((6, 6, 4)),
                                 keras.layers.SeparableConv2D(5, 3, padding="same",
                                                              depth_multiplier=2, name="sep")],
                                # named: a rebuilt unnamed model gets new auto names, which
                                # the graph pairing of a Keras source does not yet map
                                name="separable")

    _register("kinds-separable", torch_net, keras_net)


@pytest.mark.parametrize("source", ["torch", "tensorflow"])
def test_separable_conv_pairs_with_depthwise_and_pointwise(tmp_path, source):
    _separable_pair()
    model = polybundle.build("kinds-separable", {}, backend="tensorflow")
    parts = [(s.layer, s.kind, s.slot) for s in polybundle.get_backend("tensorflow").describe(
        model)]
    assert [p[1:] for p in parts] == [("depthwise_conv2d", "kernel"), ("conv2d", "kernel"),
                                      ("conv2d", "bias")]
    assert parts[0][0].endswith("/depthwise") and parts[1][0].endswith("/pointwise")
    assert _agree(tmp_path, "kinds-separable", _images(), source=source) <= MAX_REL


def _variables_pair() -> None:
    import keras
    import torch

    class LayerScale(torch.nn.Module):  # as timm writes it
        def __init__(self, dim):
            super().__init__()
            self.gamma = torch.nn.Parameter(torch.ones(dim))

        def forward(self, x):
            return x * self.gamma

    class Tokens(torch.nn.Module):  # ViT-style stem: class token, position embedding
        def __init__(self, dim, length):
            super().__init__()
            self.cls_token = torch.nn.Parameter(torch.zeros(1, 1, dim))
            self.pos_embed = torch.nn.Parameter(torch.zeros(1, length + 1, dim))
            self.proj = torch.nn.Linear(dim, dim)
            self.ls = LayerScale(dim)

        def forward(self, x):
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
            return self.ls(self.proj(x))

    class ClassToken(keras.layers.Layer):
        def build(self, shape):
            self.cls = self.add_weight(shape=(1, 1, shape[-1]), name="cls")

        def call(self, x):
            return keras.ops.concatenate(
                [keras.ops.broadcast_to(self.cls, (keras.ops.shape(x)[0], 1, x.shape[-1])), x],
                axis=1)

    class AddPosition(keras.layers.Layer):
        def build(self, shape):
            self.pos = self.add_weight(shape=(1, shape[1], shape[2]), name="pos")

        def call(self, x):
            return x + self.pos

    class ChannelScale(keras.layers.Layer):  # LayerScale
        def build(self, shape):
            self.gamma = self.add_weight(shape=(shape[-1],), name="gamma")

        def call(self, x):
            return x * self.gamma

    def torch_net(config):
        return Tokens(8, 5)

    def keras_net(config):
        inputs = keras.Input((5, 8))
        x = AddPosition(name="position")(ClassToken(name="token")(inputs))
        x = keras.layers.Dense(8, name="proj")(x)
        return keras.Model(inputs, ChannelScale(name="scale")(x), name="tokens")

    _register("kinds-variables", torch_net, keras_net)


@pytest.mark.parametrize("source", ["torch", "tensorflow"])
def test_plain_variables_convert_by_position_and_shape(tmp_path, source):
    # before: cls_token, pos_embed and gamma were "no canonical kind"
    _variables_pair()
    model = polybundle.build("kinds-variables", {}, backend="torch")
    specs = polybundle.get_backend("torch").describe(model)
    assert [(s.kind, s.layer) for s in specs if s.kind == "variable"] == [
        ("variable", "cls_token"), ("variable", "pos_embed"), ("variable", "ls.gamma")]
    x = np.random.default_rng(0).standard_normal((2, 5, 8), dtype=np.float32)
    assert _agree(tmp_path, "kinds-variables", x, source=source) <= MAX_REL
