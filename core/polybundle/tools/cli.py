"""The ``polybundle`` command line.

Subcommands are small functions registered in :data:`COMMANDS`; each gets the
parsed arguments and returns the exit status.

Everything printed that comes from a file (member, tensor and architecture
names, params, metrics, error messages that quote them) goes through
:func:`printable`, which shows control characters as escapes (an ESC byte
prints as ``\x1b``, so no sequence reaches the terminal: no clearing, no
colours, no OSC-8 hyperlinks), and is given to rich as plain text or with its
markup escaped (a name holding ``[/red]`` prints as it is).

Every command takes ``--json`` and then prints one JSON document on stdout.
Tables fit the terminal; written to a pipe or a file they are never cut (set
``COLUMNS`` to choose a width). Before any framework is imported, each backend's
:attr:`~polybundle.model.backend.Backend.quiet_environment` is set where the
user has not set it, so frameworks' C++ start-up lines stay off the output.

Exit status (the same for every command; see :data:`EXIT_STATUS`):

* 0: done, and every check passed;
* 1: a check failed (``verify``, ``verify --parity``, ``parity``, ``plan``,
  ``conformance``, ``demo``): the report says which;
* 2: a user error (a missing or unreadable file, a file polybundle does not read, a
  bad option or value): one line on stderr, never a Python traceback;
* 130: interrupted (Ctrl-C);
* 141: stdout was closed early (``polybundle checkpoints ckpt --json | head``): the
  command stops quietly, as a tool killed by SIGPIPE does.

Example:
    $ polybundle inspect run.bundle
    $ polybundle inspect run.bundle --json
    $ polybundle demo --out ./demo-bundles
    $ python -m polybundle --version
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from polybundle._version import __version__
from polybundle.api.checkpoints import CheckpointManager
from polybundle.api.inspection import inspect
from polybundle.api.migrate import migrate
from polybundle.api.progress import printable
from polybundle.api.transfer import convert, plan_bundle
from polybundle.api.verify import verify
from polybundle.errors import CheckpointError, FormatError, PolybundleError
from polybundle.format.storage import is_url
from polybundle.hooks.manager import get_plugin_manager
from polybundle.hooks.registry import get_registry
from polybundle.tools import conformance, demo
from polybundle.tools.parity import DEFAULT_ATOL, DEFAULT_RTOL, compare
from polybundle.tools.user_code import import_user_modules

Command = Callable[[argparse.Namespace, Console], int]

OK, CHECK_FAILED, USER_ERROR, INTERRUPTED, BROKEN_PIPE = 0, 1, 2, 130, 141
EXIT_STATUS = {
    OK: "done, every check passed",
    CHECK_FAILED: "a check failed (verify, parity, plan, conformance, demo)",
    USER_ERROR: "user error: bad option, missing or unreadable file (one line on stderr)",
    INTERRUPTED: "interrupted (Ctrl-C)",
    BROKEN_PIPE: "stdout closed early (| head): stopped quietly",
}
"""What each exit status of the ``polybundle`` command means."""

PIPE_WIDTH = 10_000
"""Console width off a terminal (pipe, file) when ``COLUMNS`` is unset: tables are not cut."""


class _Console(Console):
    """A rich console that lets :func:`main` handle a closed stdout (rich would exit 1)."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        raise BrokenPipeError


def make_console(*, stderr: bool = False) -> Console:
    """Return the console commands print to: the terminal's width, or unlimited off a terminal.

    Off a terminal (output piped or redirected) rich would cut tables at 80
    columns with "…"; there the width is :data:`PIPE_WIDTH` unless ``COLUMNS`` says.

    Example:
        >>> make_console().width  # doctests print to a pipe
        10000
    """
    console = _Console(stderr=stderr)
    if not console.is_terminal and not os.environ.get("COLUMNS"):
        console = _Console(stderr=stderr, width=PIPE_WIDTH)
    return console


def quiet_frameworks() -> None:
    """Set each registered backend's ``quiet_environment`` variables the user has not set.

    Imports no framework: backends declare the variables as data.

    Example:
        >>> quiet_frameworks()
        >>> all(os.environ.get(name) is not None for backend in get_registry().backends.values()
        ...     for name, _ in backend.quiet_environment)
        True
    """
    for backend in get_registry().backends.values():
        for name, value in backend.quiet_environment:
            os.environ.setdefault(name, value)


def positive_int(text: str) -> int:
    """Parse a whole number of at least 1 (``--steps``), or tell argparse what is wrong.

    Example:
        >>> positive_int("3")
        3
        >>> positive_int("0")
        Traceback (most recent call last):
        argparse.ArgumentTypeError: expected a whole number of 1 or more, got '0'
    """
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of 1 or more, got {text!r}")
    return value


def finite(value: float) -> float | None:
    """Return ``value``, or None for NaN and infinities (JSON has no NaN).

    Example:
        >>> finite(0.5), finite(float("nan"))
        (0.5, None)
    """
    return value if math.isfinite(value) else None


def markup_safe(value: Any) -> str:
    r"""Return ``value`` as text to put inside rich markup: printable, its markup escaped.

    Example:
        >>> markup_safe("w[/red]\x1b]8;;http://x\x1b\\")
        'w\\[/red]\\x1b]8;;http://x\\x1b\\\\'
    """
    return escape(printable(value))


def _plain(value: Any) -> Text:
    """Return a table cell that rich renders as it is (no markup, no control characters)."""
    return Text(printable(value))


def _json(value: Any) -> str:
    """Return compact JSON, all but printable ASCII escaped (``\\u001b``), for text output."""
    return json.dumps(value, ensure_ascii=True)


MAX_SHOWN_CHARACTERS = 2_000
"""Longest params or config text the table view prints; ``--json`` prints everything."""

MAX_SHOWN_TENSORS = 200
"""Most tensor rows the table view prints; ``--json`` lists every tensor."""


def shortened(text: str, limit: int = MAX_SHOWN_CHARACTERS) -> str:
    """Return ``text`` cut to ``limit`` characters, saying how much was left out.

    A bundle's params can be megabytes of JSON; a terminal needs the start.

    Example:
        >>> shortened("abcdef", 3)
        'abc... (3 more characters; --json prints all)'
        >>> shortened("abc", 3)
        'abc'
    """
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters; --json prints all)"


def print_json(document: Any) -> None:
    r"""Print ``document`` as indented JSON, all but printable ASCII escaped (DEL too).

    Example:
        >>> print_json({"name": "a\x1b\x7f"})
        {
          "name": "a\u001b\u007f"
        }
    """
    print(json.dumps(document, indent=2, ensure_ascii=True))


def storage_option(text: str) -> tuple[str, Any]:
    """Parse ``--storage-option KEY=VALUE``: VALUE as JSON when it is JSON, else as text.

    Example:
        >>> storage_option("endpoint_url=http://127.0.0.1:9000")
        ('endpoint_url', 'http://127.0.0.1:9000')
        >>> storage_option('client_kwargs={"region_name": "eu-west-1"}')
        ('client_kwargs', {'region_name': 'eu-west-1'})
        >>> storage_option("anon=true")
        ('anon', True)
    """
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not KEY=VALUE; e.g. --storage-option endpoint_url=http://host:9000"
        )
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def _options(args: argparse.Namespace) -> dict[str, Any] | None:
    """Return the ``--storage-option`` pairs as ``storage_options`` (None when none given)."""
    return dict(args.storage_options) or None


def _human_bytes(count: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count} B"


def run_inspect(args: argparse.Namespace, console: Console) -> int:
    """Print a bundle's manifest summary, params and tensor table (or JSON).

    Example:
        $ polybundle inspect run.bundle --json
    """
    report = inspect(args.path, storage_options=_options(args))
    if args.json:
        print_json(report)
        return 0
    safe = markup_safe
    writer = report["manifest"].get("writer")
    if writer is not None:
        origin = (f"polybundle format {safe(report['format_version'])}, backend "
                  f"[cyan]{safe(report['backend'])}[/cyan] ({safe(writer['framework'])} "
                  f"{safe(writer['framework_version'])}), written "
                  f"{safe(report['manifest'].get('created'))}")
    else:  # a legacy archive: its era and version
        origin = (f"legacy archive {safe(report['format'])} version "
                  f"{safe(report['format_version'])}, backend "
                  f"[cyan]{safe(report['backend'])}[/cyan] (polybundle migrate makes it "
                  "a format-2 bundle)")
    console.print(f"[bold]{safe(report['path'])}[/bold]: {origin}")
    for entry in report["manifest"]["models"]:
        arch = entry["architecture"]
        label = f"{arch['name']} {shortened(_json(arch['config']))}" if arch else "not recorded"
        console.print(f"  role [green]{safe(entry['role'])}[/green]: architecture {safe(label)}")
    console.print(f"  params: {safe(shortened(_json(report['params'])))}")
    table = Table(title="tensors")
    for column in ("role", "name", "shape", "dtype", "layout", "bytes"):
        table.add_column(column, justify="right" if column == "bytes" else "left")
    total = sum(row["bytes"] for row in report["tensors"])
    for row in report["tensors"][:MAX_SHOWN_TENSORS]:
        cells = (row["role"], row["name"], "x".join(map(str, row["shape"])) or "()",
                 row["dtype"], row["layout"], _human_bytes(row["bytes"]))
        table.add_row(*map(_plain, cells))
    console.print(table)
    hidden = len(report["tensors"]) - MAX_SHOWN_TENSORS
    more = f" ({hidden} not shown; --json lists all)" if hidden > 0 else ""
    console.print(f"{len(report['tensors'])} tensors, {_human_bytes(total)}{more}")
    for role, summary in report.get("optimizers", {}).items():
        slots = ", ".join(f"{slot} x{count}" for slot, count in summary["slots"].items())
        console.print(
            f"  optimizer of [green]{safe(role)}[/green]: {safe(summary['algorithm'])} "
            f"({safe(summary['class'])}), step {safe(summary['step'])}, slots "
            f"{safe(slots or 'none')} ({_human_bytes(summary['slot_bytes'])}), schedule "
            f"{safe(summary['schedule'])}"
        )
        hyperparameters = shortened(_json(summary["hyperparameters"]))
        console.print(f"    hyperparameters: {safe(hyperparameters)}")
    return 0


def run_checkpoints(args: argparse.Namespace, console: Console) -> int:
    """List the checkpoints of a directory with their metrics (or JSON).

    Example:
        $ polybundle checkpoints ./ckpt
    """
    folder = args.directory if is_url(args.directory) else Path(args.directory)
    if isinstance(folder, Path) and not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        raise CheckpointError(
            f"{str(folder)!r} {what}; expected the folder a CheckpointManager saved into. "
            "Check the path."
        )
    manager = CheckpointManager(folder, keep_last=None, storage_options=_options(args))
    in_order = manager.checkpoints()  # oldest save first
    retained = {checkpoint.step: checkpoint for checkpoint in in_order}
    history = manager.history()
    if args.json:
        rows = []
        for entry in history:
            kept = retained.get(entry["step"])
            rows.append({**entry, "file": kept.path.name if kept else None})
        print_json(rows)
        return 0
    latest = in_order[-1] if in_order else None
    table = Table(title=Text(f"checkpoints in {printable(args.directory)}"))
    for column in ("step", "saved", "metrics", "file"):
        table.add_column(column)
    for entry in history:
        kept = retained.get(entry["step"])
        marker = " (latest)" if kept is not None and kept == latest else ""
        table.add_row(
            _plain(entry["step"]), _plain(entry["created"]), _plain(_json(entry["metrics"])),
            _plain(kept.path.name + marker) if kept else Text("pruned", style="dim"),
        )
    console.print(table)
    console.print(f"{len(retained)} retained of {len(history)} saved")
    return 0


def run_demo(args: argparse.Namespace, console: Console) -> int:
    """Train small models in each installed framework, save, load back, compare.

    Example:
        $ polybundle demo --out ./demo-bundles --steps 5
    """
    quiet = Console(quiet=True) if args.json else console
    results = demo.run(args.out, steps=args.steps, console=quiet)
    if args.json:
        print_json([
            {"backend": r.backend, "path": str(r.path) if args.out else None,
             "size_bytes": r.size_bytes, "first_loss": finite(r.first_loss),
             "last_loss": finite(r.last_loss), "max_abs_difference": r.max_abs_difference,
             "cross_errors": r.cross_errors, "seconds": r.seconds, "matches": r.matches}
            for r in results
        ])
    return OK if results and all(result.matches for result in results) else CHECK_FAILED


def run_conformance(args: argparse.Namespace, console: Console) -> int:
    """Print the conformance feature matrix of the installed backends; 1 if any cell fails.

    ``--plugin MODULE`` registers a plugin module first (one not installed);
    ``--backend`` and ``--feature`` pick rows and columns.

    Example:
        $ polybundle conformance --backend torch --feature "round trip"
    """
    manager = get_plugin_manager()
    for module in conformance.plugin_modules(args.plugin or ()):
        if not manager.is_registered(module):
            manager.register(module, name=module.__name__)
    adapters = [a for a in conformance.conformance_adapters()
                if not args.backend or a.backend in args.backend]
    features = [f for f in conformance.FEATURES if not args.feature or f.name in args.feature]
    cells = conformance.feature_matrix(adapters, features)
    if args.json:
        print_json([{"backend": c.backend, "feature": c.feature, "target": c.target,
                     "status": c.status, "detail": c.detail} for c in cells])
    else:
        console.print(conformance.matrix_table(cells))
        for line in conformance.problems(cells):
            console.print(markup_safe(line), highlight=False, soft_wrap=True)
    failed = [c for c in cells if c.status == conformance.FAIL]
    return 1 if failed or not cells else 0


def run_verify(args: argparse.Namespace, console: Console) -> int:
    """Check an archive's integrity and safety without loading a model; 1 if anything is wrong.

    Example:
        $ polybundle verify wts.h5.zip
    """
    folder = Path(args.path).is_dir()
    sharded = folder and (Path(args.path) / "manifest.json").exists()
    if not is_url(args.path) and not Path(args.path).is_file() and not sharded:
        # nothing to check: a user error (2), not a failed check
        what = "a folder without manifest.json" if folder else "no file"
        raise FormatError(
            f"{printable(args.path)!r} is {what}; expected a file or a sharded bundle to verify."
        )
    report = verify(args.path, progress=True, storage_options=_options(args))
    parity = None
    if getattr(args, "parity", False) and report.ok:
        parity = _parity(args)
        if not args.json:
            _print_parity(parity, console)
    parity_ok = parity is None or parity.passed
    if args.json:
        document = report.to_json()
        if parity is not None:
            document["parity"] = _parity_json(parity)
        print_json(document)
        return 0 if report.ok and parity_ok else 1
    verdict = "[green]OK[/green]" if report.ok else "[red]PROBLEMS FOUND[/red]"
    console.print(f"[bold]{markup_safe(report.path)}[/bold] ({markup_safe(report.format)}): "
                  f"{verdict}")
    for line in report.checked:
        console.print(f"  checked: {markup_safe(line)}", soft_wrap=True)
    for line in report.notes:
        console.print(f"  [yellow]note[/yellow]: {markup_safe(line)}", soft_wrap=True)
    for line in report.problems:
        console.print(f"  [red]problem[/red]: {markup_safe(line)}", soft_wrap=True)
    return 0 if report.ok and parity_ok else 1


def run_parity(args: argparse.Namespace, console: Console) -> int:
    """Re-run the bundle's stored parity inputs on every installed backend; 1 on a failure.

    Example:
        $ polybundle parity run.bundle --rtol 1e-5 --plot parity.png
    """
    report = _parity(args)
    plot = getattr(args, "plot", None)  # verify --parity has no --plot
    written = None if plot is None else report.report.plot(plot)  # drawn when it fails too
    if args.json:
        print_json({**_parity_json(report), **({"plot": str(written)} if written else {})})
    else:
        _print_parity(report, console)
        if written is not None:
            console.print(f"plot written to {markup_safe(str(written))}", highlight=False,
                          soft_wrap=True)
    return 0 if report.passed else 1


def tolerances(args: argparse.Namespace) -> tuple[float, float]:
    """Return ``(rtol, atol)``: the options given (0 included), else the defaults.

    Example:
        >>> tolerances(argparse.Namespace(rtol=0.0, atol=None)) == (0.0, DEFAULT_ATOL)
        True
    """
    rtol = getattr(args, "rtol", None)
    atol = getattr(args, "atol", None)
    return (DEFAULT_RTOL if rtol is None else rtol, DEFAULT_ATOL if atol is None else atol)


@dataclass
class _ParityRun:
    """A parity report and the tolerances it was judged with."""

    report: Any
    rtol: float
    atol: float

    @property
    def passed(self) -> bool:
        return bool(self.report.passed)


def _parity(args: argparse.Namespace) -> _ParityRun:
    rtol, atol = tolerances(args)
    for name, value in (("rtol", rtol), ("atol", atol)):
        if not (math.isfinite(value) and value >= 0):
            raise PolybundleError(f"--{name} is {value!r}; expected a number, 0 or more.")
    return _ParityRun(compare(args.path, rtol=rtol, atol=atol), rtol, atol)


def _parity_json(run: _ParityRun) -> dict[str, Any]:
    report, rtol, atol = run.report, run.rtol, run.atol
    return {
        "reference": report.reference, "rtol": rtol, "atol": atol, "passed": report.passed,
        "rows": [{"role": row.role, "output": row.output, "backend": row.backend,
                  "max_abs": row.max_abs, "max_rel": row.max_rel, "passed": row.passed}
                 for row in report.rows],
        "skipped": report.skipped,
    }


def _print_parity(run: _ParityRun, console: Console) -> None:
    report, rtol, atol = run.report, run.rtol, run.atol
    table = Table(title=Text(f"parity ({printable(report.reference)})"))
    for column in ("role", "output", "backend", "max abs error", "max rel error", "result"):
        table.add_column(column)
    for row in report.rows:
        verdict = Text("pass", style="green") if row.passed else Text("FAIL", style="red")
        table.add_row(_plain(row.role), _plain(row.output), _plain(row.backend),
                      f"{row.max_abs:.3e}", f"{row.max_rel:.3e}", verdict)
    console.print(table)
    console.print(f"pass when max abs error <= {atol:g} + {rtol:g} * max|reference|")
    for name, why in report.skipped.items():
        console.print(f"  [yellow]skipped[/yellow] {markup_safe(name)}: {markup_safe(why)}",
                      soft_wrap=True)


def run_plan(args: argparse.Namespace, console: Console) -> int:
    """Print how each tensor would convert to another backend; 1 if it cannot. Builds no model.

    Example:
        $ polybundle plan tf.bundle --to torch
    """
    plan = plan_bundle(args.path, args.to, storage_options=_options(args))
    if args.json:
        print_json(plan)
    problems = 0
    for role in plan["roles"]:
        issues = [(label, role[label]) for label in
                  ("missing", "unexpected", "unmapped", "misaligned", "mismatched") if role[label]]
        if role.get("refused"):
            issues.append(("refused", [role["refused"]]))
        if role["architecture"] is None:
            issues.append(("builder", [
                f"the bundle records no architecture for role {role['role']!r}, so no "
                f"{plan['target']} builder can be chosen; build the model yourself and pass "
                f"it: polybundle.load(path, backend={plan['target']!r}, "
                f"into={{{role['role']!r}: model}})"
            ]))
        elif not role["builder"]:
            missing = f"no {plan['target']} builder for {role['architecture']!r}"
            issues.append(("builder", [missing]))
        problems += len(issues)
        if args.json:
            continue
        title = f"role {role['role']}: {plan['source']} -> {plan['target']}"
        table = Table(title=Text(printable(title)))
        for column in ("source", "target", "kind.slot", "layout", "shape", "action"):
            table.add_column(column)
        for row in role["rows"]:
            shape = "x".join(map(str, row["shape"])) if row["shape"] is not None else "-"
            cells = (row["source"], row["target"], f"{row['kind']}.{row['slot']}",
                     row["layout"], shape or "()", row["detail"])
            table.add_row(*map(_plain, cells))
        console.print(table)
        for label in ("pairing", "check"):
            if role.get(label):
                console.print(f"  {label}: {markup_safe(role[label])}", soft_wrap=True)
        for label, items in issues:
            console.print(f"  [red]{label}[/red]: {markup_safe(', '.join(map(str, items)))}",
                          soft_wrap=True)
    return 1 if problems else 0


def run_migrate(args: argparse.Namespace, console: Console) -> int:
    """Rewrite a legacy archive as a format-2 bundle and print what was converted and dropped.

    Example:
        $ polybundle migrate wts.h5.zip wts.bundle
    """
    report = migrate(args.src, args.dst, storage_options=_options(args))
    if args.json:
        print_json({"source": report.source, "target": report.target, "era": report.era,
                    "written": report.written, "converted": report.converted,
                    "dropped": report.dropped})
        return 0
    for line in report.lines():
        console.print(markup_safe(line), highlight=False, soft_wrap=True)
    return 0


def run_convert(args: argparse.Namespace, console: Console) -> int:
    """Write a bundle (or a plain framework file) as a native bundle of another backend.

    Needs the target framework only; models are rebuilt with its builders.

    Example:
        $ polybundle convert tf.bundle torch.bundle --to torch
    """
    manifest = convert(args.src, args.dst, backend=args.to, storage_options=_options(args))
    roles = [entry["role"] for entry in manifest["models"]]
    if args.json:
        print_json({"source": str(args.src), "target": str(args.dst),
                    "backend": manifest["backend"], "roles": roles})
        return 0
    console.print(f"{markup_safe(args.src)} -> [bold]{markup_safe(args.dst)}[/bold]: backend "
                  f"[cyan]{markup_safe(manifest['backend'])}[/cyan], roles "
                  f"{markup_safe(', '.join(roles))}", soft_wrap=True)
    return 0


COMMANDS: dict[str, Command] = {
    "inspect": run_inspect, "demo": run_demo, "checkpoints": run_checkpoints,
    "verify": run_verify, "migrate": run_migrate, "plan": run_plan, "parity": run_parity,
    "conformance": run_conformance, "convert": run_convert,
}


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``polybundle`` command.

    Example:
        >>> build_parser().parse_args(["inspect", "run.bundle"]).command
        'inspect'
    """
    epilog = "exit status: " + "; ".join(f"{code} {what}" for code, what in EXIT_STATUS.items())
    parser = argparse.ArgumentParser(
        prog="polybundle", description="One archive format for trained models, any framework.",
        epilog=epilog,
    )
    parser.add_argument("--version", action="version", version=f"polybundle {__version__}")
    parser.add_argument(
        "--import", dest="imports", action="append", default=[], metavar="MODULE",
        help="import MODULE before the command runs: your code that registers builders with "
        "@polybundle.architecture (a [tool.polybundle] imports list in pyproject.toml names "
        "them too)",
    )
    parser.add_argument(
        "--storage-option", dest="storage_options", action="append", default=[],
        type=storage_option, metavar="KEY=VALUE",
        help="an fsspec storage option for URL paths (s3://, gs://...), e.g. "
        "endpoint_url=http://127.0.0.1:9000 or key=...; VALUE is JSON or text; repeat it",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    inspect_parser = sub.add_parser("inspect", help="describe a bundle (no framework needed)")
    inspect_parser.add_argument("path")
    inspect_parser.add_argument("--json", action="store_true", help="print JSON")
    checkpoints_parser = sub.add_parser("checkpoints", help="list checkpoints and metrics")
    checkpoints_parser.add_argument("directory")
    checkpoints_parser.add_argument("--json", action="store_true", help="print JSON")
    demo_parser = sub.add_parser("demo", help="train, save and load small models")
    demo_parser.add_argument("--out", default=None, help="folder for the bundles (default: temp)")
    demo_parser.add_argument("--steps", type=positive_int, default=20,
                             help="training steps per model (1 or more)")
    demo_parser.add_argument("--json", action="store_true", help="print JSON")
    conformance_parser = sub.add_parser(
        "conformance", help="check every feature for every installed backend (feature matrix)"
    )
    conformance_parser.add_argument("--backend", action="append", help="only this backend")
    conformance_parser.add_argument(
        "--feature", action="append", choices=[f.name for f in conformance.FEATURES],
        help="only this feature",
    )
    conformance_parser.add_argument(
        "--plugin", action="append", help="register this plugin module first (import path)"
    )
    conformance_parser.add_argument("--json", action="store_true", help="print JSON")
    verify_parser = sub.add_parser("verify", help="integrity and safety report (loads no model)")
    verify_parser.add_argument("path")
    verify_parser.add_argument("--json", action="store_true", help="print JSON")
    verify_parser.add_argument(
        "--parity", action="store_true", help="also re-run stored parity inputs on every backend"
    )
    plan_parser = sub.add_parser("plan", help="show how tensors convert to another backend")
    plan_parser.add_argument("path")
    plan_parser.add_argument("--to", required=True, help="target backend (a registered name)")
    plan_parser.add_argument("--json", action="store_true", help="print JSON")
    parity_parser = sub.add_parser("parity", help="compare stored outputs on every backend")
    parity_parser.add_argument("path")
    parity_parser.add_argument("--rtol", type=float, default=None,
                               help=f"relative tolerance (default {DEFAULT_RTOL:g}; 0 allowed)")
    parity_parser.add_argument("--atol", type=float, default=None,
                               help=f"absolute tolerance (default {DEFAULT_ATOL:g}; 0 allowed)")
    parity_parser.add_argument("--json", action="store_true", help="print JSON")
    parity_parser.add_argument(
        "--plot", metavar="PNG",
        help="also draw outputs against the reference and the errors (needs polybundle[plot])",
    )
    migrate_parser = sub.add_parser("migrate", help="rewrite a legacy archive as format 2")
    migrate_parser.add_argument("src")
    migrate_parser.add_argument("dst", nargs="?", help="where to write (optional for format 2)")
    migrate_parser.add_argument("--json", action="store_true", help="print JSON")
    convert_parser = sub.add_parser(
        "convert", help="write a bundle as a native bundle of another backend"
    )
    convert_parser.add_argument("src")
    convert_parser.add_argument("dst")
    convert_parser.add_argument("--to", required=True, help="target backend (a registered name)")
    convert_parser.add_argument("--json", action="store_true", help="print JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``polybundle`` command; return its exit status.

    Errors polybundle raises on purpose, and the operating system's (a missing
    file, no permission), are printed as one line, exit status 2; see
    :data:`EXIT_STATUS` for the others.

    Example:
        >>> main(["verify", "run.bundle"])
        run.bundle (polybundle): OK
          checked: zip structure of 3 members
          ...
        0
        >>> main(["inspect", "nothing.bundle"])  # the one-line error goes to stderr
        2
    """
    args = build_parser().parse_args(argv)
    quiet_frameworks()
    console = make_console()
    try:
        import_user_modules(args.imports, start=Path.cwd())
        status = COMMANDS[args.command](args, console)
        sys.stdout.flush()
        return status
    except (PolybundleError, OSError) as exc:
        if isinstance(exc, BrokenPipeError):
            return _stdout_closed()
        make_console(stderr=True).print(
            f"[red]error[/red] ({type(exc).__name__}): {markup_safe(exc)}", soft_wrap=True
        )
        return USER_ERROR
    except KeyboardInterrupt:
        make_console(stderr=True).print("interrupted", soft_wrap=True)
        return INTERRUPTED


def _stdout_closed() -> int:
    """Point stdout at the null device (nothing more can reach the reader); return 141.

    Python would otherwise report the closed pipe again when it flushes stdout at exit.
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # stdout is not a file (tests capture it)
        pass
    return BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
