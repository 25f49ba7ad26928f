"""Timing and peak-memory measurement of one operation, in this process.

Time is wall-clock (:func:`time.perf_counter`); the figure reported is the
median of ``repeats`` runs. Peak resident memory is read from Linux's
``/proc/self/status``: before each run the allocator hands free memory back
(``malloc_trim``), the kernel's high-water mark is reset to the current RSS by
writing ``5`` to ``/proc/self/clear_refs``, the baseline RSS is read, the
operation runs, and ``VmHWM - baseline`` is what the run cost at its peak.
The result of the operation is kept alive until after the reading, so memory
the caller receives (a loaded model) counts. Where ``clear_refs`` cannot be
written (not Linux, or restricted), memory is reported as ``None``.

Example:
    >>> m = measure(lambda: bytearray(10_000_000), repeats=3)
    >>> m.median_s > 0 and m.peak_mib > 5
    True
"""

from __future__ import annotations

import ctypes
import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

_STATUS = "/proc/self/status"
_CLEAR_REFS = "/proc/self/clear_refs"


def _status_kib(key: str) -> int | None:
    try:
        with open(_STATUS) as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _trim() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to hand back
        pass


def _reset_peak() -> bool:
    try:
        with open(_CLEAR_REFS, "w") as clear:
            clear.write("5")
        return True
    except OSError:
        return False


@dataclass
class Measurement:
    """Wall times (seconds) of every run and peak RSS above baseline (MiB).

    Example:
        >>> Measurement([0.2, 0.1, 0.3], [10.0, 12.0, 11.0]).median_s
        0.2
    """

    times_s: list[float]
    peaks_mib: list[float] = field(default_factory=list)

    @property
    def median_s(self) -> float:
        """Return the median wall time."""
        return statistics.median(self.times_s)

    @property
    def peak_mib(self) -> float | None:
        """Return the median peak RSS above baseline, or None where unmeasurable."""
        return statistics.median(self.peaks_mib) if self.peaks_mib else None

    def to_json(self) -> dict[str, Any]:
        """Return the JSON form (times in seconds, memory in MiB)."""
        return {
            "median_s": self.median_s,
            "times_s": self.times_s,
            "peak_rss_mib": self.peak_mib,
        }


def measure(
    operation: Callable[[], Any],
    *,
    repeats: int = 5,
    before: Callable[[], Any] | None = None,
) -> Measurement:
    """Run ``operation`` ``repeats`` times; return its times and peak memory.

    ``before`` runs ahead of each timed run, untimed (e.g. drop a file from
    a previous run).

    Example:
        >>> measure(lambda: sum(range(1000)), repeats=2).times_s.__len__()
        2
    """
    times: list[float] = []
    peaks: list[float] = []
    for _ in range(repeats):
        if before is not None:
            before()
        _trim()
        tracked = _reset_peak()
        baseline = _status_kib("VmRSS")
        start = time.perf_counter()
        result = operation()
        elapsed = time.perf_counter() - start
        peak = _status_kib("VmHWM")
        del result
        times.append(elapsed)
        if tracked and baseline is not None and peak is not None:
            peaks.append(max(0, peak - baseline) / 1024)
    _trim()
    return Measurement(times, peaks)
