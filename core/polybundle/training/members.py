"""A bundle's training-state members (optimizer state, RNG state), checked without a framework.

``verify`` calls :func:`check_training_members`: every member is charged to the
memory budget, then decoded exactly as a restore would decode it.

Example:
    >>> opt = torch.optim.Adam(net.parameters())
    >>> net(torch.ones(1, 4)).sum().backward()
    >>> opt.step()
    >>> _ = polybundle.save("t.bundle", {"net": net}, optimizers={"net": opt}, rng=True)
    >>> from polybundle.format.archive import ArchiveReader
    >>> from polybundle.format.manifest import read_manifest
    >>> with ArchiveReader("t.bundle") as archive:
    ...     for line in check_training_members(archive, read_manifest(archive)):
    ...         print(line)
    net/optimizer.json and net/optimizer.safetensors: adam, step 1, 8 slot arrays
    rng.json: Python and NumPy generator states
"""

from __future__ import annotations

from typing import Any

from polybundle.model.backend import TensorSpec
from polybundle.model.optimizer import decode_optimizer
from polybundle.safety import budget
from polybundle.training.rng import check_rng


def check_training_members(archive: Any, manifest: dict[str, Any]) -> list[str]:
    """Decode and check every role's optimizer members and ``rng.json``; return what was checked.

    Slot shapes are checked against the manifest's tensors, hyperparameters
    for their types and ranges, RNG words for theirs; a problem raises the
    typed error a restore would raise. ``archive`` is an open
    :class:`~polybundle.format.archive.ArchiveReader`, ``manifest`` its
    checked manifest (see the module example).
    """
    checked = []
    for entry in manifest["models"]:
        members = entry.get("optimizer")
        if not members:
            continue
        names = [members["state"], members["slots"]]
        for name in names:
            budget.charge(archive.size(name), name)
        document, arrays = (archive.read(name, limit=archive.size(name)) for name in names)
        specs = [TensorSpec.from_json(t) for t in entry["tensors"]]
        state = decode_optimizer(document, arrays, where=entry["role"], specs=specs)
        count = sum(len(slots) for slots in state.slots.values())
        checked.append(
            f"{names[0]} and {names[1]}: {state.algorithm}, step {state.step}, "
            f"{count} slot arrays"
        )
    if manifest.get("rng"):
        name = manifest["rng"]
        budget.charge(archive.size(name), name)
        check_rng(archive.read(name, limit=archive.size(name)))
        checked.append(f"{name}: Python and NumPy generator states")
    return checked
