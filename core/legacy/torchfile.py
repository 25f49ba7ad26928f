"""Read PyTorch weights files into NumPy arrays without importing torch.

Two layouts exist: the zip layout of ``torch.save`` (``<prefix>/data.pkl``
plus one ``<prefix>/data/<key>`` member per storage) and the older stream
layout (magic number, protocol, system info, the object's pickle, the
storage keys, then each storage's bytes), which is also what a tensor
pickled inside ``params.dill`` carries. Both pickles are read with
:mod:`polybundle.unpickle`'s allow-list; nothing is executed.

Example:
    >>> state = read_torch_file(open("model.pth", "rb").read(), where="model.pth")  # doctest: +SKIP
    >>> state["0.weight"].shape
    (8, 1, 3, 3)
"""

from __future__ import annotations

import io
import zipfile
from typing import Any

import numpy as np

from ..archive import check_member_kind, check_member_name
from ..errors import FormatError, PolybundleError, UnsafeContentError
from ..unpickle import TORCH_WEIGHTS, TorchStorage, finalize, safe_loads, scan, storage_dtype

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
"""The first value pickled in PyTorch's pre-zip file layout."""

MAX_WEIGHTS_MEMBERS = 100_000
"""Most members accepted inside a PyTorch zip weights file."""


def _storage_resolver(storages: dict[str, TorchStorage], where: str):
    def resolve(pid: Any) -> TorchStorage:
        if not isinstance(pid, tuple) or len(pid) < 5 or pid[0] != "storage":
            raise UnsafeContentError(
                f"{where} holds a persistent id {pid!r:.80}; expected a storage."
            )
        _, kind, key, _location, numel = pid[:5]
        if not isinstance(key, str) or type(numel) is not int or numel < 0:
            raise FormatError(f"{where} holds a malformed storage id {pid!r:.80}.")
        dtype = storage_dtype(kind)
        known = storages.get(key)
        if known is None:
            known = storages[key] = TorchStorage(key, dtype, numel)
        elif known.dtype != dtype or known.numel != numel:
            raise FormatError(f"{where} describes storage {key!r} twice, differently.")
        return known

    return resolve


def _check_state(value: Any, where: str) -> dict[str, np.ndarray]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, np.ndarray) for k, v in value.items()
    ):
        raise FormatError(
            f"{where} does not hold a state_dict (a dict of tensors keyed by name); expected "
            "a file written by torch.save(model.state_dict())."
        )
    return dict(value)


def _next_pickle(data: bytes, offset: int, where: str, **options: Any) -> tuple[Any, int]:
    end = scan(data, where=where, start=offset, persistent="persistent" in options)
    return safe_loads(data[offset:end], where=where, raw=True, **options), end


def _read_stream_layout(data: bytes, where: str) -> tuple[Any, dict[str, TorchStorage]]:
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
    if not isinstance(keys, list) or set(keys) != set(storages):
        raise FormatError(f"{where} lists storages that its pickle does not use, or the reverse.")
    for key in keys:
        storage = storages[key]
        count = int.from_bytes(data[offset : offset + 8], "little")
        itemsize = np.dtype("uint16" if storage.dtype == "bfloat16" else storage.dtype).itemsize
        size = count * itemsize
        if count != storage.numel or offset + 8 + size > len(data):
            raise FormatError(f"{where}: storage {key!r} is truncated or lies about its size.")
        storage.data = data[offset + 8 : offset + 8 + size]
        offset += 8 + size
    if offset != len(data):
        raise FormatError(f"{where} has {len(data) - offset} unexpected bytes at its end.")
    return main, storages


def read_pickled_storage(data: bytes) -> TorchStorage:
    """Read the bytes of ``torch.storage._load_from_bytes`` (a pickled storage).

    Example:
        >>> read_pickled_storage(blob).dtype  # doctest: +SKIP
        'float32'
    """
    main, _ = _read_stream_layout(data, "a pickled torch storage")
    if not isinstance(main, TorchStorage):
        raise UnsafeContentError("torch.storage._load_from_bytes did not hold a storage.")
    return main


def _read_zip_layout(data: bytes, where: str) -> tuple[Any, dict[str, TorchStorage]]:
    try:
        inner = zipfile.ZipFile(io.BytesIO(data))
        infos = inner.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError) as exc:
        raise FormatError(f"{where} is not a readable PyTorch zip ({exc}).") from None
    if len(infos) > MAX_WEIGHTS_MEMBERS:
        raise UnsafeContentError(f"{where} holds {len(infos)} members; refused.")
    by_name = {}
    for info in infos:
        check_member_name(info.filename)
        check_member_kind(info)
        if info.filename in by_name:
            raise UnsafeContentError(f"{where} holds member {info.filename!r} twice.")
        by_name[info.filename] = info
    pickles = [name for name in by_name if name.endswith("/data.pkl") and name.count("/") == 1]
    if len(pickles) != 1:
        raise FormatError(f"{where} has no single '<name>/data.pkl'; it is not a torch.save file.")
    prefix = pickles[0][: -len("data.pkl")]

    def member(name: str) -> bytes:
        info = by_name.get(name)
        if info is None:
            raise FormatError(f"{where} lacks member {name!r}, which its pickle refers to.")
        try:
            return inner.read(info)
        except Exception as exc:  # BadZipFile (CRC), zlib.error, EOFError
            raise FormatError(f"{where}: member {name!r} is damaged ({exc}).") from None

    byteorder = member(prefix + "byteorder") if prefix + "byteorder" in by_name else b"little"
    if byteorder != b"little":
        raise FormatError(f"{where} was written with byte order {byteorder!r}; not supported.")
    storages: dict[str, TorchStorage] = {}
    main = safe_loads(
        member(pickles[0]),
        where=where,
        allowed=TORCH_WEIGHTS,
        persistent=_storage_resolver(storages, where),
        raw=True,
    )
    for key, storage in storages.items():
        check_member_name(key)
        storage.data = member(f"{prefix}data/{key}")
    return main, storages


def read_torch_file(data: bytes, *, where: str) -> dict[str, np.ndarray]:
    """Return the state_dict in a PyTorch weights file as ``{name: numpy array}``.

    Accepts both the zip and the older stream layout; never imports torch.
    Raises only :class:`polybundle.errors.PolybundleError` subclasses.

    Example:
        >>> sorted(read_torch_file(blob, where="net/model.pth"))[:2]  # doctest: +SKIP
        ['0.bias', '0.weight']
    """
    try:
        if data[:4] == b"PK\x03\x04":
            main, _ = _read_zip_layout(data, where)
        else:
            main, _ = _read_stream_layout(data, where)
        return _check_state(finalize(main, where=where), where)
    except PolybundleError:
        raise
    except (ValueError, TypeError, OverflowError, MemoryError) as exc:
        raise FormatError(f"{where} could not be read ({type(exc).__name__}: {exc}).") from None
