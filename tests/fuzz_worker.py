"""The subprocess that runs each structured-fuzz case under a memory and time bound.

:class:`Worker` (used by ``tests/test_fuzz_structured.py``) starts one long-lived
process (``spawn``) whose address space is capped with ``RLIMIT_AS``
(:data:`MEMORY_LIMIT`); each entry point gets :data:`SECONDS_PER_STEP`, and the
parent waits at most :data:`SECONDS_PER_CASE` for each case and kills and restarts
the process on a timeout or a crash. Inside the process, :func:`check_case` runs
every entry point on one mutated archive (``load`` eager, ``into=`` and lazy with
``tensors()``, ``inspect``, ``verify``, the CLI, optimizer restore, ``migrate`` for
legacy archives, ``convert``, the ``CheckpointManager`` for a checkpoint folder)
and returns the rules it saw broken, as plain strings. The only allowed outcomes
are correct data or a ``PolybundleError``; ``verify`` never raises and never says
ok for a file that every reading path refuses.

Usage::

    worker = Worker(Path("/tmp/work"))
    worker.call("build_seeds", "/tmp/work/seeds")
"""

from __future__ import annotations

import hashlib
import math
import multiprocessing
import os
import resource
import time
import traceback
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

MEMORY_LIMIT = int(float(os.environ.get("POLYBUNDLE_FUZZ_MEMORY_GIB", "3")) * 1024**3)
"""RLIMIT_AS of the worker: a plain import of torch, TensorFlow and Keras plus a load
peaks at about 2.2 GiB of address space, so a case gets under 1 GiB on top
(``POLYBUNDLE_FUZZ_MEMORY_GIB`` changes it where the frameworks need more)."""

MAX_BYTES = 256 * 1024**2
"""``max_bytes=`` given to every entry point that takes it: past this, a ``BudgetExceededError``
is the only allowed outcome (RLIMIT_AS still catches an allocation that skips the budget)."""

SECONDS_PER_STEP = 10.0
"""CPU-time bound of one entry point on one archive, checked in the worker (CPU time, not
wall time, so a busy machine does not make a case fail; a hang is caught by the parent)."""

SECONDS_PER_CASE = 60.0
"""Wall-clock bound of one case (a dozen entry points), enforced by the parent, which kills
the worker: a hang, or a step far past :data:`SECONDS_PER_STEP`."""

SECRET_MARK = b"PBSECRET"
"""Repeated through the secret file: 15 contiguous bytes read from it contain this mark."""

STEP_FILE = Path("current_step")
"""Written (in the worker's folder) with the label of the entry point now running."""

ARCH = "fuzz-mlp"
TORCH_CONFIG = {"inputs": 3, "hidden": 4, "outputs": 2}


class WorkerFailed(Exception):
    """The worker timed out or died (a crash, or the kernel killing it for memory)."""


# --- the parent's side ----------------------------------------------------------------------


class Worker:
    """One long-lived, memory-capped worker process; restarted after a timeout or crash.

    Usage::

        Worker(Path("/tmp/w")).call("ping")
        # -> 'pong'
    """

    def __init__(self, cwd: Path, limit: int = MEMORY_LIMIT) -> None:
        self.cwd = cwd
        self.limit = limit
        self.restarts = 0
        self._process: multiprocessing.process.BaseProcess | None = None
        self._conn: Connection | None = None
        self._warmup: tuple[str, tuple[Any, ...]] | None = None

    def _start(self) -> None:
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        self._process = context.Process(
            target=serve, args=(child, self.limit, str(self.cwd)), daemon=True
        )
        self._process.start()
        child.close()
        self._conn = parent
        if self._warmup is not None:
            name, args = self._warmup
            self.call(name, *args, timeout=300)

    def warm_with(self, name: str, *args: Any) -> Any:
        """Call ``name`` now and again after each restart (seeds, references, lazy imports)."""
        self._warmup = (name, args)
        return self.call(name, *args, timeout=300)

    def call(self, name: str, *args: Any, timeout: float = SECONDS_PER_CASE) -> Any:
        """Run ``name(*args)`` in the worker; raise :class:`WorkerFailed` on timeout or crash."""
        if self._process is None or not self._process.is_alive():
            self._start()
        assert self._conn is not None and self._process is not None
        self._conn.send((name, args))
        if not self._conn.poll(timeout):
            exitcode = self._process.exitcode
            self.kill()
            raise WorkerFailed(
                f"no answer within {timeout:.0f} s" if exitcode is None else f"died ({exitcode})"
            )
        try:
            status, value = self._conn.recv()
        except (EOFError, OSError):
            self._process.join(5)
            exitcode = self._process.exitcode
            self.kill()
            raise WorkerFailed(f"worker died (exit code {exitcode})") from None
        if status == "raised":
            raise RuntimeError(f"worker function {name} raised:\n{value}")
        return value

    def kill(self) -> None:
        """Stop the worker process (the next call starts a new one)."""
        if self._process is not None:
            self._process.kill()
            self._process.join(10)
            self.restarts += 1
        if self._conn is not None:
            self._conn.close()
        self._process, self._conn = None, None

    def close(self) -> None:
        """Stop the worker for good."""
        self.kill()
        self.restarts -= 1


# --- the worker's side ----------------------------------------------------------------------


def serve(conn: Connection, limit: int, cwd: str) -> None:
    """Worker main loop: cap memory, import the frameworks, answer calls until EOF."""
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    os.chdir(cwd)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    import warnings

    warnings.simplefilter("ignore")
    _register_architecture()
    while True:
        try:
            name, args = conn.recv()
        except EOFError:
            return
        try:
            conn.send(("ok", globals()[name](*args)))
        except BaseException:  # reported to the parent, which fails the test
            conn.send(("raised", traceback.format_exc(limit=-8)))


def ping() -> str:
    """Answer ``'pong'`` (a liveness check)."""
    return "pong"


def peak() -> dict[str, int]:
    """Return the worker's peak address space and resident set, in MiB."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmPeak", "VmHWM"):
            fields[key] = int(value.split()[0]) // 1024
    return fields


def _register_architecture() -> None:
    import polybundle

    @polybundle.architecture(ARCH, backend="torch")
    def _mlp(config: dict[str, Any]) -> Any:
        import torch

        return torch.nn.Sequential(
            torch.nn.Linear(config["inputs"], config["hidden"]),
            torch.nn.ReLU(),
            torch.nn.Linear(config["hidden"], config["outputs"]),
        )

    @polybundle.architecture(ARCH, backend="tensorflow")
    def _keras_mlp(config: dict[str, Any]) -> Any:
        import keras

        inputs = keras.Input((config["inputs"],))
        hidden = keras.layers.Dense(config["hidden"], name="h")(inputs)
        return keras.Model(inputs, keras.layers.Dense(config["outputs"], name="d")(hidden))


def _torch_model_and_adam() -> tuple[Any, Any]:
    import torch

    import polybundle

    torch.manual_seed(0)
    model = polybundle.build(ARCH, TORCH_CONFIG, backend="torch")
    adam = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(5, 3)).sum().backward()
    adam.step()
    return model, adam


def build_seeds(folder: str) -> dict[str, str]:
    """Write the valid format-2 seeds under ``folder``; return ``{seed name: path}``."""
    import keras

    import polybundle

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    model, adam = _torch_model_and_adam()
    polybundle.save(
        out / "v2_torch.bundle", {"net": model}, params={"lr": 1e-3, "sizes": [3, 4, 2]},
        optimizers={"net": adam},
    )
    manager = polybundle.CheckpointManager(out / "checkpoints", keep_last=2)
    for step in (1, 2):
        manager.save(step, {"net": model}, optimizers={"net": adam}, metrics={"loss": 1.0 / step})
    keras.utils.set_random_seed(0)
    inputs = keras.Input((3,))
    hidden = keras.layers.Dense(4, name="h")(inputs)
    net = keras.Model(inputs, keras.layers.Dense(2, name="d")(hidden))
    polybundle.save(out / "v2_keras.bundle", {"net": net}, params={"units": [4, 2]})
    built = polybundle.build(ARCH, TORCH_CONFIG, backend="tensorflow")
    built.set_weights(net.get_weights())
    keras_adam = keras.optimizers.Adam(1e-3)
    variables = built.trainable_variables
    keras_adam.apply([keras.ops.ones_like(v) for v in variables], variables)
    polybundle.save(
        out / "v2_keras_arch.bundle", {"net": built}, params={"units": [4, 2]},
        optimizers={"net": keras_adam},
    )
    return {
        "v2_torch": str(out / "v2_torch.bundle"),
        "v2_keras": str(out / "v2_keras.bundle"),
        "v2_keras_arch": str(out / "v2_keras_arch.bundle"),
        "checkpoints": str(out / "checkpoints"),
    }


# reference data of each seed, computed once per worker process by :func:`prepare`
_REFERENCE: dict[str, dict[str, Any]] = {}


def prepare(seeds: dict[str, str]) -> dict[str, Any]:
    """Load every valid seed once (warms the frameworks); remember its data as the reference."""
    import polybundle

    summary = {}
    for name, path in seeds.items():
        if name == "checkpoints":
            continue
        bundle = polybundle.load(path, lazy=True)
        tensors = {
            role: {k: _array(v) for k, v in bundle.tensors(role).items()} for role in bundle.roles
        }
        _REFERENCE[name] = {"params": bundle.params, "tensors": tensors}
        eager = polybundle.load(path)
        if name.startswith("v2_"):
            _REFERENCE[f"{name}:model"] = _model_arrays(eager.models["net"])
        summary[name] = {role: sorted(t) for role, t in tensors.items()}
    return summary


# --- one case ---------------------------------------------------------------------------------


def _budget(function: Any) -> dict[str, Any]:
    """Return ``{"max_bytes": MAX_BYTES}`` when ``function`` takes it (else nothing)."""
    import inspect

    return {"max_bytes": MAX_BYTES} if "max_bytes" in inspect.signature(function).parameters else {}


def _array(value: Any) -> Any:
    import numpy as np

    return np.array(value, copy=True)


def _model_arrays(model: Any) -> dict[str, Any]:
    """Return a native model's weights as ``{name: numpy array}``."""
    if hasattr(model, "state_dict"):
        return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}
    return {v.path: _array(v) for v in model.weights}


class Case:
    """Outcomes of one case's entry points and the rules seen broken."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.problems: list[str] = []
        self.outcomes: dict[str, str] = {}
        self.arrays: list[tuple[str, Any]] = []

    def attempt(self, label: str, call: Any) -> Any:
        """Run ``call()``; a PolybundleError is an allowed outcome, anything else a problem."""
        from polybundle.errors import PolybundleError

        STEP_FILE.write_text(label)  # the parent names the step when the case times out
        started = time.process_time()
        try:
            value = call()
        except PolybundleError as exc:
            self.outcomes[label] = f"{type(exc).__name__}: {str(exc)[:160]}"
            return None
        except BaseException as exc:  # the rule under test: only PolybundleError escapes
            where = traceback.extract_tb(exc.__traceback__)[-1]
            self.problems.append(
                f"{label} raised {type(exc).__name__} (not a PolybundleError): "
                f"{str(exc)[:200]} [at {Path(where.filename).name}:{where.lineno}]"
            )
            self.outcomes[label] = f"raw {type(exc).__name__}"
            return None
        finally:
            spent = time.process_time() - started
            if spent > SECONDS_PER_STEP:
                self.problems.append(
                    f"{label} took {spent:.0f} s of CPU (bound {SECONDS_PER_STEP:.0f} s)"
                )
        self.outcomes[label] = "ok"
        return value

    def ok(self, label: str) -> bool:
        """Return True when entry point ``label`` succeeded."""
        return self.outcomes.get(label) == "ok"


def check_case(spec: dict[str, Any]) -> dict[str, Any]:
    """Run every entry point on ``spec['path']``; return ``{'problems', 'outcomes'}``.

    ``spec``: ``path``, ``kind`` (``v2``, ``legacy`` or ``checkpoints``), ``seed``
    (the reference's name), ``expect`` (``same``, ``refuse`` or ``either``),
    ``secret`` (the secret file) and ``scratch`` (a folder for migrate's output).
    """
    case = Case(spec)
    if spec["kind"] == "checkpoints":
        _check_checkpoints(case)
    elif spec["kind"] == "changed":
        _check_changed(case)
    else:
        _check_archive(case)
    _check_secret(case)
    return {"problems": case.problems, "outcomes": case.outcomes}


def _check_archive(case: Case) -> None:
    import polybundle

    spec = case.spec
    path = spec["path"]
    eager = case.attempt("load", lambda: _eager(case, path))
    if spec["kind"] == "v2":
        case.attempt("load(into=)", lambda: _into(case, path))
    lazy = case.attempt("load(lazy=True).tensors", lambda: _lazy(path))
    case.attempt("inspect", lambda: polybundle.inspect(path, **_budget(polybundle.inspect)))
    for command in ("inspect", "verify"):
        _cli(case, command, path)
    report = _verify(case, path)
    if spec["kind"] == "legacy":
        _migrate(case)
    if spec.get("convert_to"):
        _convert(case)
    for label, data in (("load", eager), ("load(lazy=True).tensors", lazy)):
        if data is not None:
            _check_data(case, label, data)
    if eager is not None and lazy is not None:
        for role, tensors in eager["tensors"].items():
            if not _same_arrays(tensors, lazy["tensors"].get(role, {})):
                case.problems.append(f"eager and lazy tensors of {role!r} differ")
    if spec["expect"] == "refuse":
        for label in ("load", "load(into=)", "load(lazy=True).tensors", "migrate"):
            if case.ok(label):
                case.problems.append(f"{label} accepted a hostile file (expected an error)")
    if report is not None and report.ok:
        if spec["expect"] == "refuse":
            case.problems.append("verify says ok for a file every reading path must refuse")
        if not case.ok("load"):
            case.problems.append(f"verify says ok but load fails ({case.outcomes.get('load')})")


def _eager(case: Case, path: str) -> dict[str, Any]:
    import polybundle

    bundle = polybundle.load(path, **_budget(polybundle.load))
    data: dict[str, Any] = {"params": bundle.params, "tensors": {}}
    for role in bundle.roles:
        data["tensors"][role] = {k: _array(v) for k, v in bundle.tensors(role).items()}
        model = case.attempt(f"load().models[{role!r}]", lambda r=role: bundle.models[r])
        if model is not None:
            for name, array in _model_arrays(model).items():
                case.arrays.append((f"model {role}/{name}", array))
            if bundle.has_optimizer(role):
                case.attempt(
                    f"restore_optimizer({role!r})",
                    lambda r=role, m=model: _optimizer(case, bundle, r, m),
                )
    return data


def _fresh_model(backend: str) -> Any:
    """A new, differently initialised model of the seed's architecture."""
    if backend == "torch":
        return _torch_model_and_adam()[0]
    import keras

    inputs = keras.Input((3,))
    hidden = keras.layers.Dense(4, name="h")(inputs)
    return keras.Model(inputs, keras.layers.Dense(2, name="d")(hidden))


def _into(case: Case, path: str) -> dict[str, Any]:
    """``load(into=)`` a fresh model; its weights must then be the reference's."""
    import polybundle

    backend = "torch" if case.spec["seed"].startswith("v2_torch") else "tensorflow"
    model = _fresh_model(backend)
    polybundle.load(path, into={"net": model}, **_budget(polybundle.load))
    weights = _model_arrays(model)
    for name, array in weights.items():
        case.arrays.append((f"load(into=) {name}", array))
    reference = _REFERENCE.get(f"{case.spec['seed']}:model", {})
    if case.spec["expect"] != "either" and reference and not _same_arrays(weights, reference):
        case.problems.append("load(into=) gave weights other than the original")
    return weights


def _check_lr(case: Case, lr: Any) -> None:
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr):
        case.problems.append(f"restore_optimizer accepted lr={lr!r} (expected a finite number)")
    elif lr < 0:
        case.problems.append(f"restore_optimizer accepted a negative lr={lr!r}")


def _keras_optimizer(case: Case, bundle: Any, role: str, model: Any) -> None:
    """Restore into a fresh Keras Adam; its lr, step and moments must be sane."""
    import keras

    adam = keras.optimizers.Adam()
    bundle.restore_optimizer(role, adam)
    _check_lr(case, float(keras.ops.convert_to_numpy(adam.learning_rate)))
    step = int(keras.ops.convert_to_numpy(adam.iterations))
    if step < 0:
        case.problems.append(f"restored optimizer step is {step!r}")
    slots = {v.path.split("/", 1)[-1]: v for v in adam.variables}
    for variable in model.trainable_variables:
        for slot in ("momentum", "velocity"):
            found = slots.get(f"{variable.path.replace('/', '_')}_{slot}")
            if found is not None and (
                tuple(found.shape) != tuple(variable.shape) or found.dtype != variable.dtype
            ):
                case.problems.append(
                    f"restored slot {slot} of {variable.path} is {tuple(found.shape)} "
                    f"{found.dtype}; the variable is {tuple(variable.shape)} {variable.dtype}"
                )


def _optimizer(case: Case, bundle: Any, role: str, model: Any) -> None:
    import numpy as np

    state = bundle.optimizer_state(role)
    for name, slots in state.slots.items():
        for slot, array in slots.items():
            case.arrays.append((f"optimizer slot {slot}/{name}", np.asarray(array)))
    if not hasattr(model, "state_dict"):
        _keras_optimizer(case, bundle, role, model)
        return
    import torch

    adam = torch.optim.Adam(model.parameters())
    bundle.restore_optimizer(role, adam)
    for group in adam.param_groups:
        _check_lr(case, group["lr"])
    for parameter in model.parameters():
        for slot, value in adam.state.get(parameter, {}).items():
            if slot in ("exp_avg", "exp_avg_sq") and (
                tuple(value.shape) != tuple(parameter.shape) or value.dtype != parameter.dtype
            ):
                case.problems.append(
                    f"restored slot {slot} is {tuple(value.shape)} {value.dtype}; the parameter "
                    f"is {tuple(parameter.shape)} {parameter.dtype}"
                )
            if slot == "step":
                step = float(value)
                if not math.isfinite(step) or step < 0 or step != int(step):
                    case.problems.append(f"restored optimizer step is {step!r}")


def _lazy(path: str) -> dict[str, Any]:
    import polybundle

    bundle = polybundle.load(path, lazy=True, **_budget(polybundle.load))
    tensors = {
        role: {k: _array(v) for k, v in bundle.tensors(role).items()} for role in bundle.roles
    }
    return {"params": bundle.params, "tensors": tensors}


_CONTROL = {chr(c) for c in [*range(0, 32), *range(127, 160)]} - {"\n"}


def _cli(case: Case, command: str, path: str) -> None:
    """``polybundle COMMAND PATH``: exits with a status, prints no control character."""
    import contextlib
    import io

    from polybundle.tools import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = case.attempt(f"cli {command}", lambda: cli.main([command, path]))
    if case.outcomes[f"cli {command}"] != "ok":
        outcome = case.outcomes[f"cli {command}"]
        case.problems.append(f"cli {command} raised instead of exiting ({outcome})")
    elif not isinstance(status, int):
        case.problems.append(f"cli {command} returned {status!r}, not an exit status")
    text = out.getvalue() + err.getvalue()
    found = sorted({repr(c) for c in text if c in _CONTROL})
    if found:
        case.problems.append(f"cli {command} printed control characters {', '.join(found)}")
    if "Traceback" in text:
        case.problems.append(f"cli {command} printed a traceback")


def _verify(case: Case, path: str) -> Any:
    import polybundle

    try:
        report = polybundle.verify(path, **_budget(polybundle.verify))
    except BaseException as exc:  # verify must report, never raise
        case.problems.append(f"verify raised {type(exc).__name__}: {str(exc)[:200]}")
        case.outcomes["verify"] = f"raised {type(exc).__name__}"
        return None
    case.outcomes["verify"] = "ok" if report.ok else "reported problems"
    return report


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _migrate(case: Case) -> None:
    import polybundle

    scratch = Path(case.spec["scratch"])
    scratch.mkdir(parents=True, exist_ok=True)
    before = _snapshot(scratch)
    target = scratch / "migrated.bundle"
    migrate = polybundle.migrate
    case.attempt("migrate", lambda: migrate(case.spec["path"], target, **_budget(migrate)))
    after = _snapshot(scratch)
    if not case.ok("migrate"):
        if after != before:
            case.problems.append(
                f"migrate failed but wrote {sorted(set(after) - set(before))} in the target folder"
            )
        return
    if target.exists():
        data = target.read_bytes()
        if SECRET_MARK in data:
            case.problems.append("migrate wrote bytes of the secret file into its output")
        report = _verify(case, str(target))
        if report is not None and not report.ok:
            case.problems.append("migrate wrote a bundle that verify does not accept")
        target.unlink()


def _convert(case: Case) -> None:
    """``convert`` to the other framework: a failure writes nothing, an output holds no secret."""
    import polybundle

    scratch = Path(case.spec["scratch"])
    scratch.mkdir(parents=True, exist_ok=True)
    before = _snapshot(scratch)
    target = scratch / "converted.bundle"
    convert, backend = polybundle.convert, case.spec["convert_to"]
    case.attempt("convert", lambda: convert(case.spec["path"], target, backend=backend,
                                            **_budget(convert)))
    after = _snapshot(scratch)
    if not case.ok("convert"):
        if after != before:
            case.problems.append(f"convert failed but wrote {sorted(set(after) - set(before))}")
        return
    if case.spec["expect"] == "refuse":
        case.problems.append("convert accepted a hostile file (expected an error)")
    if target.exists():
        if SECRET_MARK in target.read_bytes():
            case.problems.append("convert wrote bytes of the secret file into its output")
        report = _verify(case, str(target))
        if report is not None and not report.ok:
            case.problems.append("convert wrote a bundle that verify does not accept")
        target.unlink()


def _same_arrays(a: dict[str, Any], b: dict[str, Any]) -> bool:
    import numpy as np

    return set(a) == set(b) and all(  # byte order aside: a big-endian float32 is a float32
        a[k].shape == b[k].shape and a[k].dtype.name == b[k].dtype.name
        and np.array_equal(a[k], b[k])
        for k in a
    )


def _check_data(case: Case, label: str, data: dict[str, Any]) -> None:
    """Data that loaded is what the manifest (or the reference) declares; 'same' means equal."""
    spec = case.spec
    reference = _REFERENCE.get(spec["seed"], {})
    declared = spec.get("declared")  # {role: {name: [shape, dtype]}} from the mutated manifest
    for role, tensors in data["tensors"].items():
        for name, array in tensors.items():
            case.arrays.append((f"{label} {role}/{name}", array))
        if declared is not None:
            expected = declared.get(role, {})
            if set(tensors) != set(expected):
                case.problems.append(
                    f"{label}: tensors of {role!r} are {sorted(tensors)}, the manifest declares "
                    f"{sorted(expected)}"
                )
            for name, array in tensors.items():
                if name in expected and [list(array.shape), array.dtype.name] != expected[name]:
                    case.problems.append(
                        f"{label}: {role}/{name} came back {list(array.shape)} {array.dtype.name};"
                        f" the manifest declares {expected[name][0]} {expected[name][1]}"
                    )
        elif reference:
            expected_arrays = reference["tensors"].get(role, {})
            for name, array in tensors.items():
                if name in expected_arrays and (
                    array.shape != expected_arrays[name].shape
                    or array.dtype != expected_arrays[name].dtype
                ):
                    case.problems.append(
                        f"{label}: {role}/{name} came back {array.shape} {array.dtype}; the "
                        f"archive's model has {expected_arrays[name].shape} "
                        f"{expected_arrays[name].dtype}"
                    )
        if spec["expect"] == "same" and reference:
            if not _same_arrays(tensors, reference["tensors"].get(role, {})):
                case.problems.append(
                    f"{label}: tensors of {role!r} differ from the original though the mutation "
                    "keeps the content"
                )
    for key, expected in (spec.get("params") or {}).items():
        import numpy as np

        if key not in data["params"]:
            case.problems.append(f"{label}: params[{key!r}] (a plain array) was dropped")
        elif not (
            np.shape(data["params"][key]) == np.shape(expected)
            and np.array_equal(np.asarray(data["params"][key], np.float64), expected)
        ):
            case.problems.append(
                f"{label}: params[{key!r}] is {data['params'][key]!r}, expected {expected!r}"
            )
    if spec["expect"] == "same" and reference and spec["kind"] == "v2":
        if data["params"] != reference["params"]:
            case.problems.append(f"{label}: params differ from the original")


def _check_secret(case: Case) -> None:
    import numpy as np

    for label, array in case.arrays:
        array = np.asarray(array)
        if array.dtype != object and SECRET_MARK in array.tobytes():
            case.problems.append(f"{label} holds bytes of the secret file (read from outside)")
            return


# --- a bundle that changes after it was loaded ----------------------------------------------


def _check_changed(case: Case) -> None:
    """Load a valid bundle, then flip one byte of a stored tensor in place (same size):
    ``Bundle.tensors()`` must raise a ``PolybundleError`` or give the original data."""
    import shutil

    import polybundle

    spec = case.spec
    path, seed = Path(spec["path"]), spec["seed"]
    _, index, byte = spec["mutation"]
    reference = _REFERENCE[seed]["tensors"]["net"]
    shutil.copy(spec["original"], path)
    data = bytearray(path.read_bytes())
    unique = [  # tensors whose bytes appear once in the file, so the flip hits them
        reference[name] for name in sorted(reference)
        if reference[name].nbytes >= 16 and data.count(reference[name].tobytes()) == 1
    ]
    if not unique:
        case.problems.append("no stored tensor to change in place (the seed is not STORED)")
        return
    target = unique[index % len(unique)]
    data[data.find(target.tobytes()) + byte % target.nbytes] ^= 0x40
    bundles = {
        "load()": case.attempt("load()", lambda: polybundle.load(path, **_budget(polybundle.load))),
        "load(lazy=True)": case.attempt(
            "load(lazy=True)", lambda: polybundle.load(path, lazy=True, **_budget(polybundle.load))
        ),
    }
    with open(path, "r+b") as stream:  # the same file, the same size, other bytes
        stream.write(bytes(data))
    for label, bundle in bundles.items():
        if bundle is None:
            continue
        tensors = case.attempt(
            f"{label}.tensors() after the file changed",
            lambda b=bundle: {k: _array(v) for k, v in b.tensors("net").items()},
        )
        if tensors is not None and not _same_arrays(tensors, reference):
            case.problems.append(
                f"{label}.tensors() returned bytes written after the load without re-checking "
                "the digest"
            )


# --- checkpoint folders ----------------------------------------------------------------------


def _check_checkpoints(case: Case) -> None:
    import polybundle

    folder = Path(case.spec["path"])
    parent = folder.parent
    outside_before = {k: v for k, v in _snapshot(parent).items() if not k.startswith(folder.name)}
    manager = case.attempt("CheckpointManager", lambda: polybundle.CheckpointManager(folder))
    if manager is None:
        return
    inside = folder.resolve()

    def check_paths(label: str, checkpoints: Any) -> None:
        for checkpoint in checkpoints or []:
            try:
                path = Path(checkpoint.path).resolve()
            except (ValueError, OSError):
                case.problems.append(f"{label} names an unusable path {str(checkpoint.path)!r}")
                continue
            if path.parent != inside:
                case.problems.append(f"{label} names {str(checkpoint.path)!r}, outside the folder")

    check_paths("checkpoints()", case.attempt("checkpoints()", manager.checkpoints))
    latest = case.attempt("latest()", manager.latest)
    check_paths("latest()", [latest] if latest is not None else [])
    case.attempt("history()", manager.history)
    best = case.attempt("best()", lambda: manager.best("loss", "min"))
    check_paths("best()", [best] if best is not None else [])
    model, adam = _torch_model_and_adam()
    reference = _REFERENCE["v2_torch"]["tensors"]["net"]
    bundle = case.attempt("restore()", lambda: manager.restore(into={"net": model}, rng=False))
    if bundle is not None:
        if Path(bundle.path).resolve().parent != inside:
            case.problems.append(f"restore() loaded {str(bundle.path)!r}, outside the folder")
        if not _same_arrays(_model_arrays(model), reference):
            case.problems.append("restore() gave weights other than the saved ones")
    saved = case.attempt(
        "save()", lambda: manager.save(3, {"net": model}, optimizers={"net": adam})
    )
    if saved is not None and Path(saved.path).resolve().parent != inside:
        case.problems.append(f"save() wrote {str(saved.path)!r}, outside the folder")
    outside_after = {k: v for k, v in _snapshot(parent).items() if not k.startswith(folder.name)}
    if outside_after != outside_before:
        case.problems.append("the checkpoint manager changed files outside its folder")
    if case.spec.get("damaged") and not case.ok("save()"):
        case.problems.append(
            f"saving after a damaged index is impossible ({case.outcomes.get('save()')}); "
            "expected a fallback to the folder's verified bundles"
        )
