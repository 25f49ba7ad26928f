"""The NumPy backend: the conformance convnet as a dict of arrays, stored as safetensors.

The weights file (``arrays.safetensors``) is written and read here with
NumPy and ``json`` alone, so no framework is ever needed: the file is an
8-byte little-endian header length, a JSON header giving each tensor's dtype,
shape and byte range, then the tensors' bytes.

Example:
    >>> model = NumpyBackend().build({"size": 6, "filters": 3, "outputs": 2})
    >>> [spec.layout for spec in NumpyBackend().describe(model)][:2]
    ['h,w,in,out', 'out']
"""

from __future__ import annotations

import json
import struct
from typing import Any, BinaryIO

import numpy as np

from polybundle.plugin import Backend, FormatError, TensorMismatchError, TensorSpec, check_index

WEIGHTS_MEMBER = "arrays.safetensors"
"""File name of the weights member inside ``<role>/``."""

EPSILON = 1e-5
"""Batch normalisation's epsilon (PyTorch's default, as the conformance model says)."""

LAYERS: tuple[tuple[str, str, str, str], ...] = (
    ("conv.kernel", "conv2d", "kernel", "h,w,in,out"),
    ("conv.bias", "conv2d", "bias", "out"),
    ("bn.gamma", "batchnorm", "gamma", "c"),
    ("bn.beta", "batchnorm", "beta", "c"),
    ("bn.moving_mean", "batchnorm", "moving_mean", "c"),
    ("bn.moving_variance", "batchnorm", "moving_variance", "c"),
    ("head.kernel", "dense", "kernel", "in,out"),
    ("head.bias", "dense", "bias", "out"),
)
"""Every tensor: name, canonical kind, slot and layout tag."""

NATIVE_LAYOUTS = {(kind, slot): layout for _, kind, slot, layout in LAYERS}
"""The layout this backend gives each canonical (kind, slot) it has."""

_DTYPES = {"F16": "float16", "F32": "float32", "F64": "float64", "I32": "int32", "I64": "int64"}
_CODES = {name: code for code, name in _DTYPES.items()}


class NumpyModel(dict):  # type: ignore[type-arg]
    """A model of the NumPy backend: ``{tensor name: float32 array}`` plus its ``config``.

    Example:
        >>> NumpyModel({"w": np.zeros(2)}, config={}).config
        {}
    """

    def __init__(self, arrays: dict[str, np.ndarray], *, config: dict[str, Any]) -> None:
        super().__init__(arrays)
        self.config = dict(config)


def shapes(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Return every tensor's shape for ``config``.

    Example:
        >>> shapes({"size": 6, "filters": 3, "outputs": 2})["head.kernel"]
        (3, 2)
    """
    filters, outputs = config["filters"], config["outputs"]
    channel = (filters,)
    return {
        "conv.kernel": (3, 3, 1, filters), "conv.bias": channel, "bn.gamma": channel,
        "bn.beta": channel, "bn.moving_mean": channel, "bn.moving_variance": channel,
        "head.kernel": (filters, outputs), "head.bias": (outputs,),
    }


def forward(model: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """Return the inference output of the convnet for channels-last ``x`` (N, H, W, 1).

    Example:
        >>> model = NumpyBackend().build({"size": 6, "filters": 3, "outputs": 2})
        >>> forward(model, np.zeros((4, 6, 6, 1), np.float32)).shape
        (4, 2)
    """
    x = np.asarray(x, dtype=np.float32)
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    kernel = model["conv.kernel"]
    height, width = x.shape[1:3]
    hidden = np.zeros((*x.shape[:3], kernel.shape[-1]), np.float32)
    for i in range(3):
        for j in range(3):
            hidden += padded[:, i : i + height, j : j + width, :] @ kernel[i, j]
    hidden = hidden + model["conv.bias"]
    scale = model["bn.gamma"] / np.sqrt(model["bn.moving_variance"] + np.float32(EPSILON))
    hidden = (hidden - model["bn.moving_mean"]) * scale + model["bn.beta"]
    pooled = np.maximum(hidden, 0).mean(axis=(1, 2))
    return (pooled @ model["head.kernel"] + model["head.bias"]).astype(np.float32)


def encode(arrays: dict[str, np.ndarray]) -> bytes:
    """Return ``arrays`` as a safetensors file (written with NumPy and json only).

    Example:
        >>> decode(encode({"w": np.arange(3, dtype=np.float32)}))["w"]
        array([0., 1., 2.], dtype=float32)
    """
    header: dict[str, Any] = {"__metadata__": {"format": "polybundle-numpy-test"}}
    chunks, start = [], 0
    for name, array in arrays.items():
        data = np.ascontiguousarray(array).astype(np.asarray(array).dtype.newbyteorder("<"))
        raw = data.tobytes()
        header[name] = {"dtype": _CODES[data.dtype.name], "shape": list(data.shape),
                        "data_offsets": [start, start + len(raw)]}
        chunks.append(raw)
        start += len(raw)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


def index(data: bytes | memoryview, where: str) -> tuple[dict[str, Any], int]:
    """Return the checked header of a safetensors file and where its data starts.

    Raises :class:`polybundle.FormatError` for anything but a well-formed file.

    Example:
        >>> index(encode({"w": np.zeros(2, np.float32)}), "w.st")[0]["w"]["shape"]
        [2]
    """
    if len(data) < 8:
        raise FormatError(f"{where} holds {len(data)} bytes; expected a safetensors file.")
    (length,) = struct.unpack("<Q", bytes(data[:8]))
    if length > len(data) - 8:
        raise FormatError(f"{where} declares a {length}-byte header in a {len(data)}-byte file; "
                          "the file is truncated or damaged.")
    try:
        header = json.loads(bytes(data[8 : 8 + length]))
    except (UnicodeDecodeError, ValueError) as exc:
        raise FormatError(f"{where} has an unreadable header ({exc}); expected JSON.") from None
    if not isinstance(header, dict):
        raise FormatError(f"{where} has a {type(header).__name__} header; expected an object.")
    header.pop("__metadata__", None)
    size = len(data) - 8 - length
    for name, entry in header.items():
        dtype = _DTYPES.get(entry.get("dtype")) if isinstance(entry, dict) else None
        shape, offsets = (entry.get("shape"), entry.get("data_offsets")) if dtype else (0, 0)
        ok = (dtype is not None and isinstance(shape, list) and isinstance(offsets, list)
              and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                      for v in [*shape, *offsets]) and len(offsets) == 2
              and offsets[1] <= size
              and offsets[1] - offsets[0] == int(np.prod(shape)) * np.dtype(dtype).itemsize)
        if not ok:
            raise FormatError(f"{where}: tensor {name[:100]!r} has entry {str(entry)[:200]}; "
                              "expected a dtype, a shape and the byte range it fills.")
    return header, 8 + length


def decode(data: bytes | memoryview, where: str = WEIGHTS_MEMBER) -> dict[str, np.ndarray]:
    """Return every tensor of the safetensors file ``data`` (read-only views of it).

    Example:
        >>> decode(encode({"b": np.ones(1, np.float32)}))["b"].dtype.name
        'float32'
    """
    header, start = index(data, where)
    return {
        name: np.frombuffer(data, dtype=np.dtype(_DTYPES[entry["dtype"]]).newbyteorder("<"),
                            count=int(np.prod(entry["shape"])),
                            offset=start + entry["data_offsets"][0]).reshape(entry["shape"])
        for name, entry in header.items()
    }


def _checked(arrays: dict[str, np.ndarray], specs: list[TensorSpec], where: str) -> None:
    """Refuse a file that is not exactly the manifest's tensors (the core's check, public)."""
    check_index(specs, {key: (a.shape, a.dtype) for key, a in arrays.items()}, where=where)


class NumpyBackend(Backend):
    """The test-only NumPy backend (name ``numpy``).

    Example:
        >>> NumpyBackend().owns(NumpyModel({}, config={})), NumpyBackend().owns({})
        (True, False)
    """

    name = "numpy"
    aliases = ("numpy-test",)
    extra = "numpy"
    modules = ()
    distribution = "numpy"
    weights_member = WEIGHTS_MEMBER

    def build(self, config: dict[str, Any]) -> NumpyModel:
        """Build the conformance convnet of ``config`` with fixed initial values.

        Example:
            >>> NumpyBackend().build({"size": 6, "filters": 2, "outputs": 1})["bn.gamma"]
            array([1., 1.], dtype=float32)
        """
        rng = np.random.default_rng(0)
        arrays = {name: (rng.standard_normal(shape) * 0.3).astype(np.float32)
                  for name, shape in shapes(config).items()}
        for name in ("bn.gamma", "bn.moving_variance"):
            arrays[name] = np.ones_like(arrays[name])
        for name in ("bn.beta", "bn.moving_mean", "conv.bias", "head.bias"):
            arrays[name] = np.zeros_like(arrays[name])
        return NumpyModel(arrays, config=config)

    def owns(self, model: Any) -> bool:
        """Return True for a :class:`NumpyModel`."""
        return isinstance(model, NumpyModel)

    def describe(self, model: Any) -> list[TensorSpec]:
        """Describe every tensor with its canonical kind, slot and layout tag."""
        return [
            TensorSpec(name, name, tuple(model[name].shape), model[name].dtype.name, layout,
                       kind, name.partition(".")[0], slot)
            for name, kind, slot, layout in LAYERS
        ]

    def write(self, model: Any, stream: BinaryIO) -> None:
        """Write the model's arrays as one safetensors file."""
        stream.write(encode({name: model[name] for name, *_ in LAYERS}))

    def load_into(self, model: Any, source: BinaryIO, specs: list[TensorSpec]) -> None:
        """Load the file's tensors into ``model`` after checking all of them."""
        self.assign(model, self.read_tensors(source, specs))

    def read_tensors(self, source: BinaryIO, specs: list[TensorSpec]) -> dict[str, np.ndarray]:
        """Return ``{spec.name: array}`` from the weights file."""
        arrays = self.check_stored(source, specs, where=WEIGHTS_MEMBER)
        return {spec.name: np.array(arrays[spec.key]) for spec in specs}

    def read_stored(
        self, source: BinaryIO, specs: list[TensorSpec], *, mapped: Any = None
    ) -> dict[str, np.ndarray]:
        """Return ``{spec.name: array}``; views of ``mapped`` when the member lies in it."""
        offset = getattr(source, "offset", None)
        if mapped is None or offset is None:
            return self.read_tensors(source, specs)
        size = getattr(source, "size", None)
        size = size() if callable(size) else size
        if not isinstance(size, int) or offset + size > len(mapped):
            return self.read_tensors(source, specs)
        arrays = decode(memoryview(mapped)[offset : offset + size])
        _checked(arrays, specs, WEIGHTS_MEMBER)
        return {spec.name: arrays[spec.key] for spec in specs}

    def check_stored(
        self, source: BinaryIO, specs: list[TensorSpec], *, where: str, declared: Any = ()
    ) -> dict[str, np.ndarray]:
        """Check the file against ``specs``; return ``{key: array}``."""
        arrays = decode(source.read(), where)
        _checked(arrays, specs, where)
        return arrays

    def assign(self, model: Any, arrays: dict[str, np.ndarray]) -> None:
        """Set ``model``'s arrays from ``{name: array}``, strictly, checking all first."""
        mismatched = [name for name in model.keys() & arrays.keys()
                      if tuple(np.shape(arrays[name])) != model[name].shape]
        if model.keys() != arrays.keys() or mismatched:
            raise TensorMismatchError(missing=model.keys() - arrays.keys(),
                                      unexpected=arrays.keys() - model.keys(),
                                      mismatched=mismatched, context="loading into NumpyModel")
        for name in list(model):
            model[name] = np.array(arrays[name], dtype=model[name].dtype)

    def native_layout(self, kind: str, slot: str, source_layout: str = "") -> str | None:
        """Return the layout of ``kind.slot`` here (None: no such slot, e.g. batch-norm count)."""
        return NATIVE_LAYOUTS.get((kind, slot))

    def predict(self, model: Any, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the convnet on ``inputs["input"]``."""
        return {"output": forward(model, inputs["input"])}
