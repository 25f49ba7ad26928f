"""``polybundle.load``: detect what wrote a bundle and bring its models back.

Example (``net`` is a model of the saved architecture):
    >>> bundle = polybundle.load("run.bundle", into={"net": net})
    >>> bundle.models["net"] is net, bundle.params
    (True, {'N': 4, 'lr': 0.001})
    >>> polybundle.load("wts.h5.zip", lazy=True).roles  # a TensorFlow-era legacy archive
    ['autoencoder', 'diffraction_to_obj']
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from polybundle.api.bundle import Bundle, model_entry
from polybundle.api.converted import converted_model
from polybundle.api.lazy import lazy_tensors
from polybundle.api.legacy_bundle import load_legacy
from polybundle.api.progress import progress_bar
from polybundle.api.sharded import load_sharded
from polybundle.errors import (
    BackendMismatchError,
    FormatError,
    IntegrityError,
    PolybundleError,
    UnknownArchitectureError,
    UnknownBackendError,
)
from polybundle.format import digests
from polybundle.format.archive import ArchiveReader, MemberRange
from polybundle.format.detection import FORMAT_DESCRIPTION, FORMAT_NAME, PLAIN_ROLE, Detection
from polybundle.format.manifest import read_manifest, verify_members, verifying_members
from polybundle.format.params import read_params
from polybundle.format.sharded import is_sharded
from polybundle.format.storage import Location, locate
from polybundle.format.verified import MemberCheck, VerifiedMember
from polybundle.hooks.manager import get_plugin_manager
from polybundle.hooks.registry import (
    get_backend,
    get_registry,
    recorded_module,
    remember_architecture,
    unregistered_architecture,
)
from polybundle.legacy.loading import LegacyModels
from polybundle.legacy.plugin import era_reader, era_readers
from polybundle.model.backend import Backend, TensorSpec
from polybundle.safety import budget


def known_formats() -> list[str]:
    """Return what polybundle reads now, in words: format 2, plain files, legacy eras.

    Plain weights files and legacy eras are the installed backends' and
    plugins' own (:attr:`~polybundle.model.backend.Backend.plain_format`, the
    registered era readers).

    Example:
        >>> known_formats()[0]
        "polybundle format 2 (a zip with manifest.json whose 'format' is 'polybundle')"
    """
    plain = [
        f"a plain {backend.name} weights file ({backend.plain_format})"
        for backend in get_registry().backends.values()
        if backend.plain_format
    ]
    eras = [f"{reader.description} ({name})" for name, reader in sorted(era_readers().items())]
    return [FORMAT_DESCRIPTION, *plain, *eras]


def plain_backend(detection: Detection) -> Backend | None:
    """Return the backend whose plain weights file ``detection`` names, else None.

    A plain file is one a backend's own detector claimed with that backend's
    :attr:`~polybundle.model.backend.Backend.plain_format`.

    Example:
        >>> plain_backend(Detection("polybundle", "torch")) is None
        True
    """
    if detection.format == FORMAT_NAME or not detection.backend:
        return None
    try:
        backend = get_backend(detection.backend)
    except UnknownBackendError:
        return None
    return backend if backend.plain_format == detection.format else None


def detect(archive: ArchiveReader) -> Detection:
    """Ask the detector plugins what wrote ``archive``; raise when none knows.

    Example:
        >>> with ArchiveReader("run.bundle") as archive:
        ...     detect(archive)
        Detection(format='polybundle', backend='torch')
        >>> torch.save(net.state_dict(), "net.pth")
        >>> with ArchiveReader("net.pth") as archive:
        ...     detect(archive)
        Detection(format='torch-file', backend='torch')
    """
    detection = get_plugin_manager().hook.polybundle_detect_archive(archive=archive)
    if detection is None:
        raise FormatError(
            f"{str(archive.path)!r} is a zip, but no known format: members "
            f"{archive.names()[:8]}. polybundle reads: {'; '.join(known_formats())}. "
            "A third-party format needs its plugin installed."
        )
    return detection


class WholeFileArchive(ArchiveReader):
    """A plain framework file seen as a one-member bundle: the whole file is ``weights``.

    Member ``weights`` (the backend's ``weights_member``) is the file itself,
    opened as a :class:`~polybundle.format.archive.MemberRange` from byte 0, so the
    format-2 readers (eager, lazy, converted) read a plain file unchanged.

    Example:
        >>> torch.save(net.state_dict(), "net.pth")
        >>> with WholeFileArchive("net.pth", "model.pth") as archive:
        ...     archive.has("model.pth"), archive.size("model.pth") == os.path.getsize("net.pth")
        (True, True)
    """

    def __init__(self, path: str | os.PathLike[str] | Location, weights: str) -> None:
        super().__init__(path)
        self.weights = weights

    def has(self, name: str) -> bool:
        """Return True for ``weights`` and for every zip member."""
        return name == self.weights or super().has(name)

    def size(self, name: str) -> int:
        """Return the file's size for ``weights``, a member's size otherwise."""
        return self.file_size() if name == self.weights else super().size(name)

    def open(self, name: str) -> Any:
        """Open ``weights`` as the whole (checked, still open) file, anything else as a member."""
        if name != self.weights:
            return super().open(name)
        member = MemberRange(self.source, 0, self.file_size(), name)
        member.on_read = self.on_read
        return member


def _plain_architecture() -> dict[str, Any] | None:
    """The architecture of a plain file's role: a builder named ``model``, when registered."""
    if any(name == PLAIN_ROLE for name, _ in get_registry().builders):
        return {"name": PLAIN_ROLE, "config": {}}
    return None


def plain_manifest(archive: WholeFileArchive, detection: Detection) -> dict[str, Any]:
    """Return the manifest-like description of a plain framework file (one role, no params).

    ``format`` is the detection's (the backend's ``plain_format``),
    ``format_version`` is ``"plain"``, the writer and creation time are
    unknown, the one role is :data:`~polybundle.format.detection.PLAIN_ROLE`, ``members`` is empty
    (a plain file records no digests) and the tensors come from the file's
    index through :meth:`~polybundle.model.backend.Backend.describe_stored`:
    names, shapes, dtypes, and the layout tags the file determines (``opaque``
    where it says nothing; a registered ``model`` builder gives real ones when
    converting).

    Example:
        >>> torch.save(net.state_dict(), "net.pth")
        >>> with WholeFileArchive("net.pth", "model.pth") as archive:
        ...     manifest = plain_manifest(archive, detect(archive))
        >>> manifest["format"], manifest["members"], manifest["models"][0]["role"]
        ('torch-file', {}, 'model')
        >>> manifest["models"][0]["tensors"][0]
        {'name': '0.weight', 'key': '0.weight', 'shape': [3, 4], 'dtype': 'float32',
         'layout': 'opaque'}
    """
    backend = _plain_backend_of(detection)
    with archive.open(archive.weights) as source:
        specs = backend.describe_stored(source, where=archive.path.name)
    return {
        "format": detection.format,
        "format_version": "plain",
        "backend": backend.name,
        "writer": {"polybundle": None, "framework": backend.distribution,
                   "framework_version": "unknown (a plain file)"},
        "created": "unknown",
        "models": [
            {
                "role": PLAIN_ROLE,
                "architecture": _plain_architecture(),
                "weights": archive.weights,
                "tensors": [spec.to_json() for spec in specs],
            }
        ],
        "members": {},
    }


def open_plain(
    path: str | os.PathLike[str] | Location, detection: Detection
) -> WholeFileArchive:
    """Open a plain framework file that ``detection`` recognised as a whole-file archive.

    Example:
        >>> torch.save(net.state_dict(), "net.pth")
        >>> with open_plain("net.pth", Detection("torch-file", "torch")) as archive:
        ...     archive.weights
        'model.pth'
    """
    return WholeFileArchive(path, _plain_backend_of(detection).weights_member)


def _plain_backend_of(detection: Detection) -> Backend:
    backend = plain_backend(detection)
    if backend is None:
        raise FormatError(
            f"{detection.format!r} (backend {detection.backend!r}) is not a plain weights "
            "file of any installed backend; expected a detection whose format is a backend's "
            "plain_format."
        )
    return backend


def _tensor_rows(manifest: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [
        (t["name"], t["key"], tuple(t["shape"]), t["dtype"])
        for entry in manifest["models"] for t in entry["tensors"]
    ]


def with_builder_tags(manifest: dict[str, Any], backend: Backend) -> dict[str, Any]:
    """Give a plain file's tensors the layout tags of its registered ``model`` builder.

    A ``torch.save`` state_dict says nothing about what its axes mean; the
    model the builder makes does. Without such a builder, or when the
    builder's tensors differ from the file's, ``manifest`` is returned as is.

    Example:
        >>> torch.save(net.state_dict(), "net.pth")
        >>> with open_plain("net.pth", Detection("torch-file", "torch")) as archive:
        ...     manifest = plain_manifest(archive, detect(archive))
        >>> @polybundle.architecture("model", backend="torch")
        ... def build_model(config):
        ...     return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(),
        ...                                torch.nn.Linear(3, 2))
        >>> tagged = with_builder_tags(manifest, get_backend("torch"))
        >>> [entry["models"][0]["tensors"][0]["layout"] for entry in (manifest, tagged)]
        ['opaque', 'out,in']
    """
    registry = get_registry()
    if not registry.has_builder(PLAIN_ROLE, backend.name):
        return manifest
    backend.require()
    described = backend.describe(registry.builder(PLAIN_ROLE, backend.name)({}))
    rows = [(s.name, s.key, tuple(s.shape), s.dtype) for s in described]
    if rows != _tensor_rows(manifest):
        return manifest
    entry = {**manifest["models"][0], "tensors": [spec.to_json() for spec in described]}
    return {**manifest, "models": [entry]}


class PlainBundle(Bundle):
    """A :class:`Bundle` of a plain framework file (a backend's ``plain_format``).

    Its one role is ``model``; it has no params and no optimizer state.

    Example:
        >>> torch.save(net.state_dict(), "net.pth")
        >>> bundle = polybundle.load("net.pth", lazy=True)
        >>> type(bundle).__name__, bundle.roles, bundle.params
        ('PlainBundle', ['model'], {})
    """

    def tensors(self, role: str) -> Any:
        """Read ``role``'s tensors from the file (memory-mapped when loaded lazily).

        Example:
            >>> torch.save(net.state_dict(), "net.pth")
            >>> bundle = polybundle.load("net.pth", lazy=True)
            >>> bundle.tensors("model")["0.weight"].shape
            (3, 4)
        """
        entry = model_entry(self.manifest, role)
        with budget.limit(self.max_bytes), ArchiveReader(self.path) as probe:
            detection = detect(probe)
        if detection.format != self.manifest["format"]:
            raise IntegrityError(f"{str(self.path)!r} changed since it was loaded; load it again.")
        with budget.limit(self.max_bytes), open_plain(self.path, detection) as archive:
            if _tensor_rows(plain_manifest(archive, detection)) != _tensor_rows(self.manifest):
                raise IntegrityError(
                    f"{str(self.path)!r} changed since it was loaded; load it again."
                )
            specs = self.tensor_specs(role)
            writer = get_backend(self.manifest["backend"])
            if self.lazy:
                return lazy_tensors(archive, entry["weights"], specs, writer)
            budget.check(_declared_bytes(self.manifest, [role]), f"the tensors of {role!r}")
            with archive.open(entry["weights"]) as source:
                return writer.read_tensors(source, specs)


def _declared_bytes(manifest: dict[str, Any], roles: list[str]) -> int:
    return sum(
        TensorSpec.from_json(t).nbytes for role in roles
        for t in model_entry(manifest, role)["tensors"]
    )


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


def _open_weights(archive: ArchiveReader, name: str, check: MemberCheck | None) -> Any:
    """Open a weights member; verified as it is read when ``check`` (the others' check) is given."""
    if check is None:
        return archive.open(name)
    where = f"manifest.json's record of {name!r}"
    expected = digests.from_record(check.manifest["members"][name], where=where)
    return VerifiedMember.open(archive, name, expected, then=check.wait)


def _build_model(
    archive: ArchiveReader,
    backend: Backend,
    entry: dict[str, Any],
    given: Any | None,
    check: MemberCheck | None = None,
) -> Any:
    """Build (or fill ``given``) from the role's weights; ``check``: verify in the same pass."""
    with _open_weights(archive, entry["weights"], check) as source:
        try:
            model = _model_from(backend, entry, given, source)
        except BaseException as exc:
            if isinstance(source, VerifiedMember):
                source.finish_quietly(exc)  # a damaged member is the likelier cause: it wins
            raise
        if isinstance(source, VerifiedMember):
            source.finish()  # a model built here is dropped on a mismatch
        return model


def _model_from(backend: Backend, entry: dict[str, Any], given: Any | None, source: Any) -> Any:
    """Return ``given`` loaded from ``source``, or a model built by a builder or the backend."""
    specs = [TensorSpec.from_json(t) for t in entry["tensors"]]
    architecture = entry["architecture"]
    registry = get_registry()
    if given is not None:
        backend.load_into(given, source, specs)
        return given
    if architecture and registry.has_builder(architecture["name"], backend.name):
        builder = registry.builder(architecture["name"], backend.name)
        model = backend.build_and_load(builder, architecture["config"], source, specs)
        remember_architecture(model, architecture["name"], architecture["config"])
        return model
    try:
        model = backend.load_standalone(source, specs)
    except UnknownArchitectureError:
        if not architecture:
            raise
        raise unregistered_architecture(
            architecture["name"], backend.name, recorded_module(architecture), entry["role"]
        ) from None
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
    max_bytes: int | None = None,
    storage_options: dict[str, Any] | None = None,
    filesystem: Any = None,
    check: bool = True,
    example_inputs: Any = None,
) -> Bundle:
    """Load the bundle at ``path``, whichever registered backend wrote it.

    ``backend`` (name or alias) asks for a framework. When it is not the one
    that wrote the bundle, each model is built with ``backend``'s builder for
    the same architecture and config and loaded with the converted weights
    (see :mod:`polybundle.api.transfer`); without such a builder
    :class:`~polybundle.errors.ConversionUnavailableError` (a
    :class:`~polybundle.errors.BackendMismatchError`) names both backends.
    A converted model is checked (``check=True``): run on a sample input --
    ``example_inputs`` (in the writer framework's layout) or the stored parity
    inputs -- against the stored parity outputs or the source model, a
    difference raises :class:`~polybundle.errors.ConversionMismatchError`;
    what checked each role is in ``bundle.checks``, and a conversion nothing
    could check warns (:mod:`polybundle.api.conversion_check`).
    ``roles`` limits which models are built. ``into`` gives
    ready instances to load weights into; other roles are rebuilt with the
    registered builder of their architecture, or (Keras) from the ``.keras``
    file with ``safe_mode=True``. ``verify`` checks every member's digest
    (on by default). A backend that reads its weights front to back
    (:attr:`~polybundle.model.backend.Backend.reads_front_to_back`, PyTorch)
    has each weights member hashed from the bytes it reads, in the same pass,
    while a thread checks the other members; the end of the weights waits for
    that thread, so models the caller passed in ``into`` change only once the
    whole bundle has matched. For other backends a thread hashes every member
    beside the framework's read (models built here are discarded on a
    mismatch), or before anything is loaded when ``into`` gives the caller's
    models. A mismatch raises :class:`~polybundle.errors.IntegrityError` and
    leaves ``into`` models as they were. Nothing is ever unpickled.

    ``progress=True`` shows a progress bar of the bytes read (hashing and
    loading) for bundles of 64 MiB and more (:mod:`polybundle.api.progress`).

    ``max_bytes`` caps the memory the call may allocate from the sizes the
    archive declares (None: :data:`polybundle.safety.budget.DEFAULT_MAX_BYTES`);
    past it :class:`~polybundle.errors.BudgetExceededError` is raised before
    the allocation. A lazy bundle keeps the cap for its later reads.

    ``lazy=True`` builds no models and imports no framework: ``tensors(role)``
    then memory-maps the weights, reading only what is touched. A lazy load
    does not hash the members unless ``verify=True`` is passed (which reads
    every byte up front); ``verify`` defaults to ``not lazy``. Its
    ``tensors(role)`` hashes the role's weights member before handing out
    tensors, unless ``verify=False`` was passed explicitly: then only the
    manifest is compared and only the touched tensors' bytes are read.

    ``path`` may be a URL (``s3://bucket/run.bundle``, ``gs://``,
    ``memory://``, any fsspec protocol) with ``storage_options`` (credentials,
    ``endpoint_url``...) or a ready fsspec ``filesystem``: the archive is read
    by byte range, its directory first and then the members needed
    (:mod:`polybundle.format.storage`); failures of the store raise
    :class:`~polybundle.errors.StorageError` naming the URL.

    Plain framework files load too: a Keras 3 ``model.save("model.keras")``
    file or a ``torch.save(model.state_dict())`` file is a one-role bundle
    (role ``"model"``, no params, nothing to verify against). Its model is
    built from ``into={"model": net}``, from a builder registered under the
    name ``"model"``, or (Keras) from the file with ``safe_mode=True``;
    ``bundle.tensors("model")`` reads the weights without any of them.

    Legacy archives (TensorFlow dill, PyTorch dill, PyTorch JSON eras) go to
    their registered era reader (:mod:`polybundle.legacy`): params and
    tensors always load, with no pickled code run; a role's model is built
    from ``into``, from a builder registered under the role's name, or (Keras)
    from the file. ``trust_code=True`` allows unpickling a TensorFlow-era
    ``custom_objects.dill``, which imports and can run the code it names.

    Example:
        >>> bundle = polybundle.load("run.bundle", roles=["net"], into={"net": net})
        >>> bundle.models["net"](torch.ones(1, 4)).shape
        torch.Size([1, 2])
        >>> polybundle.load("run.bundle")  # no builder registered for its architecture
        Traceback (most recent call last):
        ...
        polybundle.errors.UnknownArchitectureError: the 'torch' backend cannot rebuild a model
        from its weights file alone, ... or pass into={role: model}.
        >>> polybundle.load("run.bundle", lazy=True).tensors("net")["2.bias"].shape
        (2,)
    """
    into = dict(into or {})
    if lazy and into:
        raise PolybundleError("lazy=True builds no models, so into= cannot be given with it.")
    options = {
        "backend": backend, "roles": roles, "into": into, "lazy": lazy,
        "check": not lazy if verify is None else verify, "progress": progress,
        "check_conversion": check, "example_inputs": example_inputs,
    }
    path = locate(path, storage_options, filesystem) or path
    with budget.limit(max_bytes):
        if is_sharded(path):
            bundle: Bundle = load_sharded(
                Path(path), backend=backend, roles=roles, into=into, lazy=lazy,
                check=options["check"], check_conversion=check, example_inputs=example_inputs,
            )
        else:
            bundle = _load_archive(path, options, trust_code)
    bundle.max_bytes = max_bytes
    bundle.check_tensors = verify is not False
    get_plugin_manager().hook.polybundle_params_loaded(
        params=bundle.params, manifest=bundle.manifest, path=str(path)
    )
    return bundle


def _load_archive(
    path: str | os.PathLike[str] | Location, options: dict[str, Any], trust_code: bool
) -> Bundle:
    """Load a bundle file: format 2, a plain framework file or a legacy archive."""
    with ArchiveReader(path, whole=not options["lazy"]) as archive:
        detection = detect(archive)
        if plain_backend(detection) is not None:
            with open_plain(path, detection) as plain:
                bundle = _load_bundle(plain, plain_manifest(plain, detection), None, **options)
        elif detection.format != FORMAT_NAME:
            budget.check(sum(archive.size(n) for n in archive.names()), "the archive's members")
            bundle = load_legacy(
                archive, era_reader(detection.format), backend=options["backend"],
                roles=[] if options["lazy"] else options["roles"], into=options["into"],
                trust_code=trust_code,
            )
        else:
            bundle = _load_bundle(archive, read_manifest(archive), detection, **options)
        if options["lazy"] and archive.remote is not None:
            bundle._fetched = archive.remote.keep
    return bundle


def _load_bundle(
    archive: ArchiveReader,
    manifest: dict[str, Any],
    detection: Detection | None,
    *,
    backend: str | None,
    roles: Iterable[str] | None,
    into: dict[str, Any],
    lazy: bool,
    check: bool,
    progress: bool,
    check_conversion: bool = True,
    example_inputs: Any = None,
) -> Bundle:
    """Load a format-2 bundle, or a plain framework file (``detection`` None) seen as one."""
    path = archive.path
    plain = detection is None
    archived = _archived_backend(manifest["backend"])
    if detection and detection.backend and get_backend(detection.backend).name != archived.name:
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
    if plain and requested.name != archived.name:
        manifest = with_builder_tags(manifest, archived)
    selected = _select_roles(manifest, roles)
    stray = set(into) - set(selected)
    if stray:
        raise PolybundleError(
            f"into names roles {sorted(stray)} that are not being loaded ({selected})."
        )
    check = check and not plain  # a plain file records no digests to check against
    if not lazy:
        budget.check(_declared_bytes(manifest, selected), f"the tensors of roles {selected}")
    to_read = sum(archive.size(model_entry(manifest, r)["weights"]) for r in selected)
    if check:
        to_read += sum(record["size"] for record in manifest["members"].values())
    bar = progress_bar(f"loading {path.name}", 0 if lazy else to_read, enabled=progress)
    in_pass = check and not lazy and requested is archived and _verifiable_in_pass(
        archive, manifest, archived, selected
    )
    with bar as advance:
        archive.on_read = advance
        if check and (into or lazy) and not in_pass:  # caller's models change after the check
            verify_members(archive, manifest)
        models, plans, params, checks = _load_checked(
            archive, manifest, archived, requested, selected, into,
            verify=check and not lazy and (in_pass or not into), lazy=lazy, plain=plain,
            in_pass=in_pass, check_conversion=check_conversion, example_inputs=example_inputs,
        )
    kind = PlainBundle if plain else Bundle
    return kind(path, manifest, params, requested.name, models, lazy=lazy,
                conversions=plans, checks=checks)


def _verifiable_in_pass(
    archive: ArchiveReader, manifest: dict[str, Any], backend: Backend, roles: list[str]
) -> bool:
    """True when each role's weights can be verified as ``backend`` reads them (one pass).

    The backend must read front to back (:attr:`~polybundle.model.backend.Backend.
    reads_front_to_back`) and every weights member must be STORED.
    """
    if not backend.reads_front_to_back:
        return False
    names = [model_entry(manifest, role)["weights"] for role in roles]
    return all(archive.info(name).compress_type == zipfile.ZIP_STORED for name in names)


def _plain_reason(role: str, backend: Backend, exc: PolybundleError) -> PolybundleError:
    return UnknownArchitectureError(
        f"a plain {backend.name} weights file does not say which architecture it holds, so "
        f"role {role!r} cannot be rebuilt from it ({exc}). Register a builder named "
        f"{PLAIN_ROLE!r}: @polybundle.architecture({PLAIN_ROLE!r}, backend={backend.name!r}), "
        f"or pass into={{{role!r}: model}}; bundle.tensors({role!r}) reads the weights "
        "without one."
    )


def _load_checked(
    archive: ArchiveReader,
    manifest: dict[str, Any],
    archived: Backend,
    requested: Backend,
    selected: list[str],
    into: dict[str, Any],
    *,
    verify: bool,
    lazy: bool,
    plain: bool = False,
    in_pass: bool = False,
    check_conversion: bool = True,
    example_inputs: Any = None,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Read params and build the selected roles' models, hashing alongside when asked.

    With ``in_pass`` the selected roles' weights are verified as the backend
    reads them (:class:`~polybundle.format.verified.VerifiedMember`) and the
    other members in a background thread, whose verdict the end of each
    weights member waits for, so a caller's ``into=`` model changes only after
    the whole bundle has been checked.
    """
    if verify and in_pass:
        weights = {model_entry(manifest, role)["weights"] for role in selected}
        check = MemberCheck(archive, manifest, [n for n in manifest["members"] if n not in weights])
        try:
            built = _load_models(archive, manifest, archived, requested, selected, into,
                                 verify=False, lazy=lazy, plain=plain, check=check,
                                 check_conversion=check_conversion,
                                 example_inputs=example_inputs)
        except BaseException as exc:
            check.wait_quietly(exc)  # a damaged member is the likelier cause: it wins
            raise
        check.wait()
        return built
    return _load_models(archive, manifest, archived, requested, selected, into,
                        verify=verify, lazy=lazy, plain=plain,
                        check_conversion=check_conversion, example_inputs=example_inputs)


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
    plain: bool = False,
    check: MemberCheck | None = None,
    check_conversion: bool = True,
    example_inputs: Any = None,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Read params and build the selected roles' models (``verify``: hash beside in a thread).

    Returns the models, conversion plans, params and conversion checks.
    """
    with verifying_members(archive, manifest, enabled=verify):
        params: dict[str, Any] = {}
        if not plain:
            params = read_params(archive, manifest)
        if not lazy:
            requested.require()
        models: dict[str, Any] = LegacyModels({}) if plain else {}
        plans: dict[str, Any] = {}
        checks: dict[str, Any] = {}
        for role in [] if lazy else selected:
            entry = model_entry(manifest, role)
            try:
                if requested is archived:
                    models[role] = _build_model(archive, archived, entry, into.get(role), check)
                else:
                    models[role], plans[role], checks[role] = converted_model(
                        archive, entry, archived, requested, into.get(role),
                        check=check_conversion, example_inputs=example_inputs,
                        members=manifest["members"],
                    )
            except UnknownArchitectureError as exc:
                if not plain or role in into or requested is not archived:
                    raise
                models.reasons[role] = _plain_reason(role, archived, exc)
    return models, plans, params, checks
