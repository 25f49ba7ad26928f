"""Convert bundles between backends, and plan conversions.

:func:`convert` loads a bundle into another backend (:func:`polybundle.load`
with ``backend=``, which builds the target models and loads the converted
weights through :mod:`polybundle.api.converted`) and writes it as a native
bundle; :func:`plan_bundle` says what a conversion would do: it builds the
target as a load would where it can, else asks the target backend for its
layers' layouts (:meth:`Backend.native_layout`).

Example:
    >>> [row["detail"] for row in plan_bundle("run.bundle", "tensorflow")["roles"][0]["rows"]]
    ['transpose (1, 0)', 'identity', 'transpose (1, 0)', 'identity']
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import numpy as np

from polybundle.api.conversion_check import UncheckedConversionWarning
from polybundle.api.loading import detect, load
from polybundle.api.saving import save
from polybundle.errors import ConversionError, TensorMismatchError
from polybundle.format.archive import ArchiveReader
from polybundle.format.digests import DEFAULT, algorithm
from polybundle.format.manifest import read_manifest
from polybundle.format.sharded import ShardedFolder, is_sharded
from polybundle.format.storage import Location, locate
from polybundle.hooks.registry import get_backend, get_registry, tensor_map
from polybundle.model.backend import Backend, TensorSpec
from polybundle.model.canonical import FILL_SLOTS, KINDS, infer_shape
from polybundle.model.conversion import ConversionPlan, plan_conversion, plan_rows
from polybundle.model.layouts import SCALAR
from polybundle.safety.budget import limit


def _synthetic_targets(
    specs: list[TensorSpec], target: Backend
) -> tuple[list[TensorSpec], frozenset[str]]:
    """Describe the tensors ``target``'s standard layers would hold for ``specs`` (no model).

    Each layer of a canonical kind keeps the slots it has that ``target``'s
    layer has too (:meth:`Backend.native_layout`), shaped as the layout tags
    say; a slot only ``target`` has is added when it can be filled
    (:data:`~polybundle.model.canonical.FILL_SLOTS`). Returns the specs and the
    names of those whose shape only the built model determines.
    """
    layers: dict[str, dict[str, TensorSpec]] = {}
    for spec in specs:
        if spec.kind:
            layers.setdefault(spec.layer, {})[spec.slot] = spec
    out: list[TensorSpec] = []
    unsized: set[str] = set()
    for index, slots in enumerate(layers.values()):
        kind = next(iter(slots.values())).kind
        for slot in [*KINDS.get(kind, ()), *(s for s in slots if s not in KINDS.get(kind, ()))]:
            spec = slots.get(slot)
            if spec is None and (kind, slot) not in FILL_SLOTS:
                continue
            layout = target.native_layout(kind, slot, spec.layout if spec else "")
            if layout is None:
                continue
            name = f"#{index} {kind}.{slot}"
            if spec is None:
                if layout == SCALAR:  # a filled tensor of more axes needs a model to size it
                    dtype = np.asarray(FILL_SLOTS[(kind, slot)]).dtype.name
                    out.append(TensorSpec(name, name, (), dtype, layout, kind, f"#{index}", slot))
                continue
            shape = infer_shape(spec.layout, layout, spec.shape)
            if shape is None:  # a merged source axis (c*m) the target splits: sized by the model
                unsized.add(name)
            out.append(TensorSpec(name, name, shape if shape is not None else spec.shape,
                                  spec.dtype, layout, kind, f"#{index}", slot))
    return out, frozenset(unsized)


def plan_bundle(
    path: str | os.PathLike[str],
    to: str,
    *,
    storage_options: dict[str, Any] | None = None,
    filesystem: Any = None,
) -> dict[str, Any]:
    """Say how each tensor of the bundle at ``path`` (a file or a sharded folder) would convert.

    Where ``to``'s framework is installed and a builder is registered for a
    role's architecture, the target model is built and converted exactly as
    :func:`polybundle.load` would (layers paired through both models' traced
    graphs, the numerical check run when a sample and reference exist): rows
    name real tensors on both sides, ``pairing`` says how layers were paired,
    ``check`` what the check found, and ``refused`` the error a load would
    raise. Otherwise nothing is built and no framework imported: target
    tensors are those ``to``'s standard layers hold (``#<layer> <kind>.<slot>``).
    Returns ``{"source", "target", "roles": [{role, architecture, builder,
    built, rows, missing, unexpected, unmapped, misaligned, mismatched,
    pairing, check, refused}]}``.
    ``path`` may be a URL with ``storage_options`` or a ready fsspec
    ``filesystem`` (see :func:`polybundle.load`); it is read by byte range.

    Example:
        >>> row = plan_bundle("run.bundle", "tensorflow")["roles"][0]["rows"][0]
        >>> row["source"], row["kind"], row["layout"], row["shape"]
        ('0.weight', 'dense', 'out,in -> in,out', [4, 3])
    """
    target = get_backend(to)
    path = locate(path, storage_options, filesystem) or path
    if is_sharded(path):
        manifest = ShardedFolder(path).manifest
    else:
        with ArchiveReader(path) as archive:
            detect(archive)
            manifest = read_manifest(archive)
    source = manifest["backend"]
    roles = []
    for entry in manifest["models"]:
        specs = [TensorSpec.from_json(t) for t in entry["tensors"]]
        architecture = entry["architecture"]
        name = architecture["name"] if architecture else None
        builder = bool(name) and get_registry().has_builder(name, target.name)
        row: dict[str, Any] = {"role": entry["role"], "architecture": name, "builder": builder,
                               "built": False, "pairing": "", "check": "", "refused": ""}
        built = _built_plan(path, entry["role"], target) if builder else None
        if built is not None:
            row.update(built)
        else:
            targets, unsized = _synthetic_targets(specs, target)
            plan = plan_conversion(specs, targets, mapping=tensor_map(name, source, target.name),
                                   unsized=unsized)
            row.update(_plan_fields(plan), pairing="definition order (no target model built)")
        roles.append(row)
    return {"source": source, "target": target.name, "roles": roles}


def _plan_fields(plan: ConversionPlan) -> dict[str, Any]:
    return {"rows": plan_rows(plan), "missing": plan.missing, "unexpected": plan.unexpected,
            "unmapped": plan.unmapped, "misaligned": plan.misaligned,
            "mismatched": plan.mismatched}


def _built_plan(path: str | os.PathLike[str] | Location, role: str, target: Backend
                ) -> dict[str, Any] | None:
    """Convert ``role`` as a load would; None when ``target``'s framework is not installed or
    is the writer's (then nothing converts)."""
    if not target.is_available():
        return None
    empty = _plan_fields(ConversionPlan())
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UncheckedConversionWarning)  # reported in the row
            bundle = load(path, backend=target.name, roles=[role])
    except (ConversionError, TensorMismatchError) as exc:
        return {**empty, "built": True, "refused": str(exc)}
    if role not in bundle.conversions:  # the writer's own framework: nothing converts
        return None
    check = bundle.checks[role]
    return {**_plan_fields(bundle.conversions[role]), "built": True, "pairing": check.pairing,
            "check": check.summary()}


def convert(
    source: str | os.PathLike[str],
    destination: str | os.PathLike[str],
    *,
    backend: str,
    max_bytes: int | None = None,
    storage_options: dict[str, Any] | None = None,
    filesystem: Any = None,
    digest: str = DEFAULT,
) -> dict[str, Any]:
    """Write the bundle at ``source`` as a native bundle of ``backend`` at ``destination``.

    Models are rebuilt with ``backend``'s builders and loaded with the
    converted weights, checked as :func:`polybundle.load` checks them; params
    and architectures are kept, optimizer state is converted with the same
    pairing when the bundle has it, and each checked role's sample input is
    stored as its parity input (laid out for ``backend``), so the new bundle
    can be checked in turn. Needs only the
    target framework. Returns the manifest written. ``source`` may be a plain
    framework file too (see :func:`polybundle.load`). ``max_bytes`` caps the
    memory read from the source's declared sizes (:mod:`polybundle.safety.budget`);
    past it nothing is written. Either may be a URL; ``storage_options`` or
    ``filesystem`` (see :func:`polybundle.load`) serve both. ``digest`` names
    the algorithm of the new bundle's digests, as for :func:`polybundle.save`.

    Example:
        >>> polybundle.architecture("doc-mlp", backend="torch", replace=True)(
        ...     lambda config: torch.nn.Linear(4, 3))  # doctest: +ELLIPSIS
        <function <lambda> at ...>
        >>> net = polybundle.build("doc-mlp", {}, backend="torch")
        >>> path = polybundle.save("mlp.bundle", {"net": net}, params={"lr": 0.1})
        >>> manifest = convert("mlp.bundle", "copy.bundle", backend="pt")
        >>> manifest["backend"], polybundle.load("copy.bundle").params
        ('torch', {'lr': 0.1})
    """
    with limit(max_bytes):
        return _convert(
            locate(source, storage_options, filesystem) or source,
            locate(destination, storage_options, filesystem) or destination,
            backend,
            algorithm(digest).name,
        )


def _convert(
    source: str | os.PathLike[str] | Location,
    destination: str | os.PathLike[str] | Location,
    backend: str,
    digest: str,
) -> dict[str, Any]:
    bundle = load(source, backend=backend)
    architectures = {
        entry["role"]: (entry["architecture"]["name"], entry["architecture"]["config"])
        for entry in bundle.manifest["models"] if entry["architecture"]
    }
    optimizers = {
        role: bundle.converted_optimizer_state(role) for role in bundle.roles
        if bundle.has_optimizer(role)
    }
    checked = {role: check.inputs for role, check in bundle.checks.items()
               if check.inputs is not None}
    return save(destination, bundle.models, params=bundle.params, architectures=architectures,
                optimizers=optimizers, parity_inputs=checked or None, digest=digest)
