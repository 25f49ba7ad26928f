"""``polybundle.save``: write a set of named models of one framework as a bundle.

Example:
    >>> import polybundle, torch
    >>> manifest = polybundle.save("linear.bundle", {"net": torch.nn.Linear(3, 1)},
    ...                            params={"lr": 1e-3})
    >>> [(model["role"], model["weights"]) for model in manifest["models"]]
    [('net', 'net/model.pth')]
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

from polybundle.api.progress import progress_bar
from polybundle.errors import BackendError, PolybundleError
from polybundle.format import digests
from polybundle.format.manifest import MANIFEST_MEMBER, PARAMS_MEMBER, build_manifest
from polybundle.format.params import ARRAYS_MEMBER, EncodedParams, encode_params
from polybundle.format.parity import PARITY_MEMBER, encode_parity, per_role_inputs
from polybundle.format.storage import Location, locate
from polybundle.format.writer import ArchiveWriter, file_mode
from polybundle.hooks.registry import backend_for_model, get_registry, remembered_architecture
from polybundle.model.backend import Backend, TensorSpec, WeightsSnapshot
from polybundle.model.optimizer import (
    SLOTS_MEMBER,
    STATE_MEMBER,
    OptimizerState,
    encode_optimizer_document,
    write_slots,
)
from polybundle.model.optimizer_conversion import check_state_fits
from polybundle.training.rng import RNG_MEMBER, capture_rng, encode_rng

_ROLE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")

ArchitectureSpec = tuple[str, dict[str, Any]] | dict[str, Any]


def _check_roles(models: dict[str, Any]) -> None:
    if not isinstance(models, dict) or not models:
        raise PolybundleError(
            f"models is {models!r}; expected a non-empty dict {{role: model}}, e.g. "
            "{'autoencoder': model}."
        )
    for role in models:
        if not isinstance(role, str) or not _ROLE.match(role) or len(role) > 128:
            raise PolybundleError(
                f"role {role!r} is not a valid role name; use letters, digits, '_', '-' and "
                "'.', not starting with '.' or '-' (it becomes a folder in the bundle)."
            )


def _infer_backend(models: dict[str, Any]) -> Backend:
    owners = {role: backend_for_model(model) for role, model in models.items()}
    names = {backend.name for backend in owners.values()}
    if len(names) > 1:
        detail = ", ".join(f"{role}: {backend.name}" for role, backend in owners.items())
        raise BackendError(
            f"a bundle holds models of one framework, but these mix {sorted(names)} "
            f"({detail}). Save each framework's models to its own bundle."
        )
    return next(iter(owners.values()))


def _architecture(role: str, model: Any, given: ArchitectureSpec | None) -> dict[str, Any] | None:
    if given is None:
        remembered = remembered_architecture(model)
        if remembered is None:
            return None
        given = remembered
    if isinstance(given, tuple) and len(given) == 2:
        name, config = given
    elif isinstance(given, dict) and "name" in given:
        name, config = given["name"], given.get("config", {})
    else:
        raise PolybundleError(
            f"architectures[{role!r}] is {given!r}; expected (name, config) or "
            "{'name': ..., 'config': {...}}."
        )
    try:
        json.dumps(config, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise PolybundleError(
            f"the config of architecture {name!r} for role {role!r} is not plain JSON ({exc})."
        ) from None
    return {"name": name, "config": config}


def _with_module(architecture: dict[str, Any] | None, backend: Backend) -> dict[str, Any] | None:
    """Add ``module``: where the registered builder of ``architecture`` was defined, if known.

    Informative only: a reader names it when no builder is registered, and
    never imports it on its own.
    """
    if architecture is None:
        return None
    module = get_registry().builder_module(architecture["name"], backend.name)
    return {**architecture, "module": module} if module else architecture


def _optimizer_states(
    backend: Backend,
    models: dict[str, Any],
    optimizers: dict[str, Any] | None,
    schedulers: dict[str, Any] | None,
    host: HostCopies | None,
) -> dict[str, tuple[bytes, OptimizerState]]:
    """Export each role's optimizer: ``{role: (optimizer.json bytes, state)}``.

    With ``host`` the slot arrays are host copies (reusing ``host``'s buffers),
    which training may not change; ``host`` then keeps the new states.
    """
    optimizers = dict(optimizers or {})
    schedulers = dict(schedulers or {})
    for label, given in (("optimizers", optimizers), ("schedulers", schedulers)):
        unknown = set(given) - set(models)
        if unknown:
            raise PolybundleError(
                f"{label} names roles {sorted(unknown)} that are not in models "
                f"({sorted(models)}); use the same role names."
            )
    stray = set(schedulers) - set(optimizers)
    if stray:
        raise PolybundleError(
            f"schedulers are given for roles {sorted(stray)} without an optimizer; pass "
            "optimizers={role: optimizer} for them too."
        )
    exported = {}
    for role, optimizer in optimizers.items():
        if isinstance(optimizer, OptimizerState):  # neutral already (e.g. converted)
            if role in schedulers:
                raise PolybundleError(
                    f"optimizers[{role!r}] is a neutral OptimizerState, which carries its own "
                    "schedule; pass no scheduler for it."
                )
            check_state_fits(optimizer, backend.name, backend.describe(models[role]))
            state = optimizer
        elif host is not None:
            state = backend.snapshot_optimizer(
                models[role], optimizer, schedulers.get(role), reuse=host.optimizers.get(role)
            )
            host.optimizers[role] = state
        else:
            state = backend.export_optimizer(models[role], optimizer, schedulers.get(role))
        exported[role] = (encode_optimizer_document(state), state)
    return exported


def _check_target(path: Path) -> None:
    if path.is_dir():
        raise PolybundleError(f"{str(path)!r} is a directory; expected a file path for the bundle.")
    if not path.parent.is_dir():
        raise PolybundleError(
            f"the folder {str(path.parent)!r} does not exist; create it before saving there."
        )


def _parity_members(
    backend: Backend, models: dict[str, Any], inputs: Any
) -> dict[str, tuple[bytes, dict[str, Any]]]:
    """Run each model on its parity inputs; return ``{role: (member bytes, manifest record)}``."""
    if inputs is None:
        return {}
    members = {}
    for role, named in per_role_inputs(inputs, models).items():
        outputs = backend.predict(models[role], named)
        record = {"member": f"{role}/{PARITY_MEMBER}", "inputs": sorted(named),
                  "outputs": sorted(outputs), "backend": backend.name}
        members[role] = (encode_parity(named, outputs), record)
    return members


def save(
    path: str | os.PathLike[str],
    models: dict[str, Any],
    *,
    params: dict[str, Any] | None = None,
    architectures: dict[str, ArchitectureSpec] | None = None,
    optimizers: dict[str, Any] | None = None,
    schedulers: dict[str, Any] | None = None,
    rng: bool = False,
    progress: bool = False,
    parity_inputs: Any = None,
    mode: int | None = None,
    storage_options: dict[str, Any] | None = None,
    filesystem: Any = None,
    digest: str = digests.DEFAULT,
) -> dict[str, Any]:
    """Save ``{role: native model}`` and ``params`` as a format-2 bundle at ``path``.

    ``params`` is a dict of JSON values and NumPy arrays and scalars at any
    depth (dtypes of :data:`polybundle.format.params.DTYPES`: complex, bool,
    bfloat16 and float8 included); arrays go to ``params.safetensors`` and
    come back bit for bit (see :mod:`polybundle.format.params`).

    The backend is inferred from the models' types. ``architectures`` maps a
    role to ``(name, config)`` so :func:`polybundle.load` can rebuild it with
    a registered builder; models made with :func:`polybundle.build` remember
    theirs. ``optimizers`` maps a role to the native optimizer training it
    (stored as neutral state in ``<role>/optimizer.json`` and
    ``<role>/optimizer.safetensors``; a neutral
    :class:`~polybundle.model.optimizer.OptimizerState` of this backend is stored
    as given); ``schedulers`` maps a role to its
    PyTorch ``lr_scheduler`` (Keras keeps its schedule in the optimizer).
    ``rng=True`` records the global random generators (``rng.json``). Every
    input is checked before anything is written, and the file appears
    atomically. ``progress=True`` shows a progress bar for weights of 64 MiB
    and more (:mod:`polybundle.api.progress`). ``parity_inputs`` (an array, a
    list of arrays, or ``{role: ...}``) runs each model on them in inference
    mode and stores inputs and outputs in ``<role>/parity.safetensors`` as the
    reference for :func:`polybundle.tools.parity.compare` and ``polybundle verify
    --parity``. The file gets the permissions of any file a tool writes
    (``0o666`` less the umask: ``0o644`` under the usual ``022``); ``mode``
    sets them instead, e.g. ``mode=0o600`` for a bundle only its owner may
    read. ``digest`` names the algorithm of every member's digest in the
    manifest: ``"xxh3-128"`` (the default: it detects corruption at memory
    speed) or ``"sha256"`` (for provenance and signing workflows; see
    ``docs/security.md``). Returns the manifest written.

    ``path`` may be a URL (``s3://bucket/run.bundle``, ``memory://...``, any
    fsspec protocol) with ``storage_options`` (credentials, endpoint) or a
    ready fsspec ``filesystem``: the bundle is written locally first and
    appears under its key whole (:mod:`polybundle.format.storage`); ``mode``
    then does not apply.

    Example:
        >>> manifest = polybundle.save("mine.bundle", {"net": net}, params={"lr": 1e-3})
        >>> manifest["backend"], [model["role"] for model in manifest["models"]]
        ('torch', ['net'])
        >>> polybundle.load("mine.bundle", lazy=True).params
        {'lr': 0.001}
        >>> _ = polybundle.save("private.bundle", {"net": net}, mode=0o600)
        >>> oct(os.stat("private.bundle").st_mode & 0o777)
        '0o600'
    """
    prepared = prepare_save(
        path, models, params=params, architectures=architectures, optimizers=optimizers,
        schedulers=schedulers, rng=rng, parity_inputs=parity_inputs, mode=mode, digest=digest,
        storage_options=storage_options, filesystem=filesystem,
    )
    return write_prepared(prepared, progress=progress)


@dataclass
class HostCopies:
    """The host copies an asynchronous save took, kept for the next one to reuse.

    One per :class:`~polybundle.CheckpointManager`: each snapshot copies into
    the previous one's buffers where the tensors still fit, so only the first
    save allocates (and page-faults) new memory. ``nbytes`` is what they hold.

    Example:
        >>> host = HostCopies()
        >>> prepared = prepare_save("a.bundle", {"net": net}, host=host)
        >>> host.nbytes()
        92
    """

    weights: dict[str, WeightsSnapshot] = field(default_factory=dict)
    optimizers: dict[str, OptimizerState] = field(default_factory=dict)

    def nbytes(self) -> int:
        """Return the host memory the copies hold, in bytes."""
        return sum(s.nbytes for s in self.weights.values()) + sum(
            state.nbytes() for state in self.optimizers.values()
        )


@dataclass(frozen=True)
class PreparedSave:
    """A save checked and gathered in the caller's thread, ready for :func:`write_prepared`.

    Everything is plain bytes, neutral state or a writer of the weights
    file; with host copies (``prepare_save(..., host=...)``) nothing refers to
    the live models any more, so another thread may write it while training
    goes on.

    Example:
        >>> prepared = prepare_save("b.bundle", {"net": net}, params={"lr": 0.1})
        >>> prepared.target.name, sorted(prepared.weights)
        ('b.bundle', ['net'])
    """

    target: Path | Location
    permissions: int
    backend: Backend
    entries: list[dict[str, Any]]
    params: EncodedParams
    weights: dict[str, Callable[[BinaryIO], Any]]
    optimizers: dict[str, tuple[bytes, OptimizerState]]
    rng: bytes | None
    parity: dict[str, tuple[bytes, dict[str, Any]]]
    digest: str = digests.DEFAULT
    """The algorithm of the members' digests (:mod:`polybundle.format.digests`)."""


def prepare_save(
    path: str | os.PathLike[str],
    models: dict[str, Any],
    *,
    params: dict[str, Any] | None = None,
    architectures: dict[str, ArchitectureSpec] | None = None,
    optimizers: dict[str, Any] | None = None,
    schedulers: dict[str, Any] | None = None,
    rng: bool = False,
    parity_inputs: Any = None,
    mode: int | None = None,
    host: HostCopies | None = None,
    digest: str = digests.DEFAULT,
    storage_options: dict[str, Any] | None = None,
    filesystem: Any = None,
) -> PreparedSave:
    """Check every input of :func:`save` and gather what it writes, without writing.

    Arguments are :func:`save`'s. With ``host`` (asynchronous checkpoints),
    the weights and optimizer slots are copied to host memory through the
    backend (:meth:`~polybundle.model.backend.Backend.snapshot`,
    :meth:`~polybundle.model.backend.Backend.snapshot_optimizer`), into
    ``host``'s buffers where they fit, so training may change the models as
    soon as this returns; without it the weights are written from the live
    models by :func:`write_prepared`.

    Example:
        >>> prepared = prepare_save("c.bundle", {"net": net}, host=HostCopies())
        >>> with torch.no_grad():
        ...     _ = net[0].weight.zero_()  # training goes on before the write
        >>> manifest = write_prepared(prepared)
        >>> saved = polybundle.load("c.bundle", lazy=True).tensors("net")["0.weight"]
        >>> bool((saved != 0).any())
        True
    """
    target = locate(path, storage_options, filesystem) or Path(path)
    permissions = file_mode(mode)
    digest = digests.algorithm(digest).name
    _check_roles(models)
    backend = _infer_backend(models)
    encoded_params = encode_params({} if params is None else params)
    architectures = dict(architectures or {})
    unknown = set(architectures) - set(models)
    if unknown:
        raise PolybundleError(
            f"architectures names roles {sorted(unknown)} that are not in models "
            f"({sorted(models)}); use the same role names."
        )
    entries = []
    for role, model in models.items():
        entries.append(
            {
                "role": role,
                "architecture": _with_module(
                    _architecture(role, model, architectures.get(role)), backend
                ),
                "weights": f"{role}/{backend.weights_member}",
                "tensors": [spec.to_json() for spec in backend.describe(model)],
            }
        )
    optimizer_states = _optimizer_states(backend, models, optimizers, schedulers, host)
    rng_bytes = encode_rng(capture_rng()) if rng else None
    parity = _parity_members(backend, models, parity_inputs)
    for entry in entries:
        if entry["role"] in parity:
            entry["parity"] = parity[entry["role"]][1]
        if entry["role"] in optimizer_states:
            state = optimizer_states[entry["role"]][1]
            entry["optimizer"] = {
                "state": f"{entry['role']}/{STATE_MEMBER}",
                "slots": f"{entry['role']}/{SLOTS_MEMBER}",
                "algorithm": state.algorithm,
                "step": state.step,
            }
    if isinstance(target, Path):
        _check_target(target)
    if host is None:
        weights = {role: partial(backend.write, model) for role, model in models.items()}
    else:
        for role, model in models.items():
            host.weights[role] = backend.snapshot(model, reuse=host.weights.get(role))
        weights = {role: host.weights[role].write for role in models}
    return PreparedSave(target, permissions, backend, entries, encoded_params, weights,
                        optimizer_states, rng_bytes, parity, digest)


def write_prepared(prepared: PreparedSave, *, progress: bool = False) -> dict[str, Any]:
    """Write a :class:`PreparedSave` as a bundle (atomically); return its manifest.

    Safe on any thread when it was prepared with host copies. ``progress`` is
    :func:`save`'s.

    Example:
        >>> manifest = write_prepared(prepare_save("d.bundle", {"net": net}))
        >>> manifest["models"][0]["weights"]
        'net/model.pth'
    """
    target, backend, entries = prepared.target, prepared.backend, prepared.entries
    weights_bytes = sum(TensorSpec.from_json(t).nbytes for e in entries for t in e["tensors"])
    bar = progress_bar(f"saving {target.name}", weights_bytes, enabled=progress)
    with ArchiveWriter(
        target, mode=prepared.permissions, digest=prepared.digest
    ) as writer, bar as advance:
        writer.write_bytes(PARAMS_MEMBER, prepared.params.document, compress=True)
        if prepared.params.arrays is not None:
            writer.write_bytes(ARRAYS_MEMBER, prepared.params.arrays)
        for entry in entries:
            with writer.stream(entry["weights"]) as stream:
                stream.on_write = advance
                prepared.weights[entry["role"]](stream)
            if "optimizer" in entry:
                document, state = prepared.optimizers[entry["role"]]
                writer.write_bytes(entry["optimizer"]["state"], document, compress=True)
                with writer.stream(entry["optimizer"]["slots"]) as stream:
                    write_slots(state, stream)
            if "parity" in entry:
                writer.write_bytes(entry["parity"]["member"], prepared.parity[entry["role"]][0])
        if prepared.rng is not None:
            writer.write_bytes(RNG_MEMBER, prepared.rng, compress=True)
        manifest = build_manifest(
            backend=backend.name,
            framework=backend.distribution,
            framework_version=backend.framework_version(),
            models=entries,
            members=writer.records,
            rng=RNG_MEMBER if prepared.rng is not None else None,
        )
        writer.write_bytes(MANIFEST_MEMBER, json.dumps(manifest, indent=1).encode(), compress=True)
        writer.commit()
    return manifest
