"""Layers of a canonical kind by behaviour: rules a backend asks before its standard layers.

A backend keeps one :class:`KindRules`; its ``register_kind`` adds a
:class:`KindRule` -- a class (checked with ``isinstance``, so subclasses
match) or a predicate, the canonical kind, and the layer's attribute ->
canonical slot names when they differ from the standard layer's. Rules
registered later are asked first. No framework is imported here: a rule's
class or predicate is the backend's.

Example:
    >>> rules = KindRules("modules")
    >>> rule = rules.register(dict, "dense")
    >>> rules.find({}).kind, rules.find([]) is None
    ('dense', True)
    >>> rules.unregister(rule)
    >>> rules.find({}) is None
    True
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from polybundle.errors import ConversionError
from polybundle.model.canonical import KINDS


@dataclass(frozen=True)
class KindRule:
    """A registered rule: layers it matches are layers of ``kind``.

    ``match`` is a class (checked with ``isinstance``) or a predicate on the
    layer; ``slots`` maps the layer's attributes to canonical slots when they
    differ from the standard layer's.

    Example:
        >>> KindRule(int, "dense").matches(3), KindRule(int, "dense").matches("3")
        (True, False)
    """

    match: type | Callable[[Any], bool]
    kind: str
    slots: Mapping[str, str] = field(default_factory=dict)

    def matches(self, layer: Any) -> bool:
        """Return True when ``layer`` is a layer of this rule's kind."""
        if isinstance(self.match, type):
            return isinstance(layer, self.match)
        return bool(self.match(layer))


class KindRules:
    """One backend's registered rules, the latest first.

    ``what`` names the backend's layers in error messages (``"modules"``,
    ``"layers"``).
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self._rules: list[KindRule] = []

    def register(
        self, match: type | Callable[[Any], bool], kind: str, *,
        slots: Mapping[str, str] | None = None,
    ) -> KindRule:
        """Add a rule and return it; raise :class:`ConversionError` for an unknown kind.

        Example:
            >>> KindRules("layers").register(int, "no-such-kind")
            Traceback (most recent call last):
            polybundle.errors.ConversionError: cannot register layers as kind 'no-such-kind': ...
        """
        if kind not in KINDS:
            raise ConversionError(
                f"cannot register {self.what} as kind {kind!r}: it is not a canonical kind; "
                f"expected one of {', '.join(sorted(KINDS))}. Pass one of those."
            )
        rule = KindRule(match, kind, dict(slots or {}))
        self._rules.insert(0, rule)
        return rule

    def unregister(self, rule: KindRule) -> None:
        """Remove ``rule`` (nothing if it is gone)."""
        if rule in self._rules:
            self._rules.remove(rule)

    def find(self, layer: Any) -> KindRule | None:
        """Return the latest rule ``layer`` matches, or None."""
        return next((rule for rule in self._rules if rule.matches(layer)), None)
