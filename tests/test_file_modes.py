"""Bundles honour the umask like any file a tool writes; ``mode=`` keeps them private.

Issue 17 item 4.

Before, every bundle (save, convert, migrate, checkpoints) was created 0600
whatever the umask: the temporary file's mode was kept through the rename.
Each test sets the process umask and puts it back.
"""

from __future__ import annotations

import os
import stat

import pytest
import torch

import polybundle
from polybundle.errors import PolybundleError
from polybundle.format.writer import ArchiveWriter, atomic_write_bytes, current_umask, file_mode


@pytest.fixture
def umask():
    """Set the process umask with ``umask(value)``; the old one comes back after the test."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


def permissions(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def net():
    torch.manual_seed(0)
    return torch.nn.Linear(3, 2)


@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)],
                         ids=["umask022", "umask077", "umask002"])
def test_save_follows_the_umask(umask, net, tmp_path, mask, expected):
    umask(mask)
    polybundle.save(tmp_path / "run.bundle", {"net": net})
    assert oct(permissions(tmp_path / "run.bundle")) == oct(expected)
    assert current_umask() == mask  # read without changing it


def test_save_mode_makes_a_private_bundle_under_umask_022(umask, net, tmp_path):
    umask(0o022)
    polybundle.save(tmp_path / "private.bundle", {"net": net}, mode=0o600)
    assert oct(permissions(tmp_path / "private.bundle")) == "0o600"
    polybundle.save(tmp_path / "shared.bundle", {"net": net}, mode=0o640)  # as given, not masked
    assert oct(permissions(tmp_path / "shared.bundle")) == "0o640"
    assert polybundle.verify(tmp_path / "private.bundle").ok


def test_replacing_a_bundle_gives_the_new_mode(umask, net, tmp_path):
    umask(0o022)
    target = tmp_path / "run.bundle"
    polybundle.save(target, {"net": net}, mode=0o600)
    polybundle.save(target, {"net": net})
    assert oct(permissions(target)) == "0o644"


@pytest.mark.parametrize("mode", [0o4755, -1, 0o1000, "600", 6.0, True], ids=repr)
def test_a_bad_mode_is_refused_before_anything_is_written(umask, net, tmp_path, mode):
    with pytest.raises(PolybundleError, match="expected permission bits from 0 to 0o777"):
        polybundle.save(tmp_path / "run.bundle", {"net": net}, mode=mode)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(PolybundleError, match="mode=0o600 for a private file"):
        polybundle.CheckpointManager(tmp_path / "ckpt", mode=mode)


def test_the_temporary_file_stays_private_until_the_rename(umask, tmp_path):
    umask(0o000)
    target = tmp_path / "out.bundle"
    with ArchiveWriter(target) as writer:
        writer.write_bytes("params.json", b"{}")
        assert oct(permissions(writer.temp_path)) == "0o600"
        assert writer.mode == 0o666
        writer.commit()
    assert oct(permissions(target)) == "0o666"


@pytest.mark.parametrize(("mask", "mode", "expected"),
                         [(0o022, None, 0o644), (0o077, None, 0o600), (0o022, 0o600, 0o600)],
                         ids=["umask022", "umask077", "mode600"])
def test_checkpoints_and_their_index(umask, net, tmp_path, mask, mode, expected):
    umask(mask)
    manager = polybundle.CheckpointManager(tmp_path / "ckpt", keep_last=1, mode=mode)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    for step in (1, 2):
        checkpoint = manager.save(step, {"net": net}, optimizers={"net": optimizer},
                                  metrics={"loss": 1 / step})
        assert oct(permissions(checkpoint.path)) == oct(expected)
        assert oct(permissions(manager.index_path)) == oct(expected)
    assert [c.step for c in manager.checkpoints()] == [2]


def test_atomic_write_bytes_mode(umask, tmp_path):
    umask(0o022)
    atomic_write_bytes(tmp_path / "a.json", b"{}")
    atomic_write_bytes(tmp_path / "b.json", b"{}", mode=0o600)
    assert (oct(permissions(tmp_path / "a.json")), oct(permissions(tmp_path / "b.json"))) == (
        "0o644", "0o600")
    assert file_mode(None) == 0o644 and file_mode(0o600) == 0o600


@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o077, 0o600)],
                         ids=["umask022", "umask077"])
def test_convert_output_follows_the_umask(umask, net, tmp_path, mask, expected):
    polybundle.architecture("file-modes-linear", backend="torch", replace=True)(
        lambda config: torch.nn.Linear(3, 2))
    umask(mask)
    source = tmp_path / "source.bundle"
    polybundle.save(source, {"net": net}, architectures={"net": ("file-modes-linear", {})})
    polybundle.convert(source, tmp_path / "copy.bundle", backend="torch")
    assert oct(permissions(tmp_path / "copy.bundle")) == oct(expected)


@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o077, 0o600)],
                         ids=["umask022", "umask077"])
def test_migrate_outputs_follow_the_umask(umask, net, tmp_path, mask, expected):
    umask(mask)
    plain = tmp_path / "weights.pth"
    torch.save(net.state_dict(), plain)
    assert polybundle.migrate(plain, tmp_path / "plain.bundle").written  # a rewrite
    assert oct(permissions(tmp_path / "plain.bundle")) == oct(expected)
    assert polybundle.migrate(tmp_path / "plain.bundle", tmp_path / "copy.bundle").written
    assert oct(permissions(tmp_path / "copy.bundle")) == oct(expected)  # a verified copy
