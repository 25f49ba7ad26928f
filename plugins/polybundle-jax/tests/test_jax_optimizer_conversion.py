"""Optimizer state converts between JAX and PyTorch or TensorFlow: training goes on alike.

A reference MLP is trained a few steps in one framework, saved with its
optimizer, loaded in the other (``polybundle.load(path, backend=...)``) and
its optimizer restored from the converted state; both then take 20 more
steps on the same data. The weights agree within 1e-5 of their largest
magnitude at every step (epsilon made negligible, so only float32 rounding
differs). What optax cannot express is refused with a typed error.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import jax_models
import jax_reference
import numpy as np
import pytest

import polybundle
from polybundle.errors import ConversionError, UnsupportedOptimizerError

REPO = Path(__file__).resolve().parents[3]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
ref = pytest.importorskip(
    "tests.reference_architectures", reason="needs the polybundle repository's tests/"
)

HAS = {
    "torch": importlib.util.find_spec("torch") is not None,
    "tensorflow": importlib.util.find_spec("keras") is not None,
}
pytestmark = jax_models.needs_jax

NAME = "ref-mlp"
WARMUP = 5
STEPS = 20
MAX_REL = 1e-5
"""Largest weight difference over the 20 steps, relative to the largest weight."""

CASES = [
    ("adam", {"learning_rate": 1e-2, "beta_1": 0.8, "beta_2": 0.99, "epsilon": 1e-12}),
    ("adamw", {"learning_rate": 1e-2, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-12,
               "weight_decay": 0.05}),
    ("sgd", {"learning_rate": 1e-2, "momentum": 0.9, "nesterov": False}),
    ("sgd", {"learning_rate": 1e-2, "momentum": 0.7, "nesterov": True}),
]
"""Settings by their neutral names; epsilon 1e-12 makes its placement irrelevant."""
DIRECTIONS = [("torch", "jax"), ("jax", "torch"), ("tensorflow", "jax"), ("jax", "tensorflow")]
_TORCH_NAMES = {"learning_rate": "lr", "epsilon": "eps"}


def _need(*frameworks: str) -> None:
    missing = [name for name in frameworks if name != "jax" and not HAS[name]]
    if missing:
        pytest.fail(f"{missing} not installed: this test converts between real frameworks")


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    config = ref.CONFIGS[NAME]
    x = rng.standard_normal((32, config["inputs"]), dtype=np.float32)
    y = rng.standard_normal((32, config["outputs"]), dtype=np.float32)
    return x, y


def _optimizer(backend: str, algorithm: str, model: Any, settings: dict[str, Any]) -> Any:
    """A fresh native optimizer for ``model`` with ``settings`` (neutral names)."""
    if backend == "jax":
        from flax import nnx

        import polybundle_jax

        s = settings
        transformation = {
            "adam": lambda: polybundle_jax.adam(s["learning_rate"], s["beta_1"], s["beta_2"],
                                                s["epsilon"]),
            "adamw": lambda: polybundle_jax.adamw(s["learning_rate"], s["beta_1"],
                                                  s["beta_2"], s["epsilon"],
                                                  weight_decay=s["weight_decay"]),
            "sgd": lambda: polybundle_jax.sgd(s["learning_rate"], s["momentum"], s["nesterov"]),
        }[algorithm]()
        return nnx.Optimizer(model, transformation, wrt=nnx.Param)
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
            "sgd": keras.optimizers.SGD}[algorithm]
    return kind(**settings)


_JAX_STEP: list[Any] = []


def _step(backend: str, model: Any, optimizer: Any, x: np.ndarray, y: np.ndarray) -> None:
    """One step of mean-squared-error training on the batch (x, y)."""
    if backend == "jax":
        if not _JAX_STEP:
            from flax import nnx

            @nnx.jit
            def step(model: Any, optimizer: Any, x: Any, y: Any) -> None:
                grads = nnx.grad(lambda m: ((m(x) - y) ** 2).mean())(model)
                optimizer.update(model, grads)

            _JAX_STEP.append(step)
        _JAX_STEP[0](model, optimizer, x, y)
    elif backend == "torch":
        import torch

        optimizer.zero_grad()
        ((model(torch.from_numpy(x)) - torch.from_numpy(y)) ** 2).mean().backward()
        optimizer.step()
    else:
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(x, training=True) - y))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))


def _weights(backend: str, model: Any) -> dict[str, np.ndarray]:
    if backend == "jax":
        from flax import nnx

        return {".".join(map(str, path)): np.array(variable[...])
                for path, variable in nnx.to_flat_state(nnx.state(model))}
    if backend == "torch":
        return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    return {v.path: np.array(v.numpy()) for v in model.weights}


def _trained(source: str, algorithm: str, settings: dict[str, Any], steps: int = WARMUP):
    jax_reference.register()
    model = ref.randomize(polybundle.build(NAME, ref.CONFIGS[NAME], backend=source), seed=3)
    optimizer = _optimizer(source, algorithm, model, settings)
    x, y = _data()
    for _ in range(steps):
        _step(source, model, optimizer, x, y)
    return model, optimizer


def _fresh(target: str, algorithm: str, model: Any, settings: dict[str, Any]) -> Any:
    """The optimizer to restore into: optax keeps its settings in closures, so JAX's is made
    with the saved settings; the others get a wrong learning rate that the restore fixes."""
    return _optimizer(target, algorithm, model,
                      settings if target == "jax" else {"learning_rate": 0.5})


@pytest.mark.parametrize(("source", "target"), DIRECTIONS,
                         ids=[f"{a}->{b}" for a, b in DIRECTIONS])
@pytest.mark.parametrize(("algorithm", "settings"), CASES,
                         ids=[f"{a}-{i}" for i, (a, _) in enumerate(CASES)])
def test_training_continues_alike_after_conversion(tmp_path, source, target, algorithm,
                                                   settings):
    _need(source, target)
    model, optimizer = _trained(source, algorithm, settings)
    path = tmp_path / f"{source}.bundle"
    polybundle.save(path, {"net": model}, optimizers={"net": optimizer})
    bundle = polybundle.load(path, backend=target)
    twin = bundle.models["net"]
    fresh = _fresh(target, algorithm, twin, settings)
    bundle.restore_optimizer("net", fresh)
    converted = bundle.converted_optimizer_state("net")
    if (target, algorithm) == ("torch", "sgd"):
        expected_step = None  # PyTorch's SGD counts no steps...
    elif (source, algorithm) == ("torch", "sgd"):
        expected_step = 0  # ...so it gives none (SGD's update does not depend on it)
    else:
        expected_step = WARMUP
    assert (converted.backend, converted.step) == (target, expected_step)
    plan = bundle.conversions["net"]
    x, y = _data()
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
    print(f"{algorithm} {settings} {source}->{target}: max_rel={max_abs / scale:.3e} "
          f"moved {moved:.3f}")
    assert moved > 0.05
    assert max_abs / scale <= MAX_REL


def test_without_the_converted_state_training_differs(tmp_path):
    """The control: a fresh optax Adam (no moments, step 0) does not follow PyTorch's."""
    _need("torch")
    algorithm, settings = CASES[0]
    model, optimizer = _trained("torch", algorithm, settings)
    polybundle.save(tmp_path / "t.bundle", {"net": model}, optimizers={"net": optimizer})
    bundle = polybundle.load(tmp_path / "t.bundle", backend="jax")
    twin = bundle.models["net"]
    fresh = _optimizer("jax", algorithm, twin, settings)
    x, y = _data()
    _step("torch", model, optimizer, x, y)
    _step("jax", twin, fresh, x, y)
    expected = bundle.conversions["net"].apply(_weights("torch", model))
    got = _weights("jax", twin)
    assert max(float(np.max(np.abs(got[k] - v))) for k, v in expected.items()) > 1e-3


def test_convert_writes_optax_state_into_a_jax_bundle(tmp_path):
    _need("torch")
    algorithm, settings = CASES[1]
    model, optimizer = _trained("torch", algorithm, settings)
    polybundle.save(tmp_path / "t.bundle", {"net": model}, optimizers={"net": optimizer})
    polybundle.convert(tmp_path / "t.bundle", tmp_path / "j.bundle", backend="jax")
    bundle = polybundle.load(tmp_path / "j.bundle")
    state = bundle.optimizer_state("net")
    assert (state.backend, state.native_class, state.step) == ("jax", "optax.adamw", WARMUP)
    assert state.native["converted_from"]["backend"] == "torch"
    fresh = _optimizer("jax", algorithm, bundle.models["net"], settings)
    bundle.restore_optimizer("net", fresh)
    exported = polybundle.get_backend("jax").export_optimizer(bundle.models["net"], fresh)
    for name, slots in state.slots.items():
        for slot, array in slots.items():
            np.testing.assert_array_equal(exported.slots[name][slot], array)


# ------------------------------------------------------------ refusals, before anything changes


def _refused(tmp_path, source: str, target: str, algorithm: str, settings: dict[str, Any],
             match: str, error: type[Exception] = UnsupportedOptimizerError) -> None:
    _need(source, target)
    model, optimizer = _trained(source, algorithm, settings)
    path = tmp_path / f"{source}.bundle"
    polybundle.save(path, {"net": model}, optimizers={"net": optimizer})
    bundle = polybundle.load(path, backend=target)
    fresh = _optimizer(target, "sgd", bundle.models["net"],
                       {"learning_rate": 0.5, "momentum": 0.9, "nesterov": False})
    before = _weights(target, bundle.models["net"])
    with pytest.raises(error, match=match):
        bundle.restore_optimizer("net", fresh)
    with pytest.raises(error, match=match):
        polybundle.convert(path, tmp_path / "out.bundle", backend=target)
    assert not (tmp_path / "out.bundle").exists()
    after = _weights(target, bundle.models["net"])
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_amsgrad_is_refused_for_optax(tmp_path):
    _refused(tmp_path, "torch", "jax", "adam",
             {"learning_rate": 1e-2, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-8,
              "amsgrad": True}, match="amsgrad")


def test_rmsprop_is_refused_for_optax(tmp_path):
    _refused(tmp_path, "torch", "jax", "rmsprop", {"learning_rate": 1e-3, "momentum": 0.5},
             match="rmsprop is not one of the recipes")


def test_keras_adam_weight_decay_is_refused_for_optax_adam(tmp_path):
    _refused(tmp_path, "tensorflow", "jax", "adam",
             {"learning_rate": 1e-2, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7,
              "weight_decay": 0.1}, match="weight_decay")


def test_epsilon_root_is_refused_outside_optax(tmp_path):
    _need("torch")
    from flax import nnx

    import polybundle_jax

    jax_reference.register()
    model = ref.randomize(polybundle.build(NAME, ref.CONFIGS[NAME], backend="jax"), seed=3)
    optimizer = nnx.Optimizer(model, polybundle_jax.adam(1e-2, eps_root=1e-8), wrt=nnx.Param)
    _step("jax", model, optimizer, *_data())
    polybundle.save(tmp_path / "j.bundle", {"net": model}, optimizers={"net": optimizer})
    bundle = polybundle.load(tmp_path / "j.bundle", backend="torch")
    with pytest.raises(UnsupportedOptimizerError, match="epsilon_root"):
        bundle.restore_optimizer("net", _optimizer("torch", "adam", bundle.models["net"], {}))


def test_a_torch_parameter_not_yet_stepped_is_refused_for_optax(tmp_path):
    _need("torch")
    import torch

    jax_reference.register()
    model = polybundle.build(NAME, ref.CONFIGS[NAME], backend="torch")
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.ones(2, ref.CONFIGS[NAME]["inputs"])).sum().backward()
    model[4].bias.grad = None  # Adam keeps no state for it at step 1
    optimizer.step()
    polybundle.save(tmp_path / "p.bundle", {"net": model}, optimizers={"net": optimizer})
    bundle = polybundle.load(tmp_path / "p.bundle", backend="jax")
    fresh = _optimizer("jax", "adam", bundle.models["net"],
                       {"learning_rate": 1e-3, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-8})
    with pytest.raises(ConversionError, match="4.bias"):
        bundle.restore_optimizer("net", fresh)
