"""Generate a corpus of hostile archives (no binaries are committed; run to rebuild).

Each archive starts from a real legacy archive (``fixtures/legacy``) or a
format-2 bundle migrated from one, and plants one hazard: a pickle payload
that would create the ``sentinel`` file if it ran, a pickle bomb, a weights
file that names a non-tensor global, or a zip-level trick. ``build_corpus``
returns one :class:`Case` per archive with the error type polybundle must
raise.

Usage:
    python tests/hostile_corpus.py OUT_DIR [LEGACY_DIR]
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
import sys
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import polybundle
from polybundle.errors import FormatError, IntegrityError, PolybundleError, UnsafeContentError

TORCH_ERA = "torch_dill_era_shared.zip"
TF_ERA = "tf_era_shared.zip"
BOMB_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class Case:
    """One hostile archive: where it is, what it plants, what error it must raise.

    ``action`` is ``"load"`` (``polybundle.load`` must raise) or ``"model"``
    (``load`` succeeds with params and tensors; asking for the model raises).
    """

    name: str
    path: Path
    expected: type[PolybundleError]
    action: str = "load"


# --- pickle opcodes -------------------------------------------------------------------------


def _text(value: str) -> bytes:
    raw = value.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def _global(module: str, name: str) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode()


def _call(module: str, name: str, *args: bytes) -> bytes:
    return _global(module, name) + b"(" + b"".join(args) + b"tR"


def _pickle(ops: bytes) -> bytes:
    return b"\x80\x02" + ops + b"."


def _short(value: str) -> bytes:
    raw = value.encode()
    return b"\x8c" + bytes([len(raw)]) + raw


def pickle_payloads(sentinel: Path) -> dict[str, bytes]:
    """Return named pickles that would create ``sentinel`` (or blow up memory) if run."""
    command = f"touch {sentinel}"
    code = f"open({str(sentinel)!r}, 'w').close()"
    getattr_chain = (
        _global("builtins", "getattr")
        + b"("
        + _call("builtins", "__import__", _text("os"))
        + _text("system")
        + b"tR("
        + _text(command)
        + b"tR"
    )
    importlib_chain = (
        _global("builtins", "getattr")
        + b"("
        + _call("importlib", "import_module", _text("os"))
        + _text("system")
        + b"tR("
        + _text(command)
        + b"tR"
    )
    stack_global = (
        b"\x80\x04"
        + _short("builtins")
        + b"\x94"
        + _short("exec")
        + b"\x94"
        + b"h\x00h\x01\x93"
        + _short(code)
        + b"\x85R."
    )
    fan_out = b"]q\x00" + b"".join(
        b"(" + (b"h" + bytes([level - 1])) * 10 + b"lq" + bytes([level]) for level in range(1, 40)
    )
    return {
        "os_system": _pickle(_call("os", "system", _text(command))),
        "posix_system": _pickle(_call("posix", "system", _text(command))),
        "builtins_exec": _pickle(_call("builtins", "exec", _text(code))),
        "stack_global_memo": stack_global,
        "getattr_chain": _pickle(getattr_chain),
        "importlib_chain": _pickle(importlib_chain),
        "dill_create_code": _pickle(_call("dill._dill", "_create_code", _text(code))),
        "dill_create_function": _pickle(_call("dill._dill", "_create_function", _text(code))),
        "dill_load_type": _pickle(_call("dill._dill", "_load_type", _text("function"))),
        "payload_then_truncated": b"\x80\x02"
        + _call("os", "system", _text(command))
        + b"X"
        + struct.pack("<I", 1000)
        + b"abc",
        "huge_bytes8": b"\x80\x04\x8e" + struct.pack("<Q", 2**62) + b"x" * 16 + b".",
        "huge_unicode8": b"\x80\x04\x8d" + struct.pack("<Q", 2**61) + b"x" * 16 + b".",
        "deep_nesting": b"\x80\x02" + b"]" * 100_000 + b"a" * 99_999 + b".",
        "memo_fan_out": _pickle(fan_out),
        "self_cycle": _pickle(b"]q\x00h\x00a"),
        "persistent_id": _pickle(_text("storage") + b"Q"),
        "ext_opcode": _pickle(b"\x82\x01"),
        "object_array": _object_array(),
        "array_size_lie": _array_size_lie(),
    }


def _object_array() -> bytes:
    import numpy as np

    return __import__("pickle").dumps(np.array([1, "a"], dtype=object), protocol=2)


def _array_size_lie() -> bytes:
    import numpy as np

    data = __import__("pickle").dumps(np.zeros(2), protocol=2)
    assert data.count(b"K\x02\x85") == 1
    return data.replace(b"K\x02\x85", b"\x8a\x06" + (2**40).to_bytes(6, "little") + b"\x85")


# --- zip writing --------------------------------------------------------------------------


def _members(path: Path) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(path) as archive:
        return [(info.filename, archive.read(info)) for info in archive.infolist()]


def write_zip(
    path: Path,
    members: list[tuple[str, bytes]],
    *,
    method: int = zipfile.ZIP_DEFLATED,
    tweak: Callable[[zipfile.ZipInfo], None] | None = None,
) -> Path:
    """Write ``members`` as a zip; ``tweak`` may change each :class:`ZipInfo` first."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names are written on purpose
        with zipfile.ZipFile(path, "w") as archive:
            for name, data in members:
                info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = method
                info.external_attr = 0o100644 << 16
                if tweak is not None:
                    tweak(info)
                archive.writestr(info, data)
    return path


def _replace(members: list[tuple[str, bytes]], name: str, data: bytes) -> list[tuple[str, bytes]]:
    assert any(n == name for n, _ in members), name
    return [(n, data if n == name else d) for n, d in members]


def _patch_central(path: Path, name: str, offset: int, value: bytes) -> Path:
    """Overwrite bytes at ``offset`` of ``name``'s central-directory record."""
    data = bytearray(path.read_bytes())
    position = 0
    while True:
        record = data.find(b"PK\x01\x02", position)
        assert record >= 0, name
        length = struct.unpack("<H", data[record + 28 : record + 30])[0]
        if data[record + 46 : record + 46 + length] == name.encode():
            break
        position = record + 4
    data[record + offset : record + offset + len(value)] = value
    path.write_bytes(bytes(data))
    return path


def _keras_with(
    keras: bytes,
    *,
    config: dict | None = None,
    weights: bytes | None = None,
    method: int = zipfile.ZIP_STORED,
) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(keras)) as source, zipfile.ZipFile(buffer, "w") as out:
        for info in source.infolist():
            data = source.read(info)
            if info.filename == "config.json" and config is not None:
                data = json.dumps(config).encode()
            if info.filename == "model.weights.h5" and weights is not None:
                data = weights
            out.writestr(info.filename, data, compress_type=method)
    return buffer.getvalue()


def _lambda_config(config: dict) -> dict:
    changed = json.loads(json.dumps(config))
    layer = changed["config"]["layers"][-1]
    layer.update({"module": "keras.layers", "class_name": "Lambda", "registered_name": None})
    layer["config"]["function"] = {"class_name": "__lambda__", "config": {"code": "ZGF0YQ=="}}
    return changed


def _foreign_config(config: dict) -> dict:
    changed = json.loads(json.dumps(config))
    layer = changed["config"]["layers"][-1]
    layer.update({"module": "os", "class_name": "system", "registered_name": "os>system"})
    return changed


def _rebundle(path: Path, members: list[tuple[str, bytes]]) -> Path:
    """Rewrite a format-2 bundle with changed members and a manifest that matches them."""
    manifest = json.loads(dict(members)["manifest.json"])
    for name, data in members:
        if name in manifest["members"]:
            manifest["members"][name] = {
                "size": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
            }
    members = _replace(members, "manifest.json", json.dumps(manifest).encode())
    return write_zip(path, members, method=zipfile.ZIP_STORED)


def _torch_file_with(pth: bytes, *, pickle_ops: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(pth)) as source, zipfile.ZipFile(buffer, "w") as out:
        for info in source.infolist():
            data = source.read(info)
            if info.filename.endswith("/data.pkl"):
                data = pickle_ops
            out.writestr(info.filename, data)
    return buffer.getvalue()


# --- the corpus ---------------------------------------------------------------------------


def build_corpus(out: Path, sentinel: Path, legacy: Path) -> list[Case]:
    """Write every hostile archive under ``out``; return the cases."""
    out.mkdir(parents=True, exist_ok=True)
    torch_era = _members(legacy / TORCH_ERA)
    tf_era = _members(legacy / TF_ERA)
    cases: list[Case] = []

    def add(
        name: str,
        members: list[tuple[str, bytes]],
        expected: type[PolybundleError],
        action: str = "load",
        **options,
    ) -> Path:
        path = write_zip(out / f"{name}.zip", members, **options)
        cases.append(Case(name, path, expected, action))
        return path

    payloads = pickle_payloads(sentinel)
    for name, data in payloads.items():
        add(f"params_{name}", _replace(torch_era, "autoencoder/params.dill", data), PolybundleError)
    for member in ("manifest.dill", "autoencoder/params.dill"):
        tag = member.split("/")[0].replace(".", "_")
        add(
            f"tf_{tag}_os_system",
            _replace(tf_era, member, payloads["os_system"]),
            UnsafeContentError,
        )
    add(
        "manifest_stack_global",
        _replace(torch_era, "manifest.dill", payloads["stack_global_memo"]),
        UnsafeContentError,
    )
    add(
        "custom_objects_os_system",
        _replace(tf_era, "autoencoder/custom_objects.dill", payloads["os_system"]),
        UnsafeContentError,
    )
    add(
        "custom_objects_dill_code",
        _replace(tf_era, "autoencoder/custom_objects.dill", payloads["dill_create_code"]),
        UnsafeContentError,
    )
    mixed = _pickle(
        b"}"
        + _text("SquareLayer")
        + _global("ptycho.custom_layers", "SquareLayer")
        + b"s"
        + _text("x")
        + _call("os", "system", _text(f"touch {sentinel}"))
        + b"s"
    )
    add(
        "custom_objects_payload_beside_layer",
        _replace(tf_era, "autoencoder/custom_objects.dill", mixed),
        UnsafeContentError,
        action="model",
    )

    pth = dict(torch_era)["autoencoder/model.pth"]
    command = f"touch {sentinel}"
    add(
        "pth_reduce_os_system",
        _replace(
            torch_era,
            "autoencoder/model.pth",
            _torch_file_with(pth, pickle_ops=_pickle(_call("os", "system", _text(command)))),
        ),
        UnsafeContentError,
    )
    add(
        "pth_reduce_eval_in_dict",
        _replace(
            torch_era,
            "autoencoder/model.pth",
            _torch_file_with(
                pth,
                pickle_ops=_pickle(
                    b"}" + _text("w") + _call("builtins", "eval", _text("1")) + b"s"
                ),
            ),
        ),
        UnsafeContentError,
    )
    add(
        "pth_persistent_not_storage",
        _replace(
            torch_era,
            "autoencoder/model.pth",
            _torch_file_with(pth, pickle_ops=_pickle(b"(" + _text("module") + _text("os") + b"tQ")),
        ),
        UnsafeContentError,
    )

    keras = dict(tf_era)["autoencoder/model.keras"]
    with zipfile.ZipFile(io.BytesIO(keras)) as inner:
        config = json.loads(inner.read("config.json"))
    add(
        "tf_keras_lambda",
        _replace(
            tf_era, "autoencoder/model.keras", _keras_with(keras, config=_lambda_config(config))
        ),
        UnsafeContentError,
    )
    add(
        "tf_keras_foreign_module",
        _replace(
            tf_era, "autoencoder/model.keras", _keras_with(keras, config=_foreign_config(config))
        ),
        UnsafeContentError,
    )
    add(
        "tf_keras_nested_bomb",
        _replace(
            tf_era,
            "autoencoder/model.keras",
            _keras_with(keras, weights=bytes(BOMB_BYTES), method=zipfile.ZIP_DEFLATED),
        ),
        UnsafeContentError,
    )

    # zip-level hazards on the PyTorch-era archive
    for name, member in {
        "name_dotdot": "../evil.txt",
        "name_absolute": "/tmp/evil.txt",
        "name_drive": "C:/evil.txt",
        "name_backslash": "autoencoder\\..\\evil.txt",
    }.items():
        add(name, [*torch_era, (member, b"x")], UnsafeContentError)
    nul = add("name_nul", [*torch_era, ("evilXtxt", b"x")], UnsafeContentError)
    nul.write_bytes(nul.read_bytes().replace(b"evilXtxt", b"evil\x00txt"))

    def symlink(info: zipfile.ZipInfo) -> None:
        if info.filename == "autoencoder/params.dill":
            info.external_attr = 0o120777 << 16

    add(
        "symlink_member",
        _replace(torch_era, "autoencoder/params.dill", b"/etc/passwd"),
        UnsafeContentError,
        tweak=symlink,
    )
    add(
        "duplicate_name",
        [*torch_era, ("autoencoder/params.dill", payloads["os_system"])],
        UnsafeContentError,
    )
    encrypted = add("encrypted_member", torch_era, UnsafeContentError)
    _patch_central(encrypted, "manifest.dill", 8, struct.pack("<H", 1))
    add("method_bzip2", torch_era, UnsafeContentError, method=zipfile.ZIP_BZIP2)
    add("method_lzma", torch_era, UnsafeContentError, method=zipfile.ZIP_LZMA)
    stored_lie = add("stored_size_lie", torch_era, UnsafeContentError, method=zipfile.ZIP_STORED)
    _patch_central(stored_lie, "manifest.dill", 24, struct.pack("<I", 10**6))
    both_lie = add("sizes_past_end", torch_era, UnsafeContentError, method=zipfile.ZIP_STORED)
    _patch_central(both_lie, "autoencoder/params.dill", 20, struct.pack("<II", 10**7, 10**7))
    crc = add("crc_mismatch", torch_era, FormatError)
    _patch_central(crc, "autoencoder/params.dill", 16, struct.pack("<I", 12345))
    add(
        "ratio_bomb",
        _replace(torch_era, "autoencoder/params.dill", bytes(BOMB_BYTES)),
        UnsafeContentError,
    )
    add(
        "too_many_members",
        [*torch_era, *((f"x/{i}", b"") for i in range(10_001))],
        UnsafeContentError,
        method=zipfile.ZIP_STORED,
    )
    prepended = out / "prepended_data.zip"
    prepended.write_bytes(b"MZ" + b"\x00" * 64 + (legacy / TORCH_ERA).read_bytes())
    cases.append(Case("prepended_data", prepended, UnsafeContentError))
    overlapping = add("overlapping_members", torch_era, UnsafeContentError)
    data = bytearray(overlapping.read_bytes())
    first = data.find(b"PK\x01\x02")
    second = data.find(b"PK\x01\x02", first + 4)
    offset = data[first + 42 : first + 46]
    data[second + 42 : second + 46] = offset  # two directory records, one local entry
    overlapping.write_bytes(bytes(data))

    # format 2 (migrated from the legacy archives; no framework needed)
    migrated = out / "_migrated_torch.bundle"
    polybundle.migrate(legacy / TORCH_ERA, migrated)
    bundle = _members(migrated)
    add(
        "v2_unlisted_member",
        [*bundle, ("extra.bin", b"x")],
        UnsafeContentError,
        method=zipfile.ZIP_STORED,
    )
    add(
        "v2_missing_member",
        [m for m in bundle if m[0] != "autoencoder/model.pth"],
        IntegrityError,
        method=zipfile.ZIP_STORED,
    )
    add(
        "v2_pth_os_system",
        _replace(
            bundle,
            "autoencoder/model.pth",
            _torch_file_with(
                dict(bundle)["autoencoder/model.pth"],
                pickle_ops=_pickle(_call("os", "system", _text(command))),
            ),
        ),
        IntegrityError,
        method=zipfile.ZIP_STORED,
    )
    migrated_tf = out / "_migrated_tf.bundle"
    polybundle.migrate(legacy / TF_ERA, migrated_tf)
    tf_bundle = _members(migrated_tf)
    for name, changed in (
        ("v2_keras_lambda", _lambda_config(config)),
        ("v2_keras_foreign_module", _foreign_config(config)),
    ):
        path = _rebundle(
            out / f"{name}.zip",
            _replace(tf_bundle, "autoencoder/model.keras", _keras_with(keras, config=changed)),
        )
        cases.append(Case(name, path, PolybundleError))
    migrated.unlink()
    migrated_tf.unlink()
    return cases


if __name__ == "__main__":
    target = Path(sys.argv[1])
    legacy_dir = (
        Path(sys.argv[2])
        if len(sys.argv) > 2
        else Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "legacy"
    )
    built = build_corpus(target, target / "SENTINEL", legacy_dir)
    for case in built:
        print(f"{case.name:32} {case.expected.__name__:20} {case.path}")
    print(f"{len(built)} hostile archives")
