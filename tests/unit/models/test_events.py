from __future__ import annotations

import orjson
import pytest

from models.events import EventError, parse_event, parse_ts
from models.profiles import parse_profile


def raw(**fields: object) -> bytes:
    base: dict[str, object] = {"event_id": "e1", "user_id": "u1", "name": "signup", "ts": 1764291600000}
    base.update(fields)
    return orjson.dumps({k: v for k, v in base.items() if v is not ...})


def test_a_complete_event_parses() -> None:
    event = parse_event(raw(properties={"a": 1}, device={"platform": "ios"}))
    assert (event.event_id, event.user_id, event.name, event.ts) == ("e1", "u1", "signup", 1764291600000)
    assert event.platform == "ios" and event.properties == {"a": 1}


def test_optional_objects_default_to_empty() -> None:
    event = parse_event(raw())
    assert event.properties == {} and event.device == {} and event.platform == ""


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-11-28T01:00:00Z", 1795827600000),
        ("2026-11-28T09:00:00+08:00", 1795827600000),
        ("2026-11-28T01:00:00.250Z", 1795827600250),
        (1764291600000, 1764291600000),
    ],
)
def test_timestamps(value: object, expected: int) -> None:
    assert parse_ts(value) == expected


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"{nope", "invalid_json"),
        (b"[1]", "not_an_object"),
        (raw(event_id=""), "bad_event_id"),
        (raw(user_id=...), "bad_user_id"),
        (raw(user_id=7), "bad_user_id"),
        (raw(user_id="x" * 129), "bad_user_id"),
        (raw(name=None), "bad_name"),
        (raw(ts=...), "bad_ts"),
        (raw(ts="2026-11-28 01:00"), "bad_ts"),  # no offset
        (raw(ts="2026-11-28T01:00:00"), "bad_ts"),  # no offset
        (raw(ts=1764291600), "bad_ts"),  # seconds, not milliseconds
        (raw(ts=True), "bad_ts"),
        (raw(properties=[1]), "bad_properties"),
        (raw(device="ios"), "bad_device"),
    ],
)
def test_malformed_events_say_why(data: bytes, reason: str) -> None:
    with pytest.raises(EventError) as info:
        parse_event(data)
    assert info.value.reason == reason
    assert info.value.detail


def test_profiles_parse_and_normalise_segments() -> None:
    profile = parse_profile(
        orjson.dumps(
            {"user_id": "u", "segments": ["vip", "new", "vip"], "contact": {"email": "a@b.c", "phone": ""}}
        )
    )
    assert profile.segments == ("new", "vip")
    assert profile.contact == {"email": "a@b.c"}


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ({"segments": []}, "bad_user_id"),
        ({"user_id": "u", "segments": "vip"}, "bad_segments"),
        ({"user_id": "u", "contact": {"fax": "1"}}, "bad_contact"),
    ],
)
def test_malformed_profiles(data: dict, reason: str) -> None:
    with pytest.raises(EventError) as info:
        parse_profile(orjson.dumps(data))
    assert info.value.reason == reason
