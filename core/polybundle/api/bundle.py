"""The :class:`Bundle` that :func:`polybundle.load` returns.

Example:
    >>> bundle = polybundle.load("run.bundle", lazy=True)
    >>> bundle.backend, bundle.roles
    ('torch', ['net'])
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from polybundle.api.lazy import lazy_tensors
from polybundle.errors import IntegrityError, OptimizerError, PolybundleError
from polybundle.format import digests
from polybundle.format.archive import ArchiveReader
from polybundle.format.digests import from_record
from polybundle.format.manifest import check_digest, read_manifest, verify_member
from polybundle.format.storage import Location
from polybundle.hooks.registry import get_backend
from polybundle.model.backend import TensorSpec
from polybundle.model.conversion import ConversionPlan
from polybundle.model.optimizer import OptimizerState, decode_optimizer
from polybundle.model.optimizer_conversion import convert_optimizer
from polybundle.safety import budget
from polybundle.training.rng import decode_rng, restore_rng


def model_entry(manifest: dict[str, Any], role: str) -> dict[str, Any]:
    """Return the manifest entry of ``role``; raise listing the roles when absent.

    Example:
        >>> model_entry(polybundle.load("run.bundle", lazy=True).manifest, "net")["weights"]
        'net/model.pth'
    """
    for entry in manifest["models"]:
        if entry["role"] == role:
            return entry
    roles = [entry["role"] for entry in manifest["models"]]
    raise PolybundleError(f"the bundle has no role {role!r}; its roles are {roles}.")


@dataclass
class Bundle:
    """A loaded bundle: its manifest, params and models, and access to its tensors.

    ``models`` maps each loaded role to a native model of :attr:`backend`.
    ``params`` is the params dict; NumPy arrays saved in it (format 2.1,
    ``params.safetensors``) come back as writable, C-ordered arrays with the
    saved dtype, shape and bytes, and NumPy scalars as NumPy scalars.

    Example:
        >>> bundle = polybundle.load("run.bundle", into={"net": net})
        >>> bundle.models["net"](torch.ones(1, 4)).shape
        torch.Size([1, 2])
    """

    path: Path | Location
    manifest: dict[str, Any]
    params: dict[str, Any]
    backend: str
    models: dict[str, Any] = field(default_factory=dict)
    lazy: bool = False
    """True when opened with ``load(..., lazy=True)``: no models, mapped tensors."""
    conversions: dict[str, ConversionPlan] = field(default_factory=dict)
    """The weights' conversion plan of each role loaded in a framework other than the writer's."""
    checks: dict[str, Any] = field(default_factory=dict)
    """What checked each converted role (:class:`~polybundle.api.conversion_check.ConversionCheck`:
    against what, the error, or why it could not be checked)."""
    _verified: dict[str, tuple[int, ...]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    """Weights members whose digest matched, with the file identity they matched in."""
    max_bytes: int | None = None
    """The ``max_bytes=`` the bundle was loaded with; later reads (:meth:`tensors`) keep it."""
    _fetched: Any = field(default=None, init=False, repr=False, compare=False)
    """For a lazy bundle at a URL: the bytes fetched so far, reused by :meth:`tensors`."""
    check_tensors: bool = True
    """False after ``load(..., verify=False)``: :meth:`tensors` does not hash the weights member."""

    @property
    def roles(self) -> list[str]:
        """Return every role the bundle holds, in manifest order."""
        return [entry["role"] for entry in self.manifest["models"]]

    def tensor_specs(self, role: str) -> list[TensorSpec]:
        """Return the :class:`TensorSpec` of each tensor of ``role``.

        Example:
            >>> [s.layout for s in polybundle.load("run.bundle", lazy=True).tensor_specs("net")]
            ['out,in', 'out', 'out,in', 'out']
        """
        return [TensorSpec.from_json(t) for t in model_entry(self.manifest, role)["tensors"]]

    def tensors(self, role: str) -> Mapping[str, np.ndarray]:
        """Read the tensors of ``role`` from the file as ``{name: numpy array}``.

        The file is re-opened; it must still hold the manifest this bundle was
        loaded with, and the weights member's digest is checked against it
        before any tensor is handed out (a file changed since loading, even to
        the same size, raises :class:`~polybundle.errors.IntegrityError`). A lazy
        bundle returns a :class:`~polybundle.api.lazy.LazyTensors` of read-only
        arrays memory-mapped from the file just checked: only what is touched
        is copied, but the whole member is hashed here (once while the file's
        identity, including its ``ctime``, stays the same).

        Example:
            >>> polybundle.load("run.bundle", lazy=True).tensors("net")["0.weight"].shape
            (3, 4)
        """
        entry = model_entry(self.manifest, role)
        with budget.limit(self.max_bytes), ArchiveReader(self.path) as archive:
            if read_manifest(archive) != self.manifest:
                raise IntegrityError(
                    f"{str(self.path)!r} changed since it was loaded; load it again."
                )
            if self.check_tensors:
                self._verify_weights(archive, entry["weights"])
            writer = get_backend(self.manifest["backend"])
            if self.lazy:
                return lazy_tensors(archive, entry["weights"], self.tensor_specs(role), writer)
            with archive.open(entry["weights"]) as source:
                return writer.read_tensors(source, self.tensor_specs(role))

    def _verify_weights(self, archive: ArchiveReader, name: str) -> None:
        """Check a weights member's digest, once per unchanged file (see ``identity``)."""
        identity = archive.identity()
        if self._verified.get(name) != identity:
            verify_member(archive, self.manifest, name)
            self._verified[name] = identity

    def _read_checked(self, names: list[str]) -> list[bytes]:
        """Read whole members, checking the manifest and each member's digest."""
        with ArchiveReader(self.path) as archive:
            if read_manifest(archive) != self.manifest:
                raise IntegrityError(
                    f"{str(self.path)!r} changed since it was loaded; load it again."
                )
            contents = []
            for name in names:
                data = archive.read(name, limit=archive.size(name))
                record = self.manifest["members"][name]
                check_digest(name, record, digests.of_bytes(data, from_record(record).algorithm))
                contents.append(data)
            return contents

    def has_optimizer(self, role: str) -> bool:
        """Return True when the bundle holds optimizer state for ``role``.

        Example:
            >>> polybundle.load("run.bundle", lazy=True).has_optimizer("net")
            False
        """
        return "optimizer" in model_entry(self.manifest, role)

    def optimizer_state(self, role: str) -> OptimizerState:
        """Return the neutral optimizer state saved for ``role`` (no framework needed).

        Example:
            >>> opt = torch.optim.Adam(net.parameters())
            >>> net(torch.ones(1, 4)).sum().backward()
            >>> opt.step()
            >>> _ = polybundle.save("opt.bundle", {"net": net}, optimizers={"net": opt})
            >>> state = polybundle.load("opt.bundle", lazy=True).optimizer_state("net")
            >>> state.algorithm, state.step, state.slots["0.weight"]["m"].shape
            ('adam', 1, (3, 4))
        """
        entry = model_entry(self.manifest, role)
        if "optimizer" not in entry:
            with_state = [r for r in self.roles if self.has_optimizer(r)]
            raise OptimizerError(
                f"the bundle holds no optimizer state for role {role!r} (roles with one: "
                f"{with_state}). Save with optimizers={{{role!r}: optimizer}} to keep it."
            )
        document, arrays = self._read_checked(
            [entry["optimizer"]["state"], entry["optimizer"]["slots"]]
        )
        return decode_optimizer(document, arrays, where=role, specs=self.tensor_specs(role))

    def converted_optimizer_state(self, role: str) -> OptimizerState:
        """Return ``role``'s optimizer state in the form of the backend the bundle was loaded in.

        As stored when loaded in the backend that wrote it; converted with the
        plan of the role's weights when loaded in another one
        (``polybundle.load(path, backend=...)``): the writer's backend
        describes it neutrally, the loaded backend makes its own state
        (:func:`polybundle.model.optimizer_conversion.convert_optimizer`).
        Example: ``load(path, backend=name).converted_optimizer_state("net").backend == name``.
        """
        state = self.optimizer_state(role)
        plan = self.conversions.get(role)
        if plan is None:
            return state
        target = get_backend(self.backend)
        return convert_optimizer(state, plan, source=get_backend(state.backend), target=target,
                                 target_specs=target.describe(self.models[role]))

    def restore_optimizer(self, role: str, optimizer: Any, scheduler: Any | None = None) -> None:
        """Restore ``role``'s saved state into a fresh ``optimizer`` (and ``scheduler``).

        ``optimizer`` must be of the saved kind and bound to the parameters of
        ``self.models[role]`` (the model loaded from this bundle); moments,
        step and hyperparameters are restored. On a mismatch an
        :class:`~polybundle.errors.OptimizerMismatchError` is raised first.
        When the bundle was loaded in another backend
        (``load(path, backend=...)``), ``optimizer`` is of that backend and
        the state is converted with the weights' plan
        (:meth:`converted_optimizer_state`).

        Example:
            >>> opt = torch.optim.Adam(net.parameters())
            >>> net(torch.ones(1, 4)).sum().backward()
            >>> opt.step()
            >>> _ = polybundle.save("opt.bundle", {"net": net}, optimizers={"net": opt})
            >>> bundle = polybundle.load("opt.bundle", into={"net": net})
            >>> fresh = torch.optim.Adam(net.parameters())
            >>> bundle.restore_optimizer("net", fresh)
            >>> fresh.state_dict()["state"][0]["step"]
            tensor(1.)
        """
        if role not in self.models:
            raise OptimizerError(
                f"role {role!r} was not loaded (loaded: {sorted(self.models)}); load it first, "
                "so the optimizer can be bound to its parameters."
            )
        backend = get_backend(self.backend)
        if role in self.conversions:  # loaded across frameworks: convert with the weights' plan
            state = self.converted_optimizer_state(role)
            specs = backend.describe(self.models[role])
        else:
            state = self.optimizer_state(role)
            specs = self.tensor_specs(role)
        backend.restore_optimizer(self.models[role], optimizer, state, specs, scheduler)

    def restore_rng(self) -> None:
        """Put back the random-generator state saved with the bundle.

        Example:
            >>> _ = polybundle.save("rng.bundle", {"net": net}, rng=True)
            >>> first = torch.rand(2)
            >>> polybundle.load("rng.bundle", lazy=True).restore_rng()
            >>> bool((torch.rand(2) == first).all())
            True
        """
        if "rng" not in self.manifest:
            raise PolybundleError(
                f"{str(self.path)!r} holds no RNG state; save with rng=True (checkpoints do "
                "by default) to keep it."
            )
        (data,) = self._read_checked([self.manifest["rng"]])
        restore_rng(decode_rng(data))
