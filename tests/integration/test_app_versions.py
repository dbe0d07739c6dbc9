"""App versions end to end: rules matched on the version the profile last saw, an upgrade
pop-up sent by a reach task to exactly the users below a minimum, and a pop-up older apps
cannot show falling back to the inbox."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from tests.integration.api_process import ApiProcess
from tests.integration.conftest import Pipeline, start_pipeline, stop_pipeline
from tests.integration.harness import produce_json, wait_until
from tests.support.smtp_server import SmtpTestServer

pytestmark = pytest.mark.integration

IOS_URL, ANDROID_URL = "https://apps.example/ios", "https://apps.example/android"


def now_ms() -> int:
    return int(time.time() * 1000)


def app_event(event_id: str, user: str, name: str, ts: int, **device: str) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "user_id": user,
        "name": name,
        "ts": ts,
        "properties": {"n": 1},
        "device": device,
    }


def add_users(p: Pipeline, segment: str, users: list[str]) -> None:
    """Profiles with an e-mail address: the example channel rule no-email-without-address
    would narrow a user without one to [inbox]."""
    profiles = [{"user_id": u, "segments": [segment], "contact": {"email": f"{u}@x.test"}} for u in users]
    produce_json(p.settings, p.settings.segments_topic, profiles)
    count = lambda: p.db.query("SELECT COUNT(*) FROM segment_members WHERE segment = %s", [segment])[0][0]  # noqa: E731
    wait_until(lambda: count() == len(users), 30, f"the profiles of {segment}")


def stored_versions(p: Pipeline, users: list[str]) -> list[tuple[Any, ...]]:
    marks = ",".join(["%s"] * len(users))
    return p.db.query(
        f"SELECT user_id, platform, app_version FROM user_app_versions WHERE user_id IN ({marks}) "
        "ORDER BY user_id, platform",
        users,
    )


def inbox_titles(p: Pipeline, user: str) -> list[str]:
    rows = p.db.query("SELECT title FROM inbox_messages WHERE user_id = %s ORDER BY created_at", [user])
    return [title for (title,) in rows]


@pytest.fixture(scope="module")
def gated(
    tmp_path_factory: pytest.TempPathFactory, smtp_server: SmtpTestServer
) -> Iterator[tuple[Pipeline, ApiProcess]]:
    """A pipeline and API of this module's own, with a minimum iOS version and upgrade URLs
    (the API runs as one process: no supervisor to kill it while it starts slowly)."""
    tmp = tmp_path_factory.mktemp("appver")
    overrides = {"min_app_versions": "ios=1.9.0", "upgrade_urls": f"ios={IOS_URL},android={ANDROID_URL}"}
    p = start_pipeline(tmp, smtp_server, overrides)
    served = (
        ApiProcess(p.settings, tmp / "api.log", "--workers", "1")
        .with_key("tasks:write", "inbox:read")
        .start()
        .wait_serving(60)
    )
    try:
        yield p, served
    finally:
        served.stop()
        stop_pipeline(p)


def popups(base: str, user: str, **headers: str) -> httpx.Response:
    return httpx.get(f"{base}/v1/users/{user}/popups", headers=headers, timeout=5)


def test_a_rule_matches_the_app_version_the_profile_last_saw(gated: tuple[Pipeline, ApiProcess]) -> None:
    """test-upgrade-nudge is ``version(device.app_version) < version("1.9.0")``; the
    test_app_opened events below say no version, so only the profile can match it."""
    pipeline, _api = gated
    user, t = "appver-rule-1", now_ms()
    events = [
        app_event("avr-1", user, "test_app_seen", t, platform="ios", app_version="1.8.0"),
        app_event(
            "avr-2", user, "test_app_seen", t - 60_000, platform="ios", app_version="1.7.0"
        ),  # late, older
        app_event("avr-3", user, "test_app_opened", t + 1, platform="ios"),  # -> nudge from 1.8.0
        app_event("avr-4", user, "test_app_seen", t + 2, platform="ios", app_version="1.10.0"),
        app_event("avr-5", user, "test_app_opened", t + 3),  # 1.10.0 now: no nudge
        app_event("avr-6", user, "test_ping", t + 4),
    ]
    produce_json(pipeline.settings, pipeline.settings.events_topic, events)
    wait_until(lambda: "ping 1" in inbox_titles(pipeline, user), 30, "the marker")
    assert inbox_titles(pipeline, user) == ["Please upgrade from 1.8.0", "ping 1"]
    assert stored_versions(pipeline, [user]) == [(user, "ios", "1.10.0")]


def test_a_popup_older_apps_cannot_show_falls_back_to_the_inbox(gated: tuple[Pipeline, ApiProcess]) -> None:
    pipeline, api = gated
    old, new = "appver-carousel-old", "appver-carousel-new"
    add_users(pipeline, "appver-carousel", [old, new])
    t = now_ms()
    events = [
        app_event("avc-1", old, "test_popup_carousel", t, platform="android", app_version="1.4.2"),
        app_event("avc-2", new, "test_popup_carousel", t, platform="android", app_version="2.1"),
    ]
    produce_json(pipeline.settings, pipeline.settings.events_topic, events)

    def results() -> list[tuple[Any, ...]]:
        return pipeline.db.query(
            "SELECT user_id, channel, status, error_code FROM delivery_results "
            "WHERE user_id IN (%s, %s) ORDER BY user_id, channel",
            [old, new],
        )

    wait_until(lambda: len(results()) == 3, 30, "three results")
    assert results() == [
        (new, "popup", "sent", ""),
        (old, "inbox", "sent", ""),
        (old, "popup", "suppressed", "app_version_fallback"),
    ]
    inbox = httpx.get(f"{api.base_url}/v1/users/{old}/inbox", headers=api.headers, timeout=5).json()["items"]
    assert [(i["title"], i["body"]) for i in inbox] == [("carousel 1", "swipe through the offers")]
    assert popups(api.base_url, old, **api.headers).json()["items"] == []
    [shown] = popups(api.base_url, new, **api.headers).json()["items"]
    assert (shown["title"], shown["type"], shown["upgrade"]) == ("carousel 1", "message", None)


def test_a_task_sends_an_upgrade_popup_to_exactly_the_users_below_the_minimum(
    gated: tuple[Pipeline, ApiProcess],
) -> None:
    p, api = gated
    reported = {
        "up-old": [("ios", "1.8.0")],
        "up-rc": [("ios", "1.9.0-rc1")],  # a pre-release is below its release
        "up-at": [("ios", "1.9.0")],
        "up-new": [("ios", "1.10.0")],  # 1.10 is above 1.9, though not as text
        "up-android": [("android", "1.0")],
        "up-both": [("ios", "1.5"), ("android", "3.0")],  # android most recent: the ios app still counts
        "up-none": [],
    }
    add_users(p, "upgrade-seg", list(reported))
    t = now_ms()
    seen = [
        app_event(f"ups-{user}-{n}", user, "test_app_seen", t + n, platform=platform, app_version=version)
        for user, apps in reported.items()
        for n, (platform, version) in enumerate(apps)
    ]
    produce_json(p.settings, p.settings.events_topic, seen)
    wait_until(lambda: len(stored_versions(p, list(reported))) == len(seen), 30, "the reported versions")

    task = {
        "name": "upgrade old iOS apps",
        "category": "notification",
        "audience": {"segments": ["upgrade-seg"], "filter": 'version(app_version.ios) < version("1.9.0")'},
        "content": {
            "kind": "upgrade",
            "platform": "ios",
            "title": "Please upgrade to {{ upgrade.minimum_version }}",
            "text": "Get it at {{ upgrade.upgrade_url }}",
        },
        "channels": ["popup"],
        "schedule": {"kind": "now"},
    }
    created = httpx.post(f"{api.base_url}/v1/tasks", content=orjson.dumps(task), timeout=10,
                         headers={**api.headers, "content-type": "application/json"})  # fmt: skip
    assert created.status_code == 201, created.text
    rule = f"task:{created.json()['task_no']}"
    sent = lambda: p.db.query(  # noqa: E731
        "SELECT user_id FROM delivery_results WHERE rule_id = %s AND status = 'sent' ORDER BY user_id", [rule]
    )
    wait_until(lambda: len(sent()) >= 3, 30, "the upgrade pop-ups")

    def status() -> str:
        shown = httpx.get(f"{api.base_url}/v1/tasks/{rule[5:]}", headers=api.headers, timeout=5)
        return str(shown.json()["status"])

    wait_until(lambda: status() == "completed", 30, "the task to complete")
    assert sent() == [("up-both",), ("up-old",), ("up-rc",)]

    # An app that says it reached the minimum is not asked; one below gets the 426 instead.
    upgraded = {**api.headers, "X-App-Platform": "ios", "X-App-Version": "1.9.0"}
    assert popups(api.base_url, "up-old", **upgraded).json() == {"items": []}
    refused = popups(api.base_url, "up-old", **{**upgraded, "X-App-Version": "1.8.0"})
    assert refused.status_code == 426 and refused.json()["details"]["upgrade_url"] == IOS_URL
    for user in ("up-old", "up-rc", "up-both"):
        [item] = popups(api.base_url, user, **api.headers).json()["items"]  # an app too old for the headers
        assert (item["type"], item["title"], item["body"]) == (
            "upgrade", "Please upgrade to 1.9.0", f"Get it at {IOS_URL}"
        )  # fmt: skip
        assert item["upgrade"] == {"platform": "ios", "minimum_version": "1.9.0", "upgrade_url": IOS_URL}
    for user in ("up-at", "up-new", "up-android", "up-none"):
        assert popups(api.base_url, user, **api.headers).json()["items"] == []
