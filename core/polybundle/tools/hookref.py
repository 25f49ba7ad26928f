"""Render the hook reference (``docs/hooks.md``) from the hookspec docstrings.

Each hook spec in :mod:`polybundle.hooks.hookspecs` documents its arguments
with ``:param name:`` and its answer with ``:returns:``, as pytest's hookspec
module does; this tool turns them into Markdown. Regenerate the committed page
with::

    python -m polybundle.tools.hookref > docs/hooks.md

Example:
    >>> spec = hook_specs()[0]
    >>> spec.name, spec.arguments, "register" in spec.params
    ('polybundle_register_backends', ('register',), True)
    >>> render().splitlines()[0]
    '# Hook reference'
"""

from __future__ import annotations

import inspect
import re
import sys
from dataclasses import dataclass, field
from types import ModuleType

from polybundle.hooks import hookspecs

_FIELD = re.compile(r"^:(param (?P<param>\w+)|returns|raises (?P<raises>\w+)):\s*(?P<text>.*)$")


@dataclass(frozen=True)
class HookSpec:
    """One hook: its name, arguments, options and the parts of its docstring.

    Example:
        >>> HookSpec("polybundle_x", ("a",), {}, "Do x.", {"a": "an a"}, "nothing.").name
        'polybundle_x'
    """

    name: str
    arguments: tuple[str, ...]
    options: dict[str, bool]
    description: str
    params: dict[str, str] = field(default_factory=dict)
    returns: str = ""
    example: str = ""
    signature: str = ""


def _parse(doc: str) -> tuple[str, dict[str, str], str, str]:
    """Split a hookspec docstring into description, ``:param:`` texts, ``:returns:``, example."""
    body, _, example = doc.partition("\nExample:\n")
    description: list[str] = []
    params: dict[str, str] = {}
    returns = ""
    current: list[str] | None = None
    fields: list[tuple[str, list[str]]] = []
    for line in body.splitlines():
        match = _FIELD.match(line.strip())
        if match:
            key = match["param"] or ("returns" if match.group(1) == "returns" else "")
            current = [match["text"]]
            fields.append((key, current))
        elif current is not None and line.startswith(" ") and line.strip():
            current.append(line.strip())
        elif current is not None and not line.strip():
            current = None
        elif current is None:
            description.append(line)
    for key, lines in fields:
        if key == "returns":
            returns = " ".join(lines)
        elif key:
            params[key] = " ".join(lines)
    return "\n".join(description).strip(), params, returns, inspect.cleandoc(example)


def hook_specs(module: ModuleType = hookspecs) -> list[HookSpec]:
    """Return every hook spec of ``module`` in source order.

    Example:
        >>> [spec.name for spec in hook_specs()][:2]
        ['polybundle_register_backends', 'polybundle_detect_archive']
    """
    marker = f"{module.PROJECT_NAME}_spec"
    specs: list[HookSpec] = []
    functions = [
        function for name, function in vars(module).items()
        if name.startswith(f"{module.PROJECT_NAME}_") and inspect.isfunction(function)
        and hasattr(function, marker)
    ]
    functions.sort(key=lambda function: function.__code__.co_firstlineno)
    for function in functions:
        options = {k: bool(v) for k, v in getattr(function, marker).items() if v is True}
        description, params, returns, example = _parse(inspect.getdoc(function) or "")
        signature = inspect.signature(function)
        specs.append(HookSpec(
            name=function.__name__,
            arguments=tuple(signature.parameters),
            options=options,
            description=description,
            params=params,
            returns=returns,
            example=example,
            signature=f"{function.__name__}({', '.join(signature.parameters)})",
        ))
    return specs


def _annotation(function_name: str, argument: str) -> str:
    function = getattr(hookspecs, function_name)
    annotation = inspect.signature(function).parameters[argument].annotation
    return annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)


_ROLE = re.compile(r":(?:func|class|mod|data|attr|meth|exc):`~?([^`]+)`")


def markdown(text: str) -> str:
    """Turn reStructuredText roles and literals into Markdown code spans.

    Example:
        >>> markdown("an instance of :class:`polybundle.plugin.Backend` or ``None``")
        'an instance of `polybundle.plugin.Backend` or `None`'
    """
    return _ROLE.sub(r"`\1`", text).replace("``", "`")


def _code(example: str) -> str:
    """Turn a doctest example into a code block that imports the names it uses."""
    lines = [line[4:] for line in example.splitlines() if line[:4] in (">>> ", "... ")]
    names = [name for name in ("Detection", "hookimpl") if name in example]
    return "\n".join([f"from polybundle.plugin import {', '.join(names)}", "", *lines])


def render(module: ModuleType = hookspecs) -> str:
    """Return the Markdown hook reference of ``module``.

    Example:
        >>> "### `polybundle_detect_archive(archive)`" in render()
        True
    """
    out = [
        "# Hook reference",
        "",
        "<!-- Generated from polybundle/hooks/hookspecs.py by "
        "`python -m polybundle.tools.hookref > docs/hooks.md`; do not edit by hand. -->",
        "",
        "A plugin implements any of these hooks with functions marked "
        "`@polybundle.plugin.hookimpl` (see [the plugin guide](plugins.md)). *historic* "
        "hooks are also called at once for a plugin registered after first use; "
        "*firstresult* hooks stop at the first answer that is not None.",
        "",
    ]
    for spec in hook_specs(module):
        flags = [name for name in ("historic", "firstresult") if spec.options.get(name)]
        out += [f"### `{spec.signature}`", ""]
        if flags:
            out += [" ".join(f"*{flag}*" for flag in flags), ""]
        out += [markdown(spec.description), "", "**Parameters**", ""]
        for argument in spec.arguments:
            annotation = _annotation(spec.name, argument)
            text = markdown(spec.params.get(argument, ""))
            out.append(f"- `{argument}` (`{annotation}`): {text}")
        if not spec.arguments:
            out.append("None.")
        out += ["", f"**Returns**: {markdown(spec.returns)}", ""]
        if spec.example:
            out += ["**Example**", "", "```python", _code(spec.example), "```", ""]
    return "\n".join(out).rstrip("\n") + "\n"


def main() -> None:
    """Write the hook reference to standard output."""
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
