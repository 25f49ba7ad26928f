"""The demo end to end, and the ``polybundle`` command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import polybundle
from polybundle.tools import demo
from polybundle.tools.cli import main
from polybundle.tools.conformance import conformance_adapters
from tests import models
from tests.conftest import HAS_TENSORFLOW, HAS_TORCH, needs_torch


def test_demo_trains_saves_and_loads_back_identically(tmp_path, capsys):
    """The demo drives every installed backend through its plugin's conformance adapter."""
    if not (HAS_TORCH or HAS_TENSORFLOW):
        pytest.skip("the demo needs PyTorch or TensorFlow")
    results = demo.run(tmp_path, steps=2)
    expected = [a.backend for a in conformance_adapters()]
    assert [r.backend for r in results] == expected
    assert {"torch", "tensorflow"} & set(expected) == {
        name for name, present in (("torch", HAS_TORCH), ("tensorflow", HAS_TENSORFLOW))
        if present
    }
    for result in results:
        assert result.matches
        assert result.max_abs_difference == 0.0
        assert set(result.cross_errors) == set(expected) - {result.backend}
        assert result.cross_relative_error <= demo.CROSS_TOLERANCE
        assert result.last_loss < result.first_loss
        assert result.path.exists()
        report = polybundle.inspect(result.path)
        assert report["backend"] == result.backend
        assert report["params"]["steps"] == 2
    assert "identical" in capsys.readouterr().out


def test_demo_holds_no_framework_code():
    source = Path(demo.__file__).read_text()
    for word in ("torch", "keras", "tensorflow", "jax", "flax"):
        assert word not in source.lower(), word


def test_demo_command_line_exit_status(tmp_path):
    if not (HAS_TORCH or HAS_TENSORFLOW):
        pytest.skip("the demo needs PyTorch or TensorFlow")
    result = subprocess.run(
        [sys.executable, "-m", "polybundle.tools.cli", "demo", "--steps", "1",
         "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "loaded back" in result.stdout


@needs_torch
def test_inspect_command_prints_table_and_json(tmp_path, capsys):
    path = tmp_path / "t.bundle"
    polybundle.save(path, {"net": models.trained_torch(0)}, params={"N": 6})
    assert main(["inspect", str(path)]) == 0
    table = capsys.readouterr().out
    assert "4.weight" in table and "out,in" in table and "test-convnet" in table
    assert main(["inspect", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["params"] == {"N": 6}
    assert {t["name"] for t in report["tensors"]} >= {"0.weight", "1.running_var"}


def test_cli_errors_are_one_line_and_exit_2(tmp_path, capsys):
    path = tmp_path / "junk.bin"
    path.write_bytes(b"\x00" * 10)
    assert main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err
    assert "FormatError" in err and "not a zip" in err


@needs_torch
def test_inspect_shows_the_start_of_huge_params_and_tensor_lists(tmp_path, capsys):
    """A 3 MB params.json and 300 tensors: the table view prints a bounded summary
    (rich spent 18 s of CPU wrapping the whole JSON); --json still prints everything."""
    import torch

    params = {f"k{i}": i for i in range(200_000)}
    net = torch.nn.Sequential(*[torch.nn.Linear(1, 1) for _ in range(150)])
    path = tmp_path / "big.bundle"
    polybundle.save(path, {"net": net}, params=params)
    assert main(["inspect", str(path)]) == 0
    shown = capsys.readouterr().out
    assert len(shown) < 100_000
    assert "more characters; --json prints all" in shown
    assert "300 tensors" in shown and "100 not shown" in shown
    assert main(["inspect", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["params"] == params and len(report["tensors"]) == 300
