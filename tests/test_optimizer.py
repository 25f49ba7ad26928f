"""Optimizer state in bundles: round trips per algorithm, neutral form, typed errors."""

from __future__ import annotations

import numpy as np
import pytest

import polybundle
from polybundle.model.optimizer import (
    OptimizerState,
    decode_optimizer,
    encode_optimizer,
    from_plain,
    to_plain,
)
from tests.conftest import needs_tensorflow, needs_torch, snapshot_tree


def test_plain_codec_round_trips_tuples_and_infinities() -> None:
    value = {"betas": (0.9, 0.999), "best": float("inf"), "low": float("-inf"), "n": [1, (2,)]}
    assert from_plain(to_plain(value, "x")) == value
    with pytest.raises(polybundle.UnsupportedOptimizerError, match="numpy"):
        to_plain({"lr": np.float32(1.0)}, "opt")


def test_encoded_state_round_trips_and_damage_is_detected() -> None:
    state = OptimizerState(
        "adam", "torch", "torch.optim.adam.Adam", 4,
        groups=[{"parameters": ["a.weight"], "hyperparameters": {"learning_rate": 0.1}}],
        slots={"a.weight": {"m": np.arange(6, dtype=np.float32).reshape(2, 3)}},
    )
    document, arrays = encode_optimizer(state)
    back = decode_optimizer(document, arrays, where="net")
    assert back.step == 4 and back.parameters == ["a.weight"]
    assert np.array_equal(back.slots["a.weight"]["m"], state.slots["a.weight"]["m"])
    other = OptimizerState("adam", "torch", "x", 4, state.groups, {"a.weight": {"v": np.ones(1)}})
    with pytest.raises(polybundle.FormatError, match="damaged"):
        decode_optimizer(document, encode_optimizer(other)[1], where="net")


def _torch_net():
    import torch

    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))


def _torch_cases():
    import torch

    return [
        (torch.optim.Adam, {"lr": 1e-2}),
        (torch.optim.AdamW, {"amsgrad": True, "weight_decay": 0.1}),
        (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
        (torch.optim.RMSprop, {"momentum": 0.5, "centered": True}),
    ]


@needs_torch
@pytest.mark.parametrize("case", range(4))
def test_torch_optimizer_and_scheduler_round_trip(tmp_path, case) -> None:
    import torch

    cls, kwargs = _torch_cases()[case]
    net = _torch_net()
    opt = cls(net.parameters(), **kwargs)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    for _ in range(3):
        opt.zero_grad()
        net(torch.randn(5, 4)).pow(2).mean().backward()
        opt.step()
        sched.step()
    path = tmp_path / "run.bundle"
    manifest = polybundle.save(
        path, {"net": net}, optimizers={"net": opt}, schedulers={"net": sched}
    )
    assert manifest["models"][0]["optimizer"]["state"] == "net/optimizer.json"
    assert {"net/optimizer.json", "net/optimizer.safetensors"} <= manifest["members"].keys()
    bundle = polybundle.load(path, into={"net": _torch_net()})
    state = bundle.optimizer_state("net")
    shapes = {s.name: s.shape for s in bundle.tensor_specs("net")}
    assert state.parameters == list(dict(net.named_parameters()))
    for name, slots in state.slots.items():
        assert all(array.shape == shapes[name] for array in slots.values())
    fresh = cls(bundle.models["net"].parameters())
    fresh_sched = torch.optim.lr_scheduler.StepLR(fresh, step_size=1)
    bundle.restore_optimizer("net", fresh, fresh_sched)
    saved, restored = opt.state_dict(), fresh.state_dict()
    assert saved["param_groups"] == restored["param_groups"]
    assert saved["state"].keys() == restored["state"].keys()
    for index, entry in saved["state"].items():
        for key, value in entry.items():
            assert torch.equal(value, restored["state"][index][key]), key
            assert value.dtype == restored["state"][index][key].dtype
    assert fresh_sched.state_dict() == sched.state_dict()


@needs_torch
def test_torch_typed_errors(tmp_path) -> None:
    import torch

    net = _torch_net()
    before = snapshot_tree(tmp_path)
    with pytest.raises(polybundle.UnsupportedOptimizerError, match="Adagrad"):
        polybundle.save(tmp_path / "a.bundle", {"net": net},
                        optimizers={"net": torch.optim.Adagrad(net.parameters())})
    with pytest.raises(polybundle.OptimizerMismatchError, match="not parameters"):
        polybundle.save(tmp_path / "a.bundle", {"net": net},
                        optimizers={"net": torch.optim.Adam(_torch_net().parameters())})
    assert snapshot_tree(tmp_path) == before
    polybundle.save(tmp_path / "a.bundle", {"net": net},
                    optimizers={"net": torch.optim.Adam(net.parameters())})
    bundle = polybundle.load(tmp_path / "a.bundle", into={"net": _torch_net()})
    with pytest.raises(polybundle.OptimizerMismatchError, match="SGD"):
        bundle.restore_optimizer("net", torch.optim.SGD(bundle.models["net"].parameters(), lr=1))
    with pytest.raises(polybundle.OptimizerMismatchError, match="not parameters"):
        bundle.restore_optimizer("net", torch.optim.Adam(_torch_net().parameters()))
    report = polybundle.inspect(tmp_path / "a.bundle")
    assert report["optimizers"]["net"]["algorithm"] == "adam"


def _keras_net(name="net"):
    import keras

    return keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1)],
        name=name,
    )


def _keras_cases():
    import keras

    schedule = keras.optimizers.schedules.ExponentialDecay(0.01, 10, 0.9)
    return [
        lambda: keras.optimizers.Adam(schedule),
        lambda: keras.optimizers.AdamW(amsgrad=True),
        lambda: keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True),
        lambda: keras.optimizers.RMSprop(momentum=0.5, centered=True),
    ]


@needs_tensorflow
def test_keras_optimizers_round_trip_and_model_keras_holds_no_optimizer(tmp_path) -> None:
    import io
    import zipfile

    import h5py

    x = np.random.RandomState(0).rand(16, 4).astype("float32")
    for make in _keras_cases():
        net = _keras_net()
        opt = make()
        net.compile(opt, "mse")
        net.fit(x, x[:, :1], epochs=2, verbose=0)
        path = tmp_path / "k.bundle"
        polybundle.save(path, {"net": net}, optimizers={"net": opt})
        bundle = polybundle.load(path, into={"net": _keras_net("other")})
        fresh = type(opt)()
        bundle.restore_optimizer("net", fresh)
        assert len(fresh.variables) == len(opt.variables)
        for saved, restored in zip(opt.variables, fresh.variables, strict=True):
            assert np.array_equal(np.asarray(saved), np.asarray(restored)), saved.path
        saved_config, restored_config = opt.get_config(), fresh.get_config()
        saved_config.pop("name"), restored_config.pop("name")
        assert saved_config == restored_config
        with zipfile.ZipFile(path) as outer:
            inner = zipfile.ZipFile(io.BytesIO(outer.read("net/model.keras")))
            with h5py.File(io.BytesIO(inner.read("model.weights.h5")), "r") as h5:
                assert "optimizer" not in h5
        assert net.optimizer is opt


@needs_tensorflow
def test_keras_typed_errors(tmp_path) -> None:
    import keras

    net = _keras_net()
    before = snapshot_tree(tmp_path)
    with pytest.raises(polybundle.UnsupportedOptimizerError, match="Adagrad"):
        polybundle.save(tmp_path / "k.bundle", {"net": net},
                        optimizers={"net": keras.optimizers.Adagrad()})
    stranger = keras.optimizers.Adam()
    stranger.build(_keras_net("other").trainable_variables)
    with pytest.raises(polybundle.OptimizerMismatchError, match="not the model's"):
        polybundle.save(tmp_path / "k.bundle", {"net": net}, optimizers={"net": stranger})
    assert snapshot_tree(tmp_path) == before
    adam = keras.optimizers.Adam()
    polybundle.save(tmp_path / "k.bundle", {"net": net}, optimizers={"net": adam})
    bundle = polybundle.load(tmp_path / "k.bundle", into={"net": _keras_net()})
    with pytest.raises(polybundle.OptimizerMismatchError, match="SGD"):
        bundle.restore_optimizer("net", keras.optimizers.SGD())
    with pytest.raises(polybundle.OptimizerMismatchError, match="already built"):
        bundle.restore_optimizer("net", stranger)


@needs_torch
def test_optimizer_for_an_unknown_role_is_refused(tmp_path) -> None:
    import torch

    net = _torch_net()
    with pytest.raises(polybundle.PolybundleError, match="not in models"):
        polybundle.save(tmp_path / "a.bundle", {"net": net},
                        optimizers={"other": torch.optim.Adam(net.parameters())})
    assert not list(tmp_path.iterdir())
