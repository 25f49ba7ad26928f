"""The one restricted unpickler: plain data and tensors in, nothing executed.

Legacy archives store ``manifest.dill`` and ``params.dill`` as pickles, and
every PyTorch weights file (:mod:`polybundle_torch.pth_reader`) holds a
pickle too. :func:`safe_loads` reads them with
an exact allow-list of ``(module, name)`` pairs. Every allowed name maps to a
function of *this* module, never to the real one: NumPy arrays, NumPy scalars
and framework tensors (a PyTorch tensor, a TensorFlow ``EagerTensor``) come
back as NumPy arrays without importing torch or tensorflow. Anything else is
refused by ``find_class`` before it could be called.

Each pickle is first scanned statically with :mod:`pickletools` (opcodes,
declared lengths, op count), so a truncated or oversized pickle is refused
before a single opcode runs; the result is then walked with a depth limit and
cycle check.

Example:
    >>> import pickle
    >>> safe_loads(pickle.dumps({"N": 64, "probe.big": True}), where="params.dill")
    {'N': 64, 'probe.big': True}
    >>> safe_loads(pickle.dumps(print), where="params.dill")
    Traceback (most recent call last):
    ...
    polybundle.errors.UnsafeContentError: params.dill asks for builtins.print, ...
"""

from __future__ import annotations

import io
import math
import pickle
import pickletools
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from polybundle.errors import FormatError, PolybundleError, UnsafeContentError
from polybundle.model.backend import resolve_dtype
from polybundle.safety import budget

MAX_OPS = 5_000_000
"""Most opcodes one pickle may hold."""

MAX_DEPTH = 64
"""Deepest nesting of containers accepted in a result."""

MAX_NODES = 200_000
"""Most values (containers and leaves) one result may hold."""

MAX_DIMS = 32
"""Most axes an array may declare."""

MAX_VIEW_COPIES = 2
"""Most elements the copied views of one torch storage may hold, per element of it.

A view that is its whole storage in order costs no copy; tied weights share
one copy; a weight and its transpose, or disjoint slices, copy at most the
storage once. Past twice, a small file is asking for many overlapping copies."""

_FORBIDDEN_OPS = {"EXT1", "EXT2", "EXT4", "INST", "OBJ"}
_PERSISTENT_OPS = {"PERSID", "BINPERSID"}
_STRING_OPS = {
    "SHORT_BINUNICODE",
    "BINUNICODE",
    "BINUNICODE8",
    "UNICODE",
    "STRING",
    "BINSTRING",
    "SHORT_BINSTRING",
}
_MEMO_PUT = {"PUT", "BINPUT", "LONG_BINPUT"}
_MEMO_GET = {"GET", "BINGET", "LONG_BINGET"}
_DTYPE_KINDS = set("biufc")

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


class _Refuses:
    """Base of every object a pickle can reach: BUILD (``__setstate__``) is refused."""

    __slots__ = ()

    def __setstate__(self, state: Any) -> None:
        raise UnsafeContentError(
            f"a pickle tried to change the state of {type(self).__name__.strip('_')}; refused."
        )


class _Marker(_Refuses):
    """A stand-in for a class the pickle names (``numpy.ndarray``, ``torch.FloatStorage``)."""

    __slots__ = ("label", "dtype")

    def __init__(self, label: str, dtype: str = "") -> None:
        self.label = label
        self.dtype = dtype

    def __repr__(self) -> str:
        return self.label


class _Allowed(_Refuses):
    """An allowed callable as the pickle sees it: callable, but its state is sealed."""

    __slots__ = ("function",)

    def __init__(self, function: Callable[..., Any]) -> None:
        self.function = function

    def __call__(self, *args: Any) -> Any:
        return self.function(*args)


_NDARRAY = _Marker("numpy.ndarray")


class _DtypeBuilder:
    """What ``numpy.dtype(...)`` becomes; BUILD sets its byte order.

    Only boolean, integer, float and complex type codes are accepted; object,
    string, datetime, void and structured dtypes are refused, whatever the
    BUILD state says.

    Example:
        >>> builder = _DtypeBuilder("f8", False, True)
        >>> builder.__setstate__((3, ">", None, None, None, -1, -1, 0))
        >>> builder.dtype
        dtype('>f8')
        >>> _DtypeBuilder("O8", False, True)
        Traceback (most recent call last):
        ...
        polybundle.errors.UnsafeContentError: a pickled array has dtype 'O8' (object); ...
    """

    def __init__(self, spec: Any, align: Any = False, copy: Any = False) -> None:
        if not isinstance(spec, str) or len(spec) > 8:
            raise UnsafeContentError(f"a pickled dtype is {type(spec).__name__}, expected a code.")
        try:
            dtype = np.dtype(spec)
        except (TypeError, ValueError):
            raise FormatError(f"a pickled dtype {spec!r} is not a NumPy type code.") from None
        if dtype.kind not in _DTYPE_KINDS or dtype.hasobject or dtype.fields:
            raise UnsafeContentError(
                f"a pickled array has dtype {spec!r} ({dtype}); only boolean, integer, float "
                "and complex dtypes are plain data. Object, string, datetime and structured "
                "arrays are refused before anything ran; store such values as plain lists."
            )
        self.dtype = dtype

    def __setstate__(self, state: Any) -> None:
        if (
            not isinstance(state, tuple)
            or len(state) < 2
            or not isinstance(state[1], str)
            or state[1] not in ("<", ">", "|", "=")
        ):
            raise FormatError(f"a pickled dtype has state {state!r:.80}; expected numpy's.")
        if any(part is not None for part in state[2:5]):
            raise UnsafeContentError(
                "a pickled dtype declares a sub-array or fields; structured dtypes are refused."
            )
        if state[1] in "<>":
            self.dtype = self.dtype.newbyteorder(state[1])


class _ArrayBuilder:
    """What ``numpy.core.multiarray._reconstruct`` becomes; BUILD gives shape and bytes.

    NumPy's state is ``(version, shape, dtype, is_fortran, raw bytes)``; the
    array is made by :func:`_array_from_bytes`, which checks the declared size
    against the bytes present and charges the memory budget first.

    Example:
        >>> builder = _ArrayBuilder()
        >>> builder.__setstate__((1, (2,), _DtypeBuilder("i2"), False, b"\\x01\\x00\\x02\\x00"))
        >>> builder.array.tolist()
        [1, 2]
    """

    def __init__(self) -> None:
        self.array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) != 5:
            raise FormatError("a pickled array has a state that is not numpy's 5-tuple.")
        _, shape, dtype, fortran, raw = state
        if type(fortran) is not bool and fortran not in (0, 1):
            raise FormatError(f"a pickled array's Fortran flag is {fortran!r:.40}.")
        self.array = _array_from_bytes(raw, dtype, shape, "F" if fortran else "C")


def _array_from_bytes(
    raw: Any, dtype: Any, shape: Any, order: str, axes: tuple[int, ...] | None = None
) -> np.ndarray:
    """Return a new array of ``dtype`` and ``shape`` holding ``raw``; nothing else runs.

    The declared size (itemsize x every dimension, in Python integers so
    nothing wraps) must equal ``len(raw)`` and is charged to
    :mod:`polybundle.safety.budget` *before* the copy is allocated. ``order`` is
    ``"C"`` or ``"F"``; ``"K"`` with ``axes`` is NumPy 2's layout of a dense
    array whose axes are permuted.

    Example:
        >>> _array_from_bytes(b"\\x01\\x00\\x02\\x00", _DtypeBuilder("i2"), (2,), "C").tolist()
        [1, 2]
        >>> _array_from_bytes(b"\\x00" * 4, _DtypeBuilder("f4"), (2**28,), "C")
        Traceback (most recent call last):
        ...
        polybundle.errors.FormatError: a pickled NumPy array declares shape (268435456,) ...
    """

    if not isinstance(dtype, _DtypeBuilder):
        raise UnsafeContentError(
            f"a pickled array's dtype is {type(dtype).__name__}, not a plain numpy dtype."
        )
    if not isinstance(raw, (bytes, bytearray)):
        raise UnsafeContentError(
            f"a pickled array of {dtype.dtype} carries {type(raw).__name__} instead of raw "
            "bytes; object arrays are refused."
        )
    dims = _check_shape(shape)
    nbytes = math.prod(dims) * dtype.dtype.itemsize
    if nbytes != len(raw):
        raise FormatError(
            f"a pickled NumPy array declares shape {dims} of {dtype.dtype} ({nbytes} bytes) "
            f"but holds {len(raw)} bytes; the pickle is damaged or hostile. Refused before "
            "allocating."
        )
    budget.charge(nbytes, f"a pickled NumPy array of shape {dims} and dtype {dtype.dtype}")
    flat = np.frombuffer(raw, dtype=dtype.dtype)
    if order == "K":
        if axes is None or sorted(axes) != list(range(len(dims))):
            raise FormatError(f"a pickled array's axis order {axes!r:.60} is not a permutation.")
        return flat.reshape(dims).transpose(axes).copy(order="K")
    return flat.reshape(dims, order=order).copy(order="K")


class TorchStorage(_Refuses):
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


class TorchTensor(_Refuses):
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
        self.offset = _check_int(offset, "storage offset")
        self.shape = _check_shape(size)
        self.strides = _check_shape(stride)
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


class _Scalar(_Refuses):
    """What ``numpy.core.multiarray.scalar`` becomes."""

    def __init__(self, dtype: Any, raw: Any = None) -> None:
        if not isinstance(dtype, _DtypeBuilder) or not isinstance(raw, (bytes, bytearray)):
            raise UnsafeContentError("a pickled numpy scalar is not a dtype with raw bytes.")
        if len(raw) != dtype.dtype.itemsize:
            raise FormatError(f"a pickled numpy scalar of {dtype.dtype} holds {len(raw)} bytes.")
        self.value = np.frombuffer(bytes(raw), dtype=dtype.dtype)[0]


def _check_int(value: Any, what: str) -> int:
    if type(value) is not int or value < 0 or value > 2**48:
        raise FormatError(f"a pickled {what} is {value!r:.40}; expected a non-negative int.")
    return value


def _check_shape(value: Any) -> tuple[int, ...]:
    if not isinstance(value, tuple) or len(value) > MAX_DIMS:
        raise FormatError(f"a pickled shape is {value!r:.60}; expected a tuple of ints.")
    return tuple(_check_int(n, "dimension") for n in value)


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> _ArrayBuilder:
    if subtype is not _NDARRAY:
        raise UnsafeContentError("a pickled array is a numpy.ndarray subclass; refused.")
    return _ArrayBuilder()


def _frombuffer(
    buf: Any, dtype: Any, shape: Any, order: Any, axis_order: Any = None
) -> _ArrayBuilder:
    """What ``numpy.(_)core.numeric._frombuffer`` becomes (pickle protocol 5, in-band buffer).

    Example:
        >>> _frombuffer(bytearray(b"\\x01\\x02"), _DtypeBuilder("u1"), (2,), "C").array.tolist()
        [1, 2]
    """
    if order not in ("C", "F", "K") or (axis_order is not None and order != "K"):
        raise FormatError(f"a pickled array has memory order {order!r:.20}; expected C, F or K.")
    axes = None if axis_order is None else _check_shape(axis_order)
    builder = _ArrayBuilder()
    builder.array = _array_from_bytes(buf, dtype, shape, order, axes)
    return builder


def _dill_create_array(f: Any, args: Any, state: Any, npdict: Any = None) -> _ArrayBuilder:
    """What ``dill._dill._create_array`` becomes: ``_reconstruct(*args)`` then its BUILD.

    dill writes every ``numpy.ndarray`` as ``_create_array(f, args, state,
    npdict)`` with ``(f, args, state) = array.__reduce__()``; only NumPy's own
    ``_reconstruct`` is accepted as ``f`` and ``npdict`` (a subclass's
    ``__dict__``) must be empty.

    Example:
        >>> dtype = _DtypeBuilder("u1")
        >>> _dill_create_array(
        ...     PLAIN_DATA[("numpy.core.multiarray", "_reconstruct")],
        ...     (_NDARRAY, (0,), b"b"),
        ...     (1, (2,), dtype, False, b"\\x01\\x02"),
        ... ).array.tolist()
        [1, 2]
    """
    if not isinstance(f, _Allowed) or f.function is not _reconstruct:
        raise UnsafeContentError(
            f"dill._dill._create_array is asked to call {f!r:.60}; only NumPy's "
            "_reconstruct is plain data. Refused before anything ran."
        )
    if not isinstance(args, tuple) or len(args) != 3:
        raise FormatError("dill._dill._create_array got arguments that are not numpy's.")
    if npdict not in (None, {}):
        raise UnsafeContentError(
            "a dill-pickled array carries instance attributes (an ndarray subclass); refused."
        )
    builder = _reconstruct(*args)
    builder.__setstate__(state)
    return builder


class _Module(_Refuses):
    """What ``dill._dill._import_module`` gives for a NumPy module: only a name."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"module {self.name}"


_NUMPY_MODULES = (
    "numpy.core.multiarray",
    "numpy._core.multiarray",
    "numpy.core._multiarray_umath",
    "numpy._core._multiarray_umath",
)
"""Modules dill 0.3.4 names (``_import_module``) when it pickles NumPy's reconstructors."""


def _dill_import_module(name: Any, safe: Any = False) -> _Module:
    """What ``dill._dill._import_module`` becomes: a name, for NumPy's modules only.

    Example:
        >>> _dill_import_module("numpy.core._multiarray_umath").name
        'numpy.core._multiarray_umath'
    """
    if name not in _NUMPY_MODULES:
        raise UnsafeContentError(
            f"a dill pickle imports the module {name!r:.80}; only NumPy's array "
            "reconstructors are plain data. Refused before anything ran."
        )
    return _Module(name)


def _dill_get_attr(module: Any, name: Any) -> Any:
    """What ``dill._dill._get_attr`` becomes: ``_reconstruct`` or ``scalar`` of NumPy.

    Example:
        >>> module = _dill_import_module("numpy._core._multiarray_umath")
        >>> _dill_get_attr(module, "scalar").function is _Scalar
        True
    """
    if not isinstance(module, _Module) or name not in ("_reconstruct", "scalar"):
        raise UnsafeContentError(
            f"a dill pickle asks for attribute {name!r:.40} of {module!r:.60}; only NumPy's "
            "_reconstruct and scalar are plain data. Refused before anything ran."
        )
    return PLAIN_DATA[("numpy.core.multiarray", name)]


def _empty_bytes(*args: Any) -> bytes:
    """What ``bytes()`` becomes: protocol 2 writes ``b""`` as a call with no arguments.

    Example:
        >>> _empty_bytes()
        b''
    """
    if args:
        raise UnsafeContentError("a pickle calls bytes() with arguments; plain data never does.")
    return b""


def _latin1(text: Any, encoding: Any = "latin1") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafeContentError(f"_codecs.encode with {encoding!r:.20} is refused.")
    return text.encode("latin-1")


def _rebuild_tensor_v3(
    storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any = False,
    hooks: Any = None, dtype: Any = None, *rest: Any,
) -> TorchTensor:
    """``torch._utils._rebuild_tensor_v3``: a tensor of ``dtype`` over an untyped storage.

    torch writes it for dtypes without a typed storage class (float8,
    uint16...). The storage's bytes are given the tensor's dtype once, before
    any tensor views it; another dtype over the same storage is refused.
    """
    if not isinstance(storage, TorchStorage) or not isinstance(dtype, _Marker) or not dtype.dtype:
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


def _load_storage_bytes(data: Any) -> TorchStorage:
    from polybundle_torch.pth_reader import read_pickled_storage  # it unpickles with this module

    if not isinstance(data, bytes):
        raise UnsafeContentError("torch.storage._load_from_bytes got something other than bytes.")
    return read_pickled_storage(data)


def _tf_tensor(value: Any, *rest: Any) -> Any:
    if not isinstance(value, (_ArrayBuilder, _Scalar)):
        raise UnsafeContentError("a pickled TensorFlow tensor does not hold a NumPy array.")
    return value


def _numpy_names(module: str) -> dict[tuple[str, str], _Allowed]:
    """NumPy's array and scalar reconstructors under ``module`` (``numpy.core``/``numpy._core``).

    Example:
        >>> sorted(name for _, name in _numpy_names("numpy._core"))
        ['_frombuffer', '_reconstruct', 'scalar']
    """
    return {
        (f"{module}.multiarray", "_reconstruct"): _Allowed(_reconstruct),
        (f"{module}.multiarray", "scalar"): _Allowed(_Scalar),
        (f"{module}.numeric", "_frombuffer"): _Allowed(_frombuffer),
    }


_DILL_AND_BYTES: dict[tuple[str, str], _Allowed] = {
    ("dill._dill", "_create_array"): _Allowed(_dill_create_array),
    ("dill._dill", "_import_module"): _Allowed(_dill_import_module),
    ("dill._dill", "_get_attr"): _Allowed(_dill_get_attr),
    ("builtins", "bytes"): _Allowed(_empty_bytes),
    ("__builtin__", "bytes"): _Allowed(_empty_bytes),
}
"""What dill 0.3.4 to 0.4.1 writes around NumPy arrays, and protocol 2's empty bytes."""


PLAIN_DATA: Mapping[tuple[str, str], Any] = {
    ("builtins", "set"): _Allowed(set),
    ("builtins", "frozenset"): _Allowed(frozenset),
    ("builtins", "complex"): _Allowed(complex),
    ("collections", "OrderedDict"): _Allowed(_StateDict),
    ("_codecs", "encode"): _Allowed(_latin1),
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _Allowed(_DtypeBuilder),
    **_numpy_names("numpy.core"),
    **_numpy_names("numpy._core"),
    **_DILL_AND_BYTES,
    ("torch._utils", "_rebuild_tensor_v2"): _Allowed(TorchTensor),
    ("torch._utils", "_rebuild_parameter"): _Allowed(_rebuild_parameter),
    ("torch.storage", "_load_from_bytes"): _Allowed(_load_storage_bytes),
    ("tensorflow.python.framework.ops", "convert_to_tensor"): _Allowed(_tf_tensor),
}
"""The exact allow-list for ``manifest.dill`` and ``params.dill``: plain data only."""

TORCH_WEIGHTS: Mapping[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): _Allowed(_StateDict),
    ("torch._utils", "_rebuild_tensor"): _Allowed(TorchTensor),
    ("torch._utils", "_rebuild_tensor_v2"): _Allowed(TorchTensor),
    ("torch._utils", "_rebuild_parameter"): _Allowed(_rebuild_parameter),
    **{
        ("torch", name): _Marker(f"torch.{name}", dtype)
        for name, dtype in TORCH_STORAGE_DTYPES.items()
    },
    ("torch._utils", "_rebuild_tensor_v3"): _Allowed(_rebuild_tensor_v3),
    ("torch.storage", "UntypedStorage"): _Marker("torch.storage.UntypedStorage", UNTYPED),
    **{("torch", name): _Marker(f"torch.{name}", name) for name in TORCH_V3_DTYPES},
}
"""The exact allow-list inside a PyTorch weights file (a state_dict's pickle)."""


def storage_dtype(marker: Any) -> str:
    """Return the NumPy dtype name of a pickled torch storage class, or raise.

    Example:
        >>> storage_dtype(TORCH_WEIGHTS[("torch", "FloatStorage")])
        'float32'
    """
    if not isinstance(marker, _Marker) or not marker.dtype:
        raise UnsafeContentError(f"a torch storage id names {marker!r:.60}, not a storage type.")
    return marker.dtype


class _Unpickler(pickle.Unpickler):
    def __init__(
        self,
        data: bytes,
        allowed: Mapping[tuple[str, str], Any],
        persistent: Callable[[Any], Any] | None,
        where: str,
    ) -> None:
        super().__init__(io.BytesIO(data))
        self._allowed = allowed
        self._persistent = persistent
        self._where = where

    def find_class(self, module: str, name: str) -> Any:
        found = self._allowed.get((module, name))
        if found is None:
            raise UnsafeContentError(
                f"{self._where} asks for {module}.{name}, which is not plain data; "
                "polybundle unpickles only an allow-list of data types and refused it "
                "before anything ran. If you wrote this file yourself and trust it, "
                "re-save it with polybundle."
            )
        return found

    def persistent_load(self, pid: Any) -> Any:
        if self._persistent is None:
            raise UnsafeContentError(
                f"{self._where} holds a persistent id; plain data has none. Refused."
            )
        return self._persistent(pid)


def scan(data: bytes, *, where: str, start: int = 0, persistent: bool = False) -> int:
    """Check one pickle statically (opcodes, lengths, size); return where it ends.

    Nothing is executed. Raises :class:`FormatError` for a damaged or
    truncated pickle and :class:`UnsafeContentError` for forbidden opcodes.

    Example:
        >>> scan(pickle.dumps([1, 2]), where="x")
        16
    """
    stream = io.BytesIO(data)
    stream.seek(start)
    count = 0
    end = start
    try:
        for opcode, _, position in pickletools.genops(stream):
            count += 1
            if count > MAX_OPS:
                raise UnsafeContentError(f"{where} holds more than {MAX_OPS} pickle opcodes.")
            if opcode.name in _FORBIDDEN_OPS or (opcode.name in _PERSISTENT_OPS and not persistent):
                raise UnsafeContentError(
                    f"{where} uses the pickle opcode {opcode.name} at byte {position}, "
                    "which plain data never needs; refused before anything ran."
                )
            end = position
    except PolybundleError:
        raise
    except Exception as exc:  # genops raises ValueError, UnicodeDecodeError, struct.error...
        raise FormatError(
            f"{where} is not a complete pickle ({type(exc).__name__}: {str(exc)[:120]}); "
            "the file is truncated or damaged."
        ) from None
    return end + 1


def list_globals(data: bytes, *, where: str) -> list[str]:
    """List the ``module.name`` globals a pickle refers to, without running it.

    Used to say which custom objects ``custom_objects.dill`` holds. The
    listing follows strings through the memo; a hostile pickle can make it
    incomplete but never makes anything run.

    Example:
        >>> list_globals(pickle.dumps({"f": OrderedDict}), where="x")
        ['collections.OrderedDict']
    """
    strings: list[str | None] = []
    memo: dict[int, str | None] = {}
    found: list[str] = []
    try:
        ops = pickletools.genops(io.BytesIO(data[: MAX_OPS * 8]))
        for index, (opcode, arg, _) in enumerate(ops):
            if index > MAX_OPS:
                break
            name = opcode.name
            if name in _STRING_OPS:
                strings.append(arg if isinstance(arg, str) else None)
            elif name == "MEMOIZE":
                memo[len(memo)] = strings[-1] if strings else None
            elif name in _MEMO_PUT:
                memo[arg] = strings[-1] if strings else None
            elif name in _MEMO_GET:
                strings.append(memo.get(arg))
            elif name == "GLOBAL":
                found.append(arg.replace(" ", "."))
            elif name == "STACK_GLOBAL" and len(strings) >= 2:
                module, qualname = strings[-2], strings[-1]
                if module and qualname:
                    found.append(f"{module}.{qualname}")
    except Exception:  # a damaged pickle lists what was found before the damage
        pass
    return sorted(set(found))


def finalize(value: Any, *, where: str, tensors: bool = True) -> Any:
    """Turn builder objects into NumPy values; refuse cycles, depth and size bombs.

    Torch tensors become arrays of their storages' ``array`` through one
    :class:`TensorViews` (overlapping copies bounded, copies charged to the
    memory budget); with ``tensors=False`` they stay :class:`TorchTensor`
    records (for indexing a weights file without reading its storages).

    Example:
        >>> finalize({"a": [1, (2, 3)]}, where="x")
        {'a': [1, (2, 3)]}
    """
    budget = [MAX_NODES]
    return _finalize(value, where, 0, set(), budget, TensorViews(where) if tensors else None)


def _finalize(
    value: Any,
    where: str,
    depth: int,
    active: set[int],
    budget: list[int],
    tensors: TensorViews | None,
) -> Any:
    budget[0] -= 1
    if budget[0] < 0:
        raise UnsafeContentError(f"{where} holds more than {MAX_NODES} values; refused.")
    if depth > MAX_DEPTH:
        raise UnsafeContentError(
            f"{where} nests containers deeper than {MAX_DEPTH} levels; plain params never "
            "do. Refused."
        )
    if value is None or isinstance(value, (bool, int, float, complex, str, bytes)):
        return value
    if isinstance(value, bytearray):
        return bytes(value)
    if isinstance(value, _ArrayBuilder):
        if value.array is None:
            raise FormatError(f"{where} holds an array that was never filled.")
        return value.array
    if isinstance(value, _Scalar):
        return value.value
    if isinstance(value, TorchTensor):
        return value if tensors is None else tensors.array(value)
    if not isinstance(value, (dict, list, tuple, set, frozenset)):
        raise UnsafeContentError(
            f"{where} produced a {type(value).__name__} value, which is not plain data."
        )
    if id(value) in active:
        raise UnsafeContentError(f"{where} holds a container that contains itself; refused.")
    active.add(id(value))
    try:
        step = depth + 1
        if isinstance(value, dict):
            items = [
                (
                    _finalize(k, where, step, active, budget, tensors),
                    _finalize(v, where, step, active, budget, tensors),
                )
                for k, v in value.items()
            ]
            return OrderedDict(items) if isinstance(value, OrderedDict) else dict(items)
        items = [_finalize(item, where, step, active, budget, tensors) for item in value]
        return type(value)(items) if not isinstance(value, list) else items
    except TypeError:  # an unhashable key, e.g. an array used as a dict key
        raise FormatError(f"{where} uses an unhashable value as a key or set member.") from None
    finally:
        active.discard(id(value))


def safe_loads(
    data: bytes,
    *,
    where: str,
    allowed: Mapping[tuple[str, str], Any] = PLAIN_DATA,
    persistent: Callable[[Any], Any] | None = None,
    raw: bool = False,
) -> Any:
    """Unpickle ``data``, exactly one pickle, with the exact allow-list ``allowed``.

    ``persistent`` resolves persistent ids (PyTorch storages); without it a
    persistent id is refused. ``raw=True`` returns builder objects unconverted (for callers
    that fill storages first, then call :func:`finalize`). Raises only
    :class:`PolybundleError` subclasses.

    Example:
        >>> safe_loads(pickle.dumps({"intensity_scale": 2.5}), where="params.dill")
        {'intensity_scale': 2.5}
    """
    end = scan(data, where=where, persistent=persistent is not None)
    if end != len(data):
        raise FormatError(
            f"{where} has {len(data) - end} bytes after its pickle; expected one pickle only."
        )
    try:
        result = _Unpickler(data, allowed, persistent, where).load()
    except PolybundleError:
        raise
    except RecursionError:
        raise UnsafeContentError(f"{where} nests too deeply to read; refused.") from None
    except Exception as exc:  # UnpicklingError, TypeError from bad REDUCE args, ...
        raise FormatError(
            f"{where} could not be read as plain data ({type(exc).__name__}: "
            f"{str(exc)[:120]}); the file is damaged or not what its name says."
        ) from None
    return result if raw else finalize(result, where=where)
