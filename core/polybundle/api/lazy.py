"""Lazy tensors: read-only NumPy arrays memory-mapped straight from a bundle.

The weights members are STORED, so each tensor's bytes lie at a fixed offset
of the bundle file: inside ``model.pth`` every storage is its own STORED
member ``<prefix>/data/<key>``, and inside ``model.keras`` the datasets of
``model.weights.h5`` are contiguous at offsets h5py reports. One read-only
``mmap`` of the bundle backs every array, so opening a role reads only the
small index (``data.pkl`` or the HDF5 metadata), and a tensor's pages are
read when it is first touched. Neither torch nor TensorFlow is imported.

Example:
    >>> bundle = polybundle.load("big.bundle", lazy=True)  # doctest: +SKIP
    >>> weight = bundle.tensors("net")["0.weight"]  # nothing read yet
    >>> float(weight[0, 0])  # reads one page
    0.0123
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Callable, Iterator, Mapping

import numpy as np

from polybundle.errors import FormatError
from polybundle.format.archive import ArchiveReader, MemberRange
from polybundle.model.backend import TensorSpec
from polybundle.safety import budget
from polybundle_tensorflow.keras_file import read_datasets
from polybundle_torch.pth_reader import read_pth

Loader = Callable[[], np.ndarray]


class LazyTensors(Mapping[str, np.ndarray]):
    """``{name: read-only array}`` of one role, each built when first looked up.

    Arrays view a shared read-only memory map of the bundle file; copy one
    (``np.array(t)``) to get a writable array in memory.

    Example:
        >>> tensors = LazyTensors({"w": lambda: np.zeros(2)})
        >>> list(tensors), tensors["w"].shape
        (['w'], (2,))
    """

    def __init__(self, loaders: dict[str, Loader]) -> None:
        self._loaders = loaders
        self._cache: dict[str, np.ndarray] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._cache:
            if name not in self._loaders:
                raise KeyError(
                    f"no tensor {name!r}; the role holds {sorted(self._loaders)[:10]} "
                    f"({len(self._loaders)} in all)"
                )
            self._cache[name] = self._loaders[name]()
        return self._cache[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._loaders)

    def __len__(self) -> int:
        return len(self._loaders)


def _map_file(archive: ArchiveReader) -> mmap.mmap:
    # the archive's own descriptor: exactly the file that was checked, not the path again
    return mmap.mmap(archive.fileno(), 0, access=mmap.ACCESS_READ)


def _torch_loaders(
    source: MemberRange, mapped: mmap.mmap, specs: list[TensorSpec]
) -> dict[str, Loader]:
    arrays = read_pth(source, where=source.name or "model.pth", mapped=mapped, specs=specs)
    by_key = {spec.key: spec.name for spec in specs}
    return {by_key.get(key, key): (lambda array=array: array) for key, array in arrays.items()}


def _keras_loaders(
    source: MemberRange, mapped: mmap.mmap, specs: list[TensorSpec]
) -> dict[str, Loader]:
    arrays = read_datasets(source, specs, mapped=mapped)
    return {
        spec.name: (lambda array=array: array)
        for spec, array in zip(specs, arrays, strict=True)
    }


_INDEXERS = {"model.pth": _torch_loaders, "model.keras": _keras_loaders}


def lazy_tensors(archive: ArchiveReader, weights: str, specs: list[TensorSpec]) -> LazyTensors:
    """Index the weights member ``weights`` of ``archive``; map its tensors lazily.

    Only the index is read now. Raises :class:`FormatError` for a member that
    is not STORED or a weights format without a lazy reader, and
    :class:`~polybundle.errors.BudgetExceededError` when the tensors' declared
    bytes do not fit the open memory budget (:mod:`polybundle.safety.budget`): what
    is mapped may all be touched.

    Example:
        >>> with ArchiveReader("big.bundle") as archive:  # doctest: +SKIP
        ...     t = lazy_tensors(archive, "net/model.pth", specs)
    """
    kind = os.path.basename(weights)
    budget.check(sum(spec.nbytes for spec in specs), f"the tensors of {weights}")
    if kind not in _INDEXERS:
        raise FormatError(
            f"no lazy reader for {weights!r}; lazy access reads model.pth and model.keras. "
            "Load it with lazy=False."
        )
    source = archive.open(weights)
    if not isinstance(source, MemberRange):
        raise FormatError(
            f"{weights!r} is compressed; lazy access needs STORED members (polybundle writes "
            "them so). Load it with lazy=False."
        )
    mapped = _map_file(archive)
    return LazyTensors(_INDEXERS[kind](source, mapped, specs))
