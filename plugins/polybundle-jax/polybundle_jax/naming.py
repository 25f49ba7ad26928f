"""Tensor names of Flax NNX models, in the order their modules were written.

Example:
    >>> path_name(("blocks", 0, "scale"))
    'blocks.0.scale'
"""

from __future__ import annotations

from typing import Any


def path_name(path: tuple[Any, ...]) -> str:
    """Return the tensor name of an NNX state path (its parts joined by dots).

    Example:
        >>> path_name(("fc1", "kernel"))
        'fc1.kernel'
    """
    return ".".join(str(part) for part in path)


def definition_order(model: Any) -> dict[str, int]:
    """Return ``{variable name: rank}`` in the order the modules assigned their attributes.

    NNX state is sorted by name; conversion pairs layers in model order, so
    the order the model was written in (``vars()`` order) is recovered here.

    Example:
        >>> from flax import nnx
        >>> class Net(nnx.Module):
        ...     def __init__(self) -> None:
        ...         self.second = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
        ...         self.first = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
        >>> list(definition_order(Net()))
        ['second.kernel', 'second.bias', 'first.kernel', 'first.bias']
    """
    from flax import nnx

    node_types = (getattr(nnx, "Pytree", nnx.Module), nnx.Module)
    order: dict[str, int] = {}

    def walk(value: Any, name: str) -> None:
        if isinstance(value, nnx.Variable):
            order.setdefault(name, len(order))
        elif isinstance(value, node_types):
            # NNX re-creates a module's __dict__ in sorted order when a transform (nnx.grad,
            # nnx.jit, optimizer.update) writes it back; its node table keeps assignment order.
            attributes = vars(value)
            ranked = [key for key in getattr(value, "_pytree__nodes", ()) if key in attributes]
            for key in dict.fromkeys([*ranked, *attributes]):
                if not key.startswith("_"):
                    walk(attributes[key], f"{name}.{key}" if name else key)
        elif isinstance(value, (list, tuple)):
            for index, child in enumerate(value):
                walk(child, f"{name}.{index}")
        elif isinstance(value, dict):
            for key, child in value.items():
                walk(child, f"{name}.{key}")

    walk(model, "")
    return order
