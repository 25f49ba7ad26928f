"""The built-in detector of format-2 bundles, as a plugin.

Listed in :data:`polybundle.hooks.manager.DEFAULT_PLUGINS` and registered like
any plugin. It answers ``polybundle_detect_archive`` ``trylast``, so a plugin's
own detector can claim a file first; the format itself
(:func:`polybundle.format.detection.detect_format2`) knows nothing of hooks.

Example:
    >>> from polybundle.format.archive import ArchiveReader
    >>> with ArchiveReader("run.bundle") as archive:
    ...     polybundle_detect_archive(archive)
    Detection(format='polybundle', backend='torch')
"""

from __future__ import annotations

from polybundle.format.archive import ArchiveReader
from polybundle.format.detection import Detection, detect_format2
from polybundle.hooks.hookspecs import hookimpl


@hookimpl(trylast=True)
def polybundle_detect_archive(archive: ArchiveReader) -> Detection | None:
    """Claim format-2 bundles (``manifest.json`` with ``format`` ``"polybundle"``)."""
    return detect_format2(archive)
