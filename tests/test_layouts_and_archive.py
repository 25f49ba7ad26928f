"""Layout tags, the checked zip reader and the atomic writer."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest

import polybundle
from polybundle.format.archive import ArchiveReader, check_member_name
from polybundle.format.writer import ArchiveWriter
from polybundle.model.layouts import conv_tag, permutation
from tests.conftest import snapshot_tree


def test_permutations_follow_the_tags():
    torch_kernel = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)  # out,in,h,w
    keras_kernel = np.transpose(torch_kernel, permutation("out,in,h,w", "h,w,in,out"))
    assert keras_kernel.shape == (4, 5, 3, 2)
    back = np.transpose(keras_kernel, permutation("h,w,in,out", "out,in,h,w"))
    assert np.array_equal(back, torch_kernel)
    assert permutation(
        conv_tag(1, channels_first=True, transposed=True),
        conv_tag(1, channels_first=False, transposed=True),
    ) == (2, 1, 0)
    with pytest.raises(polybundle.PolybundleError, match="same axes"):
        permutation("out,in", "h,w,in,out")
    with pytest.raises(polybundle.PolybundleError):
        permutation("opaque", "opaque")


@pytest.mark.parametrize(
    "name", ["../x", "/abs", "C:/x", "a\\b", "a/../b", "a//b", "nul\x00", "./a"]
)
def test_member_names_that_escape_are_refused(name):
    with pytest.raises(polybundle.UnsafeContentError):
        check_member_name(name)


def test_reader_refuses_duplicates_and_symlinks(tmp_path):
    dup = tmp_path / "dup.zip"
    with zipfile.ZipFile(dup, "w") as zf:
        zf.writestr("manifest.json", "{}")
        with pytest.warns(UserWarning):
            zf.writestr("manifest.json", "{}")
    with pytest.raises(polybundle.UnsafeContentError, match="twice"):
        ArchiveReader(dup)

    link = tmp_path / "link.zip"
    with zipfile.ZipFile(link, "w") as zf:
        info = zipfile.ZipInfo("net/model.pth")
        info.external_attr = 0o120777 << 16
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(polybundle.UnsafeContentError, match="symlink"):
        ArchiveReader(link)


def test_stored_members_are_read_through_a_range(tmp_path):
    path = tmp_path / "a.zip"
    payload = bytes(range(256)) * 100
    with ArchiveWriter(path) as writer:
        record = writer.write_bytes("w/data.bin", payload)
        writer.write_bytes("small.json", b"{}", compress=True)
        writer.commit()
    with ArchiveReader(path) as archive:
        stream = archive.open("w/data.bin")
        stream.seek(1000)
        assert stream.read(10) == payload[1000:1010]
        assert archive.digest("w/data.bin") == record.digest
        assert archive.read("small.json") == b"{}"
        with pytest.raises(polybundle.UnsafeContentError, match="declares"):
            archive.read("w/data.bin", limit=10)


def test_writer_abort_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), ArchiveWriter(tmp_path / "x.bundle") as writer:
        writer.write_bytes("a", b"1")
        raise RuntimeError("stop")
    assert snapshot_tree(tmp_path) == {}
