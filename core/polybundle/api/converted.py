"""Build a model in another backend and load a bundle's converted weights into it.

:func:`polybundle.load` calls :func:`converted_model` when ``backend=`` names
a backend other than the writer's: the source tensors are read with the
writer's framework-free reader, the model is built with the target backend's
builder for the same architecture name and config, and the tensors, moved
into the target's layouts, are loaded strictly.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from polybundle.api.conversion_check import (
    ConversionCheck,
    Sides,
    UncheckedConversionWarning,
    as_sample,
    check_outputs,
    stored_parity,
    target_sample,
)
from polybundle.errors import ConversionError, ConversionUnavailableError, PolybundleError
from polybundle.format.archive import ArchiveReader
from polybundle.hooks.registry import (
    get_registry,
    recorded_module,
    remember_architecture,
    tensor_map,
)
from polybundle.model.backend import Backend, TensorSpec
from polybundle.model.conversion import ConversionPlan, expand_mapping, plan_conversion
from polybundle.model.graph import OpGraph
from polybundle.model.matching import graph_pairing


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


def _source_model(archive: ArchiveReader, entry: dict[str, Any], source: Backend,
                  specs: list[TensorSpec]) -> tuple[Any, str]:
    """Rebuild the source model when its framework and builder (or a self-describing file)
    are at hand; else (None, why not)."""
    if not source.is_available():
        return None, f"the source framework ({source.name}) is not installed"
    architecture = entry["architecture"]
    registry = get_registry()
    with archive.open(entry["weights"]) as stream:
        if architecture and registry.has_builder(architecture["name"], source.name):
            builder = registry.builder(architecture["name"], source.name)
            return source.build_and_load(builder, architecture["config"], stream, specs), ""
        try:
            return source.load_standalone(stream, specs), ""
        except PolybundleError:
            return None, f"no {source.name!r} builder is registered for the architecture"


def _as_stored(graph: OpGraph | None, rebuilt: list[TensorSpec],
               stored: list[TensorSpec]) -> OpGraph | None:
    """Name the rebuilt source model's layers as the bundle does (a rebuild may number them
    anew, ``dense_1`` for ``dense``); None when the two models' tensors differ."""
    if graph is None:
        return None
    if [(s.kind, s.slot, tuple(s.shape)) for s in rebuilt] != [
            (s.kind, s.slot, tuple(s.shape)) for s in stored]:
        return None
    return graph.renamed({new.layer: old.layer for new, old in zip(rebuilt, stored, strict=True)
                          if new.layer})


def _pins(plan_mapping: dict[str, Any], source_specs: list[TensorSpec],
          target_specs: list[TensorSpec]) -> dict[str, str]:
    """Layer pairs an explicit map fixes (source layer -> target layer)."""
    layer_of = {spec.name: spec.layer for spec in (*source_specs, *target_specs)}
    pins = {}
    for name, entry in plan_mapping.items():
        target_name = entry if isinstance(entry, str) else entry[0] if entry else None
        if layer_of.get(name) and target_name and layer_of.get(target_name):
            pins[layer_of[name]] = layer_of[target_name]
    return pins


def _refuse_unordered_features(graph: OpGraph, where: str) -> None:
    """Without a source graph, a dense layer reading a flattened map cannot be paired."""
    for op in graph.weighted_ops():
        atoms = graph.feature_atoms(op.id) if op.input_axes is not None else None
        if atoms is not None and len([a for a in atoms if a[1] != 1]) > 1:
            raise ConversionError(
                f"{where}: layer {op.name!r} of the converted model reads a flattened feature "
                f"map ({', '.join(a for a, _ in atoms)}), but the source model could not be "
                "traced, so the order of its input features in the source is unknown and "
                "polybundle does not guess. Register the source framework's builder too (and "
                "install it), so both models are traced, or register an explicit map."
            )


def _declared_sample(source: Backend, target: Backend, source_model: Any, model: Any,
                     notes: list[str]) -> tuple[dict[str, Any] | None, OpGraph | None]:
    """A sample input in the source's layout from a model that declares its input shapes
    (the source's, else the target's moved as the traces confirm), and the target's graph
    on its own sample when that is all there is."""
    if source_model is not None:
        sample = source.sample_inputs(source_model)
        if sample is not None:
            return sample, None
    own = target.sample_inputs(model)
    graph = target.trace(model, own) if own is not None else None
    if graph is not None and source_model is not None:
        sample, _, why = target_sample(source, source_model, own, target, graph.input_layouts())
        if sample is not None:
            return sample, None
        notes.append(why)
    if own is None:
        notes.append("no sample input: save with parity_inputs=, pass example_inputs=, or "
                     "build with a model that declares its input shape")
    return None, graph


def _traced_sides(role: str, source: Backend, target: Backend, source_model: Any, model: Any,
                  sample: dict[str, Any] | None, source_specs: list[TensorSpec],
                  notes: list[str]) -> Sides | None:
    """Trace both models on ``sample`` (the target's laid out as its trace confirms)."""
    if sample is None:
        return None
    source_graph = None
    if source_model is not None:
        source_graph = _as_stored(source.trace(source_model, sample),
                                  source.describe(source_model), source_specs)
    target_inputs, target_graph, why = target_sample(
        target, model, sample, source,
        source_graph.input_layouts() if source_graph is not None else None)
    if target_inputs is None:
        notes.append(why)
        return None
    return Sides(role, source, target, model, target_inputs, target_graph, source_model,
                 source_graph, sample)


def converted_model(
    archive: ArchiveReader, entry: dict[str, Any], source: Backend, target: Backend,
    given: Any | None = None, *, check: bool = True, example_inputs: Any = None,
    members: dict[str, Any] | None = None,
) -> tuple[Any, ConversionPlan, ConversionCheck]:
    """Build (or take ``given``) a ``target`` model for ``entry`` and load converted weights.

    Layers are paired through both models' traced graphs when a sample input
    (``example_inputs``, in the source framework's layout, else the stored
    parity inputs) and the source model (its builder, or a self-describing
    file) are at hand, else in definition order; a dense layer after a
    flattened feature map gets its input features reordered as the traces
    say. Everything is checked before the model is changed; on any problem
    the typed error is raised and no model is returned. Then, unless
    ``check`` is False, the converted model is run against the reference
    (:mod:`polybundle.api.conversion_check`), raising
    :class:`~polybundle.errors.ConversionMismatchError` on a difference;
    ``members`` (the manifest's) check the stored parity member's digest.

    Example:
        >>> from polybundle.format.archive import ArchiveReader
        >>> from polybundle.format.manifest import read_manifest
        >>> polybundle.architecture("doc-linear", backend="torch", replace=True)(
        ...     lambda config: torch.nn.Linear(4, config["out"]))  # doctest: +ELLIPSIS
        <function <lambda> at ...>
        >>> path = polybundle.save("lin.bundle", {"net": polybundle.build(
        ...     "doc-linear", {"out": 3}, backend="torch")}, parity_inputs=np.ones((2, 4), "f4"))
        >>> torch_backend = polybundle.get_backend("torch")
        >>> with ArchiveReader("lin.bundle") as archive:
        ...     manifest = read_manifest(archive)
        ...     model, plan, check = converted_model(archive, manifest["models"][0],
        ...                                          torch_backend, torch_backend)
        >>> model.out_features, [move.detail for move in plan.moves], check.reference
        (3, ['identity', 'identity'], 'the stored parity outputs')
    """
    source_specs = [TensorSpec.from_json(t) for t in entry["tensors"]]

    def read() -> dict[str, np.ndarray]:
        with archive.open(entry["weights"]) as stream:
            return source.read_tensors(stream, source_specs)

    return converted_from_arrays(
        read, entry, source, target, given, check=check, example_inputs=example_inputs,
        stored=stored_parity(archive, entry, members or {}),
        source_model=lambda: _source_model(archive, entry, source, source_specs),
    )


def _built_source(
    entry: dict[str, Any], source: Backend, read: Callable[[], dict[str, np.ndarray]]
) -> tuple[Any, str]:
    """The source model built by its builder and given ``read()``; else (None, why not)."""
    if not source.is_available():
        return None, f"the source framework ({source.name}) is not installed"
    architecture = entry["architecture"]
    registry = get_registry()
    if not (architecture and registry.has_builder(architecture["name"], source.name)):
        return None, f"no {source.name!r} builder is registered for the architecture"
    model = registry.builder(architecture["name"], source.name)(architecture["config"])
    source.assign(model, read())
    return model, ""


def converted_from_arrays(
    read: Callable[[], dict[str, np.ndarray]], entry: dict[str, Any], source: Backend,
    target: Backend, given: Any | None = None, *, check: bool = True,
    example_inputs: Any = None, stored: tuple[dict[str, Any], Any] | None = None,
    source_model: Callable[[], tuple[Any, str]] | None = None,
) -> tuple[Any, ConversionPlan, ConversionCheck]:
    """Build (or take ``given``) a ``target`` model for ``entry``; load ``read()``, converted.

    ``read`` gives the source tensors by name (called once the plan is
    checked): a weights member read by ``source``, or the assembled shards of
    a sharded bundle. ``stored`` is the stored parity ``(inputs, outputs)``;
    ``source_model`` rebuilds the source model (default: its builder, given
    ``read()``), returning ``(None, why not)`` when it cannot. Pairing and the
    check are :func:`converted_model`'s.

    Example:
        >>> polybundle.architecture("doc-lin2", backend="torch", replace=True)(
        ...     lambda config: torch.nn.Linear(2, 1))  # doctest: +ELLIPSIS
        <function <lambda> at ...>
        >>> torch_backend = polybundle.get_backend("torch")
        >>> specs = torch_backend.describe(torch.nn.Linear(2, 1))
        >>> entry = {"role": "net", "architecture": {"name": "doc-lin2", "config": {}},
        ...          "tensors": [spec.to_json() for spec in specs]}
        >>> model, plan, check = converted_from_arrays(
        ...     lambda: {"weight": np.ones((1, 2), np.float32), "bias": np.zeros(1, np.float32)},
        ...     entry, torch_backend, torch_backend, example_inputs=np.ones((1, 2), np.float32))
        >>> model.weight.tolist(), check.reference
        ([[1.0, 1.0]], 'the source torch model')
    """
    architecture = entry["architecture"]
    role = entry["role"]
    context = f"role {role!r} from {source.name} to {target.name}"
    model = given if given is not None else _builder(entry, source, target)(architecture["config"])
    source_specs = [TensorSpec.from_json(t) for t in entry["tensors"]]
    target_specs = target.describe(model)
    name = architecture["name"] if architecture else None
    mapping = expand_mapping(tensor_map(name, source.name, target.name), source_specs)
    if example_inputs is not None:
        sample: dict[str, Any] | None = as_sample(example_inputs)
        reference = None
    else:
        sample, reference = stored if stored is not None else (None, None)
    notes: list[str] = []
    rebuilt, why = (source_model or (lambda: _built_source(entry, source, read)))()
    if rebuilt is None:
        notes.append(why)
    target_only = None
    if sample is None:
        sample, target_only = _declared_sample(source, target, rebuilt, model, notes)
    sides = _traced_sides(role, source, target, rebuilt, model, sample, source_specs, notes)
    if sides is not None and sides.source_graph is not None and sides.target_graph is not None:
        pairing, reorders = graph_pairing(sides.source_graph, sides.target_graph, source_specs,
                                          target_specs,
                                          pinned=_pins(mapping, source_specs, target_specs))
        sides.pairs = pairing.pairs
        how = f"dataflow graph ({sides.source_graph.note}; {sides.target_graph.note})"
        if pairing.by_order:
            how += f"; {pairing.by_order} layers it left unmatched by definition order"
        plan = plan_conversion(source_specs, target_specs, mapping=mapping, pairs=pairing.pairs,
                               reorders=reorders)
    else:
        target_graph = sides.target_graph if sides is not None else target_only
        if target_graph is not None:
            _refuse_unordered_features(target_graph, context)
        how = "definition order (" + ("; ".join(notes) or "the source model was not traced") + ")"
        plan = plan_conversion(source_specs, target_specs, mapping=mapping)
    plan.check(context=context)
    target.assign(model, plan.apply(read()))
    if architecture:
        remember_architecture(model, architecture["name"], architecture["config"])
    if not check:
        return model, plan, ConversionCheck(role, False, pairing=how, note="check=False")
    if sides is not None and reference is None and rebuilt is not None:
        reference = source.predict(rebuilt, sample or {})
        reference_name = f"the source {source.name} model"
    else:
        reference_name = "the stored parity outputs"
    if sides is None or reference is None:
        why = "; ".join(notes) or "no reference outputs"
        result = ConversionCheck(role, False, pairing=how, note=why)
        warnings.warn(UncheckedConversionWarning(
            f"{context}: the converted model was not checked against a reference ({why}); "
            "nothing shows its outputs are right. Save with parity_inputs= (or pass "
            "example_inputs= with the source builder registered) to check it."), stacklevel=4)
        return model, plan, result
    return model, plan, check_outputs(sides, reference, reference_name, how)
