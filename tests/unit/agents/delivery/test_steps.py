"""The throttle split, dead-address keys and the persisted shapes: the pure parts of the steps."""

from __future__ import annotations

import orjson

from agents.delivery.addresses import address_keys, buried
from agents.delivery.batch import BatchOutcome
from agents.delivery.persist import result_frames, without_provider_fields
from agents.delivery.throttle import admit
from models.addresses import address_key
from models.messages import DeliveryResult, DeliveryStatus, ReachMessage
from models.outbox import unpack
from models.redis_state import Grant
from tests.unit.agents.delivery.conftest import NOW, message


def result(message_id: str, **changes: str) -> DeliveryResult:
    fields = {"error_code": "", "error": "", "provider_message_id": "", **changes}
    return DeliveryResult(
        message_id, 1, "u-1", "r", "sms", "primary", DeliveryStatus.SENT, "web", NOW, NOW, NOW, **fields
    )


def test_admit_lets_the_granted_go_and_defers_the_rest_to_the_next_window() -> None:
    batch = BatchOutcome()
    group = [message(n) for n in range(1, 5)]
    go = admit(group, Grant(granted=3, window_start=NOW, window_end=NOW + 1000), batch)
    assert [m.message_id for m in go] == ["m-1", "m-2", "m-3"]
    ((when, payload),) = batch.deferred
    assert when == NOW + 1000 and ReachMessage.from_bytes(payload).not_before == NOW + 1000
    assert batch.handled == {"m-4"}


def test_admit_with_nothing_granted_defers_everything() -> None:
    batch = BatchOutcome()
    assert admit([message(1), message(2)], Grant(0, NOW, NOW + 1000), batch) == []
    assert batch.handled == {"m-1", "m-2"}


def test_address_keys_cover_only_messages_with_the_providers_field() -> None:
    with_phone, without = message(1), message(2, contact={"email": "a@example.com"})
    keys = address_keys(("phone",), [with_phone, without])
    assert keys == {"m-1": address_key("phone", with_phone.contact["phone"])}


def test_a_buried_address_names_its_channel_provider_and_code() -> None:
    record = buried(("phone",), message(1, "backup"), "sms", "isv.MOBILE_NUMBER_ILLEGAL")
    assert record is not None
    assert (record.field, record.channel, record.provider, record.code) == (
        "phone",
        "sms",
        "backup",
        "isv.MOBILE_NUMBER_ILLEGAL",
    )
    assert buried(("phone",), message(2, contact={}), "sms", "x") is None


def test_a_refused_row_keeps_what_reach_decided_and_drops_the_providers_fields() -> None:
    row = result("m-1", provider_message_id="pm-\x00")
    stored = without_provider_fields(row, ValueError("Incorrect string value"))
    assert (stored.status, stored.completed_at, stored.provider_message_id) == (DeliveryStatus.SENT, NOW, "")
    assert stored.error_code == "result_refused" and "Incorrect string value" in stored.error


def test_result_frames_round_trip_through_unpack() -> None:
    rows = [result(f"m-{n}") for n in range(5)]
    frames = result_frames(rows, 2, 1 << 20)
    assert [key for key, _ in frames] == [b"m-0", b"m-2", b"m-4"]
    decoded = [r for _, value in frames for r in unpack(value)]
    assert [r["message_id"] for r in decoded] == [f"m-{n}" for n in range(5)]
    assert decoded[0] == orjson.loads(rows[0].to_bytes())
