"""The lookup of era readers by format.

This module is listed in :data:`polybundle.hooks.manager.DEFAULT_PLUGINS`: it
finds the :class:`~polybundle.legacy.era.EraReader` instances backends register
through ``polybundle_register_eras`` and answers ``polybundle_detect_archive``
for every registered era (its own and third parties'), ``trylast`` so a
plugin's own detector can claim a file first. Era readers live in the one
registry (:mod:`polybundle.hooks.registry`).

Example:
    >>> sorted(era_readers())
    ['legacy-tf-dill', 'legacy-torch-dill', 'legacy-torch-json']
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from polybundle.format import detection
from polybundle.format.detection import Detection
from polybundle.hooks.hookspecs import hookimpl
from polybundle.hooks.registry import get_registry
from polybundle.legacy.era import EraReader

if TYPE_CHECKING:
    from polybundle.format.archive import ArchiveReader


def era_readers() -> dict[str, EraReader]:
    """Return every registered era reader keyed by its format name.

    Example:
        >>> era_readers()["legacy-torch-dill"].backend
        'torch'
    """
    return get_registry().eras


def era_reader(format_name: str) -> EraReader:
    """Return the era reader of ``format_name``; raise :class:`FormatError` when none.

    Example:
        >>> era_reader("legacy-tf-dill").description[:15]
        'TensorFlow dill'
    """
    return get_registry().era(format_name)


@hookimpl(trylast=True)
def polybundle_detect_archive(archive: ArchiveReader) -> Detection | None:
    """Claim an archive for the first registered era whose reader recognises it.

    The detection names the era's backend by its registered name, whichever
    alias the reader gives.

    Example:
        >>> import pathlib, tempfile, zipfile
        >>> from polybundle.format.archive import ArchiveReader
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "notes.zip"
        >>> with zipfile.ZipFile(path, "w") as zf:
        ...     zf.writestr("notes.txt", "not a model")
        >>> with ArchiveReader(path) as archive:
        ...     polybundle_detect_archive(archive) is None
        True
    """
    if archive.has("manifest.json") and not archive.has("manifest.dill"):
        if detection.detect_format2(archive) is not None:
            return None
    registry = get_registry()
    for reader in registry.eras.values():
        if reader.claims(archive):
            return Detection(reader.format, registry.canonical(reader.backend))
    return None
