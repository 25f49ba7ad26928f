"""Each backend's ``native_layout`` says what its ``describe`` gives, with no model built.

Planning a conversion (``polybundle plan``) asks the target backend which
layout its standard layer of each canonical kind gives each slot; the core
holds no framework's table. These tests hold every built-in backend's answer
to the layouts its live models really have.
"""

from __future__ import annotations

from typing import Any, BinaryIO

import numpy as np
import pytest

import polybundle
from polybundle.errors import BackendError
from polybundle.model.backend import Backend, TensorSpec
from polybundle.model.canonical import KINDS
from tests import reference_architectures as ref
from tests.conftest import needs_tensorflow, needs_torch

BACKENDS = [pytest.param("torch", marks=needs_torch),
            pytest.param("tensorflow", marks=needs_tensorflow)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(ref.CONFIGS))
def test_native_layout_is_what_describe_gives(name, backend):
    target = polybundle.get_backend(backend)
    model = polybundle.build(name, ref.CONFIGS[name], backend=backend)
    canonical = [s for s in target.describe(model) if s.kind]
    assert canonical
    for spec in canonical:
        assert spec.slot in KINDS[spec.kind], spec
        assert target.native_layout(spec.kind, spec.slot, spec.layout) == spec.layout, spec


@pytest.mark.parametrize("backend", BACKENDS)
def test_native_layout_of_a_slot_the_layer_lacks_is_none(backend):
    target = polybundle.get_backend(backend)
    assert target.native_layout("layernorm", "moving_mean") is None
    assert target.native_layout("no-such-kind", "kernel") is None
    count = target.native_layout("batchnorm", "count")
    assert count == ("scalar" if backend == "torch" else None)


@pytest.mark.parametrize("backend", BACKENDS)
def test_unit_prelu_slope_stays_unit(backend):
    target = polybundle.get_backend(backend)
    assert target.native_layout("prelu", "alpha", "1,1,1") == "1"
    assert target.native_layout("prelu", "alpha", "1,1,c") == "c"


class _NumpyBackend(Backend):
    """A backend that stores NumPy dicts and says nothing about layer layouts."""

    name = "numpy-only"

    def owns(self, model: Any) -> bool:
        return isinstance(model, dict)

    def describe(self, model: Any) -> list[TensorSpec]:
        return [TensorSpec(k, k, v.shape, v.dtype.name, "opaque") for k, v in model.items()]

    def write(self, model: Any, stream: BinaryIO) -> None:
        np.savez(stream, **model)

    def load_into(self, model: Any, source: BinaryIO, specs: list[TensorSpec]) -> None:
        model.update(self.read_tensors(source, specs))

    def read_tensors(self, source: BinaryIO, specs: list[TensorSpec]) -> dict[str, np.ndarray]:
        with np.load(source) as arrays:
            return {spec.name: arrays[spec.key] for spec in specs}


def test_a_backend_that_does_not_implement_native_layout_says_so():
    with pytest.raises(BackendError, match="'numpy-only'.*dense.kernel.*native_layout"):
        _NumpyBackend().native_layout("dense", "kernel")
