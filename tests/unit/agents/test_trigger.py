"""The trigger plans each event on its own: a bad one is dead-lettered, the rest go out."""

from __future__ import annotations

import types
from pathlib import Path

import orjson
import pytest

from agents.trigger import TriggerPlanner
from channels.config import parse_channels
from reach.runtime import Setup
from reach.settings import Settings

RULES = """
triggers:
  - {id: hello, when: 'name == "hello"', template: hello, channels: [inbox], dedup_key: "{event_id}"}
  - id: cart
    when: name == "cart_abandoned"
    template: hello
    channels: [inbox]
    delay: 30m
    cancel_if: name == "order_paid"
templates:
  hello: {title: "Hello", text: "Hi {{ user_id }}"}
"""
CHANNELS = "channels:\n  inbox:\n    window_seconds: 1\n    providers: [{name: mariadb, type: inbox}]\n"


def step(tmp_path: Path, **settings: object) -> TriggerPlanner:
    (tmp_path / "rules.yaml").write_text(RULES)
    setup = Setup.load(Settings(rules_dir=tmp_path, **settings), parse_channels(CHANNELS, {}))  # type: ignore[arg-type]
    return TriggerPlanner(setup, {})


def record(value: bytes, offset: int) -> types.SimpleNamespace:
    """A consumed event, keyed by its user id as the API and the profile producer key it."""
    try:
        key = str(orjson.loads(value)["user_id"]).encode()
    except (orjson.JSONDecodeError, KeyError, TypeError):
        key = b"u-1"
    message = types.SimpleNamespace(value=value, key=key, topic="reach.events", partition=0, offset=offset)
    return types.SimpleNamespace(message=message)


def named(event_id: str, name: str, user: str = "u-1") -> bytes:
    return orjson.dumps({"event_id": event_id, "user_id": user, "name": name, "ts": 1_790_000_000_000})


def hello(event_id: str, properties: object = None, raw_properties: bytes = b"") -> bytes:
    body = {"event_id": event_id, "user_id": "u-1", "name": "hello", "ts": 1_790_000_000_000}
    encoded = orjson.dumps({**body, "properties": properties or {}})
    return (
        encoded.replace(b'"properties":{}', b'"properties":' + raw_properties) if raw_properties else encoded
    )


def nested(depth: int) -> bytes:
    """Objects nested ``depth`` deep, as JSON text (orjson would not encode that many levels)."""
    return b'{"a":' * depth + b"{}" + b"}" * depth


def reasons(dead: list[tuple[bytes | None, bytes]]) -> list[tuple[str, int]]:
    return [(orjson.loads(v)["reason"], orjson.loads(v)["offset"]) for _, v in dead]


def test_an_event_that_makes_planning_raise_is_dead_lettered_and_the_batch_goes_on(tmp_path: Path) -> None:
    # A depth limit above Python's recursion limit lets the event reach planning, which raises
    # RecursionError: whatever planning raises, only that event fails.
    trigger = step(tmp_path, event_max_depth=5000)
    batch = [
        record(hello("e-1"), 1),
        record(hello("e-2", raw_properties=nested(1000)), 2),
        record(b"{no", 3),
        record(hello("e-4"), 4),
    ]
    planned = trigger.plan(batch)
    records, dead = planned.records, planned.dead
    assert reasons(dead) == [("plan_error", 2), ("invalid_json", 3)]
    assert "Recursion" in orjson.loads(dead[0][1])["detail"]  # RecursionError, or orjson's TypeError
    assert [orjson.loads(v)["event_id"] for _, _, v in records] == ["e-1", "e-4"]


def test_a_deep_event_is_refused_by_the_contract_with_the_default_limit(tmp_path: Path) -> None:
    planned = step(tmp_path).plan(
        [record(hello("e-1", raw_properties=nested(500)), 7), record(hello("e-2"), 8)]
    )
    records, dead = planned.records, planned.dead
    assert reasons(dead) == [("too_deep", 7)]
    assert len(records) == 1


def test_an_event_whose_message_would_not_fit_the_outbox_is_dead_lettered(tmp_path: Path) -> None:
    trigger = step(tmp_path, kafka_max_message_bytes=20_000)
    big = hello("e-big", {"blob": "x" * 19_500})  # fits the events topic, not once wrapped as a message
    planned = trigger.plan([record(big, 1), record(hello("e-2"), 2)])
    records, dead = planned.records, planned.dead
    assert reasons(dead) == [("message_too_large", 1)]
    assert len(dead[0][1]) <= 20_000
    assert len(records) == 1


@pytest.mark.parametrize("value", [b"\xff" * 30_000, b'"' + b"\x01" * 30_000 + b'"'])
def test_a_dead_letter_always_fits_its_topic(tmp_path: Path, value: bytes) -> None:
    trigger = step(tmp_path, kafka_max_message_bytes=20_000)
    dead = trigger.plan([record(value, 1)]).dead
    assert len(dead[0][1]) <= 20_000 - 1024
    assert orjson.loads(dead[0][1])["truncated"] is True


def test_delayed_messages_wait_on_the_deferred_queue_with_their_cancels_in_event_order(
    tmp_path: Path,
) -> None:
    trigger = step(tmp_path)
    now = trigger.rt.clock.now_ms()
    planned = trigger.plan(
        [
            record(named("e-1", "cart_abandoned"), 1),
            record(named("e-2", "order_paid"), 2),
            record(named("e-3", "cart_abandoned"), 3),
            record(named("e-4", "order_paid", user="u-2"), 4),
            record(named("e-5", "hello"), 5),
        ]
    )
    assert [orjson.loads(v)["event_id"] for _, _, v in planned.records] == ["e-5"]  # sent at once
    later = trigger.rt.clock.now_ms()
    due = [(when, orjson.loads(value)) for when, value, _ in planned.delayed]
    assert [m["event_id"] for _, m in due] == ["e-1", "e-3"]
    for when, m in due:
        assert when == m["due_ts"] == m["not_before"]
        assert now <= when - 30 * 60_000 <= later  # 30m after planning
        assert m["cancellable"] is True
    first, second = (m["message_id"] for _, m in due)
    ops = [
        (type(op).__name__, op.user_id, getattr(op, "message_id", ""), op.position)
        for op in planned.cancel_ops
    ]
    assert ops == [
        ("Pending", "u-1", first, 1),
        ("Cancel", "u-1", "", 2),
        ("Pending", "u-1", second, 3),
        ("Cancel", "u-2", "", 4),
    ]
    assert {op.trigger_id for op in planned.cancel_ops} == {"cart"}


@pytest.mark.parametrize("key", [b"u-2", None, b"u-1 "])
def test_an_event_keyed_other_than_its_user_is_dead_lettered_as_key_mismatch(
    tmp_path: Path, key: bytes | None
) -> None:
    wrong = record(hello("e-1"), 1)
    wrong.message.key = key
    planned = step(tmp_path).plan([wrong, record(hello("e-2"), 2)])
    records, dead = planned.records, planned.dead
    assert reasons(dead) == [("key_mismatch", 1)]
    assert dead[0][0] == key  # the dead letter keeps the record's own key
    assert [orjson.loads(v)["event_id"] for _, _, v in records] == ["e-2"]


def test_copies_of_an_event_in_one_batch_plan_the_first_copy_only(tmp_path: Path) -> None:
    # A delayed copy would otherwise wait on the deferred queue next to the first, with the
    # same due time, and Redis orders equal due times by value, not by arrival.
    trigger = step(tmp_path)
    first, second = hello("e-1", {"n": 1}), hello("e-1", {"n": 2})
    planned = trigger.plan(
        [
            record(first, 1),
            record(second, 2),
            record(named("e-2", "cart_abandoned"), 3),
            record(named("e-2", "cart_abandoned") + b" ", 4),
        ]
    )
    assert [orjson.loads(v)["variables"]["properties"] for _, _, v in planned.records] == [{"n": 1}]
    assert len(planned.delayed) == 1


def opened(event_id: str, ts: int, device: dict[str, str] | None = None) -> bytes:
    body = {"event_id": event_id, "user_id": "u-1", "name": "hello", "ts": ts, "device": device or {}}
    return orjson.dumps(body)


def test_reported_app_versions_update_the_profile_for_the_batchs_later_events(tmp_path: Path) -> None:
    from models.profiles import SeenVersion, UserProfile

    trigger = step(tmp_path)
    t = 1_790_000_000_000
    trigger.profiles[b"u-1"] = UserProfile("u-1", segments=("vip",)).to_bytes()
    batch = trigger.plan(
        [
            record(opened("e-1", t, {"platform": "ios", "app_version": "1.8.0"}), 1),
            record(opened("e-2", t + 1), 2),  # says no version: the profile's, as e-1 left it
            record(opened("e-3", t - 5, {"platform": "ios", "app_version": "1.7.0"}), 3),  # older: ignored
            record(opened("e-4", t + 2, {"platform": "ios", "app_version": "1.9.1"}), 4),
        ]
    )
    assert batch.versions == [("u-1", "ios", "1.8.0", t), ("u-1", "ios", "1.9.1", t + 2)]
    planned = {orjson.loads(v)["event_id"]: orjson.loads(v)["app_version"] for _, _, v in batch.records}
    assert planned == {"e-1": "1.8.0", "e-2": "1.8.0", "e-3": "1.7.0", "e-4": "1.9.1"}
    # The table is written once MariaDB has the versions, into the profile it holds then.
    trigger.profiles[b"u-1"] = UserProfile("u-1", segments=("replaced",)).to_bytes()
    trigger.remember(batch.observed)
    stored = UserProfile.from_bytes(trigger.profiles[b"u-1"])
    assert (stored.segments, dict(stored.app_versions)) == (
        ("replaced",),
        {"ios": SeenVersion("1.9.1", t + 2)},
    )
