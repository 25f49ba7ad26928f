"""Sharded bundles through torch.distributed.checkpoint: FSDP2 on CPU with gloo, real processes.

One module-scoped run spawns 3 ranks (``tests/dist_worker.py``): ranks 0 and 1
train and save (a DCP save, an async save, the gathered full states), all 3 load
and train on, then ranks 0 and 1 save again while rank 1 is killed. The tests read
what they left, in this process: a 1-rank DCP load,
``polybundle.load`` (eager, lazy, into Keras), ``inspect`` and ``verify`` with
torch blocked, and ``polybundle convert`` to a single-file bundle.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import polybundle
from polybundle.api.transfer import plan_bundle
from polybundle.errors import FormatError, IntegrityError, UnsafeContentError
from polybundle.tools.cli import main
from tests import dist_worker
from tests.conftest import REPO, needs_tensorflow, needs_torch
from tests.test_no_frameworks import BLOCKER

pytestmark = needs_torch
TIMEOUT = 240  # seconds for one group of ranks; a hung collective fails the test, never CI


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _spawn(world: int, out: Path) -> list[tuple[int, str]]:
    """Run the ``world`` ranks of the worker; return each one's exit status and output."""
    port = str(_free_port())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO), str(REPO / "core"), str(REPO / "backends"), os.environ.get("PYTHONPATH", "")]
    )}
    ranks = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.dist_worker", str(rank), port, str(out)], cwd=REPO,
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for rank in range(world)
    ]
    results = []
    try:
        for process in ranks:
            output, _ = process.communicate(timeout=TIMEOUT)
            results.append((process.returncode, output[-4000:]))
    finally:
        for process in ranks:
            if process.poll() is None:
                process.kill()
    return results


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder the 2-rank saves and the 3-rank loads left behind (3 processes in all)."""
    out = tmp_path_factory.mktemp("dist")
    ranks = _spawn(3, out)
    assert [code for code, _ in ranks] == [0, 17, 0], ranks  # rank 1 died on purpose, mid-save
    return out


def _full(out: Path, name: str = "full1.pt") -> dict:
    import torch

    return torch.load(out / name, weights_only=True)


def test_two_ranks_save_three_ranks_load_bit_for_bit(run):
    report = json.loads((run / "load3.json").read_text())
    assert report["ck1"] == {"same_keys": True, "bitwise": True, "max_abs": 0.0}
    assert report["ck_async"] == report["ck1"]  # dcp.async_save wrote the same state


def test_training_resumed_after_resharding_equals_the_uninterrupted_run(run):
    report = json.loads((run / "load3.json").read_text())
    assert report["resumed"] == {"same_keys": True, "bitwise": True, "max_abs": 0.0}


def test_one_process_dcp_load_without_a_process_group(run):
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    from polybundle_torch.distributed import BundleReader

    model = dist_worker.torch_mlp(dist_worker.CONFIG)
    optimizer = torch.optim.Adam(model.parameters(), lr=dist_worker.PARAMS["lr"])
    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optim": optim_state}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "no process group: one process"
        dcp.load(state, storage_reader=BundleReader(run / "ck1"), no_dist=True)
    set_state_dict(model, optimizer, model_state_dict=state["model"],
                   optim_state_dict=state["optim"])
    model_state, optim_state = get_state_dict(model, optimizer)
    assert dist_worker.differences({"model": model_state, "optim": optim_state},
                                   _full(run))["bitwise"]


def test_polybundle_load_consolidates_and_builds_the_model(run):
    full = _full(run)["model"]
    bundle = polybundle.load(run / "ck1")
    assert bundle.params == dist_worker.PARAMS and bundle.roles == ["model"]
    assert dist_worker.differences(bundle.models["model"].state_dict(), full)["bitwise"]
    lazy = polybundle.load(run / "ck1", lazy=True).tensors("model")
    assert sorted(lazy) == sorted(full)
    for name, tensor in full.items():
        assert not lazy[name].flags.writeable
        np.testing.assert_array_equal(lazy[name], tensor.numpy())


def test_inspect_and_verify_work_with_torch_blocked(run):
    code = f"""
import json, sys
import polybundle
from polybundle.tools.cli import main
report = polybundle.inspect({str(run / "ck1")!r})
checked = polybundle.verify({str(run / "ck1")!r})
status = main(["verify", {str(run / "ck1")!r}])
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "tensorflow", "keras"))
print(json.dumps({{"loaded": loaded, "rows": [[t["name"], t["shape"]] for t in report["tensors"]],
                  "ok": checked.ok, "status": status}}))
"""
    result = subprocess.run([sys.executable, "-c", BLOCKER + code], capture_output=True,
                            text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary == {
        "loaded": [], "ok": True, "status": 0,
        "rows": [["0.weight", [16, 8]], ["0.bias", [16]], ["2.weight", [4, 16]], ["2.bias", [4]]],
    }


@needs_tensorflow
def test_sharded_torch_bundle_loads_into_keras(run):
    plan = plan_bundle(run / "ck1", "tensorflow")["roles"][0]
    assert [row["detail"] for row in plan["rows"]] == [
        "transpose (1, 0)", "identity", "transpose (1, 0)", "identity"]
    import torch

    x = dist_worker.batch()[0]
    source = polybundle.load(run / "ck1").models["model"]
    keras_model = polybundle.load(run / "ck1", backend="tensorflow").models["model"]
    with torch.no_grad():
        expected = source(x).numpy()
    np.testing.assert_allclose(keras_model(x.numpy()).numpy(), expected, rtol=1e-5, atol=1e-6)


def test_cli_convert_writes_a_single_file_bundle(run, tmp_path):
    target = tmp_path / "one.bundle"
    status = main(["--import", "tests.dist_worker", "convert", str(run / "ck1"), str(target),
                   "--to", "torch"])
    assert status == 0 and target.is_file()
    bundle = polybundle.load(target)
    assert bundle.params == dist_worker.PARAMS
    assert dist_worker.differences(bundle.models["model"].state_dict(),
                                   _full(run)["model"])["bitwise"]


def test_a_rank_killed_mid_save_leaves_no_bundle_and_the_previous_one_intact(run):
    assert (run / "killed-rank0.txt").exists()  # rank 0's save failed, it did not hang
    assert not (run / "ck_killed" / "manifest.json").exists()
    with pytest.raises(FormatError, match="without manifest.json"):
        polybundle.load(run / "ck_killed")
    assert not polybundle.verify(run / "ck_killed").ok
    assert polybundle.verify(run / "ck1").ok
    assert dist_worker.differences(polybundle.load(run / "ck1").models["model"].state_dict(),
                                   _full(run)["model"])["bitwise"]


def test_a_damaged_or_added_file_is_refused(run, tmp_path):
    copy = tmp_path / "ck"
    shutil.copytree(run / "ck1", copy)
    part = copy / "parts" / "rank-00001.safetensors"
    data = bytearray(part.read_bytes())
    data[-1] ^= 0xFF  # a bit of the last tensor's data
    part.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="rank-00001"):
        polybundle.load(copy)
    with pytest.raises(IntegrityError, match="rank-00001"):
        polybundle.load(copy, lazy=True).tensors("model")  # checked before anything is mapped
    owned = dist_worker.torch_mlp(dist_worker.CONFIG)
    before = {name: tensor.clone() for name, tensor in owned.state_dict().items()}
    with pytest.raises(IntegrityError, match="rank-00001"):
        polybundle.load(copy, into={"model": owned})
    assert dist_worker.differences(owned.state_dict(), before)["bitwise"]  # left as it was
    report = polybundle.verify(copy)
    assert not report.ok and "IntegrityError" in report.problems[0]
    shutil.copy(run / "ck1" / "parts" / "rank-00001.safetensors", part)
    (copy / "parts" / "extra.bin").write_bytes(b"x")
    with pytest.raises(UnsafeContentError, match="extra.bin"):
        polybundle.load(copy, lazy=True)


def test_the_docs_show_the_code_the_ranks_run():
    """docs/distributed.md's FSDP2 example is the worker's code, character for character."""
    text = (REPO / "docs" / "distributed.md").read_text(encoding="utf-8")
    blocks = re.findall(r"<!-- source: tests/dist_worker.py (\w+) -->\n```python\n(.*?)\n```",
                        text, re.S)
    assert [name for name, _ in blocks] == [
        "torch_mlp", "sharded_model", "save_checkpoint", "load_checkpoint"]
    for name, block in blocks:
        assert block == inspect.getsource(getattr(dist_worker, name)).rstrip(), name
