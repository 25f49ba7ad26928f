"""``python -m polybundle``: the ``polybundle`` command (see :mod:`polybundle.tools.cli`).

Example:
    $ python -m polybundle inspect run.bundle
"""

from __future__ import annotations

import sys

from polybundle.tools.cli import main

if __name__ == "__main__":
    sys.exit(main())
