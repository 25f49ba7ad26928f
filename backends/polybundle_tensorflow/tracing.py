"""Trace a Keras model into a neutral :class:`~polybundle.model.graph.OpGraph`.

A functional model (and a ``Sequential`` one, which Keras builds into one) *is* a
dataflow graph: :func:`trace` walks it from the model's inputs, one op per layer
call (a shared layer's every call), with the layers whose outputs each call
reads, the shapes Keras inferred (the batch axis sized as the sample's) and what
each axis means (a convolution's ``data_format``, ``Flatten``, ``Permute``,
``Reshape``, global pooling, ``Dense``). A subclassed model has no such graph:
:func:`trace` returns None and the core says the conversion was paired by order.

Example:
    >>> import keras
    >>> inputs = keras.Input((8, 8, 3))
    >>> features = keras.layers.Flatten()(keras.layers.Conv2D(4, 3, name="conv")(inputs))
    >>> net = keras.Model(inputs, keras.layers.Dense(2, name="head")(features))
    >>> graph = trace(net, {"input": np.zeros((1, 8, 8, 3), "f4")})
    >>> graph.input_layouts(), [op.name for op in graph.weighted_ops()]
    (['n,h,w,c'], ['conv', 'head'])
    >>> [atom for atom, _ in graph.feature_atoms(graph.weighted_ops()[-1].id)]
    ['h', 'w', 'c']
"""

from __future__ import annotations

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
from polybundle_tensorflow.layers import variable_place


def _layer_name(layer: Any) -> str | None:
    """The ``layer`` its tensors are described with (the variables' path without the
    variable's name); None for a layer without weights."""
    weights = list(getattr(layer, "weights", ()) or ())
    return variable_place(layer, str(weights[0].path), weights[0].name)[0] if weights else None


def _image(shape: Sequence[int], channels_last: bool) -> Axes:
    if channels_last:
        return image_axes(shape[0], shape[-1], shape[1:-1], channels_first=False)
    return image_axes(shape[0], shape[1], shape[2:], channels_first=True)


def _layer_axes(layer: Any, op_id: int, in_axes: Axes | None, in_shape: Sequence[int],
                shape: Sequence[int]) -> tuple[Axes | None, Axes | None]:
    """Return (how ``layer`` reads its input, what its output's axes mean)."""
    import keras

    name = type(layer).__name__
    channels_last = getattr(layer, "data_format", "channels_last") != "channels_first"
    if hasattr(layer, "kernel_size") and hasattr(layer, "data_format") and len(in_shape) >= 3:
        return _image(in_shape, channels_last), _image(shape, channels_last)
    if isinstance(layer, keras.layers.Dense):
        if in_axes is None or len(in_axes) != len(shape):
            return in_axes, None
        return in_axes, (*in_axes[:-1], ((f"f{op_id}", int(shape[-1])),))
    if isinstance(layer, keras.layers.Flatten):
        axes = in_axes
        if not channels_last and axes is not None and len(axes) > 2:
            axes = permute_axes(axes, (0, *range(2, len(axes)), 1))
        return in_axes, flatten_axes(axes, 1)
    if isinstance(layer, keras.layers.Permute):
        return in_axes, permute_axes(in_axes, (0, *layer.dims))
    if isinstance(layer, keras.layers.Reshape):
        if tuple(shape) == tuple(in_shape):
            return in_axes, in_axes
        return in_axes, flatten_axes(in_axes, 1) if len(shape) == 2 else None
    if name.startswith("Global") and in_axes is not None and not getattr(layer, "keepdims", False):
        return in_axes, (in_axes[0], in_axes[-1] if channels_last else in_axes[1])
    if isinstance(layer, (keras.layers.Normalization, keras.layers.BatchNormalization)):
        return _statistics_axes(layer, in_axes, in_shape), resized_axes(in_axes, shape)
    return in_axes, resized_axes(in_axes, shape)


def _statistics_axes(layer: Any, in_axes: Axes | None, in_shape: Sequence[int]) -> Axes | None:
    """How a layer of per-channel statistics (``Normalization``, ``BatchNormalization``) reads
    its input: an image whose channels are its one ``axis`` when that is the last or the
    second axis of an input of rank 3 or more (so a model input it reads first has a known
    layout), else as traced."""
    axis = layer.axis
    axes = tuple(axis) if isinstance(axis, (tuple, list)) else (axis,)
    rank = len(in_shape)
    if rank < 3 or len(axes) != 1 or axes[0] % rank not in (1, rank - 1):
        return in_axes
    return _image(in_shape, channels_last=axes[0] % rank == rank - 1)


def _graph_model(model: Any) -> Any | None:
    """The functional graph of ``model``: itself, a Sequential's inner one, or None."""
    import keras

    inner = getattr(model, "_functional", None)
    if isinstance(model, keras.Sequential) and inner is not None:
        return inner
    if hasattr(model, "_operations") and getattr(model, "inputs", None) is not None and hasattr(
            model, "_nodes_by_depth"):
        return model
    return None


def _walk(graph: Any, ops: list[Op], produced: dict[int, tuple[int, Axes | None]],
          sized: Any) -> None:
    """Append to ``ops`` one op per layer call of the functional ``graph`` whose inputs are
    ``produced`` (tensor id -> (op id, axes)), recording what each call produces.

    A nested functional or Sequential model (ConvNeXt's stem) is walked through, its
    inputs standing for the tensors it is called with: its layers are ops of their own,
    named as their tensors are (``stem/stem_conv``), as the other framework's are.

    Example:
        >>> import keras
        >>> stem = keras.Sequential([keras.layers.Conv2D(4, 2, name="conv"),
        ...                          keras.layers.LayerNormalization(name="norm")], name="stem")
        >>> inputs = keras.Input((8, 8, 3))
        >>> net = keras.Model(inputs, keras.layers.Dense(2, name="head")(stem(inputs)))
        >>> graph = trace(net, {"input": np.zeros((1, 8, 8, 3), "f4")})
        >>> [op.name for op in graph.weighted_ops()], graph.input_layouts()
        (['stem/conv', 'stem/norm', 'head'], ['n,h,w,c'])
    """
    for layer in graph.operations:
        for node in getattr(layer, "_inbound_nodes", ()):
            tensors = list(node.input_tensors)
            if not tensors or any(id(t) not in produced for t in tensors):
                continue  # an input layer, or a call from another model
            outputs = list(node.output_tensors)
            inner = _graph_model(layer)
            if inner is not None and len(inner.inputs) == len(tensors) and len(
                    inner.outputs) == len(outputs):
                for inner_input, tensor in zip(inner.inputs, tensors, strict=True):
                    produced[id(inner_input)] = produced[id(tensor)]
                _walk(inner, ops, produced, sized)
                if all(id(t) in produced for t in inner.outputs):
                    for output, inner_output in zip(outputs, inner.outputs, strict=True):
                        produced[id(output)] = produced[id(inner_output)]
                    continue
            in_axes = produced[id(tensors[0])][1]
            op_id = len(ops)
            shape = sized(outputs[0])
            read, out = _layer_axes(layer, op_id, in_axes, sized(tensors[0]), shape)
            name = _layer_name(layer)
            kind = type(layer).__name__
            ops.append(Op(op_id, name, kind, tuple(produced[id(t)][0] for t in tensors), shape,
                          out, read if name is not None else None,
                          in_axes if name is not None else None))
            for output in outputs:
                produced[id(output)] = (op_id, out)


def trace(model: Any, inputs: dict[str, np.ndarray]) -> OpGraph | None:
    """Return ``model``'s dataflow graph (its functional graph), or None for a subclassed model.

    ``inputs`` (named as the parity harness names them) give the batch size
    only: nothing is computed.
    """
    graph = _graph_model(model)
    if graph is None:
        return None
    samples = [np.asarray(inputs[k]) for k in input_names(inputs)]
    batch = int(samples[0].shape[0]) if samples and samples[0].ndim else 1

    def sized(tensor: Any) -> tuple[int, ...]:
        return tuple(batch if d is None else int(d) for d in tensor.shape)

    ops: list[Op] = []
    produced: dict[int, tuple[int, Axes | None]] = {}
    for index, tensor in enumerate(graph.inputs):
        shape = sized(tensor)
        axes = input_axes_of(index, shape)
        ops.append(Op(len(ops), None, INPUT, (), shape, axes))
        produced[id(tensor)] = (ops[-1].id, axes)
    _walk(graph, ops, produced, sized)
    outputs = [produced[id(t)][0] for t in graph.outputs if id(t) in produced]
    return OpGraph(ops, note="keras functional graph", outputs=outputs)


def layer_outputs(model: Any, inputs: dict[str, np.ndarray],
                  layers: Sequence[str]) -> dict[str, np.ndarray]:
    """Return the output of each layer named in ``layers`` (called once) on ``inputs``.

    Works on functional (and Sequential) models: a model with the same inputs
    whose outputs are those layers' inputs is run in inference mode, then each
    layer on its input with its fused activation (``Dense(..., activation=)``)
    left out, as other frameworks compute it in a separate op.

    Example:
        >>> import keras
        >>> inputs = keras.Input((4,))
        >>> net = keras.Model(inputs, keras.layers.Dense(3, name="fc")(inputs))
        >>> layer_outputs(net, {"input": np.ones((2, 4), "f4")}, ["fc"])["fc"].shape
        (2, 3)
    """
    import keras

    graph = _graph_model(model)
    if graph is None:
        return {}
    wanted = {}
    for layer in graph.operations:
        name = _layer_name(layer)
        if name in layers and len(getattr(layer, "_inbound_nodes", ())) == 1:
            wanted[name] = layer
    if not wanted:
        return {}
    probe = keras.Model(graph.inputs, [layer.input for layer in wanted.values()])
    args = [np.asarray(inputs[k]) for k in input_names(inputs)]
    layer_inputs = probe(args, training=False)
    if len(wanted) == 1 and not isinstance(layer_inputs, (list, tuple)):
        layer_inputs = [layer_inputs]
    return {name: _without_activation(layer, value)
            for (name, layer), value in zip(wanted.items(), layer_inputs, strict=True)}


def _without_activation(layer: Any, value: Any) -> np.ndarray:
    """``layer``'s output on ``value`` before its fused activation (what another framework's
    layer of the same kind computes; the activation is its own op there)."""
    import keras

    activation = getattr(layer, "activation", None)
    if activation is None:
        return np.asarray(layer(value, training=False))
    layer.activation = keras.activations.linear
    try:
        return np.asarray(layer(value, training=False))
    finally:
        layer.activation = activation


def sample_inputs(model: Any, batch: int = 2) -> dict[str, np.ndarray] | None:
    """Return a seeded sample of the input shapes a functional model declares, or None.

    Float inputs are standard normal; integer ones (token ids) are 0 or 1.

    Example:
        >>> import keras
        >>> inputs = keras.Input((4, 4, 3))
        >>> net = keras.Model(inputs, keras.layers.Conv2D(2, 3)(inputs))
        >>> sample_inputs(net)["input"].shape
        (2, 4, 4, 3)
    """
    graph = _graph_model(model)
    if graph is None:
        return None
    shapes = [tuple(t.shape[1:]) for t in graph.inputs]
    if any(d is None for shape in shapes for d in shape):
        return None
    rng = np.random.default_rng(0)
    arrays = []
    for tensor, shape in zip(graph.inputs, shapes, strict=True):
        dtype = np.dtype(str(tensor.dtype))
        if dtype.kind in "iu":
            arrays.append(rng.integers(0, 2, (batch, *shape)).astype(dtype))
        else:
            arrays.append(rng.standard_normal((batch, *shape)).astype(dtype))
    if len(arrays) == 1:
        return {"input": arrays[0]}
    return {f"input.{i}": array for i, array in enumerate(arrays)}
