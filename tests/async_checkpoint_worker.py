"""Processes for the asynchronous-checkpoint tests (``test_async_checkpoints.py``).

``python async_checkpoint_worker.py exit DIRECTORY``: make an asynchronous
``CheckpointManager`` in ``DIRECTORY/run``, save step 7 of a 1024x1024 linear
layer with Adam state (12 MiB), print whether the bundle exists yet, and end at
once, with the write in flight. A second manager, in ``DIRECTORY/broken``
(whose index path is a folder, so its background commit fails), shows that an
error nobody collected is printed at exit.

``python async_checkpoint_worker.py kill DIRECTORY ROUNDS SEED``: each round
forks a child that trains and saves asynchronously in a loop into
``DIRECTORY``; after the child's second ``save()`` returns (the first is
committed, the second's write is in flight), the parent waits a random moment
(0 to 10 ms), SIGKILLs it, prints ``killed <step>`` with the step of that
``save()``, and waits for a line on standard input (the test checks the
directory meanwhile).
"""

from __future__ import annotations

import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import polybundle
from polybundle.api.checkpoints import INDEX_NAME


def _trained(width: int, layers: int) -> tuple[Any, Any]:
    """Return a model of ``layers`` ``width``-square linear layers and its Adam after a step."""
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(layers)])
    opt = torch.optim.Adam(net.parameters())
    net(torch.randn(4, width)).sum().backward()
    opt.step()
    return net, opt


def exit_with_write_in_flight(directory: Path) -> None:
    """Save step 7 asynchronously, say whether it is on disk yet, and return (the process ends)."""
    net, opt = _trained(1024, 1)
    manager = polybundle.CheckpointManager(directory / "run", async_save=True)
    checkpoint = manager.save(7, {"net": net}, optimizers={"net": opt}, metrics={"loss": 1.0})
    print(f"on disk when save() returned: {checkpoint.path.exists()}", flush=True)
    (directory / "broken" / INDEX_NAME).mkdir(parents=True)
    broken = polybundle.CheckpointManager(directory / "broken", async_save=True)
    broken.save(1, {"net": net})


def kill_during_writes(directory: Path, rounds: int, seed: int) -> None:
    """SIGKILL a child that saves asynchronously, ``rounds`` times, each after a ``save()``."""
    import torch

    chance = random.Random(seed)
    torch.set_num_threads(1)  # no thread pool to inherit across fork
    net, opt = _trained(512, 2)
    with tempfile.TemporaryDirectory() as warm:  # load plugins and code paths before forking
        polybundle.CheckpointManager(warm).save(0, {"net": net}, optimizers={"net": opt})
    for _ in range(rounds):
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the training process: saves in a loop until killed
            os.close(read_end)
            manager = polybundle.CheckpointManager(directory, keep_last=2, async_save=True)
            latest = manager.latest()
            first = step = 0 if latest is None else latest.step + 1
            while True:
                net(torch.randn(4, 512)).sum().backward()
                opt.step()
                manager.save(step, {"net": net}, optimizers={"net": opt}, metrics={"loss": 1.0})
                if step > first:  # this save() waited for the one before: it is committed
                    os.write(write_end, step.to_bytes(8, "little"))
                step += 1
        os.close(write_end)
        step = int.from_bytes(os.read(read_end, 8), "little")  # save(step) returned
        time.sleep(chance.uniform(0.0, 0.01))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(read_end)
        print(f"killed {step}", flush=True)
        sys.stdin.readline()  # the test has checked the directory


if __name__ == "__main__":
    if sys.argv[1] == "exit":
        exit_with_write_in_flight(Path(sys.argv[2]))
    else:
        kill_during_writes(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
