"""Sharded-bundle benchmark: BundleWriter vs DCP's FileSystemWriter, and one-process loads.

``python benchmarks/distributed_bench.py [--mb 64] [--repeats 5] [--json out.json]``

In one run: 2 ranks (gloo on 127.0.0.1, CPU) ``fully_shard`` an MLP of about
``--mb`` MiB of float32 weights, take one Adam step, and save the same state
(model and optimizer, so about 3x ``--mb`` in all) ``--repeats`` times with
each writer, alternating; each time is rank 0's wall time from a barrier to
the end of ``dcp.save``. Then this process, with no process group, loads the
2-rank checkpoints: ``polybundle.load(folder)`` (digests checked, model built
and filled) against ``dcp_to_torch_save`` followed by ``torch.load`` and
``load_state_dict`` into a built model. Medians and the two ratios (polybundle
over DCP) go to stdout and ``--json``. Targets (issue 14): save within 1.2x,
load at most 1.0x.

Example (the model it shards):
    >>> sum(p.numel() for p in mlp(1).parameters()) * 4 // 2**20
    1
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
ARCH = "bench-dist-mlp"


def mlp(mb: int) -> Any:
    """Four square Linear layers holding about ``mb`` MiB of float32 weights in all."""
    import torch

    width = max(8, int((mb * 2**20 / 4 / 4) ** 0.5))
    return torch.nn.Sequential(*(torch.nn.Linear(width, width) for _ in range(4)))


def _register() -> None:
    import polybundle

    polybundle.architecture(ARCH, backend="torch", replace=True)(lambda config: mlp(config["mb"]))


def _rank(rank: int, port: str, folder: Path, mb: int, repeats: int) -> None:
    """One of the 2 saving ranks: shard, step, save alternately with both writers."""
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict
    from torch.distributed.fsdp import fully_shard

    from polybundle_torch.distributed import BundleWriter

    _register()
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=300))
    torch.manual_seed(0)
    model = mlp(mb)
    for layer in model:
        fully_shard(layer)
    fully_shard(model)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.ones(2, model[0].in_features)).sum().backward()
    optimizer.step()
    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optim": optim_state}
    times: dict[str, list[float]] = {"dcp": [], "polybundle": []}
    for repeat in range(repeats):
        for kind in (("dcp", "polybundle") if repeat % 2 else ("polybundle", "dcp")):
            target = folder / f"{kind}-{repeat}"
            writer = (dcp.FileSystemWriter(target) if kind == "dcp" else
                      BundleWriter(target, architectures={"model": (ARCH, {"mb": mb})}))
            dist.barrier()
            start = time.perf_counter()
            dcp.save(state, storage_writer=writer)
            times[kind].append(time.perf_counter() - start)
            if repeat < repeats - 1:
                dist.barrier()
                if rank == 0:
                    shutil.rmtree(target)
    if rank == 0:
        (folder / "save-times.json").write_text(json.dumps(times))
    dist.destroy_process_group()


def _free_port() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])


def _median_time(action: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _loads(folder: Path, mb: int, repeats: int) -> dict[str, float]:
    """Median one-process load times of the last 2-rank checkpoints, both ways."""
    import torch
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    import polybundle

    _register()
    last = repeats - 1

    def ours() -> None:
        polybundle.load(folder / f"polybundle-{last}")

    def theirs() -> None:
        target = folder / "consolidated.pt"
        dcp_to_torch_save(folder / f"dcp-{last}", target)
        model = mlp(mb)
        model.load_state_dict(torch.load(target, weights_only=True)["model"])
        target.unlink()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # DCP: "no process group, one process"
        theirs()  # warm both: imports and page cache
        ours()
        return {"polybundle": _median_time(ours, repeats), "dcp": _median_time(theirs, repeats)}


def run(mb: int, repeats: int, folder: Path) -> dict[str, Any]:
    """Run both measurements; return the report (times in seconds, ratios ours / DCP's)."""
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO / "core"), str(REPO / "backends"), os.environ.get("PYTHONPATH", "")])}
    ranks = [
        subprocess.Popen([sys.executable, __file__, "--rank", str(rank), "--port", port,
                          "--dir", str(folder), "--mb", str(mb), "--repeats", str(repeats)],
                         env=env)
        for rank in range(2)
    ]
    if any(process.wait(timeout=1200) for process in ranks):
        raise SystemExit("a saving rank failed")
    saves = json.loads((folder / "save-times.json").read_text())
    save = {kind: statistics.median(values) for kind, values in saves.items()}
    load = _loads(folder, mb, repeats)
    state_bytes = sum(f.stat().st_size for f in (folder / f"dcp-{repeats - 1}").iterdir())
    return {
        "mb": mb, "ranks_saving": 2, "ranks_loading": 1, "repeats": repeats,
        "state_bytes": state_bytes, "save_seconds": save, "load_seconds": load,
        "save_ratio": save["polybundle"] / save["dcp"],
        "load_ratio": load["polybundle"] / load["dcp"],
        "targets": {"save_ratio": 1.2, "load_ratio": 1.0},
    }


def main() -> None:
    """Parse the command line; run a rank, or the whole benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--dir", type=Path)
    parser.add_argument("--rank", type=int)
    parser.add_argument("--port")
    args = parser.parse_args()
    if args.rank is not None:
        _rank(args.rank, args.port, args.dir, args.mb, args.repeats)
        return
    folder = Path(tempfile.mkdtemp(prefix="polybundle-dist-bench-", dir=args.dir))
    try:
        report = run(args.mb, args.repeats, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
