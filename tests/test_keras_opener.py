"""One opener of the ``.keras`` zip (issue 11): every reader refuses the same files.

Before, the ranged reader (lazy loading, plain files, Keras' own load) and the in-memory
one (``verify``, legacy archives) checked different things: the ranged one let through a
``.keras`` zip with dozens of extra members, the in-memory one bytes hidden before the
first member, and neither refused ``NaN`` in ``config.json``. A real Keras model is
saved with polybundle, its ``model.keras`` rewritten and every manifest record updated;
``verify`` and lazy reads must both refuse it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import polybundle
from polybundle.errors import FormatError, UnsafeContentError
from polybundle_tensorflow.keras_file import MAX_KERAS_MEMBERS, open_keras

from . import fuzz_mutators as fm
from .conftest import needs_tensorflow

pytestmark = needs_tensorflow

WEIGHTS = "net/model.keras"


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((3,))
    net = keras.Model(inputs, keras.layers.Dense(2, name="d")(inputs))
    path = tmp_path_factory.mktemp("keras_opener") / "seed.bundle"
    polybundle.save(path, {"net": net})
    return path


def _with_keras(seed: Path, out: Path, keras: bytes) -> Path:
    """Write ``seed`` to ``out`` with ``net/model.keras`` replaced (manifest re-recorded)."""
    members = [(n, keras if n == WEIGHTS else d) for n, d in fm.members_of(seed.read_bytes())]
    out.write_bytes(fm.zip_of(fm.rebundle(members)))
    return out


def _keras_parts(seed: Path) -> list[tuple[str, bytes]]:
    return fm.members_of(dict(fm.members_of(seed.read_bytes()))[WEIGHTS])


def test_the_bundle_as_saved_passes_every_reader(saved):
    assert polybundle.verify(saved).ok
    assert polybundle.load(saved, lazy=True).tensors("net")["d/kernel"].shape == (3, 2)


def test_too_many_members_are_refused_by_lazy_reads_too(saved, tmp_path):
    """Only the in-memory reader counted members before; the ranged one took 10 000."""
    extra = [(f"assets/{i}.txt", b"x") for i in range(MAX_KERAS_MEMBERS)]
    path = _with_keras(saved, tmp_path / "many.bundle", fm.zip_of(_keras_parts(saved) + extra))
    lazy = polybundle.load(path, lazy=True)
    with pytest.raises(UnsafeContentError, match=f"holds {MAX_KERAS_MEMBERS + 3} members"):
        lazy.tensors("net")
    report = polybundle.verify(path)
    assert not report.ok and "members" in report.problems[0], report.problems


def test_bytes_hidden_before_the_first_member_are_refused_by_verify_too(saved, tmp_path):
    """Only the ranged reader checked that members tile the zip; verify read it with zipfile."""
    hidden = b"hidden payload" + fm.zip_of(_keras_parts(saved))
    path = _with_keras(saved, tmp_path / "hidden.bundle", hidden)
    report = polybundle.verify(path)
    assert not report.ok and "prepended" in " ".join(report.problems), report.problems
    with pytest.raises(UnsafeContentError, match="prepended"):
        polybundle.load(path, lazy=True).tensors("net")


def test_nan_in_config_json_is_refused_by_every_reader(saved, tmp_path):
    parts = _keras_parts(saved)
    config = json.loads(dict(parts)["config.json"])
    layer = next(item for item in config["config"]["layers"] if item["class_name"] == "Dense")
    layer["config"]["bias_initializer"] = {
        "module": "keras.initializers", "class_name": "Constant",
        "config": {"value": float("nan")}, "registered_name": None,
    }
    text = json.dumps(config).encode()
    assert b"NaN" in text
    keras = fm.zip_of([(n, text if n == "config.json" else d) for n, d in parts])
    path = _with_keras(saved, tmp_path / "nan.bundle", keras)
    report = polybundle.verify(path)
    assert not report.ok and "NaN" in " ".join(report.problems), report.problems
    with pytest.raises(FormatError, match="holds NaN"):
        polybundle.load(path, lazy=True).tensors("net")
    with pytest.raises(FormatError, match="holds NaN"):
        polybundle.load(path)


def test_the_opener_gives_the_same_weights_from_memory_and_from_a_file(saved, tmp_path):
    keras = fm.zip_of(_keras_parts(saved))
    path = tmp_path / "net.keras"
    path.write_bytes(keras)
    in_memory = open_keras(keras, where="net.keras")
    with open(path, "rb") as f:
        from_file = open_keras(f)
        assert from_file.where.endswith("net.keras")
        assert from_file.config == in_memory.config
        assert from_file.weights().read() == in_memory.weights().read()
    assert np.frombuffer(in_memory.weights().read(8), np.uint8).tobytes() == b"\x89HDF\r\n\x1a\n"
