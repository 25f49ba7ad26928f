"""Check a converted model against a reference, on the same sample, in each side's layout.

Every cross-framework load and convert ends here (:func:`check_conversion`),
unless ``check=False``: the converted model runs on a sample input and its
outputs are compared with a reference -- the outputs the bundle stores
(``save(..., parity_inputs=...)``) or, without them, the source model's own,
when its builder (or a self-describing file) and framework are at hand. An
image the traced graph shows a convolution reading is moved between the two
backends' layouts (:attr:`Backend.image_layout
<polybundle.model.backend.Backend.image_layout>`) on the way in and back on the
way out, so the same logical input meets both models. A difference beyond
tolerance raises :class:`~polybundle.errors.ConversionMismatchError` naming the
worst output and, through the traces, the first paired layer whose
activations diverge. A conversion nothing can check says so in a
:class:`UncheckedConversionWarning` and in ``Bundle.checks``.

Example:
    >>> retag(np.zeros((2, 3, 5, 7)), "n,c,h,w", "n,h,w,c").shape
    (2, 5, 7, 3)
    >>> ConversionCheck("net", False, note="no sample input").summary()
    "role 'net': not checked (no sample input)"
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from polybundle.errors import ConversionMismatchError
from polybundle.format.archive import ArchiveReader
from polybundle.format.arrays import load_arrays
from polybundle.format.manifest import verify_members
from polybundle.format.parity import as_inputs, input_names
from polybundle.model.backend import Backend
from polybundle.model.graph import OpGraph, image_tag

DEFAULT_RTOL = 1e-5
"""Relative tolerance of the check (of the output's largest magnitude)."""
DEFAULT_ATOL = 1e-6
"""Absolute tolerance of the check."""
DIVERGENCE = 1e-4
"""Relative error past which a paired layer's activations count as diverging."""


class UncheckedConversionWarning(UserWarning):
    """A cross-framework conversion ran, but nothing could check its result.

    Example:
        >>> issubclass(UncheckedConversionWarning, UserWarning)
        True
    """


@dataclass(frozen=True)
class ConversionCheck:
    """What the check of one role's conversion found.

    ``checked`` is False when no reference or no sample input was at hand
    (``note`` says why); ``reference`` names what the outputs were compared
    with; ``pairing`` how layers were paired; ``max_rel`` is the worst
    output's error relative to its reference's largest magnitude.

    Example:
        >>> ConversionCheck("net", True, "stored parity outputs", "graph", 3e-7,
        ...                 "output").summary()
        "role 'net': checked against stored parity outputs, max_rel 3.0e-07 (output)"
    """

    role: str
    checked: bool
    reference: str = ""
    pairing: str = ""
    max_rel: float = 0.0
    output: str = ""
    note: str = ""
    inputs: dict[str, np.ndarray] | None = field(default=None, repr=False, compare=False)
    """The sample the converted model was checked on, in its own framework's layout."""

    def summary(self) -> str:
        """Return one line saying what was checked, against what, and the error."""
        if not self.checked:
            return f"role {self.role!r}: not checked ({self.note})"
        return (f"role {self.role!r}: checked against {self.reference}, max_rel "
                f"{self.max_rel:.1e} ({self.output})")


def stored_parity(archive: ArchiveReader, entry: dict[str, Any], members: dict[str, Any]
                  ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]] | None:
    """Return the role's stored ``(inputs, outputs)`` from ``archive``, or None.

    The member is checked against its digest in the manifest's ``members``.

    Example:
        >>> x = np.ones((2, 4), "f4")
        >>> _ = polybundle.save("stored.bundle", {"net": net}, parity_inputs=x)
        >>> from polybundle.format.manifest import read_manifest
        >>> with ArchiveReader("stored.bundle") as archive:
        ...     manifest = read_manifest(archive)
        ...     inputs, outputs = stored_parity(archive, manifest["models"][0],
        ...                                     manifest["members"])
        >>> list(inputs), outputs["output"].shape
        (['input'], (2, 2))
    """
    record = entry.get("parity")
    if record is None or not archive.has(record["member"]):
        return None
    member = record["member"]
    if member in members:
        verify_members(archive, {"members": {member: members[member]}})
    arrays = load_arrays(archive.read(member, limit=archive.size(member)), where=member)
    return ({k: arrays[k] for k in record["inputs"]}, {k: arrays[k] for k in record["outputs"]})


def convention_tag(layout: str, rank: int) -> str:
    """Return the tag of an image of ``rank`` axes in ``layout`` (an :attr:`image_layout`).

    Example:
        >>> convention_tag("channels_first", 4), convention_tag("channels_last", 3)
        ('n,c,h,w', 'n,w,c')
    """
    if not layout or rank < 3:
        return ""
    space = ["d", "h", "w"][3 - (rank - 2):]
    return ",".join(["n", "c", *space] if layout == "channels_first" else ["n", *space, "c"])


def retag(array: np.ndarray, source: str, target: str) -> np.ndarray:
    """Return ``array`` (axes as tag ``source``) transposed to tag ``target``.

    Example:
        >>> retag(np.zeros((1, 5, 6, 3)), "n,h,w,c", "n,c,h,w").shape
        (1, 3, 5, 6)
    """
    if not source or not target or source == target:
        return array
    names, wanted = source.split(","), target.split(",")
    return np.ascontiguousarray(np.transpose(array, [names.index(n) for n in wanted]))


def _consistent(graph: OpGraph, inputs: dict[str, np.ndarray], tags: list[str] | None) -> bool:
    """Does the traced graph read each input with the shape, and the layout (``tags``; None:
    any), the sample was given in?"""
    layouts = graph.input_layouts()
    if len(layouts) != len(inputs):
        return False
    for index, (name, input_id) in enumerate(zip(input_names(inputs), graph.inputs,
                                                 strict=True)):
        if graph.op(input_id).shape and tuple(graph.op(input_id).shape) != inputs[name].shape:
            return False
        if tags is not None and layouts[index] is not None and layouts[index] != tags[index]:
            return False
    return True


def target_sample(
    target: Backend, model: Any, inputs: dict[str, np.ndarray], source: Backend,
    source_layouts: list[str | None] | None = None,
) -> tuple[dict[str, np.ndarray] | None, OpGraph | None, str]:
    """Lay the source-layout sample ``inputs`` out for ``target``'s ``model``; trace it there.

    ``source_layouts`` are the inputs' layout tags in the source model's
    trace (``""``: not an image); without them an input of three axes or
    more is taken as an image in the source backend's :attr:`image_layout`
    or as no image. Each candidate -- images in the target backend's layout,
    or as given -- is traced, and the one whose graph reads every input with
    exactly the layout (and shape) it was given in is taken. Returns
    ``(inputs, graph, note)``; inputs None when no layout can be determined
    (then nothing is checked; ``note`` says why).
    """
    names = input_names(inputs)
    ranks = [np.ndim(inputs[name]) for name in names]
    if source_layouts is None or len(source_layouts) != len(names) or None in source_layouts:
        guesses = [[convention_tag(source.image_layout, r) for r in ranks], [""] * len(names)]
    else:
        guesses = [[tag or "" for tag in source_layouts]]
    candidates: dict[tuple[tuple[str, ...], tuple[str, ...]], Any] = {}
    for tags in guesses:
        moved = [convention_tag(target.image_layout, r) if tag else "" for tag, r in
                 zip(tags, ranks, strict=True)]
        for wanted in (moved, tags):
            key = (tuple(tags), tuple(wanted))
            if key not in candidates:
                candidates[key] = ({name: retag(inputs[name], tag, new) for name, tag, new in
                                    zip(names, tags, wanted, strict=True)}, wanted)
    if len(guesses) > 1:  # the source's layout unknown: as given, in whatever layout fits
        candidates[(), ()] = (dict(inputs), None)
    problems = []
    fitting = []
    for arrays, wanted in candidates.values():
        try:
            graph = target.trace(model, arrays)
        except Exception as exc:  # a layout the model cannot run is simply not the one
            problems.append(f"{type(exc).__name__}: {str(exc)[:120]}")
            continue
        if graph is None:
            if any(wanted or ()) or any(r >= 3 for r in ranks):
                return None, None, (f"the {target.name!r} model cannot be traced, so which "
                                    "inputs are images in which layout is unknown")
            return arrays, None, f"the {target.name!r} model cannot be traced"
        if _consistent(graph, arrays, wanted):
            if wanted is not None and None not in graph.input_layouts():
                return arrays, graph, ""
            fitting.append((arrays, graph))
    if len(fitting) == 1:  # the trace cannot tell, but only one layout runs at all
        return fitting[0][0], fitting[0][1], ""
    why = "several layouts run and the trace cannot tell which is meant" if fitting else (
        "; ".join(problems) or "inconsistent graph")
    return None, None, f"the sample input fits the converted model in no layout the trace " \
                       f"confirms ({why})"


def output_moves(names: list[str], target_graph: OpGraph | None,
                  source_graph: OpGraph | None, source: Backend) -> dict[str, tuple[str, str]]:
    """Return, per image output, its (target, source) layout tags, to compare it in the source's.

    Without the source's graph, the source's tag is its backend's convention; with one
    that cannot tell (outputs made by code the trace did not see), nothing is moved.

    Example:
        >>> output_moves(["output"], None, None, polybundle.get_backend("torch"))
        {}
    """
    if target_graph is None or len(target_graph.outputs) != len(names):
        return {}
    target_tags = target_graph.output_layouts()
    source_tags = (source_graph.output_layouts() if source_graph is not None
                   and len(source_graph.outputs) == len(names) else None)
    moves = {}
    for index, name in enumerate(names):
        tag = target_tags[index]
        if not tag:
            continue
        if source_graph is not None and source_tags is None:
            continue  # traced, yet the trace cannot tell: compared as it is
        source_tag = (source_tags[index] if source_tags is not None
                      else convention_tag(source.image_layout, len(tag.split(","))))
        if source_tag and source_tag != tag:
            moves[name] = (tag, source_tag)
    return moves


def _ordered(outputs: dict[str, np.ndarray]) -> list[str]:
    return sorted(outputs, key=lambda n: (len(n), n))


@dataclass
class Sides:
    """Everything the check needs about both models of one role's conversion."""

    role: str
    source: Backend
    target: Backend
    model: Any
    target_inputs: dict[str, np.ndarray]
    target_graph: OpGraph | None
    source_model: Any = None
    source_graph: OpGraph | None = None
    source_inputs: dict[str, np.ndarray] | None = None
    pairs: list[tuple[str, str]] | None = None


def check_outputs(
    sides: Sides, reference: dict[str, np.ndarray], reference_name: str, pairing: str,
    *, rtol: float = DEFAULT_RTOL, atol: float = DEFAULT_ATOL,
) -> ConversionCheck:
    """Compare the converted model's outputs with ``reference``; raise when they differ.

    Raises :class:`~polybundle.errors.ConversionMismatchError` naming the worst
    output and the first diverging paired layer (when both models are traced).
    """
    got = sides.target.predict(sides.model, sides.target_inputs)
    names = _ordered(reference)
    moves = output_moves(names, sides.target_graph, sides.source_graph, sides.source)
    worst = ("", 0.0, "")
    for name in names:
        ref = np.asarray(reference[name], dtype=np.float64)
        out = got.get(name)
        if out is None:
            worst = max(worst, (name, float("inf"), "missing from the converted model's outputs"),
                        key=lambda w: w[1])
            continue
        out = np.asarray(retag(out, *moves[name]) if name in moves else out, np.float64)
        if out.shape != ref.shape:
            worst = max(worst, (name, float("inf"), f"shape {out.shape}, reference {ref.shape}"),
                        key=lambda w: w[1])
            continue
        scale = float(np.max(np.abs(ref))) if ref.size else 0.0
        max_abs = float(np.max(np.abs(out - ref))) if ref.size else 0.0
        rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
        failed = max_abs > atol + rtol * scale
        if failed or rel > worst[1]:
            worst = max(worst, (name, float("inf") if failed and not np.isfinite(rel) else rel,
                                "FAIL" if failed else ""), key=lambda w: (w[2] == "FAIL", w[1]))
    name, rel, why = worst
    if why:
        layer, compared = first_divergence(sides)
        if layer:
            where = (f" The first paired layer whose outputs differ by more than {DIVERGENCE:g} "
                     f"relative: {layer}.")
        elif compared:
            where = (f" No single paired layer's outputs differ by more than {DIVERGENCE:g} "
                     f"relative ({compared} compared): small differences add up.")
        else:
            where = " No paired layer could be compared (both models must be traced)."
        detail = "" if why == "FAIL" else f" ({why})"
        raise ConversionMismatchError(
            f"role {sides.role!r} converted from {sides.source.name} to {sides.target.name} "
            f"computes something else: output {name!r} differs from {reference_name} by "
            f"max_rel {rel:.2e}{detail} (tolerance {atol:g} + {rtol:g} * max|reference|; layers "
            f"paired by {pairing}).{where} Expected the same architecture, with the same "
            "settings (epsilon, padding, flatten order), in both frameworks; fix the builder, "
            "register an explicit map, or load with check=False to take the result as it is.",
            output=name, max_rel=rel, layer=layer,
        )
    return ConversionCheck(sides.role, True, reference_name, pairing, rel, name,
                           inputs=sides.target_inputs)


def first_divergence(sides: Sides) -> tuple[str, int]:
    """Return ``"source -> target"`` of the first paired layer whose outputs diverge (or
    ``""``), and how many paired layers were compared.

    Needs both models traced and both backends able to give layer outputs
    (:meth:`Backend.layer_outputs <polybundle.model.backend.Backend.layer_outputs>`).
    """
    if (sides.source_graph is None or sides.target_graph is None or not sides.pairs
            or sides.source_inputs is None):
        return "", 0
    try:
        source_names = [s for s, _ in sides.pairs]
        target_of = dict(sides.pairs)
        source_out = sides.source.layer_outputs(sides.source_model, sides.source_inputs,
                                                source_names)
        target_out = sides.target.layer_outputs(sides.model, sides.target_inputs,
                                                list(target_of.values()))
    except Exception:  # a model that cannot give its layer outputs: no layer named
        return "", 0
    source_ops = {op.name: op for op in sides.source_graph.weighted_ops()}
    target_ops = {op.name: op for op in sides.target_graph.weighted_ops()}
    compared = 0
    for source_name in sorted(source_names, key=lambda n: source_ops[n].id
                              if n in source_ops else 1 << 30):
        target_name = target_of[source_name]
        a, b = source_out.get(source_name), target_out.get(target_name)
        if a is None or b is None or source_name not in source_ops or target_name not in target_ops:
            continue
        b = _as_source_axes(np.asarray(b), target_ops[target_name].axes,
                            source_ops[source_name].axes)
        if b.shape != np.shape(a):
            continue
        compared += 1
        scale = float(np.max(np.abs(a))) or 1.0
        if float(np.max(np.abs(np.asarray(a, np.float64) - b))) / scale > DIVERGENCE:
            return f"{source_name} -> {target_name}", compared
    return "", compared


def _as_source_axes(array: np.ndarray, target_axes: Any, source_axes: Any) -> np.ndarray:
    """``array`` (a layer output laid out as ``target_axes``) in ``source_axes``' order:
    an image is transposed as the two traces' tags say; anything else is taken as is."""
    source_tag, target_tag = image_tag(source_axes), image_tag(target_axes)
    if not source_tag or not target_tag or source_tag == target_tag:
        return array
    return retag(array, target_tag, source_tag)


def as_sample(value: Any) -> dict[str, np.ndarray]:
    """Return ``example_inputs=`` as named arrays (an array, a list of arrays, or named ones).

    Example:
        >>> sorted(as_sample([np.zeros(2), np.ones(2)]))
        ['input.0', 'input.1']
    """
    return as_inputs(value)
