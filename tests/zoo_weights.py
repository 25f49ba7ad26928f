"""Random weights for the zoo: every tensor non-trivial, deep nets kept well scaled.

Kernels are drawn with variance 1/fan-in (fan-in from the canonical layout), so a
50-layer network neither explodes nor vanishes and a conversion mistake shows
in its outputs; normalisation statistics get positive variances; counters are 3.

Usage::

    randomize(polybundle.build("zoo-resnet50", {}, backend="torch"), seed=0)
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

import polybundle


def _fan_in(layout: str, shape: tuple[int, ...]) -> int:
    """Product of the input and spatial axes of a kernel tagged ``layout``."""
    fan = 1
    for token, length in zip(layout.split(","), shape, strict=False):
        if token in ("in", "h", "w", "d"):
            fan *= length
    return max(fan, 1)


def randomize(model: Any, seed: int = 0) -> Any:
    """Give every tensor of ``model`` (either framework) random, well-scaled values.

    Usage::

        randomize(keras_model, seed=1)
    """
    rng = np.random.default_rng(seed)
    backend = polybundle.hooks.registry.backend_for_model(model)
    arrays = {}
    for spec in backend.describe(model):
        if spec.dtype.startswith("int"):
            arrays[spec.name] = np.full(spec.shape, 3, dtype=spec.dtype)
        elif spec.slot in ("moving_variance", "variance"):
            arrays[spec.name] = rng.uniform(0.5, 2.0, spec.shape).astype(spec.dtype)
        elif spec.slot in ("gamma",):
            arrays[spec.name] = rng.uniform(0.5, 1.5, spec.shape).astype(spec.dtype)
        elif spec.slot == "kernel":
            scale = 1.0 / np.sqrt(_fan_in(spec.layout, spec.shape))
            arrays[spec.name] = (scale * rng.standard_normal(spec.shape)).astype(spec.dtype)
        else:
            arrays[spec.name] = (0.2 * rng.standard_normal(spec.shape)).astype(spec.dtype)
    backend.assign(model, arrays)
    return model


def image_inputs(backend: str, size: int, batch: int = 2, seed: int = 0) -> np.ndarray:
    """Return one logical batch of images in ``backend``'s layout (NCHW torch, NHWC Keras).

    Usage::

        image_inputs("torch", 32).shape  # (2, 3, 32, 32)
    """
    images = np.random.default_rng(seed).uniform(-1, 1, (batch, size, size, 3)).astype("float32")
    return images.transpose(0, 3, 1, 2) if backend == "torch" else images


def convert(
    path: Any, name: str, config: dict[str, Any], source: str, target: str, seed: int = 0
) -> tuple[float, float, Any]:
    """Build ``name`` in ``source``, randomize, save with parity inputs, load into ``target``.

    The load runs polybundle's own check (it raises ConversionMismatchError on a
    wrong conversion); this compares the outputs again independently. Returns
    ``(max relative error, seconds the conversion took, the load's check of the role)``.

    Usage::

        convert(tmp_path / "m.bundle", "zoo-vgg16", {"size": 64, "classes": 5}, "torch", "tf")
    """
    from polybundle.tools.parity import errors

    model = randomize(polybundle.build(name, config, backend=source), seed=seed)
    inputs = {b: image_inputs(b, config["size"]) for b in (source, target)}
    polybundle.save(path, {"net": model}, architectures={"net": (name, config)},
                    parity_inputs=inputs[source])
    start = time.perf_counter()
    bundle = polybundle.load(path, backend=target)
    seconds = time.perf_counter() - start
    converted = bundle.models["net"]
    expected = polybundle.get_backend(source).predict(model, {"input": inputs[source]})["output"]
    got = polybundle.get_backend(target).predict(converted, {"input": inputs[target]})["output"]
    if np.std(expected) < 1e-3:
        raise AssertionError(f"{name}: the source outputs are nearly constant; weights too small")
    return errors(got, expected)[1], seconds, bundle.checks.get("net")
