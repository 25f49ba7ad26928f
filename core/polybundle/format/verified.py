"""A bundle member that checks its digest as it is read: verification in the same pass.

:class:`VerifiedMember` is a :class:`~polybundle.format.archive.MemberRange`
that feeds every byte read in order to a digest. A reader that goes through
the member front to back (the torch backend reads each storage straight into
its tensor, in file order) therefore hashes it as a side effect of reading,
with no second pass over the bytes. Small holes the reader skips (zip headers
between storages, at most :data:`GAP_LIMIT` bytes) are read and hashed on the
way; reads far ahead or behind the hashed prefix are served but not hashed.

When the hashed prefix reaches the member's end, the digest is compared with
the manifest's at once, inside that read: a mismatch raises
:class:`~polybundle.errors.IntegrityError` from the reader's own call, before
it can hand out or assign anything it read. :meth:`VerifiedMember.finish`
hashes whatever was not read in order and gives the same verdict, so a reader
with any access pattern is still checked once it returns. ``then`` (optional)
runs right after a good verdict, before the end-of-member read returns: the
loader uses it to wait for the other members' check, so "the weights file was
read to its end" means "the whole bundle has been checked".

Example:
    >>> from polybundle.format.archive import ArchiveReader
    >>> with ArchiveReader("run.bundle") as archive:
    ...     expected = digests.of_stream(archive.open("net/model.pth"))
    ...     member = VerifiedMember.open(archive, "net/model.pth", expected)
    ...     member.read()[:2], member.verified
    (b'PK', True)
    >>> with ArchiveReader("run.bundle") as archive:
    ...     member = VerifiedMember.open(archive, "net/model.pth", Digest("sha256", "0" * 64))
    ...     member.read()
    Traceback (most recent call last):
    ...
    polybundle.errors.IntegrityError: member 'net/model.pth' has sha256 digest ...
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

from polybundle.errors import FormatError, IntegrityError, PolybundleError
from polybundle.format import digests
from polybundle.format.archive import ArchiveReader, MemberRange
from polybundle.format.digests import Digest
from polybundle.format.manifest import verify_member

GAP_LIMIT = 4 * 1024 * 1024
"""Largest hole ahead of the hashed prefix that a read fills in (and hashes) on its way."""

_CHUNK = 1024 * 1024


class VerifiedMember(MemberRange):
    """A STORED member's range that hashes its bytes in order and checks them at the end.

    ``expected`` is the digest the manifest records (its algorithm names the
    hash run here); ``then`` runs after a good verdict (it may raise). See
    the module docstring.

    Example:
        >>> with open("data.bin", "wb") as f:
        ...     _ = f.write(b"abcdef")
        >>> with open("data.bin", "rb") as f:
        ...     member = VerifiedMember(f.fileno(), 0, 6, "data.bin", digests.of_bytes(b"abcdef"))
        ...     _ = member.seek(2)
        ...     member.read(2), member.hashed  # the hole 0..2 is filled in on the way
        ...     member.finish(), member.verified
        (b'cd', 4)
        (None, True)
    """

    def __init__(
        self,
        fd: int,
        start: int,
        size: int,
        name: str,
        expected: Digest,
        *,
        then: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(fd, start, size, name)
        self._hasher = digests.new(expected.algorithm)
        self._expected = expected
        self._then = then
        self._hashed = 0
        self._verdict: IntegrityError | None = None
        self.verified = False
        """True once every byte was hashed and matched (and ``then`` passed)."""

    @classmethod
    def open(
        cls,
        archive: ArchiveReader,
        name: str,
        expected: Digest,
        *,
        then: Callable[[], None] | None = None,
    ) -> VerifiedMember:
        """Open STORED member ``name`` of ``archive`` as a verified range (progress kept).

        A deflated member raises :class:`FormatError`: check it with
        :func:`polybundle.format.manifest.verify_member` instead.
        """
        member = archive.open(name)
        if not isinstance(member, MemberRange):
            member.close()
            raise FormatError(f"member {name!r} is compressed; it cannot be verified in place.")
        verified = cls(archive.fileno(), member.offset, member.size(), name, expected, then=then)
        verified.on_read = member.on_read
        return verified

    @property
    def hashed(self) -> int:
        """Return how many leading bytes have been hashed."""
        return self._hashed

    def _absorb(self, until: int) -> None:
        """Read and hash the bytes from the hashed prefix up to ``until``."""
        scratch = bytearray(min(_CHUNK, max(until - self._hashed, 1)))
        view = memoryview(scratch)
        while self._hashed < until:
            want = min(len(view), until - self._hashed)
            count = os.preadv(self._fd, [view[:want]], self._start + self._hashed)
            if count == 0:
                raise FormatError(
                    f"member {self.name!r} ends early: the file is truncated. Expected the "
                    "size the zip directory records; re-copy the bundle."
                )
            if self.on_read is not None:
                self.on_read(count)
            self._take(view[:count])

    def _take(self, data: memoryview) -> None:
        """Hash ``data`` (the bytes right after the prefix); judge at the member's end."""
        self._hasher.update(data)
        self._hashed += len(data)
        if self._hashed == self._size:
            self._judge()

    def _judge(self) -> None:
        if self._verdict is None and not self.verified:
            actual = self._hasher.hexdigest()
            if actual != self._expected.hex:
                self._verdict = IntegrityError(
                    f"member {self.name!r} has {self._expected.algorithm} digest {actual}, but "
                    f"manifest.json records {self._expected.hex}. The bundle was altered or "
                    "damaged; nothing read from it was used. Re-copy it from its source."
                )
            else:
                self.verified = True
                if self._then is not None:
                    then, self._then = self._then, None
                    then()
        if self._verdict is not None:
            raise self._verdict

    def readinto(self, buffer) -> int:  # type: ignore[override]
        """Fill ``buffer`` from the current position, hashing what extends the prefix."""
        position = self.tell()
        if self._hashed < position <= self._hashed + GAP_LIMIT:
            self._absorb(min(position, self._size))
        count = super().readinto(buffer)
        end = position + count
        if position <= self._hashed < end:
            self._take(memoryview(buffer).cast("B")[self._hashed - position : count])
        return count

    def finish(self) -> None:
        """Hash what was not read in order, then raise :class:`IntegrityError` on a mismatch.

        Idempotent: later calls repeat the verdict without reading again.
        """
        if self._hashed < self._size:
            self._absorb(self._size)
        self._judge()

    def finish_quietly(self, cause: BaseException) -> None:
        """:meth:`finish` after ``cause`` stopped the reader: raise only a mismatch, from it.

        Used when the reader failed: a damaged member is the likelier reason,
        so its :class:`IntegrityError` replaces ``cause``; anything else
        (``cause`` again, a short file) leaves ``cause`` to be raised.
        """
        try:
            self.finish()
        except IntegrityError as mismatch:
            if mismatch is not cause:
                raise mismatch from cause
        except PolybundleError:
            pass


class MemberCheck:
    """Check some members' digests in a background thread; :meth:`wait` gives the verdict.

    The loader checks the members it does not read in place (params, optimizer
    state, roles not loaded) with this while the weights are read, and passes
    :meth:`wait` as a :class:`VerifiedMember`'s ``then``.

    Example:
        >>> from polybundle.format.archive import ArchiveReader
        >>> from polybundle.format.manifest import read_manifest
        >>> with ArchiveReader("run.bundle") as archive:
        ...     manifest = read_manifest(archive)
        ...     check = MemberCheck(archive, manifest, ["params.json"])
        ...     check.wait()  # matched: returns None
    """

    def __init__(self, archive: ArchiveReader, manifest: dict[str, Any], names: list[str]) -> None:
        self.manifest = manifest
        """The manifest the members are checked against."""
        self._failure: BaseException | None = None

        def run() -> None:
            try:
                for name in names:
                    verify_member(archive, manifest, name)
            except BaseException as exc:  # handed to the waiting thread
                self._failure = exc

        self._thread = threading.Thread(target=run, name="polybundle-verify", daemon=True)
        self._thread.start()

    def wait(self) -> None:
        """Wait for the check; raise what it raised (each call, once it has failed)."""
        self._thread.join()
        if self._failure is not None:
            raise self._failure

    def wait_quietly(self, cause: BaseException) -> None:
        """Wait; raise the check's failure (chained to ``cause``) if it failed, else return."""
        self._thread.join()
        if self._failure is not None and self._failure is not cause:
            raise self._failure from cause
