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
        >>> Path("notes.txt").write_text("not a bundle")
        12
        >>> polybundle.load("notes.txt")
        Traceback (most recent call last):
        polybundle.errors.FormatError: 'notes.txt' is not a zip file ...
    """


class SchemaError(FormatError):
    """A manifest or params document fails its JSON Schema.

    Example:
        >>> import zipfile
        >>> with zipfile.ZipFile("run.bundle") as src, zipfile.ZipFile("x.bundle", "w") as dst:
        ...     for name in src.namelist():
        ...         dst.writestr(name, src.read(name).replace(b'"models"', b'"modelz"'))
        >>> polybundle.load("x.bundle")
        Traceback (most recent call last):
        polybundle.errors.SchemaError: manifest.json does not match the manifest schema of format 2:
        ... 'models' is a required property ...
    """


class UnsupportedVersionError(FormatError):
    """The bundle was written by a newer, incompatible format version.

    Example:
        >>> import zipfile
        >>> with zipfile.ZipFile("run.bundle") as src, zipfile.ZipFile("x.bundle", "w") as dst:
        ...     for name in src.namelist():
        ...         dst.writestr(name, src.read(name).replace(b'"2.2.0"', b'"3.0.0"'))
        >>> polybundle.load("x.bundle")
        Traceback (most recent call last):
        polybundle.errors.UnsupportedVersionError: this bundle is format 3.0.0, newer than ...
    """


class UnknownDigestError(FormatError):
    """A digest algorithm polybundle does not know, asked for or named by a manifest.

    Example:
        >>> polybundle.save("x.bundle", {"net": net}, digest="md5")
        Traceback (most recent call last):
        polybundle.errors.UnknownDigestError: digest= names digest algorithm 'md5'; this
        polybundle knows 'xxh3-128' (the default) and 'sha256'. ...
    """


class IntegrityError(PolybundleError):
    """A member's bytes do not match the size or digest the manifest records.

    Example:
        >>> import zipfile
        >>> with zipfile.ZipFile("run.bundle") as src, zipfile.ZipFile("x.bundle", "w") as dst:
        ...     for name in src.namelist():
        ...         dst.writestr(name, src.read(name).replace(b'"N": 4', b'"N": 5'))
        >>> polybundle.load("x.bundle")
        Traceback (most recent call last):
        polybundle.errors.IntegrityError: member 'params.json' has xxh3-128 digest ...
    """


class UnsafeContentError(PolybundleError):
    """The archive holds something that could run code or escape the archive.

    Example:
        >>> import zipfile
        >>> with zipfile.ZipFile("evil.zip", "w") as archive:
        ...     archive.writestr("../x", "outside")
        >>> polybundle.inspect("evil.zip")
        Traceback (most recent call last):
        polybundle.errors.UnsafeContentError: member name '../x' has an empty, '.' or '..' ...
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
        >>> polybundle.get_backend("mxnet")
        Traceback (most recent call last):
        polybundle.errors.UnknownBackendError: no backend is called 'mxnet'; known backends ...
    """


class BackendUnavailableError(BackendError):
    """A backend is registered but its framework is not installed.

    Its message names the pip extra that installs the framework.
    """


class BackendMismatchError(BackendError):
    """A bundle was written by one backend and another was requested.

    Example:
        >>> err = BackendMismatchError("torch", "tensorflow")
        >>> err.archived, err.requested
        ('torch', 'tensorflow')
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
        >>> polybundle.build("no-such-net", {}, backend="torch")
        Traceback (most recent call last):
        polybundle.errors.UnknownArchitectureError: no builder for architecture 'no-such-net' ...
    """


class UserCodeError(PolybundleError):
    """A module the user asked to import (``--import``, ``[tool.polybundle] imports``) failed.

    Example:
        >>> str(UserCodeError("--import my_models: the module could not be found"))
        '--import my_models: the module could not be found'
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
    """


class ConversionMismatchError(ConversionError):
    """A converted model computes something other than its reference on the same input.

    Raised by the check every cross-framework load and convert runs (see
    :mod:`polybundle.api.conversion_check`): ``output`` is the worst output,
    ``max_rel`` its error relative to the reference's scale, and ``layer`` the
    first paired layer whose activations diverge ("" when no trace could tell).

    Example:
        >>> err = ConversionMismatchError("role 'net': 'output' differs", output="output",
        ...                               max_rel=0.9, layer="classifier.0")
        >>> isinstance(err, ConversionError), err.layer
        (True, 'classifier.0')
    """

    def __init__(self, message: str, *, output: str = "", max_rel: float = float("inf"),
                 layer: str = "") -> None:
        super().__init__(message)
        self.output = output
        self.max_rel = max_rel
        self.layer = layer


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
        >>> polybundle.save("x.bundle", {"net": net}, params={"shape": (1, 2)})
        Traceback (most recent call last):
        polybundle.errors.ParamsError: params['shape'] is a builtins.tuple; ... use a list.
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
        >>> adagrad = torch.optim.Adagrad(net.parameters())
        >>> polybundle.save("x.bundle", {"net": net}, optimizers={"net": adagrad})
        Traceback (most recent call last):
        polybundle.errors.UnsupportedOptimizerError: the PyTorch optimizer ...Adagrad is not ...
    """


class OptimizerMismatchError(OptimizerError):
    """An optimizer is not bound to the model's parameters, or is of another kind.

    Example:
        >>> other = torch.optim.Adam(torch.nn.Linear(1, 1).parameters())
        >>> polybundle.save("x.bundle", {"net": net}, optimizers={"net": other})
        Traceback (most recent call last):
        polybundle.errors.OptimizerMismatchError: torch.optim.adam.Adam updates 2 parameter(s) ...
    """


class CheckpointError(PolybundleError):
    """A checkpoint directory or its index is missing, damaged or asked for a step it lacks.

    Example:
        >>> polybundle.CheckpointManager("ckpt").restore()
        Traceback (most recent call last):
        polybundle.errors.CheckpointError: 'ckpt' holds no checkpoint to restore.
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


class StorageError(PolybundleError):
    """A bundle's URL cannot be reached: no such object or bucket, access refused, no fsspec.

    ``url`` is the location concerned. Nothing is changed at the URL.

    Example:
        >>> err = StorageError("s3://models/run.bundle", "no such object; check the key")
        >>> err.url, str(err)
        ('s3://models/run.bundle', "'s3://models/run.bundle': no such object; check the key")
    """

    def __init__(self, url: str, problem: str) -> None:
        self.url = url
        super().__init__(f"{url!r}: {problem}")


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
    "UserCodeError",
    "TensorMismatchError",
    "ConversionError",
    "ConversionUnavailableError",
    "ParamsError",
    "OptimizerError",
    "UnsupportedOptimizerError",
    "OptimizerMismatchError",
    "CheckpointError",
    "WriteError",
    "StorageError",
]
