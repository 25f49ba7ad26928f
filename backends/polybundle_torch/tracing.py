"""Trace a PyTorch model into a neutral :class:`~polybundle.model.graph.OpGraph`.

:func:`trace` runs ``torch.fx``'s symbolic trace with shape propagation on the
sample input, which sees every call (modules, ``torch.flatten``, ``x.view``,
``permute``, additions) and so follows what each axis means from the input to
every layer. A model ``torch.fx`` cannot trace (data-dependent control flow)
is run once with forward hooks on its modules instead: they give the calls in
execution order, their shapes and which module produced each tensor a module
reads (a tensor made between modules is linked to the call that ran last);
what happens between modules (a functional ``flatten``) is then unknown, and
the graph says so (``None`` axes), so the core refuses rather than guesses.

Example:
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(),
    ...                           torch.nn.Linear(4 * 6 * 6, 2))
    >>> graph = trace(net, {"input": np.zeros((1, 3, 8, 8), "f4")})
    >>> graph.note, graph.input_layouts()
    ('torch.fx', ['n,c,h,w'])
    >>> [atom for atom, _ in graph.feature_atoms(graph.weighted_ops()[-1].id)]
    ['c', 'h', 'w']
"""

from __future__ import annotations

import contextlib
import io
import operator
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from polybundle.model.graph import (
    INPUT,
    Axes,
    Op,
    OpGraph,
    flatten_axes,
    image_axes,
    input_axes_of,
    permute_axes,
    resized_axes,
)
from polybundle.tools.parity import input_names
from polybundle_torch.arrays import from_numpy
from polybundle_torch.layers import module_canonical, module_kind

RESAMPLING = re.compile(r"_?((adaptive_)?(max|avg|lp)_pool[123]d(_with_indices)?|interpolate"
                        r"|upsample(_nearest|_bilinear)?)")
"""Functions that resize the trailing (spatial) axes and keep every other axis as it is."""

CHANNEL_STATISTICS = ("batchnorm", "normalization")
"""Kinds whose per-channel statistics read axis 1 of an input of rank 3 or more, as PyTorch
defines them: such a layer reading a model input says the input is channels-first."""


def _weighted(module: Any) -> bool:
    """A module that holds tensors itself (not only through children)."""
    return any(True for _ in module.parameters(recurse=False)) or any(
        True for _ in module.buffers(recurse=False))


def _module_axes(module: Any, op_id: int, in_axes: Axes | None, in_shape: Sequence[int],
                 out_shape: Sequence[int]) -> tuple[Axes | None, Axes | None]:
    """Return (how ``module`` reads its input, what its output's axes mean)."""
    import torch

    if isinstance(module, torch.nn.modules.conv._ConvNd) and len(in_shape) >= 3:
        read = image_axes(in_shape[0], in_shape[1], in_shape[2:], channels_first=True)
        return read, image_axes(out_shape[0], out_shape[1], out_shape[2:], channels_first=True)
    if isinstance(module, torch.nn.Linear):
        if in_axes is None or len(out_shape) != len(in_axes):
            return in_axes, None
        return in_axes, (*in_axes[:-1], ((f"f{op_id}", int(out_shape[-1])),))
    if isinstance(module, torch.nn.Flatten):
        if module.end_dim in (-1, len(in_shape) - 1):
            return in_axes, flatten_axes(in_axes, module.start_dim % max(len(in_shape), 1))
        return in_axes, None
    if isinstance(module, torch.nn.Embedding):
        return in_axes, None
    if module_kind(module)[0] in CHANNEL_STATISTICS and len(in_shape) >= 3:
        read = image_axes(in_shape[0], in_shape[1], in_shape[2:], channels_first=True)
        return read, resized_axes(in_axes, out_shape)
    return in_axes, resized_axes(in_axes, out_shape)


def _call_axes(target: Any, args: Sequence[Any], kwargs: dict[str, Any], in_axes: Axes | None,
               in_shape: Sequence[int], out_shape: Sequence[int]) -> Axes | None:
    """What the output axes of a function or method call mean (None: unknown)."""
    name = target if isinstance(target, str) else getattr(target, "__name__", "")
    rank = len(in_shape)
    if name == "flatten":
        start = kwargs.get("start_dim", args[1] if len(args) > 1 else 0)
        end = kwargs.get("end_dim", args[2] if len(args) > 2 else -1)
        if isinstance(start, int) and end in (-1, rank - 1):
            return flatten_axes(in_axes, start % rank)
        return None
    if name in ("view", "reshape"):
        if tuple(out_shape) == tuple(in_shape):
            return in_axes
        if len(out_shape) == 2 and out_shape[0] == in_shape[0]:
            return flatten_axes(in_axes, 1)
        return None
    if name == "permute":
        dims = args[1:] if len(args) > 2 or not isinstance(args[1], (tuple, list)) else args[1]
        return permute_axes(in_axes, [d % rank for d in dims])
    if name in ("transpose",) and len(args) >= 3:
        order = list(range(rank))
        a, b = args[1] % rank, args[2] % rank
        order[a], order[b] = order[b], order[a]
        return permute_axes(in_axes, order)
    if name in ("mean", "sum", "amax") and in_axes is not None:
        dims = kwargs.get("dim", args[1] if len(args) > 1 else None)
        keep = kwargs.get("keepdim", args[2] if len(args) > 2 else False)
        if dims is None or keep:
            return resized_axes(in_axes, out_shape)
        dims = {d % rank for d in ((dims,) if isinstance(dims, int) else dims)}
        return tuple(axis for i, axis in enumerate(in_axes) if i not in dims)
    if RESAMPLING.fullmatch(name) and len(out_shape) == rank and (
            tuple(out_shape[:2]) == tuple(in_shape[:2])):
        return resized_axes(in_axes, out_shape)
    if tuple(out_shape) == tuple(in_shape):
        return in_axes
    return None


def _functional_axes(kind: str, op_id: int, in_axes: Axes | None, in_shape: Sequence[int],
                     out_shape: Sequence[int]) -> tuple[Axes | None, Axes | None]:
    """(read, output) axes of ``torch.nn.functional.<kind>`` called with a module's tensors."""
    if kind in ("conv1d", "conv2d", "conv3d") and len(in_shape) >= 3:
        return (image_axes(in_shape[0], in_shape[1], in_shape[2:], channels_first=True),
                image_axes(out_shape[0], out_shape[1], out_shape[2:], channels_first=True))
    if kind == "linear":
        if in_axes is None or len(out_shape) != len(in_axes):
            return in_axes, None
        return in_axes, (*in_axes[:-1], ((f"f{op_id}", int(out_shape[-1])),))
    same = tuple(in_shape) == tuple(out_shape)
    return in_axes, resized_axes(in_axes, out_shape) if same else None


def _kind_of_call(target: Any) -> str:
    name = target if isinstance(target, str) else getattr(target, "__name__", "")
    if target in (operator.add, operator.iadd) or name in ("add", "add_"):
        return "add"
    return name or "other"


def trace(model: Any, inputs: dict[str, np.ndarray]) -> OpGraph:
    """Return ``model``'s dataflow graph on ``inputs`` (named as the parity harness names them).

    ``torch.fx`` first; forward hooks when it cannot trace the model. The model
    is run in eval mode under ``torch.no_grad()`` and left in the mode it was in.
    """
    import torch

    args = [from_numpy(np.asarray(inputs[k])) for k in input_names(inputs)]
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            try:
                return _trace_fx(model, args)
            except Exception as exc:  # fx cannot trace every model: fall back to hooks
                return _trace_hooks(model, args, f"forward hooks (torch.fx: {exc})"[:200])
    finally:
        model.train(training)


def _shape(value: Any) -> tuple[int, ...]:
    meta = getattr(value, "meta", {}).get("tensor_meta")
    return tuple(int(n) for n in meta.shape) if meta is not None and hasattr(meta, "shape") else ()


def _symbolic_trace(model: Any) -> Any:
    """``torch.fx``'s symbolic trace of ``model`` that keeps every module of a canonical kind
    whole (one ``call_module`` node), even a user's subclass with its own ``forward`` (timm's
    ``Conv2dSame``, torchvision's ``LayerNorm2d``): its tensors are then that node's, as the
    tensor specs name them, and what it does inside does not split it into loose calls.

    Example:
        >>> import torch
        >>> class PaddedConv(torch.nn.Conv2d):  # a user's subclass with its own forward
        ...     def forward(self, x):
        ...         return super().forward(torch.nn.functional.pad(x, [0, 1, 0, 1]))
        >>> traced = _symbolic_trace(torch.nn.Sequential(PaddedConv(3, 4, 3, 2)))
        >>> [(node.op, node.target) for node in traced.graph.nodes][1]
        ('call_module', '0')
    """
    import torch

    class KindLeaves(torch.fx.Tracer):
        def is_leaf_module(self, module: Any, qualified_name: str) -> bool:
            return bool(module_kind(module)[0]) or super().is_leaf_module(module,
                                                                          qualified_name)

    return torch.fx.GraphModule(model, KindLeaves().trace(model))


def _trace_fx(model: Any, args: list[Any]) -> OpGraph:
    import torch
    from torch.fx.passes.shape_prop import ShapeProp

    module = _symbolic_trace(model)
    with contextlib.redirect_stderr(io.StringIO()):  # ShapeProp prints what it re-raises
        ShapeProp(module).propagate(*args)
    stored = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    # a constant not stored (a non-persistent buffer) is no layer's tensor: the call
    # reading it is an ordinary op
    modules = dict(model.named_modules())
    ops: list[Op] = []
    ids: dict[Any, int] = {}
    axes: dict[Any, Axes | None] = {}
    outputs: list[int] = []
    for node in module.graph.nodes:
        if node.op == "output":
            outputs = [ids[n] for n in _leaves(node.args) if n in ids]
            continue
        params = [a for a in node.all_input_nodes if a.op == "get_attr" and a.target in stored]
        data = [a for a in node.all_input_nodes if a.op != "get_attr"]
        sources = [a for a in data if a in ids]
        first = data[0] if data else None
        in_axes = axes.get(first) if first is not None else None
        in_shape = _shape(first) if first is not None else ()
        shape = _shape(node)
        op_id = len(ops)
        name, kind, read = None, "other", None
        if node.op == "placeholder":
            kind = INPUT
            out = input_axes_of(len([o for o in ops if o.kind == INPUT]), shape)
        elif node.op == "call_module":
            sub = module.get_submodule(node.target)
            read, out = _module_axes(sub, op_id, in_axes, in_shape, shape)
            if _weighted(sub):
                name, kind = str(node.target), type(sub).__name__
            else:
                kind = "flatten" if isinstance(sub, torch.nn.Flatten) else type(sub).__name__
        elif node.op == "get_attr":
            ids[node] = -1  # a tensor the call reading it stands for
            continue
        else:
            kind = _kind_of_call(node.target)
            if params:  # a call reading a module's own tensors is that module's op
                name = _tensor_layer(modules, str(params[0].target), stored)
                read, out = _functional_axes(kind, op_id, in_axes, in_shape, shape)
            else:
                out = _call_axes(node.target, node.args, dict(node.kwargs), in_axes, in_shape,
                                 shape)
        ids[node] = op_id
        axes[node] = out
        ops.append(Op(op_id, name, kind, tuple(ids[s] for s in sources), shape, out,
                      read if name is not None else None, in_axes if name is not None else None))
    return OpGraph(ops, note="torch.fx", outputs=outputs)


def _tensor_layer(modules: dict[str, Any], key: str, stored: dict[str, tuple[int, ...]]) -> str:
    """The layer the tensor specs put state-dict entry ``key`` in: its module, or for a plain
    variable (a LayerScale ``gamma``, a class token) the variable itself (``blocks.0.gamma``)."""
    owner, _, attribute = key.rpartition(".")
    part = module_canonical(modules.get(owner), attribute, stored[key]).part
    return f"{owner}.{part}".lstrip(".") if part else owner


def _leaves(value: Any) -> list[Any]:
    """The fx nodes in an output structure (tuples, lists, dicts), in order."""
    if isinstance(value, (tuple, list)):
        return [leaf for item in value for leaf in _leaves(item)]
    if isinstance(value, dict):
        return [leaf for item in value.values() for leaf in _leaves(item)]
    return [value]


def _trace_hooks(model: Any, args: list[Any], note: str) -> OpGraph:
    import torch

    ops: list[Op] = []
    produced: dict[int, tuple[int, Axes | None]] = {}
    keep: list[Any] = []  # tensors stay alive while traced, so no id is reused
    for index, arg in enumerate(args):
        ops.append(Op(len(ops), None, INPUT, (), tuple(arg.shape), input_axes_of(index, arg.shape)))
        produced[id(arg)] = (ops[-1].id, ops[-1].axes)
        keep.append(arg)

    def hook(name: str) -> Any:
        def record(sub: Any, inputs: tuple[Any, ...], output: Any) -> None:
            tensors = [t for t in inputs if isinstance(t, torch.Tensor)]
            if not tensors or not isinstance(output, torch.Tensor):
                return
            sources = tuple(produced[id(t)][0] for t in tensors if id(t) in produced)
            if not sources:  # made by code between modules the hooks cannot see: the
                sources = (ops[-1].id,)  # call before it is the nearest that ran
            first = produced.get(id(tensors[0]))
            in_axes = first[1] if first is not None else None
            op_id = len(ops)
            read, out = _module_axes(sub, op_id, in_axes, tuple(tensors[0].shape),
                                     tuple(output.shape))
            ops.append(Op(op_id, name, type(sub).__name__, sources, tuple(output.shape), out,
                          read, in_axes))
            produced[id(output)] = (op_id, out)
            keep.append(output)
        return record

    handles = [sub.register_forward_hook(hook(name)) for name, sub in model.named_modules()
               if _weighted(sub) or isinstance(sub, torch.nn.Flatten)]
    try:
        result = model(*args)
    finally:
        for handle in handles:
            handle.remove()
    named = dict(model.named_modules())
    ops = [op if op.kind == INPUT or _weighted(named[op.name]) else
           Op(op.id, None, "flatten", op.inputs, op.shape, op.axes) for op in ops]
    results = result if isinstance(result, (tuple, list)) else [result]
    outputs = [produced[id(t)][0] for t in results if id(t) in produced]
    return OpGraph(ops, note=note, outputs=outputs)


def layer_outputs(model: Any, inputs: dict[str, np.ndarray],
                  layers: Sequence[str]) -> dict[str, np.ndarray]:
    """Return the output of each module named in ``layers`` (its first call) on ``inputs``.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU())
        >>> layer_outputs(net, {"input": np.ones((2, 4), "f4")}, ["0"])["0"].shape
        (2, 3)
    """
    import torch

    found: dict[str, np.ndarray] = {}
    modules = dict(model.named_modules())

    def hook(name: str) -> Any:
        def record(sub: Any, args: Any, output: Any) -> None:
            if isinstance(output, torch.Tensor) and name not in found:
                found[name] = output.detach().cpu().numpy().copy()
        return record

    handles = [modules[name].register_forward_hook(hook(name)) for name in layers
               if name in modules]
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(*[from_numpy(np.asarray(inputs[k])) for k in input_names(inputs)])
    finally:
        model.train(training)
        for handle in handles:
            handle.remove()
    return found
