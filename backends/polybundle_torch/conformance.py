"""The PyTorch conformance adapter and its model, registered by :mod:`polybundle_torch.plugin`.

``polybundle conformance`` (and ``polybundle demo``) drive the PyTorch backend
through :class:`TorchAdapter`. Nothing here imports torch until a model is built.

The model takes channels-last images, as the other frameworks' models do, so
one bundle's stored parity inputs (``polybundle parity``) run unchanged in
every framework.

Example:
    >>> TorchAdapter().native_inputs(np.zeros((4, 6, 6, 1), np.float32)).shape
    (4, 6, 6, 1)
"""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np

from polybundle.plugin import Adapter


@cache
def channels_last_sequential() -> type:
    """Return ``torch.nn.Sequential`` taking channels-last images (N, H, W, C), made once.

    Its layers (and so its ``state_dict`` keys) are the ``Sequential``'s; only
    ``forward`` moves the channel axis first.

    Example:
        >>> import torch
        >>> net = channels_last_sequential()(torch.nn.Conv2d(1, 2, 3))
        >>> tuple(net(torch.zeros(1, 5, 5, 1)).shape)
        (1, 2, 3, 3)
    """
    import torch

    class ChannelsLastSequential(torch.nn.Sequential):
        """``torch.nn.Sequential`` whose input is channels-last (N, H, W, C)."""

        def forward(self, x: Any) -> Any:
            return super().forward(x.permute(0, 3, 1, 2))

    return ChannelsLastSequential


def build_conformance_model(config: dict[str, Any]) -> Any:
    """Build :data:`polybundle.tools.conformance.ARCHITECTURE` in PyTorch (input N,H,W,1).

    Example:
        >>> build_conformance_model({"size": 6, "filters": 3, "outputs": 2})[0]
        Conv2d(1, 3, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))
    """
    import torch

    filters = config["filters"]
    return channels_last_sequential()(
        torch.nn.Conv2d(1, filters, 3, padding=1),
        torch.nn.BatchNorm2d(filters),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(filters, config["outputs"]),
    )


class TorchAdapter(Adapter):
    """The conformance convnet with ``torch.optim.Adam`` (learning rate 0.01).

    Example:
        >>> TorchAdapter().backend, TorchAdapter().algorithm
        ('torch', 'adam')
    """

    backend = "torch"
    algorithm = "adam"

    def make_model(self, config: dict[str, Any], seed: int) -> Any:
        """Build the model from ``seed`` and move its batch-norm statistics."""
        import torch

        torch.manual_seed(seed)
        model = build_conformance_model(config).train()
        warm = np.random.default_rng(seed + 100).standard_normal(
            (8, config["size"], config["size"], 1)).astype(np.float32)
        with torch.no_grad():
            model(torch.from_numpy(warm) * 2 + 1)
        return model.eval()

    def predict(self, model: Any, x: np.ndarray) -> np.ndarray:
        """Return the inference-mode output for ``x``."""
        import torch

        with torch.no_grad():
            return model.eval()(torch.from_numpy(x)).numpy()

    def make_optimizer(self, model: Any) -> Any:
        """Return ``torch.optim.Adam(model.parameters(), lr=1e-2, eps=1e-7)``."""
        import torch

        return torch.optim.Adam(model.parameters(), lr=1e-2, eps=1e-7)

    def train_step(self, model: Any, optimizer: Any, x: np.ndarray) -> float:
        """One step on the mean squared output; return the loss."""
        import torch

        model.train()
        optimizer.zero_grad()
        loss = model(torch.from_numpy(x)).square().mean()
        loss.backward()
        optimizer.step()
        model.eval()
        return float(loss.item())
