"""The conformance feature matrix: every feature, for every installed backend.

Each backend's plugin hands :class:`Adapter` instances to polybundle through
the ``polybundle_conformance_adapters`` hook: an adapter says how to build
the shared conformance model (:data:`ARCHITECTURE`, registered by the same
plugin), its inputs and predictions, an optimizer and a training step.
:func:`feature_matrix` then checks every feature of :data:`FEATURES` for every
adapter, pairwise features against every other adapter, and returns one
:class:`Cell` per check: ``pass``, ``fail`` (with the error) or ``n.a.``
(with the reason). Nothing is skipped silently. ``polybundle conformance``
prints the matrix; the test suite runs the same cells. Needs no pytest.

Example:
    >>> [f.name for f in FEATURES][:3]
    ['round trip', 'lazy', 'inspect']
    >>> Cell("numpy", "verify", None, PASS).label
    'verify'
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
import types
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table
from rich.text import Text

from polybundle.api.loading import load
from polybundle.api.saving import save
from polybundle.api.transfer import convert, plan_bundle
from polybundle.errors import BackendError
from polybundle.format.archive import ArchiveReader
from polybundle.hooks.manager import DEFAULT_PLUGINS, get_plugin_manager
from polybundle.hooks.registry import get_backend

ARCHITECTURE = "polybundle-conformance-convnet"
"""The model every conformance adapter builds, so that any two backends convert.

A 3x3 convolution with ``"same"`` padding from one input channel to
``filters`` channels, batch normalisation (epsilon ``1e-5``, running
statistics moving by 0.1 of the batch's), ReLU, the mean over both spatial
axes, then a dense layer to ``outputs``. Inputs are ``size`` x ``size``
images with one channel.
"""

CONFIG: dict[str, Any] = {"size": 6, "filters": 3, "outputs": 2}
"""The config of :data:`ARCHITECTURE` the matrix builds."""

OTHER_CONFIG: dict[str, Any] = {"size": 6, "filters": 5, "outputs": 2}
"""The same architecture with other tensor shapes (for the mismatch checks)."""

PARAMS = {"N": 64, "offset": 4, "probe.big": True, "nested": {"scale": 0.5, "names": ["a", "b"]}}
"""The params every round trip stores and expects back exactly."""

CONVERT_TOLERANCE = 1e-4
"""Largest difference, relative to the largest prediction, accepted after a conversion."""

OPTIMIZER_TOLERANCE = 1e-2
"""Largest difference, relative to the update itself, of one training step continued in
another backend after an optimizer conversion (a fresh optimizer is off by 50% and more)."""

PASS, FAIL, NOT_APPLICABLE = "pass", "fail", "n.a."
"""The three states of a :class:`Cell`."""


def neutral_inputs(config: dict[str, Any], seed: int, batch: int = 4) -> np.ndarray:
    """Return a float32 batch of ``(batch, size, size, 1)`` channels-last inputs.

    Example:
        >>> neutral_inputs(CONFIG, seed=0).shape
        (4, 6, 6, 1)
    """
    shape = (batch, config["size"], config["size"], 1)
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


class Adapter(ABC):
    """How the conformance kit drives one backend.

    Set the class attributes and implement the methods; import the framework
    inside them. ``architecture`` must be registered for ``backend`` (by the
    backend's plugin) and build a model from ``config``; ``other_config``
    builds the same architecture with different tensor shapes. ``standalone``
    says whether the backend rebuilds a model from its weights file alone.
    ``algorithm`` is the neutral name of what :meth:`make_optimizer` makes
    (``None``: the backend has no optimizer support; those cells are n.a.).

    Example:
        >>> class NoModels(Adapter):
        ...     backend = "numpy"
        ...     def make_model(self, config, seed): return {}
        ...     def predict(self, model, x): return x
        >>> NoModels().inputs(CONFIG, seed=0).shape, NoModels().label
        ((4, 6, 6, 1), 'numpy')
    """

    backend: str = ""
    architecture: str = ARCHITECTURE
    config: dict[str, Any] = CONFIG
    other_config: dict[str, Any] = OTHER_CONFIG
    standalone: bool = False
    algorithm: str | None = None

    @property
    def label(self) -> str:
        """Return the name the matrix shows for this adapter (the backend's name)."""
        return self.backend

    @abstractmethod
    def make_model(self, config: dict[str, Any], seed: int) -> Any:
        """Return a model of ``architecture`` built from ``config``, initialised from ``seed``.

        Give it non-trivial state (e.g. batch-norm statistics) where it has any.
        Example: ``adapter.make_model(adapter.config, seed=0)``.
        """

    def native_inputs(self, x: np.ndarray) -> np.ndarray:
        """Return channels-last images ``x`` in the layout the backend's models take.

        The default returns ``x`` (channels last). Example: PyTorch moves the
        channel axis to position 1.
        """
        return x

    def inputs(self, config: dict[str, Any], seed: int) -> np.ndarray:
        """Return a small batch of float32 inputs for a model built from ``config``.

        The default is :func:`neutral_inputs` in :meth:`native_inputs` layout.
        Example: ``adapter.inputs(adapter.config, seed=0).shape == (4, 6, 6, 1)``.
        """
        return self.native_inputs(neutral_inputs(config, seed))

    @abstractmethod
    def predict(self, model: Any, x: np.ndarray) -> np.ndarray:
        """Return ``model``'s inference-mode output for native inputs ``x`` as NumPy.

        Example: ``adapter.predict(model, x).shape == (4, 2)``.
        """

    def make_optimizer(self, model: Any) -> Any:
        """Return a fresh :attr:`algorithm` optimizer for ``model`` (Adam: lr 0.01, eps 1e-7).

        Example: ``adapter.make_optimizer(model)`` -> ``torch.optim.Adam(model.parameters())``.
        """
        raise NotImplementedError(f"{type(self).__name__} makes no optimizer")

    def train_step(self, model: Any, optimizer: Any, x: np.ndarray) -> float:
        """Apply one deterministic step on the mean squared output for ``x``; return the loss.

        The model trains in training mode (batch statistics) and is left in
        inference mode. Example: ``adapter.train_step(model, optimizer, x)``.
        """
        raise NotImplementedError(f"{type(self).__name__} has no training step")


class NotApplicable(Exception):
    """Raised by a check when the feature does not apply to a backend (the reason)."""


@dataclass(frozen=True)
class Feature:
    """One column group of the matrix: a name, whether it pairs backends, and its check.

    ``check(adapter, other, folder)`` raises on failure and
    :class:`NotApplicable` when the feature does not apply; ``other`` is the
    target adapter of a pairwise feature (None otherwise).
    """

    name: str
    pairwise: bool
    check: Callable[[Adapter, Adapter | None, Path], None]
    summary: str = ""


@dataclass(frozen=True)
class Cell:
    """One result: ``adapter`` x ``feature`` (x ``target``), its status and detail.

    Example:
        >>> Cell("torch", "convert", "jax", FAIL, "ConversionError: ...").label
        'convert -> jax'
    """

    backend: str
    feature: str
    target: str | None
    status: str
    detail: str = ""
    seconds: float = 0.0

    @property
    def label(self) -> str:
        """Return the column label: the feature, with ``-> target`` when pairwise."""
        return self.feature if self.target is None else f"{self.feature} -> {self.target}"


def _model(adapter: Adapter, seed: int) -> Any:
    return adapter.make_model(dict(adapter.config), seed)


def _save(adapter: Adapter, path: Path, models: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    architectures = {role: (adapter.architecture, dict(adapter.config)) for role in models}
    return save(path, models, params=PARAMS, architectures=architectures, **kwargs)


def _relative_error(actual: np.ndarray, reference: np.ndarray) -> float:
    scale = float(np.max(np.abs(reference))) or 1.0
    return float(np.max(np.abs(np.asarray(actual) - reference)) / scale)


def _same_tensors(actual: Any, expected: Any, what: str) -> None:
    if list(actual) != list(expected):
        raise AssertionError(f"{what}: tensor names {list(actual)} != {list(expected)}")
    for name in expected:
        a, b = np.asarray(actual[name]), np.asarray(expected[name])
        if a.dtype != b.dtype or a.shape != b.shape or a.tobytes() != b.tobytes():
            raise AssertionError(f"{what}: tensor {name!r} differs (not bit for bit)")


def runtime_plugins() -> list[str]:
    """Return the module plugins registered at run time (not by entry point or by default).

    A new process must register them again to see their backends.

    Example:
        >>> runtime_plugins()
        []
    """
    manager = get_plugin_manager()
    from_entry_points = {id(plugin) for plugin, _ in manager.list_plugin_distinfo()}
    return [
        plugin.__name__ for plugin in manager.get_plugins()
        if isinstance(plugin, types.ModuleType) and id(plugin) not in from_entry_points
        and plugin.__name__ not in DEFAULT_PLUGINS
    ]


def _subprocess(body: str, blocked: Iterable[str] = ()) -> str:
    """Run ``body`` in a new Python process with ``blocked`` modules unimportable.

    Runtime plugins are registered first. Returns the last line of stdout;
    raises AssertionError with stderr's tail when the process fails.
    """
    script = textwrap.dedent(
        f"""
        import importlib, importlib.abc, sys
        BLOCKED = {sorted(blocked)!r}
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError("blocked by the conformance kit: " + name)
        sys.meta_path.insert(0, Block())
        import polybundle.hooks.manager
        for name in {runtime_plugins()!r}:
            polybundle.hooks.manager.get_plugin_manager().register(
                importlib.import_module(name), name=name)
        """
    ) + textwrap.dedent(body)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env
    )
    if done.returncode != 0:
        raise AssertionError(f"the new process failed: {done.stderr[-1500:].strip()}")
    return done.stdout.strip().splitlines()[-1]


def check_round_trip(adapter: Adapter, other: Adapter | None, folder: Path) -> None:
    """Save two roles, load them back: predictions and tensors equal bit for bit."""
    backend = get_backend(adapter.backend)
    first, second = _model(adapter, 0), _model(adapter, 1)
    path, again = folder / "two.bundle", folder / "again.bundle"
    manifest = _save(adapter, path, {"first": first, "second": second})
    if manifest["backend"] != backend.name:
        raise AssertionError(f"manifest says backend {manifest['backend']!r}")
    bundle = load(path)
    if bundle.backend != backend.name or bundle.params != PARAMS:
        raise AssertionError(f"loaded backend {bundle.backend!r}, params {bundle.params!r}")
    x = adapter.inputs(dict(adapter.config), 7)
    for role, model in (("first", first), ("second", second)):
        if bundle.models[role] is model:
            raise AssertionError("load returned the saved object itself")
        if not np.array_equal(adapter.predict(bundle.models[role], x), adapter.predict(model, x)):
            raise AssertionError(f"role {role!r}: predictions differ after the round trip")
    if np.array_equal(adapter.predict(bundle.models["first"], x), adapter.predict(second, x)):
        raise AssertionError("two seeds gave the same model; the round trip proves nothing")
    _save(adapter, again, {"first": bundle.models["first"]})
    _same_tensors(load(again).tensors("first"), bundle.tensors("first"), "saved again")


def _saved(adapter: Adapter, folder: Path, name: str) -> tuple[Path, Any]:
    model = _model(adapter, 0)
    path = folder / name
    _save(adapter, path, {"net": model})
    return path, model


def check_lazy(adapter: Adapter, other: Adapter | None, folder: Path) -> None:
    """``load(lazy=True)`` in a process where the framework cannot be imported: same tensors."""
    backend = get_backend(adapter.backend)
    path, _ = _saved(adapter, folder, "lazy.bundle")
    out = folder / "lazy.npz"
    _subprocess(
        f"""
        import numpy, polybundle
        bundle = polybundle.load({str(path)!r}, lazy=True)
        tensors = bundle.tensors("net")
        numpy.savez({str(out)!r}, names=numpy.array(list(tensors)),
                    **{{"t" + str(i): numpy.array(tensors[n]) for i, n in enumerate(tensors)}})
        print("ok")
        """,
        blocked=backend.modules,
    )
    eager = load(path).tensors("net")
    with np.load(out) as stored:
        lazy = {str(n): stored[f"t{i}"] for i, n in enumerate(stored["names"])}
    _same_tensors(lazy, eager, "lazy tensors")


def check_inspect(adapter: Adapter, other: Adapter | None, folder: Path) -> None:
    """``inspect`` in a process where the framework cannot be imported names every tensor."""
    backend = get_backend(adapter.backend)
    path, model = _saved(adapter, folder, "inspect.bundle")
    line = _subprocess(
        f"""
        import json, polybundle
        report = polybundle.inspect({str(path)!r})
        print(json.dumps([report["backend"], [t["name"] for t in report["tensors"]]]))
        """,
        blocked=backend.modules,
    )
    expected = [backend.name, [s.name for s in backend.describe(model)]]
    if json.loads(line) != expected:
        raise AssertionError(f"inspect reported {line}; expected {expected}")


def check_verify(adapter: Adapter, other: Adapter | None, folder: Path) -> None:
    """``verify`` without the framework: a clean bundle is ok, a flipped weights byte is caught."""
    backend = get_backend(adapter.backend)
    path, _ = _saved(adapter, folder, "verify.bundle")
    member = f"net/{backend.weights_member}"
    with ArchiveReader(path) as archive:
        offset = archive.data_offset(member) + archive.size(member) // 2
    damaged = folder / "damaged.bundle"
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    damaged.write_bytes(bytes(data))
    line = _subprocess(
        f"""
        import json, polybundle
        clean = polybundle.verify({str(path)!r})
        bad = polybundle.verify({str(damaged)!r})
        print(json.dumps([clean.problems, bad.problems]))
        """,
        blocked=backend.modules,
    )
    clean, bad = json.loads(line)
    if clean:
        raise AssertionError(f"verify found problems in a clean bundle: {clean}")
    if not any(member in problem for problem in bad):
        raise AssertionError(f"verify missed a flipped byte in {member}: {bad}")


def _target(other: Adapter | None) -> Adapter:
    if other is None:
        raise NotApplicable("a pairwise feature needs a target backend")
    return other


def check_convert(adapter: Adapter, other: Adapter | None, folder: Path) -> None:
    """Plan and convert to ``other``: the plan is complete, the predictions agree."""
    target = _target(other)
    path, model = _saved(adapter, folder, "source.bundle")
    plan = plan_bundle(path, target.backend)
    for role in plan["roles"]:
        problems = {key: role[key] for key in
                    ("missing", "unexpected", "unmapped", "misaligned", "mismatched") if role[key]}
        if problems or not role["builder"]:
            raise AssertionError(f"the plan to {target.backend!r} is incomplete: {problems}, "
                                 f"builder {role['builder']}")
    destination = folder / "converted.bundle"
    manifest = convert(path, destination, backend=target.backend)
    if manifest["backend"] != get_backend(target.backend).name:
        raise AssertionError(f"convert wrote a {manifest['backend']!r} bundle")
    x = neutral_inputs(adapter.config, 3)
    reference = adapter.predict(model, adapter.native_inputs(x))
    for converted in (load(path, backend=target.backend), load(destination)):
        actual = target.predict(converted.models["net"], target.native_inputs(x))
        error = _relative_error(actual, reference)
        if error > CONVERT_TOLERANCE:
            raise AssertionError(f"predictions in {target.backend!r} differ by {error:.2e} "
                                 f"(relative; tolerance {CONVERT_TOLERANCE:g})")


def _needs_optimizer(*adapters: Adapter) -> None:
    for adapter in adapters:
        if adapter.algorithm is None:
            raise NotApplicable(f"the {adapter.backend!r} adapter declares no optimizer support")


def _trained(adapter: Adapter, steps: int) -> tuple[Any, Any]:
    model = _model(adapter, 0)
    optimizer = adapter.make_optimizer(model)
    for step in range(steps):
        adapter.train_step(model, optimizer, adapter.inputs(dict(adapter.config), step))
    return model, optimizer


def _tensors(adapter: Adapter, model: Any, path: Path, backend: str | None = None) -> Any:
    """Save ``model`` at ``path``; return its tensors (read in ``backend``'s naming if given)."""
    _save(adapter, path, {"net": model})
    if backend is None:
        return load(path).tensors("net")
    again = path.with_suffix(".back.bundle")
    save(again, {"net": load(path, backend=backend).models["net"]},
         architectures={"net": (adapter.architecture, dict(adapter.config))})
    return load(again).tensors("net")


def check_optimizer(adapter: Adapter, other: Adapter | None, folder: Path) -> None:
    """Optimizer state saved here continues training in ``other`` as it would have here.

    After two steps the model and optimizer are saved and loaded into
    ``other``; one more step is taken in both. Converted back, every trained
    tensor's update in ``other`` must match the update here. Left out: the
    batch-norm statistics (frameworks estimate the batch variance
    differently) and the convolution's bias, whose gradient is zero (batch
    norm follows), so Adam's step on it is rounding noise.
    """
    target = _target(other)
    _needs_optimizer(adapter, target)
    if adapter.algorithm != target.algorithm:
        raise NotApplicable(f"{adapter.algorithm!r} here, {target.algorithm!r} there")
    model, optimizer = _trained(adapter, 2)
    path = folder / "optimizer.bundle"
    _save(adapter, path, {"net": model}, optimizers={"net": optimizer})
    saved = load(path)
    before = saved.tensors("net")
    trained = [s.name for s in saved.tensor_specs("net")
               if s.slot in ("kernel", "bias", "gamma", "beta") and s.kind != "conv2d" or
               s.slot == "kernel"]
    bundle = load(path, backend=target.backend)
    continued = bundle.models["net"]
    fresh = target.make_optimizer(continued)
    bundle.restore_optimizer("net", fresh)
    x = neutral_inputs(adapter.config, 11)
    adapter.train_step(model, optimizer, adapter.native_inputs(x))
    target.train_step(continued, fresh, target.native_inputs(x))
    here = _tensors(adapter, model, folder / "here.bundle")
    there = _tensors(target, continued, folder / "there.bundle", adapter.backend)
    for name in trained:
        step = np.asarray(here[name]) - before[name]
        error = _relative_error(np.asarray(there[name]) - before[name], step)
        if error > OPTIMIZER_TOLERANCE:
            raise AssertionError(f"the step {target.backend!r} took on {name!r} differs by "
                                 f"{error:.2e} from the step taken here (relative; tolerance "
                                 f"{OPTIMIZER_TOLERANCE:g})")


def check_resume(adapter: Adapter, other: Adapter | None, folder: Path) -> None:
    """Save after 2 steps, resume in a new process for 2 more: tensors equal bit for bit."""
    _needs_optimizer(adapter)
    model, optimizer = _trained(adapter, 2)
    checkpoint, resumed = folder / "checkpoint.bundle", folder / "resumed.bundle"
    _save(adapter, checkpoint, {"net": model}, optimizers={"net": optimizer})
    for step in (2, 3):
        adapter.train_step(model, optimizer, adapter.inputs(dict(adapter.config), step))
    reference = folder / "reference.bundle"
    _save(adapter, reference, {"net": model})
    kind = type(adapter)
    _subprocess(
        f"""
        import importlib, polybundle
        adapter = getattr(importlib.import_module({kind.__module__!r}), {kind.__qualname__!r})()
        bundle = polybundle.load({str(checkpoint)!r})
        model = bundle.models["net"]
        optimizer = adapter.make_optimizer(model)
        bundle.restore_optimizer("net", optimizer)
        for step in (2, 3):
            adapter.train_step(model, optimizer, adapter.inputs(dict(adapter.config), step))
        polybundle.save({str(resumed)!r}, {{"net": model}})
        print("ok")
        """
    )
    _same_tensors(load(resumed).tensors("net"), load(reference).tensors("net"), "resumed")


FEATURES: tuple[Feature, ...] = (
    Feature("round trip", False, check_round_trip, "save/load two roles, bit for bit"),
    Feature("lazy", False, check_lazy, "lazy=True without the framework, same tensors"),
    Feature("inspect", False, check_inspect, "inspect without the framework"),
    Feature("verify", False, check_verify, "verify without the framework; a flipped byte"),
    Feature("convert", True, check_convert, "plan and convert; predictions agree"),
    Feature("optimizer", True, check_optimizer, "optimizer state continues in the target"),
    Feature("resume", False, check_resume, "exact resume in a new process"),
)
"""The features every backend is checked for, in column order."""


def conformance_adapters() -> list[Adapter]:
    """Return every adapter the plugins register whose backend is installed.

    Example:
        >>> all(isinstance(a, Adapter) for a in conformance_adapters())
        True
    """
    found = get_plugin_manager().hook.polybundle_conformance_adapters()
    adapters = [adapter for group in found for adapter in group]
    return [a for a in adapters if get_backend(a.backend).is_available()]


def cases(
    adapters: list[Adapter], features: Iterable[Feature] = FEATURES
) -> list[tuple[Adapter, Feature, Adapter | None]]:
    """Return every (adapter, feature, target) the matrix checks, in display order.

    Example:
        >>> cases([])
        []
    """
    chosen = list(features)
    out: list[tuple[Adapter, Feature, Adapter | None]] = []
    for adapter in adapters:
        for feature in chosen:
            if not feature.pairwise:
                out.append((adapter, feature, None))
                continue
            out.extend((adapter, feature, o) for o in adapters if o.backend != adapter.backend)
    return out


def run_cell(adapter: Adapter, feature: Feature, target: Adapter | None) -> Cell:
    """Run one check in a fresh temporary folder; return its :class:`Cell` (never raises).

    Example:
        >>> class Numpy(Adapter):
        ...     backend = "numpy"
        ...     def make_model(self, config, seed): return {}
        ...     def predict(self, model, x): return x
        >>> cell = run_cell(Numpy(), FEATURES[5], None)
        >>> cell.status, cell.detail
        ('n.a.', 'a pairwise feature needs a target backend')
    """
    started = time.perf_counter()
    name = target.backend if target is not None else None
    with tempfile.TemporaryDirectory(prefix="polybundle-conformance-") as folder:
        try:
            feature.check(adapter, target, Path(folder))
        except NotApplicable as reason:
            status, detail = NOT_APPLICABLE, str(reason)
        except Exception as exc:  # noqa: BLE001 - a cell records every failure
            status, detail = FAIL, f"{type(exc).__name__}: {str(exc)[:800]}"
        else:
            status, detail = PASS, ""
    return Cell(adapter.label, feature.name, name, status, detail,
                time.perf_counter() - started)


def feature_matrix(
    adapters: list[Adapter] | None = None, features: Iterable[Feature] = FEATURES
) -> list[Cell]:
    """Run every cell for ``adapters`` (default: :func:`conformance_adapters`).

    Example:
        >>> feature_matrix([])
        []
    """
    chosen = conformance_adapters() if adapters is None else adapters
    return [run_cell(a, f, t) for a, f, t in cases(chosen, features)]


_STYLES = {PASS: "green", FAIL: "bold red", NOT_APPLICABLE: "yellow"}


def matrix_table(cells: list[Cell]) -> Table:
    """Return a rich table: one row per backend, one column per feature.

    A pairwise feature's cell has one line per target backend
    (``-> jax: pass``).

    Example:
        >>> matrix_table([Cell("numpy", "verify", None, PASS)]).row_count
        1
    """
    columns = list(dict.fromkeys(cell.feature for cell in cells))
    rows = list(dict.fromkeys(cell.backend for cell in cells))
    table = Table(title="polybundle conformance feature matrix", show_lines=True)
    table.add_column("backend")
    for column in columns:
        table.add_column(column)
    for row in rows:
        shown = [Text(row)]
        for column in columns:
            text = Text()
            for cell in cells:
                if cell.backend != row or cell.feature != column:
                    continue
                if text:
                    text.append("\n")
                if cell.target is not None:
                    text.append(f"-> {cell.target}: ")
                text.append(cell.status, style=_STYLES.get(cell.status, ""))
            shown.append(text)
        table.add_row(*shown)
    return table


def problems(cells: list[Cell]) -> list[str]:
    """Return one line per failed or n.a. cell: ``backend / column: status: detail``.

    Example:
        >>> problems([Cell("numpy", "resume", None, NOT_APPLICABLE, "no optimizer")])
        ['numpy / resume: n.a.: no optimizer']
    """
    return [f"{c.backend} / {c.label}: {c.status}: {c.detail}"
            for c in cells if c.status != PASS]


def plugin_modules(names: Iterable[str]) -> list[types.ModuleType]:
    """Import the plugin modules ``names`` (for ``polybundle conformance --plugin``).

    A module that cannot be imported is a :class:`BackendError` naming it.

    Example:
        >>> plugin_modules(["json"])[0].__name__
        'json'
        >>> plugin_modules(["no_such_plugin"])
        Traceback (most recent call last):
        ...
        polybundle.errors.BackendError: cannot import plugin module 'no_such_plugin' (...
    """
    modules = []
    for name in names:
        try:
            modules.append(importlib.import_module(name))
        except ImportError as exc:
            raise BackendError(
                f"cannot import plugin module {name!r} ({exc}); expected an importable module "
                "with @hookimpl functions. Install its package, or run from the folder that "
                "holds it with `python -m polybundle.tools.cli conformance --plugin ...`."
            ) from None
    return modules
