"""Pair the layers of two traced models through their dataflow graphs.

Two frameworks' versions of one architecture compute the same graph, but list
their layers in different orders (Keras orders a functional model by graph
depth, PyTorch by definition). :func:`match_graphs` pairs weighted layers by
what they are and where they sit: each layer starts with a label made of its
canonical kind and the sizes of its tensors, then, round after round, its
label takes in the labels of the layers that feed it and that it feeds
(Weisfeiler-Lehman refinement on the graph reduced to its weighted layers,
:meth:`OpGraph.weighted_inputs <polybundle.model.graph.OpGraph.weighted_inputs>`).
A normalisation layer is thus told apart by the convolution feeding it, a
shortcut convolution from the main branch by what it reads. Layers whose final
labels are equal are structurally interchangeable; only then is definition
order the tie-break. Pinned pairs (an explicit map) keep their partner and
give the matcher fixed points.

Example (the shortcut conv ``sc`` comes before ``b`` in one order, after in the other):
    >>> from polybundle.model.graph import Op, OpGraph
    >>> def graph(names):
    ...     a, b, sc = names
    ...     return OpGraph([Op(0, None, "input", (), (1, 4), None),
    ...                     Op(1, a, "dense", (0,), (1, 4), None),
    ...                     Op(2, b, "dense", (1,), (1, 4), None),
    ...                     Op(3, sc, "dense", (0,), (1, 4), None),
    ...                     Op(4, None, "add", (2, 3), (1, 4), None)])
    >>> signatures = {n: ("dense", (16, 4)) for n in "abcxyz"}
    >>> match_graphs(graph("abc"), graph("xyz"), signatures, signatures).pairs
    [('a', 'x'), ('b', 'y'), ('c', 'z')]
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field

import numpy as np

from polybundle.errors import ConversionError
from polybundle.model.backend import TensorSpec
from polybundle.model.canonical import FILL_SLOTS, slot_sizes
from polybundle.model.graph import INPUT, OpGraph

Signature = Hashable
"""What a layer is, framework-free: its kind and its tensors' sizes."""


@dataclass
class Pairing:
    """Which source layer pairs with which target layer, and what was left over.

    Example:
        >>> Pairing([("fc", "dense")]).pairs
        [('fc', 'dense')]
    """

    pairs: list[tuple[str, str]]
    unmatched_source: list[str] = field(default_factory=list)
    unmatched_target: list[str] = field(default_factory=list)
    ties: int = 0
    """How many pairs only definition order decided (structurally identical layers)."""
    by_order: int = 0
    """How many layers the graphs left unmatched, then paired in definition order."""


def _refine(graph: OpGraph, start: dict[int, int]) -> tuple[dict[int, list[int]],
                                                           dict[int, list[int]]]:
    preds = {op: list(sources) for op, sources in graph.weighted_inputs().items()}
    succs: dict[int, list[int]] = {op: [] for op in start}
    for op, sources in preds.items():
        for source in sources:
            succs.setdefault(source, []).append(op)
    return preds, succs


def match_graphs(
    source: OpGraph,
    target: OpGraph,
    source_signatures: Mapping[str, Signature],
    target_signatures: Mapping[str, Signature],
    *,
    pinned: Mapping[str, str] | None = None,
) -> Pairing:
    """Pair the weighted ops of ``source`` with those of ``target`` (see the module doc).

    ``*_signatures`` map each layer name to what the layer is (kind and
    tensor sizes); only layers in them take part. ``pinned`` fixes pairs
    (source layer -> target layer). Returns the pairs in source execution
    order and the layers no partner was found for.

    Example:
        >>> from polybundle.model.graph import Op, OpGraph
        >>> one = OpGraph([Op(0, None, "input", (), (1, 4), None),
        ...                Op(1, "fc", "dense", (0,), (1, 2), None)])
        >>> other = OpGraph([Op(0, None, "input", (), (1, 4), None),
        ...                  Op(1, "conv", "conv2d", (0,), (1, 2), None)])
        >>> pairing = match_graphs(one, other, {"fc": "dense"}, {"conv": "conv2d"})
        >>> pairing.pairs, pairing.unmatched_source, pairing.unmatched_target
        ([], ['fc'], ['conv'])
    """
    pinned = dict(pinned or {})
    pinned_back = {target_name: source_name for source_name, target_name in pinned.items()}
    sides = []
    for graph, signatures, pins in ((source, source_signatures, pinned),
                                    (target, target_signatures, pinned_back)):
        ops = [op for op in graph.weighted_ops() if op.name in signatures]
        label: dict[int, Hashable] = {}
        for index, op_id in enumerate(graph.inputs):
            label[op_id] = (INPUT, index)
        for op in ops:
            if op.name in pins:  # keyed by the source layer's name on both sides
                label[op.id] = ("pinned", op.name if graph is source else pins[op.name])
            else:
                label[op.id] = signatures[op.name]
        preds, succs = _refine(graph, label)
        sides.append((graph, ops, label, preds, succs))
    labels = [side[2] for side in sides]
    distinct = -1
    for _ in range(len(source.ops) + len(target.ops) + 1):
        new_labels = []
        for (_, _, _, preds, succs), label in zip(sides, labels, strict=True):
            new_labels.append({
                op: hash((label[op],
                          tuple(sorted(hash(label[p]) for p in preds.get(op, ()) if p in label)),
                          tuple(sorted(hash(label[s]) for s in succs.get(op, ()) if s in label))))
                for op in label
            })
        count = len(set(new_labels[0].values()) | set(new_labels[1].values()))
        labels = new_labels
        if count == distinct:
            break
        distinct = count
    groups: dict[Hashable, tuple[list[str], list[str]]] = {}
    definition = [{name: index for index, name in enumerate(signatures)}
                  for signatures in (source_signatures, target_signatures)]
    for side, ((_, ops, _, _, _), label) in enumerate(zip(sides, labels, strict=True)):
        for op in sorted(ops, key=lambda op: definition[side][op.name]):  # the tie-break
            groups.setdefault(label[op.id], ([], []))[side].append(op.name)
    pairs: dict[str, str] = {}
    unmatched_source: list[str] = []
    unmatched_target: list[str] = []
    ties = 0
    for source_names, target_names in groups.values():
        for source_name, target_name in zip(source_names, target_names, strict=False):
            pairs[source_name] = target_name
        if min(len(source_names), len(target_names)) > 1:
            ties += min(len(source_names), len(target_names))
        unmatched_source += source_names[len(target_names):]
        unmatched_target += target_names[len(source_names):]
    order = {op.name: index for index, op in enumerate(sides[0][1])}
    return Pairing(
        sorted(pairs.items(), key=lambda pair: order[pair[0]]),
        sorted(unmatched_source, key=order.__getitem__),
        unmatched_target,
        ties,
    )


def layer_signatures(specs: list[TensorSpec]) -> dict[str, Signature]:
    """Return, per layer of a canonical kind, what it is: its kind and tensors' sizes.

    Slots only some frameworks hold (a batch norm's count) are left out, and
    sizes are element counts, which every layout of a tensor shares.

    Example:
        >>> layer_signatures([TensorSpec("fc.weight", "fc.weight", (4, 3), "float32",
        ...                              "out,in", "dense", "fc", "kernel")])
        {'fc': ('dense', (('kernel', 12),))}
    """
    slots: dict[str, dict[str, int]] = {}
    kinds: dict[str, str] = {}
    for spec in specs:
        if not spec.kind or (spec.kind, spec.slot) in FILL_SLOTS:
            if spec.kind:
                kinds.setdefault(spec.layer, spec.kind)
            continue
        kinds.setdefault(spec.layer, spec.kind)
        size = int(np.prod(spec.shape, dtype=np.int64))
        slots.setdefault(spec.layer, {}).update(slot_sizes(spec.kind, spec.slot, size))
    return {layer: (kind, tuple(sorted(slots.get(layer, {}).items())))
            for layer, kind in kinds.items()}


def feature_reorder(
    source: tuple[tuple[str, int], ...] | None, target: tuple[tuple[str, int], ...] | None,
    *, where: str,
) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """Return how a dense kernel's input features move from ``source`` to ``target`` order.

    ``source`` and ``target`` are the atoms of the layer's input feature axis
    in each traced graph (:meth:`OpGraph.feature_atoms`). Atoms of size one
    are ignored; None means no move. Raises :class:`ConversionError` naming
    ``where`` when a side's trace does not determine the order and the other
    side's features are a flattened map, or when the atoms differ.

    Example:
        >>> feature_reorder((("c", 4), ("h", 2), ("w", 2)), (("h", 2), ("w", 2), ("c", 4)),
        ...                 where="fc")
        ((4, 2, 2), (1, 2, 0))
        >>> feature_reorder((("c", 4), ("h", 1), ("w", 1)), (("f", 4),), where="fc") is None
        True
    """
    def atoms(found: tuple[tuple[str, int], ...] | None) -> list[tuple[str, int]] | None:
        return None if found is None else [(a, n) for a, n in found if n != 1]

    src, dst = atoms(source), atoms(target)
    if src is None or dst is None:
        known = src if src is not None else dst
        if known is not None and len(known) <= 1:
            return None
        raise ConversionError(
            f"{where}: the trace does not determine the order of this dense layer's input "
            f"features (source {_atoms_text(source)}, target {_atoms_text(target)}); a "
            "flattened feature map must be reordered exactly or not at all, and polybundle does "
            "not guess. Trace both models (register the source builder, pass example_inputs=), "
            "flatten with an op the framework's trace sees (a Flatten layer or function), or "
            "register an explicit map with the permuted kernel."
        )
    if len(src) <= 1 and len(dst) <= 1:
        return None
    if sorted(src) != sorted(dst) or len(set(src)) != len(src):
        raise ConversionError(
            f"{where}: this dense layer reads features {_atoms_text(source)} in the source and "
            f"{_atoms_text(target)} in the target; expected the same feature map in both. "
            "Check that both models compute the same thing before the dense layer."
        )
    order = tuple(src.index(atom) for atom in dst)
    if order == tuple(range(len(order))):
        return None
    return tuple(n for _, n in src), order


def _atoms_text(atoms: tuple[tuple[str, int], ...] | None) -> str:
    if atoms is None:
        return "unknown"
    return "(" + ",".join(f"{a}={n}" for a, n in atoms) + ")"


def _pair_leftovers(pairing: Pairing, source_signatures: Mapping[str, Signature],
                    target_signatures: Mapping[str, Signature]) -> None:
    """Pair, in definition order, the layers the graphs left unmatched (never called, reached
    through code a trace could not see, or placed differently), when both sides have the
    same such layers; the conversion's numerical check verifies the result."""
    left = [name for name in source_signatures if name in set(pairing.unmatched_source)
            or name not in {s for s, _ in pairing.pairs}]
    right = [name for name in target_signatures if name in set(pairing.unmatched_target)
             or name not in {t for _, t in pairing.pairs}]
    pairing.unmatched_source, pairing.unmatched_target = left, right
    if not left or len(left) != len(right) or any(  # same kinds: sizes the plan checks
            _kind(source_signatures[a]) != _kind(target_signatures[b])
            for a, b in zip(left, right, strict=True)):
        return
    pairing.pairs += list(zip(left, right, strict=True))
    pairing.by_order = len(left)
    pairing.unmatched_source, pairing.unmatched_target = [], []


def _kind(signature: Signature) -> Hashable:
    return signature[0] if isinstance(signature, tuple) else signature


def graph_pairing(
    source: OpGraph, target: OpGraph, source_specs: list[TensorSpec],
    target_specs: list[TensorSpec], *, pinned: Mapping[str, str] | None = None,
) -> tuple[Pairing, dict[str, tuple[tuple[int, ...], tuple[int, ...]]]]:
    """Pair the layers of two traced models and derive each dense kernel's feature move.

    Returns the :class:`Pairing` and ``{source dense layer: reorder}`` for
    :func:`polybundle.model.conversion.plan_conversion`.

    Example:
        >>> from polybundle.model.graph import Op, OpGraph
        >>> spec = TensorSpec("w", "w", (2, 4), "float32", "out,in", "dense", "fc", "kernel")
        >>> axes = ((("n", 1),), (("x0", 4),))
        >>> one = OpGraph([Op(0, None, "input", (), (1, 4), axes),
        ...                Op(1, "fc", "Linear", (0,), (1, 2), None, input_axes=axes)])
        >>> graph_pairing(one, one, [spec], [spec])[0].pairs
        [('fc', 'fc')]
    """
    source_signatures = layer_signatures(source_specs)
    target_signatures = layer_signatures(target_specs)
    source = source.with_parts(list(source_signatures))
    target = target.with_parts(list(target_signatures))
    pairing = match_graphs(source, target, source_signatures, target_signatures, pinned=pinned)
    _pair_leftovers(pairing, source_signatures, target_signatures)
    source_ops = {op.name: op for op in source.weighted_ops()}
    target_ops = {op.name: op for op in target.weighted_ops()}
    reorders = {}
    for source_name, target_name in pairing.pairs:
        if source_signatures[source_name][0] != "dense":
            continue
        move = feature_reorder(source.feature_atoms(source_ops[source_name].id),
                               target.feature_atoms(target_ops[target_name].id),
                               where=f"dense layer {source_name!r} -> {target_name!r}")
        if move is not None:
            reorders[source_name] = move
    return pairing, reorders
