"""Write a bundle's zip atomically, hashing every member as it is written.

:class:`ArchiveWriter` writes into a temporary file in the target directory;
:meth:`ArchiveWriter.commit` fsyncs it, moves it over the target with
:func:`os.replace` and fsyncs the directory, so a crash leaves either the old
bundle or the new one. Leaving the ``with`` block on an error removes the
temporary file (before anything else, so a full disk is freed even when closing
fails) and leaves the target untouched; an error of the operating system (full
disk, read-only folder, no permission) becomes a
:class:`~polybundle.errors.WriteError` naming the path and the OS's reason.
A bundle gets the permissions of any file a tool writes, ``0o666`` less the
umask (:func:`file_mode`), or the ``mode`` asked for; they are set on the
temporary file (created ``0o600``) before the rename, so the bundle never
appears with other permissions.

Temporary files are named ``.<target>.polybundle-tmp-<pid>-<random>`` and are
held under an advisory lock while written. The next write into the same
folder removes those of writers that died (SIGKILL, power loss): a temporary
file is removed only when its process is gone *and* nobody holds its lock
(:func:`remove_stale_temps`), so a live writer's file is never touched.

Large members are written for reading without copies: STORED, with their
data starting at a multiple of :data:`ALIGNMENT` in the file (the local
header's extra field is padded, as Android's zipalign does), so a reader can
memory-map them and every tensor stays aligned. Each member's digest is of
the algorithm the writer was given (:mod:`polybundle.format.digests`:
xxh3-128 by default, sha256 on request). A large STORED member is hashed
while it is written: with xxh3-128 inline, in the writing thread, where the
bytes are hot (it runs at memory speed); with sha256 by a background thread
that reads the bytes back from the page cache just behind the framework
writing them, so on a machine with a free core the slow hash costs little
wall time. The zip header's CRC-32 is computed in the writing thread
(:mod:`polybundle.format.crc`: ISA-L when installed). Small or deflated
members are hashed inline.

Example:
    >>> with ArchiveWriter("out.bundle") as writer:
    ...     record = writer.write_bytes("params.json", b"{}")
    ...     writer.commit()
    >>> zipfile.ZipFile("out.bundle").namelist()
    ['params.json']
"""

from __future__ import annotations

import io
import os
import re
import secrets
import struct
import threading
import zipfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from polybundle.errors import PolybundleError, WriteError
from polybundle.format import crc, digests
from polybundle.format.digests import Digest
from polybundle.format.storage import Location, locate, staging_path

ALIGNMENT = 64
"""Byte boundary at which every STORED member's data starts."""

PADDING_FIELD = 0xD935
"""Extra-field id of the alignment padding (the id Android's zipalign uses)."""

_ZIP64_EXTRA = 20  # the zip64 extra field zipfile appends to a forced-zip64 local header
_LOCAL_HEADER = 30
_CHUNK = 4 * 1024 * 1024

TEMP_MARK = ".polybundle-tmp-"
"""What every temporary file's name holds: ``.<target>.polybundle-tmp-<pid>-<random>``."""
_TEMP_NAME = re.compile(r"^\..*\.polybundle-tmp-(?P<pid>[0-9]{1,10})-[0-9a-f]{8,32}$", re.DOTALL)
_NAME_KEEP = 180  # characters of the target's name kept in the temporary name (NAME_MAX is 255)


@dataclass(frozen=True)
class MemberRecord:
    """Size and named digest of one member, as the manifest records them.

    Example:
        >>> record = MemberRecord("params.json", 2, digests.of_bytes(b"{}"))
        >>> record.to_json()
        {'size': 2, 'digest': 'xxh3-128:dc7048f8f8747f561349cde127705c16'}
    """

    name: str
    size: int
    digest: Digest

    def to_json(self) -> dict[str, int | str]:
        """Return the manifest's record of this member."""
        return digests.member_record(self.size, self.digest)


class HashingWriter(io.RawIOBase):
    """A write-only stream that hashes and counts what passes through it.

    Frameworks write their native files into it (``torch.save``, Keras'
    ``save_model``) while it forwards the bytes into the zip member.
    ``algorithm`` names the digest (:data:`~polybundle.format.digests.ALGORITHMS`).
    With ``readback=(file, start)`` (the member's bytes go straight into
    ``file`` from ``start``) it also computes the CRC-32, and a slow
    algorithm (sha256) is computed by a thread reading the file back.

    Example:
        >>> sink = io.BytesIO()
        >>> w = HashingWriter(sink)
        >>> w.write(b"abc")
        3
        >>> w.size, str(w.digest())
        (3, 'xxh3-128:06b05ab6733a618578af5f94892f3950')
        >>> w = HashingWriter(io.BytesIO(), algorithm="sha256")
        >>> _ = w.write(b"abc")
        >>> w.digest().hex[:8]
        'ba7816bf'
    """

    def __init__(
        self,
        sink: io.RawIOBase | io.BufferedIOBase,
        *,
        algorithm: str = digests.DEFAULT,
        readback: tuple[BinaryIO, int] | None = None,
    ) -> None:
        super().__init__()
        self._sink = sink
        self.algorithm = digests.algorithm(algorithm).name
        """The name of the digest's algorithm."""
        self._digest = digests.new(algorithm)
        self._trailing: _TrailingHasher | None = None
        self._file: BinaryIO | None = None
        self.on_write: Callable[[int], None] | None = None
        """Called with each write's byte count (e.g. to advance a progress bar)."""
        if readback is not None:
            self._file, start = readback
            if not digests.algorithm(algorithm).inline:
                self._trailing = _TrailingHasher(self._file.fileno(), start, algorithm)
        self._crc: int | None = None if readback is None else 0
        self.size = 0
        self.os_error: OSError | None = None
        """The first OS error a write met (a framework may raise it as something else)."""

    def writable(self) -> bool:
        """Return True: this stream only writes."""
        return True

    def write(self, data) -> int:  # type: ignore[override]
        """Hash ``data``, forward it to the sink and return its length."""
        view = memoryview(data).cast("B")
        try:
            self._sink.write(view)
        except OSError as exc:  # kept: frameworks re-raise it as their own error
            self.os_error = self.os_error or exc
            raise
        self.size += len(view)
        if self._crc is not None:
            self._crc = crc.crc32(view, self._crc)  # cheap, and the bytes are hot here
        if self._trailing is not None and self._file is not None:
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

    def digest(self) -> Digest:
        """Return the named digest of everything written (waits for a trailing hasher)."""
        if self._trailing is not None:
            return Digest(self.algorithm, self._trailing.finish())
        return Digest(self.algorithm, self._digest.hexdigest())

    @property
    def crc32(self) -> int | None:
        """Return the CRC-32 of what was written when written with ``readback``, else None.

        The CRC is computed in the writing thread, where the bytes are hot; a
        sha256 digest, several times slower, is computed by the trailing
        thread meanwhile, so the two share two cores.
        """
        return self._crc


class _TrailingHasher:
    """Hash bytes ``[start, start + n)`` of a file as ``n`` grows, in a thread."""

    def __init__(self, fd: int, start: int, algorithm: str) -> None:
        self._fd = fd
        self._start = start
        self._written = 0
        self._closed = False
        self._result: str | None = None
        self._error: BaseException | None = None
        self._digest = digests.new(algorithm)
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


def os_reason(exc: OSError) -> str:
    """Return the operating system's words for ``exc`` (``strerror``, else ``str``).

    Example:
        >>> os_reason(OSError(28, "No space left on device"))
        'No space left on device'
    """
    return exc.strerror or str(exc) or type(exc).__name__


def find_os_error(exc: BaseException | None) -> OSError | None:
    """Return ``exc`` or the first :class:`OSError` it was raised from, else ``None``.

    Example:
        >>> find_os_error(RuntimeError("x")) is None
        True
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _lock(fd: int) -> None:
    """Hold an exclusive advisory lock on ``fd`` for as long as it is open (best effort)."""
    try:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except (ImportError, OSError):  # no flock here (platform, file system): the pid still counts
        pass


def create_temp(target: Path) -> tuple[int, Path]:
    """Create and lock a new temporary file beside ``target``; return ``(fd, path)``.

    The name is ``.<target name>.polybundle-tmp-<pid>-<random>``; the file is
    created exclusively (mode 0600, so nobody reads a half-written bundle; the
    writer gives it its final mode before the rename) and held under
    :func:`fcntl.flock` until closed.

    Example:
        >>> fd, path = create_temp(Path("run.bundle"))
        >>> path.name
        '.run.bundle.polybundle-tmp-...-...'
        >>> os.close(fd)
    """
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    flags |= getattr(os, "O_BINARY", 0) | getattr(os, "O_NOFOLLOW", 0)
    for attempt in range(100):
        name = f".{target.name[:_NAME_KEEP]}{TEMP_MARK}{os.getpid()}-{secrets.token_hex(4)}"
        path = target.parent / name
        try:
            fd = os.open(path, flags, 0o600)
        except FileExistsError:  # 2**32 names per pid: try another
            if attempt == 99:
                raise
            continue
        _lock(fd)
        return fd, path
    raise AssertionError("unreachable")


_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """Return this process's umask without changing it for other threads.

    Linux reports it in ``/proc/self/status``; elsewhere it is read by setting
    ``0o077`` and back under a lock, so a file another thread creates meanwhile
    is at worst private, never more open than asked.

    Example:
        >>> 0 <= current_umask() <= 0o777
        True
    """
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        umask = os.umask(0o077)
        os.umask(umask)
    return umask


def file_mode(mode: int | None = None) -> int:
    """Return the permission bits a new bundle gets: ``mode``, or ``0o666`` less the umask.

    ``None`` gives what any file a tool creates gets (``0o644`` under the
    usual umask ``022``); an int from ``0`` to ``0o777`` is used as given
    (``0o600`` keeps a bundle private whatever the umask). Anything else is a
    :class:`~polybundle.errors.PolybundleError`.

    Example:
        >>> oct(file_mode(0o600))
        '0o600'
        >>> file_mode(None) == 0o666 & ~current_umask()
        True
        >>> file_mode(0o4755)
        Traceback (most recent call last):
        polybundle.errors.PolybundleError: mode is 0o4755; expected permission bits from 0 to
        0o777 (e.g. mode=0o600 for a private file), or None to follow the umask.
    """
    if mode is None:
        return 0o666 & ~current_umask()
    if not isinstance(mode, int) or isinstance(mode, bool) or not 0 <= mode <= 0o777:
        shown = oct(mode) if isinstance(mode, int) and not isinstance(mode, bool) else repr(mode)
        raise PolybundleError(
            f"mode is {shown}; expected permission bits from 0 to 0o777 (e.g. mode=0o600 for "
            "a private file), or None to follow the umask."
        )
    return mode


def _set_mode(fd: int, path: Path, mode: int) -> None:
    """Give the open temporary file ``mode`` before it is renamed into place."""
    if hasattr(os, "fchmod"):
        os.fchmod(fd, mode)
    else:  # Windows: only the read-only bit exists
        os.chmod(path, mode)


def _process_alive(pid: int) -> bool:
    if pid <= 0 or pid == os.getpid() or os.name == "nt":
        return True  # not a writer's pid, our own live writer; on Windows signal 0 is Ctrl-C
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except (OverflowError, OSError):
        return False
    return True


def _nobody_holds(path: str) -> bool:
    """Return True when no process holds ``path``'s advisory lock (or locks do not exist)."""
    try:
        import fcntl
    except ImportError:
        return True
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:  # flock unsupported on this file system: the pid alone decides
        return True
    finally:
        os.close(fd)
    return True


def remove_stale_temps(directory: str | os.PathLike[str]) -> list[str]:
    """Remove temporary files of dead writers from ``directory``; return their names.

    A file counts as stale only when its name has the :data:`TEMP_MARK` form,
    it is a regular file, the process id in its name is not alive and no one
    holds its lock; anything else is left alone. Failures are ignored (the
    write that follows reports its own).

    Example:
        >>> fd, path = create_temp(Path("run.bundle"))
        >>> remove_stale_temps(".")  # this process, the writer, is alive
        []
        >>> os.close(fd)
    """
    removed = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP_NAME.match(entry.name)
        if match is None or _process_alive(int(match["pid"])):
            continue
        try:
            if not entry.is_file(follow_symlinks=False) or not _nobody_holds(entry.path):
                continue
            os.unlink(entry.path)
        except OSError:
            continue
        removed.append(entry.name)
    return removed


def write_error(exc: OSError, target: Path | Location, detail: str = "") -> WriteError:
    """Return the :class:`~polybundle.errors.WriteError` that reports ``exc`` for ``target``.

    Example:
        >>> str(write_error(OSError(30, "Read-only file system"), Path("a/b.bundle")))
        "could not write 'a/b.bundle': Read-only file system. Nothing was changed on disk. ..."
    """
    return WriteError(str(target), os_reason(exc), detail)


def atomic_write_bytes(
    path: str | os.PathLike[str] | Location, data: bytes, *, mode: int | None = None
) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the new one, never a part.

    The file gets :func:`file_mode` ``(mode)``: the umask's permissions unless
    ``mode`` is given. On any failure the temporary file is removed; an OS
    error becomes a :class:`~polybundle.errors.WriteError`.

    Example:
        >>> import tempfile
        >>> target = Path(tempfile.mkdtemp()) / "checkpoints.json"
        >>> atomic_write_bytes(target, b"{}")
        >>> target.read_bytes()
        b'{}'

    ``path`` may be a URL or a :class:`~polybundle.format.storage.Location`:
    the object is then uploaded whole (``mode`` does not apply).
    """
    remote = locate(path)
    if remote is not None:
        remote.write_bytes(data)
        return
    atomic_write_chunks(path, [data], mode=mode)


def atomic_write_chunks(
    path: str | os.PathLike[str],
    chunks: Iterable[bytes],
    *,
    check: Callable[[Path], None] | None = None,
    mode: int | None = None,
) -> None:
    """Write ``chunks`` to ``path`` atomically; ``check(temp)`` may refuse before it appears.

    The one atomic-path routine for whole files (bundles have
    :class:`ArchiveWriter`): stale temporary files of dead writers are
    removed, the bytes go to a locked temporary file beside ``path``, which is
    fsynced, given :func:`file_mode` ``(mode)`` (the umask's permissions
    unless ``mode`` is given), checked, renamed over ``path`` and the folder
    fsynced. On any failure the temporary file is removed and
    ``path`` is left as it was; an OS error becomes a
    :class:`~polybundle.errors.WriteError`.

    Example:
        >>> import tempfile
        >>> target = Path(tempfile.mkdtemp()) / "copy.bin"
        >>> atomic_write_chunks(target, [b"ab", b"cd"], check=lambda temp: None)
        >>> target.read_bytes()
        b'abcd'
    """
    target = Path(path)
    permissions = file_mode(mode)
    remove_stale_temps(target.parent)
    try:
        fd, temp = create_temp(target)
    except OSError as exc:
        raise write_error(exc, target) from None
    try:
        try:
            for chunk in chunks:
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
            os.fsync(fd)
            _set_mode(fd, temp, permissions)
        finally:
            os.close(fd)
        if check is not None:
            check(temp)
        os.replace(temp, target)
    except BaseException as exc:
        temp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise write_error(exc, target) from exc
        raise
    _fsync_directory(target.parent)


class ArchiveWriter:
    """Write a zip into a temporary file and publish it atomically.

    Members go in STORED unless ``compress=True`` is asked for (small JSON).
    Every member's size and digest (of algorithm ``digest``, see
    :mod:`polybundle.format.digests`) is recorded in :attr:`records`. Creating
    the writer first removes stale temporary files of dead writers from the
    target's folder (:func:`remove_stale_temps`). The bundle gets
    :func:`file_mode` ``(mode)``: ``0o666`` less the umask, as any file a tool
    writes, or ``mode`` when given; the temporary file stays ``0o600`` until
    :meth:`commit` sets it, just before the rename.

    ``target`` may be a URL or a :class:`~polybundle.format.storage.Location`:
    the zip is then written to a local temporary file and :meth:`commit`
    uploads it whole (:meth:`~polybundle.format.storage.Location.put_file`),
    so the object appears under its key complete or not at all.

    Example:
        >>> with ArchiveWriter("out.bundle") as writer:
        ...     with writer.stream("net/weights.bin") as stream:
        ...         stream.write(b"0123")
        ...     writer.commit()
        4
        >>> zipfile.ZipFile("out.bundle").read("net/weights.bin")
        b'0123'
    """

    def __init__(
        self,
        target: str | os.PathLike[str] | Location,
        *,
        mode: int | None = None,
        digest: str = digests.DEFAULT,
    ) -> None:
        self.mode = file_mode(mode)
        """The permission bits the bundle gets."""
        self.digest = digests.algorithm(digest).name
        """The algorithm of every member's digest."""
        self.remote = locate(target)
        """Where the bundle is uploaded on commit; ``None`` for a local path."""
        self.target: Path | Location = self.remote or Path(target)  # type: ignore[arg-type]
        self.records: list[MemberRecord] = []
        self._committed = False
        self._os_error: OSError | None = None
        beside = Path(target) if self.remote is None else staging_path(self.remote)  # type: ignore[arg-type]
        remove_stale_temps(beside.parent)
        try:
            fd, self._temp_path = create_temp(beside)
        except OSError as exc:
            raise write_error(exc, self.target) from None
        self._file = os.fdopen(fd, "w+b")
        self._zip = zipfile.ZipFile(self._file, "w", allowZip64=True)

    @property
    def temp_path(self) -> Path:
        """Return the path of the temporary file being written."""
        return self._temp_path

    def __enter__(self) -> ArchiveWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._committed:
            return
        self.abort()
        if not isinstance(exc, Exception) or isinstance(exc, PolybundleError):
            return  # no error, an interrupt (KeyboardInterrupt), or already typed
        cause = find_os_error(exc) or self._os_error
        if cause is not None:
            raise write_error(cause, self.target) from exc

    def _info(self, name: str, compress: bool) -> zipfile.ZipInfo:
        info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
        info.compress_type = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
        info.external_attr = 0o100644 << 16
        return info

    @contextmanager
    def stream(self, name: str, *, compress: bool = False) -> Iterator[HashingWriter]:
        """Open member ``name`` for writing; yields a :class:`HashingWriter`.

        A STORED member starts on :data:`ALIGNMENT`; its bytes go straight to
        the file, which the writing thread hashes and CRCs as it passes (a
        sha256 digest is computed by a trailing thread from the page cache).
        A deflated member goes through zipfile and is hashed inline.
        """
        info = self._info(name, compress)
        if compress:
            with self._zip.open(info, "w", force_zip64=True) as member:
                writer = HashingWriter(member, algorithm=self.digest)
                try:
                    yield writer
                finally:
                    self._os_error = self._os_error or writer.os_error
            self.records.append(MemberRecord(name, writer.size, writer.digest()))
            return
        info.extra = _padding(self._file.tell(), name)
        with self._zip.open(info, "w", force_zip64=True) as member:
            writer = HashingWriter(
                self._file, algorithm=self.digest, readback=(self._file, self._file.tell())
            )
            try:
                yield writer
            finally:
                self._os_error = self._os_error or writer.os_error
                digest = writer.digest()
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
        """Finish the zip, fsync it, move it over the target and fsync the directory.

        On an OS error (a full disk at the last bytes) everything is discarded
        and a :class:`~polybundle.errors.WriteError` is raised. A bundle for a
        URL is uploaded instead of renamed; a failing store raises
        :class:`~polybundle.errors.StorageError` and leaves the key as it was.
        """
        try:
            self._zip.close()
            self._file.flush()
            os.fsync(self._file.fileno())
            _set_mode(self._file.fileno(), self._temp_path, self.mode)
            self._file.close()
            if self.remote is None:
                os.replace(self._temp_path, self.target)
        except OSError as exc:
            self.abort()
            raise write_error(exc, self.target) from exc
        if self.remote is not None:
            try:
                self.remote.put_file(self._temp_path)
            finally:
                self.abort()  # the local copy: uploaded, or refused by the store
            self._committed = True
            return
        self._committed = True
        _fsync_directory(self.target.parent)

    def abort(self) -> None:
        """Discard everything written; the target is left as it was.

        The temporary file is unlinked first: closing a file on a full disk
        fails (the buffered tail cannot be flushed), and the file must not
        outlive that failure. Idempotent.
        """
        try:
            self._temp_path.unlink(missing_ok=True)
        except OSError:  # the folder went read-only meanwhile; nothing more can be done
            pass
        try:
            self._zip.close()
        except Exception:  # the zip may be half written; it is being discarded
            pass
        try:
            self._file.close()  # closes the descriptor even when the flush fails
        except OSError:
            pass
