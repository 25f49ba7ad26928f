"""Load a bundle into the other framework, convert bundles, and plan conversions.

:func:`load_converted` is what :func:`polybundle.load` calls when ``backend=``
names a framework other than the writer's: the source tensors are read with
the framework-free readers, the model is built with the *target* framework's
builder for the same architecture name and config, and the converted tensors
are loaded strictly. :func:`convert` writes the result as a native bundle;
:func:`plan_bundle` says what a conversion would do without building anything.

Example:
    >>> bundle = polybundle.load("tf.bundle", backend="torch")  # doctest: +SKIP
    >>> polybundle.convert("tf.bundle", "torch.bundle", backend="torch")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from typing import Any

from polybundle.errors import ConversionUnavailableError, UnknownBackendError
from polybundle.format.archive import ArchiveReader
from polybundle.hooks.registry import get_backend, get_registry, remember_architecture
from polybundle.model.backend import Backend, TensorSpec
from polybundle.model.canonical import infer_shape, native_layout
from polybundle.model.conversion import ConversionPlan, plan_conversion, tensor_map

FRAMEWORK_TABLES = {"torch": "torch", "tensorflow": "keras"}
"""Backends whose standard layers :mod:`polybundle.model.canonical` describes, and their table."""


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
        raise ConversionUnavailableError(
            source.name, target.name,
            f"Converting needs a {target.name!r} builder for architecture "
            f"{architecture['name']!r} (role {entry['role']!r}); none is registered. Register "
            f"one with @polybundle.architecture({architecture['name']!r}, "
            f"backend={target.name!r}).",
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
        >>> model, plan = converted_model(archive, entry, tf, torch)  # doctest: +SKIP
    """
    architecture = entry["architecture"]
    model = given if given is not None else _builder(entry, source, target)(architecture["config"])
    source_specs = [TensorSpec.from_json(t) for t in entry["tensors"]]
    name = architecture["name"] if architecture else None
    plan = plan_conversion(
        source_specs, target.describe(model), mapping=tensor_map(name, source.name, target.name)
    )
    plan.check(context=f"role {entry['role']!r} from {source.name} to {target.name}")
    with archive.open(entry["weights"]) as stream:
        arrays = source.read_tensors(stream, source_specs)
    target.assign(model, plan.apply(arrays))
    if architecture:
        remember_architecture(model, architecture["name"], architecture["config"])
    return model, plan


def _synthetic_targets(specs: list[TensorSpec], table: str) -> list[TensorSpec]:
    """Describe the tensors the target framework's standard layers would have (no model)."""
    out: list[TensorSpec] = []
    layers: dict[str, int] = {}
    for spec in specs:
        if not spec.kind:
            continue
        index = layers.setdefault(spec.layer, len(layers))
        layout = native_layout(table, spec.kind, spec.slot, spec.layout)
        if layout is None:
            continue
        shape = infer_shape(spec.layout, layout, spec.shape)
        name = f"#{index} {spec.kind}.{spec.slot}"
        out.append(TensorSpec(name, name, shape if shape is not None else spec.shape, spec.dtype,
                              layout, spec.kind, f"#{index}", spec.slot))
        if spec.kind == "batchnorm" and spec.slot == "moving_variance" and table == "torch":
            count = f"#{index} batchnorm.count"
            out.append(TensorSpec(count, count, (), "int64", "scalar", "batchnorm", f"#{index}",
                                  "count"))
    return out


def plan_bundle(path: str | os.PathLike[str], to: str) -> dict[str, Any]:
    """Say how each tensor of the bundle at ``path`` would convert to backend ``to``.

    Builds no model and imports no framework: target tensors are those the
    target framework's standard layers hold (named ``#<layer> <kind>.<slot>``).
    Returns ``{"source", "target", "roles": [{role, architecture, builder,
    rows, missing, unexpected, unmapped, misaligned, mismatched}]}``.

    Example:
        >>> plan_bundle("tf.bundle", "torch")["roles"][0]["rows"][0]["detail"]  # doctest: +SKIP
        'transpose (3, 2, 0, 1)'
    """
    from polybundle.api.loading import detect
    from polybundle.format.manifest import read_manifest
    from polybundle.model.conversion import plan_rows

    target = get_backend(to)
    with ArchiveReader(path) as archive:
        detect(archive)
        manifest = read_manifest(archive)
    source = manifest["backend"]
    table = FRAMEWORK_TABLES.get(target.name)
    if table is None:
        raise UnknownBackendError(
            f"planning without a model covers {sorted(FRAMEWORK_TABLES)}; {target.name!r} "
            "layouts are only known from a built model. Use polybundle.load(..., "
            f"backend={target.name!r}) to convert."
        )
    roles = []
    for entry in manifest["models"]:
        specs = [TensorSpec.from_json(t) for t in entry["tensors"]]
        architecture = entry["architecture"]
        name = architecture["name"] if architecture else None
        plan = plan_conversion(specs, _synthetic_targets(specs, table),
                               mapping=tensor_map(name, source, target.name))
        roles.append({
            "role": entry["role"],
            "architecture": name,
            "builder": bool(name) and get_registry().has_builder(name, target.name),
            "rows": plan_rows(plan),
            "missing": plan.missing,
            "unexpected": plan.unexpected,
            "unmapped": plan.unmapped,
            "misaligned": plan.misaligned,
            "mismatched": plan.mismatched,
        })
    return {"source": source, "target": target.name, "roles": roles}


def convert(
    source: str | os.PathLike[str],
    destination: str | os.PathLike[str],
    *,
    backend: str,
    max_bytes: int | None = None,
) -> dict[str, Any]:
    """Write the bundle at ``source`` as a native bundle of ``backend`` at ``destination``.

    Models are rebuilt with ``backend``'s builders and loaded with the
    converted weights; params and architectures are kept, and optimizer state
    is converted with the same pairing when the bundle has it. Needs only the
    target framework. Returns the manifest written. ``source`` may be a plain
    framework file too (see :func:`polybundle.load`). ``max_bytes`` caps the
    memory read from the source's declared sizes (:mod:`polybundle.safety.budget`);
    past it nothing is written.

    Example:
        >>> convert("tf.bundle", "torch.bundle", backend="torch")["backend"]  # doctest: +SKIP
        'torch'
    """
    from polybundle.safety.budget import limit

    with limit(max_bytes):
        return _convert(source, destination, backend)


def _convert(
    source: str | os.PathLike[str], destination: str | os.PathLike[str], backend: str
) -> dict[str, Any]:
    from polybundle.api.loading import load
    from polybundle.api.saving import save

    bundle = load(source, backend=backend)
    architectures = {
        entry["role"]: (entry["architecture"]["name"], entry["architecture"]["config"])
        for entry in bundle.manifest["models"] if entry["architecture"]
    }
    optimizers = {
        role: bundle.converted_optimizer_state(role) for role in bundle.roles
        if bundle.has_optimizer(role)
    }
    return save(destination, bundle.models, params=bundle.params, architectures=architectures,
                optimizers=optimizers)
