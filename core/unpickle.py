"""The one restricted unpickler: plain data and tensors in, nothing executed.

Legacy archives store ``manifest.dill`` and ``params.dill`` as pickles, and
every PyTorch weights file (:mod:`polybundle.readers.torch_zip`) holds a
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
import pickle
import pickletools
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from .errors import FormatError, PolybundleError, UnsafeContentError

MAX_OPS = 5_000_000
"""Most opcodes one pickle may hold."""

MAX_DEPTH = 64
"""Deepest nesting of containers accepted in a result."""

MAX_NODES = 200_000
"""Most values (containers and leaves) one result may hold."""

MAX_DIMS = 32
"""Most axes an array may declare."""

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
    """What ``numpy.dtype(...)`` becomes; BUILD sets its byte order."""

    def __init__(self, spec: Any, align: Any = False, copy: Any = False) -> None:
        if not isinstance(spec, str) or len(spec) > 8:
            raise UnsafeContentError(f"a pickled dtype is {type(spec).__name__}, expected a code.")
        try:
            dtype = np.dtype(spec)
        except TypeError:
            raise FormatError(f"a pickled dtype {spec!r} is not a NumPy type code.") from None
        if dtype.kind not in _DTYPE_KINDS or dtype.hasobject or dtype.fields:
            raise UnsafeContentError(
                f"a pickled array has dtype {spec!r}; only numeric and boolean dtypes are "
                "plain data. Object and structured arrays are refused."
            )
        self.dtype = dtype

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) < 2 or state[1] not in "<>|=":
            raise FormatError(f"a pickled dtype has state {state!r:.80}; expected numpy's.")
        if len(state) > 3 and state[3] is not None:
            raise UnsafeContentError(
                "a pickled dtype declares fields; structured dtypes are refused."
            )
        if state[1] in "<>":
            self.dtype = self.dtype.newbyteorder(state[1])


class _ArrayBuilder:
    """What ``numpy.core.multiarray._reconstruct`` becomes; BUILD gives shape and bytes."""

    def __init__(self) -> None:
        self.array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) != 5:
            raise FormatError("a pickled array has a state that is not numpy's 5-tuple.")
        _, shape, dtype, fortran, raw = state
        if not isinstance(dtype, _DtypeBuilder):
            raise UnsafeContentError("a pickled array's dtype is not a plain numpy dtype.")
        if not isinstance(raw, (bytes, bytearray)):
            raise UnsafeContentError(
                "a pickled array carries Python objects instead of raw bytes; object "
                "arrays are refused."
            )
        dims = _check_shape(shape)
        count = int(np.prod(dims, dtype=np.int64)) if dims else 1
        if count * dtype.dtype.itemsize != len(raw):
            raise FormatError(
                f"a pickled array declares shape {dims} of {dtype.dtype} "
                f"({count * dtype.dtype.itemsize} bytes) but holds {len(raw)} bytes."
            )
        flat = np.frombuffer(bytes(raw), dtype=dtype.dtype)
        self.array = flat.reshape(dims, order="F" if fortran else "C").copy()


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


class TorchTensor(_Refuses):
    """What ``torch._utils._rebuild_tensor(_v2)`` becomes: a strided window of a storage.

    ``offset``, ``shape`` and ``strides`` count elements. The window is
    checked against the storage's element count when the pickle builds it,
    so :meth:`view` never reaches outside the storage.

    Example:
        >>> tensor = TorchTensor(TorchStorage("0", "float32", 6), 0, (2, 3), (3, 1))
        >>> tensor.view(np.arange(6, dtype=np.float32))[1].tolist()
        [3.0, 4.0, 5.0]
    """

    __slots__ = ("storage", "offset", "shape", "strides")

    def __init__(self, storage: Any, offset: Any, size: Any, stride: Any, *rest: Any) -> None:
        if not isinstance(storage, TorchStorage):
            raise UnsafeContentError("a pickled torch tensor does not point at a storage.")
        self.storage = storage
        self.offset = _check_int(offset, "storage offset")
        self.shape = _check_shape(size)
        self.strides = _check_shape(stride)
        if len(self.shape) != len(self.strides):
            raise FormatError("a pickled torch tensor has sizes and strides of different lengths.")
        last = self.offset + sum((n - 1) * s for n, s in zip(self.shape, self.strides, strict=True))
        if 0 not in self.shape and last >= storage.numel:
            raise FormatError(
                f"a torch tensor of shape {self.shape} reaches element {last} of storage "
                f"{storage.key!r}, which holds {storage.numel}; the weights file is damaged "
                "or hostile."
            )

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
        item = flat.itemsize
        window = np.lib.stride_tricks.as_strided(
            flat[self.offset :],
            shape=self.shape,
            strides=tuple(s * item for s in self.strides),
            writeable=False,
        )
        if self.offset == 0 and window.size == flat.size and window.flags.c_contiguous:
            return flat.reshape(self.shape)
        return np.array(window) if copy else window


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


def _latin1(text: Any, encoding: Any = "latin1") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafeContentError(f"_codecs.encode with {encoding!r:.20} is refused.")
    return text.encode("latin-1")


def _rebuild_parameter(data: Any, requires_grad: Any = False, hooks: Any = None) -> Any:
    if not isinstance(data, TorchTensor):
        raise UnsafeContentError("a pickled torch Parameter does not hold a tensor.")
    return data


def _load_storage_bytes(data: Any) -> TorchStorage:
    from .readers.torch_zip import read_pickled_storage  # it unpickles with this module

    if not isinstance(data, bytes):
        raise UnsafeContentError("torch.storage._load_from_bytes got something other than bytes.")
    return read_pickled_storage(data)


def _tf_tensor(value: Any, *rest: Any) -> Any:
    if not isinstance(value, (_ArrayBuilder, _Scalar)):
        raise UnsafeContentError("a pickled TensorFlow tensor does not hold a NumPy array.")
    return value


def _numpy_names(module: str) -> dict[tuple[str, str], _Allowed]:
    return {
        (f"{module}.multiarray", "_reconstruct"): _Allowed(_reconstruct),
        (f"{module}.multiarray", "scalar"): _Allowed(_Scalar),
    }


PLAIN_DATA: Mapping[tuple[str, str], Any] = {
    ("builtins", "set"): _Allowed(set),
    ("builtins", "frozenset"): _Allowed(frozenset),
    ("builtins", "complex"): _Allowed(complex),
    ("collections", "OrderedDict"): _Allowed(OrderedDict),
    ("_codecs", "encode"): _Allowed(_latin1),
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _Allowed(_DtypeBuilder),
    **_numpy_names("numpy.core"),
    **_numpy_names("numpy._core"),
    ("torch._utils", "_rebuild_tensor_v2"): _Allowed(TorchTensor),
    ("torch._utils", "_rebuild_parameter"): _Allowed(_rebuild_parameter),
    ("torch.storage", "_load_from_bytes"): _Allowed(_load_storage_bytes),
    ("tensorflow.python.framework.ops", "convert_to_tensor"): _Allowed(_tf_tensor),
}
"""The exact allow-list for ``manifest.dill`` and ``params.dill``: plain data only."""

TORCH_WEIGHTS: Mapping[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): _Allowed(OrderedDict),
    ("torch._utils", "_rebuild_tensor"): _Allowed(TorchTensor),
    ("torch._utils", "_rebuild_tensor_v2"): _Allowed(TorchTensor),
    ("torch._utils", "_rebuild_parameter"): _Allowed(_rebuild_parameter),
    **{
        ("torch", name): _Marker(f"torch.{name}", dtype)
        for name, dtype in TORCH_STORAGE_DTYPES.items()
    },
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

    Torch tensors become arrays of their storages' ``array``; with
    ``tensors=False`` they stay :class:`TorchTensor` records (for indexing a
    weights file without reading its storages).

    Example:
        >>> finalize({"a": [1, (2, 3)]}, where="x")
        {'a': [1, (2, 3)]}
    """
    budget = [MAX_NODES]
    return _finalize(value, where, 0, set(), budget, tensors)


def _finalize(
    value: Any, where: str, depth: int, active: set[int], budget: list[int], tensors: bool
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
        if not tensors:
            return value
        if value.storage.array is None:
            raise FormatError(f"{where}: torch storage {value.storage.key!r} has no data.")
        return value.view(value.storage.array)
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
