"""Checkpoints in a bucket or any fsspec store: what :class:`CheckpointManager` does for a URL.

``CheckpointManager("s3://bucket/run", storage_options=...)`` makes a
:class:`RemoteCheckpointManager`. The order of a save is the local one: the
bundle is uploaded whole (it appears under its key complete or not at all),
then the index ``checkpoints.json`` is uploaded whole, and only then are the
checkpoints that fell out of retention deleted. A reader that lists
checkpoints reads the index, so it never sees one that is half written, and
a writer killed mid-upload leaves the previous index, naming the previous
checkpoints. Object stores have no locks: one process writes a run at a time
(the caller's job, as with two machines on one local folder).

Example:
    >>> manager = CheckpointManager("memory://runs/doc", keep_last=2)
    >>> for step in (1, 2, 3):
    ...     _ = manager.save(step, {"net": net}, metrics={"loss": 1 / step})
    >>> [c.step for c in manager.checkpoints()], manager.latest().path.url
    ([2, 3], 'memory://runs/doc/checkpoint-0000000003.bundle')
    >>> locate("memory://runs/doc").names()
    ['checkpoint-0000000002.bundle', 'checkpoint-0000000003.bundle', 'checkpoints.json']
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Iterable
from typing import Any

from polybundle.api.checkpoints import (
    _FILE,
    _PREFIX,
    _SUFFIX,
    INDEX_NAME,
    MAX_INDEX_BYTES,
    CheckpointManager,
    _empty_index,
    parse_index,
)
from polybundle.api.verify import verify
from polybundle.errors import StorageError
from polybundle.format.digests import DEFAULT
from polybundle.format.storage import Location, locate


class RemoteCheckpointManager(CheckpointManager):
    """A :class:`CheckpointManager` whose directory is a URL (a bucket prefix).

    ``storage_options`` (credentials, ``endpoint_url``) or a ready fsspec
    ``filesystem`` reach the store; ``mode`` does not apply to objects. The
    ``path`` of its checkpoints is a :class:`~polybundle.format.storage.Location`
    (``.url``, ``.name``), which :func:`polybundle.load` takes as it is.

    Example:
        >>> manager = CheckpointManager("memory://runs/remote-doc")
        >>> type(manager).__name__, str(manager.index_path)
        ('RemoteCheckpointManager', 'memory://runs/remote-doc/checkpoints.json')
    """

    def __init__(
        self,
        directory: str | os.PathLike[str] | Location,
        *,
        keep_last: int | None = 3,
        keep_best: tuple[Any, ...] | None = None,
        mode: int | None = None,
        storage_options: dict[str, Any] | None = None,
        filesystem: Any = None,
        digest: str = DEFAULT,
        async_save: bool = False,
    ) -> None:
        super().__init__(
            os.curdir, keep_last=keep_last, keep_best=keep_best, mode=mode, digest=digest,
            async_save=async_save,
        )
        self.directory = locate(directory, storage_options, filesystem)  # type: ignore[assignment]

    @property
    def index_path(self) -> Location:  # type: ignore[override]
        """Return the location of the index object."""
        return self.directory / INDEX_NAME  # type: ignore[return-value]

    def _load_index(self) -> tuple[dict[str, Any], str | None]:
        """Return ``(index, None)``, or ``(empty index, what is wrong)`` when it is damaged.

        A missing index is an empty one; a store that refuses access raises
        (that is not a damaged index).
        """
        try:
            data = self.index_path.read_bytes(limit=MAX_INDEX_BYTES)
        except StorageError as exc:
            if isinstance(exc.__cause__, FileNotFoundError):
                return _empty_index(), None
            if "at most" in str(exc):
                return _empty_index(), f"it is more than {MAX_INDEX_BYTES} bytes"
            raise
        return parse_index(data)

    def _scan(self) -> list[dict[str, Any]]:
        """Return index records of the prefix's checkpoint bundles that pass verify."""
        found: dict[int, dict[str, Any]] = {}
        directory: Location = self.directory  # type: ignore[assignment]
        for name in directory.names():
            match = _FILE.match(name)
            if match is None:
                continue
            step = int(match["step"])
            if step in found and name != f"{_PREFIX}{step:010d}{_SUFFIX}":
                continue
            if not verify(directory / name).ok:
                continue
            created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
            found[step] = {"step": step, "file": name, "metrics": {}, "created": created}
        return [found[step] for step in sorted(found)]

    def _lock(self) -> None:
        return None  # object stores have no locks: one writer per run is the caller's to ensure

    def _prune(self, kept: Iterable[dict[str, Any]]) -> None:
        names = {entry["file"] for entry in kept}
        directory: Location = self.directory  # type: ignore[assignment]
        for name in directory.names():
            if name.startswith(_PREFIX) and name.endswith(_SUFFIX) and name not in names:
                (directory / name).delete()

    def _exists(self, path: Any) -> bool:
        return bool(path.exists())


CheckpointManager.url_manager = RemoteCheckpointManager
