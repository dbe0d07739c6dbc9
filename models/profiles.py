"""User profiles: the segments a user belongs to and how to reach them.

Profiles arrive on the segments topic, keyed by user id (co-partitioned with
the events), one JSON object per user that replaces the previous one::

    {"user_id": "u-1", "segments": ["vip", "new"],
     "contact": {"email": "ada@example.com"}, "timezone": "Asia/Shanghai",
     "attributes": {"country": "CN", "plan": "pro"}}

``attributes`` is free-form: reach tasks filter audiences on it
(``attributes.country == "CN"``) and their templates read it.

A record with ``"deleted": true`` removes the user's profile.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import orjson

from models.events import MAX_ID_LENGTH, EventError, load_json

CONTACT_FIELDS = ("email", "phone", "fcm_token", "apns_token", "wechat_openid")


@dataclasses.dataclass(frozen=True, slots=True)
class UserProfile:
    user_id: str
    segments: tuple[str, ...] = ()
    contact: Mapping[str, str] = dataclasses.field(default_factory=dict)
    timezone: str = ""
    deleted: bool = False
    attributes: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def to_bytes(self) -> bytes:
        return orjson.dumps(dataclasses.asdict(self))

    @classmethod
    def from_bytes(cls, raw: bytes) -> UserProfile:
        return profile_from_dict(orjson.loads(raw))


def parse_profile(raw: bytes) -> UserProfile:
    """Decode and validate one profile record; raise ``EventError`` when malformed."""
    return profile_from_dict(load_json(raw))


def profile_from_dict(data: Any) -> UserProfile:
    if not isinstance(data, dict):
        raise EventError("not_an_object", "a profile is a JSON object")
    user_id = data.get("user_id")
    if not isinstance(user_id, str) or not user_id or len(user_id) > MAX_ID_LENGTH:
        raise EventError("bad_user_id", "'user_id' must be a non-empty string")
    return UserProfile(
        user_id=user_id,
        segments=_segments(data.get("segments", [])),
        contact=_contact(data.get("contact", {})),
        timezone=_str(data.get("timezone", ""), "timezone"),
        deleted=bool(data.get("deleted", False)),
        attributes=_attributes(data.get("attributes", {})),
    )


def _segments(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(s, str) and s for s in value):
        raise EventError("bad_segments", "'segments' must be a list of non-empty strings")
    return tuple(sorted(set(value)))


def _contact(value: Any) -> Mapping[str, str]:
    if not isinstance(value, dict):
        raise EventError("bad_contact", "'contact' must be an object")
    unknown = set(value) - set(CONTACT_FIELDS)
    if unknown:
        raise EventError("bad_contact", f"unknown contact fields {sorted(unknown)}; known: {CONTACT_FIELDS}")
    return {k: _str(v, f"contact.{k}") for k, v in value.items() if v}


def _attributes(value: Any) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise EventError("bad_attributes", "'attributes' must be an object")
    return value


def _str(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise EventError(f"bad_{field}", f"'{field}' must be a string")
    return value
