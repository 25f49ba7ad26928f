"""CI smoke test: the benchmark runs end to end at a tiny size (no timing asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import HAS_TENSORFLOW, HAS_TORCH

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench.py"


def test_benchmark_runs_at_the_smallest_size_and_writes_json_and_a_plot(tmp_path):
    out, picture = tmp_path / "bench.json", tmp_path / "bench.png"
    subprocess.run(
        [sys.executable, str(BENCH), "--sizes", "1", "--repeats", "1", "--json", str(out),
         "--dir", str(tmp_path), "--plot", str(picture)],
        check=True, capture_output=True, text=True, timeout=600,
    )
    report = json.loads(out.read_text())
    size = report["sizes"][0]
    assert size["weights_bytes"] > 0
    assert "numpy copy (floor)" in size["operations"]
    if HAS_TORCH:
        assert {"torch load", "torch save", "torch load into= vs + load_state_dict",
                "torch load + Adam vs restore",
                "lazy open vs torch.load mmap (1,000 tensors)"} <= set(size["ratios"])
        assert "polybundle lazy open + one tensor (torch)" in size["operations"]
    if HAS_TENSORFLOW:
        assert {"tf load", "tf save"} <= set(size["ratios"])
    assert all(value > 0 for value in size["ratios"].values())
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
