"""The ``polybundle`` command line.

Subcommands are small functions registered in :data:`COMMANDS`; each gets the
parsed arguments and returns the exit status.

Everything printed that comes from a file (member, tensor and architecture
names, params, metrics, error messages that quote them) goes through
:func:`printable`, which shows control characters as escapes (an ESC byte
prints as ``\x1b``, so no sequence reaches the terminal: no clearing, no
colours, no OSC-8 hyperlinks), and is given to rich as plain text or with its
markup escaped (a name holding ``[/red]`` prints as it is).

Example:
    $ polybundle inspect run.bundle
    $ polybundle inspect run.bundle --json
    $ polybundle demo --out ./demo-bundles
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from polybundle.api.checkpoints import CheckpointManager
from polybundle.api.inspection import inspect
from polybundle.api.migrate import migrate
from polybundle.api.progress import printable
from polybundle.api.transfer import plan_bundle
from polybundle.api.verify import verify
from polybundle.errors import PolybundleError
from polybundle.hooks.manager import get_plugin_manager
from polybundle.tools import conformance, demo
from polybundle.tools.parity import DEFAULT_ATOL, DEFAULT_RTOL, compare
from polybundle.tools.user_code import import_user_modules

Command = Callable[[argparse.Namespace, Console], int]


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
    report = inspect(args.path)
    if args.json:
        print_json(report)
        return 0
    safe = markup_safe
    writer = report["manifest"]["writer"]
    console.print(
        f"[bold]{safe(report['path'])}[/bold]: polybundle format "
        f"{safe(report['format_version'])}, backend [cyan]{safe(report['backend'])}[/cyan] "
        f"({safe(writer['framework'])} {safe(writer['framework_version'])}), written "
        f"{safe(report['manifest']['created'])}"
    )
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
    manager = CheckpointManager(args.directory, keep_last=None)
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
    results = demo.run(args.out, steps=args.steps, console=console)
    return 0 if results and all(result.matches for result in results) else 1


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
    report = verify(args.path, progress=True)
    parity_ok = True
    if getattr(args, "parity", False) and report.ok:
        parity_ok = run_parity(args, console) == 0
    if args.json:
        print_json(report.to_json())
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
        $ polybundle parity run.bundle --rtol 1e-5
    """
    rtol = getattr(args, "rtol", None) or DEFAULT_RTOL
    atol = getattr(args, "atol", None) or DEFAULT_ATOL
    report = compare(args.path, rtol=rtol, atol=atol)
    table = Table(title=Text(f"parity ({printable(report.reference)})"))
    for column in ("role", "output", "backend", "max abs error", "max rel error", "result"):
        table.add_column(column)
    for row in report.rows:
        verdict = Text("pass", style="green") if row.passed else Text("FAIL", style="red")
        table.add_row(_plain(row.role), _plain(row.output), _plain(row.backend),
                      f"{row.max_abs:.3e}", f"{row.max_rel:.3e}", verdict)
    if not getattr(args, "json", False):
        console.print(table)
        console.print(f"pass when max abs error <= {atol:g} + {rtol:g} * max|reference|")
        for name, why in report.skipped.items():
            console.print(f"  [yellow]skipped[/yellow] {markup_safe(name)}: {markup_safe(why)}",
                          soft_wrap=True)
    return 0 if report.passed else 1


def run_plan(args: argparse.Namespace, console: Console) -> int:
    """Print how each tensor would convert to another backend; 1 if it cannot. Builds no model.

    Example:
        $ polybundle plan tf.bundle --to torch
    """
    plan = plan_bundle(args.path, args.to)
    if args.json:
        print_json(plan)
    problems = 0
    for role in plan["roles"]:
        issues = [(label, role[label]) for label in
                  ("missing", "unexpected", "unmapped", "misaligned", "mismatched") if role[label]]
        if not role["builder"]:
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
        for label, items in issues:
            console.print(f"  [red]{label}[/red]: {markup_safe(', '.join(map(str, items)))}",
                          soft_wrap=True)
    return 1 if problems else 0


def run_migrate(args: argparse.Namespace, console: Console) -> int:
    """Rewrite a legacy archive as a format-2 bundle and print what was converted and dropped.

    Example:
        $ polybundle migrate wts.h5.zip wts.bundle
    """
    for line in migrate(args.src, args.dst).lines():
        console.print(markup_safe(line), highlight=False, soft_wrap=True)
    return 0


COMMANDS: dict[str, Command] = {
    "inspect": run_inspect, "demo": run_demo, "checkpoints": run_checkpoints,
    "verify": run_verify, "migrate": run_migrate, "plan": run_plan, "parity": run_parity,
    "conformance": run_conformance,
}


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``polybundle`` command.

    Example:
        >>> build_parser().parse_args(["inspect", "run.bundle"]).command
        'inspect'
    """
    parser = argparse.ArgumentParser(
        prog="polybundle", description="One archive format for trained models, any framework."
    )
    parser.add_argument(
        "--import", dest="imports", action="append", default=[], metavar="MODULE",
        help="import MODULE before the command runs: your code that registers builders with "
        "@polybundle.architecture (a [tool.polybundle] imports list in pyproject.toml names "
        "them too)",
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
    demo_parser.add_argument("--steps", type=int, default=20, help="training steps per model")
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
    parity_parser.add_argument("--rtol", type=float, default=None)
    parity_parser.add_argument("--atol", type=float, default=None)
    migrate_parser = sub.add_parser("migrate", help="rewrite a legacy archive as format 2")
    migrate_parser.add_argument("src")
    migrate_parser.add_argument("dst", nargs="?", help="where to write (optional for format 2)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``polybundle`` command; return its exit status.

    Errors polybundle raises on purpose are printed as one line, exit status 2.

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
    console = Console()
    try:
        import_user_modules(args.imports, start=Path.cwd())
        return COMMANDS[args.command](args, console)
    except PolybundleError as exc:
        Console(stderr=True).print(
            f"[red]error[/red] ({type(exc).__name__}): {markup_safe(exc)}", soft_wrap=True
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
