"""Read a bundle's zip safely, without extracting anything to disk.

:class:`ArchiveReader` opens a zip, checks every member's name and kind before
anything is read, and hands out members either as bytes (small JSON members)
or as seekable file objects. A STORED member is served by :class:`MemberRange`,
a window over the outer file, so frameworks read it at file speed instead of
through :mod:`zipfile`'s slower member stream.

Example:
    >>> with ArchiveReader("model.bundle") as archive:  # doctest: +SKIP
    ...     archive.names()
    ['params.json', 'torch/model.pth', 'manifest.json']
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from .errors import FormatError, UnsafeContentError

MAX_MEMBERS = 10_000
"""More members than this is refused: no real bundle comes near it."""

MAX_JSON_BYTES = 64 * 1024 * 1024
"""Largest JSON member (manifest, params) read into memory."""

MAX_RATIO = 200
"""Largest uncompressed/compressed ratio accepted for a deflated member over
:data:`RATIO_FLOOR` bytes; real weights deflate far less, bombs far more."""

RATIO_FLOOR = 1024 * 1024
"""Deflated members up to this declared size are exempt from :data:`MAX_RATIO`."""

_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")
_LOCAL_MAGIC = b"PK\x03\x04"
_ALLOWED_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED}
_HASH_CHUNK = 8 * 1024 * 1024


def check_member_name(name: str) -> None:
    """Refuse a member name that could escape the archive or alias another.

    Example:
        >>> check_member_name("torch/model.pth")
        >>> check_member_name("../etc/passwd")
        Traceback (most recent call last):
        ...
        polybundle.errors.UnsafeContentError: ...
    """
    problem = None
    if not name:
        problem = "is empty"
    elif "\x00" in name:
        problem = "contains a NUL byte"
    elif "\\" in name:
        problem = "contains a backslash"
    elif name.startswith("/"):
        problem = "is absolute"
    elif len(name) >= 2 and name[1] == ":":
        problem = "starts with a drive letter"
    elif any(part in ("", ".", "..") for part in name.rstrip("/").split("/")):
        problem = "has an empty, '.' or '..' path component"
    if problem:
        raise UnsafeContentError(
            f"member name {name!r} {problem}; a bundle's members are plain relative "
            "paths. The archive was not written by polybundle or has been tampered "
            "with; do not open it."
        )


def check_member_kind(info: zipfile.ZipInfo) -> None:
    """Refuse encrypted, non-regular, oddly compressed or bomb-sized members.

    Example:
        >>> check_member_kind(zipfile.ZipInfo("net/model.pth"))
    """
    if "\x00" in info.orig_filename:
        raise UnsafeContentError(
            f"member name {info.orig_filename!r} contains a NUL byte; readers would cut it "
            "there and see another name. polybundle refuses the archive."
        )
    if info.flag_bits & 0x1:
        raise UnsafeContentError(
            f"member {info.filename!r} is encrypted; polybundle reads only plain "
            "members. Re-save the bundle without encryption."
        )
    if info.compress_type not in _ALLOWED_METHODS:
        raise UnsafeContentError(
            f"member {info.filename!r} uses compression method {info.compress_type}; "
            "expected stored (0) or deflate (8). Re-save the bundle with polybundle."
        )
    unix_mode = info.external_attr >> 16
    file_type = unix_mode & 0o170000
    if file_type not in (0, 0o100000) and not info.is_dir():
        raise UnsafeContentError(
            f"member {info.filename!r} is not a regular file (unix mode "
            f"{oct(unix_mode)}: a symlink or device); polybundle refuses such members."
        )
    if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
        raise UnsafeContentError(
            f"member {info.filename!r} is stored (not compressed) yet declares "
            f"{info.file_size} bytes uncompressed and {info.compress_size} compressed; the "
            "archive lies about sizes. Do not open it."
        )
    if info.file_size > RATIO_FLOOR and info.file_size > MAX_RATIO * max(info.compress_size, 1):
        raise UnsafeContentError(
            f"member {info.filename!r} declares {info.file_size} bytes from "
            f"{info.compress_size} compressed (over {MAX_RATIO}:1); that is a decompression "
            "bomb, not model weights. Do not open it."
        )


class DeflatedMember(io.RawIOBase):
    """A deflated member's stream whose read errors are :class:`FormatError`.

    :mod:`zipfile` reports damage while reading (a bad CRC, a broken deflate
    stream, data shorter than declared) with its own exceptions; frameworks
    reading the member would pass them on. This wrapper makes them typed.

    Example:
        >>> stream = DeflatedMember(zipfile.ZipFile("x.zip").open("a"), "a")  # doctest: +SKIP
    """

    def __init__(self, stream: BinaryIO, name: str) -> None:
        super().__init__()
        self._stream = stream
        self.name = name

    def _damaged(self, exc: BaseException) -> FormatError:
        return FormatError(
            f"member {self.name!r} is damaged ({type(exc).__name__}: {exc}); its bytes do not "
            "match what the zip directory declares. Re-copy the archive."
        )

    def readable(self) -> bool:
        """Return True: the stream reads."""
        return True

    def seekable(self) -> bool:
        """Return True: :mod:`zipfile` members seek (by re-reading)."""
        return True

    def tell(self) -> int:
        """Return the position in the uncompressed member."""
        return self._stream.tell()

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Move in the uncompressed member, like :meth:`io.IOBase.seek`."""
        try:
            return self._stream.seek(offset, whence)
        except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
            raise self._damaged(exc) from None

    def readinto(self, buffer) -> int:  # type: ignore[override]
        """Fill ``buffer`` with the next uncompressed bytes; return the count."""
        view = memoryview(buffer).cast("B")
        try:
            data = self._stream.read(len(view))
        except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
            raise self._damaged(exc) from None
        view[: len(data)] = data
        return len(data)

    def close(self) -> None:
        """Close the member stream."""
        self._stream.close()
        super().close()


class MemberRange(io.RawIOBase):
    """A read-only, seekable window ``[start, start + size)`` of an open file.

    Reads go straight to the outer file with ``os.pread``, so several ranges
    may share one descriptor and the framework reading the member sees an
    ordinary file.

    Example:
        >>> with open("model.bundle", "rb") as f:  # doctest: +SKIP
        ...     MemberRange(f.fileno(), 0, 4).read()
        b'PK\\x03\\x04'
    """

    def __init__(self, fd: int, start: int, size: int, name: str = "") -> None:
        super().__init__()
        self._fd = fd
        self._start = start
        self._size = size
        self._pos = 0
        self.name = name
        self.on_read: Callable[[int], None] | None = None
        """Called with each read's byte count (a progress bar); sub-ranges inherit it."""

    def readable(self) -> bool:
        """Return True: a range is always readable."""
        return True

    def seekable(self) -> bool:
        """Return True: a range is always seekable."""
        return True

    def tell(self) -> int:
        """Return the position inside the range."""
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Move inside the range, like :meth:`io.IOBase.seek`."""
        if whence == io.SEEK_SET:
            target = offset
        elif whence == io.SEEK_CUR:
            target = self._pos + offset
        elif whence == io.SEEK_END:
            target = self._size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if target < 0:
            raise OSError(f"negative seek position {target}")
        self._pos = target
        return target

    def readinto(self, buffer) -> int:  # type: ignore[override]
        """Fill ``buffer`` from the current position; return the byte count."""
        view = memoryview(buffer).cast("B")
        want = min(len(view), max(0, self._size - self._pos))
        done = 0
        while done < want:
            chunk = os.preadv(self._fd, [view[done:want]], self._start + self._pos + done)
            if chunk == 0:
                raise FormatError(
                    f"member {self.name!r} ends early: the file is truncated. "
                    "Expected the size the zip directory records; re-copy the bundle."
                )
            done += chunk
        self._pos += done
        if self.on_read is not None:
            self.on_read(done)
        return done

    def readall(self) -> bytes:
        """Read to the end of the range in one allocation."""
        remaining = max(0, self._size - self._pos)
        buffer = bytearray(remaining)
        self.readinto(buffer)
        return bytes(buffer)

    def size(self) -> int:
        """Return the range's length in bytes."""
        return self._size

    @property
    def offset(self) -> int:
        """Return where the range starts in the outer file (for memory-mapping it)."""
        return self._start

    def subrange(self, offset: int, size: int, name: str) -> MemberRange:
        """Return the window ``[offset, offset + size)`` of this range as a new range."""
        if offset < 0 or offset + size > self._size:
            raise FormatError(
                f"member {name!r} claims bytes {offset}..{offset + size} of {self.name!r}, "
                f"which holds {self._size}; the nested archive is damaged or lies."
            )
        inner = MemberRange(self._fd, self._start + offset, size, name)
        inner.on_read = self.on_read
        return inner


class NestedZip:
    """A zip held inside a seekable file (a bundle member), opened once.

    STORED members of a :class:`MemberRange` container come back as
    sub-ranges of the outer file (no copy); anything else through
    :mod:`zipfile`. Every member is name- and kind-checked before it is
    opened. Used for ``model.weights.h5`` inside ``model.keras`` and for the
    storages inside ``model.pth``.

    Example:
        >>> inner = NestedZip(archive.open("net/model.pth"))  # doctest: +SKIP
        >>> inner.names()[:1]
        ['archive/data.pkl']
    """

    def __init__(self, container: BinaryIO | MemberRange) -> None:
        self.container = container
        self.label = getattr(container, "name", "a member")
        try:
            self._zip = zipfile.ZipFile(container)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
            raise FormatError(
                f"{self.label!r} is not a zip file ({exc}); the weights file is damaged."
            ) from None

    def names(self) -> list[str]:
        """Return the inner member names in directory order."""
        return self._zip.namelist()

    def open(self, name: str) -> BinaryIO | MemberRange:
        """Open inner member ``name`` (a sub-range when STORED inside a range)."""
        try:
            info = self._zip.getinfo(name)
        except KeyError:
            raise FormatError(
                f"{self.label!r} is a zip without {name!r}; the weights file is damaged."
            ) from None
        check_member_name(info.filename)
        check_member_kind(info)
        container = self.container
        if isinstance(container, MemberRange) and info.compress_type == zipfile.ZIP_STORED:
            container.seek(info.header_offset)
            header = container.read(_LOCAL_HEADER.size)
            if len(header) != _LOCAL_HEADER.size or header[:4] != _LOCAL_MAGIC:
                raise FormatError(f"{name!r}: no local zip header where the directory points.")
            fields = _LOCAL_HEADER.unpack(header)
            start = info.header_offset + _LOCAL_HEADER.size + fields[9] + fields[10]
            return container.subrange(start, info.file_size, name)
        return self._zip.open(info)


def open_nested(container: BinaryIO | MemberRange, name: str) -> BinaryIO | MemberRange:
    """Open member ``name`` of the zip held in the seekable file ``container``.

    A STORED member of a :class:`MemberRange` container comes back as a
    sub-range (no copy); anything else through :mod:`zipfile`. Used to reach
    ``model.weights.h5`` inside ``model.keras`` inside a bundle.

    Example:
        >>> h5 = open_nested(archive.open("net/model.keras"), "model.weights.h5")  # doctest: +SKIP
    """
    return NestedZip(container).open(name)


class ArchiveReader:
    """A checked, read-only view of a bundle's zip file.

    Opening validates the whole central directory (names, duplicates, member
    kinds, compression methods, member count) before any member is read.

    Example:
        >>> with ArchiveReader("model.bundle") as archive:  # doctest: +SKIP
        ...     manifest = archive.read_json("manifest.json")
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.on_read: Callable[[int], None] | None = None
        """Given to every STORED member opened from now on (see :class:`MemberRange`)."""
        try:
            self._file: BinaryIO = open(self.path, "rb")
        except FileNotFoundError:
            raise FormatError(
                f"no file at {str(self.path)!r}; expected a bundle (a zip)."
            ) from None
        except IsADirectoryError:
            raise FormatError(
                f"{str(self.path)!r} is a directory; expected a bundle file (a zip)."
            ) from None
        try:
            self._zip = zipfile.ZipFile(self._file)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
            self._file.close()
            raise FormatError(
                f"{str(self.path)!r} is not a zip file ({exc}); expected a polybundle "
                "bundle. Formats polybundle reads: polybundle format 2 and the legacy "
                "wts.h5.zip archives (TensorFlow dill era, PyTorch dill era, PyTorch "
                "JSON era)."
            ) from None
        try:
            self._infos = self._checked_infos()
            self._check_layout()
        except Exception:
            self.close()
            raise

    def _checked_infos(self) -> dict[str, zipfile.ZipInfo]:
        infos = self._zip.infolist()
        if len(infos) > MAX_MEMBERS:
            raise UnsafeContentError(
                f"{len(infos)} members in {str(self.path)!r}; polybundle accepts at most "
                f"{MAX_MEMBERS}. This is not a model bundle."
            )
        checked: dict[str, zipfile.ZipInfo] = {}
        for info in infos:
            check_member_name(info.filename)
            check_member_kind(info)
            if info.filename in checked:
                raise UnsafeContentError(
                    f"member {info.filename!r} appears twice; readers could disagree on "
                    "which one is meant, so polybundle refuses the archive."
                )
            checked[info.filename] = info
        return checked

    def _check_layout(self) -> None:
        """Refuse prepended data, local headers that disagree, and overlapping members."""
        fd = self._file.fileno()
        end_of_file = os.fstat(fd).st_size
        if self._infos and os.pread(fd, 4, 0) != _LOCAL_MAGIC:
            raise UnsafeContentError(
                f"{str(self.path)!r} does not start with a zip member: data was prepended "
                "(a self-extractor or a polyglot file). Expected a plain zip; polybundle "
                "refuses it."
            )
        spans = []
        for info in self._infos.values():
            start = self._local_data_start(info)
            spans.append((info.header_offset, start + info.compress_size, info.filename))
        spans.sort()
        limit = min(end_of_file, getattr(self._zip, "start_dir", end_of_file))
        for (_, end, name), following in zip(spans, [*spans[1:], (limit, limit, "")], strict=True):
            if end > following[0]:
                what = f"overlaps member {following[2]!r}" if following[2] else "runs past its end"
                raise UnsafeContentError(
                    f"member {name!r} of {str(self.path)!r} {what}; members of a real zip "
                    "never share bytes. The archive lies about sizes or is a zip bomb."
                )

    def _local_data_start(self, info: zipfile.ZipInfo) -> int:
        if info.header_offset < 0:
            raise FormatError(
                f"member {info.filename!r}: the zip directory points before the start of the "
                "file; the zip is damaged or truncated at its start. Re-copy it."
            )
        header = os.pread(self._file.fileno(), _LOCAL_HEADER.size, info.header_offset)
        if len(header) != _LOCAL_HEADER.size or header[:4] != _LOCAL_MAGIC:
            raise FormatError(
                f"member {info.filename!r}: no local header at offset {info.header_offset}; "
                "the zip is damaged. Re-copy the bundle."
            )
        fields = _LOCAL_HEADER.unpack(header)
        name_length, extra_length = fields[9], fields[10]
        raw_name = os.pread(
            self._file.fileno(), name_length, info.header_offset + _LOCAL_HEADER.size
        )
        encoding = "utf-8" if info.flag_bits & 0x800 else "cp437"
        expected = info.orig_filename.encode(encoding, "replace")
        if raw_name != expected or fields[3] != info.compress_type:
            raise UnsafeContentError(
                f"member {info.filename!r}: its local header names {raw_name[:80]!r} with "
                f"method {fields[3]}, which disagrees with the zip directory. Readers would "
                "see different files; polybundle refuses the archive."
            )
        return info.header_offset + _LOCAL_HEADER.size + name_length + extra_length

    def __enter__(self) -> ArchiveReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the zip and the underlying file."""
        self._zip.close()
        self._file.close()

    def names(self) -> list[str]:
        """Return the member names in directory order, directories excluded."""
        return [name for name, info in self._infos.items() if not info.is_dir()]

    def has(self, name: str) -> bool:
        """Return True when the archive holds a member called ``name``."""
        return name in self._infos and not self._infos[name].is_dir()

    def info(self, name: str) -> zipfile.ZipInfo:
        """Return the checked :class:`zipfile.ZipInfo` of one member."""
        if not self.has(name):
            raise FormatError(
                f"{str(self.path)!r} has no member {name!r}; it holds: "
                f"{', '.join(self.names()) or 'nothing'}."
            )
        return self._infos[name]

    def size(self, name: str) -> int:
        """Return a member's uncompressed size in bytes."""
        return self.info(name).file_size

    def data_offset(self, name: str) -> int:
        """Return the offset in the outer file where a STORED member's bytes begin."""
        return self._local_data_start(self.info(name))

    def open(self, name: str) -> io.RawIOBase | BinaryIO:
        """Open a member for reading as a seekable binary file object.

        STORED members come back as a :class:`MemberRange` over the outer file
        (fast, no copy); deflated ones through :mod:`zipfile`.
        """
        info = self.info(name)
        if info.compress_type == zipfile.ZIP_STORED:
            offset = self.data_offset(name)
            if offset + info.file_size > os.fstat(self._file.fileno()).st_size:
                raise FormatError(
                    f"member {name!r} claims {info.file_size} bytes past the end of "
                    f"{str(self.path)!r}; the file is truncated or lies about sizes."
                )
            member = MemberRange(self._file.fileno(), offset, info.file_size, name)
            member.on_read = self.on_read
            return member
        try:
            return DeflatedMember(self._zip.open(info), name)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, zlib.error) as exc:
            raise FormatError(
                f"member {name!r} cannot be opened ({exc}); the zip is damaged. Re-copy it."
            ) from None

    def read(self, name: str, *, limit: int = MAX_JSON_BYTES) -> bytes:
        """Read a whole member into memory, refusing members larger than ``limit``."""
        size = self.size(name)
        if size > limit:
            raise UnsafeContentError(
                f"member {name!r} declares {size} bytes; at most {limit} expected for it."
            )
        with self.open(name) as stream:
            data = stream.read(limit + 1)
        if len(data) != size:
            raise FormatError(
                f"member {name!r} holds {len(data)} bytes but the zip directory says "
                f"{size}; the archive is damaged or lies about sizes."
            )
        return data

    def head(self, name: str, count: int) -> bytes:
        """Return the first ``count`` bytes of a member (for format detection)."""
        with self.open(name) as stream:
            return stream.read(count)

    def sha256(self, name: str) -> str:
        """Return the hex sha256 of a member's uncompressed bytes, read in chunks."""
        digest = hashlib.sha256()
        buffer = bytearray(_HASH_CHUNK)
        view = memoryview(buffer)
        with self.open(name) as stream:
            while True:
                count = stream.readinto(view)
                if not count:
                    break
                digest.update(view[:count])
        return digest.hexdigest()
