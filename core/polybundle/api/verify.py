"""``polybundle.verify``: an integrity and safety report, without loading any model.

Checks, for a format-2 bundle: the zip's structure (names, kinds, sizes,
bombs), the manifest's schema and member list, every member's digest, the
params, and each weights file: the backend that wrote it checks it without
its framework, as a load would before the framework sees it (for example a
Keras config is checked for code), and its tensors are compared with the
manifest. For a legacy archive: the same
zip checks, the CRC-32 of every member read, the restricted unpickling of
its manifest and params, the weights, and the names in any
``custom_objects.dill`` (listed, never unpickled).

Example:
    >>> report = polybundle.verify("run.bundle")
    >>> report.ok, report.problems
    (True, [])
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from typing import Any

from polybundle.api.loading import detect, open_plain, plain_backend, plain_manifest
from polybundle.api.progress import progress_bar
from polybundle.errors import PolybundleError, UnknownBackendError
from polybundle.format.archive import ArchiveReader
from polybundle.format.detection import FORMAT_NAME, Detection
from polybundle.format.digests import from_record
from polybundle.format.manifest import read_manifest, verify_members
from polybundle.format.params import ARRAYS_MEMBER, read_params
from polybundle.format.sharded import ShardedFolder, is_sharded
from polybundle.format.storage import Location, locate
from polybundle.hooks.registry import get_backend
from polybundle.legacy.era import read_member
from polybundle.legacy.plugin import era_reader
from polybundle.model.backend import Backend, TensorSpec, dtype_label
from polybundle.safety import budget
from polybundle.training.members import check_training_members


@dataclass
class VerifyReport:
    """The result of :func:`verify`: what was checked, what is wrong, what to note.

    ``ok`` is True when ``problems`` is empty; ``notes`` never make it false.

    Example:
        >>> VerifyReport("x.bundle").ok
        True
    """

    path: str
    format: str = "unknown"
    checked: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Return True when nothing is wrong."""
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        """Return the report as a JSON-ready dict.

        Example:
            >>> VerifyReport("x").to_json()["ok"]
            True
        """
        return {
            "path": self.path,
            "format": self.format,
            "ok": self.ok,
            "checked": self.checked,
            "problems": self.problems,
            "notes": self.notes,
        }


def _check_tensors(found: dict[str, Any], listed: list[dict[str, Any]], role: str) -> list[str]:
    problems = []
    by_key = {t["key"]: t for t in listed}
    if set(found) != set(by_key):
        missing = sorted(set(by_key) - set(found))
        extra = sorted(set(found) - set(by_key))
        problems.append(
            f"{role}: tensors differ from the manifest (missing {missing}, extra {extra})"
        )
    for key in set(found) & set(by_key):
        if list(found[key].shape) != list(by_key[key]["shape"]):
            problems.append(
                f"{role}: tensor {key!r} has shape {list(found[key].shape)}, "
                f"manifest says {by_key[key]['shape']}"
            )
        elif dtype_label(found[key].dtype) != by_key[key]["dtype"]:
            problems.append(
                f"{role}: tensor {key!r} has dtype {dtype_label(found[key].dtype)}, "
                f"manifest says {by_key[key]['dtype']}"
            )
    return problems


def check_format_two(archive: ArchiveReader, report: VerifyReport) -> None:
    """Run every check of a format-2 bundle; raise the first typed error found.

    Example:
        >>> report = VerifyReport("run.bundle")
        >>> with ArchiveReader("run.bundle") as archive:
        ...     check_format_two(archive, report)
        >>> report.checked[0], report.ok
        ('manifest schema, member list and sizes', True)
    """
    manifest = read_manifest(archive)
    report.checked.append("manifest schema, member list and sizes")
    verify_members(archive, manifest)
    count = len(manifest["members"])
    report.checked.append(f"{_digest_names(manifest)} digests of {count} members")
    read_params(archive, manifest)
    report.checked.append(
        "params.json" + (" and params.safetensors" if ARRAYS_MEMBER in manifest["members"] else "")
    )
    check_weights(archive, manifest, report)

    report.checked += check_training_members(archive, manifest)


def _digest_names(manifest: dict[str, Any]) -> str:
    """Return the digest algorithms a (read) manifest's records name, e.g. ``'xxh3-128'``.

    Example:
        >>> _digest_names({"members": {"a": {"size": 0, "sha256": "0" * 64}}})
        'sha256'
    """
    return " and ".join(sorted({from_record(r).algorithm for r in manifest["members"].values()}))


def _checks_stored(backend: Backend) -> bool:
    """Return True when ``backend`` implements a framework-free check of its weights file."""
    return type(backend).check_stored is not Backend.check_stored


def check_weights(archive: ArchiveReader, manifest: dict[str, Any], report: VerifyReport) -> None:
    """Have the writing backend check each role's weights file; compare it with the manifest.

    Each whole weights file is charged to the memory budget before it is read,
    then given to :meth:`~polybundle.model.backend.Backend.check_stored`, with
    the code objects a migrated legacy archive declares by name. A backend
    that is not installed, or has no framework-free check, gets a note.

    Example:
        >>> report = VerifyReport("run.bundle")
        >>> with ArchiveReader("run.bundle") as archive:
        ...     check_weights(archive, read_manifest(archive), report)
        >>> report.checked
        ['net/model.pth: 4 tensors read without a framework']
    """
    try:
        backend: Backend | None = get_backend(manifest["backend"])
    except UnknownBackendError:
        backend = None
    for entry in manifest["models"]:
        weights = entry["weights"]
        if backend is None or not _checks_stored(backend):
            why = "is not installed" if backend is None else "has no framework-free reader"
            report.notes.append(
                f"{weights}: the {manifest['backend']!r} backend that wrote it {why}; its "
                "tensors were not checked beyond the digests."
            )
            continue
        budget.charge(archive.size(weights), weights)
        data = archive.read(weights, limit=archive.size(weights))
        declared = manifest.get("legacy", {}).get("custom_objects", {}).get(entry["role"], [])
        specs = [TensorSpec.from_json(t) for t in entry["tensors"]]
        found = backend.check_stored(io.BytesIO(data), specs, where=weights, declared=declared)
        if declared:
            report.notes.append(
                f"{weights} uses custom objects migrated by name only ({', '.join(declared)}); "
                "load it with a registered builder."
            )
        report.problems += _check_tensors(found, entry["tensors"], entry["role"])
        report.checked.append(f"{weights}: {len(found)} tensors read without a framework")


def _verify_legacy(archive: ArchiveReader, format_name: str, report: VerifyReport) -> None:
    reader = era_reader(format_name)
    content = reader.read(archive)
    report.checked.append(f"{reader.description}: manifest and params read as plain data")
    for role in content.roles:
        tensors = reader.read_tensors(archive, role)
        report.checked.append(f"{role.weights}: {len(tensors)} tensors read without a framework")
        if role.custom_objects:
            report.notes.append(
                f"{role.custom_member} holds code objects ({', '.join(role.custom_objects)}); "
                "not unpickled. Loading the model needs a registered builder or trust_code=True."
            )
    for name in archive.names():
        read_member(archive, name)
    report.checked.append(f"CRC-32 of {len(archive.names())} members")


def _check_plain(path: str | os.PathLike[str], detection: Detection, report: VerifyReport) -> None:
    with open_plain(path, detection) as archive:
        manifest = plain_manifest(archive, detection)
        report.checked.append(f"{detection.format}: index of {archive.weights} read as plain data")
        check_weights(archive, manifest, report)
    report.notes.append(
        "a plain framework file records no digests; its integrity cannot be checked beyond "
        "the zip's own CRC-32. Migrate it (polybundle migrate) to get a bundle with digests."
    )


def check_sharded(path: str | os.PathLike[str], report: VerifyReport) -> None:
    """Run every check of a sharded bundle (a folder); raise the first typed error found.

    The manifest, the member list and sizes, every member's digest, the
    params, and each part's safetensors index against the chunks the
    manifest records.

    Example:
        >>> report = VerifyReport("sharded")
        >>> check_sharded("sharded", report)
        >>> report.format, report.checked[0], report.ok
        ('polybundle-sharded', 'manifest schema, shards, member list and sizes', True)
    """
    report.format = f"{FORMAT_NAME}-sharded"
    folder = ShardedFolder(path)
    report.checked.append("manifest schema, shards, member list and sizes")
    folder.verify()
    count = len(folder.manifest["members"])
    report.checked.append(f"{_digest_names(folder.manifest)} digests of {count} members")
    folder.params()
    report.checked.append("params.json")
    count = 0
    for fqn in folder.shards["tensors"]:
        count += len(folder.chunks(fqn))
    report.checked.append(f"part indexes against {count} chunks")


def _verify(path: str | os.PathLike[str] | Location, report: VerifyReport, progress: bool) -> None:
    if is_sharded(path):
        check_sharded(path, report)
        return
    with ArchiveReader(path, whole=True) as archive, progress_bar(
        f"verifying {archive.path.name}",
        sum(archive.size(name) for name in archive.names()),
        enabled=progress,
    ) as advance:
        archive.on_read = advance
        report.checked.append(f"zip structure of {len(archive.names())} members")
        detection = detect(archive)
        report.format = detection.format
        if detection.format == FORMAT_NAME:
            check_format_two(archive, report)
        elif plain_backend(detection) is not None:
            _check_plain(path, detection, report)
        else:
            _verify_legacy(archive, detection.format, report)


def verify(
    path: str | os.PathLike[str],
    *,
    progress: bool = False,
    max_bytes: int | None = None,
    storage_options: dict[str, Any] | None = None,
    filesystem: Any = None,
) -> VerifyReport:
    """Check the archive at ``path`` for integrity and safety; load no model, run nothing.

    Never raises on any input (a hostile or damaged file, a missing path, a
    folder, a device): every problem found is in ``report.problems``, and
    ``report.ok`` is False when there is any. A typed
    :class:`~polybundle.errors.PolybundleError` is recorded as
    ``"<ErrorType>: <message>"``; anything else is a bug in polybundle and is
    recorded as ``"internal error: <type>: <message> — please report"``, so
    nothing is hidden. ``max_bytes`` caps the memory read from declared sizes
    (:mod:`polybundle.safety.budget`; past it the report says ``BudgetExceededError``).
    ``progress=True`` shows a bar of the bytes read for archives of 64 MiB and
    more. Plain framework files (Keras ``model.save``, ``torch.save`` of a
    state_dict) are checked too, with a note that they record no digests.
    ``path`` may be a URL with ``storage_options`` or a ready fsspec
    ``filesystem`` (see :func:`polybundle.load`); an unreachable one is a
    ``StorageError`` problem.

    Example:
        >>> report = polybundle.verify("no such file.bundle")
        >>> report.ok, report.problems[0].split(":")[0]
        (False, 'FormatError')
    """
    limit = budget.check_max_bytes(max_bytes)
    report = VerifyReport(str(path))
    try:
        with budget.limit(limit):
            _verify(locate(path, storage_options, filesystem) or path, report, progress)
    except PolybundleError as exc:
        report.problems.append(f"{type(exc).__name__}: {exc}")
    except Exception as exc:  # noqa: BLE001 - verify reports every failure, never raises
        report.problems.append(
            f"internal error: {type(exc).__name__}: {str(exc)[:500]} — please report"
        )
    return report
