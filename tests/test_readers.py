"""Framework-free readers: model.pth without torch, model.keras without TensorFlow."""

from __future__ import annotations

import io
import pickle
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest

from polybundle.errors import FormatError, UnsafeContentError
from polybundle.format.archive import ArchiveReader
from polybundle_tensorflow.keras_file import read_keras, read_keras_weights
from polybundle_torch.pth_reader import read_pth
from tests.conftest import REPO, needs_tensorflow, needs_torch


def test_legacy_torch_fixture_equals_what_torch_saved(legacy_dir):
    expect = np.load(legacy_dir / "torch_dill_era_shared.expect.npz")
    with ArchiveReader(legacy_dir / "torch_dill_era_shared.zip") as archive:
        for role in ("autoencoder", "diffraction_to_obj"):
            arrays = read_pth(archive.open(f"{role}/model.pth"))
            prefix = role + "/"
            wanted = {k[len(prefix):]: expect[k] for k in expect.files if k.startswith(prefix)}
            assert arrays.keys() == wanted.keys()
            for key, array in arrays.items():
                assert array.dtype == wanted[key].dtype and np.array_equal(array, wanted[key]), key


def test_legacy_keras_fixture_equals_get_weights(legacy_dir):
    expect = np.load(legacy_dir / "tf_era_shared.expect.npz")
    with ArchiveReader(legacy_dir / "tf_era_shared.zip") as archive:
        weights = read_keras_weights(archive.open("autoencoder/model.keras"))
    names = [w.name for w, _ in weights]
    assert names[:2] == ["enc_conv1/kernel", "enc_conv1/bias"]
    assert [w.canonical.kind for w, _ in weights][2:6] == ["batchnorm"] * 4
    assert len(weights) == len([k for k in expect.files if k.startswith("autoencoder/w")])
    for index, (_, array) in enumerate(weights):
        assert np.array_equal(array, expect[f"autoencoder/w{index}"])


@needs_torch
def test_read_pth_matches_torch_load_for_every_dtype_and_views():
    import torch

    base = torch.arange(12, dtype=torch.int64).reshape(3, 4)
    state = {
        "f32": torch.randn(2, 3), "f64": torch.randn(3, dtype=torch.float64),
        "f16": torch.randn(4).half(), "i32": torch.arange(5, dtype=torch.int32),
        "u8": torch.arange(3, dtype=torch.uint8), "b": torch.tensor([True, False]),
        "scalar": torch.tensor(2.5), "transposed": base.t(), "row": base[1],
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    ours = read_pth(buffer)
    buffer.seek(0)
    theirs = torch.load(buffer, weights_only=True)
    assert ours.keys() == theirs.keys()
    for key in theirs:
        assert ours[key].dtype == theirs[key].numpy().dtype, key
        assert np.array_equal(ours[key], theirs[key].numpy()), key


@needs_torch
def test_bundle_tensors_read_without_torch_equal_state_dict(tmp_path):
    import torch

    import polybundle

    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4))
    net(torch.randn(2, 1, 5, 5))  # updates running stats
    polybundle.save(tmp_path / "t.bundle", {"net": net})
    script = textwrap.dedent(f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split('.')[0] in ('torch', 'tensorflow', 'keras'):
                    raise ImportError('blocked ' + name)
        sys.meta_path.insert(0, Block())
        import numpy as np, polybundle
        from polybundle.format.archive import ArchiveReader
        from polybundle.model.backend import TensorSpec
        from polybundle.format.manifest import read_manifest
        with ArchiveReader({str(tmp_path / 't.bundle')!r}) as archive:
            entry = read_manifest(archive)["models"][0]
            specs = [TensorSpec.from_json(t) for t in entry["tensors"]]
            backend = polybundle.get_backend("torch")
            arrays = backend.read_tensors(archive.open(entry["weights"]), specs)
        np.savez({str(tmp_path / 'out.npz')!r}, **arrays)
        assert not any(m in sys.modules for m in ('torch', 'tensorflow', 'keras'))
    """)
    subprocess.run([sys.executable, "-c", script], check=True, cwd=REPO)
    read = np.load(tmp_path / "out.npz")
    for key, tensor in net.state_dict().items():
        assert np.array_equal(read[key], tensor.numpy()), key


@needs_tensorflow
def test_read_keras_matches_keras_weights(tmp_path):
    import keras

    model = keras.Sequential([
        keras.Input((6, 6, 2)),
        keras.layers.Conv2D(3, 3, name="c1"),
        keras.layers.BatchNormalization(name="bn"),
        keras.layers.DepthwiseConv2D(2, depth_multiplier=2, name="dw"),
        keras.layers.Flatten(),
        keras.layers.Dense(4, name="d"),
    ])
    for variable in model.weights:
        variable.assign(np.random.default_rng(1).standard_normal(variable.shape))
    model.save(tmp_path / "m.keras")
    with open(tmp_path / "m.keras", "rb") as f:
        arrays = read_keras(f)
    assert len(arrays) == len(model.weights)
    for (name, array), variable in zip(arrays.items(), model.weights, strict=True):
        assert variable.path.endswith(name)
        assert np.array_equal(array, variable.numpy()), variable.path


def _pth_with_pickle(payload: bytes) -> io.BytesIO:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("archive/data.pkl", payload)
        z.writestr("archive/byteorder", "little")
    buffer.seek(0)
    return buffer


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_read_pth_refuses_globals_that_are_not_tensor_rebuilders():
    with pytest.raises(UnsafeContentError, match="print"):
        read_pth(_pth_with_pickle(pickle.dumps({"w": _Evil()}, protocol=2)))


def test_read_pth_refuses_non_storage_persistent_ids_and_non_zip():
    class Persist(pickle.Pickler):
        def persistent_id(self, obj):
            return ("module", "os") if obj == "x" else None

    buffer = io.BytesIO()
    Persist(buffer, protocol=2).dump({"w": "x"})
    with pytest.raises(UnsafeContentError, match="persistent id"):
        read_pth(_pth_with_pickle(buffer.getvalue()))
    with pytest.raises(FormatError):
        read_pth(io.BytesIO(b"not a zip at all"))
