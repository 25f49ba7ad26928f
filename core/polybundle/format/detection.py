"""What a detector says about an archive, and the built-in detector.

Detectors implement the ``polybundle_detect_archive`` hook (firstresult). The
built-in one below is registered ``trylast`` so plugins can claim files first.
It claims format-2 bundles and, failing that, plain framework files:

- a Keras 3 file written by ``model.save("model.keras")`` (a zip of
  ``config.json``, ``metadata.json`` and ``model.weights.h5``, and nothing
  else but layer ``assets/``): format :data:`KERAS_FILE`;
- a PyTorch file written by ``torch.save(model.state_dict(), "model.pth")``
  (a zip whose members all lie in one folder ``<prefix>/`` with
  ``<prefix>/data.pkl`` and storages ``<prefix>/data/<n>``): format
  :data:`TORCH_FILE`.

A plain file is read as a one-role bundle (role :data:`PLAIN_ROLE`, no params,
see :func:`polybundle.api.loading.plain_manifest`). The older pre-zip
``torch.save`` layout is not a zip, so it is not detected.

Example:
    >>> Detection(format="polybundle", backend="torch")
    Detection(format='polybundle', backend='torch')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from polybundle.format.jsondoc import load_json
from polybundle.hooks.hookspecs import hookimpl

if TYPE_CHECKING:
    from polybundle.format.archive import ArchiveReader

FORMAT_NAME = "polybundle"
"""The ``format`` value of a format-2 manifest."""

TORCH_FILE = "torch-file"
"""The ``format`` of a plain ``torch.save(model.state_dict())`` zip file."""

KERAS_FILE = "keras-file"
"""The ``format`` of a plain Keras 3 ``model.save("model.keras")`` file."""

PLAIN_FORMATS = {TORCH_FILE: "torch", KERAS_FILE: "tensorflow"}
"""Plain framework files, read as one-role bundles without params: format -> backend."""

PLAIN_ROLE = "model"
"""The one role of a plain framework file (and the builder name it is rebuilt with)."""

KERAS_FILE_MEMBERS = frozenset({"config.json", "metadata.json", "model.weights.h5"})
"""The members of a Keras 3 ``.keras`` file."""

KNOWN_FORMATS = (
    "polybundle format 2 (a zip with manifest.json whose 'format' is 'polybundle')",
    "a plain Keras 3 file (model.save('model.keras'): config.json, metadata.json, "
    "model.weights.h5)",
    "a plain PyTorch zip (torch.save(model.state_dict()): <prefix>/data.pkl, <prefix>/data/N)",
    "TensorFlow dill era (manifest.dill, version 1.0, model.keras per role)",
    "PyTorch dill era (manifest.dill, version 2.0-pytorch)",
    "PyTorch JSON era (manifest.json, manifest_version torch-manifest-v1)",
)
"""Human-readable list of the formats polybundle reads, for error messages."""


@dataclass(frozen=True)
class Detection:
    """The answer of a detector: which archive format, and which backend wrote it.

    ``format`` names the layout (``"polybundle"`` for format 2); ``backend`` is
    the backend name or alias of the writer, or None when the format does not
    say.

    Example:
        >>> Detection("polybundle", "tensorflow").backend
        'tensorflow'
    """

    format: str
    backend: str | None = None


def peek_format2_manifest(archive: ArchiveReader) -> dict[str, Any] | None:
    """Return the parsed ``manifest.json`` when it looks like format 2, else None.

    For detectors: no schema check (the loader checks fully later), only "is
    there a JSON object whose ``format`` is ``polybundle``". A ``manifest.json``
    that is not strict, bounded JSON raises :class:`~polybundle.errors.FormatError`.

    Example:
        >>> peek_format2_manifest(archive)["backend"]  # doctest: +SKIP
        'jax'
    """
    if not archive.has("manifest.json"):
        return None
    # strict and bounded: a deep or oversized manifest is a FormatError, not a RecursionError
    document = load_json(archive.read("manifest.json"), where="manifest.json")
    if not isinstance(document, dict) or document.get("format") != FORMAT_NAME:
        return None
    return document


def torch_zip_prefix(names: list[str]) -> str | None:
    """Return ``<prefix>`` when ``names`` are the members of a ``torch.save`` zip, else None.

    Every member lies in one folder, which holds ``data.pkl``; storages are
    ``data/<n>`` and the rest are torch's small records (``version``,
    ``byteorder``, ``.data/...``).

    Example:
        >>> torch_zip_prefix(["net/data.pkl", "net/data/0", "net/version", "net/byteorder"])
        'net'
        >>> torch_zip_prefix(["manifest.json", "net/model.pth"]) is None
        True
    """
    prefixes = {name.partition("/")[0] for name in names}
    if len(prefixes) != 1 or any("/" not in name for name in names):
        return None
    prefix = prefixes.pop()
    if f"{prefix}/data.pkl" not in names:
        return None
    for name in names:
        rest = name[len(prefix) + 1 :]
        if rest.startswith("data/") and not rest[5:].isdigit():
            return None
    return prefix


def detect_plain_file(archive: ArchiveReader) -> Detection | None:
    """Claim a plain Keras 3 file or ``torch.save`` zip by its member names alone.

    Example:
        >>> detect_plain_file(archive)  # doctest: +SKIP
        Detection(format='keras-file', backend='tensorflow')
    """
    names = archive.names()
    extra = set(names) - KERAS_FILE_MEMBERS
    if KERAS_FILE_MEMBERS <= set(names) and all(name.startswith("assets/") for name in extra):
        return Detection(KERAS_FILE, PLAIN_FORMATS[KERAS_FILE])
    if torch_zip_prefix(names) is not None:
        return Detection(TORCH_FILE, PLAIN_FORMATS[TORCH_FILE])
    return None


@hookimpl(trylast=True)
def polybundle_detect_archive(archive: ArchiveReader) -> Detection | None:
    """Claim format-2 bundles (``manifest.json`` with ``format`` ``"polybundle"``), then
    plain framework files (see :func:`detect_plain_file`).

    Example:
        >>> polybundle_detect_archive(archive)  # doctest: +SKIP
        Detection(format='polybundle', backend='torch')
    """
    document = peek_format2_manifest(archive)
    if document is None:
        return detect_plain_file(archive)
    backend = document.get("backend")
    return Detection(FORMAT_NAME, backend if isinstance(backend, str) else None)
