"""Everything a plugin author needs, in one public module: ``polybundle.plugin``.

A backend plugin imports only :mod:`polybundle` and this module. It gets:

- the backend contract: :class:`Backend`, :class:`TensorSpec`, the canonical
  layer kinds (:data:`KINDS`, :class:`Canonical`, :data:`FILL_SLOTS`; :class:`KindRules`
  for layers of a kind by ``isinstance`` or a predicate) and the
  layout tags and helpers (:data:`OPAQUE`, :data:`SCALAR`, :func:`conv_tag`,
  :func:`axes`, :func:`permutation`, :func:`relayout`, :func:`check_relayout`,
  :func:`describe_relayout`, :func:`infer_shape`, :func:`conv_spatial`,
  :func:`is_unit`, :func:`shared_layout`) and dtype names (:func:`resolve_dtype`,
  :func:`dtype_label`);
- the optimizer state: :class:`OptimizerState` (what a bundle stores) and
  :class:`NeutralOptimizer` (what conversion between frameworks works on);
- the hooks: :data:`hookimpl` (the hooks are listed in ``docs/hooks.md``),
  :func:`get_plugin_manager` to register a plugin at run time (no reset needed)
  and :func:`reset` to forget every plugin-supplied registration (tests), the
  answer of a detector (:class:`Detection`, :func:`peek_format2_manifest`), the
  archive a detector and an era reader get (:class:`ArchiveReader`, whose
  members are read as :class:`MemberRange` streams);
- legacy eras: :class:`EraReader`, :class:`LegacyContent`, :class:`LegacyRole`,
  :func:`read_member`, :func:`read_params` and :func:`safe_loads` (a restricted
  unpickler; a backend's pickle vocabulary maps names to :class:`Allowed`
  stand-ins and :class:`Leaf` values);
- the read budget: a reader of untrusted bytes calls :func:`charge` before it
  allocates (``polybundle.load(..., max_bytes=...)`` sets the limit), and
  :func:`read_array` fills a new array from a stream, charged first;
- the tensor checks of a weights file against its manifest, before anything is
  read: :func:`check_index` (the file holds exactly the manifest's tensors, each
  of its shape and dtype) and :func:`check_stored` (one tensor);
- the errors a backend raises (:class:`BackendError`, :class:`FormatError`,
  :class:`TensorMismatchError`, :class:`OptimizerMismatchError`, ...);
- the conformance kit: an :class:`Adapter` handed over through the
  ``polybundle_conformance_adapters`` hook puts the backend in the feature
  matrix (:func:`feature_matrix`, ``polybundle conformance``), which builds the
  shared model :data:`ARCHITECTURE` from :func:`neutral_inputs`-sized inputs.

Example (a backend for models that are dicts of NumPy arrays):
    >>> import io
    >>> import numpy as np
    >>> from polybundle.plugin import OPAQUE, Backend, TensorSpec, hookimpl
    >>> class ArrayBackend(Backend):
    ...     name, aliases, modules = "doc-arrays", ("doc-npz",), ("numpy",)
    ...     weights_member = "model.npz"
    ...     def owns(self, model):
    ...         return isinstance(model, dict)
    ...     def describe(self, model):
    ...         return [TensorSpec(k, k, v.shape, str(v.dtype), OPAQUE) for k, v in model.items()]
    ...     def write(self, model, stream):
    ...         np.savez(stream, **model)
    ...     def read_tensors(self, source, specs):
    ...         with np.load(io.BytesIO(source.read())) as npz:
    ...             return {k: npz[k] for k in npz.files}
    ...     def load_into(self, model, source, specs):
    ...         model.update(self.read_tensors(source, specs))
    >>> @hookimpl
    ... def polybundle_register_backends(register):
    ...     register(ArrayBackend())
    >>> ArrayBackend().describe({"w": np.zeros((2, 3), "float32")})[0].shape
    (2, 3)
"""

from __future__ import annotations

from polybundle.errors import (
    BackendError,
    BackendMismatchError,
    BackendUnavailableError,
    ConversionError,
    FormatError,
    IntegrityError,
    OptimizerError,
    OptimizerMismatchError,
    PolybundleError,
    TensorMismatchError,
    UnknownArchitectureError,
    UnknownBackendError,
    UnsafeContentError,
    UnsupportedOptimizerError,
)
from polybundle.format.archive import ArchiveReader, MemberRange
from polybundle.format.arrays import read_array
from polybundle.format.detection import Detection, peek_format2_manifest
from polybundle.format.tensor_check import check_index, check_stored
from polybundle.hooks.hookspecs import hookimpl
from polybundle.hooks.manager import get_plugin_manager, reset
from polybundle.legacy.era import EraReader, LegacyContent, LegacyRole, read_member, read_params
from polybundle.model.backend import Backend, TensorSpec
from polybundle.model.canonical import (
    FILL_SLOTS,
    KINDS,
    Canonical,
    check_relayout,
    conv_spatial,
    describe_relayout,
    infer_shape,
    is_unit,
    relayout,
    shared_layout,
)
from polybundle.model.kind_rules import KindRule, KindRules
from polybundle.model.layouts import OPAQUE, SCALAR, axes, conv_tag, permutation
from polybundle.model.optimizer import OptimizerState
from polybundle.model.optimizer_conversion import NeutralOptimizer
from polybundle.safety.budget import charge
from polybundle.safety.dtypes import dtype_label, resolve_dtype
from polybundle.safety.unpickle import Allowed, Leaf, safe_loads
from polybundle.tools.conformance import (
    ARCHITECTURE,
    Adapter,
    NotApplicable,
    feature_matrix,
    neutral_inputs,
)

__all__ = [
    "ARCHITECTURE",
    "Adapter",
    "Allowed",
    "ArchiveReader",
    "Backend",
    "BackendError",
    "BackendMismatchError",
    "BackendUnavailableError",
    "Canonical",
    "ConversionError",
    "Detection",
    "EraReader",
    "FILL_SLOTS",
    "FormatError",
    "IntegrityError",
    "KINDS",
    "KindRule",
    "KindRules",
    "Leaf",
    "LegacyContent",
    "LegacyRole",
    "MemberRange",
    "NeutralOptimizer",
    "NotApplicable",
    "OPAQUE",
    "OptimizerError",
    "OptimizerMismatchError",
    "OptimizerState",
    "PolybundleError",
    "SCALAR",
    "TensorMismatchError",
    "TensorSpec",
    "UnknownArchitectureError",
    "UnknownBackendError",
    "UnsafeContentError",
    "UnsupportedOptimizerError",
    "axes",
    "charge",
    "read_array",
    "check_index",
    "check_relayout",
    "check_stored",
    "conv_spatial",
    "conv_tag",
    "describe_relayout",
    "dtype_label",
    "feature_matrix",
    "get_plugin_manager",
    "hookimpl",
    "infer_shape",
    "is_unit",
    "shared_layout",
    "neutral_inputs",
    "peek_format2_manifest",
    "permutation",
    "read_member",
    "read_params",
    "relayout",
    "reset",
    "resolve_dtype",
    "safe_loads",
]
