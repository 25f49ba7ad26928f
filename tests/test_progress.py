"""Progress bars: shown only when asked for and above the threshold."""

from __future__ import annotations

import pytest

import polybundle
from polybundle.api import progress
from polybundle.api.progress import progress_bar
from tests.conftest import needs_torch


def test_a_bar_is_shown_above_the_threshold():
    with progress_bar("moving", 100, enabled=True, threshold=10) as advance:
        assert advance is not progress._ignore
        advance(60)
        advance(40)


@pytest.mark.parametrize(("enabled", "total"), [(False, 10**9), (True, 10)])
def test_no_bar_when_disabled_or_small(capsys, enabled, total):
    with progress_bar("quiet", total, enabled=enabled) as advance:
        assert advance is progress._ignore
        advance(5)
    assert capsys.readouterr().err == ""


@needs_torch
def test_save_with_progress_writes_the_same_bundle(tmp_path):
    import torch

    net = torch.nn.Linear(8, 8)
    polybundle.save(tmp_path / "a.bundle", {"net": net}, progress=True)
    loaded = polybundle.load(tmp_path / "a.bundle", roles=[]).tensors("net")
    assert loaded["weight"].shape == (8, 8)


@needs_torch
def test_load_with_progress_reports_every_byte_read(tmp_path, monkeypatch):
    import contextlib

    import torch

    from polybundle.api import loading

    path = tmp_path / "p.bundle"
    polybundle.save(path, {"a": torch.nn.Linear(64, 64), "b": torch.nn.Linear(32, 8)})
    seen = {}

    @contextlib.contextmanager
    def recording_bar(description, total, *, enabled):
        seen.update(description=description, total=total, enabled=enabled, read=0)

        def advance(count):
            seen["read"] += count

        yield advance

    monkeypatch.setattr(loading, "progress_bar", recording_bar)
    bundle = polybundle.load(path, into={"a": torch.nn.Linear(64, 64), "b": torch.nn.Linear(32, 8)},
                             progress=True)
    members = bundle.manifest["members"]
    weights = members["a/model.pth"]["size"] + members["b/model.pth"]["size"]
    assert seen["enabled"] and seen["description"] == "loading p.bundle"
    assert seen["total"] == weights + sum(m["size"] for m in members.values())
    assert seen["read"] >= weights  # torch.load re-reads a few header bytes
