"""The parity harness: stored references, compare(), the CLI and the pytest fixture."""

from __future__ import annotations

import numpy as np
import pytest

import polybundle
from polybundle.api.inspection import inspect
from polybundle.tools.cli import main
from polybundle.tools.parity import compare, read_parity
from tests import reference_architectures as ref
from tests.conftest import needs_tensorflow, needs_torch

pytestmark = [needs_torch, needs_tensorflow]
NAME = "ref-conv-autoencoder"


@pytest.fixture
def torch_bundle(tmp_path):
    models = {
        role: ref.randomize(polybundle.build(NAME, config, backend="torch"), seed=i)
        for i, (role, config) in enumerate(ref.ROLES[NAME].items())
    }
    x = ref.sample_inputs(NAME, ref.CONFIGS[NAME])
    path = tmp_path / "ae.bundle"
    polybundle.save(path, models, parity_inputs=x)
    return path, models, x


def test_save_stores_reference_inputs_and_outputs(torch_bundle):
    path, models, x = torch_bundle
    manifest = inspect(path)["manifest"]
    for entry in manifest["models"]:
        assert entry["parity"]["member"] in manifest["members"]
        inputs, outputs = read_parity(path, entry["role"])
        assert np.array_equal(inputs["input"], x)
        expected = polybundle.get_backend("torch").predict(models[entry["role"]], {"input": x})
        assert np.array_equal(outputs["output"], expected["output"])


def test_compare_runs_every_backend_on_stored_and_given_inputs(torch_bundle):
    path, _, x = torch_bundle
    stored = compare(path, rtol=1e-5)
    assert stored.passed
    assert {(r.role, r.backend) for r in stored.rows} == {
        (role, b) for role in ref.ROLES[NAME] for b in ("torch", "tensorflow")
    }
    assert all(r.max_rel <= 1e-5 for r in stored.rows)
    given = compare(path, x[:2] * 2, backends=("tensorflow",))
    assert given.passed and {r.backend for r in given.rows} == {"tensorflow"}


def test_exact_tolerance_reports_the_cross_framework_difference(torch_bundle):
    path, _, _ = torch_bundle
    report = compare(path, rtol=0.0, atol=0.0)
    torch_rows = [r for r in report.rows if r.backend == "torch"]
    assert all(r.passed and r.max_abs == 0.0 for r in torch_rows)  # the writer reproduces itself
    assert "max_rel" in report.table()


def test_cli_parity_and_verify_parity(torch_bundle, capsys):
    path, _, _ = torch_bundle
    assert main(["parity", str(path)]) == 0
    out = capsys.readouterr().out
    assert "tensorflow" in out and "pass" in out
    assert main(["verify", "--parity", str(path)]) == 0


def test_pytest_fixture_passes_and_fails(torch_bundle, polybundle_parity):
    path, _, _ = torch_bundle
    assert polybundle_parity(path).passed
    report = compare(path, rtol=0.0, atol=0.0)
    if report.passed:  # the frameworks happened to agree bit for bit: nothing can fail
        pytest.skip("outputs agree exactly on this machine")
    with pytest.raises(pytest.fail.Exception, match="parity failed"):
        polybundle_parity(path, rtol=0.0, atol=0.0)
