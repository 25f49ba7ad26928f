"""Layout tags: what each axis of a stored tensor means.

A tag is a comma-separated list of axis names, one per axis, from a shared
vocabulary: ``out``/``in`` (features or channels), ``h``/``w``/``d``
(spatial), ``c`` (a per-channel vector), ``vocab``/``dim`` (embeddings). A
tensor whose meaning the backend cannot state is tagged ``opaque``; a scalar
is tagged ``scalar``. Converting between two layouts of the same tensor is the
permutation the two tags imply; it is never guessed from tensor names.

Example:
    >>> permutation("out,in", "in,out")
    (1, 0)
    >>> permutation("out,in,h,w", "h,w,in,out")
    (2, 3, 1, 0)
"""

from __future__ import annotations

from polybundle.errors import PolybundleError

OPAQUE = "opaque"
"""Tag of a tensor whose axes the backend cannot describe."""

SCALAR = "scalar"
"""Tag of a zero-dimensional tensor."""


def axes(tag: str) -> tuple[str, ...]:
    """Return the axis names of ``tag`` (empty for ``scalar``).

    Example:
        >>> axes("h,w,in,out")
        ('h', 'w', 'in', 'out')
    """
    if tag == SCALAR:
        return ()
    return tuple(tag.split(","))


def permutation(source: str, target: str) -> tuple[int, ...]:
    """Return the axis order that turns a ``source``-tagged array into ``target``.

    ``numpy.transpose(array, permutation(source, target))`` does the
    conversion. Raises :class:`PolybundleError` when the tags do not name the
    same axes (or either is opaque).

    Example:
        >>> permutation("h,w,out,in", "in,out,h,w")
        (3, 2, 0, 1)
    """
    source_axes, target_axes = axes(source), axes(target)
    if OPAQUE in (source, target) or sorted(source_axes) != sorted(target_axes):
        raise PolybundleError(
            f"cannot convert layout {source!r} into {target!r}: they do not name the same "
            "axes. Register an explicit tensor map for this layer."
        )
    return tuple(source_axes.index(axis) for axis in target_axes)


def conv_tag(spatial: int, *, channels_first: bool, transposed: bool) -> str:
    """Return the tag of a convolution kernel with ``spatial`` spatial axes.

    PyTorch stores ``out,in,<spatial>`` (transposed: ``in,out,<spatial>``);
    Keras stores ``<spatial>,in,out`` (transposed: ``<spatial>,out,in``).

    Example:
        >>> conv_tag(2, channels_first=True, transposed=False)
        'out,in,h,w'
        >>> conv_tag(2, channels_first=False, transposed=True)
        'h,w,out,in'
    """
    space = ("d", "h", "w")[3 - spatial :]
    channels = ("in", "out") if transposed else ("out", "in")
    if channels_first:
        return ",".join((*channels, *space))
    return ",".join((*space, *reversed(channels)))
