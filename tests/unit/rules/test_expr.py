"""The expression language: what compiles, what is refused (with position), and
what matches -- always through the real durable-rules engine."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pytest

from rules.errors import ExpressionError
from rules.expr import (
    CHANNEL_FACT,
    GUARD_KEY,
    MAX_BRANCHES_PER_RULE,
    TRIGGER_FACT,
    compile_expression,
)
from tests.unit.rules.conftest import event

Matches = Callable[[str, Mapping[str, Any]], bool]

ORDER = event(name="order_paid", properties={"amount": 500, "order_id": "o-1", "ratio": 0.25})


@pytest.mark.parametrize(
    ("when", "fact", "expected"),
    [
        # == and != on strings, numbers, booleans
        ('name == "signup"', event(), True),
        ('name == "signup"', event(name="login"), False),
        ('name != "signup"', event(name="login"), True),
        ('name != "signup"', event(), False),
        ("properties.amount == 500", ORDER, True),
        ("properties.amount == 500.0", ORDER, True),  # ints and floats compare as numbers
        ("properties.amount != 500", ORDER, False),
        ("properties.vip == true", event(properties={"vip": True}), True),
        ("properties.vip == True", event(properties={"vip": False}), False),
        ("properties.vip != true", event(properties={"vip": False}), True),
        # ordering on numbers, both sides, negative and float literals
        ("properties.amount >= 500", ORDER, True),
        ("properties.amount > 500", ORDER, False),
        ("properties.amount <= 500", ORDER, True),
        ("properties.amount < 500", ORDER, False),
        ("500 <= properties.amount", ORDER, True),
        ("499.99 < properties.amount", ORDER, True),
        ("properties.amount > -1", ORDER, True),
        ("properties.ratio < 0.3", ORDER, True),
        ("properties.ratio > 0.3", ORDER, False),
        ("0 < properties.amount <= 500", ORDER, True),  # chained comparison
        ("0 < properties.amount < 500", ORDER, False),
        ("ts > 1732699999999", event(), True),  # epoch milliseconds
        # ordering on strings
        ('device.platform < "j"', event(), True),
        ('device.platform >= "j"', event(), False),
        # in / not in a literal list
        ('name in ["signup", "login"]', event(), True),
        ('name in ["login"]', event(), False),
        ('name not in ["login", "logout"]', event(), True),
        ('name not in ["signup", "logout"]', event(), False),
        ("properties.amount in [100, 500]", ORDER, True),
        ('properties.amount in ["500"]', ORDER, False),  # a string is not the number
        # membership in a list of strings
        ('"vip" in segments', event(), True),
        ('"vip" in segments', event(segments=["newsletter"]), False),
        ('"vip" not in segments', event(segments=["newsletter"]), True),
        ('"vip" not in segments', event(), False),
        ('"beta" in device.flags', event(device={"flags": ["beta", "dark"]}), True),
        # and / or / not / parentheses
        ('name == "order_paid" and properties.amount >= 500 and "vip" in segments', ORDER, True),
        ('name == "order_paid" and properties.amount >= 500 and "vip" in segments', event(), False),
        ('name == "login" or "vip" in segments', event(), True),
        ('not (name == "login" or "vip" in segments)', event(), False),
        ('not (name == "login" or "vip" in segments)', event(segments=[]), True),
        ('not name == "login"', event(), True),
        ('not not name == "signup"', event(), True),
        ('(name == "signup" or name == "login") and not ("banned" in segments)', event(), True),
        ('name == "signup" and (properties.amount > 1000 or device.platform == "ios")', ORDER, False),
        # strings with quotes, backslashes, unicode
        ("properties.note == 'he said \"hi\"'", event(properties={"note": 'he said "hi"'}), True),
        ('properties.note == "it\'s"', event(properties={"note": "it's"}), True),
        ('properties.note == "back\\\\slash"', event(properties={"note": "back\\slash"}), True),
        ('properties.city == "Zürich 東京 😀"', event(properties={"city": "Zürich 東京 😀"}), True),
        ('"gold.tier" in segments', event(segments=["gold.tier"]), True),  # "." is not a path here
        ('"a b/c%d" in segments', event(segments=["a b/c%d"]), True),
    ],
)
def test_operators_match_through_durable_rules(
    matches: Matches, when: str, fact: dict[str, Any], expected: bool
) -> None:
    assert matches(when, fact) is expected


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        ('device.platform == "ios"', False),
        ('device.platform != "ios"', True),
        ("properties.amount > 5", False),
        ("properties.amount <= 5", False),
        ("not (properties.amount > 5)", True),
        ('device.platform in ["ios"]', False),
        ('device.platform not in ["ios"]', True),
        ('"vip" in segments', False),
        ('"vip" not in segments', True),
        ('properties.deep.nested == "x"', False),
    ],
)
def test_absent_fields(matches: Matches, when: str, expected: bool) -> None:
    """A test on an absent field is false; its negation is true (two-valued logic)."""
    bare = {"event_id": "e", "user_id": "u", "name": "signup", "ts": 1}
    assert matches(when, bare) is expected


@pytest.mark.parametrize(
    ("when", "value", "expected"),
    [
        # durable-rules alone would say yes to each of these (see test_durable_behaviour)
        ("properties.x > 5", "abc", False),
        ("properties.x >= 500", "600", False),
        ("properties.x == 5", "5", False),
        ('properties.x == "5"', 5, False),
        ("properties.x == 0", False, False),
        ("properties.x == 0", "", False),
        ("properties.x == true", 1, False),
        ('properties.x == "true"', True, False),
        ("properties.x == 1", True, False),
        # ... and the negations are their exact complements
        ("properties.x != 5", "5", True),
        ("not (properties.x > 5)", "abc", True),
        ("properties.x == 0", None, False),
        ("properties.x != 0", None, True),
        ('properties.x == "a"', {"nested": "a"}, False),
        ('properties.x == "a"', ["a"], False),
    ],
)
def test_values_of_another_type_read_as_absent(
    matches: Matches, when: str, value: Any, expected: bool
) -> None:
    assert matches(when, event(properties={"x": value})) is expected


@pytest.mark.parametrize(
    ("value", "when", "expected"),
    [
        (1e-05, "properties.x < 0.0001", True),  # exponent floats are posted in fixed notation
        (1e-05, "properties.x > 0", True),
        (1e300, "properties.x > 1000000", True),
        (-1e300, "properties.x < 0", True),
        (2**70, "properties.x > 9223372036854775807", True),  # beyond 64 bits: posted as a float
        (float("nan"), "properties.x > 0", False),  # not postable: absent
        (float("inf"), "properties.x != 1", True),
        (9223372036854775807, "properties.x == 9223372036854775807", True),
    ],
)
def test_numbers_durable_rules_cannot_parse_as_json_are_posted_safely(
    matches: Matches, value: Any, when: str, expected: bool
) -> None:
    assert matches(when, event(properties={"x": value})) is expected


@pytest.mark.parametrize(
    ("when", "reason", "column"),
    [
        ("name ==", "syntax error", None),
        ("nam == 'signup'", "unknown field 'nam' in event facts (did you mean 'name'?)", 1),
        ("len(name) > 3", "a function call is not supported", 1),
        ("properties.amount + 1 > 3", "arithmetic is not supported", 1),
        ("properties.amount > properties.limit", "comparing two fields is not supported", 1),
        ("1 == 1", "a comparison needs a field on one side", 1),
        ("name", "a bare field is not a condition", 1),
        ("True", "a bare literal is not a condition", 1),
        ('properties["amount"] > 3', "indexing (use dotted paths like properties.order_id)", 1),
        ("name is None", "'is' is not supported; use == or !=", 1),
        ("properties.x == None", "null literals are not supported", 17),
        ("properties.x > 1e-05", "cannot be used: write it without an exponent", 16),
        ("properties.x > 99999999999999999999", "integer literal outside the 64-bit range", 16),
        ("properties.flag < true", "< cannot compare with a boolean", 19),
        ("segments == 'vip'", "'segments' is a list; test membership", 1),
        ("'vip' in name", "'name' is not a list", 10),
        ("1 in segments", "only a string can be tested for membership", 1),
        ("name in []", "empty list", 9),
        ("name in device.platforms", "must be a list of literals", 9),
        ("has(properties)", "'properties' is an object", 5),
        ("has(propertes.x)", "unknown field 'propertes'", 5),
        ("has('x')", "attributes are only allowed on field names", 5),
        ("name.first == 'a'", "'name' has no sub-fields", 1),
        ("properties == 'a'", "'properties' is an object", 1),
        ("properties.a__b == 1", "must match [A-Za-z][A-Za-z0-9_]* without '__'", 1),
        ("properties._x == 1", "must match", 1),
        ("'x'.upper() == 'X'", "a function call is not supported", 1),
        ("'x'.upper == 'X'", "an attribute of a literal is not supported", 1),
        ("lambda: 1", "is not a condition", 1),
        ("name == 'a' if True else False", "is not a condition", 1),
        ("", "empty expression", None),
    ],
)
def test_refused_expressions_say_why_and_where(when: str, reason: str, column: int | None) -> None:
    with pytest.raises(ExpressionError) as caught:
        compile_expression(when, TRIGGER_FACT)
    assert reason in caught.value.reason
    if column is not None:
        assert caught.value.column == column


def test_positions_count_characters_and_lines() -> None:
    with pytest.raises(ExpressionError) as caught:
        compile_expression('name == "é" and\nnam == "x"', TRIGGER_FACT)
    assert (caught.value.line, caught.value.column) == (2, 1)
    with pytest.raises(ExpressionError) as caught:
        compile_expression('properties.city == "東京" and bogus == 1', TRIGGER_FACT)
    assert (caught.value.line, caught.value.column) == (1, 29)


def test_multi_line_expressions_need_no_parentheses(matches: Matches) -> None:
    assert matches('name == "signup"\nand "vip" in segments', event())


def test_channel_facts_have_their_own_fields() -> None:
    compile_expression('not ("email" in reachable) and priority <= 2', CHANNEL_FACT)
    with pytest.raises(ExpressionError, match="unknown field 'name' in reach message facts"):
        compile_expression('name == "signup"', CHANNEL_FACT)


def test_compiled_condition_leads_with_the_guard_then_the_event_name() -> None:
    condition = compile_expression(
        '"vip" in segments and properties.amount > 5 and name == "x"', TRIGGER_FACT
    )
    parts = condition.definition()["$and"]
    assert parts[0] == {GUARD_KEY: 1}
    assert parts[1] == {"name:s": "x"}  # equality on the index field first: durable-rules hashes it
    assert condition.leading == ("name:s", '"x"')
    assert condition.branches == 1


def test_negations_are_pushed_to_the_leaves_with_absent_handling() -> None:
    condition = compile_expression('not (name == "a" or name == "b")', TRIGGER_FACT)
    assert condition.definition()["$and"][1] == {
        "$or": [{"$nex": {"name:s": 1}}, {"$and": [{"$neq": {"name:s": "a"}}, {"$neq": {"name:s": "b"}}]}]
    }
    assert condition.branches == 2


def test_definitions_are_fresh_copies() -> None:
    condition = compile_expression('name == "a"', TRIGGER_FACT)
    condition.definition()["$and"].clear()
    assert condition.definition()["$and"]


def test_too_many_alternatives_are_refused() -> None:
    many = " or ".join(f'name == "e{i}"' for i in range(MAX_BRANCHES_PER_RULE + 1))
    with pytest.raises(ExpressionError, match="alternatives"):
        compile_expression(many, TRIGGER_FACT)
    exploding = " and ".join(f"properties.a{i} != {i}" for i in range(40))  # 2**40 in disjunctive form
    with pytest.raises(ExpressionError, match="alternatives"):
        compile_expression(exploding, TRIGGER_FACT)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("o-1", True), ("", True), (0, True), (False, True), ([1], True), ({"a": 1}, True), (None, False)],
)
def test_has_is_true_for_any_value_but_null(matches: Matches, value: object, expected: bool) -> None:
    fact = {"event_id": "e", "user_id": "u", "name": "order_paid", "ts": 1, "properties": {"order_id": value}}
    assert matches('name == "order_paid" and has(properties.order_id)', fact) is expected
    assert matches("not has(properties.order_id)", fact) is not expected


def test_has_of_an_absent_field_is_false_and_its_negation_true(matches: Matches) -> None:
    bare = {"event_id": "e", "user_id": "u", "name": "order_paid", "ts": 1, "properties": {}}
    assert matches("has(properties.order_id)", bare) is False
    assert matches("has(properties.deep.order_id) or has(device.platform)", bare) is False
    assert matches("not has(properties.order_id)", bare) is True
