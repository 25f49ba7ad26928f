"""The ``polybundle`` command's defects of issue 17, item 3, each on real files.

Most tests call :func:`polybundle.tools.cli.main` in-process (capsys); the few that
need a real process (a closed pipe, ``python -m polybundle``, the environment a
framework sees when it is imported) run one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import polybundle
from polybundle.api.progress import progress_bar
from polybundle.hooks.registry import get_registry
from polybundle.tools import cli, demo
from polybundle.tools.cli import main
from polybundle.tools.conformance import conformance_adapters
from tests.conftest import LEGACY_DIR, REPO, needs_tensorflow, needs_torch

LEGACY = sorted(LEGACY_DIR.glob("*.zip"))


def _run(*argv: str, env: dict[str, str] | None = None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "polybundle", *argv], capture_output=True,
                          text=True, timeout=300, env=env, cwd=REPO, **kwargs)


@pytest.fixture
def parity_bundle(tmp_path) -> Path:
    """A torch bundle of the conformance convnet (every backend's plugin registers it)."""
    pytest.importorskip("torch")
    adapter = next(a for a in conformance_adapters() if a.backend == "torch")
    path = tmp_path / "p.bundle"
    polybundle.save(path, {"net": adapter.make_model(dict(adapter.config), 0)},
                    architectures={"net": (adapter.architecture, dict(adapter.config))},
                    parity_inputs=adapter.inputs(dict(adapter.config), 0))
    return path


@pytest.fixture
def checkpoints(tmp_path) -> Path:
    torch = pytest.importorskip("torch")
    manager = polybundle.CheckpointManager(tmp_path / "ckpt", keep_last=None)
    for step in range(1, 4):
        manager.save(step, {"net": torch.nn.Linear(2, 1)}, metrics={"loss": 1 / step}, rng=False)
    return tmp_path / "ckpt"


def test_parity_zero_tolerances_are_used_not_the_defaults(parity_bundle, capsys):
    """``--rtol 0 --atol 0`` judged with the defaults (``rtol or default``)."""
    main(["parity", str(parity_bundle), "--rtol", "0", "--atol", "0"])
    assert "pass when max abs error <= 0 + 0 * max|reference|" in capsys.readouterr().out
    main(["parity", str(parity_bundle), "--json", "--rtol", "0"])
    document = json.loads(capsys.readouterr().out)
    assert (document["rtol"], document["atol"]) == (0.0, cli.DEFAULT_ATOL)
    torch_row = next(row for row in document["rows"] if row["backend"] == "torch")
    assert torch_row["max_abs"] == 0.0 and torch_row["passed"]  # the writer reproduces itself


def test_parity_refuses_a_negative_tolerance(parity_bundle, capsys):
    assert main(["parity", str(parity_bundle), "--atol", "-1"]) == 2
    assert "expected a number, 0 or more" in capsys.readouterr().err


@pytest.mark.parametrize("steps", ["0", "-3", "many"])
def test_demo_steps_below_one_is_a_usage_error_not_an_index_error(steps, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["demo", "--steps", steps])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "expected a whole number of 1 or more" in err and "Traceback" not in err
    with pytest.raises(polybundle.PolybundleError, match="at least one step"):
        demo.run(steps=int(steps) if steps != "many" else 0)


def test_demo_refuses_an_out_folder_whose_parent_is_missing(tmp_path, capsys):
    """``demo --out /a/missing/path`` created the whole path; save refuses a missing folder."""
    target = tmp_path / "missing" / "path"
    assert main(["demo", "--out", str(target), "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and str(tmp_path / "missing") in err
    assert not (tmp_path / "missing").exists()


def test_checkpoints_of_a_missing_folder_is_an_error(tmp_path, capsys):
    """``checkpoints no_such_dir`` printed an empty table and exited 0."""
    assert main(["checkpoints", str(tmp_path / "no_such_dir")]) == 2
    err = capsys.readouterr().err
    assert "CheckpointError" in err and "does not exist" in err
    (tmp_path / "file").write_text("x")
    assert main(["checkpoints", str(tmp_path / "file"), "--json"]) == 2
    assert "is a file" in capsys.readouterr().err


@needs_torch
@pytest.mark.parametrize("form", [["--json"], []])
def test_a_reader_that_stops_early_gets_no_traceback(checkpoints, form):
    """``checkpoints --json | head`` ended in a BrokenPipeError traceback: stdout is a pipe
    whose reader is gone before anything is written."""
    process = subprocess.Popen(
        [sys.executable, "-m", "polybundle", "checkpoints", str(checkpoints), *form],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO,
    )
    process.stdout.close()  # the reader stops (head has printed its lines)
    err = process.stderr.read().decode()
    assert process.wait(timeout=120) == cli.BROKEN_PIPE, err
    assert err == ""


@needs_torch
@needs_tensorflow
def test_python_m_polybundle_converts_with_no_framework_log_lines(tmp_path):
    """``python -m polybundle convert SRC DST --to BACKEND``; the framework's C++ start-up
    lines (cpu_feature_guard, absl) no longer reach the output."""
    adapter = next(a for a in conformance_adapters() if a.backend == "torch")
    source = tmp_path / "torch.bundle"
    polybundle.save(source, {"net": adapter.make_model(dict(adapter.config), 0)},
                    architectures={"net": (adapter.architecture, dict(adapter.config))})
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    done = _run("convert", str(source), str(tmp_path / "tf.bundle"), "--to", "keras", "--json",
                env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"source": str(source), "target": str(tmp_path / "tf.bundle"),
                                       "backend": "tensorflow", "roles": ["net"]}
    assert done.stderr == ""
    assert polybundle.inspect(tmp_path / "tf.bundle")["backend"] == "tensorflow"


def test_quiet_environment_is_set_unless_the_user_set_it(monkeypatch, capsys):
    backends = get_registry().backends.values()
    declared = {name: value for backend in backends for name, value in backend.quiet_environment}
    assert declared.get("TF_CPP_MIN_LOG_LEVEL") == "2"  # declared by the backend, not the core
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    assert main(["inspect", "--json", str(LEGACY[0])]) == 0
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "2"
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    assert main(["inspect", "--json", str(LEGACY[0])]) == 0
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"
    capsys.readouterr()


@needs_torch
def test_tables_are_not_cut_when_piped(tmp_path, monkeypatch, capsys):
    """Piped output was cut at 80 columns with an ellipsis."""
    import torch

    monkeypatch.delenv("COLUMNS", raising=False)
    name = "a_rather_long_layer_name_" * 4
    net = torch.nn.Module()
    net.register_parameter(name, torch.nn.Parameter(torch.zeros(2)))
    path = tmp_path / "wide.bundle"
    polybundle.save(path, {"net": net})
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert name in out and "…" not in out
    monkeypatch.setenv("COLUMNS", "60")  # the user's choice still counts
    main(["inspect", str(path)])
    assert name not in capsys.readouterr().out


@needs_torch
def test_plan_names_a_missing_architecture_instead_of_none(tmp_path, capsys):
    import torch

    path = tmp_path / "bare.bundle"
    polybundle.save(path, {"net": torch.nn.Linear(3, 2)})
    assert main(["plan", str(path), "--to", "tensorflow"]) == 1
    out = capsys.readouterr().out
    assert "for None" not in out
    assert "records no architecture for role 'net'" in out and "into=" in out


def test_a_progress_bar_writes_nothing_off_a_terminal(capsys):
    """``progress=True`` printed a blank line on a stderr that is not a terminal."""
    with progress_bar("saving big.bundle", 100, enabled=True, threshold=1) as advance:
        advance(100)
    assert capsys.readouterr().err == ""


def test_version(capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["--version"])
    assert stopped.value.code == 0
    assert capsys.readouterr().out.strip() == f"polybundle {polybundle.__version__}"


def test_every_command_takes_json():
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    assert set(commands) == set(cli.COMMANDS) >= {"convert", "parity", "demo", "migrate"}
    for name, sub in commands.items():
        assert any("--json" in action.option_strings for action in sub._actions), name


@pytest.mark.parametrize("path", LEGACY, ids=[p.name for p in LEGACY])
def test_inspect_reads_legacy_archives(path, capsys):
    """inspect refused a legacy zip ('inspect reads format-2 bundles ...')."""
    assert main(["inspect", str(path)]) == 0
    table = capsys.readouterr().out
    assert "legacy archive" in table and "tensors" in table
    assert main(["inspect", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["format"].startswith("legacy-") and report["tensors"]
    bundle = polybundle.load(path, roles=[])
    assert report["backend"] == bundle.backend
    assert [m["role"] for m in report["manifest"]["models"]] == bundle.roles


@needs_torch
def test_inspect_of_legacy_and_plain_files_imports_no_framework(tmp_path):
    import torch

    torch.save(torch.nn.Linear(2, 1).state_dict(), tmp_path / "net.pth")
    code = (
        "import sys, json\n"
        "from polybundle.tools.cli import main\n"
        "for path in sys.argv[1:]:\n"
        "    assert main(['inspect', path, '--json']) == 0\n"
        "loaded = [m for m in ('torch', 'tensorflow', 'keras', 'jax') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run([sys.executable, "-c", code, *map(str, LEGACY),
                           str(tmp_path / "net.pth")],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr


def test_migrate_json(tmp_path, capsys):
    assert main(["migrate", str(LEGACY[0]), str(tmp_path / "m.bundle"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["written"] and report["era"].startswith("legacy-")


@pytest.mark.parametrize(
    "argv",
    [
        ["inspect", "{tmp}"],  # a folder
        ["inspect", "{tmp}/missing.bundle"],
        ["verify", "{tmp}/missing.bundle"],
        ["convert", "{tmp}/missing.bundle", "{tmp}/out.bundle", "--to", "torch"],
        ["migrate", "{legacy}", "{tmp}/no/folder/out.bundle"],
        ["plan", "{legacy}", "--to", "no-such-backend"],
    ],
)
def test_user_errors_are_one_line_exit_2(argv, tmp_path, capsys):
    args = [a.format(tmp=tmp_path, legacy=LEGACY[0]) for a in argv]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error (") and "Traceback" not in err


def test_exit_codes_are_documented(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for code in cli.EXIT_STATUS:
        assert f"{code} " in help_text.split("exit status:")[1]
        assert f"* {code}:" in cli.__doc__
    readme = (REPO / "README.md").read_text()
    assert "Exit status" in readme and "141" in readme
