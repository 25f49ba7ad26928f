"""Structure-aware fuzzing of hostile archives (issue 10, "What to build").

Starts from valid archives built in the test session (a format-2 torch bundle
with Adam state and params, a format-2 Keras bundle, a ``CheckpointManager``
folder, the legacy fixtures) and mutates their structure, never random bytes;
every format-2 mutation re-writes the manifest's sizes and digests, as an
attacker who writes the whole file would. Each case runs in one long-lived
worker process (``tests/fuzz_worker.py``) capped at ``RLIMIT_AS`` = 3 GiB; each
entry point must finish within 10 s of CPU and a case within 60 s (enforced by this
process, which kills and restarts the worker on a timeout or a crash). The
worker runs ``load`` (eager, ``into=``, and lazy with ``tensors()``), the CLI,
``inspect``, ``verify`` (must report, never raise; never ok for a file every
reading path must refuse), optimizer restore, and ``migrate`` for legacy
archives (a failure writes nothing), and checks that no array or written file
holds bytes of a secret file outside the archive.

Hypothesis is derandomized (CI is deterministic) and does not shrink: every
example runs, and a failing family lists, per distinct problem, the smallest
mutation that shows it, e.g.
``hdf5 v2_keras ('hdf5', 0, 'external_abs', 0): load(lazy=True).tensors holds
bytes of the secret file``. ``POLYBUNDLE_FUZZ_EXAMPLES`` sets the examples per
family (default 20). Counts and timings are printed at the end of the run.
Examples the fuzzer found and that were then fixed stay as replays in
:data:`FOUND` (``pytest -k found_examples`` runs them alone; add one there to
replay it).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from . import fuzz_mutators as fm
from .conftest import LEGACY_DIR, needs_tensorflow, needs_torch
from .fuzz_worker import SECRET_MARK, STEP_FILE, Worker, WorkerFailed

pytestmark = [needs_torch, needs_tensorflow]

EXAMPLES = int(os.environ.get("POLYBUNDLE_FUZZ_EXAMPLES", "20"))
LEGACY_SEEDS = {
    "legacy_torch": "torch_dill_era_shared.zip",
    "legacy_tf": "tf_era_shared.zip",
    "legacy_tf_arrays": "tf_era_arrays_shared.zip",
}

CONVERT_TO = {"v2_torch": "tensorflow", "v2_keras_arch": "torch"}
"""Seeds recorded with a builder in both frameworks: their cases also run ``convert``."""

FOUND: list[tuple[str, str, tuple[Any, ...], str]] = [
    ("json", "v2_torch", ("json", "params.json", "big", "keys", 200_000),
     "`polybundle inspect` spent 18 s of CPU rendering a 3 MB params.json"),
    ("tensor_spec", "v2_keras", ("spec", 0, "drop", None),
     "verify said ok for a Keras weights file holding a dataset the manifest does not list"),
    ("hdf5", "v2_keras", ("config", 0, "units", 2**31),
     "Keras allocated a [3, 2**31] kernel from config.json: ResourceExhaustedError"),
    ("hdf5", "v2_keras", ("config", 2, "kernel_size", None), "Keras' raw TypeError"),
    ("hdf5", "v2_keras", ("config", 3, "activation", -1), "Keras' raw TypeError"),
    ("hdf5", "v2_keras", ("config", 3, "name", 2**31), "Keras' raw TypeError"),
    ("hdf5", "v2_keras", ("config", 3, "use_bias", None), "verify ok, load failed"),
    ("hdf5", "v2_keras", ("config", 3, "dtype", "exec"), "Keras' raw TypeError"),
    ("hdf5", "legacy_tf", ("hdf5", 4, "float64", 32),
     "the legacy Keras reader returned float64 where the layer keeps float32"),
]
"""``(family, seed, mutation, what it found)``: examples the fuzzer found, since fixed.

:func:`test_found_examples_stay_fixed` replays each one, whatever the drawn
examples of a later run happen to be.
"""


class Fuzz:
    """Seeds, the secret, the worker, and what each family found."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.work = root / "work"
        self.cases = root / "cases"
        self.work.mkdir()
        self.cases.mkdir()
        secret = self.work / "secret.txt"
        secret.write_bytes(SECRET_MARK * 64 + os.urandom(32))
        self.env = fm.Env(secret, self.work / "secret.h5")
        self.worker = Worker(self.work)
        started = time.monotonic()
        paths = self.worker.call("build_seeds", str(root / "seeds"), timeout=300)
        legacy = {name: str(LEGACY_DIR / file) for name, file in LEGACY_SEEDS.items()}
        self.worker.warm_with("prepare", {**paths, **legacy})
        self.setup_seconds = time.monotonic() - started
        self.seeds: dict[str, fm.Seed] = {}
        for name in ("v2_torch", "v2_keras", "v2_keras_arch"):
            self.seeds[name] = fm.Seed(name, "v2", fm.members_of(Path(paths[name]).read_bytes()))
        for name, file in LEGACY_SEEDS.items():
            data = (LEGACY_DIR / file).read_bytes()
            self.seeds[name] = fm.Seed(name, "legacy", fm.members_of(data), fm.DEFLATED)
        self.seed_paths = {name: Path(path) for name, path in paths.items()}
        self.checkpoints = Path(paths["checkpoints"])
        self.outside = Path(paths["v2_torch"])
        fm.write_secret_h5(self.env, self._h5_shapes())
        self.runs: dict[str, int] = {}
        self.seconds: dict[str, float] = {}
        self.slowest: dict[str, float] = {}
        self.building: dict[str, float] = {}
        self.found: dict[str, list[tuple[str, tuple[Any, ...], str, str]]] = {}

    def _h5_shapes(self) -> list[tuple[int, ...]]:
        """Shapes of the Keras seed's weights, so secret datasets match them exactly."""
        import io

        import h5py

        shapes = []
        for name in ("v2_keras", "legacy_tf"):
            _, parts = fm.keras_parts(self.seeds[name])
            h5 = dict(parts)["model.weights.h5"]
            with h5py.File(io.BytesIO(h5), "r") as f:
                shapes += [f[n].shape for n in fm.h5_datasets(h5) if n.startswith("layers/")]
        return shapes

    def run(self, family: str, seed_name: str, mutation: tuple[Any, ...]) -> list[str]:
        """Build one mutated archive, run it in the worker, return the problems seen."""
        self.runs[family] = self.runs.get(family, 0) + 1
        seed = self.seeds.get(seed_name)
        spec: dict[str, Any] = {"seed": seed_name, "secret": str(self.env.secret)}
        if family == "checkpoint_index":
            spec.update(self._checkpoint_case(mutation))
        elif mutation[0] == "path":  # not an archive: a path the caller might be tricked into
            spec.update(
                path=self._special_path(mutation[1]), kind="legacy", expect="refuse",
                scratch=str(self.cases / "scratch"),
            )
        elif mutation[0] == "changed":  # the worker changes the file after loading it
            spec.update(
                path=str(self.cases / "changed.bundle"), kind="changed", expect="either",
                original=str(self.seed_paths[seed_name]), mutation=mutation,
            )
        else:
            started = time.monotonic()
            mutated = mutate(family, seed, mutation, self)
            self.building[family] = self.building.get(family, 0.0) + time.monotonic() - started
            path = self.cases / ("case.bundle" if seed.kind == "v2" else "case.zip")
            path.write_bytes(mutated.data)
            scratch = self.cases / "scratch"
            shutil.rmtree(scratch, ignore_errors=True)
            spec.update(
                path=str(path), kind=seed.kind, expect=mutated.expect,
                declared=mutated.declared, scratch=str(scratch), params=mutated.params,
                convert_to=CONVERT_TO.get(seed_name),
            )
        started = time.monotonic()
        try:
            result = self.worker.call("check_case", spec)
        except WorkerFailed as failure:
            step = self.work / STEP_FILE
            running = step.read_text() if step.exists() else "?"
            return [f"case did not finish: {failure} (time or memory bound), in {running}"]
        finally:
            spent = time.monotonic() - started
            self.slowest[family] = max(self.slowest.get(family, 0.0), spent)
        return result["problems"]

    def _special_path(self, kind: str) -> str:
        """A path that is no regular archive: a device, a FIFO, a folder, a link to the secret."""
        target = self.cases / f"special-{kind}"
        if target.is_symlink() or target.exists():
            return str(target)
        if kind == "fifo":
            os.mkfifo(target)
        elif kind == "directory":
            target.mkdir()
        elif kind == "empty":
            target.write_bytes(b"")
        elif kind == "link_to_secret":
            target.symlink_to(self.env.secret)
        else:
            return {"dev_zero": "/dev/zero", "proc_environ": "/proc/self/environ"}[kind]
        return str(target)

    def _checkpoint_case(self, mutation: tuple[Any, ...]) -> dict[str, Any]:
        import json

        folder = self.cases / "ckpt"
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(self.checkpoints, folder)
        shutil.copy(self.outside, self.cases / "outside.bundle")
        index = json.loads((folder / "checkpoints.json").read_bytes())
        text, damaged = fm.mutate_index(index, mutation, self.env)
        (folder / "checkpoints.json").write_bytes(text)
        return {"path": str(folder), "kind": "checkpoints", "expect": "either", "damaged": damaged}


MUTATORS: dict[str, Callable[[fm.Seed, tuple[Any, ...], fm.Env], fm.Mutated]] = {
    "json": fm.mutate_json,
    "record": fm.mutate_member_record,
    "spec": fm.mutate_tensor_spec,
    "hdf5": fm.mutate_hdf5,
    "config": fm.mutate_keras_config,
    "pth": fm.mutate_pickle,
    "pth_build": fm.mutate_pickle,
    "pth_saved": fm.mutate_pickle,
    "pth_storages": fm.mutate_pickle,
    "params": fm.mutate_legacy_params,
    "roles": fm.mutate_legacy_manifest,
    "opt": fm.mutate_optimizer,
    "slot": fm.mutate_optimizer,
    "opt_manifest": fm.mutate_optimizer,
}
"""Which mutator applies a mutation, by its first element."""


def mutate(family: str, seed: fm.Seed, mutation: tuple[Any, ...], fuzz: Fuzz) -> fm.Mutated:
    """Apply ``mutation`` to ``seed`` (``family`` is only for the report)."""
    if mutation[0] == "zip":
        other = fm.zip_of(fuzz.seeds["v2_keras"].members)
        return fm.mutate_zip(seed, mutation, fuzz.env, other)
    return MUTATORS[mutation[0]](seed, mutation, fuzz.env)


@pytest.fixture(scope="module")
def fuzz(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest):
    """The module's seeds and worker; prints examples and seconds per family at the end."""
    if not LEGACY_DIR.is_dir():
        pytest.skip(f"legacy fixtures not found at {LEGACY_DIR}")
    state = Fuzz(tmp_path_factory.mktemp("fuzz"))
    yield state
    try:
        memory = state.worker.call("peak")
    except (WorkerFailed, RuntimeError):
        memory = {}
    state.worker.close()
    lines = [f"structured fuzz: setup {state.setup_seconds:.1f} s, worker restarts "
             f"{state.worker.restarts}, RLIMIT_AS {state.worker.limit / 1024**3:.1f} GiB, worker "
             f"peak {memory.get('VmPeak', '?')} MiB address space, "
             f"{memory.get('VmHWM', '?')} MiB resident"]
    for family, count in state.runs.items():
        lines.append(
            f"  {family}: {count} examples, {state.seconds.get(family, 0):.1f} s (building "
            f"{state.building.get(family, 0):.1f} s, slowest case "
            f"{state.slowest.get(family, 0):.1f} s), "
            f"{len(state.found.get(family, []))} distinct problems"
        )
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print("\n" + "\n".join(lines))


def _kind(mutation: tuple[Any, ...]) -> tuple[str, ...]:
    """The mutation's kind: its first element and the names among the next two (no values)."""
    return (mutation[0], *(p for p in mutation[1:3] if isinstance(p, str) and len(p) < 40))


def _short(value: Any) -> str:
    """``repr`` of a mutation with long strings and lists abbreviated (``'9'*5004``)."""
    if isinstance(value, tuple):
        return "(" + ", ".join(_short(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    if isinstance(value, str) and len(value) > 40:
        return f"{value[:1]!r}*{len(value)}"
    if isinstance(value, list) and len(value) > 8:
        return f"[{_short(value[0])}]*{len(value)}"
    return repr(value)


def _signature(problem: str) -> str:
    return re.sub(r"\d+|'[^']*'|\S*/\S*", "#", problem)[:120]


def run_family(
    fuzz: Fuzz,
    family: str,
    strategy: st.SearchStrategy[tuple[str, tuple[Any, ...]]],
    must_run: list[tuple[str, tuple[Any, ...]]],
    examples: int = EXAMPLES,
) -> None:
    """Run ``examples`` drawn cases plus ``must_run``; fail listing one minimal case per problem."""
    found: dict[str, tuple[str, tuple[Any, ...], list[str]]] = {}
    started = time.monotonic()

    def one(drawn: tuple[str, tuple[Any, ...]]) -> None:
        seed, mutation = drawn
        problems = fuzz.run(family, seed, mutation)
        if problems:
            key = f"{seed} {_kind(mutation)} {_signature(problems[0])}"
            best = found.get(key)
            if best is None or len(repr(mutation)) < len(repr(best[1])):
                found[key] = (seed, mutation, problems)

    test = given(strategy)(one)
    for case in must_run:
        test = example(case)(test)
    settings(
        max_examples=examples, derandomize=True, database=None, deadline=None,
        phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck),
    )(test)()
    fuzz.seconds[family] = time.monotonic() - started
    fuzz.found[family] = list(found.values())
    if found:
        lines = [
            f"  {family} {s} {_short(m)}:\n      " + "\n      ".join(p[:6])
            for s, m, p in sorted(found.values(), key=lambda f: (f[0], _short(f[1])))
        ]
        pytest.fail(
            f"{len(found)} distinct problems in family {family!r} (minimal mutation each):\n"
            + "\n".join(lines),
            pytrace=False,
        )


def _seeded(seeds: list[str], mutations: st.SearchStrategy) -> st.SearchStrategy:
    return st.tuples(st.sampled_from(seeds), mutations)


V2 = ["v2_torch", "v2_keras", "v2_keras_arch"]
ALL = [*V2, *LEGACY_SEEDS]
DEPTHS = [1, 50, 200, 400, 1000, 5000, 100_000]
ODD_VALUES = [
    None, "", "x", "0.1", [], {}, -1, 1.5, True, 2**70, 1e308, "9" * 5000, ["x"], {"a": 1},
]
TERMINAL = [  # strings a terminal would act on: the CLI must show them inert
    "\x1b[2J\x1b[H", "[/red]", "[link=http://x]y[/link]", "\x1b]8;;http://x\x1b\\y\x1b]8;;\x1b\\",
    "\u202eexe.txt", "a\rb", "\x07\x9b31m",
]

json_mutations = st.one_of(
    st.tuples(
        st.just("json"), st.sampled_from(["manifest.json", "params.json"]), st.just("nest"),
        st.sampled_from(["root", "extra"]), st.sampled_from(DEPTHS),
        st.sampled_from(["list", "dict"]),
    ),
    st.tuples(
        st.just("json"), st.sampled_from(["manifest.json", "params.json"]), st.just("big"),
        st.sampled_from(["string", "keys", "list"]), st.sampled_from([10, 10**4, 200_000]),
    ),
    st.tuples(
        st.just("json"), st.just("manifest.json"), st.just("field"),
        st.sampled_from(["format_version", "writer.polybundle", "backend", "format", "models",
                         "members", "created", "models.0.role", "models.0.weights",
                         "writer.framework", "writer.framework_version"]),
        st.sampled_from(["2.0.0", "2.1.0", "3.0.0", "1.0.0", "9" * 5000 + ".0.0", "-1.0.0",
                         "\u0662.0.0", "2", "99999999999999999999.0.0", *ODD_VALUES,
                         *TERMINAL]),
    ),
    st.tuples(
        st.just("json"), st.just("params.json"), st.just("field"),
        st.sampled_from(["lr", "sizes", "units"]), st.sampled_from([*TERMINAL, *ODD_VALUES]),
    ),
    st.tuples(
        st.just("record"), st.integers(0, 4), st.sampled_from(["size", "sha256", "drop", "extra"]),
        st.sampled_from(["<upper>", "26", 26.0, -1, 2**64, 2**70, "0" * 64, "zz", *ODD_VALUES]),
    ),
)


def test_json_documents(fuzz: Fuzz) -> None:
    """Depth, size, version strings and field types of manifest.json and params.json."""
    run_family(
        fuzz, "json", _seeded(V2, json_mutations),
        [
            ("v2_torch", ("json", "manifest.json", "nest", "root", 100_000, "list")),
            ("v2_torch", ("json", "params.json", "nest", "extra", 5000, "dict")),
            ("v2_keras", ("json", "manifest.json", "field", "format_version", "9" * 5000 + ".0.0")),
            ("v2_torch", ("json", "params.json", "big", "keys", 200_000)),  # a 3 MB params.json
        ],
    )


spec_mutations = st.tuples(
    st.just("spec"), st.integers(0, 3),
    st.sampled_from(["dtype", "shape", "name", "key", "layout", "kind", "drop", "duplicate"]),
    st.sampled_from(["float32", "bfloat16", "float16", "float64", "int64", "float8_e4m3fn",
                     "complex64", "object", "<f4", "float32 ", "bool", "<swapped>", "<other>",
                     [-1, 3], [2**63], [2**62, 4], [2**31, 2**31], [1.5], ["3"], [], [0],
                     [True], [10**40], [[3]], [1] * 40, "../x", *TERMINAL, *ODD_VALUES]),
)


def test_tensor_specs(fuzz: Fuzz) -> None:
    """The manifest's dtype, shape, name and key of each tensor against what is stored."""
    run_family(
        fuzz, "tensor_spec", _seeded(V2, spec_mutations),
        [
            ("v2_torch", ("spec", 0, "shape", "<swapped>")),
            ("v2_keras", ("spec", 0, "shape", "<swapped>")),
            ("v2_torch", ("spec", 1, "dtype", "bfloat16")),
            ("v2_keras", ("spec", 2, "shape", [2**63])),
            ("v2_torch", ("spec", 0, "dtype", 1)),
            ("v2_torch", ("spec", 0, "name", "[/red]")),
            ("v2_keras", ("spec", 1, "layout", "\x1b]8;;http://x\x1b\\y\x1b]8;;\x1b\\")),
        ],
    )


HDF5_PROPS = [
    "external_abs", "external_rel", "external_proc", "virtual", "virtual_missing",
    "external_link", "soft_link", "hard_link", "gzip", "chunked", "fill_huge", "gzip_zeros",
    "float64", "bytes", "swapped", "scalar", "noop", "big_endian", "compact", "unallocated",
    "userblock",
]
hdf5_mutations = st.one_of(
    st.tuples(
        st.just("hdf5"), st.integers(0, 7), st.sampled_from(HDF5_PROPS), st.integers(0, 40),
    ),
    st.tuples(
        st.just("config"), st.integers(0, 3),
        st.sampled_from(["units", "use_bias", "activation", "dtype", "name", "kernel_size"]),
        st.sampled_from([4, 2**31, 2**40, 0, -1, None, "x", "exec", [3, 3], True, "relu"]),
    ),
)


def test_hdf5_datasets(fuzz: Fuzz) -> None:
    """model.weights.h5 inside model.keras: external storage, VDS, links, filters, shapes."""
    run_family(
        fuzz, "hdf5", _seeded(["v2_keras", "v2_keras_arch", "legacy_tf"], hdf5_mutations),
        [
            ("v2_keras", ("hdf5", 0, "external_abs", 0)),
            ("v2_keras_arch", ("hdf5", 0, "external_abs", 0)),
            ("legacy_tf", ("hdf5", 0, "external_rel", 0)),
            ("v2_keras", ("hdf5", 1, "virtual", 1)),
            ("v2_keras", ("hdf5", 0, "soft_link", 0)),
            ("v2_keras", ("hdf5", 0, "fill_huge", 40)),
            ("v2_keras", ("hdf5", 0, "float64", 0)),
            ("v2_keras", ("hdf5", 0, "swapped", 0)),
            ("v2_keras", ("hdf5", 0, "userblock", 0)),
            ("v2_keras", ("hdf5", 0, "big_endian", 0)),
            ("v2_keras", ("config", 0, "units", 2**31)),
        ],
    )


GEOMETRIES = [
    "noop", "stride0", "stride0_huge", "offset_past_end", "offset_negative", "storage_short",
    "storage_declares_more", "stride_negative", "stride_huge", "size_float", "size_huge",
    "size_negative", "wrong_storage_type", "transposed_view", "offset_view", "overlap",
    "big_endian", "missing_storage", "storage_key_escape", "shared_storage",
]
pickle_mutations = st.one_of(
    st.tuples(st.just("pth"), st.integers(0, 10), st.sampled_from(GEOMETRIES), st.integers(0, 99)),
    st.tuples(st.just("pth_build"), st.sampled_from(
        ["metadata", "none", "items_in_state", "slot_state", "both"])),
    st.tuples(st.just("pth_saved"), st.sampled_from(
        ["stride0", "stride0_in_full_storage", "stride0_1gib", "view_in_larger"])),
    st.tuples(st.just("pth_storages"), st.sampled_from([8, 1024])),
)


def test_torch_pickles(fuzz: Fuzz) -> None:
    """model.pth: storage geometry, BUILD state, torch.save'd strided views, many storages."""
    run_family(
        fuzz, "pickle", _seeded(["v2_torch", "legacy_torch"], pickle_mutations),
        [
            ("v2_torch", ("pth_saved", "stride0_1gib")),
            ("v2_torch", ("pth_saved", "stride0")),
            ("v2_torch", ("pth", 0, "stride0", 0)),
            ("legacy_torch", ("pth_saved", "stride0_1gib")),
            ("v2_torch", ("pth", 0, "offset_past_end", 1)),
            ("v2_torch", ("pth", 0, "storage_declares_more", 0)),
            ("v2_torch", ("pth_build", "items_in_state")),
            ("v2_torch", ("pth_storages", 1024)),
            ("v2_torch", ("pth", 0, "transposed_view", 0)),
        ],
    )


legacy_mutations = st.one_of(
    st.tuples(
        st.just("params"),
        st.sampled_from(["stride0_tensor", "offset_tensor", "deep_list", "big_array"]),
        st.sampled_from([1, 64, 2**12, 2**14]),
    ),
    st.tuples(
        st.just("params"), st.just("array"),
        st.sampled_from(["plain", "shape_more_than_data", "shape_huge", "shape_2d_huge",
                         "shape_negative", "shape_float", "zero_by_huge", "dims_many",
                         "big_endian", "fortran", "object", "structured", "data_not_bytes",
                         "version_9", "datetime"]),
    ),
    st.tuples(
        st.just("roles"), st.sampled_from(["rename", "add", "duplicate", "version", "models"]),
        st.sampled_from(["../autoencoder", "/etc", "", "a" * 300, "\x1b]8;;x\x07", "net/../x",
                         "autoencoder", "9" * 5000, None, 5, ["x"], {"a": 1}]),
    ),
)


def test_legacy_pickles(fuzz: Fuzz) -> None:
    """Legacy params.dill (strided tensors, deep lists, big arrays) and manifest.dill roles."""
    run_family(
        fuzz, "legacy_dill", _seeded(list(LEGACY_SEEDS), legacy_mutations),
        [
            ("legacy_torch", ("params", "stride0_tensor", 2**14)),
            ("legacy_tf", ("roles", "rename", "../autoencoder")),
            ("legacy_tf_arrays", ("params", "array", "shape_huge")),
            ("legacy_tf_arrays", ("params", "array", "zero_by_huge")),
            ("legacy_torch", ("params", "array", "fortran")),
        ],
    )


zip_mutations = st.tuples(
    st.just("zip"),
    st.sampled_from([
        "truncate", "append_zip", "prepend_zip", "comment", "deflate_all", "reorder",
        "local_extra", "alias", "dir_entry", "dir_symlink", "dir_listed", "symlink_mode",
        "duplicate", "cd_offset",
    ]),
    st.integers(0, 10**6),
)


def test_zip_records(fuzz: Fuzz) -> None:
    """Central-directory aliasing, directory entries, appended/prepended zips, truncation."""
    run_family(
        fuzz, "zip", _seeded(ALL, zip_mutations),
        [
            ("v2_torch", ("zip", "alias", 255)),
            ("v2_keras", ("zip", "alias", 59)),  # would alias manifest.json: the mutator skips it
            ("v2_torch", ("zip", "dir_listed", 0)),
            ("v2_keras", ("zip", "dir_symlink", 0)),
            ("v2_torch", ("zip", "prepend_zip", 1)),
            ("v2_torch", ("zip", "append_zip", 1)),
        ],
    )


optimizer_mutations = st.one_of(
    st.tuples(
        st.just("opt"),
        st.sampled_from([
            "step", "groups.0.hyperparameters.learning_rate", "native.param_groups.0.lr",
            "native.param_groups.0.betas", "algorithm", "groups.0.parameters", "slots.0.weight",
            "groups", "slots", "class", "backend", "schedule", "format", "version", "native",
        ]),
        st.sampled_from([*ODD_VALUES, float("nan"), 0.001, 1, 2**64]),
    ),
    st.tuples(
        st.just("slot"), st.integers(0, 7), st.sampled_from(["dtype", "shape", "data_offsets"]),
        st.sampled_from(["BF16", "F8_E4M3", "F8_E5M2", "F64", "F16", "I64", "BOOL", "X",
                         "<swapped>",
                         [-1], [2**63], [2**40, 2**40], [], [1.5], [0, 2**40], [-1, 4], [10, 2],
                         [0, 0], None]),
    ),
    st.tuples(
        st.just("opt_manifest"), st.sampled_from(["step", "algorithm", "state", "slots"]),
        st.sampled_from([*ODD_VALUES, "net/model.pth", "params.json"]),
    ),
)


def test_optimizer_documents(fuzz: Fuzz) -> None:
    """optimizer.json fields (lr types, step), slot dtype/shape/offsets, the manifest's entry."""
    run_family(
        fuzz, "optimizer", _seeded(["v2_torch", "v2_keras_arch"], optimizer_mutations),
        [
            ("v2_torch", ("opt", "native.param_groups.0.lr", "0.1")),
            ("v2_torch", ("opt", "groups.0.hyperparameters.learning_rate", None)),
            ("v2_torch", ("slot", 0, "dtype", "BF16")),
            ("v2_torch", ("slot", 0, "dtype", "F8_E4M3")),
            ("v2_torch", ("opt", "step", -1)),
            ("v2_keras_arch", ("opt", "groups.0.hyperparameters.learning_rate", "0.1")),
            ("v2_keras_arch", ("slot", 0, "dtype", "BF16")),
            ("v2_keras_arch", ("slot", 1, "shape", "<swapped>")),
        ],
    )


index_mutations = st.one_of(
    st.tuples(
        st.just("index"),
        st.sampled_from(["checkpoints.0.file", "checkpoints.1.file"]),
        st.sampled_from(["../outside.bundle", "/etc/passwd", "<secret>", "", ".", "..",
                         "sub/x.bundle", "checkpoint-0000000009.bundle", "checkpoints.json",
                         "x\x00y", "..\\outside.bundle", 5, None, ["a"]]),
    ),
    st.tuples(
        st.just("index"),
        st.sampled_from(["checkpoints.1.step", "checkpoints.1.metrics", "checkpoints.0",
                         "checkpoints", "history", "history.0", "format", "version",
                         "checkpoints.1.created"]),
        st.sampled_from(ODD_VALUES),
    ),
    st.tuples(st.just("index"), st.just("deep"), st.sampled_from(DEPTHS)),
    st.tuples(st.just("index"), st.just("text"), st.sampled_from(["", "{", "[]", "null", None])),
)


def test_checkpoint_index(fuzz: Fuzz) -> None:
    """checkpoints.json: ``file`` outside the folder, wrong types, depth; saving still works."""
    run_family(
        fuzz, "checkpoint_index", _seeded(["checkpoints"], index_mutations),
        [
            ("checkpoints", ("index", "checkpoints.1.file", "../outside.bundle")),
            ("checkpoints", ("index", "checkpoints.1.file", "<secret>")),
            ("checkpoints", ("index", "checkpoints.1.step", "1")),
            ("checkpoints", ("index", "checkpoints", None)),
        ],
    )


changed_mutations = st.tuples(st.just("changed"), st.integers(0, 3), st.integers(0, 63))


def test_changed_after_load(fuzz: Fuzz) -> None:
    """A byte of a stored tensor changes in place after load: tensors() notices or is unaffected."""
    run_family(
        fuzz, "changed_after_load", _seeded(V2, changed_mutations),
        [("v2_torch", ("changed", 0, 0)), ("v2_keras", ("changed", 0, 0))],
        examples=max(EXAMPLES // 2, 8),
    )


PATH_KINDS = ["dev_zero", "proc_environ", "fifo", "directory", "empty", "link_to_secret"]


def test_paths(fuzz: Fuzz) -> None:
    """Paths that are no archive: /dev/zero, a FIFO, a folder, a link to a secret file."""
    run_family(
        fuzz, "paths", st.tuples(st.just("path"), st.tuples(st.just("path"), st.sampled_from(
            PATH_KINDS))), [("path", ("path", kind)) for kind in PATH_KINDS], examples=1,
    )


@pytest.mark.parametrize(
    ("family", "seed", "mutation"),
    [pytest.param(*found[:3], id=repr(found[:3])[:80]) for found in FOUND],
)
def test_found_examples_stay_fixed(
    fuzz: Fuzz, family: str, seed: str, mutation: tuple[Any, ...]
) -> None:
    """Each example the fuzzer once found (see :data:`FOUND`) gives no problem now."""
    problems = fuzz.run(family, seed, mutation)
    assert not problems, "\n".join(problems)


def test_valid_seeds_load_clean(fuzz: Fuzz) -> None:
    """The fuzzer's oracle passes every unmutated seed (so each problem it reports is real)."""
    for seed in fuzz.seeds:
        family = "zip"
        problems = fuzz.run(family, seed, ("zip", "reorder", 0))
        assert not problems, f"{seed}: {problems}"
    assert not fuzz.run("checkpoint_index", "checkpoints", ("index", "version", 1))

