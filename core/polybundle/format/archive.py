"""Read a bundle's zip safely, without extracting anything to disk.

:class:`ArchiveReader` opens a zip, checks every member's name and kind before
anything is read, and hands out members either as bytes (small JSON members)
or as seekable file objects. A STORED member is served by :class:`MemberRange`,
a window over the outer file, so frameworks read it at file speed instead of
through :mod:`zipfile`'s slower member stream.

Example:
    >>> with ArchiveReader("run.bundle") as archive:
    ...     archive.names()
    ['params.json', 'net/model.pth', 'manifest.json']
"""

from __future__ import annotations

import io
import os
import stat
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, BinaryIO

from polybundle.errors import FormatError, UnsafeContentError
from polybundle.format import digests
from polybundle.format.seekable import SeekableReader
from polybundle.format.storage import Location, RemoteFile, locate

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
_END = struct.Struct("<4s4H2LH")  # magic, disks, entries, directory size, offset, comment
_END_MAGIC = b"PK\x05\x06"
_ZIP64_LOCATOR_MAGIC = b"PK\x06\x07"
_ZIP64_LOCATOR_SIZE = 20
_ZIP64_END = struct.Struct("<4sQ2H2L4Q")  # magic, size, versions, disks, entries, size, offset
_ZIP64_END_MAGIC = b"PK\x06\x06"
_DESCRIPTOR_MAGIC = b"PK\x07\x08"
_DIRECTORY_MODE = 0o040000
_REGULAR_MODE = 0o100000

ENDS_EARLY = "the file ends early: truncated or still being copied?"
"""What every error about a cut or incomplete zip says."""
_ALLOWED_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED}
_HASH_CHUNK = 8 * 1024 * 1024
_SHORT_TAIL = 1024  # the end record and a short comment; a longer comment reads 64 KiB more


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
    if info.is_dir():
        if file_type not in (0, _DIRECTORY_MODE) or info.file_size or info.compress_size:
            raise UnsafeContentError(
                f"member {info.filename!r} is named as a directory but has unix mode "
                f"{oct(unix_mode)} and {info.file_size} bytes; a directory entry holds nothing "
                "and has directory mode. It hides a symlink or data; polybundle refuses it."
            )
    elif file_type not in (0, _REGULAR_MODE):
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


Pread = Callable[[int, int], bytes]
"""``pread(offset, count)``: up to ``count`` bytes of a file from ``offset``."""


def open_regular(path: str | os.PathLike[str]) -> BinaryIO:
    """Open ``path`` for reading only when it is a regular file; never block.

    ``/dev/zero`` would be read until memory runs out and a FIFO would block
    forever, so anything but a regular file is refused: the type is checked
    on the path, then again on the descriptor (opened non-blocking, so a FIFO
    swapped in meanwhile cannot hang).

    Example:
        >>> open_regular("/dev/zero")
        Traceback (most recent call last):
        ...
        polybundle.errors.FormatError: '/dev/zero' is a character device, not a regular file; ...
    """
    label = str(path)
    try:
        _require_regular(os.stat(path).st_mode, label)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise FormatError(f"no file at {label!r}; expected a bundle (a zip).") from None
    except IsADirectoryError:
        raise FormatError(f"{label!r} is a directory; expected a bundle file (a zip).") from None
    except OSError as exc:
        raise FormatError(
            f"{label!r} cannot be opened ({exc.strerror}); expected a readable bundle file. "
            "Check the path and its permissions."
        ) from None
    try:
        _require_regular(os.fstat(fd).st_mode, label)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def _require_regular(mode: int, label: str) -> None:
    if stat.S_ISREG(mode):
        return
    kinds = {
        stat.S_ISDIR: "a directory",
        stat.S_ISCHR: "a character device",
        stat.S_ISBLK: "a block device",
        stat.S_ISFIFO: "a FIFO (named pipe)",
        stat.S_ISSOCK: "a socket",
    }
    kind = next((name for test, name in kinds.items() if test(mode)), "not a file")
    raise FormatError(
        f"{label!r} is {kind}, not a regular file; expected a bundle file (a zip). "
        "polybundle reads regular files only, so it never blocks on a pipe or reads a "
        "device without end. Copy the bundle to a file first."
    )


def _ends_early(label: str, detail: str) -> FormatError:
    return FormatError(
        f"{label}: {ENDS_EARLY} {detail} Wait for the copy to finish or re-copy the file."
    )


def _last_end_record(tail: bytes) -> tuple[int, tuple[Any, ...]] | None:
    """Return ``(position, fields)`` of the last end record whose comment ends ``tail``."""
    position = len(tail)
    while (position := tail.rfind(_END_MAGIC, 0, position)) >= 0:
        if position + _END.size <= len(tail):
            fields = _END.unpack_from(tail, position)
            if position + _END.size + fields[7] == len(tail):
                return position, fields
    return None


def _end_record(pread: Pread, size: int, label: str) -> tuple[int, int, int]:
    """Return ``(directory offset, directory size, end)`` from the end record at the file's end.

    ``end`` is where the zip64 end record, or else the end record, begins: the
    directory must stop exactly there. Only an end record whose comment ends
    exactly at the end of the file counts.
    """
    found = None
    for window in (_SHORT_TAIL, _END.size + 0xFFFF):  # most zips have no comment: read little
        tail_start = max(0, size - window)
        tail = pread(tail_start, size - tail_start)
        found = _last_end_record(tail)
        if found is not None or tail_start == 0:
            break
    if found is None:
        raise _ends_early(
            label, "No zip end record ends where the file ends (the last bytes of a zip)."
        )
    position, fields = found
    end = tail_start + position
    directory_size, directory_offset = fields[5], fields[6]
    locator_at = end - _ZIP64_LOCATOR_SIZE
    if locator_at >= 0 and pread(locator_at, 4) == _ZIP64_LOCATOR_MAGIC:
        record_at = locator_at - _ZIP64_END.size
        record = pread(max(record_at, 0), _ZIP64_END.size)
        if record_at < 0 or len(record) != _ZIP64_END.size or record[:4] != _ZIP64_END_MAGIC:
            raise _ends_early(label, "The zip64 end record is missing before its locator.")
        fields64 = _ZIP64_END.unpack(record)
        directory_size, directory_offset, end = fields64[8], fields64[9], record_at
    return directory_offset, directory_size, end


def _zip_ends_at(pread: Pread, position: int) -> bool:
    """Return True when a zip end record (with its comment) ends exactly at ``position``."""
    start = max(0, position - (_END.size + 0xFFFF))
    window = pread(start, position - start)
    found = len(window)
    while (found := window.rfind(_END_MAGIC, 0, found)) >= 0:
        if found + _END.size <= len(window):
            if found + _END.size + _END.unpack_from(window, found)[7] == len(window):
                return True
    return False


def _check_directory(archive: zipfile.ZipFile, pread: Pread, size: int, label: str) -> int:
    """Check the directory spans the file from its first byte; return where it starts."""
    offset, length, end = _end_record(pread, size, label)
    if offset + length != end:
        before = end - length - offset
        if before > 0 and _zip_ends_at(pread, before):
            raise UnsafeContentError(
                f"{label} is a zip put after another complete zip of {before} bytes: a "
                "streaming reader sees the first one, polybundle the second. Expected one "
                "plain zip; polybundle refuses the file."
            )
        if before > 0 and pread(0, 4) != _LOCAL_MAGIC:
            raise UnsafeContentError(
                f"{label} does not start with a zip member: {before} bytes were prepended (a "
                "self-extractor or a polyglot file). Expected a plain zip; polybundle "
                "refuses it."
            )
        raise _ends_early(
            label,
            f"The zip directory found ({length} bytes, recorded at offset {offset}) does not "
            f"end where the end record starts (offset {end}): it is the directory of a file "
            "stored inside, not of this file.",
        )
    if getattr(archive, "start_dir", offset) != offset:
        raise FormatError(
            f"{label}: zipfile reads its directory at offset {archive.start_dir}, the end "
            f"record says {offset}; the zip is damaged or ambiguous. Re-copy it."
        )
    return offset


def local_data_start(pread: Pread, info: zipfile.ZipInfo, label: str) -> int:
    """Return where ``info``'s data starts, after checking its local header agrees.

    Example:
        >>> with open("run.bundle", "rb") as f:
        ...     pread = lambda offset, count: os.pread(f.fileno(), count, offset)
        ...     local_data_start(pread, zipfile.ZipFile(f).getinfo("params.json"), "run.bundle")
        61
    """
    if info.header_offset < 0:
        raise _ends_early(
            label, f"Member {info.filename!r} is said to start before the file does."
        )
    header = pread(info.header_offset, _LOCAL_HEADER.size)
    if len(header) != _LOCAL_HEADER.size or header[:4] != _LOCAL_MAGIC:
        raise FormatError(
            f"{label}: member {info.filename!r} has no local header at offset "
            f"{info.header_offset}; the zip is damaged. Re-copy it."
        )
    fields = _LOCAL_HEADER.unpack(header)
    name_length, extra_length = fields[9], fields[10]
    raw_name = pread(info.header_offset + _LOCAL_HEADER.size, name_length)
    encoding = "utf-8" if info.flag_bits & 0x800 else "cp437"
    expected = info.orig_filename.encode(encoding, "replace")
    if raw_name != expected or fields[3] != info.compress_type:
        raise UnsafeContentError(
            f"{label}: member {info.filename!r}: its local header names {raw_name[:80]!r} with "
            f"method {fields[3]}, which disagrees with the zip directory. Readers would "
            "see different files (or one stored entry under many names); polybundle refuses "
            "the archive."
        )
    return info.header_offset + _LOCAL_HEADER.size + name_length + extra_length


def _descriptor_length(pread: Pread, at: int, info: zipfile.ZipInfo, label: str) -> int:
    """Return the length of the data descriptor at ``at``; it must match the directory."""
    raw = pread(at, 24)
    body = raw[4:] if raw[:4] == _DESCRIPTOR_MAGIC else raw
    expected = (info.CRC, info.compress_size, info.file_size)
    for layout in ("<LLL", "<LQQ"):
        width = struct.calcsize(layout)
        if len(body) >= width and struct.unpack_from(layout, body) == expected:
            return len(raw) - len(body) + width
    raise FormatError(
        f"{label}: member {info.filename!r} has no data descriptor matching the zip "
        f"directory after its data (offset {at}); the zip is damaged. Re-copy it."
    )


def _spans(
    pread: Pread, infos: Iterable[zipfile.ZipInfo], label: str
) -> list[tuple[int, int, str, int]]:
    """Return ``(header offset, end, name, data start)`` of each member, sorted."""
    spans = []
    for info in sorted(infos, key=lambda item: item.header_offset):  # forward reads only
        data_start = local_data_start(pread, info, label)
        end = data_start + info.compress_size
        if info.flag_bits & 0x8:
            end += _descriptor_length(pread, end, info, label)
        spans.append((info.header_offset, end, info.filename, data_start))
    return sorted(spans)


def check_layout(
    archive: zipfile.ZipFile, pread: Pread, size: int, label: str
) -> dict[str, int]:
    """Check that the members tile the file: byte 0 to the directory, no gap, no overlap.

    Refuses, before any member is read: an end record that is not at the end
    of the file or whose directory does not span the file (a cut file whose
    last bytes are a stored zip's end, or a zip put after another), data
    before the first member, bytes between members that no member owns,
    members sharing bytes (aliases of one entry, overlapping bombs) and local
    headers that disagree with the directory. Returns where each member's
    data starts, as ``{name: offset}``.

    Example:
        >>> with open("run.bundle", "rb") as f:
        ...     pread = lambda offset, count: os.pread(f.fileno(), count, offset)
        ...     size = os.fstat(f.fileno()).st_size
        ...     starts = check_layout(zipfile.ZipFile(f), pread, size, "run.bundle")
        >>> starts["params.json"]
        61
    """
    directory = _check_directory(archive, pread, size, label)
    spans = _spans(pread, archive.infolist(), label)
    position = 0
    for start, end, name, _ in spans:
        if start < position:
            raise UnsafeContentError(
                f"{label}: member {name!r} shares bytes with the member before it; members "
                "of a real zip never share bytes (one entry listed under many names, or an "
                "overlapping bomb). polybundle refuses the archive."
            )
        if start > position:
            where = "before the first member" if position == 0 else f"before member {name!r}"
            raise UnsafeContentError(
                f"{label}: {start - position} bytes {where} belong to no member (data "
                "prepended, or another archive hidden inside). Expected members back to "
                "back from byte 0; polybundle refuses the archive."
            )
        position = end
    if position > directory:
        raise UnsafeContentError(
            f"{label}: the last member runs {position - directory} bytes into the zip "
            "directory; the archive lies about sizes. polybundle refuses it."
        )
    if position < directory:
        raise UnsafeContentError(
            f"{label}: {directory - position} bytes before the zip directory belong to no "
            "member (hidden data). Expected the directory right after the last member; "
            "polybundle refuses the archive."
        )
    return {name: data_start for _, _, name, data_start in spans}


_EXPECTED_BUNDLE = (
    "expected a polybundle bundle: format 2, or a legacy archive of an era polybundle reads "
    "(docs/legacy.md lists them)."
)


def open_zip(
    file: BinaryIO, pread: Pread, label: str, *, expected: str = _EXPECTED_BUNDLE
) -> zipfile.ZipFile:
    """Open ``file`` as a zip; a file cut short says so (check the layout next).

    Example:
        >>> with open("run.bundle", "rb") as f:
        ...     pread = lambda offset, count: os.pread(f.fileno(), count, offset)
        ...     open_zip(f, pread, "run.bundle").namelist()
        ['params.json', 'net/model.pth', 'manifest.json']
    """
    try:
        archive = zipfile.ZipFile(file)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, struct.error) as exc:
        head = pread(0, 4)
        if not head:
            raise _ends_early(label, "It is empty (0 bytes).") from None
        if _LOCAL_MAGIC.startswith(head):
            raise _ends_early(
                label, f"It starts as a zip but has no complete zip directory ({exc})."
            ) from None
        raise FormatError(f"{label} is not a zip file ({exc}); {expected}") from None
    return archive


def check_members(infos: list[zipfile.ZipInfo], label: str) -> dict[str, zipfile.ZipInfo]:
    """Check the count, names and kinds of every member; return them by name.

    Example:
        >>> sorted(check_members(zipfile.ZipFile("run.bundle").infolist(), "run.bundle"))
        ['manifest.json', 'net/model.pth', 'params.json']
    """
    if len(infos) > MAX_MEMBERS:
        raise UnsafeContentError(
            f"{len(infos)} members in {label}; polybundle accepts at most "
            f"{MAX_MEMBERS}. This is not a model bundle."
        )
    checked: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        check_member_name(info.filename)
        check_member_kind(info)
        if info.filename in checked:
            raise UnsafeContentError(
                f"member {info.filename!r} appears twice in {label}; readers could disagree "
                "on which one is meant, so polybundle refuses the archive."
            )
        checked[info.filename] = info
    return checked



class DeflatedMember(io.RawIOBase):
    """A deflated member's stream whose read errors are :class:`FormatError`.

    :mod:`zipfile` reports damage while reading (a bad CRC, a broken deflate
    stream, data shorter than declared) with its own exceptions; frameworks
    reading the member would pass them on. This wrapper makes them typed.

    Example:
        >>> with zipfile.ZipFile("x.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        ...     archive.writestr("a", b"abc" * 100)
        >>> DeflatedMember(zipfile.ZipFile("x.zip").open("a"), "a").read(6)
        b'abcabc'
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


class MemberRange(SeekableReader):
    """A read-only, seekable window ``[start, start + size)`` of an open file.

    Reads go straight to the outer file with ``os.pread``, so several ranges
    may share one descriptor and the framework reading the member sees an
    ordinary file. ``fd`` may also be a
    :class:`~polybundle.format.storage.RemoteFile`: reads then fetch the
    window's bytes by range from the store.

    Example:
        >>> with open("run.bundle", "rb") as f:
        ...     MemberRange(f.fileno(), 0, 4).read()
        b'PK\\x03\\x04'
    """

    def __init__(self, fd: int | RemoteFile, start: int, size: int, name: str = "") -> None:
        super().__init__(size)
        self._fd = fd
        self._start = start
        self.name = name
        self.on_read: Callable[[int], None] | None = None
        """Called with each read's byte count (a progress bar); sub-ranges inherit it."""

    def readinto(self, buffer) -> int:  # type: ignore[override]
        """Fill ``buffer`` from the current position; return the byte count."""
        view = memoryview(buffer).cast("B")
        want = min(len(view), max(0, self._size - self._pos))
        done = 0
        while done < want:
            if isinstance(self._fd, RemoteFile):
                chunk = self._fd.readinto_at(view[done:want], self._start + self._pos + done)
            else:
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
    storages inside ``model.pth``. ``label`` names the file in messages
    (default: the container's name).

    Example:
        >>> with ArchiveReader("run.bundle") as archive:
        ...     NestedZip(archive.open("net/model.pth")).names()[:1]
        ['archive/data.pkl']
    """

    def __init__(self, container: BinaryIO | MemberRange, *, label: str = "") -> None:
        self.container = container
        self.label = label or repr(getattr(container, "name", None) or "a member")
        container.seek(0, io.SEEK_END)
        size = container.tell()
        self._zip = open_zip(
            container,  # type: ignore[arg-type]
            self._pread,
            self.label,
            expected=(
                "expected a zip (a backend's zipped weights file); the weights file is damaged."
            ),
        )
        try:
            self._infos = check_members(self._zip.infolist(), self.label)
            self._data_starts = check_layout(self._zip, self._pread, size, self.label)
        except BaseException:
            self._zip.close()
            raise

    def _pread(self, offset: int, count: int) -> bytes:
        self.container.seek(offset)
        return self.container.read(count)

    def names(self) -> list[str]:
        """Return the inner member names in directory order."""
        return self._zip.namelist()

    def infolist(self) -> list[zipfile.ZipInfo]:
        """Return the checked inner members' records (declared sizes, methods)."""
        return list(self._infos.values())

    def open(self, name: str) -> BinaryIO | MemberRange:
        """Open inner member ``name`` (a sub-range when STORED inside a range)."""
        info = self._infos.get(name)
        if info is None or info.is_dir():
            raise FormatError(
                f"{self.label} is a zip without {name!r}; the weights file is damaged."
            )
        container = self.container
        if isinstance(container, MemberRange) and info.compress_type == zipfile.ZIP_STORED:
            return container.subrange(self._data_starts[name], info.file_size, name)
        return self._zip.open(info)


def open_nested(container: BinaryIO | MemberRange, name: str) -> BinaryIO | MemberRange:
    """Open member ``name`` of the zip held in the seekable file ``container``.

    A STORED member of a :class:`MemberRange` container comes back as a
    sub-range (no copy); anything else through :mod:`zipfile`. Used to reach
    ``model.weights.h5`` inside ``model.keras`` inside a bundle.

    Example:
        >>> with ArchiveReader("run.bundle") as archive:
        ...     open_nested(archive.open("net/model.pth"), "archive/version").read()
        b'3\\n'
    """
    return NestedZip(container).open(name)


class ArchiveReader:
    """A checked, read-only view of a bundle's zip file.

    Opening validates the whole central directory (names, duplicates, member
    kinds, compression methods, member count) before any member is read.
    ``path`` may be a URL or a :class:`~polybundle.format.storage.Location`
    (see :mod:`polybundle.format.storage`): the archive is then read by byte
    range, the directory first and then only the members opened, and
    :attr:`path` is the location; ``whole=True`` (for reads that use every
    byte: a full load, a verification) fetches the whole object first, in one
    streamed request.

    Example:
        >>> with ArchiveReader("run.bundle") as archive:
        ...     archive.read("params.json")
        b'{"N": 4, "lr": 0.001}'
    """

    def __init__(self, path: str | os.PathLike[str] | Location, *, whole: bool = False) -> None:
        self.on_read: Callable[[int], None] | None = None
        """Given to every STORED member opened from now on (see :class:`MemberRange`)."""
        location = locate(path)
        self.path: Path | Location = location or Path(path)  # type: ignore[arg-type]
        self._remote = None if location is None else RemoteFile(location)
        if self._remote is not None and whole:
            self._remote.fetch_all()
        self._file: BinaryIO = self._remote or open_regular(self.path)  # type: ignore[assignment]
        label = repr(str(self.path))
        try:
            self._zip = open_zip(self._file, self._pread, label)
        except BaseException:
            self._file.close()
            raise
        try:
            self._infos = check_members(self._zip.infolist(), label)
            self._data_starts = check_layout(self._zip, self._pread, self.file_size(), label)
        except BaseException:
            self.close()
            raise

    def _pread(self, offset: int, count: int) -> bytes:
        if self._remote is not None:
            return self._remote.pread(offset, count)
        return os.pread(self._file.fileno(), count, offset)

    @property
    def remote(self) -> RemoteFile | None:
        """Return the ranged reader of a bundle at a URL, ``None`` for a local file."""
        return self._remote

    @property
    def source(self) -> int | RemoteFile:
        """Return what this archive's :class:`MemberRange` reads: a descriptor or a URL's reader."""
        return self._file.fileno() if self._remote is None else self._remote

    def fileno(self) -> int:
        """Return the descriptor of the open bundle file (to memory-map exactly this file).

        For a bundle at a URL it is the local cache of the bytes fetched so far
        (:meth:`~polybundle.format.storage.RemoteFile.cache_fileno`): fetch a
        range (:meth:`fetch`) before reading it through a map.
        """
        return self._file.fileno() if self._remote is None else self._remote.cache_fileno()

    def fetch(self, start: int, end: int) -> None:
        """Make bytes ``[start, end)`` of the file readable through :meth:`fileno`.

        A local file already is; a bundle at a URL fetches what it lacks of them.

        Example:
            >>> with ArchiveReader("run.bundle") as archive:
            ...     archive.fetch(0, 10)
        """
        if self._remote is not None:
            self._remote.ensure(start, end)

    def file_size(self) -> int:
        """Return the size of the open bundle file in bytes."""
        if self._remote is not None:
            return self._remote.size()
        return os.fstat(self._file.fileno()).st_size

    def identity(self) -> tuple[Any, ...]:
        """Return ``(device, inode, size, mtime_ns, ctime_ns)`` of the open file.

        Any write to the file changes ``ctime_ns``, which no program can set
        back, so an unchanged identity means unchanged bytes. A bundle at a
        URL gives ``(size, ETag)`` (or its modification time where the store
        has no ETag).

        Example:
            >>> with ArchiveReader("run.bundle") as archive:
            ...     archive.identity()[2] == os.path.getsize("run.bundle")
            True
        """
        if self._remote is not None:
            return self._remote.identity
        status = os.fstat(self._file.fileno())
        return (
            status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns
        )

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

    def directories(self) -> list[str]:
        """Return the names of directory entries (``"net/"``); a format-2 bundle has none."""
        return [name for name, info in self._infos.items() if info.is_dir()]

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
        self.info(name)
        return self._data_starts[name]

    def open(self, name: str) -> io.RawIOBase | BinaryIO:
        """Open a member for reading as a seekable binary file object.

        STORED members come back as a :class:`MemberRange` over the outer file
        (fast, no copy); deflated ones through :mod:`zipfile`.
        """
        info = self.info(name)
        if info.compress_type == zipfile.ZIP_STORED:
            offset = self.data_offset(name)
            if offset + info.file_size > self.file_size():
                raise _ends_early(
                    repr(str(self.path)),
                    f"Member {name!r} claims {info.file_size} bytes past the end of the file.",
                )
            member = MemberRange(self.source, offset, info.file_size, name)
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
            data = stream.read(size)
            if len(data) == size and stream.read(1):
                data += b"?"  # more bytes than declared: reported below
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

    def digest(self, name: str, algorithm: str = digests.DEFAULT) -> digests.Digest:
        """Return the digest of a member's uncompressed bytes, read in chunks.

        Example:
            >>> with ArchiveReader("run.bundle") as archive:
            ...     str(archive.digest("params.json", "sha256"))[:15]
            'sha256:2d234b90'
        """
        with self.open(name) as stream:
            return digests.of_stream(stream, algorithm)
