"""What a detector says about an archive, and the built-in detector of format 2.

Detectors implement the ``polybundle_detect_archive`` hook (firstresult). The
built-in one, :func:`detect_format2`, is registered ``trylast`` by
:mod:`polybundle.hooks.builtin` so plugins can claim files first; it claims
format-2 bundles only. A backend that reads its framework's own
weights file (a "plain" file, read as a one-role bundle with role
:data:`PLAIN_ROLE` and no params) claims it from its own plugin, with the
format name in its :attr:`~polybundle.model.backend.Backend.plain_format`.

Example:
    >>> Detection(format="polybundle", backend="torch")
    Detection(format='polybundle', backend='torch')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from polybundle.format.jsondoc import load_json

if TYPE_CHECKING:
    from polybundle.format.archive import ArchiveReader

FORMAT_NAME = "polybundle"
"""The ``format`` value of a format-2 manifest."""

PLAIN_ROLE = "model"
"""The one role of a plain framework file (and the builder name it is rebuilt with)."""

FORMAT_DESCRIPTION = (
    "polybundle format 2 (a zip with manifest.json whose 'format' is 'polybundle')"
)
"""How error messages name format 2 among the formats polybundle reads."""


@dataclass(frozen=True)
class Detection:
    """The answer of a detector: which archive format, and which backend wrote it.

    ``format`` names the layout (``"polybundle"`` for format 2); ``backend`` is
    the backend name or alias of the writer, or None when the format does not
    say.

    Example:
        >>> Detection("polybundle", "tensorflow").backend
        'tensorflow'
    """

    format: str
    backend: str | None = None


def peek_format2_manifest(archive: ArchiveReader) -> dict[str, Any] | None:
    """Return the parsed ``manifest.json`` when it looks like format 2, else None.

    For detectors: no schema check (the loader checks fully later), only "is
    there a JSON object whose ``format`` is ``polybundle``". A ``manifest.json``
    that is not strict, bounded JSON raises :class:`~polybundle.errors.FormatError`.

    Example:
        >>> from polybundle.format.archive import ArchiveReader
        >>> with ArchiveReader("run.bundle") as archive:
        ...     peek_format2_manifest(archive)["backend"]
        'torch'
    """
    if not archive.has("manifest.json"):
        return None
    # strict and bounded: a deep or oversized manifest is a FormatError, not a RecursionError
    document = load_json(archive.read("manifest.json"), where="manifest.json")
    if not isinstance(document, dict) or document.get("format") != FORMAT_NAME:
        return None
    return document


def detect_format2(archive: ArchiveReader) -> Detection | None:
    """Claim format-2 bundles (``manifest.json`` with ``format`` ``"polybundle"``).

    Example:
        >>> from polybundle.format.archive import ArchiveReader
        >>> with ArchiveReader("run.bundle") as archive:
        ...     detect_format2(archive)
        Detection(format='polybundle', backend='torch')
    """
    document = peek_format2_manifest(archive)
    if document is None:
        return None
    backend = document.get("backend")
    return Detection(FORMAT_NAME, backend if isinstance(backend, str) else None)
