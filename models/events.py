"""The behaviour-event contract, and its parser.

An event is a JSON object::

    {"event_id": "e-1", "user_id": "u-1", "name": "signup",
     "ts": "2026-11-28T01:00:00Z" | 1764291600000,
     "properties": {...}, "device": {"platform": "ios", ...}}

``event_id``, ``user_id`` and ``name`` are non-empty strings (at most 128
characters), ``ts`` is an RFC 3339 string or epoch milliseconds,
``properties`` and ``device`` are optional objects, and objects and arrays
nest at most ``max_depth`` levels (the event object is level 1). Anything
else is refused with an :class:`EventError` whose ``reason`` says what is
wrong; the worker sends such an event to the dead-letter topic.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

MAX_ID_LENGTH = 128
# Epoch-ms bounds: 2000-01-01 .. 2100-01-01. A seconds value or a typo lands outside.
MIN_TS_MS = 946_684_800_000
MAX_TS_MS = 4_102_444_800_000
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
# The default of Settings.event_max_depth (a unit test keeps the two equal), for callers
# that do not pass a limit. Well below the ~250 levels orjson can serialize and the ~500
# where dataclasses.asdict() runs out of Python stack.
DEFAULT_MAX_DEPTH = 32
_CONTAINERS = (dict, list)
# C0 and C1 controls (NUL, escapes, newlines), DEL, and the bidirectional formatting
# characters that make an id display as another (U+202E turns "u-1\u202egpj.exe" around).
CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
# Where an object key ends in JSON text: its closing quote, JSON whitespace, a colon. Every
# key has one; so can the contents of a string, which only ever over-counts.
_KEY_END = re.compile(rb'"[ \t\n\r]*:')


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
        """The event's fields in a new dict; ``properties`` and ``device`` are the event's own
        (not copied: nothing changes them, and a deep copy costs ~20 us an event)."""
        return {
            "event_id": self.event_id,
            "user_id": self.user_id,
            "name": self.name,
            "ts": self.ts,
            "properties": self.properties,
            "device": self.device,
        }


def load_json(raw: bytes | str) -> Any:
    """Decode JSON; raise :class:`EventError` ``invalid_json`` when it is not, and
    ``duplicate_key`` when an object names a key twice (parsers disagree on which copy
    wins, so a checked value could differ from the one another system acts on).

    orjson refuses input nesting deeper than its own limit (1024 levels); that
    is reported as ``too_deep``, like any event over the contract's depth.
    """
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        reason = "too_deep" if is_depth_error(exc) else "invalid_json"
        raise EventError(reason, str(exc)) from None
    refuse_duplicate_keys(raw, data)
    return data


def refuse_duplicate_keys(raw: bytes | str, data: Any) -> None:
    """Raise :class:`EventError` ``duplicate_key`` when the JSON text ``raw`` (decoded as
    ``data``) repeats a key within one object.

    orjson keeps the last copy silently. The fast test: when the text has no more key
    endings than ``data`` has keys, no key can have been dropped; only otherwise (a string
    holding ``":``, or a real duplicate) is the text parsed again, keeping every pair.
    """
    text = raw.encode() if isinstance(raw, str) else raw
    if _key_endings(text) > count_keys(data):
        try:
            json.loads(text, object_pairs_hook=_unique_pairs)
        except RecursionError:  # the stdlib parser recurses; orjson took up to 1024 levels
            raise EventError("too_deep", "the JSON nests too deep to check for duplicate keys") from None


def _key_endings(text: bytes) -> int:
    """At least the number of object keys in ``text`` (an over-count is safe)."""
    # bytes.count is ~10x faster than the regex; it counts every key unless whitespace
    # stands between a key and its colon, which compact JSON never has.
    if b" :" in text or b"\t:" in text or b"\n:" in text or b"\r:" in text:
        return len(_KEY_END.findall(text))
    return text.count(b'":')


def count_keys(value: Any) -> int:
    """Object keys in ``value``, at every depth (an explicit stack: no recursion limit)."""
    if not isinstance(value, _CONTAINERS):
        return 0
    stack, total = [value], 0
    while stack:
        node = stack.pop()
        # Plain loops: this runs on every event, and they are ~3x faster than genexprs.
        children: Iterable[Any]
        if isinstance(node, dict):
            total += len(node)
            children = node.values()
        else:
            children = node
        for child in children:
            if isinstance(child, _CONTAINERS):
                stack.append(child)
    return total


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise EventError("duplicate_key", f"the key {key[:64]!r} appears twice in one object")
        found[key] = value
    return found


def is_depth_error(exc: orjson.JSONDecodeError) -> bool:
    """True when orjson refused the input for nesting too deep, not for its syntax."""
    return str(exc).startswith("depth limit exceeded")


def parse_event(raw: bytes | str, max_depth: int = DEFAULT_MAX_DEPTH) -> Event:
    """Decode and validate one event; raise :class:`EventError` when malformed or too deep."""
    data = load_json(raw)
    # The depth walk costs more than the rest of the validation; a record with no more
    # brackets than max_depth cannot nest deeper (each level opens one), so it skips it.
    return _build_event(data, max_depth if _bracket_count(raw) > max_depth else None)


def event_from_dict(data: Any, max_depth: int = DEFAULT_MAX_DEPTH) -> Event:
    """Validate one decoded event; raise :class:`EventError` when malformed or too deep."""
    return _build_event(data, max_depth)


def _build_event(data: Any, max_depth: int | None) -> Event:
    if not isinstance(data, dict):
        raise EventError("not_an_object", f"an event is a JSON object, got {type(data).__name__}")
    if max_depth is not None:
        check_depth(data, max_depth)
    return Event(
        event_id=_required_id(data, "event_id"),
        user_id=_required_id(data, "user_id"),
        name=_required_id(data, "name"),
        ts=parse_ts(data.get("ts")),
        properties=_optional_object(data, "properties"),
        device=_optional_object(data, "device"),
    )


def _bracket_count(raw: bytes | str) -> int:
    """Opening brackets in the raw text, those inside strings included (an over-count is safe)."""
    if isinstance(raw, bytes):
        return raw.count(b"{") + raw.count(b"[")
    return raw.count("{") + raw.count("[")


def check_depth(value: Any, max_depth: int) -> None:
    """Raise :class:`EventError` ``too_deep`` when objects and arrays in ``value`` nest
    deeper than ``max_depth`` levels (``value`` itself is level 1; scalars add none).

    Walks with an explicit stack, never recursion, so any depth is refused cleanly;
    it stops at the first container past the limit.
    """
    stack: list[tuple[Any, int]] = [(value, 1)] if isinstance(value, _CONTAINERS) else []
    while stack:
        node, depth = stack.pop()
        if depth > max_depth:
            raise EventError("too_deep", f"objects and arrays nest deeper than {max_depth} levels")
        # A plain loop: this runs on every event, and it is ~3x faster than stack.extend(genexpr).
        for child in node.values() if isinstance(node, dict) else node:
            if isinstance(child, _CONTAINERS):
                stack.append((child, depth + 1))


def _required_id(data: Mapping[str, Any], field: str) -> str:
    return check_id(field, data.get(field))


def check_id(field: str, value: Any) -> str:
    """``value`` when it is an id: a string of 1-128 characters with no control or bidi
    formatting character; raises :class:`EventError` ``bad_<field>`` otherwise."""
    if not isinstance(value, str) or not value:
        raise EventError(f"bad_{field}", f"'{field}' must be a non-empty string")
    if len(value) > MAX_ID_LENGTH:
        raise EventError(f"bad_{field}", f"'{field}' is longer than {MAX_ID_LENGTH} characters")
    if CONTROL_CHARACTERS.search(value):
        raise EventError(f"bad_{field}", f"'{field}' holds a control or bidi formatting character")
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
