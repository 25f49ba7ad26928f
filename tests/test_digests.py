"""Named member digests (format 2.2), the fast CRC-32, and bundles written before them.

The bundles in ``tests/fixtures/format_2_1/`` were written by the polybundle of
format 2.1.0 (member records ``{"size", "sha256"}``); every later reader must
load, verify and convert them unchanged.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import polybundle
from polybundle.tools import parity
from tests import models  # noqa: F401  (registers the fixtures' architecture, test-convnet)

FIXTURES = Path(__file__).parent / "fixtures" / "format_2_1"


@pytest.mark.parametrize(("name", "backend"), [("torch.bundle", "torch"),
                                               ("keras.bundle", "tensorflow")])
def test_format_2_1_bundles_still_load_and_verify(name: str, backend: str) -> None:
    """A 2.1.0 bundle with sha256 records: verified, loaded with its optimizer, same outputs."""
    pytest.importorskip("torch" if backend == "torch" else "keras")
    path = FIXTURES / name
    report = polybundle.verify(path)
    assert report.ok, report.problems
    bundle = polybundle.load(path)
    assert bundle.manifest["format_version"] == "2.1.0"
    assert all(set(r) == {"size", "sha256"} for r in bundle.manifest["members"].values())
    assert bundle.backend == backend
    np.testing.assert_array_equal(bundle.params["probe"], np.linspace(0, 1, 6, dtype="float32"))
    assert bundle.optimizer_state("net").step == 1
    result = parity.compare(path, backends=[backend])
    assert result.passed, result.rows
