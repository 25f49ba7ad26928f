"""``polybundle.load``: detect what wrote a bundle and bring its models back.

Example:
    >>> bundle = polybundle.load("run.bundle")  # doctest: +SKIP
    >>> bundle.models["net"]
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .archive import ArchiveReader
from .backend import Backend, TensorSpec
from .bundle import Bundle, model_entry
from .detection import FORMAT_NAME, KNOWN_FORMATS, Detection
from .errors import BackendMismatchError, FormatError, PolybundleError, UnknownBackendError
from .legacy.loading import load_legacy
from .legacy.plugin import era_reader
from .manifest import PARAMS_MEMBER, read_manifest, verify_members, verifying_members
from .params import decode_params
from .plugins import get_plugin_manager
from .progress import progress_bar
from .registry import get_backend, get_registry, remember_architecture
from .transfer import converted_model


def detect(archive: ArchiveReader) -> Detection:
    """Ask the detector plugins what wrote ``archive``; raise when none knows.

    Example:
        >>> with ArchiveReader("run.bundle") as archive:  # doctest: +SKIP
        ...     detect(archive)
        Detection(format='polybundle', backend='torch')
    """
    detection = get_plugin_manager().hook.polybundle_detect_archive(archive=archive)
    if detection is None:
        raise FormatError(
            f"{str(archive.path)!r} is a zip, but no known format: members "
            f"{archive.names()[:8]}. polybundle reads: {'; '.join(KNOWN_FORMATS)}. "
            "A third-party format needs its plugin installed."
        )
    return detection


def _archived_backend(name: str) -> Backend:
    try:
        return get_backend(name)
    except UnknownBackendError:
        raise UnknownBackendError(
            f"this bundle was written by the {name!r} backend, which is not installed. "
            f"Install its plugin package (for example: pip install polybundle-{name})."
        ) from None


def _select_roles(manifest: dict[str, Any], roles: Iterable[str] | None) -> list[str]:
    available = [entry["role"] for entry in manifest["models"]]
    if roles is None:
        return available
    wanted = list(roles)
    unknown = [role for role in wanted if role not in available]
    if unknown:
        raise PolybundleError(f"roles {unknown} are not in the bundle; it holds {available}.")
    return wanted


def _build_model(
    archive: ArchiveReader, backend: Backend, entry: dict[str, Any], given: Any | None
) -> Any:
    specs = [TensorSpec.from_json(t) for t in entry["tensors"]]
    architecture = entry["architecture"]
    registry = get_registry()
    with archive.open(entry["weights"]) as source:
        if given is not None:
            backend.load_into(given, source, specs)
            return given
        if architecture and registry.has_builder(architecture["name"], backend.name):
            builder = registry.builder(architecture["name"], backend.name)
            model = backend.build_and_load(builder, architecture["config"], source, specs)
            remember_architecture(model, architecture["name"], architecture["config"])
            return model
        model = backend.load_standalone(source)
        if architecture:
            remember_architecture(model, architecture["name"], architecture["config"])
        return model


def load(
    path: str | os.PathLike[str],
    *,
    backend: str | None = None,
    roles: Iterable[str] | None = None,
    into: dict[str, Any] | None = None,
    verify: bool | None = None,
    lazy: bool = False,
    trust_code: bool = False,
    progress: bool = False,
) -> Bundle:
    """Load the bundle at ``path``, whichever registered backend wrote it.

    ``backend`` (name or alias) asks for a framework. When it is not the one
    that wrote the bundle, each model is built with ``backend``'s builder for
    the same architecture and config and loaded with the converted weights
    (see :mod:`polybundle.transfer`); without such a builder
    :class:`~polybundle.errors.ConversionUnavailableError` (a
    :class:`~polybundle.errors.BackendMismatchError`) names both backends.
    ``roles`` limits which models are built. ``into`` gives
    ready instances to load weights into; other roles are rebuilt with the
    registered builder of their architecture, or (Keras) from the ``.keras``
    file with ``safe_mode=True``. ``verify`` checks every member's sha256
    (on by default): beside the framework's read in a background thread for
    models built here (they are discarded on a mismatch), before anything is
    loaded when ``into`` gives models the caller owns. Nothing is ever unpickled.

    ``progress=True`` shows a progress bar of the bytes read (hashing and
    loading) for bundles of 64 MiB and more (:mod:`polybundle.progress`).

    ``lazy=True`` builds no models and imports no framework: ``tensors(role)``
    then memory-maps the weights, reading only what is touched. A lazy load
    does not hash the members unless ``verify=True`` is passed (which reads
    every byte up front); ``verify`` defaults to ``not lazy``.

    Legacy archives (TensorFlow dill, PyTorch dill, PyTorch JSON eras) go to
    their registered era reader (:mod:`polybundle.legacy`): params and
    tensors always load, with no pickled code run; a role's model is built
    from ``into``, from a builder registered under the role's name, or (Keras)
    from the file. ``trust_code=True`` allows unpickling a TensorFlow-era
    ``custom_objects.dill``, which imports and can run the code it names.

    Example:
        >>> bundle = polybundle.load("run.bundle", roles=["net"])  # doctest: +SKIP
        >>> bundle.models["net"].eval()
    """
    into = dict(into or {})
    if lazy and into:
        raise PolybundleError("lazy=True builds no models, so into= cannot be given with it.")
    check = not lazy if verify is None else verify
    with ArchiveReader(path) as archive:
        detection = detect(archive)
        if detection.format != FORMAT_NAME:
            legacy = load_legacy(
                archive, era_reader(detection.format), backend=backend, roles=[] if lazy else roles,
                into=into, trust_code=trust_code,
            )
            get_plugin_manager().hook.polybundle_params_loaded(
                params=legacy.params, manifest=legacy.manifest, path=str(path)
            )
            return legacy
        manifest = read_manifest(archive)
        archived = _archived_backend(manifest["backend"])
        if detection.backend and get_backend(detection.backend).name != archived.name:
            raise FormatError(
                f"a detector says {detection.backend!r} wrote {str(path)!r}, but its manifest "
                f"says {archived.name!r}; the bundle is inconsistent."
            )
        requested = archived if backend is None else get_backend(backend)
        if requested.name != archived.name and lazy:
            raise BackendMismatchError(
                archived.name, requested.name,
                "lazy=True gives the tensors as stored; load without lazy to convert them.",
            )
        selected = _select_roles(manifest, roles)
        stray = set(into) - set(selected)
        if stray:
            raise PolybundleError(
                f"into names roles {sorted(stray)} that are not being loaded ({selected})."
            )
        to_read = sum(archive.size(model_entry(manifest, r)["weights"]) for r in selected)
        if check:
            to_read += sum(record["size"] for record in manifest["members"].values())
        bar = progress_bar(f"loading {Path(path).name}", 0 if lazy else to_read, enabled=progress)
        with bar as advance:
            archive.on_read = advance
            if check and (into or lazy):  # models the caller owns change only after the check
                verify_members(archive, manifest)
            models, plans, params = _load_models(
                archive, manifest, archived, requested, selected, into,
                verify=check and not into and not lazy, lazy=lazy,
            )
    bundle = Bundle(Path(path), manifest, params, requested.name, models, lazy=lazy,
                    conversions=plans)
    get_plugin_manager().hook.polybundle_params_loaded(
        params=bundle.params, manifest=manifest, path=str(path)
    )
    return bundle


def _load_models(
    archive: ArchiveReader,
    manifest: dict[str, Any],
    archived: Backend,
    requested: Backend,
    selected: list[str],
    into: dict[str, Any],
    *,
    verify: bool,
    lazy: bool,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Read params and build the selected roles' models, hashing alongside when asked."""
    with verifying_members(archive, manifest, enabled=verify):
        params = decode_params(archive.read(PARAMS_MEMBER), where=PARAMS_MEMBER)
        if not lazy:
            requested.require()
        models, plans = {}, {}
        for role in [] if lazy else selected:
            entry = model_entry(manifest, role)
            if requested is archived:
                models[role] = _build_model(archive, archived, entry, into.get(role))
            else:
                models[role], plans[role] = converted_model(
                    archive, entry, archived, requested, into.get(role)
                )
    return models, plans, params
