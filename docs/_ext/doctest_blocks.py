"""Griffe extension for the API reference: docstring examples render as code.

The docstrings are written for doctest (``Example:`` followed by prompt lines and their
output), which Markdown would read as nested block quotes (and ``x["a"](y)`` as a link).
This extension wraps every run of prompt and output lines in a fenced ``pycon`` block;
the docstrings' text is otherwise unchanged. mkdocs.yml names it under mkdocstrings'
``extensions``.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

PROMPT = re.compile(r"^(?P<indent>\s*)>{3}( |$)")


def fence_examples(text: str) -> str:
    """Return ``text`` with each doctest example (prompts and output) in a ``pycon`` fence."""
    out: list[str] = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        match = PROMPT.match(lines[index])
        if not match:
            out.append(lines[index])
            index += 1
            continue
        indent = match["indent"]
        block = []
        while index < len(lines) and lines[index].strip() and lines[index].startswith(indent):
            block.append(lines[index][len(indent):])
            index += 1
        if out and out[-1].strip():
            out.append("")
        out += [f"{indent}```pycon", *(indent + line for line in block), f"{indent}```"]
    return "\n".join(out)


class DoctestBlocks(griffe.Extension):
    """Fence the doctest examples of every docstring griffe loads."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = fence_examples(obj.docstring.value)
