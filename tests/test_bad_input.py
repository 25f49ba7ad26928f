"""Bad files and bad arguments give typed errors and write nothing."""

from __future__ import annotations

import json
import os
import zipfile

import pytest

import polybundle
from polybundle.format.archive import ArchiveReader
from tests import models
from tests.conftest import needs_tensorflow, needs_torch, snapshot_tree


@pytest.fixture
def torch_bundle(tmp_path):
    if not polybundle.get_backend("torch").is_available():
        pytest.skip("PyTorch is not installed (pip install 'polybundle[torch]')")
    path = tmp_path / "good.bundle"
    polybundle.save(path, {"net": models.trained_torch(0)}, params={"N": 6})
    return path


def _rewrite(src, dst, replace):
    """Copy zip ``src`` to ``dst``, replacing members by name (None drops it)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = replace.get(info.filename, zin.read(info))
            if data is not None:
                zout.writestr(info, data)


def _assert_raises_and_writes_nothing(folder, error, call, match=None):
    before = snapshot_tree(folder)
    with pytest.raises(error, match=match):
        call()
    assert snapshot_tree(folder) == before


def test_flipped_byte_in_weights_is_an_integrity_error(torch_bundle, tmp_path):
    with ArchiveReader(torch_bundle) as archive:
        offset = archive.data_offset("net/model.pth") + archive.size("net/model.pth") // 2
    data = bytearray(torch_bundle.read_bytes())
    data[offset] ^= 0xFF
    torch_bundle.write_bytes(bytes(data))
    _assert_raises_and_writes_nothing(
        tmp_path,
        polybundle.IntegrityError,
        lambda: polybundle.load(torch_bundle),
        match="net/model.pth",
    )


def test_not_a_zip_lists_known_formats(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    _assert_raises_and_writes_nothing(
        tmp_path, polybundle.FormatError, lambda: polybundle.load(path), match="format 2"
    )


def test_zip_without_manifest_is_refused(tmp_path):
    path = tmp_path / "other.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("readme.txt", "not a bundle")
    _assert_raises_and_writes_nothing(
        tmp_path, polybundle.FormatError, lambda: polybundle.load(path), match="no known format"
    )
    with pytest.raises(polybundle.FormatError):
        polybundle.inspect(path)


def test_manifest_failing_its_schema_is_a_schema_error(torch_bundle, tmp_path):
    with zipfile.ZipFile(torch_bundle) as zf:
        manifest = json.loads(zf.read("manifest.json"))
    del manifest["members"]["params.json"]["digest"]
    broken = tmp_path / "broken.bundle"
    _rewrite(torch_bundle, broken, {"manifest.json": json.dumps(manifest).encode()})
    _assert_raises_and_writes_nothing(
        tmp_path, polybundle.SchemaError, lambda: polybundle.load(broken), match="digest"
    )


def test_newer_major_format_is_refused_with_upgrade_advice(torch_bundle, tmp_path):
    with zipfile.ZipFile(torch_bundle) as zf:
        manifest = json.loads(zf.read("manifest.json"))
    manifest["format_version"] = "3.0.0"
    newer = tmp_path / "newer.bundle"
    _rewrite(torch_bundle, newer, {"manifest.json": json.dumps(manifest).encode()})
    with pytest.raises(polybundle.UnsupportedVersionError, match="Upgrade polybundle"):
        polybundle.load(newer)


def test_member_not_listed_in_manifest_is_refused(torch_bundle, tmp_path):
    extra = tmp_path / "extra.bundle"
    _rewrite(torch_bundle, extra, {})
    with zipfile.ZipFile(extra, "a") as zf:
        zf.writestr("net/evil.py", "print('hi')")
    with pytest.raises(polybundle.UnsafeContentError, match="net/evil.py"):
        polybundle.load(extra)


def test_missing_member_is_an_integrity_error(torch_bundle, tmp_path):
    partial = tmp_path / "partial.bundle"
    _rewrite(torch_bundle, partial, {"net/model.pth": None})
    with pytest.raises(polybundle.IntegrityError, match="missing"):
        polybundle.load(partial)


def test_verify_false_skips_hashes_but_not_sizes(torch_bundle, tmp_path):
    with zipfile.ZipFile(torch_bundle) as zf:
        manifest = json.loads(zf.read("manifest.json"))
    manifest["members"]["params.json"]["digest"] = "xxh3-128:" + "0" * 32
    edited = tmp_path / "edited.bundle"
    _rewrite(torch_bundle, edited, {"manifest.json": json.dumps(manifest).encode()})
    with pytest.raises(polybundle.IntegrityError):
        polybundle.load(edited)
    assert polybundle.load(edited, verify=False).params == {"N": 6}


@needs_torch
def test_torch_bundle_requested_as_tensorflow_names_both_backends(tmp_path):
    import torch

    path = tmp_path / "t.bundle"
    polybundle.save(path, {"net": torch.nn.Linear(2, 2)})
    with pytest.raises(polybundle.BackendMismatchError) as info:
        polybundle.load(path, backend="tensorflow")
    assert "'torch'" in str(info.value) and "'tensorflow'" in str(info.value)
    assert (info.value.archived, info.value.requested) == ("torch", "tensorflow")


@needs_torch
@needs_tensorflow
def test_mixing_frameworks_in_one_bundle_is_refused_and_writes_nothing(tmp_path):
    import torch

    mixed = {"a": torch.nn.Linear(2, 2), "b": models.keras_convnet(models.CONFIG)}
    _assert_raises_and_writes_nothing(
        tmp_path,
        polybundle.BackendError,
        lambda: polybundle.save(tmp_path / "mixed.bundle", mixed),
        match="mix",
    )


@needs_torch
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"params": {"shape": (1, 2)}}, polybundle.ParamsError, "tuple"),
        ({"params": {"x": float("nan")}}, polybundle.ParamsError, "NaN"),
        ({"params": {1: "a"}}, polybundle.ParamsError, "key 1"),
        ({"architectures": {"other": ("a", {})}}, polybundle.PolybundleError, "other"),
    ],
)
def test_bad_save_arguments_write_nothing(tmp_path, kwargs, error, match):
    import torch

    _assert_raises_and_writes_nothing(
        tmp_path,
        error,
        lambda: polybundle.save(tmp_path / "x.bundle", {"net": torch.nn.Linear(2, 2)}, **kwargs),
        match=match,
    )


@pytest.mark.parametrize("role", ["../up", "a/b", "", ".hidden"])
def test_bad_role_names_are_refused(tmp_path, role):
    with pytest.raises(polybundle.PolybundleError, match="role"):
        polybundle.save(tmp_path / "x.bundle", {role: object()})
    assert snapshot_tree(tmp_path) == {}


def test_model_of_unknown_framework_is_refused(tmp_path):
    with pytest.raises(polybundle.UnknownBackendError, match="dict"):
        polybundle.save(tmp_path / "x.bundle", {"net": {"w": 1}})
    assert snapshot_tree(tmp_path) == {}


@needs_torch
def test_failed_save_leaves_the_old_bundle_and_no_temp_file(tmp_path, monkeypatch):
    import torch

    path = tmp_path / "keep.bundle"
    polybundle.save(path, {"net": torch.nn.Linear(2, 2)}, params={"v": 1})
    before = snapshot_tree(tmp_path)
    original = path.read_bytes()
    backend = polybundle.get_backend("torch")

    def crash(model, stream):
        stream.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(backend, "write", crash)
    with pytest.raises(polybundle.errors.WriteError, match="disk full"):
        polybundle.save(path, {"net": torch.nn.Linear(2, 2)}, params={"v": 2})
    assert snapshot_tree(tmp_path) == before
    assert path.read_bytes() == original
    assert os.listdir(tmp_path) == ["keep.bundle"]


def test_saving_into_a_missing_folder_is_refused(tmp_path):
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    with pytest.raises(polybundle.PolybundleError, match="does not exist"):
        polybundle.save(tmp_path / "nope" / "x.bundle", {"net": torch.nn.Linear(2, 2)})
