"""The app version each platform last reported, as profiles keep it."""

from __future__ import annotations

import pytest

from models.events import EventError
from models.profiles import (
    MAX_PLATFORMS,
    SeenVersion,
    UserProfile,
    app_version_for,
    observe_version,
    parse_profile,
    with_versions_of,
)

T = 1_790_000_000_000


def versions(profile: UserProfile | None) -> dict[str, tuple[str, int]]:
    assert profile is not None
    return {p: (v.version, v.ts) for p, v in profile.app_versions.items()}


def test_a_newer_event_replaces_the_version_an_older_one_never_does() -> None:
    first = observe_version(None, "u-1", "ios", "1.8.0", T)
    assert versions(first) == {"ios": ("1.8.0", T)}
    newer = observe_version(first, "u-1", "ios", "1.9.2", T + 10)
    assert versions(newer) == {"ios": ("1.9.2", T + 10)}
    assert observe_version(newer, "u-1", "ios", "1.8.0", T + 5) is None  # an older event, late
    assert observe_version(newer, "u-1", "ios", "1.9.2", T + 99) is None  # nothing changed
    both = observe_version(newer, "u-1", "android", "2.0", T + 1)
    assert versions(both) == {"ios": ("1.9.2", T + 10), "android": ("2.0", T + 1)}


@pytest.mark.parametrize(
    ("platform", "version"), [("", "1.0"), ("ios", "junk"), ("ios", None), ("ios", 19), ("x" * 33, "1.0")]
)
def test_what_is_not_a_platform_and_a_version_changes_nothing(platform: str, version: object) -> None:
    assert observe_version(UserProfile("u-1"), "u-1", platform, version, T) is None


def test_platform_names_are_folded_and_the_rest_of_the_profile_stays() -> None:
    profile = UserProfile("u-1", segments=("vip",), contact={"email": "a@b.test"})
    seen = observe_version(profile, "u-1", " iOS ", " 1.9.0 ", T)
    assert seen is not None and versions(seen) == {"ios": ("1.9.0", T)}
    assert (seen.segments, dict(seen.contact)) == (("vip",), {"email": "a@b.test"})


def test_a_profile_keeps_a_bounded_number_of_platforms_the_newest() -> None:
    profile: UserProfile | None = None
    for n in range(MAX_PLATFORMS + 2):
        profile = observe_version(profile, "u-1", f"p{n}", "1.0", T + n)
    assert profile is not None and len(profile.app_versions) == MAX_PLATFORMS
    assert "p0" not in profile.app_versions and "p1" not in profile.app_versions


def test_a_replacing_profile_record_keeps_the_versions_events_reported() -> None:
    previous = UserProfile("u-1", segments=("old",), app_versions={"ios": SeenVersion("1.8", T)})
    record = UserProfile("u-1", segments=("new",))
    kept = with_versions_of(record, previous)
    assert (kept.segments, versions(kept)) == (("new",), {"ios": ("1.8", T)})
    # a record carrying a version keeps the newer of the two
    stale = UserProfile("u-1", app_versions={"ios": SeenVersion("1.7", T - 1), "web": SeenVersion("3", T)})
    assert versions(with_versions_of(stale, previous)) == {"ios": ("1.8", T), "web": ("3", T)}
    assert with_versions_of(record, None) is record


def test_the_table_form_round_trips_and_a_bad_one_is_refused() -> None:
    profile = UserProfile("u-1", app_versions={"ios": SeenVersion("1.8", T)})
    assert UserProfile.from_bytes(profile.to_bytes()) == profile
    with pytest.raises(EventError, match="app_versions"):
        parse_profile(b'{"user_id": "u-1", "app_versions": {"ios": "1.8"}}')


def test_the_app_content_is_chosen_for() -> None:
    seen = {"ios": SeenVersion("1.8", T), "android": SeenVersion("2.1", T + 5)}
    assert app_version_for(seen, "ios") == ("ios", "1.8")
    assert app_version_for(seen, "web") == ("web", "")
    assert app_version_for(seen) == ("android", "2.1")  # the most recently seen
    assert app_version_for({}) == ("", "")
