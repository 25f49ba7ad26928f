"""The seed project's own architecture, end to end (issue 16 item 8).

Two roles shaped like the ptychography network polybundle started from
(``tests/seed_project.py``): trained a few steps in Keras with Adam, saved
with params holding ``intensity_scale`` and a complex64 probe, loaded back,
converted to PyTorch (parity measured), trained on in PyTorch from the
converted Adam state (against Keras going on), and read from a legacy
TF-era ``wts.h5.zip`` written as the seed's own writer did, then migrated.
``docs/legacy.md`` walks through the same example; the last tests check that
the code it shows is this code and that its walkthrough runs. Run with ``-s``
to see the measured numbers.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import os
import pickletools
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import polybundle

from .conftest import HAS_TENSORFLOW, HAS_TORCH, LEGACY_DIR, REPO, needs_tensorflow, needs_torch

if HAS_TENSORFLOW and HAS_TORCH:
    from . import seed_project as seed

pytestmark = [needs_torch, needs_tensorflow]

WARMUP = 3
"""Keras training steps before saving (the walkthrough's)."""
STEPS = 10
"""Steps taken in both frameworks after the conversion."""
LR = 1e-3
F32_EPS = float(np.finfo(np.float32).eps)

PARITY_MAX_REL = 2e-6
"""Converted outputs: max |torch - keras| / max |keras| (measured 5.2e-07 and 2.4e-07)."""
ADAM_MAX_REL = 1e-3
"""Adam (Keras' epsilon 1e-7), docs/conversion.md's bound on max |diff| / max |w| (all tensors)."""
ADAM_NO_EPSILON_MAX_REL = 1e-5
"""The same with epsilon 1e-12 (its placement made irrelevant): rounding only."""


DOC = REPO / "docs" / "legacy.md"
_BLOCK = re.compile(
    r"<!-- (walkthrough|source: tests/seed_project.py (\w+)) -->\n```python\n(.*?)\n```", re.S
)


def doc_blocks() -> tuple[list[str], dict[str, str]]:
    """Return docs/legacy.md's walkthrough blocks (in order) and its source blocks by name."""
    walkthrough, sources = [], {}
    for match in _BLOCK.finditer(DOC.read_text(encoding="utf-8")):
        if match.group(2):
            sources[match.group(2)] = match.group(3)
        else:
            walkthrough.append(match.group(3))
    return walkthrough, sources


@contextlib.contextmanager
def restored_registry() -> Iterator[None]:
    """Forget the builders and tensor maps registered inside (legacy ones are named after roles)."""
    from polybundle.hooks import registry

    with registry.scoped_declarations():
        yield


def run_blocks(blocks: list[str], folder: Path) -> tuple[dict[str, Any], str]:
    """Execute ``blocks`` in order in one namespace, in ``folder``; return it and the output."""
    namespace: dict[str, Any] = {"__name__": "walkthrough"}
    output = io.StringIO()
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        with restored_registry(), contextlib.redirect_stdout(output):
            for block in blocks:
                exec(compile(block, str(DOC), "exec"), namespace)  # noqa: S102 - our own doc
    finally:
        os.chdir(cwd)
    return namespace, output.getvalue()


@pytest.fixture(scope="module")
def walkthrough(tmp_path_factory) -> dict[str, Any]:
    """docs/legacy.md's walkthrough, run: its namespace, its folder and what it printed."""
    folder = tmp_path_factory.mktemp("walkthrough")
    blocks, _ = doc_blocks()
    namespace, printed = run_blocks(blocks, folder)
    return {"ns": namespace, "folder": folder, "printed": printed}


@pytest.fixture(scope="module")
def trained(walkthrough) -> dict[str, Any]:
    """The walkthrough's trained Keras models, params, data and format-2 bundle."""
    ns = walkthrough["ns"]
    return {"params": ns["params"], "models": ns["models"], "x": ns["x"],
            "path": walkthrough["folder"] / "wts.bundle"}


@pytest.fixture
def legacy_builders():
    """Register the builders under the role names for one test, then forget them."""
    with restored_registry():
        seed.register_legacy_builders()
        yield


def _keras_outputs(models: dict[str, Any], x: np.ndarray) -> dict[str, np.ndarray]:
    return {role: np.asarray(model(x, training=False)) for role, model in models.items()}


def _torch_outputs(models: dict[str, Any], x: np.ndarray) -> dict[str, np.ndarray]:
    import torch

    with torch.no_grad():
        return {role: m.eval()(torch.from_numpy(x)).numpy() for role, m in models.items()}


def assert_params_equal(got: dict[str, Any], expected: dict[str, Any]) -> None:
    """Same keys and values; arrays of the same dtype and shape, bit for bit."""
    assert sorted(got) == sorted(expected)
    for key, value in expected.items():
        if isinstance(value, np.ndarray):
            assert got[key].dtype == value.dtype and got[key].shape == value.shape, key
            assert got[key].tobytes() == value.tobytes(), key
        else:
            assert type(got[key]) is type(value) and got[key] == value, key


def _max_rel(got: np.ndarray, expected: np.ndarray) -> float:
    return float(np.max(np.abs(got - expected)) / np.max(np.abs(expected)))


# ---------------------------------------------------------------- 1-2: save and load back


def test_save_from_keras_and_load_back_bit_for_bit(trained):
    x = trained["x"]
    bundle = polybundle.load(trained["path"])
    assert bundle.backend == "tensorflow" and bundle.roles == list(seed.ROLES)
    for role, model in trained["models"].items():
        entry = next(e for e in bundle.manifest["models"] if e["role"] == role)
        assert entry["architecture"]["name"] == seed.ARCHITECTURES[role]
        for saved, loaded in zip(model.get_weights(), bundle.models[role].get_weights(),
                                 strict=True):
            assert saved.dtype == loaded.dtype and np.array_equal(saved, loaded)
    expected, got = _keras_outputs(trained["models"], x), _keras_outputs(bundle.models, x)
    for role in seed.ROLES:
        assert np.array_equal(got[role], expected[role])  # bit for bit
    assert_params_equal(bundle.params, trained["params"])
    assert bundle.params["intensity_scale"] == 12.5
    assert bundle.manifest["format_version"] == "2.2.0"  # params arrays, named digests
    state = bundle.optimizer_state("autoencoder")
    assert state.algorithm == "adam" and state.step == WARMUP
    assert state.slots["intensity_out/intensity_scale"]["m"].shape == ()  # a scalar's moments
    assert not bundle.has_optimizer("diffraction_to_obj")


# ---------------------------------------------------------------- 3: convert to PyTorch


def test_convert_to_torch_with_parity(tmp_path, trained, capsys):
    x = trained["x"]
    expected = _keras_outputs(trained["models"], x)
    loaded = polybundle.load(trained["path"], backend="torch")
    converted_path = tmp_path / "torch.bundle"
    manifest = polybundle.convert(trained["path"], converted_path, backend="torch")
    native = polybundle.load(converted_path)
    assert manifest["backend"] == "torch" and native.backend == "torch"
    for bundle in (loaded, native):
        assert_params_equal(bundle.params, trained["params"])
    for bundle in (loaded, native):
        got = _torch_outputs(bundle.models, x)
        for role in seed.ROLES:
            rel = _max_rel(got[role], expected[role])
            with capsys.disabled():
                print(f"\nparity {role} keras -> torch: max_rel {rel:.2e}")
            assert rel <= PARITY_MAX_REL
    torch_model = native.models["autoencoder"]
    scale = torch_model.intensity_out.intensity_scale
    keras_scale = trained["models"]["autoencoder"].get_layer("intensity_out").intensity_scale
    assert float(scale.detach()) == float(np.asarray(keras_scale)) and scale.requires_grad
    assert native.has_optimizer("autoencoder")


# ---------------------------------------------------------------- 4: training goes on in PyTorch


def _keras_step(model: Any, x: np.ndarray, counts: np.ndarray) -> None:
    model.train_on_batch(x, counts)


def _torch_step(model: Any, optimizer: Any, x: np.ndarray, counts: np.ndarray) -> None:
    import torch

    model.train()
    optimizer.zero_grad()
    loss = seed.torch_poisson_nll(torch.from_numpy(counts), model(torch.from_numpy(x)))
    loss.backward()
    optimizer.step()


def _keras_weights(model: Any) -> dict[str, np.ndarray]:
    return {v.path: np.array(v.numpy(), dtype=np.float64) for v in model.weights}


def _torch_weights(model: Any) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().astype(np.float64) for k, v in model.state_dict().items()}


def _epsilon_prediction(
    keras_model: Any, plan: Any, names: dict[str, str], keras_update: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """PyTorch's update predicted from Keras' (docs/conversion.md, "epsilon").

    From the same m, v and step t, PyTorch's update is Keras' times
    ``(sqrt(v) + eps) / (sqrt(v) + eps * sqrt(bc2))``, with ``v`` the second
    moment after the step (Keras' slot, moved to PyTorch's layout).
    """
    from polybundle.model.canonical import relayout

    optimizer = keras_model.optimizer
    eps, beta_2 = float(optimizer.epsilon), float(optimizer.beta_2)
    sqrt_bc2 = np.sqrt(1 - beta_2 ** int(optimizer.iterations.numpy()))
    moves = {move.source: move for move in plan.moves}
    out = {}
    for variable, velocity in zip(optimizer._trainable_variables, optimizer._velocities,
                                  strict=True):
        move = moves[variable.path]
        v = relayout(np.asarray(velocity.numpy(), np.float64), move.source_layout,
                     move.target_layout, move.target_shape or ())
        root = np.sqrt(v)
        out[names[variable.path]] = keras_update[names[variable.path]] * (root + eps) / (
            root + eps * sqrt_bc2)
    return out


def continue_in_torch(folder: Path, epsilon: float | None = None) -> dict[str, Any]:
    """Run the walkthrough's training and save, then go on in PyTorch and Keras in lockstep.

    ``epsilon`` replaces Keras' default (1e-7) in the walkthrough's Adam. Returns,
    per trainable tensor, the largest weight difference over STEPS steps relative
    to the tensor's largest weight (``worst``), the same for a fresh PyTorch Adam
    (``control``), how far the weights moved, and, for the first step, the
    epsilon effect and the residual against the documented formula.
    """
    import torch

    blocks, _ = doc_blocks()
    if epsilon is not None:
        blocks = [b.replace("Adam(1e-3)", f"Adam(1e-3, epsilon={epsilon})") for b in blocks]
    folder.mkdir()
    ns, _ = run_blocks(blocks[:2], folder)  # the walkthrough's training and save
    keras_model, x, counts = ns["autoencoder"], ns["x"], ns["counts"]
    path = folder / "wts.bundle"
    bundle = polybundle.load(path, backend="torch")
    twin = bundle.models["autoencoder"]
    optimizer = torch.optim.Adam(twin.parameters(), lr=0.5)  # settings come back from the bundle
    bundle.restore_optimizer("autoencoder", optimizer)
    group = optimizer.param_groups[0]
    assert group["lr"] == pytest.approx(LR)
    assert group["eps"] == pytest.approx(float(keras_model.optimizer.epsilon))  # 1e-7, Keras'
    assert optimizer.state[twin.enc_conv1.weight]["step"] == WARMUP
    assert optimizer.state[twin.intensity_out.intensity_scale]["exp_avg"].shape == ()
    control = polybundle.load(path, backend="torch").models["autoencoder"]
    fresh = torch.optim.Adam(control.parameters(), lr=LR, eps=1e-7)

    plan = bundle.conversions["autoencoder"]
    names = {move.source: move.target for move in plan.moves if move.action == "relayout"}
    trainable = [names[v.path] for v in keras_model.trainable_weights]
    worst: dict[str, float] = {}
    max_abs = max_w = 0.0
    control_worst = first_residual = epsilon_effect = 0.0
    start = _torch_weights(twin)
    for step in range(1, STEPS + 1):
        before = plan.apply(_keras_weights(keras_model))
        _keras_step(keras_model, x, counts)
        _torch_step(twin, optimizer, x, counts)
        _torch_step(control, fresh, x, counts)
        expected, got, other = (plan.apply(_keras_weights(keras_model)), _torch_weights(twin),
                                _torch_weights(control))
        if step == 1:
            keras_update = {name: expected[name] - before[name] for name in trainable}
            predicted = _epsilon_prediction(keras_model, plan, names, keras_update)
            for name in trainable:
                torch_update = got[name] - before[name]
                rounding = 4 * F32_EPS * np.max(np.abs(before[name]))
                residual = np.abs(torch_update - predicted[name]) / (
                    rounding + 1e-4 * np.abs(predicted[name]))
                first_residual = max(first_residual, float(np.max(residual)))
                effect = np.abs(predicted[name] - keras_update[name])
                epsilon_effect = max(epsilon_effect, float(
                    np.max(effect) / np.max(np.abs(keras_update[name]))))
        for name in trainable + ["enc_bn.running_mean", "enc_bn.running_var"]:
            tensor_scale = np.max(np.abs(expected[name]))
            worst[name] = max(worst.get(name, 0.0),
                              float(np.max(np.abs(got[name] - expected[name])) / tensor_scale))
            if name in trainable:
                max_abs = max(max_abs, float(np.max(np.abs(got[name] - expected[name]))))
                max_w = max(max_w, float(tensor_scale))
                control_worst = max(control_worst, float(
                    np.max(np.abs(other[name] - expected[name])) / tensor_scale))
    moved = max(float(np.max(np.abs(got[n] - start[n]))) for n in trainable)
    return {"worst": worst, "adam": max(worst[name] for name in trainable),
            "max_rel": max_abs / max_w,
            "control": control_worst, "moved": moved, "epsilon_effect": epsilon_effect,
            "first_residual": first_residual}


def _report(label: str, result: dict[str, Any]) -> None:
    print(f"\n{label}, {STEPS} steps, max |diff| / max |w| per tensor:")
    for name, value in result["worst"].items():
        print(f"  {name}: {value:.2e}")
    print(f"  fresh optimizer (control): {result['control']:.2e}; weights moved "
          f"{result['moved']:.2e}; first step: epsilon effect {result['epsilon_effect']:.1e} "
          f"of the update, residual against the documented formula "
          f"{result['first_residual']:.2f} of its tolerance; docs/conversion.md's max_rel "
          f"{result['max_rel']:.2e}")


def test_training_continues_in_torch_with_the_converted_adam_state(tmp_path, capsys):
    result = continue_in_torch(tmp_path / "keras-epsilon")
    no_epsilon = continue_in_torch(tmp_path / "epsilon-1e-12", epsilon=1e-12)
    with capsys.disabled():
        _report("adam keras -> torch (epsilon 1e-7)", result)
        _report("adam keras -> torch (epsilon 1e-12)", no_epsilon)
    for run in (result, no_epsilon):
        assert run["moved"] > 5 * LR  # real steps, not a stalled run
        assert run["first_residual"] <= 1.0  # PyTorch's update = Keras' x the epsilon factor
        assert run["control"] > 100 * run["adam"]  # the converted moments are what agrees
    assert result["max_rel"] <= ADAM_MAX_REL and no_epsilon["max_rel"] <= ADAM_NO_EPSILON_MAX_REL
    assert result["adam"] <= ADAM_MAX_REL  # per tensor too (measured 6.3e-04)
    assert no_epsilon["adam"] <= 2 * ADAM_NO_EPSILON_MAX_REL  # per tensor (measured 5.7e-06)
    assert result["adam"] > 5 * no_epsilon["adam"]  # the documented epsilon effect


# ---------------------------------------------------------------- 5: the seed's legacy archive


def _members(path: Path) -> dict[str, int]:
    with zipfile.ZipFile(path) as archive:
        return {info.filename: info.compress_type for info in archive.infolist()}


def _globals(data: bytes) -> list[str]:
    """Every global a pickle names (module.name), read with pickletools (nothing is run)."""
    found: list[str] = []
    pushed: list[Any] = []  # the last values pushed, enough for STACK_GLOBAL's two strings
    memo: dict[int, Any] = {}
    for opcode, arg, _ in pickletools.genops(data):
        if opcode.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            pushed.append(arg)
        elif opcode.name == "MEMOIZE":
            memo[len(memo)] = pushed[-1] if pushed else None
        elif opcode.name in ("BINGET", "LONG_BINGET"):
            pushed.append(memo.get(arg))
        elif opcode.name == "STACK_GLOBAL":
            found.append(f"{pushed[-2]}.{pushed[-1]}")
            pushed.append(found[-1])
        elif opcode.name == "GLOBAL":
            found.append(arg.replace(" ", "."))
        else:
            pushed.append(None)
    return found


@pytest.fixture(scope="module")
def legacy(trained, tmp_path_factory) -> Path:
    """The trained models written by the seed's own writer (``wts.h5.zip``)."""
    path = tmp_path_factory.mktemp("legacy") / "wts.h5.zip"
    return seed.write_legacy_archive(path, trained["models"], trained["params"])


def test_legacy_archive_is_laid_out_like_the_real_fixture(legacy):
    fixture = LEGACY_DIR / "tf_era_arrays_shared.zip"
    assert _members(legacy) == _members(fixture)  # same members, all deflated
    assert set(_members(legacy).values()) == {zipfile.ZIP_DEFLATED}
    with zipfile.ZipFile(legacy) as ours, zipfile.ZipFile(fixture) as real:
        assert ours.read("manifest.dill") == real.read("manifest.dill")
        for role in seed.ROLES:
            names = _globals(ours.read(f"{role}/custom_objects.dill"))
            assert names == ["tests.seed_project.ScaleLayer", "tests.seed_project.SquareLayer"]
            params = _globals(ours.read(f"{role}/params.dill"))
            assert set(params) == set(_globals(real.read(f"{role}/params.dill")))
            assert "dill._dill._create_array" in params
            import h5py

            for archive in (ours, real):
                with h5py.File(io.BytesIO(archive.read(f"{role}/model.h5"))) as h5:
                    assert list(h5) == [] and list(h5.attrs) == ["intensity_scale"]
            with zipfile.ZipFile(io.BytesIO(ours.read(f"{role}/model.keras"))) as keras_file:
                assert sorted(keras_file.namelist()) == [
                    "config.json", "metadata.json", "model.weights.h5"]


def test_a_custom_loss_in_compile_config_is_not_code_polybundle_runs():
    from polybundle_tensorflow.keras_archive import config_problems

    loss = {"module": "builtins", "class_name": "function", "config": "seed_project>poisson_nll",
            "registered_name": "function"}
    lambda_layer = {"module": "keras.layers", "class_name": "Lambda", "config": {}}
    assert config_problems({"config": {"layers": []}, "compile_config": {"loss": loss}}) == []
    assert config_problems({"config": {"layers": [lambda_layer]}}) == [
        "a Lambda layer (it carries Python bytecode)"]
    assert config_problems({"config": {"layers": [loss]}}) == [
        "class 'function' from module 'builtins', which is not Keras"]


def test_legacy_archive_needs_a_builder_or_trust(legacy):
    bundle = polybundle.load(legacy)
    assert bundle.manifest["format"] == "legacy-tf-dill"
    with pytest.raises(polybundle.UnsafeContentError, match="tests.seed_project.SquareLayer"):
        bundle.models["autoencoder"]


def test_legacy_archive_loads_with_the_builders(trained, legacy, legacy_builders):
    x = trained["x"]
    bundle = polybundle.load(legacy)  # no trust_code: custom_objects.dill is never unpickled
    for role, model in trained["models"].items():
        for saved, loaded in zip(model.get_weights(), bundle.models[role].get_weights(),
                                 strict=True):
            assert np.array_equal(saved, loaded)
    expected, got = _keras_outputs(trained["models"], x), _keras_outputs(bundle.models, x)
    for role in seed.ROLES:
        assert np.array_equal(got[role], expected[role])
    assert bundle.params["_version"] == "1.0"
    assert_params_equal({k: v for k, v in bundle.params.items() if k != "_version"},
                        trained["params"])


def test_legacy_archive_migrates_and_converts(trained, legacy, legacy_builders, tmp_path):
    x = trained["x"]
    target = tmp_path / "wts.bundle"
    report = polybundle.migrate(legacy, target)
    assert report.written
    assert report.converted[:2] == [
        "params probe: array complex64 shape [16, 16] -> params.safetensors (bit for bit)",
        "params probe.mask: array bool shape [16, 16] -> params.safetensors (bit for bit)",
    ]
    assert not [line for line in report.dropped if "probe" in line]
    migrated = polybundle.load(target)
    assert_params_equal({k: v for k, v in migrated.params.items() if k != "_version"},
                        trained["params"])
    expected = _keras_outputs(trained["models"], x)
    got = _keras_outputs(migrated.models, x)
    for role in seed.ROLES:
        assert np.array_equal(got[role], expected[role])
    in_torch = _torch_outputs(polybundle.load(target, backend="torch").models, x)
    for role in seed.ROLES:
        assert _max_rel(in_torch[role], expected[role]) <= PARITY_MAX_REL


# ---------------------------------------------------------------- the doc is this code


def test_doc_shows_the_code_of_seed_project():
    _, sources = doc_blocks()
    assert len(sources) >= 10
    for name, block in sources.items():
        assert block == inspect.getsource(getattr(seed, name)).rstrip(), name


def test_doc_walkthrough_runs_and_prints_the_migrate_report(walkthrough):
    blocks, _ = doc_blocks()
    assert len(blocks) == 7
    text = DOC.read_text(encoding="utf-8")
    shown = text[text.index("```\nwts.h5.zip (legacy-tf-dill)") + 4:]
    assert walkthrough["printed"] == shown[:shown.index("```")]
    assert (walkthrough["folder"] / "wts-torch.bundle").exists()
    # the walkthrough's role-named builders and maps do not leak into other tests
    from polybundle.hooks.registry import get_registry, tensor_map

    assert not get_registry().has_builder("autoencoder", "tensorflow")
    assert tensor_map("autoencoder", "torch", "tensorflow") == {}
    assert tensor_map("seed-autoencoder", "torch", "tensorflow")
