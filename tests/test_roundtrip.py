"""Save and load round trips in each framework: predictions bit for bit, params exactly."""

from __future__ import annotations

import numpy as np
import pytest

import polybundle
from tests import models
from tests.conftest import needs_tensorflow, needs_torch

PARAMS = {
    "N": 64,
    "gridsize": 2,
    "offset": 4.25,
    "probe.big": True,
    "probe.mask": None,
    "model_type": "pinn",
    "nested": {"list": [1, 2.5, "x", [True, None]], "empty": {}},
    "tiny": 1e-300,
    "third": 1 / 3,
}


@needs_torch
def test_torch_two_roles_round_trip_bit_for_bit(tmp_path):
    trained = {
        "autoencoder": models.trained_torch(1),
        "diffraction_to_obj": models.trained_torch(2),
    }
    x = models.inputs("torch")
    path = tmp_path / "wts.h5.zip"
    manifest = polybundle.save(path, trained, params=PARAMS)

    assert manifest["backend"] == "torch"
    bundle = polybundle.load(path)
    assert bundle.backend == "torch"
    assert bundle.params == PARAMS
    assert set(bundle.models) == {"autoencoder", "diffraction_to_obj"}
    for role, model in trained.items():
        before, after = models.predict(model, x), models.predict(bundle.models[role], x)
        assert np.array_equal(before, after), role
        state = model.state_dict()
        for name, array in bundle.tensors(role).items():
            assert np.array_equal(array, state[name].numpy()), name


@needs_torch
def test_torch_load_into_given_instances(tmp_path):
    import torch

    model = models.trained_torch(3)
    path = tmp_path / "b.bundle"
    polybundle.save(path, {"net": model}, architectures={"net": (models.ARCH, models.CONFIG)})
    target = models.torch_convnet(models.CONFIG)
    bundle = polybundle.load(path, into={"net": target})
    assert bundle.models["net"] is target
    x = models.inputs("torch")
    assert torch.equal(
        torch.from_numpy(models.predict(model, x)), torch.from_numpy(models.predict(target, x))
    )


@needs_torch
def test_torch_without_architecture_needs_builder_or_into(tmp_path):
    import torch

    path = tmp_path / "plain.bundle"
    polybundle.save(path, {"net": torch.nn.Linear(3, 2)})
    with pytest.raises(polybundle.UnknownArchitectureError, match="polybundle.architecture"):
        polybundle.load(path)
    bundle = polybundle.load(path, into={"net": torch.nn.Linear(3, 2)})
    assert bundle.manifest["models"][0]["architecture"] is None


@needs_tensorflow
def test_keras_two_roles_round_trip_bit_for_bit(tmp_path):
    trained = {
        "autoencoder": models.trained_keras(1),
        "diffraction_to_obj": models.trained_keras(2),
    }
    x = models.inputs("tensorflow")
    path = tmp_path / "wts.h5.zip"
    polybundle.save(path, trained, params=PARAMS)

    bundle = polybundle.load(path, backend="keras")
    assert bundle.backend == "tensorflow"
    assert bundle.params == PARAMS
    for role, model in trained.items():
        assert np.array_equal(models.predict(model, x), models.predict(bundle.models[role], x))
        weights = {v.path: np.asarray(v) for v in model.weights}
        tensors = bundle.tensors(role)
        assert set(tensors) == set(weights)
        for name, array in tensors.items():
            assert np.array_equal(array, weights[name]), name


@needs_tensorflow
def test_keras_without_builder_loads_from_keras_file_in_safe_mode(tmp_path):
    import keras

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="d")])
    path = tmp_path / "seq.bundle"
    polybundle.save(path, {"net": model})
    bundle = polybundle.load(path)
    x = np.arange(6, dtype="float32").reshape(2, 3)
    assert np.array_equal(np.asarray(bundle.models["net"](x)), np.asarray(model(x)))


@needs_tensorflow
def test_keras_into_with_wrong_shapes_is_refused_untouched(tmp_path):
    import keras

    path = tmp_path / "k.bundle"
    polybundle.save(path, {"net": models.trained_keras(4)})
    wrong = models.keras_convnet({**models.CONFIG, "outputs": 3})
    before = [np.asarray(v).copy() for v in wrong.weights]
    with pytest.raises(polybundle.TensorMismatchError, match="head/kernel"):
        polybundle.load(path, into={"net": wrong})
    assert all(np.array_equal(b, np.asarray(v)) for b, v in zip(before, wrong.weights, strict=True))
    assert isinstance(wrong, keras.Model)


@needs_torch
def test_torch_into_with_missing_tensors_lists_them(tmp_path):
    import torch

    path = tmp_path / "t.bundle"
    polybundle.save(path, {"net": torch.nn.Sequential(torch.nn.Linear(3, 2))})
    other = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    with pytest.raises(polybundle.TensorMismatchError) as info:
        polybundle.load(path, into={"net": other})
    assert info.value.missing == ["1.bias", "1.weight"]


@needs_torch
def test_roles_filter_loads_only_the_roles_asked_for(tmp_path):
    path = tmp_path / "two.bundle"
    polybundle.save(path, {"a": models.trained_torch(1), "b": models.trained_torch(2)})
    bundle = polybundle.load(path, roles=["b"])
    assert list(bundle.models) == ["b"]
    assert bundle.roles == ["a", "b"]
    with pytest.raises(polybundle.PolybundleError, match="'c'"):
        polybundle.load(path, roles=["c"])


@needs_torch
def test_manifest_records_layouts_sizes_and_hashes(tmp_path):
    path = tmp_path / "m.bundle"
    manifest = polybundle.save(path, {"net": models.trained_torch(1)}, params={"N": 6})
    entry = manifest["models"][0]
    layouts = {t["name"]: t["layout"] for t in entry["tensors"]}
    assert layouts["0.weight"] == "out,in,h,w"
    assert layouts["1.running_mean"] == "c"
    assert layouts["1.num_batches_tracked"] == "scalar"
    assert layouts["4.weight"] == "out,in"
    assert entry["architecture"] == {"name": models.ARCH, "config": models.CONFIG,
                                     "module": "tests.models"}  # where its builder is defined
    assert set(manifest["members"]) == {"params.json", "net/model.pth"}
    assert manifest["writer"]["framework"] == "torch"
    import zipfile

    with zipfile.ZipFile(path) as zf:
        assert zf.getinfo("net/model.pth").compress_type == zipfile.ZIP_STORED
        assert zf.namelist()[-1] == "manifest.json"


@needs_tensorflow
def test_keras_builder_that_runs_the_model_still_loads_exactly(tmp_path):
    """A builder that calls its model on data cannot defer initialisation; it still loads."""
    import keras

    class Doubler(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(2, name="dense")

        def call(self, x):
            return self.dense(x) * 2.0

    @polybundle.architecture("test-doubler", backend="tensorflow", replace=True)
    def build_doubler(config):
        model = Doubler()
        model(np.zeros((1, config["inputs"]), dtype="float32"))
        return model

    trained = polybundle.build("test-doubler", {"inputs": 3}, backend="tensorflow")
    x = np.arange(6, dtype="float32").reshape(2, 3)
    path = tmp_path / "doubler.bundle"
    polybundle.save(path, {"net": trained})
    loaded = polybundle.load(path).models["net"]
    assert np.array_equal(np.asarray(loaded(x)), np.asarray(trained(x)))
