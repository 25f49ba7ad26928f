"""The JAX backend: Flax NNX modules stored as ``<role>/model.safetensors``.

Every variable of the module except random-number streams (``nnx.RngState``)
and captured intermediates is stored: parameters (``nnx.Param``) and
statistics (``nnx.BatchStat``) alike. A tensor's name and its safetensors key
are its NNX state path joined by ``.`` (``encoder.layers.0.kernel``); its
layout tag comes from the owning module's class (:mod:`polybundle_jax.layouts`).
Reading the file needs only ``safetensors`` and NumPy, never JAX.

Example:
    >>> from flax import nnx
    >>> [s.name for s in JaxBackend().describe(nnx.Linear(3, 2, rngs=nnx.Rngs(0)))]
    ['kernel', 'bias']
"""

from __future__ import annotations

import importlib.metadata
import sys
from typing import Any, BinaryIO

import numpy as np

from polybundle.plugin import (
    Backend,
    Canonical,
    FormatError,
    NeutralOptimizer,
    OptimizerState,
    TensorMismatchError,
    TensorSpec,
)

from . import optim, safetensors_file
from .layouts import flax_canonical
from .layouts import native_layout as flax_native_layout
from .naming import definition_order as _definition_order
from .naming import path_name as _name

WEIGHTS_MEMBER = "model.safetensors"
"""File name of the native weights member inside ``<role>/``."""

FILE_FORMAT = "polybundle-jax"
"""The ``format`` entry of the safetensors metadata this backend writes."""


def _variables(model: Any) -> dict[str, tuple[Any, Any, str]]:
    """Return ``{name: (variable, owning module, attribute)}`` in model order."""
    from flax import nnx

    owners = {path: node for path, node in nnx.iter_graph(model) if isinstance(node, nnx.Module)}
    stored = nnx.All(nnx.Variable, nnx.Not(nnx.RngState), nnx.Not(nnx.Intermediate))
    found = {}
    for path, variable in nnx.to_flat_state(nnx.state(model, stored)):
        found[_name(path)] = (variable, owners.get(tuple(path[:-1])), str(path[-1]))
    order = _definition_order(model)
    ranked = sorted(found, key=lambda name: (order.get(name, len(order)), name))
    return {name: found[name] for name in ranked}


def _canonical(owner: Any, attribute: str, shape: tuple[int, ...]) -> Canonical:
    kernel_size = getattr(owner, "kernel_size", ())
    groups = int(getattr(owner, "feature_group_count", 1) or 1)
    return flax_canonical(
        type(owner).__name__,
        attribute,
        shape,
        spatial=len(kernel_size) if isinstance(kernel_size, (tuple, list)) else 0,
        groups=groups,
        group_channels=int(getattr(owner, "in_features", 0) or 0) // groups,
        transpose_kernel=bool(getattr(owner, "transpose_kernel", False)),
    )


def _inference(model: Any) -> Any:
    """Return ``model`` switched to inference mode (running averages, no dropout)."""
    from flax import nnx

    view = getattr(nnx, "view", None)
    if view is not None:
        return view(model, use_running_average=True, deterministic=True, raise_if_not_found=False)
    model.eval()
    return model


def read_safetensors(source: BinaryIO) -> dict[str, np.ndarray]:
    """Return every tensor of the safetensors file in ``source`` as NumPy arrays.

    Raises :class:`polybundle.FormatError` when the bytes are not safetensors.

    Example:
        >>> import io, safetensors.numpy
        >>> read_safetensors(io.BytesIO(safetensors.numpy.save({"w": np.ones(2)})))["w"]
        array([1., 1.])
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load

    try:
        return load(source.read())
    except (SafetensorError, ValueError) as exc:
        raise FormatError(
            f"{WEIGHTS_MEMBER} is not a readable safetensors file ({exc}); expected the "
            "file polybundle-jax writes."
        ) from None


class JaxBackend(Backend):
    """The JAX backend (alias ``flax``): Flax NNX modules, optax optimizers.

    Example:
        >>> JaxBackend().weights_member
        'model.safetensors'
    """

    name = "jax"
    aliases = ("flax", "nnx")
    extra = "polybundle-jax"
    modules = ("jax", "flax", "optax")
    distribution = "jax"
    weights_member = WEIGHTS_MEMBER
    image_layout = "channels_last"  # flax.nnx.Conv reads n,h,w,c; no trace (paired by order)

    def framework_version(self) -> str:
        """Return ``"jax <v>, flax <v>, optax <v>"`` from the installed distributions.

        Example:
            >>> JaxBackend().framework_version()
            'jax ..., flax ..., optax ...'
        """
        versions = []
        for dist in ("jax", "flax", "optax"):
            try:
                versions.append(f"{dist} {importlib.metadata.version(dist)}")
            except importlib.metadata.PackageNotFoundError:
                continue
        return ", ".join(versions) or "unknown"

    def owns(self, model: Any) -> bool:
        """Return True for a ``flax.nnx.Module`` (never imports flax).

        Example:
            >>> JaxBackend().owns(object())
            False
        """
        nnx = sys.modules.get("flax.nnx")
        return nnx is not None and isinstance(model, nnx.Module)

    def describe(self, model: Any) -> list[TensorSpec]:
        """Describe every stored variable of ``model`` with its layout tag.

        Example:
            >>> from flax import nnx
            >>> JaxBackend().describe(nnx.Linear(3, 2, rngs=nnx.Rngs(0)))[0].layout
            'in,out'
        """
        specs = []
        for name, (variable, owner, attribute) in _variables(model).items():
            value = variable[...]
            shape = tuple(int(d) for d in value.shape)
            canonical = _canonical(owner, attribute, shape)
            layer = name.rpartition(".")[0] if canonical.kind else ""
            specs.append(
                TensorSpec(name, name, shape, str(value.dtype), canonical.layout,
                           canonical.kind, layer, canonical.slot)
            )
        return specs

    def write(self, model: Any, stream: BinaryIO) -> None:
        """Write every stored variable of ``model`` as one safetensors file.

        Example:
            >>> import io, safetensors.numpy
            >>> from flax import nnx
            >>> stream = io.BytesIO()
            >>> JaxBackend().write(nnx.Linear(3, 2, rngs=nnx.Rngs(0)), stream)
            >>> sorted(safetensors.numpy.load(stream.getvalue()))
            ['bias', 'kernel']
        """
        from safetensors.numpy import save

        arrays = {
            name: np.ascontiguousarray(np.asarray(variable[...]))
            for name, (variable, _, _) in _variables(model).items()
        }
        stream.write(save(arrays, metadata={"format": FILE_FORMAT}))

    def load_into(self, model: Any, source: BinaryIO, specs: list[TensorSpec]) -> None:
        """Assign the file's tensors to ``model``'s variables after checking all of them.

        Names, shapes and dtypes are compared first; on any difference
        :class:`polybundle.TensorMismatchError` is raised and ``model`` is
        unchanged.

        Example: a fresh model gets the saved weights; one of another shape is refused.

            >>> import io
            >>> from flax import nnx
            >>> saved, stream = nnx.Linear(3, 2, rngs=nnx.Rngs(0)), io.BytesIO()
            >>> JaxBackend().write(saved, stream)
            >>> specs = JaxBackend().describe(saved)
            >>> model = nnx.Linear(3, 2, rngs=nnx.Rngs(1))
            >>> JaxBackend().load_into(model, io.BytesIO(stream.getvalue()), specs)
            >>> np.array_equal(model.kernel[...], saved.kernel[...])
            True
            >>> wider = nnx.Linear(3, 4, rngs=nnx.Rngs(1))
            >>> JaxBackend().load_into(wider, io.BytesIO(stream.getvalue()), specs)
            Traceback (most recent call last):
            polybundle.errors.TensorMismatchError: loading into Linear: the model's tensors and
            the bundle's do not match (shape or dtype differs: bias, kernel). ...
        """
        self.assign(model, self.read_tensors(source, specs))

    def assign(self, model: Any, arrays: dict[str, np.ndarray]) -> None:
        """Set ``model``'s variables from ``{name: array}``, strictly, checking all first.

        Every stored variable must be given once with its shape; arrays are
        cast to the variable's dtype. Otherwise
        :class:`polybundle.TensorMismatchError` is raised and nothing changes.

        Example:
            >>> from flax import nnx
            >>> model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
            >>> JaxBackend().assign(model, {"kernel": np.ones((3, 2)), "bias": np.zeros(2)})
            >>> float(model.kernel[...].sum()), model.kernel[...].dtype
            (6.0, dtype('float32'))
            >>> JaxBackend().assign(model, {"kernel": np.ones((3, 2))})
            Traceback (most recent call last):
            polybundle.errors.TensorMismatchError: loading into Linear: the model's tensors and
            the bundle's do not match (missing from the bundle: bias). ...
        """
        import jax.numpy as jnp

        own = _variables(model)
        mismatched = sorted(
            name for name in own.keys() & arrays.keys()
            if tuple(own[name][0][...].shape) != tuple(np.shape(arrays[name]))
        )
        if own.keys() != arrays.keys() or mismatched:
            raise TensorMismatchError(
                missing=own.keys() - arrays.keys(),
                unexpected=arrays.keys() - own.keys(),
                mismatched=mismatched,
                context=f"loading into {type(model).__name__}",
            )
        for name, (variable, _, _) in own.items():
            variable[...] = jnp.asarray(arrays[name], dtype=variable[...].dtype)

    def native_layout(self, kind: str, slot: str, source_layout: str = "") -> str | None:
        """Return the layout tag Flax's standard layer of ``kind`` gives ``slot``."""
        return flax_native_layout(kind, slot, source_layout)

    def predict(self, model: Any, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run ``model`` in inference mode (``nnx.view`` of it) on ``inputs``.

        ``inputs`` holds ``"input"`` or ``"input.0"``, ``"input.1"``, ...;
        outputs come back as ``"output"`` or ``"output.0"``, ... (see
        :meth:`polybundle.Backend.predict`).

        Example:
            >>> from flax import nnx
            >>> model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
            >>> x = np.ones((4, 3), dtype="float32")
            >>> JaxBackend().predict(model, {"input": x})["output"].shape
            (4, 2)
        """
        import jax.numpy as jnp

        names = sorted(inputs, key=lambda k: int(k.rpartition(".")[2]) if "." in k else 0)
        outputs = _inference(model)(*(jnp.asarray(inputs[name]) for name in names))
        if isinstance(outputs, (tuple, list)):
            return {f"output.{i}": np.asarray(out) for i, out in enumerate(outputs)}
        return {"output": np.asarray(outputs)}

    def read_tensors(self, source: BinaryIO, specs: list[TensorSpec]) -> dict[str, np.ndarray]:
        """Return ``{spec.name: array}`` from the safetensors file (no JAX needed).

        Example:
            >>> import io
            >>> from flax import nnx
            >>> model, stream = nnx.Linear(3, 2, rngs=nnx.Rngs(0)), io.BytesIO()
            >>> JaxBackend().write(model, stream)
            >>> stream.seek(0)
            0
            >>> JaxBackend().read_tensors(stream, JaxBackend().describe(model))["kernel"].shape
            (3, 2)
        """
        return self.read_stored(source, specs)

    def read_stored(
        self, source: BinaryIO, specs: list[TensorSpec], *, mapped: Any = None
    ) -> dict[str, np.ndarray]:
        """Return ``{spec.name: array}`` from the safetensors header and bytes, no JAX.

        The file must hold exactly ``specs`` (keys, shapes, dtypes), checked
        from its header before any tensor is read. Given ``mapped`` (the
        bundle's memory map; the member is STORED), each array is a read-only
        view of it (:func:`polybundle_jax.safetensors_file.read_stored`).

        Example:
            >>> import io, safetensors.numpy
            >>> data = safetensors.numpy.save({"b": np.zeros(2, "float32")})
            >>> spec = TensorSpec("b", "b", (2,), "float32", "out")
            >>> JaxBackend().read_stored(io.BytesIO(data), [spec])["b"]
            array([0., 0.], dtype=float32)
        """
        name = getattr(source, "name", None)
        where = name if isinstance(name, str) and name else WEIGHTS_MEMBER
        return safetensors_file.read_stored(source, specs, where=where, mapped=mapped)

    def check_stored(
        self, source: BinaryIO, specs: list[TensorSpec], *, where: str, declared: Any = ()
    ) -> dict[str, np.ndarray]:
        """Check the safetensors header and read every tensor by key, without JAX.

        Each header entry must be a known dtype with a shape whose bytes are
        exactly its range inside the file; the tensors are returned for the
        caller to compare with ``specs``. A safetensors file names no code, so
        ``declared`` is unused.

        Example:
            >>> import io, safetensors.numpy
            >>> data = safetensors.numpy.save({"b": np.zeros(2, "float32")})
            >>> sorted(JaxBackend().check_stored(io.BytesIO(data), [], where="net"))
            ['b']
        """
        return safetensors_file.read_all(source, where=where)

    def export_optimizer(self, model: Any, optimizer: Any, scheduler: Any | None = None) -> Any:
        """Return the neutral state of an ``nnx.Optimizer`` (see :mod:`polybundle_jax.optim`).

        Example:
            >>> from flax import nnx
            >>> from polybundle_jax import adam
            >>> model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
            >>> optimizer = nnx.Optimizer(model, adam(1e-3), wrt=nnx.Param)
            >>> state = JaxBackend().export_optimizer(model, optimizer)
            >>> state.algorithm, state.step, sorted(state.slots["kernel"])
            ('adam', 0, ['m', 'v'])
        """
        from . import optim

        return optim.export_optimizer(model, optimizer, scheduler)

    def restore_optimizer(
        self,
        model: Any,
        optimizer: Any,
        state: Any,
        specs: list[TensorSpec],
        scheduler: Any | None = None,
    ) -> None:
        """Load neutral ``state`` into a fresh ``nnx.Optimizer`` for ``model``.

        Tensor names and native keys are the same in this backend, so
        ``specs`` needs no mapping.

        Example: the state after one step, restored into a fresh optimizer.

            >>> from flax import nnx
            >>> from polybundle_jax import adam
            >>> model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
            >>> optimizer = nnx.Optimizer(model, adam(1e-3), wrt=nnx.Param)
            >>> loss = lambda m: (m(np.ones((4, 3), dtype="float32")) ** 2).sum()
            >>> _ = optimizer.update(model, nnx.grad(loss)(model))
            >>> state = JaxBackend().export_optimizer(model, optimizer)
            >>> fresh = nnx.Optimizer(model, adam(1e-3), wrt=nnx.Param)
            >>> JaxBackend().restore_optimizer(model, fresh, state, JaxBackend().describe(model))
            >>> restored = JaxBackend().export_optimizer(model, fresh)
            >>> restored.step, np.array_equal(restored.slots["kernel"]["m"],
            ...                               state.slots["kernel"]["m"])
            (1, True)
        """
        from . import optim

        optim.restore_optimizer(model, optimizer, state, scheduler)

    def optimizer_to_neutral(self, state: OptimizerState) -> NeutralOptimizer:
        """Describe optax ``state`` in the neutral convention (see :mod:`polybundle_jax.optim`).

        Example:
            >>> state = OptimizerState("sgd", "jax", "optax.sgd", 0, [{"parameters": [],
            ...     "hyperparameters": {"learning_rate": 0.1}}], {})
            >>> JaxBackend().optimizer_to_neutral(state).hyperparameters["momentum"]
            0.0
        """
        return optim.optimizer_to_neutral(state)

    def optimizer_from_neutral(
        self, neutral: NeutralOptimizer, specs: list[TensorSpec]
    ) -> OptimizerState:
        """Return the optax state for a converted neutral description.

        Example:
            >>> neutral = NeutralOptimizer("sgd", {"learning_rate": 0.1}, 0, [], {})
            >>> JaxBackend().optimizer_from_neutral(neutral, []).native_class
            'optax.sgd'
        """
        return optim.optimizer_from_neutral(neutral, specs)
