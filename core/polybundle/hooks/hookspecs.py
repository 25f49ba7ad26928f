"""Hook specifications: the contract between polybundle and its plugins.

polybundle uses pluggy with the project name ``"polybundle"``. A plugin is any
module or object with functions marked ``@hookimpl`` whose names match the
specs below. Built-in backends are plugins too, registered from
:data:`polybundle.hooks.manager.DEFAULT_PLUGINS` exactly as third-party ones are
registered from the ``"polybundle"`` entry-point group.

Example (a plugin module):
    >>> from polybundle import hookimpl
    >>> @hookimpl
    ... def polybundle_register_architectures(register):
    ...     register("tiny-mlp", "torch", lambda config: ...)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from polybundle.format.archive import ArchiveReader
    from polybundle.format.detection import Detection
    from polybundle.legacy.era import EraReader
    from polybundle.model.backend import Backend

PROJECT_NAME = "polybundle"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def polybundle_register_backends(register: Callable[[Backend], None]) -> None:
    """Register backends (frameworks) by calling ``register(backend)`` once per backend.

    Called once, when the registry is first used. ``backend`` is an instance of
    :class:`polybundle.model.backend.Backend`. The registry owns names and aliases:
    registering a name or alias that another backend already holds raises
    :class:`polybundle.errors.BackendError`. Not firstresult; return nothing.

    Example:
        >>> @hookimpl
        ... def polybundle_register_backends(register):
        ...     register(MyJaxBackend())  # doctest: +SKIP
    """


@hookspec(firstresult=True)
def polybundle_detect_archive(archive: ArchiveReader) -> Detection | None:
    """Say which format and backend wrote ``archive``, or return None to pass.

    Called by :func:`polybundle.load`, :func:`polybundle.inspect` and friends
    after the zip's directory has been checked and before any member is
    trusted. Detectors may look at member names, read small members and the
    first bytes of large ones (``archive.head(name, 16)``). firstresult: the
    first non-None answer wins. The built-in detectors are ``trylast``, so a
    plugin's detector runs before them and can claim a file first.

    Example:
        >>> @hookimpl
        ... def polybundle_detect_archive(archive):
        ...     if archive.has("jax/model.safetensors"):
        ...         return Detection(format="polybundle", backend="jax")  # doctest: +SKIP
    """


@hookspec
def polybundle_register_architectures(
    register: Callable[[str, str, Callable[[dict[str, Any]], Any]], None],
) -> None:
    """Register model builders by calling ``register(name, backend, builder)``.

    ``builder(config) -> native model`` must build an untrained model of the
    architecture ``name`` for ``backend`` (a name or alias) from a JSON
    ``config``. :func:`polybundle.load` uses it to rebuild models from a
    bundle's manifest. Called once, when the registry is first used. Not
    firstresult; return nothing. The :func:`polybundle.architecture` decorator
    does the same from application code.

    Example:
        >>> @hookimpl
        ... def polybundle_register_architectures(register):
        ...     register("mlp", "torch", build_torch_mlp)  # doctest: +SKIP
    """


@hookspec
def polybundle_params_loaded(params: dict[str, Any], manifest: dict[str, Any], path: str) -> None:
    """React to the params of a bundle that :func:`polybundle.load` just read.

    For applications that keep a global configuration and must sync it with a
    loaded bundle. ``params`` is the bundle's params dict (mutating it changes
    what :attr:`Bundle.params` holds), ``manifest`` the validated manifest and
    ``path`` the bundle's path. Called once per load, after the models were
    built. Not firstresult; return nothing.

    Example:
        >>> @hookimpl
        ... def polybundle_params_loaded(params, manifest, path):
        ...     GLOBAL_CONFIG.update(params)  # doctest: +SKIP
    """


@hookspec
def polybundle_register_eras(register: Callable[[EraReader], None]) -> None:
    """Register readers of older archive layouts by calling ``register(reader)``.

    ``reader`` is an instance of :class:`polybundle.legacy.EraReader` with a
    unique ``format`` name, the ``backend`` that wrote the weights and a
    one-line ``description``. Its ``claims(archive)`` is asked (after the
    format-2 detector passes) whether an archive is of its era; when it is,
    :func:`polybundle.load`, :func:`polybundle.migrate` and
    :func:`polybundle.verify` use its ``read``, ``read_tensors`` and
    ``load_standalone`` instead of the format-2 path. Readers must never
    execute archive content (use :func:`polybundle.safety.unpickle.safe_loads` for
    pickles). Called on each lookup; registering one format twice raises
    :class:`polybundle.errors.PolybundleError`. Not firstresult; return
    nothing. The built-in TensorFlow dill, PyTorch dill and PyTorch JSON eras
    are registered through this hook by :mod:`polybundle.legacy.plugin`.

    Example:
        >>> @hookimpl
        ... def polybundle_register_eras(register):
        ...     register(MyOldWriterEra())  # doctest: +SKIP
    """
