"""Sharded bundles through ``torch.distributed.checkpoint`` (DCP): a storage writer and reader.

A job whose model is sharded over ranks (FSDP2 ``fully_shard``, DTensor)
saves with ``dcp.save(state, storage_writer=BundleWriter(folder, ...))`` and
loads, on any number of ranks, with ``dcp.load(state,
storage_reader=BundleReader(folder))``. DCP plans the save and the
resharding; these classes only store: each rank writes one part file,
``parts/rank-NNNNN.safetensors`` (its chunks, STORED and aligned, written
atomically), and the coordinator writes ``params.json`` then, last and
atomically, ``manifest.json`` with each tensor's global shape and where its
chunks lie (see ``docs/format.md``, "Sharded bundles"). A folder without a
manifest is no bundle, so a save interrupted anywhere leaves nothing that
reads as one. One process reads the folder like any bundle
(:func:`polybundle.load`, ``inspect``, ``verify``, ``lazy=True``, ``convert``)
with :mod:`polybundle.format.sharded`, no process group needed.

Example (one process, no process group: DCP then saves and loads locally):
    >>> import torch.distributed.checkpoint as dcp
    >>> from polybundle_torch.distributed import BundleReader, BundleWriter
    >>> net = torch.nn.Linear(3, 2)
    >>> _ = dcp.save({"model": net.state_dict()}, no_dist=True,
    ...              storage_writer=BundleWriter("dcp-doc", params={"lr": 0.1}))
    >>> fresh = {"model": torch.nn.Linear(3, 2).state_dict()}
    >>> dcp.load(fresh, storage_reader=BundleReader("dcp-doc"), no_dist=True)
    >>> torch.equal(fresh["model"]["weight"], net.weight.detach())
    True
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import struct
import warnings
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from polybundle.errors import (
    FormatError,
    IntegrityError,
    PolybundleError,
    TensorMismatchError,
    UnsafeContentError,
)
from polybundle.format import digests
from polybundle.format.arrays import SAFETENSORS_DTYPES
from polybundle.format.digests import Digest
from polybundle.format.manifest import MANIFEST_MEMBER, PARAMS_MEMBER, build_manifest
from polybundle.format.params import ARRAYS_MEMBER, encode_params
from polybundle.format.sharded import PARTS, ShardedFolder, digest_writer, file_digest
from polybundle.format.writer import MemberRecord, atomic_write_bytes, atomic_write_chunks
from polybundle.hooks.registry import get_backend, get_registry
from polybundle.model.backend import TensorSpec

if TYPE_CHECKING:
    import torch
    from torch.distributed.checkpoint.metadata import Metadata, StorageMeta
    from torch.distributed.checkpoint.planner import LoadPlan, LoadPlanner, SavePlan, SavePlanner
    from torch.distributed.checkpoint.storage import WriteResult
    from torch.futures import Future

_CODES = {name: code for code, name in SAFETENSORS_DTYPES.items()}
_ALIGN = 8
Architecture = tuple[str, dict[str, Any]] | None


def _dtype_name(dtype: torch.dtype) -> str:
    name = str(dtype).removeprefix("torch.")
    if name not in _CODES:
        raise FormatError(
            f"a tensor of dtype {name} cannot be stored in a part file; expected one of "
            f"{sorted(_CODES)}. Cast it before saving."
        )
    return name


def _raw(tensor: torch.Tensor) -> memoryview:
    """The bytes of ``tensor`` (on the CPU, contiguous), as a memoryview."""
    import torch

    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy())


def _chunk_key(fqn: str, offsets: Iterable[int]) -> str:
    return f"{fqn}@{','.join(map(str, offsets))}"


def _part_bytes(entries: list[tuple[str, str, list[int], memoryview]]) -> list[memoryview | bytes]:
    """The safetensors bytes of ``(key, dtype, shape, data)``, largest items first (aligned)."""
    ordered = sorted(entries, key=lambda e: (-_torch_dtype(e[1]).itemsize, e[0]))
    header: dict[str, Any] = {}
    offset = 0
    for key, dtype, shape, data in ordered:
        header[key] = {"dtype": _CODES[dtype], "shape": shape,
                       "data_offsets": [offset, offset + data.nbytes]}
        offset += data.nbytes
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % _ALIGN)
    return [struct.pack("<Q", len(text)) + text, *(data for *_, data in ordered)]


def _torch_dtype(name: str) -> torch.dtype:
    import torch

    return getattr(torch, name)


def _done(value: Any) -> Future:
    """A completed ``torch.futures.Future`` holding ``value`` (what DCP waits on)."""
    from torch.futures import Future

    future: Future = Future()
    future.set_result(value)
    return future


def _write_hashed(target: Path, chunks: list[Any]) -> tuple[int, Digest]:
    """Write ``chunks`` to ``target`` atomically; return its size and digest.

    The digest (the bundle writer's own, :func:`~polybundle.format.sharded.digest_writer`)
    is computed in a second thread over the same buffers while they are
    written: both release the GIL, so hashing costs little wall time where a
    core is free.
    """
    writer = digest_writer()
    with ThreadPoolExecutor(1, thread_name_prefix="polybundle-part-digest") as pool:
        hashing = pool.submit(lambda: [writer.write(chunk) for chunk in chunks])
        atomic_write_chunks(target, chunks)
        hashing.result()
    return writer.size, writer.digest()


def _describe_role(role: str, architecture: Architecture, saved: dict[str, Any]) -> list[dict]:
    """The manifest tensors of ``role``: its builder's specs (keys prefixed), or opaque ones."""
    import torch
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    prefix = f"{role}."
    stored = {fqn: md for fqn, md in saved.items() if fqn.startswith(prefix)
              and isinstance(md, TensorStorageMetadata)}
    if not stored:
        raise PolybundleError(
            f"architectures names role {role!r}, but the saved state has no tensor under "
            f"'{prefix}'; expected the state to hold {{{role!r}: model_state_dict, ...}}."
        )
    registry = get_registry()
    if architecture and registry.has_builder(architecture[0], "torch"):
        with torch.device("meta"):
            model = registry.builder(architecture[0], "torch")(architecture[1])
        specs = get_backend("torch").describe(model)
        keys = {prefix + spec.key for spec in specs}
        if keys != set(stored):
            raise TensorMismatchError(
                f"role {role!r}: the {architecture[0]!r} builder makes tensors "
                f"{sorted(keys - set(stored))[:5]} that the state lacks, and the state holds "
                f"{sorted(set(stored) - keys)[:5]} that it does not make; expected the same "
                "set. Pass the architecture the state was made with."
            )
        return [{**spec.to_json(), "key": prefix + spec.key} for spec in specs]
    return [
        TensorSpec(fqn[len(prefix):], fqn, tuple(md.size), _dtype_name(md.properties.dtype),
                   "opaque").to_json()
        for fqn, md in stored.items()
    ]


def _architecture_json(architecture: Architecture) -> dict[str, Any] | None:
    if architecture is None:
        return None
    name, config = architecture
    document = {"name": name, "config": config}
    registry = get_registry()
    if registry.has_builder(name, "torch"):
        module = getattr(registry.builder(name, "torch"), "__module__", None)
        if module and module != "__main__":
            document["module"] = module
    return document


class WriterMethods:
    """``BundleWriter``: a DCP storage writer that makes a sharded polybundle folder at ``path``.

    ``params`` is the params dict (written to ``params.json``, arrays to
    ``params.safetensors``); ``architectures`` maps each role, a top-level
    key of the saved state holding a model's state dict, to
    ``(architecture name, config)`` (or None), so one process can rebuild
    the model with its registered builder. Without it the role is
    ``"model"``. Saving into a folder that holds a bundle first removes its
    manifest, so the old bundle stops reading before any part changes.

    Example:
        >>> import torch.distributed.checkpoint as dcp
        >>> from polybundle_torch.distributed import BundleWriter
        >>> writer = BundleWriter("dcp-doc2", architectures={"model": None})
        >>> _ = dcp.save({"model": torch.nn.Linear(2, 2).state_dict()}, storage_writer=writer,
        ...              no_dist=True)
        >>> sorted(path.name for path in Path("dcp-doc2").iterdir())
        ['manifest.json', 'params.json', 'parts']
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        params: dict[str, Any] | None = None,
        architectures: dict[str, Architecture] | None = None,
    ) -> None:
        self.path = Path(path)
        self.params = dict(params or {})
        self.architectures = dict(architectures or {"model": None})
        self.encoded = encode_params(self.params)  # refuse bad params before any rank writes
        self.rank: int | None = None
        self.is_coordinator = False

    def reset(self, checkpoint_id: str | os.PathLike[str] | None = None) -> None:
        """Start a new save; ``checkpoint_id`` (a folder) replaces the path when given."""
        if checkpoint_id is not None:
            self.path = Path(checkpoint_id)

    def set_up_storage_writer(self, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        """Record whether this rank coordinates (writes the manifest), and its rank."""
        self.is_coordinator = is_coordinator
        self.rank = kwargs.get("rank")

    def prepare_local_plan(self, plan: SavePlan) -> SavePlan:
        """Name this rank's part file (DCP may plan without collectives)."""
        if self.rank is not None and plan.storage_data is None:
            return dataclasses.replace(plan, storage_data=f"rank-{self.rank:05d}")
        return plan

    def prepare_global_plan(self, plans: list[SavePlan]) -> list[SavePlan]:
        """Coordinator: make the folder (dropping an old manifest first) and name each part."""
        (self.path / MANIFEST_MEMBER).unlink(missing_ok=True)
        parts = self.path / PARTS
        if parts.exists():
            shutil.rmtree(parts)
        parts.mkdir(parents=True, exist_ok=True)
        return [
            plan if plan.storage_data is not None
            else dataclasses.replace(plan, storage_data=f"rank-{index:05d}")
            for index, plan in enumerate(plans)
        ]

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> Future[list[WriteResult]]:
        """Write this rank's chunks and objects to its part file, atomically; report them."""
        from torch.distributed.checkpoint.planner import WriteItemType
        from torch.distributed.checkpoint.storage import WriteResult

        part = f"{PARTS}/{plan.storage_data}.safetensors"
        entries, results = [], []
        for item in plan.items:
            data = planner.resolve_data(item)
            if item.type == WriteItemType.BYTE_IO:
                raw = memoryview(data.getbuffer()).cast("B")
                entries.append((item.index.fqn, "uint8", [raw.nbytes], raw))
                where = {"part": part, "key": item.index.fqn, "object": True}
            else:
                key = _chunk_key(item.index.fqn, item.index.offset)
                entries.append((key, _dtype_name(data.dtype), list(data.shape), _raw(data)))
                where = {"part": part, "key": key, "object": False}
            results.append(WriteResult(index=item.index, size_in_bytes=entries[-1][3].nbytes,
                                       storage_data=where))
        size, digest = _write_hashed(self.path / part, _part_bytes(entries))
        for result in results:
            result.storage_data.update(part_size=size, part_digest=digest)
        return _done(results)

    def finish(self, metadata: Metadata, results: list[list[WriteResult]]) -> None:
        """Coordinator: write params, then the manifest last, both atomically."""
        import torch

        members = [self._write_member(PARAMS_MEMBER, self.encoded.document)]
        if self.encoded.arrays is not None:
            members.append(self._write_member(ARRAYS_MEMBER, self.encoded.arrays))
        tensors: dict[str, Any] = {}
        objects: dict[str, Any] = {}
        parts: dict[str, MemberRecord] = {}
        for result in (r for rank in results for r in rank):
            where = result.storage_data
            parts[where["part"]] = MemberRecord(where["part"], where["part_size"],
                                                where["part_digest"])
            if where["object"]:
                objects[result.index.fqn] = {"part": where["part"], "key": where["key"]}
                continue
            md = metadata.state_dict_metadata[result.index.fqn]
            record = tensors.setdefault(result.index.fqn, {
                "shape": list(md.size), "dtype": _dtype_name(md.properties.dtype), "chunks": [],
            })
            sizes = next(c.sizes for c in md.chunks if c.offsets == result.index.offset)
            record["chunks"].append({"part": where["part"], "key": where["key"],
                                     "offsets": list(result.index.offset), "sizes": list(sizes)})
        models = [
            {"role": role, "architecture": _architecture_json(architecture), "weights": PARTS,
             "tensors": _describe_role(role, architecture, metadata.state_dict_metadata)}
            for role, architecture in self.architectures.items()
        ]
        shards: dict[str, Any] = {"tensors": tensors, "objects": objects}
        planner_data = _json_planner_data(metadata.planner_data)
        if planner_data is not None:
            shards["planner_data"] = planner_data
        manifest = build_manifest(
            backend="torch", framework="torch", framework_version=torch.__version__,
            models=models, members=[*members, *parts.values()], shards=shards,
        )
        atomic_write_bytes(self.path / MANIFEST_MEMBER,
                           json.dumps(manifest, allow_nan=False).encode("utf-8"))

    def _write_member(self, name: str, data: bytes) -> MemberRecord:
        writer = digest_writer()
        writer.write(data)
        atomic_write_bytes(self.path / name, data)
        return MemberRecord(name, writer.size, writer.digest())

    def storage_meta(self) -> StorageMeta | None:
        """Return the folder as DCP's checkpoint id."""
        from torch.distributed.checkpoint.metadata import StorageMeta

        return StorageMeta(checkpoint_id=str(self.path))

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike[str]) -> bool:
        """Accept any local path (the folder is made on save)."""
        return isinstance(checkpoint_id, (str, os.PathLike))


def _json_planner_data(data: Any) -> dict[str, list[Any]] | None:
    """DCP's flattening map (fqn -> path of keys) as JSON, when it is one."""
    if not isinstance(data, dict):
        return None
    out = {}
    for fqn, path in data.items():
        if not isinstance(path, (tuple, list)) or not all(isinstance(p, (str, int)) for p in path):
            return None
        out[str(fqn)] = list(path)
    return out


def _checked_object(data: bytes, fqn: str) -> io.BytesIO:
    """Refuse a stored object that torch's ``weights_only`` unpickler would not accept.

    DCP's load planner unpickles these objects (optimizer hyperparameters,
    steps) itself, with ``weights_only=False``; checking each with the
    restricted unpickler first means only plain data ever reaches it.
    """
    import torch

    try:
        torch.load(io.BytesIO(data), weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any refusal means: not plain data
        raise UnsafeContentError(
            f"stored object {fqn[:100]!r} is not plain data that torch's weights_only "
            f"unpickler accepts ({type(exc).__name__}); polybundle refuses to hand it to DCP."
        ) from None
    return io.BytesIO(data)


class ReaderMethods:
    """``BundleReader``: a DCP storage reader of a sharded polybundle folder, on any rank count.

    The manifest and every part's index are checked as
    :class:`polybundle.format.sharded.ShardedFolder` does; each part a rank
    reads has its digest checked first.

    Example:
        >>> import torch.distributed.checkpoint as dcp
        >>> from polybundle_torch.distributed import BundleReader
        >>> fresh = {"model": torch.nn.Sequential(torch.nn.Linear(3, 4)).state_dict()}
        >>> dcp.load(fresh, storage_reader=BundleReader("sharded"), no_dist=True)
        >>> fresh["model"]["0.weight"].shape
        torch.Size([4, 3])
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.folder: ShardedFolder | None = None
        self._checked: set[str] = set()

    def reset(self, checkpoint_id: str | os.PathLike[str] | None = None) -> None:
        """Start a new load; ``checkpoint_id`` (a folder) replaces the path when given."""
        if checkpoint_id is not None:
            self.path = Path(checkpoint_id)
        self.folder, self._checked = None, set()

    def _open(self) -> ShardedFolder:
        if self.folder is None:
            self.folder = ShardedFolder(self.path)
        return self.folder

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        """Rebuild DCP's metadata from the manifest (JSON; nothing is unpickled)."""
        import torch
        from torch.distributed.checkpoint.metadata import (
            BytesStorageMetadata,
            ChunkStorageMetadata,
            Metadata,
            MetadataIndex,
            StorageMeta,
            TensorProperties,
            TensorStorageMetadata,
        )

        shards = self._open().shards
        state: dict[str, Any] = {}
        storage: dict[MetadataIndex, Any] = {}
        for fqn, record in shards["tensors"].items():
            chunks = [ChunkStorageMetadata(torch.Size(c["offsets"]), torch.Size(c["sizes"]))
                      for c in record["chunks"]]
            state[fqn] = TensorStorageMetadata(
                TensorProperties(dtype=_torch_dtype(record["dtype"])), torch.Size(record["shape"]),
                chunks,
            )
            for c in record["chunks"]:
                storage[MetadataIndex(fqn, torch.Size(c["offsets"]))] = c
        for fqn, record in shards["objects"].items():
            state[fqn] = BytesStorageMetadata()
            storage[MetadataIndex(fqn)] = record
        planner_data = {k: tuple(v) for k, v in shards.get("planner_data", {}).items()}
        return Metadata(state_dict_metadata=state, planner_data=planner_data,
                        storage_data=storage, storage_meta=StorageMeta(str(self.path)))

    def set_up_storage_reader(
        self, metadata: Metadata, is_coordinator: bool, *args: Any, **kwargs: Any
    ) -> None:
        """Keep the storage index of ``metadata``."""
        self.storage_data = metadata.storage_data

    def prepare_local_plan(self, plan: LoadPlan) -> LoadPlan:
        """Return ``plan`` unchanged."""
        return plan

    def prepare_global_plan(self, plans: list[LoadPlan]) -> list[LoadPlan]:
        """Return ``plans`` unchanged."""
        return plans

    def _check_part(self, folder: ShardedFolder, part: str) -> None:
        if part not in self._checked:
            expected = digests.from_record(folder.manifest["members"][part], where=part)
            if file_digest(folder.path / part, expected.algorithm) != expected:
                raise IntegrityError(
                    f"{part!r} in {str(folder.path)!r} does not match the digest its manifest "
                    "records; the bundle was altered or damaged. Re-copy it."
                )
            self._checked.add(part)

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future[None]:
        """Copy each requested chunk (or object) from the part files into ``planner``'s tensors."""
        from torch.distributed._shard._utils import narrow_tensor_by_index
        from torch.distributed.checkpoint.planner import LoadItemType

        folder = self._open()
        for item in plan.items:
            where = self.storage_data[item.storage_index]
            self._check_part(folder, where["part"])
            fqn = item.storage_index.fqn
            if item.type == LoadItemType.BYTE_IO:
                planner.load_bytes(item, _checked_object(folder.object_bytes(fqn), fqn))
                continue
            source = _chunk_tensor(folder, fqn, where)
            source = narrow_tensor_by_index(source, item.storage_offsets, item.lengths)
            target = planner.resolve_tensor(item).detach()
            if target.size() != source.size():
                raise TensorMismatchError(
                    f"{fqn!r}: DCP asks for a {list(target.size())} slice, the part gives "
                    f"{list(source.size())}; the plan and the bundle disagree."
                )
            target.copy_(source)
            planner.commit_tensor(item, target)
        return _done(None)

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike[str]) -> bool:
        """Accept a folder holding a manifest."""
        return (Path(checkpoint_id) / MANIFEST_MEMBER).is_file()


def _chunk_tensor(folder: ShardedFolder, fqn: str, where: dict[str, Any]) -> torch.Tensor:
    """The chunk at ``where`` as a tensor viewing the part's map (bit for bit, any dtype)."""
    import torch

    for place, view in folder.chunks(fqn):
        if [s.start for s in place] == where["offsets"]:
            with warnings.catch_warnings():  # a read-only map: the tensor is only copied from
                warnings.simplefilter("ignore", UserWarning)
                raw = torch.from_numpy(view.reshape(-1).view("uint8"))
            dtype = _torch_dtype(folder.shards["tensors"][fqn]["dtype"])
            return raw.view(dtype).reshape(view.shape)
    raise FormatError(f"{fqn!r} has no chunk at {where['offsets']}.")


@cache
def storage_classes() -> tuple[type, type]:
    """Return ``(BundleWriter, BundleReader)``, made on first use (this imports torch).

    Each is DCP's abstract ``StorageWriter``/``StorageReader`` with the methods
    of :class:`WriterMethods`/:class:`ReaderMethods`; defining them here keeps
    ``import polybundle_torch.distributed`` free of torch, as every module of
    the backend is. ``from polybundle_torch.distributed import BundleWriter``
    gives the same classes.

    Example:
        >>> writer_class, reader_class = storage_classes()
        >>> from torch.distributed.checkpoint import StorageWriter
        >>> issubclass(writer_class, StorageWriter), writer_class.__name__
        (True, 'BundleWriter')
    """
    from torch.distributed.checkpoint import StorageReader, StorageWriter

    class BundleWriter(WriterMethods, StorageWriter):
        __doc__ = WriterMethods.__doc__

    class BundleReader(ReaderMethods, StorageReader):
        __doc__ = ReaderMethods.__doc__

    for made in (BundleWriter, BundleReader):
        made.__module__ = __name__
    return BundleWriter, BundleReader


def __getattr__(name: str) -> Any:
    """Make ``BundleWriter`` and ``BundleReader`` on first access (see :func:`storage_classes`)."""
    if name in ("BundleWriter", "BundleReader"):
        writer, reader = storage_classes()
        return writer if name == "BundleWriter" else reader
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
