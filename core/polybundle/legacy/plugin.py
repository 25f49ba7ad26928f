"""The built-in legacy eras as a plugin, and the lookup of era readers by format.

This module is listed in :data:`polybundle.hooks.manager.DEFAULT_PLUGINS`: it
registers the built-in :class:`~polybundle.legacy.era.EraReader` instances
through ``polybundle_register_eras`` and answers ``polybundle_detect_archive``
for every registered era (its own and third parties'), ``trylast`` so a
plugin's own detector can claim a file first.

Example:
    >>> sorted(era_readers())
    ['legacy-tf-dill', 'legacy-torch-dill', 'legacy-torch-json']
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from polybundle.errors import FormatError, PolybundleError
from polybundle.format.detection import Detection
from polybundle.hooks.hookspecs import hookimpl
from polybundle.legacy.era import EraReader
from polybundle.legacy.readers import BUILTIN_ERAS

if TYPE_CHECKING:
    from polybundle.format.archive import ArchiveReader


def era_readers() -> dict[str, EraReader]:
    """Return every registered era reader keyed by its format name.

    Two readers claiming one format raise :class:`PolybundleError`.

    Example:
        >>> era_readers()["legacy-torch-dill"].backend
        'torch'
    """
    from polybundle.hooks.manager import get_plugin_manager

    readers: dict[str, EraReader] = {}

    def register(reader: EraReader) -> None:
        if not isinstance(reader, EraReader) or not reader.format:
            raise PolybundleError(
                f"register() was given {reader!r}; expected an EraReader with a format name."
            )
        if reader.format in readers and readers[reader.format] is not reader:
            raise PolybundleError(
                f"era format {reader.format!r} is registered twice; each format belongs to "
                "one reader. Rename the new reader's format."
            )
        readers[reader.format] = reader

    get_plugin_manager().hook.polybundle_register_eras(register=register)
    return readers


def era_reader(format_name: str) -> EraReader:
    """Return the era reader of ``format_name``; raise :class:`FormatError` when none.

    Example:
        >>> era_reader("legacy-tf-dill").description[:15]
        'TensorFlow dill'
    """
    readers = era_readers()
    if format_name not in readers:
        raise FormatError(
            f"the archive was detected as {format_name!r}, but no era reader handles it; "
            f"registered: {', '.join(sorted(readers)) or 'none'}. Install the plugin that "
            "detected it."
        )
    return readers[format_name]


@hookimpl
def polybundle_register_eras(register: Callable[[EraReader], None]) -> None:
    """Register the built-in TensorFlow dill, PyTorch dill and PyTorch JSON eras.

    Example:
        >>> polybundle_register_eras(print)  # doctest: +ELLIPSIS
        <polybundle.legacy.readers.TensorFlowDillEra object at ...>
        ...
    """
    for reader in BUILTIN_ERAS:
        register(reader)


@hookimpl(trylast=True)
def polybundle_detect_archive(archive: ArchiveReader) -> Detection | None:
    """Claim an archive for the first registered era whose reader recognises it.

    Example:
        >>> polybundle_detect_archive(archive)  # doctest: +SKIP
        Detection(format='legacy-tf-dill', backend='tensorflow')
    """
    if archive.has("manifest.json") and not archive.has("manifest.dill"):
        from polybundle.format.detection import polybundle_detect_archive as format_two

        if format_two(archive) is not None:
            return None
    for reader in era_readers().values():
        if reader.claims(archive):
            return Detection(reader.format, reader.backend)
    return None
