"""Load a sharded bundle (a folder written by many ranks) in one process, like any bundle.

:func:`polybundle.load` comes here for a folder: the shards are checked
(:class:`polybundle.format.sharded.ShardedFolder`), assembled into full
arrays and loaded into models built with the registered builders, in the
backend that wrote them or, converted, in another one (the same plans as
:mod:`polybundle.api.converted`). ``lazy=True`` assembles a tensor only when
it is touched. The parts' digests are checked beside the assembly.

Example:
    >>> bundle = polybundle.load("sharded", lazy=True)
    >>> type(bundle).__name__, bundle.roles, bundle.tensors("model")["0.weight"].shape
    ('ShardedBundle', ['model'], (4, 3))
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from polybundle.api.bundle import Bundle, model_entry
from polybundle.api.converted import converted_from_arrays
from polybundle.api.lazy import LazyTensors
from polybundle.errors import (
    BackendMismatchError,
    IntegrityError,
    PolybundleError,
    UnknownArchitectureError,
    UnknownBackendError,
)
from polybundle.format.sharded import ShardedFolder
from polybundle.hooks.registry import (
    get_backend,
    get_registry,
    recorded_module,
    remember_architecture,
    unregistered_architecture,
)
from polybundle.model.backend import Backend
from polybundle.safety import budget


class ShardedBundle(Bundle):
    """A :class:`Bundle` read from a sharded folder; :meth:`tensors` assembles the shards.

    Optimizer state saved through DCP stays in the part files for
    ``dcp.load``; :meth:`has_optimizer` is False for every role.

    Example:
        >>> polybundle.load("sharded", lazy=True).has_optimizer("model")
        False
    """

    def tensors(self, role: str) -> Mapping[str, np.ndarray]:
        """Return ``{name: array}`` of ``role``: full arrays, or (lazy) each assembled on touch.

        The folder must still hold the manifest this bundle was loaded with,
        and the digests of the parts holding the role's chunks are checked
        before any tensor is handed out (a lazy tensor is assembled from
        those checked parts when first touched).

        Example:
            >>> polybundle.load("sharded", lazy=True).tensors("model")["0.bias"].shape
            (4,)
        """
        model_entry(self.manifest, role)
        with budget.limit(self.max_bytes):
            folder = ShardedFolder(self.path)
            if folder.manifest != self.manifest:
                raise IntegrityError(
                    f"{str(self.path)!r} changed since it was loaded; load it again."
                )
            folder.verify(folder.role_parts(role))
            if self.lazy:
                return LazyTensors(dict(folder.lazy_loaders(role)))
            return folder.role_tensors(role)


def _builder(entry: dict[str, Any], backend: Backend) -> Any:
    architecture = entry["architecture"]
    registry = get_registry()
    if architecture and registry.has_builder(architecture["name"], backend.name):
        return registry.builder(architecture["name"], backend.name)
    if architecture:
        raise unregistered_architecture(
            architecture["name"], backend.name, recorded_module(architecture), entry["role"]
        )
    raise UnknownArchitectureError(
        f"role {entry['role']!r} of this sharded bundle records no architecture, so it cannot "
        f"be rebuilt. Pass into={{{entry['role']!r}: model}}, read its tensors with "
        "load(..., lazy=True).tensors(role), or save with "
        "BundleWriter(..., architectures={role: (name, config)})."
    )


def _build(
    folder: ShardedFolder, entry: dict[str, Any], archived: Backend, requested: Backend,
    given: Any | None, *, check_conversion: bool = True, example_inputs: Any = None,
) -> tuple[Any, Any, Any]:
    """Build (or take ``given``) ``entry``'s model and load its assembled tensors.

    Returns the model, and a converted one's plan and check (else ``None``s).
    """
    if requested is not archived:
        return converted_from_arrays(
            lambda: folder.role_tensors(entry["role"]), entry, archived, requested, given,
            check=check_conversion, example_inputs=example_inputs,
        )
    model = given if given is not None else _builder(entry, archived)(
        entry["architecture"]["config"]
    )
    archived.assign(model, folder.role_tensors(entry["role"]))
    if entry["architecture"]:
        remember_architecture(model, entry["architecture"]["name"],
                              entry["architecture"]["config"])
    return model, None, None


def _verified(folder: ShardedFolder, enabled: bool) -> Any:
    """Start checking every digest in a thread; return a function that joins it and raises."""
    failures: list[BaseException] = []

    def check() -> None:
        try:
            folder.verify()
        except BaseException as exc:  # handed to the caller's thread by the join below
            failures.append(exc)

    worker = threading.Thread(target=check, name="polybundle-verify-shards", daemon=True)
    if enabled:
        worker.start()

    def join() -> None:
        if enabled:
            worker.join()
        if failures:
            raise failures[0]

    return join


def load_sharded(
    path: Path,
    *,
    backend: str | None,
    roles: Iterable[str] | None,
    into: dict[str, Any],
    lazy: bool,
    check: bool,
    check_conversion: bool = True,
    example_inputs: Any = None,
) -> ShardedBundle:
    """Load the sharded bundle in folder ``path`` (see :func:`polybundle.load`).

    ``check`` checks the digests; ``check_conversion`` and ``example_inputs``
    are :func:`polybundle.load`'s ``check`` and ``example_inputs``.

    Example:
        >>> bundle = load_sharded(Path("sharded"), backend=None, roles=None, into={},
        ...                       lazy=True, check=False)
        >>> bundle.params
        {'lr': 0.01}
    """
    folder = ShardedFolder(path)
    manifest = folder.manifest
    try:
        archived = get_backend(manifest["backend"])
    except UnknownBackendError:
        raise UnknownBackendError(
            f"this bundle was written by the {manifest['backend']!r} backend, which is not "
            f"installed. Install its plugin package (pip install polybundle-{manifest['backend']})."
        ) from None
    requested = archived if backend is None else get_backend(backend)
    if lazy and requested is not archived:
        raise BackendMismatchError(
            archived.name, requested.name,
            "lazy=True gives the tensors as stored; load without lazy to convert them.",
        )
    available = [entry["role"] for entry in manifest["models"]]
    selected = available if roles is None else list(roles)
    unknown = sorted(set(selected) - set(available)) + sorted(set(into) - set(selected))
    if unknown:
        raise PolybundleError(
            f"roles {unknown} are not in the bundle or not being loaded; it holds {available}."
        )
    if check and into:  # models the caller owns change only after every digest matched
        folder.verify()
    join = _verified(folder, check and not into)
    models: dict[str, Any] = {}
    plans: dict[str, Any] = {}
    checks: dict[str, Any] = {}
    try:
        params = folder.params()
        if not lazy:
            requested.require()
        for role in [] if lazy else selected:
            entry = model_entry(manifest, role)
            models[role], plan, checked = _build(
                folder, entry, archived, requested, into.get(role),
                check_conversion=check_conversion, example_inputs=example_inputs,
            )
            if plan is not None:
                plans[role], checks[role] = plan, checked
    except BaseException:
        join()  # a damaged part is the likelier cause of any failure: report it first
        raise
    join()
    return ShardedBundle(Path(path), manifest, params, requested.name, models, lazy=lazy,
                         conversions=plans, checks=checks)

