"""JSON Schemas shipped with polybundle (manifest and params of format 2).

Example:
    >>> load_schema("manifest")["title"]
    'polybundle manifest, format 2'
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

import jsonschema
import jsonschema_rs

from polybundle.errors import SchemaError


@cache
def load_schema(kind: str) -> dict[str, Any]:
    """Return the schema called ``kind`` (``"manifest"`` or ``"params"``).

    Example:
        >>> load_schema("params")["type"]
        'object'
    """
    text = resources.files(__package__).joinpath(f"{kind}.schema.json").read_text("utf-8")
    return json.loads(text)


@cache
def _validator(kind: str) -> jsonschema.protocols.Validator:
    schema = load_schema(kind)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


@cache
def _fast_validator(kind: str) -> Any:
    return jsonschema_rs.validator_for(load_schema(kind), validate_formats=True)


def _surely_valid(kind: str, document: Any) -> bool:
    """Return True when the compiled validator (:mod:`jsonschema_rs`) accepts ``document``.

    It checks a manifest of 1,000 tensors in under a millisecond, where
    :mod:`jsonschema` takes about 0.3 s; anything it does not accept (or
    cannot take: an integer past 64 bits) goes to :mod:`jsonschema`, which
    has the last word and writes the messages.
    """
    try:
        return bool(_fast_validator(kind).is_valid(document))
    except (ValueError, OverflowError, TypeError):
        return False


def validate(kind: str, document: Any, *, where: str) -> None:
    """Raise :class:`SchemaError` listing every way ``document`` fails schema ``kind``.

    Example:
        >>> validate("params", {"N": 64}, where="params.json")
        >>> validate("params", {"N": 10**40}, where="params.json")  # past 64 bits: checked too
    """
    if _surely_valid(kind, document):
        return
    errors = sorted(_validator(kind).iter_errors(document), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [
            f"  at {'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}"
            for e in errors[:10]
        ]
        more = f"\n  ... and {len(errors) - 10} more" if len(errors) > 10 else ""
        raise SchemaError(
            f"{where} does not match the {kind} schema of format 2:\n"
            + "\n".join(lines)
            + more
            + "\nThe file was not written by a compatible polybundle, or it was edited."
        )
