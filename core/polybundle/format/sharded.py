"""The sharded layout: a folder of per-rank part files under one manifest, read in one process.

A sharded bundle is what a multi-process job writes through
``torch.distributed.checkpoint`` (the torch backend's
:mod:`polybundle_torch.distributed`): a folder holding ``manifest.json``
(written last), ``params.json`` (and ``params.safetensors`` when params hold
arrays) and ``parts/<rank>.safetensors``, one safetensors file per writing
rank. The manifest's ``shards`` object gives each tensor's global shape and
dtype and where each of its chunks lies (part file, key, offsets, sizes).
This module reads such a folder with no framework: it checks the manifest
and every part's index, assembles chunks into full NumPy arrays (now, or
when a tensor is first touched) and checks the parts' digests.

Example:
    >>> folder = ShardedFolder("sharded")  # saved through DCP by one process: one chunk each
    >>> folder.manifest["shards"]["tensors"]["model.0.weight"]["shape"]
    [4, 3]
    >>> folder.tensor("model.0.weight").shape, len(folder.chunks("model.0.weight"))
    ((4, 3), 1)
"""

from __future__ import annotations

import io
import math
import mmap
import os
import stat
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from polybundle.errors import FormatError, IntegrityError, UnsafeContentError
from polybundle.format import digests
from polybundle.format.archive import MAX_JSON_BYTES
from polybundle.format.arrays import index_arrays
from polybundle.format.digests import Digest
from polybundle.format.jsondoc import load_json
from polybundle.format.manifest import MANIFEST_MEMBER, PARAMS_MEMBER, check_digest, check_version
from polybundle.format.params import ARRAYS_MEMBER, decode_params, holds_references, resolve_arrays
from polybundle.format.schemas import validate
from polybundle.format.writer import TEMP_MARK, HashingWriter
from polybundle.safety import budget
from polybundle.safety.dtypes import count_bytes, resolve_dtype

PARTS = "parts"
"""The folder of part files inside a sharded bundle (and its models' ``weights`` value)."""

MAX_CHUNKS = 65536
"""Most chunks one tensor may have (the overlap check is quadratic in them)."""



def is_sharded(path: object) -> bool:
    """Return True when ``path`` is a local folder, the only kind of bundle that is one.

    Example:
        >>> is_sharded("sharded"), is_sharded("run.bundle")
        (True, False)
    """
    return isinstance(path, (str, os.PathLike)) and os.path.isdir(path)


class _Discard(io.RawIOBase):
    """A sink that drops what is written (the digest is all that is wanted)."""

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:  # type: ignore[override]
        return memoryview(data).nbytes


def digest_writer(sink: Any | None = None, algorithm: str = digests.DEFAULT) -> HashingWriter:
    """Return the writer that records a part file's size and digest as its bytes pass.

    The bundle writer's own :class:`~polybundle.format.writer.HashingWriter`,
    so a part's digest is computed as every other member's is; without a
    ``sink`` the bytes are only hashed.

    Example:
        >>> writer = digest_writer()
        >>> writer.write(b"abc"), writer.size, str(writer.digest())[:17]
        (3, 3, 'xxh3-128:06b05ab6')
    """
    return HashingWriter(sink if sink is not None else _Discard(), algorithm=algorithm)


def file_digest(path: str | os.PathLike[str], algorithm: str = digests.DEFAULT) -> Digest:
    """Return the digest (of algorithm ``algorithm``) of the regular file at ``path``.

    Example:
        >>> record = ShardedFolder("sharded").manifest["members"]["params.json"]
        >>> file_digest("sharded/params.json") == digests.from_record(record)
        True
    """
    with open(path, "rb") as stream:
        return digests.of_stream(stream, algorithm)


def _member_path(folder: Path, name: str) -> Path:
    """Return the path of member ``name``; refuse a link or anything but a regular file."""
    path = folder / name
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        raise IntegrityError(
            f"{str(folder)!r} lacks {name!r}, which its {MANIFEST_MEMBER} lists. The sharded "
            "bundle is incomplete; re-copy the whole folder."
        ) from None
    if not stat.S_ISREG(mode):
        raise UnsafeContentError(
            f"{name!r} in {str(folder)!r} is not a regular file (a link, a folder or a "
            "device); a sharded bundle holds regular files only, so polybundle refuses it."
        )
    return path


def _present(folder: Path) -> set[str]:
    """Every file in ``folder`` and its ``parts`` folder, as member names (temp files skipped)."""
    names = set()
    for entry in os.scandir(folder):
        if entry.name == PARTS and entry.is_dir(follow_symlinks=False):
            names |= {f"{PARTS}/{p.name}" for p in os.scandir(entry.path)}
        else:
            names.add(entry.name)
    return {name for name in names if TEMP_MARK not in name} - {MANIFEST_MEMBER}


def _box_overlap(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(
        oa < ob + sb and ob < oa + sa
        for oa, sa, ob, sb in zip(a["offsets"], a["sizes"], b["offsets"], b["sizes"], strict=True)
    )


def _check_chunks(fqn: str, record: dict[str, Any], parts: set[str]) -> None:
    """Chunks must lie in listed parts, inside the global shape, and tile it exactly."""
    shape, chunks = record["shape"], record["chunks"]
    where = f"{MANIFEST_MEMBER} shards tensor {fqn[:100]!r}"
    if len(chunks) > MAX_CHUNKS:
        raise FormatError(f"{where} has {len(chunks)} chunks; at most {MAX_CHUNKS} are read.")
    for chunk in chunks:
        inside = len(chunk["offsets"]) == len(chunk["sizes"]) == len(shape) and all(
            o + s <= n for o, s, n in zip(chunk["offsets"], chunk["sizes"], shape, strict=True)
        )
        if not inside or chunk["part"] not in parts:
            raise FormatError(
                f"{where} has a chunk {chunk!r} outside its shape {shape} or in a part the "
                "manifest does not list; expected chunks inside the tensor, in listed parts."
            )
    covered = sum(math.prod(chunk["sizes"]) for chunk in chunks)
    overlap = any(
        _box_overlap(a, b) and math.prod(a["sizes"]) and math.prod(b["sizes"])
        for i, a in enumerate(chunks) for b in chunks[i + 1 :]
    )
    if overlap or covered != math.prod(shape):
        raise FormatError(
            f"{where}: its chunks cover {covered} of {math.prod(shape)} elements"
            f"{' and overlap' if overlap else ''}; expected them to tile the tensor exactly. "
            "The manifest is damaged or hostile."
        )


def _check_models(manifest: dict[str, Any]) -> None:
    tensors = manifest["shards"]["tensors"]
    for entry in manifest["models"]:
        if entry["weights"] != PARTS:
            raise FormatError(
                f"role {entry['role']!r} of a sharded bundle names weights "
                f"{entry['weights']!r}; expected {PARTS!r} (its tensors are in the part files)."
            )
        for spec in entry["tensors"]:
            record = tensors.get(spec["key"])
            if record is None or (record["shape"], record["dtype"]) != (
                spec["shape"], spec["dtype"]
            ):
                raise FormatError(
                    f"role {entry['role']!r} tensor {spec['name']!r} (key {spec['key']!r}, "
                    f"{spec['dtype']} {spec['shape']}) is not in the manifest's shards as "
                    f"such (found {record and [record['dtype'], record['shape']]}). The "
                    "manifest is damaged."
                )


def read_sharded_manifest(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check the manifest of the sharded bundle in ``folder``.

    Checks: the manifest exists (a save that did not finish leaves none), its
    version and schema (with a ``shards`` object), that the files present
    and the members listed are the same set, every recorded size, that each
    tensor's chunks tile its global shape, and that each role's tensors are
    in the shards with their shape and dtype.

    Example:
        >>> read_sharded_manifest("sharded")["models"][0]["weights"]
        'parts'
        >>> Path("partial/parts").mkdir(parents=True)  # a save whose rank was killed
        >>> read_sharded_manifest("partial")
        Traceback (most recent call last):
        ...
        polybundle.errors.FormatError: 'partial' is a folder without manifest.json; ...
    """
    folder = Path(folder)
    manifest_path = folder / MANIFEST_MEMBER
    if not manifest_path.is_file() or manifest_path.is_symlink():
        raise FormatError(
            f"{str(folder)!r} is a folder without {MANIFEST_MEMBER}; expected a sharded "
            "bundle, whose manifest is written last, so a save that did not finish (a rank "
            "killed, a full disk) leaves none. Load the previous checkpoint, or save again."
        )
    size = manifest_path.stat().st_size
    if size > MAX_JSON_BYTES:
        raise FormatError(
            f"{MANIFEST_MEMBER} of {str(folder)!r} is {size} bytes; at most {MAX_JSON_BYTES} "
            "are read. The manifest is damaged or hostile."
        )
    budget.charge(size, MANIFEST_MEMBER)
    data = manifest_path.read_bytes()
    manifest = load_json(data, where=MANIFEST_MEMBER)
    if isinstance(manifest, dict) and isinstance(manifest.get("format_version"), str):
        check_version(manifest["format_version"])
    validate("manifest", manifest, where=f"{MANIFEST_MEMBER} of {str(folder)!r}")
    if "shards" not in manifest:
        raise FormatError(
            f"{str(folder)!r} holds a {MANIFEST_MEMBER} without 'shards'; expected a sharded "
            "bundle's manifest. A single-file bundle is a zip: pass its file, not a folder."
        )
    listed, present = set(manifest["members"]), _present(folder)
    if listed - present:
        raise IntegrityError(
            f"members listed in {MANIFEST_MEMBER} are missing from {str(folder)!r}: "
            f"{', '.join(sorted(listed - present))}. The bundle is incomplete; re-copy it."
        )
    if present - listed:
        raise UnsafeContentError(
            f"{str(folder)!r} holds files its {MANIFEST_MEMBER} does not list: "
            f"{', '.join(sorted(present - listed)[:10])}. Something was added after writing; "
            "polybundle refuses the bundle."
        )
    for name, record in manifest["members"].items():
        size = os.lstat(_member_path(folder, name)).st_size
        if size != record["size"]:
            raise IntegrityError(
                f"{name!r} in {str(folder)!r} is {size} bytes but {MANIFEST_MEMBER} records "
                f"{record['size']}. The bundle was altered or damaged; re-copy it."
            )
    parts = {name for name in listed if name.startswith(f"{PARTS}/")}
    for fqn, record in manifest["shards"]["tensors"].items():
        _check_chunks(fqn, record, parts)
    for fqn, record in manifest["shards"]["objects"].items():
        if record["part"] not in parts:
            raise FormatError(f"shards object {fqn[:100]!r} is in an unlisted part.")
    _check_models(manifest)
    return manifest


class ShardedFolder:
    """A sharded bundle opened for reading: its manifest, params, and tensors assembled from parts.

    Part files are memory-mapped read-only when first needed, and each
    one's safetensors index is checked against the manifest's chunks before
    any tensor byte is used. :meth:`verify` checks every member's digest.

    Example:
        >>> folder = ShardedFolder("sharded")
        >>> folder.role_tensors("model")["0.weight"].dtype
        dtype('float32')
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.manifest = read_sharded_manifest(self.path)
        self._maps: dict[str, tuple[mmap.mmap, int, dict[str, Any]]] = {}

    @property
    def shards(self) -> dict[str, Any]:
        """The manifest's ``shards`` object."""
        return self.manifest["shards"]

    def params(self, *, arrays: bool = True) -> dict[str, Any]:
        """Read params (``arrays=False``: references stay as summaries, as inspect shows them).

        Example:
            >>> ShardedFolder("sharded").params()
            {'lr': 0.01}
        """
        path = _member_path(self.path, PARAMS_MEMBER)
        budget.charge(os.path.getsize(path), PARAMS_MEMBER)
        document = decode_params(path.read_bytes(), where=PARAMS_MEMBER)
        if not holds_references(self.manifest) or not arrays:
            return document
        data = None
        if ARRAYS_MEMBER in self.manifest["members"]:
            arrays_path = _member_path(self.path, ARRAYS_MEMBER)
            budget.charge(2 * os.path.getsize(arrays_path), ARRAYS_MEMBER)
            data = arrays_path.read_bytes()
        return resolve_arrays(document, data, where=ARRAYS_MEMBER)

    def verify(self, names: Iterable[str] | None = None) -> None:
        """Check each member's digest (``names``, or all) against the manifest.

        Raises :class:`IntegrityError` at the first mismatch.

        Example:
            >>> ShardedFolder("sharded").verify()  # all match: returns None
        """
        for name in self.manifest["members"] if names is None else names:
            record = self.manifest["members"][name]
            where = f"{MANIFEST_MEMBER}'s record of {name!r}"
            algorithm = digests.from_record(record, where=where).algorithm
            check_digest(name, record, file_digest(_member_path(self.path, name), algorithm))

    def _part(self, name: str) -> tuple[mmap.mmap, int, dict[str, Any]]:
        if name not in self._maps:
            with open(_member_path(self.path, name), "rb") as stream:
                mapped = mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ)
            if len(mapped) != self.manifest["members"][name]["size"]:
                raise IntegrityError(f"{name!r} changed size since its manifest was read.")
            start, entries = index_arrays(mapped, where=name)
            self._maps[name] = (mapped, start, entries)
        return self._maps[name]

    def chunks(self, fqn: str) -> list[tuple[tuple[slice, ...], np.ndarray]]:
        """Return ``(place in the global tensor, read-only view of the part)`` for each chunk.

        Example:
            >>> [place for place, _ in ShardedFolder("sharded").chunks("model.0.weight")]
            [(slice(0, 4, None), slice(0, 3, None))]
        """
        record = self.shards["tensors"][fqn]
        views = []
        for chunk in record["chunks"]:
            mapped, start, entries = self._part(chunk["part"])
            found = entries.get(chunk["key"])
            expected = (record["dtype"], tuple(chunk["sizes"]))
            if found is None or found[:2] != expected:
                raise FormatError(
                    f"{chunk['part']!r} holds {chunk['key'][:100]!r} as {found and found[:2]}; "
                    f"its manifest says {expected}. The part does not match its manifest."
                )
            dtype = resolve_dtype(record["dtype"], where=fqn)
            view = np.frombuffer(
                mapped, dtype=dtype, count=math.prod(expected[1]), offset=start + found[2]
            ).reshape(expected[1])
            bounds = zip(chunk["offsets"], chunk["sizes"], strict=True)
            place = tuple(slice(o, o + s) for o, s in bounds)
            views.append((place, view))
        return views

    def tensor(self, fqn: str) -> np.ndarray:
        """Return the full tensor ``fqn`` assembled from its chunks (a new, writable array).

        Its size is charged to the memory budget before it is allocated.

        Example:
            >>> ShardedFolder("sharded").tensor("model.0.weight").flags.writeable
            True
        """
        record = self.shards["tensors"][fqn]
        dtype = resolve_dtype(record["dtype"], where=fqn)
        shape = tuple(record["shape"])
        budget.charge(math.prod(shape) * dtype.itemsize, f"tensor {fqn[:100]!r}")
        out = np.empty(shape, dtype=dtype)
        for place, view in self.chunks(fqn):
            out[place] = view
        return out

    def object_bytes(self, fqn: str) -> bytes:
        """Return the stored bytes of a non-tensor item (DCP's serialised objects)."""
        record = self.shards["objects"][fqn]
        mapped, start, entries = self._part(record["part"])
        found = entries.get(record["key"])
        if found is None or found[0] != "uint8":
            raise FormatError(f"{record['part']!r} lacks object {record['key'][:100]!r} as bytes.")
        return bytes(mapped[start + found[2] : start + found[3]])

    def role_tensor_keys(self, role: str) -> dict[str, str]:
        """Return ``{tensor name: shard key}`` of ``role``, in manifest order.

        Example:
            >>> ShardedFolder("sharded").role_tensor_keys("model")["0.bias"]
            'model.0.bias'
        """
        for entry in self.manifest["models"]:
            if entry["role"] == role:
                return {t["name"]: t["key"] for t in entry["tensors"]}
        roles = [entry["role"] for entry in self.manifest["models"]]
        raise FormatError(f"the sharded bundle has no role {role!r}; its roles are {roles}.")

    def role_tensors(self, role: str) -> dict[str, np.ndarray]:
        """Return ``{tensor name: full array}`` of ``role``, every tensor assembled now."""
        return {name: self.tensor(key) for name, key in self.role_tensor_keys(role).items()}

    def role_parts(self, role: str) -> list[str]:
        """Return the part files that hold ``role``'s chunks, sorted.

        Example:
            >>> ShardedFolder("sharded").role_parts("model")
            ['parts/rank-00000.safetensors']
        """
        records = self.shards["tensors"]
        return sorted({chunk["part"] for key in self.role_tensor_keys(role).values()
                       for chunk in records[key]["chunks"]})

    def lazy_tensor(self, fqn: str) -> np.ndarray:
        """Return ``fqn`` read-only: the part's own view when one chunk holds it all, else a copy.

        Example:
            >>> ShardedFolder("sharded").lazy_tensor("model.0.bias").flags.writeable
            False
        """
        record = self.shards["tensors"][fqn]
        pieces = self.chunks(fqn)
        if len(pieces) == 1 and pieces[0][1].shape == tuple(record["shape"]):
            return pieces[0][1]
        array = self.tensor(fqn)
        array.flags.writeable = False
        return array

    def lazy_loaders(self, role: str) -> Mapping[str, Callable[[], np.ndarray]]:
        """Return ``{tensor name: loader}`` for ``role``: each assembles its tensor when called.

        The tensors' declared bytes must fit the open memory budget: what is
        mapped may all be touched.
        """
        keys = self.role_tensor_keys(role)
        records = self.shards["tensors"]
        declared = sum(count_bytes(records[key]["shape"], records[key]["dtype"], where=key)
                       for key in keys.values())
        budget.check(declared, f"the tensors of {role!r}")
        return {name: (lambda key=key: self.lazy_tensor(key)) for name, key in keys.items()}
