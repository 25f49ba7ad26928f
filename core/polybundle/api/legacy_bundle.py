"""Load a legacy archive into a :class:`~polybundle.api.bundle.Bundle`.

Called by :func:`polybundle.load` when a detector reports a legacy era; the
era's reader (registered by the backend whose files the era holds) reads the
archive and :mod:`polybundle.legacy.loading` builds the models that can be
built.

Example: a TensorFlow-era archive; with no architecture registered for its roles,
its params and tensors load and no model is built.

    >>> bundle = polybundle.load("wts.h5.zip")
    >>> bundle.params["_version"], bundle.params["N"], bundle.backend
    ('1.0', 16, 'tensorflow')
    >>> [model["role"] for model in bundle.manifest["models"]], bundle.models
    (['autoencoder', 'diffraction_to_obj'], {})
    >>> bundle.tensors("autoencoder")["layers/conv2d/vars/0"].shape
    (3, 3, 1, 8)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from polybundle.api.bundle import Bundle
from polybundle.errors import BackendMismatchError, IntegrityError, PolybundleError
from polybundle.format.archive import ArchiveReader
from polybundle.hooks.registry import get_backend, get_registry
from polybundle.legacy.era import EraReader
from polybundle.legacy.loading import LegacyModels, build_role, describe
from polybundle.legacy.plugin import era_reader
from polybundle.safety import budget


class LegacyBundle(Bundle):
    """A :class:`Bundle` read from a legacy archive; tensors come from its era reader.

    Example:
        >>> bundle = polybundle.load("wts.h5.zip")
        >>> bundle.backend, bundle.roles
        ('tensorflow', ['autoencoder', 'diffraction_to_obj'])
    """

    def tensors(self, role: str) -> dict[str, np.ndarray]:
        """Read ``role``'s tensors from the legacy file (no framework needed).

        Example:
            >>> tensors = polybundle.load("wts.h5.zip").tensors("autoencoder")
            >>> tensors["layers/batch_normalization/vars/0"].dtype
            dtype('float32')
        """
        reader = era_reader(self.manifest["format"])
        with budget.limit(self.max_bytes), ArchiveReader(self.path) as archive:
            budget.check(sum(archive.size(n) for n in archive.names()), "the archive's members")
            content = reader.read(archive)
            if describe(content) != self.manifest:
                raise IntegrityError(
                    f"{str(self.path)!r} changed since it was loaded; load it again."
                )
            return reader.read_tensors(archive, content.role(role))


def load_legacy(
    archive: ArchiveReader,
    reader: EraReader,
    *,
    backend: str | None,
    roles: Iterable[str] | None,
    into: dict[str, Any],
    trust_code: bool,
) -> LegacyBundle:
    """Read a legacy archive with ``reader`` and build the models that can be built.

    Example:
        >>> from polybundle.legacy.plugin import era_reader
        >>> with ArchiveReader("wts.h5.zip") as archive:
        ...     bundle = load_legacy(archive, era_reader("legacy-tf-dill"), backend=None,
        ...                          roles=None, into={}, trust_code=False)
        >>> bundle.params["_version"]
        '1.0'
    """
    content = reader.read(archive)
    archived = get_backend(content.backend)
    if backend is not None and get_backend(backend).name != archived.name:
        raise BackendMismatchError(
            archived.name,
            get_backend(backend).name,
            "Loading legacy archives across frameworks is not supported by this version.",
        )
    available = [role.role for role in content.roles]
    selected = available if roles is None else list(roles)
    unknown = [role for role in selected if role not in available]
    if unknown:
        raise PolybundleError(f"roles {unknown} are not in the archive; it holds {available}.")
    stray = set(into) - set(selected)
    if stray:
        raise PolybundleError(
            f"into names roles {sorted(stray)} that are not being loaded ({selected})."
        )
    reasons: dict[str, PolybundleError] = {}
    models = LegacyModels(reasons)
    for name in selected:
        try:
            models[name] = build_role(
                archive, reader, archived, content.role(name), into.get(name), trust_code
            )
        except PolybundleError as exc:
            if name in into or get_registry().has_builder(name, archived.name):
                raise
            reasons[name] = exc
    return LegacyBundle(
        archive.path, describe(content), content.params, archived.name, models
    )
