"""pytest plugin (entry point ``pytest11``): a fixture for users' own parity tests.

Installing polybundle makes the ``polybundle_parity`` fixture available in
every test session. It returns a function that runs
:func:`polybundle.tools.parity.compare` and fails the test with the report table
when any backend disagrees.

Example (a user's test, its model's builder registered; pytest gives it the fixtures):
    >>> @polybundle.architecture("doc-head", backend="torch")
    ... def build_head(config):
    ...     return torch.nn.Linear(config["inputs"], 2)
    >>> def test_my_model_agrees(polybundle_parity, tmp_path):
    ...     model = polybundle.build("doc-head", {"inputs": 4}, backend="torch")
    ...     x = np.ones((2, 4), "f4")
    ...     polybundle.save(tmp_path / "m.bundle", {"net": model}, parity_inputs=x)
    ...     report = polybundle_parity(tmp_path / "m.bundle", rtol=1e-5)
    ...     assert report.rows
    >>> test_my_model_agrees(getfixture("polybundle_parity"), getfixture("tmp_path"))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest


@pytest.fixture
def polybundle_parity() -> Callable[..., Any]:
    """Return ``check(path, inputs=None, **options) -> ParityReport``; it fails on disagreement.

    Example (``getfixture`` stands for a test's argument):
        >>> @polybundle.architecture("doc-head", backend="torch")
        ... def build_head(config):
        ...     return torch.nn.Linear(config["inputs"], 2)
        >>> head = polybundle.build("doc-head", {"inputs": 4}, backend="torch")
        >>> _ = polybundle.save("head.bundle", {"net": head}, parity_inputs=np.ones((2, 4), "f4"))
        >>> check = getfixture("polybundle_parity")
        >>> check("head.bundle", atol=1e-6).passed
        True
        >>> with pytest.raises(pytest.fail.Exception, match="parity failed for head.bundle"):
        ...     check("head.bundle", backends=[])  # no backend ran, so no row passed
    """
    from polybundle.tools.parity import compare

    def check(path: Any, inputs: Any = None, **options: Any) -> Any:
        report = compare(path, inputs, **options)
        if not report.passed:
            pytest.fail(f"parity failed for {path}:\n{report.table()}", pytrace=False)
        return report

    return check
