"""Compare what a weights file stores with what the manifest declares, before reading.

Every reader (framework-free or not, eager or lazy) calls :func:`check_stored`
with the shape and dtype it found in the weights file's own index (the pickle's
tensor records, the HDF5 dataset header) before it allocates or maps the bytes.
A manifest that says ``(3, 4)`` over a file holding ``(4, 3)`` is refused here,
not when the model is first called. :func:`check_index` runs it over a whole
file's index, after checking the file holds exactly the manifest's tensors.
Both are exported to backend plugins by :mod:`polybundle.plugin`.

Example:
    >>> from polybundle.model.backend import TensorSpec
    >>> spec = TensorSpec("fc.weight", "fc.weight", (3, 4), "float32", "out,in")
    >>> check_stored(spec, (3, 4), "float32", where="net/model.pth")
    >>> check_stored(spec, (4, 3), "float32", where="net/model.pth")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    polybundle.errors.IntegrityError: net/model.pth stores fc.weight as (4, 3) float32, ...
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from polybundle.errors import IntegrityError
from polybundle.safety.dtypes import dtype_label

if TYPE_CHECKING:  # the neutral model sits above the format; only the type is named here
    from polybundle.model.backend import TensorSpec


def check_stored(
    spec: TensorSpec, shape: Sequence[int], dtype: Any, *, where: str
) -> None:
    """Refuse a stored tensor whose shape or dtype is not the one ``spec`` declares.

    ``shape`` and ``dtype`` are what the weights file itself records for the
    tensor; ``where`` names the member in the error.

    Example:
        >>> from polybundle.model.backend import TensorSpec
        >>> spec = TensorSpec("b", "b", (2,), "float16", "out")
        >>> check_stored(spec, [2], "<f2", where="net/model.keras")
    """
    stored_shape = tuple(int(axis) for axis in shape)
    stored_dtype = dtype_label(dtype)
    if stored_shape == tuple(spec.shape) and stored_dtype == spec.dtype:
        return
    raise IntegrityError(
        f"{where} stores {spec.name} as {stored_shape} {stored_dtype}, but the manifest "
        f"declares {tuple(spec.shape)} {spec.dtype}; the bundle was altered or damaged. "
        "Re-copy it or re-save it from the model."
    )


def check_index(
    specs: Iterable[TensorSpec], index: Mapping[str, tuple[Sequence[int], Any]], *, where: str
) -> None:
    """Refuse a weights file whose index is not exactly the tensors ``specs`` declare.

    ``index`` maps every tensor key the file holds to the shape and dtype the
    file records for it. A key the file lacks or holds beyond ``specs`` raises
    :class:`~polybundle.errors.IntegrityError`, and so does any shape or dtype
    that is not its spec's (:func:`check_stored`): all before a byte is read.

    Example:
        >>> from polybundle.model.backend import TensorSpec
        >>> specs = [TensorSpec("w", "w", (2,), "float32", "out")]
        >>> check_index(specs, {"w": ((2,), "float32")}, where="net/arrays.st")
        >>> check_index(specs, {"w": ((2,), "<f4"), "x": ((1,), "<f4")}, where="net/arrays.st")
        Traceback (most recent call last):
        ...
        polybundle.errors.IntegrityError: net/arrays.st does not hold the tensors its manifest
        declares (missing from the file: []; in the file but not in the manifest: ['x']); ...
    """
    wanted = {spec.key: spec for spec in specs}
    missing = sorted(wanted.keys() - index.keys())
    extra = sorted(index.keys() - wanted.keys())
    if missing or extra:
        raise IntegrityError(
            f"{where} does not hold the tensors its manifest declares (missing from the file: "
            f"{missing[:10]}; in the file but not in the manifest: {extra[:10]}); the bundle "
            "was altered or damaged. Re-copy it or re-save it from the model."
        )
    for key, spec in wanted.items():
        shape, dtype = index[key]
        check_stored(spec, shape, dtype, where=where)
