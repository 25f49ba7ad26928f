"""pytest plugin (entry point ``pytest11``): a fixture for users' own parity tests.

Installing polybundle makes the ``polybundle_parity`` fixture available in
every test session. It returns a function that runs
:func:`polybundle.tools.parity.compare` and fails the test with the report table
when any backend disagrees.

Example (a user's test):
    >>> def test_my_model_agrees(polybundle_parity, tmp_path):  # doctest: +SKIP
    ...     polybundle.save(tmp_path / "m.bundle", {"net": model}, parity_inputs=x)
    ...     report = polybundle_parity(tmp_path / "m.bundle", rtol=1e-5)
    ...     assert report.rows
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest


@pytest.fixture
def polybundle_parity() -> Callable[..., Any]:
    """Return ``check(path, inputs=None, **options) -> ParityReport``; it fails on disagreement.

    Example:
        >>> polybundle_parity("run.bundle", atol=1e-6)  # doctest: +SKIP
    """
    from polybundle.tools.parity import compare

    def check(path: Any, inputs: Any = None, **options: Any) -> Any:
        report = compare(path, inputs, **options)
        if not report.passed:
            pytest.fail(f"parity failed for {path}:\n{report.table()}", pytrace=False)
        return report

    return check
