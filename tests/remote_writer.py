"""Checkpoint writer for the interrupted-upload test; runs in its own process.

``python remote_writer.py URL STORAGE_OPTIONS_JSON STEP``

Saves one 32 MiB checkpoint for STEP with a :class:`polybundle.CheckpointManager`
on URL. The model belongs to the test-only NumPy backend (``tests/numpy_backend``),
so the process starts without a framework to import. The test kills this
process (SIGKILL) while the server holds its upload.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import polybundle  # noqa: E402
from polybundle.hooks.manager import get_plugin_manager  # noqa: E402
from tests.numpy_backend import plugin  # noqa: E402
from tests.numpy_backend.backend import NumpyBackend  # noqa: E402


def main() -> None:
    """Save the checkpoint the command line asks for."""
    get_plugin_manager().register(plugin)
    url, options, step = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
    model = NumpyBackend().build({"size": 6, "filters": 2048, "outputs": 4096})  # 32 MiB head
    manager = polybundle.CheckpointManager(url, keep_last=2, storage_options=options)
    manager.save(step, {"net": model}, metrics={"loss": 1.0 / step})
    print("saved", flush=True)


if __name__ == "__main__":
    main()
