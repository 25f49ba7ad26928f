"""What loading a legacy archive needs below the API: size checks, the manifest, model builds.

:func:`polybundle.api.legacy_bundle.load_legacy` (called by
:func:`polybundle.load` when a detector reports a legacy era) drives it. A
role's model is built, in this order, from ``into={role: model}``, from a
builder registered under the role's name (given the archive's params as its
config: legacy archives record no architecture), or from the archive alone
where the era allows it (Keras; custom objects only with ``trust_code``).
A role that cannot be built is left out of ``bundle.models``; asking for it
raises an error that says why and what to do.

Example:
    >>> bundle = polybundle.load("wts.h5.zip")
    >>> bundle.params["intensity_scale"], bundle.params["_version"]
    (1234.5, '1.0')
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from polybundle.errors import (
    PolybundleError,
    UnsafeContentError,
)
from polybundle.format.archive import ArchiveReader
from polybundle.hooks.registry import get_backend, get_registry, remember_architecture
from polybundle.legacy.era import EraReader, LegacyContent, LegacyRole, read_member
from polybundle.legacy.jsonsafe import to_json
from polybundle.model.backend import Backend
from polybundle.safety import budget

MAX_JSON_VALUES = 65_536
"""Most JSON values legacy params or a manifest may become (shared values count each time)."""

MAX_JSON_CHARS = 16 * 1024 * 1024
"""Most characters of text (strings, keys) legacy params may become as JSON."""


def check_json_size(value: Any, *, where: str, arrays_as_json: bool = True) -> None:
    """Refuse a legacy value that would expand into too much JSON; charge what it will cost.

    A pickle can reference one list twice at every level (``b = [a, a]``):
    40 levels of 3 KB become 2**40 values once written out, and an array of
    a million numbers becomes a million JSON values that the params schema
    checks one by one. The walk counts every value each time it is reached
    (never recursing, so depth cannot overflow it), stops at
    :data:`MAX_JSON_VALUES` values or :data:`MAX_JSON_CHARS` characters, and
    charges an estimate of the JSON's size to the memory budget. With
    ``arrays_as_json=False`` (format-2 params, where arrays go to
    ``params.safetensors``) an array counts as one value and its bytes are
    charged instead.

    Example:
        >>> check_json_size({"N": 64, "probe.mask": [[True] * 4] * 4}, where="params.dill")
        >>> shared = [0]
        >>> for _ in range(40):
        ...     shared = [shared, shared]
        >>> check_json_size({"probe": shared}, where="params.dill")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        polybundle.errors.UnsafeContentError: params.dill would become more than 65536 JSON ...
    """
    values = chars = array_bytes = 0
    stack = [value]
    while stack:
        item = stack.pop()
        values += 1
        if isinstance(item, (str, bytes, bytearray)):
            chars += len(item)
        elif isinstance(item, np.ndarray) and arrays_as_json:
            values += int(item.size)
        elif isinstance(item, np.ndarray):
            array_bytes += int(item.nbytes)
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack.extend(item)
        if values > MAX_JSON_VALUES or chars > MAX_JSON_CHARS:
            raise UnsafeContentError(
                f"{where} would become more than {MAX_JSON_VALUES} JSON values or "
                f"{MAX_JSON_CHARS} characters (shared references are written out each time "
                "they occur); a params snapshot holds settings, not data. Refused: the archive "
                "is hostile or holds data that belongs in a weights file."
            )
    budget.charge(chars + 32 * values + 2 * array_bytes, f"{where} as JSON")


class LegacyModels(dict):
    """``{role: model}`` that explains, for a role it lacks, why and what to do.

    Example:
        >>> models = LegacyModels({"net": PolybundleError("why not")})
        >>> models["net"]
        Traceback (most recent call last):
        ...
        polybundle.errors.PolybundleError: why not
    """

    def __init__(self, reasons: dict[str, PolybundleError]) -> None:
        super().__init__()
        self.reasons = reasons

    def __missing__(self, role: str) -> Any:
        if role in self.reasons:
            raise self.reasons[role]
        raise KeyError(role)


def describe(content: LegacyContent) -> dict[str, Any]:
    """Return a manifest-like, JSON-safe description of a legacy archive.

    Same keys as a format-2 manifest where they apply (``format`` is the
    era's, ``architecture`` is None), plus ``legacy``: the original manifest,
    custom-object names per role and members left unread.

    Example:
        >>> polybundle.load("wts.h5.zip").manifest["models"][0]["weights"]
        'autoencoder/model.keras'
    """
    check_json_size(content.manifest, where="the legacy manifest")
    return {
        "format": content.format,
        "format_version": content.version,
        "backend": get_backend(content.backend).name,
        "models": [
            {
                "role": role.role,
                "architecture": None,
                "weights": role.weights,
                "tensors": [spec.to_json() for spec in role.specs],
            }
            for role in content.roles
        ],
        "legacy": {
            "era": content.format,
            "version": content.version,
            "manifest": to_json(content.manifest).value,
            "custom_objects": {r.role: r.custom_objects for r in content.roles if r.custom_objects},
            "ignored_members": content.ignored,
        },
    }


def build_role(
    archive: ArchiveReader,
    reader: EraReader,
    backend: Backend,
    role: LegacyRole,
    given: Any | None,
    trust_code: bool,
) -> Any:
    """Build ``role``'s model: ``given`` (filled), its registered builder, or the archive alone.

    The builder is given the role's params as its config (legacy archives
    record no architecture); without one the era's ``load_standalone`` runs.
    Example: ``build_role(archive, reader, backend, role, None, trust_code=False)``.
    """
    registry = get_registry()
    if given is None and not registry.has_builder(role.role, backend.name):
        backend.require()
        return reader.load_standalone(archive, role, trust_code=trust_code)
    backend.require()
    source = io.BytesIO(read_member(archive, role.weights))
    if given is not None:
        backend.load_into(given, source, role.specs)
        return given
    check_json_size(role.params, where=f"{role.role} params")
    config = to_json(role.params).value
    model = registry.builder(role.role, backend.name)(config)
    backend.load_into(model, source, role.specs)
    remember_architecture(model, role.role, config)
    return model
