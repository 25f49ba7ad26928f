"""The interface every backend (framework binding) implements.

A backend turns native models of one framework into the bundle's members and
back. The built-in backends (``polybundle_torch``, ``polybundle_tensorflow``)
and third-party ones (``polybundle_jax``) alike ship in a plugin package and
register an instance through the ``polybundle_register_backends`` hook.

Example: a backend sets its class attributes, then writes the abstract methods
(``tests/numpy_backend`` is a complete one).

    >>> class MyBackend(Backend):
    ...     name = "mine"
    ...     aliases = ("my",)
    ...     extra = "polybundle-mine"
    ...     modules = ("numpy",)
    ...     distribution = "numpy"
    ...     weights_member = "model.npz"
    >>> sorted(MyBackend.__abstractmethods__)
    ['describe', 'load_into', 'owns', 'read_tensors', 'write']
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import io
import mmap
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from polybundle.errors import (
    BackendError,
    BackendUnavailableError,
    FormatError,
    UnknownArchitectureError,
    UnsupportedOptimizerError,
)

# Dtype names and shape checks sit in the safety layer, below the format that uses them too;
# they stay importable from here.
from polybundle.safety.dtypes import MAX_NDIM as MAX_NDIM
from polybundle.safety.dtypes import MAX_TENSOR_BYTES as MAX_TENSOR_BYTES
from polybundle.safety.dtypes import ML_DTYPES as ML_DTYPES
from polybundle.safety.dtypes import NUMPY_DTYPES as NUMPY_DTYPES
from polybundle.safety.dtypes import check_shape as check_shape
from polybundle.safety.dtypes import count_bytes as count_bytes
from polybundle.safety.dtypes import dtype_label as dtype_label
from polybundle.safety.dtypes import resolve_dtype as resolve_dtype

if TYPE_CHECKING:
    from polybundle.model.graph import OpGraph
    from polybundle.model.optimizer import OptimizerState
    from polybundle.model.optimizer_conversion import NeutralOptimizer


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of a model as the manifest records it.

    ``name`` is the neutral, stable name; ``key`` where the tensor lives in the
    backend's native weights file; ``layout`` a tag saying what the axes mean
    (see :mod:`polybundle.model.layouts`). ``kind``, ``layer`` and ``slot`` place it
    in a canonical layer (see :mod:`polybundle.model.canonical`): the layer's kind
    (``"dense"``; ``""`` when unknown), the layer's path in the model, and the
    tensor's role in it (``"kernel"``). Conversion between backends uses them.
    ``dtype`` is a name from :data:`NUMPY_DTYPES` or :data:`ML_DTYPES`.

    Example:
        >>> TensorSpec("fc.weight", "fc.weight", (4, 3), "float32", "out,in").nbytes
        48
        >>> TensorSpec("fc.weight", "fc.weight", (4, 3), "bfloat16", "out,in").nbytes
        24
    """

    name: str
    key: str
    shape: tuple[int, ...]
    dtype: str
    layout: str
    kind: str = ""
    layer: str = ""
    slot: str = ""

    @property
    def nbytes(self) -> int:
        """Return the tensor's size in bytes (Python ints: no overflow, no wrap).

        Raises :class:`FormatError` for an unknown dtype or a malformed shape
        and :class:`UnsafeContentError` past :data:`MAX_TENSOR_BYTES`.
        """
        return count_bytes(self.shape, self.dtype, where=f"tensor {str(self.name)[:200]!r}")

    @property
    def numpy_dtype(self) -> np.dtype:
        """Return the NumPy dtype of :attr:`dtype` (``ml_dtypes`` for bfloat16 and float8).

        Example:
            >>> TensorSpec("w", "w", (2,), "bfloat16", "out").numpy_dtype.name
            'bfloat16'
        """
        return resolve_dtype(self.dtype, where=f"tensor {str(self.name)[:200]!r}")

    def to_json(self) -> dict[str, Any]:
        """Return the manifest form of this spec (canonical fields only when known)."""
        document = {
            "name": self.name,
            "key": self.key,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "layout": self.layout,
        }
        if self.kind:
            document.update(kind=self.kind, layer=self.layer, slot=self.slot)
        return document

    @classmethod
    def from_json(cls, document: Any) -> TensorSpec:
        """Build a spec from its manifest form, checking every field's type first.

        Raises :class:`FormatError` for a missing or mistyped field, a shape
        that is not a list of non-negative ints, or an unknown dtype name.

        Example:
            >>> TensorSpec.from_json({"name": "w", "key": "w", "shape": [2], "dtype": "int8",
            ...                       "layout": "out"}).nbytes
            2
            >>> TensorSpec.from_json({"name": "w", "key": "w", "shape": "2", "dtype": "int8",
            ...                       "layout": "out"})  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ...
            polybundle.errors.FormatError: tensor 'w' has shape '2'; expected a list of ...
        """
        if not isinstance(document, dict):
            raise FormatError(
                f"a manifest tensor entry is a {type(document).__name__}; expected an object "
                "with name, key, shape, dtype and layout. The manifest is damaged."
            )
        where = f"tensor {str(document.get('name'))[:200]!r}"
        for field_name in ("name", "key", "dtype", "layout"):
            if not isinstance(document.get(field_name), str) or not document[field_name]:
                raise FormatError(
                    f"{where}: {field_name!r} is {repr(document.get(field_name))[:80]}; expected "
                    "a non-empty string. The manifest is damaged."
                )
        for field_name in ("kind", "layer", "slot"):
            if not isinstance(document.get(field_name, ""), str):
                raise FormatError(
                    f"{where}: {field_name!r} is {repr(document[field_name])[:80]}; expected a "
                    "string. The manifest is damaged."
                )
        shape = check_shape(document.get("shape"), where=where)
        resolve_dtype(document["dtype"], where=where)
        return cls(
            name=document["name"],
            key=document["key"],
            shape=shape,
            dtype=document["dtype"],
            layout=document["layout"],
            kind=document.get("kind", ""),
            layer=document.get("layer", ""),
            slot=document.get("slot", ""),
        )


@dataclass(frozen=True)
class WeightsSnapshot:
    """A host-memory copy of one model's weights, taken by :meth:`Backend.snapshot`.

    ``write(stream)`` writes the weights file (the bytes :meth:`Backend.write`
    would have written when the copy was taken) from the copy alone, on any
    thread, while training goes on changing the live model. ``copy`` is what
    the backend may reuse for the next snapshot of the same model (passed back
    as ``reuse``); ``nbytes`` is the host memory the copy holds.

    Example:
        >>> import io
        >>> snapshot = WeightsSnapshot(write=lambda stream: stream.write(b"w"), copy=b"w",
        ...                            nbytes=1)
        >>> stream = io.BytesIO()
        >>> _ = snapshot.write(stream)
        >>> stream.getvalue()
        b'w'
    """

    write: Callable[[BinaryIO], Any]
    copy: Any
    nbytes: int


class Backend(ABC):
    """Base class of backends. Subclasses set the class attributes and the methods.

    Methods that need the framework import it inside the method, never at
    module top, so registering a backend costs nothing when its framework is
    absent.

    Example:
        >>> backend = polybundle.get_backend("pt")
        >>> backend.name, backend.weights_member
        ('torch', 'model.pth')
    """

    name: str = ""
    """Canonical name, written to the manifest's ``backend``."""
    aliases: tuple[str, ...] = ()
    """Other names users may pass (``backend="pt"``)."""
    extra: str = ""
    """What to ``pip install`` to get the framework, e.g. ``polybundle[torch]``."""
    modules: tuple[str, ...] = ()
    """Importable modules the backend needs; all must be installed."""
    distribution: str = ""
    """Distribution whose version is recorded as the framework version."""
    weights_member: str = ""
    """File name of the native weights member inside ``<role>/``."""
    plain_format: str = ""
    """The :class:`~polybundle.format.detection.Detection` format of the framework's own
    weights file (``torch.save``, ``model.save``) when this backend reads one as a one-role
    bundle; ``""`` when it reads none. Its plugin detects such files (``polybundle_detect_archive``,
    ``trylast``) and :meth:`describe_stored` describes them."""
    image_layout: str = ""
    """Where the framework's standard convolutions want an image's channel axis:
    ``"channels_first"`` (``n,c,h,w``) or ``"channels_last"`` (``n,h,w,c``); ``""`` when the
    backend does not say. A conversion moves a sample image between two backends' layouts
    only where the traced graph shows a convolution reads it."""
    quiet_environment: tuple[tuple[str, str], ...] = ()
    """Environment variables, as ``(name, value)`` pairs, that keep the framework's own log
    lines (C++ start-up notices) off a command's output. The ``polybundle`` command sets each
    one the user has not set, before any framework is imported."""
    reads_front_to_back: bool = False
    """True when :meth:`load_into` and :meth:`build_and_load` read the weights file once, in
    order and to its end, before they change a model. A loader then hands them a
    :class:`~polybundle.format.verified.VerifiedMember`, which checks the member's digest as
    it is read and raises :class:`~polybundle.errors.IntegrityError` from the read that
    reaches the end, so ``into=`` models need no hashing pass before the load."""

    def is_available(self) -> bool:
        """Return True when every module in :attr:`modules` can be imported.

        Example:
            >>> polybundle.get_backend("torch").is_available()
            True
        """
        return not self._missing_modules()

    def _missing_modules(self) -> list[str]:
        missing = []
        for module in self.modules:
            try:
                found = importlib.util.find_spec(module) is not None
            except (ImportError, ValueError):  # a broken or blocked installation
                found = False
            if not found:
                missing.append(module)
        return missing

    def require(self) -> None:
        """Raise :class:`BackendUnavailableError` naming the pip extra when absent.

        Example: an installed backend returns; one whose module is missing raises.

            >>> polybundle.get_backend("tensorflow").require()
            >>> class Absent(type(polybundle.get_backend("torch"))):
            ...     name, modules, extra = "absent", ("no_such_module",), "polybundle-absent"
            >>> Absent().require()
            Traceback (most recent call last):
            polybundle.errors.BackendUnavailableError: the 'absent' backend needs no_such_module,
            which is not installed. Install it with: pip install 'polybundle-absent'
        """
        missing = self._missing_modules()
        if missing:
            raise BackendUnavailableError(
                f"the {self.name!r} backend needs {', '.join(missing)}, which is not "
                f"installed. Install it with: pip install '{self.extra}'"
            )

    def framework_version(self) -> str:
        """Return the installed framework's version string (without importing it).

        Example:
            >>> polybundle.get_backend("torch").framework_version() == torch.__version__
            True
        """
        try:
            return importlib.metadata.version(self.distribution)
        except importlib.metadata.PackageNotFoundError:
            return "unknown"

    @abstractmethod
    def owns(self, model: Any) -> bool:
        """Return True when ``model`` is a native model of this backend.

        Must not import the framework: a model of a framework that was never
        imported cannot exist. Example: ``backend.owns(torch.nn.Linear(2, 2))``.
        """

    @abstractmethod
    def describe(self, model: Any) -> list[TensorSpec]:
        """Return a :class:`TensorSpec` for every tensor the weights file will hold.

        Example: ``[s.name for s in backend.describe(model)] == ["0.weight", ...]``.
        """

    @abstractmethod
    def write(self, model: Any, stream: BinaryIO) -> None:
        """Write ``model``'s native weights file into the writable ``stream``.

        Example: ``backend.write(model, stream)`` calls ``torch.save(...)``.
        """

    def snapshot(self, model: Any, reuse: WeightsSnapshot | None = None) -> WeightsSnapshot:
        """Copy ``model``'s weights to host memory now; return a :class:`WeightsSnapshot`.

        Used by asynchronous checkpoints: the caller's thread takes the copy
        and training may change the model as soon as this returns, while
        another thread writes the copy. ``reuse`` is the previous snapshot of
        the same model, which nothing reads any more: a backend may copy into
        its buffers instead of allocating new ones. The default serialises the
        weights file into memory with :meth:`write` (correct for any backend,
        but it does all of the serialisation in the caller's thread); backends
        override it with a plain copy of the tensors.

        Example: the default, run for the torch backend (which overrides it).

            >>> import io
            >>> snapshot = Backend.snapshot(polybundle.get_backend("torch"), net)
            >>> stream = io.BytesIO()
            >>> _ = snapshot.write(stream)
            >>> stream.getvalue()[:2], snapshot.nbytes == len(stream.getvalue())
            (b'PK', True)
        """
        buffer = io.BytesIO()
        self.write(model, buffer)
        data = buffer.getbuffer()
        return WeightsSnapshot(write=lambda stream: stream.write(data), copy=data,
                               nbytes=data.nbytes)

    def snapshot_optimizer(
        self, model: Any, optimizer: Any, scheduler: Any | None = None,
        reuse: OptimizerState | None = None,
    ) -> OptimizerState:
        """Return :meth:`export_optimizer`'s state with slot arrays copied to host memory.

        The slot arrays of the result belong to the caller: training may
        change the live optimizer as soon as this returns. ``reuse`` is the
        previous snapshot of the same optimizer, which nothing reads any more;
        its arrays are filled instead of new ones where name, shape and dtype
        match. The default exports, then copies each slot (export may return
        views of live memory); a backend whose export copies anyway may
        override it to copy once, straight into ``reuse``.

        Example: the default, run for the torch backend (which overrides it).

            >>> opt = torch.optim.Adam(net.parameters())
            >>> net(torch.ones(1, 4)).sum().backward()
            >>> opt.step()
            >>> backend = polybundle.get_backend("torch")
            >>> first = Backend.snapshot_optimizer(backend, net, opt)
            >>> opt.step()
            >>> again = Backend.snapshot_optimizer(backend, net, opt, reuse=first)
            >>> again.slots["0.weight"]["m"] is first.slots["0.weight"]["m"]  # reused buffer
            True
            >>> bool((again.slots["0.weight"]["m"] == opt.state[net[0].weight]["exp_avg"].numpy())
            ...      .all())
            True
        """
        state = self.export_optimizer(model, optimizer, scheduler)
        old = {} if reuse is None else reuse.slots
        for name, slots in state.slots.items():
            for slot, array in slots.items():
                array = np.asarray(array)
                buffer = old.get(name, {}).get(slot)
                if buffer is None or buffer.shape != array.shape or buffer.dtype != array.dtype:
                    buffer = np.empty_like(array)
                np.copyto(buffer, array)
                slots[slot] = buffer
        return state

    @abstractmethod
    def load_into(self, model: Any, source: BinaryIO, specs: list[TensorSpec]) -> None:
        """Load the weights file in ``source`` into ``model``, strictly.

        Every tensor of the model must be in ``specs`` and the reverse, with
        equal shapes; otherwise raise
        :class:`polybundle.errors.TensorMismatchError` before changing the
        model. Example: ``backend.load_into(model, stream, specs)``.
        """

    def build_and_load(
        self,
        builder: Callable[[dict[str, Any]], Any],
        config: dict[str, Any],
        source: BinaryIO,
        specs: list[TensorSpec],
    ) -> Any:
        """Build a model with ``builder(config)`` and load the weights in ``source``.

        The default builds, then calls :meth:`load_into`. A backend may build
        without initialising weights that are about to be overwritten (PyTorch
        builds on the ``meta`` device and adopts the loaded tensors).
        Example: ``model = backend.build_and_load(build_mlp, {"width": 8}, stream, specs)``.
        """
        model = builder(config)
        self.load_into(model, source, specs)
        return model

    @abstractmethod
    def read_tensors(self, source: BinaryIO, specs: list[TensorSpec]) -> dict[str, np.ndarray]:
        """Return ``{spec.name: numpy array}`` read from the weights file in ``source``.

        Example: ``backend.read_tensors(stream, specs)["fc.weight"].shape == (4, 3)``.
        """

    def _no_reader(self, what: str, method: str) -> BackendError:
        return BackendError(
            f"the {self.name!r} backend has no framework-free reader of its weights file "
            f"({self.weights_member or 'none declared'}), so {what} is not available for it. "
            f"Its author can implement {type(self).__name__}.{method} (see "
            "polybundle.model.backend.Backend)."
        )

    def read_stored(
        self, source: BinaryIO, specs: list[TensorSpec], *, mapped: mmap.mmap | None = None
    ) -> dict[str, np.ndarray]:
        """Return ``{spec.name: array}`` from the weights file in ``source``, without the framework.

        The file must hold exactly ``specs`` (keys, shapes, dtypes), checked
        before any tensor byte is read. Given ``mapped``, a read-only memory
        map of the whole file that ``source`` (then a
        :class:`~polybundle.format.archive.MemberRange`) lies in, the arrays are
        read-only views of the map and no tensor byte is read now: this is what
        ``load(..., lazy=True)`` uses. The default raises
        :class:`~polybundle.errors.BackendError` naming the backend.

        Example: ``backend.read_stored(member, specs, mapped=mapped)["fc.weight"][0, 0]``.
        """
        raise self._no_reader("lazy loading", "read_stored")

    def check_stored(
        self,
        source: BinaryIO,
        specs: list[TensorSpec],
        *,
        where: str,
        declared: Sequence[str] = (),
    ) -> dict[str, np.ndarray]:
        """Check the weights file in ``source`` as a load would, without the framework.

        Runs every check the backend runs before its framework may see the
        file (whatever in it could import or run code, its structure, the
        stored tensors against ``specs``), raising a typed
        :class:`~polybundle.errors.PolybundleError` for the first failure, and
        returns every stored tensor as ``{native key: array}`` for
        :func:`polybundle.verify` to compare with the manifest. ``where`` names
        the file in errors; ``declared`` lists code objects the archive itself
        declares by name (a migrated legacy archive's custom objects), which
        are expected, not refused. The default raises
        :class:`~polybundle.errors.BackendError` naming the backend.

        Example: ``sorted(backend.check_stored(stream, specs, where="net/model.pth"))``.
        """
        raise self._no_reader("a framework-free verify", "check_stored")

    def describe_stored(self, source: BinaryIO, *, where: str) -> list[TensorSpec]:
        """Describe the tensors of a plain weights file (:attr:`plain_format`) from its index.

        No tensor byte is read and the framework is not imported. Layout tags
        are the ones the file itself determines (``opaque`` where it says
        nothing). Used to read such a file as a one-role bundle. The default
        raises :class:`~polybundle.errors.BackendError` naming the backend.

        Example: ``[spec.name for spec in backend.describe_stored(stream, where="net.pth")]``.
        """
        raise self._no_reader("reading its plain weights files", "describe_stored")

    def assign(self, model: Any, arrays: dict[str, np.ndarray]) -> None:
        """Set ``model``'s tensors from ``{spec name: array}``, strictly.

        Names are those :meth:`describe` gives; every tensor of the model must
        be given exactly once with its shape, else raise
        :class:`polybundle.errors.TensorMismatchError` before changing anything.
        Used to load weights converted from another backend. The default refuses.
        Example: ``backend.assign(model, {"fc.weight": w, "fc.bias": b})``.
        """
        raise BackendError(
            f"the {self.name!r} backend cannot load named tensors into a model, so "
            "bundles of other backends cannot be converted into it."
        )

    def native_layout(self, kind: str, slot: str, source_layout: str = "") -> str | None:
        """Return the layout tag this framework's standard layer of ``kind`` gives ``slot``.

        ``kind`` and ``slot`` are canonical (:data:`polybundle.model.canonical.KINDS`);
        ``source_layout`` is the slot's tag in the bundle being converted (for
        layouts that depend on it, such as a slope of one value). Return None
        when the framework's layer has no such slot (a batch norm without an
        update count). Used to plan a conversion into this backend without
        building a model. The default refuses.
        Example: ``backend.native_layout("dense", "kernel") == "in,out"``.
        """
        raise BackendError(
            f"the {self.name!r} backend does not say which layout its layers give canonical "
            f"tensors (asked for {kind}.{slot}), so conversions into it cannot be planned "
            "without a model. Implement Backend.native_layout in the backend, or convert with "
            f"polybundle.load(..., backend={self.name!r})."
        )

    def predict(self, model: Any, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run ``model`` in inference mode on ``inputs``; return its outputs by name.

        ``inputs`` holds ``"input"`` (one input) or ``"input.0"``, ``"input.1"``,
        ... (several, in call order). Outputs come back as ``"output"`` (one)
        or ``"output.0"``, ... Used by the parity harness. The default refuses.
        Example: ``backend.predict(model, {"input": x})["output"].shape``.
        """
        raise BackendError(f"the {self.name!r} backend cannot run models for parity checks.")

    def trace(self, model: Any, inputs: dict[str, np.ndarray]) -> OpGraph | None:
        """Return ``model``'s dataflow graph on the sample ``inputs``, or None when untraceable.

        ``inputs`` are named as :meth:`predict` takes them, in this framework's
        own layout. The graph (:class:`~polybundle.model.graph.OpGraph`) names
        each weighted op as :meth:`describe` names its tensors' ``layer``, so
        conversions pair layers through it (:mod:`polybundle.model.matching`)
        and derive layout changes (a dense layer after a channels-first
        ``Flatten``) from it. The default, None, makes conversions into or
        out of this backend pair layers in definition order, and says so.
        Example: ``backend.trace(model, {"input": x}).input_layouts() == ["n,c,h,w"]``.
        """
        return None

    def sample_inputs(self, model: Any) -> dict[str, np.ndarray] | None:
        """Return a small sample input ``model`` declares the shape of, or None.

        Named as :meth:`predict` takes them, in this framework's layout, seeded
        (so the same every time). Used to check a conversion when the bundle
        stores no parity inputs and none are given. The default: None (a
        framework whose models do not declare their input shapes).
        Example: ``backend.sample_inputs(keras_model)["input"].shape == (2, 32, 32, 3)``.
        """
        return None

    def layer_outputs(
        self, model: Any, inputs: dict[str, np.ndarray], layers: Sequence[str]
    ) -> dict[str, np.ndarray]:
        """Run ``model`` on ``inputs`` in inference mode; return the output of each named layer.

        ``layers`` are names as :meth:`describe` gives tensors' ``layer``. Used to
        name the first layer where a converted model diverges from its source.
        The default refuses. Example: ``backend.layer_outputs(model, {"input": x}, ["fc"])``.
        """
        raise BackendError(f"the {self.name!r} backend cannot give its layers' outputs.")

    def load_standalone(self, source: BinaryIO, specs: list[TensorSpec] | None = None) -> Any:
        """Rebuild a model from the weights file alone, when its format allows it.

        ``specs`` are the manifest's tensors: the stored tensors must be
        exactly these (keys, shapes, dtypes) before the framework reads them
        (``None`` for a plain framework file, which has no manifest). The
        default refuses: only formats that carry a safe architecture
        description (Keras' ``.keras``) can. Example:
        ``backend.load_standalone(stream, specs)``.
        """
        raise UnknownArchitectureError(
            f"the {self.name!r} backend cannot rebuild a model from its weights file "
            "alone, and no builder is registered for the bundle's architecture. "
            "Register one with @polybundle.architecture(name, backend=...) or pass "
            "into={role: model}."
        )

    def export_optimizer(
        self, model: Any, optimizer: Any, scheduler: Any | None = None
    ) -> OptimizerState:
        """Return ``optimizer``'s state (and ``scheduler``'s, if given) in neutral form.

        Slots are keyed by the names :meth:`describe` gives ``model``'s tensors.
        Raise :class:`polybundle.errors.UnsupportedOptimizerError` naming the
        class for an optimizer the backend cannot describe, and
        :class:`polybundle.errors.OptimizerMismatchError` when the optimizer
        updates tensors that are not ``model``'s. The default refuses.
        Example: ``backend.export_optimizer(model, torch.optim.Adam(...)).algorithm``.
        """
        raise UnsupportedOptimizerError(
            f"the {self.name!r} backend cannot export optimizer state "
            f"({type(optimizer).__qualname__}); save without optimizers=."
        )

    def restore_optimizer(
        self,
        model: Any,
        optimizer: Any,
        state: OptimizerState,
        specs: list[TensorSpec],
        scheduler: Any | None = None,
    ) -> None:
        """Load neutral ``state`` into a fresh ``optimizer`` bound to ``model``'s parameters.

        ``specs`` are the saved model's tensor specs: they map the neutral
        names of ``state`` to native keys (as :meth:`load_into` does). Must
        check first (kind, bound parameters, shapes) and change nothing on a
        mismatch, raising :class:`polybundle.errors.OptimizerMismatchError`.
        The default refuses. Example: ``backend.restore_optimizer(model, opt, state, specs)``.
        """
        raise UnsupportedOptimizerError(
            f"the {self.name!r} backend cannot restore optimizer state into "
            f"{type(optimizer).__qualname__}."
        )

    def optimizer_to_neutral(self, state: OptimizerState) -> NeutralOptimizer:
        """Describe this backend's optimizer ``state`` in the neutral convention.

        The convention (slot units, decoupled weight decay, one step count) is
        :mod:`polybundle.model.optimizer_conversion`'s. Used to convert the
        state for another backend; must not need the framework. Raise
        :class:`polybundle.errors.UnsupportedOptimizerError` for settings that
        have no neutral form. The default refuses, naming the backend.
        Example: ``backend.optimizer_to_neutral(state).slots["fc.weight"]["m"]``.
        """
        raise UnsupportedOptimizerError(
            f"the {self.name!r} backend cannot describe its optimizer state "
            f"({state.native_class}) in the neutral form, so it cannot be converted for "
            "another backend; load it with this backend, or without optimizer state."
        )

    def optimizer_from_neutral(
        self, neutral: NeutralOptimizer, specs: list[TensorSpec]
    ) -> OptimizerState:
        """Return this backend's own optimizer state for a converted ``neutral`` description.

        ``neutral``'s tensors are already named and laid out as ``specs`` (this
        backend's model) say, its parameters in ``specs`` order. The result is
        what :meth:`restore_optimizer` takes. Must not need the framework.
        Raise :class:`polybundle.errors.UnsupportedOptimizerError` for what the
        framework cannot express. The default refuses, naming the backend.
        Example: ``backend.optimizer_from_neutral(neutral, specs).native_class``.
        """
        raise UnsupportedOptimizerError(
            f"the {self.name!r} backend cannot make its optimizer state from the neutral "
            f"form, so {neutral.origin} state cannot be converted for it; load the bundle "
            "in the backend that wrote it, or without optimizer state."
        )

    def capture_rng(self) -> dict[str, Any] | None:
        """Return the framework's global random-generator state as plain JSON data.

        Called only when the framework is already imported. The default
        (``None``) means the framework has no global generator to record.
        Example: ``backend.capture_rng() == {"cpu": "<base64>"}``.
        """
        return None

    def restore_rng(self, state: dict[str, Any]) -> None:
        """Put back a state returned by :meth:`capture_rng`.

        Example: ``backend.restore_rng(backend.capture_rng())``.
        """
        raise BackendError(
            f"the {self.name!r} backend recorded no random state, so it cannot restore one."
        )
