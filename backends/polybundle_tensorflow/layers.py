"""Keras' layers as canonical kinds, slots and layout tags.

A layer's kind is decided by what it *is*, not by its class name:
:func:`layer_kind` asks the rules registered with :func:`register_kind` (a
class, checked with ``isinstance``, or a predicate), then whether the layer is
an instance of one of ``keras.layers``' standard layers, so subclasses keep
their kind. A variable held directly by a layer of no kind whose class is not
one of Keras' layers (a class token, a position embedding, ConvNeXt's
LayerScale) is a plain ``variable``. :func:`layer_canonical` gives the
canonical form of a live layer's variable.

:func:`keras_canonical` says the same from a class *name* and needs no Keras,
so the framework-free ``.keras`` reader uses it too. :func:`native_layout` says
which layout Keras' layer of a canonical kind gives each slot, so a
conversion can be planned without building a model. A ``SeparableConv2D`` is
two canonical layers (parts ``depthwise`` and ``pointwise``), as its PyTorch
twin is a depthwise and a 1x1 convolution.

Example:
    >>> keras_canonical("Dense", "kernel", (3, 4))
    Canonical(kind='dense', slot='kernel', layout='in,out')
    >>> native_layout("batchnorm", "count") is None
    True
    >>> keras_canonical("SeparableConv2D", "pointwise_kernel", (1, 1, 8, 16)).part
    'pointwise'
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import Any

from polybundle.model.canonical import (
    KINDS,
    Canonical,
    conv_spatial,
    shared_layout,
    variable_tag,
)
from polybundle.model.kind_rules import KindRule, KindRules
from polybundle.model.layouts import OPAQUE, SCALAR, conv_tag

KIND_OF_CLASS: dict[str, str] = {
    "Dense": "dense", "Embedding": "embedding", "PReLU": "prelu",
    "LayerNormalization": "layernorm", "GroupNormalization": "groupnorm",
    "BatchNormalization": "batchnorm",
    "DepthwiseConv1D": "depthwise_conv1d", "DepthwiseConv2D": "depthwise_conv2d",
    **{f"Conv{n}D": f"conv{n}d" for n in (1, 2, 3)},
    **{f"Conv{n}DTranspose": f"conv{n}d_transpose" for n in (1, 2, 3)},
    "SeparableConv1D": "separable_conv1d", "SeparableConv2D": "separable_conv2d",
    "Normalization": "normalization", "MultiHeadAttention": "attention",
}
"""Keras layer class name -> canonical kind (grouped convolutions are refined by shape;
``separable_conv{n}d`` is split into a depthwise and a pointwise convolution)."""

LIBRARY_LAYERS = "keras.src.layers."
"""Prefix of the modules of ``keras.layers``' own classes: a variable of a layer of no
kind whose class is defined elsewhere (the user's, or in Keras but outside
``keras.layers``, as ConvNeXt's ``LayerScale``) is a plain ``variable``."""


RULES = KindRules("layers")
"""The kinds registered by :func:`register_kind`, asked before the standard layers."""


def register_kind(
    match: type | Callable[[Any], bool], kind: str, *, slots: Mapping[str, str] | None = None
) -> KindRule:
    """Declare that layers matching ``match`` (a class or a predicate) are of ``kind``.

    Rules registered later are asked first, before Keras' standard layers.
    ``slots`` maps variable names to the kind's canonical slots (default: the
    variable names are the slots). Returns the rule, for :func:`unregister_kind`.
    Raises :class:`ConversionError` for an unknown kind.

    Example:
        >>> import keras
        >>> class Scaled(keras.layers.Layer):
        ...     def build(self, shape):
        ...         self.w = self.add_weight(shape=(shape[-1], 2), name="w")
        >>> rule = register_kind(Scaled, "dense", slots={"w": "kernel"})
        >>> layer = Scaled()
        >>> layer.build((None, 3))
        >>> layer_canonical(layer, "w", (3, 2))
        Canonical(kind='dense', slot='kernel', layout='in,out')
        >>> unregister_kind(rule)
    """
    return RULES.register(match, kind, slots=slots)


def unregister_kind(rule: KindRule) -> None:
    """Remove a rule returned by :func:`register_kind` (nothing if it is gone).

    Example:
        >>> unregister_kind(KindRule(int, "dense"))
    """
    RULES.unregister(rule)


def layer_kind(layer: Any) -> tuple[str, Mapping[str, str]]:
    """Return ``layer``'s kind (``""`` if none) and its variable -> slot names.

    Registered rules first, then ``isinstance`` against ``keras.layers``'
    standard layers (:data:`KIND_OF_CLASS`), so subclasses keep their kind.

    Example:
        >>> import keras
        >>> class FrozenBatchNorm(keras.layers.BatchNormalization):
        ...     pass
        >>> layer_kind(FrozenBatchNorm())[0], layer_kind(keras.layers.ReLU())[0]
        ('batchnorm', '')
    """
    rule = RULES.find(layer)
    if rule is not None:
        return rule.kind, rule.slots
    keras = sys.modules.get("keras")
    if keras is not None:
        for name, kind in KIND_OF_CLASS.items():
            if isinstance(layer, getattr(keras.layers, name)):
                return kind, {}
    return "", {}


def layer_canonical(layer: Any, variable: str, shape: tuple[int, ...]) -> Canonical:
    """Return the canonical form of variable ``variable`` of the live Keras ``layer``.

    The kind comes from :func:`layer_kind`; a variable of a layer of no kind
    whose class is not one of ``keras.layers``' is a plain ``variable``.

    Example:
        >>> import keras
        >>> class ClassToken(keras.layers.Layer):
        ...     def build(self, shape):
        ...         self.token = self.add_weight(shape=(1, 1, shape[-1]), name="token")
        >>> token = ClassToken()
        >>> token.build((None, 4, 8))
        >>> layer_canonical(token, "token", (1, 1, 8))
        Canonical(kind='variable', slot='value', layout='v0,v1,v2')
        >>> layer_canonical(keras.layers.GRU(2), "kernel", (2, 6)).kind
        ''
    """
    kind, slots = layer_kind(layer)
    if not kind:
        if layer is None or type(layer).__module__.startswith(LIBRARY_LAYERS):
            return Canonical.unknown(shape)
        return Canonical("variable", "value", variable_tag(len(shape)), part=variable)
    kernel = tuple(getattr(getattr(layer, "kernel", None), "shape", ()) or ())
    return _kind_canonical(
        kind, slots.get(variable, variable), shape,
        groups=int(getattr(layer, "groups", 1) or 1),
        group_channels=int(kernel[-2]) if len(kernel) >= 2 else 0,
    )

ATTENTION: dict[str, tuple[str, str]] = {
    "query/kernel": ("query_kernel", "in,head,dim"), "key/kernel": ("key_kernel", "in,head,dim"),
    "value/kernel": ("value_kernel", "in,head,dim"), "query/bias": ("query_bias", "head,dim"),
    "key/bias": ("key_bias", "head,dim"), "value/bias": ("value_bias", "head,dim"),
    "attention_output/kernel": ("output_kernel", "head,dim,out"),
    "attention_output/bias": ("output_bias", "out"),
}
"""``MultiHeadAttention``'s variables (``<projection>/<variable>``, as their paths end):
canonical slot and layout (``in`` the input axis, ``head`` heads, ``dim`` head size)."""


def variable_place(layer: Any, path: str, name: str) -> tuple[str, str]:
    """Return the canonical layer (a path) a variable at ``path`` belongs to, and its name there.

    ``layer`` owns the variable. A variable of a multi-head attention layer's
    projections belongs to the attention layer, named ``<projection>/<variable>``;
    any other to its own layer, named ``name``.

    Example:
        >>> variable_place(None, "vit/block0_attn/query/kernel", "kernel")
        ('vit/block0_attn/query', 'kernel')
        >>> import keras
        >>> variable_place(keras.layers.MultiHeadAttention(2, 4),
        ...                "block0_attn/query/kernel", "kernel")
        ('block0_attn', 'query/kernel')
    """
    if layer_kind(layer)[0] == "attention":
        parts = path.rsplit("/", 2)
        owner = parts[0] if len(parts) == 3 else ""
        return owner, "/".join(parts[-2:])
    return path.rpartition("/")[0], name


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
    return _kind_canonical(KIND_OF_CLASS.get(class_name, ""), variable, shape, groups=groups,
                           group_channels=group_channels)


def _separable(kind: str, variable: str, shape: tuple[int, ...]) -> Canonical:
    """Canonical form of a separable convolution's variable: its depthwise or pointwise part."""
    conv = kind.removeprefix("separable_")
    space = ("d", "h", "w")[3 - conv_spatial(conv):]
    if variable == "depthwise_kernel" and len(shape) == len(space) + 2:
        return Canonical(f"depthwise_{conv}", "kernel", ",".join((*space, "c", "m")),
                         part="depthwise")
    if variable == "pointwise_kernel" and len(shape) == len(space) + 2:
        tag = conv_tag(len(space), channels_first=False, transposed=False)
        return Canonical(conv, "kernel", tag, part="pointwise")
    if variable == "bias" and len(shape) == 1:
        return Canonical(conv, "bias", "out", part="pointwise")
    return Canonical.unknown(shape)


def _kind_canonical(
    kind: str, variable: str, shape: tuple[int, ...], *, groups: int, group_channels: int
) -> Canonical:
    """Return the canonical form of variable ``variable`` of a layer of ``kind``."""
    ndim = len(shape)
    if kind == "attention":
        slot, layout = ATTENTION.get(variable, ("", ""))
        if not slot or len(layout.split(",")) != ndim:
            return Canonical.unknown(shape)
        return Canonical(kind, slot, layout)
    if kind.startswith("separable_"):
        return _separable(kind, variable, shape)
    if kind == "normalization":
        if variable not in KINDS[kind]:
            return Canonical.unknown(shape)
        if variable == "count":
            return Canonical(kind, variable, SCALAR)
        return Canonical(kind, variable, "c" if ndim == 1 else variable_tag(ndim))
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
    if slot not in KINDS.get(kind, ()) or (kind, slot) == ("batchnorm", "count"):
        return None
    if slot == "count":
        return SCALAR
    shared = shared_layout(slot, source_layout)
    if shared is not None or kind in ("normalization", "variable"):
        return shared
    if kind == "attention":
        return dict(ATTENTION.values()).get(slot)  # None for a fused slot
    if kind == "dense":
        return "in,out"
    spatial = conv_spatial(kind)
    if kind.startswith("depthwise"):
        return ",".join((*("d", "h", "w")[3 - spatial:], "c", "m"))
    return conv_tag(spatial, channels_first=False, transposed=kind.endswith("_transpose"))
