"""What a detector says about an archive, and the built-in format-2 detector.

Detectors implement the ``polybundle_detect_archive`` hook (firstresult). The
built-in one below is registered ``trylast`` so plugins can claim files first.

Example:
    >>> Detection(format="polybundle", backend="torch")
    Detection(format='polybundle', backend='torch')
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .hookspecs import hookimpl

if TYPE_CHECKING:
    from .archive import ArchiveReader

FORMAT_NAME = "polybundle"
"""The ``format`` value of a format-2 manifest."""

KNOWN_FORMATS = (
    "polybundle format 2 (a zip with manifest.json whose 'format' is 'polybundle')",
    "TensorFlow dill era (manifest.dill, version 1.0, model.keras per role)",
    "PyTorch dill era (manifest.dill, version 2.0-pytorch)",
    "PyTorch JSON era (manifest.json, manifest_version torch-manifest-v1)",
)
"""Human-readable list of the formats polybundle reads, for error messages."""


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

    For detectors: no schema check and no error (the loader checks fully
    later), only "is there a JSON object whose ``format`` is ``polybundle``".

    Example:
        >>> peek_format2_manifest(archive)["backend"]  # doctest: +SKIP
        'jax'
    """
    if not archive.has("manifest.json"):
        return None
    try:
        document = json.loads(archive.read("manifest.json"))
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(document, dict) or document.get("format") != FORMAT_NAME:
        return None
    return document


@hookimpl(trylast=True)
def polybundle_detect_archive(archive: ArchiveReader) -> Detection | None:
    """Claim format-2 bundles: a ``manifest.json`` whose ``format`` is ``"polybundle"``.

    Example:
        >>> polybundle_detect_archive(archive)  # doctest: +SKIP
        Detection(format='polybundle', backend='torch')
    """
    document = peek_format2_manifest(archive)
    if document is None:
        return None
    backend = document.get("backend")
    return Detection(FORMAT_NAME, backend if isinstance(backend, str) else None)
