"""Asynchronous checkpoints: host snapshots, one save in flight, errors, exit and SIGKILL."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import polybundle
from polybundle.api.checkpoints import INDEX_NAME, DamagedIndexWarning
from polybundle.format.writer import TEMP_MARK
from tests.conftest import needs_tensorflow, needs_torch

WORKER = Path(__file__).with_name("async_checkpoint_worker.py")
ROOT = Path(__file__).resolve().parent.parent
_BUNDLE_TEMP = re.compile(r"^\.checkpoint-(?P<step>[0-9]+)\.bundle\.")


def _trained(width: int = 64):
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.Linear(width, 4))
    opt = torch.optim.Adam(net.parameters())
    net(torch.randn(2, width)).sum().backward()
    opt.step()
    return net, opt


def _fresh(width: int = 64):
    import torch

    return torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.Linear(width, 4))


@needs_torch
def test_save_returns_a_snapshot_that_training_cannot_change(tmp_path: Path) -> None:
    import torch

    net, opt = _trained(256)
    manager = polybundle.CheckpointManager(tmp_path, async_save=True)
    weights = {k: v.clone() for k, v in net.state_dict().items()}
    moment = opt.state[net[0].weight]["exp_avg"].clone()
    manager.save(1, {"net": net}, optimizers={"net": opt}, metrics={"loss": 0.5})
    with torch.no_grad():  # training changes everything at once, while the write is in flight
        for parameter in net.parameters():
            parameter.mul_(-3.0).add_(1.0)
    opt.state[net[0].weight]["exp_avg"].fill_(7.0)
    manager.wait_until_finished()
    bundle = manager.restore(into={"net": _fresh(256)}, rng=False)
    for key, tensor in bundle.models["net"].state_dict().items():
        assert torch.equal(tensor, weights[key]), key
    slots = bundle.optimizer_state("net").slots["0.weight"]
    np.testing.assert_array_equal(slots["m"], moment.numpy())
    assert polybundle.verify(manager.latest().path).ok


@needs_tensorflow
def test_a_keras_model_takes_the_default_snapshot(tmp_path: Path) -> None:
    import keras

    def build():
        return keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(1)])

    net = build()
    net.compile(keras.optimizers.Adam(), "mse")
    x = np.random.RandomState(0).rand(8, 4).astype("float32")
    net.fit(x, x[:, :1], epochs=1, verbose=0)
    weights = [np.array(w) for w in net.get_weights()]
    moments = [np.array(v) for v in net.optimizer.variables if "momentum" in v.path]
    manager = polybundle.CheckpointManager(tmp_path, async_save=True)
    manager.save(1, {"net": net}, optimizers={"net": net.optimizer}, rng=False)
    net.set_weights([np.full_like(w, 5.0) for w in weights])  # while the write is in flight
    for variable in net.optimizer.variables:
        variable.assign(np.full(variable.shape, 9, variable.dtype))
    bundle = manager.restore(into={"net": build()})
    for restored, saved in zip(bundle.models["net"].get_weights(), weights, strict=True):
        np.testing.assert_array_equal(restored, saved)
    fresh = keras.optimizers.Adam()
    bundle.restore_optimizer("net", fresh)
    restored = [np.array(v) for v in fresh.variables if "momentum" in v.path]
    assert len(restored) == len(moments) == 4
    for ours, saved in zip(restored, moments, strict=True):
        np.testing.assert_array_equal(ours, saved)


@needs_torch
def test_one_save_in_flight_reuses_its_buffers_and_commits_like_a_sync_save(
    tmp_path: Path,
) -> None:
    net, opt = _trained()
    manager = polybundle.CheckpointManager(tmp_path / "async", keep_last=2, async_save=True)
    reference = polybundle.CheckpointManager(tmp_path / "sync", keep_last=2)
    assert manager.host_bytes() == 0 and reference.host_bytes() == 0
    for step, loss in ((1, 0.5), (2, 0.4), (3, 0.3)):
        first = manager.save(step, {"net": net}, optimizers={"net": opt},
                             metrics={"loss": loss}, rng=False)
        if step > 1:  # this save waited for the one before: it is committed and indexed
            assert (tmp_path / "async" / f"checkpoint-{step - 1:010d}.bundle").is_file()
        reference.save(step, {"net": net}, optimizers={"net": opt}, metrics={"loss": loss},
                       rng=False)
        if step == 1:
            held = manager.host_bytes()
    weights = sum(t.numel() * 4 for t in net.state_dict().values())
    assert held == manager.host_bytes() == 3 * weights  # weights, Adam m and v; reused
    assert [c.step for c in manager.checkpoints()] == [2, 3]
    assert [h["metrics"]["loss"] for h in manager.history()] == [0.5, 0.4, 0.3]
    assert first == manager.latest()
    ours = polybundle.load(first.path, lazy=True)
    theirs = polybundle.load(reference.latest().path, lazy=True)
    for name, array in theirs.tensors("net").items():
        np.testing.assert_array_equal(ours.tensors("net")[name], array)
    assert ours.manifest["members"].keys() == theirs.manifest["members"].keys()
    assert sorted(p.name for p in (tmp_path / "async").iterdir() if not p.name.startswith(".")) \
        == ["checkpoint-0000000002.bundle", "checkpoint-0000000003.bundle", INDEX_NAME]


@needs_torch
def test_a_process_forked_during_a_background_write_does_not_keep_the_directory_locked(
    tmp_path: Path,
) -> None:
    net, opt = _trained(512)  # 1 MiB of weights, 3 MiB with Adam: the write takes a while
    manager = polybundle.CheckpointManager(tmp_path, async_save=True)
    manager.save(1, {"net": net}, optimizers={"net": opt})
    child = os.fork()  # a DataLoader worker starting while the write holds the lock
    if child == 0:
        time.sleep(5)
        os._exit(0)
    try:
        manager.wait_until_finished()
        manager.save(2, {"net": net}, optimizers={"net": opt})  # the child lives on
        manager.wait_until_finished()
        assert manager.latest().step == 2
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)


def _fail_next_commit(directory: Path) -> None:
    """Make the next commit's index write fail for real: the index path is a folder."""
    (directory / INDEX_NAME).mkdir(parents=True)


@needs_torch
@pytest.mark.filterwarnings(f"ignore::{DamagedIndexWarning.__module__}.DamagedIndexWarning")
@pytest.mark.parametrize("call", ["latest", "save", "wait_until_finished", "restore", "history"])
def test_a_background_failure_is_raised_once_by_the_next_call(tmp_path: Path, call: str) -> None:
    net, _ = _trained()
    _fail_next_commit(tmp_path / "sync")
    with pytest.raises(polybundle.WriteError):  # what a synchronous save raises
        polybundle.CheckpointManager(tmp_path / "sync").save(1, {"net": net})
    _fail_next_commit(tmp_path / "async")
    manager = polybundle.CheckpointManager(tmp_path / "async", async_save=True)
    manager.save(1, {"net": net})
    calls = {
        "latest": manager.latest,
        "save": lambda: manager.save(2, {"net": net}),
        "wait_until_finished": manager.wait_until_finished,
        "restore": lambda: manager.restore(into={"net": _fresh()}),
        "history": manager.history,
    }
    with pytest.raises(polybundle.CheckpointError, match=r"background save of step 1 into") as info:
        calls[call]()
    assert isinstance(info.value.__cause__, polybundle.WriteError)
    assert "Is a directory" in str(info.value)
    (tmp_path / "async" / INDEX_NAME).rmdir()
    assert manager.latest() is None  # reported once; the failed step was never indexed
    manager.save(3, {"net": net})
    assert manager.latest().step == 3


@needs_torch
def test_a_process_that_exits_finishes_its_pending_write(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(WORKER), "exit", str(tmp_path)],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert "on disk when save() returned: False" in done.stdout  # the write was in flight
    latest = polybundle.CheckpointManager(tmp_path / "run").latest()
    assert latest is not None and latest.step == 7 and latest.metrics == {"loss": 1.0}
    bundle = polybundle.load(latest.path, into={"net": _fresh_1024()})  # verified
    assert bundle.optimizer_state("net").step == 1
    assert f"the background save of step 1 into '{tmp_path / 'broken'}' failed" in done.stderr


def _fresh_1024():
    import torch

    return torch.nn.Sequential(torch.nn.Linear(1024, 1024))


def _fresh_512():
    import torch

    return torch.nn.Sequential(torch.nn.Linear(512, 512), torch.nn.Linear(512, 512))


@needs_torch
def test_sigkill_during_a_background_write_leaves_the_previous_checkpoint(tmp_path: Path) -> None:
    rounds = 4
    supervisor = subprocess.Popen(
        [sys.executable, str(WORKER), "kill", str(tmp_path), str(rounds), "20261130"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )
    interrupted = 0
    try:
        for _ in range(rounds):
            line = supervisor.stdout.readline().split()
            assert line[0] == "killed", line
            returned = int(line[1])  # save(returned) had returned: returned - 1 was committed
            manager = polybundle.CheckpointManager(tmp_path, keep_last=2)
            latest = manager.latest()
            assert latest is not None and latest.step >= returned - 1
            bundle = polybundle.load(latest.path, into={"net": _fresh_512()})  # verifies digests
            assert bundle.optimizer_state("net").step >= 1
            assert all(c.path.is_file() for c in manager.checkpoints())
            temps = [p.name for p in tmp_path.iterdir() if TEMP_MARK in p.name]
            assert len(temps) <= 1
            cut = [int(m["step"]) for m in map(_BUNDLE_TEMP.match, temps) if m]
            if cut:  # this kill cut the write of a bundle short: the one before is the latest
                assert latest.step == cut[0] - 1, (temps, latest)
                interrupted += 1
            supervisor.stdin.write("\n")
            supervisor.stdin.flush()
        assert supervisor.wait(timeout=60) == 0
    finally:
        supervisor.kill()
    assert interrupted >= 1  # at least one kill landed in the middle of a bundle's write


@needs_torch
def test_the_async_stall_benchmark_runs(tmp_path: Path) -> None:
    from benchmarks.checkpoint_overhead import async_stall

    result = async_stall(1, 1, tmp_path)  # one 1024x1024 layer: 4 MiB of weights, 12 MiB state
    assert result["host_bytes"] == result["state_bytes"] == 3 * 4 * 2**20
    assert all(result[key] > 0 for key in ("stall_s", "torch_save_s", "steady_ratio"))
