"""The background writer of asynchronous checkpoints: one job in flight, errors kept.

:class:`BackgroundWriter` runs one job at a time on its own thread; submitting
the next job first waits for the one in flight. The thread is not a daemon, so
a process that ends normally (the main module returns, ``sys.exit``, an
uncaught exception) finishes the write first: Python joins such threads
before it shuts down. An error the job raises is kept and re-raised by the
next :meth:`~BackgroundWriter.wait` (or submit) as a
:class:`~polybundle.errors.CheckpointError` whose ``__cause__`` is the
original; one nobody collected before the process exits is printed to
standard error.

Example:
    >>> writer = BackgroundWriter("ckpt")
    >>> writer.submit(lambda: None, "step 1")
    >>> writer.wait()
    >>> writer.submit(lambda: 1 / 0, "step 2")
    >>> writer.wait()
    Traceback (most recent call last):
    ...
    polybundle.errors.CheckpointError: the background save of step 2 into 'ckpt' failed
    (ZeroDivisionError: division by zero); that checkpoint was not committed, and the
    directory still holds the checkpoints saved before it. Fix the cause and save again.
    >>> writer.wait()  # reported once
"""

from __future__ import annotations

import atexit
import sys
import threading
import weakref
from collections.abc import Callable
from typing import Any

from polybundle.errors import CheckpointError

_UNCOLLECTED: weakref.WeakSet[BackgroundWriter] = weakref.WeakSet()
"""Writers holding an error that no call has re-raised yet (reported at exit)."""


class BackgroundWriter:
    """Run jobs one at a time on a non-daemon thread; keep a failure for the next call.

    ``where`` names the destination in error messages.

    Example:
        >>> writer = BackgroundWriter("ckpt")
        >>> done = []
        >>> writer.submit(lambda: done.append(1), "step 1")
        >>> writer.submit(lambda: done.append(2), "step 2")  # waits for step 1 first
        >>> writer.wait()
        >>> done, writer.busy
        ([1, 2], False)
    """

    def __init__(self, where: str) -> None:
        self.where = where
        self._thread: threading.Thread | None = None
        self._failure: tuple[str, BaseException] | None = None
        self._guard = threading.RLock()  # one caller at a time submits or waits

    @property
    def busy(self) -> bool:
        """Return True while a job is running."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def submit(self, job: Callable[[], Any], what: str) -> None:
        """Wait for the job in flight (re-raising its error), then start ``job``.

        ``what`` names the job in its error message (``"step 300"``).
        """
        with self._guard:
            self.wait()
            thread = threading.Thread(
                target=self._run, args=(job, what), name=f"polybundle save of {what}", daemon=False
            )
            self._thread = thread
            thread.start()

    def _run(self, job: Callable[[], Any], what: str) -> None:
        try:
            job()
        except BaseException as exc:  # kept for the caller's next call, whatever it was
            self._failure = (what, exc)
            _UNCOLLECTED.add(self)

    def wait(self) -> None:
        """Block until the job in flight has finished; raise its error, once, if it failed."""
        with self._guard:
            thread = self._thread
            if thread is not None:
                thread.join()
                self._thread = None
            if self._failure is None:
                return
            (what, exc), self._failure = self._failure, None
            _UNCOLLECTED.discard(self)
            raise CheckpointError(
                f"the background save of {what} into {self.where!r} failed "
                f"({type(exc).__name__}: {exc}); that checkpoint was not committed, and the "
                "directory still holds the checkpoints saved before it. Fix the cause and save "
                "again."
            ) from exc


def _report_uncollected() -> None:
    """At exit (after Python has joined the writer threads), print failures nobody collected."""
    for writer in list(_UNCOLLECTED):
        failure = writer._failure
        if failure is not None:
            what, exc = failure
            print(
                f"polybundle: the background save of {what} into {writer.where!r} failed "
                f"({type(exc).__name__}: {exc}); that checkpoint was not committed.",
                file=sys.stderr,
            )


atexit.register(_report_uncollected)
