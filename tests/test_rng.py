"""RNG state: captured as plain JSON, restored so the same numbers come out again."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from polybundle.errors import FormatError
from polybundle.training.rng import capture_rng, decode_rng, encode_rng, restore_rng
from tests.conftest import needs_tensorflow, needs_torch


def _draw() -> list[float]:
    return [random.random(), random.gauss(0, 1), float(np.random.rand()), float(np.random.randn())]


def test_python_and_numpy_state_round_trip_through_json() -> None:
    random.gauss(0, 1)  # leave a cached gaussian in Python's generator
    state = decode_rng(encode_rng(capture_rng()))
    json.dumps(state, allow_nan=False)
    expected = _draw()
    assert _draw() != expected
    restore_rng(state)
    assert _draw() == expected


@needs_torch
def test_torch_cpu_generator_round_trip() -> None:
    import torch

    state = capture_rng()
    assert "torch" in state["backends"]
    expected = torch.rand(5)
    restore_rng(decode_rng(encode_rng(state)))
    assert torch.equal(torch.rand(5), expected)


@needs_tensorflow
def test_tensorflow_global_generator_round_trip() -> None:
    import tensorflow as tf

    tf.random.get_global_generator().normal([1])
    state = capture_rng()
    assert "tensorflow" in state["backends"]
    expected = tf.random.get_global_generator().normal([4]).numpy()
    restore_rng(decode_rng(encode_rng(state)))
    assert np.array_equal(tf.random.get_global_generator().normal([4]).numpy(), expected)


_DETERMINISM_PROCESS = """
import os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import keras, tensorflow as tf
from polybundle.training.rng import capture_rng, decode_rng, encode_rng, restore_rng
tf.config.experimental.enable_op_determinism()
keras.utils.set_random_seed(3)
keras.random.normal((2,))  # Keras' global seed generator exists; TensorFlow's does not
state = decode_rng(encode_rng(capture_rng()))
recorded = state["backends"]["tensorflow"]
assert recorded["state"] is None and "determinism" in recorded["skipped"], recorded
expected = keras.random.normal((3,)).numpy().tolist()
restore_rng(state)
assert keras.random.normal((3,)).numpy().tolist() == expected
tf.random.set_global_generator(tf.random.Generator.from_seed(5))
assert capture_rng()["backends"]["tensorflow"]["state"] is not None
print("ok")
"""


@needs_tensorflow
def test_capture_with_tensorflow_determinism_on_and_no_global_generator() -> None:
    """Issue 16 item 2: before the fix, capture raised RuntimeError from get_global_generator.

    Determinism is process-wide and cannot be turned off, so it runs in its own process.
    """
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", _DETERMINISM_PROCESS], capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-1] == "ok"


@needs_tensorflow
def test_restoring_keras_seed_generator_in_a_fresh_process_keeps_python_random() -> None:
    """Making Keras' global seed generator draws from Python's random; restore it first."""
    import keras
    from keras.src.backend.common import global_state
    from keras.src.random.seed_generator import GLOBAL_SEED_GENERATOR

    keras.random.normal((1,))  # the generator exists when the state is captured
    state = capture_rng()
    expected = _draw()
    global_state.set_global_attribute(GLOBAL_SEED_GENERATOR, None)  # as in a new process
    restore_rng(state)
    assert _draw() == expected


def _good_state() -> dict:
    return decode_rng(encode_rng(capture_rng()))


@pytest.mark.parametrize(
    "damage",
    [
        lambda s: s["python"].update(state=s["python"]["state"][:10]),
        lambda s: s["python"].update(state=["x"] * 625),
        lambda s: s["python"].update(version="3"),
        lambda s: s["python"].update(gauss_next="nan"),
        lambda s: s["numpy"].update(keys=[2**40] * 624),
        lambda s: s["numpy"].update(pos=10**6),
        lambda s: s["numpy"].update(kind="PCG64"),
        lambda s: s.update(backends=[]),
        lambda s: s.update(python=None),
    ],
)
def test_damaged_python_or_numpy_state_is_a_format_error_and_changes_nothing(damage) -> None:
    state = _good_state()
    damage(state)
    random.seed(11)
    np.random.seed(11)
    expected = _draw()
    random.seed(11)
    np.random.seed(11)
    with pytest.raises(FormatError, match="rng.json"):
        restore_rng(state)
    assert _draw() == expected


@pytest.mark.parametrize(
    "data",
    [b"[" * 10_000 + b"]" * 10_000, b'{"format": "polybundle-rng", "python": NaN}', b"\xff"],
)
def test_hostile_rng_json_is_a_format_error(data: bytes) -> None:
    with pytest.raises(FormatError):
        decode_rng(data)


@needs_torch
@pytest.mark.parametrize("cpu", ["!!not base64!!", "AAAA", 5, None])
def test_damaged_torch_generator_state_is_a_format_error(cpu) -> None:
    state = _good_state()
    state["backends"]["torch"] = {"cpu": cpu}
    with pytest.raises(FormatError, match="torch CPU generator"):
        restore_rng(state)


@needs_tensorflow
@pytest.mark.parametrize(
    "tensorflow",
    [
        {"algorithm": 9, "state": [1, 2, 3], "keras_seed": None},
        {"algorithm": 1, "state": ["a", 2, 3], "keras_seed": None},
        {"algorithm": 1, "state": [1, 2], "keras_seed": None},
        {"algorithm": None, "state": None, "keras_seed": [1, 2, 3, 4, 5]},
    ],
)
def test_damaged_tensorflow_generator_state_is_a_format_error(tensorflow) -> None:
    import tensorflow as tf

    tf.random.get_global_generator()
    state = _good_state()
    state["backends"]["tensorflow"] = tensorflow
    with pytest.raises(FormatError, match="rng.json"):
        restore_rng(state)
