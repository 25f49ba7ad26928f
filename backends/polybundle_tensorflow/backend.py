"""TensorFlow backend: ``<role>/model.keras`` is a Keras 3 native file.

Saving writes the whole ``.keras`` file (config and weights). Loading into a
model built by a registered builder (or passed with ``into=``) reads
``model.weights.h5`` (every dataset checked against the manifest and the
HDF5 safety rules of :func:`polybundle_tensorflow.keras_file.check_dataset`)
and assigns each variable, checking names and shapes first; without a builder
the model is rebuilt by Keras with ``safe_mode=True``, from memory, after the
same checks over the whole weights file. Reading tensors needs only h5py,
never TensorFlow.

Example: without a builder, loading rebuilds the model with Keras.

    >>> import polybundle, keras
    >>> net = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="fc")], name="net")
    >>> manifest = polybundle.save("m.bundle", {"net": net})
    >>> manifest["models"][0]["weights"]
    'net/model.keras'
    >>> [(tensor["name"], tensor["layout"]) for tensor in manifest["models"][0]["tensors"]]
    [('net/fc/kernel', 'in,out'), ('net/fc/bias', 'out')]
    >>> loaded = polybundle.load("m.bundle").models["net"]
    >>> x = np.ones((1, 3), dtype="float32")
    >>> np.array_equal(loaded(x), net(x))
    True
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any, BinaryIO

import numpy as np

from polybundle.errors import (
    BudgetExceededError,
    FormatError,
    PolybundleError,
    TensorMismatchError,
    UnsafeContentError,
)
from polybundle.model.backend import Backend, TensorSpec
from polybundle.model.layouts import OPAQUE, SCALAR, conv_tag
from polybundle.model.optimizer import OptimizerState
from polybundle.model.optimizer_conversion import NeutralOptimizer
from polybundle_tensorflow import keras_compat
from polybundle_tensorflow import optim as tensorflow_optim
from polybundle_tensorflow.keras_archive import check_config, read_weights
from polybundle_tensorflow.keras_file import (
    check_for_rebuild,
    check_layer_fields,
    check_layer_shapes,
    check_weights,
    keras_stream,
    open_keras,
    read_datasets,
    read_keras_weights,
    read_stored,
)
from polybundle_tensorflow.keras_writer import write_keras
from polybundle_tensorflow.layers import layer_canonical, layer_kind, variable_place
from polybundle_tensorflow.layers import native_layout as keras_native_layout
from polybundle_tensorflow.tensors import adopt

_CONV = {"Conv1D": 1, "Conv2D": 2, "Conv3D": 3}
_CONV_TRANSPOSE = {"Conv1DTranspose": 1, "Conv2DTranspose": 2, "Conv3DTranspose": 3}
_VECTOR_LAYERS = {"BatchNormalization", "LayerNormalization", "GroupNormalization", "PReLU"}


def _layout(layer: Any, variable_name: str, ndim: int) -> str:
    """Return the layout tag of ``layer``'s variable ``variable_name``."""
    kind = type(layer).__name__
    if ndim == 0:
        return SCALAR
    if kind in _VECTOR_LAYERS and ndim == 1:
        return "c"
    if variable_name == "bias" and ndim == 1:
        return "out"
    if kind == "Dense" and variable_name == "kernel":
        return "in,out"
    if kind in _CONV and variable_name == "kernel":
        return conv_tag(_CONV[kind], channels_first=False, transposed=False)
    if kind in _CONV_TRANSPOSE and variable_name == "kernel":
        return conv_tag(_CONV_TRANSPOSE[kind], channels_first=False, transposed=True)
    if kind == "Embedding" and variable_name == "embeddings":
        return "vocab,dim"
    return OPAQUE


def _variables(model: Any) -> list[tuple[str, Any, Any]]:
    """Return ``(h5 key, variable, owning layer)`` for each of ``model.weights``.

    The keys are where Keras' own saver puts each variable in
    ``model.weights.h5``: the same walk is run with an in-memory store.
    """
    weights = {id(v) for v in model.weights}
    owners: dict[int, Any] = {}
    for layer in model._flatten_layers(include_self=True, recursive=True):
        own = layer._trainable_variables + layer._non_trainable_variables
        for variable in layer.weights if layer_kind(layer)[0] == "attention" else own:
            owners.setdefault(id(variable), layer)  # an attention layer owns its projections
    entries = []
    for path, slots in keras_compat.saved_variable_slots(model).items():
        prefix = "" if path == "__root__" else f"{path}/"
        for index, variable in slots.items():
            if id(variable) in weights:
                entries.append((f"{prefix}vars/{index}", variable, owners.get(id(variable))))
    return entries


def _named_variables(model: Any) -> list[tuple[str, str, Any]]:
    """Return ``(neutral name, weights-file key, variable)`` for each of ``model.weights``."""
    return [(spec.name, key, variable)
            for (key, variable, _), spec in zip(_variables(model), _specs(model), strict=True)]


def _specs(model: Any) -> list[TensorSpec]:
    specs = []
    seen: set[str] = set()
    for key, variable, layer in _variables(model):
        name = variable.path if variable.path not in seen else key
        seen.add(name)
        shape = tuple(int(d) for d in variable.shape)
        place, in_layer = variable_place(layer, variable.path, variable.name)
        canonical = layer_canonical(layer, in_layer, shape)
        layout = canonical.layout if canonical.kind else _layout(layer, variable.name, len(shape))
        owner = place if canonical.kind else ""
        owner = f"{owner}/{canonical.part}".lstrip("/") if canonical.part else owner
        specs.append(
            TensorSpec(name, key, shape, str(variable.dtype), layout, canonical.kind, owner,
                       canonical.slot)
        )
    return specs


class TensorFlowBackend(Backend):
    """The TensorFlow/Keras 3 backend (aliases ``tf``, ``keras``).

    Example:
        >>> TensorFlowBackend().weights_member
        'model.keras'
    """

    name = "tensorflow"
    aliases = ("tf", "keras")
    extra = "polybundle[tensorflow]"
    modules = ("tensorflow", "keras")
    quiet_environment = (("TF_CPP_MIN_LOG_LEVEL", "2"),)  # C++ INFO and WARNING lines
    distribution = "keras"
    weights_member = "model.keras"
    plain_format = "keras-file"
    image_layout = "channels_last"

    def framework_version(self) -> str:
        """Return ``"tensorflow <v>, keras <v>"`` from the installed distributions."""
        import importlib.metadata as metadata

        versions = []
        for dist in ("tensorflow-cpu", "tensorflow", "keras"):
            try:
                versions.append(f"{dist} {metadata.version(dist)}")
            except metadata.PackageNotFoundError:
                continue
        return ", ".join(versions) or "unknown"

    def owns(self, model: Any) -> bool:
        """Return True for a ``keras.Model`` (never imports keras)."""
        keras = sys.modules.get("keras")
        return keras is not None and isinstance(model, keras.Model)

    def describe(self, model: Any) -> list[TensorSpec]:
        """Describe every variable of ``model.weights``, keyed as Keras saves it."""
        return _specs(model)

    def write(self, model: Any, stream: BinaryIO) -> None:
        """Write the Keras 3 native ``.keras`` file (config and weights) to ``stream``.

        The weights are streamed once, from the variables into ``stream``
        (:func:`polybundle_tensorflow.keras_writer.write_keras`), so the
        bundle's digest and CRC follow the write. A compiled model's optimizer
        variables are left out: optimizer state lives only in the neutral
        ``optimizer.*`` members (see ``docs/training-state.md``).
        """
        from polybundle_tensorflow.optim import without_optimizer

        with without_optimizer(model):
            write_keras(model, stream)

    def build_and_load(
        self, builder: Any, config: dict[str, Any], source: BinaryIO, specs: list[TensorSpec]
    ) -> Any:
        """Build with variable initialisation deferred, then create each variable from the file.

        Inside Keras' ``StatelessScope`` a builder creates its variables without
        running their initialisers (random kernels of hundreds of MB cost more
        than reading them); each is then created holding the loaded array.
        Variables the bundle does not hold (none, for a strict match) get their
        own initialiser. Falls back to an ordinary build when the builder cannot
        run in that scope.
        """
        try:
            with keras_compat.deferred_initialization():
                model = builder(config)
        except Exception:  # e.g. a builder that calls the model on data; build normally
            keras_compat.forget_pending()
            return super().build_and_load(builder, config, source, specs)
        try:
            own = self._checked_variables(model, specs)
            _fill(own, specs, read_datasets(source, specs))
        finally:  # whatever happened, leave no variable of this build pending
            keras_compat.keep_uninitialized_pending()
        keras_compat.initialize_pending()
        return model

    def _checked_variables(self, model: Any, specs: list[TensorSpec]) -> dict[str, Any]:
        """Return ``{h5 key: variable}`` of ``model`` after checking it matches ``specs``."""
        own = {key: variable for key, variable, _ in _variables(model)}
        archived = {spec.key: spec for spec in specs}
        own_names = {key: variable.path for key, variable in own.items()}
        mismatched = [
            archived[key].name
            for key in own.keys() & archived.keys()
            if tuple(int(d) for d in own[key].shape) != archived[key].shape
        ]
        if own.keys() != archived.keys() or mismatched:
            raise TensorMismatchError(
                missing=[own_names[k] for k in own.keys() - archived.keys()],
                unexpected=[archived[k].name for k in archived.keys() - own.keys()],
                mismatched=mismatched,
                context=f"loading into {type(model).__name__} {model.name!r}",
            )
        return own

    def load_into(self, model: Any, source: BinaryIO, specs: list[TensorSpec]) -> None:
        """Assign the bundle's weights to ``model``'s variables after checking all of them."""
        own = self._checked_variables(model, specs)
        for spec, array in zip(specs, read_datasets(source, specs), strict=True):
            own[spec.key].assign(_tensor_for(own[spec.key], array))

    def read_tensors(self, source: BinaryIO, specs: list[TensorSpec]) -> dict[str, np.ndarray]:
        """Read every listed tensor from ``model.weights.h5`` with h5py (no TensorFlow)."""
        return self.read_stored(source, specs)

    def read_stored(
        self, source: BinaryIO, specs: list[TensorSpec], *, mapped: Any = None
    ) -> dict[str, np.ndarray]:
        """Read the listed datasets of ``model.weights.h5`` after checking them, no TensorFlow.

        See :func:`polybundle_tensorflow.keras_file.read_datasets`. Keras writes
        the ``.keras`` zip STORED, so given ``mapped`` each dataset is a
        read-only view of the map at the offset h5py reports.
        """
        arrays = read_datasets(source, specs, mapped=mapped)
        return {spec.name: array for spec, array in zip(specs, arrays, strict=True)}

    def check_stored(
        self,
        source: BinaryIO,
        specs: list[TensorSpec],
        *,
        where: str,
        declared: Sequence[str] = (),
    ) -> dict[str, np.ndarray]:
        """Run the checks a Keras load runs before Keras, without Keras; return the layer weights.

        The ``.keras`` zip is checked like the outer one; ``config.json`` must
        name no code (no ``Lambda``, no class outside Keras but ``declared``),
        its layer fields must be ones Keras takes and its declared sizes the
        stored ones; ``model.weights.h5`` must hold exactly the datasets,
        shapes and dtypes of ``specs`` (unlisted optimizer slots aside), each
        passing the HDF5 safety checks. Returns ``{h5 key: array}``.
        """
        keras_file = open_keras(source, where=where)
        check_config(keras_file.config, where=where, declared=declared)
        check_layer_fields(keras_file.config, where=where)
        check_layer_shapes(keras_file.config, keras_file.weights(), where=where)
        check_weights(keras_file.weights(), where=where, specs=specs)
        return read_weights(keras_file)

    def describe_stored(self, source: BinaryIO, *, where: str) -> list[TensorSpec]:
        """Describe a ``model.save("model.keras")`` file from ``config.json`` and the HDF5 index.

        Layout tags and canonical kinds come from the layer classes the config
        names (``opaque`` for layers it does not determine).
        """
        return [
            TensorSpec(
                w.name, w.key, w.shape, w.dtype,
                w.canonical.layout if w.canonical.kind else (OPAQUE if w.shape else SCALAR),
                w.canonical.kind,
                (f"{w.layer}/{w.canonical.part}".lstrip("/") if w.canonical.part else w.layer)
                if w.canonical.kind else "",
                w.canonical.slot,
            )
            for w, _ in read_keras_weights(source, with_arrays=False)
        ]

    def assign(self, model: Any, arrays: dict[str, np.ndarray]) -> None:
        """Assign ``{variable path: array}`` to ``model``'s variables, all checked first."""
        own = {
            spec.name: (spec, variable)
            for spec, (_, variable, _) in zip(_specs(model), _variables(model), strict=True)
        }
        mismatched = [
            name for name in own.keys() & arrays.keys()
            if tuple(np.shape(arrays[name])) != own[name][0].shape
        ]
        if own.keys() != arrays.keys() or mismatched:
            raise TensorMismatchError(
                missing=own.keys() - arrays.keys(),
                unexpected=arrays.keys() - own.keys(),
                mismatched=mismatched,
                context=f"loading into {type(model).__name__} {model.name!r}",
            )
        for name, (spec, variable) in own.items():
            variable.assign(np.asarray(arrays[name], dtype=spec.dtype))
        for layer in model._flatten_layers(include_self=True, recursive=True):
            if callable(getattr(layer, "finalize_state", None)):
                layer.finalize_state()  # state derived from variables (Normalization's mean)

    def native_layout(self, kind: str, slot: str, source_layout: str = "") -> str | None:
        """Return the layout tag Keras's standard layer of ``kind`` gives ``slot``."""
        return keras_native_layout(kind, slot, source_layout)

    def trace(self, model: Any, inputs: dict[str, np.ndarray]) -> Any:
        """Return ``model``'s dataflow graph (see :mod:`polybundle_tensorflow.tracing`)."""
        from polybundle_tensorflow.tracing import trace

        return trace(model, inputs)

    def sample_inputs(self, model: Any) -> Any:
        """Return a seeded sample of the model's declared inputs (see :mod:`.tracing`)."""
        from polybundle_tensorflow.tracing import sample_inputs

        return sample_inputs(model)

    def layer_outputs(self, model: Any, inputs: dict[str, np.ndarray], layers: Any) -> Any:
        """Return the named layers' outputs (see :mod:`polybundle_tensorflow.tracing`)."""
        from polybundle_tensorflow.tracing import layer_outputs

        return layer_outputs(model, inputs, layers)

    def predict(self, model: Any, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Call ``model(..., training=False)`` on ``inputs``; outputs as arrays."""
        from polybundle.tools.parity import input_names

        args = [inputs[name] for name in input_names(inputs)]
        outputs = model(args[0] if len(args) == 1 else args, training=False)
        if isinstance(outputs, (list, tuple)):
            return {f"output.{i}": np.asarray(o) for i, o in enumerate(outputs)}
        if isinstance(outputs, dict):
            return {f"output.{k}": np.asarray(o) for k, o in outputs.items()}
        return {"output": np.asarray(outputs)}

    def load_standalone(self, source: BinaryIO, specs: list[TensorSpec] | None = None) -> Any:
        """Rebuild the model from the ``.keras`` file itself, with ``safe_mode=True``.

        The config is checked first without Keras (no ``Lambda`` layers, no
        classes from non-Keras modules, layer fields of the types Keras takes:
        :func:`polybundle_tensorflow.keras_file.check_layer_fields`), and so is
        the weights file (:func:`polybundle_tensorflow.keras_file.keras_stream`:
        every dataset passes the HDF5 checks, no member but config, metadata
        and weights). Given the manifest's ``specs``, the weights file is
        checked in one pass (:func:`polybundle_tensorflow.keras_file.check_for_rebuild`:
        exactly the manifest's datasets, the layer sizes the config declares),
        Keras rebuilds the model from ``config.json`` with variable
        initialisation deferred (as :meth:`build_and_load`), every variable's
        shape and dtype is compared with the manifest before any variable
        memory exists, and each is then created holding the bytes read for it.
        Without specs (a bare ``.keras`` file) Keras loads the file object,
        which has no name, so nothing is extracted to disk. Whatever Keras
        raises becomes a :class:`FormatError`.
        """
        keras_file = open_keras(source)
        config, where = keras_file.config, keras_file.where
        check_config(config, where=where)
        check_layer_fields(config, where=where)
        if specs is not None:
            checked = check_for_rebuild(keras_file, specs)
            return self._rebuild_deferred(config, source, specs, where, checked=checked)
        stream = keras_stream(source, where=where)
        check_layer_shapes(config, keras_file.weights(), where=where)
        source.seek(0)
        return _keras_call(where, lambda: keras_compat.load_model(stream))

    def _rebuild_deferred(
        self,
        config: dict[str, Any],
        source: BinaryIO,
        specs: list[TensorSpec],
        where: str,
        *,
        checked: tuple[Any, list[Any]] | None = None,
    ) -> Any:
        """Deserialize ``config`` with initialisation deferred; check, then fill each variable.

        ``checked`` is what :func:`polybundle_tensorflow.keras_file.check_for_rebuild`
        returned for ``source`` (its datasets are read as they are); without it
        :func:`polybundle_tensorflow.keras_file.read_datasets` checks and reads them.
        """
        try:
            with keras_compat.deferred_initialization():
                model = _keras_call(where, lambda: keras_compat.deserialize(config))
            own = self._checked_variables(model, specs)
            _check_dtypes(own, specs, model)
            if checked is None:
                arrays = read_datasets(source, specs)
            else:
                weights, stored = checked
                arrays = [read_stored(weights, dataset, where=where) for dataset in stored]
            _keras_call(where, lambda: _fill(own, specs, arrays))
        finally:  # whatever happened, leave no variable of this build pending
            keras_compat.keep_uninitialized_pending()
        _keras_call(where, keras_compat.initialize_pending)
        return model

    def export_optimizer(self, model: Any, optimizer: Any, scheduler: Any | None = None) -> Any:
        """Return the neutral optimizer state (see :mod:`polybundle_tensorflow.optim`)."""
        return tensorflow_optim.export_optimizer(
            model, optimizer, scheduler, variables=_named_variables(model)
        )

    def restore_optimizer(
        self, model: Any, optimizer: Any, state: Any, specs: list[TensorSpec], scheduler: Any = None
    ) -> None:
        """Load neutral optimizer state into a fresh optimizer bound to ``model``."""
        tensorflow_optim.restore_optimizer(
            model, optimizer, state, specs, scheduler, variables=_named_variables(model)
        )

    def optimizer_to_neutral(self, state: OptimizerState) -> NeutralOptimizer:
        """Describe ``state`` in the neutral convention (see :mod:`polybundle_tensorflow.optim`)."""
        return tensorflow_optim.optimizer_to_neutral(state)

    def optimizer_from_neutral(
        self, neutral: NeutralOptimizer, specs: list[TensorSpec]
    ) -> OptimizerState:
        """Return this backend's optimizer state for a converted neutral description."""
        return tensorflow_optim.optimizer_from_neutral(neutral, specs)

    def capture_rng(self) -> dict[str, Any]:
        """Return the framework's global generator state as plain data."""
        from polybundle_tensorflow import optim as tensorflow_optim

        return tensorflow_optim.capture_rng()

    def restore_rng(self, state: dict[str, Any]) -> None:
        """Put back a state returned by :meth:`capture_rng`."""
        from polybundle_tensorflow import optim as tensorflow_optim

        tensorflow_optim.restore_rng(state)


def _fill(own: dict[str, Any], specs: list[TensorSpec], arrays: list[np.ndarray]) -> None:
    """Create (or assign) each variable of ``own`` from the array of its spec.

    A deferred variable is created holding the array's own memory
    (:func:`polybundle_tensorflow.tensors.adopt`): the bytes read from the
    file are the variable's, nothing is copied.
    """
    for spec, array in zip(specs, arrays, strict=True):
        variable = own[spec.key]
        if variable._value is None:
            variable._initialize(_tensor_for(variable, array))
        else:
            variable.assign(_tensor_for(variable, array))


def _tensor_for(variable: Any, array: np.ndarray) -> Any:
    """Return ``array`` as a tensor adopting its memory when its dtype is ``variable``'s.

    Otherwise the array itself, which Keras converts (and casts) as it always did.
    """
    if str(variable.dtype) == array.dtype.name:
        return adopt(array)
    return array


def _check_dtypes(own: dict[str, Any], specs: list[TensorSpec], model: Any) -> None:
    """Refuse variables whose dtype is not the manifest's (shapes are checked already)."""
    wrong = [
        f"{spec.name} ({own[spec.key].dtype}, manifest {spec.dtype})"
        for spec in specs
        if str(own[spec.key].dtype) != spec.dtype
    ]
    if wrong:
        raise TensorMismatchError(
            mismatched=wrong, context=f"rebuilding {type(model).__name__} {model.name!r}"
        )


def _keras_call(where: str, call: Callable[[], Any]) -> Any:
    """Run ``call`` (Keras work on a checked file); what it raises becomes a typed error."""
    try:
        return call()
    except PolybundleError:
        raise
    except MemoryError:
        raise BudgetExceededError(
            f"{where}: Keras ran out of memory rebuilding the model its config describes; "
            "load it with a registered builder, or on a machine with more memory."
        ) from None
    except ValueError as exc:
        if "safe_mode" in str(exc) or "lambda" in str(exc).lower():
            raise UnsafeContentError(
                f"{where}: the Keras config holds code that safe_mode refuses ({exc}). Register "
                "a builder for the architecture instead of loading it from the file."
            ) from None
        raise _rebuild_error(where, exc) from None
    except Exception as exc:  # Keras' TypeError, TensorFlow's errors: hostile or odd config
        raise _rebuild_error(where, exc) from None


def _rebuild_error(where: str, exc: Exception) -> FormatError:
    return FormatError(
        f"Keras could not rebuild the model from {where} ({type(exc).__name__}: "
        f"{str(exc)[:300]}). Register a builder with @polybundle.architecture(name, "
        "backend='tensorflow') and save with it, or pass into={role: model}."
    )
