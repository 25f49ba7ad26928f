"""Bundles at URLs: ``s3://``, ``gs://``, ``memory://``, ``file://``, anything fsspec knows.

:func:`locate` turns a URL (with ``storage_options`` or a ready ``filesystem``)
into a :class:`Location`; a local path gives ``None`` and keeps polybundle's
own file code (fsspec is not even imported for it). A location reads by byte
range through :class:`RemoteFile` and writes whole objects only:
:meth:`Location.put_file` uploads a finished bundle so that it appears under
its final key complete or not at all (see :data:`WHOLE_OBJECT_PROTOCOLS`).
Every failure of the store (no bucket, no key, refused credentials, no
fsspec installed) is a :class:`~polybundle.errors.StorageError` naming the URL.

Example:
    >>> where = locate("memory://models/run.bundle")
    >>> where.write_bytes(b"PK...")
    >>> where.exists(), where.name, where.parent().names()
    (True, 'run.bundle', ['run.bundle'])
    >>> locate("run.bundle") is None  # a local path: polybundle's own file code
    True
"""

from __future__ import annotations

import os
import re
import secrets
import tempfile
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from polybundle.errors import StorageError
from polybundle.format.seekable import SeekableReader

REMOTE_EXTRA = "pip install 'polybundle[remote]'"
"""What a user without fsspec is told to run."""

WHOLE_OBJECT_PROTOCOLS = frozenset({"s3", "s3a", "gs", "gcs", "abfs", "abfss", "az"})
"""Object stores where one upload (a PUT, or a multipart upload committed last)
makes the object appear whole: bundles go straight to their key. Any other
filesystem gets a temporary key, then a move."""

MIN_READ = 4 * 1024
"""Fewest bytes one missed read fetches (a zip header, a JSON member, an index)."""

MAX_READ = 8 * 1024 * 1024
"""Most bytes one request fetches; sequential misses grow up to it."""

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")
_TEMP_MARK = ".polybundle-tmp-"


def is_url(path: object) -> bool:
    """Return True when ``path`` is a URL (``scheme://...``) or a :class:`Location`.

    Example:
        >>> is_url("s3://bucket/run.bundle"), is_url("runs/run.bundle"), is_url(Path("a"))
        (True, False, False)
    """
    return isinstance(path, Location) or (isinstance(path, str) and bool(_URL.match(path)))


def _fsspec() -> Any:
    try:
        import fsspec
    except ImportError:
        return None
    return fsspec


def _refused(url: str, exc: BaseException) -> StorageError:
    """Return the typed error for a failure of the store at ``url``."""
    if isinstance(exc, StorageError):
        return exc
    detail = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, FileNotFoundError):
        problem = (f"no such object or bucket ({detail}); check the bucket and key, and that "
                   "the bundle was saved there.")
    elif isinstance(exc, PermissionError):
        problem = (f"the store refused access ({detail}); check the credentials and endpoint "
                   "given in storage_options (or the environment) and their permissions.")
    else:
        problem = (f"the store failed ({detail}); check the URL, the endpoint and the network, "
                   "then try again.")
    return StorageError(url, problem)


@contextmanager
def store_errors(url: str) -> Iterator[None]:
    """Turn anything a filesystem raises inside the block into a :class:`StorageError`.

    Example:
        >>> with store_errors("memory://nowhere"):
        ...     raise FileNotFoundError("nowhere")
        Traceback (most recent call last):
        polybundle.errors.StorageError: 'memory://nowhere': no such object or bucket ...
    """
    try:
        yield
    except StorageError:
        raise
    except Exception as exc:  # each filesystem raises its own types; callers get one
        raise _refused(url, exc) from exc


def locate(
    path: object,
    storage_options: dict[str, Any] | None = None,
    filesystem: Any = None,
) -> Location | None:
    """Return the :class:`Location` of a URL, or ``None`` for a local path.

    ``storage_options`` go to the filesystem (credentials, ``endpoint_url``,
    ...), as in pandas and Lightning; ``filesystem`` is a ready
    ``fsspec.AbstractFileSystem`` used instead. A :class:`Location` is
    returned as is. A local path with either of them is refused, as is a URL
    when fsspec is not installed.

    Example:
        >>> locate("memory://a/b.bundle").url
        'memory://a/b.bundle'
        >>> locate("b.bundle", storage_options={"anon": True})
        Traceback (most recent call last):
        polybundle.errors.StorageError: 'b.bundle': storage_options and filesystem are for URLs ...
    """
    if isinstance(path, Location):
        return path
    if not is_url(path):
        if storage_options or filesystem is not None:
            raise StorageError(
                str(path),
                "storage_options and filesystem are for URLs (s3://bucket/key, memory://...); "
                "this is a local path. Drop them, or give the URL.",
            )
        return None
    url = str(path)
    fsspec = _fsspec()
    if fsspec is None:
        raise StorageError(
            url,
            f"reading and writing URLs needs fsspec (and s3fs for s3://), which is not "
            f"installed. Run: {REMOTE_EXTRA}",
        )
    with store_errors(url):
        if filesystem is not None:
            return Location(url, filesystem, filesystem._strip_protocol(url))
        fs, inner = fsspec.core.url_to_fs(url, **(storage_options or {}))
    return Location(url, fs, inner)


@dataclass(frozen=True)
class Location:
    """One object (or folder) on an fsspec filesystem: ``fs`` and its ``path`` there.

    Example:
        >>> where = locate("memory://runs/a.bundle")
        >>> where.write_bytes(b"abc")
        >>> where.read_bytes(limit=10), where.size()
        (b'abc', 3)
    """

    url: str
    fs: Any
    path: str

    def __str__(self) -> str:
        return self.url

    @property
    def name(self) -> str:
        """Return the last part of the key (``run.bundle``)."""
        return self.path.rstrip("/").rpartition("/")[2]

    @property
    def atomic_put(self) -> bool:
        """Return True when one upload makes the object appear whole (an object store)."""
        protocols = self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        return bool(WHOLE_OBJECT_PROTOCOLS.intersection(protocols))

    def __truediv__(self, name: str) -> Location:
        return self.child(name)

    def mkdir(self, *, parents: bool = True, exist_ok: bool = True) -> None:
        """Make the folder where the store has folders; object stores have prefixes only."""
        if self.atomic_put:
            return
        with store_errors(self.url):
            self.fs.makedirs(self.path, exist_ok=exist_ok)

    def is_file(self) -> bool:
        """Return True when an object is stored under this key (as :meth:`exists`)."""
        return self.exists()

    def child(self, name: str) -> Location:
        """Return the location of ``name`` inside this folder."""
        url, inner = self.url.rstrip("/"), self.path.rstrip("/")
        return Location(f"{url}/{name}", self.fs, f"{inner}/{name}")

    def parent(self) -> Location:
        """Return the folder (prefix) holding this object."""
        url, inner = self.url.rstrip("/"), self.path.rstrip("/")
        return Location(url.rpartition("/")[0], self.fs, inner.rpartition("/")[0])

    def details(self) -> dict[str, Any]:
        """Return the store's record of the object (``size``, ``ETag``...): one request."""
        with store_errors(self.url):
            self.fs.invalidate_cache(self.path)  # another process may have replaced it
            info = self.fs.info(self.path)
        if info.get("type") == "directory":
            raise StorageError(self.url, "is a folder (prefix); expected a bundle object.")
        return info

    def size(self) -> int:
        """Return the object's size in bytes."""
        return int(self.details()["size"])

    def exists(self) -> bool:
        """Return True when an object is stored under this key."""
        with store_errors(self.url):
            return bool(self.fs.isfile(self.path))

    def names(self) -> list[str]:
        """Return the names of the objects directly inside this folder, sorted."""
        with store_errors(self.url):
            try:
                found = self.fs.ls(self.path, detail=True, refresh=True)
            except FileNotFoundError:
                return []
        return sorted(
            entry["name"].rstrip("/").rpartition("/")[2]
            for entry in found if entry.get("type") != "directory"
        )

    def fetch(self, start: int, end: int) -> bytes:
        """Return bytes ``[start, end)`` of the object (one ranged request)."""
        with store_errors(self.url):
            return self.fs.cat_file(self.path, start=start, end=end)

    def read_bytes(self, *, limit: int) -> bytes:
        """Return the whole object, refusing one over ``limit`` bytes."""
        size = self.size()
        if size > limit:
            raise StorageError(self.url, f"holds {size} bytes; at most {limit} expected here.")
        return self.fetch(0, size) if size else b""

    def get_file(self, local: str | os.PathLike[str]) -> None:
        """Download the whole object to the local file ``local`` (streamed, not held in memory).

        Example:
            >>> locate("memory://down/a.bin").write_bytes(b"abc")
            >>> locate("memory://down/a.bin").get_file("a-copy.bin")
            >>> Path("a-copy.bin").read_bytes()
            b'abc'
        """
        self.details()  # a folder or a missing key says so in this store's words
        with store_errors(self.url):
            self.fs.get_file(self.path, os.fspath(local))

    def delete(self) -> None:
        """Remove the object; one already gone is fine."""
        with store_errors(self.url):
            try:
                self.fs.rm_file(self.path)
            except FileNotFoundError:
                pass

    def _temporary(self) -> Location:
        parent = self.parent()
        name = f".{self.name}{_TEMP_MARK}{os.getpid()}-{secrets.token_hex(4)}"
        return parent.child(name)

    def put_file(self, local: str | os.PathLike[str]) -> None:
        """Upload the finished file ``local`` so it appears under this key whole or not at all.

        On an object store (:data:`WHOLE_OBJECT_PROTOCOLS`) the upload is one
        PUT, or a multipart upload the store assembles only when it is
        committed last; elsewhere the bytes go to a temporary key first and
        are then moved over this one.

        Example:
            >>> Path("a.bin").write_bytes(b"abc")
            3
            >>> locate("memory://up/a.bin").put_file("a.bin")
            >>> locate("memory://up/a.bin").read_bytes(limit=3)
            b'abc'
        """
        with store_errors(self.url):
            if self.atomic_put:
                self.fs.put_file(os.fspath(local), self.path)
                return
            temporary = self._temporary()
            try:
                self.fs.put_file(os.fspath(local), temporary.path)
                self.fs.mv(temporary.path, self.path)
            except BaseException:
                temporary.delete()
                raise

    def write_bytes(self, data: bytes) -> None:
        """Store ``data`` under this key so readers see the old object or the new one."""
        with tempfile.NamedTemporaryFile(prefix="polybundle-upload-") as staged:
            staged.write(data)
            staged.flush()
            self.put_file(staged.name)


def staging_path(location: Location) -> Path:
    """Return the local path beside which a bundle for ``location`` is written first.

    Example:
        >>> staging_path(locate("memory://m/run.bundle")).name
        'run.bundle'
    """
    return Path(tempfile.gettempdir()) / (location.name or "bundle")


class _Fetched:
    """The fetched bytes of one version of one object: a sparse local file and its ranges."""

    def __init__(self, location: Location, size: int) -> None:
        self.location = location
        self.size = size
        self.file = tempfile.NamedTemporaryFile(prefix="polybundle-range-")  # noqa: SIM115
        os.ftruncate(self.file.fileno(), size)
        self.have: list[tuple[int, int]] = []
        self.lock = threading.Lock()
        self.requests = 0
        self.fetched = 0

    def missing(self, start: int, end: int) -> list[tuple[int, int]]:
        gaps, position = [], start
        for low, high in self.have:
            if high <= position:
                continue
            if low >= end:
                break
            if low > position:
                gaps.append((position, low))
            position = max(position, high)
        if position < end:
            gaps.append((position, end))
        return gaps

    def add(self, start: int, end: int) -> None:
        merged: list[tuple[int, int]] = []
        for low, high in sorted([*self.have, (start, end)]):
            if merged and low <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], high))
            else:
                merged.append((low, high))
        self.have = merged

    def ensure(self, start: int, end: int) -> None:
        end = min(end, self.size)
        with self.lock:
            for low, high in self.missing(max(start, 0), end):
                for piece in range(low, high, MAX_READ):
                    stop = min(piece + MAX_READ, high)
                    data = self.location.fetch(piece, stop)
                    if len(data) != stop - piece:
                        raise self.changed(f"returned {len(data)} bytes for {piece}..{stop}")
                    os.pwrite(self.file.fileno(), data, piece)
                    self.requests += 1
                    self.fetched += len(data)
                    self.add(piece, stop)

    def fetch_all(self) -> None:
        with self.lock:
            if self.have == [(0, self.size)]:
                return
            with store_errors(self.location.url):
                self.location.fs.get_file(self.location.path, self.file.name)
            self.requests += 1
            self.fetched += self.size
            if os.fstat(self.file.fileno()).st_size != self.size:
                self.have = []
                os.ftruncate(self.file.fileno(), self.size)
                raise self.changed("its size changed")
            self.have = [(0, self.size)] if self.size else []

    def changed(self, what: str) -> StorageError:
        return StorageError(
            self.location.url,
            f"{what}; the object of {self.size} bytes changed or was cut while it was read. "
            "Load it again.",
        )


_OPEN: weakref.WeakValueDictionary[tuple[str, int, str], _Fetched] = (
    weakref.WeakValueDictionary()
)
_OPEN_LOCK = threading.Lock()


def _fetched(location: Location, size: int, etag: str) -> _Fetched:
    """Return the fetched bytes of this version of the object while anything still holds them.

    A lazy :class:`~polybundle.api.bundle.Bundle` holds them, so its
    ``tensors()`` calls reuse the index read by ``load``; they are dropped
    (and their local file removed) with the last holder.
    """
    if not etag:  # no version tag: a replaced object of the same size could not be told apart
        return _Fetched(location, size)
    key = (location.url, size, etag)
    with _OPEN_LOCK:
        found = _OPEN.get(key)
        if found is None:
            found = _OPEN[key] = _Fetched(location, size)
    return found


class RemoteFile(SeekableReader):
    """A read-only, seekable view of an object, fetched by byte range when first read.

    Fetched bytes go to a private, sparse temporary file of the object's
    size, so nothing is fetched twice and a memory map of that file
    (:meth:`cache_fileno`) holds them without a second copy in memory; the
    next open of the same version of the object (same ``ETag``) reuses them
    while anything holds them (a lazy bundle does: :attr:`keep`).
    A read that misses fetches at least :data:`MIN_READ` bytes (from the
    read on, or the object's last ones near its end); misses that follow
    each other double that, up to :data:`MAX_READ` per request, so a scan
    streams in large requests while scattered small reads stay small.
    :meth:`fetch_all` gets the whole object in one streamed request.
    ``requests`` and ``fetched`` count what was asked of the store.

    Example:
        >>> where = locate("memory://r/data.bin")
        >>> where.write_bytes(bytes(range(256)) * 1024)
        >>> remote = RemoteFile(where)
        >>> remote.pread(1000, 4), remote.requests, remote.fetched
        (b'\\xe8\\xe9\\xea\\xeb', 1, 4096)
        >>> remote.ensure(1000, 1010), remote.requests  # already fetched: no request
        (None, 1)
    """

    def __init__(self, location: Location) -> None:
        details = location.details()
        super().__init__(int(details["size"]))
        self.location = location
        self.name = location.url
        size = self._size
        etag = str(details.get("ETag") or details.get("etag") or "")
        self.identity = (size, etag or str(details.get("mtime") or ""))
        """``(size, ETag or modification time)`` of the object when it was opened."""
        self._fetched = _fetched(location, size, etag)
        self._ahead = MIN_READ
        self._last_end = -1

    @property
    def keep(self) -> object:
        """Return the fetched bytes, for an object that should keep them reusable."""
        return self._fetched

    @property
    def requests(self) -> int:
        """Return how many requests fetched bytes of this version of the object."""
        return self._fetched.requests

    @property
    def fetched(self) -> int:
        """Return how many bytes were fetched of this version of the object."""
        return self._fetched.fetched

    def size(self) -> int:
        """Return the object's size in bytes."""
        return self._size

    def cache_fileno(self) -> int:
        """Return the descriptor of the local cache file (to memory-map fetched bytes)."""
        return self._fetched.file.fileno()

    def ensure(self, start: int, end: int) -> None:
        """Fetch whatever of bytes ``[start, end)`` is not cached yet (exactly that)."""
        self._fetched.ensure(start, end)

    def fetch_all(self) -> None:
        """Fetch the whole object in one streamed request (unless it is all cached)."""
        self._fetched.fetch_all()

    def complete(self) -> bool:
        """Return True when every byte of the object is cached."""
        return not self._fetched.missing(0, self._size)

    def _read_window(self, offset: int, count: int) -> None:
        """Fetch ``[offset, offset + count)``, read ahead by the current window when it misses."""
        end = min(self._size, offset + count)
        if not self._fetched.missing(offset, end):
            return
        self._ahead = min(MAX_READ, self._ahead * 2) if offset == self._last_end else MIN_READ
        stop = min(self._size, max(end, offset + self._ahead))
        start = max(0, min(offset, stop - self._ahead))  # at the end: the window reaches back
        self.ensure(start, stop)
        self._last_end = stop

    def readinto_at(self, buffer: Any, offset: int) -> int:
        """Fill ``buffer`` from byte ``offset`` of the object; return the count (0 at the end)."""
        view = memoryview(buffer).cast("B")
        count = max(0, min(len(view), self._size - offset))
        if not count:
            return 0
        self._read_window(offset, count)
        done = 0
        while done < count:
            done += os.preadv(self.cache_fileno(), [view[done:count]], offset + done)
        return done

    def pread(self, offset: int, count: int) -> bytes:
        """Return up to ``count`` bytes from ``offset`` (a zip reader's ``pread``)."""
        buffer = bytearray(max(0, min(count, self._size - offset)))
        return bytes(buffer[: self.readinto_at(buffer, offset)])

    def readinto(self, buffer: Any) -> int:  # type: ignore[override]
        """Fill ``buffer`` from the current position; return the count."""
        done = self.readinto_at(buffer, self._pos)
        self._pos += done
        return done
