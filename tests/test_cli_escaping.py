"""The CLI never lets a file's strings drive the terminal (issue 10, items 4 and 6).

A bundle is written by whoever sent it: its tensor names, params, architecture
names, checkpoint metrics and zip member names can hold ESC sequences that
clear the screen, OSC-8 hyperlinks, C1 controls, DEL and rich markup. The old
CLI printed them raw, and a ``[/red]`` in a name crashed it with rich's
``MarkupError``. Each test runs the real commands on a real hostile bundle and
checks the bytes that come out.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import polybundle
from polybundle.api.progress import progress_bar
from polybundle.tools.cli import main, markup_safe, printable
from tests.conftest import REPO, needs_torch

OSC8 = "\x1b]8;;http://evil-example/\x1b\\click\x1b]8;;\x1b\\"
EVIL = f"[/red]w\x1b[2J\x1b[31m{OSC8}[link=http://x]L[/link][bold]\x9b31m\x7f\u202e\x07\n"
"""Markup, clear screen, colour, an OSC-8 link, a C1 CSI, DEL, a bidi override, BEL, newline."""
MEMBER = "evil[/red]\x1b[2J\x1b]8;;http://evil-example/\x07click\x1b]8;;\x07\x9b\x7f"
"""A zip member name (no backslash, so messages quote it as it is)."""
_ESC = r"\\+(x1b|u001b)"
EVIL_SHOWN = rf"\[/red]w{_ESC}\[2J{_ESC}\[31m{_ESC}]8;;http://evil-.*\[link=http://x]L\[/link]"
MEMBER_SHOWN = rf"evil\[/red]{_ESC}\[2J{_ESC}]8;;http://evil-"

RAW = ["\x1b", "\x9b", "\x7f", "\u202e", "\x07", "\x1b]8;"]
"""What must never reach the output (rich's own styling may add other ESC sequences)."""


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> Path:
    """A folder with a real bundle full of hostile strings, one with a hostile member, and
    checkpoints with a hostile metric name."""
    torch = pytest.importorskip("torch")
    folder = tmp_path_factory.mktemp("hostile")
    net = torch.nn.Module()
    net.register_parameter(EVIL, torch.nn.Parameter(torch.zeros(2)))
    polybundle.save(folder / "e.bundle", {"net": net}, params={EVIL: [EVIL, {"k": EVIL}]},
                    architectures={"net": (EVIL, {EVIL: EVIL})},
                    optimizers={"net": torch.optim.Adam(net.parameters())})
    shutil.copy(folder / "e.bundle", folder / "added.bundle")
    with zipfile.ZipFile(folder / "added.bundle", "a") as archive:
        archive.writestr(MEMBER, b"x")
    manager = polybundle.CheckpointManager(folder / "ckpt", keep_last=1)
    for step in (1, 2):
        manager.save(step, {"net": torch.nn.Linear(2, 1)}, metrics={EVIL: 1.0}, rng=False)
    return folder


def _check_output(text: str, shown: str | None = EVIL_SHOWN, mode: str = "pipe") -> None:
    if mode == "terminal":  # rich's own colours go; anything else with ESC stays
        text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    for raw in RAW:
        assert raw not in text, (raw, text[:2000])
    assert "MarkupError" not in text
    if shown:  # the hostile string is there, made visible (as repr or JSON escapes)
        assert re.search(shown, text), text


@pytest.fixture(params=["pipe", "terminal"])
def console_mode(request, monkeypatch) -> str:
    """Run with output to a pipe (no styling) and as a colour terminal (rich styles)."""
    monkeypatch.setenv("COLUMNS", "400")
    for name in ("FORCE_COLOR", "NO_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        monkeypatch.delenv(name, raising=False)
    if request.param == "terminal":
        monkeypatch.setenv("FORCE_COLOR", "1")
        monkeypatch.setenv("TERM", "xterm-256color")
    return request.param


@needs_torch
@pytest.mark.parametrize(
    ("command", "target", "status", "shown"),
    [
        ("inspect", "e.bundle", 0, EVIL_SHOWN),
        ("verify", "e.bundle", 0, None),  # a clean bundle: verify quotes no name
        ("verify", "added.bundle", 1, MEMBER_SHOWN),
        ("checkpoints", "ckpt", 0, EVIL_SHOWN),
    ],
)
def test_commands_escape_every_string_from_the_file(
    hostile: Path, console_mode: str, capsys, command: str, target: str, status: int,
    shown: str | None,
) -> None:
    assert main([command, str(hostile / target)]) == status
    out, err = capsys.readouterr()
    _check_output(out + err, shown=shown, mode=console_mode)


@needs_torch
def test_an_error_quoting_a_hostile_member_name_is_escaped(
    hostile: Path, console_mode: str, capsys
) -> None:
    assert main(["inspect", str(hostile / "added.bundle")]) == 2
    out, err = capsys.readouterr()
    assert "UnsafeContentError" in err
    _check_output(out + err, MEMBER_SHOWN, mode=console_mode)


@needs_torch
@pytest.mark.parametrize(
    ("command", "target"),
    [("inspect", "e.bundle"), ("verify", "added.bundle"), ("checkpoints", "ckpt")],
)
def test_json_output_escapes_control_characters(hostile, capsys, command, target) -> None:
    main([command, str(hostile / target), "--json"])
    out = capsys.readouterr().out
    for raw in RAW:
        assert raw not in out
    if command != "verify":  # the data is intact once parsed (verify quotes it in messages)
        assert EVIL in _strings(json.loads(out))


def _strings(document) -> set[str]:
    if isinstance(document, dict):
        return set(document).union(*map(_strings, document.values()))
    if isinstance(document, list):
        return set().union(*map(_strings, document))
    return {document} if isinstance(document, str) else set()


@needs_torch
def test_the_installed_command_prints_no_raw_escape_bytes(hostile: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE")}
    env.update(COLUMNS="400", NO_COLOR="1")
    for command, target in (("inspect", "e.bundle"), ("verify", "added.bundle"),
                            ("checkpoints", "ckpt")):
        done = subprocess.run(
            [sys.executable, "-m", "polybundle.tools.cli", command, str(hostile / target)],
            capture_output=True, cwd=REPO, env=env, timeout=120,
        )
        output = (done.stdout + done.stderr).decode("utf-8")
        assert "Traceback" not in output, output
        _check_output(output, MEMBER_SHOWN if target == "added.bundle" else EVIL_SHOWN)


def test_a_progress_bar_shows_a_file_name_as_plain_text(capsys) -> None:
    with progress_bar(f"saving {EVIL}.bundle", 100, enabled=True, threshold=1) as advance:
        advance(100)  # the old bar parsed the name as markup: MarkupError on '[/red]'
    _check_output(capsys.readouterr().err, None)


def test_printable_and_markup_safe() -> None:
    assert printable(EVIL).isprintable()
    assert printable("plain [ok] name") == "plain [ok] name"
    assert printable("\ud800") == "\\ud800"  # a lone surrogate cannot even be encoded
    assert markup_safe("[/red]") == "\\[/red]"


@needs_torch
def test_checkpoints_command_lists_verified_bundles_when_the_index_is_hostile(
    hostile: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "ckpt"
    shutil.copytree(hostile / "ckpt", folder)
    index = json.loads((folder / "checkpoints.json").read_bytes())
    index["checkpoints"][0]["file"] = f"../{EVIL}"
    (folder / "checkpoints.json").write_text(json.dumps(index))
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE")}
    env.update(COLUMNS="400", NO_COLOR="1")
    done = subprocess.run(
        [sys.executable, "-m", "polybundle.tools.cli", "checkpoints", str(folder)],
        capture_output=True, cwd=REPO, env=env, timeout=120)
    output = (done.stdout + done.stderr).decode("utf-8")
    assert done.returncode == 0, output
    assert "DamagedIndexWarning" in output and "is not a plain checkpoint-<step>.bundle" in output
    assert "checkpoint-0000000002.bundle (latest)" in output and "1 retained of 1 saved" in output
    _check_output(output, r"\.\./\[/red\]w\\+x1b\[2J")
