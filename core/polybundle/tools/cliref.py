"""Render the CLI reference (``docs/cli.md``) from the ``polybundle`` argument parser.

The parser in :func:`polybundle.tools.cli.build_parser` is the single source of the
commands, their arguments, defaults and help texts; this tool turns it into Markdown, as
:mod:`polybundle.tools.hookref` does for the hooks. Regenerate the committed page with::

    python -m polybundle.tools.cliref > docs/cli.md

Example:
    >>> [command.name for command in commands()][:2]
    ['inspect', 'checkpoints']
    >>> render().splitlines()[0]
    '# CLI reference'
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass

from polybundle.tools import cli

WIDTH = 100
"""Usage lines wrap at this width, whatever the terminal that renders the page."""


@dataclass(frozen=True)
class Option:
    """One argument of a command: how it is written, its help text, default and choices.

    Example:
        >>> Option("--json", "print JSON").row()
        '| `--json` | print JSON |'
    """

    spelling: str
    help: str = ""
    default: str = ""
    choices: str = ""
    repeatable: bool = False

    def row(self) -> str:
        """Return this option as a Markdown table row."""
        notes = [self.help.rstrip(".")] if self.help else []
        if self.choices:
            notes.append(f"one of {self.choices}")
        if self.repeatable:
            notes.append("repeatable")
        if self.default:
            notes.append(f"default: `{self.default}`")
        return f"| `{self.spelling}` | {_cell('; '.join(notes))} |"


@dataclass(frozen=True)
class Command:
    """One subcommand: its name, one-line help, usage line and arguments."""

    name: str
    help: str
    usage: str
    options: tuple[Option, ...]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _usage(parser: argparse.ArgumentParser) -> str:
    formatter = argparse.HelpFormatter(parser.prog, width=WIDTH)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups)
    return formatter.format_help().strip()


def _option(action: argparse.Action) -> Option:
    if action.option_strings:
        spelling = ", ".join(action.option_strings)
        if action.nargs != 0:
            spelling += f" {action.metavar or action.dest.upper()}"
    else:
        spelling = str(action.metavar or action.dest)
        if action.nargs == "?":
            spelling = f"[{spelling}]"
        elif action.nargs in ("*", "+"):
            spelling += " ..."
    default = action.default
    shown = (
        "" if default in (None, False, argparse.SUPPRESS) or action.nargs == 0
        or isinstance(default, list) else str(default)
    )
    help_text = "" if action.help in (None, argparse.SUPPRESS) else str(action.help)
    return Option(
        spelling=spelling,
        help=help_text % {"default": default, "prog": ""} if "%(" in help_text else help_text,
        default=shown,
        choices=", ".join(f"`{choice}`" for choice in action.choices or ()),
        repeatable=isinstance(action, (argparse._AppendAction, argparse._CountAction)),
    )


def _options(parser: argparse.ArgumentParser) -> tuple[Option, ...]:
    return tuple(
        _option(action) for action in parser._actions
        if not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction))
        and action.help != argparse.SUPPRESS
    )


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    return next(
        action for action in parser._actions if isinstance(action, argparse._SubParsersAction)
    )


def commands(
    build: Callable[[], argparse.ArgumentParser] = cli.build_parser,
) -> list[Command]:
    """Return every subcommand of the parser ``build`` makes, in the order it defines them.

    Example:
        >>> inspect = commands()[0]
        >>> inspect.usage.startswith("usage: polybundle inspect"), inspect.options[0].spelling
        (True, 'path')
    """
    sub = _subparsers(build())
    helps = {choice.dest: choice.help or "" for choice in sub._choices_actions}
    return [
        Command(name=name, help=helps.get(name, ""), usage=_usage(parser),
                options=_options(parser))
        for name, parser in sub.choices.items()
    ]


def render(build: Callable[[], argparse.ArgumentParser] = cli.build_parser) -> str:
    """Return the Markdown CLI reference of the parser ``build`` makes.

    Example:
        >>> "## `polybundle inspect`" in render()
        True
    """
    parser = build()
    out = [
        "# CLI reference",
        "",
        "<!-- Generated from polybundle/tools/cli.py by "
        "`python -m polybundle.tools.cliref > docs/cli.md`; do not edit by hand. -->",
        "",
        _cell(parser.description or ""),
        "",
        "```text",
        _usage(parser),
        "```",
        "",
    ]
    general = _options(parser)
    if general:
        out += ["Options of every invocation:", "", "| argument | meaning |", "| --- | --- |"]
        out += [option.row() for option in general]
        out.append("")
    exit_codes = getattr(cli, "EXIT_CODES", None)
    if isinstance(exit_codes, dict) and exit_codes:
        out += ["## Exit status", "", "| status | meaning |", "| --- | --- |"]
        out += [f"| `{code}` | {_cell(str(text))} |" for code, text in exit_codes.items()]
        out.append("")
    out += ["## Commands", "", "| command | what it does |", "| --- | --- |"]
    listed = commands(build)
    out += [f"| [`{c.name}`](#polybundle-{c.name}) | {_cell(c.help)} |" for c in listed]
    out.append("")
    for command in listed:
        out += [f"## `polybundle {command.name}`", ""]
        if command.help:
            out += [_cell(command.help[0].upper() + command.help[1:]) + ".", ""]
        out += ["```text", command.usage, "```", ""]
        if command.options:
            out += ["| argument | meaning |", "| --- | --- |"]
            out += [option.row() for option in command.options]
            out.append("")
    return "\n".join(out).rstrip("\n") + "\n"


def main() -> None:
    """Write the CLI reference to standard output."""
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
