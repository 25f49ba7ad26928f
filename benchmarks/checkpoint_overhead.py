"""Optimizer-state overhead of a checkpoint, for a model of about 67 MB (float32).

For each framework: one Adam step on a 4096x4096 dense layer, then (in the same
process, alternating, median of ``--repeat`` runs) the time of a weights-only
``polybundle.save`` and of a ``CheckpointManager.save`` with optimizer and RNG
state; and the bytes of the weights member against the optimizer members.

Example:
    $ python benchmarks/checkpoint_overhead.py --repeat 3 --framework torch
"""

from __future__ import annotations

import argparse
import os
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


def main() -> None:
    """Run the measurement and print one block per framework."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--framework", choices=["torch", "tensorflow", "both"], default="both")
    args = parser.parse_args()
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
