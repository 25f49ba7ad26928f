"""NumPy arrays and TensorFlow tensors on the CPU, handed over without copying their bytes.

A load reads each weight into a new array (:func:`polybundle.format.arrays.read_array`,
64-byte aligned); :func:`adopt` makes that array's memory the tensor a
``tf.Variable`` is created from, through DLPack, so the variable holds the
bytes that were read and nothing is copied (``tf.constant`` of a 400 MiB
array copies it, at a fraction of memory speed). A save reads each variable
through :func:`host_view`, a read-only view of the tensor's buffer.

Example:
    >>> from polybundle.format.arrays import empty_aligned
    >>> array = empty_aligned((2, 3), "float32")
    >>> array[:] = 1.5
    >>> tensor = adopt(array)
    >>> shares_memory(tensor, array), tensor.shape.as_list()
    (True, [2, 3])
    >>> import tensorflow as tf
    >>> variable = tf.Variable(tensor)
    >>> float(host_view(variable)[1, 2])
    1.5
"""

from __future__ import annotations

from typing import Any

import numpy as np

ALIGNMENT = 64
"""Byte boundary TensorFlow's CPU kernels assume of a tensor's buffer (Eigen's widest vectors)."""

_DLPACK_KINDS = frozenset("biuf")
"""NumPy dtype kinds DLPack carries (bool, signed, unsigned, float; not ml_dtypes' bfloat16)."""


def adoptable(array: np.ndarray) -> bool:
    """Return True when TensorFlow can take ``array``'s memory as is.

    It must be writable, own its bytes through its base chain (no read-only
    memory map), be C-contiguous, start on :data:`ALIGNMENT` bytes and hold a
    dtype DLPack carries.

    Example:
        >>> from polybundle.format.arrays import empty_aligned
        >>> adoptable(empty_aligned((4,), "int64")), adoptable(np.arange(3.0)[::2])
        (True, False)
    """
    return (
        array.flags.writeable
        and array.flags.c_contiguous
        and array.dtype.kind in _DLPACK_KINDS
        and array.dtype.isnative
        and array.ctypes.data % ALIGNMENT == 0
    )


def adopt(array: np.ndarray) -> Any:
    """Return a TensorFlow tensor of ``array``: its own memory when :func:`adoptable`, else a copy.

    The caller gives the array up: the tensor (and a variable created from
    it) now holds those bytes, so nothing else may write to the array.

    Example:
        >>> import ml_dtypes
        >>> copied = adopt(np.ones(3, ml_dtypes.bfloat16))  # DLPack has no bfloat16
        >>> copied.dtype.name
        'bfloat16'
    """
    import tensorflow as tf

    if adoptable(array):
        return tf.experimental.dlpack.from_dlpack(array.__dlpack__())
    return tf.convert_to_tensor(array)


def shares_memory(tensor: Any, array: np.ndarray) -> bool:
    """Return True when ``tensor``'s buffer is ``array``'s memory (used by tests and examples).

    Example: see the module docstring.
    """
    return bool(host_view(tensor).ctypes.data == array.ctypes.data)


def host_view(value: Any) -> np.ndarray:
    """Return a read-only NumPy view of a CPU tensor or variable's current value (no copy).

    A ``tf.Variable`` (or a Keras variable) is read first; the view shares the
    buffer of the value read, which a later assignment replaces rather than
    overwrites while the view holds it.

    Example:
        >>> import keras
        >>> view = host_view(keras.Variable(np.arange(4.0, dtype="float32")))
        >>> view.tolist(), view.flags.writeable
        ([0.0, 1.0, 2.0, 3.0], False)
    """
    import keras
    import tensorflow as tf

    if isinstance(value, keras.Variable):
        value = value.value  # its tf.Variable
    if isinstance(value, tf.Variable):
        value = value.read_value()
    return np.asarray(value)
