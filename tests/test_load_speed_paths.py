"""The torch load path at memory speed: correct to the bit, verified in the same pass.

A format-2 torch bundle is read by polybundle's own reader of the torch zip,
each storage straight into its tensor, with the member's digest computed from
the same bytes as they are read (:class:`polybundle.format.verified.VerifiedMember`).
These tests check what that path must keep: every value bit for bit (dtypes,
shared storages, views), ``torch.load`` never called, a damaged byte caught
before a caller's ``into=`` model changes, and the digest check still whole
when a reader jumps around.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

import polybundle
from polybundle.format import digests
from polybundle.format.archive import ArchiveReader
from polybundle.format.verified import VerifiedMember
from polybundle.hooks.registry import get_registry

from .conftest import needs_torch

pytestmark = needs_torch


def _mixed(seed: int):
    import torch

    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Embedding(50, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 50)
    )
    net[2].weight = net[0].weight  # tied: one storage, two state_dict keys
    net.register_buffer("brain", torch.randn(7, 3).to(torch.bfloat16))
    net.register_buffer("steps", torch.arange(5, dtype=torch.int64))
    net.register_buffer("mask", torch.tensor([True, False, True]))
    return net


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[Path, object]:
    path = tmp_path_factory.mktemp("speed") / "mixed.bundle"
    net = _mixed(0)
    polybundle.save(path, {"net": net})
    return path, net


def _same(a, b) -> bool:
    import torch

    state_a, state_b = a.state_dict(), b.state_dict()
    return state_a.keys() == state_b.keys() and all(
        state_a[k].dtype == state_b[k].dtype and torch.equal(state_a[k], state_b[k])
        for k in state_a
    )


def _flip(path: Path, member: str, at: float) -> Path:
    """Flip one byte ``at`` (a fraction) of the way into ``member``; the manifest is kept."""
    with ArchiveReader(path) as archive:
        offset = archive.data_offset(member) + int(archive.size(member) * at)
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x55
    damaged = path.with_name(f"damaged-{member.replace('/', '-')}-{at}.bundle")
    damaged.write_bytes(bytes(data))
    return damaged


def test_into_is_bit_exact_and_never_calls_torch_load(saved, monkeypatch):
    import torch

    path, net = saved

    def refuse(*args, **kwargs):
        raise AssertionError("torch.load was called")

    monkeypatch.setattr(torch, "load", refuse)
    target = _mixed(1)
    assert not _same(target, net)
    loaded = polybundle.load(path, into={"net": target}).models["net"]
    assert loaded is target and _same(target, net)
    assert target[2].weight is target[0].weight  # the caller's tie is kept


def test_a_builder_gets_tensors_that_view_their_storages_as_torch_load_makes_them(tmp_path):
    import torch

    weight = torch.randn(6, 4)
    state = {"w": weight, "wt": weight.t(), "row": weight[2], "big": torch.randn(3, 5)}
    plain = tmp_path / "views.pth"
    torch.save(state, plain)
    backend = polybundle.get_backend("torch")
    with open(plain, "rb") as source:
        ours = backend._load_state_dict(source, backend.describe_stored(source, where="v"))
    theirs = torch.load(plain, weights_only=True)
    for key in state:
        assert torch.equal(ours[key], theirs[key]) and ours[key].stride() == theirs[key].stride()
    assert ours["wt"].untyped_storage().data_ptr() == ours["w"].untyped_storage().data_ptr()


@pytest.mark.parametrize("at", [0.5, 0.999])
def test_a_damaged_weight_byte_leaves_the_callers_model_untouched(saved, at):
    path, net = saved
    damaged = _flip(path, "net/model.pth", at)
    target = _mixed(2)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(polybundle.IntegrityError, match="net/model.pth"):
        polybundle.load(damaged, into={"net": target})
    assert all(v.equal(before[k]) for k, v in target.state_dict().items())


def test_a_damaged_other_member_also_stops_the_load_before_into_changes(saved, tmp_path):
    path, net = saved
    members = {}
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            members[info.filename] = archive.read(info)
    members["params.json"] = b'{"N": 5}'  # the manifest keeps the old digest
    damaged = tmp_path / "params.bundle"
    with zipfile.ZipFile(damaged, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    target = _mixed(3)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(polybundle.IntegrityError, match="params.json"):
        polybundle.load(damaged, into={"net": target})
    assert all(v.equal(before[k]) for k, v in target.state_dict().items())


def test_a_damaged_byte_is_caught_on_the_builder_path_and_without_a_builder(tmp_path):
    @polybundle.architecture("speed-mixed", backend="torch", replace=True)
    def build(config):
        return _mixed(config["seed"])

    path = tmp_path / "built.bundle"
    polybundle.save(path, {"net": polybundle.build("speed-mixed", {"seed": 5}, backend="torch")})
    assert _same(polybundle.load(path).models["net"], _mixed(5))
    damaged = _flip(path, "net/model.pth", 0.5)
    with pytest.raises(polybundle.IntegrityError, match="net/model.pth"):
        polybundle.load(damaged)
    get_registry().builders.pop(("speed-mixed", "torch"))
    with pytest.raises(polybundle.IntegrityError):  # not UnknownArchitectureError: damage wins
        polybundle.load(damaged)


def test_a_reader_that_jumps_around_is_still_checked_whole(tmp_path):
    data = bytearray(range(256)) * (5 * 2**20 // 256 * 2)  # 10 MiB: holes over GAP_LIMIT
    expected = digests.of_bytes(bytes(data), "sha256")
    data[2**20] ^= 0x55
    damaged = tmp_path / "damaged.bin"
    damaged.write_bytes(bytes(data))
    with open(damaged, "rb") as file:
        member = VerifiedMember(file.fileno(), 0, len(data), "blob", expected)
        member.seek(len(data) - 10)
        assert len(member.read(10)) == 10  # far ahead of the hashed prefix: served, not hashed
        assert member.hashed == 0 and not member.verified
        with pytest.raises(polybundle.IntegrityError, match="sha256"):
            member.finish()
        with pytest.raises(polybundle.IntegrityError):
            member.finish()  # the verdict stays
    data[2**20] ^= 0x55
    whole = tmp_path / "whole.bin"
    whole.write_bytes(bytes(data))
    with open(whole, "rb") as file:
        member = VerifiedMember(file.fileno(), 0, len(data), "blob", expected)
        member.seek(100)
        assert len(member.read(50)) == 50  # a small hole is filled in on the way
        assert member.hashed == 150
        member.finish()
        assert member.verified
