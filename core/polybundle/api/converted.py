"""Build a model in another backend and load a bundle's converted weights into it.

:func:`polybundle.load` calls :func:`converted_model` when ``backend=`` names
a backend other than the writer's: the source tensors are read with the
writer's framework-free reader, the model is built with the target backend's
builder for the same architecture name and config, and the tensors, moved
into the target's layouts, are loaded strictly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from polybundle.errors import ConversionUnavailableError
from polybundle.format.archive import ArchiveReader
from polybundle.hooks.registry import (
    get_registry,
    recorded_module,
    remember_architecture,
    tensor_map,
)
from polybundle.model.backend import Backend, TensorSpec
from polybundle.model.conversion import ConversionPlan, plan_conversion


def _builder(entry: dict[str, Any], source: Backend, target: Backend) -> Any:
    architecture = entry["architecture"]
    if not architecture:
        raise ConversionUnavailableError(
            source.name, target.name,
            f"Role {entry['role']!r} records no architecture, so it cannot be rebuilt in "
            f"{target.name!r}: save it with architectures={{role: (name, config)}} or a model "
            "made by polybundle.build.",
        )
    registry = get_registry()
    if not registry.has_builder(architecture["name"], target.name):
        module = recorded_module(architecture)
        hint = (
            f" The bundle records that its {source.name!r} builder was defined in module "
            f"{module!r}; if that module registers the {target.name!r} one too, import "
            f"{module} first (on the command line: polybundle --import {module} ...)."
            if module else ""
        )
        raise ConversionUnavailableError(
            source.name, target.name,
            f"Converting needs a {target.name!r} builder for architecture "
            f"{architecture['name']!r} (role {entry['role']!r}); none is registered. Register "
            f"one with @polybundle.architecture({architecture['name']!r}, "
            f"backend={target.name!r}).{hint}",
        )
    return registry.builder(architecture["name"], target.name)


def converted_model(
    archive: ArchiveReader, entry: dict[str, Any], source: Backend, target: Backend,
    given: Any | None = None,
) -> tuple[Any, ConversionPlan]:
    """Build (or take ``given``) a ``target`` model for ``entry`` and load converted weights.

    Everything is checked before the model is changed; on any problem the
    typed error is raised and no model is returned.

    Example:
        >>> from polybundle.format.archive import ArchiveReader
        >>> from polybundle.format.manifest import read_manifest
        >>> polybundle.architecture("doc-linear", backend="torch", replace=True)(
        ...     lambda config: torch.nn.Linear(4, config["out"]))  # doctest: +ELLIPSIS
        <function <lambda> at ...>
        >>> path = polybundle.save("lin.bundle", {"net": polybundle.build(
        ...     "doc-linear", {"out": 3}, backend="torch")})
        >>> torch_backend = polybundle.get_backend("torch")
        >>> with ArchiveReader("lin.bundle") as archive:
        ...     entry = read_manifest(archive)["models"][0]
        ...     model, plan = converted_model(archive, entry, torch_backend, torch_backend)
        >>> model.out_features, [move.detail for move in plan.moves]
        (3, ['identity', 'identity'])
    """
    def read() -> dict[str, np.ndarray]:
        with archive.open(entry["weights"]) as stream:
            return source.read_tensors(stream, [TensorSpec.from_json(t) for t in entry["tensors"]])

    return converted_from_arrays(read, entry, source, target, given)


def converted_from_arrays(
    read: Callable[[], dict[str, np.ndarray]], entry: dict[str, Any], source: Backend,
    target: Backend, given: Any | None = None,
) -> tuple[Any, ConversionPlan]:
    """Build (or take ``given``) a ``target`` model for ``entry``; load ``read()``, converted.

    ``read`` gives the source tensors by name (called once the plan is
    checked): a weights member read by ``source``, or the assembled shards of
    a sharded bundle. Everything is checked before the model is changed.

    Example:
        >>> polybundle.architecture("doc-lin2", backend="torch", replace=True)(
        ...     lambda config: torch.nn.Linear(2, 1))  # doctest: +ELLIPSIS
        <function <lambda> at ...>
        >>> torch_backend = polybundle.get_backend("torch")
        >>> specs = torch_backend.describe(torch.nn.Linear(2, 1))
        >>> entry = {"role": "net", "architecture": {"name": "doc-lin2", "config": {}},
        ...          "tensors": [spec.to_json() for spec in specs]}
        >>> model, plan = converted_from_arrays(
        ...     lambda: {"weight": np.ones((1, 2), np.float32), "bias": np.zeros(1, np.float32)},
        ...     entry, torch_backend, torch_backend)
        >>> model.weight.tolist()
        [[1.0, 1.0]]
    """
    architecture = entry["architecture"]
    model = given if given is not None else _builder(entry, source, target)(architecture["config"])
    source_specs = [TensorSpec.from_json(t) for t in entry["tensors"]]
    name = architecture["name"] if architecture else None
    plan = plan_conversion(
        source_specs, target.describe(model), mapping=tensor_map(name, source.name, target.name)
    )
    plan.check(context=f"role {entry['role']!r} from {source.name} to {target.name}")
    target.assign(model, plan.apply(read()))
    if architecture:
        remember_architecture(model, architecture["name"], architecture["config"])
    return model, plan
