"""Legacy archive eras: read, load and migrate archives of the older writers.

This package holds the era protocol (:class:`EraReader`, :class:`LegacyContent`)
and the loading it drives; each era's reader lives in the backend whose files
the era holds and is registered through the ``polybundle_register_eras`` hook
(see :mod:`polybundle.legacy.plugin`). :func:`polybundle.load` dispatches to
them when a detector reports their format. Nothing in an archive is executed:
pickles go through :mod:`polybundle.safety.unpickle`.

Example:
    >>> from polybundle.legacy import EraReader, era_readers
    >>> sorted(era_readers())
    ['legacy-tf-dill', 'legacy-torch-dill', 'legacy-torch-json']
"""

from __future__ import annotations

from polybundle.legacy.era import EraReader, LegacyContent, LegacyRole
from polybundle.legacy.plugin import era_reader, era_readers

__all__ = ["EraReader", "LegacyContent", "LegacyRole", "era_reader", "era_readers"]
