"""PyTorch backend: ``<role>/model.pth`` holds the model's state_dict (``torch.save``).

Loading never unpickles with ``torch.load``: polybundle's own reader of the
torch zip (an allow-list of tensor rebuilders, the safety of
``weights_only=True``) reads each storage straight into its tensor. Layout
tags come from the module that owns each tensor.

Example:
    >>> import polybundle, torch
    >>> manifest = polybundle.save("m.bundle", {"net": torch.nn.Linear(3, 2)})
    >>> manifest["models"][0]["weights"]
    'net/model.pth'
    >>> [(tensor["name"], tensor["layout"]) for tensor in manifest["models"][0]["tensors"]]
    [('weight', 'out,in'), ('bias', 'out')]
"""

from __future__ import annotations

import sys
from typing import Any, BinaryIO

import numpy as np

from polybundle.errors import FormatError, TensorMismatchError
from polybundle.model.backend import Backend, TensorSpec, WeightsSnapshot
from polybundle.model.canonical import Canonical
from polybundle.model.layouts import OPAQUE, SCALAR, conv_tag
from polybundle.model.optimizer import OptimizerState
from polybundle.model.optimizer_conversion import NeutralOptimizer
from polybundle_torch import optim as torch_optim
from polybundle_torch.arrays import copy_tensor, from_numpy, to_numpy
from polybundle_torch.layers import module_canonical, tensor_owner
from polybundle_torch.layers import native_layout as torch_native_layout
from polybundle_torch.pickle_vocabulary import UNTYPED
from polybundle_torch.pth_reader import describe_pth, fill_pth, read_pth

_VECTOR_MODULES = {
    "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "LayerNorm", "GroupNorm",
    "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d", "PReLU",
}


def _layout(module: Any, attribute: str, ndim: int) -> str:
    """Return the layout tag of ``module.<attribute>`` with ``ndim`` axes."""
    kind = type(module).__name__
    if ndim == 0:
        return SCALAR
    if kind in _VECTOR_MODULES and ndim == 1:
        return "c"
    if attribute == "bias" and ndim == 1:
        return "out"
    if kind == "Linear" and attribute == "weight":
        return "out,in"
    if kind in ("Conv1d", "Conv2d", "Conv3d") and attribute == "weight":
        return conv_tag(ndim - 2, channels_first=True, transposed=False)
    if kind in ("ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d") and attribute == "weight":
        return conv_tag(ndim - 2, channels_first=True, transposed=True)
    if kind == "Embedding" and attribute == "weight":
        return "vocab,dim"
    return OPAQUE


def _canonical(module: Any, attribute: str, shape: tuple[int, ...]) -> Canonical:
    """Return the canonical kind, slot and layout of ``module.<attribute>``."""
    return module_canonical(module, attribute, shape)


def _torch_dtype(name: str) -> Any:
    """Return the torch dtype called ``name`` (``float32``, ``bfloat16``...), or raise."""
    import torch

    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise FormatError(
            f"model.pth holds {name} tensors, which torch {torch.__version__} lacks; upgrade torch."
        )
    return dtype


def _flat_outputs(value: Any, prefix: str = "output") -> dict[str, np.ndarray]:
    """Return a model's outputs (a tensor, or tuples/lists/dicts of them) as named arrays."""
    if isinstance(value, (tuple, list)):
        value = {str(i): item for i, item in enumerate(value)}
    if isinstance(value, dict):
        out: dict[str, np.ndarray] = {}
        for key, item in value.items():
            out.update(_flat_outputs(item, f"{prefix}.{key}"))
        return out
    return {prefix: to_numpy(value)}


def _write_state(state: dict[str, Any], stream: BinaryIO) -> None:
    """Write a state_dict (the live one or a snapshot's host copy) as ``model.pth``."""
    import torch

    torch.save(state, stream)


class TorchBackend(Backend):
    """The PyTorch backend (aliases ``pytorch``, ``pt``).

    Example:
        >>> TorchBackend().weights_member
        'model.pth'
    """

    name = "torch"
    aliases = ("pytorch", "pt")
    extra = "polybundle[torch]"
    modules = ("torch",)
    distribution = "torch"
    weights_member = "model.pth"
    plain_format = "torch-file"
    reads_front_to_back = True
    image_layout = "channels_first"

    def owns(self, model: Any) -> bool:
        """Return True for a ``torch.nn.Module`` (never imports torch)."""
        torch = sys.modules.get("torch")
        return torch is not None and isinstance(model, torch.nn.Module)

    def describe(self, model: Any) -> list[TensorSpec]:
        """Describe every entry of ``model.state_dict()`` with its layout tag."""
        modules = dict(model.named_modules())
        specs = []
        for key, tensor in model.state_dict().items():
            owner, attribute = tensor_owner(modules, key)
            shape = tuple(tensor.shape)
            canonical = _canonical(modules.get(owner), attribute, shape)
            layout = _layout(modules.get(owner), attribute, len(shape))
            layout = canonical.layout if canonical.kind else layout
            dtype = str(tensor.dtype).removeprefix("torch.")
            layer = f"{owner}.{canonical.part}".lstrip(".") if canonical.part else owner
            specs.append(
                TensorSpec(key, key, shape, dtype, layout, canonical.kind,
                           layer if canonical.kind else "", canonical.slot)
            )
        return specs

    def write(self, model: Any, stream: BinaryIO) -> None:
        """Write ``model.state_dict()`` with ``torch.save``."""
        _write_state(model.state_dict(), stream)

    def snapshot(self, model: Any, reuse: WeightsSnapshot | None = None) -> WeightsSnapshot:
        """Copy the state_dict into host tensors (``reuse``'s when they fit); write them later.

        Example:
            >>> backend = TorchBackend()
            >>> first = backend.snapshot(net)
            >>> with torch.no_grad():
            ...     _ = net[0].weight.add_(1)  # training goes on
            >>> again = backend.snapshot(net, reuse=first)
            >>> again.copy["0.weight"] is first.copy["0.weight"], again.nbytes
            (True, 92)
            >>> bool(torch.equal(again.copy["0.weight"], net[0].weight))
            True
        """
        import torch

        previous = {} if reuse is None else reuse.copy
        copy = {}
        for key, tensor in model.state_dict().items():
            buffer = previous.get(key)
            fits = isinstance(buffer, torch.Tensor) and buffer.shape == tensor.shape \
                and buffer.dtype == tensor.dtype
            if not fits:
                buffer = torch.empty_like(tensor, device="cpu")
            copy_tensor(buffer, tensor)
            copy[key] = buffer
        nbytes = sum(t.untyped_storage().nbytes() for t in copy.values())
        return WeightsSnapshot(write=lambda stream: _write_state(copy, stream), copy=copy,
                               nbytes=nbytes)

    def snapshot_optimizer(
        self, model: Any, optimizer: Any, scheduler: Any | None = None,
        reuse: OptimizerState | None = None,
    ) -> OptimizerState:
        """Export the optimizer, each slot copied once into host memory (``reuse``'s if it fits)."""
        return torch_optim.export_optimizer(model, optimizer, scheduler, reuse=reuse)

    def _load_state_dict(self, source: BinaryIO, specs: list[TensorSpec]) -> dict[str, Any]:
        """Read the state_dict with polybundle's reader, each storage straight into its tensor.

        No ``torch.load``: :func:`~polybundle_torch.pth_reader.fill_pth` checks
        the pickle (tensor rebuilders only), geometry, sizes and ``specs``
        and charges the budget first, then reads each storage into a tensor
        allocated here, front to back; tensors are views of their storages,
        as ``torch.load`` makes them.
        """
        import torch

        memory: dict[str, Any] = {}

        def allocate(storage: Any) -> np.ndarray:
            dtype = torch.uint8 if storage.dtype == UNTYPED else _torch_dtype(storage.dtype)
            flat = torch.empty(storage.numel, dtype=dtype)
            memory[storage.key] = flat
            return flat.view(torch.uint8).numpy()

        name = getattr(source, "name", None)
        where = name if isinstance(name, str) and name else self.weights_member
        index = fill_pth(source, allocate, where=where, specs=specs)
        return {
            key: memory[t.storage.key].as_strided(t.shape, t.strides, t.offset)
            for key, t in index.items()
        }

    def load_into(self, model: Any, source: BinaryIO, specs: list[TensorSpec]) -> None:
        """Load the state_dict strictly; names and shapes are checked before any byte is read."""
        self._check_fits(model, {spec.key: spec.shape for spec in specs})
        self._load_state(model, self._load_state_dict(source, specs))

    def build_and_load(
        self, builder: Any, config: dict[str, Any], source: BinaryIO, specs: list[TensorSpec]
    ) -> Any:
        """Build on the ``meta`` device and adopt the loaded tensors (no init, no copy).

        Falls back to an ordinary build and copy when the builder cannot run on
        the meta device (it reads tensor values while building, e.g.
        torchvision's ``regnet_y_400mf`` calls ``.tolist()`` on computed
        widths: ``NotImplementedError: Cannot copy out of meta tensor``), or
        when the meta-built model would not be whole: tensors outside the
        state_dict (non-persistent buffers), tied parameters, or dtypes that
        differ from the file's.
        """
        state = self._load_state_dict(source, specs)
        model = self._build_on_meta(builder, config)
        if model is None:
            model = builder(config)
            self._load_state(model, state)
            return model
        own = model.state_dict()
        named = list(model.named_parameters(remove_duplicate=False))
        adoptable = (
            own.keys() == state.keys()
            and len({id(p) for _, p in named}) == len(named)
            and all(own[key].dtype == state[key].dtype for key in own)
        )
        if adoptable:
            self._load_state(model, state, assign=True)
            tensors = [*model.parameters(), *model.buffers()]
            if not any(t.is_meta for t in tensors):
                return model
        model = builder(config)
        self._load_state(model, state)
        return model

    @staticmethod
    def _build_on_meta(builder: Any, config: dict[str, Any]) -> Any | None:
        """Return ``builder(config)`` built on the meta device, or None if it cannot be.

        Any exception means the builder needs real tensors while building;
        the caller then builds normally, where a genuine error of the builder
        surfaces as it is.
        """
        import torch

        try:
            with torch.device("meta"):
                return builder(config)
        except Exception:  # e.g. NotImplementedError: Cannot copy out of meta tensor
            return None

    @staticmethod
    def _check_fits(model: Any, shapes: dict[str, Any]) -> None:
        """Raise :class:`TensorMismatchError` unless ``model`` has exactly these tensor shapes."""
        own = model.state_dict()
        shared = own.keys() & shapes.keys()
        mismatched = [key for key in shared if tuple(own[key].shape) != tuple(shapes[key])]
        if own.keys() != shapes.keys() or mismatched:
            raise TensorMismatchError(
                missing=own.keys() - shapes.keys(),
                unexpected=shapes.keys() - own.keys(),
                mismatched=mismatched,
                context=f"loading into {type(model).__name__}",
            )

    def _load_state(self, model: Any, state: dict[str, Any], *, assign: bool = False) -> None:
        self._check_fits(model, {key: tuple(tensor.shape) for key, tensor in state.items()})
        model.load_state_dict(state, strict=True, assign=assign)

    def read_tensors(self, source: BinaryIO, specs: list[TensorSpec]) -> dict[str, np.ndarray]:
        """Return the state_dict's tensors as NumPy arrays, keyed by name (torch not imported).

        The file must hold exactly the tensors ``specs`` declares, with their
        shapes and dtypes, checked before any tensor is read (else
        :class:`~polybundle.errors.IntegrityError`).
        """
        return self.read_stored(source, specs)

    def read_stored(
        self, source: BinaryIO, specs: list[TensorSpec], *, mapped: Any = None
    ) -> dict[str, np.ndarray]:
        """Read the state_dict without torch (:func:`polybundle_torch.pth_reader.read_pth`).

        Given ``mapped``, each storage (a STORED member of the inner zip) is a
        read-only view of the map.
        """
        name = getattr(source, "name", None)
        where = name if isinstance(name, str) and name else self.weights_member
        state = read_pth(source, where=where, mapped=mapped, specs=specs)
        by_key = {spec.key: spec.name for spec in specs}
        return {by_key.get(key, key): array for key, array in state.items()}

    def check_stored(
        self, source: BinaryIO, specs: list[TensorSpec], *, where: str, declared: Any = ()
    ) -> dict[str, np.ndarray]:
        """Read every tensor with the restricted unpickler (tensor rebuilders only), no torch.

        The pickle, each tensor's geometry and each storage's size are checked;
        the tensors are returned by state_dict key for the caller to compare
        with ``specs``. A state_dict names no code, so ``declared`` is unused.
        """
        return read_pth(source, where=where)

    def describe_stored(self, source: BinaryIO, *, where: str) -> list[TensorSpec]:
        """Describe a ``torch.save(state_dict)`` file from its pickle alone (layouts ``opaque``)."""
        return describe_pth(source, where=where)

    def assign(self, model: Any, arrays: dict[str, np.ndarray]) -> None:
        """Load ``{state_dict key: array}`` strictly, cast to each tensor's dtype."""
        own = model.state_dict()
        state = {
            key: from_numpy(array).to(own[key].dtype) if key in own else from_numpy(array)
            for key, array in arrays.items()
        }
        self._load_state(model, state)

    def native_layout(self, kind: str, slot: str, source_layout: str = "") -> str | None:
        """Return the layout tag PyTorch's standard layer of ``kind`` gives ``slot``."""
        return torch_native_layout(kind, slot, source_layout)

    def trace(self, model: Any, inputs: dict[str, np.ndarray]) -> Any:
        """Return ``model``'s dataflow graph (see :mod:`polybundle_torch.tracing`)."""
        from polybundle_torch.tracing import trace

        return trace(model, inputs)

    def layer_outputs(self, model: Any, inputs: dict[str, np.ndarray], layers: Any) -> Any:
        """Return the named layers' outputs (see :mod:`polybundle_torch.tracing`)."""
        from polybundle_torch.tracing import layer_outputs

        return layer_outputs(model, inputs, layers)

    def predict(self, model: Any, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run ``model.eval()`` under ``torch.no_grad()`` on ``inputs``; outputs as arrays."""
        import torch

        from polybundle.tools.parity import input_names

        model.eval()
        args = [from_numpy(inputs[k]) for k in input_names(inputs)]
        with torch.no_grad():
            return _flat_outputs(model(*args))

    def export_optimizer(self, model: Any, optimizer: Any, scheduler: Any | None = None) -> Any:
        """Return the neutral optimizer state (see :mod:`polybundle_torch.optim`)."""
        from polybundle_torch import optim as torch_optim

        return torch_optim.export_optimizer(model, optimizer, scheduler)

    def restore_optimizer(
        self, model: Any, optimizer: Any, state: Any, specs: list[TensorSpec], scheduler: Any = None
    ) -> None:
        """Load neutral optimizer state into a fresh optimizer bound to ``model``."""
        from polybundle_torch import optim as torch_optim

        torch_optim.restore_optimizer(model, optimizer, state, specs, scheduler)

    def optimizer_to_neutral(self, state: OptimizerState) -> NeutralOptimizer:
        """Describe ``state`` in the neutral convention (see :mod:`polybundle_torch.optim`)."""
        return torch_optim.optimizer_to_neutral(state)

    def optimizer_from_neutral(
        self, neutral: NeutralOptimizer, specs: list[TensorSpec]
    ) -> OptimizerState:
        """Return this backend's optimizer state for a converted neutral description."""
        return torch_optim.optimizer_from_neutral(neutral, specs)

    def capture_rng(self) -> dict[str, Any]:
        """Return the framework's global generator state as plain data."""
        from polybundle_torch import optim as torch_optim

        return torch_optim.capture_rng()

    def restore_rng(self, state: dict[str, Any]) -> None:
        """Put back a state returned by :meth:`capture_rng`."""
        from polybundle_torch import optim as torch_optim

        torch_optim.restore_rng(state)
