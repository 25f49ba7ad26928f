"""The memory budget: every path that reads an archive charges what it allocates.

An attacker writes the whole archive, sizes and digests included, so declared
sizes are checked against a cap *before* memory is allocated. Each entry point
(``load``, ``lazy=True``, ``inspect``, ``verify``, ``migrate``, legacy readers)
opens a budget with :func:`limit` (``max_bytes=None`` means
:data:`DEFAULT_MAX_BYTES`); every reader calls :func:`charge` with the byte
count it is about to allocate. Outside any :func:`limit`, :func:`charge` uses a
fresh default budget per call, so no path is ever unbounded.

Example:
    >>> with limit(1024):
    ...     charge(1000, "weights")
    ...     charge(100, "params")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    polybundle.errors.BudgetExceededError: reading params would allocate 100 bytes, ...
    >>> with limit(None) as budget:
    ...     budget.max_bytes == DEFAULT_MAX_BYTES
    True
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from polybundle.errors import BudgetExceededError

DEFAULT_MAX_BYTES = 16 * 1024**3
"""Default cap (16 GiB) on the bytes one call may allocate from an archive's declared sizes."""


@dataclass
class Budget:
    """A running total of bytes allocated from an archive against a cap.

    Example:
        >>> budget = Budget(100)
        >>> budget.charge(60, "a")
        >>> budget.spent, budget.remaining
        (60, 40)
    """

    max_bytes: int
    spent: int = 0

    @property
    def remaining(self) -> int:
        """Return how many bytes may still be allocated."""
        return self.max_bytes - self.spent

    def charge(self, nbytes: int, what: str) -> None:
        """Record ``nbytes`` about to be allocated for ``what``; refuse past the cap."""
        if not isinstance(nbytes, int) or nbytes < 0:
            raise BudgetExceededError(
                f"reading {what} declares a size of {nbytes!r} bytes; expected a "
                "non-negative integer. The archive is damaged or hostile."
            )
        if nbytes > self.remaining:
            raise BudgetExceededError(
                f"reading {what} would allocate {nbytes} bytes, past the memory budget "
                f"({self.spent} of {self.max_bytes} bytes already used). If the archive "
                "is trusted and really this large, pass a larger max_bytes=."
            )
        self.spent += nbytes


_current: contextvars.ContextVar[Budget | None] = contextvars.ContextVar(
    "polybundle_budget", default=None
)


def check_max_bytes(max_bytes: int | None) -> int:
    """Return the cap that ``max_bytes=`` asks for (None: the default).

    Example:
        >>> check_max_bytes(None) == DEFAULT_MAX_BYTES, check_max_bytes(10)
        (True, 10)
    """
    if max_bytes is None:
        return DEFAULT_MAX_BYTES
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0:
        raise ValueError(f"max_bytes={max_bytes!r}; expected a positive int or None")
    return max_bytes


@contextmanager
def limit(max_bytes: int | None) -> Iterator[Budget]:
    """Open a budget for one call; nested calls share the outermost one.

    Example:
        >>> with limit(10) as outer, limit(None) as inner:
        ...     inner is outer
        True
    """
    existing = _current.get()
    if existing is not None:
        yield existing
        return
    budget = Budget(check_max_bytes(max_bytes))
    token = _current.set(budget)
    try:
        yield budget
    finally:
        _current.reset(token)


def current() -> Budget:
    """Return the open budget, or a fresh default one outside any :func:`limit`.

    Example:
        >>> current().max_bytes == DEFAULT_MAX_BYTES
        True
    """
    return _current.get() or Budget(DEFAULT_MAX_BYTES)


def charge(nbytes: int, what: str) -> None:
    """Charge ``nbytes`` for ``what`` to the open budget (see :class:`Budget`).

    Example:
        >>> charge(8, "a small tensor")
    """
    current().charge(nbytes, what)


def check(nbytes: int, what: str) -> None:
    """Refuse up front when ``nbytes`` would not fit the open budget; spend nothing.

    For entry points that know a total from declared sizes before the
    readers (which :func:`charge` as they allocate) run.

    Example:
        >>> with limit(100):
        ...     check(60, "weights"); check(60, "weights")  # each alone fits
        ...     check(200, "weights")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        polybundle.errors.BudgetExceededError: reading weights would allocate 200 bytes, ...
    """
    budget = current()
    if not isinstance(nbytes, int) or nbytes > budget.remaining:
        budget.charge(nbytes, what)
