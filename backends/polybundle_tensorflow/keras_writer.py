"""Write a Keras 3 ``.keras`` file in one pass, each weight's bytes from its variable to the stream.

Keras' own saver builds ``model.weights.h5`` in memory (h5py into a
``BytesIO``, each variable copied to NumPy first), copies it out, computes
its CRC-32 with zlib and only then writes it, so whoever hashes the stream
waits for all of that. Here h5py lays out the same file (the same groups,
``name`` attributes, dataset names, types and shapes Keras' saver makes:
:func:`polybundle_tensorflow.keras_compat.saved_state` runs Keras' own walk)
but without the bytes of the large datasets: they are allocated, never
filled (:class:`HDF5Skeleton` keeps only the metadata HDF5 writes). The zip
is then written front to back, each large dataset's bytes straight from a
read-only view of its variable (:func:`polybundle_tensorflow.tensors.host_view`)
into the stream, where the bundle's digest and CRC-32 follow them, with the
inner CRC-32 computed on the way (:func:`polybundle.format.crc.crc32`).

The result is a ``.keras`` file as Keras writes it (members ``metadata.json``,
``config.json``, ``model.weights.h5``, STORED) that ``keras.saving.load_model``
opens. Models that store assets (text vectorization vocabularies) or values
that are not plain numbers are left to Keras' own saver (:func:`streamable`).

Example:
    >>> import keras
    >>> net = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="fc")], name="net")
    >>> with open("net.keras", "wb") as stream:
    ...     write_keras(net, stream)
    >>> loaded = keras.saving.load_model("net.keras")
    >>> [np.array_equal(a, b) for a, b in zip(loaded.get_weights(), net.get_weights())]
    [True, True]
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

from polybundle.format import crc
from polybundle_tensorflow import keras_compat
from polybundle_tensorflow.keras_file import CONFIG_JSON, METADATA_JSON, WEIGHTS_H5
from polybundle_tensorflow.tensors import host_view

DEFERRED_BYTES = 64 * 1024
"""Datasets of at least this many bytes are allocated by HDF5 and written by this module."""

CHUNK_BYTES = 4 * 1024 * 1024
"""Bytes written (and CRC'd) at a time: small enough to stay in the CPU cache between passes."""

_PAGE = 4096
_DATE = (1980, 1, 1, 0, 0, 0)


class HDF5Skeleton(io.RawIOBase):
    """A seekable file in memory that keeps only the pages written to it; the rest reads as zeros.

    h5py writes an HDF5 file into it (its ``fileobj`` driver) whose large
    datasets are allocated but never filled, so only the file's metadata
    (and small datasets) takes memory. :attr:`size` is the file's length.

    Example:
        >>> skeleton = HDF5Skeleton()
        >>> _ = skeleton.seek(10_000)
        >>> skeleton.write(b"hdf")
        3
        >>> skeleton.size, len(skeleton.pages), skeleton.read_range(9_999, 4)
        (10003, 1, b'\\x00hdf')
    """

    def __init__(self) -> None:
        super().__init__()
        self.pages: dict[int, bytearray] = {}
        self.size = 0
        self._position = 0

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self.size}[whence]
        self._position = base + offset
        return self._position

    def truncate(self, size: int | None = None) -> int:
        self.size = self._position if size is None else size
        for page in [page for page in self.pages if page * _PAGE >= self.size]:
            del self.pages[page]
        return self.size

    def write(self, data: Any) -> int:  # type: ignore[override]
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            page, start = divmod(self._position + done, _PAGE)
            count = min(_PAGE - start, len(view) - done)
            buffer = self.pages.setdefault(page, bytearray(_PAGE))
            buffer[start : start + count] = view[done : done + count]
            done += count
        self._position += done
        self.size = max(self.size, self._position)
        return done

    def readinto(self, buffer: Any) -> int:  # type: ignore[override]
        target = memoryview(buffer).cast("B")
        data = self.read_range(self._position, min(len(target), max(0, self.size - self._position)))
        target[: len(data)] = data
        self._position += len(data)
        return len(data)

    def read_range(self, start: int, count: int) -> bytes:
        """Return ``count`` bytes from ``start`` (zeros where nothing was written)."""
        out = bytearray(count)
        done = 0
        while done < count:
            page, offset = divmod(start + done, _PAGE)
            step = min(_PAGE - offset, count - done)
            stored = self.pages.get(page)
            if stored is not None:
                out[done : done + step] = stored[offset : offset + step]
            done += step
        return bytes(out)


@dataclass(frozen=True)
class Deferred:
    """A dataset HDF5 allocated at ``offset`` of the weights file and this module fills.

    Example:
        >>> Deferred(2048, np.zeros(3, "float32")).end
        2060
    """

    offset: int
    array: np.ndarray

    @property
    def end(self) -> int:
        """Return the offset just past the dataset's bytes."""
        return self.offset + self.array.nbytes


@dataclass(frozen=True)
class WeightsLayout:
    """``model.weights.h5`` ready to stream: its metadata pages and the datasets to fill.

    Example: see :func:`layout_weights`.
    """

    skeleton: HDF5Skeleton
    deferred: list[Deferred]

    @property
    def size(self) -> int:
        """Return the weights file's length in bytes."""
        return self.skeleton.size

    def chunks(self) -> Iterator[memoryview]:
        """Yield the weights file's bytes front to back, at most :data:`CHUNK_BYTES` at a time."""
        position = 0
        for item in [*self.deferred, None]:
            start = self.size if item is None else item.offset
            while position < start:
                count = min(CHUNK_BYTES, start - position)
                yield memoryview(self.skeleton.read_range(position, count))
                position += count
            if item is not None:
                flat = memoryview(item.array.reshape(-1).view(np.uint8))
                for begin in range(0, len(flat), CHUNK_BYTES):
                    yield flat[begin : begin + CHUNK_BYTES]
                position = item.end


def _plain(value: Any) -> np.ndarray:
    """Return a saved value as a C-ordered, native-endian array (a view of a variable if it can)."""
    array = host_view(value)
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    # not np.ascontiguousarray, which turns a scalar (shape ()) into shape (1,)
    return array if array.flags.c_contiguous else array.copy(order="C")


def _dataset_plist() -> Any:
    """Return the creation properties of a dataset HDF5 allocates now and never fills."""
    from h5py import h5d, h5p

    plist = h5p.create(h5p.DATASET_CREATE)
    plist.set_alloc_time(h5d.ALLOC_TIME_EARLY)
    plist.set_fill_time(h5d.FILL_TIME_NEVER)
    return plist


def layout_weights(groups: list[keras_compat.SavedGroup]) -> WeightsLayout:
    """Lay out ``model.weights.h5`` as Keras' ``H5IOStore`` does, leaving large datasets unfilled.

    Each visited object with a name gets its ``<path>/vars`` group and that
    ``name`` attribute; each stored value becomes dataset ``<path>/vars/<slot>``
    of its own dtype and shape (bfloat16 tagged ``dtype="bfloat16"``, as
    Keras tags it). Values under :data:`DEFERRED_BYTES` are written by h5py.

    Example:
        >>> import h5py
        >>> from polybundle_tensorflow.keras_compat import SavedGroup
        >>> big = np.arange(20_000, dtype="float32")
        >>> layout = layout_weights([SavedGroup("", "net", {}),
        ...                          SavedGroup("layers/dense", "fc", {"0": big})])
        >>> data = b"".join(bytes(chunk) for chunk in layout.chunks())
        >>> with h5py.File(io.BytesIO(data), "r") as h5:
        ...     h5["vars"].attrs["name"], np.array_equal(h5["layers/dense/vars/0"][()], big)
        ('net', True)
    """
    import h5py

    plist = _dataset_plist()
    skeleton = HDF5Skeleton()
    deferred: list[Deferred] = []
    with h5py.File(skeleton, "w") as h5:
        for group in groups:
            if group.name is None and not group.values:
                continue
            vars_group = (
                h5.create_group("vars") if not group.path
                else h5.create_group(group.path).create_group("vars")
            )
            if group.name is not None:
                vars_group.attrs["name"] = group.name
            for slot, value in group.values.items():
                array = _plain(value)
                if array.ndim and array.nbytes >= DEFERRED_BYTES:
                    dataset = vars_group.create_dataset(
                        slot, shape=array.shape, dtype=array.dtype, dcpl=plist
                    )
                    deferred.append(Deferred(int(dataset.id.get_offset()), array))
                else:
                    dataset = vars_group.create_dataset(slot, data=array)
                if array.dtype.name == "bfloat16":
                    dataset.attrs["dtype"] = "bfloat16"
    deferred.sort(key=lambda item: item.offset)
    return WeightsLayout(skeleton, deferred)


def streamable(model: Any, groups: list[keras_compat.SavedGroup]) -> bool:
    """Return True when :func:`write_keras` can write ``model`` (no assets, plain values only).

    Example:
        >>> import keras
        >>> net = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        >>> streamable(net, keras_compat.saved_state(net))
        True
    """
    if any(hasattr(layer, "save_assets") for layer in model._flatten_layers(include_self=True)):
        return False
    return all(
        _plain(value).dtype.kind in "biuf" or _plain(value).dtype.name == "bfloat16"
        for group in groups
        for value in group.values.values()
    )


def _info(name: str, size: int = 0) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_DATE)
    info.compress_type = zipfile.ZIP_STORED
    info.file_size = size
    return info


def write_keras(model: Any, stream: BinaryIO) -> None:
    """Write ``model`` as a ``.keras`` file to the binary ``stream``, weights streamed once.

    ``config.json`` and ``metadata.json`` are Keras' own serialisation;
    ``model.weights.h5`` is laid out by :func:`layout_weights`. A model
    :func:`streamable` refuses is saved by Keras' own saver. Example: see
    the module docstring.
    """
    groups = keras_compat.saved_state(model)
    if not streamable(model, groups):
        keras_compat.save_model(model, stream)
        return
    config, metadata = keras_compat.serialized_members(model)
    layout = layout_weights(groups)
    with zipfile.ZipFile(stream, "w") as archive:
        archive.writestr(_info(METADATA_JSON), metadata.encode())
        archive.writestr(_info(CONFIG_JSON), config.encode())
        with archive.open(_info(WEIGHTS_H5, layout.size), "w") as member:
            checksum = 0
            for chunk in layout.chunks():
                checksum = crc.crc32(chunk, checksum)
                stream.write(chunk)
            # zipfile takes the member's size and CRC from these on close (as ArchiveWriter does)
            member._file_size = member._compress_size = layout.size
            member._crc = checksum

