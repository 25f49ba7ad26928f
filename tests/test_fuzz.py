"""Property-based fuzzing: byte mutations of valid archives of every era raise only PolybundleError.

Seeds: the two real legacy archives, a PyTorch JSON era archive built from
them, and format-2 bundles migrated from both. Each example flips, inserts
or cuts bytes, then runs ``load`` and ``verify``; anything but a
:class:`PolybundleError` (or success) fails, and so does a case over the
time bound. ``verify`` must never raise at all.
"""

from __future__ import annotations

import json
import time
import zipfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import polybundle
from polybundle.errors import PolybundleError
from polybundle.safety.unpickle import safe_loads

from .conftest import LEGACY_DIR

SECONDS_PER_CASE = 5.0
EXAMPLES_PER_SEED = 300

if not LEGACY_DIR.is_dir():
    pytest.skip(f"legacy fixtures not found at {LEGACY_DIR}", allow_module_level=True)


def _seeds(folder):
    torch_era = LEGACY_DIR / "torch_dill_era_shared.zip"
    tf_era = LEGACY_DIR / "tf_era_shared.zip"
    json_era = folder / "json_era.zip"
    with zipfile.ZipFile(torch_era) as source, zipfile.ZipFile(json_era, "w") as out:
        out.writestr(
            "manifest.json",
            json.dumps(
                {
                    "models": ["autoencoder"],
                    "version": "2.0-pytorch",
                    "manifest_version": "torch-manifest-v1",
                    "backend": "pytorch",
                }
            ),
        )
        params = safe_loads(source.read("autoencoder/params.dill"), where="params.dill")
        out.writestr("autoencoder/params.json", json.dumps(params))
        out.writestr("autoencoder/model.pth", source.read("autoencoder/model.pth"))
    seeds = {
        "torch_dill": torch_era.read_bytes(),
        "tf_dill": tf_era.read_bytes(),
        "torch_json": json_era.read_bytes(),
    }
    for name, source in (("v2_torch", torch_era), ("v2_tf", tf_era)):
        polybundle.migrate(source, folder / f"{name}.bundle")
        seeds[name] = (folder / f"{name}.bundle").read_bytes()
    return seeds


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    return _seeds(tmp_path_factory.mktemp("seeds"))


runs: dict[str, int] = {}
"""Examples run per seed (checked, so the fuzzing cannot silently shrink to nothing)."""

mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 2**31), st.integers(1, 255)),
    st.tuples(st.just("insert"), st.integers(0, 2**31), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("cut"), st.integers(0, 2**31), st.integers(1, 64)),
)


def _mutate(data: bytes, mutations) -> bytes:
    buffer = bytearray(data)
    for kind, position, value in mutations:
        index = position % max(len(buffer), 1)
        if kind == "flip" and buffer:
            buffer[index] ^= value
        elif kind == "insert":
            buffer[index:index] = value
        else:
            del buffer[index : index + value]
    return bytes(buffer)


def _mutate_member(data: bytes, index: int, mutations) -> bytes:
    """Mutate one member's uncompressed bytes and re-zip with a correct CRC (reaches parsers)."""
    import io

    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as source, zipfile.ZipFile(out, "w") as target:
        infos = source.infolist()
        chosen = infos[index % len(infos)].filename
        for info in infos:
            content = source.read(info)
            if info.filename == chosen:
                content = _mutate(content, mutations)
            target.writestr(info, content)
    return out.getvalue()


@pytest.mark.parametrize("seed", ["torch_dill", "tf_dill", "torch_json", "v2_torch", "v2_tf"])
def test_mutated_archives_raise_only_polybundle_errors(seeds, seed, tmp_path):
    path = tmp_path / "mutated.zip"

    @settings(
        max_examples=EXAMPLES_PER_SEED,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(st.lists(mutation, min_size=1, max_size=4), st.none() | st.integers(0, 20))
    def check(mutations, member):
        runs[seed] = runs.get(seed, 0) + 1
        if member is None:
            path.write_bytes(_mutate(seeds[seed], mutations))
        else:
            path.write_bytes(_mutate_member(seeds[seed], member, mutations))
        started = time.monotonic()
        try:
            polybundle.load(path, lazy=seed.startswith("v2"))
        except PolybundleError:
            pass
        polybundle.verify(path)
        assert time.monotonic() - started < SECONDS_PER_CASE

    check()
    assert runs[seed] >= EXAMPLES_PER_SEED
