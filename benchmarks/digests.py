"""Member digests: sha256 against xxh3-128 in a save and a verify (issue 15, item 1).

Measures, at one size of float32 weights (400 MiB by default), the medians of
``--repeats`` runs of:

- the raw speed of each hash and checksum on the same bytes (and a NumPy copy,
  the floor);
- the bundle writer alone (``ArchiveWriter``: one STORED member written in
  4 MiB chunks, hashed, CRC'd, fsynced and renamed) with each digest, against
  writing the same chunks to a plain file + fsync;
- ``polybundle.save`` of a torch model (four bias-free ``Linear`` layers) with
  ``digest="xxh3-128"`` and ``digest="sha256"``, against ``torch.save`` +
  fsync of its state_dict;
- checking every member's digest (``verify_members``, what ``load`` runs
  beside the read) and the whole ``polybundle.verify``, of each bundle.

Each operation gets its median wall time and its median CPU time (every
thread of the process): on a busy machine the wall times wander with the
other jobs, the CPU times much less. It prints a Markdown table and, with
``--json``, writes the numbers. Nothing is asserted; ``benchmarks/README.md``
keeps a run.

    python benchmarks/digests.py --mib 400 --repeats 5 --dir /tmp
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import xxhash

import polybundle
from polybundle.format import crc
from polybundle.format.archive import ArchiveReader
from polybundle.format.manifest import read_manifest, verify_members
from polybundle.format.writer import ArchiveWriter


def median_seconds(run: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Return the median wall and CPU (process) seconds of ``repeats`` calls of ``run``."""
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        run()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def raw_speeds(mib: int, repeats: int) -> dict[str, tuple[float, float]]:
    """Return the seconds each hash (and a copy) takes over ``mib`` MiB of random bytes."""
    data = np.random.default_rng(0).integers(0, 256, mib << 20, dtype=np.uint8)
    target = np.empty_like(data)
    return {
        "NumPy copy (the floor)": median_seconds(lambda: np.copyto(target, data), repeats),
        "hashlib sha256": median_seconds(lambda: hashlib.sha256(data).digest(), repeats),
        "xxhash xxh3_128": median_seconds(lambda: xxhash.xxh3_128(data).digest(), repeats),
        "zlib.crc32": median_seconds(lambda: zlib.crc32(data), repeats),
        f"polybundle crc32 ({crc.IMPLEMENTATION})": median_seconds(
            lambda: crc.crc32(data), repeats),
    }


def writer_speeds(mib: int, repeats: int, folder: Path) -> dict[str, tuple[float, float]]:
    """Return the seconds of writing ``mib`` MiB as one member with each digest, and plainly."""
    data = np.random.default_rng(1).integers(0, 256, mib << 20, dtype=np.uint8)
    chunks = [data[start:start + (4 << 20)] for start in range(0, data.size, 4 << 20)]

    def plain() -> None:
        with open(folder / "plain.bin", "wb") as stream:
            for chunk in chunks:
                stream.write(chunk)
            stream.flush()
            os.fsync(stream.fileno())

    def bundle(digest: str) -> None:
        with ArchiveWriter(folder / "writer.zip", digest=digest) as writer:
            with writer.stream("w/data.bin") as stream:
                for chunk in chunks:
                    stream.write(chunk)
            writer.commit()

    results = {"plain file write + fsync": median_seconds(plain, repeats)}
    for digest in ("xxh3-128", "sha256"):
        results[f"ArchiveWriter, {digest}"] = median_seconds(lambda d=digest: bundle(d), repeats)
    return results


def model(mib: int):
    """Return a torch model of four bias-free ``Linear`` layers holding ``mib`` MiB."""
    import torch

    width = 2560
    inputs = (mib << 20) // 4 // 4 // width
    torch.manual_seed(0)
    return torch.nn.Sequential(*[torch.nn.Linear(inputs, width, bias=False) for _ in range(4)])


def check_digests(path: Path) -> None:
    """Read the manifest and check every member's digest (what ``load`` runs beside its read)."""
    with ArchiveReader(path) as archive:
        verify_members(archive, read_manifest(archive))


def bundle_speeds(mib: int, repeats: int, folder: Path) -> dict[str, tuple[float, float]]:
    """Return the seconds of saving and verifying the model with each digest."""
    import torch

    net = model(mib)
    results = {}

    def torch_save() -> None:
        with open(folder / "plain.pth", "wb") as stream:
            torch.save(net.state_dict(), stream)
            stream.flush()
            os.fsync(stream.fileno())

    results["torch.save + fsync"] = median_seconds(torch_save, repeats)
    for digest in ("xxh3-128", "sha256"):
        path = folder / f"{digest}.bundle"
        results[f"polybundle.save, {digest}"] = median_seconds(
            lambda path=path, digest=digest: polybundle.save(path, {"net": net}, digest=digest),
            repeats,
        )
        results[f"digest check of every member, {digest}"] = median_seconds(
            lambda path=path: check_digests(path), repeats)
        results[f"polybundle.verify, {digest}"] = median_seconds(
            lambda path=path: polybundle.verify(path, max_bytes=4 << 30), repeats)
    return results


def table(results: dict[str, tuple[float, float]], nbytes: int) -> str:
    """Return the results as a Markdown table: wall and CPU seconds, GB/s of the weights."""
    rows = ["| what | wall s | CPU s | GB/s (wall) | GB/s (CPU) |",
            "| --- | ---: | ---: | ---: | ---: |"]
    rows += [f"| {name} | {wall:.3f} | {cpu:.3f} | {nbytes / wall / 1e9:.2f} | "
             f"{nbytes / cpu / 1e9:.2f} |" for name, (wall, cpu) in results.items()]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    """Run the measurements; print the table; write ``--json`` when asked."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=400, help="MiB of weights (default 400)")
    parser.add_argument("--repeats", type=int, default=5, help="runs per median (default 5)")
    parser.add_argument("--dir", type=Path, default=None, help="folder for the files written")
    parser.add_argument("--json", type=Path, default=None, help="write the numbers here")
    args = parser.parse_args(argv)
    nbytes = args.mib << 20
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        results = {**raw_speeds(args.mib, args.repeats),
                   **writer_speeds(args.mib, args.repeats, Path(folder)),
                   **bundle_speeds(args.mib, args.repeats, Path(folder))}
    print(f"{args.mib} MiB, medians of {args.repeats}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(table(results, nbytes))
    if args.json is not None:
        args.json.write_text(json.dumps({"mib": args.mib, "repeats": args.repeats,
                                         "seconds": results}, indent=1))


if __name__ == "__main__":
    main()
