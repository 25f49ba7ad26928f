"""Keras' standard layers as canonical kinds, slots and layout tags.

:func:`keras_canonical` says what a variable of a Keras layer is, from the
layer's class name, the variable's name and its shape; it needs no Keras, so
the framework-free ``.keras`` reader uses it too. :func:`native_layout` says
which layout Keras' layer of a canonical kind gives each slot, so a
conversion can be planned without building a model.

Example:
    >>> keras_canonical("Dense", "kernel", (3, 4))
    Canonical(kind='dense', slot='kernel', layout='in,out')
    >>> native_layout("batchnorm", "count") is None
    True
"""

from __future__ import annotations

from polybundle.model.canonical import KINDS, Canonical, conv_spatial, shared_layout
from polybundle.model.layouts import OPAQUE, conv_tag

KIND_OF_CLASS: dict[str, str] = {
    "Dense": "dense", "Embedding": "embedding", "PReLU": "prelu",
    "LayerNormalization": "layernorm", "GroupNormalization": "groupnorm",
    "BatchNormalization": "batchnorm",
    "DepthwiseConv1D": "depthwise_conv1d", "DepthwiseConv2D": "depthwise_conv2d",
    **{f"Conv{n}D": f"conv{n}d" for n in (1, 2, 3)},
    **{f"Conv{n}DTranspose": f"conv{n}d_transpose" for n in (1, 2, 3)},
}
"""Keras layer class name -> canonical kind (grouped convolutions are refined by shape)."""

NORM_SLOTS = frozenset({"gamma", "beta", "moving_mean", "moving_variance"})
"""Variable names of Keras' normalisation layers; each is also the canonical slot."""


def _prelu_layout(shape: tuple[int, ...]) -> str:
    """Tag of a channels-last PReLU slope: all ones, ``1,...,1,c``, else opaque."""
    if all(n == 1 for n in shape):
        return ",".join("1" for _ in shape)
    if all(n == 1 for n in shape[:-1]):
        return ",".join([*(["1"] * (len(shape) - 1)), "c"])
    return OPAQUE


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
        >>> keras_canonical("PReLU", "alpha", (1, 1, 8)).layout
        '1,1,c'
    """
    kind = KIND_OF_CLASS.get(class_name, "")
    ndim = len(shape)
    if kind in ("batchnorm", "layernorm", "groupnorm"):
        if variable not in NORM_SLOTS or ndim != 1:
            return Canonical.unknown(shape)
        return Canonical(kind, variable, "c")
    if kind == "embedding" and variable == "embeddings" and ndim == 2:
        return Canonical(kind, "embeddings", "vocab,dim")
    if kind == "prelu" and variable == "alpha":
        layout = _prelu_layout(shape)
        return Canonical.unknown(shape) if layout == OPAQUE else Canonical(kind, "alpha", layout)
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
    return Canonical.unknown(shape)


def native_layout(kind: str, slot: str, source_layout: str = "") -> str | None:
    """Return the layout tag Keras' standard layer of ``kind`` gives ``slot``.

    None when that layer has no such slot (Keras batch norm keeps no update
    count). ``source_layout`` is the slot's layout in the source bundle (a
    PReLU slope of one value stays ``1``).

    Example:
        >>> native_layout("conv2d_transpose", "kernel")
        'h,w,out,in'
        >>> native_layout("depthwise_conv2d", "kernel")
        'h,w,c,m'
    """
    if slot not in KINDS.get(kind, ()) or slot == "count":
        return None
    shared = shared_layout(slot, source_layout)
    if shared is not None:
        return shared
    if kind == "dense":
        return "in,out"
    spatial = conv_spatial(kind)
    if kind.startswith("depthwise"):
        return ",".join((*("d", "h", "w")[3 - spatial:], "c", "m"))
    return conv_tag(spatial, channels_first=False, transposed=kind.endswith("_transpose"))
