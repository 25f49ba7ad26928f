"""Run in a new process by test_jax_resume.py: resume a JAX bundle and train N more steps.

Usage: python jax_resume_worker.py BUNDLE OUT START STEPS [--fresh-optimizer]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax_models  # noqa: E402
from flax import nnx  # noqa: E402

import polybundle  # noqa: E402
import polybundle_jax  # noqa: E402


def main(bundle_path: str, out: str, start: int, steps: int, fresh: bool) -> None:
    """Load, restore the optimizer (unless ``fresh``), train, save model and optimizer."""
    bundle = polybundle.load(bundle_path)
    model = bundle.models["net"]
    optimizer = nnx.Optimizer(model, polybundle_jax.adam(1e-2), wrt=nnx.Param)
    if not fresh:
        bundle.restore_optimizer("net", optimizer)
    for step in range(start, start + steps):
        jax_models.train_step(model, optimizer, jax_models.inputs(jax_models.CONFIG, step))
    polybundle.save(out, {"net": model}, optimizers={"net": optimizer})


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]),
         "--fresh-optimizer" in sys.argv)
