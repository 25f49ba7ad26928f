"""Legacy Keras weights hold the dtype their layer's config declares, or nothing is read.

A TensorFlow-era legacy archive has no manifest: the only declaration of a
variable's dtype is its layer's ``dtype`` (policy) in ``config.json`` of the
role's ``model.keras``. A floating dataset rewritten to another dtype
(``float64`` where the layer keeps ``float32``) must be refused with a typed
error by ``load``, ``load(lazy=True)`` and ``migrate`` (which writes nothing),
and reported by ``verify`` (issue 10, item 3; the fuzzer's legacy example
``("hdf5", "legacy_tf", ("hdf5", 4, "float64", 32))``). Clean archives, and a
``mixed_float16`` model whose variables are ``float32``, still load.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import polybundle
from polybundle.errors import IntegrityError
from polybundle_tensorflow.keras_archive import declared_dtypes, weight_specs
from polybundle_tensorflow.keras_file import open_keras

from .conftest import LEGACY_DIR, needs_tensorflow, snapshot_tree

h5py = pytest.importorskip("h5py")

TF_ERA = LEGACY_DIR / "tf_era_shared.zip"
ARRAYS_DIR = LEGACY_DIR.parent / "legacy_arrays"
ROLE = "autoencoder"
WEIGHTS = "model.weights.h5"
KERNEL = "layers/conv2d/vars/0"
"""``enc_conv1``'s kernel, a float32 variable (its policy is ``DTypePolicy`` float32)."""


# --- rewriting a member of a zip, keeping every other byte as its writer made it ---------------


def _rewrite_zip(data: bytes, name: str, change: Callable[[bytes], bytes]) -> bytes:
    """Return the zip ``data`` with member ``name`` replaced by ``change(old bytes)``.

    Every member keeps its ``ZipInfo`` (order, dates, compression, attributes).
    """
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as source, zipfile.ZipFile(out, "w") as target:
        assert name in source.namelist(), name
        for info in source.infolist():
            member = source.read(info)
            target.writestr(info, change(member) if info.filename == name else member)
    return out.getvalue()


def _rewrite_dataset(weights: bytes, key: str, dtype: str) -> bytes:
    """Rewrite the dataset ``key`` of a ``model.weights.h5`` with its values as ``dtype``."""
    buffer = io.BytesIO(weights)
    with h5py.File(buffer, "r+") as h5:
        values = h5[key][()]
        del h5[key]
        h5.create_dataset(key, data=values.astype(dtype))
    return buffer.getvalue()


def legacy_with(folder: Path, role: str, change: Callable[[bytes], bytes]) -> Path:
    """Write ``tf_era_shared.zip`` with ``<role>/model.keras`` changed; return the copy."""
    data = _rewrite_zip(TF_ERA.read_bytes(), f"{role}/model.keras", change)
    path = folder / "altered.zip"
    path.write_bytes(data)
    return path


def with_dataset_as(key: str, dtype: str) -> Callable[[bytes], bytes]:
    """A ``model.keras`` change: dataset ``key`` of its weights rewritten as ``dtype``."""
    return lambda keras: _rewrite_zip(keras, WEIGHTS, lambda w: _rewrite_dataset(w, key, dtype))


# --- a floating dataset of another dtype than its layer declares ----------------------------


@pytest.mark.parametrize("dtype", ["float64", "float16"])
def test_a_legacy_dataset_rewritten_as_another_float_is_refused(tmp_path, dtype):
    folder = tmp_path / "work"
    folder.mkdir()
    altered = legacy_with(tmp_path, ROLE, with_dataset_as(KERNEL, dtype))
    before = snapshot_tree(tmp_path)
    expected = rf"{KERNEL}'? holds {dtype} values, but layer 'enc_conv1'.* float32"
    with pytest.raises(IntegrityError, match=expected):
        polybundle.load(altered)
    with pytest.raises(IntegrityError, match=expected):
        polybundle.load(altered, lazy=True).tensors(ROLE)
    with pytest.raises(IntegrityError, match=expected):
        polybundle.migrate(altered, folder / "migrated.bundle")
    report = polybundle.verify(altered)
    assert not report.ok and any(f"holds {dtype} values" in p for p in report.problems)
    assert snapshot_tree(tmp_path) == before


def test_the_config_declares_a_dtype_for_every_layer_of_the_fixture():
    """The check is not vacuous: every layer dataset of the real archive has its declaration."""
    with zipfile.ZipFile(TF_ERA) as archive:
        for role in (ROLE, "diffraction_to_obj"):
            keras_file = open_keras(archive.read(f"{role}/model.keras"), where=role)
            declared = declared_dtypes(keras_file.config)
            specs = weight_specs(keras_file)
            assert specs and all(
                declared[spec.key.rpartition("/")[0] + "/"][1] == spec.dtype == "float32"
                for spec in specs
            )


# --- clean archives still load, verify and migrate -------------------------------------------

CLEAN = sorted(LEGACY_DIR.glob("*.zip")) + sorted(ARRAYS_DIR.glob("*.zip"))


@pytest.mark.parametrize("path", CLEAN, ids=[p.name for p in CLEAN])
def test_clean_legacy_archives_still_load_verify_and_migrate(tmp_path, path):
    bundle = polybundle.load(path, lazy=True)
    for entry in bundle.manifest["models"]:
        assert bundle.tensors(entry["role"])
    assert polybundle.verify(path).problems == []
    assert polybundle.migrate(path, tmp_path / "m.bundle").written


# --- a mixed_float16 model keeps float32 variables, and they pass ---------------------------


def _mixed_float16_keras(folder: Path) -> tuple[bytes, list[np.ndarray]]:
    """Save a tiny Keras model whose layers use ``mixed_float16``; return its bytes, weights."""
    import keras

    policy = "mixed_float16"
    x = keras.Input((6, 6, 1), name="diffraction")
    y = keras.layers.Conv2D(2, 3, name="enc_conv1", dtype=policy)(x)
    y = keras.layers.BatchNormalization(name="enc_bn", dtype=policy)(y)
    y = keras.layers.Dropout(0.5, seed=1, name="drop", dtype=policy)(y)
    y = keras.layers.Flatten(dtype=policy)(y)
    y = keras.layers.Dense(3, name="out", dtype=policy)(y)
    model = keras.Model(x, y, name=ROLE)
    rng = np.random.default_rng(0)
    model.set_weights([rng.standard_normal(w.shape).astype(w.dtype) for w in model.get_weights()])
    path = folder / "mixed.keras"
    model.save(path)
    return path.read_bytes(), model.get_weights()


@needs_tensorflow
def test_a_mixed_float16_legacy_model_loads_and_a_float64_dataset_in_it_does_not(tmp_path):
    mixed, weights = _mixed_float16_keras(tmp_path)
    config = json.loads(zipfile.ZipFile(io.BytesIO(mixed)).read("config.json"))
    assert config["config"]["layers"][1]["config"]["dtype"]["config"]["name"] == "mixed_float16"
    assert {w.dtype for w in weights} == {np.dtype("float32")}
    clean = legacy_with(tmp_path, ROLE, lambda _: mixed)
    bundle = polybundle.load(clean, roles=[ROLE], trust_code=False, lazy=True)
    tensors = bundle.tensors(ROLE)
    assert {str(t.dtype) for t in tensors.values()} == {"float32"}
    assert polybundle.verify(clean).problems == []
    assert polybundle.migrate(clean, tmp_path / "mixed.bundle").written

    (tmp_path / "bad").mkdir()
    to_float64 = with_dataset_as(KERNEL, "float64")
    altered = legacy_with(tmp_path / "bad", ROLE, lambda _: to_float64(mixed))
    with pytest.raises(IntegrityError, match="float64 values, but layer 'enc_conv1'.* float32"):
        polybundle.load(altered, lazy=True).tensors(ROLE)
    assert not polybundle.verify(altered).ok


@needs_tensorflow
def test_a_quantized_legacy_model_keeps_its_int8_kernel_and_checks_its_floats(tmp_path):
    """``QuantizedDTypePolicy``: the int8 kernel is not floating; scale and bias are float32."""
    import keras

    x = keras.Input((4,), name="diffraction")
    model = keras.Model(x, keras.layers.Dense(3, name="out")(x), name=ROLE)
    model.quantize("int8")
    model.save(tmp_path / "q.keras")
    quantized = (tmp_path / "q.keras").read_bytes()
    clean = legacy_with(tmp_path, ROLE, lambda _: quantized)
    tensors = polybundle.load(clean, roles=[ROLE], lazy=True).tensors(ROLE)
    assert sorted(str(t.dtype) for t in tensors.values()) == ["float32", "float32", "int8"]
    assert polybundle.verify(clean).problems == []

    (tmp_path / "bad").mkdir()
    to_float64 = with_dataset_as("layers/dense/vars/1", "float64")
    altered = legacy_with(tmp_path / "bad", ROLE, lambda _: to_float64(quantized))
    with pytest.raises(IntegrityError, match="float64 values, but layer 'out'.* float32"):
        polybundle.load(altered, lazy=True).tensors(ROLE)
