"""``polybundle.migrate``: rewrite a legacy archive as a format-2 bundle.

The weights members are copied byte for byte (a ``model.pth`` state_dict or a
``model.keras`` file is already what format 2 stores), params become JSON,
and the manifest records where the bundle came from: the era, the source's
sha256, the custom-object names (never their code), and every conversion and
drop. No pickle is written. The target appears atomically; migrating the
same source onto a target it already produced does nothing.

Example:
    >>> report = polybundle.migrate("wts.h5.zip", "wts.bundle")  # doctest: +SKIP
    >>> report.converted[:1], report.dropped[:1]
    (['autoencoder params.dill -> params.json'], ['autoencoder/model.h5 ...'])
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .archive import ArchiveReader
from .backend import TensorSpec
from .detection import FORMAT_NAME
from .errors import PolybundleError
from .legacy.era import EraReader, LegacyContent, LegacyRole, read_member
from .legacy.jsonsafe import to_json
from .legacy.plugin import era_reader
from .loading import detect
from .manifest import MANIFEST_MEMBER, PARAMS_MEMBER, build_manifest, read_manifest, verify_members
from .params import encode_params
from .registry import get_backend, get_registry
from .schemas import validate
from .verify import VerifyReport, check_format_two
from .writer import ArchiveWriter


@dataclass
class MigrationReport:
    """What :func:`migrate` did: the source era, conversions, drops, and whether it wrote.

    Example:
        >>> MigrationReport("a.zip", "b.bundle", "legacy-torch-dill").written
        False
    """

    source: str
    target: str
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
        lines = [f"{self.source} ({self.era}) -> {self.target}: {state}"]
        lines += [f"  converted: {item}" for item in self.converted]
        lines += [f"  dropped: {item}" for item in self.dropped]
        return lines


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(8 * 1024 * 1024), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _already_migrated(target: Path, source_sha: str) -> bool:
    if not target.is_file():
        return False
    try:
        with ArchiveReader(target) as archive:
            manifest = read_manifest(archive)
            verify_members(archive, manifest)
    except PolybundleError:
        return False
    return manifest.get("legacy", {}).get("source_sha256") == source_sha


def _role_specs(
    archive: ArchiveReader,
    reader: EraReader,
    role: LegacyRole,
    config: dict[str, Any],
    report: MigrationReport,
) -> tuple[list[TensorSpec], dict[str, Any] | None]:
    """Use a builder named after the role, when registered, for real layout tags."""
    backend = get_backend(reader.backend)
    registry = get_registry()
    if not registry.has_builder(role.role, backend.name):
        report.converted.append(
            f"{role.role}: no builder registered, tensors keep opaque layout tags (register "
            f"@polybundle.architecture({role.role!r}, backend={backend.name!r}) for real ones)"
        )
        return role.specs, None
    import io

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
) -> None:
    params = to_json(content.params)
    report.converted += [f"params {item}" for item in params.converted]
    report.dropped += [f"params {item}" for item in params.dropped]
    params_bytes = encode_params(params.value)
    backend = get_backend(content.backend)
    entries = []
    for role in content.roles:
        specs, architecture = _role_specs(archive, reader, role, params.value, report)
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
    with ArchiveWriter(target) as writer:
        writer.write_bytes(PARAMS_MEMBER, params_bytes, compress=True)
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


def migrate(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> MigrationReport:
    """Write the legacy archive ``src`` as a format-2 bundle at ``dst``; return a report.

    Nothing in ``src`` is executed; ``dst`` appears atomically or not at all.
    A ``dst`` that this function already produced from the same ``src`` is
    left alone (idempotent). A format-2 ``src`` is checked and reported as
    already migrated. Register builders named after the roles first to give
    the tensors real layout tags (needed to convert across frameworks).

    Example:
        >>> polybundle.migrate("wts.h5.zip", "wts.bundle").written  # doctest: +SKIP
        True
    """
    source, target = Path(src), Path(dst)
    if target.exists() and target.resolve() == source.resolve():
        raise PolybundleError(
            f"source and target are the same file {str(source)!r}; give a new path."
        )
    if not target.parent.is_dir():
        raise PolybundleError(f"the folder {str(target.parent)!r} does not exist; create it first.")
    with ArchiveReader(source) as archive:
        detection = detect(archive)
        if detection.format == FORMAT_NAME:
            check_format_two(archive, VerifyReport(str(source)))
            return MigrationReport(str(source), str(target), FORMAT_NAME)
        reader = era_reader(detection.format)
        content = reader.read(archive)
        source_sha = _sha256(source)
        report = MigrationReport(str(source), str(target), content.format)
        if _already_migrated(target, source_sha):
            return report
        _write(target, archive, reader, content, source_sha, report)
    return report
