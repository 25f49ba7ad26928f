"""Write a bundle's zip atomically, hashing every member as it is written.

:class:`ArchiveWriter` writes into a temporary file in the target directory;
:meth:`ArchiveWriter.commit` fsyncs it, moves it over the target with
:func:`os.replace` and fsyncs the directory, so a crash leaves either the old
bundle or the new one. Leaving the ``with`` block on an error removes the
temporary file and leaves the target untouched.

Example:
    >>> with ArchiveWriter("out.bundle") as writer:  # doctest: +SKIP
    ...     writer.write_bytes("params.json", b"{}")
    ...     writer.commit()
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class MemberRecord:
    """Size and sha256 of one member, as the manifest records them.

    Example:
        >>> MemberRecord("params.json", 2, "44136fa3...").size
        2
    """

    name: str
    size: int
    sha256: str


class HashingWriter(io.RawIOBase):
    """A write-only stream that hashes and counts what passes through it.

    Frameworks write their native files into it (``torch.save``, Keras'
    ``save_model``) while it forwards the bytes into the zip member.

    Example:
        >>> sink = io.BytesIO()
        >>> w = HashingWriter(sink)
        >>> w.write(b"abc")
        3
        >>> w.size, w.hexdigest()[:8]
        (3, 'ba7816bf')
    """

    def __init__(self, sink: io.RawIOBase | io.BufferedIOBase) -> None:
        super().__init__()
        self._sink = sink
        self._digest = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        """Return True: this stream only writes."""
        return True

    def write(self, data) -> int:  # type: ignore[override]
        """Hash ``data``, forward it to the sink and return its length."""
        view = memoryview(data).cast("B")
        self._digest.update(view)
        self._sink.write(view)
        self.size += len(view)
        return len(view)

    def tell(self) -> int:
        """Return the number of bytes written so far."""
        return self.size

    def hexdigest(self) -> str:
        """Return the hex sha256 of everything written."""
        return self._digest.hexdigest()


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # platforms without directory descriptors
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ArchiveWriter:
    """Write a zip into a temporary file and publish it atomically.

    Members go in STORED unless ``compress=True`` is asked for (small JSON).
    Every member's size and sha256 is recorded in :attr:`records`.

    Example:
        >>> with ArchiveWriter("out.bundle") as writer:  # doctest: +SKIP
        ...     with writer.stream("torch/model.pth") as stream:
        ...         stream.write(b"...")
        ...     writer.commit()
    """

    def __init__(self, target: str | os.PathLike[str]) -> None:
        self.target = Path(target)
        self.records: list[MemberRecord] = []
        self._committed = False
        directory = self.target.parent
        fd, temp_name = tempfile.mkstemp(
            prefix=f".{self.target.name}.", suffix=".tmp", dir=directory
        )
        self._temp_path = Path(temp_name)
        self._file = os.fdopen(fd, "w+b")
        self._zip = zipfile.ZipFile(self._file, "w", allowZip64=True)

    def __enter__(self) -> ArchiveWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._committed:
            self.abort()

    def _info(self, name: str, compress: bool) -> zipfile.ZipInfo:
        info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
        info.compress_type = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
        info.external_attr = 0o100644 << 16
        return info

    @contextmanager
    def stream(self, name: str, *, compress: bool = False) -> Iterator[HashingWriter]:
        """Open member ``name`` for writing; yields a :class:`HashingWriter`."""
        with self._zip.open(self._info(name, compress), "w", force_zip64=True) as member:
            writer = HashingWriter(member)
            yield writer
        self.records.append(MemberRecord(name, writer.size, writer.hexdigest()))

    def write_bytes(self, name: str, data: bytes, *, compress: bool = False) -> MemberRecord:
        """Write a whole member from memory and return its record."""
        with self.stream(name, compress=compress) as stream:
            stream.write(data)
        return self.records[-1]

    def commit(self) -> None:
        """Finish the zip, fsync it, move it over the target and fsync the directory."""
        self._zip.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._temp_path, self.target)
        _fsync_directory(self.target.parent)
        self._committed = True

    def abort(self) -> None:
        """Discard everything written; the target is left as it was."""
        try:
            self._zip.close()
        except Exception:  # the zip may be half written; it is being discarded
            pass
        self._file.close()
        self._temp_path.unlink(missing_ok=True)
