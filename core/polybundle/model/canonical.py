"""Canonical layer kinds: what a layer is and what each of its tensors means.

Every tensor a backend exports carries a canonical *kind* (``dense``,
``conv2d``, ``batchnorm``, ...), a *slot* (``kernel``, ``bias``, ``gamma``,
``moving_mean``, ...) and a layout tag (see :mod:`polybundle.model.layouts`). Two
frameworks' versions of the same layer have the same kind and slots, so a
tensor of one maps to the other by structure, and the layout tags say how to
move its axes. Names are never used to decide what a tensor is.

The tables here take the framework's class name, the tensor's attribute and
its shape, so both the live-model backends and the framework-free readers use
them. A layer of a class the tables do not know gets kind ``""``: it can only
be converted through an explicit map (:func:`polybundle.convert.register_tensor_map`).

Layout tags may use two extra tokens: ``1`` for an axis of length one, and
``a*b`` for one axis that holds ``a`` and ``b`` merged (``a`` major). So a
PyTorch depthwise kernel is ``c*m,1,h,w`` and Keras' ``DepthwiseConv2D``
kernel is ``h,w,c,m``; :func:`relayout` converts between them.

Example:
    >>> torch_canonical("Linear", "weight", (4, 3))
    Canonical(kind='dense', slot='kernel', layout='out,in')
    >>> keras_canonical("Dense", "kernel", (3, 4))
    Canonical(kind='dense', slot='kernel', layout='in,out')
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from polybundle.errors import TensorMismatchError
from polybundle.model.layouts import OPAQUE, SCALAR, conv_tag

KINDS: dict[str, tuple[str, ...]] = {
    "dense": ("kernel", "bias"),
    **{f"conv{n}d": ("kernel", "bias") for n in (1, 2, 3)},
    **{f"conv{n}d_transpose": ("kernel", "bias") for n in (1, 2, 3)},
    "depthwise_conv1d": ("kernel", "bias"),
    "depthwise_conv2d": ("kernel", "bias"),
    "batchnorm": ("gamma", "beta", "moving_mean", "moving_variance", "count"),
    "layernorm": ("gamma", "beta"),
    "groupnorm": ("gamma", "beta"),
    "embedding": ("embeddings",),
    "prelu": ("alpha",),
}
"""Each canonical kind and the slots its tensors may fill."""

FILL_SLOTS: dict[tuple[str, str], float] = {("batchnorm", "count"): 0}
"""Slots one framework has and the other lacks, with the value used to fill them.

PyTorch's ``BatchNorm*.num_batches_tracked`` (slot ``count``) has no Keras
counterpart: converting to Keras drops it, converting to PyTorch fills it
with 0. PyTorch reads it only when ``momentum=None`` (cumulative averaging).
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


def _unknown(shape: tuple[int, ...]) -> Canonical:
    return Canonical("", "", SCALAR if not shape else OPAQUE)


def _prelu_layout(shape: tuple[int, ...], *, channels_last: bool) -> str:
    if all(n == 1 for n in shape):
        return ",".join("1" for _ in shape)
    rest = shape[:-1] if channels_last else shape[1:]
    if all(n == 1 for n in rest):
        ones = ["1"] * len(rest)
        return ",".join([*ones, "c"] if channels_last else ["c", *ones])
    return OPAQUE


_TORCH_SLOTS = {
    "batchnorm": {
        "weight": "gamma", "bias": "beta", "running_mean": "moving_mean",
        "running_var": "moving_variance", "num_batches_tracked": "count",
    },
    "layernorm": {"weight": "gamma", "bias": "beta"},
    "groupnorm": {"weight": "gamma", "bias": "beta"},
}
_TORCH_KINDS = {
    "Linear": "dense", "Embedding": "embedding", "PReLU": "prelu", "LayerNorm": "layernorm",
    "GroupNorm": "groupnorm", "BatchNorm1d": "batchnorm", "BatchNorm2d": "batchnorm",
    "BatchNorm3d": "batchnorm",
    **{f"Conv{n}d": f"conv{n}d" for n in (1, 2, 3)},
    **{f"ConvTranspose{n}d": f"conv{n}d_transpose" for n in (1, 2, 3)},
}


def torch_canonical(
    class_name: str, attribute: str, shape: tuple[int, ...], *, groups: int = 1,
    group_channels: int = 0,
) -> Canonical:
    """Return the canonical form of ``<module of class_name>.<attribute>``.

    ``groups`` is a convolution's ``groups`` and ``group_channels`` its input
    channels per group: a grouped convolution with one input channel per group
    is the canonical ``depthwise_conv{n}d``; other grouped ones stay
    ``conv{n}d`` (the ``in`` axis is then the channels of one group).

    Example:
        >>> torch_canonical("Conv2d", "weight", (6, 1, 3, 3), groups=3, group_channels=1).layout
        'c*m,1,h,w'
        >>> torch_canonical("BatchNorm2d", "num_batches_tracked", ()).slot
        'count'
    """
    kind = _TORCH_KINDS.get(class_name, "")
    ndim = len(shape)
    if kind in _TORCH_SLOTS:
        slot = _TORCH_SLOTS[kind].get(attribute)
        if slot is None or (kind == "layernorm" and ndim != 1):
            return _unknown(shape)
        return Canonical(kind, slot, SCALAR if ndim == 0 else "c")
    if kind == "dense" and attribute in ("weight", "bias"):
        return Canonical(kind, "kernel" if attribute == "weight" else "bias",
                         "out,in" if attribute == "weight" else "out")
    if kind == "embedding" and attribute == "weight" and ndim == 2:
        return Canonical(kind, "embeddings", "vocab,dim")
    if kind == "prelu" and attribute == "weight" and ndim == 1:
        return Canonical(kind, "alpha", "1" if shape[0] == 1 else "c")
    if kind.startswith("conv") and attribute == "bias":
        if groups != 1 and kind.endswith("_transpose"):
            return _unknown(shape)
        depthwise = groups > 1 and group_channels == 1
        return Canonical(f"depthwise_{kind}" if depthwise else kind, "bias", "out")
    if kind.startswith("conv") and attribute == "weight":
        spatial = ndim - 2
        if kind.endswith("_transpose"):
            if groups != 1:
                return _unknown(shape)
            tag = conv_tag(spatial, channels_first=True, transposed=True)
            return Canonical(kind, "kernel", tag)
        if groups > 1 and shape[1] == 1:
            space = ("d", "h", "w")[3 - spatial:]
            return Canonical(f"depthwise_{kind}", "kernel", ",".join(("c*m", "1", *space)))
        return Canonical(kind, "kernel", conv_tag(spatial, channels_first=True, transposed=False))
    return _unknown(shape)


_KERAS_KINDS = {
    "Dense": "dense", "Embedding": "embedding", "PReLU": "prelu",
    "LayerNormalization": "layernorm", "GroupNormalization": "groupnorm",
    "BatchNormalization": "batchnorm",
    "DepthwiseConv1D": "depthwise_conv1d", "DepthwiseConv2D": "depthwise_conv2d",
    **{f"Conv{n}D": f"conv{n}d" for n in (1, 2, 3)},
    **{f"Conv{n}DTranspose": f"conv{n}d_transpose" for n in (1, 2, 3)},
}
_KERAS_NORM_SLOTS = {"gamma", "beta", "moving_mean", "moving_variance"}


def keras_canonical(
    class_name: str, variable: str, shape: tuple[int, ...], *, groups: int = 1,
    group_channels: int = 0,
) -> Canonical:
    """Return the canonical form of variable ``variable`` of a Keras layer.

    ``groups`` and ``group_channels`` (input channels per group) describe a
    grouped ``Conv*D``; with one channel per group it is canonical depthwise.

    Example:
        >>> keras_canonical("Conv2DTranspose", "kernel", (3, 3, 1, 4)).layout
        'h,w,out,in'
        >>> keras_canonical("DepthwiseConv2D", "kernel", (3, 3, 4, 2)).layout
        'h,w,c,m'
    """
    kind = _KERAS_KINDS.get(class_name, "")
    ndim = len(shape)
    if kind in ("batchnorm", "layernorm", "groupnorm"):
        if variable not in _KERAS_NORM_SLOTS or ndim != 1:
            return _unknown(shape)
        return Canonical(kind, variable, "c")
    if kind == "embedding" and variable == "embeddings" and ndim == 2:
        return Canonical(kind, "embeddings", "vocab,dim")
    if kind == "prelu" and variable == "alpha":
        layout = _prelu_layout(shape, channels_last=True)
        return _unknown(shape) if layout == OPAQUE else Canonical(kind, "alpha", layout)
    if kind == "dense" and variable == "kernel" and ndim == 2:
        return Canonical(kind, "kernel", "in,out")
    if kind and variable == "bias" and ndim == 1:
        depthwise = kind.startswith("conv") and groups > 1 and group_channels == 1
        return Canonical(f"depthwise_{kind}" if depthwise else kind, "bias", "out")
    if kind.startswith("depthwise") and variable == "kernel":
        space = ("d", "h", "w")[3 - (ndim - 2):]
        return Canonical(kind, "kernel", ",".join((*space, "c", "m")))
    if kind.startswith("conv") and variable == "kernel":
        spatial = ndim - 2
        if kind.endswith("_transpose"):
            tag = conv_tag(spatial, channels_first=False, transposed=True)
            return Canonical(kind, "kernel", tag)
        if groups > 1 and shape[-2] == 1:
            space = ("d", "h", "w")[3 - spatial:]
            return Canonical(f"depthwise_{kind}", "kernel", ",".join((*space, "1", "c*m")))
        return Canonical(kind, "kernel", conv_tag(spatial, channels_first=False, transposed=False))
    return _unknown(shape)


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


def native_layout(framework: str, kind: str, slot: str, source_layout: str = "") -> str | None:
    """Return the layout tag ``framework``'s standard layer of ``kind`` gives ``slot``.

    ``framework`` is ``"torch"`` or ``"keras"``. Returns None when that
    framework's layer has no such slot (Keras batch norm has no ``count``).
    Used to plan a conversion without building the target model.

    Example:
        >>> native_layout("keras", "conv2d_transpose", "kernel")
        'h,w,out,in'
        >>> native_layout("keras", "batchnorm", "count") is None
        True
    """
    torch = framework == "torch"
    if slot == "count":
        return SCALAR if torch and kind == "batchnorm" else None
    if slot in _KERAS_NORM_SLOTS:
        return "c"
    if slot == "bias":
        return "out"
    if slot == "embeddings":
        return "vocab,dim"
    if slot == "alpha":
        return "1" if source_layout and set(source_layout.split(",")) == {"1"} else "c"
    if kind == "dense":
        return "out,in" if torch else "in,out"
    spatial = int(kind[-2]) if kind.endswith("d") else int(kind.split("_")[0][-2])
    space = ("d", "h", "w")[3 - spatial:]
    if kind.startswith("depthwise"):
        return ",".join(("c*m", "1", *space) if torch else (*space, "c", "m"))
    return conv_tag(spatial, channels_first=torch, transposed=kind.endswith("_transpose"))


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
