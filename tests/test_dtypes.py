"""bfloat16 and float8 models round-trip bit for bit; tensor specs refuse what is not a tensor.

Issue 16 item 3 (bfloat16 and float8 weights and optimizer slots through
``ml_dtypes``), issue 10 item 4 (``TensorSpec`` sizes with Python ints and
typed errors) and issue 16 item 4 (a torch builder that cannot run on the meta
device falls back to an ordinary build).
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import polybundle
from polybundle.errors import FormatError, PolybundleError, UnsafeContentError
from polybundle.format.arrays import load_arrays, save_arrays
from polybundle.model.backend import TensorSpec
from tests.conftest import needs_tensorflow, needs_torch

# --- TensorSpec: sizes with Python ints, typed errors ----------------------------------------


@pytest.mark.parametrize(
    ("dtype", "itemsize"),
    [("bfloat16", 2), ("float8_e4m3fn", 1), ("float8_e5m2", 1), ("float32", 4), ("bool", 1)],
)
def test_nbytes_knows_ml_dtypes_names(dtype: str, itemsize: int) -> None:
    assert TensorSpec("w", "w", (4, 3), dtype, "out,in").nbytes == 12 * itemsize


def test_nbytes_of_an_int64_wrap_is_refused_not_zero() -> None:
    """2**32 x 2**32 float32 wrapped to 0 bytes in int64; now it is refused."""
    spec = TensorSpec("w", "w", (2**32, 2**32), "float32", "out,in")
    with pytest.raises(UnsafeContentError, match="No real tensor is that large"):
        assert spec.nbytes == 0  # what the int64 product reported before


def test_nbytes_of_a_huge_shape_is_refused_without_overflow() -> None:
    spec = TensorSpec("w", "w", (2**62, 2**62, 2**62), "float64", "opaque")
    with pytest.raises(UnsafeContentError):
        assert spec.nbytes < 0


@pytest.mark.parametrize("dtype", ["object", "<U8", "float128x", "", "V8", "datetime64"])
def test_nbytes_of_an_unknown_dtype_is_a_format_error(dtype: str) -> None:
    with pytest.raises(FormatError, match="expected one of"):
        assert TensorSpec("w", "w", (2,), dtype, "out").nbytes


def _document(**changes: object) -> dict:
    document = {"name": "w", "key": "w", "shape": [2, 3], "dtype": "bfloat16", "layout": "out,in"}
    document.update(changes)
    return document


@pytest.mark.parametrize(
    "changes",
    [
        {"shape": "23"},
        {"shape": [2, -3]},
        {"shape": [2, 3.0]},
        {"shape": [True, 3]},
        {"shape": [1] * 65},
        {"shape": None},
        {"dtype": 5},
        {"dtype": "object"},
        {"dtype": ["float32"]},
        {"name": 7},
        {"layout": None},
        {"kind": 3},
    ],
)
def test_from_json_checks_every_field(changes: dict) -> None:
    with pytest.raises(FormatError):
        TensorSpec.from_json(_document(**changes))


def test_from_json_refuses_a_non_object_and_reads_a_good_one() -> None:
    with pytest.raises(FormatError, match="expected an object"):
        TensorSpec.from_json(["w"])
    assert TensorSpec.from_json(_document()).nbytes == 12


def test_safetensors_slots_hold_bfloat16_and_float8_and_refuse_bad_geometry() -> None:
    arrays = {
        "m/a": np.arange(6, dtype=np.float32).reshape(2, 3).astype(ml_dtypes.bfloat16),
        "m/b": np.linspace(-2, 2, 5).astype(ml_dtypes.float8_e4m3fn),
        "m/c": np.linspace(-2, 2, 3).astype(ml_dtypes.float8_e5m2),
        "m/d": np.ones(2, np.float64),
    }
    data = save_arrays(arrays)
    back = load_arrays(data, where="x")
    for name, array in arrays.items():
        assert back[name].dtype == array.dtype and back[name].tobytes() == array.tobytes()
    from safetensors import deserialize  # the reference reader agrees on dtype codes

    assert {name: info["dtype"] for name, info in deserialize(data)} == {
        "m/a": "BF16", "m/b": "F8_E4M3", "m/c": "F8_E5M2", "m/d": "F64"
    }
    header_end = 8 + int.from_bytes(data[:8], "little")
    with pytest.raises(FormatError, match="after its last tensor"):
        load_arrays(data + b"x", where="x")
    with pytest.raises(FormatError):
        load_arrays(data[: header_end + 3], where="x")


# --- PyTorch ---------------------------------------------------------------------------------


def _bits(tensor):  # noqa: ANN001, ANN202 - a torch tensor in, its raw bits out
    import torch

    return tensor.view(torch.int16 if tensor.element_size() == 2 else torch.uint8)


def _torch_model(dtype):  # noqa: ANN001, ANN202
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2)).to(dtype)


@needs_torch
def test_torch_bfloat16_model_and_adam_state_round_trip_bit_for_bit(tmp_path) -> None:
    import torch

    @polybundle.architecture("test-bf16-mlp", backend="torch", replace=True)
    def build(config):
        return _torch_model(torch.bfloat16)

    model = build({})
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(2):
        optimizer.zero_grad()
        model(torch.randn(5, 4, dtype=torch.bfloat16)).square().sum().backward()
        optimizer.step()
    assert optimizer.state_dict()["state"][0]["exp_avg"].dtype == torch.bfloat16
    path = tmp_path / "bf16.bundle"
    polybundle.save(path, {"net": model}, optimizers={"net": optimizer},
                    architectures={"net": ("test-bf16-mlp", {})})

    bundle = polybundle.load(path)
    loaded = bundle.models["net"]
    for (key, saved), restored in zip(model.state_dict().items(), loaded.state_dict().values(),
                                      strict=True):
        assert restored.dtype == torch.bfloat16, key
        assert torch.equal(_bits(restored), _bits(saved)), key
    arrays = bundle.tensors("net")  # framework-free reader: ml_dtypes arrays
    assert arrays["0.weight"].dtype == np.dtype(ml_dtypes.bfloat16)
    assert arrays["0.weight"].tobytes() == _bits(model[0].weight.detach()).numpy().tobytes()
    assert polybundle.verify(path).ok

    fresh = torch.optim.Adam(loaded.parameters(), lr=1e-2)
    bundle.restore_optimizer("net", fresh)
    saved_state, restored_state = optimizer.state_dict(), fresh.state_dict()
    for index, entry in saved_state["state"].items():
        for key, value in entry.items():
            other = restored_state["state"][index][key]
            assert other.dtype == value.dtype, (index, key)
            assert torch.equal(_bits(other) if key != "step" else other,
                               _bits(value) if key != "step" else value), (index, key)
    slots = bundle.optimizer_state("net").slots["0.weight"]
    assert slots["m"].dtype == np.dtype(ml_dtypes.bfloat16)


_TORCH_ONLY_PROCESS = """
import sys, torch, polybundle
model = torch.nn.Linear(4, 3).to(torch.bfloat16)
assert "ml_dtypes" not in sys.modules and "tensorflow" not in sys.modules
polybundle.save(sys.argv[1], {"net": model})
print(polybundle.inspect(sys.argv[1])["tensors"][0]["bytes"])
"""


@needs_torch
def test_torch_bfloat16_save_in_a_process_that_never_imported_ml_dtypes(tmp_path) -> None:
    """NumPy knows the name "bfloat16" only once ml_dtypes is imported; a torch script has not.

    Before the fix, ``TensorSpec.nbytes`` raised ``TypeError: data type
    'bfloat16' not understood`` there, so the save failed.
    """
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", _TORCH_ONLY_PROCESS, str(tmp_path / "m.bundle")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["24"]


@needs_torch
@pytest.mark.parametrize("name", ["float8_e4m3fn", "float8_e5m2"])
def test_torch_float8_weights_round_trip_bit_for_bit(tmp_path, name: str) -> None:
    import torch

    dtype = getattr(torch, name, None)
    if dtype is None:
        pytest.skip(f"torch {torch.__version__} has no {name}")

    @polybundle.architecture(f"test-{name}-mlp", backend="torch", replace=True)
    def build(config):
        return _torch_model(dtype)

    model = build({})
    path = tmp_path / f"{name}.bundle"
    polybundle.save(path, {"net": model}, architectures={"net": (f"test-{name}-mlp", {})})
    assert polybundle.inspect(path)["tensors"][0]["bytes"] == 12
    bundle = polybundle.load(path)
    loaded = bundle.models["net"]
    for (key, saved), restored in zip(model.state_dict().items(), loaded.state_dict().values(),
                                      strict=True):
        assert restored.dtype == dtype and torch.equal(_bits(restored), _bits(saved)), key
    # torch writes float8 with _rebuild_tensor_v3 over an untyped storage; read it without torch
    for arrays in (bundle.tensors("net"), polybundle.load(path, lazy=True).tensors("net")):
        for key, saved in model.state_dict().items():
            assert arrays[key].dtype == np.dtype(getattr(ml_dtypes, name)), key
            assert np.asarray(arrays[key]).tobytes() == _bits(saved).numpy().tobytes(), key
    assert polybundle.verify(path).ok


def _float8_file(**tensors) -> bytes:  # noqa: ANN003
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(tensors, buffer)
    return buffer.getvalue()


@needs_torch
def test_hostile_v3_tensors_over_untyped_storages_are_typed_errors() -> None:
    """A v3 dtype that does not divide the storage's bytes, or a storage without a dtype."""
    import io
    import zipfile

    import torch

    from polybundle_torch.pth_reader import read_pth

    good = _float8_file(w=torch.zeros(3, dtype=torch.float8_e4m3fn))
    assert read_pth(good)["w"].dtype == np.dtype(ml_dtypes.float8_e4m3fn)

    def with_pickle(change) -> bytes:  # noqa: ANN001
        out = io.BytesIO()
        with zipfile.ZipFile(io.BytesIO(good)) as source, zipfile.ZipFile(out, "w") as target:
            for info in source.infolist():
                data = source.read(info)
                target.writestr(info, change(data) if info.filename.endswith("data.pkl") else data)
        return out.getvalue()

    odd = with_pickle(lambda d: d.replace(b"torch\nfloat8_e4m3fn\n", b"torch\nuint16\n"))
    with pytest.raises(FormatError, match="not a whole number of uint16"):
        read_pth(odd)
    untyped_v2 = with_pickle(lambda d: d.replace(b"_rebuild_tensor_v3", b"_rebuild_tensor_v2"))
    with pytest.raises(PolybundleError):
        read_pth(untyped_v2)


@needs_torch
def test_torch_builder_that_cannot_run_on_meta_falls_back_to_an_ordinary_build(tmp_path) -> None:
    """Issue 16 item 4: like torchvision's regnet, the builder reads tensor values in __init__.

    On the meta device ``.tolist()`` raises ``NotImplementedError: Cannot copy
    out of meta tensor; no data!``; the load must build normally instead.
    """
    import torch

    class Widths(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            widths = (torch.arange(1, 4) * 2).tolist()  # data-dependent, as regnet's widths
            self.layers = torch.nn.ModuleList(
                torch.nn.Linear(a, b) for a, b in zip(widths, widths[1:], strict=False)
            )
            with torch.no_grad():  # in-place initialisation in __init__
                self.layers[0].weight.copy_(torch.randn(4, 2))

        def forward(self, x):  # noqa: ANN001, ANN201
            for layer in self.layers:
                x = layer(x)
            return x

    @polybundle.architecture("test-meta-unfriendly", backend="torch", replace=True)
    def build(config):
        return Widths()

    with torch.device("meta"), pytest.raises(NotImplementedError, match="meta tensor"):
        Widths()  # the builder really cannot run there
    trained = build({})
    path = tmp_path / "widths.bundle"
    polybundle.save(path, {"net": trained}, architectures={"net": ("test-meta-unfriendly", {})})
    loaded = polybundle.load(path).models["net"]
    assert not any(t.is_meta for t in loaded.state_dict().values())
    for key, value in trained.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


# --- Keras -----------------------------------------------------------------------------------


@needs_tensorflow
def test_keras_bfloat16_model_and_adam_state_round_trip_bit_for_bit(tmp_path) -> None:
    import keras

    @polybundle.architecture("test-keras-bf16", backend="tensorflow", replace=True)
    def build(config):
        return keras.Sequential([
            keras.Input((4,)),
            keras.layers.Dense(3, dtype="bfloat16"),
            keras.layers.Dense(2, dtype="bfloat16"),
        ])

    model = build({})
    optimizer = keras.optimizers.Adam(1e-2)
    model.compile(optimizer=optimizer, loss="mse")
    x = np.random.default_rng(0).random((8, 4), dtype=np.float32)
    model.fit(x, x[:, :2], verbose=0, epochs=2)
    assert {str(v.dtype) for v in model.weights} == {"bfloat16"}
    path = tmp_path / "keras-bf16.bundle"
    polybundle.save(path, {"net": model}, optimizers={"net": optimizer},
                    architectures={"net": ("test-keras-bf16", {})})
    assert {t["dtype"] for t in polybundle.inspect(path)["tensors"]} == {"bfloat16"}

    bundle = polybundle.load(path)
    loaded = bundle.models["net"]
    for saved, restored in zip(model.weights, loaded.weights, strict=True):
        a, b = np.asarray(saved.numpy()), np.asarray(restored.numpy())
        assert a.dtype == b.dtype == np.dtype(ml_dtypes.bfloat16) and a.tobytes() == b.tobytes()
    arrays = bundle.tensors("net")
    assert {a.dtype for a in arrays.values()} == {np.dtype(ml_dtypes.bfloat16)}
    assert polybundle.verify(path).ok

    fresh = keras.optimizers.Adam(1e-2)
    bundle.restore_optimizer("net", fresh)
    assert len(fresh.variables) == len(optimizer.variables)
    for saved, restored in zip(optimizer.variables, fresh.variables, strict=True):
        a, b = np.asarray(saved.numpy()), np.asarray(restored.numpy())
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), saved.path


@needs_torch
@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"shape": [2**32, 2**32]}, UnsafeContentError),  # int64 product wrapped to 0 bytes
        ({"shape": [2**40] * 8}, UnsafeContentError),
        ({"dtype": "object"}, FormatError),
        ({"dtype": "bfloat16x"}, FormatError),
    ],
)
def test_a_manifest_tensor_with_a_hostile_size_or_dtype_is_a_typed_error(
    tmp_path, change: dict, error: type
) -> None:
    """Issue 10 item 4 end to end: inspect, load and lazy reads refuse; verify reports."""
    import json

    import torch

    from tests.hostile_corpus import _members, _rebundle, _replace

    polybundle.save(tmp_path / "good.bundle", {"net": torch.nn.Linear(2, 2)})
    members = _members(tmp_path / "good.bundle")
    manifest = json.loads(dict(members)["manifest.json"])
    manifest["models"][0]["tensors"][0].update(change)
    path = _rebundle(tmp_path / "bad.bundle",
                     _replace(members, "manifest.json", json.dumps(manifest).encode()))
    with pytest.raises(error):
        polybundle.inspect(path)
    with pytest.raises(error):
        polybundle.load(path, into={"net": torch.nn.Linear(2, 2)})
    with pytest.raises(error):
        polybundle.load(path, lazy=True).tensors("net")
    assert not polybundle.verify(path).ok


@needs_torch
def test_torch_bfloat16_parity_inputs_and_outputs_are_stored_and_read_back(tmp_path) -> None:
    """parity.safetensors of a bfloat16 model held BF16 arrays the reader raised KeyError on."""
    import torch

    from polybundle.tools.parity import read_parity

    model = _torch_model(torch.bfloat16)
    inputs = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4).astype(ml_dtypes.bfloat16)
    path = tmp_path / "parity.bundle"
    polybundle.save(path, {"net": model}, parity_inputs=inputs)
    stored_inputs, outputs = read_parity(path, "net")
    assert stored_inputs["input"].tobytes() == inputs.tobytes()
    with torch.no_grad():
        expected = model(torch.from_numpy(inputs.view(np.int16)).view(torch.bfloat16))
    assert outputs["output"].dtype == np.dtype(ml_dtypes.bfloat16)
    assert outputs["output"].tobytes() == _bits(expected).numpy().tobytes()
