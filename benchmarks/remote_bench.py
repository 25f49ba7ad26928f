"""Bundles on S3 over loopback: a lazy one-tensor read and a full load, against moto.

Starts the tests' S3 API server (``tests/remote_server.py``: moto's
ThreadedMotoServer with IAM authentication and a request log), saves a
PyTorch bundle of ``--mib`` MiB of weights to it with s3fs, and reports:

- a lazy one-tensor read (``load(url, lazy=True, verify=False)`` then one
  tensor): the requests and the bytes the server sent, against the tensor's
  size (the target: at most the tensor plus 64 KiB);
- a full load (``load(url, into=...)``, every member's sha256 checked) against
  s3fs ``cat_file`` of the same object plus a local ``polybundle.load`` of the
  same bytes; each the median of ``--repeats`` runs.

Usage:
    python benchmarks/remote_bench.py --mib 100 --repeats 3 --json remote.json
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import polybundle  # noqa: E402
from polybundle.format.storage import locate  # noqa: E402
from tests.remote_server import start_s3  # noqa: E402


def _model(mib: int) -> torch.nn.Sequential:
    """Four square Linear layers holding just under ``mib`` MiB of float32 weights.

    Just under: at 100 MiB the bundle stays one PUT (s3fs goes multipart from
    100 MiB, and moto answers a retried CompleteMultipartUpload with an error).
    """
    width = int((mib * 1024 * 1024 / 4 / 4) ** 0.5) - 2
    return torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(4)])


def _median(run: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(mib: int, repeats: int) -> dict[str, Any]:
    """Run both measurements; return the report."""
    s3 = start_s3()
    try:
        options = s3.storage_options
        net = _model(mib)
        url = s3.url("bench/run.bundle")
        polybundle.save(url, {"net": net}, storage_options=options)
        size = locate(url, options).size()
        tensor = "3.weight"

        mark = s3.log.mark()
        bundle = polybundle.load(url, lazy=True, verify=False, storage_options=options)
        array = np.array(bundle.tensors("net")[tensor])
        lazy = s3.log.since(mark)
        fetched = sum(r.sent for r in lazy if r.method == "GET")
        del bundle  # it keeps its fetched bytes for reuse: full loads below start cold
        gc.collect()

        fresh = _model(mib)
        fs = locate(url, options).fs
        path = locate(url, options).path
        with tempfile.TemporaryDirectory() as folder:
            local = Path(folder) / "run.bundle"
            local.write_bytes(fs.cat_file(path))
            cat = _median(lambda: fs.cat_file(path), repeats)
            local_load = _median(lambda: polybundle.load(local, into={"net": fresh}), repeats)
        remote_load = _median(
            lambda: polybundle.load(url, into={"net": fresh}, storage_options=options), repeats
        )
        mark = s3.log.mark()
        polybundle.load(url, into={"net": fresh}, storage_options=options)
        full = s3.log.since(mark)
    finally:
        s3.stop()
    return {
        "bundle_bytes": size,
        "lazy_one_tensor": {
            "tensor": tensor, "tensor_bytes": array.nbytes, "requests": len(lazy),
            "get_requests": sum(r.method == "GET" for r in lazy), "bytes_fetched": fetched,
            "over_tensor": fetched - array.nbytes,
            "target_met": fetched <= array.nbytes + 64 * 1024,
        },
        "full_load": {
            "polybundle.load(url) s": round(remote_load, 3),
            "s3fs cat_file s": round(cat, 3),
            "local polybundle.load s": round(local_load, 3),
            "cat_file + local load s": round(cat + local_load, 3),
            "ratio": round(remote_load / (cat + local_load), 2),
            "requests": len(full),
            "bytes_fetched": sum(r.sent for r in full if r.method == "GET"),
        },
        "repeats": repeats,
    }


def main() -> None:
    """Parse the arguments, run, print (and write) the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=100, help="MiB of weights (default 100)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per timing (median)")
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    args = parser.parse_args()
    report = run(args.mib, args.repeats)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
