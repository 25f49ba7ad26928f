"""What an archive-era reader is, and what it hands back.

An era reader knows one older archive layout. It lives in the backend whose
files the era holds and is registered through the ``polybundle_register_eras``
hook; :func:`polybundle.load`, :func:`polybundle.migrate` and
:func:`polybundle.verify` find it by the ``format`` a detector reported.
Readers never execute archive content: pickles go through
:mod:`polybundle.safety.unpickle` (:func:`dill_manifest`, :func:`read_params`),
weights are read as data.

Example:
    >>> class MyEra(EraReader):
    ...     format = "my-old-format"
    ...     backend = "numpy"
    ...     description = "my old writer (a zip with weights.npy)"
    ...     def claims(self, archive): return archive.has("weights.npy")
    ...     def read(self, archive): ...
    ...     def read_tensors(self, archive, role): ...
    >>> MyEra().format
    'my-old-format'
"""

from __future__ import annotations

import json
import re
import zlib
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from polybundle.errors import (
    FormatError,
    IntegrityError,
    UnknownArchitectureError,
    UnsafeContentError,
)
from polybundle.format.archive import MAX_JSON_BYTES
from polybundle.model.backend import TensorSpec
from polybundle.model.layouts import OPAQUE, SCALAR
from polybundle.safety import budget
from polybundle.safety.unpickle import Leaves, safe_loads

if TYPE_CHECKING:
    from polybundle.format.archive import ArchiveReader

ROLE_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
"""Role names a legacy manifest may list (they become member folders)."""

MAX_LEGACY_MEMBER = 16 * 1024**3
"""Largest legacy member read into memory."""

MAX_MANIFEST_BYTES = 1024 * 1024
"""Largest legacy manifest read."""


@dataclass
class LegacyRole:
    """One role of a legacy archive: its weights member, tensors and params.

    ``custom_objects`` lists the ``module.name`` globals of the role's
    ``custom_objects.dill`` (read statically; empty when it has none).

    Example:
        >>> LegacyRole("autoencoder", "autoencoder/weights.npy", [], {}).role
        'autoencoder'
    """

    role: str
    weights: str
    specs: list[TensorSpec]
    params: dict[str, Any]
    custom_objects: list[str] = field(default_factory=list)
    custom_member: str | None = None
    config: dict[str, Any] | None = None


@dataclass
class LegacyContent:
    """Everything a legacy archive holds, read without running any of it.

    Example:
        >>> role = LegacyRole("autoencoder", "autoencoder/weights.npy", [], {"N": 64})
        >>> content = LegacyContent("my-old-format", "1.0", "numpy", {}, [role])
        >>> content.params, [r.role for r in content.roles]
        ({'N': 64}, ['autoencoder'])
    """

    format: str
    version: str
    backend: str
    manifest: dict[str, Any]
    roles: list[LegacyRole]
    ignored: list[str] = field(default_factory=list)

    @property
    def params(self) -> dict[str, Any]:
        """Return the params of the first role (legacy writers store one snapshot per role)."""
        return self.roles[0].params if self.roles else {}

    def role(self, name: str) -> LegacyRole:
        """Return the role called ``name``; raise listing the roles when absent."""
        for entry in self.roles:
            if entry.role == name:
                return entry
        raise FormatError(
            f"the archive has no role {name!r}; its roles are {[r.role for r in self.roles]}."
        )


class EraReader(ABC):
    """Base class of legacy-era readers; subclasses set the attributes and methods.

    Example:
        >>> from polybundle.legacy import era_readers
        >>> all(isinstance(reader, EraReader) for reader in era_readers().values())
        True
    """

    format: str = ""
    """The ``Detection.format`` this reader handles (unique)."""
    backend: str = ""
    """Name or alias of the backend that wrote the weights."""
    description: str = ""
    """One line for error messages listing the formats polybundle reads."""

    @abstractmethod
    def claims(self, archive: ArchiveReader) -> bool:
        """Return True when ``archive`` is of this era (member names, small members).

        Example: ``reader.claims(archive)`` is True for a ``manifest.dill`` archive.
        """

    @abstractmethod
    def read(self, archive: ArchiveReader) -> LegacyContent:
        """Read manifest, params and tensor specs of every role; run nothing.

        Example: ``reader.read(archive).roles[0].params["intensity_scale"]``.
        """

    @abstractmethod
    def read_tensors(self, archive: ArchiveReader, role: LegacyRole) -> dict[str, np.ndarray]:
        """Return ``{name: array}`` for ``role``'s weights without any framework.

        Example: ``reader.read_tensors(archive, content.role("autoencoder"))``.
        """

    def load_standalone(self, archive: ArchiveReader, role: LegacyRole, *, trust_code: bool) -> Any:
        """Rebuild ``role``'s model from the archive alone, when the format allows.

        The default refuses. Example: ``reader.load_standalone(archive, role,
        trust_code=False)``.
        """
        raise UnknownArchitectureError(
            f"a {self.description} archive does not describe its architecture, so role "
            f"{role.role!r} cannot be rebuilt from it. Register a builder named after the "
            f"role: @polybundle.architecture({role.role!r}, backend={self.backend!r}) on a "
            "function params -> model, or pass into={role: model}."
        )


def read_member(archive: ArchiveReader, name: str, *, limit: int = MAX_LEGACY_MEMBER) -> bytes:
    """Read a whole legacy member and check its CRC-32 against the zip directory.

    The member's declared size is checked against ``limit`` and charged to
    :mod:`polybundle.safety.budget` before anything is allocated, and exactly that
    many bytes (plus one, to notice a member longer than declared) are read:
    never ``limit`` bytes, so a small member needs small memory.

    Example: a pickle's first bytes, then a member past ``limit``.

        >>> from polybundle.format.archive import ArchiveReader
        >>> with ArchiveReader("wts.h5.zip") as archive:
        ...     read_member(archive, "manifest.dill")[:2]
        b'\\x80\\x04'
        >>> with ArchiveReader("wts.h5.zip") as archive:
        ...     read_member(archive, "manifest.dill", limit=10)
        Traceback (most recent call last):
        polybundle.errors.UnsafeContentError: member 'manifest.dill' declares ... bytes; a legacy
        archive holds at most 10 bytes there. The archive is damaged or hostile.
    """
    size = archive.size(name)
    if size > limit:
        raise UnsafeContentError(
            f"member {name!r} declares {size} bytes; a legacy archive holds at most {limit} "
            "bytes there. The archive is damaged or hostile."
        )
    _charge_once(archive, name, size)
    data = archive.read(name, limit=size)
    if zlib.crc32(data) != archive.info(name).CRC:
        raise IntegrityError(
            f"member {name!r} does not match the CRC-32 its zip directory records; the "
            "archive is damaged or was altered. Re-copy it."
        )
    return data


def _charge_once(archive: ArchiveReader, name: str, size: int) -> None:
    """Charge a member's size to the open budget the first time one call reads it.

    Era readers read a member more than once in one call (``manifest.dill``
    by every ``claims``, a weights member for specs and again for tensors);
    each copy is dropped before the next read, so counting every read would
    make the budget refuse archives a fraction of its size.

    Example: the second read of a member in one call costs nothing.

        >>> from polybundle.format.archive import ArchiveReader
        >>> with budget.limit(1000) as opened, ArchiveReader("wts.h5.zip") as archive:
        ...     _charge_once(archive, "manifest.dill", 80)
        ...     _charge_once(archive, "manifest.dill", 80)
        ...     opened.spent
        80
    """
    opened = budget.current()
    seen = vars(opened).setdefault("legacy_members_read", set())
    key = (str(archive.path), name)
    if key not in seen:
        opened.charge(size, f"legacy member {name}")
        seen.add(key)


def check_roles(models: Any, *, where: str) -> list[str]:
    """Return the role list of a legacy manifest, refusing anything but safe names.

    Example:
        >>> check_roles(["autoencoder"], where="manifest.dill")
        ['autoencoder']
    """
    if not isinstance(models, list) or not models:
        raise FormatError(f"{where}: 'models' is {type(models).__name__}; expected a role list.")
    for role in models:
        if not isinstance(role, str) or not ROLE_PATTERN.match(role):
            raise FormatError(f"{where} lists role {role!r:.80}, which is not a plain name.")
    if len(set(models)) != len(models):
        raise FormatError(f"{where} lists a role twice: {models}.")
    return list(models)


def dill_manifest(archive: ArchiveReader) -> dict[str, Any] | None:
    """Return the archive's ``manifest.dill`` as plain data, or None when it has none.

    The pickle is read with the plain-data allow-list only.

    Example:
        >>> import pickle, tempfile, zipfile
        >>> from polybundle.format.archive import ArchiveReader
        >>> path = tempfile.mkdtemp() + "/old.zip"
        >>> with zipfile.ZipFile(path, "w") as out:
        ...     out.writestr("manifest.dill", pickle.dumps({"models": ["net"], "version": "1.0"}))
        ...     out.writestr("net/params.dill", pickle.dumps({"N": 64}))
        >>> with ArchiveReader(path) as archive:
        ...     dill_manifest(archive)["models"], read_params(archive, "net/params.dill")
        (['net'], {'N': 64})
    """
    if not archive.has("manifest.dill"):
        return None
    data = read_member(archive, "manifest.dill", limit=MAX_MANIFEST_BYTES)
    manifest = safe_loads(data, where="manifest.dill")
    if not isinstance(manifest, dict):
        raise FormatError(f"manifest.dill holds a {type(manifest).__name__}; expected a dict.")
    return manifest


def read_params(
    archive: ArchiveReader,
    name: str,
    *,
    extra: Mapping[tuple[str, str], Any] | None = None,
    leaves: Leaves | None = None,
) -> dict[str, Any]:
    """Return a role's params snapshot: ``name`` is a JSON file or a pickle (``params.dill``).

    A pickle is read with the plain-data allow-list plus ``extra`` (a
    backend's tensor vocabulary) and ``leaves`` (what turns its tensors into
    arrays); see :func:`polybundle.safety.unpickle.safe_loads`.

    Example: see :func:`dill_manifest`.
    """
    data = read_member(archive, name, limit=MAX_JSON_BYTES)
    if name.endswith(".json"):
        try:
            params = json.loads(data)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise FormatError(f"{name} is not JSON ({str(exc)[:80]}).") from None
    else:
        params = safe_loads(data, where=name, extra=extra, leaves=leaves)
    if not isinstance(params, dict) or not all(isinstance(k, str) for k in params):
        raise FormatError(f"{name} is not a dict with string keys; expected the params snapshot.")
    return params


def opaque_specs(arrays: Mapping[str, Any]) -> list[TensorSpec]:
    """Describe ``{key: array}`` as specs keyed and named by their key, layouts not guessed.

    Example:
        >>> import numpy as np
        >>> [(s.key, s.shape, s.layout) for s in opaque_specs({"w": np.ones((2, 3))})]
        [('w', (2, 3), 'opaque')]
    """
    return [
        TensorSpec(
            key, key, tuple(array.shape), str(array.dtype), SCALAR if not array.shape else OPAQUE
        )
        for key, array in arrays.items()
    ]
