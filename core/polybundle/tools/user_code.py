"""The user's own modules the ``polybundle`` command imports first, and only those.

A bundle names its architecture and the module that defined its builder
(``architecture.module`` in the manifest), but that is data: importing a
module runs its code, so polybundle never imports what a bundle names. The
user says which modules register their builders (``@polybundle.architecture``):

- ``polybundle --import my_models COMMAND ...`` (repeatable, before the
  command), and
- ``imports = ["my_models"]`` under ``[tool.polybundle]`` in the
  ``pyproject.toml`` of the current folder or the nearest folder above it
  that has one.

The pyproject's modules are imported first, then the ``--import`` ones, each
once, in order. The folder of the pyproject (for its ``imports``) and the
current folder (for ``--import``) are put on ``sys.path`` first, as
``python -m`` does, so a module beside the project needs no installing.

Example (a module that registers a builder, beside a pyproject naming it):
    >>> from polybundle.hooks.registry import get_registry, scoped_declarations
    >>> saved_path = list(sys.path)
    >>> _ = Path("my_doc_models.py").write_text(
    ...     "import polybundle\\n"
    ...     "@polybundle.architecture('doc-user-net', backend='torch')\\n"
    ...     "def build(config):\\n"
    ...     "    return config\\n")
    >>> _ = Path("pyproject.toml").write_text('[tool.polybundle]\\nimports = ["my_doc_models"]\\n')
    >>> configured_imports(Path.cwd())[0]
    ['my_doc_models']
    >>> with scoped_declarations():
    ...     [module.__name__ for module in import_user_modules([], start=Path.cwd())]
    ...     get_registry().has_builder("doc-user-net", "torch")
    ['my_doc_models']
    True
    >>> import_user_modules(["no_such_module_here"])
    Traceback (most recent call last):
    ...
    polybundle.errors.UserCodeError: --import no_such_module_here: the module could not be ...
    >>> sys.path[:] = saved_path  # the examples' folder was put on it, as the command does
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from polybundle.errors import UserCodeError

__all__ = ["configured_imports", "find_pyproject", "import_user_modules"]

PYPROJECT = "pyproject.toml"


def find_pyproject(start: Path) -> Path | None:
    """Return ``start/pyproject.toml`` or the nearest one in a folder above, else None.

    Example:
        >>> _ = Path("pyproject.toml").write_text("")
        >>> Path("sub").mkdir()
        >>> find_pyproject(Path("sub").resolve()) == Path("pyproject.toml").resolve()
        True
    """
    for folder in (start, *start.parents):
        candidate = folder / PYPROJECT
        if candidate.is_file():
            return candidate
    return None


def configured_imports(start: Path) -> tuple[list[str], Path | None]:
    """Return the ``[tool.polybundle] imports`` of the nearest ``pyproject.toml`` and its path.

    No pyproject, or one without the table: ``([], path or None)``.

    :raises UserCodeError: when the file is not valid TOML or ``imports`` is
        not a list of module names.

    Example:
        >>> _ = Path("pyproject.toml").write_text('[tool.polybundle]\\nimports = "one"\\n')
        >>> configured_imports(Path.cwd())
        Traceback (most recent call last):
        ...
        polybundle.errors.UserCodeError: ...pyproject.toml: [tool.polybundle] imports is 'one'; ...
    """
    path = find_pyproject(start)
    if path is None:
        return [], None
    try:
        with path.open("rb") as stream:
            document = tomllib.load(stream)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UserCodeError(
            f"{path}: not readable as TOML ({exc}); polybundle reads the [tool.polybundle] "
            "imports list from it. Fix the file."
        ) from None
    table: Any = document.get("tool", {}).get("polybundle", {})
    if not isinstance(table, dict):
        raise UserCodeError(
            f"{path}: [tool.polybundle] is {table!r}; expected a table, e.g. "
            '[tool.polybundle] then imports = ["my_models"].'
        )
    names = table.get("imports", [])
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise UserCodeError(
            f"{path}: [tool.polybundle] imports is {names!r}; expected a list of module "
            'names, e.g. imports = ["my_models"].'
        )
    return list(names), path


def _on_path(folder: Path) -> None:
    entry = str(folder)
    if entry not in sys.path and os.path.abspath(entry) not in map(os.path.abspath, sys.path):
        sys.path.insert(0, entry)


def _import(name: str, origin: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001 - any failure of user code is reported in one line
        frame = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
        at = f" at {frame[0].filename}:{frame[0].lineno}" if frame else ""
        missing = isinstance(exc, ModuleNotFoundError) and exc.name == name.split(".")[0]
        what = "the module could not be found" if missing else "importing it failed"
        raise UserCodeError(
            f"{origin}: {what} ({type(exc).__name__}: {exc}{'' if missing else at}). "
            f"Check that {name!r} is importable from here (python -c 'import {name}')."
        ) from None


def import_user_modules(
    names: Iterable[str], *, start: Path | None = None
) -> list[ModuleType]:
    """Import the pyproject's ``imports`` (when ``start`` is given), then ``names``; in order.

    ``start`` is the folder the pyproject is looked up from (the command's
    current folder). Returns the modules imported, each once.

    :raises UserCodeError: naming the module when one does not import.
    """
    wanted: list[tuple[str, str]] = []
    if start is not None:
        configured, pyproject = configured_imports(start)
        if configured and pyproject is not None:
            _on_path(pyproject.parent)
            wanted += [(n, f"{pyproject} [tool.polybundle] imports {n}") for n in configured]
    given = list(names)
    if given:
        _on_path(Path.cwd())
        wanted += [(n, f"--import {n}") for n in given]
    modules: dict[str, ModuleType] = {}
    for name, origin in wanted:
        if name not in modules:
            modules[name] = _import(name, origin)
    return list(modules.values())
