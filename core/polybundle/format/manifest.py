"""Build, read and check the manifest of a format-2 bundle.

The manifest is written last (it records every other member's size and
digest) and read first. Reading checks, in order: valid JSON, the schema, the
format version, that the members it lists and the members in the zip are the
same set, the recorded sizes, and that every digest names an algorithm this
polybundle knows (:mod:`polybundle.format.digests`; records of formats 2.0
and 2.1 are sha256 digests).

Example:
    >>> from polybundle.format.archive import ArchiveReader
    >>> with ArchiveReader("run.bundle") as archive:
    ...     read_manifest(archive)["backend"]
    'torch'
"""

from __future__ import annotations

import datetime as _dt
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from polybundle._version import __version__
from polybundle.errors import (
    FormatError,
    IntegrityError,
    UnsafeContentError,
    UnsupportedVersionError,
)
from polybundle.format import digests
from polybundle.format.jsondoc import load_json
from polybundle.format.schemas import validate

if TYPE_CHECKING:
    from polybundle.format.archive import ArchiveReader
    from polybundle.format.writer import MemberRecord

FORMAT_VERSION = "2.2.0"
"""The format version this polybundle writes."""

MANIFEST_MEMBER = "manifest.json"
PARAMS_MEMBER = "params.json"

_VERSION = re.compile(r"([0-9]{1,9})\.[0-9]{1,9}\.[0-9]{1,9}")


def build_manifest(
    *,
    backend: str,
    framework: str,
    framework_version: str,
    models: list[dict[str, Any]],
    members: list[MemberRecord],
    rng: str | None = None,
    shards: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Return a schema-valid manifest for the given models and written members.

    ``rng`` names the member holding the random-generator state, if any;
    ``shards`` is a sharded bundle's ``shards`` object (see
    :mod:`polybundle.format.sharded`). The result is validated: a manifest
    with no model or no member raises :class:`~polybundle.errors.SchemaError`.
    """
    manifest = {
        "format": "polybundle",
        "format_version": FORMAT_VERSION,
        "backend": backend,
        "writer": {
            "polybundle": __version__,
            "framework": framework,
            "framework_version": framework_version,
        },
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "models": models,
        "members": {m.name: m.to_json() for m in members},
    }
    if rng is not None:
        manifest["rng"] = rng
    if shards is not None:
        manifest["shards"] = shards
    validate("manifest", manifest, where="the manifest being written")
    return manifest


def check_version(version: Any) -> None:
    """Refuse a format version this polybundle cannot read, before the schema runs.

    Example:
        >>> check_version("2.2.0")
        >>> check_version("1" * 5000 + ".0.0")
        Traceback (most recent call last):
        ...
        polybundle.errors.UnsupportedVersionError: manifest.json says format_version ...
    """
    match = _VERSION.fullmatch(version) if isinstance(version, str) else None
    if match is None:
        shown = repr(version)
        shown = shown if len(shown) <= 40 else f"{shown[:30]}... ({len(shown)} characters)"
        raise UnsupportedVersionError(
            f"{MANIFEST_MEMBER} says format_version {shown}; expected a version like "
            f"{FORMAT_VERSION!r} (three numbers of at most 9 digits). The manifest is damaged "
            "or was not written by polybundle."
        )
    major = int(match.group(1))
    supported = int(FORMAT_VERSION.split(".")[0])
    if major > supported:
        raise UnsupportedVersionError(
            f"this bundle is format {version}, newer than the format {FORMAT_VERSION} this "
            "polybundle reads. Upgrade polybundle: pip install -U polybundle"
        )
    if major < supported:
        raise UnsupportedVersionError(
            f"manifest.json says format {version}, but format-2 manifests start at 2.0.0; "
            "expected 2.x. Older archives have no manifest.json of this kind."
        )


def read_manifest(archive: ArchiveReader) -> dict[str, Any]:
    """Read, validate and cross-check ``manifest.json`` against the zip directory.

    Example:
        >>> from polybundle.format.archive import ArchiveReader
        >>> with ArchiveReader("run.bundle") as archive:
        ...     read_manifest(archive)["format_version"]
        '2.2.0'
    """
    document = load_json(archive.read(MANIFEST_MEMBER), where=MANIFEST_MEMBER)
    if isinstance(document, dict) and isinstance(document.get("format_version"), str):
        check_version(document["format_version"])
    validate("manifest", document, where=MANIFEST_MEMBER)
    listed = set(document["members"])
    present = set(archive.names() + archive.directories()) - {MANIFEST_MEMBER}
    if listed - present:
        raise IntegrityError(
            f"members listed in {MANIFEST_MEMBER} are missing from the zip: "
            f"{', '.join(sorted(listed - present))}. The bundle is incomplete; re-copy it."
        )
    if present - listed:
        raise UnsafeContentError(
            f"the zip holds members {MANIFEST_MEMBER} does not list: "
            f"{', '.join(sorted(present - listed))}. Something was added after writing; "
            "polybundle refuses the bundle."
        )
    for name, record in document["members"].items():
        digests.from_record(record, where=f"{MANIFEST_MEMBER}'s record of {name!r}")
        actual = archive.size(name)
        if actual != record["size"]:
            raise IntegrityError(
                f"member {name!r} is {actual} bytes but {MANIFEST_MEMBER} records "
                f"{record['size']}. The bundle was altered or damaged; re-copy it."
            )
    for model in document["models"]:
        if model["weights"] not in listed:
            raise FormatError(
                f"role {model['role']!r} names weights member {model['weights']!r}, which "
                f"{MANIFEST_MEMBER} does not list."
            )
        optimizer = model.get("optimizer") or {}
        for member in (optimizer.get("state"), optimizer.get("slots")):
            if member is not None and member not in listed:
                raise FormatError(
                    f"role {model['role']!r} names optimizer member {member!r}, which "
                    f"{MANIFEST_MEMBER} does not list."
                )
    if "rng" in document and document["rng"] not in listed:
        raise FormatError(
            f"{MANIFEST_MEMBER} names RNG member {document['rng']!r}, which it does not list."
        )
    return document


def verify_member(archive: ArchiveReader, manifest: dict[str, Any], name: str) -> None:
    """Check one member's digest against the manifest; raise :class:`IntegrityError`.

    The digest is computed with the algorithm the member's record names.

    Example:
        >>> from polybundle.format.archive import ArchiveReader
        >>> with ArchiveReader("run.bundle") as archive:
        ...     manifest = read_manifest(archive)
        ...     manifest["members"]["net/model.pth"]["digest"] = "xxh3-128:" + "0" * 32
        ...     verify_member(archive, manifest, "net/model.pth")
        Traceback (most recent call last):
        polybundle.errors.IntegrityError: member 'net/model.pth' has xxh3-128 digest ...
    """
    check_digest(name, manifest["members"][name], archive.digest(name, _algorithm(manifest, name)))


def _algorithm(manifest: dict[str, Any], name: str) -> str:
    """Return the digest algorithm the manifest's record of ``name`` names."""
    where = f"{MANIFEST_MEMBER}'s record of {name!r}"
    return digests.from_record(manifest["members"][name], where=where).algorithm


def check_digest(name: str, record: dict[str, Any], actual: digests.Digest) -> None:
    """Compare a member's computed digest with its manifest record; raise :class:`IntegrityError`.

    Example:
        >>> check_digest("a", {"size": 3, "digest": "sha256:" + "0" * 64},
        ...              digests.of_bytes(b"abc", "sha256"))
        Traceback (most recent call last):
        polybundle.errors.IntegrityError: member 'a' has sha256 digest ba7816bf..., but
        manifest.json records 0000... The bundle was altered or damaged; do not use it. ...
    """
    expected = digests.from_record(record, where=f"{MANIFEST_MEMBER}'s record of {name!r}")
    if actual != expected:
        raise IntegrityError(
            f"member {name!r} has {actual.algorithm} digest {actual.hex}, but "
            f"{MANIFEST_MEMBER} records {expected.hex}. The bundle was altered or damaged; "
            "do not use it. Re-copy it from its source."
        )


def verify_members(archive: ArchiveReader, manifest: dict[str, Any]) -> None:
    """Check every member's digest against the manifest; raise :class:`IntegrityError`.

    Example:
        >>> from polybundle.format.archive import ArchiveReader
        >>> with ArchiveReader("run.bundle") as archive:
        ...     verify_members(archive, read_manifest(archive))  # all match: returns None
    """
    for name in manifest["members"]:
        verify_member(archive, manifest, name)


@contextmanager
def verifying_members(
    archive: ArchiveReader, manifest: dict[str, Any], *, enabled: bool = True
) -> Iterator[None]:
    """Check every member's digest in a background thread while the body runs.

    xxh3-128 runs at memory speed and sha256 at about 1.1-1.8 GB/s on one
    core; both release the GIL, so hashing beside the framework's own read
    (both from the page cache) costs wall time only where it is slower than
    that read. On leaving, the thread
    is joined: a mismatch raises :class:`IntegrityError`, and takes priority
    over an error the body raised (a damaged member is the likelier cause).
    Nothing loaded inside the block should be handed out before it exits.

    Example:
        >>> from polybundle.format.archive import ArchiveReader
        >>> with ArchiveReader("run.bundle") as archive:
        ...     with verifying_members(archive, read_manifest(archive)):
        ...         weights = archive.open("net/model.pth").read()
        >>> weights[:2]
        b'PK'
    """
    if not enabled:
        yield
        return
    failures: list[BaseException] = []

    def check() -> None:
        try:
            verify_members(archive, manifest)
        except BaseException as exc:  # handed to the caller's thread below
            failures.append(exc)

    worker = threading.Thread(target=check, name="polybundle-verify", daemon=True)
    worker.start()
    try:
        yield
    except BaseException as exc:
        worker.join()
        if failures:
            raise failures[0] from exc
        raise
    worker.join()
    if failures:
        raise failures[0]
