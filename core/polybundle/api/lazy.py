"""Lazy tensors: read-only NumPy arrays memory-mapped straight from a bundle.

The weights members are STORED, so each tensor's bytes lie at a fixed offset
of the bundle file. The backend that wrote the bundle finds those offsets
without its framework (:meth:`~polybundle.model.backend.Backend.read_stored`
given a memory map), reading only its file's small index. One read-only
``mmap`` of the bundle backs every array, and a tensor's pages are read when
it is first touched. No framework is imported.

A bundle at a URL is read the same way from a local, sparse cache of the
object (:class:`~polybundle.format.storage.RemoteFile`): the index is read by
range now, and each tensor's own bytes are fetched, in one ranged request,
when it is first looked up. Nothing else of the weights is fetched.

Example:
    >>> tensors = LazyTensors({"w": lambda: np.arange(3.0)})
    >>> float(tensors["w"][1])
    1.0
"""

from __future__ import annotations

import mmap
from collections.abc import Callable, Iterator, Mapping

import numpy as np

try:
    from numpy.lib.array_utils import byte_bounds
except ImportError:  # NumPy 1.x
    from numpy import byte_bounds  # type: ignore[attr-defined,no-redef]

from polybundle.errors import FormatError
from polybundle.format.archive import ArchiveReader, MemberRange
from polybundle.model.backend import Backend, TensorSpec
from polybundle.safety import budget

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


def _span(array: np.ndarray, mapped: mmap.mmap) -> tuple[int, int] | None:
    """Return the bytes ``[start, end)`` of ``mapped`` that ``array`` views, else None."""
    base = np.frombuffer(mapped, dtype=np.uint8).__array_interface__["data"][0]
    low, high = byte_bounds(array)
    if array.size and base <= low and high <= base + len(mapped):
        return low - base, high - base
    return None


def _loaders(
    archive: ArchiveReader, mapped: mmap.mmap, arrays: dict[str, np.ndarray]
) -> dict[str, Loader] | None:
    """Return loaders that fetch each array's bytes before handing it out (None: cannot).

    A local file needs no fetch. For a bundle at a URL every array must be a
    view of the map; otherwise (None) it was built from the map while the
    index was read, from bytes perhaps not fetched yet.
    """
    if archive.remote is None:
        return {name: (lambda array=array: array) for name, array in arrays.items()}
    spans = {name: _span(array, mapped) for name, array in arrays.items() if array.size}
    if any(span is None for span in spans.values()):
        return None

    def loader(name: str) -> Loader:
        def fetch_and_view() -> np.ndarray:
            if name in spans:
                archive.fetch(*spans[name])  # type: ignore[misc]
            return arrays[name]

        return fetch_and_view

    return {name: loader(name) for name in arrays}


def lazy_tensors(
    archive: ArchiveReader, weights: str, specs: list[TensorSpec], backend: Backend
) -> LazyTensors:
    """Index the weights member ``weights`` of ``archive``; map its tensors lazily.

    ``backend`` (the one that wrote the member) locates each tensor through
    :meth:`~polybundle.model.backend.Backend.read_stored`; only its index is
    read now. Raises :class:`FormatError` for a member that is not STORED,
    :class:`~polybundle.errors.BackendError` for a backend without a
    framework-free reader, and :class:`~polybundle.errors.BudgetExceededError`
    when the tensors' declared bytes do not fit the open memory budget
    (:mod:`polybundle.safety.budget`): what is mapped may all be touched.

    Example:
        >>> bundle = polybundle.load("run.bundle", lazy=True)
        >>> with ArchiveReader("run.bundle") as archive:
        ...     tensors = lazy_tensors(archive, "net/model.pth", bundle.tensor_specs("net"),
        ...                            polybundle.get_backend(bundle.backend))
        >>> tensors["0.weight"].shape, tensors["0.weight"].flags.writeable
        ((3, 4), False)
    """
    budget.check(sum(spec.nbytes for spec in specs), f"the tensors of {weights}")
    source = archive.open(weights)
    if not isinstance(source, MemberRange):
        raise FormatError(
            f"{weights!r} is compressed; lazy access needs STORED members (polybundle writes "
            "them so). Load it with lazy=False."
        )
    mapped = _map_file(archive)
    arrays = backend.read_stored(source, specs, mapped=mapped)
    loaders = _loaders(archive, mapped, arrays)
    if loaders is None:  # fetch the whole member, then read it again from complete bytes
        archive.fetch(source.offset, source.offset + source.size())
        arrays = backend.read_stored(source, specs, mapped=mapped)
        loaders = {name: (lambda array=array: array) for name, array in arrays.items()}
    return LazyTensors(loaders)
