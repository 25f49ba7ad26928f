"""Layout tags (and canonical layer kinds) of Flax NNX tensors.

Flax stores kernels the way Keras does: ``Linear`` kernel ``in,out``, ``Conv``
kernel ``h,w,in,out`` (``<spatial>,in,out``), ``ConvTranspose`` with
``transpose_kernel=True`` ``h,w,out,in``. A ``ConvTranspose`` built with the
default ``transpose_kernel=False`` computes with a spatially flipped kernel
compared to PyTorch and Keras, which no axis permutation expresses, so its
kernel is tagged ``opaque`` (it round-trips in JAX but does not convert).

Example:
    >>> flax_canonical("Linear", "kernel", (3, 4))
    Canonical(kind='dense', slot='kernel', layout='in,out')
    >>> flax_canonical("Conv", "kernel", (3, 3, 2, 8), spatial=2)
    Canonical(kind='conv2d', slot='kernel', layout='h,w,in,out')
    >>> native_layout("depthwise_conv2d", "kernel")
    'h,w,1,c*m'
"""

from __future__ import annotations

from polybundle.plugin import KINDS, Canonical, conv_spatial, conv_tag, shared_layout

_NORMS = {"BatchNorm": "batchnorm", "LayerNorm": "layernorm", "GroupNorm": "groupnorm"}
_NORM_SLOTS = {"scale": "gamma", "bias": "beta", "mean": "moving_mean", "var": "moving_variance"}


def _conv(
    attribute: str, shape: tuple[int, ...], spatial: int, groups: int, group_channels: int,
    transposed: bool, flipped: bool,
) -> Canonical:
    """Canonical form of a ``Conv``/``ConvTranspose`` tensor with ``spatial`` spatial axes."""
    if transposed and (groups != 1 or not flipped):
        return Canonical.unknown(shape)
    depthwise = not transposed and groups > 1 and group_channels == 1
    kind = f"conv{spatial}d" + ("_transpose" if transposed else "")
    kind = f"depthwise_{kind}" if depthwise else kind
    if attribute == "bias" and len(shape) == 1:
        return Canonical(kind, "bias", "out")
    if attribute != "kernel" or len(shape) != spatial + 2 or not 1 <= spatial <= 3:
        return Canonical.unknown(shape)
    if depthwise:
        space = ("d", "h", "w")[3 - spatial :]
        return Canonical(kind, "kernel", ",".join((*space, "1", "c*m")))
    return Canonical(kind, "kernel", conv_tag(spatial, channels_first=False, transposed=transposed))


def flax_canonical(
    class_name: str,
    attribute: str,
    shape: tuple[int, ...],
    *,
    spatial: int = 0,
    groups: int = 1,
    group_channels: int = 0,
    transpose_kernel: bool = False,
) -> Canonical:
    """Return the canonical kind, slot and layout of ``<module of class_name>.<attribute>``.

    For convolutions, ``spatial`` is the number of spatial axes, ``groups``
    the ``feature_group_count`` and ``group_channels`` the input channels per
    group (one per group makes it canonical ``depthwise_conv{n}d``);
    ``transpose_kernel`` is a ``ConvTranspose``'s flag of that name. Unknown
    tensors get kind ``""`` and layout ``opaque`` (``scalar`` when
    zero-dimensional).

    Example:
        >>> flax_canonical("ConvTranspose", "kernel", (3, 3, 2, 4), spatial=2,
        ...                transpose_kernel=True)
        Canonical(kind='conv2d_transpose', slot='kernel', layout='h,w,out,in')
        >>> flax_canonical("BatchNorm", "var", (4,))
        Canonical(kind='batchnorm', slot='moving_variance', layout='c')
    """
    ndim = len(shape)
    if class_name in _NORMS:
        slot = _NORM_SLOTS.get(attribute)
        if slot is None or ndim != 1 or (class_name != "BatchNorm" and slot.startswith("moving")):
            return Canonical.unknown(shape)
        return Canonical(_NORMS[class_name], slot, "c")
    if class_name == "Linear" and attribute == "kernel" and ndim == 2:
        return Canonical("dense", "kernel", "in,out")
    if class_name == "Linear" and attribute == "bias" and ndim == 1:
        return Canonical("dense", "bias", "out")
    if class_name == "PReLU" and attribute == "negative_slope" and ndim == 1:
        return Canonical("prelu", "alpha", "1" if shape == (1,) else "c")
    if class_name == "Embed" and attribute == "embedding" and ndim == 2:
        return Canonical("embedding", "embeddings", "vocab,dim")
    if class_name in ("Conv", "ConvTranspose"):
        transposed = class_name == "ConvTranspose"
        return _conv(
            attribute, shape, spatial, groups, group_channels, transposed, transpose_kernel
        )
    return Canonical.unknown(shape)


def native_layout(kind: str, slot: str, source_layout: str = "") -> str | None:
    """Return the layout tag Flax's standard layer of ``kind`` gives ``slot``.

    None when that layer has no such slot (Flax batch norm keeps no update
    count). Transposed convolutions are those built with
    ``transpose_kernel=True``; depthwise ones are grouped ``Conv`` layers.
    ``source_layout`` is the slot's layout in the source bundle (a PReLU
    slope of one value stays ``1``).

    Example:
        >>> native_layout("dense", "kernel"), native_layout("conv1d_transpose", "kernel")
        ('in,out', 'w,out,in')
        >>> native_layout("batchnorm", "count") is None
        True
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
        return ",".join((*("d", "h", "w")[3 - spatial:], "1", "c*m"))
    return conv_tag(spatial, channels_first=False, transposed=kind.endswith("_transpose"))
