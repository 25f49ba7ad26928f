"""RNG state: captured as plain JSON, restored so the same numbers come out again."""

from __future__ import annotations

import json
import random

import numpy as np

from polybundle.rng import capture_rng, decode_rng, encode_rng, restore_rng
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
