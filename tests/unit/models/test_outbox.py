"""Outbox frames: many messages per Kafka record, and the records earlier versions wrote."""

from __future__ import annotations

import dataclasses

import orjson
import pytest

from models.messages import ReachMessage
from models.outbox import pack, unpack


def message(n: int, **changes: object) -> ReachMessage:
    base = ReachMessage(
        message_id=f"m{n}", user_id=f"u{n}", rule_id="r", template="t", channel="inbox", provider="db",
        priority=5, event_id=f"e{n}", event_name="signup", event_ts=1, created_ts=2,
        variables={"properties": {"n": n, "nested": [1, {"a": "é"}]}}, contact={"email": "x@y.z"},
    )  # fmt: skip
    return dataclasses.replace(base, **changes)


def encoded(count: int) -> list[tuple[bytes | None, bytes]]:
    return [(f"u{n}".encode(), message(n).to_bytes()) for n in range(count)]


def test_to_bytes_is_the_json_of_every_field() -> None:
    m = message(1, platform="ios", attempt=3, not_before=9)
    assert orjson.loads(m.to_bytes()) == dataclasses.asdict(m)
    assert ReachMessage.from_bytes(m.to_bytes()) == m


def test_frames_hold_at_most_max_messages_keyed_by_their_first() -> None:
    frames = pack(encoded(7), max_messages=3, max_bytes=1_000_000)
    assert [key for key, _ in frames] == [b"u0", b"u3", b"u6"]
    assert [len(unpack(value)) for _, value in frames] == [3, 3, 1]
    decoded = [ReachMessage.from_dict(item) for _, value in frames for item in unpack(value)]
    assert decoded == [message(n) for n in range(7)]


def test_frames_stay_within_max_bytes() -> None:
    one = len(message(0).to_bytes())
    limit = 2 + 3 * one + 2  # brackets, three messages, two commas
    frames = pack(encoded(7), max_messages=100, max_bytes=limit)
    assert [len(unpack(value)) for _, value in frames] == [3, 3, 1]
    assert all(len(value) <= limit for _, value in frames)
    assert len(pack(encoded(4), max_messages=100, max_bytes=limit - 1)[0][1]) <= limit - 1


def test_an_oversized_message_gets_a_frame_of_its_own() -> None:
    frames = pack(encoded(3), max_messages=100, max_bytes=10)
    assert [len(unpack(value)) for _, value in frames] == [1, 1, 1]


def test_nothing_to_pack_makes_no_frame() -> None:
    assert pack([], max_messages=10, max_bytes=100) == []


def test_a_single_message_record_is_one_message() -> None:
    assert unpack(message(4).to_bytes()) == [dataclasses.asdict(message(4))]


@pytest.mark.parametrize("value", [b"{not json", b'"a string"', b"42", b"null"])
def test_records_that_are_not_messages_are_refused(value: bytes) -> None:
    with pytest.raises(ValueError):
        unpack(value)


@pytest.mark.parametrize("item", [[1], "text", {"message_id": 5}])
def test_a_frame_element_is_checked_like_a_message(item: object) -> None:
    with pytest.raises((ValueError, TypeError)):
        ReachMessage.from_dict(item)


def test_result_and_inbox_encodings_hold_every_field() -> None:
    from models.messages import DeliveryResult, DeliveryStatus
    from models.storage import INBOX_COLUMNS, InboxItem

    result = DeliveryResult(
        "m", 2, "u", "r", "email", "smtp", DeliveryStatus.SENT, "ios", 1, 2, 3, "c", "e", "p"
    )
    assert orjson.loads(result.to_bytes()) == {**dataclasses.asdict(result), "status": "sent"}
    assert DeliveryResult.from_bytes(result.to_bytes()) == result
    item = InboxItem("m", "u", "r", "t", "title", "body", 5, 10, None)
    assert item.row() == dataclasses.astuple(item)
    assert [f.name for f in dataclasses.fields(InboxItem)] == INBOX_COLUMNS.split(", ")
