"""Framework-free readers of the native weights files inside a bundle.

:func:`read_pth` reads a ``torch.save`` state_dict (``model.pth``) without
importing torch; :func:`read_keras` reads the weights of a Keras 3
``model.keras`` file with h5py, without importing TensorFlow or Keras. Both
return named NumPy arrays, so inspecting and converting a bundle needs only
NumPy and h5py (plus the target framework, when converting).

Example:
    >>> from polybundle.readers import read_pth
    >>> with open("model.pth", "rb") as f:  # doctest: +SKIP
    ...     read_pth(f)["0.weight"].shape
    (8, 1, 3, 3)
"""

from __future__ import annotations

from .keras_file import KerasWeight, read_keras, read_keras_weights
from .torch_zip import read_pth

__all__ = ["read_pth", "read_keras", "read_keras_weights", "KerasWeight"]
