"""PyTorch's layers as canonical kinds, slots and layout tags.

A module's kind is decided by what it *is*, not by its class name:
:func:`module_kind` asks the rules registered with :func:`register_kind`
(a class, checked with ``isinstance``, or a predicate), then whether the module
is an instance of one of ``torch.nn``'s standard layers -- so a subclass such
as timm's ``BatchNormAct2d`` (a ``BatchNorm2d``) or torchvision's ``LayerNorm2d``
(a ``LayerNorm``) is a batch norm or a layer norm. A tensor held directly by a
module of the user's own class (a class token, a position embedding, a
LayerScale gamma) is a plain ``variable``. :func:`module_canonical` gives the
canonical form of a live module's tensor.

:func:`torch_canonical` says the same from a class *name* (one of ``torch.nn``'s
standard layers) and needs no PyTorch, for readers that see only names.
:func:`native_layout` says which layout PyTorch's layer of a canonical kind
gives each slot, so a conversion can be planned without building a model.

Example:
    >>> torch_canonical("Linear", "weight", (4, 3))
    Canonical(kind='dense', slot='kernel', layout='out,in')
    >>> native_layout("conv2d_transpose", "kernel")
    'in,out,h,w'
    >>> import torch
    >>> class BatchNormAct2d(torch.nn.BatchNorm2d):
    ...     pass
    >>> module_canonical(BatchNormAct2d(4), "running_var", (4,))
    Canonical(kind='batchnorm', slot='moving_variance', layout='c')
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
from polybundle.model.layouts import SCALAR, conv_tag

SLOTS: dict[str, dict[str, str]] = {
    "batchnorm": {
        "weight": "gamma", "bias": "beta", "running_mean": "moving_mean",
        "running_var": "moving_variance", "num_batches_tracked": "count",
    },
    "layernorm": {"weight": "gamma", "bias": "beta"},
    "groupnorm": {"weight": "gamma", "bias": "beta"},
    "normalization": {"mean": "mean", "variance": "variance", "count": "count"},
}
"""Kinds of per-channel tensors: ``{kind: {module attribute: canonical slot}}``
(``normalization`` is the default naming for a module registered as one)."""

KIND_OF_CLASS: dict[str, str] = {
    "Linear": "dense", "Embedding": "embedding", "PReLU": "prelu", "LayerNorm": "layernorm",
    "GroupNorm": "groupnorm", "BatchNorm1d": "batchnorm", "BatchNorm2d": "batchnorm",
    "BatchNorm3d": "batchnorm",
    **{f"Conv{n}d": f"conv{n}d" for n in (1, 2, 3)},
    **{f"ConvTranspose{n}d": f"conv{n}d_transpose" for n in (1, 2, 3)},
    "MultiheadAttention": "attention",
}
"""``torch.nn`` class name -> canonical kind (grouped convolutions are refined by shape)."""

ATTENTION: dict[str, tuple[str, str]] = {
    "in_proj_weight": ("qkv_kernel", "n*head*dim,in"), "in_proj_bias": ("qkv_bias", "n*head*dim"),
    "q_proj_weight": ("query_kernel", "head*dim,in"),
    "k_proj_weight": ("key_kernel", "head*dim,in"),
    "v_proj_weight": ("value_kernel", "head*dim,in"),
    "out_proj.weight": ("output_kernel", "out,head*dim"), "out_proj.bias": ("output_bias", "out"),
}
"""``nn.MultiheadAttention``'s tensors (as named from the attention module): canonical
slot and layout. ``in_proj_weight`` stacks the query, key and value projections
(``n``: the parts axis); ``q/k/v_proj_weight`` are used instead when ``kdim`` or
``vdim`` differ from the embedding size."""

OWN_MODULES = "torch."
"""Prefix of the modules defining PyTorch's own classes: a tensor held directly by a
module of a class defined elsewhere, of no kind, is a plain ``variable``."""


RULES = KindRules("modules")
"""The kinds registered by :func:`register_kind`, asked before the standard layers."""


def register_kind(
    match: type | Callable[[Any], bool], kind: str, *, slots: Mapping[str, str] | None = None
) -> KindRule:
    """Declare that modules matching ``match`` (a class or a predicate) are layers of ``kind``.

    Rules registered later are asked first, before ``torch.nn``'s standard
    layers. ``slots`` maps attribute names to the kind's canonical slots
    (``{"matrix": "kernel"}``; default: the standard layer's attribute names,
    e.g. :data:`SLOTS`). Returns the rule, for
    :func:`unregister_kind`. Raises :class:`ConversionError` for an unknown kind.

    Example:
        >>> import torch
        >>> class Standardize(torch.nn.Module):  # a user's twin of Keras' Normalization
        ...     def __init__(self, channels):
        ...         super().__init__()
        ...         self.register_buffer("mu", torch.zeros(channels))
        ...         self.register_buffer("var", torch.ones(channels))
        ...         self.register_buffer("count", torch.zeros((), dtype=torch.int64))
        >>> rule = register_kind(Standardize, "normalization",
        ...                      slots={"mu": "mean", "var": "variance", "count": "count"})
        >>> module_canonical(Standardize(3), "var", (3,))
        Canonical(kind='normalization', slot='variance', layout='c')
        >>> unregister_kind(rule)
    """
    return RULES.register(match, kind, slots=slots)


def unregister_kind(rule: KindRule) -> None:
    """Remove a rule returned by :func:`register_kind` (nothing if it is gone).

    Example:
        >>> unregister_kind(KindRule(int, "dense"))
    """
    RULES.unregister(rule)


def module_kind(module: Any) -> tuple[str, Mapping[str, str]]:
    """Return ``module``'s canonical kind (``""`` if none) and its attribute -> slot names.

    Registered rules first, then ``isinstance`` against ``torch.nn``'s standard
    layers (:data:`KIND_OF_CLASS`), so subclasses of them keep their kind.

    Example:
        >>> import torch
        >>> class LayerNorm2d(torch.nn.LayerNorm):  # torchvision's, channels-first
        ...     pass
        >>> module_kind(LayerNorm2d(8))[0], module_kind(torch.nn.ReLU())[0]
        ('layernorm', '')
    """
    rule = RULES.find(module)
    if rule is not None:
        return rule.kind, rule.slots or SLOTS.get(rule.kind, {})
    torch = sys.modules.get("torch")
    if torch is not None:
        for name, kind in KIND_OF_CLASS.items():
            if isinstance(module, getattr(torch.nn, name)):
                return kind, SLOTS.get(kind, {})
    return "", {}


def tensor_owner(modules: Mapping[str, Any], key: str) -> tuple[str, str]:
    """Return the layer (module path) owning state-dict entry ``key``, and its name there.

    A tensor of a submodule of an attention layer (``out_proj``) belongs to the
    attention layer, as one canonical layer; any other belongs to its module.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.MultiheadAttention(8, 2))
        >>> tensor_owner(dict(net.named_modules()), "0.out_proj.weight")
        ('0', 'out_proj.weight')
        >>> tensor_owner(dict(net.named_modules()), "0.in_proj_bias")
        ('0', 'in_proj_bias')
    """
    owner, _, attribute = key.rpartition(".")
    parent, _, child = owner.rpartition(".")
    if child and module_kind(modules.get(parent))[0] == "attention":
        return parent, f"{child}.{attribute}"
    return owner, attribute


_STANDARD_ATTRIBUTE = {"kernel": "weight", "bias": "bias", "embeddings": "weight",
                       "alpha": "weight"}
"""Canonical slot -> the attribute ``torch.nn``'s standard layers keep it in."""


def _statistic_layout(shape: tuple[int, ...]) -> str:
    """Tag of a normalisation statistic: ``c`` for a vector, else kept axis by axis."""
    return "c" if len(shape) == 1 else variable_tag(len(shape))


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
    return _kind_canonical(KIND_OF_CLASS.get(class_name, ""), attribute, shape, groups=groups,
                           group_channels=group_channels)


def module_canonical(module: Any, attribute: str, shape: tuple[int, ...]) -> Canonical:
    """Return the canonical form of the live ``module``'s tensor ``attribute``.

    The kind comes from :func:`module_kind`; a tensor held directly by a module
    of no kind whose class is the user's own (not PyTorch's) is a ``variable``.

    Example:
        >>> import torch
        >>> class ViTStem(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.cls_token = torch.nn.Parameter(torch.zeros(1, 1, 8))
        >>> module_canonical(ViTStem(), "cls_token", (1, 1, 8))
        Canonical(kind='variable', slot='value', layout='v0,v1,v2')
        >>> module_canonical(torch.nn.GRU(2, 2), "weight_ih_l0", (6, 2)).kind
        ''
    """
    kind, slots = module_kind(module)
    if not kind:
        if module is None or type(module).__module__.startswith(OWN_MODULES):
            return Canonical.unknown(shape)
        return Canonical("variable", "value", variable_tag(len(shape)), part=attribute)
    if kind not in SLOTS and slots:  # a registered layer's names: as the standard layer's
        attribute = _STANDARD_ATTRIBUTE.get(slots.get(attribute, ""), "")
    groups = int(getattr(module, "groups", 1) or 1)
    in_channels = int(getattr(module, "in_channels", 0) or 0)
    return _kind_canonical(kind, attribute, shape, groups=groups,
                           group_channels=in_channels // groups, slots=slots)


def _kind_canonical(
    kind: str, attribute: str, shape: tuple[int, ...], *, groups: int, group_channels: int,
    slots: Mapping[str, str] | None = None,
) -> Canonical:
    """Return the canonical form of tensor ``attribute`` of a layer of ``kind``."""
    ndim = len(shape)
    names = slots if slots else SLOTS.get(kind, {})
    if kind == "attention":
        slot, layout = ATTENTION.get(attribute, ("", ""))
        if not slot or len(layout.split(",")) != ndim:
            return Canonical.unknown(shape)
        return Canonical(kind, slot, layout)
    if kind == "normalization":
        slot = names.get(attribute)
        if slot is None:
            return Canonical.unknown(shape)
        return Canonical(kind, slot, SCALAR if slot == "count" else _statistic_layout(shape))
    if kind in SLOTS:
        slot = names.get(attribute)
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
    if shared is not None or kind in ("normalization", "variable"):
        return shared
    if kind == "attention":
        return dict(ATTENTION.values()).get(slot, "head*dim")  # or a bias of one part
    if kind == "dense":
        return "out,in"
    spatial = conv_spatial(kind)
    if kind.startswith("depthwise"):
        return ",".join(("c*m", "1", *("d", "h", "w")[3 - spatial:]))
    return conv_tag(spatial, channels_first=True, transposed=kind.endswith("_transpose"))
