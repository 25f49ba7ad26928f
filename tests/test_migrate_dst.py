"""``polybundle migrate`` on a format-2 bundle (issue 16 item 6).

With a destination, a format-2 source is checked and written there as a
verified copy; without one (or with the source itself) it is reported as
already up to date and nothing is written. Bundles are made by migrating the
real legacy fixtures, so no framework is needed.
"""

from __future__ import annotations

import shutil

import pytest

import polybundle
from polybundle.errors import IntegrityError, PolybundleError
from polybundle.tools.cli import main

from .conftest import LEGACY_DIR, snapshot_tree

TORCH_ERA = LEGACY_DIR / "torch_dill_era_shared.zip"


@pytest.fixture
def bundle(tmp_path):
    """A format-2 bundle migrated from the real PyTorch dill-era archive."""
    path = tmp_path / "src" / "run.bundle"
    path.parent.mkdir()
    assert polybundle.migrate(TORCH_ERA, path).written
    return path


def test_migrate_format_two_with_destination_writes_a_verified_copy(bundle, tmp_path):
    target = tmp_path / "out" / "copy.bundle"
    target.parent.mkdir()
    report = polybundle.migrate(bundle, target)
    assert report.written
    assert target.read_bytes() == bundle.read_bytes()
    assert polybundle.verify(target).ok
    assert "written" in report.lines()[0] and "nothing written" not in report.lines()[0]
    assert snapshot_tree(target.parent) == {"copy.bundle": bundle.stat().st_size}
    again = polybundle.migrate(bundle, target)  # same bytes already there: nothing to do
    assert not again.written and "already up to date" in again.lines()[0]


def test_migrate_format_two_without_destination_writes_nothing(bundle):
    before = snapshot_tree(bundle.parent)
    for report in (polybundle.migrate(bundle), polybundle.migrate(bundle, bundle)):
        assert not report.written
        assert "already up to date, nothing written" in report.lines()[0]
    assert snapshot_tree(bundle.parent) == before


def test_migrate_cli_with_destination_writes_the_file(bundle, tmp_path, capsys):
    target = tmp_path / "cli.bundle"
    assert main(["migrate", str(bundle), str(target)]) == 0
    assert "written" in capsys.readouterr().out
    assert target.read_bytes() == bundle.read_bytes()
    assert main(["migrate", str(bundle)]) == 0
    assert "already up to date" in capsys.readouterr().out


def test_migrate_damaged_format_two_writes_nothing(bundle, tmp_path):
    damaged = tmp_path / "damaged.bundle"
    shutil.copy(bundle, damaged)
    data = bytearray(damaged.read_bytes())
    with polybundle.format.archive.ArchiveReader(damaged) as archive:
        offset = archive.data_offset("autoencoder/model.pth") + 200
    data[offset] ^= 0xFF
    damaged.write_bytes(bytes(data))
    target = tmp_path / "out.bundle"
    with pytest.raises(IntegrityError):
        polybundle.migrate(damaged, target)
    assert not target.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_migrate_legacy_without_destination_says_to_give_one(tmp_path):
    with pytest.raises(PolybundleError, match="give a destination"):
        polybundle.migrate(TORCH_ERA)
