"""CheckpointManager: retention, history, restore, bad input, and SIGKILL crash safety."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import polybundle
from polybundle.format.writer import TEMP_MARK
from polybundle.tools.cli import main as cli_main
from tests.conftest import needs_torch, snapshot_tree

CRASH_SUPERVISOR = """
import os, random, signal, sys, tempfile, time
import torch, polybundle

directory, rounds, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)
torch.set_num_threads(1)  # no thread pool to inherit across fork
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.Linear(256, 256))
opt = torch.optim.Adam(net.parameters())
with tempfile.TemporaryDirectory() as warm:  # load plugins and code paths once, before forking
    polybundle.CheckpointManager(warm).save(0, {"net": net}, optimizers={"net": opt})
for _ in range(rounds):
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the saving process: checkpoints in a loop until killed
        os.close(read_end)
        manager = polybundle.CheckpointManager(directory, keep_last=2)
        latest = manager.latest()
        step = 0 if latest is None else latest.step + 1
        while True:
            net(torch.randn(4, 256)).sum().backward()
            opt.step()
            manager.save(step, {"net": net}, optimizers={"net": opt}, metrics={"loss": 1.0})
            os.write(write_end, b"s")
            step += 1
    os.close(write_end)
    os.read(read_end, 1)  # one checkpoint committed; kill at a random moment after it
    time.sleep(rng.uniform(0.0, 0.3))
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    os.close(read_end)
    print("killed", flush=True)
    sys.stdin.readline()  # the test has checked the directory
"""


def _net():
    import torch

    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 1))


@needs_torch
def test_retention_keeps_last_and_best_and_history_keeps_every_step(tmp_path: Path) -> None:
    import torch

    net = _net()
    opt = torch.optim.Adam(net.parameters())
    manager = polybundle.CheckpointManager(tmp_path, keep_last=2, keep_best=("val_loss", "min"))
    losses = {1: 0.5, 2: 0.2, 3: 0.4, 4: 0.3, 5: 0.6, 6: 0.45}
    for step, loss in losses.items():
        manager.save(step, {"net": net}, optimizers={"net": opt}, metrics={"val_loss": loss})
    bundles = sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".bundle")
    assert bundles == [f"checkpoint-{s:010d}.bundle" for s in (2, 5, 6)]
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == sorted(
        [*bundles, "checkpoints.json"]
    )
    assert [h["step"] for h in manager.history()] == [1, 2, 3, 4, 5, 6]
    assert [h["metrics"]["val_loss"] for h in manager.history()] == list(losses.values())
    assert [c.step for c in manager.checkpoints()] == [2, 5, 6]
    assert manager.latest().step == 6
    assert manager.best().step == 2
    assert manager.best("val_loss", "max").step == 5
    assert manager.restore(step=5, into={"net": _net()}, rng=False).optimizer_state("net").step == 0
    with pytest.raises(polybundle.CheckpointError, match=r"step 3.*retained steps: \[2, 5, 6\]"):
        manager.restore(step=3)


@needs_torch
def test_keep_best_count_and_max_mode(tmp_path: Path) -> None:
    manager = polybundle.CheckpointManager(tmp_path, keep_last=1, keep_best=("acc", "max", 2))
    for step, acc in enumerate([0.1, 0.9, 0.5, 0.8, 0.2]):
        manager.save(step, {"net": _net()}, metrics={"acc": acc}, rng=False)
    assert [c.step for c in manager.checkpoints()] == [1, 3, 4]
    assert manager.best().metrics == {"acc": 0.9}


@needs_torch
def test_saving_a_step_again_replaces_it(tmp_path: Path) -> None:
    manager = polybundle.CheckpointManager(tmp_path, keep_last=3)
    manager.save(1, {"net": _net()}, metrics={"loss": 2.0})
    manager.save(1, {"net": _net()}, metrics={"loss": 1.0})
    assert [(h["step"], h["metrics"]) for h in manager.history()] == [(1, {"loss": 1.0})]
    assert len(manager.checkpoints()) == 1


@needs_torch
@pytest.mark.parametrize(
    ("kwargs", "save_kwargs", "match"),
    [
        ({"keep_last": 0}, None, "keep_last"),
        ({"keep_best": ("loss", "lowest")}, None, "keep_best"),
        ({}, {"step": -1}, "step"),
        ({}, {"metrics": {"loss": float("nan")}}, "finite"),
        ({}, {"metrics": {"loss": 10**400}}, "finite"),
    ],
)
def test_bad_input_is_refused_and_writes_nothing(tmp_path, kwargs, save_kwargs, match) -> None:
    before = snapshot_tree(tmp_path)
    with pytest.raises(polybundle.CheckpointError, match=match):
        manager = polybundle.CheckpointManager(tmp_path / "ckpt", **kwargs)
        arguments = {"step": 1, "metrics": None, **(save_kwargs or {})}
        manager.save(arguments["step"], {"net": _net()}, metrics=arguments["metrics"])
    assert snapshot_tree(tmp_path) == before


def test_empty_directory_has_no_latest_and_restore_says_so(tmp_path: Path) -> None:
    manager = polybundle.CheckpointManager(tmp_path / "none")
    assert manager.latest() is None and manager.history() == []
    with pytest.raises(polybundle.CheckpointError, match="no checkpoint"):
        manager.restore()


@needs_torch
def test_cli_lists_checkpoints_with_metrics(tmp_path: Path, capsys) -> None:
    manager = polybundle.CheckpointManager(tmp_path, keep_last=1)
    for step in (10, 20):
        manager.save(step, {"net": _net()}, metrics={"loss": step / 100}, rng=False)
    assert cli_main(["checkpoints", str(tmp_path), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["step"], r["metrics"], r["file"]) for r in rows] == [
        (10, {"loss": 0.1}, None),
        (20, {"loss": 0.2}, "checkpoint-0000000020.bundle"),
    ]
    assert cli_main(["checkpoints", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "pruned" in text and "(latest)" in text and "1 retained of 2 saved" in text


@needs_torch
def test_sigkill_at_random_moments_never_leaves_a_half_checkpoint(tmp_path: Path) -> None:
    rounds = 20
    supervisor = subprocess.Popen(
        [sys.executable, "-c", CRASH_SUPERVISOR, str(tmp_path), str(rounds), "20240611"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        for _ in range(rounds):
            assert supervisor.stdout.readline().strip() == "killed"
            manager = polybundle.CheckpointManager(tmp_path, keep_last=2)
            latest = manager.latest()
            assert latest is not None and latest.path.is_file()
            bundle = polybundle.load(latest.path, into={"net": _net_256()})  # verifies sha256
            assert bundle.optimizer_state("net").step >= 1
            assert all(c.path.is_file() for c in manager.checkpoints())
            # only the writer killed last may have left a temporary file: each new writer's
            # first save removed those of the writers killed before
            assert len([p for p in tmp_path.iterdir() if TEMP_MARK in p.name]) <= 1
            supervisor.stdin.write("\n")
            supervisor.stdin.flush()
        assert supervisor.wait(timeout=60) == 0
    finally:
        supervisor.kill()
    assert len(manager.history()) >= rounds


def _net_256():
    import torch

    return torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.Linear(256, 256))


PRUNING_WRITER = """
import sys, torch, polybundle
torch.manual_seed(0)
net = torch.nn.Linear(64, 64)
opt = torch.optim.SGD(net.parameters(), lr=0.1)
manager = polybundle.CheckpointManager(sys.argv[1], keep_last=1)
step = 0
while True:
    manager.save(step, {"net": net}, optimizers={"net": opt}, metrics={"loss": 1.0})
    step += 1
"""

LOOPING_READER = """
import json, sys, time, torch, polybundle
manager = polybundle.CheckpointManager(sys.argv[1], keep_last=1)
net = torch.nn.Linear(64, 64)
errors, reads, steps = [], 0, set()
start = time.monotonic()
while manager.latest() is None:  # the writer is starting
    assert time.monotonic() < start + 120, "the writer saved nothing"
    time.sleep(0.01)
# read until 10 reads have seen 3 steps (a loaded machine only makes this slower), or give up
end = time.monotonic() + float(sys.argv[2])
while (reads < 10 or len(steps) < 3) and time.monotonic() < end:
    try:
        latest = manager.latest()
        bundle = manager.restore(into={"net": net})  # the latest again, RNG state too
        steps.add(latest.step)
        reads += 1
    except Exception as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
print(json.dumps({"reads": reads, "steps": len(steps), "errors": errors[:3],
                  "count": len(errors)}))
"""


@needs_torch
def test_readers_never_miss_a_checkpoint_while_keep_last_1_prunes(tmp_path: Path) -> None:
    writer = subprocess.Popen([sys.executable, "-c", PRUNING_WRITER, str(tmp_path)])
    try:
        reader = subprocess.run([sys.executable, "-c", LOOPING_READER, str(tmp_path), "90"],
                                capture_output=True, text=True, timeout=180)
        assert writer.poll() is None  # the writer kept saving the whole time
    finally:
        writer.kill()
        writer.wait()
    assert reader.returncode == 0, reader.stderr[-3000:]
    result = json.loads(reader.stdout)
    assert result["count"] == 0, result
    assert result["reads"] >= 10 and result["steps"] >= 3, result
