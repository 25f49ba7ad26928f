"""The parity harness: do the frameworks compute the same outputs from one bundle?

:func:`compare` loads a bundle into each installed backend (converting where
the writer was another one), runs every role on the same inputs in inference
mode, and compares the outputs with a reference: the outputs stored in the
bundle by ``polybundle.save(..., parity_inputs=...)``, or the writer
framework's outputs on the inputs given.

Errors are reported per role, output and backend: ``max_abs`` is the largest
absolute difference and ``max_rel`` that divided by the reference's largest
magnitude (an error relative to the output's scale, which stays meaningful
where single outputs are near zero). A row passes when
``max_abs <= atol + rtol * max|reference|``.

Example (one architecture registered in PyTorch and Keras; the bundle stores its reference):
    >>> import keras
    >>> @polybundle.architecture("doc-dense", backend="torch")
    ... def torch_dense(config):
    ...     return torch.nn.Sequential(torch.nn.Linear(config["inputs"], 2))
    >>> @polybundle.architecture("doc-dense", backend="tensorflow")
    ... def keras_dense(config):
    ...     return keras.Sequential([keras.Input((config["inputs"],)), keras.layers.Dense(2)])
    >>> dense = polybundle.build("doc-dense", {"inputs": 4}, backend="torch")
    >>> x = np.linspace(-1, 1, 8, dtype="f4").reshape(2, 4)
    >>> _ = polybundle.save("dense.bundle", {"net": dense}, parity_inputs=x)
    >>> report = compare("dense.bundle", backends=["torch", "tensorflow"])
    >>> report.passed, [(row.backend, row.max_rel < 1e-6) for row in report.rows]
    (True, [('torch', True), ('tensorflow', True)])
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from polybundle.api.bundle import model_entry
from polybundle.api.conversion_check import output_moves, retag, target_sample
from polybundle.api.inspection import inspect
from polybundle.api.loading import load
from polybundle.errors import (
    BackendUnavailableError,
    ConversionUnavailableError,
    PolybundleError,
)
from polybundle.format.archive import ArchiveReader
from polybundle.format.arrays import load_arrays
from polybundle.format.manifest import read_manifest, verify_members

# The parity record's names and encoding are part of the format (save writes it); they stay
# importable from here.
from polybundle.format.parity import PARITY_MEMBER as PARITY_MEMBER
from polybundle.format.parity import as_inputs as as_inputs
from polybundle.format.parity import encode_parity as encode_parity
from polybundle.format.parity import input_names as input_names
from polybundle.format.parity import per_role_inputs
from polybundle.format.writer import atomic_write_bytes
from polybundle.hooks.registry import get_backend, get_registry
from polybundle.model.backend import Backend

DEFAULT_RTOL = 1e-5
DEFAULT_ATOL = 1e-6

Inputs = "np.ndarray | Sequence[np.ndarray] | dict[str, np.ndarray]"


def read_parity(path: str | os.PathLike[str], role: str) -> tuple[dict, dict] | None:
    """Return ``(inputs, outputs)`` stored for ``role`` in the bundle at ``path``, or None.

    Example:
        >>> x = np.ones((2, 4), "f4")
        >>> _ = polybundle.save("checked.bundle", {"net": net}, parity_inputs=x)
        >>> inputs, outputs = read_parity("checked.bundle", "net")
        >>> list(inputs), outputs["output"].shape
        (['input'], (2, 2))
        >>> read_parity("run.bundle", "net") is None  # saved without parity_inputs
        True
    """
    with ArchiveReader(path) as archive:
        manifest = read_manifest(archive)
        record = model_entry(manifest, role).get("parity")
        if record is None:
            return None
        member = record["member"]
        verify_members(archive, {"members": {member: manifest["members"][member]}})
        data = archive.read(record["member"], limit=archive.size(record["member"]))
        arrays = load_arrays(data, where=member)  # bfloat16/float8 too, geometry checked
    return ({k: arrays[k] for k in record["inputs"]}, {k: arrays[k] for k in record["outputs"]})


@dataclass(frozen=True)
class ParityRow:
    """One role's one output on one backend, compared with the reference.

    Example:
        >>> ParityRow("net", "output", "torch", 1e-7, 2e-7, True).passed
        True
    """

    role: str
    output: str
    backend: str
    max_abs: float
    max_rel: float
    passed: bool
    note: str = ""


@dataclass
class ParityReport:
    """Rows per role, output and backend; ``passed`` when all of them pass.

    Example:
        >>> ParityReport([], rtol=1e-5, atol=1e-6, reference="stored").passed
        False
    """

    rows: list[ParityRow]
    rtol: float
    atol: float
    reference: str
    skipped: dict[str, str] = field(default_factory=dict)
    samples: dict[tuple[str, str, str], tuple[np.ndarray, np.ndarray]] = field(
        default_factory=dict, repr=False, compare=False
    )
    """``{(role, output, backend): (outputs, reference)}`` of every row with matching shapes."""

    @property
    def passed(self) -> bool:
        """Return True when there is at least one row and every row passed."""
        return bool(self.rows) and all(row.passed for row in self.rows)

    def table(self) -> str:
        """Return the report as a plain-text table.

        Example:
            >>> row = ParityRow("net", "output", "torch", 1.2e-7, 2.4e-7, True)
            >>> print(ParityReport([row], rtol=1e-5, atol=1e-6, reference="stored").table())
            reference: stored; pass when max_abs <= 1e-06 + 1e-05 * max|reference|
            role  output  backend  max_abs    max_rel    result
            net   output  torch    1.200e-07  2.400e-07  pass
        """
        lines = [f"reference: {self.reference}; pass when max_abs <= {self.atol:g} + "
                 f"{self.rtol:g} * max|reference|"]
        header = ("role", "output", "backend", "max_abs", "max_rel", "result")
        body = [(r.role, r.output, r.backend, f"{r.max_abs:.3e}", f"{r.max_rel:.3e}",
                 ("pass" if r.passed else "FAIL") + (f" ({r.note})" if r.note else ""))
                for r in self.rows]
        widths = [max(len(str(x)) for x in column) for column in zip(header, *body, strict=True)]
        for row in (header, *body):
            lines.append("  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)))
        lines += [f"skipped {name}: {why}" for name, why in self.skipped.items()]
        return "\n".join(lines)

    def plot(self, path: str | os.PathLike[str], *, mode: int | None = None) -> Path:
        """Draw each role's outputs against the reference and its errors as a PNG at ``path``.

        One row per role: on the left every output value of every backend
        against the reference value (a scatter on the diagonal when they
        agree), on the right the distribution of the errors ``output -
        reference`` (a histogram per backend). Needs matplotlib (``pip install
        'polybundle[plot]'``); it is imported here only and draws with the Agg
        backend, leaving pyplot's state alone. The file is written atomically
        with the umask's permissions (or ``mode``). Returns the path written.

        Example:
            >>> @polybundle.architecture("doc-plot", backend="torch")
            ... def build_plot(config):
            ...     return torch.nn.Linear(4, 3)
            >>> model = polybundle.build("doc-plot", {}, backend="torch")
            >>> x = np.linspace(-1, 1, 40, dtype="f4").reshape(10, 4)
            >>> _ = polybundle.save("plotted.bundle", {"net": model}, parity_inputs=x)
            >>> report = compare("plotted.bundle", backends=["torch"])
            >>> report.plot("parity.png").read_bytes()[1:4]  # a PNG's signature
            b'PNG'
        """
        if not self.samples:
            raise PolybundleError(
                "the parity report has no outputs to plot (every backend was skipped, or no "
                "output matched its reference's shape); run compare on a backend that is "
                f"installed. Skipped: {self.skipped or 'none'}."
            )
        return write_plot(self, Path(path), mode)


def errors(actual: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """Return ``(max_abs, max_rel)`` of ``actual`` against ``reference`` (see module doc).

    Example:
        >>> errors(np.array([1.0, 2.0]), np.array([1.0, 2.5]))
        (0.5, 0.2)
    """
    actual = np.asarray(actual, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if actual.shape != reference.shape:
        return float("inf"), float("inf")
    if not reference.size:
        return 0.0, 0.0
    max_abs = float(np.max(np.abs(actual - reference)))
    scale = float(np.max(np.abs(reference)))
    return max_abs, (max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf")))


def compare(
    path: str | os.PathLike[str],
    inputs: Any = None,
    *,
    backends: Sequence[str] | None = None,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    roles: Iterable[str] | None = None,
) -> ParityReport:
    """Run the bundle at ``path`` on every installed backend in ``backends``; compare outputs.

    ``inputs`` is an array (or list of arrays, or ``{role: ...}``) fed to
    every role; the reference is then the writer framework's outputs.
    Without ``inputs`` the bundle's stored reference inputs and outputs are
    used (see ``polybundle.save(..., parity_inputs=...)``). ``backends``
    defaults to every registered backend; those whose framework is not
    installed are listed in ``report.skipped``.

    Example (the writer's outputs on the inputs given are the reference):
        >>> @polybundle.architecture("doc-relu", backend="torch")
        ... def build_relu(config):
        ...     return torch.nn.Sequential(torch.nn.Linear(config["inputs"], 3), torch.nn.ReLU())
        >>> relu = polybundle.build("doc-relu", {"inputs": 4}, backend="torch")
        >>> _ = polybundle.save("relu.bundle", {"net": relu})
        >>> report = polybundle.parity.compare("relu.bundle", np.ones((2, 4), "f4"),
        ...                                    backends=["torch"])
        >>> report.passed, report.reference
        (True, "'torch' outputs on the given inputs")
    """
    manifest = inspect(path)["manifest"]
    selected = list(roles) if roles is not None else [e["role"] for e in manifest["models"]]
    writer = manifest["backend"]
    references: dict[str, tuple[dict, dict]] = {}
    if inputs is None:
        for role in selected:
            stored = read_parity(path, role)
            if stored is None:
                raise PolybundleError(
                    f"role {role!r} of {str(path)!r} has no stored parity data; pass inputs= "
                    "or save with parity_inputs={role: inputs}."
                )
            references[role] = stored
        reference = f"outputs stored by the {writer!r} writer"
    else:
        per_role = per_role_inputs(inputs, selected)
        native = load(path, roles=selected)
        backend = get_backend(writer)
        for role in selected:
            outputs = run_in_layout(backend, backend, native.models[role], per_role[role])
            references[role] = (per_role[role], outputs)
        reference = f"{writer!r} outputs on the given inputs"
    rows: list[ParityRow] = []
    skipped: dict[str, str] = {}
    samples: dict[tuple[str, str, str], tuple[np.ndarray, np.ndarray]] = {}
    for name in sorted(get_registry().backends) if backends is None else backends:
        backend = get_backend(name)
        try:
            backend.require()
            bundle = load(path, backend=backend.name, roles=selected,
                          check=False)  # the harness compares, and reports, itself
        except BackendUnavailableError as exc:
            skipped[backend.name] = str(exc)
            continue
        except ConversionUnavailableError as exc:
            if backends is not None:  # asked for by name: say why it cannot run
                raise
            skipped[backend.name] = str(exc)
            continue
        for role in selected:
            role_inputs, expected = references[role]
            try:
                outputs = run_in_layout(backend, get_backend(writer), bundle.models[role],
                                        role_inputs)
            except PolybundleError as exc:
                rows.extend(ParityRow(role, output, backend.name, float("inf"), float("inf"),
                                      False, str(exc)[:300]) for output in expected)
                continue
            for output, ref in expected.items():
                got = outputs.get(output)
                if got is None:
                    rows.append(ParityRow(role, output, backend.name, float("inf"), float("inf"),
                                          False, "output missing"))
                    continue
                max_abs, max_rel = errors(got, ref)
                if np.shape(got) == np.shape(ref):
                    samples[(role, output, backend.name)] = (np.asarray(got), np.asarray(ref))
                scale = float(np.max(np.abs(ref))) if np.size(ref) else 0.0
                rows.append(ParityRow(role, output, backend.name, max_abs, max_rel,
                                      max_abs <= atol + rtol * scale))
    return ParityReport(rows, rtol=rtol, atol=atol, reference=reference, skipped=skipped,
                        samples=samples)


def run_in_layout(backend: Backend, writer: Backend, model: Any,
                  inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run ``backend``'s ``model`` on ``inputs`` given in the ``writer``'s layout.

    The same logical input is fed in each framework's layout: an image the
    traced graph shows a convolution reading is moved to ``backend``'s
    channel layout (NCHW for PyTorch, NHWC for Keras), and image outputs are
    moved back, so outputs are compared in one layout
    (:func:`polybundle.api.conversion_check.target_sample`). A backend that
    traces nothing (:meth:`~polybundle.model.backend.Backend.trace` not
    implemented) gets the inputs as given. Whatever the framework raises
    becomes a :class:`PolybundleError` naming the input shapes.

    Example:
        >>> net = torch.nn.Conv2d(3, 2, 1)
        >>> x = np.ones((1, 4, 4, 3), "f4")  # the Keras writer's NHWC image
        >>> out = run_in_layout(polybundle.get_backend("torch"),
        ...                     polybundle.get_backend("tensorflow"), net, {"input": x})
        >>> out["output"].shape  # back in NHWC
        (1, 4, 4, 2)
    """
    if backend.name == writer.name or type(backend).trace is Backend.trace:
        # the writer's own layout, or a backend with no tracing to move images by: as given
        # (a wrong layout then shows as a failing row, never as a pass)
        laid_out, graph = inputs, None
    else:
        laid_out, graph, why = target_sample(backend, model, inputs, writer)
        if laid_out is None:
            raise PolybundleError(f"the inputs {_shapes(inputs)} cannot be laid out for the "
                                  f"{backend.name} model: {why}")
    try:
        outputs = backend.predict(model, laid_out)
    except PolybundleError:
        raise
    except Exception as exc:  # a framework's own error (Keras ValueError) never escapes raw
        raise PolybundleError(
            f"the {backend.name} model failed on inputs {_shapes(laid_out)}: "
            f"{type(exc).__name__}: {str(exc)[:200]}") from None
    names = sorted(outputs, key=lambda n: (len(n), n))
    moved = any(laid_out[name] is not inputs[name] for name in inputs)
    moves = output_moves(names, graph, None, writer) if moved else {}  # as given: as given
    return {name: retag(value, *moves[name]) if name in moves else value
            for name, value in outputs.items()}


def _shapes(inputs: dict[str, np.ndarray]) -> str:
    return ", ".join(f"{name} {tuple(np.shape(value))}" for name, value in inputs.items())


_MARKERS = ("o", "x", "+", "^", "s", "v")

PLOT_POINTS = 20_000
"""Most values per series drawn in a parity plot's scatter (an even subsample beyond)."""


def _float(values: np.ndarray) -> np.ndarray:
    """Return ``values`` as a flat float64 array (complex: the real parts)."""
    flat = np.asarray(values).reshape(-1)
    if np.iscomplexobj(flat):
        flat = flat.real
    return flat.astype(np.float64)


def _thin(count: int) -> np.ndarray | slice:
    """Return the indices of at most :data:`PLOT_POINTS` evenly spread values of ``count``."""
    if count <= PLOT_POINTS:
        return slice(None)
    return np.linspace(0, count - 1, PLOT_POINTS).astype(np.int64)


def _matplotlib() -> tuple[Any, Any]:
    """Import matplotlib's Figure and Agg canvas, or say which extra installs it."""
    try:
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise PolybundleError(
            f"the parity plot needs matplotlib, which is not installed ({exc}); install it with: "
            "pip install 'polybundle[plot]'"
        ) from None
    del matplotlib  # imported first so a missing package fails here, not half way
    return Figure, FigureCanvasAgg


def write_plot(report: ParityReport, path: Path, mode: int | None = None) -> Path:
    """Draw ``report``'s samples (see :meth:`ParityReport.plot`) into the PNG ``path``.

    Example:
        >>> row = ParityRow("net", "output", "torch", 0.0, 0.0, True)
        >>> values = np.linspace(-1, 1, 8)
        >>> report = ParityReport([row], rtol=1e-5, atol=1e-6, reference="stored",
        ...                       samples={("net", "output", "torch"): (values, values)})
        >>> write_plot(report, Path("p.png")).stat().st_size > 1000
        True
    """
    figure_class, canvas_class = _matplotlib()
    roles = list(dict.fromkeys(role for role, _, _ in report.samples))
    figure = figure_class(figsize=(10, 3.6 * len(roles)), layout="constrained")
    canvas_class(figure)
    figure.suptitle(f"parity: reference = {report.reference}", fontsize=10)
    axes = figure.subplots(len(roles), 2, squeeze=False)
    for (scatter, histogram), role in zip(axes, roles, strict=True):
        keys = [key for key in report.samples if key[0] == role]
        several = len({output for _, output, _ in keys}) > 1
        low, high = np.inf, -np.inf
        series = []
        for number, (_, output, backend) in enumerate(keys):
            got, ref = (_float(a) for a in report.samples[(role, output, backend)])
            label = f"{backend}: {output}" if several else backend
            row = next((r for r in report.rows if (r.role, r.output, r.backend) ==
                        (role, output, backend)), None)
            verdict = "" if row is None else (" (pass)" if row.passed else " (FAIL)")
            chosen = _thin(ref.size)
            scatter.scatter(ref[chosen], got[chosen], s=10, alpha=0.6, label=label + verdict,
                            marker=_MARKERS[number % len(_MARKERS)], color=f"C{number}")
            error = got - ref
            series.append((number, label, error[np.isfinite(error)]))
            finite_ref = ref[np.isfinite(ref)]
            if finite_ref.size:
                low, high = min(low, float(finite_ref.min())), max(high, float(finite_ref.max()))
        span = max((float(np.abs(e).max()) for _, _, e in series if e.size), default=0.0)
        bins = np.linspace(-span, span, 51) if span > 0 else np.linspace(-1, 1, 51)
        for number, label, error in series:
            largest = float(np.abs(error).max()) if error.size else 0.0
            if largest == 0:  # identical outputs (the writer itself): a line, not a spike
                histogram.axvline(0, color=f"C{number}", linewidth=1.4,
                                  label=f"{label}: exact (every error 0)")
                continue
            histogram.hist(error, bins=bins, histtype="step", linewidth=1.4,
                           color=f"C{number}", label=f"{label}: max |error| {largest:.2e}")
        if np.isfinite(low) and np.isfinite(high):
            scatter.plot([low, high], [low, high], color="0.5", linewidth=0.8, linestyle="--")
        scatter.set_title(f"{role}: outputs against the reference", fontsize=10)
        scatter.set_xlabel("reference")
        scatter.set_ylabel("output")
        scatter.legend(fontsize=8)
        histogram.set_title(f"{role}: error distribution", fontsize=10)
        histogram.set_xlabel("output - reference")
        histogram.set_ylabel("number of values")
        histogram.ticklabel_format(axis="x", style="sci", scilimits=(-2, 2))
        histogram.legend(fontsize=8)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    atomic_write_bytes(path, buffer.getvalue(), mode=mode)
    return path
