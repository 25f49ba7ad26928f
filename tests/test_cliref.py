"""The CLI reference page (``docs/cli.md``) is generated from the parser and kept current."""

from __future__ import annotations

import argparse

from polybundle.tools import cli, cliref

from .conftest import REPO


def test_committed_cli_reference_is_current() -> None:
    committed = (REPO / "docs" / "cli.md").read_text(encoding="utf-8")
    assert committed == cliref.render(), (
        "docs/cli.md is stale: run python -m polybundle.tools.cliref > docs/cli.md"
    )


def test_every_command_and_option_is_documented() -> None:
    page = cliref.render()
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in sub.choices.items():
        assert f"## `polybundle {name}`" in page
        for action in command._actions:
            for spelling in action.option_strings:
                if spelling not in ("-h", "--help"):
                    assert f"`{spelling}" in page, (name, spelling)


def test_defaults_choices_and_repeats_are_shown() -> None:
    def build() -> argparse.ArgumentParser:
        parser = argparse.ArgumentParser(prog="tool", description="A | tool.")
        sub = parser.add_subparsers(dest="command", required=True)
        run = sub.add_parser("run", help="run it")
        run.add_argument("src")
        run.add_argument("dst", nargs="?", help="where")
        run.add_argument("--steps", type=int, default=20, help="how many")
        run.add_argument("--to", choices=["a", "b"], help="target")
        run.add_argument("--import", dest="imports", action="append", metavar="MODULE")
        return parser

    page = cliref.render(build)
    assert "A \\| tool." in page
    assert "| `[dst]` | where |" in page
    assert "| `--steps STEPS` | how many; default: `20` |" in page
    assert "| `--to TO` | target; one of `a`, `b` |" in page
    assert "| `--import MODULE` | repeatable |" in page
    assert "usage: tool run [-h]" in page
