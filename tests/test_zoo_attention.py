"""Multi-head attention as a canonical kind: PyTorch's fused q/k/v against Keras' per-head kernels.

PyTorch's ``nn.MultiheadAttention`` keeps the query, key and value projections
stacked in one ``in_proj_weight`` (3E, E); Keras' ``MultiHeadAttention`` keeps one
kernel per projection (E, heads, head size). A conversion splits the one into
three, or merges the three into one. A single attention layer, and two pre-norm
transformer blocks written as the zoo's ViT writes them (tests/zoo_torch.py's
EncoderBlock), convert both ways through a bundle, paired through the traced
graphs and checked, and agree on the same input within 1e-5.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import polybundle
from polybundle.errors import ConversionError
from polybundle.model.conversion import plan_conversion
from polybundle.tools.parity import errors
from tests.conftest import needs_tensorflow, needs_torch
from tests.zoo_weights import randomize

pytestmark = [needs_torch, needs_tensorflow]

MAX_REL = 1e-5
DIM, HEADS, TOKENS = 16, 4, 5


def _register_attention() -> None:
    import keras
    import torch

    class SelfAttention(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = torch.nn.MultiheadAttention(DIM, HEADS, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.attn(x, x, x, need_weights=False)[0]

    def keras_net(config: dict[str, Any]) -> Any:
        inputs = keras.Input((TOKENS, DIM))
        return keras.Model(inputs, keras.layers.MultiHeadAttention(HEADS, DIM // HEADS,
                                                                   name="attn")(inputs, inputs))

    polybundle.architecture("self-attention", backend="torch", replace=True)(
        lambda config: SelfAttention())
    polybundle.architecture("self-attention", backend="tensorflow", replace=True)(keras_net)

    def torch_encoder(config: dict[str, Any]) -> Any:
        from tests.zoo_torch import EncoderBlock

        return torch.nn.Sequential(EncoderBlock(DIM, HEADS), EncoderBlock(DIM, HEADS),
                                   torch.nn.LayerNorm(DIM, eps=1e-6))

    def keras_encoder(config: dict[str, Any]) -> Any:
        layers = keras.layers
        inputs = keras.Input((TOKENS, DIM))
        x = inputs
        for i in range(2):  # as tests/zoo_keras.py's ViT writes its blocks
            y = layers.LayerNormalization(epsilon=1e-6, name=f"block{i}_norm1")(x)
            x = x + layers.MultiHeadAttention(HEADS, DIM // HEADS, name=f"block{i}_attn")(y, y)
            y = layers.LayerNormalization(epsilon=1e-6, name=f"block{i}_norm2")(x)
            y = layers.Dense(2 * DIM, activation="gelu", name=f"block{i}_mlp1")(y)
            x = x + layers.Dense(DIM, name=f"block{i}_mlp2")(y)
        return keras.Model(inputs, layers.LayerNormalization(epsilon=1e-6, name="norm")(x))

    polybundle.architecture("attention-encoder", backend="torch", replace=True)(torch_encoder)
    polybundle.architecture("attention-encoder", backend="tensorflow", replace=True)(
        keras_encoder)


@pytest.fixture(scope="module", autouse=True)
def _builders() -> None:
    _register_attention()


def _assert_converts(path, name: str, source: str, target: str, *, seed: int,
                     data_seed: int) -> None:
    """Save ``name`` built in ``source`` with parity inputs; its ``target`` load is checked
    and its outputs agree within :data:`MAX_REL`."""
    model = randomize(polybundle.build(name, {}, backend=source), seed=seed)
    x = np.random.default_rng(data_seed).standard_normal((2, TOKENS, DIM)).astype("float32")
    polybundle.save(path, {"net": model}, architectures={"net": (name, {})}, parity_inputs=x)
    bundle = polybundle.load(path, backend=target)
    expected = polybundle.get_backend(source).predict(model, {"input": x})["output"]
    got = polybundle.get_backend(target).predict(bundle.models["net"], {"input": x})["output"]
    assert np.std(expected) > 1e-3
    assert errors(got, expected)[1] <= MAX_REL
    assert bundle.checks["net"].checked, bundle.checks["net"].note


@pytest.mark.parametrize("source,target", [("torch", "tensorflow"), ("tensorflow", "torch")])
def test_an_attention_layer_converts_both_ways(tmp_path, source, target):
    _assert_converts(tmp_path / "attn.bundle", "self-attention", source, target,
                     seed=3, data_seed=0)


def test_the_fused_projection_splits_into_the_per_head_kernels():
    import torch

    torch_net = polybundle.build("self-attention", {}, backend="torch")
    keras_net = polybundle.build("self-attention", {}, backend="tensorflow")
    source = polybundle.get_backend("torch").describe(torch_net)
    target = polybundle.get_backend("tensorflow").describe(keras_net)
    plan = plan_conversion(source, target)
    plan.check()
    actions = {(move.source, move.target): move.action for move in plan.moves}
    assert actions[("attn.in_proj_weight", "attn/key/kernel")] == "split"
    weight = torch_net.attn.in_proj_weight.detach().numpy()
    out = plan.apply({spec.name: torch_net.state_dict()[spec.name].numpy() for spec in source})
    # the key projection is the second third of in_proj_weight, (out, in) -> (in, head, dim)
    expected = weight[DIM:2 * DIM].T.reshape(DIM, HEADS, DIM // HEADS)
    np.testing.assert_array_equal(out["attn/key/kernel"], expected)
    back = plan_conversion(target, source)
    merged = [move for move in back.moves if move.target == "attn.in_proj_weight"]
    assert [move.action for move in merged] == ["merge"]
    assert torch.equal(torch.from_numpy(back.apply(out)["attn.in_proj_weight"]),
                       torch_net.attn.in_proj_weight.detach())


def test_attention_optimizer_state_is_refused_clearly(tmp_path):
    import torch

    net = randomize(polybundle.build("self-attention", {}, backend="torch"), seed=3)
    adam = torch.optim.Adam(net.parameters(), lr=1e-3)
    net(torch.ones(2, TOKENS, DIM)).sum().backward()
    adam.step()
    x = np.ones((2, TOKENS, DIM), "float32")
    polybundle.save(tmp_path / "trained.bundle", {"net": net}, optimizers={"net": adam},
                    architectures={"net": ("self-attention", {})}, parity_inputs=x)
    with pytest.raises(ConversionError, match="split or merged"):
        polybundle.convert(tmp_path / "trained.bundle", tmp_path / "keras.bundle",
                           backend="tensorflow")
    assert not (tmp_path / "keras.bundle").exists()


@pytest.mark.parametrize("source,target", [("torch", "tensorflow"), ("tensorflow", "torch")])
def test_a_transformer_encoder_converts_both_ways(tmp_path, source, target):
    _assert_converts(tmp_path / "encoder.bundle", "attention-encoder", source, target,
                     seed=5, data_seed=1)
