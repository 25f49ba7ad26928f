"""Progress bars: moved to :mod:`polybundle.api.progress` (the API shows them).

These names stay importable from here while callers move.

Example:
    >>> progress_bar.__module__
    'polybundle.api.progress'
"""

from polybundle.api.progress import THRESHOLD as THRESHOLD
from polybundle.api.progress import progress_bar as progress_bar
