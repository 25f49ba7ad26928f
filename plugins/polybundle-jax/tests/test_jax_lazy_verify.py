"""A JAX bundle gets lazy loading, framework-free inspect and verify, like the built-ins.

Through the same Backend methods the built-in backends implement
(``read_stored``, ``check_stored``), with no special case in the core.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import jax_models
import numpy as np
import pytest

import polybundle
from polybundle.api.lazy import LazyTensors

pytestmark = jax_models.needs_jax

REPO = Path(__file__).resolve().parents[3]

BLOCK_JAX = textwrap.dedent(
    """
    import importlib.abc, sys

    BLOCKED = ("jax", "jaxlib", "flax", "optax", "torch", "tensorflow", "keras")

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked in this test")

    sys.meta_path.insert(0, Blocker())
    """
)


def _saved(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """Save a warmed JAX convnet; return the path and its stored tensors by name."""
    from flax import nnx

    model = jax_models.warmed(jax_models.CONFIG, seed=3)
    path = tmp_path / "jax.bundle"
    polybundle.save(path, {"net": model}, params={"N": 6})
    state = {
        ".".join(str(p) for p in key): np.asarray(variable[...])
        for key, variable in nnx.to_flat_state(nnx.state(model))
    }
    names = [spec.name for spec in polybundle.get_backend("jax").describe(model)]
    return path, {name: state[name] for name in names}


def test_lazy_jax_tensors_map_the_saved_ones_read_only(tmp_path):
    path, expected = _saved(tmp_path)
    bundle = polybundle.load(path, lazy=True)
    assert bundle.models == {}
    tensors = bundle.tensors("net")
    assert isinstance(tensors, LazyTensors)
    assert sorted(tensors) == sorted(expected)
    for name, value in expected.items():
        array = tensors[name]
        assert array.dtype == value.dtype and array.shape == value.shape
        np.testing.assert_array_equal(array, value)
        assert not array.flags.writeable and not array.flags.owndata  # a view of the map
    eager = polybundle.load(path, roles=[]).tensors("net")
    assert all(np.array_equal(eager[name], expected[name]) for name in expected)


def _run_blocked(code: str, *args: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", BLOCK_JAX + textwrap.dedent(code), *args],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


FRAMEWORK_FREE = """
    import json, sys
    import numpy as np
    import polybundle

    path = sys.argv[1]
    report = polybundle.inspect(path)
    checked = polybundle.verify(path)
    lazy = polybundle.load(path, lazy=True).tensors("net")
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("jax", "flax", "optax"))
    print(json.dumps({
        "backend": report["backend"],
        "tensors": {row["name"]: row["shape"] for row in report["tensors"]},
        "ok": checked.ok, "problems": checked.problems, "notes": checked.notes,
        "checked": checked.checked,
        "sums": {name: float(np.asarray(lazy[name], dtype="float64").sum()) for name in lazy},
        "loaded": loaded,
    }))
"""


def test_inspect_verify_and_lazy_run_where_jax_cannot_be_imported(tmp_path):
    path, expected = _saved(tmp_path)
    summary = _run_blocked(FRAMEWORK_FREE, str(path))
    assert summary["loaded"] == [] and summary["backend"] == "jax"
    assert summary["tensors"] == {name: list(value.shape) for name, value in expected.items()}
    assert summary["ok"], summary["problems"]
    assert summary["notes"] == []
    assert f"net/model.safetensors: {len(expected)} tensors read without a framework" in (
        summary["checked"]
    )
    for name, value in expected.items():
        assert summary["sums"][name] == pytest.approx(float(value.astype("float64").sum()))


def _flip_a_tensor_byte(path: Path, target: Path) -> None:
    """Copy the bundle with one byte of the last tensor's data changed (header intact)."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("net/model.safetensors")
        assert info.compress_type == zipfile.ZIP_STORED
        header = archive.open(info).read(8)
    data = bytearray(path.read_bytes())
    # the local header: 30 fixed bytes, then the name and the extra field
    name_length = int.from_bytes(data[info.header_offset + 26 : info.header_offset + 28], "little")
    extra_length = int.from_bytes(data[info.header_offset + 28 : info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_length + extra_length
    assert int.from_bytes(header, "little") + 8 < info.file_size
    data[start + info.file_size - 1] ^= 0x01
    target.write_bytes(bytes(data))


def test_verify_catches_a_flipped_byte_in_the_jax_weights(tmp_path):
    path, _ = _saved(tmp_path)
    damaged = tmp_path / "damaged.bundle"
    _flip_a_tensor_byte(path, damaged)
    report = polybundle.verify(damaged)
    assert not report.ok
    assert "net/model.safetensors" in report.problems[0], report.problems
    blocked = _run_blocked(FRAMEWORK_FREE.replace(
        'lazy = polybundle.load(path, lazy=True).tensors("net")', "lazy = {}"
    ), str(damaged))
    assert not blocked["ok"] and "net/model.safetensors" in blocked["problems"][0]


def test_verify_refuses_a_jax_header_that_points_outside_its_file(tmp_path):
    """The framework-free check reads the header itself and refuses a range past the data."""
    import io

    from polybundle.errors import FormatError
    from polybundle_jax import safetensors_file

    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
    data = len(header).to_bytes(8, "little") + header + b"\0" * 8  # 8 of the 16 bytes
    with pytest.raises(FormatError, match="claims bytes"):
        polybundle.get_backend("jax").check_stored(io.BytesIO(data), [], where="net/w")
    assert safetensors_file.index(io.BytesIO(data[:-8] + b"\0" * 16), where="x")["w"].nbytes == 16
