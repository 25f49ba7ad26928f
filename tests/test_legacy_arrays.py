"""Legacy params that hold NumPy arrays (issue 16 item 1) and legacy member reads (issue 10 item 7).

The real TensorFlow-era archive ``tf_era_arrays_shared.zip`` and the archives in
``fixtures/legacy_arrays`` (written by ``make_fixtures.py`` with dill 0.3.4 to
0.4.1 and NumPy 1.23 to 2.4, and with NumPy's own reduction at pickle
protocols 2, 4 and 5) must load, verify and migrate with exactly the arrays
their writers stored, while nothing in a pickle runs: hostile reducers,
object dtypes and arrays that declare more bytes than they hold are refused.
The real unpicklers (dill, pickle) serve as the oracle for what was stored.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import textwrap
import tracemalloc
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

import polybundle
from polybundle.errors import (
    BudgetExceededError,
    FormatError,
    UnsafeContentError,
)
from polybundle.safety import budget
from polybundle.safety.unpickle import list_globals, safe_loads
from polybundle.tools.cli import main
from polybundle_tensorflow.legacy_era import TF_PARAMS
from polybundle_torch.legacy_eras import load_params_pickle

from .conftest import needs_tensorflow, needs_torch, snapshot_tree

ARRAYS_DIR = Path(__file__).parent / "fixtures" / "legacy_arrays"
EXPECT = json.loads((ARRAYS_DIR / "expect.json").read_text())
ARCHIVES = sorted(EXPECT["archives"])
ROLES = ("autoencoder", "diffraction_to_obj")
KERAS_ORDER = [
    "layers/conv2d/vars/0",
    "layers/conv2d/vars/1",
    *(f"layers/batch_normalization/vars/{i}" for i in range(4)),
    "layers/conv2d_1/vars/0",
    "layers/conv2d_1/vars/1",
    "layers/conv2d_transpose/vars/0",
    "layers/conv2d_transpose/vars/1",
]
"""``model.weights.h5`` paths in Keras ``get_weights()`` order (``w0`` ... ``w9`` of expect)."""

RECONSTRUCTORS = {
    "dill._dill._create_array",
    "dill._dill._get_attr",
    "dill._dill._import_module",
    "dill._dill._import_module('numpy.core._multiarray_umath')",
    "dill._dill._import_module('numpy._core._multiarray_umath')",
    "numpy.core.multiarray._reconstruct",
    "numpy._core.multiarray._reconstruct",
    "numpy.core.multiarray.scalar",
    "numpy._core.multiarray.scalar",
    "numpy.core.numeric._frombuffer",
    "numpy._core.numeric._frombuffer",
    "numpy.dtype",
    "numpy.ndarray",
    "_codecs.encode",
    "__builtin__.bytes",
    "opcode BYTEARRAY8",
}
"""What the fixture writers emit, by the generator's record (checked against the bytes)."""


def _writer_loads(data: bytes):
    """Unpickle with the real unpickler the writer pairs with (trusted test fixtures only)."""
    dill = pytest.importorskip("dill")
    with warnings.catch_warnings():  # NumPy 2 warns about numpy.core names of NumPy 1 pickles
        warnings.simplefilter("ignore", DeprecationWarning)
        return dill.loads(data)  # noqa: S301 - the oracle: what the writer really stored


def _assert_same(value, expected) -> None:
    if isinstance(expected, np.ndarray):
        assert isinstance(value, np.ndarray), type(value)
        assert value.dtype == expected.dtype and value.shape == expected.shape
        np.testing.assert_array_equal(value, expected)
    elif isinstance(expected, np.generic):
        assert type(value) is type(expected) and value == expected
    else:
        assert value == expected


def _assert_params(params, stored) -> None:
    assert sorted(params) == sorted(stored)
    for key, expected in stored.items():
        _assert_same(params[key], expected)


# --- the real TensorFlow-era archive with arrays in params -----------------------------------


def test_tf_era_arrays_shared_loads_params_and_weights(legacy_dir):
    path = legacy_dir / "tf_era_arrays_shared.zip"
    bundle = polybundle.load(path)
    probe, mask = bundle.params["probe"], bundle.params["probe.mask"]
    assert probe.dtype == np.complex64 and probe.shape == (16, 16)
    assert mask.dtype == np.bool_ and mask.shape == (16, 16)
    assert bundle.params["intensity_scale"] == 1234.5 and bundle.params["_version"] == "1.0"
    with zipfile.ZipFile(path) as archive:
        for role in ROLES:
            stored = _writer_loads(archive.read(f"{role}/params.dill"))
            _assert_params(bundle.params, stored)
    expect = np.load(legacy_dir / "tf_era_arrays_shared.expect.npz")
    tensors = bundle.tensors("autoencoder")
    assert sorted(tensors) == sorted(KERAS_ORDER)
    for index, key in enumerate(KERAS_ORDER):
        np.testing.assert_array_equal(tensors[key], expect[f"autoencoder/w{index}"])


def test_tf_era_arrays_shared_verifies(legacy_dir, capsys):
    report = polybundle.verify(legacy_dir / "tf_era_arrays_shared.zip")
    assert report.problems == []
    assert main(["verify", str(legacy_dir / "tf_era_arrays_shared.zip")]) == 0
    capsys.readouterr()


def test_tf_era_arrays_shared_migrates(legacy_dir, tmp_path, capsys):
    source = legacy_dir / "tf_era_arrays_shared.zip"
    target = tmp_path / "migrated.bundle"
    report = polybundle.migrate(source, target)
    assert report.written
    converted, dropped = "\n".join(report.converted), "\n".join(report.dropped)
    assert "probe.mask: array bool shape [16, 16] -> params.safetensors (bit for bit)" in converted
    assert "params probe: array complex64 shape [16, 16] -> params.safetensors" in converted
    assert "params" not in dropped.replace("(its values are in params)", "")  # nothing lost
    legacy, migrated = polybundle.load(source), polybundle.load(target, lazy=True)
    _assert_params(migrated.params, legacy.params)  # the complex64 probe included
    assert migrated.params["intensity_scale"] == 1234.5
    for role in ROLES:
        old, new = legacy.tensors(role), migrated.tensors(role)
        assert sorted(old) == sorted(new)
        for key in old:
            np.testing.assert_array_equal(old[key], new[key])
    assert main(["verify", str(target)]) == 0
    capsys.readouterr()


def test_params_arrays_to_json_keep_values_or_say_why_not():
    from polybundle.legacy.jsonsafe import to_json

    big = np.arange(4, dtype=np.uint64) + np.uint64(2**63)
    params = {
        "mask": np.eye(2, dtype=bool),
        "big": big,
        "half": np.array([0.1, 65504.0], dtype=np.float16),
        "nan": np.full((512, 512), np.nan, dtype=np.float32),
        "probe": np.ones((2, 2), np.complex64),
    }
    result = to_json(params)
    assert sorted(result.value) == ["big", "half", "mask"]
    for key in result.value:
        restored = np.asarray(json.loads(json.dumps(result.value[key])), params[key].dtype)
        np.testing.assert_array_equal(restored, params[key])
    assert len(result.dropped) == 2, result.dropped  # one line per array, not per element
    assert "nan: array float32 shape [512, 512] holds NaN" in result.dropped[0]
    assert "probe: array complex64 shape [2, 2] (JSON has no complex numbers" in result.dropped[1]


# --- generated archives: every dill and NumPy writer ------------------------------------------


def _expected_params(era: str) -> dict:
    arrays = np.load(ARRAYS_DIR / "expect.npz")
    params = dict(EXPECT["plain"][era])
    for key in arrays.files:
        value = arrays[key]
        params[key] = value[()] if key in EXPECT["scalars"] else value
    return params


def test_fixtures_cover_every_reconstructor_the_writers_emit():
    """The generator's record of each archive's globals is true, and covers the whole list."""
    seen = set()
    for name, record in EXPECT["archives"].items():
        with zipfile.ZipFile(ARRAYS_DIR / name) as archive:
            data = archive.read("autoencoder/params.dill")
        named = {g for g in record["globals"] if "(" not in g and not g.startswith("opcode")}
        assert named == set(list_globals(data, where=name)), name
        seen |= set(record["globals"])
    assert RECONSTRUCTORS <= seen, RECONSTRUCTORS - seen
    writers = {record["writer"] for record in EXPECT["archives"].values()}
    assert {f"dill-{v}" for v in ("0.3.4", "0.3.5.1", "0.3.6", "0.3.7")} <= writers
    assert {f"dill-{v}" for v in ("0.3.8", "0.3.9", "0.4.0", "0.4.1")} <= writers
    assert {"pickle p2 (protocol 2)", "pickle p4 (protocol 4)", "pickle p5 (protocol 5)"} <= writers
    numpy_versions = {record["numpy"].rsplit(".", 1)[0] for record in EXPECT["archives"].values()}
    assert {"1.23", "1.26", "2.0"} <= numpy_versions


@pytest.mark.parametrize("name", ARCHIVES)
def test_generated_archive_loads_exact_arrays_verifies_and_migrates(name, tmp_path):
    record = EXPECT["archives"][name]
    path = ARRAYS_DIR / name
    bundle = polybundle.load(path)
    _assert_params(bundle.params, _expected_params(record["era"]))
    with zipfile.ZipFile(path) as archive:
        for role in ROLES:
            data = archive.read(f"{role}/params.dill")
            _assert_params(safe_loads(data, where=name), _writer_loads(data))
    assert bundle.params["arrays.fortran"].flags.f_contiguous
    assert polybundle.verify(path).problems == []
    report = polybundle.migrate(path, tmp_path / "m.bundle")
    assert not [line for line in report.dropped if line.startswith("params")], report.dropped
    migrated = polybundle.load(tmp_path / "m.bundle", lazy=True)
    _assert_params(migrated.params, bundle.params)  # complex, NaN and scalars, bit for bit


@needs_torch
def test_torch_tensors_pickled_by_dill_in_params_become_arrays():
    import torch

    stored = {
        "probe": torch.arange(6, dtype=torch.float32).reshape(2, 3).t(),
        "probe.mask": torch.tensor([True, False]),
        "phase": torch.tensor([1 + 2j, 3 - 4j], dtype=torch.complex64),
        "scale": torch.tensor(2.5, dtype=torch.float64),
    }
    params = load_params_pickle(_dill_dumps(stored), where="autoencoder/params.dill")
    for key, tensor in stored.items():
        _assert_same(params[key], tensor.numpy())


@needs_tensorflow
def test_tensorflow_tensors_pickled_by_dill_in_params_become_arrays():
    import tensorflow as tf

    probe = tf.complex(tf.reshape(tf.range(4.0), (2, 2)), tf.ones((2, 2)))
    stored = {"probe": probe, "probe.mask": tf.constant([True, False]), "scale": tf.constant(1.5)}
    data = _dill_dumps(stored)
    assert "dill._dill._create_array" in list_globals(data, where="params.dill")
    params = safe_loads(data, where="autoencoder/params.dill", extra=TF_PARAMS)
    for key, tensor in stored.items():
        _assert_same(params[key], tensor.numpy())


# --- hostile and unsupported content -----------------------------------------------------------


def _dill_dumps(value) -> bytes:
    dill = pytest.importorskip("dill")
    return dill.dumps(value)


@pytest.mark.parametrize(
    ("value", "found"),
    [
        (np.array([1, "a", None], dtype=object), "dtype 'O8'"),
        (np.zeros(2, dtype=[("a", "O"), ("b", "f4")]), "dtype 'V12'"),
        (np.zeros(2, dtype=[("a", "i4"), ("b", "f4")]), "dtype 'V8'"),
        (np.array(["ab", "c"]), "dtype 'U2'"),
        (np.array([b"ab"]), "dtype 'S2'"),
        (np.array(["2020-01-01"], dtype="datetime64[D]"), "dtype 'M8'"),
    ],
    ids=["object", "struct-object", "struct", "unicode", "bytes", "datetime"],
)
@pytest.mark.parametrize("writer", ["dill", "p2", "p4", "p5"])
def test_non_plain_dtypes_are_refused_with_what_was_found(value, found, writer):
    params = {"N": 16, "probe": value}
    if writer == "dill":
        data = _dill_dumps(params)
    else:
        data = pickle.dumps(params, protocol=int(writer[1]))
    with pytest.raises(UnsafeContentError) as caught:
        safe_loads(data, where="autoencoder/params.dill")
    assert found in str(caught.value)


def test_object_array_in_a_legacy_archive_is_refused_everywhere(legacy_dir, tmp_path):
    source = legacy_dir / "torch_dill_era_shared.zip"
    path = tmp_path / "object.zip"
    hostile = _dill_dumps({"_version": "2.0-pytorch", "probe": np.array([{}, []], dtype=object)})
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as new:
        for info in old.infolist():
            new.writestr(info, hostile if info.filename.endswith("params.dill") else old.read(info))
    with pytest.raises(UnsafeContentError, match="object"):
        polybundle.load(path)
    assert any("object" in problem for problem in polybundle.verify(path).problems)
    before = snapshot_tree(tmp_path)
    with pytest.raises(UnsafeContentError):
        polybundle.migrate(path, tmp_path / "m.bundle")
    assert snapshot_tree(tmp_path) == before


class _Reduce:
    """Pickles as ``function(*args)``: builds hostile pickles with the real pickler."""

    def __init__(self, function, *args) -> None:
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args

    def __call__(self, *args):  # pickle requires a callable; only the reduction is used
        raise AssertionError


def _dill_function(name: str):
    return getattr(pytest.importorskip("dill")._dill, name)


def _oversized(kind: str) -> _Reduce:
    """An array that declares far more than it holds, encoded as each writer would."""
    from numpy._core import multiarray, numeric

    dims = (2**28,)  # 1 GiB of float32
    prototype = (np.ndarray, (0,), b"b")
    if kind == "dill":
        state = (1, dims, np.dtype("f4"), False, b"\x00" * 4)
        return _Reduce(_dill_function("_create_array"), multiarray._reconstruct, prototype, state)
    if kind == "frombuffer":
        return _Reduce(numeric._frombuffer, bytearray(4), np.dtype("f4"), dims, "C")
    # 2**64 elements over no bytes: a wrapping int64 product would say 0
    state = (1, (2**32, 2**32), np.dtype("f4"), False, b"")
    return _Reduce(_dill_function("_create_array"), multiarray._reconstruct, prototype, state)


@pytest.mark.parametrize("kind", ["dill", "frombuffer", "overflow"])
def test_array_declaring_more_than_it_holds_is_refused_before_allocation(kind):
    data = pickle.dumps({"probe": _oversized(kind)}, protocol=5)
    tracemalloc.start()
    try:
        with pytest.raises(FormatError, match="declares shape"):
            safe_loads(data, where="autoencoder/params.dill")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * 1024**2, peak


def test_arrays_are_charged_to_the_budget():
    data = _dill_dumps({"probe": np.zeros((16, 16), np.complex64)})
    with budget.limit(1024), pytest.raises(BudgetExceededError, match="pickled NumPy array"):
        safe_loads(data, where="autoencoder/params.dill")
    with budget.limit(4096) as opened:
        safe_loads(data, where="autoencoder/params.dill")
        assert opened.spent == 16 * 16 * 8


def test_dill_array_with_instance_attributes_is_refused():
    from numpy._core import multiarray

    state = (1, (1,), np.dtype("u1"), False, b"\x00")
    array = _Reduce(
        _dill_function("_create_array"),
        multiarray._reconstruct,
        (np.ndarray, (0,), b"b"),
        state,
        {"units": "m"},
    )
    with pytest.raises(UnsafeContentError, match="instance attributes"):
        safe_loads(pickle.dumps({"probe": array}), where="params.dill")


def _hostile_pickles(command: str) -> dict[str, bytes]:
    """Params pickles that run ``command`` under dill.loads or pickle.loads (real attacks)."""
    import os

    from numpy._core import multiarray

    import_module, get_attr = _dill_function("_import_module"), _dill_function("_get_attr")
    create_array = _dill_function("_create_array")
    state = (1, (1,), np.dtype("u1"), False, b"\x00")
    python = f"__import__('os').system({command!r})"
    attacks = {
        "get_attr(import_module(os), system)": _Reduce(
            _Reduce(get_attr, _Reduce(import_module, "os"), "system"), command
        ),
        "get_attr(numpy module, eval)": _Reduce(
            _Reduce(get_attr, _Reduce(import_module, "numpy.core.multiarray"), "eval"), python
        ),
        "create_array(os.system)": _Reduce(create_array, os.system, (command,), state, None),
        "create_array(reconstruct, npdict running code)": _Reduce(
            create_array,
            multiarray._reconstruct,
            (np.ndarray, (0,), b"b"),
            state,
            {"x": _Reduce(os.system, command)},
        ),
    }
    return {name: pickle.dumps({"probe": attack}, protocol=4) for name, attack in attacks.items()}


def test_hostile_reducers_run_nothing(tmp_path):
    sentinel = tmp_path / "sentinel"
    pickles = _hostile_pickles(f"touch {sentinel}")
    for name, data in pickles.items():  # each is a real attack on the real unpickler
        try:
            pickle.loads(data)  # noqa: S301 - runs `touch` inside tmp_path only
        except Exception:  # noqa: BLE001, S110 - some attacks fail after they ran
            pass
        assert sentinel.exists(), f"{name} is not a working attack"
        sentinel.unlink()
    for name, data in pickles.items():
        with pytest.raises(UnsafeContentError):
            safe_loads(data, where=f"autoencoder/params.dill ({name})")
        assert not sentinel.exists(), name


# --- legacy members are read at their declared size and charged (issue 10 item 7) -------------


def test_legacy_members_are_charged_to_the_budget(legacy_dir):
    from polybundle.format.archive import ArchiveReader
    from polybundle.legacy.era import read_member

    name = "autoencoder/model.keras"
    with ArchiveReader(legacy_dir / "tf_era_arrays_shared.zip") as archive:
        size = archive.size(name)
        with budget.limit(10 * size) as opened:
            assert len(read_member(archive, name)) == size
            assert opened.spent == size
            read_member(archive, name)  # a second read of it in the same call: not twice
            assert opened.spent == size
        with budget.limit(size - 1), pytest.raises(BudgetExceededError, match=name):
            read_member(archive, name)


def test_clean_legacy_archives_load_under_an_8_gib_address_space(legacy_dir, tmp_path):
    paths = [legacy_dir / n for n in ("tf_era_shared.zip", "torch_dill_era_shared.zip")]
    paths += [legacy_dir / "tf_era_arrays_shared.zip", ARRAYS_DIR / ARCHIVES[-1]]
    script = textwrap.dedent(
        f"""
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (8 * 1024**3, 8 * 1024**3))
        import polybundle
        for index, path in enumerate({[str(p) for p in paths]!r}):
            bundle = polybundle.load(path)
            assert bundle.params["_version"] in ("1.0", "2.0-pytorch")
            bundle.tensors(bundle.manifest["models"][0]["role"])
            assert polybundle.verify(path).problems == [], path
            polybundle.migrate(path, {str(tmp_path)!r} + f"/m{{index}}.bundle")
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
