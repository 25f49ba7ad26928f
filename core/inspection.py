"""``polybundle.inspect``: describe a bundle without importing any framework.

Example:
    >>> report = polybundle.inspect("run.bundle")  # doctest: +SKIP
    >>> report["backend"], [t["name"] for t in report["tensors"]][:2]
    ('torch', ['0.weight', '0.bias'])
"""

from __future__ import annotations

import os
from typing import Any

from .archive import ArchiveReader
from .backend import TensorSpec
from .detection import FORMAT_NAME
from .errors import FormatError
from .loading import detect
from .manifest import PARAMS_MEMBER, read_manifest
from .optimizer import summarize_document
from .params import decode_params


def inspect(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Return the manifest, the params and a table of tensors of the bundle at ``path``.

    Reads only JSON members and the zip directory: neither torch nor
    tensorflow is imported, and sizes are checked against the manifest (run
    :func:`polybundle.load` to check sha256 too). Each tensor row has
    ``role``, ``name``, ``shape``, ``dtype``, ``layout`` and ``bytes``.
    ``optimizers`` maps each role saved with optimizer state to its summary
    (algorithm, class, step, hyperparameters, slot counts, slot bytes).

    Example:
        >>> polybundle.inspect("run.bundle")["tensors"][0]  # doctest: +SKIP
        {'role': 'net', 'name': 'weight', 'shape': [1, 3], 'dtype': 'float32', ...}
    """
    with ArchiveReader(path) as archive:
        detection = detect(archive)
        if detection.format != FORMAT_NAME:
            raise FormatError(
                f"{str(path)!r} is {detection.format!r}; inspect reads format-2 bundles."
            )
        manifest = read_manifest(archive)
        params = decode_params(archive.read(PARAMS_MEMBER), where=PARAMS_MEMBER)
        optimizers = {
            entry["role"]: {
                **summarize_document(
                    archive.read(entry["optimizer"]["state"]), where=entry["role"]
                ),
                "slot_bytes": archive.size(entry["optimizer"]["slots"]),
            }
            for entry in manifest["models"]
            if "optimizer" in entry
        }
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
