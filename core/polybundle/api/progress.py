"""Progress bars for saving and loading large bundles (rich, on stderr); printable names.

A bar is shown only when asked for (``progress=True``), when stderr is a
terminal and when the bytes to move reach :data:`THRESHOLD`; below it a save
or load is over before a bar could say anything. The bar is transient: it
disappears when the work is done.
Names from a file are shown through :func:`printable` (the command line uses it too).

Example:
    >>> with progress_bar("saving run.bundle", 10, enabled=True) as advance:
    ...     advance(10)  # below the threshold: no bar, advance does nothing
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


def _visible(char: str) -> str:
    """Return the escape :func:`repr` writes for one non-printable character (``\\x1b``)."""
    return repr(char)[1:-1]


def printable(value: Any) -> str:
    r"""Return ``str(value)`` with every non-printable character shown as an escape.

    Non-printable is what :meth:`str.isprintable` says (as :func:`repr` does):
    C0 controls (newline and tab too), DEL, C1 controls, format characters such
    as bidirectional overrides, separators and lone surrogates.

    Example:
        >>> printable("a\x1b[2Jb\x7f\x9b\u202e")
        'a\\x1b[2Jb\\x7f\\x9b\\u202e'
        >>> printable("plain name [ok]")
        'plain name [ok]'
    """
    text = str(value)
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else _visible(char) for char in text)


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
    thread-safe). Nothing is shown unless ``enabled`` and ``total >= threshold``, and
    nothing at all (not even a blank line) when stderr is not a terminal.
    ``description`` (it holds a file name) is shown as plain text: control
    characters as escapes, no rich markup.

    Example:
        >>> with progress_bar("loading run.bundle", 2**30, enabled=True) as advance:
        ...     for _ in range(4):
        ...         advance(2**28)  # a transient bar on stderr, gone when done
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
    console = Console(file=sys.stderr)
    # Off a terminal (a log file, a pipe) a transient bar has nothing to redraw: rich would
    # still end it with a blank line, so it is not drawn at all.
    with Progress(*columns, console=console, transient=True,
                  disable=not console.is_terminal) as bar:
        task = bar.add_task(printable(description), total=total)
        yield lambda count: bar.advance(task, count)
