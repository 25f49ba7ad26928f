"""Named member digests (format 2.2), the fast CRC-32, and bundles written before them.

The bundles in ``tests/fixtures/format_2_1/`` were written by the polybundle of
format 2.1.0 (member records ``{"size", "sha256"}``); every later reader must
load, verify and convert them unchanged.
"""

from __future__ import annotations

import hashlib
import json
import runpy
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import xxhash

import polybundle
from polybundle.errors import IntegrityError, UnknownDigestError
from polybundle.format import crc
from polybundle.format.archive import ArchiveReader
from polybundle.tools import parity
from tests import models  # noqa: F401  (registers the fixtures' architecture, test-convnet)

from .conftest import LEGACY_DIR, needs_torch, snapshot_tree

FIXTURES = Path(__file__).parent / "fixtures" / "format_2_1"
REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("name", "backend"), [("torch.bundle", "torch"),
                                               ("keras.bundle", "tensorflow")])
def test_format_2_1_bundles_still_load_and_verify(name: str, backend: str) -> None:
    """A 2.1.0 bundle with sha256 records: verified, loaded with its optimizer, same outputs."""
    pytest.importorskip("torch" if backend == "torch" else "keras")
    path = FIXTURES / name
    report = polybundle.verify(path)
    assert report.ok, report.problems
    assert f"sha256 digests of {len(zipfile.ZipFile(path).namelist()) - 1} members" in (
        report.checked)
    bundle = polybundle.load(path)
    assert bundle.manifest["format_version"] == "2.1.0"
    assert all(set(r) == {"size", "sha256"} for r in bundle.manifest["members"].values())
    assert bundle.backend == backend
    np.testing.assert_array_equal(bundle.params["probe"], np.linspace(0, 1, 6, dtype="float32"))
    assert bundle.optimizer_state("net").step == 1
    result = parity.compare(path, backends=[backend])
    assert result.passed, result.rows


def _members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def _records(path: Path) -> dict[str, dict]:
    return json.loads(_members(path)["manifest.json"])["members"]


@pytest.fixture(scope="module")
def net():
    """A small torch model, saved by most tests here."""
    pytest.importorskip("torch")
    return models.trained_torch(0)


@needs_torch
@pytest.mark.parametrize(("digest", "hexdigest"), [
    ("xxh3-128", lambda data: xxhash.xxh3_128(data).hexdigest()),
    ("sha256", lambda data: hashlib.sha256(data).hexdigest()),
])
def test_save_names_the_digest_of_every_member(tmp_path, net, digest, hexdigest) -> None:
    """Each record is ``{"size", "digest": "<algorithm>:<hex>"}`` of the member's bytes."""
    path = tmp_path / "a.bundle"
    kwargs = {} if digest == "xxh3-128" else {"digest": digest}
    manifest = polybundle.save(path, {"net": net}, params={"x": np.arange(3.0)}, rng=True,
                               **kwargs)
    assert manifest["format_version"] == "2.2.0"
    members = _members(path)
    assert manifest["members"] == {
        name: {"size": len(data), "digest": f"{digest}:{hexdigest(data)}"}
        for name, data in members.items() if name != "manifest.json"
    }
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None  # every header's CRC-32 is right
    report = polybundle.verify(path)
    assert report.ok and f"{digest} digests of {len(manifest['members'])} members" in report.checked
    assert polybundle.load(path, lazy=True).params["x"].tolist() == [0.0, 1.0, 2.0]


@needs_torch
def test_a_damaged_member_fails_its_sha256_digest(tmp_path, net) -> None:
    """The read-back hasher's digest is the member's: one flipped byte is an IntegrityError."""
    path = tmp_path / "a.bundle"
    polybundle.save(path, {"net": net}, digest="sha256")
    with ArchiveReader(path) as archive:
        offset = archive.data_offset("net/model.pth") + archive.size("net/model.pth") // 2
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="'net/model.pth' has sha256 digest"):
        polybundle.load(path, into={"net": models.trained_torch(1)})
    assert not polybundle.verify(path).ok


@needs_torch
def test_an_unknown_algorithm_asked_for_is_refused_before_writing(tmp_path, net) -> None:
    before = snapshot_tree(tmp_path)
    with pytest.raises(UnknownDigestError, match=r"'md5'; this polybundle knows 'xxh3-128'"):
        polybundle.save(tmp_path / "a.bundle", {"net": net}, digest="md5")
    with pytest.raises(UnknownDigestError, match="'blake3'"):
        polybundle.migrate(LEGACY_DIR / "torch_dill_era_shared.zip", tmp_path / "m.bundle",
                           digest="blake3")
    assert snapshot_tree(tmp_path) == before


@needs_torch
def test_checkpoint_manager_writes_the_digest_asked_for(tmp_path, net) -> None:
    with pytest.raises(UnknownDigestError, match="'sha-256'"):
        polybundle.CheckpointManager(tmp_path / "bad", digest="sha-256")
    manager = polybundle.CheckpointManager(tmp_path / "ckpt", digest="sha256")
    saved = manager.save(1, {"net": net})
    assert all(r["digest"].startswith("sha256:") for r in _records(saved.path).values())
    assert polybundle.verify(saved.path).ok


def _with_records(source: Path, target: Path, change) -> Path:
    """Copy ``source`` with its manifest's member records changed by ``change(records)``."""
    members = _members(source)
    manifest = json.loads(members["manifest.json"])
    change(manifest["members"])
    members["manifest.json"] = json.dumps(manifest).encode()
    with zipfile.ZipFile(target, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return target


def test_a_manifest_naming_an_unknown_algorithm_is_a_typed_error(tmp_path) -> None:
    """A newer writer's algorithm: refused by load, inspect and verify, with what to do."""
    def to_blake3(records):
        records["params.json"] = {"size": records["params.json"]["size"],
                                  "digest": "blake3:" + "0" * 64}
    path = _with_records(FIXTURES / "torch.bundle", tmp_path / "b.bundle", to_blake3)
    message = (r"manifest.json's record of 'params.json' names digest algorithm 'blake3'; this "
               r"polybundle knows 'xxh3-128' \(the default\) and 'sha256'. .*pip install -U")
    with pytest.raises(UnknownDigestError, match=message):
        polybundle.load(path, lazy=True)
    with pytest.raises(UnknownDigestError):
        polybundle.inspect(path)
    assert polybundle.verify(path).problems[0].startswith("UnknownDigestError: manifest.json's")


def test_a_digest_of_the_wrong_length_is_refused(tmp_path) -> None:
    def short(records):
        records["params.json"] = {"size": records["params.json"]["size"],
                                  "digest": "xxh3-128:" + "0" * 64}
    path = _with_records(FIXTURES / "torch.bundle", tmp_path / "b.bundle", short)
    with pytest.raises(UnknownDigestError, match="a xxh3-128 digest is 'xxh3-128:' and 32"):
        polybundle.load(path, lazy=True)


def test_old_and_new_records_mix_in_one_manifest(tmp_path) -> None:
    """Readers take each record as it comes: a 2.1 record beside a 2.2 one."""
    members = _members(FIXTURES / "torch.bundle")

    def rename(records):
        data = members["params.json"]
        records["params.json"] = {"size": len(data),
                                  "digest": f"xxh3-128:{xxhash.xxh3_128(data).hexdigest()}"}
    path = _with_records(FIXTURES / "torch.bundle", tmp_path / "mixed.bundle", rename)
    report = polybundle.verify(path)
    assert report.ok, report.problems
    assert "sha256 and xxh3-128 digests of 6 members" in report.checked


@needs_torch
def test_migrate_and_convert_write_the_digest_asked_for(tmp_path) -> None:
    source = LEGACY_DIR / "torch_dill_era_shared.zip"
    target = tmp_path / "m.bundle"
    assert polybundle.migrate(source, target, digest="sha256").written
    assert all(r["digest"].startswith("sha256:") for r in _records(target).values())
    assert not polybundle.migrate(source, target, digest="sha256").written  # idempotent
    assert polybundle.migrate(source, target).written  # another algorithm: rewritten
    assert all(r["digest"].startswith("xxh3-128:") for r in _records(target).values())
    legacy = json.loads(_members(target)["manifest.json"])["legacy"]
    assert legacy["source_sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    copy = tmp_path / "c.bundle"
    polybundle.convert(FIXTURES / "torch.bundle", copy, backend="torch", digest="sha256")
    assert all(r["digest"].startswith("sha256:") for r in _records(copy).values())
    assert polybundle.verify(copy).ok


CRC_CHECK = """
import sys, zipfile, zlib
from polybundle.format import crc
from polybundle.format.writer import ArchiveWriter
payload = bytes(range(256)) * 12289
with ArchiveWriter(sys.argv[1]) as writer:
    writer.write_bytes("w/data.bin", payload)
    writer.commit()
with zipfile.ZipFile(sys.argv[1]) as archive:
    assert archive.getinfo("w/data.bin").CRC == zlib.crc32(payload)
    assert archive.testzip() is None
print(crc.IMPLEMENTATION)
"""
"""Writes a STORED member with ArchiveWriter, checks its CRC-32, prints who computed it."""


def _crc_check(path: Path, *, block_isal: bool) -> str:
    """Run :data:`CRC_CHECK` in a fresh interpreter (``isal`` unimportable if asked)."""
    prelude = "import sys; sys.modules['isal'] = None\n" if block_isal else ""
    done = subprocess.run(
        [sys.executable, "-c", prelude + CRC_CHECK, str(path)], capture_output=True, text=True,
        env={"PYTHONPATH": str(REPO / "core"), "PATH": "/usr/bin:/bin"}, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_zip_crc_comes_from_isal_when_installed() -> None:
    """isal is a dependency: the CRC-32 of the zip headers is ISA-L's, equal to zlib's."""
    assert crc.IMPLEMENTATION == "isal"
    assert crc.crc32(b"123456789") == 0xCBF43926


def test_zip_crc_falls_back_to_zlib_without_isal(tmp_path) -> None:
    """A process where isal cannot be imported writes the same, right CRC-32 with zlib."""
    assert _crc_check(tmp_path / "b.zip", block_isal=True) == "zlib"


@needs_torch
def test_digest_benchmark_runs_at_one_mib(tmp_path, monkeypatch, capsys) -> None:
    """Smoke run of ``benchmarks/digests.py`` (no timing asserted)."""
    out = tmp_path / "digests.json"
    monkeypatch.setattr(sys, "argv", ["digests.py", "--mib", "1", "--repeats", "1",
                                      "--dir", str(tmp_path), "--json", str(out)])
    runpy.run_path(str(REPO / "benchmarks" / "digests.py"), run_name="__main__")
    seconds = json.loads(out.read_text())["seconds"]
    assert {"ArchiveWriter, xxh3-128", "polybundle.save, sha256"} <= set(seconds)
    assert "| polybundle.verify, xxh3-128 |" in capsys.readouterr().out
