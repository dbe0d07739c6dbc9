"""What durable_rules 2.0.28 itself does, as rules.engine and rules.expr rely on it.

If an upgrade changes one of these, the design note in the failing test says
what to revisit.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import durable_rules_engine as c
import pytest
from durable import engine as durable_engine


class RawHost(durable_engine.Host):
    """A bare host recording fired actions, without timer threads."""

    def __init__(self, rules: dict[str, Any]) -> None:
        self.fired: list[str] = []
        definitions = {name: {"all": [{"m": cond}], "run": name} for name, cond in rules.items()}
        super().__init__({"rs": definitions})

    def get_action(self, action_name: str) -> Callable[[Any], None]:
        return lambda closure: self.fired.append(action_name)

    def _run(self) -> None:
        pass

    def post(self, message: dict[str, Any]) -> list[str]:
        self.fired.clear()
        try:
            super().post("rs", {**message, "sid": "0"})
        except durable_engine.MessageNotHandledException:
            return ["<not handled>"]
        return sorted(self.fired)

    def assert_fact(self, fact: dict[str, Any]) -> list[str]:
        self.fired.clear()
        try:
            super().assert_fact("rs", {**fact, "sid": "0"})
        except durable_engine.MessageNotHandledException:
            return ["<not handled>"]
        super().retract_fact("rs", {**fact, "sid": "0"})
        return sorted(self.fired)


def test_an_event_goes_to_one_rule_but_a_fact_fires_every_matching_rule() -> None:
    """Why the engine asserts facts (and retracts them) instead of posting events."""
    host = RawHost({"a": {"name": "x"}, "b": {"name": "x"}})
    assert len(host.post({"name": "x"})) == 1
    assert host.assert_fact({"name": "x"}) == ["a", "b"]


def test_no_match_is_an_exception_from_the_host_but_a_status_code_from_the_c_engine() -> None:
    """Why the engine reads the status code: the exception re-serialises the message."""
    host = RawHost({"a": {"name": "x"}})
    assert host.post({"name": "y"}) == ["<not handled>"]
    handle = host.get_ruleset("rs")._handle
    code, _ = c.assert_fact(handle, json.dumps({"sid": "0", "name": "y"}))
    assert code == 1


def test_neq_is_false_on_an_absent_key_and_nex_tests_absence() -> None:
    """Why `x != v` compiles to (absent or $neq)."""
    host = RawHost(
        {"neq": {"$and": [{"g": 1}, {"$neq": {"a": "v"}}]}, "nex": {"$and": [{"g": 1}, {"$nex": {"a": 1}}]}}
    )
    assert host.assert_fact({"g": 1}) == ["nex"]
    assert host.assert_fact({"g": 1, "a": "w"}) == ["neq"]


def test_nested_or_and_nex_inside_or() -> None:
    cond = {"$and": [{"g": 1}, {"$or": [{"$and": [{"a": 1}, {"b": 2}]}, {"$nex": {"c": 1}}]}]}
    host = RawHost({"r": cond})
    assert host.assert_fact({"g": 1, "a": 1, "b": 2, "c": 0}) == ["r"]
    assert host.assert_fact({"g": 1, "c": 0}) == ["<not handled>"]
    assert host.assert_fact({"g": 1}) == ["r"]


def test_not_is_no_condition_operator() -> None:
    """durable-rules has no $not inside a condition: negations are pushed to the leaves."""
    with pytest.raises(c.error):
        RawHost({"r": {"$and": [{"g": 1}, {"$not": {"a": 1}}]}})


@pytest.mark.parametrize(
    ("cond", "value"),
    [
        ({"$gt": {"a": 5}}, "abc"),  # strings and numbers compare as text
        ({"$lte": {"a": 5}}, "10"),
        ({"a": 5}, "5"),
        ({"a": 0}, ""),
        ({"a": 0}, False),
        ({"a": True}, 1),
        ({"a": "true"}, True),
    ],
)
def test_values_of_different_types_are_coerced(cond: dict[str, Any], value: Any) -> None:
    """Why facts are posted under typed keys (name:s, amount:n, flag:b)."""
    host = RawHost({"r": cond})
    assert host.assert_fact({"a": value}) == ["r"]


def test_numbers_with_an_exponent_are_refused_by_the_parser() -> None:
    """Why floats are posted in fixed notation and such literals are refused."""
    host = RawHost({"r": {"$gt": {"a": 0}}})
    handle = host.get_ruleset("rs")._handle
    with pytest.raises(c.error, match="204"):
        c.assert_fact(handle, '{"sid": "0", "a": 1e-05}')
    assert c.assert_fact(handle, '{"sid": "0", "a": 0.00001}')[0] == 0


def test_strings_are_compared_as_serialised_bytes() -> None:
    """Why facts and rules must be serialised alike (orjson == json.dumps(ensure_ascii=False))."""
    handle = c.create_ruleset("escaped", json.dumps({"r": {"all": [{"m": {"s": "é"}}]}}, ensure_ascii=True))
    try:
        assert c.assert_fact(handle, json.dumps({"sid": "0", "s": "é"}, ensure_ascii=False))[0] == 1
    finally:
        c.delete_ruleset(handle)


def test_more_than_64_pending_alternatives_fail_the_assert() -> None:
    """Why the loader bounds alternatives that can match one fact (MAX_PENDING_ALTERNATIVES)."""
    rules = {f"r{i}": {"all": [{"m": {"$and": [{"g": 1}, {"$neq": {"a": i}}]}}]} for i in range(66)}
    handle = c.create_ruleset("pressure", json.dumps(rules))
    try:
        with pytest.raises(c.error, match="303"):
            c.assert_fact(handle, json.dumps({"sid": "0", "g": 1, "a": -1}))
    finally:
        c.delete_ruleset(handle)


def test_too_complex_expressions_are_refused_with_code_113() -> None:
    """Why the loader builds each rule once in a throw-away rule set (rules.engine.probe_condition)."""
    cond = {"$or": [{"$and": [{"a": i}, {"b": i}]} for i in range(16)]}
    with pytest.raises(c.error, match="113"):
        c.create_ruleset("complex", json.dumps({"r": {"all": [{"m": {"$and": [{"g": 1}, cond]}}]}}))
