"""Print the zoo table (markdown): each model converted both ways, its error or refusal, its time.

Every model of tests/zoo_torch.py and tests/zoo_keras.py is built in one framework
with random weights, saved with parity inputs and loaded into the other
(polybundle.load(backend=...), which checks the conversion); the outputs are then
compared independently. A refusal is reported with its error's first line. Then
each deliberately broken twin is converted and must be refused with
ConversionMismatchError; the count caught is printed under the table.

Usage (from the repository root, with the frameworks installed)::

    python -m benchmarks.zoo_table                   # every model
    python -m benchmarks.zoo_table zoo-mobilenet_v2  # some
"""

from __future__ import annotations

import sys
import tempfile
import warnings
from pathlib import Path

import polybundle
from polybundle.errors import ConversionMismatchError, PolybundleError
from tests import zoo_keras, zoo_torch
from tests.zoo_weights import convert, image_inputs, randomize

CONFIGS = {
    "zoo-classic_cnn": {"size": 16, "classes": 5},
    "zoo-mobilenet_v2": {"size": 32, "classes": 5},
    "zoo-efficientnet_b0": {"size": 32, "classes": 5},
    "zoo-convnext_tiny": {"size": 32, "classes": 5},
    "zoo-resnet50": {"size": 32, "classes": 5},
    "zoo-vgg16": {"size": 64, "classes": 5},
    "zoo-vit": {"size": 32, "classes": 5},
}
"""Each model's config: the smallest input its head sees more than one position of."""

BROKEN = {
    "zoo-classic_cnn": "epsilon", "zoo-mobilenet_v2": "padding",
    "zoo-efficientnet_b0": "epsilon", "zoo-convnext_tiny": "epsilon",
    "zoo-resnet50": "stride", "zoo-vgg16": "pool", "zoo-vit": "",
}
"""The deliberate mistake each PyTorch twin is built with (see tests/zoo_torch.py)."""


def _cell(folder: Path, name: str, source: str, target: str) -> tuple[str, str]:
    """Return (max relative error or refusal, conversion seconds) for one direction."""
    try:
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            max_rel, seconds, check = convert(folder / f"{name}-{source}.bundle", name,
                                              CONFIGS[name], source, target)
    except PolybundleError as exc:
        reason = str(exc).splitlines()[0]
        return f"refused: {type(exc).__name__}: {reason[:200]}", "-"
    checked = "checked" if getattr(check, "checked", False) else (
        f"UNCHECKED: {getattr(check, 'note', '')[:120]}")
    return f"{max_rel:.1e} ({checked})", f"{seconds:.1f}"


def _caught(folder: Path, name: str) -> str:
    """Convert the broken torch twin to Keras; say whether the check refused it."""
    if not BROKEN[name]:
        return "n/a"
    config = {**CONFIGS[name], "broken": BROKEN[name]}
    model = randomize(polybundle.build(name, config, backend="torch"))
    path = folder / f"{name}-broken.bundle"
    polybundle.save(path, {"net": model}, architectures={"net": (name, config)},
                    parity_inputs=image_inputs("torch", config["size"]))
    try:
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            bundle = polybundle.load(path, backend="tensorflow")
    except ConversionMismatchError as exc:
        return f"caught ({BROKEN[name]}): max_rel {exc.max_rel:.2g}, first layer {exc.layer!r}"
    except PolybundleError as exc:
        return f"refused otherwise ({BROKEN[name]}): {type(exc).__name__}"
    check = bundle.checks.get("net")
    if not getattr(check, "checked", False):
        return f"NOT caught ({BROKEN[name]}): unchecked, {getattr(check, 'note', '')[:120]}"
    return f"NOT caught ({BROKEN[name]}): check passed at max_rel {check.max_rel:.1e}"


def main(names: list[str]) -> None:
    """Print the table for ``names`` (default: every model)."""
    names = names or [n for n in CONFIGS if n in zoo_torch.BUILDERS and n in zoo_keras.BUILDERS]
    print("| model | input | torch -> keras | s | keras -> torch | s | broken twin |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    caught = 0
    with tempfile.TemporaryDirectory() as folder:
        for name in names:
            to_keras = _cell(Path(folder), name, "torch", "tensorflow")
            to_torch = _cell(Path(folder), name, "tensorflow", "torch")
            broken = _caught(Path(folder), name)
            caught += broken.startswith("caught")
            size = CONFIGS[name]["size"]
            print(f"| {name.removeprefix('zoo-')} | {size}x{size} | {to_keras[0]} | "
                  f"{to_keras[1]} | {to_torch[0]} | {to_torch[1]} | {broken} |", flush=True)
    tried = sum(bool(BROKEN[name]) for name in names)
    print(f"\nBroken twins caught with ConversionMismatchError: {caught} of {tried}")


if __name__ == "__main__":
    main(sys.argv[1:])
