"""Named digests of a bundle's members: which algorithm, how to compute it, how it is recorded.

From format 2.2 every member record names its digest's algorithm, as OCI
digests do: ``{"size": 27, "digest": "xxh3-128:<32 hex digits>"}``. The
default, ``xxh3-128`` (:func:`xxhash.xxh3_128`, about 13 GB/s on one core),
detects corruption, truncation and mix-ups, which is all a digest stored
beside the data, in a manifest anyone can rewrite, can guard against;
``sha256`` (about 1.1-1.8 GB/s) is there for provenance and signing workflows
that need a cryptographic hash (see ``docs/security.md``). Records of
formats 2.0 and 2.1, ``{"size": 27, "sha256": "<64 hex digits>"}``, read as
``sha256`` digests.

This module is the one place that knows the algorithms: writers ask it for a
hasher (:func:`new`), readers parse a record (:func:`from_record`) and
compare (:func:`check`).

Example:
    >>> record = member_record(3, of_bytes(b"abc"))
    >>> record
    {'size': 3, 'digest': 'xxh3-128:06b05ab6733a618578af5f94892f3950'}
    >>> from_record(record) == of_bytes(b"abc")
    True
    >>> from_record({"size": 3, "sha256": of_bytes(b"abc", "sha256").hex}).algorithm
    'sha256'
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol

import xxhash

from polybundle.errors import UnknownDigestError

DEFAULT = "xxh3-128"
"""The algorithm a bundle's members are hashed with unless ``digest=`` says otherwise."""

LEGACY_KEY = "sha256"
"""The record key of formats 2.0 and 2.1, which hashed every member with sha256."""

_CHUNK = 8 * 1024 * 1024


class Hasher(Protocol):
    """What :mod:`hashlib` and :mod:`xxhash` hashers share: streaming update, hex result."""

    def update(self, data: Any, /) -> None:
        """Hash ``data`` (any bytes-like object) after what came before."""

    def hexdigest(self) -> str:
        """Return the digest of everything hashed so far as lowercase hex."""


@dataclass(frozen=True)
class Algorithm:
    """A digest algorithm a bundle may name: its factory, its hex length, its speed.

    ``inline`` says it runs at memory speed, so a writer hashes in the
    writing thread; a slower one (sha256) is better computed by a thread
    reading the bytes back (see :mod:`polybundle.format.writer`).

    Example:
        >>> ALGORITHMS["sha256"].hex_length, ALGORITHMS["sha256"].inline
        (64, False)
    """

    name: str
    new: Callable[[], Hasher]
    hex_length: int
    inline: bool


ALGORITHMS: dict[str, Algorithm] = {
    "xxh3-128": Algorithm("xxh3-128", xxhash.xxh3_128, 32, inline=True),
    "sha256": Algorithm("sha256", hashlib.sha256, 64, inline=False),
}
"""Every algorithm this polybundle writes and reads, by the name records use."""


def algorithm(name: Any, *, where: str = "digest=") -> Algorithm:
    """Return the :class:`Algorithm` called ``name``; refuse any other name.

    ``where`` says who named it (an argument, a manifest's member record), so
    the error points at it.

    Example:
        >>> algorithm("xxh3-128").hex_length
        32
        >>> algorithm("md5")
        Traceback (most recent call last):
        polybundle.errors.UnknownDigestError: digest= names digest algorithm 'md5'; this
        polybundle knows 'xxh3-128' (the default) and 'sha256'. ...
    """
    if isinstance(name, str) and name in ALGORITHMS:
        return ALGORITHMS[name]
    shown = repr(name) if len(repr(name)) <= 40 else f"{repr(name)[:30]}..."
    raise UnknownDigestError(
        f"{where} names digest algorithm {shown}; this polybundle knows 'xxh3-128' (the "
        "default) and 'sha256'. Pass one of those, or, for a bundle written by a newer "
        "polybundle, upgrade: pip install -U polybundle"
    )


@dataclass(frozen=True)
class Digest:
    """A digest and the algorithm that made it; ``str()`` is the ``algorithm:hex`` form.

    Example:
        >>> str(Digest("sha256", "ab" * 32))[:10]
        'sha256:aba'
    """

    algorithm: str
    hex: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"


def new(name: str = DEFAULT) -> Hasher:
    """Return a fresh streaming hasher of algorithm ``name``.

    Example:
        >>> hasher = new("sha256")
        >>> hasher.update(b"abc")
        >>> hasher.hexdigest()[:8]
        'ba7816bf'
    """
    return algorithm(name).new()


def of_bytes(data: Any, name: str = DEFAULT) -> Digest:
    """Return the :class:`Digest` of a bytes-like object.

    Example:
        >>> of_bytes(b"abc").hex
        '06b05ab6733a618578af5f94892f3950'
    """
    hasher = new(name)
    hasher.update(data)
    return Digest(name, hasher.hexdigest())


def of_stream(stream: BinaryIO, name: str = DEFAULT) -> Digest:
    """Return the :class:`Digest` of everything left in ``stream``, read in 8 MiB chunks.

    One buffer is reused, so memory stays flat whatever the size.

    Example:
        >>> import io
        >>> of_stream(io.BytesIO(b"abc")) == of_bytes(b"abc")
        True
    """
    hasher = new(name)
    view = memoryview(bytearray(_CHUNK))
    while count := stream.readinto(view):
        hasher.update(view[:count])
    return Digest(name, hasher.hexdigest())


def parse(text: str, *, where: str = "a member record") -> Digest:
    """Parse the ``algorithm:hex`` form of a digest, checking the algorithm and hex length.

    Example:
        >>> parse("xxh3-128:" + "0" * 32).algorithm
        'xxh3-128'
        >>> parse("blake3:" + "0" * 64, where="member 'a'")
        Traceback (most recent call last):
        polybundle.errors.UnknownDigestError: member 'a' names digest algorithm 'blake3'; ...
    """
    name, _, hex_digits = text.partition(":")
    found = algorithm(name, where=where)
    if len(hex_digits) != found.hex_length or hex_digits.strip("0123456789abcdef"):
        raise UnknownDigestError(
            f"{where} holds digest {text[:80]!r}; a {found.name} digest is "
            f"'{found.name}:' and {found.hex_length} lowercase hex digits. The manifest is "
            "damaged or was not written by polybundle; re-copy the bundle."
        )
    return Digest(found.name, hex_digits)


def from_record(record: dict[str, Any], *, where: str = "a member record") -> Digest:
    """Return the :class:`Digest` a (schema-valid) member record holds, old form or new.

    Example:
        >>> from_record({"size": 0, "digest": "sha256:" + "0" * 64}).algorithm
        'sha256'
        >>> from_record({"size": 0, "sha256": "0" * 64}).algorithm
        'sha256'
    """
    if "digest" in record:
        return parse(record["digest"], where=where)
    return Digest(LEGACY_KEY, record[LEGACY_KEY])


def member_record(size: int, digest: Digest) -> dict[str, Any]:
    """Return the manifest record of a member: its size and its named digest.

    Example:
        >>> member_record(0, Digest("sha256", "0" * 64))["digest"][:7]
        'sha256:'
    """
    return {"size": size, "digest": str(digest)}

