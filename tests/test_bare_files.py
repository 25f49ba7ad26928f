"""Plain framework files as one-role bundles (issue 16 item 5).

A file written by Keras ``model.save("model.keras")`` or by
``torch.save(model.state_dict(), "model.pth")`` is detected (through the
``polybundle_detect_archive`` hook) as a bundle with one role, ``model``, and
no params: it loads (eagerly and lazily), inspects, verifies, converts to the
other framework with builders registered under ``model``, and migrates into a
format-2 bundle. A whole pickled ``nn.Module`` is refused with a hint to save a
state_dict. Every file here is written by the real framework.
"""

from __future__ import annotations

import numpy as np
import pytest

import polybundle
from polybundle.api.lazy import LazyTensors
from polybundle.errors import FormatError, UnknownArchitectureError, UnsafeContentError
from polybundle.format.archive import ArchiveReader
from polybundle.format.detection import PLAIN_ROLE, Detection
from polybundle.hooks.manager import get_plugin_manager
from polybundle.hooks.registry import get_registry
from polybundle.tools.cli import main

from . import models
from .conftest import needs_tensorflow, needs_torch, snapshot_tree

REF = "ref-conv-autoencoder"


@pytest.fixture
def model_builders():
    """Register the test convnet under the plain-file role name ``model`` in both frameworks."""
    registry = get_registry()
    registry.register_builder(
        PLAIN_ROLE, "torch", lambda config: models.torch_convnet(models.CONFIG), replace=True
    )
    registry.register_builder(
        PLAIN_ROLE, "tensorflow", lambda config: models.keras_convnet(models.CONFIG), replace=True
    )
    yield
    for backend in ("torch", "tensorflow"):
        registry.builders.pop((PLAIN_ROLE, backend), None)


@pytest.fixture
def torch_file(tmp_path):
    import torch

    net = models.trained_torch(seed=1)
    path = tmp_path / "net.pth"
    torch.save(net.state_dict(), path)
    return path, net


@pytest.fixture
def keras_file(tmp_path):
    net = models.trained_keras(seed=2)
    path = tmp_path / "model.keras"
    net.save(path)
    return path, net


def _hook_detection(path) -> Detection:
    with ArchiveReader(path) as archive:
        return get_plugin_manager().hook.polybundle_detect_archive(archive=archive)


@needs_torch
def test_torch_state_dict_file_loads_inspects_and_verifies(torch_file):
    path, net = torch_file
    assert _hook_detection(path) == Detection("torch-file", "torch")
    expected = {k: v.numpy() for k, v in net.state_dict().items()}

    bundle = polybundle.load(path)
    assert (bundle.manifest["format"], bundle.roles, bundle.params) == ("torch-file", ["model"], {})
    with pytest.raises(UnknownArchitectureError, match="builder named 'model'"):
        bundle.models["model"]
    tensors = bundle.tensors("model")
    assert tensors.keys() == expected.keys()
    assert all(np.array_equal(tensors[k], expected[k]) for k in expected)

    lazy = polybundle.load(path, lazy=True).tensors("model")
    assert isinstance(lazy, LazyTensors)
    assert all(np.array_equal(lazy[k], expected[k]) for k in expected)

    fresh = models.torch_convnet(models.CONFIG)
    polybundle.load(path, into={"model": fresh})
    assert all(np.array_equal(v.numpy(), expected[k]) for k, v in fresh.state_dict().items())

    rows = polybundle.inspect(path)["tensors"]
    assert [(r["name"], tuple(r["shape"])) for r in rows] == [
        (k, v.shape) for k, v in expected.items()
    ]
    report = polybundle.verify(path)
    assert report.ok and report.format == "torch-file" and "no digests" in report.notes[0]
    assert main(["inspect", str(path)]) == 0 and main(["verify", str(path)]) == 0


@needs_tensorflow
def test_keras_file_loads_from_itself_lazily_and_inspects(keras_file):
    path, net = keras_file
    assert _hook_detection(path) == Detection("keras-file", "tensorflow")
    x = models.inputs("tensorflow")
    bundle = polybundle.load(path)
    assert bundle.roles == ["model"] and bundle.params == {}
    np.testing.assert_array_equal(models.predict(bundle.models["model"], x), models.predict(net, x))

    lazy = polybundle.load(path, lazy=True).tensors("model")
    stored = {v.path: v.numpy() for v in net.weights}
    assert sorted(lazy) == sorted(stored)
    assert all(np.array_equal(lazy[k], stored[k]) for k in stored)
    report = polybundle.inspect(path)
    assert {r["name"]: r["layout"] for r in report["tensors"]}["conv/kernel"] == "h,w,in,out"
    assert polybundle.verify(path).ok


def _reference(backend: str, seed: int):
    """A randomised reference conv autoencoder (channels-last in and out in both frameworks)."""
    from . import reference_architectures as ref

    config = ref.CONFIGS[REF]
    return ref.randomize(polybundle.build(REF, config, backend=backend), seed=seed)


def _output(backend: str, model, x: np.ndarray) -> np.ndarray:
    return polybundle.get_backend(backend).predict(model, {"input": x})["output"]


@needs_torch
@needs_tensorflow
def test_plain_files_convert_across_frameworks(tmp_path):
    import torch

    from . import reference_architectures as ref

    registry = get_registry()
    for backend in ("torch", "tensorflow"):
        builder = registry.builder(REF, backend)
        registry.register_builder(
            PLAIN_ROLE, backend, lambda config, b=builder: b(ref.CONFIGS[REF]), replace=True
        )
    try:
        x = ref.sample_inputs(REF, ref.CONFIGS[REF])
        torch_net, keras_net = _reference("torch", 1), _reference("tensorflow", 2)
        torch.save(torch_net.state_dict(), tmp_path / "net.pth")
        keras_net.save(tmp_path / "net.keras")

        as_keras = polybundle.load(tmp_path / "net.pth", backend="tensorflow").models["model"]
        np.testing.assert_allclose(
            _output("tensorflow", as_keras, x), _output("torch", torch_net, x), atol=1e-5
        )
        out = tmp_path / "from_keras_file.bundle"
        manifest = polybundle.convert(tmp_path / "net.keras", out, backend="torch")
        assert manifest["backend"] == "torch"
        as_torch = polybundle.load(out).models["model"]
        np.testing.assert_allclose(
            _output("torch", as_torch, x), _output("tensorflow", keras_net, x), atol=1e-5
        )
    finally:
        for backend in ("torch", "tensorflow"):
            registry.builders.pop((PLAIN_ROLE, backend), None)


@needs_torch
@needs_tensorflow
def test_plain_files_migrate_into_bundles(tmp_path, torch_file, keras_file, model_builders):
    for path, net, framework in (
        (torch_file[0], torch_file[1], "torch"), (keras_file[0], keras_file[1], "tensorflow")
    ):
        target = tmp_path / f"{path.stem}.bundle"
        report = polybundle.migrate(path, target)
        assert report.written and report.era in ("torch-file", "keras-file")
        assert polybundle.verify(target).ok
        loaded = polybundle.load(target)
        x = models.inputs(framework)
        np.testing.assert_array_equal(
            models.predict(loaded.models["model"], x), models.predict(net, x)
        )
        assert loaded.params == {} and loaded.manifest["legacy"]["era"] == report.era
        assert not polybundle.migrate(path, target).written  # idempotent


@needs_torch
def test_whole_pickled_module_is_refused_with_state_dict_hint(tmp_path):
    import torch

    path = tmp_path / "whole.pth"
    torch.save(models.torch_convnet(models.CONFIG), path)
    before = snapshot_tree(tmp_path)
    for call in (polybundle.load, polybundle.inspect, lambda p: polybundle.load(p, lazy=True)):
        with pytest.raises(UnsafeContentError, match=r"model\.state_dict\(\)"):
            call(path)
    with pytest.raises(UnsafeContentError, match="state_dict"):
        polybundle.migrate(path, tmp_path / "out.bundle")
    report = polybundle.verify(path)
    assert not report.ok and "model.state_dict()" in report.problems[0]
    assert snapshot_tree(tmp_path) == before


@needs_torch
def test_a_torch_zip_with_extra_members_is_not_claimed(tmp_path, torch_file):
    import zipfile

    path, _ = torch_file
    mixed = tmp_path / "mixed.zip"
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(mixed, "w") as out:
        for info in source.infolist():
            out.writestr(info, source.read(info))
        out.writestr("notes.txt", b"not part of torch.save")
    with pytest.raises(FormatError, match="no known format"):
        polybundle.load(mixed)


def _torch_shaped_zip(path, pickle_bytes: bytes) -> None:
    """A zip laid out as torch.save writes it, holding ``pickle_bytes`` as its data.pkl."""
    import zipfile

    with zipfile.ZipFile(path, "w") as out:
        out.writestr("archive/data.pkl", pickle_bytes)
        out.writestr("archive/byteorder", b"little")
        out.writestr("archive/version", b"3\n")


def test_plain_file_detection_opens_no_door_for_pickled_code(tmp_path):
    sentinel = tmp_path / "SENTINEL"
    payload = (
        b"\x80\x02cposix\nsystem\n(X" + len(f"touch {sentinel}").to_bytes(4, "little")
        + f"touch {sentinel}".encode() + b"tR."
    )
    hostile = tmp_path / "model.pth"
    _torch_shaped_zip(hostile, payload)
    assert _hook_detection(hostile) == Detection("torch-file", "torch")
    for call in (polybundle.load, polybundle.inspect, lambda p: polybundle.load(p, lazy=True),
                 lambda p: polybundle.migrate(p, tmp_path / "out.bundle")):
        with pytest.raises(UnsafeContentError):
            call(hostile)
    assert not polybundle.verify(hostile).ok
    assert not sentinel.exists() and not (tmp_path / "out.bundle").exists()


def test_keras_shaped_zip_with_damaged_weights_is_a_format_error(tmp_path):
    import json
    import zipfile

    damaged = tmp_path / "model.keras"
    with zipfile.ZipFile(damaged, "w") as out:
        out.writestr("config.json", json.dumps({"class_name": "Sequential", "config": {}}))
        out.writestr("metadata.json", "{}")
        out.writestr("model.weights.h5", b"not hdf5 at all")
    with pytest.raises(FormatError):
        polybundle.load(damaged, lazy=True)
    report = polybundle.verify(damaged)
    assert not report.ok and report.problems[0].startswith("FormatError")
