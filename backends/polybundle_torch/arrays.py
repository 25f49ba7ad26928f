"""NumPy arrays to and from torch tensors, bit for bit (bfloat16 and float8 via ``ml_dtypes``).

Example:
    >>> import torch
    >>> from_numpy(to_numpy(torch.arange(3.0))).tolist()
    [0.0, 1.0, 2.0]
"""

from __future__ import annotations

from typing import Any

import numpy as np

from polybundle.errors import FormatError
from polybundle.model.backend import ML_DTYPES, dtype_label, resolve_dtype


def to_numpy(tensor: Any) -> np.ndarray:
    """Return a CPU copy-free NumPy view of ``tensor``; bfloat16 and float8 via ``ml_dtypes``.

    NumPy has no bfloat16, so ``tensor.numpy()`` refuses it: the bits are
    viewed as ``int16`` (``uint8`` for float8) and re-viewed as the
    ``ml_dtypes`` type, bit for bit.

    Example:
        >>> import torch
        >>> to_numpy(torch.ones(2, dtype=torch.bfloat16)).dtype.name
        'bfloat16'
    """
    import torch

    tensor = tensor.detach().cpu().contiguous()
    name = str(tensor.dtype).removeprefix("torch.")
    if name in ML_DTYPES:
        bits = torch.int16 if tensor.element_size() == 2 else torch.uint8
        return tensor.view(bits).numpy().view(resolve_dtype(name))
    return tensor.numpy()


def from_numpy(array: np.ndarray) -> Any:
    """Return a new torch tensor holding ``array``'s values bit for bit (``ml_dtypes`` too).

    Example:
        >>> import ml_dtypes
        >>> from_numpy(np.ones(2, ml_dtypes.bfloat16)).dtype
        torch.bfloat16
    """
    import torch

    array = np.asarray(array)
    name = dtype_label(array.dtype)
    if name in ML_DTYPES:
        kind = getattr(torch, name, None)
        if kind is None:
            raise FormatError(
                f"the tensor is {name}, which torch {torch.__version__} lacks; upgrade torch."
            )
        bits = np.int16 if array.dtype.itemsize == 2 else np.uint8
        return torch.from_numpy(np.array(array.view(bits), order="C")).view(kind)
    return torch.from_numpy(np.array(array, order="C"))


def host_copy(tensor: Any, into: np.ndarray | None = None) -> np.ndarray:
    """Copy ``tensor`` (any device) into a host NumPy array in one copy; return the array.

    ``into`` is filled when it has the tensor's shape and dtype (a buffer kept
    from the previous copy: no new memory, no page faults); otherwise a new
    array is made.

    Example:
        >>> import torch
        >>> first = host_copy(torch.ones(2, dtype=torch.bfloat16))
        >>> again = host_copy(torch.zeros(2, dtype=torch.bfloat16), into=first)
        >>> again is first, again.tolist()
        (True, [0.0, 0.0])
    """
    import torch

    tensor = tensor.detach()
    dtype = to_numpy(torch.empty(0, dtype=tensor.dtype)).dtype
    shape = tuple(tensor.shape)
    if into is None or into.shape != shape or into.dtype != dtype or not into.flags.c_contiguous:
        into = np.empty(shape, dtype)
    bits = into.view(np.int16 if dtype.itemsize == 2 else np.uint8) \
        if dtype_label(dtype) in ML_DTYPES else into
    copy_tensor(torch.from_numpy(bits).view(tensor.dtype), tensor)
    return into


def copy_tensor(target: Any, source: Any) -> None:
    """Copy ``source`` into ``target`` (same shape and dtype; ``source`` on any device).

    Between contiguous CPU tensors the copy is one single-threaded ``memcpy``
    through NumPy: torch's ``copy_`` wakes its thread pool for each tensor,
    which on a busy machine costs several times the copy itself. Otherwise
    (another device, other strides) it is ``copy_``.

    Example:
        >>> import torch
        >>> target = torch.empty(3)
        >>> copy_tensor(target, torch.arange(3.0))
        >>> target.tolist()
        [0.0, 1.0, 2.0]
    """
    source = source.detach()
    if source.device.type == "cpu" and source.is_contiguous() and target.is_contiguous():
        np.copyto(to_numpy(target), to_numpy(source))
    else:
        target.copy_(source)
