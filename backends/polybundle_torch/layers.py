"""PyTorch's standard layers as canonical kinds, slots and layout tags.

:func:`torch_canonical` says what a tensor of a ``torch.nn`` module is, from
the module's class name, the tensor's attribute and its shape; it needs no
PyTorch, so the framework-free ``.pth`` reader uses it too.
:func:`native_layout` says which layout PyTorch's layer of a canonical kind
gives each slot, so a conversion can be planned without building a model.

Example:
    >>> torch_canonical("Linear", "weight", (4, 3))
    Canonical(kind='dense', slot='kernel', layout='out,in')
    >>> native_layout("conv2d_transpose", "kernel")
    'in,out,h,w'
"""

from __future__ import annotations

from polybundle.model.canonical import KINDS, Canonical, conv_spatial, shared_layout
from polybundle.model.layouts import SCALAR, conv_tag

SLOTS: dict[str, dict[str, str]] = {
    "batchnorm": {
        "weight": "gamma", "bias": "beta", "running_mean": "moving_mean",
        "running_var": "moving_variance", "num_batches_tracked": "count",
    },
    "layernorm": {"weight": "gamma", "bias": "beta"},
    "groupnorm": {"weight": "gamma", "bias": "beta"},
}
"""Normalisation kinds: ``{kind: {module attribute: canonical slot}}``."""

KIND_OF_CLASS: dict[str, str] = {
    "Linear": "dense", "Embedding": "embedding", "PReLU": "prelu", "LayerNorm": "layernorm",
    "GroupNorm": "groupnorm", "BatchNorm1d": "batchnorm", "BatchNorm2d": "batchnorm",
    "BatchNorm3d": "batchnorm",
    **{f"Conv{n}d": f"conv{n}d" for n in (1, 2, 3)},
    **{f"ConvTranspose{n}d": f"conv{n}d_transpose" for n in (1, 2, 3)},
}
"""``torch.nn`` class name -> canonical kind (grouped convolutions are refined by shape)."""


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
    kind = KIND_OF_CLASS.get(class_name, "")
    ndim = len(shape)
    if kind in SLOTS:
        slot = SLOTS[kind].get(attribute)
        if slot is None or (kind == "layernorm" and ndim != 1):
            return Canonical.unknown(shape)
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
            return Canonical.unknown(shape)
        depthwise = groups > 1 and group_channels == 1
        return Canonical(f"depthwise_{kind}" if depthwise else kind, "bias", "out")
    if kind.startswith("conv") and attribute == "weight":
        spatial = ndim - 2
        if kind.endswith("_transpose"):
            if groups != 1:
                return Canonical.unknown(shape)
            tag = conv_tag(spatial, channels_first=True, transposed=True)
            return Canonical(kind, "kernel", tag)
        if groups > 1 and shape[1] == 1:
            space = ("d", "h", "w")[3 - spatial:]
            return Canonical(f"depthwise_{kind}", "kernel", ",".join(("c*m", "1", *space)))
        return Canonical(kind, "kernel", conv_tag(spatial, channels_first=True, transposed=False))
    return Canonical.unknown(shape)


def native_layout(kind: str, slot: str, source_layout: str = "") -> str | None:
    """Return the layout tag PyTorch's standard layer of ``kind`` gives ``slot``.

    None when that layer has no such slot. ``source_layout`` is the slot's
    layout in the source bundle (a PReLU slope of one value stays ``1``).

    Example:
        >>> native_layout("dense", "kernel"), native_layout("batchnorm", "count")
        ('out,in', 'scalar')
        >>> native_layout("depthwise_conv2d", "kernel")
        'c*m,1,h,w'
        >>> native_layout("layernorm", "moving_mean") is None
        True
    """
    if slot not in KINDS.get(kind, ()):
        return None
    if slot == "count":
        return SCALAR
    shared = shared_layout(slot, source_layout)
    if shared is not None:
        return shared
    if kind == "dense":
        return "out,in"
    spatial = conv_spatial(kind)
    if kind.startswith("depthwise"):
        return ",".join(("c*m", "1", *("d", "h", "w")[3 - spatial:]))
    return conv_tag(spatial, channels_first=True, transposed=kind.endswith("_transpose"))
