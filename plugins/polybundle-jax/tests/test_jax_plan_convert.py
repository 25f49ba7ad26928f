"""Plan and convert to and from JAX, like between PyTorch and TensorFlow.

``polybundle plan --to jax`` asks the JAX backend for its layers' layouts
(``JaxBackend.native_layout``): no model is built and no table in the core
names JAX. The plan made without a model says what the conversion made with
the built model does. ``polybundle.convert`` writes native bundles in both
directions; the converted models predict what the source models predict.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import jax_models
import jax_reference
import numpy as np
import pytest

import polybundle
from polybundle.api.transfer import plan_bundle
from polybundle.model.backend import TensorSpec
from polybundle.model.conversion import plan_conversion, plan_rows
from polybundle.tools.cli import main
from polybundle.tools.parity import errors

REPO = Path(__file__).resolve().parents[3]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
from tests import reference_architectures as ref  # noqa: E402

pytestmark = jax_models.needs_jax

OTHERS = ("torch", "tensorflow")
DIRECTIONS = [(o, "jax") for o in OTHERS] + [("jax", o) for o in OTHERS]
PROBLEMS = ("missing", "unexpected", "unmapped", "misaligned", "mismatched")
MAX_REL = 1e-5


@pytest.fixture(autouse=True)
def _jax_builders() -> None:
    jax_reference.register()


def _saved(tmp_path: Path, name: str, backend: str) -> tuple[Path, dict[str, Any]]:
    """Save randomised ``backend`` models of ``name`` (every role); return path and models."""
    configs = ref.ROLES.get(name, {"net": ref.CONFIGS[name]})
    models = {
        role: ref.randomize(polybundle.build(name, config, backend=backend), seed=index + 1)
        for index, (role, config) in enumerate(configs.items())
    }
    path = tmp_path / f"{name}.{backend}.bundle"
    polybundle.save(path, models)
    return path, models


def _predict(backend: str, model: Any, x: np.ndarray) -> np.ndarray:
    return polybundle.get_backend(backend).predict(model, {"input": x})["output"]


def _summary(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """The rows without tensor names: what moves where, in which layout and shape."""
    return [(r["kind"], r["slot"], r["layout"], r["action"], r["shape"]) for r in rows]


@pytest.mark.parametrize("name", sorted(jax_reference.BUILDERS))
@pytest.mark.parametrize(("source", "target"), DIRECTIONS, ids=lambda b: b)
def test_plan_without_a_model_matches_the_built_model(tmp_path, name, source, target):
    path, _ = _saved(tmp_path, name, source)
    report = plan_bundle(path, target)
    assert (report["source"], report["target"]) == (source, target)
    manifest = polybundle.load(path, lazy=True).manifest
    for role, entry in zip(report["roles"], manifest["models"], strict=True):
        assert role["builder"] and not any(role[p] for p in PROBLEMS), role
        config = entry["architecture"]["config"]
        built = polybundle.build(name, config, backend=target)
        specs = [TensorSpec.from_json(t) for t in entry["tensors"]]
        real = plan_conversion(specs, polybundle.get_backend(target).describe(built))
        assert real.ok
        planned = _summary(role["rows"])
        # a merged source axis the target splits (depthwise c*m) is sized only by the model
        expected = [
            row if got[4] is not None else (*row[:4], None)
            for row, got in zip(_summary(plan_rows(real)), planned, strict=True)
        ]
        assert planned == expected


def test_batchnorm_count_is_dropped_into_jax_and_filled_out_of_it(tmp_path):
    norms = 1 + 2 * ref.CONFIGS["ref-resnet"]["blocks"]
    torch_path, _ = _saved(tmp_path, "ref-resnet", "torch")
    rows = plan_bundle(torch_path, "jax")["roles"][0]["rows"]
    drops = [r for r in rows if r["action"] == "drop"]
    assert len(drops) == norms
    assert {(r["kind"], r["slot"]) for r in drops} == {("batchnorm", "count")}
    jax_path, _ = _saved(tmp_path, "ref-resnet", "jax")
    rows = plan_bundle(jax_path, "torch")["roles"][0]["rows"]
    fills = [r for r in rows if r["action"] == "fill"]
    assert len(fills) == norms and all(r["shape"] == [] for r in fills)
    assert not [r for r in plan_bundle(jax_path, "tensorflow")["roles"][0]["rows"]
                if r["action"] != "relayout"]


def test_plan_cli_to_jax(tmp_path, capsys):
    path, _ = _saved(tmp_path, "ref-conv-autoencoder", "tensorflow")
    assert main(["plan", str(path), "--to", "jax", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["target"] == "jax" and len(plan["roles"]) == 2
    kernels = [r for r in plan["roles"][0]["rows"] if r["slot"] == "kernel"]
    assert [r["detail"] for r in kernels] == ["identity"] * len(kernels)  # Keras and Flax agree


@pytest.mark.parametrize("name", sorted(jax_reference.BUILDERS))
@pytest.mark.parametrize(("source", "target"), DIRECTIONS, ids=lambda b: b)
def test_convert_writes_a_native_bundle_that_predicts_the_same(tmp_path, name, source, target):
    path, models = _saved(tmp_path, name, source)
    polybundle.save(path, models, params={"lr": 0.01})
    manifest = polybundle.convert(path, tmp_path / "out.bundle", backend=target)
    assert manifest["backend"] == target
    bundle = polybundle.load(tmp_path / "out.bundle")
    assert bundle.backend == target and bundle.params == {"lr": 0.01}
    assert set(bundle.models) == set(models)
    x = ref.sample_inputs(name, ref.CONFIGS[name])
    for role, model in models.items():
        assert polybundle.get_backend(target).owns(bundle.models[role])
        expected = _predict(source, model, x)
        assert np.std(expected) > 1e-3
        _, max_rel = errors(_predict(target, bundle.models[role], x), expected)
        assert max_rel <= MAX_REL, f"{name} {role} {source}->{target}: {max_rel:.3g}"


@pytest.mark.parametrize("other", OTHERS)
def test_round_trip_through_jax_gives_back_the_same_tensors(tmp_path, other):
    path, _ = _saved(tmp_path, "ref-conv-zoo", other)
    polybundle.convert(path, tmp_path / "jax.bundle", backend="jax")
    polybundle.convert(tmp_path / "jax.bundle", tmp_path / "back.bundle", backend=other)
    before = polybundle.load(path, lazy=True).tensors("net")
    after = polybundle.load(tmp_path / "back.bundle", lazy=True).tensors("net")
    assert len(before) == len(after)  # Keras numbers layer names per model: compare in order
    for (key, a), (_, b) in zip(before.items(), after.items(), strict=True):
        assert a.shape == b.shape and np.array_equal(a, b), key
