"""Hostile containers and JSON documents (issue 10 items 2, 3, 4, 5; issue 16 item 7).

Every archive here is crafted in the test, with :mod:`zipfile` or raw
``struct``-packed zip records, from a real format-2 bundle migrated from a
legacy fixture (no framework needed). Each case asserts a typed
:class:`~polybundle.errors.PolybundleError` from ``load``, ``inspect`` and
``load(lazy=True)``, and that :func:`polybundle.verify` reports the problem
without raising.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import struct
import threading
import time
import zipfile
import zlib
from pathlib import Path

import pytest

import polybundle
from polybundle.api.bundle import Bundle
from polybundle.errors import (
    FormatError,
    IntegrityError,
    ParamsError,
    PolybundleError,
    UnsafeContentError,
    UnsupportedVersionError,
)
from polybundle.format.archive import ArchiveReader, NestedZip
from polybundle.format.jsondoc import load_json, nesting_depth
from polybundle.format.params import decode_params, encode_params

from .conftest import needs_torch

TORCH_ERA = "torch_dill_era_shared.zip"
ENDS_EARLY = "the file ends early: truncated or still being copied?"

ENTRY_POINTS = {
    "load": lambda path: polybundle.load(path),
    "inspect": lambda path: polybundle.inspect(path),
    "lazy": lambda path: polybundle.load(path, lazy=True),
}


@pytest.fixture(scope="module")
def bundle_bytes(tmp_path_factory) -> bytes:
    """A real format-2 bundle (torch backend), migrated from a legacy fixture."""
    from .conftest import LEGACY_DIR

    out = tmp_path_factory.mktemp("bundle") / "migrated.bundle"
    polybundle.migrate(LEGACY_DIR / TORCH_ERA, out)
    return out.read_bytes()


def members_of(data: bytes) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return [(info.filename, archive.read(info)) for info in archive.infolist()]


def write_bundle(
    path: Path, members: list[tuple[str, bytes]], *, fix_manifest: bool = True
) -> Path:
    """Write ``members`` STORED; with ``fix_manifest`` the manifest records their real digests."""
    contents = dict(members)
    if fix_manifest:
        manifest = json.loads(contents["manifest.json"])
        for name in manifest["members"]:
            data = contents[name]
            manifest["members"][name] = {
                "size": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
            }
        contents["manifest.json"] = json.dumps(manifest).encode()
    with zipfile.ZipFile(path, "w") as archive:
        for name, _ in members:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o100644 << 16
            archive.writestr(info, contents[name])
    return path


def assert_refused(path: Path, error: type[PolybundleError], *words: str) -> None:
    """Every entry point raises ``error`` (with ``words``); verify reports it, never raises."""
    for label, call in ENTRY_POINTS.items():
        with pytest.raises(error) as caught:
            call(path)
        for word in words:
            assert word in str(caught.value), (label, str(caught.value))
    report = polybundle.verify(path)
    assert not report.ok
    assert report.problems and error.__name__ in report.problems[0], report.problems
    for word in words:
        assert word in report.problems[0], report.problems


# --- raw zip records --------------------------------------------------------------------


def local_record(name: bytes, data: bytes, *, method: int = 0) -> bytes:
    crc = zlib.crc32(data)
    return (
        struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, method, 0, 0x21, crc,
                    len(data), len(data), len(name), 0)
        + name
        + data
    )


def central_record(
    name: bytes, data: bytes, offset: int, *, mode: int = 0o100644, attributes: int = 0
) -> bytes:
    crc = zlib.crc32(data)
    return (
        struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 0x031E, 20, 0, 0, 0, 0x21, crc,
                    len(data), len(data), len(name), 0, 0, 0, 0, (mode << 16) | attributes,
                    offset)
        + name
    )


def end_record(count: int, directory: bytes, offset: int) -> bytes:
    return struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, count, count, len(directory), offset, 0)


def raw_zip(locals_: bytes, centrals: list[bytes]) -> bytes:
    directory = b"".join(centrals)
    return locals_ + directory + end_record(len(centrals), directory, len(locals_))


# --- issue 10 item 2: paths that are not regular files ----------------------------------


def test_dev_zero_is_refused_before_reading():
    assert_refused(Path("/dev/zero"), FormatError, "not a regular file")


def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "model.bundle"
    os.mkfifo(fifo)
    outcomes: list[BaseException] = []

    def attempt() -> None:
        for call in ENTRY_POINTS.values():
            try:
                call(fifo)
            except BaseException as exc:  # collected and checked below
                outcomes.append(exc)
        outcomes.append(RuntimeError(polybundle.verify(fifo).problems[0]))

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(timeout=30)
    assert not worker.is_alive(), "reading a FIFO blocked"
    assert len(outcomes) == 4
    for exc in outcomes[:3]:
        assert isinstance(exc, FormatError) and "FIFO" in str(exc), exc
    assert "FIFO" in str(outcomes[3])
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)  # nothing changed on disk


# --- issue 10 item 2: directory records that alias one entry -----------------------------


def aliasing_zip(copies: int = 256) -> bytes:
    payload = b"\0" * 4096
    names = [b"a"] + [f"alias{i}".encode() for i in range(copies - 1)]
    return raw_zip(local_record(b"a", payload), [central_record(n, payload, 0) for n in names])


def overlapping_zip() -> bytes:
    """Member ``b`` lives inside member ``a``'s data: names agree, bytes are shared."""
    inner = local_record(b"b", b"\1" * 1000)
    outer_data = b"\0" * 16 + inner + b"\0" * 16
    outer = local_record(b"a", outer_data)
    offset_b = 30 + 1 + 16
    return raw_zip(
        outer,
        [central_record(b"a", outer_data, 0), central_record(b"b", b"\1" * 1000, offset_b)],
    )


@pytest.mark.parametrize("craft", [aliasing_zip, overlapping_zip])
def test_aliased_members_are_refused(tmp_path, craft):
    data = craft()
    with zipfile.ZipFile(io.BytesIO(data)) as check:  # a real zip, as zipfile reads it
        assert len(check.infolist()) >= 2
    path = tmp_path / "alias.bundle"
    path.write_bytes(data)
    assert_refused(path, UnsafeContentError)
    with pytest.raises(UnsafeContentError):
        NestedZip(io.BytesIO(data))  # the same check inside model.pth / model.keras


def test_aliased_storages_inside_model_pth_are_refused(tmp_path, bundle_bytes):
    members = members_of(bundle_bytes)
    weights = next(name for name, _ in members if name.endswith("model.pth"))
    source = dict(members)[weights]
    with zipfile.ZipFile(io.BytesIO(source)) as pth:
        storages = [i for i in pth.infolist() if "/data/" in i.filename]
        first = storages[0]
    # every storage record now points at the first storage's local header
    patched = bytearray(source)
    position = 0
    while (position := patched.find(b"PK\x01\x02", position)) >= 0:
        length = struct.unpack_from("<H", patched, position + 28)[0]
        name = bytes(patched[position + 46 : position + 46 + length]).decode()
        if name in {s.filename for s in storages[1:]}:
            info = next(s for s in storages if s.filename == name)
            struct.pack_into("<III", patched, position + 16, first.CRC, first.compress_size,
                             first.file_size)
            struct.pack_into("<I", patched, position + 42, first.header_offset)
            assert info.filename != first.filename
        position += 4
    path = write_bundle(tmp_path / "aliased_pth.bundle", [
        (name, bytes(patched) if name == weights else data) for name, data in members
    ])
    with pytest.raises(UnsafeContentError):
        polybundle.load(path, lazy=True).tensors(weights.split("/")[0])
    report = polybundle.verify(path)
    assert not report.ok and "UnsafeContentError" in report.problems[0]


# --- issue 10 item 5: a complete zip in front of the bundle -------------------------------


def shifted(bundle: bytes, delta: int) -> bytes:
    """Return ``bundle`` with every directory offset moved by ``delta`` (as `zip -A` does)."""
    data = bytearray(bundle)
    end = data.rfind(b"PK\x05\x06")
    directory = struct.unpack_from("<L", data, end + 16)[0]
    position = directory
    while (position := data.find(b"PK\x01\x02", position, end)) >= 0:
        offset = struct.unpack_from("<L", data, position + 42)[0]
        struct.pack_into("<L", data, position + 42, offset + delta)
        position += 46
    struct.pack_into("<L", data, end + 16, directory + delta)
    return bytes(data)


def decoy_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as decoy:
        decoy.writestr("README.txt", "a harmless archive")
    return buffer.getvalue()


def test_zip_followed_by_a_bundle_is_refused(tmp_path, bundle_bytes):
    decoy = decoy_zip()
    concatenated = tmp_path / "concatenated.bundle"
    concatenated.write_bytes(decoy + bundle_bytes)
    adjusted = tmp_path / "adjusted.bundle"
    adjusted.write_bytes(decoy + shifted(bundle_bytes, len(decoy)))
    for path in (concatenated, adjusted):
        # a streaming reader (local headers from byte 0) sees only the decoy first
        assert path.read_bytes()[30 : 30 + len("README.txt")] == b"README.txt"
        with zipfile.ZipFile(path) as seen:
            assert "manifest.json" in seen.namelist()  # while zipfile sees the bundle
        assert_refused(path, UnsafeContentError)


def test_bytes_hidden_between_members_are_refused(tmp_path):
    first, second = local_record(b"a", b"1" * 100), local_record(b"b", b"2" * 100)
    hidden = decoy_zip()
    data = raw_zip(
        first + hidden + second,
        [central_record(b"a", b"1" * 100, 0),
         central_record(b"b", b"2" * 100, len(first) + len(hidden))],
    )
    path = tmp_path / "hidden.bundle"
    path.write_bytes(data)
    assert_refused(path, UnsafeContentError, "belong to no member")


# --- issue 10 item 5: directory entries --------------------------------------------------


def with_directory(bundle: bytes, path: Path, mode: int) -> Path:
    path.write_bytes(bundle)
    with zipfile.ZipFile(path, "a") as archive:
        info = zipfile.ZipInfo("payload/", date_time=(1980, 1, 1, 0, 0, 0))
        info.external_attr = (mode << 16) | 0x10
        archive.writestr(info, b"")
    return path


def test_directory_entry_escapes_no_manifest(tmp_path, bundle_bytes):
    path = with_directory(bundle_bytes, tmp_path / "dir.bundle", 0o040755)
    with ArchiveReader(path) as archive:
        assert archive.directories() == ["payload/"]
    assert_refused(path, UnsafeContentError, "payload/")


@pytest.mark.parametrize("mode", [0o120777, 0o100644, 0o020644])
def test_directory_entry_with_other_mode_bits_is_refused(tmp_path, bundle_bytes, mode):
    path = with_directory(bundle_bytes, tmp_path / "dir_link.bundle", mode)
    assert_refused(path, UnsafeContentError, "payload/")


def test_directory_entry_holding_data_is_refused(tmp_path):
    data = raw_zip(
        local_record(b"payload/", b"secret"),
        [central_record(b"payload/", b"secret", 0, mode=0o040755, attributes=0x10)],
    )
    path = tmp_path / "dir_data.bundle"
    path.write_bytes(data)
    assert_refused(path, UnsafeContentError, "directory")


# --- issue 16 item 7: a cut file says it ends early --------------------------------------


def cut_lengths(data: bytes) -> list[int]:
    lengths = set(range(0, len(data), 1024))
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for info in archive.infolist():
            start = info.header_offset
            end = start + 30 + len(info.filename) + len(info.extra) + info.compress_size
            for edge in (start, start + 30, end):
                lengths.update({edge - 1, edge, edge + 1})
            if info.filename.endswith(".pth"):  # ends with the stored zip's own end record
                lengths.update({end - 22, end - 21})
        directory = archive.start_dir
    lengths.update({directory - 1, directory, directory + 1, len(data) - 22, len(data) - 1})
    return sorted(n for n in lengths if 0 <= n < len(data))


def test_truncated_bundle_says_it_ends_early(tmp_path, bundle_bytes):
    path = tmp_path / "cut.bundle"
    lengths = cut_lengths(bundle_bytes)
    assert len(lengths) > 30
    for length in lengths:
        path.write_bytes(bundle_bytes[:length])
        for label, call in ENTRY_POINTS.items():
            with pytest.raises(FormatError) as caught:
                call(path)
            message = str(caught.value)
            assert ENDS_EARLY in message, (length, label, message)
            assert "no known format" not in message
        report = polybundle.verify(path)
        assert not report.ok and ENDS_EARLY in report.problems[0], (length, report.problems)
        assert not any("zip structure" in line for line in report.checked), (length, report)


def test_complete_bundle_still_loads(tmp_path, bundle_bytes):
    path = tmp_path / "whole.bundle"
    path.write_bytes(bundle_bytes)
    assert polybundle.verify(path).ok
    assert polybundle.inspect(path)["tensors"]


# --- issue 10 item 4 and item 2: JSON documents ------------------------------------------


def with_member(tmp_path: Path, bundle: bytes, name: str, data: bytes) -> Path:
    members = [(n, data if n == name else d) for n, d in members_of(bundle)]
    return write_bundle(tmp_path / f"{name.replace('/', '_')}.bundle", members)


def nested(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


def test_deep_manifest_is_a_format_error(tmp_path, bundle_bytes):
    manifest = json.loads(dict(members_of(bundle_bytes))["manifest.json"])
    manifest["models"][0]["architecture"] = {"name": "x", "config": json.loads(nested(60))}
    text = json.dumps(manifest).encode().replace(b'"a": 1', b'"a": ' + nested(400))
    members = [(n, text if n == "manifest.json" else d) for n, d in members_of(bundle_bytes)]
    path = write_bundle(tmp_path / "deep_manifest.bundle", members, fix_manifest=False)
    assert_refused(path, FormatError, "deep")


def test_huge_version_string_is_a_typed_error(tmp_path, bundle_bytes):
    manifest = json.loads(dict(members_of(bundle_bytes))["manifest.json"])
    manifest["format_version"] = "9" * 5000 + ".0.0"
    members = [
        (n, json.dumps(manifest).encode() if n == "manifest.json" else d)
        for n, d in members_of(bundle_bytes)
    ]
    path = write_bundle(tmp_path / "version.bundle", members, fix_manifest=False)
    assert_refused(path, UnsupportedVersionError, "format_version")


def test_duplicate_manifest_keys_are_refused(tmp_path, bundle_bytes):
    text = dict(members_of(bundle_bytes))["manifest.json"]
    text = text.replace(b'"backend": "torch"', b'"backend": "torch", "backend": "tensorflow"')
    members = [(n, text if n == "manifest.json" else d) for n, d in members_of(bundle_bytes)]
    path = write_bundle(tmp_path / "dup.bundle", members, fix_manifest=False)
    assert_refused(path, FormatError, "twice")


def test_deep_params_is_a_format_error(tmp_path, bundle_bytes):
    path = with_member(tmp_path, bundle_bytes, "params.json", nested(400))
    assert_refused(path, FormatError, "params.json", "deep")


def test_large_params_validate_in_linear_time(tmp_path, bundle_bytes):
    params = {"grid": [0] * 1_000_000, "pairs": [[i, {"k": i}] for i in range(60_000)]}
    data = json.dumps(params, separators=(",", ":")).encode()
    assert len(data) > 3_000_000
    path = with_member(tmp_path, bundle_bytes, "params.json", data)
    started = time.perf_counter()
    assert len(polybundle.inspect(path)["params"]["grid"]) == 1_000_000
    # the recursive schema took 22-95 s here; parsing and checking now take about 1 s
    assert time.perf_counter() - started < 20


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "deep"),
        (b'{"n": ' + b"7" * 5000 + b"}", "5000 characters"),
        (b'{"n": 1e999}', "infinity"),
        (b'{"n": NaN}', "NaN"),
        (b'{"n": 1, "n": 2}', "twice"),
        (b'{"n": "\xff"}', "UTF-8"),
        (b'{"n": ', "not valid JSON"),
    ],
)
def test_load_json_refuses_with_a_format_error(data, words):
    with pytest.raises(FormatError, match=words):
        load_json(data, where="params.json")
    with pytest.raises(FormatError):
        decode_params(data, where="params.json")


def test_nesting_depth_ignores_brackets_in_strings():
    assert nesting_depth(b'["[[[[", {"a": "}}}"}]') == 2
    assert nesting_depth(b'["\\"[[[", 1]') == 1


def test_params_too_deep_to_read_back_are_refused_on_save():
    value: list = []
    for _ in range(100):
        value = [value]
    with pytest.raises(ParamsError, match="deep"):
        encode_params({"x": value})


# --- issue 10 item 3: tensors() after the file changed ------------------------------------


def weights_byte_offset(path: Path, weights: str) -> int:
    """Return the file offset of a byte inside the first tensor storage of ``weights``."""
    with ArchiveReader(path) as archive:
        start = archive.data_offset(weights)
        inner = archive.read(weights, limit=archive.size(weights))
    with zipfile.ZipFile(io.BytesIO(inner)) as pth:
        info = next(i for i in pth.infolist() if "/data/" in i.filename)
    name_length, extra_length = struct.unpack_from("<HH", inner, info.header_offset + 26)
    return start + info.header_offset + 30 + name_length + extra_length


def flip_byte(path: Path, offset: int) -> None:
    stat_before = path.stat()
    with open(path, "r+b") as handle:
        handle.seek(offset)
        value = handle.read(1)[0]
        handle.seek(offset)
        handle.write(bytes([value ^ 0x40]))
    assert path.stat().st_size == stat_before.st_size


def test_lazy_tensors_refuse_a_changed_file(tmp_path, bundle_bytes):
    path = tmp_path / "changed.bundle"
    path.write_bytes(bundle_bytes)
    bundle = polybundle.load(path, lazy=True)
    role = bundle.roles[0]
    assert len(bundle.tensors(role)) == len(bundle.tensor_specs(role))
    flip_byte(path, weights_byte_offset(path, f"{role}/model.pth"))
    with pytest.raises(IntegrityError, match="digest"):
        bundle.tensors(role)


@needs_torch
def test_eager_tensors_refuse_a_changed_file(tmp_path, bundle_bytes):
    path = tmp_path / "changed_eager.bundle"
    path.write_bytes(bundle_bytes)
    manifest = polybundle.inspect(path)["manifest"]
    bundle = Bundle(path, manifest, {}, manifest["backend"])
    role = bundle.roles[0]
    before = bundle.tensors(role)
    flip_byte(path, weights_byte_offset(path, f"{role}/model.pth"))
    with pytest.raises(IntegrityError, match="digest"):
        bundle.tensors(role)
    assert before  # what was handed out earlier stays as it was read


def test_lazy_tensors_hash_once_per_unchanged_file(tmp_path, bundle_bytes):
    path = tmp_path / "unchanged.bundle"
    path.write_bytes(bundle_bytes)
    bundle = polybundle.load(path, lazy=True)
    role = bundle.roles[0]
    bundle.tensors(role)
    offset = weights_byte_offset(path, f"{role}/model.pth")
    status = path.stat()
    flip_byte(path, offset)
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns))  # mtime put back: ctime moves
    with pytest.raises(IntegrityError):
        bundle.tensors(role)
    flip_byte(path, offset)  # the original bytes again
    assert len(bundle.tensors(role)) == len(bundle.tensor_specs(role))


def test_zip64_end_records_are_accepted(tmp_path):
    """Bundles over 4 GiB end with a zip64 end record: the layout check follows it."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("a", b"1" * 100)
        archive.writestr("b", b"2" * 50)
    data = buffer.getvalue()
    end = data.rfind(b"PK\x05\x06")
    _, _, _, count, total, size, offset, _ = struct.unpack_from("<4s4H2LH", data, end)
    record = struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, count, total, size, offset)
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, end, 1)
    eocd = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    path = tmp_path / "zip64.zip"
    path.write_bytes(data[:end] + record + locator + eocd)
    with ArchiveReader(path) as archive:
        assert archive.names() == ["a", "b"] and archive.read("b") == b"2" * 50
    path.write_bytes(data[:end] + record[:-8] + locator + eocd)  # record cut short
    with pytest.raises(FormatError):
        ArchiveReader(path)


def test_manifest_nested_at_the_root_is_a_format_error(tmp_path, bundle_bytes):
    deep = b"[" * 100_000 + b"]" * 100_000  # read by format detection before the loader
    members = [(n, deep if n == "manifest.json" else d) for n, d in members_of(bundle_bytes)]
    path = write_bundle(tmp_path / "root_deep.bundle", members, fix_manifest=False)
    assert_refused(path, FormatError, "deep")
