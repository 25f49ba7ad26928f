"""The demo behind ``polybundle demo``: train, save, load back, compare, in every backend.

The demo holds no framework code. Each installed backend is driven through
the conformance adapter its plugin registers (the
``polybundle_conformance_adapters`` hook, see
:mod:`polybundle.tools.conformance`): it builds the shared conformance convnet
for two roles, trains each for a few steps, saves the two roles and the params
as a bundle, loads the bundle with the one :func:`polybundle.load`
(rebuilding the models from the registered architecture) and checks that the
predictions are bit-for-bit those of the trained models; then it loads the
same bundle into every other installed backend and checks that the
predictions agree within float32 rounding.

Example:
    >>> DemoResult("a", Path("a.bundle"), 1, 0.9, 0.1, 0.0, {"b": 1e-7}).matches
    True
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console

from polybundle.api.loading import load
from polybundle.api.saving import save
from polybundle.errors import PolybundleError
from polybundle.hooks.manager import get_plugin_manager
from polybundle.hooks.registry import get_backend
from polybundle.tools.conformance import Adapter, neutral_inputs

ROLES = ("autoencoder", "diffraction_to_obj")
"""The two roles every demo bundle holds."""

CROSS_TOLERANCE = 1e-5
"""Largest relative difference accepted between two backends' predictions."""


@dataclass
class DemoResult:
    """What the demo did for one backend.

    ``cross_errors`` maps every other installed backend the bundle was also
    loaded into to the largest difference of its predictions, relative to
    the largest prediction. ``first_loss`` and ``last_loss`` are NaN for a
    backend whose adapter cannot train.

    Example:
        >>> DemoResult("a", Path("a.bundle"), 1, 0.9, 0.1, 0.0).cross_relative_error
        0.0
    """

    backend: str
    path: Path
    size_bytes: int
    first_loss: float
    last_loss: float
    max_abs_difference: float
    cross_errors: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def cross_relative_error(self) -> float:
        """Return the worst relative difference over the other backends (0.0 when none)."""
        return max(self.cross_errors.values(), default=0.0)

    @property
    def matches(self) -> bool:
        """Return True when the reload is exact and every other backend agrees to 1e-5."""
        return self.max_abs_difference == 0.0 and self.cross_relative_error <= CROSS_TOLERANCE


def _train(adapter: Adapter, steps: int) -> tuple[dict[str, object], list[float]]:
    """Build a model per role and train each ``steps`` steps on one batch.

    Returns the models and the loss of each step, averaged over the roles
    (empty when the adapter cannot train).
    """
    models = {role: adapter.make_model(dict(adapter.config), seed) for seed, role in
              enumerate(ROLES)}
    if adapter.algorithm is None:
        return models, []
    x = adapter.inputs(dict(adapter.config), 0)
    per_role = []
    for model in models.values():
        optimizer = adapter.make_optimizer(model)
        per_role.append([adapter.train_step(model, optimizer, x) for _ in range(steps)])
    return models, [float(np.mean(losses)) for losses in zip(*per_role, strict=True)]


def _cross_check(
    path: Path, adapter: Adapter, others: list[Adapter], models: dict[str, object]
) -> dict[str, float]:
    """Load the bundle into every backend of ``others``; return each one's worst error."""
    x = neutral_inputs(adapter.config, 1, batch=16)
    errors = {}
    for other in others:
        converted = load(path, backend=other.backend)
        worst = 0.0
        for role in ROLES:
            reference = adapter.predict(models[role], adapter.native_inputs(x))
            actual = other.predict(converted.models[role], other.native_inputs(x))
            difference = np.max(np.abs(actual - reference))
            worst = max(worst, float(difference / np.max(np.abs(reference))))
        errors[other.backend] = worst
    return errors


def _adapters(console: Console) -> list[Adapter]:
    """Return one adapter per installed backend; say which registered ones are missing."""
    found = get_plugin_manager().hook.polybundle_conformance_adapters()
    chosen: dict[str, Adapter] = {}
    for adapter in (a for group in found for a in group):
        backend = get_backend(adapter.backend)
        if not backend.is_available():
            console.print(f"[yellow]skipped {backend.name}[/yellow]: not installed "
                          f"(pip install '{backend.extra}')")
            continue
        chosen.setdefault(backend.name, adapter)
    return list(chosen.values())


def _check_folder(folder: Path) -> None:
    """Refuse a demo folder that is a file, or whose parent folder does not exist (as save does)."""
    if folder.exists() and not folder.is_dir():
        raise PolybundleError(
            f"{str(folder)!r} is a file; the demo needs a folder for its bundles."
        )
    if not folder.parent.is_dir():
        raise PolybundleError(
            f"the folder {str(folder.parent)!r} does not exist; create it, or choose a folder "
            "whose parent exists (the demo creates only the last folder of the path)."
        )


def run(
    directory: str | Path | None = None, *, steps: int = 20, console: Console | None = None
) -> list[DemoResult]:
    """Run the demo for every installed backend; return one result per backend.

    Bundles go to ``directory`` (a temporary folder when None, removed after); it is
    created when missing, but its parent must exist. ``steps`` is at least 1.

    Example:
        >>> results = run(steps=1, console=Console(quiet=True))
        >>> len(results) > 1, all(result.matches for result in results)
        (True, True)
        >>> all(len(result.cross_errors) == len(results) - 1 for result in results)
        True
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise PolybundleError(
            f"steps is {steps!r}; the demo trains each model at least one step: pass a whole "
            "number of steps, 1 or more."
        )
    if directory is not None:
        _check_folder(Path(directory))
    console = console or Console()
    adapters = _adapters(console)
    with tempfile.TemporaryDirectory(prefix="polybundle-demo-") as scratch:
        folder = Path(directory) if directory is not None else Path(scratch)
        folder.mkdir(exist_ok=True)
        results = []
        for adapter in adapters:
            name = adapter.backend
            started = time.perf_counter()
            models, losses = _train(adapter, steps)
            path = folder / f"demo-{name}.bundle"
            last = losses[-1] if losses else float("nan")
            params = {"framework": name, "steps": steps, "final_loss": last, **adapter.config}
            architectures = {role: (adapter.architecture, dict(adapter.config)) for role in ROLES}
            reference = adapter.inputs(dict(adapter.config), 0)  # for polybundle parity
            save(path, models, params=params, architectures=architectures,
                 parity_inputs=reference)
            bundle = load(path)
            x = adapter.inputs(dict(adapter.config), 0)
            difference = max(
                float(np.max(np.abs(adapter.predict(models[r], x)
                                    - adapter.predict(bundle.models[r], x))))
                for r in ROLES
            )
            others = [a for a in adapters if a.backend != name]
            cross = _cross_check(path, adapter, others, models)
            result = DemoResult(
                name, path, path.stat().st_size, losses[0] if losses else float("nan"), last,
                difference, cross, time.perf_counter() - started,
            )
            results.append(result)
            verdict = "[green]identical[/green]" if difference == 0.0 else "[red]DIFFERENT[/red]"
            trained = (f"trained {len(ROLES)} roles x {steps} steps (loss {result.first_loss:.4f}"
                       f" -> {result.last_loss:.4f})" if losses else
                       f"built {len(ROLES)} roles (its adapter cannot train)")
            console.print(
                f"[bold]{name}[/bold]: {trained}; saved {path.name} ({result.size_bytes} bytes); "
                f"loaded back with polybundle.load (backend detected: {bundle.backend}); max "
                f"|difference| of predictions = {difference} -> {verdict}"
            )
            for other, error in cross.items():
                agree = error <= CROSS_TOLERANCE
                console.print(
                    f"  and loaded into [bold]{other}[/bold] with polybundle.load(path, "
                    f"backend={other!r}): max relative difference {error:.2e} -> "
                    + ("[green]agree[/green]" if agree else "[red]DISAGREE[/red]")
                    + f" (tolerance {CROSS_TOLERANCE:g})"
                )
        if directory is None:
            console.print(f"bundles were written to a temporary folder ({scratch}), now removed")
        return results
