"""Hostile ``config.json`` in a format-2 Keras bundle loaded without a builder (issue 10).

A real Keras model is saved with polybundle; the attacker rewrites one layer
field of ``model.keras/config.json`` (or drops a tensor from the manifest) and
re-records every size and digest of the manifest. ``load`` must raise a
:class:`~polybundle.errors.PolybundleError` (never Keras' or TensorFlow's own
errors), Keras must not allocate what the config declares, and ``verify``
must not say ok for a file ``load`` refuses. Bare ``.keras`` files (no
manifest) go through the same config checks.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import polybundle
from polybundle.errors import (
    FormatError,
    IntegrityError,
    PolybundleError,
    TensorMismatchError,
)

from . import fuzz_mutators as fm
from .conftest import needs_tensorflow

pytestmark = needs_tensorflow

WEIGHTS = "net/model.keras"


def _save_functional(path: Path) -> dict[str, np.ndarray]:
    """Save a two-Dense functional model (no builder); return its weights by variable path."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((3,))
    hidden = keras.layers.Dense(4, name="h")(inputs)
    net = keras.Model(inputs, keras.layers.Dense(2, name="d")(hidden))
    polybundle.save(path, {"net": net})
    return {v.path: np.asarray(v) for v in net.weights}


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    path = tmp_path_factory.mktemp("keras_config") / "seed.bundle"
    return path, _save_functional(path)


def _rewrite(seed: Path, out: Path, *, layer: str | None = None, field: str = "",
             value: Any = None, drop: int | None = None) -> Path:
    """Write ``seed`` to ``out`` with one layer field changed or one manifest tensor dropped."""
    members = fm.members_of(seed.read_bytes())
    manifest = json.loads(dict(members)["manifest.json"])
    if layer is not None:
        parts = fm.members_of(dict(members)[WEIGHTS])
        config = json.loads(dict(parts)["config.json"])
        for item in config["config"]["layers"]:
            if item["config"].get("name") == layer:
                item["config"][field] = value
        text = json.dumps(config).encode()
        keras = fm.zip_of([(n, text if n == "config.json" else d) for n, d in parts])
        members = [(n, keras if n == WEIGHTS else d) for n, d in members]
    if drop is not None:
        manifest["models"][0]["tensors"].pop(drop)
    out.write_bytes(fm.zip_of(fm.rebundle(members, manifest)))
    return out


FIELDS = [
    ("h", "kernel_size", None),
    ("h", "kernel_size", 4),
    ("d", "activation", "x"),
    ("h", "activation", [3, 3]),
    ("d", "activation", -1),
    ("d", "name", 2**31),
    ("d", "use_bias", None),
    ("d", "dtype", "exec"),
    ("h", "units", 0),
    ("h", "units", True),
]


@pytest.mark.parametrize(("layer", "field", "value"), FIELDS)
def test_hostile_layer_field_is_refused_by_load_and_verify(saved, tmp_path, layer, field, value):
    seed, _ = saved
    path = _rewrite(seed, tmp_path / "bad.bundle", layer=layer, field=field, value=value)
    with pytest.raises(FormatError, match="config.json"):
        polybundle.load(path)
    report = polybundle.verify(path)
    assert not report.ok
    assert any(field in problem for problem in report.problems), report.problems


def test_units_larger_than_the_weights_are_refused_before_keras_builds(saved, tmp_path):
    seed, _ = saved
    path = _rewrite(seed, tmp_path / "big.bundle", layer="h", field="units", value=5)
    with pytest.raises(FormatError, match="declares 5 units"):
        polybundle.load(path)
    report = polybundle.verify(path)
    assert not report.ok and "declares 5 units" in report.problems[0]


def test_units_2_31_allocates_nothing_under_a_3_gib_address_space(saved, tmp_path):
    seed, _ = saved
    path = _rewrite(seed, tmp_path / "huge.bundle", layer="h", field="units", value=2**31)
    script = textwrap.dedent(
        f"""
        import resource, sys
        import polybundle, keras  # import the frameworks before the cap
        resource.setrlimit(resource.RLIMIT_AS, (3 * 2**30, 3 * 2**30))
        try:
            polybundle.load({str(path)!r})
        except polybundle.errors.PolybundleError as exc:
            print("typed", type(exc).__name__, exc)
            sys.exit(0)
        except BaseException as exc:
            print("untyped", type(exc).__name__, exc)
            sys.exit(3)
        print("loaded")
        sys.exit(4)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "typed FormatError" in done.stdout and "2147483648" in done.stdout
    assert not polybundle.verify(path).ok


def test_keras_errors_from_the_rebuild_become_format_errors(saved, tmp_path):
    """A field the checks do not cover: Keras' own error comes back as a FormatError."""
    seed, _ = saved
    path = _rewrite(seed, tmp_path / "odd.bundle", layer="d", field="kernel_initializer",
                    value={"module": "keras.initializers", "class_name": "NoSuchInit",
                           "config": {}, "registered_name": None})
    with pytest.raises(PolybundleError) as caught:
        polybundle.load(path)
    assert isinstance(caught.value, FormatError)
    assert WEIGHTS in str(caught.value) or "model.keras" in str(caught.value)


def test_a_dataset_the_manifest_does_not_list_is_refused_by_every_path(saved, tmp_path):
    seed, _ = saved
    path = _rewrite(seed, tmp_path / "drop.bundle", drop=0)
    with pytest.raises(IntegrityError, match="does not list"):
        polybundle.load(path)
    with pytest.raises(IntegrityError, match="does not list"):
        polybundle.load(path, lazy=True).tensors("net")
    report = polybundle.verify(path)
    assert not report.ok
    assert any("does not list" in problem for problem in report.problems), report.problems


def test_a_valid_bundle_still_loads_through_the_deferred_rebuild(saved):
    seed, weights = saved
    model = polybundle.load(seed).models["net"]
    assert {v.path: np.asarray(v) for v in model.weights}.keys() == weights.keys()
    for variable in model.weights:
        np.testing.assert_array_equal(np.asarray(variable), weights[variable.path])
    assert polybundle.verify(seed).ok


def test_dtype_in_config_other_than_the_manifest_is_refused(saved, tmp_path):
    seed, _ = saved
    path = _rewrite(seed, tmp_path / "f16.bundle", layer="d", field="dtype", value="float16")
    with pytest.raises(TensorMismatchError, match="float16"):
        polybundle.load(path)
    report = polybundle.verify(path)
    assert not report.ok and "holds float32 values" in report.problems[0], report.problems


DEFERRED = """
import io, json, resource, sys, zipfile
import keras, polybundle
from polybundle.model.backend import TensorSpec
from polybundle_tensorflow.backend import TensorFlowBackend
from polybundle.errors import TensorMismatchError
resource.setrlimit(resource.RLIMIT_AS, (3 * 2**30, 3 * 2**30))
with zipfile.ZipFile(sys.argv[1]) as archive:
    manifest = json.loads(archive.read("manifest.json"))
    data = archive.read("net/model.keras")
config = json.loads(zipfile.ZipFile(io.BytesIO(data)).read("config.json"))
config["config"]["layers"][2]["config"]["units"] = 2**31
specs = [TensorSpec.from_json(t) for t in manifest["models"][0]["tensors"]]
try:
    TensorFlowBackend()._rebuild_deferred(config, io.BytesIO(data), specs, "net/model.keras")
except TensorMismatchError as exc:
    print("refused", exc)
    sys.exit(0)
"""


def test_the_deferred_rebuild_compares_shapes_before_allocating(saved):
    """Past the config checks, Keras builds units=2**31 (32 GiB) with nothing allocated."""
    seed, _ = saved
    done = subprocess.run(
        [sys.executable, "-c", DEFERRED, str(seed)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "refused" in done.stdout and "d/kernel" in done.stdout


def test_legacy_archive_with_a_hostile_config_is_not_migrated(legacy_dir, tmp_path):
    """Migrate copies model.keras byte for byte: it refuses a config load and verify refuse."""
    members = fm.members_of((legacy_dir / "tf_era_shared.zip").read_bytes())
    name = "diffraction_to_obj/model.keras"
    parts = fm.members_of(dict(members)[name])
    config = json.loads(dict(parts)["config.json"])
    dense = [item for item in config["config"]["layers"] if "units" in item["config"]
             or "filters" in item["config"]]
    dense[0]["config"]["kernel_size"] = "relu"
    text = json.dumps(config).encode()
    keras = fm.zip_of([(n, text if n == "config.json" else d) for n, d in parts])
    source = tmp_path / "legacy.zip"
    source.write_bytes(fm.zip_of([(n, keras if n == name else d) for n, d in members]))
    with pytest.raises(FormatError, match="kernel_size"):
        polybundle.migrate(source, tmp_path / "out.bundle")
    assert not (tmp_path / "out.bundle").exists()
    assert not polybundle.verify(source).ok
