"""The ``polybundle`` command line.

Subcommands are small functions registered in :data:`COMMANDS`; each gets the
parsed arguments and returns the exit status.

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

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .errors import PolybundleError

Command = Callable[[argparse.Namespace, Console], int]


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
    from .inspection import inspect

    report = inspect(args.path)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    writer = report["manifest"]["writer"]
    console.print(
        f"[bold]{report['path']}[/bold]: polybundle format {report['format_version']}, "
        f"backend [cyan]{report['backend']}[/cyan] ({writer['framework']} "
        f"{writer['framework_version']}), written {report['manifest']['created']}"
    )
    for entry in report["manifest"]["models"]:
        arch = entry["architecture"]
        label = f"{arch['name']} {json.dumps(arch['config'])}" if arch else "not recorded"
        console.print(f"  role [green]{entry['role']}[/green]: architecture {label}")
    console.print(f"  params: {json.dumps(report['params'])}")
    table = Table(title="tensors")
    for column in ("role", "name", "shape", "dtype", "layout", "bytes"):
        table.add_column(column, justify="right" if column == "bytes" else "left")
    total = 0
    for row in report["tensors"]:
        total += row["bytes"]
        table.add_row(
            row["role"], row["name"], "x".join(map(str, row["shape"])) or "()",
            row["dtype"], row["layout"], _human_bytes(row["bytes"]),
        )
    console.print(table)
    console.print(f"{len(report['tensors'])} tensors, {_human_bytes(total)}")
    for role, summary in report.get("optimizers", {}).items():
        slots = ", ".join(f"{slot} x{count}" for slot, count in summary["slots"].items())
        console.print(
            f"  optimizer of [green]{role}[/green]: {summary['algorithm']} "
            f"({summary['class']}), step {summary['step']}, slots {slots or 'none'} "
            f"({_human_bytes(summary['slot_bytes'])}), schedule {summary['schedule']}"
        )
        console.print(f"    hyperparameters: {json.dumps(summary['hyperparameters'])}")
    return 0


def run_checkpoints(args: argparse.Namespace, console: Console) -> int:
    """List the checkpoints of a directory with their metrics (or JSON).

    Example:
        $ polybundle checkpoints ./ckpt
    """
    from .checkpoints import CheckpointManager

    manager = CheckpointManager(args.directory, keep_last=None)
    retained = {checkpoint.step: checkpoint for checkpoint in manager.checkpoints()}
    history = manager.history()
    if args.json:
        rows = []
        for entry in history:
            kept = retained.get(entry["step"])
            rows.append({**entry, "file": kept.path.name if kept else None})
        print(json.dumps(rows, indent=2))
        return 0
    latest = manager.latest()
    table = Table(title=f"checkpoints in {args.directory}")
    for column in ("step", "saved", "metrics", "file"):
        table.add_column(column)
    for entry in history:
        kept = retained.get(entry["step"])
        marker = " (latest)" if kept is not None and kept == latest else ""
        table.add_row(
            str(entry["step"]), entry["created"], json.dumps(entry["metrics"]),
            (kept.path.name + marker) if kept else "[dim]pruned[/dim]",
        )
    console.print(table)
    console.print(f"{len(retained)} retained of {len(history)} saved")
    return 0


def run_demo(args: argparse.Namespace, console: Console) -> int:
    """Train small models in each installed framework, save, load back, compare.

    Example:
        $ polybundle demo --out ./demo-bundles --steps 5
    """
    from .demo import run

    results = run(args.out, steps=args.steps, console=console)
    return 0 if results and all(result.matches for result in results) else 1


def run_verify(args: argparse.Namespace, console: Console) -> int:
    """Check an archive's integrity and safety without loading a model; 1 if anything is wrong.

    Example:
        $ polybundle verify wts.h5.zip
    """
    from .verify import verify

    report = verify(args.path, progress=True)
    parity_ok = True
    if getattr(args, "parity", False) and report.ok:
        parity_ok = run_parity(args, console) == 0
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
        return 0 if report.ok and parity_ok else 1
    verdict = "[green]OK[/green]" if report.ok else "[red]PROBLEMS FOUND[/red]"
    console.print(f"[bold]{escape(report.path)}[/bold] ({report.format}): {verdict}")
    for line in report.checked:
        console.print(f"  checked: {escape(line)}", soft_wrap=True)
    for line in report.notes:
        console.print(f"  [yellow]note[/yellow]: {escape(line)}", soft_wrap=True)
    for line in report.problems:
        console.print(f"  [red]problem[/red]: {escape(line)}", soft_wrap=True)
    return 0 if report.ok and parity_ok else 1


def run_parity(args: argparse.Namespace, console: Console) -> int:
    """Re-run the bundle's stored parity inputs on every installed backend; 1 on a failure.

    Example:
        $ polybundle parity run.bundle --rtol 1e-5
    """
    from .parity import DEFAULT_ATOL, DEFAULT_RTOL, compare

    rtol = getattr(args, "rtol", None) or DEFAULT_RTOL
    atol = getattr(args, "atol", None) or DEFAULT_ATOL
    report = compare(args.path, rtol=rtol, atol=atol)
    table = Table(title=f"parity ({report.reference})")
    for column in ("role", "output", "backend", "max abs error", "max rel error", "result"):
        table.add_column(column)
    for row in report.rows:
        verdict = "[green]pass[/green]" if row.passed else "[red]FAIL[/red]"
        table.add_row(row.role, row.output, row.backend, f"{row.max_abs:.3e}",
                      f"{row.max_rel:.3e}", verdict)
    if not getattr(args, "json", False):
        console.print(table)
        console.print(f"pass when max abs error <= {atol:g} + {rtol:g} * max|reference|")
        for name, why in report.skipped.items():
            console.print(f"  [yellow]skipped[/yellow] {name}: {escape(why)}", soft_wrap=True)
    return 0 if report.passed else 1


def run_plan(args: argparse.Namespace, console: Console) -> int:
    """Print how each tensor would convert to another backend; 1 if it cannot. Builds no model.

    Example:
        $ polybundle plan tf.bundle --to torch
    """
    from .transfer import plan_bundle

    plan = plan_bundle(args.path, args.to)
    if args.json:
        print(json.dumps(plan, indent=2))
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
        table = Table(title=f"role {role['role']}: {plan['source']} -> {plan['target']}")
        for column in ("source", "target", "kind.slot", "layout", "shape", "action"):
            table.add_column(column)
        for row in role["rows"]:
            shape = "x".join(map(str, row["shape"])) if row["shape"] is not None else "-"
            table.add_row(row["source"], row["target"], f"{row['kind']}.{row['slot']}",
                          row["layout"], shape or "()", row["detail"])
        console.print(table)
        for label, items in issues:
            console.print(f"  [red]{label}[/red]: {escape(', '.join(items))}", soft_wrap=True)
    return 1 if problems else 0


def run_migrate(args: argparse.Namespace, console: Console) -> int:
    """Rewrite a legacy archive as a format-2 bundle and print what was converted and dropped.

    Example:
        $ polybundle migrate wts.h5.zip wts.bundle
    """
    from .migrate import migrate

    for line in migrate(args.src, args.dst).lines():
        console.print(escape(line), highlight=False, soft_wrap=True)
    return 0


COMMANDS: dict[str, Command] = {
    "inspect": run_inspect, "demo": run_demo, "checkpoints": run_checkpoints,
    "verify": run_verify, "migrate": run_migrate, "plan": run_plan, "parity": run_parity,
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
    verify_parser = sub.add_parser("verify", help="integrity and safety report (loads no model)")
    verify_parser.add_argument("path")
    verify_parser.add_argument("--json", action="store_true", help="print JSON")
    verify_parser.add_argument(
        "--parity", action="store_true", help="also re-run stored parity inputs on every backend"
    )
    plan_parser = sub.add_parser("plan", help="show how tensors convert to another backend")
    plan_parser.add_argument("path")
    plan_parser.add_argument("--to", required=True, help="target backend (torch, tensorflow)")
    plan_parser.add_argument("--json", action="store_true", help="print JSON")
    parity_parser = sub.add_parser("parity", help="compare stored outputs on every backend")
    parity_parser.add_argument("path")
    parity_parser.add_argument("--rtol", type=float, default=None)
    parity_parser.add_argument("--atol", type=float, default=None)
    migrate_parser = sub.add_parser("migrate", help="rewrite a legacy archive as format 2")
    migrate_parser.add_argument("src")
    migrate_parser.add_argument("dst")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``polybundle`` command; return its exit status.

    Errors polybundle raises on purpose are printed as one line, exit status 2.

    Example:
        >>> main(["inspect", "run.bundle", "--json"])  # doctest: +SKIP
        0
    """
    args = build_parser().parse_args(argv)
    console = Console()
    try:
        return COMMANDS[args.command](args, console)
    except PolybundleError as exc:
        Console(stderr=True).print(f"[red]error[/red] ({type(exc).__name__}): {escape(str(exc))}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
