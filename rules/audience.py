"""Audience filters: the rules' ``when`` language over user profiles, evaluated in Python.

A reach task's ``audience.filter`` (``attributes.country == "DE" and "vip" in segments``,
``version(app_version.ios) < version("1.9.0")``) is parsed by
:func:`rules.expr.parse_expression`, so it accepts exactly what rule authors already
write, with the same messages for mistakes. It is then evaluated here over each profile
of an audience page, with the language's documented semantics: a comparison is false
when the field is absent or of another type than the literal (ints and floats compare
as numbers, booleans only equal booleans, and a ``version(...)`` comparison is false for
a value that is not a version). Evaluating the small tree in Python costs less per
profile than a durable-rules host per task, and needs no rule set to build or free.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from typing import Any

from rules.expr import (
    TAG_VERSION,
    AllOf,
    Cmp,
    FactSchema,
    FieldKind,
    Has,
    Node,
    Not,
    Present,
    lookup,
    parse_expression,
)
from rules.versions import version_key

AUDIENCE_FACT = FactSchema(
    "profile",
    {
        "user_id": FieldKind.SCALAR,
        "timezone": FieldKind.SCALAR,
        "segments": FieldKind.LIST,
        "attributes": FieldKind.OBJECT,
        "app_version": FieldKind.OBJECT,  # {platform: version} the user's events last reported
    },
)

_ORDER: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


class AudienceFilter:
    """A compiled filter; raises :class:`~rules.errors.ExpressionError` when refused."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.tree = parse_expression(source, AUDIENCE_FACT)

    def matches(self, fact: Mapping[str, Any]) -> bool:
        return evaluate(self.tree, fact)


def evaluate(node: Node, fact: Mapping[str, Any]) -> bool:
    if isinstance(node, Cmp):
        value = lookup(fact, node.path)
        if node.tag == TAG_VERSION:
            value = version_key(value)  # the literal is a version key already
        return _compare(value, node.op, node.value)
    if isinstance(node, Has):
        values = lookup(fact, node.path)
        return isinstance(values, list | tuple) and node.member in values
    if isinstance(node, Present):
        return lookup(fact, node.path) is not None
    if isinstance(node, Not):
        return not evaluate(node.child, fact)
    if isinstance(node, AllOf):
        return all(evaluate(child, fact) for child in node.children)
    return any(evaluate(child, fact) for child in node.children)


def _compare(value: Any, op: str, literal: Any) -> bool:
    if not _same_kind(value, literal):
        return False
    return bool(_ORDER[op](value, literal))


def _same_kind(value: Any, literal: Any) -> bool:
    if isinstance(literal, bool) or isinstance(value, bool):
        return isinstance(literal, bool) and isinstance(value, bool)
    if isinstance(literal, str):
        return isinstance(value, str)
    return isinstance(value, int | float)
