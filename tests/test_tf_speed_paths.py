"""The fast TensorFlow paths (issue 15, items 3 and 4) give the same files and the same values.

A save streams ``model.weights.h5`` from the variables into the bundle
(:mod:`polybundle_tensorflow.keras_writer`) instead of letting Keras build it
in memory; a load hands the bytes it read to the variables without a copy
(:mod:`polybundle_tensorflow.tensors`). These tests hold both to what the
slow paths gave: a ``model.keras`` Keras itself opens, laid out as Keras lays
it out, every value back bit for bit (float64, bfloat16, batch-norm
statistics, a tensor larger than one write chunk), loaded variables that
train independently of each other, and a damaged byte still refused by the
digest check that runs beside the load.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import polybundle
from polybundle.errors import IntegrityError

from .conftest import needs_tensorflow

pytestmark = needs_tensorflow

ARCHITECTURE = "tf-speed-net"


def _build(config: dict[str, Any]) -> Any:
    """A small functional net with every kind of variable the fast paths meet."""
    import keras

    inputs = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.Flatten(name="flat")(x)
    x = keras.layers.Dense(config["wide"], name="wide")(x)  # 64 x wide: a deferred dataset
    x = keras.layers.Dense(config["wide"], name="square")(x)  # wide x wide: > one 4 MiB chunk
    x = keras.layers.Dense(3, dtype="float64", name="head64")(x)
    outputs = keras.layers.Dense(2, dtype="bfloat16", name="head16")(x)
    return keras.Model(inputs, outputs, name="net")


def _randomised(model: Any, seed: int = 0) -> Any:
    """Give every variable (moving statistics too) random values of its own dtype."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        values = np.abs(rng.standard_normal(tuple(variable.shape))) + 0.5  # variances > 0
        variable.assign(values.astype(np.dtype(variable.dtype)))
    return model


def _weights(model: Any) -> dict[str, np.ndarray]:
    return {variable.path: np.asarray(variable.numpy()) for variable in model.weights}


def _assert_bit_exact(loaded: Any, original: dict[str, np.ndarray]) -> None:
    got = _weights(loaded)
    assert list(got) == list(original)
    for name, array in original.items():
        assert got[name].dtype == array.dtype, name
        assert got[name].tobytes() == array.tobytes(), name


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One model saved once with an architecture (builder path) and once without."""
    polybundle.architecture(ARCHITECTURE, backend="tensorflow", replace=True)(_build)
    folder = tmp_path_factory.mktemp("tf_speed")
    model = _randomised(polybundle.build(ARCHITECTURE, {"wide": 1100}, backend="tensorflow"))
    plain = _randomised(_build({"wide": 1100}))  # built by hand: no architecture recorded
    built, bare = folder / "built.bundle", folder / "bare.bundle"
    polybundle.save(built, {"net": model})
    polybundle.save(bare, {"net": plain})
    return {"folder": folder, "built": built, "bare": bare, "model": model, "plain": plain,
            "weights": _weights(model), "plain_weights": _weights(plain)}


def _inner_keras(bundle: Path, out: Path) -> Path:
    with zipfile.ZipFile(bundle) as archive:
        out.write_bytes(archive.read("net/model.keras"))
    return out


def _h5_tree(data: bytes) -> dict[str, Any]:
    """Every group and dataset of a weights file: kind, shape, dtype and attributes."""
    import io

    import h5py

    tree: dict[str, Any] = {}
    with h5py.File(io.BytesIO(data), "r") as h5:

        def visit(name: str, item: Any) -> None:
            attrs = {key: str(value) for key, value in item.attrs.items()}
            if isinstance(item, h5py.Dataset):
                tree[name] = ("dataset", item.shape, str(item.id.get_type().get_class()), attrs)
            else:
                tree[name] = ("group", attrs)

        h5.visititems(visit)
        tree["/"] = ("group", {key: str(value) for key, value in h5.attrs.items()})
    return tree


def test_the_streamed_model_keras_is_the_file_keras_writes(saved):
    """Same members, and a weights file with Keras' groups, names, types, shapes and tags."""
    import keras

    ours = _inner_keras(saved["built"], saved["folder"] / "ours.keras")
    theirs = saved["folder"] / "theirs.keras"
    saved["model"].save(theirs)
    with zipfile.ZipFile(ours) as a, zipfile.ZipFile(theirs) as b:
        assert a.namelist() == b.namelist() == ["metadata.json", "config.json", "model.weights.h5"]
        assert all(info.compress_type == zipfile.ZIP_STORED for info in a.infolist())
        assert a.testzip() is None  # every CRC-32 is right
        assert a.read("config.json") == b.read("config.json")
        assert _h5_tree(a.read("model.weights.h5")) == _h5_tree(b.read("model.weights.h5"))
    _assert_bit_exact(keras.saving.load_model(ours, compile=False), saved["weights"])


def test_both_load_paths_give_every_value_back_bit_for_bit(saved):
    builder = polybundle.load(saved["built"]).models["net"]
    bare = polybundle.load(saved["bare"]).models["net"]
    _assert_bit_exact(builder, saved["weights"])
    _assert_bit_exact(bare, saved["plain_weights"])
    x = np.random.default_rng(1).standard_normal((2, 6, 6, 2)).astype("float32")
    assert np.array_equal(np.asarray(builder(x)), np.asarray(saved["model"](x)))
    into = _build({"wide": 1100})
    polybundle.load(saved["built"], into={"net": into})
    _assert_bit_exact(into, saved["weights"])


def test_variables_that_adopted_the_read_bytes_train_on_their_own(saved):
    """Two loads never share memory, and training one leaves the other (and a reload) as saved."""
    first = polybundle.load(saved["built"]).models["net"]
    second = polybundle.load(saved["built"]).models["net"]
    wide = first.get_layer("square").kernel
    wide.assign_add(np.ones(tuple(wide.shape), "float32"))
    assert np.array_equal(
        np.asarray(first.get_layer("square").kernel.numpy()),
        saved["weights"]["square/kernel"] + np.float32(1),
    )
    _assert_bit_exact(second, saved["weights"])
    _assert_bit_exact(polybundle.load(saved["bare"]).models["net"], saved["plain_weights"])


@pytest.mark.parametrize("which", ["built", "bare"])
def test_a_damaged_weight_byte_is_caught_by_the_digest_beside_the_load(saved, which, tmp_path):
    data = bytearray(saved[which].read_bytes())
    kernel = saved["weights" if which == "built" else "plain_weights"]["square/kernel"]
    at = bytes(data).find(kernel[7].tobytes())
    assert at > 0
    data[at + 5] ^= 0x01
    damaged = tmp_path / "damaged.bundle"
    damaged.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="net/model.keras"):
        polybundle.load(damaged)


def test_a_scalar_variable_keeps_its_shape(tmp_path):
    """A variable of shape () is stored as shape (), as Keras stores it (it was stored as (1,))."""
    import keras

    @keras.saving.register_keras_serializable(package="polybundle_tests")
    class Scale(keras.layers.Layer):
        def build(self, input_shape: Any) -> None:
            self.scale = self.add_weight(shape=(), initializer="ones", name="scale")

        def call(self, inputs: Any) -> Any:
            return inputs * self.scale

    def build() -> Any:
        inputs = keras.Input((3,))
        return keras.Model(inputs, Scale(name="scale")(keras.layers.Dense(2, name="fc")(inputs)))

    model = build()
    model.get_layer("scale").scale.assign(2.5)
    polybundle.save(tmp_path / "scalar.bundle", {"net": model})
    loaded = polybundle.load(tmp_path / "scalar.bundle", into={"net": build()}).models["net"]
    _assert_bit_exact(loaded, _weights(model))
    keras_file = _inner_keras(tmp_path / "scalar.bundle", tmp_path / "scalar.keras")
    assert tuple(keras.saving.load_model(keras_file).get_layer("scale").scale.shape) == ()
