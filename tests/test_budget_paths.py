"""``max_bytes=`` on every entry point, and migrate's CPU bound (issue 10 item 2).

A real ~4 MB model loads with the default cap and with 64 MiB, and is refused
with :class:`~polybundle.errors.BudgetExceededError` at 1 MiB by ``load``, a
lazy bundle's ``tensors()``, ``verify`` (reported, not raised), ``convert``
and (with a tiny cap) ``migrate`` and legacy ``load``; nothing is written.
Hostile legacy params that expand when written out as JSON (shared references,
big arrays, one long string referenced many times) are refused by ``migrate``
within a few seconds of CPU, enforced with ``RLIMIT_CPU`` in a subprocess.
``verify`` never raises, on any archive of the hostile corpus or any path
(issue 10: "verify reports, not raises").
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
import zipfile
from typing import Any

import numpy as np
import pytest

import polybundle
from polybundle.errors import BudgetExceededError, UnsafeContentError

from .conftest import LEGACY_DIR, REPO, needs_tensorflow, needs_torch, snapshot_tree
from .hostile_corpus import build_corpus

ARCH = "budget-dense-1024"
MIB = 1024 * 1024
TORCH_ERA = LEGACY_DIR / "torch_dill_era_shared.zip"


@polybundle.architecture(ARCH, backend="torch")
def _torch_dense(config: dict[str, Any]) -> Any:
    import torch

    return torch.nn.Linear(1024, 1024)


@polybundle.architecture(ARCH, backend="tensorflow")
def _keras_dense(config: dict[str, Any]) -> Any:
    import keras

    inputs = keras.Input((1024,))
    return keras.Model(inputs, keras.layers.Dense(1024, name="dense")(inputs))


@pytest.fixture
def big_bundle(tmp_path):
    """A 4 MiB torch bundle (one 1024 x 1024 float32 Linear)."""
    path = tmp_path / "src" / "big.bundle"
    path.parent.mkdir()
    polybundle.save(path, {"net": polybundle.build(ARCH, {}, backend="torch")})
    return path


@needs_torch
def test_load_and_lazy_tensors_respect_max_bytes(big_bundle):
    for cap in (None, 64 * MIB):
        assert polybundle.load(big_bundle, max_bytes=cap).models["net"].weight.shape == (1024, 1024)
        lazy = polybundle.load(big_bundle, lazy=True, max_bytes=cap)
        assert lazy.tensors("net")["weight"].shape == (1024, 1024)
    with pytest.raises(BudgetExceededError, match="max_bytes"):
        polybundle.load(big_bundle, max_bytes=MIB)
    lazy = polybundle.load(big_bundle, lazy=True, max_bytes=MIB)  # reads no tensor yet
    with pytest.raises(BudgetExceededError):
        lazy.tensors("net")  # the cap is remembered for later reads


@needs_torch
def test_inspect_reads_no_tensor_so_a_small_cap_is_enough(big_bundle):
    report = polybundle.inspect(big_bundle, max_bytes=MIB)
    assert {row["name"]: row["bytes"] for row in report["tensors"]}["weight"] == 4 * MIB


@needs_torch
def test_verify_reports_the_budget_instead_of_raising(big_bundle):
    assert polybundle.verify(big_bundle, max_bytes=64 * MIB).ok
    report = polybundle.verify(big_bundle, max_bytes=MIB)
    assert not report.ok and report.problems[0].startswith("BudgetExceededError")


@needs_torch
def test_plain_torch_file_respects_max_bytes(tmp_path):
    import torch

    path = tmp_path / "net.pth"
    torch.save(torch.nn.Linear(1024, 1024).state_dict(), path)
    assert polybundle.load(path, max_bytes=64 * MIB).tensors("model")["weight"].shape == (1024,) * 2
    with pytest.raises(BudgetExceededError):
        polybundle.load(path, max_bytes=MIB).tensors("model")
    with pytest.raises(BudgetExceededError):
        polybundle.load(path, lazy=True, max_bytes=MIB).tensors("model")


@needs_torch
@needs_tensorflow
def test_convert_respects_max_bytes_and_writes_nothing(big_bundle, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(BudgetExceededError):
        polybundle.convert(big_bundle, out / "tf.bundle", backend="tensorflow", max_bytes=MIB)
    assert snapshot_tree(out) == {}
    polybundle.convert(big_bundle, out / "tf.bundle", backend="tensorflow", max_bytes=64 * MIB)
    assert polybundle.load(out / "tf.bundle", lazy=True).tensors("net")["dense/kernel"].shape


def test_legacy_load_and_migrate_respect_max_bytes(tmp_path):
    with pytest.raises(BudgetExceededError):
        polybundle.migrate(TORCH_ERA, tmp_path / "out.bundle", max_bytes=4096)
    with pytest.raises(BudgetExceededError):
        polybundle.load(TORCH_ERA, max_bytes=4096)
    assert snapshot_tree(tmp_path) == {}
    assert polybundle.migrate(TORCH_ERA, tmp_path / "out.bundle", max_bytes=64 * MIB).written


def _with_params(path, value: Any) -> None:
    """Copy the real PyTorch dill-era archive, with ``value`` under ``probe`` in one params."""
    with zipfile.ZipFile(TORCH_ERA) as source, zipfile.ZipFile(path, "w") as out:
        for info in source.infolist():
            data = source.read(info)
            if info.filename == "autoencoder/params.dill":
                params = pickle.loads(data)  # noqa: S301 - our own fixture
                params["probe"] = value
                data = pickle.dumps(params, protocol=4)
            out.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)


def _doubling(levels: int) -> list:
    shared: list = [0]
    for _ in range(levels):
        shared = [shared, shared]
    return shared


HOSTILE_PARAMS = {
    "shared-references": lambda: _doubling(40),  # 2**40 values written out
    "big-array": lambda: np.arange(300_000, dtype=np.float32),  # format 2.1: kept, 1.2 MB
    "repeated-string": lambda: ["x" * 20_000] * 150_000,  # 3 GB of JSON from 320 KB
}

RUNNER = textwrap.dedent(
    """
    import resource, sys
    resource.setrlimit(resource.RLIMIT_CPU, (8, 8))
    resource.setrlimit(resource.RLIMIT_AS, (3 * 1024**3, 3 * 1024**3))
    import polybundle
    try:
        polybundle.migrate(sys.argv[1], sys.argv[2])
    except polybundle.PolybundleError as exc:
        print(type(exc).__name__)
    else:
        print("written")
    """
)


@pytest.mark.parametrize("name", sorted(HOSTILE_PARAMS))
def test_migrate_refuses_params_that_expand_within_a_cpu_limit(tmp_path, name):
    archive = tmp_path / "hostile.zip"
    _with_params(archive, HOSTILE_PARAMS[name]())
    result = subprocess.run(
        [sys.executable, "-c", RUNNER, str(archive), str(tmp_path / "out.bundle")],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    assert result.returncode == 0, f"{name}: killed or crashed ({result.stderr[-400:]})"
    if name == "big-array":  # an array goes to params.safetensors, not 300k JSON values
        assert result.stdout.split()[-1] == "written", result.stdout
        return
    assert result.stdout.split()[-1] == UnsafeContentError.__name__, result.stdout
    assert not (tmp_path / "out.bundle").exists()


def test_verify_never_raises_on_the_hostile_corpus(tmp_path):
    cases = build_corpus(tmp_path / "corpus", tmp_path / "SENTINEL", LEGACY_DIR)
    assert len(cases) >= 30
    for case in cases:
        report = polybundle.verify(case.path)  # must not raise
        assert not any(p.startswith("internal error") for p in report.problems), case.name
        if case.action == "load":
            assert not report.ok and report.problems, case.name
    assert not (tmp_path / "SENTINEL").exists()


def test_verify_never_raises_on_odd_paths(tmp_path):
    fifo = tmp_path / "pipe.bundle"
    os.mkfifo(fifo)
    (tmp_path / "empty.bundle").write_bytes(b"")
    (tmp_path / "text.bundle").write_bytes(b"not a zip at all\n" * 10)
    cut = tmp_path / "cut.bundle"
    cut.write_bytes(TORCH_ERA.read_bytes()[:-30])
    paths = [tmp_path / "missing.bundle", tmp_path, fifo, "/dev/zero", tmp_path / "empty.bundle",
             tmp_path / "text.bundle", cut]
    for path in paths:
        report = polybundle.verify(path)
        assert not report.ok and report.problems[0].split(":")[0].endswith("Error"), path
    report = polybundle.verify(None)  # not a path at all: reported as what it is, not raised
    assert not report.ok and report.problems[0].startswith("internal error: TypeError")
