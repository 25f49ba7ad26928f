"""Loading across frameworks: reference architectures agree, problems raise typed errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

import polybundle
from polybundle.errors import (
    BackendMismatchError,
    ConversionError,
    ConversionUnavailableError,
    TensorMismatchError,
)
from polybundle.tools.cli import main
from polybundle.tools.parity import errors
from tests import reference_architectures as ref
from tests.conftest import needs_tensorflow, needs_torch

pytestmark = [needs_torch, needs_tensorflow]

PAIRS = [("tensorflow", "torch"), ("torch", "tensorflow")]
MAX_REL = 1e-5


def _models(name: str, backend: str) -> dict:
    configs = ref.ROLES.get(name, {"net": ref.CONFIGS[name]})
    return {
        role: ref.randomize(polybundle.build(name, config, backend=backend), seed=index)
        for index, (role, config) in enumerate(configs.items())
    }


@pytest.mark.parametrize("source,target", PAIRS)
@pytest.mark.parametrize("name", sorted(ref.CONFIGS))
def test_reference_architecture_outputs_agree_across_frameworks(tmp_path, name, source, target):
    models = _models(name, source)
    polybundle.save(tmp_path / "src.bundle", models)
    bundle = polybundle.load(tmp_path / "src.bundle", backend=target)
    assert bundle.backend == target and set(bundle.models) == set(models)
    x = ref.sample_inputs(name, ref.CONFIGS[name])
    for role, model in models.items():
        expected = polybundle.get_backend(source).predict(model, {"input": x})["output"]
        got = polybundle.get_backend(target).predict(bundle.models[role], {"input": x})["output"]
        max_abs, max_rel = errors(got, expected)
        print(f"{name} {role} {source}->{target}: max_abs={max_abs:.3e} max_rel={max_rel:.3e}")
        assert np.std(expected) > 1e-3  # a real output, not a constant
        assert max_rel <= MAX_REL


def test_convert_writes_a_native_bundle_that_round_trips(tmp_path):
    models = _models("ref-conv-autoencoder", "tensorflow")
    polybundle.save(tmp_path / "tf.bundle", models, params={"N": 16})
    manifest = polybundle.convert(tmp_path / "tf.bundle", tmp_path / "pt.bundle", backend="pt")
    assert manifest["backend"] == "torch"
    bundle = polybundle.load(tmp_path / "pt.bundle")
    assert bundle.params == {"N": 16}
    tf_tensors = polybundle.load(tmp_path / "tf.bundle", lazy=True).tensors("autoencoder")
    pt_tensors = bundle.tensors("autoencoder")
    kernel = next(v for k, v in tf_tensors.items() if k.endswith("kernel"))
    assert np.array_equal(pt_tensors["body.0.weight"], np.transpose(kernel, (3, 2, 0, 1)))
    assert pt_tensors["body.2.num_batches_tracked"] == 0  # filled: Keras has no counter


def test_batchnorm_counter_is_dropped_when_converting_to_keras(tmp_path):
    models = _models("ref-resnet", "torch")
    polybundle.save(tmp_path / "pt.bundle", models)
    report = polybundle.api.transfer.plan_bundle(tmp_path / "pt.bundle", "tensorflow")
    drops = [r for r in report["roles"][0]["rows"] if r["action"] == "drop"]
    assert drops and all(r["source"].endswith("num_batches_tracked") for r in drops)
    assert not report["roles"][0]["unexpected"]


def test_missing_builder_raises_backend_mismatch_naming_both(tmp_path):
    import torch

    polybundle.save(tmp_path / "p.bundle", {"net": torch.nn.Linear(3, 2)},
                    architectures={"net": ("only-in-torch", {})})
    with pytest.raises(ConversionUnavailableError) as info:
        polybundle.load(tmp_path / "p.bundle", backend="tensorflow")
    assert isinstance(info.value, BackendMismatchError)
    assert "'torch'" in str(info.value) and "'tensorflow'" in str(info.value)


def test_unmapped_layer_and_shape_mismatch_fail_with_no_partial_model(tmp_path):
    import keras
    import torch

    @polybundle.architecture("odd-torch", backend="torch", replace=True)
    def odd_torch(config):
        return torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.GRU(2, 2))

    @polybundle.architecture("odd-torch", backend="tensorflow", replace=True)
    def odd_keras(config):
        return keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])

    odd = polybundle.build("odd-torch", {}, backend="pt")
    polybundle.save(tmp_path / "odd.bundle", {"net": odd})
    with pytest.raises(ConversionError, match="no canonical kind"):
        polybundle.load(tmp_path / "odd.bundle", backend="tensorflow")

    @polybundle.architecture("wide", backend="torch", replace=True)
    def wide_torch(config):
        return torch.nn.Linear(3, config["out"])

    @polybundle.architecture("wide", backend="tensorflow", replace=True)
    def wide_keras(config):
        return keras.Sequential([keras.Input((3,)), keras.layers.Dense(config["out"] + 1)])

    wide = polybundle.build("wide", {"out": 2}, backend="pt")
    polybundle.save(tmp_path / "w.bundle", {"net": wide})
    target = polybundle.build("wide", {"out": 2}, backend="tensorflow")
    before = [v.numpy().copy() for v in target.weights]
    with pytest.raises(TensorMismatchError, match="shape"):
        polybundle.load(tmp_path / "w.bundle", backend="tensorflow", into={"net": target})
    assert all(np.array_equal(b, v.numpy()) for b, v in zip(before, target.weights, strict=True))


def test_explicit_map_converts_a_layer_without_canonical_kind(tmp_path):
    import keras
    import torch

    class Scale(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(2, 3))

        def forward(self, x):
            return x @ self.w.t()

    @polybundle.architecture("scaled", backend="torch", replace=True)
    def scaled_torch(config):
        return torch.nn.Sequential(Scale())

    @polybundle.architecture("scaled", backend="tensorflow", replace=True)
    def scaled_keras(config):
        dense = keras.layers.Dense(2, use_bias=False, name="proj")
        return keras.Sequential([keras.Input((3,)), dense], name="scaled")

    net = polybundle.build("scaled", {}, backend="torch")
    polybundle.save(tmp_path / "s.bundle", {"net": net})
    with pytest.raises(ConversionError):
        polybundle.load(tmp_path / "s.bundle", backend="tensorflow")
    polybundle.register_tensor_map(
        "scaled", source="torch", target="tensorflow",
        mapping={"0.w": ("scaled/proj/kernel", "out,in", "in,out")},
    )
    converted = polybundle.load(tmp_path / "s.bundle", backend="tensorflow").models["net"]
    x = np.random.default_rng(0).standard_normal((4, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(converted(x)), net(torch.from_numpy(x)).detach().numpy(),
                               rtol=1e-6, atol=1e-6)


def test_plan_cli_prints_permutations_and_builds_no_model(tmp_path, capsys):
    polybundle.save(tmp_path / "tf.bundle", _models("ref-mlp", "tensorflow"))
    assert main(["plan", str(tmp_path / "tf.bundle"), "--to", "torch", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    rows = plan["roles"][0]["rows"]
    kernels = [r for r in rows if r["slot"] == "kernel"]
    assert kernels and all(r["detail"] == "transpose (1, 0)" for r in kernels)
    assert [r["slot"] for r in rows if r["kind"] == "prelu"] == ["alpha"]
