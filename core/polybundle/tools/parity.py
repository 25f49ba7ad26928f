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

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from polybundle.api.bundle import model_entry
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
from polybundle.hooks.registry import get_backend, get_registry

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
            outputs = backend.predict(native.models[role], per_role[role])
            references[role] = (per_role[role], outputs)
        reference = f"{writer!r} outputs on the given inputs"
    rows: list[ParityRow] = []
    skipped: dict[str, str] = {}
    for name in sorted(get_registry().backends) if backends is None else backends:
        backend = get_backend(name)
        try:
            backend.require()
            bundle = load(path, backend=backend.name, roles=selected)
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
            outputs = backend.predict(bundle.models[role], role_inputs)
            for output, ref in expected.items():
                got = outputs.get(output)
                if got is None:
                    rows.append(ParityRow(role, output, backend.name, float("inf"), float("inf"),
                                          False, "output missing"))
                    continue
                max_abs, max_rel = errors(got, ref)
                scale = float(np.max(np.abs(ref))) if np.size(ref) else 0.0
                rows.append(ParityRow(role, output, backend.name, max_abs, max_rel,
                                      max_abs <= atol + rtol * scale))
    return ParityReport(rows, rtol=rtol, atol=atol, reference=reference, skipped=skipped)
