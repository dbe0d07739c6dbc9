"""The behaviour-event contract, and its parser.

An event is a JSON object::

    {"event_id": "e-1", "user_id": "u-1", "name": "signup",
     "ts": "2026-11-28T01:00:00Z" | 1764291600000,
     "properties": {...}, "device": {"platform": "ios", ...}}

``event_id``, ``user_id`` and ``name`` are non-empty strings (at most 128
characters), ``ts`` is an RFC 3339 string or epoch milliseconds,
``properties`` and ``device`` are optional objects. Anything else is refused
with an :class:`EventError` whose ``reason`` says what is wrong; the worker
sends such an event to the dead-letter topic.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from typing import Any

import orjson

MAX_ID_LENGTH = 128
# Epoch-ms bounds: 2000-01-01 .. 2100-01-01. A seconds value or a typo lands outside.
MIN_TS_MS = 946_684_800_000
MAX_TS_MS = 4_102_444_800_000
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


class EventError(ValueError):
    """A malformed event. ``reason`` is a short code, ``detail`` says what to fix."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    event_id: str
    user_id: str
    name: str
    ts: int  # ms since epoch
    properties: Mapping[str, Any]
    device: Mapping[str, Any]

    @property
    def platform(self) -> str:
        platform = self.device.get("platform", "")
        return platform if isinstance(platform, str) else ""

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_json(raw: bytes | str) -> Any:
    """Decode JSON; raise :class:`EventError` ``invalid_json`` when it is not."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise EventError("invalid_json", str(exc)) from None


def parse_event(raw: bytes | str) -> Event:
    """Decode and validate one event; raise :class:`EventError` when malformed."""
    return event_from_dict(load_json(raw))


def event_from_dict(data: Any) -> Event:
    if not isinstance(data, dict):
        raise EventError("not_an_object", f"an event is a JSON object, got {type(data).__name__}")
    return Event(
        event_id=_required_id(data, "event_id"),
        user_id=_required_id(data, "user_id"),
        name=_required_id(data, "name"),
        ts=parse_ts(data.get("ts")),
        properties=_optional_object(data, "properties"),
        device=_optional_object(data, "device"),
    )


def _required_id(data: Mapping[str, Any], field: str) -> str:
    value = data.get(field)
    if not isinstance(value, str) or not value:
        raise EventError(f"bad_{field}", f"'{field}' must be a non-empty string")
    if len(value) > MAX_ID_LENGTH:
        raise EventError(f"bad_{field}", f"'{field}' is longer than {MAX_ID_LENGTH} characters")
    return value


def _optional_object(data: Mapping[str, Any], field: str) -> Mapping[str, Any]:
    value = data.get(field)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise EventError(f"bad_{field}", f"'{field}' must be a JSON object when present")
    return value


def parse_ts(value: Any) -> int:
    """RFC 3339 string or epoch milliseconds -> epoch milliseconds."""
    if isinstance(value, bool) or value is None:
        raise EventError("bad_ts", "'ts' must be an RFC 3339 string or epoch milliseconds")
    if isinstance(value, int | float):
        ms = int(value)
    elif isinstance(value, str):
        ms = _parse_rfc3339(value)
    else:
        raise EventError("bad_ts", "'ts' must be an RFC 3339 string or epoch milliseconds")
    if not MIN_TS_MS <= ms <= MAX_TS_MS:
        raise EventError("bad_ts", f"'ts' {value!r} is out of range (epoch milliseconds, 2000..2100)")
    return ms


def _parse_rfc3339(value: str) -> int:
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise EventError("bad_ts", f"'ts' {value!r} is not an RFC 3339 timestamp") from None
    if parsed.tzinfo is None:
        raise EventError("bad_ts", f"'ts' {value!r} has no time zone offset (RFC 3339 requires one)")
    return (parsed - EPOCH) // dt.timedelta(milliseconds=1)
