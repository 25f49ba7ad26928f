"""Optimizer-state overhead of a checkpoint, and the stall of an asynchronous one.

For each framework: one Adam step on a 4096x4096 dense layer (about 67 MB
float32), then (in the same process, alternating, median of ``--repeat`` runs)
the time of a weights-only ``polybundle.save`` and of a
``CheckpointManager.save`` with optimizer and RNG state; and the bytes of the
weights member against the optimizer members.

``--async-mib N`` (PyTorch) measures instead what an asynchronous checkpoint
costs the training loop: ``N`` MiB of float32 weights in 1024-wide linear
layers plus Adam state (3N MiB in all); the stall of
``CheckpointManager(async_save=True).save`` (the first save, which allocates
its host copies, and the median of ``--repeat`` later ones, which reuse them),
against ``torch.save`` of the same state (weights and ``optimizer.state_dict()``)
alternating with it; the background write's time; and the peak resident memory
the saves added, against the state's size (Linux: ``/proc/self/clear_refs``).

Example:
    $ python benchmarks/checkpoint_overhead.py --repeat 3 --framework torch
    $ python benchmarks/checkpoint_overhead.py --async-mib 400 --repeat 5
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import polybundle  # noqa: E402

WIDTH = 4096


def torch_setup():
    """Return ``(model, optimizer)`` after one Adam step in PyTorch."""
    import torch

    model = torch.nn.Linear(WIDTH, WIDTH)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(8, WIDTH)).sum().backward()
    optimizer.step()
    return model, optimizer


def tensorflow_setup():
    """Return ``(model, optimizer)`` after one Adam step in Keras."""
    import keras
    import numpy as np

    model = keras.Sequential([keras.Input((WIDTH,)), keras.layers.Dense(WIDTH)])
    optimizer = keras.optimizers.Adam()
    model.compile(optimizer, "mse")
    x = np.random.rand(8, WIDTH).astype("float32")
    model.fit(x, x, epochs=1, verbose=0)
    return model, optimizer


def measure(framework: str, repeat: int, folder: Path) -> dict[str, float]:
    """Return sizes (bytes) and median save times (seconds) for one framework.

    Usage::

        measure("torch", 1, Path("/tmp"))["optimizer_bytes"]
    """
    model, optimizer = (torch_setup if framework == "torch" else tensorflow_setup)()
    weights_times, checkpoint_times = [], []
    manager = polybundle.CheckpointManager(folder / f"ckpt-{framework}", keep_last=1)
    for step in range(repeat):
        start = time.perf_counter()
        manifest = polybundle.save(folder / f"weights-{framework}.bundle", {"net": model})
        weights_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        manager.save(step, {"net": model}, optimizers={"net": optimizer}, metrics={"loss": 0.0})
        checkpoint_times.append(time.perf_counter() - start)
    full = polybundle.inspect(manager.latest().path)["manifest"]
    weights_member = manifest["models"][0]["weights"]
    optimizer_entry = full["models"][0]["optimizer"]
    return {
        "weights_bytes": manifest["members"][weights_member]["size"],
        "optimizer_bytes": sum(
            full["members"][optimizer_entry[k]]["size"] for k in ("state", "slots")
        ),
        "weights_bundle_bytes": (folder / f"weights-{framework}.bundle").stat().st_size,
        "checkpoint_bytes": manager.latest().path.stat().st_size,
        "weights_save_s": statistics.median(weights_times),
        "checkpoint_save_s": statistics.median(checkpoint_times),
    }


def _memory_kib(field: str) -> int:
    """Return ``VmRSS`` or ``VmHWM`` (peak) of this process in KiB, from ``/proc/self/status``."""
    status = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", status, re.MULTILINE)[1])


def async_stall(size_mib: int, repeat: int, folder: Path) -> dict[str, float]:
    """Return the stall of asynchronous checkpoints against ``torch.save``, and their memory.

    The stall is the time ``save()`` takes in the training thread (wall clock,
    and that thread's CPU time, which other processes on a loaded machine do
    not inflate). Memory: each save's peak resident memory above what the
    process held just before it; the first save's includes allocating the
    host copies, later ones reuse them.

    Usage::

        async_stall(400, 5, Path("/tmp"))["steady_ratio"]
    """
    import torch

    width = 1024  # 4 MiB layers: 100 tensors and 200 Adam slots at 400 MiB
    layers = max(1, round(size_mib * 2**20 / (width * width * 4)))
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(width, width, bias=False) for _ in range(layers)])
    optimizer = torch.optim.Adam(model.parameters())

    def train_step() -> None:
        optimizer.zero_grad()
        model(torch.randn(8, width)).sum().backward()
        optimizer.step()

    def timed_save(step: int) -> tuple[float, float, int]:
        """Return the stall (wall, thread CPU) and peak memory added of one save."""
        resident = _memory_kib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) restarts here
        wall, cpu = time.perf_counter(), time.thread_time()
        manager.save(step, {"net": model}, optimizers={"net": optimizer})
        wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
        manager.wait_until_finished()
        return wall, cpu, (_memory_kib("VmHWM") - resident) * 1024

    train_step()
    with tempfile.TemporaryDirectory() as warm:  # import and register everything first
        tiny = torch.nn.Linear(2, 2)
        warming = polybundle.CheckpointManager(warm, async_save=True)
        warming.save(0, {"net": tiny}, optimizers={"net": torch.optim.Adam(tiny.parameters())})
        warming.wait_until_finished()
    state = 3 * sum(t.numel() * t.element_size() for t in model.state_dict().values())
    manager = polybundle.CheckpointManager(folder / "async", keep_last=1, async_save=True)
    first_wall, _, first_peak = timed_save(0)
    walls, cpus, peaks, writes, torch_saves, torch_cpus = [], [], [], [], [], []
    for step in range(1, repeat + 1):
        train_step()
        wall, cpu, peak = timed_save(step)
        walls.append(wall)
        cpus.append(cpu)
        peaks.append(peak)
        start, cpu = time.perf_counter(), time.thread_time()
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()},
                   folder / "torch.pt")
        torch_saves.append(time.perf_counter() - start)
        torch_cpus.append(time.thread_time() - cpu)
    # the background write alone, for scale: save and wait, minus the stall
    train_step()
    start = time.perf_counter()
    manager.save(repeat + 1, {"net": model}, optimizers={"net": optimizer})
    manager.wait_until_finished()
    writes.append(time.perf_counter() - start)
    torch_save = statistics.median(torch_saves)
    return {
        "state_bytes": state,
        "host_bytes": manager.host_bytes(),
        "first_peak_added_bytes": first_peak,
        "peak_added_bytes": max(peaks),
        "first_stall_s": first_wall,
        "stall_s": statistics.median(walls),
        "stall_cpu_s": statistics.median(cpus),
        "save_and_write_s": writes[0],
        "torch_save_s": torch_save,
        "torch_save_cpu_s": statistics.median(torch_cpus),
        "first_ratio": first_wall / torch_save,
        "steady_ratio": statistics.median(walls) / torch_save,
        "steady_cpu_ratio": statistics.median(cpus) / statistics.median(torch_cpus),
    }


def _print_async(size_mib: int, repeat: int, folder: Path) -> None:
    r = async_stall(size_mib, repeat, folder)
    mib = 2**20
    print(
        f"async checkpoint of {r['state_bytes'] / mib:.0f} MiB (weights {size_mib} MiB + Adam):\n"
        f"  stall: first save {r['first_stall_s']:.3f} s ({r['first_ratio']:.2f}x torch.save), "
        f"later saves {r['stall_s']:.3f} s ({r['steady_ratio']:.2f}x), median of {repeat}\n"
        f"  torch.save of the same state {r['torch_save_s']:.3f} s; an async save and its "
        f"write {r['save_and_write_s']:.3f} s\n"
        f"  thread CPU: a later save's stall {r['stall_cpu_s']:.3f} s, torch.save "
        f"{r['torch_save_cpu_s']:.3f} s ({r['steady_cpu_ratio']:.2f}x)\n"
        f"  memory: host copies {r['host_bytes'] / mib:.0f} MiB "
        f"({r['host_bytes'] / r['state_bytes']:.2f}x the state); peak added by the first save "
        f"{r['first_peak_added_bytes'] / mib:.0f} MiB "
        f"({r['first_peak_added_bytes'] / r['state_bytes']:.2f}x), by a later one "
        f"{r['peak_added_bytes'] / mib:.0f} MiB ({r['peak_added_bytes'] / r['state_bytes']:.2f}x)"
    )


def main() -> None:
    """Run the measurement and print one block per framework."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--framework", choices=["torch", "tensorflow", "both"], default="both")
    parser.add_argument("--async-mib", type=int, default=0,
                        help="measure an asynchronous checkpoint of this many MiB of weights")
    args = parser.parse_args()
    if args.async_mib:
        with tempfile.TemporaryDirectory() as folder:
            _print_async(args.async_mib, args.repeat, Path(folder))
        return
    frameworks = ["torch", "tensorflow"] if args.framework == "both" else [args.framework]
    with tempfile.TemporaryDirectory() as folder:
        for framework in frameworks:
            r = measure(framework, args.repeat, Path(folder))
            mb = 1024 * 1024
            print(
                f"{framework}: weights member {r['weights_bytes'] / mb:.1f} MiB, optimizer "
                f"members {r['optimizer_bytes'] / mb:.1f} MiB "
                f"({r['optimizer_bytes'] / r['weights_bytes']:.2f}x); bundle "
                f"{r['weights_bundle_bytes'] / mb:.1f} MiB -> checkpoint "
                f"{r['checkpoint_bytes'] / mb:.1f} MiB "
                f"({r['checkpoint_bytes'] / r['weights_bundle_bytes']:.2f}x)\n"
                f"  save: weights only {r['weights_save_s']:.3f} s, checkpoint "
                f"{r['checkpoint_save_s']:.3f} s "
                f"({r['checkpoint_save_s'] / r['weights_save_s']:.2f}x), median of {args.repeat}"
            )


if __name__ == "__main__":
    main()
