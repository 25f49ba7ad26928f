"""Random weights for the zoo: every tensor non-trivial, deep nets kept well scaled.

Kernels are drawn with variance 1/fan-in (fan-in from the canonical layout), so a
50-layer network neither explodes nor vanishes and a conversion mistake shows
in its outputs; normalisation statistics get positive variances; counters are 3.

Usage::

    randomize(polybundle.build("zoo-resnet50", {}, backend="torch"), seed=0)
"""

from __future__ import annotations

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
