"""The one error hierarchy of polybundle.

Every error polybundle raises on purpose is a :class:`PolybundleError`, so a
caller can catch one type. Each message says what was found, what was expected
and what to do about it.

Example:
    >>> from polybundle.errors import PolybundleError, IntegrityError
    >>> issubclass(IntegrityError, PolybundleError)
    True
"""

from __future__ import annotations

from collections.abc import Iterable


class PolybundleError(Exception):
    """Base class of every error polybundle raises on purpose.

    Example:
        >>> try:
        ...     raise PolybundleError("found x, expected y; do z")
        ... except PolybundleError as err:
        ...     str(err)
        'found x, expected y; do z'
    """


class FormatError(PolybundleError):
    """The file is not a bundle polybundle knows, or its layout is wrong.

    Example:
        >>> raise FormatError("not a zip")  # doctest: +SKIP
    """


class SchemaError(FormatError):
    """A manifest or params document fails its JSON Schema.

    Example:
        >>> raise SchemaError("manifest.json: 'format' is a required property")  # doctest: +SKIP
    """


class UnsupportedVersionError(FormatError):
    """The bundle was written by a newer, incompatible format version.

    Example:
        >>> raise UnsupportedVersionError("format_version 3.0.0")  # doctest: +SKIP
    """


class IntegrityError(PolybundleError):
    """A member's bytes do not match the size or sha256 the manifest records.

    Example:
        >>> raise IntegrityError("torch/model.pth: sha256 mismatch")  # doctest: +SKIP
    """


class UnsafeContentError(PolybundleError):
    """The archive holds something that could run code or escape the archive.

    Example:
        >>> raise UnsafeContentError("member name '../x' escapes the archive")  # doctest: +SKIP
    """


class BudgetExceededError(UnsafeContentError):
    """Reading the archive would allocate more memory than the budget allows.

    Raised before the allocation, from the sizes the archive declares (see
    :mod:`polybundle.safety.budget`). Pass a larger ``max_bytes=`` to read a bigger model.

    Example:
        >>> issubclass(BudgetExceededError, UnsafeContentError)
        True
    """


class BackendError(PolybundleError):
    """Base class of errors about backends (frameworks).

    Example:
        >>> issubclass(BackendUnavailableError, BackendError)
        True
    """


class UnknownBackendError(BackendError):
    """No registered backend has the requested name or alias.

    Example:
        >>> raise UnknownBackendError("jax")  # doctest: +SKIP
    """


class BackendUnavailableError(BackendError):
    """A backend is registered but its framework is not installed.

    Example:
        >>> raise BackendUnavailableError("torch is not installed")  # doctest: +SKIP
    """


class BackendMismatchError(BackendError):
    """A bundle was written by one backend and another was requested.

    Example:
        >>> raise BackendMismatchError("archived: torch, requested: tensorflow")  # doctest: +SKIP
    """

    def __init__(self, archived: str, requested: str, detail: str = "") -> None:
        self.archived = archived
        self.requested = requested
        message = (
            f"this bundle was written by the {archived!r} backend, but backend="
            f"{requested!r} was requested. Load it with backend={archived!r} "
            f"(or backend=None to use the archived one)."
        )
        super().__init__(f"{message} {detail}".strip())


class UnknownArchitectureError(PolybundleError):
    """No builder is registered for an architecture name and backend.

    Example:
        >>> raise UnknownArchitectureError("no builder for 'mlp' (torch)")  # doctest: +SKIP
    """


class TensorMismatchError(PolybundleError):
    """Tensors are missing, unexpected or of the wrong shape when loading weights.

    Example:
        >>> err = TensorMismatchError(missing=["fc.bias"], unexpected=["fc.b"])
        >>> "fc.bias" in str(err) and "fc.b" in str(err)
        True
    """

    def __init__(
        self,
        *,
        missing: Iterable[str] = (),
        unexpected: Iterable[str] = (),
        mismatched: Iterable[str] = (),
        context: str = "",
    ) -> None:
        self.missing = sorted(missing)
        self.unexpected = sorted(unexpected)
        self.mismatched = sorted(mismatched)
        parts = []
        if self.missing:
            parts.append(f"missing from the bundle: {', '.join(self.missing)}")
        if self.unexpected:
            parts.append(f"in the bundle but not in the model: {', '.join(self.unexpected)}")
        if self.mismatched:
            parts.append(f"shape or dtype differs: {', '.join(self.mismatched)}")
        where = f"{context}: " if context else ""
        super().__init__(
            f"{where}the model's tensors and the bundle's do not match ("
            + "; ".join(parts)
            + "). Build the model with the same architecture and config that was saved."
        )


class ConversionError(PolybundleError):
    """Weights cannot be converted between backends: a layer has no canonical kind
    or explicit map, or the two models' layers do not line up.

    Example:
        >>> raise ConversionError("layer 'attn' (MultiHeadAttention) is unmapped")  # doctest: +SKIP
    """


class ConversionUnavailableError(BackendMismatchError):
    """A bundle cannot be loaded into the requested backend: no builder exists there.

    Example:
        >>> err = ConversionUnavailableError("tensorflow", "torch", "no builder for 'mlp'")
        >>> err.archived, err.requested
        ('tensorflow', 'torch')
    """


class ParamsError(PolybundleError):
    """Params cannot be stored as plain JSON that round-trips exactly.

    Example:
        >>> raise ParamsError("params['shape'] is a tuple")  # doctest: +SKIP
    """


class OptimizerError(PolybundleError):
    """Base class of errors about optimizer state (export, storage, restore).

    Example:
        >>> issubclass(UnsupportedOptimizerError, OptimizerError)
        True
    """


class UnsupportedOptimizerError(OptimizerError):
    """The backend cannot describe this optimizer (or scheduler) as neutral state.

    Raised at save time, naming the class, so nothing is silently dropped.

    Example:
        >>> raise UnsupportedOptimizerError("torch.optim.Adagrad")  # doctest: +SKIP
    """


class OptimizerMismatchError(OptimizerError):
    """An optimizer is not bound to the model's parameters, or is of another kind.

    Example:
        >>> raise OptimizerMismatchError("saved adam, restoring into sgd")  # doctest: +SKIP
    """


class CheckpointError(PolybundleError):
    """A checkpoint directory or its index is missing, damaged or asked for a step it lacks.

    Example:
        >>> raise CheckpointError("no checkpoint for step 7")  # doctest: +SKIP
    """


class WriteError(PolybundleError):
    """The operating system refused a write (full disk, read-only folder, no permission).

    Nothing is left behind: the temporary file is removed and the target is unchanged.
    ``path`` is the file or folder concerned, ``reason`` the OS's words.

    Example:
        >>> err = WriteError("run.bundle", "No space left on device")
        >>> err.path, "No space left" in str(err)
        ('run.bundle', True)
    """

    def __init__(self, path: str, reason: str, detail: str = "") -> None:
        self.path = path
        self.reason = reason
        super().__init__(
            f"could not write {path!r}: {reason}. {detail or 'Nothing was changed on disk.'} "
            "Free space, or choose a folder you can write to, and save again."
        )


__all__ = [
    "PolybundleError",
    "FormatError",
    "SchemaError",
    "UnsupportedVersionError",
    "IntegrityError",
    "UnsafeContentError",
    "BudgetExceededError",
    "BackendError",
    "UnknownBackendError",
    "BackendUnavailableError",
    "BackendMismatchError",
    "UnknownArchitectureError",
    "TensorMismatchError",
    "ConversionError",
    "ConversionUnavailableError",
    "ParamsError",
    "OptimizerError",
    "UnsupportedOptimizerError",
    "OptimizerMismatchError",
    "CheckpointError",
    "WriteError",
]
