"""Training continues across frameworks: optimizer state converts with the weights.

A model trained a few steps in one framework is saved with its optimizer,
loaded in the other framework (``polybundle.load(path, backend=...)``), its
optimizer restored from the converted state, and both go on for 20 steps on
the same data. The weight trajectories are compared at every step (the
tolerances are stated in ``docs/conversion.md``). Run with ``-s`` to see the
measured numbers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import polybundle
from tests import reference_architectures as ref
from tests.conftest import needs_tensorflow, needs_torch

pytestmark = [needs_torch, needs_tensorflow]

NAME = "ref-mlp"
LR = 1e-2
WARMUP = 5
STEPS = 20
F32_EPS = float(np.finfo(np.float32).eps)

ADAM_MAX_REL = 1e-3
"""Adam (epsilon 1e-7), 20 steps: max |difference| / max |weight| (epsilon placement dominates)."""
ADAM_NO_EPSILON_MAX_REL = 1e-5
"""Adam with epsilon 1e-12 (placement made irrelevant), 20 steps: rounding only."""
SGD_ULPS = 16
"""SGD with momentum, 20 steps: max |difference| <= SGD_ULPS * eps32 * max |weight|."""


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    config = ref.CONFIGS[NAME]
    x = rng.standard_normal((32, config["inputs"]), dtype=np.float32)
    y = rng.standard_normal((32, config["outputs"]), dtype=np.float32)
    return x, y


_TORCH_NAMES = {"learning_rate": "lr", "epsilon": "eps", "rho": "alpha"}


def _optimizer(backend: str, algorithm: str, model: Any, settings: dict[str, Any]) -> Any:
    """A native optimizer; ``settings`` use Keras' names (learning_rate, epsilon, rho ...)."""
    if backend == "torch":
        import torch

        kwargs = {_TORCH_NAMES.get(k, k): v for k, v in settings.items() if "beta" not in k}
        if "beta_1" in settings:
            kwargs["betas"] = (settings["beta_1"], settings["beta_2"])
        kind = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD,
                "rmsprop": torch.optim.RMSprop}[algorithm]
        return kind(model.parameters(), **kwargs)
    import keras

    kind = {"adam": keras.optimizers.Adam, "adamw": keras.optimizers.AdamW,
            "sgd": keras.optimizers.SGD, "rmsprop": keras.optimizers.RMSprop}[algorithm]
    return kind(**settings)


def _step(backend: str, model: Any, optimizer: Any, x: np.ndarray, y: np.ndarray) -> None:
    """One step of mean-squared-error training on the batch (x, y)."""
    if backend == "torch":
        import torch

        optimizer.zero_grad()
        loss = ((model(torch.from_numpy(x)) - torch.from_numpy(y)) ** 2).mean()
        loss.backward()
        optimizer.step()
        return
    import tensorflow as tf

    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(model(x, training=True) - y))
    grads = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))


def _weights(backend: str, model: Any) -> dict[str, np.ndarray]:
    if backend == "torch":
        return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    return {v.path: np.array(v.numpy()) for v in model.weights}


def continue_training(
    tmp_path: Any, source: str, target: str, algorithm: str, settings: dict[str, Any],
    *, restore: bool = True, warmup: int = WARMUP,
) -> dict[str, float]:
    """Train ``warmup`` steps in ``source``, save, load in ``target``, train STEPS more in both.

    Returns the largest weight difference over the 20 steps (``max_abs``, and
    ``max_rel`` = max_abs / max |weight|), how far the weights moved
    (``moved``), and the target optimizer's restored step. With
    ``restore=False`` the target starts a fresh optimizer (the control).
    """
    x, y = _data()
    model = ref.randomize(polybundle.build(NAME, ref.CONFIGS[NAME], backend=source), seed=3)
    optimizer = _optimizer(source, algorithm, model, settings)
    for _ in range(warmup):
        _step(source, model, optimizer, x, y)
    path = tmp_path / f"{source}-{algorithm}.bundle"
    polybundle.save(path, {"net": model}, optimizers={"net": optimizer})
    bundle = polybundle.load(path, backend=target)
    twin = bundle.models["net"]
    fresh = _optimizer(target, algorithm, twin, {"learning_rate": 0.5})  # settings come back
    if restore:
        bundle.restore_optimizer("net", fresh)
    else:
        fresh = _optimizer(target, algorithm, twin, settings)
    plan = bundle.conversions["net"]
    start = plan.apply(_weights(source, model))
    max_abs, scale, moved = 0.0, 0.0, 0.0
    for _ in range(STEPS):
        _step(source, model, optimizer, x, y)
        _step(target, twin, fresh, x, y)
        expected, got = plan.apply(_weights(source, model)), _weights(target, twin)
        for name, value in expected.items():
            max_abs = max(max_abs, float(np.max(np.abs(got[name] - value))))
            scale = max(scale, float(np.max(np.abs(value))))
            moved = max(moved, float(np.max(np.abs(value - start[name]))))
    return {"max_abs": max_abs, "max_rel": max_abs / scale, "scale": scale, "moved": moved}


def _report(label: str, result: dict[str, float]) -> None:
    print(f"{label}: max_abs={result['max_abs']:.3e} max_rel={result['max_rel']:.3e} "
          f"(max|w|={result['scale']:.3f}, moved {result['moved']:.3f}, "
          f"{result['max_abs'] / (F32_EPS * result['scale']):.1f} ulp of max|w|)")


DIRECTIONS = [("tensorflow", "torch"), ("torch", "tensorflow")]


@pytest.mark.parametrize("source,target", DIRECTIONS)
def test_adam_trajectories_agree_after_conversion(tmp_path, source, target):
    result = continue_training(tmp_path, source, target, "adam", {"learning_rate": LR,
                                                                  "epsilon": 1e-7})
    no_epsilon = continue_training(tmp_path, source, target, "adam", {"learning_rate": LR,
                                                                      "epsilon": 1e-12})
    control = continue_training(tmp_path, source, target, "adam", {"learning_rate": LR,
                                                                   "epsilon": 1e-7},
                                restore=False)
    _report(f"adam eps=1e-7 {source}->{target}", result)
    _report(f"adam eps=1e-12 {source}->{target}", no_epsilon)
    _report(f"adam {source}->{target}, fresh optimizer (control)", control)
    assert result["moved"] > 0.1  # 20 real steps, not a stalled run
    assert result["max_rel"] <= ADAM_MAX_REL
    assert no_epsilon["max_rel"] <= ADAM_NO_EPSILON_MAX_REL
    assert result["max_abs"] > 5 * no_epsilon["max_abs"]  # the documented epsilon effect
    assert control["max_rel"] > 100 * ADAM_MAX_REL  # the converted moments are what agrees


@pytest.mark.parametrize("source,target", DIRECTIONS)
def test_sgd_momentum_trajectories_agree_within_float32_rounding(tmp_path, source, target):
    settings = {"learning_rate": LR, "momentum": 0.9}
    result = continue_training(tmp_path, source, target, "sgd", settings)
    control = continue_training(tmp_path, source, target, "sgd", settings, restore=False)
    _report(f"sgd-momentum {source}->{target}", result)
    _report(f"sgd-momentum {source}->{target}, fresh optimizer (control)", control)
    assert result["moved"] > 0.1
    assert result["max_abs"] <= SGD_ULPS * F32_EPS * result["scale"]
    assert control["max_abs"] > 1000 * SGD_ULPS * F32_EPS * result["scale"]
