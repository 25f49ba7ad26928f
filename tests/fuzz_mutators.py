"""Structure-aware mutations of valid archives, for ``tests/test_fuzz_structured.py``.

An attacker writes the whole file, so every mutation of a format-2 bundle
re-writes the manifest's member sizes and digests to match (:func:`rebundle`).
Each mutation is a plain tuple (what hypothesis draws and prints) and
:func:`apply` turns it into the bytes of a new archive plus what a correct
reader must do with it:

- ``same``: the content is unchanged; a reader gives the original data or a
  ``PolybundleError``;
- ``refuse``: every reading path raises a ``PolybundleError`` and ``verify``
  does not say ok;
- ``either``: the data that loads matches what the manifest declares, or a
  ``PolybundleError``.

Usage::

    seed = Seed("v2_torch", "v2", members_of(Path("t.bundle").read_bytes()))
    mutated = apply(seed, ("json", "params.json", "nest", "extra", 5000), env)
    mutated.expect
    # -> 'either'
"""

from __future__ import annotations

import binascii
import functools
import hashlib
import io
import json
import pickle
import struct
import zipfile
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

STORED, DEFLATED = zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED


@dataclass
class Seed:
    """A valid archive: its name, kind (``v2`` or ``legacy``) and members in order."""

    name: str
    kind: str
    members: list[tuple[str, bytes]]
    method: int = STORED

    def member(self, name: str) -> bytes:
        """Return the bytes of member ``name``."""
        return dict(self.members)[name]

    def find(self, suffix: str) -> list[str]:
        """Return the member names ending with ``suffix``, in order."""
        return [name for name, _ in self.members if name.endswith(suffix)]


@dataclass
class Env:
    """Files outside the archive that a hostile archive may point at."""

    secret: Path
    secret_h5: Path


@dataclass
class Mutated:
    """A mutated archive's bytes, what a reader must do, and the manifest's declared tensors."""

    data: bytes
    expect: str
    declared: dict[str, dict[str, list[Any]]] | None = field(default=None)
    params: dict[str, Any] | None = field(default=None)
    """Params values a correct reader must give back exactly (legacy arrays)."""


# --- zip writing, byte by byte (so records can lie) ------------------------------------------


@dataclass
class Entry:
    """One zip member as written: name, data, method, unix mode; ``alias_of`` shares a header."""

    name: str
    data: bytes
    method: int = STORED
    mode: int = 0o100644
    alias_of: str | None = None
    extra: bytes = b""


@functools.lru_cache(maxsize=16)
def _encoded(data: bytes, method: int) -> tuple[bytes, int]:
    """Return a member's stored or raw-deflated bytes and its CRC (cached: storages repeat)."""
    if method == DEFLATED:
        compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
        return compressor.compress(data) + compressor.flush(), binascii.crc32(data)
    return data, binascii.crc32(data)


def raw_zip(entries: list[Entry], comment: bytes = b"") -> bytes:
    """Write ``entries`` as a zip; an entry with ``alias_of`` gets only a directory record.

    Example:
        >>> zipfile.ZipFile(io.BytesIO(raw_zip([Entry("a", b"x")]))).read("a")
        b'x'
    """
    out = bytearray()
    records = []
    offsets: dict[str, tuple[int, int, int, int, int]] = {}
    for entry in entries:
        name = entry.name.encode()
        if entry.alias_of is not None:
            records.append((name, *offsets[entry.alias_of], entry.mode))
            continue
        payload, crc = _encoded(entry.data, entry.method)
        offset = len(out)
        out += struct.pack(
            "<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0x800, entry.method, 0, 0x21,
            crc, len(payload), len(entry.data), len(name), len(entry.extra),
        )
        out += name + entry.extra + payload
        offsets[entry.name] = (offset, entry.method, crc, len(payload), len(entry.data))
        records.append((name, offset, entry.method, crc, len(payload), len(entry.data), entry.mode))
    start = len(out)
    for name, offset, method, crc, csize, size, mode in records:
        out += struct.pack(
            "<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 0x031E, 20, 0x800, method, 0, 0x21,
            crc, csize, size, len(name), 0, 0, 0, 0, mode << 16, offset,
        )
        out += name
    out += struct.pack(
        "<4sHHHHIIH", b"PK\x05\x06", 0, 0, len(records), len(records), len(out) - start, start,
        len(comment),
    )
    return bytes(out + comment)


def members_of(data: bytes) -> list[tuple[str, bytes]]:
    """Return ``[(name, bytes)]`` of a zip, in directory order."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return [(info.filename, archive.read(info)) for info in archive.infolist()]


def zip_of(members: list[tuple[str, bytes]], method: int = STORED) -> bytes:
    """Write members as a plain zip."""
    return raw_zip([Entry(name, data, method) for name, data in members])


def _digest(record: dict[str, Any], data: bytes) -> None:
    """Set every digest field of a manifest member record to match ``data``."""
    record["size"] = len(data)
    for key in list(record):
        if key in ("sha256", "blake2b", "sha512"):
            record[key] = hashlib.new(key, data).hexdigest()
    if "algorithm" in record:
        for key in ("digest", "hash", "value"):
            if key in record:
                record[key] = hashlib.new(record["algorithm"], data).hexdigest()
    elif isinstance(record.get("digest"), str) and ":" in record["digest"]:
        name = record["digest"].split(":", 1)[0]  # format 2.2: "<algorithm>:<hex>"
        if name == "xxh3-128":
            record["digest"] = f"{name}:{xxhash.xxh3_128_hexdigest(data)}"
        elif name in hashlib.algorithms_available:
            record["digest"] = f"{name}:{hashlib.new(name, data).hexdigest()}"


def rebundle(members: list[tuple[str, bytes]], manifest: Any = None) -> list[tuple[str, bytes]]:
    """Return ``members`` with ``manifest.json`` re-written to record their sizes and digests.

    ``manifest`` replaces the stored manifest document (before its records are updated).
    """
    if manifest is None:
        if "manifest.json" not in dict(members):
            return members
        manifest = json.loads(dict(members)["manifest.json"])
    if isinstance(manifest, dict) and isinstance(manifest.get("members"), dict):
        for name, data in members:
            record = manifest["members"].get(name)
            if isinstance(record, dict):
                _digest(record, data)
    text = json.dumps(manifest, indent=1).encode()
    return [(n, text if n == "manifest.json" else d) for n, d in members]


def replace(seed: Seed, name: str, data: bytes) -> bytes:
    """Return the seed's archive with member ``name`` replaced (manifest re-recorded)."""
    members = [(n, data if n == name else d) for n, d in seed.members]
    return zip_of(rebundle(members), seed.method)


def declared(members: list[tuple[str, bytes]]) -> dict[str, dict[str, list[Any]]] | None:
    """Return ``{role: {name: [shape, dtype]}}`` from a format-2 manifest (None when unreadable)."""
    try:
        manifest = json.loads(dict(members)["manifest.json"])
        return {
            model["role"]: {t["name"]: [t["shape"], t["dtype"]] for t in model["tensors"]}
            for model in manifest["models"]
        }
    except (KeyError, TypeError, ValueError, RecursionError):
        return None


def finish(seed: Seed, data: bytes, expect: str) -> Mutated:
    """Wrap an archive with its expectation and (format 2) its manifest's declared tensors."""
    if seed.kind != "v2":
        return Mutated(data, expect)
    try:
        return Mutated(data, expect, declared(members_of(data)))
    except zipfile.BadZipFile:
        return Mutated(data, expect)


# --- JSON documents ---------------------------------------------------------------------------


def nested(depth: int, container: str = "list") -> Any:
    """Return a value nested ``depth`` levels deep (built without recursion)."""
    value: Any = 0
    for _ in range(depth):
        value = [value] if container == "list" else {"k": value}
    return value


def dumps_deep(value: Any) -> bytes:
    """JSON-encode ``value`` even past Python's recursion limit (nested lists/dicts of 0)."""
    parts = []
    depth = 0
    while isinstance(value, (list, dict)):
        if isinstance(value, list):
            parts.append("[")
            value = value[0]
        else:
            parts.append('{"k":')
            value = value["k"]
        depth += 1
    closing = "".join("]" if p == "[" else "}" for p in reversed(parts))
    return ("".join(parts) + json.dumps(value) + closing).encode()


def _set_path(document: Any, path: str, value: Any) -> Any:
    """Set dotted ``path`` in a JSON document (integers index lists); '' replaces the root."""
    if not path:
        return value
    keys = path.split(".")
    target = document
    for key in keys[:-1]:
        target = target[int(key)] if isinstance(target, list) else target[key]
    last = keys[-1]
    if isinstance(target, list):
        target[int(last)] = value
    else:
        target[last] = value
    return document


def mutate_json(seed: Seed, mutation: tuple[Any, ...], env: Env) -> Mutated:
    """``("json", member, op, *args)``: depth, size, versions and field types of a JSON member."""
    _, member, op, *args = mutation
    document = json.loads(seed.member(member))
    expect = "either"
    if op == "nest":  # ("nest", where, depth, container)
        where, depth, container = args
        deep = nested(depth, container)
        if where == "root":
            text = dumps_deep(deep).replace(b"0", seed.member(member).decode().encode(), 1)
            legit = member == "params.json" and container == "dict"  # params may nest objects
            expect = "either" if legit else "refuse"
        else:
            marker = "__DEEP__"
            document["x_deep"] = marker
            text = json.dumps(document).replace(f'"{marker}"', dumps_deep(deep).decode()).encode()
        return _with_member(seed, member, text, expect)
    if op == "big":  # ("big", shape, count)
        shape, count = args
        if shape == "string":
            document["x_big"] = "a" * count
        elif shape == "keys":
            document["x_big"] = {f"k{i}": i for i in range(count)}
        else:
            document["x_big"] = list(range(count))
    elif op == "field":  # ("field", dotted path, value)
        path, value = args
        try:
            original = _get_path(document, path)
        except (KeyError, IndexError, TypeError, ValueError):
            original = KeyError  # absent: the mutation adds it
        try:
            document = _set_path(document, path, value)
        except (KeyError, IndexError, TypeError, ValueError):
            return _with_member(seed, member, json.dumps(document).encode(), "either")
        expect = "same" if value == original and type(value) is type(original) else "either"
        if member == "manifest.json" and path == "format_version" and value != original:
            expect = "either" if isinstance(value, str) and value.startswith("2.") else "refuse"
    return _with_member(seed, member, json.dumps(document).encode(), expect)


def _get_path(document: Any, path: str) -> Any:
    target = document
    for key in path.split("."):
        target = target[int(key)] if isinstance(target, list) else target[key]
    return target


def _with_member(seed: Seed, member: str, text: bytes, expect: str) -> Mutated:
    if member == "manifest.json":
        try:
            manifest = json.loads(text)
        except (ValueError, RecursionError):
            members = [(n, text if n == member else d) for n, d in seed.members]
            return finish(seed, zip_of(members, seed.method), expect)
        members = rebundle(seed.members, manifest)
        return finish(seed, zip_of(members, seed.method), expect)
    return finish(seed, replace(seed, member, text), expect)


def mutate_member_record(seed: Seed, mutation: tuple[Any, ...], env: Env) -> Mutated:
    """``("record", member index, field, value)``: a manifest member record, after re-recording."""
    _, index, key, value = mutation
    manifest = json.loads(seed.member("manifest.json"))
    names = sorted(manifest["members"])
    record = manifest["members"][names[index % len(names)]]
    original = record.get(key)
    if value == "<upper>" and isinstance(original, str):
        value = original.upper()
    if key == "drop":
        del manifest["members"][names[index % len(names)]]
    else:
        record[key] = value
    text = json.dumps(manifest, indent=1).encode()
    members = [(n, text if n == "manifest.json" else d) for n, d in seed.members]
    unchanged = key != "drop" and value == original and type(value) is type(original)
    expect = "same" if unchanged else "refuse"
    if key == "extra" or mutation[3] == "<upper>":
        expect = "either"
    return finish(seed, zip_of(members, seed.method), expect)


def mutate_legacy_manifest(seed: Seed, mutation: tuple[Any, ...], env: Env) -> Mutated:
    """``("roles", how, value)``: the role list or version of a legacy ``manifest.dill``."""
    from polybundle.safety.unpickle import safe_loads

    _, how, value = mutation
    manifest = safe_loads(seed.member("manifest.dill"), where="manifest.dill")
    roles = list(manifest["models"])
    if how == "rename":  # the archive's members keep their names
        manifest["models"] = [value, *roles[1:]]
    elif how == "add":
        manifest["models"] = [*roles, value]
    elif how == "duplicate":
        manifest["models"] = [roles[0], roles[0]]
    elif how == "version":
        manifest["version"] = value
    elif how == "models":
        manifest["models"] = value
    data = pickle.dumps(manifest, protocol=2)
    unchanged = manifest.get("models") == roles and how != "version"
    return finish(seed, replace(seed, "manifest.dill", data), "same" if unchanged else "either")


def mutate_tensor_spec(seed: Seed, mutation: tuple[Any, ...], env: Env) -> Mutated:
    """``("spec", index, field, value)``: one manifest tensor entry's dtype, shape, name or key."""
    _, index, key, value = mutation
    manifest = json.loads(seed.member("manifest.json"))
    tensors = manifest["models"][0]["tensors"]
    entry = tensors[index % len(tensors)]
    if value == "<swapped>":
        value = list(reversed(entry["shape"])) if len(entry["shape"]) > 1 else [1, *entry["shape"]]
    elif value == "<other>":
        value = tensors[(index + 1) % len(tensors)].get(key)
    if key == "drop":
        tensors.remove(entry)
        expect = "either"
    elif key == "duplicate":
        tensors.append(dict(entry))
        expect = "either"
    else:
        original = entry.get(key)
        entry[key] = value
        unchanged = value == original and type(value) is type(original)
        expect = "same" if unchanged else ("refuse" if key in ("shape", "dtype") else "either")
    return finish(seed, zip_of(rebundle(seed.members, manifest), seed.method), expect)


# --- HDF5 inside model.keras ------------------------------------------------------------------


def keras_parts(seed: Seed) -> tuple[str, list[tuple[str, bytes]]]:
    member = seed.find("model.keras")[0]
    return member, members_of(seed.member(member))


def h5_datasets(h5: bytes) -> list[str]:
    """Return the dataset paths of an HDF5 file, sorted (layers first)."""
    import h5py

    names: list[str] = []
    with h5py.File(io.BytesIO(h5), "r") as f:
        f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
    return sorted(names, key=lambda n: (not n.startswith("layers/"), n))


def secret_name(shape: tuple[int, ...]) -> str:
    """Name of the dataset of ``env.secret_h5`` that has ``shape``."""
    return "s_" + "x".join(map(str, shape))


def write_secret_h5(env: Env, shapes: list[tuple[int, ...]]) -> None:
    """Write one dataset of the secret's bytes per shape (see :func:`secret_name`)."""
    import h5py

    secret = env.secret.read_bytes()
    with h5py.File(env.secret_h5, "w") as f:
        for shape in set(shapes):
            count = int(np.prod(shape))
            raw = (secret * (4 * count // len(secret) + 1))[: 4 * count]
            data = np.frombuffer(raw, np.float32).reshape(shape)
            f.create_dataset(secret_name(shape), data=data)


def _rewrite_h5(h5: bytes, target: str, prop: str, param: int, env: Env) -> tuple[bytes, str]:
    """Replace dataset ``target`` of an HDF5 file by one with property ``prop``."""
    import h5py

    buffer = io.BytesIO(h5)
    expect = "refuse"
    with h5py.File(buffer, "r+") as f:
        original = f[target][()]
        shape, size = original.shape, original.size
        names = h5_datasets(h5)
        other = next((n for n in names if n != target and f[n].shape == shape), None)
        other = other or next(n for n in names if n != target)
        if prop != "userblock":
            del f[target]
        if prop == "userblock":
            pass
        elif prop == "external_abs":
            external = [(str(env.secret), param % 2, 4 * size)]
            f.create_dataset(target, shape, np.float32, external=external)
        elif prop == "external_rel":
            external = [(env.secret.name, param % 2, 4 * size)]
            f.create_dataset(target, shape, np.float32, external=external)
        elif prop == "external_proc":
            f.create_dataset(target, shape, np.float32, external=[("/proc/self/environ", 0, 48)])
        elif prop in ("virtual", "virtual_missing"):
            source_file = str(env.secret_h5) if prop == "virtual" else "missing.h5"
            layout = h5py.VirtualLayout(shape, np.float32)
            layout[...] = h5py.VirtualSource(source_file, secret_name(shape), shape=shape)
            f.create_virtual_dataset(target, layout, fillvalue=0)
        elif prop == "external_link":
            f[target] = h5py.ExternalLink(str(env.secret_h5), "/" + secret_name(shape))
        elif prop == "soft_link":
            f[target] = h5py.SoftLink("/" + other)
        elif prop == "hard_link":
            f[target] = f[other]
        elif prop == "gzip":
            f.create_dataset(target, data=original, compression="gzip", chunks=True)
            expect = "same"
        elif prop == "chunked":
            f.create_dataset(target, data=original, chunks=True)
            expect = "same"
        elif prop == "fill_huge":  # 2**param float32 declared, nothing written
            rows = 2 ** max(param - 10, 0)
            chunks = (min(rows, 16), 1024)
            f.create_dataset(target, (rows, 1024), np.float32, chunks=chunks, fillvalue=1.0)
        elif prop == "gzip_zeros":  # 64 MiB of zeros in a few KB
            f.create_dataset(target, (2**14, 1024), np.float32, compression="gzip", chunks=True)
        elif prop == "float64":
            f.create_dataset(target, data=original.astype(np.float64))
            expect = "same"
        elif prop == "bytes":
            f.create_dataset(target, data=np.frombuffer(original.tobytes(), "S4").reshape(shape))
            expect = "same"
        elif prop == "swapped":
            swapped = tuple(reversed(shape)) if len(shape) > 1 else (*shape, 1)
            f.create_dataset(target, data=original.reshape(swapped))
        elif prop == "scalar":
            f.create_dataset(target, data=np.float32(1.0))
        elif prop == "noop":
            f.create_dataset(target, data=original)
            expect = "same"
        elif prop == "big_endian":  # same values, stored big-endian
            f.create_dataset(target, data=original.astype(original.dtype.newbyteorder(">")))
            expect = "same"
        elif prop == "compact":  # same values in the object header (no data address)
            dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
            dcpl.set_layout(h5py.h5d.COMPACT)
            space = h5py.h5s.create_simple(shape) if shape else h5py.h5s.create(h5py.h5s.SCALAR)
            kind = h5py.h5t.py_create(original.dtype)
            dataset = h5py.h5d.create(f.id, target.encode(), kind, space, dcpl=dcpl)
            dataset.write(h5py.h5s.ALL, h5py.h5s.ALL, np.ascontiguousarray(original))
            expect = "same"
        elif prop == "unallocated":  # contiguous, never written: no storage at all
            f.create_dataset(target, shape, original.dtype)
            expect = "either"
        else:
            raise ValueError(prop)
    if prop == "userblock":
        return _with_userblock(h5), "same"
    return buffer.getvalue(), expect


def _with_userblock(h5: bytes) -> bytes:
    """Copy an HDF5 file into one with a 512-byte user block (every address shifts)."""
    import h5py

    out = io.BytesIO()
    with h5py.File(io.BytesIO(h5), "r") as source, h5py.File(out, "w", userblock_size=512) as f:
        for name in source:
            source.copy(source[name], f, name=name)
        for key, value in source.attrs.items():
            f.attrs[key] = value
    return out.getvalue()


def mutate_hdf5(seed: Seed, mutation: tuple[Any, ...], env: Env) -> Mutated:
    """``("hdf5", dataset index, property, param)``: rewrite one weights dataset with h5py."""
    _, index, prop, param = mutation
    member, parts = keras_parts(seed)
    h5 = dict(parts)["model.weights.h5"]
    names = [n for n in h5_datasets(h5) if n.startswith("layers/")]
    target = names[index % len(names)]
    new_h5, expect = _rewrite_h5(h5, target, prop, param, env)
    keras = zip_of([(n, new_h5 if n == "model.weights.h5" else d) for n, d in parts], STORED)
    return finish(seed, replace(seed, member, keras), expect)


def mutate_keras_config(seed: Seed, mutation: tuple[Any, ...], env: Env) -> Mutated:
    """``("config", layer index, field, value)``: one field of a Dense/Conv layer's config."""
    _, index, key, value = mutation
    member, parts = keras_parts(seed)
    config = json.loads(dict(parts)["config.json"])
    layers = [
        layer for layer in config["config"]["layers"] if "units" in layer["config"]
        or "filters" in layer["config"]
    ]
    layer = layers[index % len(layers)]["config"]
    if key == "units" and "units" not in layer:
        key = "filters"
    original = layer.get(key)
    layer[key] = value
    expect = "same" if value == original and type(value) is type(original) else "either"
    text = json.dumps(config).encode()
    keras = zip_of([(n, text if n == "config.json" else d) for n, d in parts], STORED)
    return finish(seed, replace(seed, member, keras), expect)


# --- pickles and storage geometry in model.pth -------------------------------------------------

_STORAGE = {
    "float32": "FloatStorage", "float64": "DoubleStorage", "int64": "LongStorage",
    "float16": "HalfStorage", "int32": "IntStorage", "uint8": "ByteStorage", "bool": "BoolStorage",
}


@dataclass
class TensorRecord:
    """One tensor of a torch pickle: its storage and view geometry."""

    key: str
    storage: str
    storage_type: str
    numel: int
    offset: Any
    size: Any
    stride: Any


def _op_text(value: str) -> bytes:
    raw = value.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def _op_int(value: Any) -> bytes:
    if isinstance(value, bool):
        return b"\x88" if value else b"\x89"
    if isinstance(value, float):
        return b"G" + struct.pack(">d", value)
    if isinstance(value, str):
        return _op_text(value)
    if 0 <= value < 2**31 or -(2**31) <= value < 0:
        return b"J" + struct.pack("<i", value)
    raw = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def _op_tuple(values: Any) -> bytes:
    return b"(" + b"".join(_op_int(v) for v in values) + b"t"


def state_dict_pickle(records: list[TensorRecord], build: str = "metadata") -> bytes:
    """Return a torch ``data.pkl`` for ``records`` (an ``OrderedDict`` of rebuilt tensors).

    ``build`` chooses the ``BUILD`` at the end: ``metadata`` (as torch writes),
    ``items_in_state`` (the tensors in the BUILD dict, none as items),
    ``slot_state`` (a ``(None, {tensors})`` slot state), ``none`` (no BUILD).
    """
    tensors = []
    for r in records:
        tensors.append(
            _op_text(r.key)
            + b"ctorch._utils\n_rebuild_tensor_v2\n("
            + b"(" + _op_text("storage") + f"ctorch\n{r.storage_type}\n".encode()
            + _op_text(r.storage) + _op_text("cpu") + _op_int(r.numel) + b"tQ"
            + _op_int(r.offset) + _op_tuple(r.size) + _op_tuple(r.stride)
            + b"\x89ccollections\nOrderedDict\n)Rtr"
        )
    head = b"\x80\x02ccollections\nOrderedDict\nq\x00)R"
    metadata = _op_text("_metadata") + b"h\x00)R" + b"(" + _op_text("") + b"}" + b"u"
    items = b"(" + b"".join(tensors) + b"u"
    if build == "metadata":
        body = items + b"}" + metadata + b"sb"
    elif build == "items_in_state":
        body = b"}(" + b"".join(tensors) + b"ub"
    elif build == "slot_state":
        body = b"N}(" + b"".join(tensors) + b"u\x86b"
    elif build == "both":
        body = items + b"}(" + b"".join(tensors) + b"ub"
    else:
        body = items
    return head + body + b"."


def torch_records(pth: bytes) -> tuple[str, list[tuple[str, np.ndarray]]]:
    """Return the pickle folder of a torch zip and its tensors as numpy arrays, in order."""
    import torch

    prefix = next(n for n in members_of(pth) if n[0].endswith("/data.pkl"))[0].split("/")[0]
    state = torch.load(io.BytesIO(pth), weights_only=True)
    return prefix, [(k, v.detach().numpy().copy()) for k, v in state.items()]


def torch_zip(
    prefix: str, pickle_bytes: bytes, storages: dict[str, bytes], method: int = STORED,
    byteorder: str = "little",
) -> bytes:
    """Write a torch zip file: ``data.pkl``, version records and ``data/<key>`` storages."""
    members = [(f"{prefix}/data.pkl", pickle_bytes), (f"{prefix}/byteorder", byteorder.encode())]
    members += [(f"{prefix}/data/{key}", data) for key, data in storages.items()]
    members += [(f"{prefix}/version", b"3\n")]
    return raw_zip([Entry(name, data, method) for name, data in members])


def _contiguous(array: np.ndarray) -> tuple[list[int], list[int]]:
    shape = list(array.shape)
    strides = [int(s) // array.itemsize for s in array.strides] if array.size else [1] * len(shape)
    return shape, strides


def geometry(
    arrays: list[tuple[str, np.ndarray]], index: int, kind: str, param: int
) -> tuple[list[TensorRecord], dict[str, bytes], str]:
    """Build records and storages for ``arrays`` with tensor ``index``'s geometry changed."""
    records, storages = [], {}
    expect = "same"
    for i, (key, array) in enumerate(arrays):
        shape, stride = _contiguous(array)
        raw, numel, offset = array.tobytes(), array.size, 0
        storage_key = str(i)
        storage_type = _STORAGE[array.dtype.name]
        if i == index % len(arrays):
            expect = "refuse"
            if kind == "noop":
                expect = "same"
            elif kind == "stride0":
                raw, numel, stride = raw[: array.itemsize], 1, [0] * len(shape)
                expect = "same" if array.size <= 1 or np.all(array == array.flat[0]) else "refuse"
            elif kind == "stride0_huge":
                raw, numel, shape, stride = raw[: array.itemsize], 1, [2**15, 2**15], [0, 0]
            elif kind == "offset_past_end":
                offset = numel + param
            elif kind == "offset_negative":
                offset = -1 - param
            elif kind == "storage_short":
                raw = raw[: max(0, len(raw) - array.itemsize * (1 + param % max(numel, 1)))]
            elif kind == "storage_declares_more":
                numel = 2 ** (30 + param % 30)
            elif kind == "stride_negative":
                stride = [-s for s in stride] or [-1]
            elif kind == "stride_huge":
                stride = [2**62] * len(shape) if shape else []
            elif kind == "size_float":
                shape = [float(s) for s in shape] or [1.0]
            elif kind == "size_huge":
                shape = [2**63 - 1]
                stride = [1]
            elif kind == "size_negative":
                shape = [-1, *shape[1:]] if shape else [-1]
                stride = stride or [1]
            elif kind == "wrong_storage_type":
                double = storage_type != "DoubleStorage"
                storage_type = "DoubleStorage" if double else "FloatStorage"
                numel = len(raw) // 8
            elif kind == "transposed_view":  # same values, stored transposed: a legit view
                if array.ndim == 2:
                    raw = np.ascontiguousarray(array.T).tobytes()
                    stride = [1, array.shape[0]]
                expect = "same"
            elif kind == "offset_view":  # same values inside a larger storage: a legit view
                pad = np.zeros(param + 1, array.dtype)
                raw = np.concatenate([pad, array.ravel(), pad]).tobytes()
                numel, offset = array.size + 2 * (param + 1), param + 1
                expect = "same"
            elif kind == "big_endian":  # same values, a big-endian storage
                raw = array.astype(array.dtype.newbyteorder(">")).tobytes()
                expect = "same"
            elif kind == "missing_storage":
                storage_key = "missing"
            elif kind == "storage_key_escape":
                storage_key = ["../../x", "/etc/passwd", "", "data.pkl"][param % 4]
            elif kind == "shared_storage" and i:  # reads tensor 0's storage (tied weights)
                storage_key, raw, expect = "0", None, "either"
            elif kind == "shared_storage":
                expect = "same"
            elif kind == "overlap":  # each row reads the same bytes; the storage holds them all
                stride = [0, *stride[1:]] if len(shape) > 1 else [0]
                expect = "same" if array.ndim and np.all(array == array[:1]) else "either"
        if kind == "shared_storage" and i and i == index % len(arrays):
            numel = arrays[0][1].size
            if array.dtype != arrays[0][1].dtype or array.size > numel:
                expect = "refuse"
        records.append(TensorRecord(key, storage_key, storage_type, numel, offset, shape, stride))
        if raw is not None and storage_key == str(i):
            storages[str(i)] = raw
    return records, storages, expect


def mutate_pickle(seed: Seed, mutation: tuple[Any, ...], env: Env) -> Mutated:
    """``("pth", tensor index, geometry, param)``, ``("pth_build", how)``, ``("pth_saved", how)``,
    ``("pth_storages", count)``: re-write one ``model.pth`` with changed geometry or pickle."""
    member = seed.find("model.pth")[0]
    prefix, arrays = torch_records(seed.member(member))
    what = mutation[0]
    if what == "pth":
        _, index, kind, param = mutation
        records, storages, expect = geometry(arrays, index, kind, param)
        order = "big" if kind == "big_endian" else "little"
        pth = torch_zip(prefix, state_dict_pickle(records), storages, byteorder=order)
    elif what == "pth_build":
        records, storages, _ = geometry(arrays, 0, "noop", 0)
        how = mutation[1]
        pth = torch_zip(prefix, state_dict_pickle(records, how), storages)
        expect = "same" if how in ("metadata", "none") else "either"
    elif what == "pth_storages":  # many deflated 1 MiB storages, each under the ratio floor
        count = mutation[1]
        records, storages, _ = geometry(arrays, 0, "noop", 0)
        zeros = bytes(2**20)  # one object, so its deflated form is computed once
        for i in range(count):
            key = f"x{i}"
            records.append(TensorRecord(f"extra.{i}", key, "FloatStorage", 2**18, 0, [2**18], [1]))
            storages[key] = zeros
        pth = torch_zip(prefix, state_dict_pickle(records), storages, method=DEFLATED)
        expect = "refuse"
    else:
        pth, expect = _torch_saved(arrays, mutation[1])
    return finish(seed, replace(seed, member, pth), expect)


def _torch_saved(arrays: list[tuple[str, np.ndarray]], how: str) -> tuple[bytes, str]:
    """``torch.save`` a state dict whose first tensor is an ``as_strided`` view."""
    import torch

    state = OrderedDict((k, torch.from_numpy(a.copy())) for k, a in arrays)
    key, first = next(iter(state.items()))
    expect = "refuse"
    single = first.reshape(-1)[:1].clone()  # a storage of one element
    if how == "stride0":
        state[key] = single.as_strided(first.shape, [0] * first.dim())
        if first.numel() <= 1:
            expect = "same"
    elif how == "stride0_in_full_storage":  # the storage holds every byte: repeated values
        state[key] = first.reshape(-1)[:1].as_strided(first.shape, [0] * first.dim())
        expect = "either"
    elif how == "stride0_1gib":
        state[key] = single.as_strided((2**14, 2**14), (0, 0))
    elif how == "view_in_larger":
        big = torch.cat([torch.zeros(7, dtype=first.dtype), first.reshape(-1), torch.zeros(5)])
        state[key] = big[7 : 7 + first.numel()].view(first.shape)
        expect = "same"
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue(), expect


def params_pickle_value(how: str, size: int) -> Any:
    """Return a value for a legacy ``params.dill`` built only from allowed globals."""
    import torch

    class Raw:  # pickles as torch.storage._load_from_bytes(<torch.save bytes>)
        def __init__(self, data: bytes) -> None:
            self.data = data

        def __reduce__(self) -> tuple[Any, ...]:
            return (torch.storage._load_from_bytes, (self.data,))

    buffer = io.BytesIO()
    if how == "stride0_tensor":
        torch.save(torch.zeros(1).as_strided((size, size), (0, 0)), buffer)
        return Raw(buffer.getvalue())
    if how == "offset_tensor":
        torch.save(torch.zeros(4)[2:], buffer)
        data = buffer.getvalue()
        return Raw(data)
    if how == "deep_list":
        return nested(size)
    if how == "big_array":
        return np.zeros(size, np.float32)
    raise ValueError(how)


class ArrayState:
    """Pickles as NumPy's own ``_reconstruct`` + ``BUILD`` with a hand-written state tuple."""

    def __init__(self, state: tuple[Any, ...]) -> None:
        self.state = state

    def __reduce__(self) -> tuple[Any, ...]:
        reconstruct = np.zeros(1).__reduce__()[0]
        return (reconstruct, (np.ndarray, (0,), b"b"), self.state)


def array_state(how: str) -> ArrayState:
    """An ndarray pickle state ``(version, shape, dtype, fortran, data)`` that lies or is odd."""
    f4, data = np.dtype("<f4"), np.arange(6, dtype="<f4").tobytes()
    states = {
        "plain": (1, (2, 3), f4, False, data),
        "shape_more_than_data": (1, (1000,), f4, False, data),
        "shape_huge": (1, (2**40,), f4, False, data),
        "shape_2d_huge": (1, (2**31, 2**31), f4, False, data),
        "shape_negative": (1, (-1,), f4, False, data),
        "shape_float": (1, (2.5,), f4, False, data),
        "zero_by_huge": (1, (0, 2**62), f4, False, b""),
        "dims_many": (1, (1,) * 64, f4, False, data[:4]),
        "big_endian": (1, (2, 3), np.dtype(">f4"), False, np.arange(6, dtype=">f4").tobytes()),
        "fortran": (1, (2, 3), f4, True, data),
        "object": (1, (2,), np.dtype(object), False, [1, 2]),
        "structured": (1, (2,), np.dtype([("a", "<f4"), ("b", "<i4")]), False, data[:16]),
        "data_not_bytes": (1, (2,), f4, False, [1, 2]),
        "version_9": (9, (2, 3), f4, False, data),
        "datetime": (1, (2,), np.dtype("M8[s]"), False, data[:16]),
    }
    return ArrayState(states[how])


def mutate_legacy_params(seed: Seed, mutation: tuple[Any, ...], env: Env) -> Mutated:
    """``("params", how, size)``: add one hostile value to a legacy ``params.dill``."""
    from polybundle.safety.unpickle import safe_loads

    _, how, size = mutation
    member = seed.find("params.dill")[0]
    params = safe_loads(seed.member(member), where=member)
    marker = "__FUZZ_DEEP__"
    if how == "array":
        params["x_fuzz"] = array_state(size)
    else:
        params["x_fuzz"] = marker if how == "deep_list" else params_pickle_value(how, size)
    data = pickle.dumps(params, protocol=2)
    if how == "deep_list":  # nested lists, written as opcodes (pickle.dumps would recurse)
        op = b"X" + struct.pack("<I", len(marker)) + marker.encode()
        data = data.replace(op, b"]" * size + b"a" * (size - 1), 1)
    expect = "refuse" if how == "stride0_tensor" and size >= 2**12 else "either"
    members = [(n, data if n.endswith("params.dill") else d) for n, d in seed.members]
    mutated = finish(seed, zip_of(members, seed.method), expect)  # every role's params
    values = np.arange(6, dtype=np.float32)
    if how == "array" and size in ("plain", "big_endian"):
        mutated.params = {"x_fuzz": values.reshape(2, 3).tolist()}
    elif how == "array" and size == "fortran":
        mutated.params = {"x_fuzz": values.reshape((2, 3), order="F").tolist()}
    return mutated


# --- zip records ------------------------------------------------------------------------------


def mutate_zip(seed: Seed, mutation: tuple[Any, ...], env: Env, other: bytes) -> Mutated:
    """``("zip", op, param)``: zip-record tricks on a whole archive (members stay consistent)."""
    _, op, param = mutation
    entries = [Entry(n, d, seed.method) for n, d in seed.members]
    data = raw_zip(entries)
    if op == "truncate":
        return finish(seed, data[: param % len(data)], "refuse")
    if op == "append_zip":
        return finish(seed, data + (other if param % 2 else data), "refuse")
    if op == "prepend_zip":
        return finish(seed, (other if param % 2 else data) + data, "refuse")
    if op == "comment":
        return finish(seed, raw_zip(entries, b"c" * (param % 60000)), "same")
    if op == "deflate_all":
        return finish(seed, raw_zip([Entry(n, d, DEFLATED) for n, d in seed.members]), "same")
    if op == "reorder":
        rotated = entries[param % len(entries) :] + entries[: param % len(entries)]
        return finish(seed, raw_zip(rotated), "same")
    if op == "local_extra":
        entries[param % len(entries)].extra = b"\xfe\xca\x04\x00junk"
        return finish(seed, raw_zip(entries), "same")
    target = entries[param % len(entries)]
    if op == "alias":  # more directory records sharing one local entry, listed in the manifest
        others = [e for e in entries if e.name != "manifest.json"]  # written before the aliases
        target = others[param % len(others)]
        count = 1 + param % 256
        aliases = [Entry(f"alias/{i}", target.data, alias_of=target.name) for i in range(count)]
        listed = [(n, d) for n, d in seed.members] + [(a.name, a.data) for a in aliases]
        members = rebundle(listed) if seed.kind == "v2" else listed
        data_by_name = dict(members)
        fixed = [Entry(e.name, data_by_name[e.name], seed.method) for e in entries]
        manifest = [e for e in fixed if e.name == "manifest.json"]
        rest = [e for e in fixed if e.name != "manifest.json"]
        return finish(seed, raw_zip(rest + aliases + manifest), "refuse")
    if op in ("dir_entry", "dir_symlink", "dir_listed"):
        name = ["payload/", "net/", f"{target.name}/"][param % 3]
        mode = 0o120777 if op == "dir_symlink" else 0o040755
        extra = Entry(name, b"", STORED, mode)
        members = seed.members
        if op == "dir_listed" and seed.kind == "v2":
            manifest = json.loads(seed.member("manifest.json"))
            manifest["members"][name] = {"size": 0, "sha256": hashlib.sha256(b"").hexdigest()}
            members = rebundle(seed.members, manifest)
        fixed = [Entry(n, d, seed.method) for n, d in members]
        expect = "refuse" if seed.kind == "v2" or op == "dir_symlink" else "either"
        return finish(seed, raw_zip([*fixed[:-1], extra, fixed[-1]]), expect)
    if op == "symlink_mode":
        target.mode = 0o120777
        return finish(seed, raw_zip(entries), "refuse")
    if op == "duplicate":
        return finish(seed, raw_zip([*entries, Entry(target.name, target.data)]), "refuse")
    if op == "cd_offset":  # a directory record that points elsewhere
        data = bytearray(raw_zip(entries))
        position = data.find(b"PK\x01\x02")
        for _ in range(param % len(entries)):
            position = data.find(b"PK\x01\x02", position + 4)
        (offset,) = struct.unpack("<I", data[position + 42 : position + 46])
        data[position + 42 : position + 46] = struct.pack("<I", offset + 1 + param % 97)
        return finish(seed, bytes(data), "refuse")
    raise ValueError(op)


# --- optimizer state --------------------------------------------------------------------------


def safetensors_parts(data: bytes) -> tuple[dict[str, Any], bytes]:
    """Split safetensors bytes into its header document and its data."""
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + length]), data[8 + length :]


def safetensors_join(header: dict[str, Any], body: bytes) -> bytes:
    """Join a safetensors header document and its data."""
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + body


def mutate_optimizer(seed: Seed, mutation: tuple[Any, ...], env: Env) -> Mutated:
    """``("opt", path, value)`` in ``optimizer.json``; ``("slot", index, field, value)`` in the
    safetensors header; ``("opt_manifest", field, value)`` in the manifest's optimizer entry."""
    what = mutation[0]
    if what == "opt":
        return mutate_json(seed, ("json", "net/optimizer.json", "field", *mutation[1:]), env)
    if what == "opt_manifest":
        _, key, value = mutation
        path = f"models.0.optimizer.{key}"
        return mutate_json(seed, ("json", "manifest.json", "field", path, value), env)
    _, index, key, value = mutation
    member = "net/optimizer.safetensors"
    header, body = safetensors_parts(seed.member(member))
    names = sorted(k for k in header if k != "__metadata__")
    entry = header[names[index % len(names)]]
    if value == "<swapped>":
        value = list(reversed(entry["shape"])) if len(entry["shape"]) > 1 else [*entry["shape"], 1]
    expect = "same" if entry.get(key) == value else "either"
    entry[key] = value
    return finish(seed, replace(seed, member, safetensors_join(header, body)), expect)


# --- checkpoint index -------------------------------------------------------------------------


def mutate_index(index: dict[str, Any], mutation: tuple[Any, ...], env: Env) -> tuple[bytes, bool]:
    """``("index", target, value)``: change one field of a checkpoint index.

    Returns the new index bytes and whether it is damaged (not a valid index any more).
    """
    _, target, value = mutation
    document = json.loads(json.dumps(index))
    if value == "<secret>":
        value = str(env.secret)
    if target == "deep":
        return dumps_deep(nested(value)), True
    if target == "text":
        return value.encode() if isinstance(value, str) else b"\xff\xfe", True
    document = _set_path(document, target, value)
    damaged = not (
        isinstance(value, type(_get_path(index, target)))
        and not isinstance(value, bool)
        and (target.split(".")[-1] != "file" or "/" not in value)
    )
    return json.dumps(document).encode(), damaged
