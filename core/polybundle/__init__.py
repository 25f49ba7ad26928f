"""polybundle: one archive format for trained models, any framework.

Save a set of named models of PyTorch or TensorFlow/Keras with their params,
and load any bundle back with one call, whichever framework wrote it.

Quick start:
    >>> import polybundle, torch
    >>> net = torch.nn.Linear(3, 1)
    >>> manifest = polybundle.save("run.bundle", {"net": net}, params={"lr": 1e-3})
    >>> manifest["backend"], [member for member in manifest["members"]]
    ('torch', ['params.json', 'net/model.pth'])
    >>> bundle = polybundle.load("run.bundle", into={"net": torch.nn.Linear(3, 1)})
    >>> bundle.params
    {'lr': 0.001}
    >>> torch.equal(bundle.models["net"].weight, net.weight)
    True

For plugin authors: everything a backend needs is in :mod:`polybundle.plugin`
(``docs/plugins.md``; the hooks are listed in ``docs/hooks.md``). A plugin module
is found through the ``"polybundle"`` entry-point group. The core never imports a
framework at module level.
"""

from __future__ import annotations

from polybundle._version import __version__
from polybundle.api.bundle import Bundle
from polybundle.api.checkpoints import Checkpoint, CheckpointManager
from polybundle.api.inspection import inspect
from polybundle.api.loading import load
from polybundle.api.migrate import migrate
from polybundle.api.remote_checkpoints import RemoteCheckpointManager
from polybundle.api.saving import save
from polybundle.api.transfer import convert
from polybundle.api.verify import verify
from polybundle.errors import (
    BackendError,
    BackendMismatchError,
    BackendUnavailableError,
    BudgetExceededError,
    CheckpointError,
    ConversionError,
    ConversionUnavailableError,
    FormatError,
    IntegrityError,
    OptimizerError,
    OptimizerMismatchError,
    ParamsError,
    PolybundleError,
    SchemaError,
    StorageError,
    TensorMismatchError,
    UnknownArchitectureError,
    UnknownBackendError,
    UnknownDigestError,
    UnsafeContentError,
    UnsupportedOptimizerError,
    UnsupportedVersionError,
    UserCodeError,
    WriteError,
)
from polybundle.format.detection import Detection
from polybundle.hooks.hookspecs import hookimpl
from polybundle.hooks.registry import architecture, build, get_backend, register_tensor_map
from polybundle.model.backend import Backend, TensorSpec
from polybundle.model.optimizer import OptimizerState
from polybundle.tools import parity

__all__ = [
    "__version__",
    "save",
    "load",
    "convert",
    "parity",
    "inspect",
    "migrate",
    "verify",
    "architecture",
    "build",
    "get_backend",
    "register_tensor_map",
    "hookimpl",
    "Backend",
    "TensorSpec",
    "Bundle",
    "CheckpointManager",
    "RemoteCheckpointManager",
    "Checkpoint",
    "OptimizerState",
    "Detection",
    "PolybundleError",
    "FormatError",
    "SchemaError",
    "UnsupportedVersionError",
    "UnknownDigestError",
    "IntegrityError",
    "UnsafeContentError",
    "BudgetExceededError",
    "BackendError",
    "UnknownBackendError",
    "BackendUnavailableError",
    "BackendMismatchError",
    "ConversionError",
    "ConversionUnavailableError",
    "UnknownArchitectureError",
    "UserCodeError",
    "TensorMismatchError",
    "ParamsError",
    "OptimizerError",
    "UnsupportedOptimizerError",
    "OptimizerMismatchError",
    "CheckpointError",
    "WriteError",
    "StorageError",
]
