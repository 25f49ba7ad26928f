"""Hostile PyTorch weights: tensor geometry, storage sizes, memory budget, manifest checks.

Issue 10, items 2 and 3, for every tensor rebuilt from a pickle: ``model.pth``
in a format-2 bundle, legacy ``model.pth``, tensors pickled into a legacy
``params.dill``. Each hostile file is written with the real tools (``torch.save``
on ``torch.as_strided`` tensors, ``pickle``/``dill``, ``zipfile``), and the
manifest of a format-2 bundle is rewritten with correct sizes and digests, as
an attacker who writes the whole file would. Bombs are opened in a subprocess
under ``RLIMIT_AS`` whose peak resident memory is measured, so an allocation
attempt fails the test even when the allocation itself would have fit. Each
is opened through every entry point: ``load`` (and ``load(into=)``, where
``torch.load`` would inflate it), ``Bundle.tensors()``, ``load(lazy=True)``,
``verify`` (reports, never raises, never says ok) and, for legacy archives,
``migrate``.
"""

from __future__ import annotations

import io
import json
import pickle
import struct
import subprocess
import sys
import zipfile
import zlib
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import polybundle

from .conftest import LEGACY_DIR, needs_torch
from .hostile_corpus import (
    TORCH_ERA,
    _members,
    _rebundle,
    _replace,
    _torch_file_with,
    write_zip,
)

pytestmark = needs_torch

GIB = 1024**3
AS_LIMIT = 3 * GIB
"""Address-space limit of the subprocess that opens a bomb."""

PEAK_GROWTH = 256 * 1024**2
"""Most resident memory a refused bomb may add to the subprocess's peak."""

BOMB_SHAPE = (256, 1024, 1024)
"""A float32 tensor of this shape is 1 GiB."""


# --- crafting -----------------------------------------------------------------------------


def _saved(state: Any, *, zipped: bool = True) -> bytes:
    import torch

    buffer = io.BytesIO()
    torch.save(state, buffer, _use_new_zipfile_serialization=zipped)
    return buffer.getvalue()


def _stride0() -> Any:
    """A 1 GiB float32 tensor over a storage of one element (torch allows it)."""
    import torch

    return torch.as_strided(torch.zeros(1), BOMB_SHAPE, (0, 0, 0))


def _bundle(tmp_path: Path, pth: bytes, tensors: dict[str, tuple[tuple[int, ...], str]]) -> Path:
    """A real format-2 torch bundle whose ``net/model.pth`` is ``pth``.

    The manifest declares ``tensors`` (``{key: (shape, dtype)}``) and records
    the size and sha256 of every member, as an attacker writing the file would.
    """
    import torch

    clean = tmp_path / "clean.bundle"
    polybundle.save(clean, {"net": torch.nn.Linear(3, 2)})
    members = _replace(_members(clean), "net/model.pth", pth)
    manifest = json.loads(dict(members)["manifest.json"])
    template = manifest["models"][0]["tensors"][0]
    manifest["models"][0]["tensors"] = [
        {**template, "name": key, "key": key, "shape": list(shape), "dtype": dtype,
         "layout": "opaque", "kind": "", "slot": ""}
        for key, (shape, dtype) in tensors.items()
    ]
    members = _replace(members, "manifest.json", json.dumps(manifest).encode())
    clean.unlink()
    return _rebundle(tmp_path / "hostile.bundle", members)


def _legacy(tmp_path: Path, **replace: bytes) -> Path:
    """The real PyTorch dill-era fixture with ``autoencoder/<member>`` replaced."""
    members = _members(LEGACY_DIR / TORCH_ERA)
    for member, data in replace.items():
        members = _replace(members, f"autoencoder/{member.replace('_', '.')}", data)
    return write_zip(tmp_path / "hostile.zip", members)


def _legacy_params(extra: dict[str, Any]) -> bytes:
    """The fixture's params.dill, rewritten with dill and ``extra`` entries added."""
    import dill

    from polybundle.safety.unpickle import safe_loads

    with zipfile.ZipFile(LEGACY_DIR / TORCH_ERA) as archive:
        params = safe_loads(archive.read("autoencoder/params.dill"), where="params.dill")
    return dill.dumps({**params, **extra})


def _pickle_ops(pth: bytes) -> bytes:
    """The ``data.pkl`` of a zip-layout weights file."""
    with zipfile.ZipFile(io.BytesIO(pth)) as inner:
        return inner.read(next(n for n in inner.namelist() if n.endswith("/data.pkl")))


def _with_pickle(pth: bytes, old: bytes, new: bytes) -> bytes:
    """``pth`` with the one occurrence of ``old`` in its ``data.pkl`` replaced by ``new``."""
    ops = _pickle_ops(pth)
    assert ops.count(old) == 1, (old, ops)
    return _torch_file_with(pth, pickle_ops=ops.replace(old, new))


class _Storage:
    """One storage as ``torch.save``'s pickler sees it (its persistent id)."""

    def __init__(self, key: str, numel: int) -> None:
        self.key, self.numel = key, numel


class _Tensor:
    """A tensor over a :class:`_Storage`, reduced exactly as ``torch.Tensor`` reduces."""

    def __init__(self, storage: _Storage, shape: tuple[int, ...]) -> None:
        self.storage, self.shape = storage, shape

    def __reduce_ex__(self, protocol: int) -> tuple[Any, ...]:
        import torch

        strides = tuple(int(np.prod(self.shape[i + 1 :])) for i in range(len(self.shape)))
        args = (self.storage, 0, self.shape, strides, False, OrderedDict())
        return (torch._utils._rebuild_tensor_v2, args)


class _TorchPickler(pickle.Pickler):
    """``torch.save``'s pickler: storages become ``('storage', type, key, 'cpu', numel)``."""

    def persistent_id(self, obj: Any) -> Any:
        import torch

        if isinstance(obj, _Storage):
            return ("storage", torch.FloatStorage, obj.key, "cpu", obj.numel)
        return None


def _deflated_storages(count: int, numel: int) -> bytes:
    """A ``model.pth`` zip of ``count`` float32 zero storages of ``numel``, each DEFLATED.

    ``data.pkl`` is written by a pickler that does what ``torch.save``'s does;
    the zip is written record by record so one deflate stream serves every
    storage (compressing 1 GiB of zeros 1,024 times would take the test
    seconds). :func:`test_crafted_deflated_storages_are_what_torch_reads` checks
    that torch itself reads such a file.
    """
    buffer = io.BytesIO()
    state = OrderedDict((f"t{i}", _Tensor(_Storage(str(i), numel), (numel,))) for i in range(count))
    _TorchPickler(buffer, protocol=2).dump(state)
    zero = bytes(numel * 4)
    members = [
        ("archive/data.pkl", buffer.getvalue(), False),
        ("archive/byteorder", b"little", False),
    ]
    members += [(f"archive/data/{i}", zero, True) for i in range(count)]
    members.append(("archive/version", b"3\n", False))
    return _raw_zip(members)


def _raw_zip(members: list[tuple[str, bytes, bool]]) -> bytes:
    """A zip of ``(name, data, deflated)``; equal ``data`` objects share one deflate stream."""
    local, central = bytearray(), bytearray()
    packed: dict[int, tuple[bytes, int]] = {}
    for name, data, deflated in members:
        if id(data) not in packed:
            body = data
            if deflated:
                compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
                body = compressor.compress(data) + compressor.flush()
            packed[id(data)] = (body, zlib.crc32(data))
        body, crc = packed[id(data)]
        method = 8 if deflated else 0
        raw = name.encode()
        sizes = struct.pack("<III", crc, len(body), len(data))
        common = struct.pack("<HHHHH", 20, 0, method, 0, 0x21) + sizes
        offset = len(local)
        local += b"PK\x03\x04" + common + struct.pack("<HH", len(raw), 0) + raw + body
        central += (
            b"PK\x01\x02" + struct.pack("<H", 3 << 8 | 20) + common
            + struct.pack("<HHHHHII", len(raw), 0, 0, 0, 0, 0o100644 << 16, offset) + raw
        )
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(members), len(members),
                      len(central), len(local), 0)
    return bytes(local + central + end)


# --- opening a bomb in a bounded subprocess -------------------------------------------------

WORKER = r"""
import json, resource, sys
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
import numpy as np
import polybundle
path, role, kind, out = sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]

def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

def materialise(tensors):
    return {name: list(np.array(tensors[name]).shape) for name in tensors}

results = {}
def attempt(name, call):
    try:
        results[name] = {"outcome": "ok", "value": call()}
    except polybundle.PolybundleError as exc:
        results[name] = {"outcome": "typed", "error": type(exc).__name__, "message": str(exc)}
    except BaseException as exc:
        results[name] = {"outcome": "raw", "error": type(exc).__name__, "message": str(exc)[:300]}

if kind == "format2-into":
    import torch

base = peak()
if kind == "legacy":
    attempt("load", lambda: materialise(polybundle.load(path).tensors(role)))
    attempt("migrate", lambda: str(polybundle.migrate(path, out)))
else:
    attempt("tensors", lambda: materialise(polybundle.load(path, roles=[]).tensors(role)))
    if kind == "format2-into":  # the victim's own model, with the names the bundle declares
        from polybundle.format.archive import ArchiveReader
        from polybundle.format.manifest import read_manifest
        with ArchiveReader(path) as archive:
            entry = [e for e in read_manifest(archive)["models"] if e["role"] == role][0]
        model = torch.nn.Module()
        for spec in entry["tensors"]:  # on the meta device: the model itself takes no memory
            model.register_parameter(spec["name"], torch.nn.Parameter(
                torch.empty(spec["shape"], device="meta"), requires_grad=False))
        attempt("into", lambda: str(polybundle.load(path, into={role: model}).models))
attempt("lazy", lambda: materialise(polybundle.load(path, lazy=True).tensors(role)))

def verified():
    report = polybundle.verify(path)
    return {"ok": report.ok, "problems": report.problems}

attempt("verify", verified)
print(json.dumps({"results": results, "growth": peak() - base}))
"""


def _open_bounded(path: Path, kind: str, role: str) -> dict[str, Any]:
    """Open ``path`` through every entry point in a subprocess under ``RLIMIT_AS``."""
    out = path.parent / "migrated.bundle"
    done = subprocess.run(
        [sys.executable, "-c", WORKER, str(AS_LIMIT), str(path), role, kind, str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _assert_refused(report: dict[str, Any], *, reason: str) -> None:
    """Every entry point refused with a typed error naming ``reason``; memory stayed flat."""
    results = report["results"]
    for name, result in results.items():
        if name == "verify":
            assert result["outcome"] == "ok", result
            assert result["value"]["ok"] is False, result
            problems = " ".join(result["value"]["problems"])
            assert reason in problems and "MemoryError" not in problems, problems
        else:
            assert result["outcome"] == "typed", (name, result)
            assert reason in result["message"], (name, result)
            assert "MemoryError" not in result["message"], (name, result)
    assert report["growth"] < PEAK_GROWTH, f"peak memory grew {report['growth']} bytes"


# --- memory bombs ---------------------------------------------------------------------------


def test_stride0_model_pth_in_format2_bundle_is_refused_without_allocating(tmp_path):
    pth = _saved({"w": _stride0()})
    assert len(pth) < 5000
    path = _bundle(tmp_path, pth, {"w": (BOMB_SHAPE, "float32")})
    _assert_refused(_open_bounded(path, "format2-into", "net"), reason="storage")


def test_stride0_tensor_in_legacy_params_dill_is_refused_without_allocating(tmp_path):
    path = _legacy(tmp_path, params_dill=_legacy_params({"probe": _stride0()}))
    assert path.stat().st_size < 10_000
    _assert_refused(_open_bounded(path, "legacy", "autoencoder"), reason="storage")


def _views_of_one_storage(count: int = 1024) -> dict[str, Any]:
    """``count`` distinct transposed 1 MiB windows of one ~1 MiB storage (1 GiB of copies)."""
    import torch

    base = torch.zeros(512 * 512 + count)
    return {f"v{i}": base.as_strided((512, 512), (1, 512), i) for i in range(count)}


def _bomb(kind: str) -> tuple[bytes, dict[str, tuple[tuple[int, ...], str]]]:
    """A hostile ``model.pth`` and the tensors its manifest declares."""
    import torch

    if kind == "stride0":
        return _saved({"w": _stride0()}), {"w": (BOMB_SHAPE, "float32")}
    if kind == "self_overlap":  # every element inside the storage, 128 KiB -> 1 GiB
        tensor = torch.as_strided(torch.zeros(32768), (16384, 16384), (1, 1))
        return _saved({"w": tensor}), {"w": ((16384, 16384), "float32")}
    if kind == "overlapping_views":
        views = _views_of_one_storage()
        return _saved(views), {key: ((512, 512), "float32") for key in views}
    if kind == "deflated_storages":
        pth = _deflated_storages(1024, 262144)
        return pth, {f"t{i}": ((262144,), "float32") for i in range(1024)}
    assert kind == "storage_lies", kind  # declares 2**30 elements (4 GiB), holds 400 bytes
    pth = _with_pickle(_saved({"w": torch.zeros(100)[:7]}), b"K\x64t", b"J\x00\x00\x00\x40t")
    return pth, {"w": ((7,), "float32")}


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("self_overlap", "overlapping view"),
        ("overlapping_views", "overlapping ways"),
        ("deflated_storages", "decompression bomb"),
        ("storage_lies", "holds 400 bytes"),
    ],
)
def test_model_pth_bomb_in_format2_bundle_is_refused_without_allocating(tmp_path, kind, reason):
    pth, tensors = _bomb(kind)
    assert len(pth) < 1_300_000
    path = _bundle(tmp_path, pth, tensors)
    mode = "format2-into" if kind == "deflated_storages" else "format2"  # torch.load inflates it
    _assert_refused(_open_bounded(path, mode, "net"), reason=reason)


def test_stride0_legacy_model_pth_pre_zip_layout_is_refused_without_allocating(tmp_path):
    path = _legacy(tmp_path, model_pth=_saved({"0.weight": _stride0()}, zipped=False))
    _assert_refused(_open_bounded(path, "legacy", "autoencoder"), reason="overlapping view")


def test_crafted_deflated_storages_are_what_torch_reads():
    """The pickler and zip writer of the deflated bomb write a file torch itself reads."""
    import torch

    state = torch.load(io.BytesIO(_deflated_storages(3, 5)), weights_only=True)
    assert list(state) == ["t0", "t1", "t2"]
    assert all(t.shape == (5,) and not t.any() for t in state.values())


# --- the memory budget ----------------------------------------------------------------------


def test_deflated_storages_are_charged_to_the_budget_before_decompressing():
    from polybundle.errors import BudgetExceededError
    from polybundle_torch.pth_reader import read_pth

    pth = _deflated_storages(8, 16384)  # 8 x 64 KiB of zeros: under every ratio floor
    with polybundle.safety.budget.limit(8 * 65536 + 4096) as budget:
        assert len(read_pth(pth)) == 8
    assert budget.spent >= 8 * 65536
    with (
        polybundle.safety.budget.limit(3 * 65536),
        pytest.raises(BudgetExceededError, match="storage"),
    ):
        read_pth(pth)


def test_copied_views_are_charged_to_the_budget():
    import torch

    from polybundle.errors import BudgetExceededError
    from polybundle_torch.pth_reader import read_pth

    pth = _saved({"t": torch.zeros(256, 256).t()})  # one 256 KiB storage, one copied view
    with polybundle.safety.budget.limit(2 * 262144 + 4096):
        assert read_pth(pth)["t"].shape == (256, 256)
    with polybundle.safety.budget.limit(262144 + 4096), pytest.raises(BudgetExceededError):
        read_pth(pth)


# --- geometry that is damaged rather than large ---------------------------------------------


@pytest.mark.parametrize("empty", [False, True])
def test_offset_past_the_storage_end_is_refused_on_every_path(tmp_path, empty):
    import torch

    from polybundle.errors import FormatError

    tensor = torch.zeros(100)[77:77] if empty else torch.zeros(100)[77:79]
    pth = _with_pickle(_saved({"w": tensor}), b"K\x4d", b"M\xe8\x03")  # offset 77 -> 1000
    path = _bundle(tmp_path, pth, {"w": (tuple(tensor.shape), "float32")})
    with pytest.raises(FormatError, match="element 1000"):
        polybundle.load(path, roles=[]).tensors("net")
    with pytest.raises(FormatError, match="element 1000"):
        polybundle.load(path, lazy=True).tensors("net")
    report = polybundle.verify(path)
    assert not report.ok and "element 1000" in " ".join(report.problems)


def _model_of(declared: dict[str, tuple[tuple[int, ...], str]]) -> Any:
    """A caller's own model that fits the manifest: its tensors have the declared names and
    shapes, so a load into it reaches the file's own checks."""
    import torch

    model = torch.nn.Module()
    for name, (shape, dtype) in declared.items():
        model.register_parameter(name, torch.nn.Parameter(
            torch.zeros(shape, dtype=getattr(torch, dtype)), requires_grad=False))
    return model


def test_storage_member_larger_than_declared_is_refused(tmp_path):
    """The member must hold exactly the declared bytes (torch.load requires it too)."""
    import torch

    from polybundle.errors import FormatError

    pth = _with_pickle(_saved({"w": torch.zeros(100)[:7]}), b"K\x64t", b"K\x32t")  # 100 -> 50
    path = _bundle(tmp_path, pth, {"w": ((7,), "float32")})
    for read in (
        lambda: polybundle.load(path, roles=[]).tensors("net"),
        lambda: polybundle.load(path, lazy=True).tensors("net"),
        lambda: polybundle.load(path, into={"net": _model_of({"w": ((7,), "float32")})}),
    ):
        with pytest.raises(FormatError, match="holds 400 bytes"):
            read()


# --- the manifest -----------------------------------------------------------------------------


def _manifest_case(kind: str) -> tuple[dict[str, Any], dict[str, tuple[tuple[int, ...], str]]]:
    import torch

    state = {"weight": torch.ones(4, 3), "bias": torch.ones(4)}
    declared = {"weight": ((4, 3), "float32"), "bias": ((4,), "float32")}
    if kind == "transposed_shape":
        declared["weight"] = ((3, 4), "float32")
    elif kind == "dtype":
        state["weight"] = state["weight"].double()
    elif kind == "extra_in_file":
        state["hidden"] = torch.ones(2)
    else:
        assert kind == "missing_from_file", kind
        del state["bias"]
    return state, declared


@pytest.mark.parametrize(
    "kind", ["transposed_shape", "dtype", "extra_in_file", "missing_from_file"]
)
def test_tensors_that_differ_from_the_manifest_are_refused_before_reading(tmp_path, kind):

    from polybundle.errors import IntegrityError

    state, declared = _manifest_case(kind)
    path = _bundle(tmp_path, _saved(state), declared)
    with pytest.raises(IntegrityError, match="manifest"):
        polybundle.load(path, roles=[]).tensors("net")
    with pytest.raises(IntegrityError, match="manifest"):
        polybundle.load(path, lazy=True).tensors("net")
    with pytest.raises(IntegrityError, match="manifest"):  # a model that fits the manifest
        polybundle.load(path, into={"net": _model_of(declared)})
    report = polybundle.verify(path)
    assert not report.ok and report.problems


def test_manifest_shape_over_a_transposed_stored_tensor_names_both(tmp_path):
    from polybundle.errors import IntegrityError

    state, declared = _manifest_case("transposed_shape")
    path = _bundle(tmp_path, _saved(state), declared)
    with pytest.raises(IntegrityError) as caught:
        polybundle.load(path, roles=[]).tensors("net")
    assert "(4, 3)" in str(caught.value) and "(3, 4)" in str(caught.value)


# --- OrderedDict BUILD state ------------------------------------------------------------------


class _Hiding(OrderedDict):
    """A state_dict that pickles as ``OrderedDict`` whose BUILD carries ``state``."""

    def __init__(self, items: dict[str, Any], state: Any) -> None:
        super().__init__(items)
        self.build_state = state

    def __reduce__(self) -> tuple[Any, ...]:
        return (OrderedDict, (), self.build_state, None, iter(self.items()))


def _hiding_states() -> dict[str, Any]:
    import torch

    hidden = {"weight": torch.ones(4, 3)}
    metadata = OrderedDict([("", {"version": 1})])
    return {
        "slot_state": (None, hidden),
        "dict_and_slot_state": ({"_metadata": metadata}, hidden),
        "dict_state": {"_metadata": metadata, **hidden},
        "tensor_in_metadata": {"_metadata": {"": {"version": 1}, "fc": hidden}},
    }


@pytest.mark.parametrize(
    "kind", ["slot_state", "dict_and_slot_state", "dict_state", "tensor_in_metadata"]
)
def test_ordered_dict_build_state_that_hides_tensors_is_refused(tmp_path, kind):
    import pickletools

    import torch

    from polybundle.errors import UnsafeContentError
    from polybundle_torch.pth_reader import read_pth

    pth = _saved(_Hiding({"bias": torch.ones(4)}, _hiding_states()[kind]))
    ops = [op.name for op, _, _ in pickletools.genops(_pickle_ops(pth))]
    assert ops[-2:] == ["BUILD", "STOP"]
    with pytest.raises(UnsafeContentError, match="OrderedDict"):
        read_pth(pth)
    path = _bundle(tmp_path, pth, {"bias": ((4,), "float32")})
    with pytest.raises(UnsafeContentError, match="OrderedDict"):
        polybundle.load(path, roles=[]).tensors("net")
    with pytest.raises(UnsafeContentError, match="OrderedDict"):
        polybundle.load(path, lazy=True).tensors("net")
    report = polybundle.verify(path)
    assert not report.ok and "OrderedDict" in " ".join(report.problems)


# --- real state_dicts still load, bit for bit ------------------------------------------------


def _tied_model() -> Any:
    """Tied weights, a transposed view of them, and a non-contiguous buffer of its own."""
    import torch

    class Tied(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = torch.nn.Linear(5, 3)
            self.decoder = torch.nn.Linear(3, 5, bias=False)
            self.norm = torch.nn.BatchNorm1d(3)
            self.decoder.weight = torch.nn.Parameter(torch.empty(5, 3))
            self.encoder.weight = self.decoder.weight  # tied: one storage, two keys
            self.register_buffer("encoder_t", self.decoder.weight.detach().t())
            self.register_buffer("table", torch.arange(24.0).reshape(4, 6).t())
            self.register_buffer("row", torch.arange(10.0, dtype=torch.float64)[3:7])

    torch.manual_seed(0)
    model = Tied()
    torch.nn.init.normal_(model.decoder.weight)
    return model


def _expected(model: Any) -> dict[str, np.ndarray]:
    return {key: value.numpy().copy() for key, value in model.state_dict().items()}


def _assert_same(found: Any, expected: dict[str, np.ndarray]) -> None:
    assert sorted(found) == sorted(expected)
    for key, array in expected.items():
        value = np.asarray(found[key])
        assert value.dtype == array.dtype and value.shape == array.shape, key
        assert value.tobytes() == np.ascontiguousarray(array).tobytes(), key


def test_tied_shared_and_transposed_tensors_round_trip_bit_for_bit(tmp_path):
    import torch

    model = _tied_model()
    state = model.state_dict()
    assert state["encoder.weight"].data_ptr() == state["decoder.weight"].data_ptr()
    assert not state["table"].is_contiguous() and not state["encoder_t"].is_contiguous()
    expected = _expected(model)
    path = tmp_path / "tied.bundle"
    polybundle.save(path, {"net": model})
    _assert_same(polybundle.load(path, roles=[]).tensors("net"), expected)
    _assert_same(polybundle.load(path, lazy=True).tensors("net"), expected)
    assert polybundle.verify(path).ok
    fresh = _tied_model()
    with torch.no_grad():
        for tensor in fresh.state_dict().values():
            tensor.zero_()
    polybundle.load(path, into={"net": fresh})
    _assert_same({k: v.numpy() for k, v in fresh.state_dict().items()}, expected)


@pytest.mark.parametrize("zipped", [True, False])
def test_read_pth_reads_real_views_of_shared_storages(zipped):
    import torch

    from polybundle_torch.pth_reader import read_pth

    base = torch.arange(48.0).reshape(6, 8)
    state = {
        "whole": base,
        "tied": base,
        "transposed": base.t(),
        "rows": base[1:3],
        "every_other": base[:, ::2],
        "flat": base.view(-1),
    }
    found = read_pth(_saved(state, zipped=zipped))
    _assert_same(found, {k: v.numpy() for k, v in state.items()})


def test_real_state_dict_metadata_is_set_by_build_and_still_loads():
    """torch.save(model.state_dict()) BUILDs the OrderedDict with ``_metadata``; that loads."""
    import pickletools

    import torch

    from polybundle_torch.pth_reader import read_pth

    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    pth = _saved(model.state_dict())
    ops = [op.name for op, _, _ in pickletools.genops(_pickle_ops(pth))]
    assert ops[-2:] == ["BUILD", "STOP"] and b"_metadata" in _pickle_ops(pth)
    _assert_same(read_pth(pth), _expected(model))
