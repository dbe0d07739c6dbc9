"""Tracking events on the wire, and the pure decisions of applying them (first times only)."""

from __future__ import annotations

import collections
import struct

import orjson
from prometheus_client import CollectorRegistry

from api.tracking import PIXEL_GIF
from models.engagement import earliest, new_stages, repeats_of
from models.tracking import KINDS, Kind, TrackingEvent, decode, record
from reach.metrics import ENGAGEMENT_KINDS, WorkerMetrics


def ev(message_id: str, kind: Kind, ts: int) -> TrackingEvent:
    return TrackingEvent(message_id, kind, ts)


def test_a_record_is_the_event_keyed_by_its_message() -> None:
    key, value = record(ev("m-1", Kind.OPENED, 5))
    assert key == b"m-1" and orjson.loads(value) == {"message_id": "m-1", "kind": "opened", "ts": 5}
    assert decode([value]) == ([ev("m-1", Kind.OPENED, 5)], 0)


def test_frames_and_single_events_decode_and_bad_ones_are_counted() -> None:
    frame = orjson.dumps(
        [
            {"message_id": "a", "kind": "clicked", "ts": 1},
            {"message_id": "b", "kind": "liked", "ts": 1},  # not a stage
            {"message_id": "", "kind": "opened", "ts": 1},
            {"message_id": "c", "kind": "opened", "ts": True},
            {"message_id": "d" * 65, "kind": "opened", "ts": 1},
            {"message_id": "e", "kind": None, "ts": 1},
            "not an object",
        ]
    )
    events, bad = decode(
        [frame, b"{not json", b"42", orjson.dumps({"message_id": "f", "kind": "displayed", "ts": 2})]
    )
    assert events == [ev("a", Kind.CLICKED, 1), ev("f", Kind.DISPLAYED, 2)]
    assert bad == 8


def test_the_earliest_time_of_each_stage_is_kept() -> None:
    events = [
        ev("a", Kind.OPENED, 9),
        ev("a", Kind.OPENED, 3),
        ev("a", Kind.CLICKED, 5),
        ev("b", Kind.OPENED, 7),
    ]
    assert earliest(events) == {"a": {Kind.OPENED: 3, Kind.CLICKED: 5}, "b": {Kind.OPENED: 7}}


def test_only_stages_not_stored_are_new() -> None:
    wanted = {"a": {Kind.OPENED: 3, Kind.CLICKED: 5}, "b": {Kind.OPENED: 7}, "c": {Kind.DELIVERED: 1}}
    stored = {"a": {Kind.OPENED: 1}, "b": {Kind.OPENED: 8}}  # b was opened later before: still stored
    assert new_stages(wanted, stored) == {"a": {Kind.CLICKED: 5}, "c": {Kind.DELIVERED: 1}}


def test_repeats_are_every_event_but_one_per_new_stage() -> None:
    events = [
        ev("a", Kind.OPENED, 1),
        ev("a", Kind.OPENED, 2),
        ev("b", Kind.OPENED, 1),
        ev("a", Kind.CLICKED, 1),
    ]
    fresh = {"a": {Kind.OPENED: 1, Kind.CLICKED: 1}}
    assert repeats_of(events, fresh) == collections.Counter({Kind.OPENED: 2})
    assert repeats_of(events, {}) == collections.Counter({Kind.OPENED: 3, Kind.CLICKED: 1})


def test_the_metrics_know_every_stage() -> None:
    assert tuple(k.value for k in KINDS) == ENGAGEMENT_KINDS
    metrics = WorkerMetrics(CollectorRegistry())
    metrics.start_engagement_series({"email": ["smtp"]}, ["marketing"])
    samples = {
        tuple(sorted(s.labels.items()))
        for m in metrics.engagement.collect()
        for s in m.samples
        if s.name.endswith("_total")
    }
    assert len(samples) == 4 * 5 * 2  # stages x platforms (with other) x categories (with other)
    assert (
        ("category", "other"),
        ("channel", "email"),
        ("kind", "clicked"),
        ("platform", "other"),
        ("provider", "smtp"),
    ) in samples


def test_the_pixel_is_a_one_by_one_gif() -> None:
    assert PIXEL_GIF[:6] == b"GIF89a" and struct.unpack("<HH", PIXEL_GIF[6:10]) == (1, 1)
    assert PIXEL_GIF.endswith(b";") and len(PIXEL_GIF) == 43
