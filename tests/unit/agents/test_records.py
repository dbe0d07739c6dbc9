"""Dead-letter records always fit their topic."""

from __future__ import annotations

import orjson

from agents.records import dumps_within, value_limit


def test_a_small_record_is_left_as_it_is() -> None:
    record = {"reason": "bad_ts", "value": "{}"}
    assert dumps_within(record, "value", 1000) == orjson.dumps(record)


def test_an_oversized_field_is_cut_so_the_record_fits() -> None:
    record = {"reason": "plan_error", "value": "\x01" * 50_000}  # escapes to 6 bytes a character
    data = dumps_within(record, "value", 10_000)
    assert len(data) <= 10_000
    decoded = orjson.loads(data)
    assert decoded["truncated"] is True and decoded["reason"] == "plan_error"
    assert decoded["value"] and "\x01" * len(decoded["value"]) == decoded["value"]


def test_a_structured_field_is_cut_as_text() -> None:
    record = {"reason": "result_refused", "result": {"provider_message_id": "x" * 5000}}
    decoded = orjson.loads(dumps_within(record, "result", 1000))
    assert decoded["truncated"] is True
    assert decoded["result"].startswith('{"provider_message_id":"xxx')


def test_values_leave_room_for_key_and_overhead() -> None:
    assert value_limit(1_000_000) == 1_000_000 - 1024
    assert value_limit(10) == 1
