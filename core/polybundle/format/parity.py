"""The stored parity record: a role's reference inputs and outputs, named and encoded.

``polybundle.save(..., parity_inputs=...)`` runs each model on its inputs and
stores both in ``<role>/parity.safetensors``; :mod:`polybundle.tools.parity`
reads them back to compare the frameworks. Inputs are named ``input`` (one
array) or ``input.0``, ``input.1``, ... (in call order).

Example:
    >>> sorted(per_role_inputs([np.zeros(2), np.ones(2)], ["net"])["net"])
    ['input.0', 'input.1']
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from safetensors.numpy import save

from polybundle.errors import PolybundleError

PARITY_MEMBER = "parity.safetensors"
"""File name of a role's stored reference inputs and outputs (``<role>/parity.safetensors``)."""

def input_names(inputs: dict[str, np.ndarray]) -> list[str]:
    """Return the input names of ``inputs`` in call order (``input`` or ``input.0``, ...).

    Example:
        >>> input_names({"input.1": 0, "input.0": 0})
        ['input.0', 'input.1']
    """
    if set(inputs) == {"input"}:
        return ["input"]
    names = sorted(inputs, key=lambda n: int(n.split(".", 1)[1]) if n[6:].isdigit() else -1)
    if names != [f"input.{i}" for i in range(len(names))]:
        raise PolybundleError(
            f"parity inputs are named {sorted(inputs)}; expected 'input' or 'input.0', "
            "'input.1', ... (pass an array, or a list of arrays in call order)."
        )
    return names


def as_inputs(value: Any) -> dict[str, np.ndarray]:
    """Return one role's inputs as named arrays: an array, a list of arrays, or named arrays.

    Example:
        >>> sorted(as_inputs([np.zeros(2), np.ones(2)]))
        ['input.0', 'input.1']
    """
    if isinstance(value, dict):
        named = {str(k): np.asarray(v) for k, v in value.items()}
    elif isinstance(value, (list, tuple)):
        named = {f"input.{i}": np.asarray(v) for i, v in enumerate(value)}
    else:
        named = {"input": np.asarray(value)}
    input_names(named)
    return named


def per_role_inputs(inputs: Any, roles: Iterable[str]) -> dict[str, dict[str, np.ndarray]]:
    """Return ``{role: named inputs}``: ``inputs`` is ``{role: ...}`` or one value for all roles.

    Example:
        >>> sorted(per_role_inputs(np.zeros(2), ["a", "b"]))
        ['a', 'b']
    """
    roles = list(roles)
    if isinstance(inputs, dict) and inputs and set(inputs) <= set(roles):
        return {role: as_inputs(value) for role, value in inputs.items()}
    return {role: as_inputs(inputs) for role in roles}


def encode_parity(inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> bytes:
    """Return the safetensors bytes of a role's reference inputs and outputs.

    Example:
        >>> len(encode_parity({"input": np.zeros(2, "f4")}, {"output": np.ones(1, "f4")})) > 0
        True
    """
    return save({k: np.asarray(v, order="C") for k, v in {**inputs, **outputs}.items()})
