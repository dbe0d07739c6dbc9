"""The HTTP API against the real Kafka and MariaDB, in its own process."""

from __future__ import annotations

import time

import httpx
import orjson
import pytest

from tests.integration.conftest import Api, Pipeline
from tests.integration.harness import read_topic_until, wait_until

pytestmark = pytest.mark.integration


def post_events(api: Api, body: object) -> httpx.Response:
    return httpx.post(
        f"{api.base_url}/v1/events",
        content=orjson.dumps(body),
        headers={"content-type": "application/json"},
        timeout=10,
    )


def test_posted_events_reach_the_events_topic_and_cause_messages(pipeline: Pipeline, api: Api) -> None:
    now = int(time.time() * 1000)
    batch = [
        {
            "event_id": f"api-{n}",
            "user_id": "api-user-1",
            "name": "test_ping",
            "ts": now,
            "properties": {"n": n},
        }
        for n in range(3)
    ]
    response = post_events(api, batch)
    assert response.status_code == 202 and response.json() == {"accepted": 3}
    single = post_events(
        api,
        {
            "event_id": "api-9",
            "user_id": "api-user-1",
            "name": "test_ping",
            "ts": "2026-11-28T01:00:00+08:00",
            "properties": {"n": 9},
        },
    )
    assert single.status_code == 202

    records = read_topic_until(
        pipeline.settings,
        pipeline.settings.events_topic,
        lambda recs: sum(k == b"api-user-1" for k, _ in recs) >= 4,
    )
    assert {orjson.loads(v)["event_id"] for k, v in records if k == b"api-user-1"} >= {"api-0", "api-9"}

    def all_four() -> dict | None:
        page = httpx.get(f"{api.base_url}/v1/users/api-user-1/inbox", timeout=5).json()
        return page if len(page["items"]) == 4 else None

    page = wait_until(all_four, 30, "four inbox messages")
    assert page["unread"] == 4


def test_invalid_events_get_a_422_naming_each_problem(api: Api) -> None:
    response = post_events(
        api,
        [
            {"event_id": "ok", "user_id": "u", "name": "signup", "ts": 1764291600000},
            {"event_id": "bad", "name": "signup", "ts": 1764291600000},
            {"event_id": "bad2", "user_id": "u", "name": "signup", "ts": "2026-11-28 01:00"},
        ],
    )
    assert response.status_code == 422
    body = response.json()
    assert body["error"] == "invalid_events"
    assert [(d["index"], d["reason"]) for d in body["details"]] == [(1, "bad_user_id"), (2, "bad_ts")]


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        (b"{nope", 400, "invalid_json"),
        (b"[]", 422, "no_events"),
        (b"42", 422, "invalid_events"),
    ],
)
def test_unreadable_bodies_are_refused(api: Api, body: bytes, status: int, error: str) -> None:
    response = httpx.post(f"{api.base_url}/v1/events", content=body, timeout=5)
    assert response.status_code == status and response.json()["error"] == error


def test_inbox_pages_newest_first_with_a_cursor(pipeline: Pipeline, api: Api) -> None:
    user, now = "pager-1", int(time.time() * 1000)
    assert (
        post_events(
            api,
            [
                {
                    "event_id": f"pg-{n}",
                    "user_id": user,
                    "name": "test_ping",
                    "ts": now,
                    "properties": {"n": n},
                }
                for n in range(5)
            ],
        ).status_code
        == 202
    )
    wait_until(
        lambda: len(pipeline.db.query("SELECT 1 FROM inbox_messages WHERE user_id = %s", [user])) == 5,
        30,
        "five messages",
    )
    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = httpx.get(f"{api.base_url}/v1/users/{user}/inbox", params=params, timeout=5).json()
        seen += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 5 and len({m["message_id"] for m in seen}) == 5
    keys = [(m["created_at"], m["message_id"]) for m in seen]
    assert keys == sorted(keys, reverse=True)


def test_inbox_errors(api: Api) -> None:
    bad_cursor = httpx.get(f"{api.base_url}/v1/users/u/inbox", params={"cursor": "zzz"}, timeout=5)
    assert bad_cursor.status_code == 400 and bad_cursor.json()["error"] == "bad_cursor"
    too_many = httpx.get(f"{api.base_url}/v1/users/u/inbox", params={"limit": 1000}, timeout=5)
    assert too_many.status_code == 422 and too_many.json()["error"] == "invalid_request"
    missing = httpx.post(f"{api.base_url}/v1/users/u/inbox/nope/read", timeout=5)
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"


def test_framework_errors_are_json_too(api: Api) -> None:
    wrong_method = httpx.delete(f"{api.base_url}/v1/events", timeout=5)
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"] == "method_not_allowed"
    unknown = httpx.get(f"{api.base_url}/v1/nothing-here", timeout=5)
    assert unknown.status_code == 404 and unknown.json()["error"] == "not_found"
    too_large = httpx.post(
        f"{api.base_url}/v1/events",
        content=b"[" + b" " * (6 * 1024 * 1024) + b"]",
        headers={"content-type": "application/json"},
        timeout=10,
    )
    assert too_large.status_code == 413 and too_large.json()["error"] == "too_large"


def test_health_metrics_and_openapi(api: Api) -> None:
    assert httpx.get(f"{api.base_url}/healthz", timeout=5).json() == {"status": "ok"}
    metrics = httpx.get(f"{api.base_url}/metrics", timeout=5).text
    assert "reach_api_request_seconds_bucket" in metrics
    paths = httpx.get(f"{api.base_url}/openapi.json", timeout=5).json()["paths"]
    assert {"/v1/events", "/v1/users/{user_id}/inbox", "/v1/users/{user_id}/inbox/{message_id}/read"} <= set(
        paths
    )
