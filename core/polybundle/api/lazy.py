"""Lazy tensors: read-only NumPy arrays memory-mapped straight from a bundle.

The weights members are STORED, so each tensor's bytes lie at a fixed offset
of the bundle file. The backend that wrote the bundle finds those offsets
without its framework (:meth:`~polybundle.model.backend.Backend.read_stored`
given a memory map), reading only its file's small index. One read-only
``mmap`` of the bundle backs every array, and a tensor's pages are read when
it is first touched. No framework is imported.

Example:
    >>> tensors = LazyTensors({"w": lambda: np.arange(3.0)})
    >>> float(tensors["w"][1])
    1.0
"""

from __future__ import annotations

import mmap
from collections.abc import Callable, Iterator, Mapping

import numpy as np

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
    arrays = backend.read_stored(source, specs, mapped=_map_file(archive))
    return LazyTensors({name: (lambda array=array: array) for name, array in arrays.items()})
