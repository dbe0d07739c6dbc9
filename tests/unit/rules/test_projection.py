"""Flattening facts into the typed keys that are posted to durable-rules."""

from __future__ import annotations

from typing import Any

import orjson

from rules.expr import (
    GUARD_KEY,
    TRIGGER_FACT,
    Projection,
    compile_expression,
    encode_number,
    flatten_fact,
    member_key,
    view_key,
)
from tests.unit.rules.conftest import event


def test_flatten_fact_types_every_scalar_and_flags_every_string_member() -> None:
    fact: dict[Any, Any] = {
        "name": "signup",
        "ts": 1,
        "properties": {
            "amount": 5.5,
            "vip": True,
            "tags": ["a.b", "c"],
            "nested": {"x": "y"},
            "none": None,
        },
        "segments": ["vip"],
        "bad-key": 1,
        "a__b": 2,
        7: "not a string key",
    }
    assert flatten_fact(fact) == {
        "name:s": "signup",
        "ts:n": 1,
        "properties__amount:n": 5.5,
        "properties__vip:b": True,
        "properties__tags:has:a%2Eb": True,
        "properties__tags:has:c": True,
        "properties__nested__x:s": "y",
        "segments:has:vip": True,
    }


def test_flatten_fact_stops_at_max_depth() -> None:
    deep = {"properties": {"a": {"b": {"c": 1}}}}
    assert flatten_fact(deep, max_depth=3) == {}
    assert flatten_fact(deep, max_depth=4) == {"properties__a__b__c:n": 1}


def test_projection_posts_only_referenced_keys_and_agrees_with_flatten() -> None:
    conditions = [
        compile_expression('name == "order_paid" and properties.amount >= 500', TRIGGER_FACT),
        compile_expression('"vip" in segments and device.platform != "web"', TRIGGER_FACT),
    ]
    projection = Projection(conditions)
    fact = event(
        name="order_paid", segments=["vip", "beta"], properties={"amount": 640, "huge": list(range(1000))}
    )
    projected = projection.project(fact)
    assert projected == {
        GUARD_KEY: 1,
        "name:s": "order_paid",
        "properties__amount:n": 640,
        "segments:has:vip": True,
        "device__platform:s": "ios",
    }
    flat = flatten_fact(fact)
    assert {k: v for k, v in projected.items() if k != GUARD_KEY} == {
        k: flat[k] for k in projected if k in flat
    }
    assert projection.max_keys == 5


def test_projection_posts_one_view_per_path_and_type() -> None:
    projection = Projection(
        [
            compile_expression("properties.code == 5", TRIGGER_FACT),
            compile_expression('properties.code == "5"', TRIGGER_FACT),
        ]
    )
    assert projection.project(event(properties={"code": 5})) == {GUARD_KEY: 1, "properties__code:n": 5}
    assert projection.project(event(properties={"code": "5"})) == {GUARD_KEY: 1, "properties__code:s": "5"}
    assert projection.project(event(properties={"code": None})) == {GUARD_KEY: 1}


def test_numbers_are_encoded_without_exponents() -> None:
    def dumped(value: float | int) -> bytes:
        return orjson.dumps({"a": encode_number(value)})

    assert dumped(5) == b'{"a":5}'
    assert dumped(0.25) == b'{"a":0.25}'
    assert dumped(1e-05) == b'{"a":0.00001}'
    assert dumped(1e16) == b'{"a":10000000000000000.0}'
    assert dumped(2**64) == b'{"a":18446744073709552000.0}'  # as a double
    assert encode_number(float("nan")) is None
    assert encode_number(float("-inf")) is None


def test_keys_are_unambiguous() -> None:
    assert view_key(("properties", "amount"), "n") == "properties__amount:n"
    assert member_key(("segments",), "vip") == "segments:has:vip"
    assert member_key(("segments",), "a:has:b") != member_key(("segments", "a"), "b")
    assert member_key(("segments",), "100%") == "segments:has:100%25"
    assert member_key(("segments",), "é") == "segments:has:%C3%A9"
