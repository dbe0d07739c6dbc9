"""User profiles: the segments a user belongs to and how to reach them.

Profiles arrive on the segments topic, keyed by user id (co-partitioned with
the events), one JSON object per user that replaces the previous one::

    {"user_id": "u-1", "segments": ["vip", "new"],
     "contact": {"email": "ada@example.com"}, "timezone": "Asia/Shanghai",
     "attributes": {"country": "CN", "plan": "pro"}}

``attributes`` is free-form: reach tasks filter audiences on it
(``attributes.country == "CN"``) and their templates read it.

A record with ``"deleted": true`` removes the user's profile.

reach itself adds ``app_versions``: the app version each platform's app last reported
in an event (``device.platform`` and ``device.app_version``), with the event time it was
reported at, ``{"ios": {"version": "1.8.2", "ts": 1764291600000}}``. A newer event
reporting another version replaces it, an older one never does (:func:`observe_version`),
and a profile record that replaces the profile keeps them (:func:`with_versions_of`).
Content is chosen for it when an event says no version, and audience filters read it as
``app_version.ios``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import orjson

from models.events import MAX_ID_LENGTH, EventError, load_json
from rules.versions import version_key

CONTACT_FIELDS = ("email", "phone", "fcm_token", "apns_token", "wechat_openid")
MAX_PLATFORM_LENGTH = 32
#: platforms kept per profile: a client inventing platform names cannot grow a profile
MAX_PLATFORMS = 8


@dataclasses.dataclass(frozen=True, slots=True)
class SeenVersion:
    """The app version a platform's app reported, and the time of the event that did."""

    version: str
    ts: int  # ms since epoch, the event's own time


@dataclasses.dataclass(frozen=True, slots=True)
class UserProfile:
    user_id: str
    segments: tuple[str, ...] = ()
    contact: Mapping[str, str] = dataclasses.field(default_factory=dict)
    timezone: str = ""
    deleted: bool = False
    attributes: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    app_versions: Mapping[str, SeenVersion] = dataclasses.field(default_factory=dict)

    def latest_versions(self) -> dict[str, str]:
        """``{platform: version}``, as rules and audience filters read ``app_version``."""
        return {platform: seen.version for platform, seen in self.app_versions.items()}

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
        app_versions=_app_versions(data.get("app_versions", {})),
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


def _app_versions(value: Any) -> dict[str, SeenVersion]:
    if not isinstance(value, dict):
        raise EventError("bad_app_versions", "'app_versions' must be an object")
    seen = {}
    for platform, entry in value.items():
        version = entry.get("version") if isinstance(entry, dict) else None
        ts = entry.get("ts") if isinstance(entry, dict) else None
        if not isinstance(version, str) or isinstance(ts, bool) or not isinstance(ts, int):
            raise EventError("bad_app_versions", f"'app_versions.{platform}' must be {{version, ts}}")
        seen[platform] = SeenVersion(version, ts)
    return seen


def platform_name(value: object) -> str:
    """A device platform as profiles key it (``"iOS "`` is ``ios``); ``""`` when unusable."""
    if not isinstance(value, str):
        return ""
    name = value.strip().lower()
    return name if len(name) <= MAX_PLATFORM_LENGTH else ""


def observe_version(
    profile: UserProfile | None, user_id: str, platform: str, version: object, ts: int
) -> UserProfile | None:
    """The profile with ``platform``'s app at ``version`` as of ``ts``, or None when that
    changes nothing: the same version, an event older than the one recorded, or a value
    that is not a version. A user without a profile gets one holding only the versions."""
    name = platform_name(platform)
    if not name or not isinstance(version, str):
        return None
    text = version.strip()
    current = profile or UserProfile(user_id)
    seen = current.app_versions.get(name)
    # The usual event reports the version already recorded: decided before any parsing.
    if seen is not None and (seen.version == text or ts < seen.ts):
        return None
    if version_key(text) is None:
        return None
    versions = {**current.app_versions, name: SeenVersion(text, ts)}
    return dataclasses.replace(current, app_versions=_bounded(versions))


def with_versions_of(profile: UserProfile, previous: UserProfile | None) -> UserProfile:
    """``profile`` (a record that replaces ``previous``) keeping the app versions reach
    recorded: per platform, the one reported by the newer event."""
    if previous is None or not previous.app_versions:
        return profile
    merged = dict(previous.app_versions)
    for platform, seen in profile.app_versions.items():
        if platform not in merged or seen.ts >= merged[platform].ts:
            merged[platform] = seen
    return dataclasses.replace(profile, app_versions=_bounded(merged))


def _bounded(versions: dict[str, SeenVersion]) -> dict[str, SeenVersion]:
    if len(versions) <= MAX_PLATFORMS:
        return versions
    newest = sorted(versions.items(), key=lambda item: item[1].ts, reverse=True)[:MAX_PLATFORMS]
    return dict(newest)


def app_version_for(versions: Mapping[str, SeenVersion], platform: str = "") -> tuple[str, str]:
    """``(platform, version)`` of the app content is chosen for: ``platform``'s when named
    (``("ios", "")`` when its app never reported one), else the most recently reported app's
    (``("", "")`` when none did)."""
    if platform:
        seen = versions.get(platform)
        return platform, seen.version if seen is not None else ""
    if not versions:
        return "", ""
    name, seen = max(versions.items(), key=lambda item: (item[1].ts, item[0]))
    return name, seen.version
