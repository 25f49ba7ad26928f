"""Hostile ``model.weights.h5`` files: no byte from outside the archive, no bomb, no wrong data.

Issue 10, items 1, 2 (HDF5), 3 (HDF5) and 7 (Keras). Each case is a real HDF5
file written with h5py over the ``model.weights.h5`` that Keras saved, planted
in a real format-2 bundle (inside ``net/model.keras``, with the manifest's
sizes, digests and, where the attack needs it, tensor specs rewritten: an
attacker writes the whole file) and in the real TensorFlow-era legacy archive.
Every path must refuse it with a typed error before reading a byte it points
at: ``load`` (builder, ``into=``, Keras itself), ``load(lazy=True)``,
``Bundle.tensors()``, ``verify`` (reports, never raises), ``convert`` (writes
nothing) and, for the legacy archive, ``load``, ``verify`` and ``migrate``.
The secret files the cases point at sit in the working directory, so relative
paths reach them; their marker must never appear in an array or a file.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import sys
import time
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import polybundle
from polybundle.errors import (
    FormatError,
    IntegrityError,
    PolybundleError,
    UnsafeContentError,
)
from polybundle.format.archive import ArchiveReader
from polybundle.model.backend import TensorSpec
from polybundle.safety import budget
from polybundle_tensorflow import keras_file
from polybundle_tensorflow.keras_file import check_weights, read_datasets, read_keras_weights

from .conftest import LEGACY_DIR, needs_tensorflow, needs_torch, snapshot_tree
from .hostile_corpus import write_zip

h5py = pytest.importorskip("h5py")

pytestmark = needs_tensorflow

MARKER = b"SECRETMARKER"
SECRET_BYTES = MARKER * 256
WEIGHTS = "model.weights.h5"
LEGACY_ROLE = "autoencoder"


@dataclass(frozen=True)
class Targets:
    """Datasets of one ``model.weights.h5`` the cases rewrite.

    ``vector`` and ``peer`` are float32 vectors of the same shape (so an alias
    of one to the other still matches the manifest); ``kernel`` is a 2-D or
    larger float32 array.
    """

    vector: str
    peer: str
    kernel: str


FORMAT2_TARGETS = Targets("layers/conv2d/vars/1", "layers/batch_normalization/vars/0",
                          "layers/dense/vars/0")
LEGACY_TARGETS = Targets("layers/conv2d/vars/1", "layers/batch_normalization/vars/0",
                         "layers/conv2d/vars/0")

Declared = tuple[str, tuple[int, ...], str]
"""``(key, shape, dtype)`` that a case's file now declares for one dataset."""


def _recreate(h5, key: str, **options) -> Declared:
    """Replace dataset ``key`` by a new one made with ``h5.create_dataset(key, **options)``."""
    del h5[key]
    created = h5.create_dataset(key, **options)
    return key, tuple(created.shape), str(created.dtype)


def _external(path: str) -> Callable[[object, Targets], Declared]:
    def mutate(h5, targets: Targets) -> Declared:
        old = h5[targets.vector]
        shape, dtype = old.shape, old.dtype
        nbytes = int(np.prod(shape)) * dtype.itemsize
        return _recreate(h5, targets.vector, shape=shape, dtype=dtype,
                         external=[(path, 0, nbytes)])

    return mutate


def _virtual(h5, targets: Targets) -> Declared:
    old = h5[targets.vector]
    shape, dtype = old.shape, old.dtype
    layout = h5py.VirtualLayout(shape=shape, dtype=dtype)
    layout[:] = h5py.VirtualSource("secret.h5", f"x{shape[0]}", shape=shape)
    del h5[targets.vector]
    h5.create_virtual_dataset(targets.vector, layout, fillvalue=0)
    return targets.vector, tuple(shape), str(dtype)


def _external_link(h5, targets: Targets) -> Declared:
    shape = h5[targets.vector].shape
    del h5[targets.vector]
    h5[targets.vector] = h5py.ExternalLink("secret.h5", f"/x{shape[0]}")
    return targets.vector, tuple(shape), "float32"


def _soft_alias(h5, targets: Targets) -> Declared:
    shape = h5[targets.vector].shape
    del h5[targets.vector]
    h5[targets.vector] = h5py.SoftLink("/" + targets.peer)
    return targets.vector, tuple(shape), "float32"


def _hard_alias(h5, targets: Targets) -> Declared:
    shape = h5[targets.vector].shape
    del h5[targets.vector]
    h5[targets.vector] = h5[targets.peer]
    return targets.vector, tuple(shape), "float32"


def _group_alias(h5, targets: Targets) -> Declared:
    """A second hard link to a whole layer group, which aliases every dataset in it."""
    group = targets.vector.rsplit("/", 2)[0]
    h5[f"{group}_alias"] = h5[group]
    return targets.vector, tuple(h5[targets.vector].shape), "float32"


def _gzip_gib(h5, targets: Targets) -> Declared:
    """1 GiB of float32 zeros, gzip-compressed into a file of about a megabyte."""
    chunk = 2**22
    declared = _recreate(h5, targets.kernel, shape=(2**28,), dtype="float32",
                         chunks=(chunk,), compression="gzip")
    blob = zlib.compress(bytes(chunk * 4), 9)
    dataset = h5[targets.kernel]
    for index in range(2**28 // chunk):
        dataset.id.write_direct_chunk((index * chunk,), blob)
    return declared


def _fill_tib(h5, targets: Targets) -> Declared:
    """1 TiB declared, chunked, no chunk written: every read would be the fill value."""
    return _recreate(h5, targets.kernel, shape=(2**38,), dtype="float32", chunks=(2**20,),
                     fillvalue=1.0)


def _float64(h5, targets: Targets) -> Declared:
    data = h5[targets.kernel][()]
    return _recreate(h5, targets.kernel, data=data.astype(np.float64))


def _bytestring(h5, targets: Targets) -> Declared:
    shape = h5[targets.vector].shape
    return _recreate(h5, targets.vector, data=np.full(shape, MARKER[:4], dtype="S4"))


def _transposed(h5, targets: Targets) -> Declared:
    data = h5[targets.kernel][()]
    return _recreate(h5, targets.kernel, data=data.reshape(data.shape[::-1]))


def _compact(h5, targets: Targets) -> Declared:
    """The same values in HDF5's compact layout (in the object header); Keras never writes it."""
    data = h5[targets.vector][()]
    del h5[targets.vector]
    space = h5py.h5s.create_simple(data.shape)
    plist = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    plist.set_layout(h5py.h5d.COMPACT)
    dataset = h5py.h5d.create(h5.id, targets.vector.encode(), h5py.h5t.IEEE_F32LE, space,
                              dcpl=plist)
    dataset.write(h5py.h5s.ALL, h5py.h5s.ALL, data)
    return targets.vector, data.shape, "float32"


def _keep(h5, targets: Targets) -> Declared:
    old = h5[targets.kernel]
    return targets.kernel, tuple(old.shape), str(old.dtype)


def _past_the_end(raw: bytes, targets: Targets) -> bytes:
    """Point the kernel's contiguous data address 10**12 bytes into a small file."""
    with h5py.File(io.BytesIO(raw), "r") as h5:
        address = struct.pack("<Q", h5[targets.kernel].id.get_offset())
    assert raw.count(address) == 1
    return raw.replace(address, struct.pack("<Q", 10**12))


@dataclass(frozen=True)
class Case:
    """One hostile ``model.weights.h5``.

    ``follows``: the attacker also rewrote the manifest's tensor spec to what
    the file declares (else the manifest keeps the model's true spec).
    ``error``: what reading the tensors must raise. ``legacy``: also planted
    in the legacy archive (whose tensors have no manifest spec to differ from).
    """

    name: str
    mutate: Callable[[object, Targets], Declared]
    error: type[PolybundleError] = UnsafeContentError
    follows: bool = True
    legacy: bool = True
    patch: Callable[[bytes, Targets], bytes] | None = None


CASES = [
    Case("external_relative_secret", _external("secret.bin")),
    Case("external_proc_environ", _external("/proc/self/environ")),
    Case("virtual_dataset", _virtual),
    Case("external_link", _external_link),
    Case("soft_link_alias", _soft_alias),
    Case("hard_link_alias", _hard_alias),
    Case("group_hard_link_alias", _group_alias),
    Case("gzip_zeros_1gib", _gzip_gib),
    Case("chunked_fill_1tib", _fill_tib),
    Case("compact_layout", _compact),
    Case("data_past_the_end", _keep, FormatError, patch=_past_the_end),
    Case("byte_strings", _bytestring, follows=False),
    Case("float64_for_float32", _float64, IntegrityError, follows=False, legacy=False),
    Case("transposed_shape", _transposed, IntegrityError, follows=False, legacy=False),
]
BY_NAME = {case.name: case for case in CASES}


# --- building the hostile archives -----------------------------------------------------------


def _members(path: Path) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(path) as archive:
        return [(info.filename, archive.read(info)) for info in archive.infolist()]


def _replace(members: list[tuple[str, bytes]], name: str, data: bytes) -> list[tuple[str, bytes]]:
    assert name in dict(members), name
    return [(n, data if n == name else d) for n, d in members]


def _hostile_h5(clean: bytes, case: Case, targets: Targets) -> tuple[bytes, Declared]:
    buffer = io.BytesIO(clean)
    with h5py.File(buffer, "r+") as h5:
        declared = case.mutate(h5, targets)
    raw = buffer.getvalue()
    return (case.patch(raw, targets) if case.patch else raw), declared


def _keras_with_weights(
    keras: bytes, weights: bytes, extra: dict[str, bytes] | None = None
) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(keras)) as source, zipfile.ZipFile(buffer, "w") as out:
        for info in source.infolist():
            data = weights if info.filename == WEIGHTS else source.read(info)
            out.writestr(info.filename, data, compress_type=zipfile.ZIP_STORED)
        for name, data in (extra or {}).items():
            out.writestr(name, data, compress_type=zipfile.ZIP_STORED)
    return buffer.getvalue()


def rebundle(path: Path, members: list[tuple[str, bytes]], role: str,
             declared: Declared | None) -> Path:
    """Write a format-2 bundle whose manifest matches ``members`` (sizes, sha256, the spec)."""
    manifest = json.loads(dict(members)["manifest.json"])
    if declared is not None:
        key, shape, dtype = declared
        entry = next(e for e in manifest["models"] if e["role"] == role)
        for tensor in entry["tensors"]:
            if tensor["key"] == key:
                tensor.update(shape=list(shape), dtype=dtype)
    for name, data in members:
        if name in manifest["members"]:
            manifest["members"][name] = {
                "size": len(data), "sha256": hashlib.sha256(data).hexdigest()
            }
    members = _replace(members, "manifest.json", json.dumps(manifest).encode())
    return write_zip(path, members, method=zipfile.ZIP_STORED)


def _weights_of(keras: bytes) -> bytes:
    with zipfile.ZipFile(io.BytesIO(keras)) as inner:
        return inner.read(WEIGHTS)


def hostile_bundle(clean: Path, folder: Path, case: Case) -> Path:
    """Plant ``case`` in the format-2 bundle ``clean``; return the new bundle."""
    members = _members(clean)
    keras = dict(members)["net/model.keras"]
    weights, declared = _hostile_h5(_weights_of(keras), case, FORMAT2_TARGETS)
    members = _replace(members, "net/model.keras", _keras_with_weights(keras, weights))
    return rebundle(folder / f"{case.name}.bundle", members, "net",
                    declared if case.follows else None)


def hostile_legacy(folder: Path, case: Case) -> Path:
    """Plant ``case`` in the TensorFlow-era legacy archive; return the new archive."""
    members = _members(LEGACY_DIR / "tf_era_shared.zip")
    name = f"{LEGACY_ROLE}/model.keras"
    keras = dict(members)[name]
    weights, _ = _hostile_h5(_weights_of(keras), case, LEGACY_TARGETS)
    members = _replace(members, name, _keras_with_weights(keras, weights))
    return write_zip(folder / f"{case.name}.zip", members)


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, Path]:
    """One Keras model saved twice: with its architecture (builder path) and without (Keras)."""
    from tests import models

    folder = tmp_path_factory.mktemp("clean")
    model = models.trained_keras(0)
    built = polybundle.save(folder / "built.bundle", {"net": model})
    assert built["models"][0]["architecture"]["name"] == models.ARCH
    plain = models.keras_convnet(models.CONFIG)
    plain.set_weights(model.get_weights())
    polybundle.save(folder / "plain.bundle", {"net": plain})
    return {"built": folder / "built.bundle", "plain": folder / "plain.bundle"}


@pytest.fixture
def secrets(tmp_path, monkeypatch) -> Path:
    """A working directory holding the files the hostile datasets point at."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "secret.bin").write_bytes(SECRET_BYTES)
    with h5py.File(work / "secret.h5", "w") as h5:
        for n in range(1, 17):
            h5[f"x{n}"] = np.frombuffer(SECRET_BYTES[: 4 * n], dtype=np.float32)
    monkeypatch.chdir(work)
    return work


def _leaks(value: object) -> bool:
    """Return True when an array (or a mapping of them) holds the secret marker or environ."""
    environ = Path("/proc/self/environ").read_bytes()
    arrays = value.values() if isinstance(value, dict) else [value]
    for array in arrays:
        raw = np.ascontiguousarray(array).tobytes()
        if MARKER in raw or (len(raw) >= 8 and raw in environ):
            return True
    return False


def _model_leaks(model: object) -> bool:
    return any(_leaks(np.asarray(w)) for w in model.get_weights())


def _files_hold_marker(folder: Path) -> list[str]:
    return [
        str(p) for p in folder.rglob("*")
        if p.is_file() and p.name not in ("secret.bin", "secret.h5") and MARKER in p.read_bytes()
    ]


# --- the tests -------------------------------------------------------------------------------


def test_the_clean_bundles_load_on_every_path(saved, tmp_path):
    """The harness itself: what Keras writes passes every check, on every path."""
    from tests import models

    rebuilt = rebundle(tmp_path / "same.bundle", _members(saved["built"]), "net", None)
    for path in (saved["built"], rebuilt):
        bundle = polybundle.load(path)
        lazy = polybundle.load(path, lazy=True).tensors("net")
        eager = polybundle.load(path, roles=[]).tensors("net")
        assert sorted(lazy) == sorted(eager) and len(eager) == 8
        for name, array in eager.items():
            np.testing.assert_array_equal(lazy[name], array)
        x = models.inputs("tensorflow")
        np.testing.assert_allclose(models.predict(bundle.models["net"], x),
                                   models.predict(polybundle.load(saved["plain"]).models["net"], x),
                                   rtol=1e-6)
        assert polybundle.verify(path).ok


@pytest.mark.parametrize("name", [case.name for case in CASES])
def test_hostile_weights_in_a_format2_bundle_are_refused_on_every_path(
    saved, secrets, tmp_path, name
):
    from tests import models

    case = BY_NAME[name]
    hostile = hostile_bundle(saved["built"], tmp_path, case)
    before = snapshot_tree(tmp_path)

    start = time.perf_counter()
    with pytest.raises(PolybundleError):
        polybundle.load(hostile)
    fresh = models.keras_convnet(models.CONFIG)
    original = [w.copy() for w in fresh.get_weights()]
    with pytest.raises(PolybundleError):
        polybundle.load(hostile, into={"net": fresh})
    for now, then in zip(fresh.get_weights(), original, strict=True):
        np.testing.assert_array_equal(now, then)  # the caller's model is untouched
    with pytest.raises(case.error) as raised:
        polybundle.load(hostile, lazy=True).tensors("net")
    assert "net/model.keras" in str(raised.value) or case.error is not UnsafeContentError
    with pytest.raises(case.error):
        polybundle.load(hostile, roles=[]).tensors("net")
    report = polybundle.verify(hostile)
    assert not report.ok and report.problems, report.problems
    assert time.perf_counter() - start < 60  # bombs are refused from metadata, not read

    assert snapshot_tree(tmp_path) == before
    assert _files_hold_marker(tmp_path) == []


@pytest.mark.parametrize("name", ["external_relative_secret", "hard_link_alias", "gzip_zeros_1gib",
                                  "transposed_shape"])
@needs_torch
def test_convert_refuses_hostile_weights_and_writes_nothing(saved, secrets, tmp_path, name):
    hostile = hostile_bundle(saved["built"], tmp_path, BY_NAME[name])
    target = tmp_path / "out" / "torch.bundle"
    target.parent.mkdir()
    with pytest.raises(PolybundleError):
        polybundle.convert(hostile, target, backend="torch")
    assert list(target.parent.iterdir()) == []
    assert _files_hold_marker(tmp_path) == []


@pytest.mark.parametrize("name", [c.name for c in CASES])
def test_keras_never_sees_a_hostile_weights_file(saved, secrets, tmp_path, name):
    """Without a builder Keras rebuilds the model; the weights file is checked before it,
    against the manifest too (Keras would cast a float64 dataset to the model's float32).
    """
    hostile = hostile_bundle(saved["plain"], tmp_path, BY_NAME[name])
    with pytest.raises(BY_NAME[name].error):
        bundle = polybundle.load(hostile)
        assert not _model_leaks(bundle.models["net"])


@pytest.mark.parametrize("name", [case.name for case in CASES if case.legacy])
def test_hostile_weights_in_a_legacy_archive_are_refused(secrets, tmp_path, name):
    case = BY_NAME[name]
    hostile = hostile_legacy(tmp_path, case)
    before = snapshot_tree(tmp_path)
    with pytest.raises(case.error):
        polybundle.load(hostile)
    with pytest.raises(case.error):
        polybundle.load(hostile, lazy=True)
    report = polybundle.verify(hostile)
    assert not report.ok and report.problems
    with pytest.raises(case.error):
        polybundle.migrate(hostile, tmp_path / "migrated.bundle")
    assert snapshot_tree(tmp_path) == before
    assert _files_hold_marker(tmp_path) == []


@pytest.mark.parametrize("name", [case.name for case in CASES])
def test_the_reader_refuses_each_case_without_help_from_the_budget(saved, secrets, tmp_path, name):
    """The HDF5 checks hold alone: no entry point's budget check runs before them here."""
    case = BY_NAME[name]
    hostile = hostile_bundle(saved["built"], tmp_path, case)
    with ArchiveReader(hostile) as archive, budget.limit(2**62):
        entry = json.loads(archive.read("manifest.json"))["models"][0]
        specs = [TensorSpec.from_json(t) for t in entry["tensors"]]
        with pytest.raises(case.error):
            read_datasets(archive.open("net/model.keras"), specs)
        if case.error is UnsafeContentError:  # refused from the file alone, no manifest needed
            with pytest.raises(UnsafeContentError):
                read_datasets(archive.open("net/model.keras"), [spec.key for spec in specs])


# --- issue 10, item 7: Keras extracts nothing to disk ------------------------------------------

_WRITES: list[str] | None = None
_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT


def _audit(event: str, args: tuple) -> None:
    """Record every file opened for writing and every folder made while recording is on."""
    if _WRITES is None:
        return
    if event == "open":
        path, mode, flags = args
        writing = any(c in mode for c in "wax+") if isinstance(mode, str) else flags & _FLAGS
        if writing and str(path) != os.devnull:
            _WRITES.append(str(path))
    elif event in ("os.mkdir", "os.rename", "shutil.copyfile", "shutil.move"):
        _WRITES.append(str(args[0]))


@pytest.fixture(scope="module")
def writes_recorder():
    """Python's audit hooks see every file Keras (zipfile, shutil, tempfile) writes."""
    sys.addaudithook(_audit)

    class Recorder:
        def __enter__(self) -> list[str]:
            global _WRITES
            _WRITES = []
            return _WRITES

        def __exit__(self, *exc: object) -> None:
            global _WRITES
            _WRITES = None

    return Recorder()


def test_keras_loads_a_bundle_from_memory_and_writes_nothing(saved, writes_recorder):
    with writes_recorder as writes:
        bundle = polybundle.load(saved["plain"])
    assert bundle.models["net"].name == "convnet"
    assert writes == []


def test_a_keras_file_with_members_keras_would_extract_is_refused(saved, tmp_path,
                                                                  writes_recorder):
    members = _members(saved["plain"])
    keras = dict(members)["net/model.keras"]
    extra = _keras_with_weights(keras, _weights_of(keras), {"assets/vocabulary.txt": b"a\nb\n"})
    hostile = rebundle(tmp_path / "assets.bundle", _replace(members, "net/model.keras", extra),
                       "net", None)
    with writes_recorder as writes, pytest.raises(UnsafeContentError, match="temporary folder"):
        polybundle.load(hostile)
    assert writes == []


def test_keras_never_extracts_the_weights_next_to_the_bundle_member(
    saved, tmp_path, monkeypatch, writes_recorder
):
    """When Keras thinks memory is short it extracts ``model.weights.h5`` into a temporary
    folder beside ``fileobj.name`` (for a bundle member, ``net/`` under the working
    directory). polybundle hands Keras a file object without a name, so it reads from the
    zip instead."""
    from keras.src.saving import saving_lib

    monkeypatch.chdir(tmp_path)
    (tmp_path / "net").mkdir()
    monkeypatch.setattr(saving_lib, "is_memory_sufficient", lambda model: False)
    with writes_recorder as writes:
        bundle = polybundle.load(saved["plain"])
    assert bundle.models["net"].name == "convnet"
    assert writes == []


# --- the gate's own limits --------------------------------------------------------------------


def _h5_bytes(build: Callable[[object], None]) -> bytes:
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as h5:
        build(h5)
    return buffer.getvalue()


def test_what_keras_writes_for_each_dtype_passes_the_gate_and_reads_back(tmp_path):
    import keras

    for dtype in ("float16", "float32", "float64", "bfloat16"):
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, dtype=dtype),
                                  keras.layers.Dropout(0.5, seed=1)])
        path = tmp_path / f"{dtype}.keras"
        model.save(path)
        with zipfile.ZipFile(path) as inner:
            weights = inner.read(WEIGHTS)
        stored = check_weights(io.BytesIO(weights))
        assert {str(d.dtype) for d in stored} >= {dtype}
        arrays = [a for _, a in read_keras_weights(path.read_bytes())]
        assert len(arrays) == len(model.weights) == 2
        for array, variable in zip(arrays, model.weights, strict=True):
            np.testing.assert_array_equal(array, np.asarray(variable))
            assert array.dtype == np.asarray(variable).dtype


def test_bool_and_integer_datasets_pass_and_odd_types_do_not():
    plain = _h5_bytes(lambda h5: [h5.create_dataset(f"v/{dt}", data=np.arange(3).astype(dt))
                                  for dt in ("bool", "int8", "uint16", "int64", "float64")])
    assert {str(d.dtype) for d in check_weights(io.BytesIO(plain))} == {
        "bool", "int8", "uint16", "int64", "float64"
    }
    for data in (np.zeros(3, ">f4"), np.zeros(3, [("a", "<f4")]), np.zeros(3, "c8"),
                 np.array(["x", "y"], dtype=h5py.string_dtype())):
        odd = _h5_bytes(lambda h5, data=data: h5.create_dataset("v/0", data=data))
        with pytest.raises(UnsafeContentError, match="expected little-endian floats"):
            check_weights(io.BytesIO(odd))


def test_too_many_links_and_names_that_are_not_utf8_are_refused(monkeypatch):
    many = _h5_bytes(lambda h5: [h5.create_group(f"g{i}") for i in range(12)])
    check_weights(io.BytesIO(many))
    monkeypatch.setattr(keras_file, "MAX_H5_LINKS", 10)
    with pytest.raises(UnsafeContentError, match="more than 10 links"):
        check_weights(io.BytesIO(many))
    odd = _h5_bytes(lambda h5: h5.create_group(b"\xff"))
    with pytest.raises(FormatError, match="not UTF-8"):
        check_weights(io.BytesIO(odd))


def test_a_legacy_keras_file_with_members_keras_would_extract_is_refused(
    tmp_path, ptycho_package, writes_recorder
):
    """The legacy era's own Keras load (trust_code=True) goes through the same check."""
    members = _members(LEGACY_DIR / "tf_era_shared.zip")
    name = "diffraction_to_obj/model.keras"
    keras = dict(members)[name]
    extra = _keras_with_weights(keras, _weights_of(keras), {"assets/vocabulary.txt": b"a\n"})
    hostile = write_zip(tmp_path / "assets.zip", _replace(members, name, extra))
    with writes_recorder as writes, pytest.raises(UnsafeContentError, match="temporary folder"):
        bundle = polybundle.load(hostile, roles=["diffraction_to_obj"], trust_code=True)
        bundle.models["diffraction_to_obj"]
    assert writes == []
