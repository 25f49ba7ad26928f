"""The built-in PyTorch and TensorFlow backends pass polybundle's conformance class suite.

The adapters are the backends' own (:mod:`polybundle_torch.conformance`,
:mod:`polybundle_tensorflow.conformance`), the same ones their plugins hand
to the ``polybundle_conformance_adapters`` hook for the feature matrix.
"""

from __future__ import annotations

from polybundle.hooks.manager import get_plugin_manager
from polybundle.testing import BackendConformance
from polybundle_tensorflow.conformance import KerasAdapter
from polybundle_torch.conformance import TorchAdapter
from tests.conftest import needs_tensorflow, needs_torch


def test_the_backends_plugins_hand_their_adapters_to_the_hook():
    found = get_plugin_manager().hook.polybundle_conformance_adapters()
    kinds = {type(adapter) for group in found for adapter in group}
    assert {TorchAdapter, KerasAdapter} <= kinds


@needs_torch
class TestTorchConformance(BackendConformance):
    adapter = TorchAdapter()


@needs_tensorflow
class TestTensorFlowConformance(BackendConformance):
    adapter = KerasAdapter()
