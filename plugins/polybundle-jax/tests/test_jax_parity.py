"""Reference architectures agree across JAX, PyTorch and TensorFlow, in every direction.

A model is built and randomised in the source framework, saved, loaded with
``backend=<target>`` (converted through the layout tags) and run on the same
channels-last inputs: outputs agree within 1e-5 max relative error (float32).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import jax_models
import jax_reference
import pytest

import polybundle
from polybundle.tools.parity import errors

REPO = Path(__file__).resolve().parents[3]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
ref = pytest.importorskip(
    "tests.reference_architectures", reason="needs the polybundle repository's tests/"
)

HAS = {
    "torch": importlib.util.find_spec("torch") is not None,
    "tensorflow": importlib.util.find_spec("keras") is not None,
    "jax": jax_models.HAS_JAX,
}
DIRECTIONS = [("jax", "torch"), ("torch", "jax"), ("jax", "tensorflow"), ("tensorflow", "jax")]

pytestmark = jax_models.needs_jax


def _predict(backend: str, model, x):
    return polybundle.get_backend(backend).predict(model, {"input": x})["output"]


@pytest.mark.parametrize("name", sorted(jax_reference.BUILDERS))
@pytest.mark.parametrize(("source", "target"), DIRECTIONS, ids=lambda b: b)
def test_reference_architecture_agrees(name, source, target, tmp_path):
    for framework in (source, target):
        if not HAS[framework]:
            pytest.skip(f"{framework} is not installed")
    jax_reference.register()
    config = ref.CONFIGS[name]
    x = ref.sample_inputs(name, config)
    model = ref.randomize(polybundle.build(name, config, backend=source), seed=1)
    expected = _predict(source, model, x)
    assert abs(expected).max() > 0
    path = tmp_path / f"{name}.bundle"
    polybundle.save(path, {"net": model})
    bundle = polybundle.load(path, backend=target)
    assert polybundle.get_backend(target).owns(bundle.models["net"])
    _, max_rel = errors(_predict(target, bundle.models["net"], x), expected)
    assert max_rel <= 1e-5, f"{name} {source}->{target}: max relative error {max_rel:.3g}"
