"""Limits the API applies to events before producing: record size and nesting depth."""

from __future__ import annotations

import pytest

from api.errors import RETRY_AFTER_SECONDS, ApiError, unavailable
from api.event_producer import EventProducer, oversized, record_size
from api.events import parse_events
from models.events import DEFAULT_MAX_DEPTH
from reach.settings import Settings


def event(event_id: str, **properties: object) -> dict[str, object]:
    return {"event_id": event_id, "user_id": "u", "name": "n", "ts": 1764291600000, "properties": properties}


def test_record_size_counts_key_value_and_batch_overhead() -> None:
    # Lengths are varints: these stay within one varint width, so each byte counts once.
    base = record_size(b"k", b"v" * 1000)
    assert base > 1000 + 61  # a lone record travels in a batch with a 61-byte header
    assert record_size(b"k", b"v" * 1100) == base + 100
    assert record_size(b"kk", b"v" * 1000) == base + 1


def test_oversized_names_each_record_over_the_limit_and_only_those() -> None:
    limit = record_size(b"k", b"v" * 1000)
    records = [(b"k", b"v" * 1000), (b"k", b"v" * 1001), (b"k", b""), (b"k", b"v" * 1500)]
    assert oversized(records, limit) == [
        {"index": 1, "bytes": limit + 1, "limit": limit},
        {"index": 3, "bytes": limit + 500, "limit": limit},
    ]


async def test_check_sizes_refuses_with_413_naming_the_limit() -> None:
    producer = EventProducer(Settings(kafka_max_message_bytes=2048))  # never started: no I/O
    producer.check_sizes([(b"k", b"v" * 1900)])
    with pytest.raises(ApiError) as info:
        producer.check_sizes([(b"k", b"v" * 1900), (b"k", b"v" * 2048)])
    assert (info.value.status, info.value.code) == (413, "event_too_large")
    assert "2048 bytes" in info.value.message and [d["index"] for d in info.value.details] == [1]


def test_unavailable_tells_the_client_when_to_retry() -> None:
    error = unavailable("down")
    assert (error.status, error.code, error.headers) == (
        503,
        "unavailable",
        {"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def test_parse_events_reports_too_deep_events_by_index() -> None:
    deep: object = 1
    for _ in range(4):
        deep = [deep]
    with pytest.raises(ApiError) as info:
        parse_events([event("ok"), event("deep", p=deep)], max_depth=5)
    assert info.value.status == 422
    assert [(d["index"], d["reason"]) for d in info.value.details] == [(1, "too_deep")]
    assert [e.event_id for e in parse_events([event("ok"), event("deep", p=deep)], max_depth=6)] == [
        "ok",
        "deep",
    ]


def test_parse_events_applies_the_default_depth_without_a_limit() -> None:
    deep: object = 1
    for _ in range(DEFAULT_MAX_DEPTH):
        deep = [deep]
    with pytest.raises(ApiError):
        parse_events(event("deep", p=deep))
