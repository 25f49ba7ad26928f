"""The JAX backend passes polybundle's conformance class suite (Adam and SGD with momentum).

:class:`polybundle_jax.conformance.JaxAdapter` is the adapter the plugin hands
to the ``polybundle_conformance_adapters`` hook; the SGD variant is a test-only
subclass.
"""

from __future__ import annotations

from typing import Any

import jax_models

from polybundle.testing import BackendConformance
from polybundle_jax import sgd
from polybundle_jax.conformance import JaxAdapter

pytestmark = jax_models.needs_jax


class SgdMomentumAdapter(JaxAdapter):
    """The plugin's adapter, with SGD and Nesterov momentum."""

    algorithm = "sgd"

    def transformation(self) -> Any:
        return sgd(0.05, momentum=0.9, nesterov=True)


class TestJaxConformance(BackendConformance):
    adapter = JaxAdapter()


class TestJaxSgdConformance(BackendConformance):
    adapter = SgdMomentumAdapter()
