"""Convert a model's tensors between backends: plan, check, then apply.

A :class:`ConversionPlan` pairs each source tensor with a target tensor by
structure: layers (tensors sharing a ``layer``) are taken in model order and
must have the same canonical kind; inside a layer, tensors pair by slot; the
layout tags give the rearrangement. Names are never compared. A slot only one
framework has (a batch norm's update ``count``) is dropped or filled as
:data:`polybundle.model.canonical.FILL_SLOTS` says; a fused slot (PyTorch's stacked
query, key and value projections, :data:`~polybundle.model.canonical.FUSED_SLOTS`)
is split into the target's parts, or merged from the source's. Anything else -- a layer of no
canonical kind, layers that do not line up, a shape that does not fit -- is a
problem the plan lists, and :meth:`ConversionPlan.check` raises on before any
model is touched. An architecture can register an explicit map for tensors
the canonical kinds do not cover (:func:`polybundle.register_tensor_map`); the
registry keeps the maps and the caller passes the one that applies as ``mapping``.

Example:
    >>> source = [TensorSpec("fc.weight", "fc.weight", (4, 3), "float32", "out,in",
    ...                      "dense", "fc", "kernel")]
    >>> target = [TensorSpec("d/kernel", "k", (3, 4), "float32", "in,out", "dense", "d", "kernel")]
    >>> plan = plan_conversion(source, target)
    >>> plan.check()
    >>> plan.apply({"fc.weight": np.arange(12.0).reshape(4, 3)})["d/kernel"].shape
    (3, 4)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from polybundle.errors import ConversionError, TensorMismatchError
from polybundle.model.backend import TensorSpec
from polybundle.model.canonical import (
    FILL_SLOTS,
    FUSED_SLOTS,
    check_relayout,
    describe_relayout,
    part_layout,
    relayout,
)
from polybundle.model.layouts import OPAQUE

TensorMap = dict[str, "str | tuple[str, str, str] | None"]
"""``{source name: target name}`` or ``{source name: (target name, source tag, target tag)}``;
None drops the tensor, and a key ``"re:<regex>"`` maps every name it matches
(:func:`expand_mapping`)."""


@dataclass(frozen=True)
class TensorMove:
    """What happens to one tensor: ``relayout`` (source -> target), ``fill``, ``drop``,
    ``split`` (one part of a fused source) or ``merge`` (several sources into one fused target).

    Example:
        >>> TensorMove("relayout", "fc.weight", "fc/kernel", "dense", "kernel",
        ...            "out,in", "in,out", (3, 4), "transpose (1, 0)").action
        'relayout'
    """

    action: str
    source: str | None
    target: str | None
    kind: str
    slot: str
    source_layout: str
    target_layout: str
    target_shape: tuple[int, ...] | None
    detail: str
    target_dtype: str = "float32"
    reorder: tuple[tuple[int, ...], tuple[int, ...]] | None = None
    """A dense kernel's ``in`` axis holds merged atoms (a flattened feature map) that the
    target orders differently: their sizes in source order, and the order to move them to."""
    part: tuple[int, int] | None = None
    """For ``split``: (index, count) -- the source stacks ``count`` equal parts along its
    first axis (a fused slot, :data:`~polybundle.model.canonical.FUSED_SLOTS`) and this
    move takes part ``index``; ``source_layout`` is then one part's tag."""
    merged: tuple[str, ...] = ()
    """For ``merge``: the source tensors, in order (the first is ``source``), whose
    converted forms stack along the target's first axis into one fused tensor."""

    def convert(self, array: np.ndarray, *, name: str = "") -> np.ndarray:
        """Return ``array`` (the source tensor, or a slot of it) as the target holds it.

        A ``split`` move takes its part of ``array`` first. A ``merge`` move needs
        all its sources: use :meth:`merge`.

        Example:
            >>> move = TensorMove("relayout", "fc.weight", "d/kernel", "dense", "kernel",
            ...                   "out,in", "in,out", (4, 1), "", reorder=((2, 2), (1, 0)))
            >>> move.convert(np.arange(4.0).reshape(1, 4)).ravel().tolist()
            [0.0, 2.0, 1.0, 3.0]
            >>> key = TensorMove("split", "in_proj_bias", "key/bias", "attention", "key_bias",
            ...                  "head*dim", "head,dim", (2, 1), "", part=(1, 3))
            >>> key.convert(np.arange(6.0)).tolist()
            [[2.0], [3.0]]
        """
        if self.action == "merge":
            raise ConversionError(
                f"{self.target} is made of several source tensors {list(self.merged)}, but one "
                "array was given; expected all of them. Convert it with TensorMove.merge."
            )
        array = np.asarray(array)
        if self.part is not None:
            index, count = self.part
            if not array.shape or array.shape[0] % count:
                raise TensorMismatchError(mismatched=[
                    f"{name or self.source} (shape {array.shape} does not hold {count} equal "
                    "parts along its first axis)"])
            array = np.split(array, count, axis=0)[index]
        if self.reorder is not None:
            sizes, order = self.reorder
            axis = self.source_layout.split(",").index("in")
            shape = array.shape
            split = array.reshape(*shape[:axis], *sizes, *shape[axis + 1:])
            moved = np.transpose(split, (*range(axis), *(axis + i for i in order),
                                         *range(axis + len(sizes), split.ndim)))
            array = np.ascontiguousarray(moved).reshape(shape)
        return relayout(array, self.source_layout, self.target_layout, self.target_shape or (),
                        name=name or str(self.source))

    def merge(self, arrays: list[np.ndarray], *, name: str = "") -> np.ndarray:
        """Return the fused target tensor of a ``merge`` move from its sources' ``arrays``.

        Each source is rearranged into one part of the target, and the parts
        are stacked along the target's first axis.

        Example:
            >>> move = TensorMove("merge", "q/bias", "in_proj_bias", "attention", "qkv_bias",
            ...                   "head,dim", "head*dim", (6,), "",
            ...                   merged=("q/bias", "k/bias", "v/bias"))
            >>> move.merge([np.full((2, 1), n) for n in (0.0, 1.0, 2.0)]).tolist()
            [0.0, 0.0, 1.0, 1.0, 2.0, 2.0]
        """
        shape = tuple(self.target_shape or ())
        count = len(self.merged)
        if len(arrays) != count or not shape or shape[0] % count:
            raise TensorMismatchError(mismatched=[
                f"{name or self.target} (shape {shape} cannot stack the {len(arrays)} arrays "
                f"given as {count} equal parts)"])
        part = (shape[0] // count, *shape[1:])
        return np.concatenate([
            relayout(np.asarray(array), self.source_layout, self.target_layout, part,
                     name=source)
            for array, source in zip(arrays, self.merged, strict=True)], axis=0)


@dataclass
class ConversionPlan:
    """Every tensor's move, and the problems that forbid the conversion.

    Example:
        >>> bias = TensorSpec("fc.bias", "fc.bias", (4,), "float32", "out", "dense", "fc", "bias")
        >>> plan = plan_conversion([bias], [])
        >>> plan.ok, plan.misaligned
        (False, ["source layer 'fc' (dense) has no target layer"])
    """

    moves: list[TensorMove] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    unmapped: list[str] = field(default_factory=list)
    misaligned: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Return True when the plan has no problem."""
        return not (self.missing or self.unexpected or self.unmapped or self.misaligned
                    or self.mismatched)

    def check(self, context: str = "") -> None:
        """Raise the typed error for the plan's problems, if any.

        Unmapped or misaligned layers raise :class:`ConversionError`; missing,
        unexpected or ill-fitting tensors :class:`TensorMismatchError`.

        Example:
            >>> ConversionPlan().check()
        """
        where = f"{context}: " if context else ""
        if self.unmapped or self.misaligned:
            details = []
            if self.unmapped:
                unmapped = ", ".join(self.unmapped)
                details.append(f"tensors of layers with no canonical kind: {unmapped}")
            if self.misaligned:
                details.append("layers that do not line up: " + "; ".join(self.misaligned))
            raise ConversionError(
                f"{where}cannot convert ({'; '.join(details)}). Found layers polybundle has no "
                "canonical form for, or models whose layers differ; expected the same "
                "architecture in both frameworks. Register an explicit map with "
                "polybundle.register_tensor_map(architecture, source=..., target=..., "
                "mapping={source name: target name})."
            )
        if self.missing or self.unexpected or self.mismatched:
            raise TensorMismatchError(
                missing=self.missing, unexpected=self.unexpected, mismatched=self.mismatched,
                context=f"{context} (converted)" if context else "converted weights",
            )

    def apply(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Return ``{target name: array}`` from ``{source name: array}``; the plan must be ok.

        Example:
            >>> bias = TensorSpec("fc.bias", "fc.bias", (2,), "float32", "out", "dense", "fc",
            ...                   "bias")
            >>> target = TensorSpec("d/bias", "d/bias", (2,), "float32", "out", "dense", "d",
            ...                     "bias")
            >>> plan_conversion([bias], [target]).apply({"fc.bias": np.ones(2)})
            {'d/bias': array([1., 1.])}
        """
        self.check()
        out: dict[str, np.ndarray] = {}
        for move in self.moves:
            if move.action in ("relayout", "split"):
                assert move.source is not None and move.target is not None
                if move.target_shape is None:
                    raise ConversionError(
                        f"{move.source} -> {move.target} was planned without the target model, "
                        "so its shape is unknown; expected a plan made from the built model. "
                        "Plan with the model's own tensor specs to apply it."
                    )
                out[move.target] = move.convert(arrays[move.source])
            elif move.action == "merge":
                assert move.target is not None
                out[move.target] = move.merge([arrays[source] for source in move.merged])
            elif move.action == "fill":
                assert move.target is not None
                value = FILL_SLOTS[(move.kind, move.slot)]
                out[move.target] = np.full(move.target_shape or (), value, dtype=move.target_dtype)
        return out


@dataclass
class _Layer:
    name: str
    kind: str
    slots: dict[str, TensorSpec]


def _layers(specs: list[TensorSpec]) -> tuple[list[_Layer], list[TensorSpec]]:
    """Group canonical specs by layer, in order; return them and the specs of no kind."""
    layers: dict[str, _Layer] = {}
    unknown = []
    for spec in specs:
        if not spec.kind:
            unknown.append(spec)
            continue
        layer = layers.setdefault(spec.layer, _Layer(spec.layer, spec.kind, {}))
        layer.slots[spec.slot] = spec
    return list(layers.values()), unknown


def _relayout_move(source: TensorSpec, target: TensorSpec, plan: ConversionPlan,
                   tags: tuple[str, str] | None = None, *, sized: bool = True,
                   source_shape: tuple[int, ...] | None = None,
                   target_shape: tuple[int, ...] | None = None) -> None:
    source_tag, target_tag = tags or (source.layout, target.layout)
    source_shape = source.shape if source_shape is None else source_shape
    target_shape = target.shape if target_shape is None else target_shape
    if not sized:  # planned without a model: the axes must match, the sizes are not known
        detail = describe_relayout(source_tag, target_tag)
        if OPAQUE in (source_tag, target_tag) or detail == "impossible":
            plan.mismatched.append(f"{source.name} -> {target.name}: layouts {source_tag!r} and "
                                   f"{target_tag!r} name different axes")
            return
        plan.moves.append(
            TensorMove("relayout", source.name, target.name, target.kind or source.kind,
                       target.slot or source.slot, source_tag, target_tag, None,
                       f"{detail} (sizes from the built model)", target.dtype)
        )
        return
    try:
        check_relayout(source_tag, target_tag, source_shape, target_shape, name=source.name)
    except TensorMismatchError as exc:
        plan.mismatched.extend(f"{source.name} -> {target.name}: {m}" for m in exc.mismatched)
        return
    plan.moves.append(
        TensorMove("relayout", source.name, target.name, target.kind or source.kind,
                   target.slot or source.slot, source_tag, target_tag, target_shape,
                   describe_relayout(source_tag, target_tag), target.dtype)
    )


def _fused_moves(source: _Layer, target: _Layer, plan: ConversionPlan,
                 unsized: frozenset[str]) -> set[str]:
    """Split each fused source slot whose parts the target keeps apart, merge the other
    way; return the slots (of either side) these moves consumed."""
    done: set[str] = set()
    for (kind, fused), parts in FUSED_SLOTS.items():
        if kind != source.kind:
            continue
        src, dst = source.slots.get(fused), target.slots.get(fused)
        if src is not None and dst is None and all(p in target.slots for p in parts):
            for index, part in enumerate(parts):
                before = len(plan.moves)
                _relayout_move(src, target.slots[part], plan,
                               (part_layout(src.layout), target.slots[part].layout),
                               sized=target.slots[part].name not in unsized,
                               source_shape=_part_shape(src.shape, len(parts)))
                if len(plan.moves) > before:
                    plan.moves[-1] = replace(plan.moves[-1], action="split",
                                             part=(index, len(parts)),
                                             detail=f"part {index + 1} of {len(parts)}, "
                                             f"{plan.moves[-1].detail}")
            done.update((fused, *parts))
        elif dst is not None and src is None and all(p in source.slots for p in parts):
            first = source.slots[parts[0]]
            before = len(plan.moves)
            for part in parts:  # every part must fit one part of the target
                _relayout_move(source.slots[part], dst, plan,
                               (first.layout, part_layout(dst.layout)),
                               sized=dst.name not in unsized,
                               target_shape=_part_shape(dst.shape, len(parts)))
            if len(plan.moves) == before + len(parts):
                del plan.moves[before + 1:]
                names = tuple(source.slots[part].name for part in parts)
                plan.moves[-1] = replace(
                    plan.moves[-1], action="merge", merged=names,
                    target_layout=part_layout(dst.layout),
                    target_shape=dst.shape if dst.name not in unsized else None,
                    detail=f"{len(parts)} parts stacked, each {plan.moves[-1].detail}")
            done.update((fused, *parts))
    return done


def _part_shape(shape: tuple[int, ...], count: int) -> tuple[int, ...]:
    """The shape of one of ``count`` parts stacked along the first axis of ``shape``."""
    return (shape[0] // count, *shape[1:]) if shape else shape


def _pair_layer(
    source: _Layer, target: _Layer, plan: ConversionPlan, unsized: frozenset[str],
    reorder: tuple[tuple[int, ...], tuple[int, ...]] | None = None,
) -> None:
    fused = _fused_moves(source, target, plan, unsized)
    for slot in [*source.slots, *(s for s in target.slots if s not in source.slots)]:
        if slot in fused:
            continue
        src, dst = source.slots.get(slot), target.slots.get(slot)
        if src is not None and dst is not None:
            _relayout_move(src, dst, plan, sized=dst.name not in unsized)
            if reorder is not None and slot == "kernel" and plan.moves and (
                    plan.moves[-1].source == src.name):
                sizes, order = reorder
                plan.moves[-1] = replace(
                    plan.moves[-1], reorder=reorder,
                    detail=f"{plan.moves[-1].detail}; input features reordered "
                    f"{'x'.join(map(str, sizes))} by {order}")
        elif src is not None and (source.kind, slot) in FILL_SLOTS:
            plan.moves.append(TensorMove("drop", src.name, None, src.kind, slot, src.layout, "",
                                         None, "no counterpart in the target; dropped"))
        elif dst is not None and (target.kind, slot) in FILL_SLOTS:
            value = FILL_SLOTS[(target.kind, slot)]
            plan.moves.append(TensorMove("fill", None, dst.name, dst.kind, slot, "", dst.layout,
                                         dst.shape, f"no counterpart in the source; filled with "
                                         f"{value}", dst.dtype))
        elif src is not None:
            plan.unexpected.append(src.name)
        elif dst is not None:
            plan.missing.append(dst.name)


PATTERN = "re:"
"""Prefix of an explicit map's key that is a regular expression over source tensor names."""


def expand_mapping(mapping: TensorMap | None, source: list[TensorSpec]) -> TensorMap:
    r"""Return ``mapping`` with its pattern entries resolved against the ``source`` names.

    A key ``"re:<regex>"`` maps every source tensor whose name the regex
    matches whole (and that no plain key names) to its value with the groups
    filled in (``\1``); a value of None drops the tensor (a buffer the target
    has no counterpart for, such as ``num_batches_tracked``).

    Example:
        >>> specs = [TensorSpec(n, n, (2,), "float32", "out") for n in ("a.bias", "b.bias")]
        >>> expand_mapping({r"re:(\w)\.bias": r"\1/bias", "b.bias": None}, specs)
        {'b.bias': None, 'a.bias': 'a/bias'}
    """
    mapping = dict(mapping or {})
    plain = {key: value for key, value in mapping.items() if not key.startswith(PATTERN)}
    patterns = [(re.compile(key[len(PATTERN):]), value) for key, value in mapping.items()
                if key.startswith(PATTERN)]
    for spec in source:
        if spec.name in plain:
            continue
        for pattern, value in patterns:
            found = pattern.fullmatch(spec.name)
            if found is None:
                continue
            if value is None or isinstance(value, str):
                plain[spec.name] = value if value is None else found.expand(value)
            else:
                plain[spec.name] = (found.expand(value[0]), value[1], value[2])
            break
    return plain


def _leftover_fills(layers: list[_Layer], touched: set[str], plan: ConversionPlan, *,
                    source: bool) -> list[_Layer]:
    """Drop or fill the lone fill-slots of layers an explicit map took; return the others."""
    kept = []
    for layer in layers:
        if layer.name in touched and all((layer.kind, slot) in FILL_SLOTS for slot in layer.slots):
            for slot, spec in layer.slots.items():
                if source:
                    plan.moves.append(TensorMove("drop", spec.name, None, spec.kind, slot,
                                                 spec.layout, "", None,
                                                 "no counterpart in the target; dropped"))
                else:
                    plan.moves.append(TensorMove(
                        "fill", None, spec.name, spec.kind, slot, "", spec.layout, spec.shape,
                        f"no counterpart in the source; filled with "
                        f"{FILL_SLOTS[(spec.kind, slot)]}", spec.dtype))
            continue
        kept.append(layer)
    return kept


def plan_conversion(
    source: list[TensorSpec], target: list[TensorSpec], *, mapping: TensorMap | None = None,
    unsized: frozenset[str] = frozenset(),
    pairs: list[tuple[str, str]] | None = None,
    reorders: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] | None = None,
) -> ConversionPlan:
    """Pair ``source`` tensors with ``target`` tensors by structure; list every problem.

    ``pairs`` gives the layer pairs (source layer, target layer), as the graph
    matcher found them (:mod:`polybundle.model.matching`); without it, layers
    pair in model order. ``reorders`` gives, per source dense layer, how its
    kernel's input features move (a flattened feature map, see
    :attr:`TensorMove.reorder`). ``mapping`` pins tensors explicitly (see
    :func:`expand_mapping`); the tensors it leaves pair as above.
    ``unsized`` names target tensors whose shape is not known (a plan made
    without building the target model): only their axes are checked, and
    their move has no target shape, so such a plan is shown, never applied.

    Example:
        >>> src = [TensorSpec("fc.weight", "fc.weight", (4, 3), "float32", "out,in",
        ...                   "dense", "fc", "kernel")]
        >>> dst = [TensorSpec("d/kernel", "k", (3, 4), "float32", "in,out", "dense", "d", "kernel")]
        >>> plan_conversion(src, dst).moves[0].detail
        'transpose (1, 0)'
        >>> plan_conversion(src, dst, pairs=[]).misaligned
        ["source layer 'fc' (dense) has no counterpart in the target", \
"target layer 'd' (dense) has no counterpart in the source"]
    """
    plan = ConversionPlan()
    explicit = expand_mapping(mapping, source)
    sources = {spec.name: spec for spec in source}
    targets = {spec.name: spec for spec in target}
    mapped_targets: set[str] = set()
    touched: set[str] = set()
    for name, entry in explicit.items():
        src = sources.get(name)
        if src is not None and entry is None:
            touched.add(src.layer)
            plan.moves.append(TensorMove("drop", src.name, None, src.kind, src.slot, src.layout,
                                         "", None, "dropped by the explicit map"))
            continue
        target_name, tags = (entry, None) if isinstance(entry, str) else (entry[0], entry[1:])
        dst = targets.get(target_name)
        if src is None or dst is None:
            plan.mismatched.append(f"explicit map {name!r} -> {target_name!r} names a tensor "
                                   "that does not exist")
            continue
        mapped_targets.add(dst.name)
        touched.update((src.layer, dst.layer))
        _relayout_move(src, dst, plan, tags)
    source_layers, source_unknown = _layers([s for s in source if s.name not in explicit])
    target_layers, target_unknown = _layers([t for t in target if t.name not in mapped_targets])
    source_layers = _leftover_fills(source_layers, touched, plan, source=True)
    target_layers = _leftover_fills(target_layers, touched, plan, source=False)
    plan.unmapped.extend(s.name for s in source_unknown)
    plan.missing.extend(t.name for t in target_unknown)
    if pairs is None:
        _pair_in_order(source_layers, target_layers, plan, unsized)
        return plan
    by_source = {layer.name: layer for layer in source_layers}
    by_target = {layer.name: layer for layer in target_layers}
    for source_name, target_name in pairs:
        src, dst = by_source.pop(source_name, None), by_target.pop(target_name, None)
        if src is None or dst is None:
            continue
        if src.kind != dst.kind:
            plan.misaligned.append(f"source {src.name!r} is {src.kind}, its partner in the "
                                   f"target's graph {dst.name!r} is {dst.kind}")
            continue
        _pair_layer(src, dst, plan, unsized, (reorders or {}).get(src.name))
    for src in by_source.values():
        plan.misaligned.append(f"source layer {src.name!r} ({src.kind}) has no counterpart in "
                               "the target")
    for dst in by_target.values():
        plan.misaligned.append(f"target layer {dst.name!r} ({dst.kind}) has no counterpart in "
                               "the source")
    return plan


def _pair_in_order(source_layers: list[_Layer], target_layers: list[_Layer],
                   plan: ConversionPlan, unsized: frozenset[str]) -> None:
    """Pair layers in model order (no graph): the i-th with the i-th, of the same kind."""
    for index, (src, dst) in enumerate(zip(source_layers, target_layers, strict=False)):
        if src.kind != dst.kind:
            plan.misaligned.append(
                f"layer #{index}: source {src.name!r} is {src.kind}, target {dst.name!r} is "
                f"{dst.kind}"
            )
            continue
        _pair_layer(src, dst, plan, unsized)
    for src in source_layers[len(target_layers):]:
        plan.misaligned.append(f"source layer {src.name!r} ({src.kind}) has no target layer")
    for dst in target_layers[len(source_layers):]:
        plan.misaligned.append(f"target layer {dst.name!r} ({dst.kind}) has no source layer")


def plan_rows(plan: ConversionPlan) -> list[dict[str, Any]]:
    """Return the plan as table rows (source, target, kind, slot, layouts, shape, action).

    Example:
        >>> plan_rows(ConversionPlan())
        []
    """
    return [
        {
            "source": move.source or "-",
            "target": move.target or "-",
            "kind": move.kind,
            "slot": move.slot,
            "layout": f"{move.source_layout or '-'} -> {move.target_layout or '-'}",
            "shape": list(move.target_shape) if move.target_shape is not None else None,
            "action": move.action,
            "detail": move.detail,
        }
        for move in plan.moves
    ]
