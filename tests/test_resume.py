"""Exact resume in a new process: 2N steps in one go equal N + checkpoint + N, bit for bit.

The worker (``resume_worker.py``) trains in subprocesses; this test compares
the bundles they write, with the framework's determinism switch on and off.
The control shows that restoring weights without the optimizer state does not
give the same result.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import polybundle
from tests.conftest import needs_tensorflow, needs_torch

WORKER = Path(__file__).with_name("resume_worker.py")
STEPS = 6


def _run(framework: str, phase: str, out: Path, determinism: str) -> None:
    result = subprocess.run(
        [sys.executable, str(WORKER), framework, phase, str(out), str(STEPS), determinism],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]


def _state(path: Path) -> tuple[dict[str, np.ndarray], dict[str, dict[str, np.ndarray]], int]:
    """Return weights and optimizer slots keyed by weights-file key, and the step.

    Keras' neutral names include auto-generated model names (``sequential_1``),
    so two processes are compared by the key each tensor has in the file.
    """
    report = polybundle.inspect(path)
    bundle = polybundle.Bundle(path, report["manifest"], report["params"], report["backend"])
    keys = {spec.name: spec.key for spec in bundle.tensor_specs("net")}
    state = bundle.optimizer_state("net")
    assert set(state.parameters) <= keys.keys()
    weights = {keys[name]: array for name, array in bundle.tensors("net").items()}
    slots = {keys[name]: arrays for name, arrays in state.slots.items()}
    assert slots.keys() == {keys[name] for name in state.parameters}
    return weights, slots, state.step


def _check_resume(out: Path) -> None:
    for kind in ("adam", "sgd"):
        ref_weights, ref_slots, ref_step = _state(out / f"ref-{kind}.bundle")
        weights, slots, step = _state(out / f"resumed-{kind}.bundle")
        control, _, _ = _state(out / f"control-{kind}.bundle")
        assert ref_weights.keys() == weights.keys()
        for name in ref_weights:
            assert weights[name].dtype == ref_weights[name].dtype
            assert weights[name].tobytes() == ref_weights[name].tobytes(), (kind, name)
        assert step == ref_step
        assert slots.keys() == ref_slots.keys() and ref_slots
        for name, arrays in ref_slots.items():
            assert arrays.keys() == slots[name].keys()
            for slot, array in arrays.items():
                assert slots[name][slot].tobytes() == array.tobytes(), (kind, name, slot)
        differs = [n for n in ref_weights if control[n].tobytes() != ref_weights[n].tobytes()]
        assert differs, f"{kind}: weights-only resume matched the uninterrupted run"


@needs_torch
@pytest.mark.parametrize("determinism", ["on", "off"])
def test_torch_exact_resume_in_new_process(tmp_path: Path, determinism: str) -> None:
    _run("torch", "first", tmp_path, determinism)
    _run("torch", "second", tmp_path, determinism)
    _check_resume(tmp_path)


@needs_tensorflow
@pytest.mark.parametrize("determinism", ["on", "off"])
def test_tensorflow_exact_resume_in_new_process(tmp_path: Path, determinism: str) -> None:
    """``on``: enable_op_determinism() and no TF global generator (issue 16 item 2).

    Before the fix, ``CheckpointManager.save`` raised ``RuntimeError:
    "get_global_generator" cannot be called if determinism is enabled`` there.
    """
    _run("tensorflow", "first", tmp_path, determinism)
    _run("tensorflow", "second", tmp_path, determinism)
    _check_resume(tmp_path)
