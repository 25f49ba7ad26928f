"""A damaged or hostile checkpoint index: never followed outside the folder, never fatal.

Issue 10, items 4 and 7: ``checkpoints.json`` used to be trusted. A record's
``file`` of ``'../x'`` or ``'/etc/passwd'`` was opened as the checkpoint, and a
record with a wrong type raised ``KeyError``/``TypeError`` on every call, save
included, so training could not checkpoint any more. Now every record is
validated; a damaged index gives a ``DamagedIndexWarning`` and the folder's
bundles that pass ``polybundle.verify`` are used instead, and the next save
writes a good index.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import polybundle
from polybundle.api.checkpoints import INDEX_NAME, DamagedIndexWarning, index_problem
from tests.conftest import REPO, needs_torch


def _net(seed: int):
    import torch

    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 1))


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A run folder with checkpoints 1, 2, 3, a damaged bundle 9 and a bundle outside, 'x'."""
    pytest.importorskip("torch")
    root = tmp_path_factory.mktemp("template")
    folder = root / "ckpt"
    manager = polybundle.CheckpointManager(folder, keep_last=3)
    for step in (1, 2, 3):
        manager.save(step, {"net": _net(step)}, metrics={"loss": 1.0 / step}, rng=False)
    (folder / "checkpoint-0000000009.bundle").write_bytes(b"PK\x03\x04 not a bundle")
    polybundle.save(root / "x", {"net": _net(99)})  # what '../x' would load
    return root


def _good(template: Path) -> dict:
    return json.loads((template / "ckpt" / INDEX_NAME).read_bytes())


def _record(template: Path, **change) -> bytes:
    document = _good(template)
    document["checkpoints"][-1].update(change)
    return json.dumps(document).encode()


def _drop_file_key(template: Path) -> bytes:
    document = _good(template)
    del document["checkpoints"][0]["file"]
    return json.dumps(document).encode()


HOSTILE = {
    "parent file": lambda t: _record(t, file="../x"),
    "absolute file": lambda t: _record(t, file="/etc/passwd"),
    "file through a folder": lambda t: _record(t, file="checkpoint-0000000003.bundle/../../x"),
    "file in a subfolder": lambda t: _record(t, file="sub/checkpoint-0000000003.bundle"),
    "empty file": lambda t: _record(t, file=""),
    "file not a string": lambda t: _record(t, file=["x"]),
    "step a string": lambda t: _record(t, step="3"),
    "step a bool": lambda t: _record(t, step=True),
    "step negative": lambda t: _record(t, step=-3),
    "step a float": lambda t: _record(t, step=3.0),
    "metrics a list": lambda t: _record(t, metrics=[1.0]),
    "metric a string": lambda t: _record(t, metrics={"loss": "low"}),
    "metric a bool": lambda t: _record(t, metrics={"loss": True}),
    "metric past float range": lambda t: _record(t, metrics={"loss": 10**400}),
    "created a number": lambda t: _record(t, created=5),
    "extra key": lambda t: _record(t, evil=1),
    "missing key": _drop_file_key,
    "record not an object": lambda t: json.dumps({**_good(t), "checkpoints": [7]}).encode(),
    "checkpoints not a list": lambda t: json.dumps({**_good(t), "checkpoints": {}}).encode(),
    "history record bad": lambda t: json.dumps({**_good(t), "history": [{"step": "a"}]}).encode(),
    "step twice": lambda t: json.dumps(
        {**_good(t), "checkpoints": _good(t)["checkpoints"] * 2}
    ).encode(),
    "wrong format": lambda t: json.dumps({**_good(t), "format": "other"}).encode(),
    "a list": lambda t: b"[]",
    "truncated JSON": lambda t: (t / "ckpt" / INDEX_NAME).read_bytes()[:100],
    "empty": lambda t: b"",
    "not UTF-8": lambda t: b"\xff\xfe{}",
    "NaN metric": lambda t: json.dumps(_good(t)).replace("0.5", "NaN").encode(),
    "duplicate key": lambda t: json.dumps(_good(t)).replace(
        '{"format"', '{"history": 1, "format"', 1
    ).encode(),
    "deep nesting": lambda t: b"[" * 200_000 + b"]" * 200_000,
    "deep inside a record": lambda t: _record(t, metrics={"a": 1}).replace(
        b'{"a": 1}', b'{"a": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    ),
    "5000-digit step": lambda t: _record(t, step=0).replace(
        b'"step": 0', b'"step": ' + b"9" * 5000
    ),
}


def _steps(manager: polybundle.CheckpointManager) -> list[int]:
    return [checkpoint.step for checkpoint in manager.checkpoints()]


def _same_weights(model, seed: int) -> bool:
    import torch

    expected = _net(seed).state_dict()
    return all(torch.equal(expected[k], v) for k, v in model.state_dict().items())


@needs_torch
@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_damaged_index_falls_back_to_the_verified_bundles_and_saving_still_works(
    template: Path, tmp_path: Path, case: str
) -> None:
    root = tmp_path / "run"
    shutil.copytree(template, root)
    folder = root / "ckpt"
    (folder / INDEX_NAME).write_bytes(HOSTILE[case](template))
    manager = polybundle.CheckpointManager(folder, keep_last=3)
    damaged = r"checkpoints\.json' is damaged .*pass polybundle\.verify instead"
    with pytest.warns(DamagedIndexWarning, match=damaged):
        latest = manager.latest()
    assert latest.step == 3 and latest.path == folder / "checkpoint-0000000003.bundle"
    with pytest.warns(DamagedIndexWarning):
        assert _steps(manager) == [1, 2, 3]  # not the damaged bundle 9, not '../x'
    with pytest.warns(DamagedIndexWarning):
        assert [h["step"] for h in manager.history()] == [1, 2, 3]
    with pytest.warns(DamagedIndexWarning):
        bundle = manager.restore(into={"net": _net(0)}, rng=False)
    assert bundle.path == latest.path and _same_weights(bundle.models["net"], 3)
    with pytest.warns(DamagedIndexWarning):
        manager.save(4, {"net": _net(4)}, metrics={"loss": 0.25}, rng=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the index is good again
        assert index_problem(json.loads((folder / INDEX_NAME).read_bytes())) is None
        assert _steps(manager) == [2, 3, 4]
        assert manager.history()[-1] == {"step": 4, "metrics": {"loss": 0.25},
                                          "created": manager.latest().created}
        assert _same_weights(manager.restore(into={"net": _net(0)}).models["net"], 4)
    assert polybundle.verify(root / "x").ok  # the file outside was never touched


@needs_torch
def test_an_index_that_is_a_fifo_or_a_folder_does_not_hang_and_falls_back(
    template: Path, tmp_path: Path
) -> None:
    root = tmp_path / "run"
    shutil.copytree(template, root)
    index = root / "ckpt" / INDEX_NAME
    index.unlink()
    index.mkdir()
    script = (
        "import os, sys, warnings, polybundle\n"
        "manager = polybundle.CheckpointManager(sys.argv[1])\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    print(manager.latest().step, len(caught), str(caught[0].message))\n"
    )
    run = [sys.executable, "-c", script, str(root / "ckpt")]
    as_folder = subprocess.run(run, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert as_folder.stdout.startswith("3 1 "), as_folder.stderr[-2000:]
    assert "not a regular file" in as_folder.stdout
    index.rmdir()
    __import__("os").mkfifo(index)
    as_fifo = subprocess.run(run, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert as_fifo.stdout.startswith("3 1 "), as_fifo.stderr[-2000:]
    assert "not a regular file" in as_fifo.stdout


def test_index_problem_names_what_is_wrong() -> None:
    good = {"format": "polybundle-checkpoints", "version": 1, "history": [], "checkpoints": [
        {"step": 1, "file": "checkpoint-0000000001.bundle", "metrics": {"a": 1}, "created": "x"}
    ]}
    assert index_problem(good) is None
    bad = json.loads(json.dumps(good))
    bad["checkpoints"][0]["file"] = "../x"
    assert "'../x' is not a plain checkpoint-<step>.bundle name" in index_problem(bad)
    bad["checkpoints"][0].update(file="checkpoint-0000000001.bundle", step="1")
    assert "step is '1'; expected an int" in index_problem(bad)
