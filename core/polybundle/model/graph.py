"""A neutral dataflow graph of a model, as a backend traced it on a sample input.

Backends build an :class:`OpGraph` in :meth:`Backend.trace
<polybundle.model.backend.Backend.trace>`: one :class:`Op` per layer call
(weighted layers named as their tensors' ``layer``, so the graph and the tensor
specs meet), with the ops that feed it, the shape of what it computes and the
meaning of each axis of that activation (:data:`Axes`). The core reads the
graph to pair layers (:mod:`polybundle.model.matching`), to derive layout
changes such as the input axis of a dense layer after a ``Flatten``, and to
say which axes each model input has. Nothing here knows a framework.

An activation's axes are a tuple with one entry per axis; each entry is the
atoms merged into that axis, major first, each ``(name, size)``. A channels-first
image batch is ``(("n", 2),), (("c", 3),), (("h", 8),), (("w", 8),)``; after a
``Flatten`` it is ``(("n", 2),), (("c", 3), ("h", 8), ("w", 8))``. ``None`` means
the trace could not tell.

Example:
    >>> conv = Op(1, "features.0", "conv2d", (0,), (2, 4, 8, 8),
    ...           image_axes(2, 4, (8, 8), channels_first=True))
    >>> flat = Op(2, None, "flatten", (1,), (2, 256), flatten_axes(conv.axes))
    >>> dense = Op(3, "fc", "dense", (2,), (2, 10), None, input_axes=flat.axes)
    >>> graph = OpGraph([Op(0, None, "input", (), (2, 4, 8, 8), None), conv, flat, dense])
    >>> [atom for atom, _ in graph.feature_atoms(3)]
    ['c', 'h', 'w']
    >>> graph.weighted_inputs()[3]
    (1,)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

Axes = tuple[tuple[tuple[str, int], ...], ...]
"""The meaning of an activation's axes: per axis, the ``(atom, size)`` merged into it."""

INPUT = "input"
"""Kind of the op that stands for one model input (in call order)."""

SPATIAL = ("d", "h", "w")


def image_axes(batch: int, channels: int, spatial: Sequence[int], *,
               channels_first: bool) -> Axes:
    """Return the axes of an image batch: ``n,c,<spatial>`` or ``n,<spatial>,c``.

    Example:
        >>> [axis[0][0] for axis in image_axes(1, 3, (4, 4), channels_first=False)]
        ['n', 'h', 'w', 'c']
    """
    names = SPATIAL[3 - len(spatial):]
    space = tuple(((name, int(size)),) for name, size in zip(names, spatial, strict=True))
    channel = (("c", int(channels)),)
    body = (channel, *space) if channels_first else (*space, channel)
    return (((("n", int(batch)),)), *body)


def flatten_axes(axes: Axes | None, start: int = 1) -> Axes | None:
    """Return ``axes`` with every axis from ``start`` on merged into one (None stays None).

    Example:
        >>> flatten_axes(image_axes(2, 3, (2, 2), channels_first=True))[1]
        (('c', 3), ('h', 2), ('w', 2))
    """
    if axes is None:
        return None
    merged = tuple(atom for axis in axes[start:] for atom in axis)
    return (*axes[:start], merged)


def permute_axes(axes: Axes | None, order: Sequence[int]) -> Axes | None:
    """Return ``axes`` reordered as a transpose by ``order`` reorders an array.

    Example:
        >>> nchw = image_axes(1, 3, (4, 4), channels_first=True)
        >>> permute_axes(nchw, (0, 2, 3, 1)) == image_axes(1, 3, (4, 4), channels_first=False)
        True
    """
    if axes is None or sorted(order) != list(range(len(axes))):
        return None
    return tuple(axes[i] for i in order)


def resized_axes(axes: Axes | None, shape: Sequence[int]) -> Axes | None:
    """Return ``axes`` with each single-atom axis resized to ``shape`` (same rank, same
    meaning); None when the rank differs or a merged axis no longer fits.

    Example:
        >>> resized_axes(image_axes(1, 3, (8, 8), channels_first=True), (1, 16, 4, 4))[1:]
        ((('c', 16),), (('h', 4),), (('w', 4),))
        >>> resized_axes(image_axes(1, 3, (8, 8), channels_first=True), (1, 16)) is None
        True
    """
    if axes is None or len(axes) != len(shape):
        return None
    out = []
    for axis, size in zip(axes, shape, strict=True):
        if len(axis) == 1:
            out.append(((axis[0][0], int(size)),))
        elif math.prod(n for _, n in axis) == size:
            out.append(axis)
        else:
            return None
    return tuple(out)


def input_atom(index: int, axis: int) -> str:
    """Return the atom naming axis ``axis`` of model input ``index`` (``in0.1``).

    Example:
        >>> input_atom(0, 1)
        'in0.1'
    """
    return f"in{index}.{axis}"


def input_axes_of(index: int, shape: Sequence[int]) -> Axes:
    """Return the axes of model input ``index`` of ``shape``: one input atom per axis.

    Example:
        >>> input_axes_of(0, (2, 4))
        ((('in0.0', 2),), (('in0.1', 4),))
    """
    return tuple(((input_atom(index, k), int(n)),) for k, n in enumerate(shape))


def layout_tag(axes: Axes | None) -> str:
    """Return ``axes`` as a layout tag (``n,c,h,w``; merged atoms joined by ``*``).

    Example:
        >>> layout_tag(image_axes(1, 3, (4, 4), channels_first=False))
        'n,h,w,c'
        >>> layout_tag(None)
        ''
    """
    if axes is None:
        return ""
    return ",".join("*".join(atom for atom, _ in axis) for axis in axes)


@dataclass(frozen=True)
class Op:
    """One layer call of a traced model.

    ``id`` is the op's position in execution order; ``name`` the layer's path
    (the ``layer`` of its tensors, ``""`` for a model's own; None for an op
    without weights); ``kind``
    the canonical kind of a weighted layer, else a neutral word (``input``,
    ``flatten``, ``add``, ``other``...); ``inputs`` the ids of the ops whose
    outputs it reads; ``shape`` its output's shape and ``axes`` that output's
    meaning (:data:`Axes`, None when unknown).

    Example:
        >>> Op(0, None, "input", (), (2, 4), None).weighted
        False
    """

    id: int
    name: str | None
    kind: str
    inputs: tuple[int, ...]
    shape: tuple[int, ...]
    axes: Axes | None
    input_axes: Axes | None = None
    """For a weighted op: the meaning of its (first) input's axes as the layer reads them."""
    incoming: Axes | None = None
    """For a weighted op: its (first) input's axes as traced from the model inputs (an
    input's own axes are the atoms :func:`input_atom` names)."""

    @property
    def weighted(self) -> bool:
        """Return True for an op of a layer with tensors (it has a ``name``)."""
        return self.name is not None


@dataclass
class OpGraph:
    """A traced model: its ops in execution order; the ``input`` ops are its inputs.

    ``note`` says how the graph was traced (``torch.fx``, ``forward hooks``,
    ``keras functional graph``) and what it could not see.

    Example:
        >>> OpGraph([Op(0, None, "input", (), (1, 4), None)]).inputs
        [0]
    """

    ops: list[Op]
    note: str = ""
    outputs: list[int] = field(default_factory=list)
    """The ids of the ops whose results the model returns, in output order."""
    _by_id: dict[int, Op] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self._by_id = {op.id: op for op in self.ops}

    def renamed(self, names: dict[str, str]) -> OpGraph:
        """Return the graph with weighted ops renamed by ``names`` (others keep their name).

        Example:
            >>> graph = OpGraph([Op(0, None, "input", (), (1, 4), None),
            ...                  Op(1, "dense_1", "Dense", (0,), (1, 2), None)])
            >>> [op.name for op in graph.renamed({"dense_1": "dense"}).weighted_ops()]
            ['dense']
        """
        ops = [replace(op, name=names.get(op.name, op.name)) if op.name is not None else op
               for op in self.ops]
        return OpGraph(ops, note=self.note, outputs=list(self.outputs))

    def with_parts(self, layers: Sequence[str]) -> OpGraph:
        """Return the graph with each op whose layer is described as parts split into a chain.

        A layer the backend describes as several canonical layers named
        ``<layer>/<part>`` (a separable convolution's depthwise and pointwise
        halves) becomes one op per part, in the order of ``layers``, each
        reading the one before.

        Example:
            >>> graph = OpGraph([Op(0, None, "input", (), (1, 4), None),
            ...                  Op(1, "sep", "SeparableConv2D", (0,), (1, 2), None)])
            >>> split = graph.with_parts(["sep/depthwise", "sep/pointwise"])
            >>> [(op.name, op.inputs) for op in split.weighted_ops()]
            [('sep/depthwise', (0,)), ('sep/pointwise', (1,))]
        """
        parts: dict[str, list[str]] = {}
        for layer in layers:
            whole, _, part = layer.rpartition("/")
            if part and whole not in layers:
                parts.setdefault(whole, []).append(layer)
        if not any(op.name in parts for op in self.ops):
            return self
        next_id = max(op.id for op in self.ops) + 1
        last: dict[int, int] = {}
        ops: list[Op] = []
        for op in self.ops:
            op = replace(op, inputs=tuple(last.get(i, i) for i in op.inputs))
            if op.name not in parts:
                ops.append(op)
                continue
            previous = op.inputs
            for index, part in enumerate(parts[op.name]):
                part_id = op.id if index == 0 else next_id
                next_id += index > 0
                ops.append(replace(op, id=part_id, name=part, inputs=previous))
                previous = (part_id,)
            last[op.id] = previous[0]
        return OpGraph(ops, note=self.note, outputs=[last.get(i, i) for i in self.outputs])

    def op(self, op_id: int) -> Op:
        """Return the op with id ``op_id``."""
        return self._by_id[op_id]

    @property
    def inputs(self) -> list[int]:
        """Return the ids of the model's input ops, in call order."""
        return [op.id for op in self.ops if op.kind == INPUT]

    def weighted_ops(self) -> list[Op]:
        """Return the ops of weighted layers, in execution order (a layer called twice: once).

        Example:
            >>> OpGraph([Op(0, None, "input", (), (1, 4), None)]).weighted_ops()
            []
        """
        seen: set[str] = set()
        out = []
        for op in self.ops:
            if op.weighted and op.name not in seen:
                seen.add(op.name)
                out.append(op)
        return out

    def weighted_inputs(self) -> dict[int, tuple[int, ...]]:
        """Return, per weighted op, the nearest weighted ops (or inputs) upstream of it.

        Ops without weights (activations, pooling, additions, reshapes) are
        looked through, so both frameworks' graphs reduce to the same one
        whatever each does between its layers.
        """
        nearest: dict[int, frozenset[int]] = {}
        for op in self.ops:
            found: set[int] = set()
            for source in op.inputs:
                producer = self._by_id.get(source)
                if producer is None:
                    continue
                if producer.weighted or producer.kind == INPUT:
                    found.add(producer.id)
                else:
                    found |= nearest.get(producer.id, frozenset())
            nearest[op.id] = frozenset(found)
        return {op.id: tuple(sorted(nearest[op.id])) for op in self.weighted_ops()}

    def feature_atoms(self, op_id: int) -> tuple[tuple[str, int], ...] | None:
        """Return the atoms of the last input axis of op ``op_id`` (what a dense kernel's
        ``in`` axis holds): ``(("c", 64), ("h", 7), ("w", 7))`` after a Flatten of a
        channels-first map; None when the trace could not tell.

        Example:
            >>> dense = Op(1, "fc", "dense", (0,), (2, 3), None,
            ...            input_axes=((("n", 2),), (("f", 4),)))
            >>> OpGraph([Op(0, None, "input", (), (2, 4), None), dense]).feature_atoms(1)
            (('f', 4),)
        """
        axes = self._by_id[op_id].input_axes
        return None if axes is None else axes[-1]

    def input_layouts(self) -> list[str | None]:
        """Return, per model input, its layout tag as the first layer reading it sees it.

        ``n,c,h,w`` for a channels-first image, ``n,h,w,c`` for a channels-last
        one (whatever permutes lie between the input and the layer); ``""``
        when no convolution reads the input as an image (features last: the
        same in every framework); None when the trace cannot tell (a layer
        reads a tensor made by code the trace did not see).

        Example:
            >>> x = tuple(((input_atom(0, k), n),) for k, n in enumerate((1, 8, 8, 3)))
            >>> conv = Op(2, "c", "conv2d", (1,), (1, 4, 8, 8), None,
            ...           input_axes=image_axes(1, 3, (8, 8), channels_first=True),
            ...           incoming=permute_axes(x, (0, 3, 1, 2)))
            >>> OpGraph([Op(0, None, "input", (), (1, 8, 8, 3), x),
            ...          Op(1, None, "permute", (0,), (1, 3, 8, 8), conv.incoming),
            ...          conv]).input_layouts()
            ['n,h,w,c']
        """
        blind = any(op.weighted and op.incoming is None for op in self.ops)
        layouts: list[str | None] = []
        for index, input_id in enumerate(self.inputs):
            rank = len(self._by_id[input_id].shape)
            own = {input_atom(index, k) for k in range(rank)}
            layout: str | None = None if blind else ""
            for op in self.ops:
                if not op.weighted or op.incoming is None or op.input_axes is None:
                    continue
                atoms = [axis[0][0] if len(axis) == 1 else "" for axis in op.incoming]
                if not own & set(atoms):
                    continue
                tag = image_tag(op.input_axes)
                layout = ""
                if tag and set(atoms) == own and len(atoms) == rank:
                    names = tag.split(",")
                    layout = ",".join(names[atoms.index(input_atom(index, k))]
                                      for k in range(rank))
                break
            layouts.append(layout)
        return layouts

    def output_layouts(self) -> list[str]:
        """Return, per model output, its layout tag when it is an image (else ``""``).

        Example:
            >>> conv = Op(1, "c", "conv2d", (0,), (1, 4, 8, 8),
            ...           image_axes(1, 4, (8, 8), channels_first=False))
            >>> OpGraph([Op(0, None, "input", (), (1, 8, 8, 3), None), conv],
            ...         outputs=[1]).output_layouts()
            ['n,h,w,c']
        """
        return [image_tag(self._by_id[op_id].axes) for op_id in self.outputs]


def image_tag(axes: Axes | None) -> str:
    """Return the layout tag of an image activation (a ``c`` axis and a spatial one), else ``""``.

    Example:
        >>> image_tag(image_axes(1, 3, (4, 4), channels_first=True)), image_tag(None)
        ('n,c,h,w', '')
    """
    if axes is None or len(axes) < 3:
        return ""
    names = [axis[0][0] for axis in axes if len(axis) == 1]
    if len(names) != len(axes) or "c" not in names or not set(names) & set(SPATIAL):
        return ""
    return layout_tag(axes)
