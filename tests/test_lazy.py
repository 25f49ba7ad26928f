"""Lazy access: load(lazy=True) maps tensors from the file without a framework model."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest

import polybundle
from polybundle.format.archive import ArchiveReader
from polybundle.format.writer import ALIGNMENT
from tests.conftest import needs_tensorflow, needs_torch


def _check_lazy_equals_eager(path) -> None:
    lazy = polybundle.load(path, lazy=True)
    assert lazy.lazy and lazy.models == {}
    mapped = lazy.tensors("net")
    eager = polybundle.load(path, roles=[]).tensors("net")
    assert set(mapped) == set(eager)
    for name, array in eager.items():
        assert not mapped[name].flags.writeable
        np.testing.assert_array_equal(mapped[name], array)


@needs_torch
def test_lazy_torch_tensors_equal_eager_ones_and_are_read_only(tmp_path):
    import torch

    net = torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.Conv1d(2, 3, 3))
    path = tmp_path / "t.bundle"
    polybundle.save(path, {"net": net})
    _check_lazy_equals_eager(path)
    with pytest.raises(KeyError, match="no tensor"):
        polybundle.load(path, lazy=True).tensors("net")["missing"]


@needs_tensorflow
def test_lazy_keras_tensors_equal_eager_ones(tmp_path):
    import keras

    net = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4), keras.layers.Dense(2)])
    path = tmp_path / "k.bundle"
    polybundle.save(path, {"net": net})
    _check_lazy_equals_eager(path)


@needs_torch
def test_large_members_start_aligned_and_the_zip_stays_valid(tmp_path):
    import torch

    path = tmp_path / "t.bundle"
    polybundle.save(path, {"net": torch.nn.Linear(30, 20)})
    with zipfile.ZipFile(path) as plain:
        assert plain.testzip() is None  # every CRC is right
    with ArchiveReader(path) as archive:
        assert archive.data_offset("net/model.pth") % ALIGNMENT == 0


@needs_torch
def test_lazy_with_into_is_refused(tmp_path):
    import torch

    path = tmp_path / "t.bundle"
    polybundle.save(path, {"net": torch.nn.Linear(3, 2)})
    with pytest.raises(polybundle.PolybundleError, match="lazy"):
        polybundle.load(path, lazy=True, into={"net": torch.nn.Linear(3, 2)})


@needs_torch
def test_verification_still_catches_a_flipped_byte_when_it_runs_beside_the_load(tmp_path):
    import torch

    path = tmp_path / "t.bundle"
    polybundle.save(path, {"net": torch.nn.Linear(64, 64)})
    with ArchiveReader(path) as archive:
        offset = archive.data_offset("net/model.pth") + archive.size("net/model.pth") - 200
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(polybundle.IntegrityError):
        polybundle.load(path)
    with pytest.raises(polybundle.IntegrityError):
        polybundle.load(path, lazy=True, verify=True)
