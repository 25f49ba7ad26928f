"""Progress bars for saving and loading large bundles (rich, on stderr).

A bar is shown only when asked for (``progress=True``) and the bytes to move
reach :data:`THRESHOLD`; below it a save or load is over before a bar could
say anything. The bar is transient: it disappears when the work is done.

Example:
    >>> with progress_bar("saving run.bundle", 10, enabled=True) as advance:
    ...     advance(10)  # below the threshold: no bar, advance does nothing
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from polybundle.tools.cli import printable

THRESHOLD = 64 * 1024 * 1024
"""Bytes from which ``progress=True`` shows a bar."""

Advance = Callable[[int], None]


def _ignore(count: int) -> None:
    """Accept a byte count and do nothing (no bar shown)."""


@contextmanager
def progress_bar(
    description: str, total: int, *, enabled: bool, threshold: int = THRESHOLD
) -> Iterator[Advance]:
    """Show a byte-progress bar of ``total`` bytes; yield ``advance(count)``.

    ``advance`` may be called from any thread (rich's progress is
    thread-safe). Nothing is shown unless ``enabled`` and ``total >= threshold``.
    ``description`` (it holds a file name) is shown as plain text: control
    characters as escapes, no rich markup.

    Example:
        >>> with progress_bar("loading", 2**30, enabled=True) as advance:  # doctest: +SKIP
        ...     advance(2**20)
    """
    if not enabled or total < threshold:
        yield _ignore
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )


    columns = (
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(file=sys.stderr), transient=True) as bar:
        task = bar.add_task(printable(description), total=total)
        yield lambda count: bar.advance(task, count)
