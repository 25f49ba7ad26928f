"""PyTorch's pickle vocabulary: storages, tensors and the functions that rebuild them.

A PyTorch weights file, and a tensor pickled into a legacy ``params.dill``,
name PyTorch classes and functions. None of them is ever imported: each name
maps to a stand-in here (:class:`TorchStorage`, :class:`TorchTensor`,
:class:`_StateDict`) that checks its arguments and records where a tensor's
elements lie. :func:`polybundle.safety.unpickle.safe_loads` is given
:data:`TORCH_WEIGHTS` (inside a weights file) or :data:`TORCH_TENSORS` (tensors
inside a params pickle, as ``extra`` names) and :class:`TensorViews` turns the
tensors into NumPy arrays, bounding and charging what is copied.

Example:
    >>> storage = TorchStorage("0", "float32", 6)
    >>> storage.array = np.arange(6, dtype=np.float32)
    >>> TensorViews("model.pth").array(TorchTensor(storage, 0, (2, 3), (3, 1))).tolist()
    [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from polybundle.errors import FormatError, UnsafeContentError
from polybundle.model.backend import resolve_dtype
from polybundle.safety import budget
from polybundle.safety.unpickle import (
    MAX_NODES,
    Allowed,
    Leaf,
    Marker,
    Sealed,
    check_int,
    check_shape,
)

MAX_VIEW_COPIES = 2
"""Most elements the copied views of one torch storage may hold, per element of it.

A view that is its whole storage in order costs no copy; tied weights share
one copy; a weight and its transpose, or disjoint slices, copy at most the
storage once. Past twice, a small file is asking for many overlapping copies."""

TORCH_STORAGE_DTYPES: dict[str, str] = {
    "DoubleStorage": "float64",
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128",
}
"""PyTorch typed-storage class names and the NumPy dtype of their elements."""

UNTYPED = "untyped"
"""The dtype of a ``torch.storage.UntypedStorage`` (bytes) until a tensor gives it one."""
TORCH_V3_DTYPES = ("float8_e4m3fn", "float8_e5m2", "uint16", "uint32", "uint64")
"""torch dtypes (``torch.<name>``) saved with ``_rebuild_tensor_v3`` over an untyped storage."""


class TorchStorage(Sealed):
    """A PyTorch storage named in a pickle, and where its elements lie in the file.

    The pickle gives ``key``, ``dtype`` and ``numel``. The reader of the
    weights file sets ``member`` (the zip member holding the bytes, or ``""``
    when they follow the pickles in the file itself), ``start`` (their first
    byte there), ``byteorder`` and, once read or mapped, ``array``: the
    elements as a flat NumPy array in native byte order.

    Example:
        >>> TorchStorage("0", "float32", 6).dtype
        'float32'
    """

    __slots__ = ("key", "dtype", "numel", "member", "start", "byteorder", "array")

    def __init__(self, key: str, dtype: str, numel: int) -> None:
        self.key = key
        self.dtype = dtype
        self.numel = numel
        self.member = ""
        self.start = 0
        self.byteorder = "little"
        self.array: np.ndarray | None = None

    @property
    def itemsize(self) -> int:
        """Return the bytes of one element (``bfloat16``: 2, without NumPy knowing it)."""
        if self.dtype == UNTYPED:  # torch.UntypedStorage: numel counts bytes
            return 1
        return resolve_dtype(self.dtype, where=f"torch storage {self.key!r}").itemsize

    @property
    def nbytes(self) -> int:
        """Return the bytes the storage declares (a Python int: it never wraps).

        Example:
            >>> TorchStorage("0", "bfloat16", 2**40).nbytes
            2199023255552
        """
        return self.numel * self.itemsize


class TorchTensor(Leaf):
    """What ``torch._utils._rebuild_tensor(_v2)`` becomes: a strided window of a storage.

    ``offset``, ``shape`` and ``strides`` count elements. The window is
    checked when the pickle builds it, before any byte is read or mapped:
    every number is a non-negative int, sizes are computed with Python ints
    (nothing wraps), the window lies inside the storage, and the tensor has
    no more elements than its storage. A stride-0 or self-overlapping tensor
    larger than its storage would materialise memory the file does not hold
    (a 4 KB file asking for 1 GiB), so it is refused; :class:`TensorViews`
    bounds what several views of one storage may copy.

    Example:
        >>> tensor = TorchTensor(TorchStorage("0", "float32", 6), 0, (2, 3), (3, 1))
        >>> tensor.view(np.arange(6, dtype=np.float32))[1].tolist()
        [3.0, 4.0, 5.0]
        >>> TorchTensor(TorchStorage("0", "float32", 1), 0, (1024, 1024), (0, 0))
        Traceback (most recent call last):
        ...
        polybundle.errors.UnsafeContentError: a pickled torch tensor of shape (1024, 1024) ...
    """

    __slots__ = ("storage", "offset", "shape", "strides")

    def __init__(self, storage: Any, offset: Any, size: Any, stride: Any, *rest: Any) -> None:
        if not isinstance(storage, TorchStorage):
            raise UnsafeContentError("a pickled torch tensor does not point at a storage.")
        if storage.dtype == UNTYPED:
            raise FormatError("a pickled torch tensor views an untyped storage without a dtype.")
        self.storage = storage
        self.offset = check_int(offset, "storage offset")
        self.shape = check_shape(size)
        self.strides = check_shape(stride)
        if len(self.shape) != len(self.strides):
            raise FormatError("a pickled torch tensor has sizes and strides of different lengths.")
        self._check_extent()

    @property
    def numel(self) -> int:
        """Return the tensor's element count (a Python int)."""
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Return the bytes the tensor takes once materialised."""
        return self.numel * self.storage.itemsize

    def _check_extent(self) -> None:
        """Refuse a window outside the storage, or one with more elements than it."""
        storage = self.storage
        if self.offset > storage.numel:
            raise FormatError(
                f"a pickled torch tensor starts at element {self.offset} of storage "
                f"{storage.key!r}, which holds {storage.numel}; the weights file is damaged "
                "or hostile."
            )
        if self.numel == 0:
            return
        last = self.offset + sum((n - 1) * s for n, s in zip(self.shape, self.strides, strict=True))
        if last >= storage.numel:
            raise FormatError(
                f"a torch tensor of shape {self.shape} reaches element {last} of storage "
                f"{storage.key!r}, which holds {storage.numel}; the weights file is damaged "
                "or hostile."
            )
        if self.numel > storage.numel:
            raise UnsafeContentError(
                f"a pickled torch tensor of shape {self.shape} with strides {self.strides} "
                f"has {self.numel} elements but its storage {storage.key!r} holds "
                f"{storage.numel}: a stride-0 or overlapping view that would materialise "
                f"{self.nbytes} bytes the file does not hold. Refused before allocating; if "
                "the file is yours, save the tensor with .contiguous()."
            )

    def is_whole(self) -> bool:
        """Return True when the tensor is its whole storage in order (read with no copy).

        Example:
            >>> TorchTensor(TorchStorage("0", "int8", 6), 0, (2, 3), (3, 1)).is_whole()
            True
            >>> TorchTensor(TorchStorage("0", "int8", 6), 0, (3, 2), (1, 3)).is_whole()
            False
        """
        if self.offset or self.numel != self.storage.numel:
            return False
        expected = 1
        for size, stride in zip(reversed(self.shape), reversed(self.strides), strict=True):
            if size != 1 and stride != expected:
                return False
            expected *= size
        return True

    def view(self, flat: np.ndarray, *, copy: bool = True) -> np.ndarray:
        """Return the tensor's values from ``flat``, its storage's elements.

        A tensor that is its whole storage, in order, is ``flat`` reshaped;
        any other is a read-only strided view of ``flat``, copied when
        ``copy`` is true.

        Example:
            >>> tensor = TorchTensor(TorchStorage("0", "int64", 4), 1, (2,), (2,))
            >>> tensor.view(np.arange(4)).tolist()
            [1, 3]
        """
        if flat.shape != (self.storage.numel,):
            raise FormatError(
                f"torch storage {self.storage.key!r} declares {self.storage.numel} elements "
                f"but holds {flat.size}; the weights file is damaged."
            )
        if self.is_whole():
            return flat.reshape(self.shape)
        item = flat.itemsize
        window = np.lib.stride_tricks.as_strided(
            flat[self.offset :],
            shape=self.shape,
            strides=tuple(s * item for s in self.strides),
            writeable=False,
        )
        return np.array(window) if copy else window


class TensorViews:
    """Turn the tensors of one pickle into arrays, bounding and charging what is copied.

    A tensor that is its whole storage in order is a reshape (no copy); any
    other view is copied (``copy=True``) or left a read-only window of a
    memory map. Several tensors may view one storage (tied weights, a weight
    and its transpose, slices of a flat buffer): each distinct window is made
    once and shared, and the copies of one storage together may hold at most
    :data:`MAX_VIEW_COPIES` times the storage's elements, so a small file
    cannot ask for many overlapping copies of one storage (1,024 transposed
    windows of 1 MiB: 1 GiB). Every copy is charged to :mod:`polybundle.safety.budget`
    before it is allocated. :meth:`admit` checks a tensor without its bytes,
    so a reader checks all of them before reading any storage.

    Example:
        >>> storage = TorchStorage("0", "float32", 4)
        >>> storage.array = np.arange(4, dtype=np.float32)
        >>> views = TensorViews("model.pth")
        >>> views.array(TorchTensor(storage, 0, (2, 2), (1, 2))).tolist()
        [[0.0, 2.0], [1.0, 3.0]]
        >>> views.array(TorchTensor(storage, 0, (4,), (1,))).tolist()
        [0.0, 1.0, 2.0, 3.0]
        >>> views.array(TorchTensor(storage, 0, (2,), (1,))).tolist()
        [0.0, 1.0]
        >>> views.array(TorchTensor(storage, 1, (2,), (1,))).tolist()
        [1.0, 2.0]
        >>> views.array(TorchTensor(storage, 2, (2,), (1,)))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        polybundle.errors.UnsafeContentError: model.pth holds tensors that view storage '0' ...
    """

    def __init__(self, where: str, *, copy: bool = True) -> None:
        self.where = where
        self.copy = copy
        self._copied: dict[int, int] = {}
        self._arrays: dict[tuple[Any, ...], np.ndarray | None] = {}

    @staticmethod
    def _key(tensor: TorchTensor) -> tuple[Any, ...]:
        return (id(tensor.storage), tensor.offset, tensor.shape, tensor.strides)

    def admit(self, tensor: TorchTensor) -> None:
        """Check ``tensor`` against what its storage's other views already copy; charge it."""
        key = self._key(tensor)
        if key in self._arrays:
            return
        if not tensor.is_whole():
            storage = tensor.storage
            copied = self._copied.get(id(storage), 0) + tensor.numel
            if copied > MAX_VIEW_COPIES * storage.numel:
                raise UnsafeContentError(
                    f"{self.where} holds tensors that view storage {storage.key!r} "
                    f"({storage.numel} elements) in overlapping ways: materialising them "
                    f"would copy {copied} elements, more than {MAX_VIEW_COPIES} times what "
                    "the storage holds. Refused before allocating; if the file is yours, "
                    "re-save each tensor with .clone()."
                )
            self._copied[id(storage)] = copied
            if self.copy:
                budget.charge(tensor.nbytes, f"{self.where} tensor of shape {tensor.shape}")
        self._arrays[key] = None

    def array(self, tensor: TorchTensor) -> np.ndarray:
        """Return ``tensor``'s values from its storage's ``array`` (admitting it first)."""
        self.admit(tensor)
        key = self._key(tensor)
        found = self._arrays[key]
        if found is None:
            storage = tensor.storage
            if storage.array is None:
                raise FormatError(f"{self.where}: torch storage {storage.key!r} has no data.")
            found = self._arrays[key] = tensor.view(storage.array, copy=self.copy)
        return found


def _rebuild_tensor_v3(
    storage: Any,
    offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any = False,
    hooks: Any = None,
    dtype: Any = None,
    *rest: Any,
) -> TorchTensor:
    """``torch._utils._rebuild_tensor_v3``: a tensor of ``dtype`` over an untyped storage.

    torch writes it for dtypes without a typed storage class (float8,
    uint16...). The storage's bytes are given the tensor's dtype once, before
    any tensor views it; another dtype over the same storage is refused.
    """
    if not isinstance(storage, TorchStorage) or not isinstance(dtype, Marker) or not dtype.dtype:
        raise UnsafeContentError("a pickled torch tensor (v3) lacks a storage or a dtype.")
    if storage.dtype == UNTYPED:
        itemsize = TorchStorage(storage.key, dtype.dtype, 0).itemsize
        if storage.numel % itemsize:
            raise FormatError(
                f"torch storage {storage.key!r} holds {storage.numel} bytes, not a whole "
                f"number of {dtype.dtype} elements; the weights file is damaged."
            )
        storage.dtype, storage.numel = dtype.dtype, storage.numel // itemsize
    elif storage.dtype != dtype.dtype:
        raise FormatError(
            f"torch storage {storage.key!r} is viewed as {storage.dtype} and {dtype.dtype}; "
            "polybundle reads each storage as one dtype."
        )
    return TorchTensor(storage, offset, size, stride)


def _rebuild_parameter(data: Any, requires_grad: Any = False, hooks: Any = None) -> Any:
    if not isinstance(data, TorchTensor):
        raise UnsafeContentError("a pickled torch Parameter does not hold a tensor.")
    return data


class _StateDict(OrderedDict):
    """What ``collections.OrderedDict()`` becomes: its BUILD may set only torch's ``_metadata``.

    ``torch.save(model.state_dict())`` BUILDs the OrderedDict with
    ``{"_metadata": {prefix: {"version": n}}}``. Any other state (more
    attributes, a ``(state, slotstate)`` pair, tensors inside ``_metadata``)
    would put data where no reader of the dict's items looks, so it is
    refused; ``_metadata`` itself is dropped by :func:`finalize`.

    Example:
        >>> _StateDict().__setstate__({"_metadata": {"": {"version": 1}}})
        >>> _StateDict().__setstate__(({}, {"hidden": 1}))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        polybundle.errors.UnsafeContentError: a pickled OrderedDict sets its state to ...
    """

    def __setstate__(self, state: Any) -> None:
        metadata = state.get("_metadata") if isinstance(state, dict) else None
        if (
            not isinstance(state, dict)
            or set(state) != {"_metadata"}
            or not isinstance(metadata, dict)
            or len(metadata) > MAX_NODES
            or not all(_plain_metadata(k, v) for k, v in metadata.items())
        ):
            raise UnsafeContentError(
                f"a pickled OrderedDict sets its state to {type(state).__name__} "
                f"{state!r:.100}; torch.save only ever sets {{'_metadata': {{prefix: "
                "{'version': n}}}}}. Other state would hide data beside the dict's items, "
                "so the file is refused."
            )


def _plain_metadata(prefix: Any, entry: Any) -> bool:
    """True for one ``_metadata`` item as torch writes it: a prefix and flat plain values."""
    leaves = (type(None), bool, int, float, str)
    return (
        isinstance(prefix, str)
        and isinstance(entry, dict)
        and all(isinstance(k, str) and isinstance(v, leaves) for k, v in entry.items())
    )


TORCH_WEIGHTS: Mapping[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): Allowed(_StateDict),
    ("torch._utils", "_rebuild_tensor"): Allowed(TorchTensor),
    ("torch._utils", "_rebuild_tensor_v2"): Allowed(TorchTensor),
    ("torch._utils", "_rebuild_parameter"): Allowed(_rebuild_parameter),
    **{
        ("torch", name): Marker(f"torch.{name}", dtype)
        for name, dtype in TORCH_STORAGE_DTYPES.items()
    },
    ("torch._utils", "_rebuild_tensor_v3"): Allowed(_rebuild_tensor_v3),
    ("torch.storage", "UntypedStorage"): Marker("torch.storage.UntypedStorage", UNTYPED),
    **{("torch", name): Marker(f"torch.{name}", name) for name in TORCH_V3_DTYPES},
}
"""The exact allow-list inside a PyTorch weights file (a state_dict's pickle)."""

TORCH_TENSORS: Mapping[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): Allowed(_StateDict),
    ("torch._utils", "_rebuild_tensor_v2"): Allowed(TorchTensor),
    ("torch._utils", "_rebuild_parameter"): Allowed(_rebuild_parameter),
}
"""What a tensor pickled with plain ``pickle`` names (besides its storage's bytes).

``torch.storage._load_from_bytes`` completes it: it reads a whole weights
file, so the reader that can do that adds it (see
:data:`polybundle_torch.legacy_eras.TORCH_PARAMS`)."""


def storage_dtype(marker: Any) -> str:
    """Return the NumPy dtype name of a pickled torch storage class, or raise.

    Example:
        >>> storage_dtype(TORCH_WEIGHTS[("torch", "FloatStorage")])
        'float32'
    """
    if not isinstance(marker, Marker) or not marker.dtype:
        raise UnsafeContentError(f"a torch storage id names {marker!r:.60}, not a storage type.")
    return marker.dtype


def keep_tensor(leaf: Leaf) -> TorchTensor:
    """Leave a tensor as its :class:`TorchTensor` record (``finalize(..., leaves=keep_tensor)``).

    For indexing a weights file without reading its storages.

    Example:
        >>> tensor = TorchTensor(TorchStorage("0", "int8", 2), 0, (2,), (1,))
        >>> keep_tensor(tensor) is tensor
        True
    """
    if not isinstance(leaf, TorchTensor):
        raise UnsafeContentError(f"a torch pickle produced a {type(leaf).__name__}; refused.")
    return leaf


def tensor_arrays(where: str) -> Callable[[Leaf], np.ndarray]:
    """Return a ``leaves`` function that turns each tensor into an array, through one views set.

    Give one to each :func:`~polybundle.safety.unpickle.safe_loads` call (the
    copies of one pickle's views are bounded together).

    Example:
        >>> storage = TorchStorage("0", "int8", 2)
        >>> storage.array = np.array([5, 6], dtype=np.int8)
        >>> tensor_arrays("p")(TorchTensor(storage, 1, (1,), (1,))).tolist()
        [6]
    """
    views = TensorViews(where)

    def array(leaf: Leaf) -> np.ndarray:
        return views.array(keep_tensor(leaf))

    return array
