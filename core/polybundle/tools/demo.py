"""The demo behind ``polybundle demo``: train, save, load back, compare.

For each installed framework it trains a small convolutional regressor (Conv,
BatchNorm, global average pooling, Dense) for a few steps on synthetic data,
saves two roles and the params as a bundle, loads the bundle with the one
:func:`polybundle.load` (rebuilding the models from the registered
architecture) and checks that the predictions are bit-for-bit those of the
trained models; then it loads the same bundle into the other framework and
checks that the predictions agree within float32 rounding.

Example:
    >>> results = run("./demo-bundles", steps=5)  # doctest: +SKIP
    >>> all(r.matches for r in results)
    True
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from polybundle.api.loading import load
from polybundle.api.saving import save
from polybundle.hooks.registry import architecture, build, get_backend

ARCHITECTURE = "polybundle-demo-regressor"
"""Architecture name of the demo model, registered for torch and tensorflow."""

CONFIG = {"size": 8, "filters": 4, "outputs": 2}
ROLES = ("autoencoder", "diffraction_to_obj")


@architecture(ARCHITECTURE, backend="torch")
def build_torch(config: dict[str, Any]) -> Any:
    """Build the demo regressor in PyTorch (input N,1,size,size).

    Example:
        >>> build_torch(CONFIG)  # doctest: +SKIP
    """
    import torch

    filters = config["filters"]
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, filters, 3, padding=1),
        torch.nn.BatchNorm2d(filters),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(filters, config["outputs"]),
    )


@architecture(ARCHITECTURE, backend="tensorflow")
def build_keras(config: dict[str, Any]) -> Any:
    """Build the demo regressor in Keras (input N,size,size,1).

    Example:
        >>> build_keras(CONFIG)  # doctest: +SKIP
    """
    import keras

    size = config["size"]
    inputs = keras.Input((size, size, 1))
    hidden = keras.layers.Conv2D(config["filters"], 3, padding="same", name="conv")(inputs)
    # PyTorch's batch-norm defaults (epsilon 1e-5, momentum 0.1), so the two agree.
    hidden = keras.layers.BatchNormalization(epsilon=1e-5, momentum=0.9, name="bn")(hidden)
    hidden = keras.layers.ReLU()(hidden)
    hidden = keras.layers.GlobalAveragePooling2D()(hidden)
    outputs = keras.layers.Dense(config["outputs"], name="head")(hidden)
    return keras.Model(inputs, outputs, name="regressor")


@dataclass
class DemoResult:
    """What the demo did for one framework.

    ``cross_backend`` is the other framework the bundle was also loaded into
    (None when it is not installed) and ``cross_relative_error`` the largest
    difference of its predictions, relative to the largest prediction.

    Example:
        >>> DemoResult("torch", Path("t.bundle"), 1, 0.9, 0.1, 0.0).matches
        True
    """

    backend: str
    path: Path
    size_bytes: int
    first_loss: float
    last_loss: float
    max_abs_difference: float
    cross_backend: str | None = None
    cross_relative_error: float = 0.0
    seconds: float = 0.0

    @property
    def matches(self) -> bool:
        """Return True when the reload is exact and the other framework agrees to 1e-5."""
        return self.max_abs_difference == 0.0 and self.cross_relative_error <= CROSS_TOLERANCE


CROSS_TOLERANCE = 1e-5
"""Largest relative difference accepted between the two frameworks' predictions."""


def _data(config: dict[str, Any], seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((64, config["size"], config["size"])).astype(np.float32)
    y = np.stack([x.mean(axis=(1, 2)), (x**2).mean(axis=(1, 2))], axis=1).astype(np.float32)
    return x, y


def _predict_torch(model: Any, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model.eval()(torch.from_numpy(x[:, None])).numpy()


def _predict_keras(model: Any, x: np.ndarray) -> np.ndarray:
    return np.asarray(model(x[..., None], training=False))


def _train_torch(steps: int) -> tuple[dict[str, Any], list[float]]:
    import torch

    torch.manual_seed(0)
    x, y = _data(CONFIG, 0)
    inputs, targets = torch.from_numpy(x[:, None]), torch.from_numpy(y)
    models = {role: build(ARCHITECTURE, CONFIG, backend="torch") for role in ROLES}
    losses = []
    for model in models.values():
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(steps):
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(model(inputs), targets)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        model.eval()
    return models, losses


def _train_keras(steps: int) -> tuple[dict[str, Any], list[float]]:
    import keras

    keras.utils.set_random_seed(0)
    x, y = _data(CONFIG, 0)
    models = {role: build(ARCHITECTURE, CONFIG, backend="tensorflow") for role in ROLES}
    losses = []
    for model in models.values():
        model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
        for _ in range(steps):
            losses.append(float(model.train_on_batch(x[..., None], y)))
    return models, losses


_TRAINERS = {"torch": _train_torch, "tensorflow": _train_keras}
_PREDICTORS = {"torch": _predict_torch, "tensorflow": _predict_keras}


def _cross_check(path: Path, name: str, models: dict[str, Any]) -> tuple[str | None, float]:
    """Load the bundle into the other framework; return it and the worst relative error."""
    others = [o for o in _TRAINERS if o != name and get_backend(o).is_available()]
    if not others:
        return None, 0.0
    other = others[0]
    x, _ = _data(CONFIG, 1)
    converted = load(path, backend=other)
    worst = 0.0
    for role in ROLES:
        reference = _PREDICTORS[name](models[role], x)
        difference = np.max(np.abs(_PREDICTORS[other](converted.models[role], x) - reference))
        worst = max(worst, float(difference / np.max(np.abs(reference))))
    return other, worst


def run(
    directory: str | Path | None = None, *, steps: int = 20, console: Console | None = None
) -> list[DemoResult]:
    """Run the demo for every installed framework; return one result per framework.

    Each framework trains its models, saves them, loads the bundle back with
    the one :func:`polybundle.load` and, when the other framework is
    installed, loads the same bundle into that framework too. Bundles go to
    ``directory`` (a temporary folder when None, removed after).

    Example:
        >>> [r.backend for r in run(steps=2)]  # doctest: +SKIP
        ['torch', 'tensorflow']
    """
    console = console or Console()
    with tempfile.TemporaryDirectory(prefix="polybundle-demo-") as scratch:
        folder = Path(directory) if directory is not None else Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        results = []
        for name, trainer in _TRAINERS.items():
            if not get_backend(name).is_available():
                console.print(f"[yellow]skipped {name}[/yellow]: not installed "
                              f"(pip install '{get_backend(name).extra}')")
                continue
            started = time.perf_counter()
            models, losses = trainer(steps)
            path = folder / f"demo-{name}.bundle"
            params = {"framework": name, "steps": steps, "final_loss": losses[-1], **CONFIG}
            save(path, models, params=params)
            bundle = load(path)
            x, _ = _data(CONFIG, 0)
            predict = _PREDICTORS[name]
            difference = max(
                float(np.max(np.abs(predict(models[r], x) - predict(bundle.models[r], x))))
                for r in ROLES
            )
            other, cross_error = _cross_check(path, name, models)
            result = DemoResult(
                name, path, path.stat().st_size, losses[0], losses[-1], difference,
                other, cross_error, time.perf_counter() - started,
            )
            results.append(result)
            verdict = "[green]identical[/green]" if difference == 0.0 else "[red]DIFFERENT[/red]"
            console.print(
                f"[bold]{name}[/bold]: trained {len(ROLES)} roles x {steps} steps "
                f"(loss {result.first_loss:.4f} -> {result.last_loss:.4f}); saved "
                f"{path.name} ({result.size_bytes} bytes); loaded back with polybundle.load "
                f"(backend detected: {bundle.backend}); max |difference| of predictions "
                f"= {difference} -> {verdict}"
            )
            if other is not None:
                agree = cross_error <= CROSS_TOLERANCE
                console.print(
                    f"  and loaded into [bold]{other}[/bold] with polybundle.load(path, "
                    f"backend={other!r}): max relative difference {cross_error:.2e} -> "
                    + ("[green]agree[/green]" if agree else "[red]DISAGREE[/red]")
                    + f" (tolerance {CROSS_TOLERANCE:g})"
                )
        if directory is None:
            console.print(f"bundles were written to a temporary folder ({scratch}), now removed")
        return results
