from __future__ import annotations

import orjson
import pytest

from models.events import (
    DEFAULT_MAX_DEPTH,
    EventError,
    check_id,
    count_keys,
    event_from_dict,
    parse_event,
    parse_ts,
)
from models.profiles import parse_profile
from reach.settings import Settings


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


def nested(depth: int, leaf: object = 1) -> object:
    """``depth`` levels of alternating objects and arrays around ``leaf``, built without recursion."""
    value = leaf
    for level in range(depth):
        value = {"k": value} if level % 2 else [value]
    return value


def event_dict(**fields: object) -> dict[str, object]:
    return {"event_id": "e1", "user_id": "u1", "name": "signup", "ts": 1764291600000, **fields}


def test_the_default_depth_limit_is_the_settings_default() -> None:
    assert Settings.model_fields["event_max_depth"].default == DEFAULT_MAX_DEPTH


@pytest.mark.parametrize("max_depth", [2, 5, DEFAULT_MAX_DEPTH])
def test_an_event_at_the_depth_limit_parses_and_one_level_more_is_too_deep(max_depth: int) -> None:
    # The event object is level 1 and properties level 2, so properties may hold max_depth - 2 more.
    at_limit = event_dict(properties={"p": nested(max_depth - 2)})
    assert event_from_dict(at_limit, max_depth).as_dict()["properties"] == at_limit["properties"]
    assert parse_event(orjson.dumps(at_limit), max_depth).properties == at_limit["properties"]
    over = event_dict(properties={"p": nested(max_depth - 1)})
    for parse in (
        lambda: event_from_dict(over, max_depth),
        lambda: parse_event(orjson.dumps(over), max_depth),
    ):
        with pytest.raises(EventError) as info:
            parse()
        assert info.value.reason == "too_deep" and str(max_depth) in info.value.detail


def test_depth_counts_any_field_and_arrays_as_well_as_objects() -> None:
    with pytest.raises(EventError, match="too_deep"):
        event_from_dict(event_dict(device={"d": [[[1]]]}), max_depth=4)
    with pytest.raises(EventError, match="too_deep"):
        event_from_dict(event_dict(extra=[[[[1]]]]), max_depth=4)
    assert event_from_dict(event_dict(device={"d": [[1]]}), max_depth=4).device == {"d": [[1]]}


def test_wide_shallow_events_and_brackets_inside_strings_are_not_too_deep() -> None:
    wide = event_dict(properties={f"k{n}": [{"v": n}] for n in range(1000)})
    assert len(parse_event(orjson.dumps(wide), max_depth=4).properties) == 1000
    brackets = event_dict(properties={"text": "[[[[{{{{" * 100})
    assert parse_event(orjson.dumps(brackets), max_depth=3).properties == brackets["properties"]


def test_the_default_limit_applies_when_the_caller_passes_none() -> None:
    with pytest.raises(EventError, match="too_deep"):
        parse_event(orjson.dumps(event_dict(properties=nested(DEFAULT_MAX_DEPTH))))


@pytest.mark.parametrize("depth", [500, 1100, 100_000])
def test_far_too_deep_events_are_refused_without_recursion_errors(depth: int) -> None:
    with pytest.raises(EventError) as info:
        event_from_dict(event_dict(properties={"p": nested(depth)}))
    assert info.value.reason == "too_deep"


@pytest.mark.parametrize("depth", [500, 1100])
def test_far_too_deep_records_are_too_deep_on_the_kafka_path(depth: int) -> None:
    # Past orjson's own limit (1024) the decoder refuses the record; the reason is the same.
    raw = b'{"event_id": "e1", "properties": ' + b"[" * depth + b"]" * depth + b"}"
    with pytest.raises(EventError) as info:
        parse_event(raw)
    assert info.value.reason == "too_deep"


EVENT_HEAD = b'{"event_id": "e", "name": "n", "ts": 1764291600000, '


@pytest.mark.parametrize(
    "raw",
    [
        b'{"event_id":"e","user_id":"u-1","user_id":"u-2","name":"n","ts":1764291600000}',
        EVENT_HEAD + b'"user_id": "u", "properties": {"a": 1, "b": {"c": 1, "c" : 2}}}',  # nested, spaced
        EVENT_HEAD + b'"user_id": "u", "properties": {"x": [{"k": 1}, {"k": 2, "k": 3}]}}',
        EVENT_HEAD + b'"user_id":"u","properties":{"s":"\\":","s":1}}',  # a string holding '":'
    ],
)
def test_a_key_named_twice_in_one_object_is_refused(raw: bytes) -> None:
    with pytest.raises(EventError) as caught:
        parse_event(raw)
    assert caught.value.reason == "duplicate_key"


@pytest.mark.parametrize(
    "raw",
    [
        EVENT_HEAD + b'"user_id": "u", "properties": {"x": [{"k": 1}, {"k": 2}], "y": {"k": 3}}}',
        EVENT_HEAD + b'"user_id":"u","properties":{"note":"a\\": b\\":","k":"\\"k\\":"}}',
        EVENT_HEAD + b'"user_id"\t:\n"u"}',
    ],
)
def test_the_same_key_in_different_objects_and_key_like_strings_are_fine(raw: bytes) -> None:
    assert parse_event(raw).user_id == "u"


def test_count_keys_counts_every_level() -> None:
    assert count_keys({"a": 1, "b": [{"c": 1, "d": {"e": 2}}, 3]}) == 5
    assert count_keys([1, "x"]) == 0 and count_keys("x") == 0


@pytest.mark.parametrize(
    "user_id",
    ["u\x00", "u\n1", "\x1b[31mu", "u\x7f", "u\x85", "u-1\u202egpj", "u\u2066x", "u\u200f", "u\u061c"],
)
def test_ids_with_control_or_bidi_characters_are_refused(user_id: str) -> None:
    with pytest.raises(EventError) as caught:
        event_from_dict({"event_id": "e", "user_id": user_id, "name": "n", "ts": 1764291600000})
    assert caught.value.reason == "bad_user_id"


def test_ids_in_other_scripts_and_emoji_are_fine() -> None:
    for user_id in ("用户-42", "ユーザー", "مستخدم", "u-😀", "a b"):
        assert check_id("user_id", user_id) == user_id
