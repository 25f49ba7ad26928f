"""NumPy arrays in format-2 params: saved, loaded, inspected, verified, migrated, converted.

The seed project's params hold a complex64 ``probe`` and a boolean
``probe.mask`` (issue 16, items 1 and 8). From format 2.1 such arrays (and
NumPy scalars) go to ``params.safetensors``, referenced from ``params.json``
by ``{"$ndarray": key, "dtype", "shape"}``, and come back bit for bit. A
member that disagrees with its references (even with a digest the attacker
recomputed) is a typed error, and ``verify`` reports it.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xxhash

import polybundle
from polybundle.errors import BudgetExceededError, FormatError, ParamsError, PolybundleError
from polybundle.tools.cli import main

from . import models
from .conftest import needs_tensorflow, needs_torch, snapshot_tree

ml_dtypes = pytest.importorskip("ml_dtypes")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

RNG = np.random.default_rng(16)
PROBE = (RNG.standard_normal((16, 16)) + 1j * RNG.standard_normal((16, 16))).astype(np.complex64)


def seed_params() -> dict[str, Any]:
    """Params shaped like the seed project's, with every kind of array and NumPy scalar."""
    return {
        "N": 16,
        "gridsize": 1,
        "intensity_scale": 1234.5,
        "probe.big": False,
        "probe": PROBE,
        "probe.mask": np.abs(PROBE) > 0.8,
        "offsets": np.arange(12, dtype=np.float32).reshape(3, 4),
        "positions": np.array([[-(2**62), 2**62 + 1]], dtype=np.int64),
        "weights_bf16": np.array([1.5, -0.0, np.inf, np.nan], dtype=ml_dtypes.bfloat16),
        "e4m3": np.array([0.5, -2.0], dtype=ml_dtypes.float8_e4m3fn),
        "fnuz": np.array([0.25, 1.0], dtype=ml_dtypes.float8_e5m2fnuz),
        "c128": np.array([1e300 + 2j, np.nan - 1j], dtype=np.complex128),
        "nan": np.array([np.nan, np.inf, -np.inf, -0.0], dtype=np.float64),
        "fortran": np.asfortranarray(np.arange(6, dtype=np.uint16).reshape(2, 3)),
        "big_endian": np.arange(3, dtype=">i4"),
        "empty": np.zeros((0, 5), dtype=np.float16),
        "zero_d": np.array(2.5, dtype=np.float32),
        "scale": np.float32(1.5),
        "flags": [np.bool_(True), np.int64(-7), np.uint8(255), np.float64(0.1), np.complex64(1j)],
        "nested": {"masks": [np.eye(3, dtype=bool), {"deep": np.ones((2, 2), np.int8)}]},
        "names": ["a", "b"],
    }


def assert_same(got: Any, expected: Any, where: str = "params") -> None:
    """Equal structure; arrays and NumPy scalars equal bit for bit, with dtype, shape and type."""
    if isinstance(expected, dict):
        assert isinstance(got, dict) and sorted(got) == sorted(expected), where
        for key in expected:
            assert_same(got[key], expected[key], f"{where}[{key!r}]")
    elif isinstance(expected, list):
        assert isinstance(got, list) and len(got) == len(expected), where
        for index, (a, b) in enumerate(zip(got, expected, strict=True)):
            assert_same(a, b, f"{where}[{index}]")
    elif isinstance(expected, (np.ndarray, np.generic)):
        assert type(got) is type(expected), (where, type(got), type(expected))
        assert got.dtype.newbyteorder("=") == expected.dtype.newbyteorder("="), where
        assert got.shape == expected.shape, where
        native = np.asarray(expected).astype(expected.dtype.newbyteorder("="))
        assert np.asarray(got).tobytes() == np.ascontiguousarray(native).tobytes(), where
        if got.dtype.kind in "fc":
            assert np.array_equal(got, expected, equal_nan=True), where
    else:
        assert type(got) is type(expected) and got == expected, where


def _members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def _rewrite(path: Path, out: Path, members: dict[str, bytes | None], **manifest_edits) -> Path:
    """Rewrite a bundle as an attacker would: new members, a manifest with their real digests."""
    current = _members(path)
    manifest = json.loads(current.pop("manifest.json"))
    for name, data in members.items():
        if data is None:
            current.pop(name, None)
            manifest["members"].pop(name, None)
        else:
            current[name] = data
            manifest["members"][name] = {
                "size": len(data), "sha256": hashlib.sha256(data).hexdigest()
            }
    manifest.update(manifest_edits)
    with zipfile.ZipFile(out, "w") as archive:
        for name, data in current.items():
            archive.writestr(name, data)
        archive.writestr("manifest.json", json.dumps(manifest))
    return out


# --- save and load, with real models ----------------------------------------------------------


@needs_torch
def test_torch_model_with_array_params_round_trips_bit_for_bit(tmp_path):
    net = models.trained_torch(0)
    params = seed_params()
    manifest = polybundle.save(tmp_path / "pt.bundle", {"net": net}, params=params)
    assert manifest["format_version"] == "2.2.0"
    record = manifest["members"]["params.safetensors"]
    data = _members(tmp_path / "pt.bundle")["params.safetensors"]
    assert record == {"size": len(data), "digest": f"xxh3-128:{xxhash.xxh3_128_hexdigest(data)}"}
    for lazy in (False, True):
        bundle = polybundle.load(tmp_path / "pt.bundle", lazy=lazy)
        assert_same(bundle.params, params)
    bundle = polybundle.load(tmp_path / "pt.bundle")
    x = models.inputs("torch")
    np.testing.assert_array_equal(models.predict(bundle.models["net"], x), models.predict(net, x))
    probe = bundle.params["probe"]
    assert probe.flags.writeable and probe.flags.c_contiguous
    assert bundle.params["fortran"].flags.c_contiguous  # memory order is not kept; values are
    assert type(bundle.params["scale"]) is np.float32 and bundle.params["scale"] == 1.5
    assert type(bundle.params["zero_d"]) is np.ndarray and bundle.params["zero_d"].shape == ()


@needs_tensorflow
def test_keras_model_with_array_params_round_trips_bit_for_bit(tmp_path):
    net = models.trained_keras(0)
    params = seed_params()
    polybundle.save(tmp_path / "tf.bundle", {"autoencoder": net}, params=params)
    bundle = polybundle.load(tmp_path / "tf.bundle")
    assert_same(bundle.params, params)
    x = models.inputs("tensorflow")
    np.testing.assert_array_equal(
        models.predict(bundle.models["autoencoder"], x), models.predict(net, x)
    )
    assert polybundle.verify(tmp_path / "tf.bundle").problems == []


@needs_torch
def test_params_json_references_and_a_plain_safetensors_member(tmp_path):
    params = {k: v for k, v in seed_params().items() if k not in ("weights_bf16", "e4m3")}
    polybundle.save(tmp_path / "b.bundle", {"net": models.trained_torch(0)}, params=params)
    members = _members(tmp_path / "b.bundle")
    document = json.loads(members["params.json"])
    assert document["probe"] == {"$ndarray": "/probe", "dtype": "complex64", "shape": [16, 16]}
    assert document["scale"] == {
        "$ndarray": "/scale", "dtype": "float32", "shape": [], "scalar": True
    }
    assert document["nested"]["masks"][1]["deep"]["$ndarray"] == "/nested/masks/1/deep"
    assert document["names"] == ["a", "b"] and document["N"] == 16
    stored = safetensors_numpy.load(members["params.safetensors"])  # the real library reads it
    assert stored["/probe"].dtype == np.float32 and stored["/probe"].shape == (16, 16, 2)
    assert stored["/probe"].tobytes() == PROBE.tobytes()
    assert stored["/probe.mask"].dtype == np.bool_
    assert stored["/fnuz"].dtype == np.uint8  # no safetensors code: its bytes
    assert stored["/fnuz"].tobytes() == params["fnuz"].tobytes()
    with zipfile.ZipFile(tmp_path / "b.bundle") as archive:
        names = archive.namelist()
        assert archive.getinfo("params.safetensors").compress_type == zipfile.ZIP_STORED
    assert names[:2] == ["params.json", "params.safetensors"] and names[-1] == "manifest.json"


@needs_torch
def test_inspect_and_cli_summarise_arrays_as_json(tmp_path, capsys):
    path = tmp_path / "b.bundle"
    polybundle.save(path, {"net": models.trained_torch(0)}, params=seed_params())
    report = polybundle.inspect(path)
    assert report["params"]["probe"] == {
        "$ndarray": "/probe", "dtype": "complex64", "shape": [16, 16]
    }
    assert report["params"]["N"] == 16
    assert main(["inspect", str(path), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["params"]["probe.mask"]["dtype"] == "bool"
    assert printed["params"]["flags"][4] == {
        "$ndarray": "/flags/4", "dtype": "complex64", "shape": [], "scalar": True
    }
    assert main(["inspect", str(path)]) == 0
    assert "complex64" in capsys.readouterr().out
    verify = polybundle.verify(path)
    assert verify.ok and "params.json and params.safetensors" in verify.checked


@needs_torch
def test_params_without_arrays_write_no_member(tmp_path):
    manifest = polybundle.save(tmp_path / "b.bundle", {"net": models.trained_torch(0)},
                               params={"N": 16, "h5_path": "wts.h5"})
    assert "params.safetensors" not in manifest["members"]
    bundle = polybundle.load(tmp_path / "b.bundle", lazy=True)
    assert bundle.params == {"N": 16, "h5_path": "wts.h5"}


# --- what save refuses ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (np.array([1, "a"], dtype=object), "dtype object"),
        (np.array(["ab"]), "dtype <U2"),
        (np.zeros(2, dtype=[("a", "i4")]), r"dtype \[\('a', '<i4'\)\]"),
        (np.array(["2020-01-01"], dtype="datetime64[D]"), "datetime64"),
        (np.ma.masked_array([1.0, 2.0], mask=[True, False]), "MaskedArray"),
        (np.recarray((1,), dtype=[("a", "f4")]), "recarray"),
        ({"$ndarray": "/probe"}, r"reserves for references"),
        ({"$ndarray": "/probe", "dtype": "float32", "shape": []}, r"reserves for references"),
        ({"a": [{"$ndarray": 1, "other": 2}]}, r"\['a'\]\['0'\] has the key '\$ndarray'"),
        (1 + 2j, r"numpy.complex128\(value\) keeps it"),
        (float("nan"), r"numpy.float64\(value\)"),
        ((1, 2), "use a list"),
        (b"raw", "bytes"),
    ],
    ids=["object", "unicode", "struct", "datetime", "masked", "recarray", "bare-ref", "ref",
         "nested-ref", "complex", "nan", "tuple", "bytes"],
)
def test_save_refuses_what_would_not_come_back(tmp_path, value, match):
    pytest.importorskip("torch")
    before = snapshot_tree(tmp_path)
    with pytest.raises(ParamsError, match=match):
        polybundle.save(tmp_path / "b.bundle", {"net": models.trained_torch(0)},
                        params={"N": 16, "probe": value})
    assert snapshot_tree(tmp_path) == before


def test_arrays_at_the_deepest_level_are_refused_not_written_unreadable():
    from polybundle.format.params import encode_params

    def nest(depth: int, leaf: Any) -> Any:
        for _ in range(depth):
            leaf = [leaf]
        return leaf

    from polybundle.format.params import decode_params, resolve_arrays

    encoded = encode_params({"a": nest(61, np.ones(2))})  # deepest that reads back
    document = decode_params(encoded.document, where="params.json")
    got = resolve_arrays(document, encoded.arrays, where="params.safetensors")["a"]
    for _ in range(61):
        got = got[0]
    assert np.array_equal(got, np.ones(2))
    with pytest.raises(ParamsError, match="nested 63 deep"):
        encode_params({"a": nest(62, np.ones(2))})


# --- hostile and damaged members, digests recomputed -------------------------------------------


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    pytest.importorskip("torch")
    path = tmp_path_factory.mktemp("saved") / "b.bundle"
    params = {"N": 16, "probe": PROBE, "probe.mask": np.abs(PROBE) > 0.8, "s": np.float32(2)}
    polybundle.save(path, {"net": models.trained_torch(0)}, params=params)
    return path


def _stored(**changes: np.ndarray | None) -> bytes:
    arrays = {
        "/probe": PROBE.view(np.float32).reshape(16, 16, 2),
        "/probe.mask": np.abs(PROBE) > 0.8,
        "/s": np.array(2, np.float32),
    }
    for key, value in changes.items():
        name = "/" + key.replace("_", ".")
        if value is None:
            arrays.pop(name)
        else:
            arrays[name] = value
    return safetensors_numpy.save(arrays)


def _document(saved: Path, edit) -> bytes:
    document = json.loads(_members(saved)["params.json"])
    edit(document)
    return json.dumps(document).encode()


def _tamper_cases(saved: Path) -> dict[str, tuple[dict[str, bytes | None], dict, str]]:
    probe_ref = {"$ndarray": "/probe", "dtype": "complex64", "shape": [16, 16]}
    return {
        "shape-lie": ({"params.safetensors": _stored(probe=np.zeros((8, 32, 2), np.float32))},
                      {}, r"'/probe' is float32 shape \[8, 32, 2\]; params.json says complex64"),
        "dtype-lie": ({"params.safetensors": _stored(probe_mask=np.zeros((16, 16), np.uint8))},
                      {}, r"'/probe.mask' is uint8 .*params.json says bool"),
        "json-dtype-lie": ({"params.json": _document(saved, lambda d: d["probe"].update(
            dtype="complex128"))}, {}, r"'/probe' is float32 shape \[16, 16, 2\]"),
        "json-shape-lie": ({"params.json": _document(saved, lambda d: d["probe"].update(
            shape=[256]))}, {}, r"params.json says complex64 shape \[256\]"),
        "missing-key": ({"params.safetensors": _stored(probe=None)}, {},
                        r"referenced but missing \['/probe'\]"),
        "extra-key": ({"params.safetensors": _stored(extra=np.ones(2, np.float32))}, {},
                      r"never referenced \['/extra'\]"),
        "missing-member": ({"params.safetensors": None}, {}, r"referenced but missing"),
        "twice": ({"params.json": _document(saved, lambda d: d.update(again=probe_ref))}, {},
                  "twice"),
        "object-dtype": ({"params.json": _document(saved, lambda d: d["probe"].update(
            dtype="object"))}, {}, "reference is exactly"),
        "not-a-key": ({"params.json": _document(saved, lambda d: d["probe"].update(
            {"$ndarray": 7}))}, {}, "reference is exactly"),
        "scalar-shape": ({"params.json": _document(saved, lambda d: d["s"].update(shape=[1]))},
                         {}, "scalar reference"),
        "2.0-with-member": ({}, {"format_version": "2.0.0"}, "has no params.safetensors"),
        "truncated": ({"params.safetensors": _stored()[:-3]}, {}, "spans bytes"),
    }


CASES = ["shape-lie", "dtype-lie", "json-dtype-lie", "json-shape-lie", "missing-key", "extra-key",
         "missing-member", "twice", "object-dtype", "not-a-key", "scalar-shape",
         "2.0-with-member", "truncated"]


@pytest.mark.parametrize("case", CASES)
def test_tampered_params_members_are_typed_errors_everywhere(saved, tmp_path, case):
    members, edits, match = _tamper_cases(saved)[case]
    path = _rewrite(saved, tmp_path / f"{case}.bundle", members, **edits)
    for lazy in (False, True):
        with pytest.raises(FormatError, match=match):
            polybundle.load(path, lazy=lazy, verify=True)
    report = polybundle.verify(path)
    assert not report.ok and any("params" in problem for problem in report.problems), report
    if case not in ("truncated",):  # inspect reads only the header, not the bytes
        with pytest.raises(FormatError):
            polybundle.inspect(path)
    before = snapshot_tree(tmp_path)
    with pytest.raises(PolybundleError):
        polybundle.migrate(path, tmp_path / "copy.bundle")
    assert snapshot_tree(tmp_path) == before


def test_params_arrays_are_charged_to_the_budget_before_reading(tmp_path):
    pytest.importorskip("torch")
    path = tmp_path / "big.bundle"
    polybundle.save(path, {"net": models.trained_torch(0)},
                    params={"big": np.zeros((1024, 1024), np.float32)})  # 4 MiB
    with pytest.raises(BudgetExceededError, match="params.safetensors"):
        polybundle.load(path, lazy=True, max_bytes=3 * 1024 * 1024)
    assert polybundle.load(path, lazy=True, max_bytes=64 * 1024 * 1024).params["big"].shape == (
        1024, 1024)
    report = polybundle.inspect(path, max_bytes=1024 * 1024)  # reads only the header
    assert report["params"]["big"]["shape"] == [1024, 1024]


def test_format_2_0_params_keep_a_user_dict_that_looks_like_a_reference(saved, tmp_path):
    """In a 2.0 bundle a ``{"$ndarray": ...}`` dict is the user's own JSON value."""
    literal = {"$ndarray": "/probe", "dtype": "complex64", "shape": [16, 16]}
    path = _rewrite(saved, tmp_path / "old.bundle",
                    {"params.json": json.dumps({"N": 16, "x": literal}).encode(),
                     "params.safetensors": None}, format_version="2.0.0")
    assert polybundle.load(path, lazy=True).params == {"N": 16, "x": literal}
    assert polybundle.verify(path).ok
    assert polybundle.inspect(path)["params"]["x"] == literal


# --- migrate and convert ----------------------------------------------------------------------


def test_legacy_archive_with_a_complex_probe_migrates_losslessly(legacy_dir, tmp_path, capsys):
    source = legacy_dir / "tf_era_arrays_shared.zip"
    target = tmp_path / "migrated.bundle"
    report = polybundle.migrate(source, target)
    assert report.written
    assert not [line for line in report.dropped if line.startswith("params")], report.dropped
    assert len(report.dropped) == 4  # custom_objects.dill (code) and model.h5 of each role
    assert "params probe: array complex64 shape [16, 16] -> params.safetensors (bit for bit)" in (
        report.converted)
    legacy = polybundle.load(source, lazy=True).params
    migrated = polybundle.load(target, lazy=True)
    assert migrated.params["probe"].dtype == np.complex64
    assert_same(migrated.params, legacy)
    assert migrated.manifest["format_version"] == "2.2.0"
    assert "params.safetensors" in migrated.manifest["members"]
    assert main(["verify", str(target)]) == 0
    capsys.readouterr()
    assert main(["inspect", str(target), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["params"]["probe"]["dtype"] == "complex64"


def test_to_params_keeps_what_json_cannot_hold():
    from polybundle.legacy.jsonsafe import to_params

    value = {
        "nan": np.full((512, 512), np.nan, dtype=np.float32),
        "probe": np.ones((2, 2), np.complex64),
        "scalars": (np.float64(0.5), 1j, float("inf")),
        "raw": b"bytes",
        3: "int key",
        "ref": {"$ndarray": "x", "kept": 1},
    }
    result = to_params(value)
    assert result.value["nan"] is value["nan"] and result.value["probe"] is value["probe"]
    assert result.value["scalars"] == [np.float64(0.5), np.complex128(1j), np.float64(np.inf)]
    assert [type(v) for v in result.value["scalars"]] == [np.float64, np.complex128, np.float64]
    assert result.value["ref"] == {"kept": 1}
    assert len(result.dropped) == 3, result.dropped
    assert "raw: bytes" in result.dropped[0] and "[3]: key is not a string" in result.dropped[1]
    assert "reserved" in result.dropped[2]
    from polybundle.format.params import encode_params

    assert encode_params(result.value).arrays is not None


@needs_torch
@needs_tensorflow
@pytest.mark.parametrize(("source", "target"), [("tensorflow", "torch"), ("torch", "tensorflow")])
def test_convert_carries_array_params_across_frameworks(tmp_path, source, target):
    from . import reference_architectures as ref

    name = "ref-conv-autoencoder"
    config = ref.ROLES[name]["autoencoder"]
    net = ref.randomize(polybundle.build(name, config, backend=source), seed=0)
    params = seed_params()
    polybundle.save(tmp_path / "src.bundle", {"autoencoder": net}, params=params)
    manifest = polybundle.convert(tmp_path / "src.bundle", tmp_path / "dst.bundle", backend=target)
    assert manifest["backend"] == target and "params.safetensors" in manifest["members"]
    bundle = polybundle.load(tmp_path / "dst.bundle")
    assert_same(bundle.params, params)
    x = {"input": ref.sample_inputs(name, ref.CONFIGS[name])}
    got = polybundle.get_backend(target).predict(bundle.models["autoencoder"], x)["output"]
    expected = polybundle.get_backend(source).predict(net, x)["output"]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_member_bytes_are_independent_of_memory_order():
    from polybundle.format.params import encode_params

    c_order = np.arange(6, dtype=np.float64).reshape(2, 3)
    a = encode_params({"x": c_order, "y": np.arange(3, dtype="<i4")})
    b = encode_params({"x": np.asfortranarray(c_order), "y": np.arange(3, dtype=">i4")})
    assert a == b
    header_length = int.from_bytes(a.arrays[:8], "little")
    header = json.loads(io.BytesIO(a.arrays[8 : 8 + header_length]).read())
    assert header["/x"]["dtype"] == "F64" and header["/y"]["dtype"] == "I32"


def test_every_reference_written_matches_the_shipped_schema():
    import jsonschema

    from polybundle.format.params import DTYPES, encode_params, references
    from polybundle.format.schemas import load_schema

    schema = load_schema("params")
    reference = {**schema["$defs"]["reference"], "$schema": schema["$schema"]}
    assert reference["properties"]["dtype"]["enum"] == list(DTYPES)
    document = json.loads(encode_params(seed_params()).document)
    found = references(document, where="params.json")
    assert len(found) == 21  # 14 arrays at the top, 5 scalars in a list, 2 nested
    stack = [document]
    while stack:
        value = stack.pop()
        if isinstance(value, dict) and "$ndarray" in value:
            jsonschema.validate(value, reference)
        elif isinstance(value, dict | list):
            stack.extend(value.values() if isinstance(value, dict) else value)


def _legacy_with_probe(source: Path, path: Path, probe: Any) -> Path:
    """Copy the real PyTorch dill-era archive with ``probe`` in one role's params."""
    import pickle

    with zipfile.ZipFile(source) as old, zipfile.ZipFile(path, "w") as new:
        for info in old.infolist():
            data = old.read(info)
            if info.filename == "autoencoder/params.dill":
                params = pickle.loads(data)  # noqa: S301 - our own fixture
                params["probe"] = probe
                data = pickle.dumps(params, protocol=4)
            new.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)
    return path


def test_a_shared_array_repeated_in_legacy_params_is_charged_each_time(legacy_dir, tmp_path):
    """One 1 MiB array referenced 4,096 times in a pickle would be 4 GiB of params.safetensors."""
    shared = RNG.standard_normal(256 * 1024).astype(np.float32)  # incompressible
    path = _legacy_with_probe(legacy_dir / "torch_dill_era_shared.zip", tmp_path / "rep.zip",
                              [shared] * 4096)
    with pytest.raises(BudgetExceededError, match="legacy params"):
        polybundle.migrate(path, tmp_path / "m.bundle", max_bytes=1024**3)
    assert not (tmp_path / "m.bundle").exists()
    fine = _legacy_with_probe(legacy_dir / "torch_dill_era_shared.zip", tmp_path / "ok.zip",
                              [shared] * 3)
    polybundle.migrate(fine, tmp_path / "m.bundle", max_bytes=1024**3)
    probes = polybundle.load(tmp_path / "m.bundle", lazy=True).params["probe"]
    assert [p.shape for p in probes] == [shared.shape] * 3
