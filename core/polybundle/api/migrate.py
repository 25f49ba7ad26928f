"""``polybundle.migrate``: rewrite a legacy archive as a format-2 bundle.

The weights members are copied byte for byte (a ``model.pth`` state_dict or a
``model.keras`` file is already what format 2 stores), params become JSON,
and the manifest records where the bundle came from: the era, the source's
sha256, the custom-object names (never their code), and every conversion and
drop. No pickle is written. The target appears atomically; migrating the
same source onto a target it already produced does nothing.

Example:
    >>> report = polybundle.migrate("wts.h5.zip", "wts.bundle")
    >>> report.dropped[0]
    'autoencoder/custom_objects.dill: code not carried over; its names are kept ...'
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from polybundle.api.loading import (
    detect,
    open_plain,
    plain_backend,
    plain_manifest,
    with_builder_tags,
)
from polybundle.api.verify import VerifyReport, check_format_two
from polybundle.errors import IntegrityError, PolybundleError
from polybundle.format import digests
from polybundle.format.archive import ArchiveReader
from polybundle.format.detection import FORMAT_NAME, Detection
from polybundle.format.digests import DEFAULT, algorithm
from polybundle.format.manifest import (
    FORMAT_VERSION,
    MANIFEST_MEMBER,
    PARAMS_MEMBER,
    build_manifest,
    read_manifest,
    verify_members,
)
from polybundle.format.params import ARRAYS_MEMBER, encode_params
from polybundle.format.schemas import validate
from polybundle.format.storage import locate
from polybundle.format.writer import ArchiveWriter, atomic_write_chunks
from polybundle.hooks.registry import get_backend, get_registry
from polybundle.legacy.era import EraReader, LegacyContent, LegacyRole, read_member
from polybundle.legacy.jsonsafe import to_json, to_params
from polybundle.legacy.loading import check_json_size
from polybundle.legacy.plugin import era_reader
from polybundle.model.backend import TensorSpec
from polybundle.safety import budget


@dataclass
class MigrationReport:
    """What :func:`migrate` did: the source era, conversions, drops, and whether it wrote.

    Example:
        >>> MigrationReport("a.zip", "b.bundle", "legacy-torch-dill").written
        False
    """

    source: str
    target: str | None
    era: str
    written: bool = False
    converted: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """Return the report as readable lines (what the CLI prints).

        Example:
            >>> MigrationReport("a", "b", "polybundle").lines()[0]
            'a (polybundle) -> b: already up to date, nothing written'
        """
        state = "written" if self.written else "already up to date, nothing written"
        target = f" -> {self.target}" if self.target else ""
        lines = [f"{self.source} ({self.era}){target}: {state}"]
        lines += [f"  converted: {item}" for item in self.converted]
        lines += [f"  dropped: {item}" for item in self.dropped]
        return lines


def _file_digest(path: Path, algorithm: str) -> str:
    """Return the hex digest of a whole file (``sha256``: the source's recorded identity)."""
    with open(path, "rb") as stream:
        return digests.of_stream(stream, algorithm).hex


def _already_migrated(target: Path, source_sha: str, digest: str) -> bool:
    """Return True when ``target`` is a good migration of the same source, with ``digest``."""
    if not target.is_file():
        return False
    try:
        with ArchiveReader(target) as archive:
            manifest = read_manifest(archive)
            verify_members(archive, manifest)
    except PolybundleError:
        return False
    algorithms = {digests.from_record(r).algorithm for r in manifest["members"].values()}
    return manifest.get("legacy", {}).get("source_sha256") == source_sha and algorithms == {digest}


def _role_specs(
    archive: ArchiveReader,
    reader: EraReader,
    role: LegacyRole,
    params: dict[str, Any],
    report: MigrationReport,
) -> tuple[list[TensorSpec], dict[str, Any] | None]:
    """Use a builder named after the role, when registered, for real layout tags.

    The builder's config (recorded as the architecture's) is the legacy params
    as plain JSON, as :func:`polybundle.load` gives it for a legacy archive:
    arrays as nested lists, complex ones left out (they are all in params).
    """
    backend = get_backend(reader.backend)
    registry = get_registry()
    if not registry.has_builder(role.role, backend.name):
        report.converted.append(
            f"{role.role}: no builder registered, tensors keep opaque layout tags (register "
            f"@polybundle.architecture({role.role!r}, backend={backend.name!r}) for real ones)"
        )
        return role.specs, None
    import io

    check_json_size(params, where="the legacy params")
    config = to_json(params).value  # the builder's config, as a legacy load gives it
    backend.require()
    model = registry.builder(role.role, backend.name)(config)
    backend.load_into(model, io.BytesIO(read_member(archive, role.weights)), role.specs)
    report.converted.append(f"{role.role}: layout tags from the registered builder")
    return backend.describe(model), {"name": role.role, "config": config}


def _write(
    target: Path,
    archive: ArchiveReader,
    reader: EraReader,
    content: LegacyContent,
    source_sha: str,
    report: MigrationReport,
    digest: str,
) -> None:
    check_json_size(content.params, where="the legacy params", arrays_as_json=False)
    check_json_size(content.manifest, where="the legacy manifest")
    params = to_params(content.params)
    report.converted += [f"params {item}" for item in params.converted]
    report.dropped += [f"params {item}" for item in params.dropped]
    encoded = encode_params(params.value)
    backend = get_backend(content.backend)
    entries = []
    for role in content.roles:
        specs, architecture = _role_specs(archive, reader, role, content.params, report)
        entries.append(
            {
                "role": role.role,
                "architecture": architecture,
                "weights": f"{role.role}/{backend.weights_member}",
                "tensors": [spec.to_json() for spec in specs],
            }
        )
        report.converted.append(f"{role.weights} copied byte for byte")
        if role.custom_objects:
            report.dropped.append(
                f"{role.custom_member}: code not carried over; its names are kept in the "
                f"manifest ({', '.join(role.custom_objects)})"
            )
    report.dropped += [f"{name}: not needed (its values are in params)" for name in content.ignored]
    with ArchiveWriter(target, digest=digest) as writer:
        writer.write_bytes(PARAMS_MEMBER, encoded.document, compress=True)
        if encoded.arrays is not None:
            writer.write_bytes(ARRAYS_MEMBER, encoded.arrays)
        for entry, role in zip(entries, content.roles, strict=True):
            writer.write_bytes(entry["weights"], read_member(archive, role.weights))
        manifest = build_manifest(
            backend=backend.name,
            framework=backend.distribution,
            framework_version=f"unknown (migrated from {content.format})",
            models=entries,
            members=writer.records,
        )
        manifest["legacy"] = {
            "era": content.format,
            "version": content.version,
            "source_sha256": source_sha,
            "manifest": to_json(content.manifest).value,
            "custom_objects": {r.role: r.custom_objects for r in content.roles if r.custom_objects},
            "converted": report.converted,
            "dropped": report.dropped,
        }
        validate("manifest", manifest, where="the migrated manifest")
        writer.write_bytes(MANIFEST_MEMBER, json.dumps(manifest, indent=1).encode(), compress=True)
        writer.commit()
    report.written = True


def _check_bundle(archive: ArchiveReader, label: str) -> None:
    """Run every check of :func:`polybundle.verify` on a format-2 bundle; raise on a problem."""
    report = VerifyReport(label)
    check_format_two(archive, report)
    if report.problems:
        raise IntegrityError(f"{label} is damaged: {'; '.join(report.problems)[:2000]}")


def _copy_bundle(source: Path, target: Path) -> None:
    """Copy the format-2 bundle ``source`` to ``target`` atomically, checking the copy first.

    The copy is checked (manifest, every digest, the weights) before it
    replaces anything, so ``target`` is a verified bundle or is left as it was.
    """

    def check_copy(temp: Path) -> None:
        with ArchiveReader(temp) as copy:
            _check_bundle(copy, f"the copy of {str(source)!r}")

    with open(source, "rb") as stream:
        chunks = iter(lambda: stream.read(8 * 1024 * 1024), b"")
        atomic_write_chunks(target, chunks, check=check_copy)


def _migrate_format_two(
    source: Path, target: Path | None, archive: ArchiveReader
) -> MigrationReport:
    """Check a format-2 bundle; with a new ``target``, write a verified copy there."""
    report = MigrationReport(str(source), str(target) if target else None, FORMAT_NAME)
    _check_bundle(archive, repr(str(source)))
    if target is None or (target.exists() and target.resolve() == source.resolve()):
        return report
    if target.is_file() and _file_digest(target, DEFAULT) == _file_digest(source, DEFAULT):
        return report
    _copy_bundle(source, target)
    report.converted.append(
        f"verified copy (format {read_manifest(archive)['format_version']}; this polybundle "
        f"writes {FORMAT_VERSION}, whose readers read every 2.x bundle unchanged)"
    )
    report.written = True
    return report


def _write_plain(
    target: Path,
    source: Path,
    detection: Detection,
    source_sha: str,
    report: MigrationReport,
    digest: str,
) -> None:
    """Write the plain framework file ``source`` as a one-role bundle (no params)."""
    with open_plain(source, detection) as archive:
        backend = get_backend(str(detection.backend))  # open_plain checked it is plain
        manifest = with_builder_tags(plain_manifest(archive, detection), backend)
        entry = manifest["models"][0]
        tagged = entry["architecture"] is not None and any(
            t["layout"] not in ("opaque", "scalar") for t in entry["tensors"]
        )
        report.converted.append(
            f"{entry['role']}: layout tags from the registered builder" if tagged
            else f"{entry['role']}: no builder registered, tensors keep the file's layout tags "
            f"(register @polybundle.architecture({entry['role']!r}, backend={backend.name!r}) "
            "for real ones)"
        )
        member = f"{entry['role']}/{backend.weights_member}"
        report.converted.append(f"{source.name} copied byte for byte as {member}")
        size = archive.size(archive.weights)
        budget.charge(size, archive.weights)
        data = archive.read(archive.weights, limit=size)
    models = [{**entry, "weights": member}]
    with ArchiveWriter(target, digest=digest) as writer:
        writer.write_bytes(PARAMS_MEMBER, encode_params({}).document, compress=True)
        writer.write_bytes(models[0]["weights"], data)
        written = build_manifest(
            backend=backend.name, framework=backend.distribution,
            framework_version=f"unknown (migrated from a {detection.format})",
            models=models, members=writer.records,
        )
        written["legacy"] = {
            "era": detection.format, "version": "", "source_sha256": source_sha, "manifest": {},
            "custom_objects": {}, "converted": report.converted, "dropped": report.dropped,
        }
        validate("manifest", written, where="the migrated manifest")
        writer.write_bytes(MANIFEST_MEMBER, json.dumps(written, indent=1).encode(), compress=True)
        writer.commit()
    report.written = True


def migrate(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str] | None = None,
    *,
    max_bytes: int | None = None,
    storage_options: dict[str, Any] | None = None,
    filesystem: Any = None,
    digest: str = DEFAULT,
) -> MigrationReport:
    """Write the archive ``src`` as a format-2 bundle at ``dst``; return a report.

    Nothing in ``src`` is executed; ``dst`` appears atomically or not at all.
    A legacy archive (or a plain framework file: a Keras ``model.save`` file,
    a ``torch.save(model.state_dict())`` file, which becomes a one-role
    bundle, role ``model``, without params) is rewritten; a ``dst`` that this
    function already produced from the same ``src`` is left alone
    (idempotent). A format-2 ``src`` is checked in full (as
    :func:`polybundle.verify` does); given a ``dst`` other than ``src`` it
    is copied there, and the copy is checked before it appears (every 2.x
    bundle is valid as it is: 2.1 added params arrays and 2.2 named digests,
    and readers read the older forms, so a copy is the rewrite). Params
    arrays of a legacy archive (a complex probe, a mask) go to
    ``params.safetensors`` bit for bit. Without ``dst`` (or
    with ``dst`` equal to ``src``) it is reported as already up to date and
    nothing is written. Register builders named after the roles first to give
    the tensors real layout tags (needed to convert across frameworks).
    ``max_bytes`` caps the memory read from declared sizes
    (:mod:`polybundle.safety.budget`). ``digest`` names the algorithm of the
    members' digests in a bundle written anew (``"xxh3-128"``, the default,
    or ``"sha256"``; see :mod:`polybundle.format.digests`); the manifest's
    ``legacy.source_sha256`` is the source file's sha256 either way. A
    format-2 bundle is copied byte for byte and keeps its own digests.

    ``src`` and ``dst`` may be URLs, with ``storage_options`` or a ready
    fsspec ``filesystem`` for both (see :func:`polybundle.load`): a URL's
    archive is fetched to a local temporary file and migrated from there, and
    the new bundle is uploaded whole (it appears under its key complete or
    not at all).

    Example:
        >>> polybundle.migrate("wts.h5.zip", "wts.bundle").written
        True
        >>> polybundle.migrate("wts.h5.zip", "wts.bundle").written  # same source: nothing to do
        False
    """
    digest = algorithm(digest).name  # an unknown algorithm is refused before anything
    source_at = locate(src, storage_options, filesystem)
    target_at = None if dst is None else locate(dst, storage_options, filesystem)
    if source_at is None and target_at is None:
        return _migrate_files(src, dst, max_bytes, digest)
    if dst is not None and str(src) == str(dst):
        dst = None  # the same object: already up to date, as for a path
    with tempfile.TemporaryDirectory(prefix="polybundle-migrate-") as staging:
        local_src: str | os.PathLike[str] = src
        if source_at is not None:
            local_src = Path(staging, "source", source_at.name or "source")
            local_src.parent.mkdir()
            source_at.get_file(local_src)
        local_dst = dst
        if target_at is not None and dst is not None:
            local_dst = Path(staging, "target", target_at.name or "target")
            local_dst.parent.mkdir()
            if target_at.exists():  # a bundle migrated before is left alone (idempotent)
                target_at.get_file(local_dst)
        report = _migrate_files(local_src, local_dst, max_bytes, digest)
        if target_at is not None and report.written:
            target_at.put_file(local_dst)  # type: ignore[arg-type]
    report.source, report.target = str(src), None if dst is None else str(dst)
    return report


def _migrate_files(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str] | None,
    max_bytes: int | None,
    digest: str,
) -> MigrationReport:
    """:func:`migrate` between local files, writing member digests of algorithm ``digest``."""
    source = Path(src)
    target = None if dst is None else Path(dst)
    with budget.limit(max_bytes), ArchiveReader(source) as archive:
        detection = detect(archive)
        if detection.format == FORMAT_NAME:
            return _migrate_format_two(source, target, archive)
        if target is None:
            raise PolybundleError(
                f"{str(source)!r} is {detection.format!r}; give a destination to write the "
                "format-2 bundle to (polybundle migrate SRC DST)."
            )
        if target.exists() and target.resolve() == source.resolve():
            raise PolybundleError(
                f"source and target are the same file {str(source)!r}; give a new path."
            )
        if not target.parent.is_dir():
            raise PolybundleError(
                f"the folder {str(target.parent)!r} does not exist; create it first."
            )
        budget.check(sum(archive.size(n) for n in archive.names()), "the archive's members")
        source_sha = _file_digest(source, "sha256")
        if plain_backend(detection) is not None:
            report = MigrationReport(str(source), str(target), detection.format)
            if not _already_migrated(target, source_sha, digest):
                _write_plain(target, source, detection, source_sha, report, digest)
            return report
        reader = era_reader(detection.format)
        content = reader.read(archive)
        report = MigrationReport(str(source), str(target), content.format)
        if _already_migrated(target, source_sha, digest):
            return report
        _write(target, archive, reader, content, source_sha, report, digest)
    return report
