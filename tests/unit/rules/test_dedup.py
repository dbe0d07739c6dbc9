"""Dedup keys: placeholders over event fields, validated at load time."""

from __future__ import annotations

import pytest

from rules.dedup import parse_dedup_key
from rules.errors import ExpressionError
from rules.expr import TRIGGER_FACT
from rules.model import TriggerRule
from tests.unit.rules.conftest import event


def rule(dedup_key: str = "{event_id}") -> TriggerRule:
    return TriggerRule("welcome-signup", 'name == "signup"', "welcome", ("inbox",), dedup_key=dedup_key)


@pytest.mark.parametrize(
    ("dedup_key", "expected"),
    [
        ("{event_id}", "welcome-signup:e-1"),
        ("welcome:{user_id}", "welcome-signup:welcome:u-1"),
        ("{name}/{device.platform}/{properties.amount}", "welcome-signup:signup/ios/640"),
        ("order:{properties.order_id}", "welcome-signup:order:o-1"),
        ("literal {{braces}} {user_id}", "welcome-signup:literal {braces} u-1"),
        ("constant", "welcome-signup:constant"),
    ],
)
def test_dedup_for_formats_event_fields_scoped_by_trigger(dedup_key: str, expected: str) -> None:
    assert rule(dedup_key).dedup_for(event()) == expected


def test_booleans_and_floats_format_plainly() -> None:
    fact = event(properties={"vip": True, "ratio": 0.5})
    assert rule("{properties.vip}:{properties.ratio}").dedup_for(fact) == "welcome-signup:true:0.5"


@pytest.mark.parametrize(
    "properties", [{}, {"order_id": None}, {"order_id": {"nested": 1}}, {"order_id": [1]}]
)
def test_a_missing_placeholder_falls_back_to_one_key_per_event(properties: dict[str, object]) -> None:
    fact = event(properties=properties)
    assert rule("order:{properties.order_id}").dedup_for(fact) == "welcome-signup:missing:e-1"


@pytest.mark.parametrize(
    ("dedup_key", "reason"),
    [
        ("{}", "positional placeholders"),
        ("{0}", "positional placeholders"),
        ("{properties[order_id]}", "write {properties.order_id}"),
        ("{user_id!r}", "conversions and format specs"),
        ("{user_id:>10}", "conversions and format specs"),
        ("{segments}", "'segments' is a list"),
        ("{properties}", "name a field of 'properties'"),
        ("{name.first}", "'name' has no sub-fields"),
        ("{usr_id}", "unknown field"),
        ("{user_id", "bad placeholder syntax"),
        ("user_id}", "bad placeholder syntax"),
        ("", "empty dedup key"),
    ],
)
def test_unsupported_placeholders_are_refused(dedup_key: str, reason: str) -> None:
    with pytest.raises(ExpressionError) as caught:
        parse_dedup_key(dedup_key, TRIGGER_FACT)
    assert reason in caught.value.reason
