"""Legacy archives: the real fixtures load, match their ``*.expect.npz``, migrate and reload.

The PyTorch JSON era has no fixture from the old writer; its archive is
assembled here from the PyTorch-era fixture's own members, exactly as that
writer laid them out (``manifest.json`` with ``torch-manifest-v1``,
``params.json``, ``model.pth``).
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import polybundle
from polybundle.errors import UnsafeContentError
from polybundle.safety.unpickle import PLAIN_DATA, safe_loads
from polybundle.tools.cli import main
from polybundle_tensorflow.legacy_era import TF_PARAMS
from polybundle_torch.legacy_eras import TORCH_PARAMS, load_params_pickle

from .conftest import needs_tensorflow, needs_torch, snapshot_tree

ROLES = ("autoencoder", "diffraction_to_obj")


@pytest.fixture
def builders():
    """Forget the builders a test registers (they are named after legacy roles)."""
    from polybundle.hooks import registry

    with registry.scoped_declarations():
        yield


def _expect(legacy_dir, name):
    return np.load(legacy_dir / f"{name}.expect.npz")


@pytest.fixture
def json_era(legacy_dir, tmp_path):
    path = tmp_path / "json_era.zip"
    with zipfile.ZipFile(legacy_dir / "torch_dill_era_shared.zip") as source:
        manifest = {
            "models": list(ROLES),
            "version": "2.0-pytorch",
            "manifest_version": "torch-manifest-v1",
            "backend": "pytorch",
        }
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as out:
            out.writestr("manifest.json", json.dumps(manifest))
            for role in ROLES:
                params = safe_loads(source.read(f"{role}/params.dill"), where="params.dill")
                out.writestr(f"{role}/params.json", json.dumps(params))
                out.writestr(f"{role}/model.pth", source.read(f"{role}/model.pth"))
    return path


def test_torch_dill_era_loads_params_and_tensors_without_torch(legacy_dir):
    bundle = polybundle.load(legacy_dir / "torch_dill_era_shared.zip")
    expect = _expect(legacy_dir, "torch_dill_era_shared")
    assert bundle.backend == "torch" and bundle.roles == list(ROLES)
    assert bundle.params["_version"] == "2.0-pytorch" and bundle.params["intensity_scale"] == 2.5
    for role in ROLES:
        tensors = bundle.tensors(role)
        assert sorted(tensors) == sorted(
            k.split("/", 1)[1] for k in expect.files if k.startswith(role + "/")
        )
        for name, array in tensors.items():
            np.testing.assert_array_equal(array, expect[f"{role}/{name}"])
    with pytest.raises(polybundle.UnknownArchitectureError, match="architecture"):
        bundle.models["autoencoder"]


def test_json_era_loads(json_era, legacy_dir):
    bundle = polybundle.load(json_era)
    assert bundle.manifest["format"] == "legacy-torch-json"
    assert bundle.params["intensity_scale"] == 2.5
    expect = _expect(legacy_dir, "torch_dill_era_shared")
    np.testing.assert_array_equal(
        bundle.tensors("autoencoder")["3.weight"], expect["autoencoder/3.weight"]
    )


def test_no_framework_is_imported_for_legacy_params_and_tensors(legacy_dir):
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['tensorflow'] = None\n"
        "import polybundle\n"
        f"for name in ('torch_dill_era_shared.zip', 'tf_era_shared.zip'):\n"
        f"    b = polybundle.load({str(legacy_dir)!r} + '/' + name)\n"
        "    assert b.tensors('autoencoder') and b.params['intensity_scale']\n"
        "    assert polybundle.verify({0!r} + '/' + name).ok\n".format(str(legacy_dir))
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_tf_era_lists_custom_objects_without_unpickling(legacy_dir):
    bundle = polybundle.load(legacy_dir / "tf_era_shared.zip")
    assert bundle.params["_version"] == "1.0" and bundle.params["intensity_scale"] == 1234.5
    names = bundle.manifest["legacy"]["custom_objects"]["autoencoder"]
    assert names == ["ptycho.custom_layers.ScaleLayer", "ptycho.custom_layers.SquareLayer"]
    assert "ptycho" not in sys.modules
    with pytest.raises(UnsafeContentError, match="SquareLayer"):
        bundle.models["autoencoder"]


def _eager_params() -> bytes:
    """A params pickle holding an ``EagerTensor`` as TensorFlow pickles it."""
    array_ops = pickle.dumps(np.array([1.0, 2.0], dtype=np.float32), protocol=2)[2:-1]
    return (
        b"\x80\x02}X\x05\x00\x00\x00probe"
        + b"ctensorflow.python.framework.ops\nconvert_to_tensor\n"
        + array_ops
        + b"\x85Rs."
    )


def test_framework_tensors_in_params_become_numpy():
    params = safe_loads(_eager_params(), where="params.dill", extra=TF_PARAMS)
    np.testing.assert_array_equal(params["probe"], np.array([1.0, 2.0], dtype=np.float32))
    with pytest.raises(UnsafeContentError, match="builtins.print"):
        safe_loads(pickle.dumps(print), where="params.dill", extra=TF_PARAMS)


def test_the_core_unpickler_knows_no_framework_names():
    """Framework tensors load only with the vocabulary the backend's era reader passes."""
    with pytest.raises(UnsafeContentError, match="convert_to_tensor"):
        safe_loads(_eager_params(), where="params.dill")
    frameworks = {"torch", "tensorflow", "keras", "jax"}
    assert not [module for module, _ in PLAIN_DATA if module.split(".")[0] in frameworks]
    assert [name for name in TORCH_PARAMS if name not in PLAIN_DATA]
    assert [name for name in TF_PARAMS if name not in PLAIN_DATA]


@needs_torch
def test_torch_tensor_in_params_becomes_numpy():
    import torch

    probe = torch.arange(12, dtype=torch.float32).reshape(3, 4).t()[1:]
    data = pickle.dumps({"probe": probe, "scale": torch.tensor(2.5)})
    params = load_params_pickle(data, where="p")
    np.testing.assert_array_equal(params["probe"], probe.numpy())
    assert params["scale"] == np.float32(2.5)
    with pytest.raises(UnsafeContentError, match="torch"):
        safe_loads(data, where="p")


@needs_torch
def test_torch_era_params_dill_holding_torch_tensors_loads_and_migrates(legacy_dir, tmp_path):
    """The PyTorch era reader (in the torch backend) passes the torch vocabulary."""
    import torch

    probe = torch.arange(6, dtype=torch.float64).reshape(2, 3)
    members = {}
    with zipfile.ZipFile(legacy_dir / "torch_dill_era_shared.zip") as source:
        for name in source.namelist():
            members[name] = source.read(name)
    for role in ROLES:
        params = safe_loads(members[f"{role}/params.dill"], where="params.dill")
        members[f"{role}/params.dill"] = pickle.dumps({**params, "probe": probe})
    path = tmp_path / "tensors_in_params.zip"
    with zipfile.ZipFile(path, "w") as out:
        for name, data in members.items():
            out.writestr(name, data)
    bundle = polybundle.load(path)
    assert bundle.params["intensity_scale"] == 2.5
    np.testing.assert_array_equal(np.asarray(bundle.params["probe"]), probe.numpy())
    report = polybundle.verify(path)
    assert report.ok, report.problems


def _torch_net():
    import torch

    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.BatchNorm2d(8),
        torch.nn.Conv2d(8, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.ConvTranspose2d(4, 1, 3, padding=1),
    )


@needs_torch
def test_torch_era_into_and_builder_match_outputs(legacy_dir, json_era, builders):
    import torch

    expect = _expect(legacy_dir, "torch_dill_era_shared")
    polybundle.architecture("diffraction_to_obj", backend="torch", replace=True)(
        lambda params: _torch_net()
    )
    for path in (legacy_dir / "torch_dill_era_shared.zip", json_era):
        bundle = polybundle.load(path, into={"autoencoder": _torch_net()})
        for role in ROLES:
            model = bundle.models[role].eval()
            with torch.no_grad():
                y = model(torch.from_numpy(expect["x"])).numpy()
            np.testing.assert_allclose(y, expect[f"{role}_y"], rtol=1e-5, atol=1e-6)


def _keras_net(params):
    import keras

    class SquareLayer(keras.layers.Layer):
        def call(self, x):
            return x * x

    n = params["N"]
    x = keras.Input((n, n, 1), name="diffraction")
    y = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="enc_conv1")(x)
    y = keras.layers.BatchNormalization(name="enc_bn")(y)
    y = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="enc_conv2")(y)
    y = keras.layers.Conv2DTranspose(1, 3, padding="same", name="dec_convT")(y)
    return keras.Model(x, SquareLayer(name="square")(y))


@needs_tensorflow
def test_tf_era_with_builder_matches_weights_and_outputs(legacy_dir, tmp_path, builders):
    expect = _expect(legacy_dir, "tf_era_shared")
    for role in ROLES:
        polybundle.architecture(role, backend="tensorflow", replace=True)(_keras_net)
    path = legacy_dir / "tf_era_shared.zip"
    bundle = polybundle.load(path)
    weights = bundle.models["autoencoder"].get_weights()
    for index, array in enumerate(weights):
        np.testing.assert_array_equal(array, expect[f"autoencoder/w{index}"])
    for role in ROLES:
        y = np.asarray(bundle.models[role](expect["x"], training=False))
        np.testing.assert_allclose(y, expect[f"{role}_y"], rtol=1e-5, atol=1e-6)

    target = tmp_path / "migrated.bundle"
    report = polybundle.migrate(path, target)
    assert report.written and any(
        "layout tags from the registered builder" in c for c in report.converted
    )
    migrated = polybundle.load(target)
    for role in ROLES:
        y = np.asarray(migrated.models[role](expect["x"], training=False))
        np.testing.assert_allclose(y, expect[f"{role}_y"], rtol=1e-5, atol=1e-6)
    layouts = {t["layout"] for t in migrated.manifest["models"][0]["tensors"]}
    assert "h,w,in,out" in layouts


@needs_tensorflow
def test_tf_era_trust_code_uses_the_projects_own_classes(legacy_dir, ptycho_package):
    expect = _expect(legacy_dir, "tf_era_shared")
    bundle = polybundle.load(
        legacy_dir / "tf_era_shared.zip", roles=["diffraction_to_obj"], trust_code=True
    )
    y = np.asarray(bundle.models["diffraction_to_obj"](expect["x"], training=False))
    np.testing.assert_allclose(y, expect["diffraction_to_obj_y"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["torch_dill_era_shared.zip", "tf_era_shared.zip", "json"])
def test_migrate_is_atomic_idempotent_and_keeps_tensors(
    legacy_dir, json_era, tmp_path, name, capsys
):
    source = json_era if name == "json" else legacy_dir / name
    target = tmp_path / "out" / "migrated.bundle"
    target.parent.mkdir()
    assert main(["migrate", str(source), str(target)]) == 0
    printed = capsys.readouterr().out
    assert "written" in printed and "converted:" in printed
    before = snapshot_tree(target.parent), target.stat().st_mtime_ns
    report = polybundle.migrate(source, target)
    assert (
        not report.written and (snapshot_tree(target.parent), target.stat().st_mtime_ns) == before
    )
    legacy, migrated = polybundle.load(source), polybundle.load(target, lazy=True)
    assert migrated.params == json.loads(json.dumps(legacy.params))
    for role in ROLES:
        old, new = legacy.tensors(role), migrated.tensors(role)
        assert sorted(old) == sorted(new)
        for key in old:
            np.testing.assert_array_equal(old[key], new[key])
    with zipfile.ZipFile(target) as archive:
        assert not [n for n in archive.namelist() if n.endswith((".dill", ".pkl"))]
    assert main(["verify", str(target)]) == 0


@needs_torch
def test_migrated_torch_bundle_loads_in_torch(legacy_dir, tmp_path):
    import torch

    target = tmp_path / "m.bundle"
    polybundle.migrate(legacy_dir / "torch_dill_era_shared.zip", target)
    expect = _expect(legacy_dir, "torch_dill_era_shared")
    bundle = polybundle.load(target, into={role: _torch_net() for role in ROLES})
    with torch.no_grad():
        y = bundle.models["autoencoder"].eval()(torch.from_numpy(expect["x"])).numpy()
    np.testing.assert_allclose(y, expect["autoencoder_y"], rtol=1e-5, atol=1e-6)


def test_verify_exit_status(legacy_dir, tmp_path, capsys):
    assert main(["verify", str(legacy_dir / "tf_era_shared.zip")]) == 0
    assert "custom_objects.dill holds code objects" in capsys.readouterr().out
    damaged = tmp_path / "damaged.zip"
    data = bytearray((legacy_dir / "torch_dill_era_shared.zip").read_bytes())
    data[200] ^= 0xFF
    damaged.write_bytes(bytes(data))
    assert main(["verify", str(damaged)]) == 1
    assert "problem" in capsys.readouterr().out
