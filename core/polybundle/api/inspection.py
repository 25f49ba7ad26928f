"""``polybundle.inspect``: describe a bundle without importing any framework.

Example:
    >>> report = polybundle.inspect("run.bundle")
    >>> report["backend"], [t["name"] for t in report["tensors"]][:2]
    ('torch', ['0.weight', '0.bias'])
"""

from __future__ import annotations

import os
from typing import Any

from polybundle.api.loading import detect, open_plain, plain_backend, plain_manifest
from polybundle.format.archive import ArchiveReader
from polybundle.format.detection import FORMAT_NAME
from polybundle.format.manifest import read_manifest
from polybundle.format.params import read_params
from polybundle.format.sharded import ShardedFolder, is_sharded
from polybundle.format.storage import Location, locate
from polybundle.legacy.jsonsafe import to_json
from polybundle.legacy.loading import describe
from polybundle.legacy.plugin import era_reader
from polybundle.model.backend import TensorSpec
from polybundle.model.optimizer import summarize_document
from polybundle.safety import budget


def _params_and_optimizers(
    archive: ArchiveReader, manifest: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read params.json and each role's optimizer summary, charging what is read."""
    params = read_params(archive, manifest, arrays=False)
    optimizers = {}
    for entry in manifest["models"]:
        if "optimizer" not in entry:
            continue
        state = entry["optimizer"]["state"]
        budget.charge(archive.size(state), state)
        optimizers[entry["role"]] = {
            **summarize_document(archive.read(state), where=entry["role"]),
            "slot_bytes": archive.size(entry["optimizer"]["slots"]),
        }
    return params, optimizers


def _describe(
    path: str | os.PathLike[str] | Location,
) -> tuple[dict[str, Any], dict[str, Any], dict]:
    """Return the manifest (or its like), params and optimizer summaries of ``path``."""
    if is_sharded(path):
        folder = ShardedFolder(path)
        return folder.manifest, folder.params(arrays=False), {}
    with ArchiveReader(path) as archive:
        detection = detect(archive)
        if plain_backend(detection) is not None:
            with open_plain(path, detection) as plain:
                manifest, params, optimizers = plain_manifest(plain, detection), {}, {}
        elif detection.format != FORMAT_NAME:
            content = era_reader(detection.format).read(archive)
            manifest, params, optimizers = describe(content), to_json(content.params).value, {}
        else:
            manifest = read_manifest(archive)
            params, optimizers = _params_and_optimizers(archive, manifest)
    return manifest, params, optimizers


def inspect(
    path: str | os.PathLike[str],
    *,
    max_bytes: int | None = None,
    storage_options: dict[str, Any] | None = None,
    filesystem: Any = None,
) -> dict[str, Any]:
    """Return the manifest, the params and a table of tensors of the bundle at ``path``.

    Reads only JSON members and the zip directory: no framework is
    imported, and sizes are checked against the manifest (run
    :func:`polybundle.verify` to check the digests too). Each tensor row has
    ``role``, ``name``, ``shape``, ``dtype``, ``layout`` and ``bytes``.
    ``optimizers`` maps each role saved with optimizer state to its summary
    (algorithm, class, step, hyperparameters, slot counts, slot bytes).

    A plain framework file (Keras ``model.save`` or ``torch.save(state_dict)``)
    is described from its index alone by the backend that claims it
    (:meth:`~polybundle.model.backend.Backend.describe_stored`): one role
    ``model``, no params. A legacy archive is described by its era's reader
    (the reader :func:`polybundle.load` uses; it runs nothing): ``format`` is the
    era, each role's ``architecture`` is None and ``manifest["legacy"]`` holds
    the original manifest. ``max_bytes`` caps the memory read from
    declared sizes (see :mod:`polybundle.safety.budget`).
    ``path`` may be a URL with ``storage_options`` or a ready fsspec
    ``filesystem`` (see :func:`polybundle.load`); it is read by byte range.

    Example:
        >>> row = polybundle.inspect("run.bundle")["tensors"][0]
        >>> row["role"], row["name"], row["shape"], row["dtype"], row["bytes"]
        ('net', '0.weight', [3, 4], 'float32', 48)
        >>> legacy = polybundle.inspect("wts.h5.zip")  # a TensorFlow-era archive
        >>> legacy["format"], legacy["backend"], legacy["params"]["N"]
        ('legacy-tf-dill', 'tensorflow', 16)
    """
    with budget.limit(max_bytes):
        manifest, params, optimizers = _describe(locate(path, storage_options, filesystem) or path)
    tensors = []
    for entry in manifest["models"]:
        for document in entry["tensors"]:
            spec = TensorSpec.from_json(document)
            tensors.append(
                {
                    "role": entry["role"],
                    "name": spec.name,
                    "shape": list(spec.shape),
                    "dtype": spec.dtype,
                    "layout": spec.layout,
                    "bytes": spec.nbytes,
                }
            )
    return {
        "path": str(path),
        "format": manifest["format"],
        "format_version": manifest["format_version"],
        "backend": manifest["backend"],
        "manifest": manifest,
        "params": params,
        "tensors": tensors,
        "optimizers": optimizers,
    }
