"""The one restricted unpickler: plain data in, nothing executed.

Legacy archives store ``manifest.dill`` and ``params.dill`` as pickles, and
some backends' weights files hold a pickle too. :func:`safe_loads` reads them
with an exact allow-list of ``(module, name)`` pairs. Every allowed name maps
to a stand-in function, never to the real one: NumPy arrays and NumPy scalars
come back as NumPy arrays without running anything. Anything else is refused
by ``find_class`` before it could be called.

A backend that reads pickles holding its framework's objects passes its own
vocabulary: ``extra`` names mapped to stand-ins built from :class:`Allowed`,
:class:`Marker` and :class:`Leaf`, and a ``leaves`` function that turns each
:class:`Leaf` of the result into a value (a tensor into a NumPy array). The
core itself knows no framework's names.

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
from polybundle.safety import budget

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


class Sealed:
    """Base of every object a pickle can reach: BUILD (``__setstate__``) is refused.

    Example:
        >>> Sealed().__setstate__({"x": 1})
        Traceback (most recent call last):
        ...
        polybundle.errors.UnsafeContentError: a pickle tried to change the state of Sealed; ...
    """

    __slots__ = ()

    def __setstate__(self, state: Any) -> None:
        raise UnsafeContentError(
            f"a pickle tried to change the state of {type(self).__name__.strip('_')}; refused."
        )


class Marker(Sealed):
    """A stand-in for a class the pickle names (``numpy.ndarray``, a storage type).

    ``dtype`` is the element type the named class stands for, when it has one.

    Example:
        >>> Marker("numpy.ndarray")
        numpy.ndarray
    """

    __slots__ = ("label", "dtype")

    def __init__(self, label: str, dtype: str = "") -> None:
        self.label = label
        self.dtype = dtype

    def __repr__(self) -> str:
        return self.label


class Allowed(Sealed):
    """An allowed callable as the pickle sees it: callable, but its state is sealed.

    Example:
        >>> Allowed(complex)(1, 2)
        (1+2j)
    """

    __slots__ = ("function",)

    def __init__(self, function: Callable[..., Any]) -> None:
        self.function = function

    def __call__(self, *args: Any) -> Any:
        return self.function(*args)


class Leaf(Sealed):
    """Base of a value a caller's ``extra`` names build that is not plain data (a tensor).

    :func:`finalize` hands every :class:`Leaf` of a result to the caller's
    ``leaves`` function; without one, a :class:`Leaf` is refused.

    Example:
        >>> finalize([Leaf()], where="x", leaves=lambda leaf: "converted")
        ['converted']
    """

    __slots__ = ()


class _OrderedDict(OrderedDict):
    """What ``collections.OrderedDict()`` becomes: items only, its BUILD is refused.

    A plain ``OrderedDict`` pickles as a call and its items; a BUILD would put
    attributes beside the items, where no reader looks. A caller that expects
    such state (a backend's own dict subclass) maps ``OrderedDict`` itself.

    Example:
        >>> _OrderedDict().__setstate__({"hidden": 1})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        polybundle.errors.UnsafeContentError: a pickled OrderedDict sets its state to ...
    """

    def __setstate__(self, state: Any) -> None:
        raise UnsafeContentError(
            f"a pickled OrderedDict sets its state to {type(state).__name__} {state!r:.100}; "
            "plain data never does. Other state would hide data beside the dict's items, "
            "so the file is refused."
        )


_NDARRAY = Marker("numpy.ndarray")


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
    dims = check_shape(shape)
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


class _Scalar(Sealed):
    """What ``numpy.core.multiarray.scalar`` becomes."""

    def __init__(self, dtype: Any, raw: Any = None) -> None:
        if not isinstance(dtype, _DtypeBuilder) or not isinstance(raw, (bytes, bytearray)):
            raise UnsafeContentError("a pickled numpy scalar is not a dtype with raw bytes.")
        if len(raw) != dtype.dtype.itemsize:
            raise FormatError(f"a pickled numpy scalar of {dtype.dtype} holds {len(raw)} bytes.")
        self.value = np.frombuffer(bytes(raw), dtype=dtype.dtype)[0]


def check_int(value: Any, what: str) -> int:
    if type(value) is not int or value < 0 or value > 2**48:
        raise FormatError(f"a pickled {what} is {value!r:.40}; expected a non-negative int.")
    return value


def check_shape(value: Any) -> tuple[int, ...]:
    if not isinstance(value, tuple) or len(value) > MAX_DIMS:
        raise FormatError(f"a pickled shape is {value!r:.60}; expected a tuple of ints.")
    return tuple(check_int(n, "dimension") for n in value)


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
    axes = None if axis_order is None else check_shape(axis_order)
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
    if not isinstance(f, Allowed) or f.function is not _reconstruct:
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


class _Module(Sealed):
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


def _numpy_names(module: str) -> dict[tuple[str, str], Allowed]:
    """NumPy's array and scalar reconstructors under ``module`` (``numpy.core``/``numpy._core``).

    Example:
        >>> sorted(name for _, name in _numpy_names("numpy._core"))
        ['_frombuffer', '_reconstruct', 'scalar']
    """
    return {
        (f"{module}.multiarray", "_reconstruct"): Allowed(_reconstruct),
        (f"{module}.multiarray", "scalar"): Allowed(_Scalar),
        (f"{module}.numeric", "_frombuffer"): Allowed(_frombuffer),
    }


_DILL_AND_BYTES: dict[tuple[str, str], Allowed] = {
    ("dill._dill", "_create_array"): Allowed(_dill_create_array),
    ("dill._dill", "_import_module"): Allowed(_dill_import_module),
    ("dill._dill", "_get_attr"): Allowed(_dill_get_attr),
    ("builtins", "bytes"): Allowed(_empty_bytes),
    ("__builtin__", "bytes"): Allowed(_empty_bytes),
}
"""What dill 0.3.4 to 0.4.1 writes around NumPy arrays, and protocol 2's empty bytes."""


PLAIN_DATA: Mapping[tuple[str, str], Any] = {
    ("builtins", "set"): Allowed(set),
    ("builtins", "frozenset"): Allowed(frozenset),
    ("builtins", "complex"): Allowed(complex),
    ("collections", "OrderedDict"): Allowed(_OrderedDict),
    ("_codecs", "encode"): Allowed(_latin1),
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): Allowed(_DtypeBuilder),
    **_numpy_names("numpy.core"),
    **_numpy_names("numpy._core"),
    **_DILL_AND_BYTES,
}
"""The exact allow-list for ``manifest.dill`` and ``params.dill``: plain data only.

A backend whose params pickles hold its framework's tensors adds its own
names with ``safe_loads(..., extra=...)``."""


def is_numpy_value(value: Any) -> bool:
    """Return True for what a pickled NumPy array or scalar becomes before :func:`finalize`.

    For a backend's stand-in that wraps a NumPy value (a framework tensor
    pickled as a call on an array) and must accept nothing else.

    Example:
        >>> is_numpy_value(safe_loads(pickle.dumps(np.ones(2)), where="x", raw=True))
        True
        >>> is_numpy_value([1.0, 2.0])
        False
    """
    return isinstance(value, (_ArrayBuilder, _Scalar))


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
        >>> data = pickle.dumps([1, 2], protocol=2)
        >>> scan(data, where="x") == len(data)
        True
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


Leaves = Callable[[Leaf], Any]
"""What a caller gives :func:`finalize` to turn each :class:`Leaf` into a value."""


def finalize(value: Any, *, where: str, leaves: Leaves | None = None) -> Any:
    """Turn builder objects into NumPy values; refuse cycles, depth and size bombs.

    Each :class:`Leaf` (what a caller's own names built, a tensor) is
    replaced by ``leaves(leaf)``; without ``leaves`` it is refused.

    Example:
        >>> finalize({"a": [1, (2, 3)]}, where="x")
        {'a': [1, (2, 3)]}
        >>> finalize([Leaf()], where="x")
        Traceback (most recent call last):
        ...
        polybundle.errors.UnsafeContentError: x produced a Leaf value, which is not plain data.
    """
    return _finalize(value, where, 0, set(), [MAX_NODES], leaves)


def _finalize(
    value: Any,
    where: str,
    depth: int,
    active: set[int],
    budget: list[int],
    leaves: Leaves | None,
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
    if isinstance(value, Leaf) and leaves is not None:
        return leaves(value)
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
                    _finalize(k, where, step, active, budget, leaves),
                    _finalize(v, where, step, active, budget, leaves),
                )
                for k, v in value.items()
            ]
            return OrderedDict(items) if isinstance(value, OrderedDict) else dict(items)
        items = [_finalize(item, where, step, active, budget, leaves) for item in value]
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
    extra: Mapping[tuple[str, str], Any] | None = None,
    persistent: Callable[[Any], Any] | None = None,
    raw: bool = False,
    leaves: Leaves | None = None,
) -> Any:
    """Unpickle ``data``, exactly one pickle, with the exact allow-list ``allowed``.

    :param extra: more ``(module, name)`` stand-ins a caller allows on top of
        ``allowed`` (a backend's tensor vocabulary); they win over ``allowed``.
    :param persistent: resolves persistent ids (a weights file's storages);
        without it a persistent id is refused.
    :param raw: return builder objects unconverted (for callers that fill
        storages first, then call :func:`finalize`).
    :param leaves: turns each :class:`Leaf` of the result into a value (see
        :func:`finalize`).

    Raises only :class:`PolybundleError` subclasses.

    Example:
        >>> safe_loads(pickle.dumps({"intensity_scale": 2.5}), where="params.dill")
        {'intensity_scale': 2.5}
        >>> safe_loads(pickle.dumps(complex(1, 2)), where="x", extra={
        ...     ("builtins", "complex"): Allowed(lambda re, im: f"{re}+{im}i")})
        '1.0+2.0i'
    """
    if extra:
        allowed = {**allowed, **extra}
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
    return result if raw else finalize(result, where=where, leaves=leaves)
