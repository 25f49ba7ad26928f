"""Read PyTorch weights files (``model.pth``) into NumPy arrays without torch.

Both layouts torch has written are read. ``torch.save`` (torch 1.6 on)
writes a zip: ``<prefix>/data.pkl`` is a pickle that describes the tensors,
``<prefix>/data/<key>`` holds each storage's raw bytes and
``<prefix>/byteorder`` their byte order. Older files, found in legacy
archives and inside a tensor pickled into ``params.dill``, are one stream: a
magic number, the protocol, system info, the object's pickle, the storage
keys, then each storage as an element count and its bytes.

Every pickle goes through :func:`polybundle.safety.unpickle.safe_loads` with the
exact allow-list :data:`polybundle_torch.pickle_vocabulary.TORCH_WEIGHTS`: a static scan
first, then only tensor-rebuilding globals, storage types and storage
persistent ids; anything else is refused before it is called.

Before a storage is read or mapped, every tensor's geometry is checked
(:class:`~polybundle_torch.pickle_vocabulary.TorchTensor` and
:class:`~polybundle_torch.pickle_vocabulary.TensorViews`:
inside its storage, no stride-0 or overlapping view larger than the storage),
each storage's declared size is checked against the bytes its member really
holds, the deflated members of the inner zip together must pass the archive's
compression-ratio rule, and, given the manifest's ``specs``, every tensor's
name, shape and dtype must be the declared ones. What is then allocated (each
storage, each copied view) is charged to :mod:`polybundle.safety.budget` first.
:func:`index_pth` reads only the pickle and says where each tensor's
elements lie; :func:`fill_pth` reads each storage into memory its caller
allocates (the torch backend: the tensors' own), front to back in one pass;
:func:`read_pth` reads them into arrays, or views them in a
read-only memory map of the file. A STORED member of a bundle is reached
through a sub-range of the outer file, so nothing is copied on the way.

Example:
    >>> torch.save(net.state_dict(), "model.pth")
    >>> with open("model.pth", "rb") as f:
    ...     tensors = read_pth(f)
    >>> sorted(tensors), tensors["2.bias"].dtype
    (['0.bias', '0.weight', '2.bias', '2.weight'], dtype('float32'))
    >>> np.array_equal(tensors["0.weight"], net[0].weight.detach().numpy())
    True
"""

from __future__ import annotations

import contextlib
import io
import mmap
import os
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, BinaryIO

import numpy as np

from polybundle.errors import FormatError, PolybundleError, UnsafeContentError
from polybundle.format.archive import (
    MAX_RATIO,
    RATIO_FLOOR,
    MemberRange,
    NestedZip,
    check_member_name,
)
from polybundle.format.arrays import read_array
from polybundle.format.detection import PLAIN_ROLE
from polybundle.format.tensor_check import check_index
from polybundle.model.backend import TensorSpec, resolve_dtype
from polybundle.model.layouts import OPAQUE, SCALAR
from polybundle.safety import budget
from polybundle.safety.unpickle import finalize, list_globals, safe_loads, scan
from polybundle_torch.pickle_vocabulary import (
    TORCH_WEIGHTS,
    UNTYPED,
    TensorViews,
    TorchStorage,
    TorchTensor,
    keep_tensor,
    storage_dtype,
)

MAX_PICKLE_BYTES = 64 * 1024 * 1024
"""Largest ``data.pkl`` read; a state_dict's pickle is a few bytes per tensor."""

MAX_WEIGHTS_MEMBERS = 100_000
"""Most members accepted inside a PyTorch zip weights file."""

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
"""The first value pickled in PyTorch's pre-zip file layout."""

Source = bytes | BinaryIO | MemberRange
"""A weights file: its bytes, or a seekable binary file or bundle member."""

_NATIVE = "little" if np.little_endian else "big"


def _numpy_dtype(name: str) -> np.dtype:
    if name == UNTYPED:  # bytes no tensor gave a dtype
        return np.dtype(np.uint8)
    return resolve_dtype(name, where="a model.pth storage")  # bfloat16, float8: ml_dtypes


def _container(source: Source) -> BinaryIO | MemberRange:
    """Return ``source`` as a seekable file; a plain file becomes a range over it (zero copy)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return io.BytesIO(source)
    if isinstance(source, (MemberRange, io.BytesIO)):
        return source
    try:
        fd = source.fileno()
        size = os.fstat(fd).st_size
    except (AttributeError, OSError, io.UnsupportedOperation):
        return source
    return MemberRange(fd, 0, size, getattr(source, "name", "model.pth"))


@contextlib.contextmanager
def _reading(where: str) -> Iterator[None]:
    """Turn what a damaged zip or stream raises into :class:`FormatError`."""
    try:
        yield
    except PolybundleError:
        raise
    except (
        zipfile.BadZipFile,
        zlib.error,
        struct.error,
        EOFError,
        NotImplementedError,
        ValueError,
        TypeError,
        OverflowError,
        MemoryError,
    ) as exc:
        raise FormatError(
            f"{where} could not be read ({type(exc).__name__}: {str(exc)[:120]}); the "
            "weights file is damaged."
        ) from None


def _storage_resolver(storages: dict[str, TorchStorage], where: str):
    """Return the ``persistent_load`` that accepts only storage ids, one storage per key."""

    def resolve(pid: Any) -> TorchStorage:
        # the pre-zip layout appends view metadata, None unless a storage view was saved
        if (
            not isinstance(pid, tuple)
            or len(pid) not in (5, 6)
            or pid[0] != "storage"
            or pid[5:] not in ((), (None,))
        ):
            raise UnsafeContentError(
                f"{where} holds a persistent id {pid!r:.80}; only storages "
                "('storage', <type>, key, location, numel) are accepted."
            )
        _, kind, key, _location, numel = pid[:5]
        if not isinstance(key, str) or type(numel) is not int or numel < 0:
            raise FormatError(f"{where} holds a malformed storage id {pid!r:.80}.")
        dtype = storage_dtype(kind)
        known = storages.get(key)
        if known is None:
            known = storages[key] = TorchStorage(key, dtype, numel)
        elif dtype == UNTYPED and known.nbytes == numel:
            pass  # an untyped storage a v3 tensor already gave its dtype
        elif known.dtype != dtype or known.numel != numel:
            raise FormatError(f"{where} describes storage {key!r} twice, differently.")
        return known

    return resolve


def _check_ratio(infos: list[zipfile.ZipInfo], where: str) -> None:
    """Apply the archive's ratio rule to the deflated members of one inner zip together.

    Each member under :data:`~polybundle.format.archive.RATIO_FLOOR` is exempt on its
    own, so 1,024 deflated 1 MiB storages of zeros pass one by one; their sum
    does not. ``torch.save`` never deflates, so only a re-packed file has any.
    """
    deflated = [info for info in infos if info.compress_type == zipfile.ZIP_DEFLATED]
    total = sum(info.file_size for info in deflated)
    packed = sum(info.compress_size for info in deflated)
    if total > RATIO_FLOOR and total > MAX_RATIO * max(packed, 1):
        raise UnsafeContentError(
            f"{where}: its {len(deflated)} deflated members declare {total} bytes from "
            f"{packed} compressed (over {MAX_RATIO}:1 together); that is a decompression "
            "bomb, not model weights (torch.save does not compress). Refused before "
            "decompressing; re-save the weights with torch.save."
        )


def _locate_storages(
    storages: dict[str, TorchStorage], sizes: dict[str, int], prefix: str, where: str
) -> None:
    """Point each storage at ``<prefix>/data/<key>``, which must hold its declared bytes.

    The member must hold exactly the declared elements' bytes, as
    ``torch.load`` also requires.
    """
    for key, storage in storages.items():
        storage.member = f"{prefix}data/{key}"
        check_member_name(storage.member)
        size = sizes.get(storage.member)
        if size is None:
            raise FormatError(
                f"{where} describes storage {key!r} but holds no member {storage.member!r}; "
                "the weights file is damaged."
            )
        if size != storage.nbytes:
            raise FormatError(
                f"{where}: storage {key!r} declares {storage.numel} x {storage.dtype} "
                f"({storage.nbytes} bytes) but its member {storage.member!r} holds {size} "
                "bytes; the weights file is damaged or hostile. Refused before reading."
            )


def _zip_state(inner: NestedZip, where: str) -> Any:
    """Unpickle ``<prefix>/data.pkl``; locate each storage at ``<prefix>/data/<key>``."""
    infos = inner.infolist()
    names = [info.filename for info in infos]
    if len(names) > MAX_WEIGHTS_MEMBERS:
        raise UnsafeContentError(f"{where} holds {len(names)} members; refused.")
    if len(set(names)) != len(names):
        raise UnsafeContentError(f"{where} holds a member name twice; refused.")
    _check_ratio(infos, where)
    sizes = {info.filename: info.file_size for info in infos}
    pickles = [name for name in names if name.endswith("/data.pkl") and name.count("/") == 1]
    if len(pickles) != 1:
        raise FormatError(
            f"{where} holds {len(pickles)} '<prefix>/data.pkl' members; expected exactly one "
            "(a file written by torch.save)."
        )
    prefix = pickles[0][: -len("data.pkl")]
    byteorder = "little"
    if f"{prefix}byteorder" in names:
        with inner.open(f"{prefix}byteorder") as stream:
            byteorder = stream.read(16).decode("ascii", "replace")
    if byteorder not in ("little", "big"):
        raise FormatError(f"{where} says byteorder {byteorder!r}; expected 'little' or 'big'.")
    if sizes[pickles[0]] > MAX_PICKLE_BYTES:
        raise UnsafeContentError(f"{where}: data.pkl is over {MAX_PICKLE_BYTES} bytes; refused.")
    budget.charge(sizes[pickles[0]], f"{where} {pickles[0]}")
    with inner.open(pickles[0]) as stream:
        payload = stream.read(sizes[pickles[0]] + 1)
    if len(payload) != sizes[pickles[0]]:
        raise FormatError(
            f"{where}: {pickles[0]} holds {len(payload)} bytes, not the {sizes[pickles[0]]} "
            "its zip record declares; the weights file is damaged."
        )
    storages: dict[str, TorchStorage] = {}
    state = safe_loads(
        payload,
        where=where,
        allowed=TORCH_WEIGHTS,
        persistent=_storage_resolver(storages, where),
        raw=True,
    )
    _locate_storages(storages, sizes, prefix, where)
    for storage in storages.values():
        storage.byteorder = byteorder
    return state


def _next_pickle(data: bytes, offset: int, where: str, **options: Any) -> tuple[Any, int]:
    end = scan(data, where=where, start=offset, persistent="persistent" in options)
    return safe_loads(data[offset:end], where=where, raw=True, **options), end


def _stream_state(data: bytes, where: str) -> Any:
    """Unpickle the pre-zip layout; locate each storage's bytes after the pickles."""
    magic, offset = _next_pickle(data, 0, where)
    protocol, offset = _next_pickle(data, offset, where)
    system, offset = _next_pickle(data, offset, where)
    if magic != LEGACY_MAGIC or protocol != 1001 or not isinstance(system, dict):
        raise FormatError(f"{where} is not a PyTorch file: its header is not torch's.")
    if system.get("little_endian") is not True:
        raise FormatError(f"{where} was written on a big-endian machine; not supported.")
    storages: dict[str, TorchStorage] = {}
    main, offset = _next_pickle(
        data, offset, where, allowed=TORCH_WEIGHTS, persistent=_storage_resolver(storages, where)
    )
    keys, offset = _next_pickle(data, offset, where)
    if not isinstance(keys, list) or len(keys) != len(storages) or set(keys) != set(storages):
        raise FormatError(f"{where} lists storages that its pickle does not use, or the reverse.")
    for key in keys:
        storage = storages[key]
        count = int.from_bytes(data[offset : offset + 8], "little")
        size = storage.nbytes
        if count != storage.numel or offset + 8 + size > len(data):
            raise FormatError(f"{where}: storage {key!r} is truncated or lies about its size.")
        storage.start = offset + 8
        offset += 8 + size
    if offset != len(data):
        raise FormatError(f"{where} has {len(data) - offset} unexpected bytes at its end.")
    return main


def _flatten(value: Any, prefix: str, out: dict[str, TorchTensor], where: str) -> None:
    if isinstance(value, TorchTensor):
        if prefix in out:
            raise FormatError(f"{where} names tensor {prefix!r} twice.")
        out[prefix] = value
    elif isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise FormatError(
                    f"{where} has a non-string key {key!r:.60}; expected a state_dict."
                )
            _flatten(item, f"{prefix}.{key}" if prefix else key, out, where)
    else:
        raise FormatError(
            f"{where} holds a {type(value).__name__} at {prefix or 'the top'}; expected a "
            "state_dict (a dict of tensors), as torch.save(model.state_dict()) writes."
        )


class _PthFile:
    """One opened weights file: its unpickled state and the way to its storages."""

    def __init__(self, source: Source, where: str) -> None:
        self.where = where
        self.container = _container(source)
        self.container.seek(0)
        self.inner: NestedZip | None = None
        if self.container.read(4) == b"PK\x03\x04":
            self.inner = NestedZip(self.container)
            self.state = _zip_state(self.inner, where)
        else:
            self.state = _stream_state(self._whole(), where)

    def _whole(self) -> bytes:
        """Return the whole file (the pre-zip layout is parsed in memory), charged first."""
        if isinstance(self.container, io.BytesIO):
            return self.container.getvalue()  # already in memory: no copy
        size = self.container.seek(0, io.SEEK_END)
        budget.charge(size, f"{self.where} (a pre-zip PyTorch file)")
        self.container.seek(0)
        return self.container.read()

    def tensors(self) -> dict[str, TorchTensor]:
        """Return the state_dict's tensors by (``.``-joined) name, storages unread."""
        tensors: dict[str, TorchTensor] = {}
        state = finalize(self.state, where=self.where, leaves=keep_tensor)
        _flatten(state, "", tensors, self.where)
        return tensors

    def checked(
        self, specs: Sequence[TensorSpec] | None, views: TensorViews
    ) -> dict[str, TorchTensor]:
        """Return :meth:`tensors` once each passes the manifest and ``views``; read nothing."""
        tensors = self.tensors()
        if specs is not None:
            check_index(
                specs,
                {key: (tensor.shape, tensor.storage.dtype) for key, tensor in tensors.items()},
                where=self.where,
            )
        for tensor in tensors.values():
            views.admit(tensor)
        return tensors

    @contextlib.contextmanager
    def _open(self, storage: TorchStorage) -> Iterator[BinaryIO | MemberRange]:
        """Yield a stream positioned at the storage's first byte."""
        if self.inner is None:
            self.container.seek(storage.start)
            yield self.container
        else:
            with self.inner.open(storage.member) as stream:
                yield stream

    def read(self, storage: TorchStorage) -> np.ndarray:
        """Read the storage's elements into a new array in native byte order (charged first)."""
        with self._open(storage) as stream:
            array = read_array(stream, (storage.numel,), _numpy_dtype(storage.dtype),
                               what=f"{self.where} storage {storage.key!r}")
        return array.byteswap() if storage.byteorder != _NATIVE else array

    def position(self, storage: TorchStorage) -> int | None:
        """Return where the storage's bytes start in the file, or None (a deflated member)."""
        if self.inner is None:
            return storage.start
        with self.inner.open(storage.member) as stream:
            if isinstance(stream, MemberRange) and isinstance(self.container, MemberRange):
                return stream.offset - self.container.offset
        return None

    def fill(self, storage: TorchStorage, target: np.ndarray, position: int | None) -> None:
        """Read the storage's bytes into ``target`` (its ``nbytes`` as uint8), native order.

        A STORED storage is read through the file itself at ``position``
        (:meth:`position`), so a stream that hashes what it reads in order
        sees its bytes.
        """
        what = f"{self.where} storage {storage.key!r}"
        if position is None:
            with self._open(storage) as stream:
                _read_fully(stream, memoryview(target), what)
        else:
            self.container.seek(position)
            _read_fully(self.container, memoryview(target), what)
        if storage.byteorder != _NATIVE and storage.itemsize > 1:
            target.view(_numpy_dtype(storage.dtype)).byteswap(inplace=True)

    def drain(self, start: int) -> None:
        """Read from ``start`` to the end of the file (the zip records after the storages).

        A front-to-back reader ends here, so a stream that checks a digest
        when it is read to its end gives its verdict now.
        """
        self.container.seek(start)
        scratch = memoryview(bytearray(256 * 1024))
        while self.container.readinto(scratch):
            pass

    def map(self, storage: TorchStorage, mapped: mmap.mmap) -> np.ndarray:
        """Return the storage's elements as a read-only window of ``mapped``."""
        dtype = _numpy_dtype(storage.dtype)
        if storage.byteorder != _NATIVE:
            raise FormatError(
                f"{self.where} is {storage.byteorder}-endian; memory mapping views bytes as "
                "they are stored."
            )
        with self._open(storage) as stream:
            if not isinstance(stream, MemberRange) or stream.size() < (
                storage.start + storage.numel * dtype.itemsize
            ):
                raise FormatError(
                    f"storage {storage.key!r} of {self.where} is compressed or short; memory "
                    "mapping needs STORED storages (as torch.save writes them)."
                )
            start = stream.offset + stream.tell()
        return np.frombuffer(mapped, dtype=dtype, count=storage.numel, offset=start)


def index_pth(source: Source, *, where: str = "model.pth") -> dict[str, TorchTensor]:
    """Return where each tensor of a weights file lies, reading no tensor bytes.

    Each :class:`~polybundle_torch.pickle_vocabulary.TorchTensor` gives ``offset``,
    ``shape`` and ``strides`` (in elements) and its ``storage``: ``member``
    (the zip member with the bytes; ``""`` in the pre-zip layout, where they
    lie at byte ``start`` of the file), ``dtype``, ``numel`` and
    ``byteorder``. Tensors sharing a storage share one object.

    Example:
        >>> buffer = io.BytesIO()
        >>> torch.save({"w": torch.ones(2, 3), "wt": torch.ones(2, 3).t()}, buffer)
        >>> index = index_pth(buffer)
        >>> entry = index["w"]
        >>> entry.storage.member, entry.storage.dtype, entry.shape, entry.strides
        ('archive/data/0', 'float32', (2, 3), (3, 1))
        >>> index["wt"].shape, index["wt"].strides  # a transposed view of its own storage
        ((3, 2), (1, 3))
    """
    with _reading(where):
        return _PthFile(source, where).checked(None, TensorViews(where, copy=False))


def read_pth(
    source: Source,
    *,
    where: str = "model.pth",
    mapped: mmap.mmap | None = None,
    specs: Sequence[TensorSpec] | None = None,
) -> dict[str, np.ndarray]:
    """Return the tensors of the state_dict in the weights file ``source`` by name.

    ``source`` is the file's bytes or a seekable binary file: an open
    ``model.pth``, a bundle member, or a :class:`io.BytesIO`. Both torch
    layouts are read; torch is never imported, and the pickle can only
    rebuild tensors. Nested dicts are flattened with ``.``. ``where`` names
    the file in errors. Given ``mapped``, a read-only memory map of the file
    ``source`` lies in, tensors are read-only views of it and no bytes are
    read now. Given ``specs`` (the manifest's
    :class:`~polybundle.model.backend.TensorSpec` list), the file must hold exactly
    those tensors (by ``key``) with those shapes and dtypes, checked before
    any storage is read. Raises only :class:`~polybundle.errors.PolybundleError`
    subclasses (:class:`~polybundle.errors.IntegrityError` for a manifest
    mismatch).

    Example:
        >>> buffer = io.BytesIO()
        >>> torch.save({"w": torch.ones(2)}, buffer)
        >>> read_pth(buffer)["w"]
        array([1., 1.], dtype=float32)
        >>> old = io.BytesIO()  # the pre-zip layout reads the same
        >>> torch.save({"w": torch.ones(2)}, old, _use_new_zipfile_serialization=False)
        >>> read_pth(old.getvalue())["w"]
        array([1., 1.], dtype=float32)
    """
    with _reading(where):
        pth = _PthFile(source, where)
        views = TensorViews(where, copy=mapped is None)
        tensors = pth.checked(specs, views)
        for storage in {id(t.storage): t.storage for t in tensors.values()}.values():
            storage.array = pth.read(storage) if mapped is None else pth.map(storage, mapped)
        return {name: views.array(tensor) for name, tensor in tensors.items()}


def _read_fully(stream: Any, view: memoryview, what: str) -> None:
    """Fill ``view`` from ``stream``; a stream that ends first is a :class:`FormatError`."""
    done = 0
    while done < len(view):
        count = stream.readinto(view[done:])
        if not count:
            raise FormatError(
                f"{what} ends after {done} of {len(view)} bytes; the file is truncated or damaged."
            )
        done += count


def fill_pth(
    source: Source,
    allocate: Callable[[TorchStorage], np.ndarray],
    *,
    where: str = "model.pth",
    specs: Sequence[TensorSpec] | None = None,
) -> dict[str, TorchTensor]:
    """Read every storage of a weights file straight into memory ``allocate`` gives; no torch.

    The file is checked as :func:`read_pth` checks it (allow-listed pickle,
    geometry, sizes, ``specs``) before any storage is allocated; then each
    storage's bytes are charged to the budget, ``allocate(storage)`` returns a
    writable ``uint8`` array of ``storage.nbytes`` (a framework's own tensor
    memory, seen through NumPy) and the bytes are read into it, in native byte
    order. The file is read once, front to back and to its end, so a
    :class:`~polybundle.format.verified.VerifiedMember` source has checked its
    digest (and raised on a mismatch) by the time this returns. Returns the
    tensors by name; each one's ``storage`` is the one its memory was given for.

    Example:
        >>> buffer = io.BytesIO()
        >>> torch.save({"w": torch.arange(4.0)}, buffer)
        >>> memory = {}
        >>> def allocate(storage):
        ...     memory[storage.key] = np.empty(storage.nbytes, np.uint8)
        ...     return memory[storage.key]
        >>> index = fill_pth(buffer, allocate)
        >>> memory[index["w"].storage.key].view(np.float32).tolist()
        [0.0, 1.0, 2.0, 3.0]
    """
    with _reading(where):
        pth = _PthFile(source, where)
        tensors = pth.checked(specs, TensorViews(where, copy=False))
        unique = {id(t.storage): t.storage for t in tensors.values()}.values()
        for storage in unique:
            budget.charge(storage.nbytes, f"{where} storage {storage.key!r}")
        located = sorted(
            ((pth.position(storage), storage) for storage in unique),
            key=lambda item: (item[0] is None, item[0] or 0),
        )
        end = 0
        for position, storage in located:
            pth.fill(storage, allocate(storage), position)
            if position is not None:
                end = max(end, position + storage.nbytes)
        if pth.inner is not None:
            pth.drain(end)
        return tensors


def torch_zip_prefix(names: list[str]) -> str | None:
    """Return ``<prefix>`` when ``names`` are the members of a ``torch.save`` zip, else None.

    Every member lies in one folder, which holds ``data.pkl``; storages are
    ``data/<n>`` and the rest are torch's small records (``version``,
    ``byteorder``, ``.data/...``).

    Example:
        >>> torch_zip_prefix(["net/data.pkl", "net/data/0", "net/version", "net/byteorder"])
        'net'
        >>> torch_zip_prefix(["manifest.json", "net/model.pth"]) is None
        True
    """
    prefixes = {name.partition("/")[0] for name in names}
    if len(prefixes) != 1 or any("/" not in name for name in names):
        return None
    prefix = prefixes.pop()
    if f"{prefix}/data.pkl" not in names:
        return None
    for name in names:
        rest = name[len(prefix) + 1 :]
        if rest.startswith("data/") and not rest[5:].isdigit():
            return None
    return prefix


def whole_model_hint(source: Source, where: str, exc: UnsafeContentError) -> str:
    """Return ``exc``'s message, with "save a state_dict" when ``torch.save(model)`` wrote it.

    A whole pickled ``nn.Module`` names ``torch.nn.modules.*`` (or
    ``__main__.*``) classes in its ``data.pkl``; those names are listed by a
    static scan, nothing is unpickled.

    Example:
        >>> whole_model_hint(b"not a zip", "net.pth", UnsafeContentError("refused"))
        'refused'
    """
    try:
        container = _container(source)
        container.seek(0)
        inner = NestedZip(container)
        pickle_name = next(n for n in inner.names() if n.endswith("/data.pkl"))
        with inner.open(pickle_name) as stream:
            names = list_globals(stream.read(MAX_PICKLE_BYTES), where=where)
    except (PolybundleError, StopIteration, OSError, ValueError):
        return str(exc)
    modules = [name for name in names if name.startswith(("torch.nn.modules.", "__main__."))]
    if not modules:
        return str(exc)
    return (
        f"{where} holds a whole pickled model ({', '.join(modules[:4])}), as torch.save(model) "
        "writes it; unpickling it would import and run code, so polybundle does not. Save "
        "the weights instead: torch.save(model.state_dict(), path), then load them with a "
        f"builder (@polybundle.architecture({PLAIN_ROLE!r}, backend='torch')) or "
        f"into={{{PLAIN_ROLE!r}: model}}. ({exc})"
    )


def describe_pth(source: Source, *, where: str = "model.pth") -> list[TensorSpec]:
    """Describe the tensors of a plain ``torch.save(state_dict)`` file from its pickle alone.

    A state_dict says nothing about what its axes mean, so layouts are
    ``opaque`` (``scalar`` for 0-d tensors). A whole pickled model is refused
    with :class:`~polybundle.errors.UnsafeContentError` saying to save a
    state_dict instead (:func:`whole_model_hint`).

    Example:
        >>> import io, pickle
        >>> describe_pth(io.BytesIO(pickle.dumps(1)))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        polybundle.errors.FormatError: ...
    """
    try:
        index = index_pth(source, where=where)
    except UnsafeContentError as exc:
        raise UnsafeContentError(whole_model_hint(source, where, exc)) from None
    return [
        TensorSpec(name, name, tuple(t.shape), t.storage.dtype, OPAQUE if t.shape else SCALAR)
        for name, t in index.items()
    ]


def read_pickled_storage(data: bytes) -> TorchStorage:
    """Read the bytes given to ``torch.storage._load_from_bytes`` (a pickled storage).

    Used by :mod:`polybundle_torch.legacy_eras` for tensors pickled into params files.

    Example:
        >>> import warnings
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore", UserWarning)  # TypedStorage is deprecated
        ...     rebuild, (blob,) = torch.tensor([1.0, 2.0]).storage().__reduce__()
        >>> rebuild.__name__
        '_load_from_bytes'
        >>> read_pickled_storage(blob).array
        array([1., 2.], dtype=float32)
    """
    where = "a pickled torch storage"
    with _reading(where):
        pth = _PthFile(data, where)
        if not isinstance(pth.state, TorchStorage):
            raise UnsafeContentError("torch.storage._load_from_bytes did not hold a storage.")
        pth.state.array = pth.read(pth.state)
        return pth.state
