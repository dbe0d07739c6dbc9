"""Which template variables a trigger's `when` guarantees, and which the template uses unguarded."""

from __future__ import annotations

import pytest

from rules.expr import TRIGGER_FACT, parse_expression
from rules.model import Template, TriggerRule
from rules.variables import guaranteed, unguarded_reads, variable_warnings
from tests.unit.rules.conftest import book


def paths(*dotted: str) -> frozenset[tuple[str, ...]]:
    return frozenset(tuple(d.split(".")) for d in dotted)


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        ('name == "paid"', paths("name")),
        ('name == "paid" and properties.amount >= 500', paths("name", "properties.amount")),
        (
            "has(properties.order_id) and has(device.platform)",
            paths("properties.order_id", "device.platform"),
        ),
        ('properties.a > 1 or properties.a < -1 and properties.b == "x"', paths("properties.a")),
        ("properties.a > 1 or properties.b > 1", paths()),
        ('properties.tier != "gold"', paths()),  # true when absent
        ("not (properties.a > 1)", paths()),
        ("not not has(properties.a)", paths("properties.a")),
        ("not (not has(properties.a) or not has(properties.b))", paths("properties.a", "properties.b")),
        ('properties.country in ["DE", "FR"]', paths("properties.country")),
        ('"vip" in segments', paths("segments")),
    ],
)
def test_what_a_when_guarantees(when: str, expected: frozenset[tuple[str, ...]]) -> None:
    assert guaranteed(parse_expression(when, TRIGGER_FACT)) == expected


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("{{ properties.a }} {{ user_id }}", {"properties.a", "user_id"}),
        ("{{ properties.a | default('x') }} {{ properties.b | d('y') | upper }}", set()),
        ("{% if properties.c %}{{ properties.c }} {{ properties.c.d }}{% endif %}", set()),
        ("{% if properties.c %}{% else %}{{ properties.c }}{% endif %}", {"properties.c"}),
        ("{% if properties.c is defined %}{{ properties.c }}{% endif %}", set()),
        ("{% if properties.c or properties.e %}{{ properties.c }}{% endif %}", {"properties.c"}),
        (
            "{% if properties.n > 1 %}{{ properties.n }}{% endif %}",
            {"properties.n"},
        ),  # > fails on a missing n
        ("{{ 'y' if properties.y else 'n' }} {{ properties.z or 'none' }}", set()),
        ("{{ properties.w and 'w' }}", {"properties.w"}),  # prints a missing w
        ("{% for i in properties.items %}{{ i.sku }}{{ loop.index }}{% endfor %}", {"properties.items"}),
        ("{% set t = properties.total %}{{ t }}", {"properties.total"}),
        ("{{ properties['k'] }} {{ properties.x.upper() }}", {"properties.k", "properties.x"}),
        ("{{ properties.e is even }} {{ properties.f is number }}", {"properties.e"}),
        ("{{ coupon }} {{ range(3) | list }}", {"coupon"}),
    ],
)
def test_what_a_template_uses_unguarded(source: str, expected: set[str]) -> None:
    found = unguarded_reads(Template("t", "", source))
    assert {".".join(p) for p in found} == expected


def test_warnings_name_the_variables_the_trigger_leaves_open_and_follow_fallbacks() -> None:
    templates = [
        Template("new", "{{ properties.order_id }}", "{{ event }} {{ properties.amount }}", fallback="old"),
        Template("old", "{{ properties.amount }}", "{{ device.platform }} {{ unsubscribe_url }}"),
    ]
    rules = [
        TriggerRule("open", 'name == "paid"', "new", ("inbox",), source="r.yaml:3"),
        TriggerRule("closed", 'name == "paid" and has(properties.order_id)', "old", ("inbox",), source="x"),
        TriggerRule("safe", "has(properties.order_id) and properties.amount > 0", "new", ("inbox",)),
    ]
    found = [
        (w.trigger, w.template, w.variables, w.path, w.line)
        for w in variable_warnings(book(rules, (), templates))
    ]
    assert found == [
        ("open", "new", ("properties.amount", "properties.order_id"), "r.yaml", 3),
        ("open", "old", ("device.platform", "properties.amount"), "r.yaml", 3),
        ("closed", "old", ("device.platform", "properties.amount"), "x", None),
        ("safe", "old", ("device.platform",), "<memory>", None),
    ]
