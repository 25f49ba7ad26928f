"""Legacy archive eras: read, load and migrate archives of the older writers.

Readers for the TensorFlow dill era, the PyTorch dill era and the PyTorch
JSON era are registered through the ``polybundle_register_eras`` hook (see
:mod:`polybundle.legacy.plugin`); :func:`polybundle.load` dispatches to them
when a detector reports their format. Nothing in an archive is executed:
pickles go through :mod:`polybundle.safety.unpickle`, ``custom_objects.dill`` is
only unpickled with ``trust_code=True``.

Example:
    >>> from polybundle.legacy import EraReader, era_readers
    >>> sorted(era_readers())
    ['legacy-tf-dill', 'legacy-torch-dill', 'legacy-torch-json']
"""

from __future__ import annotations

from polybundle.legacy.era import EraReader, LegacyContent, LegacyRole
from polybundle.legacy.plugin import era_reader, era_readers

__all__ = ["EraReader", "LegacyContent", "LegacyRole", "era_reader", "era_readers"]
