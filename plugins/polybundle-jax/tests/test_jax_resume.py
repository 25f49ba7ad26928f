"""Exact resume in JAX: 2N Adam steps equal N + save + new process + N, bit for bit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import jax_models
import numpy as np

import polybundle

pytestmark = jax_models.needs_jax

N = 4
WORKER = Path(__file__).with_name("jax_resume_worker.py")


def _train(steps: int):
    from flax import nnx

    import polybundle_jax

    model = jax_models.convnet(jax_models.CONFIG, seed=0)
    optimizer = nnx.Optimizer(model, polybundle_jax.adam(1e-2), wrt=nnx.Param)
    for step in range(steps):
        jax_models.train_step(model, optimizer, jax_models.inputs(jax_models.CONFIG, step))
    return model, optimizer


def _resume(bundle: Path, out: Path, *flags: str) -> polybundle.Bundle:
    done = subprocess.run(
        [sys.executable, str(WORKER), str(bundle), str(out), str(N), str(N), *flags],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return polybundle.load(out)


def test_resume_in_a_new_process_is_exact(tmp_path):
    full, full_optimizer = _train(2 * N)
    reference = tmp_path / "full.bundle"
    polybundle.save(reference, {"net": full}, optimizers={"net": full_optimizer},
                    architectures={"net": (jax_models.ARCH, jax_models.CONFIG)})
    expected = polybundle.load(reference)

    half, half_optimizer = _train(N)
    checkpoint = tmp_path / "half.bundle"
    polybundle.save(checkpoint, {"net": half}, optimizers={"net": half_optimizer},
                    architectures={"net": (jax_models.ARCH, jax_models.CONFIG)})
    resumed = _resume(checkpoint, tmp_path / "resumed.bundle")

    want, got = expected.tensors("net"), resumed.tensors("net")
    assert list(got) == list(want)
    for name in want:
        assert np.array_equal(got[name], want[name]), name
    want_state, got_state = expected.optimizer_state("net"), resumed.optimizer_state("net")
    assert got_state.step == want_state.step == 2 * N
    for name, slots in want_state.slots.items():
        for slot, array in slots.items():
            assert np.array_equal(got_state.slots[name][slot], array), (name, slot)

    control = _resume(checkpoint, tmp_path / "control.bundle", "--fresh-optimizer")
    assert not np.array_equal(control.tensors("net")["head.kernel"], want["head.kernel"])
