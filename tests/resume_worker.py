"""Training worker for the exact-resume tests; runs in its own process.

``python resume_worker.py FRAMEWORK PHASE OUT N DETERMINISM``

DETERMINISM is ``on`` or ``off``. In TensorFlow, ``on`` calls
``tf.config.experimental.enable_op_determinism()`` in this process and draws
the input noise from Keras' global seed generator (``keras.random.normal``),
setting no TensorFlow global generator: exactly the set-up in which
``tf.random.get_global_generator()`` refuses to run, so capturing the RNG
state must not ask for it. ``off`` leaves determinism off (one thread) and
draws the noise from TensorFlow's global generator. In PyTorch it switches
``torch.use_deterministic_algorithms``.

- PHASE ``first``: for Adam and SGD with momentum, (a) train 2N steps from a
  fixed seed and save ``ref-<opt>.bundle`` with the optimizer, then (b) from the
  same seed train N steps and save a checkpoint with ``CheckpointManager`` in
  ``ckpt-<opt>/`` (weights, optimizer, RNG).
- PHASE ``second`` (a new process): restore the checkpoint into a freshly built
  model, restore the optimizer into a fresh one, train N more steps and save
  ``resumed-<opt>.bundle``; then the control: restore weights and RNG only,
  with a fresh optimizer, and save ``control-<opt>.bundle``.

Every step draws from Python's ``random`` (target noise), NumPy's global
generator (batch order) and the framework's generator (dropout in PyTorch,
input noise from TensorFlow's or Keras' global generator), so all RNG state matters.
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import polybundle  # noqa: E402

OPTIMIZERS = ("adam", "sgd")
_DATA = np.random.RandomState(1234)
X = _DATA.rand(64, 8).astype("float32")
Y = _DATA.rand(64, 1).astype("float32")


def batch() -> tuple[np.ndarray, np.ndarray]:
    """Draw a batch: order from NumPy's global generator, noise from Python's."""
    index = np.random.permutation(len(X))[:16]
    return X[index], Y[index] + np.float32(0.01 * random.gauss(0.0, 1.0))


class TorchRun:
    """Model, optimizer and one training step in PyTorch."""

    def __init__(self, determinism: bool) -> None:
        import torch

        self.torch = torch
        torch.use_deterministic_algorithms(determinism)
        torch.set_num_threads(1)

    def seed(self, value: int) -> None:
        random.seed(value)
        np.random.seed(value)
        self.torch.manual_seed(value)

    def model(self):
        nn = self.torch.nn
        return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 1))

    def optimizer(self, kind: str, model):
        if kind == "adam":
            return self.torch.optim.Adam(model.parameters(), lr=1e-2)
        return self.torch.optim.SGD(model.parameters(), lr=5e-2, momentum=0.9)

    def step(self, model, optimizer) -> float:
        x, y = batch()
        model.train()
        optimizer.zero_grad()
        loss = ((model(self.torch.from_numpy(x)) - self.torch.from_numpy(y)) ** 2).mean()
        loss.backward()
        optimizer.step()
        return loss.item()


class TensorFlowRun:
    """Model, optimizer and one training step in TensorFlow/Keras."""

    def __init__(self, determinism: bool) -> None:
        import keras
        import tensorflow as tf

        if determinism:
            tf.config.experimental.enable_op_determinism()
        else:
            tf.config.threading.set_inter_op_parallelism_threads(1)
            tf.config.threading.set_intra_op_parallelism_threads(1)
        self.determinism = determinism
        self.tf, self.keras = tf, keras

    def seed(self, value: int) -> None:
        self.keras.utils.set_random_seed(value)
        if not self.determinism:
            self.tf.random.set_global_generator(self.tf.random.Generator.from_seed(value))

    def noise(self, shape: tuple[int, ...]):
        if self.determinism:  # Keras' global seed generator; no TensorFlow global generator
            return self.keras.random.normal(shape, stddev=0.01)
        return self.tf.random.get_global_generator().normal(shape, stddev=0.01)

    def model(self):
        layers = self.keras.layers
        return self.keras.Sequential(
            [self.keras.Input((8,)), layers.Dense(32, activation="relu"), layers.Dense(1)]
        )

    def optimizer(self, kind: str, model):
        if kind == "adam":
            return self.keras.optimizers.Adam(1e-2)
        return self.keras.optimizers.SGD(5e-2, momentum=0.9)

    def step(self, model, optimizer) -> float:
        tf = self.tf
        x, y = batch()
        noise = self.noise(x.shape)
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean((model(x + noise, training=True) - y) ** 2)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return float(loss)


def first(run, out: Path, steps: int) -> None:
    for kind in OPTIMIZERS:
        run.seed(7)
        model = run.model()
        optimizer = run.optimizer(kind, model)
        for _ in range(2 * steps):
            run.step(model, optimizer)
        polybundle.save(out / f"ref-{kind}.bundle", {"net": model}, optimizers={"net": optimizer})

        run.seed(7)
        model = run.model()
        optimizer = run.optimizer(kind, model)
        for _ in range(steps):
            loss = run.step(model, optimizer)
        manager = polybundle.CheckpointManager(out / f"ckpt-{kind}")
        manager.save(steps, {"net": model}, optimizers={"net": optimizer}, metrics={"loss": loss})


def second(run, out: Path, steps: int) -> None:
    for kind in OPTIMIZERS:
        manager = polybundle.CheckpointManager(out / f"ckpt-{kind}")
        run.seed(99)  # a different init: everything must come from the checkpoint
        model = run.model()
        bundle = manager.restore(into={"net": model})
        optimizer = run.optimizer(kind, model)
        bundle.restore_optimizer("net", optimizer)
        for _ in range(steps):
            run.step(model, optimizer)
        polybundle.save(
            out / f"resumed-{kind}.bundle", {"net": model}, optimizers={"net": optimizer}
        )

        run.seed(99)
        model = run.model()
        manager.restore(into={"net": model})
        optimizer = run.optimizer(kind, model)  # fresh: moments and step lost
        for _ in range(steps):
            run.step(model, optimizer)
        polybundle.save(
            out / f"control-{kind}.bundle", {"net": model}, optimizers={"net": optimizer}
        )


def main(argv: list[str]) -> None:
    framework, phase, out, steps = argv[0], argv[1], Path(argv[2]), int(argv[3])
    determinism = argv[4] == "on"
    run = TorchRun(determinism) if framework == "torch" else TensorFlowRun(determinism)
    (first if phase == "first" else second)(run, out, steps)


if __name__ == "__main__":
    main(sys.argv[1:])
