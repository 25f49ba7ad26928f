"""The zoo: naturally written models convert across frameworks, and broken twins are caught.

keras.applications models (``weights=None``, small inputs) against PyTorch twins
(tests/zoo_torch.py). Each converts through a bundle saved with parity inputs, so
polybundle's own check runs on the load; the outputs are compared again here,
within 1e-5. A twin with one deliberate mistake that keeps every shape (average
instead of max pooling, symmetric padding where Keras pads one side, PyTorch's
default normalisation epsilon) must be
refused with ConversionMismatchError, never converted silently. Every model in
both directions, with times, is measured by benchmarks/zoo_table.py; the suite
keeps a few cases for its time budget.
"""
from __future__ import annotations

import numpy as np
import pytest

import polybundle
from polybundle.errors import ConversionMismatchError
from tests.conftest import needs_tensorflow, needs_torch
from tests.zoo_weights import convert, image_inputs, randomize

pytestmark = [needs_torch, needs_tensorflow]

MAX_REL = 1e-5
CASES = [
    ("zoo-vgg16", {"size": 64, "classes": 5}, "torch", "tensorflow"),  # Flatten head: 2x2x512
    # torch.fx keeps the subclasses with their own forward (Conv2dSame, LayerNorm2d) whole:
    ("zoo-convnext_tiny", {"size": 32, "classes": 5}, "tensorflow", "torch"),
    # F.max_pool2d and torch.flatten before the dense layer: the feature order is traced:
    ("zoo-classic_cnn", {"size": 16, "classes": 5}, "torch", "tensorflow"),
]
"""Model, config, source, target: each direction of every model is in benchmarks/zoo_table.py;
the suite keeps one direction of the cases that were silently wrong or refused, for its
time budget (EfficientNetB0, once unchecked, is kept through its broken twin: only a check
that runs can catch it)."""
BROKEN = [
    ("zoo-vgg16", {"size": 64, "classes": 5, "broken": "pool"}),
    ("zoo-mobilenet_v2", {"size": 32, "classes": 5, "broken": "padding"}),
    ("zoo-convnext_tiny", {"size": 32, "classes": 5, "broken": "epsilon"}),
    ("zoo-efficientnet_b0", {"size": 32, "classes": 5, "broken": "epsilon"}),  # Normalization
    ("zoo-classic_cnn", {"size": 16, "classes": 5, "broken": "epsilon"}),
]
"""PyTorch twins with one mistake that keeps every shape (see tests/zoo_torch.py)."""


@pytest.fixture(scope="module", autouse=True)
def _zoo() -> None:
    import tests.zoo_keras  # noqa: F401  (registers the tensorflow builders)
    import tests.zoo_torch  # noqa: F401  (registers the torch builders)


@pytest.mark.parametrize("name,config,source,target", CASES)
def test_zoo_model_converts(tmp_path, name, config, source, target):
    max_rel, seconds, check = convert(tmp_path / "zoo.bundle", name, config, source, target)
    print(f"{name} {source}->{target}: max_rel={max_rel:.2e} in {seconds:.1f}s")
    assert max_rel <= MAX_REL
    assert check.checked, check.note  # polybundle's own check ran on the load


@pytest.mark.parametrize("name,config", BROKEN)
def test_broken_twin_is_caught(tmp_path, name, config):
    model = randomize(polybundle.build(name, config, backend="torch"), seed=0)
    polybundle.save(tmp_path / "broken.bundle", {"net": model},
                    architectures={"net": (name, config)},
                    parity_inputs=image_inputs("torch", config["size"]))
    with pytest.raises(ConversionMismatchError) as info:
        polybundle.load(tmp_path / "broken.bundle", backend="tensorflow")
    assert info.value.max_rel > MAX_REL and np.isfinite(info.value.max_rel)
