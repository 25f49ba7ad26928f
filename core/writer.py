"""Write a bundle's zip atomically, hashing every member as it is written.

:class:`ArchiveWriter` writes into a temporary file in the target directory;
:meth:`ArchiveWriter.commit` fsyncs it, moves it over the target with
:func:`os.replace` and fsyncs the directory, so a crash leaves either the old
bundle or the new one. Leaving the ``with`` block on an error removes the
temporary file and leaves the target untouched.

Large members are written for reading without copies: STORED, with their
data starting at a multiple of :data:`ALIGNMENT` in the file (the local
header's extra field is padded, as Android's zipalign does), so a reader can
memory-map them and every tensor stays aligned. Their sha256 is computed by a
background thread that reads the bytes back from the page cache just behind
the framework writing them, so on a machine with a free core hashing costs
little wall time; small or deflated members are hashed inline.

Example:
    >>> with ArchiveWriter("out.bundle") as writer:  # doctest: +SKIP
    ...     writer.write_bytes("params.json", b"{}")
    ...     writer.commit()
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import tempfile
import threading
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

ALIGNMENT = 64
"""Byte boundary at which every STORED member's data starts."""

PADDING_FIELD = 0xD935
"""Extra-field id of the alignment padding (the id Android's zipalign uses)."""

_ZIP64_EXTRA = 20  # the zip64 extra field zipfile appends to a forced-zip64 local header
_LOCAL_HEADER = 30
_CHUNK = 4 * 1024 * 1024


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

    def __init__(
        self,
        sink: io.RawIOBase | io.BufferedIOBase,
        *,
        readback: tuple[BinaryIO, int] | None = None,
    ) -> None:
        super().__init__()
        self._sink = sink
        self._digest = hashlib.sha256()
        self._trailing: _TrailingHasher | None = None
        self._file: BinaryIO | None = None
        self.on_write: Callable[[int], None] | None = None
        """Called with each write's byte count (e.g. to advance a progress bar)."""
        if readback is not None:
            self._file, start = readback
            self._trailing = _TrailingHasher(self._file.fileno(), start)
        self._crc = 0
        self.size = 0

    def writable(self) -> bool:
        """Return True: this stream only writes."""
        return True

    def write(self, data) -> int:  # type: ignore[override]
        """Hash ``data``, forward it to the sink and return its length."""
        view = memoryview(data).cast("B")
        self._sink.write(view)
        self.size += len(view)
        if self._trailing is not None and self._file is not None:
            self._crc = zlib.crc32(view, self._crc)  # cheap, and the bytes are hot here
            self._file.flush()  # the trailing hasher reads what the OS holds
            self._trailing.advance(self.size)
        else:
            self._digest.update(view)
        if self.on_write is not None:
            self.on_write(len(view))
        return len(view)

    def tell(self) -> int:
        """Return the number of bytes written so far."""
        return self.size

    def hexdigest(self) -> str:
        """Return the hex sha256 of everything written (waits for a trailing hasher)."""
        if self._trailing is not None:
            return self._trailing.finish()
        return self._digest.hexdigest()

    @property
    def crc32(self) -> int | None:
        """Return the CRC-32 of what was written when a trailing hasher runs, else None.

        The CRC is computed in the writing thread (it is several times cheaper
        than sha256), so the two hashes share the two cores.
        """
        return None if self._trailing is None else self._crc


class _TrailingHasher:
    """Hash (sha256) bytes ``[start, start + n)`` of a file as ``n`` grows."""

    def __init__(self, fd: int, start: int) -> None:
        self._fd = fd
        self._start = start
        self._written = 0
        self._closed = False
        self._result: str | None = None
        self._error: BaseException | None = None
        self._digest = hashlib.sha256()
        self._ready = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="polybundle-hash", daemon=True)
        self._thread.start()

    def advance(self, written: int) -> None:
        with self._ready:
            self._written = written
            self._ready.notify()

    def finish(self) -> str:
        if self._result is None:
            with self._ready:
                self._closed = True
                self._ready.notify()
            self._thread.join()
            if self._error is not None:
                raise self._error
            self._result = self._digest.hexdigest()
        return self._result

    def _run(self) -> None:
        view = memoryview(bytearray(_CHUNK))
        hashed = 0
        try:
            while True:
                with self._ready:
                    while hashed >= self._written and not self._closed:
                        self._ready.wait()
                    target = self._written
                if hashed >= target:
                    return
                while hashed < target:
                    want = min(_CHUNK, target - hashed)
                    count = os.preadv(self._fd, [view[:want]], self._start + hashed)
                    if count <= 0:
                        raise OSError(f"could not read back bytes at {self._start + hashed}")
                    self._digest.update(view[:count])
                    hashed += count
        except BaseException as exc:  # handed to finish() in the writing thread
            self._error = exc


def _padding(offset: int, name: str) -> bytes:
    """Return the extra field that makes a member's data start on :data:`ALIGNMENT`."""
    header = _LOCAL_HEADER + len(name.encode("utf-8")) + 4 + _ZIP64_EXTRA
    pad = -(offset + header) % ALIGNMENT
    return struct.pack("<HH", PADDING_FIELD, pad) + bytes(pad)


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
        """Open member ``name`` for writing; yields a :class:`HashingWriter`.

        A STORED member starts on :data:`ALIGNMENT`; its bytes go straight to
        the file; a trailing thread computes its sha256 from the page cache
        while the writing thread computes the CRC-32 the zip header needs.
        A deflated member goes through zipfile and is hashed inline.
        """
        info = self._info(name, compress)
        if compress:
            with self._zip.open(info, "w", force_zip64=True) as member:
                writer = HashingWriter(member)
                yield writer
            self.records.append(MemberRecord(name, writer.size, writer.hexdigest()))
            return
        info.extra = _padding(self._file.tell(), name)
        with self._zip.open(info, "w", force_zip64=True) as member:
            writer = HashingWriter(self._file, readback=(self._file, self._file.tell()))
            try:
                yield writer
            finally:
                digest = writer.hexdigest()
            # zipfile takes the sizes and CRC of the member from these on close
            member._file_size = member._compress_size = writer.size
            member._crc = writer.crc32
        self.records.append(MemberRecord(name, writer.size, digest))

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
