"""The hook implementations polybundle finds through the ``polybundle`` entry point.

``pyproject.toml`` declares ``[project.entry-points.polybundle] jax =
"polybundle_jax.plugin"``; polybundle registers this module like its
built-in backends. It registers :class:`~polybundle_jax.backend.JaxBackend`
and claims JAX bundles before the built-in detector does.

Example:
    >>> import polybundle
    >>> polybundle.get_backend("flax").weights_member
    'model.safetensors'
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import polybundle
from polybundle.plugin import ARCHITECTURE, Adapter, Backend, Detection, peek_format2_manifest

from .backend import WEIGHTS_MEMBER, JaxBackend
from .conformance import JaxAdapter, build_conformance_model


def _is_safetensors(archive: Any, member: str) -> bool:
    """Return True when ``member`` starts like a safetensors file (length, then ``{``)."""
    if not archive.has(member):
        return False
    head = archive.head(member, 9)
    if len(head) < 9:
        return False
    (header_length,) = struct.unpack("<Q", head[:8])
    return head[8:9] == b"{" and 8 + header_length <= archive.size(member)


@polybundle.hookimpl
def polybundle_register_backends(register: Callable[[Backend], None]) -> None:
    """Register the JAX backend.

    Example:
        >>> registered = []
        >>> polybundle_register_backends(registered.append)
        >>> [(backend.name, backend.aliases) for backend in registered]
        [('jax', ('flax', 'nnx'))]
    """
    register(JaxBackend())


@polybundle.hookimpl
def polybundle_detect_archive(archive: Any) -> Detection | None:
    """Claim format-2 bundles whose manifest says ``jax`` and whose weights are safetensors.

    Example: a JAX bundle is claimed; ``run.bundle``, written by another backend, is not.

        >>> from flax import nnx
        >>> from polybundle.plugin import ArchiveReader
        >>> _ = polybundle.save("jax.bundle", {"net": nnx.Linear(3, 2, rngs=nnx.Rngs(0))})
        >>> with ArchiveReader("jax.bundle") as archive:
        ...     polybundle_detect_archive(archive)
        Detection(format='polybundle', backend='jax')
        >>> with ArchiveReader("run.bundle") as archive:
        ...     polybundle_detect_archive(archive) is None
        True
    """
    document = peek_format2_manifest(archive)
    if document is None or document.get("backend") != JaxBackend.name:
        return None
    models = document.get("models")
    if not isinstance(models, list):
        return None
    weights = [m.get("weights") for m in models if isinstance(m, dict)]
    if weights and all(
        isinstance(w, str) and w.endswith(f"/{WEIGHTS_MEMBER}") and _is_safetensors(archive, w)
        for w in weights
    ):
        return Detection("polybundle", JaxBackend.name)
    return None


@polybundle.hookimpl
def polybundle_register_architectures(
    register: Callable[[str, str, Callable[[dict[str, Any]], Any]], None],
) -> None:
    """Register the builder of the conformance model (``polybundle conformance``, the demo)."""
    register(ARCHITECTURE, JaxBackend.name, build_conformance_model)


@polybundle.hookimpl
def polybundle_conformance_adapters() -> list[Adapter]:
    """Return the adapter that drives the JAX backend through the conformance feature matrix."""
    return [JaxAdapter()]
