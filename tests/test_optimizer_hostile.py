"""Hostile optimizer state: every malformed ``optimizer.json``/``.safetensors`` is a typed error.

Issue 10 item 4. Each case saves a real model with a real optimizer through
``polybundle.save(..., optimizers=...)``, rewrites the optimizer members inside
the bundle and fixes up the manifest's sizes and digests (an attacker writes
the whole file), then loads it and restores the optimizer. The only allowed
outcome is a :class:`~polybundle.errors.FormatError` or
:class:`~polybundle.errors.OptimizerError` with the fresh optimizer left
untouched; ``verify`` never raises, and reports what it can see without a
framework (the neutral document and the slot arrays).
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import polybundle
from polybundle.errors import FormatError, OptimizerError, PolybundleError, UnsafeContentError
from polybundle.format.arrays import load_arrays, save_arrays
from tests.conftest import needs_tensorflow, needs_torch
from tests.hostile_corpus import _members, _rebundle

STATE = "net/optimizer.json"
SLOTS = "net/optimizer.safetensors"

Document = dict[str, Any]
TYPED = (FormatError, OptimizerError, UnsafeContentError)
"""What hostile optimizer state may raise (a size past any real tensor is unsafe content)."""


def _hostile_copy(
    source: Path,
    target: Path,
    *,
    document: Callable[[Document], Any] | None = None,
    raw_document: bytes | None = None,
    slots: Callable[[bytes], bytes] | None = None,
) -> Path:
    """Rewrite the optimizer members of ``source`` into ``target`` with a matching manifest."""
    members = _members(source)
    contents = dict(members)
    new = {}
    if document is not None:
        parsed = json.loads(contents[STATE])
        changed = document(parsed)
        new[STATE] = _dumps(parsed if changed is None else changed)
    if raw_document is not None:
        new[STATE] = raw_document
    if slots is not None:
        new[SLOTS] = slots(contents[SLOTS])
    return _rebundle(target, [(name, new.get(name, data)) for name, data in members])


def _set(path: str, value: Any) -> Callable[[Document], None]:
    """Return a change that sets ``document[path...] = value`` (path items split on '.')."""

    def change(document: Document) -> None:
        *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
        node: Any = document
        for part in parents:
            node = node[part]
        node[last] = value

    return change


def _deep(levels: int) -> str:
    """Return a placeholder that :func:`_dumps` expands to ``levels`` nested arrays."""
    return f"__deep__{levels}"


def _dumps(value: Any) -> bytes:
    """``json.dumps`` that expands :func:`_deep` placeholders (json itself would recurse)."""
    text = json.dumps(value)
    return re.sub(r'"__deep__(\d+)"', lambda m: "[" * int(m[1]) + "0" + "]" * int(m[1]),
                  text).encode()


def _reslot(change: Callable[[dict[str, np.ndarray]], None]) -> Callable[[bytes], bytes]:
    def rewrite(data: bytes) -> bytes:
        arrays = {k: np.array(v) for k, v in load_arrays(data, where="x").items()}
        change(arrays)
        return save_arrays(arrays)

    return rewrite


def _header(change: Callable[[dict[str, Any]], None]) -> Callable[[bytes], bytes]:
    """Edit the safetensors header in place of its JSON, keeping the data bytes."""

    def rewrite(data: bytes) -> bytes:
        (length,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + length])
        change(header)
        text = _dumps(header)
        return struct.pack("<Q", len(text)) + text + data[8 + length :]

    return rewrite


def _first_key(header: dict[str, Any]) -> str:
    return next(key for key in header if key != "__metadata__")


# Damage a restore must refuse and verify must report (no framework needed to see it).
NEUTRAL_CASES: dict[str, dict[str, Any]] = {
    "lr-string": {"document": _set("groups.0.hyperparameters.learning_rate", "0.1")},
    "lr-negative": {"document": _set("groups.0.hyperparameters.learning_rate", -0.5)},
    "lr-list": {"document": _set("groups.0.hyperparameters.learning_rate", [0.1])},
    "lr-nan": {"raw_document": b'{"format": "polybundle-optimizer", "version": 1, '
               b'"groups": [{"hyperparameters": {"learning_rate": NaN}}]}'},
    "lr-bool": {"document": _set("groups.0.hyperparameters.learning_rate", True)},
    "beta-above-one": {"document": _set("groups.0.hyperparameters.beta_1", 1.5)},
    "amsgrad-string": {"document": _set("groups.0.hyperparameters.amsgrad", "no")},
    "step-string": {"document": _set("step", "10")},
    "step-negative": {"document": _set("step", -1)},
    "step-huge": {"document": _set("step", 2**70)},
    "step-bool": {"document": _set("step", True)},
    "step-null-for-adam": {"document": _set("step", None)},
    "safetensors-dtype-list": {"slots": _header(
        lambda h: h[_first_key(h)].update(dtype=["F32"]))},
    "version-5000-digits": {"raw_document": b'{"version": 1' + b"0" * 5000 + b"}"},
    "version-newer": {"document": _set("version", 2)},
    "not-an-object": {"document": lambda d: [d]},
    "groups-not-list": {"document": _set("groups", {"parameters": []})},
    "group-not-object": {"document": _set("groups.0", "all")},
    "group-no-parameters": {"document": lambda d: d["groups"][0].pop("parameters") and None},
    "parameter-not-string": {"document": _set("groups.0.parameters.0", 7)},
    "parameter-twice": {"document": lambda d: d["groups"][0]["parameters"].append(
        d["groups"][0]["parameters"][0])},
    "slots-for-unknown-tensor": {"document": lambda d: d["slots"].update(ghost=["m"])},
    "slot-name-with-slash": {"document": lambda d: d["slots"].update(
        {next(iter(d["slots"])): ["m/x"]})},
    "slots-not-list": {"document": lambda d: d["slots"].update({next(iter(d["slots"])): "m"})},
    "slot-array-missing": {"document": lambda d: d["slots"][next(iter(d["slots"]))].append("z")},
    "schedule-not-object": {"document": _set("schedule", {"class": 5})},
    "deep-native": {"document": _set("native", {"x": _deep(5000)})},
    "deep-hyperparameter": {"document": _set("groups.0.hyperparameters.extra", _deep(100))},
    "duplicate-key": {"raw_document": b'{"format": "polybundle-optimizer", '
                      b'"format": "polybundle-optimizer"}'},
    "slot-wrong-shape": {"slots": _reslot(
        lambda a: a.update({k: np.zeros((7, 7), v.dtype) for k, v in list(a.items())[:1]}))},
    "slot-integer": {"slots": _reslot(
        lambda a: a.update({k: np.zeros(v.shape, np.int64) for k, v in list(a.items())[:1]}))},
    "slot-unlisted": {"slots": _reslot(lambda a: a.update({"m/ghost": np.zeros(2, np.float32)}))},
    "safetensors-garbage": {"slots": lambda data: b"\x00" * 3},
    "safetensors-header-too-long": {"slots": lambda data: struct.pack("<Q", 2**62) + data[8:]},
    "safetensors-bad-dtype": {"slots": _header(
        lambda h: h[_first_key(h)].update(dtype="F128"))},
    "safetensors-overlap": {"slots": _header(
        lambda h: [h[k].update(data_offsets=[0, h[k]["data_offsets"][1] - h[k]["data_offsets"][0]])
                   for k in h if k != "__metadata__"])},
    "safetensors-offsets-outside": {"slots": _header(
        lambda h: h[_first_key(h)].update(data_offsets=[0, 2**40]))},
    "safetensors-shape-lie": {"slots": _header(
        lambda h: h[_first_key(h)].update(shape=[2**31, 2**31]))},
    "safetensors-deep-header": {"slots": _header(lambda h: h.update(__metadata__=_deep(3000)))},
}


# Damage only the framework can see (its native settings): restore refuses it.
TORCH_NATIVE_CASES: dict[str, dict[str, Any]] = {
    "native-lr-string": {"document": _set("native.param_groups.0.lr", "0.1")},
    "native-lr-negative": {"document": _set("native.param_groups.0.lr", -1.0)},
    "native-lr-disagrees": {"document": _set("native.param_groups.0.lr", 0.5)},
    "native-lr-inf": {"document": _set("native.param_groups.0.lr", {"__float__": "inf"})},
    "native-float-text": {"document": _set("native.param_groups.0.eps", {"__float__": "1e-8"})},
    "native-betas-list": {"document": _set("native.param_groups.0.betas", [0.9, 0.999])},
    "native-tuple-not-list": {"document": _set("native.param_groups.0.betas", {"__tuple__": 3})},
    "native-no-groups": {"document": lambda d: d["native"].pop("param_groups") and None},
    "native-group-count": {"document": _set("native.param_groups", [])},
    "native-unknown-text": {"document": _set("native.param_groups.0.hack", "rm -rf")},
    "native-flag-string": {"document": _set("native.param_groups.0.foreach", "yes")},
    "native-params-smuggled": {"document": _set("native.param_groups.0.params", [0, 0])},
    "native-steps-bad": {"document": _set("native.steps", {"0.weight": "many"})},
}

KERAS_NATIVE_CASES: dict[str, dict[str, Any]] = {
    "config-lr-string": {"document": _set("native.config.learning_rate", "0.1")},
    "config-lr-negative": {"document": _set("native.config.learning_rate", -1.0)},
    "config-epsilon-list": {"document": _set("native.config.epsilon", [1e-7])},
    "config-use-ema": {"document": _set("native.config.use_ema", True)},
    "config-not-object": {"document": _set("native.config", "adam")},
    "config-no-lr": {"document": lambda d: d["native"]["config"].pop("learning_rate") and None},
    "schedule-foreign-class": {"document": _set("schedule", {
        "class": "os.system", "config": {"module": "os", "class_name": "system", "config": {}}})},
}


# --- PyTorch ---------------------------------------------------------------------------------


def _torch_model():  # noqa: ANN202
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))


@pytest.fixture(scope="module")
def torch_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    model = _torch_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(2):
        optimizer.zero_grad()
        model(torch.randn(5, 3)).square().sum().backward()
        optimizer.step()
    path = tmp_path_factory.mktemp("torch") / "adam.bundle"
    polybundle.save(path, {"net": model}, optimizers={"net": optimizer})
    return path


def _torch_restore(path: Path, *, verify_sees: bool) -> PolybundleError:
    import torch

    report = polybundle.verify(path)  # never raises
    model = _torch_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.123)
    with pytest.raises(PolybundleError) as raised:
        bundle = polybundle.load(path, into={"net": model})
        bundle.restore_optimizer("net", optimizer)
    assert isinstance(raised.value, TYPED), raised.value
    assert optimizer.state_dict()["state"] == {}  # nothing restored
    assert optimizer.param_groups[0]["lr"] == 0.123
    if verify_sees:
        assert not report.ok and report.problems, report
    return raised.value


@needs_torch
def test_the_unaltered_torch_bundle_restores_and_verifies(torch_bundle: Path, tmp_path) -> None:
    """The harness itself: the same rewrite with no change gives a bundle that works."""
    import torch

    path = _hostile_copy(torch_bundle, tmp_path / "same.bundle", document=lambda d: None)
    assert polybundle.verify(path).ok
    model = _torch_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.123)
    polybundle.load(path, into={"net": model}).restore_optimizer("net", optimizer)
    assert optimizer.param_groups[0]["lr"] == 0.01 and optimizer.state_dict()["state"]


@needs_torch
@pytest.mark.parametrize("case", sorted(NEUTRAL_CASES))
def test_torch_neutral_damage_is_refused_and_reported(torch_bundle: Path, tmp_path, case) -> None:
    path = _hostile_copy(torch_bundle, tmp_path / f"{case}.bundle", **NEUTRAL_CASES[case])
    _torch_restore(path, verify_sees=True)


@needs_torch
@pytest.mark.parametrize("case", sorted(TORCH_NATIVE_CASES))
def test_torch_native_damage_is_refused(torch_bundle: Path, tmp_path, case) -> None:
    path = _hostile_copy(torch_bundle, tmp_path / f"{case}.bundle", **TORCH_NATIVE_CASES[case])
    _torch_restore(path, verify_sees=False)


@needs_torch
def test_inspect_refuses_a_deep_optimizer_document(torch_bundle: Path, tmp_path) -> None:
    path = _hostile_copy(torch_bundle, tmp_path / "deep.bundle",
                         document=_set("groups.0.hyperparameters.x", _deep(10_000)))
    with pytest.raises(FormatError, match="nests"):
        polybundle.inspect(path)


# --- Keras -----------------------------------------------------------------------------------


def _keras_model():  # noqa: ANN202
    import keras

    return keras.Sequential([keras.Input((3,)), keras.layers.Dense(4), keras.layers.Dense(2)])


@pytest.fixture(scope="module")
def keras_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import keras

    model = _keras_model()
    optimizer = keras.optimizers.Adam(0.01)
    model.compile(optimizer=optimizer, loss="mse")
    x = np.random.default_rng(0).random((8, 3), dtype=np.float32)
    model.fit(x, x[:, :2], epochs=2, verbose=0)
    path = tmp_path_factory.mktemp("keras") / "adam.bundle"
    polybundle.save(path, {"net": model}, optimizers={"net": optimizer})
    return path


def _keras_restore(path: Path, *, verify_sees: bool) -> PolybundleError:
    import keras

    report = polybundle.verify(path)  # never raises
    model = _keras_model()
    optimizer = keras.optimizers.Adam(0.123)
    with pytest.raises(PolybundleError) as raised:
        bundle = polybundle.load(path, into={"net": model})
        bundle.restore_optimizer("net", optimizer)
    assert isinstance(raised.value, TYPED), raised.value
    assert not optimizer.built  # nothing restored
    assert float(np.asarray(optimizer.learning_rate)) == pytest.approx(0.123)
    if verify_sees:
        assert not report.ok and report.problems, report
    return raised.value


@needs_tensorflow
def test_the_unaltered_keras_bundle_restores_and_verifies(keras_bundle: Path, tmp_path) -> None:
    import keras

    path = _hostile_copy(keras_bundle, tmp_path / "same.bundle", document=lambda d: None)
    assert polybundle.verify(path).ok
    model = _keras_model()
    optimizer = keras.optimizers.Adam(0.123)
    polybundle.load(path, into={"net": model}).restore_optimizer("net", optimizer)
    assert float(np.asarray(optimizer.learning_rate)) == pytest.approx(0.01)


@needs_tensorflow
@pytest.mark.parametrize(
    "case", ["lr-string", "lr-negative", "step-string", "slot-wrong-shape", "deep-native",
             "safetensors-overlap"]
)
def test_keras_neutral_damage_is_refused_and_reported(keras_bundle: Path, tmp_path, case) -> None:
    path = _hostile_copy(keras_bundle, tmp_path / f"{case}.bundle", **NEUTRAL_CASES[case])
    _keras_restore(path, verify_sees=True)


@needs_tensorflow
@pytest.mark.parametrize("case", sorted(KERAS_NATIVE_CASES))
def test_keras_native_damage_is_refused(keras_bundle: Path, tmp_path, case) -> None:
    path = _hostile_copy(keras_bundle, tmp_path / f"{case}.bundle", **KERAS_NATIVE_CASES[case])
    _keras_restore(path, verify_sees=False)


@needs_tensorflow
def test_keras_config_cannot_overwrite_optimizer_attributes(keras_bundle: Path, tmp_path) -> None:
    """A config key naming a method (``apply_gradients``) is not set on the optimizer."""
    import keras

    path = _hostile_copy(keras_bundle, tmp_path / "attr.bundle",
                         document=_set("native.config.apply_gradients", 1.0))
    model = _keras_model()
    optimizer = keras.optimizers.Adam(0.123)
    polybundle.load(path, into={"net": model}).restore_optimizer("net", optimizer)
    assert callable(optimizer.apply_gradients)
