"""The conformance adapter of the NumPy test backend (no optimizer: those cells are n.a.).

Example:
    >>> model = NumpyAdapter().make_model(NumpyAdapter().config, seed=0)
    >>> NumpyAdapter().predict(model, NumpyAdapter().inputs(model.config, seed=1)).shape
    (4, 2)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from polybundle.plugin import Adapter

from .backend import NumpyModel, forward, shapes


class NumpyAdapter(Adapter):
    """Random convnets of the NumPy backend, with moved batch-norm statistics.

    Example:
        >>> NumpyAdapter().algorithm is None
        True
    """

    backend = "numpy"

    def make_model(self, config: dict[str, Any], seed: int) -> Any:
        """Return a convnet of random weights and batch-norm statistics drawn from ``seed``."""
        rng = np.random.default_rng(seed)
        arrays = {name: (rng.standard_normal(shape) * 0.5).astype(np.float32)
                  for name, shape in shapes(config).items()}
        arrays["bn.moving_variance"] = (rng.random(shapes(config)["bn.moving_variance"]) + 0.5
                                        ).astype(np.float32)
        return NumpyModel(arrays, config=config)

    def predict(self, model: Any, x: np.ndarray) -> np.ndarray:
        """Return the convnet's output for channels-last ``x``."""
        return forward(model, x)
