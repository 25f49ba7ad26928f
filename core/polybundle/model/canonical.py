"""Canonical layer kinds: what a layer is and what each of its tensors means.

Every tensor a backend exports carries a canonical *kind* (``dense``,
``conv2d``, ``batchnorm``, ...), a *slot* (``kernel``, ``bias``, ``gamma``,
``moving_mean``, ...) and a layout tag (see :mod:`polybundle.model.layouts`). Two
frameworks' versions of the same layer have the same kind and slots, so a
tensor of one maps to the other by structure, and the layout tags say how to
move its axes. Names are never used to decide what a tensor is.

This module is framework-free: each backend says which of its layers is which
kind and which layout it gives each slot (:meth:`Backend.describe` and
:meth:`Backend.native_layout`). A tensor of no known kind gets kind ``""``: it
can only be converted through an explicit map.

Layout tags may use two extra tokens: ``1`` for an axis of length one, and
``a*b`` for one axis that holds ``a`` and ``b`` merged (``a`` major). So a
channels-first depthwise kernel may be ``c*m,1,h,w`` and a channels-last one
``h,w,c,m``; :func:`relayout` converts between them.

Example:
    >>> KINDS["dense"]
    ('kernel', 'bias')
    >>> relayout(np.arange(6).reshape(2, 3), "out,in", "in,out", (3, 2)).tolist()
    [[0, 3], [1, 4], [2, 5]]
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from polybundle.errors import ConversionError, TensorMismatchError
from polybundle.model.layouts import OPAQUE, SCALAR

KINDS: dict[str, tuple[str, ...]] = {
    "dense": ("kernel", "bias"),
    **{f"conv{n}d": ("kernel", "bias") for n in (1, 2, 3)},
    **{f"conv{n}d_transpose": ("kernel", "bias") for n in (1, 2, 3)},
    "depthwise_conv1d": ("kernel", "bias"),
    "depthwise_conv2d": ("kernel", "bias"),
    "depthwise_conv3d": ("kernel", "bias"),
    "batchnorm": ("gamma", "beta", "moving_mean", "moving_variance", "count"),
    "layernorm": ("gamma", "beta"),
    "groupnorm": ("gamma", "beta"),
    "embedding": ("embeddings",),
    "prelu": ("alpha",),
    "normalization": ("mean", "variance", "count"),
    "variable": ("value",),
    "attention": ("query_kernel", "key_kernel", "value_kernel", "output_kernel",
                  "query_bias", "key_bias", "value_bias", "output_bias", "qkv_kernel",
                  "qkv_bias"),
}
"""Each canonical kind and the slots its tensors may fill.

``normalization`` holds the statistics of an input-normalisation layer
(Keras ``Normalization``: ``(x - mean) / sqrt(variance)``, and the number of
samples they were adapted on). ``variable`` is a plain learned tensor owned by
no layer of a known kind -- a class token, a position embedding, a LayerScale
gamma -- stored alike everywhere (:func:`variable_tag`), so it pairs by graph
position and shape only. ``attention`` is multi-head attention: a projection
per query, key and value (``*_kernel`` tagged with ``in`` for the input axis and
``head``, ``dim`` for heads and head size) and an output projection; a framework that
keeps the three input projections in one tensor fills a fused slot
(:data:`FUSED_SLOTS`) instead.
"""

FUSED_SLOTS: dict[tuple[str, str], tuple[str, ...]] = {
    ("attention", "qkv_kernel"): ("query_kernel", "key_kernel", "value_kernel"),
    ("attention", "qkv_bias"): ("query_bias", "key_bias", "value_bias"),
}
"""Slots holding several slots' tensors stacked along their first axis, in this order.

A fused tensor's layout tag is its parts' tag with the parts axis ``n`` merged in
front (:data:`PARTS`): PyTorch's ``in_proj_weight`` is ``n*head*dim,in``. Converting to
a framework that keeps the parts apart splits it; the other way merges them.
"""

PARTS = "n"
"""The atom of a fused tensor's layout tag that counts its parts (:data:`FUSED_SLOTS`)."""


def part_layout(tag: str) -> str:
    """Return the layout tag of one part of a fused tensor tagged ``tag``.

    Example:
        >>> part_layout("n*head*dim,in"), part_layout("n*head*dim")
        ('head*dim,in', 'head*dim')
    """
    first, _, rest = tag.partition(",")
    part = first.removeprefix(f"{PARTS}*")
    return f"{part},{rest}" if rest else part


def slot_sizes(kind: str, slot: str, size: int) -> list[tuple[str, int]]:
    """Return the slots a tensor of ``size`` elements fills: a fused one's parts, split evenly.

    Example:
        >>> slot_sizes("attention", "qkv_bias", 12)
        [('query_bias', 4), ('key_bias', 4), ('value_bias', 4)]
        >>> slot_sizes("dense", "kernel", 12)
        [('kernel', 12)]
    """
    parts = FUSED_SLOTS.get((kind, slot))
    if parts is None:
        return [(slot, size)]
    return [(part, size // len(parts)) for part in parts]

FILL_SLOTS: dict[tuple[str, str], float] = {("batchnorm", "count"): 0}
"""Slots some frameworks' layers have and others lack, with the value used to fill them.

A batch norm's update ``count`` exists only where the framework keeps one
(:meth:`Backend.native_layout` says): converting to a framework without it
drops it, converting to one with it fills it with 0.
"""


@dataclass(frozen=True)
class Canonical:
    """The canonical kind, slot and layout tag of one tensor.

    Example:
        >>> Canonical("dense", "bias", "out").kind
        'dense'
    """

    kind: str
    slot: str
    layout: str
    part: str = field(default="", repr=False)
    """The canonical layer this tensor belongs to inside its framework layer, when
    one framework layer holds several canonical ones (Keras ``SeparableConv2D`` is
    a ``depthwise`` and a ``pointwise`` convolution; each plain ``variable`` of a
    layer is a layer of its own, named after the variable); ``""`` when it is the
    layer. Backends append it to the layer's name."""

    @classmethod
    def unknown(cls, shape: tuple[int, ...]) -> Canonical:
        """Return the form of a tensor of no known kind: ``opaque`` (``scalar`` if 0-d).

        Example:
            >>> Canonical.unknown((3, 4))
            Canonical(kind='', slot='', layout='opaque')
        """
        return cls("", "", SCALAR if not shape else OPAQUE)


def conv_spatial(kind: str) -> int:
    """Return the number of spatial axes of a convolution kind (``conv2d_transpose``: 2).

    Example:
        >>> conv_spatial("depthwise_conv1d"), conv_spatial("conv3d_transpose")
        (1, 3)
    """
    base = kind.removeprefix("depthwise_").removesuffix("_transpose")
    if base not in ("conv1d", "conv2d", "conv3d"):
        raise ConversionError(
            f"{kind!r} is not a convolution kind; expected conv1d, conv2d or conv3d, "
            "optionally with depthwise_ before or _transpose after. Pass a convolution kind."
        )
    return int(base[4])


def variable_tag(ndim: int) -> str:
    """Return the layout tag of a plain ``variable`` of ``ndim`` axes (``v0,v1,...``).

    Every framework stores such a tensor with its axes as the model uses them,
    so both sides carry the same tag and convert unchanged.

    Example:
        >>> variable_tag(3), variable_tag(0)
        ('v0,v1,v2', 'scalar')
    """
    return SCALAR if ndim == 0 else ",".join(f"v{axis}" for axis in range(ndim))


def is_unit(tag: str) -> bool:
    """Return True when every axis of ``tag`` is a unit axis (``1`` or ``1,1,1``).

    Example:
        >>> is_unit("1,1"), is_unit("1,1,c"), is_unit("")
        (True, False, False)
    """
    return bool(tag) and set(tag.split(",")) == {"1"}


VECTOR_SLOTS: dict[str, str] = {
    "gamma": "c", "beta": "c", "moving_mean": "c", "moving_variance": "c",
    "bias": "out", "embeddings": "vocab,dim", "output_bias": "out",
}
"""Slots whose layout is the same in every framework, and that layout."""


def shared_layout(slot: str, source_layout: str = "") -> str | None:
    """Return the layout ``slot`` has in every framework, or None when frameworks differ.

    Per-channel vectors, biases, embeddings and PReLU slopes are stored alike
    everywhere (a slope of one value stays ``1``), and so are plain variables
    and normalisation statistics (they keep the source's tag); kernels and the
    batch-norm count are each backend's own answer in :meth:`Backend.native_layout`.

    Example:
        >>> shared_layout("moving_mean"), shared_layout("alpha", "1"), shared_layout("kernel")
        ('c', '1', None)
        >>> shared_layout("value", "v0,v1,v2")
        'v0,v1,v2'
    """
    if slot == "alpha":
        return "1" if is_unit(source_layout) else "c"
    if slot in ("value", "mean", "variance", "count") and source_layout:
        return source_layout  # plain variables and normalisation statistics keep their axes
    return VECTOR_SLOTS.get(slot)


def _tokens(tag: str) -> list[list[str]]:
    if tag == SCALAR:
        return []
    return [[] if token == "1" else token.split("*") for token in tag.split(",")]


def _atom_sizes(name: str, tag: str, shape: tuple[int, ...], sizes: dict[str, int]) -> None:
    """Record the size of every atom of ``tag`` that ``shape`` determines."""
    tokens = _tokens(tag)
    if len(tokens) != len(shape):
        raise TensorMismatchError(
            mismatched=[f"{name} (layout {tag!r} has {len(tokens)} axes, shape {shape})"]
        )
    for token, length in zip(tokens, shape, strict=True):
        if not token and length != 1:
            raise TensorMismatchError(mismatched=[f"{name} (axis '1' of {tag!r} is {length})"])
        known = [sizes[a] for a in token if a in sizes]
        unknown = [a for a in token if a not in sizes]
        if len(unknown) == 1:
            rest = int(np.prod(known, dtype=np.int64)) if known else 1
            if rest == 0 or length % rest:
                axis = "*".join(token)
                raise TensorMismatchError(mismatched=[f"{name} (axis {axis} = {length})"])
            sizes[unknown[0]] = length // rest


def check_relayout(
    source: str, target: str, source_shape: tuple[int, ...], shape: tuple[int, ...],
    *, name: str = "tensor",
) -> tuple[list[int], list[int]]:
    """Check that a ``source``-tagged tensor of ``source_shape`` fits ``target`` with ``shape``.

    Returns the atom shape to reshape the source to and the axis order to
    transpose it by. Raises :class:`TensorMismatchError` when the tags do not
    name the same axes or a size disagrees. Reads no data.

    Example:
        >>> check_relayout("out,in", "in,out", (4, 3), (3, 4))
        ([4, 3], [1, 0])
        >>> check_relayout("h,w,1,c*m", "c*m,1,h,w", (3, 3, 1, 8), (8, 1, 3, 3))
        ([3, 3, 8], [2, 0, 1])
    """
    merged = {t for t in source.split(",") if "*" in t} & {t for t in target.split(",") if "*" in t}
    for token in merged:  # merged the same way on both sides: moved whole, never split
        source, target = (
            ",".join(t.replace("*", "__") if t == token else t for t in tag.split(","))
            for tag in (source, target)
        )
    src_atoms = [a for token in _tokens(source) for a in token]
    dst_atoms = [a for token in _tokens(target) for a in token]
    if OPAQUE in (source, target) or sorted(src_atoms) != sorted(dst_atoms) or len(
        set(src_atoms)
    ) != len(src_atoms):
        raise TensorMismatchError(
            mismatched=[f"{name} (layouts {source!r} and {target!r} name different axes)"]
        )
    sizes: dict[str, int] = {}
    for _ in range(2):  # a merged axis may need the other side's sizes first
        _atom_sizes(name, source, tuple(source_shape), sizes)
        _atom_sizes(name, target, tuple(shape), sizes)
    if set(sizes) != set(src_atoms):
        raise TensorMismatchError(mismatched=[f"{name} (cannot size axes of {source!r})"])
    for tag, dims in ((source, source_shape), (target, shape)):
        expected = [int(np.prod([sizes[a] for a in t], dtype=np.int64)) for t in _tokens(tag)]
        if tuple(expected) != tuple(dims):
            raise TensorMismatchError(
                mismatched=[f"{name} (shape {tuple(source_shape)} as {source!r} does not fit "
                            f"{tuple(shape)} as {target!r})"]
            )
    return [sizes[a] for a in src_atoms], [src_atoms.index(a) for a in dst_atoms]


def relayout(
    array: np.ndarray, source: str, target: str, shape: tuple[int, ...], *, name: str = "tensor"
) -> np.ndarray:
    """Return ``array`` (tagged ``source``) rearranged into layout ``target`` with ``shape``.

    Axes are moved as the tags say; merged (``a*b``) and unit (``1``) axes
    are split and joined. Raises :class:`TensorMismatchError` when the tags do
    not name the same axes or a size disagrees.

    Example:
        >>> relayout(np.zeros((4, 3)), "out,in", "in,out", (3, 4)).shape
        (3, 4)
        >>> relayout(np.zeros((3, 3, 4, 2)), "h,w,c,m", "c*m,1,h,w", (8, 1, 3, 3)).shape
        (8, 1, 3, 3)
    """
    atoms, order = check_relayout(source, target, tuple(array.shape), tuple(shape), name=name)
    moved = np.transpose(array.reshape(atoms), order)
    return np.ascontiguousarray(moved).reshape(shape)


def describe_relayout(source: str, target: str) -> str:
    """Return a short human description of the rearrangement ``source`` -> ``target``.

    Example:
        >>> describe_relayout("out,in", "in,out")
        'transpose (1, 0)'
        >>> describe_relayout("c", "c")
        'identity'
    """
    if source == target:
        return "identity"
    src_atoms = [a for token in _tokens(source) for a in token]
    dst_atoms = [a for token in _tokens(target) for a in token]
    if sorted(src_atoms) != sorted(dst_atoms):
        return "impossible"
    order = tuple(src_atoms.index(a) for a in dst_atoms)
    simple = all(len(t) == 1 for t in _tokens(source) + _tokens(target))
    if simple:
        return "identity" if order == tuple(range(len(order))) else f"transpose {order}"
    return f"reshape {source} -> {target}"


def infer_shape(source: str, target: str, shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """Return the shape a ``source``-tagged tensor takes as ``target``, or None if undetermined.

    A merged source axis (``c*m``) cannot be split without the target's sizes.

    Example:
        >>> infer_shape("out,in,h,w", "h,w,in,out", (8, 4, 3, 3))
        (3, 3, 4, 8)
        >>> infer_shape("c*m,1,h,w", "h,w,c,m", (8, 1, 3, 3)) is None
        True
    """
    sizes: dict[str, int] = {}
    tokens = _tokens(source)
    if len(tokens) != len(shape):
        return None
    for token, length in zip(tokens, shape, strict=True):
        if len(token) == 1:
            sizes[token[0]] = length
    out = []
    for token in _tokens(target):
        if any(a not in sizes for a in token):
            return None
        out.append(int(np.prod([sizes[a] for a in token], dtype=np.int64)))
    return tuple(out)
