"""Optimizer state converted between PyTorch and Keras: slots, settings and typed errors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import polybundle
from polybundle.errors import ConversionError, OptimizerMismatchError, UnsupportedOptimizerError
from polybundle.model.optimizer_conversion import convert_optimizer
from tests import reference_architectures as ref
from tests.conftest import needs_tensorflow, needs_torch
from tests.test_training_continuation import (
    _data,
    _optimizer,
    _report,
    _step,
    continue_training,
)

pytestmark = [needs_torch, needs_tensorflow]

NAME = "ref-mlp"


def _trained(backend: str, algorithm: str, settings: dict, steps: int = 3, name: str = NAME):
    model = ref.randomize(polybundle.build(name, ref.CONFIGS[name], backend=backend), seed=1)
    optimizer = _optimizer(backend, algorithm, model, settings)
    x, y = _data()
    for _ in range(steps):
        _step(backend, model, optimizer, x, y)
    return model, optimizer


def _saved(tmp_path, backend: str, algorithm: str, settings: dict, **save_options):
    model, optimizer = _trained(backend, algorithm, settings)
    path = tmp_path / f"{backend}.bundle"
    polybundle.save(path, {"net": model}, optimizers={"net": optimizer}, **save_options)
    return path, model, optimizer


def test_native_class_table_names_the_real_classes():
    import keras
    import torch

    from polybundle_tensorflow.optim import NATIVE_CLASSES as KERAS_CLASSES
    from polybundle_torch.optim import NATIVE_CLASSES as TORCH_CLASSES

    for algorithm, qualified in TORCH_CLASSES.items():
        kind = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD,
                "rmsprop": torch.optim.RMSprop}[algorithm]
        assert qualified == f"{kind.__module__}.{kind.__qualname__}"
    for algorithm, qualified in KERAS_CLASSES.items():
        kind = {"adam": keras.optimizers.Adam, "adamw": keras.optimizers.AdamW,
                "sgd": keras.optimizers.SGD, "rmsprop": keras.optimizers.RMSprop}[algorithm]
        assert qualified == f"{kind.__module__}.{kind.__qualname__}"


CASES = {
    "adam": {"learning_rate": 0.02, "beta_1": 0.8, "beta_2": 0.99, "epsilon": 1e-6,
             "amsgrad": True},
    "adamw": {"learning_rate": 0.02, "weight_decay": 0.03, "epsilon": 1e-6},
    "sgd": {"learning_rate": 0.02, "momentum": 0.7, "nesterov": True},
    "rmsprop": {"learning_rate": 0.02, "rho": 0.8, "momentum": 0.3, "centered": True,
                "epsilon": 1e-6},
}


@pytest.mark.parametrize("algorithm", sorted(CASES))
def test_keras_settings_become_a_torch_optimizers_own_settings(tmp_path, algorithm):
    import torch

    path, _, keras_optimizer = _saved(tmp_path, "tensorflow", algorithm, CASES[algorithm])
    bundle = polybundle.load(path, backend="torch")
    net = bundle.models["net"]
    restored = _optimizer("torch", algorithm, net, {"learning_rate": 0.5})
    bundle.restore_optimizer("net", restored)
    reference = _optimizer("torch", algorithm, torch.nn.Linear(1, 1), CASES[algorithm])
    settings = {k: v for k, v in restored.param_groups[0].items() if k != "params"}
    assert settings == {k: v for k, v in reference.param_groups[0].items() if k != "params"}
    state = restored.state[restored.param_groups[0]["params"][0]]
    if algorithm != "sgd":
        assert int(state["step"]) == int(keras_optimizer.iterations.numpy()) == 3


@pytest.mark.parametrize("algorithm", sorted(CASES))
def test_torch_settings_become_a_keras_optimizers_own_settings(tmp_path, algorithm):
    path, _, _ = _saved(tmp_path, "torch", algorithm, CASES[algorithm])
    bundle = polybundle.load(path, backend="tensorflow")
    restored = _optimizer("tensorflow", algorithm, None, {"learning_rate": 0.5})
    bundle.restore_optimizer("net", restored)
    for key, value in CASES[algorithm].items():
        assert np.isclose(float(np.asarray(getattr(restored, key))), float(value)), key
    steps = 0 if algorithm == "sgd" else 3  # PyTorch's SGD counts no steps
    assert int(restored.iterations.numpy()) == steps


def test_slots_move_with_the_weights_permutation_and_sgd_momentum_is_rescaled(tmp_path):
    path, model, optimizer = _saved(tmp_path, "tensorflow", "sgd",
                                    {"learning_rate": 0.05, "momentum": 0.9})
    bundle = polybundle.load(path, backend="torch")
    keras_state = bundle.optimizer_state("net")
    torch_state = bundle.converted_optimizer_state("net")
    assert torch_state.backend == "torch" and torch_state.step is None
    kernel = next(k for k in keras_state.slots if k.endswith("kernel"))
    # Keras keeps -lr * (PyTorch's buffer), and a Dense kernel is the transposed Linear weight
    expected = -keras_state.slots[kernel]["momentum"].T / np.float32(0.05)
    np.testing.assert_allclose(torch_state.slots["0.weight"]["momentum"], expected, rtol=1e-6)
    assert set(torch_state.parameters) == {k for k, _ in bundle.models["net"].named_parameters()}


def test_convert_writes_the_converted_optimizer_state_into_the_native_bundle(tmp_path):
    import torch

    path, _, _ = _saved(tmp_path, "tensorflow", "adam", {"learning_rate": 0.01})
    manifest = polybundle.convert(path, tmp_path / "pt.bundle", backend="torch")
    assert manifest["models"][0]["optimizer"]["algorithm"] == "adam"
    bundle = polybundle.load(tmp_path / "pt.bundle")
    state = bundle.optimizer_state("net")
    assert (state.backend, state.native_class, state.step) == ("torch", "torch.optim.adam.Adam", 3)
    assert state.native["converted_from"]["backend"] == "tensorflow"
    optimizer = torch.optim.Adam(bundle.models["net"].parameters())
    bundle.restore_optimizer("net", optimizer)
    exported = polybundle.get_backend("torch").export_optimizer(bundle.models["net"], optimizer)
    assert exported.step == 3 and exported.hyperparameters["learning_rate"] == 0.01
    for name, slots in state.slots.items():
        for slot, array in slots.items():
            assert np.array_equal(exported.slots[name][slot], array)


# ------------------------------------------------------------ other algorithms continue too

OTHER = [
    ("adamw", {"learning_rate": 1e-2, "epsilon": 1e-12, "weight_decay": 0.05}),
    ("adam", {"learning_rate": 1e-2, "epsilon": 1e-12, "amsgrad": True}),
    ("sgd", {"learning_rate": 1e-2, "momentum": 0.9, "nesterov": True}),
    ("rmsprop", {"learning_rate": 1e-3, "epsilon": 1e-20, "momentum": 0.5}),  # sqrt: 1e-10
]
"""Epsilon made negligible in both placements, so only float32 rounding differs."""


@pytest.mark.parametrize("source,target", [("tensorflow", "torch"), ("torch", "tensorflow")])
@pytest.mark.parametrize("algorithm,settings", OTHER, ids=[f"{a}-{i}" for i, (a, _) in
                                                          enumerate(OTHER)])
def test_adamw_amsgrad_nesterov_rmsprop_continue_across_frameworks(
    tmp_path, source, target, algorithm, settings
):
    result = continue_training(tmp_path, source, target, algorithm, settings)
    _report(f"{algorithm} {settings} {source}->{target}", result)
    assert result["moved"] > 0.05
    assert result["max_rel"] <= 1e-5  # epsilon made negligible: float32 rounding only


# ------------------------------------------------------------ refusals, before anything changes


def _refused_into_keras(tmp_path, algorithm, settings, *, match, error=UnsupportedOptimizerError,
                        **save_options):
    path, _, _ = _saved(tmp_path, "torch", algorithm, settings, **save_options)
    bundle = polybundle.load(path, backend="tensorflow")
    fresh = _optimizer("tensorflow", algorithm, None, {"learning_rate": 0.5})
    with pytest.raises(error, match=match):
        bundle.restore_optimizer("net", fresh)
    assert not fresh.built and float(np.asarray(fresh.learning_rate)) == 0.5
    with pytest.raises(error, match=match):
        polybundle.convert(path, tmp_path / "out.bundle", backend="tensorflow")
    assert not (tmp_path / "out.bundle").exists()


def test_l2_weight_decay_is_refused_because_keras_decays_decoupled(tmp_path):
    _refused_into_keras(tmp_path, "adam", {"learning_rate": 1e-2, "weight_decay": 0.1},
                        match="decoupled")


def test_a_learning_rate_scheduler_is_refused_not_dropped(tmp_path):
    import torch

    model, optimizer = _trained("torch", "sgd", {"learning_rate": 0.1, "momentum": 0.9})
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2)
    polybundle.save(tmp_path / "s.bundle", {"net": model}, optimizers={"net": optimizer},
                    schedulers={"net": scheduler})
    bundle = polybundle.load(tmp_path / "s.bundle", backend="tensorflow")
    with pytest.raises(UnsupportedOptimizerError, match="schedule"):
        bundle.restore_optimizer("net", _optimizer("tensorflow", "sgd", None, {}))


def test_keras_gradient_clipping_is_refused(tmp_path):
    path, _, _ = _saved(tmp_path, "tensorflow", "adam", {"learning_rate": 1e-2, "clipnorm": 1.0})
    bundle = polybundle.load(path, backend="torch")
    with pytest.raises(UnsupportedOptimizerError, match="clipnorm"):
        bundle.restore_optimizer("net", _optimizer("torch", "adam", bundle.models["net"], {}))


def test_parameter_groups_with_different_settings_are_refused(tmp_path):
    import torch

    model = polybundle.build(NAME, ref.CONFIGS[NAME], backend="torch")
    first, *rest = list(model.parameters())
    optimizer = torch.optim.Adam([{"params": [first], "lr": 0.1}, {"params": rest}], lr=0.01)
    polybundle.save(tmp_path / "g.bundle", {"net": model}, optimizers={"net": optimizer})
    bundle = polybundle.load(tmp_path / "g.bundle", backend="tensorflow")
    with pytest.raises(UnsupportedOptimizerError, match="parameter groups"):
        bundle.restore_optimizer("net", _optimizer("tensorflow", "adam", None, {}))


def test_a_torch_parameter_not_yet_stepped_cannot_join_kerass_single_step_count(tmp_path):
    import torch

    model = polybundle.build(NAME, ref.CONFIGS[NAME], backend="torch")
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.ones(2, 6)).sum().backward()
    model[4].bias.grad = None  # Adam keeps no state for it at step 1
    optimizer.step()
    polybundle.save(tmp_path / "p.bundle", {"net": model}, optimizers={"net": optimizer})
    bundle = polybundle.load(tmp_path / "p.bundle", backend="tensorflow")
    with pytest.raises(ConversionError, match="4.bias"):
        bundle.restore_optimizer("net", _optimizer("tensorflow", "adam", None, {}))
    model(torch.ones(2, 6)).sum().backward()
    optimizer.step()  # now 4.bias has taken 1 step, the others 2
    polybundle.save(tmp_path / "p.bundle", {"net": model}, optimizers={"net": optimizer})
    bundle = polybundle.load(tmp_path / "p.bundle", backend="tensorflow")
    with pytest.raises(UnsupportedOptimizerError, match="different numbers of steps"):
        bundle.restore_optimizer("net", _optimizer("tensorflow", "adam", None, {}))


def test_every_slot_must_map_exactly_once(tmp_path):
    import torch

    model = ref.randomize(polybundle.build("ref-resnet", ref.CONFIGS["ref-resnet"],
                                           backend="torch"))
    optimizer = torch.optim.Adam(model.parameters())
    polybundle.save(tmp_path / "r.bundle", {"net": model}, optimizers={"net": optimizer})
    bundle = polybundle.load(tmp_path / "r.bundle", backend="tensorflow")
    state, plan = bundle.optimizer_state("net"), bundle.conversions["net"]
    specs = polybundle.get_backend("tensorflow").describe(bundle.models["net"])
    backends = {"source": polybundle.get_backend("torch"),
                "target": polybundle.get_backend("tensorflow")}
    counter = next(s.name for s in bundle.tensor_specs("net") if s.slot == "count")
    extra = dataclasses.replace(state, slots={**state.slots, counter: {"m": np.zeros(())}})
    with pytest.raises(ConversionError, match="no counterpart"):
        convert_optimizer(extra, plan, **backends, target_specs=specs)
    stray = dataclasses.replace(state, slots={**state.slots, "nope": {"m": np.zeros(())}})
    with pytest.raises(OptimizerMismatchError, match="nope"):
        convert_optimizer(stray, plan, **backends, target_specs=specs)
    converted = convert_optimizer(state, plan, **backends, target_specs=specs)
    trainable = {v.path for v in bundle.models["net"].trainable_variables}
    assert set(converted.parameters) == set(converted.slots) == trainable
