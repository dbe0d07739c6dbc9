"""Deduplication keys of triggers: ``str.format``-style text over event fields.

Placeholders name event fields by dotted path, exactly like expressions::

    "{event_id}"                      the default: one message per event
    "welcome:{user_id}"               once per user
    "receipt:{properties.order_id}"   once per order
    "{name}:{device.platform}"        any scalar field of the event

Refused at load time: positional placeholders (``{}``, ``{0}``), indexing
(``{properties[order_id]}``: write ``{properties.order_id}``), conversions
and format specs (``{x!r}``, ``{x:>5}``), list fields (``{segments}``), and
unknown top-level fields.
"""

from __future__ import annotations

import dataclasses
import string
from collections.abc import Mapping
from typing import Any

from rules.errors import ExpressionError
from rules.expr import FactSchema, FieldKind, Path, lookup

DEFAULT_DEDUP_KEY = "{event_id}"


@dataclasses.dataclass(frozen=True)
class DedupKey:
    """A parsed dedup key: literal text and field paths, in order."""

    source: str
    parts: tuple[str | Path, ...]

    def format(self, fact: Mapping[str, Any]) -> str | None:
        """The key for ``fact``, or None when a placeholder has no scalar value."""
        out: list[str] = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
                continue
            text = _text(lookup(fact, part))
            if text is None:
                return None
            out.append(text)
        return "".join(out)


def _text(value: Any) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    return None


def parse_dedup_key(source: str, schema: FactSchema) -> DedupKey:
    """Parse and validate ``source``; raise :class:`ExpressionError` with the reason."""
    if not source:
        raise ExpressionError("empty dedup key")
    try:
        pieces = list(string.Formatter().parse(source))
    except ValueError as exc:
        raise ExpressionError(
            f"bad placeholder syntax: {exc} (write a literal brace as {{{{ or }}}})"
        ) from None
    parts: list[str | Path] = []
    for literal, field, spec, conversion in pieces:
        if literal:
            parts.append(literal)
        if field is not None:
            parts.append(_placeholder(field, spec, conversion, schema))
    return DedupKey(source, tuple(parts))


def _placeholder(field: str, spec: str | None, conversion: str | None, schema: FactSchema) -> Path:
    if conversion or spec:
        raise ExpressionError(f"placeholder {{{field}}}: conversions and format specs are not supported")
    if not field or field.isdigit():
        raise ExpressionError("positional placeholders are not supported; name a field, e.g. {user_id}")
    if "[" in field:
        dotted = field.replace("[", ".").replace("]", "")
        raise ExpressionError(f"placeholder {{{field}}}: indexing is not supported; write {{{dotted}}}")
    path = tuple(field.split("."))
    _check(field, path, schema)
    return path


def _check(field: str, path: Path, schema: FactSchema) -> None:
    kind = schema.fields.get(path[0])
    if kind is None or not all(segment.isidentifier() for segment in path):
        known = ", ".join(sorted(schema.fields))
        raise ExpressionError(f"placeholder {{{field}}}: unknown field (known: {known})")
    if kind is FieldKind.LIST:
        raise ExpressionError(f"placeholder {{{field}}}: '{path[0]}' is a list, not a value")
    if kind is FieldKind.OBJECT and len(path) == 1:
        raise ExpressionError(f"placeholder {{{field}}}: name a field of '{path[0]}', e.g. {{{path[0]}.id}}")
    if kind is FieldKind.SCALAR and len(path) > 1:
        raise ExpressionError(f"placeholder {{{field}}}: '{path[0]}' has no sub-fields")
