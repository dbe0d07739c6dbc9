"""The HTTP API against the real Kafka and MariaDB, in its own process."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from api.errors import RETRY_AFTER_SECONDS
from api.event_producer import record_size
from api.health import READY_TIMEOUT_S
from models.events import DEFAULT_MAX_DEPTH, event_from_dict
from reach.settings import Settings
from tests.integration.api_process import ApiProcess
from tests.integration.conftest import Api, Pipeline
from tests.integration.harness import read_topic_until, unique_run_id, wait_until
from tests.support.kafka_proxy import KafkaProxy
from tests.support.sockets import closed_port, silent_listener
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.integration


def post_events(api: Api | ApiProcess, body: object) -> httpx.Response:
    return httpx.post(
        f"{api.base_url}/v1/events",
        content=orjson.dumps(body),
        headers={**api.headers, "content-type": "application/json"},
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
        page = httpx.get(f"{api.base_url}/v1/users/api-user-1/inbox", headers=api.headers, timeout=5).json()
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
    headers = {**api.headers, "content-type": "application/json"}
    response = httpx.post(f"{api.base_url}/v1/events", content=body, headers=headers, timeout=5)
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
        page = httpx.get(
            f"{api.base_url}/v1/users/{user}/inbox", params=params, headers=api.headers, timeout=5
        ).json()
        seen += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 5 and len({m["message_id"] for m in seen}) == 5
    keys = [(m["created_at"], m["message_id"]) for m in seen]
    assert keys == sorted(keys, reverse=True)


def test_inbox_errors(api: Api) -> None:
    bad_cursor = httpx.get(
        f"{api.base_url}/v1/users/u/inbox", params={"cursor": "zzz"}, headers=api.headers, timeout=5
    )
    assert bad_cursor.status_code == 400 and bad_cursor.json()["error"] == "bad_cursor"
    too_many = httpx.get(
        f"{api.base_url}/v1/users/u/inbox", params={"limit": 1000}, headers=api.headers, timeout=5
    )
    assert too_many.status_code == 422 and too_many.json()["error"] == "invalid_request"
    missing = httpx.post(f"{api.base_url}/v1/users/u/inbox/nope/read", headers=api.headers, timeout=5)
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"


def test_framework_errors_are_json_too(api: Api) -> None:
    wrong_method = httpx.delete(f"{api.base_url}/v1/events", headers=api.headers, timeout=5)
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"] == "method_not_allowed"
    unknown = httpx.get(f"{api.base_url}/v1/nothing-here", timeout=5)
    assert unknown.status_code == 404 and unknown.json()["error"] == "not_found"
    too_large = httpx.post(
        f"{api.base_url}/v1/events",
        content=b"[" + b" " * (6 * 1024 * 1024) + b"]",
        headers={**api.headers, "content-type": "application/json"},
        timeout=10,
    )
    assert too_large.status_code == 413 and too_large.json()["error"] == "too_large"


def test_health_metrics_and_openapi(api: Api) -> None:
    assert httpx.get(f"{api.base_url}/healthz", timeout=5).json() == {"status": "ok"}
    ready = httpx.get(f"{api.base_url}/readyz", timeout=5)
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    assert {(c["dependency"], c["status"]) for c in ready.json()["checks"]} == {
        ("kafka", "ok"),
        ("database", "ok"),
    }
    metrics = httpx.get(f"{api.base_url}/metrics", timeout=5).text
    assert "reach_api_request_seconds_bucket" in metrics
    paths = httpx.get(f"{api.base_url}/openapi.json", timeout=5).json()["paths"]
    assert {
        "/v1/events",
        "/v1/users/{user_id}/inbox",
        "/v1/users/{user_id}/inbox/{message_id}/read",
        "/healthz",
        "/readyz",
    } <= set(paths)


def api_event(event_id: str, **properties: Any) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "user_id": "limits-user",
        "name": "test_limits",
        "ts": 1764291600000,
        "properties": properties,
    }


def kafka_record_size(body: dict[str, Any]) -> int:
    """The record the API produces for ``body``: the event as the API re-serializes it."""
    return record_size(body["user_id"].encode(), orjson.dumps(event_from_dict(body).as_dict()))


def event_of_record_size(event_id: str, size: int) -> tuple[dict[str, Any], int]:
    """An event whose Kafka record is ``size`` bytes, or a byte or two under where a varint
    length grows past it; returns the event and its exact record size."""
    body = api_event(event_id, pad="")
    pad = size - kafka_record_size(body)
    for length in range(pad, pad - 8, -1):
        body["properties"]["pad"] = "x" * length
        if (actual := kafka_record_size(body)) <= size:
            return body, actual
    raise AssertionError("no padding reaches the size")


def test_an_event_over_the_kafka_record_limit_is_413_naming_the_limit(api: Api) -> None:
    limit = Settings().kafka_max_message_bytes  # the shared API runs with the default
    at_limit, at_size = event_of_record_size("big-at-limit", limit)
    assert limit - 2 <= at_size <= limit
    assert post_events(api, at_limit).status_code == 202  # producer and broker take what the check allows
    over, over_size = event_of_record_size("big-over", limit + 1)
    assert over_size == limit + 1
    for body in (over, [at_limit, over], api_event("big-3mb", pad="x" * 3_000_000)):
        response = post_events(api, body)
        assert response.status_code == 413, response.text
        error = response.json()
        assert error["error"] == "event_too_large" and f"{limit} bytes" in error["message"]
        assert [d["limit"] for d in error["details"]] == [limit]
    assert post_events(api, [at_limit, over]).json()["details"][0]["index"] == 1


def deep_event_json(event_id: str, depth: int) -> bytes:
    """An event whose ``properties.p`` holds ``depth`` nested arrays, written as text
    (orjson will not serialize past ~250 levels)."""
    head = orjson.dumps(api_event(event_id, p=0))[: -len(b"0}}")]
    return head + b"[" * depth + b"]" * depth + b"}}"


def post_raw(api: Api | ApiProcess, content: bytes) -> httpx.Response:
    return httpx.post(
        f"{api.base_url}/v1/events",
        content=content,
        headers={**api.headers, "content-type": "application/json"},
        timeout=10,
    )


def test_events_nesting_too_deep_are_refused_with_a_reason(api: Api) -> None:
    # The event object is level 1 and properties level 2.
    assert post_raw(api, deep_event_json("deep-ok", DEFAULT_MAX_DEPTH - 2)).status_code == 202
    for depth in (DEFAULT_MAX_DEPTH - 1, 500):
        batch = b"[" + orjson.dumps(api_event("fine")) + b"," + deep_event_json("deep", depth) + b"]"
        response = post_raw(api, batch)
        assert response.status_code == 422, response.text
        assert response.json()["error"] == "invalid_events"
        assert [(d["index"], d["reason"]) for d in response.json()["details"]] == [(1, "too_deep")]
    # Past the JSON decoder's own limit the body cannot be parsed at all: a 400, not a reset.
    deepest = post_raw(api, deep_event_json("deepest", 1100))
    assert deepest.status_code == 400 and deepest.json()["error"] == "too_deep"


def own_settings(pipeline: Pipeline, **overrides: Any) -> Settings:
    """The shared pipeline's database, with topics no worker reads, and ``overrides``."""
    return pipeline.settings.model_copy(update={"topic_prefix": f"{unique_run_id()}.", **overrides})


@pytest.fixture
def kafka_proxy(pipeline: Pipeline) -> Iterator[KafkaProxy]:
    with KafkaProxy(int(pipeline.settings.kafka_bootstrap.rsplit(":", 1)[1])) as proxy:
        yield proxy


def readyz(api: ApiProcess) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = httpx.get(f"{api.base_url}/readyz", timeout=10)
    return response, time.monotonic() - started


def statuses(response: httpx.Response) -> dict[str, str]:
    checks = response.json()["details" if response.status_code == 503 else "checks"]
    return {c["dependency"]: c.get("error", c["status"]) for c in checks}


def test_a_broker_that_stops_answering_gets_503_with_retry_after_within_the_request_timeout(
    pipeline: Pipeline, kafka_proxy: KafkaProxy, tmp_path: Path
) -> None:
    settings = own_settings(
        pipeline,
        kafka_bootstrap=f"127.0.0.1:{kafka_proxy.port}",
        kafka_request_timeout=2.0,
        kafka_connect_timeout=3.0,
    )
    api = ApiProcess(settings, tmp_path / "api.log").with_key().start().wait_serving()
    try:
        assert post_events(api, api_event("proxied-1")).status_code == 202  # all traffic via the proxy
        assert statuses(readyz(api)[0]) == {"kafka": "ok", "database": "ok"}
        kafka_proxy.go_silent()
        started = time.monotonic()
        response = post_events(api, [api_event("proxied-2"), api_event("proxied-3")])
        elapsed = time.monotonic() - started
        assert response.status_code == 503, response.text
        assert response.headers["Retry-After"] == str(RETRY_AFTER_SECONDS)
        assert response.json()["error"] == "unavailable" and "2.0s" in response.json()["message"]
        assert elapsed < settings.kafka_request_timeout + 2, elapsed
        ready, ready_seconds = readyz(api)
        assert ready.status_code == 503 and ready.headers["Retry-After"] == str(RETRY_AFTER_SECONDS)
        assert statuses(ready) == {"kafka": "TimeoutError", "database": "ok"}
        assert ready_seconds < READY_TIMEOUT_S + 2
        assert httpx.get(f"{api.base_url}/healthz", timeout=5).status_code == 200  # still alive
    finally:
        api.stop()  # shutdown is bounded too: the producer gives up on unacknowledged records


def test_readyz_is_503_when_the_database_hangs_and_healthz_stays_200(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    with TcpProxy(pipeline.settings.mysql_port) as db_proxy:
        api = ApiProcess(own_settings(pipeline, mysql_port=db_proxy.port), tmp_path / "api.log")
        api.start().wait_serving()
        try:
            assert statuses(readyz(api)[0]) == {"kafka": "ok", "database": "ok"}
            db_proxy.go_silent()
            ready, seconds = readyz(api)
            assert ready.status_code == 503 and ready.json()["error"] == "not_ready"
            assert statuses(ready) == {"kafka": "ok", "database": "TimeoutError"}
            assert "database" in ready.json()["message"] and seconds < READY_TIMEOUT_S + 2
            assert httpx.get(f"{api.base_url}/healthz", timeout=5).status_code == 200
        finally:
            api.stop()


@pytest.mark.parametrize("broker", ["silent", "closed"])
def test_start_up_fails_within_the_connect_timeout_naming_kafka(
    pipeline: Pipeline, tmp_path: Path, broker: str
) -> None:
    with silent_listener() as silent_port:
        port = silent_port if broker == "silent" else closed_port()
        # A request timeout far above the connect timeout: the start-up bound must be the latter.
        settings = own_settings(
            pipeline,
            kafka_bootstrap=f"127.0.0.1:{port}",
            kafka_connect_timeout=2.0,
            kafka_request_timeout=60.0,
        )
        api = ApiProcess(settings, tmp_path / "api.log").start()
        assert api.proc is not None
        try:
            # Interpreter start-up and imports take a few seconds; aiokafka alone waited ~40 s.
            assert api.proc.wait(timeout=20) != 0
        finally:
            api.stop()
    assert f"Kafka at 127.0.0.1:{port} did not answer within 2.0s" in api.log()


def test_apps_below_the_minimum_version_get_426_and_at_it_200(pipeline: Pipeline, tmp_path: Path) -> None:
    settings = own_settings(
        pipeline, min_app_versions="ios=1.9.0", upgrade_urls="ios=https://apps.example/reach"
    )
    api = ApiProcess(settings, tmp_path / "api.log").with_key("inbox:read").start().wait_serving()
    try:
        url = f"{api.base_url}/v1/users/upgrade-user/inbox"

        def get(version: str | None) -> httpx.Response:
            headers = {"X-App-Platform": "ios", **({"X-App-Version": version} if version else {})}
            return httpx.get(url, headers={**api.headers, **headers}, timeout=5)

        old = get("1.8.2")
        assert old.status_code == 426
        assert old.json()["error"] == "upgrade_required"
        assert old.json()["details"] == {
            "platform": "ios",
            "version": "1.8.2",
            "minimum_version": "1.9.0",
            "upgrade_url": "https://apps.example/reach",
        }
        assert get("1.9.0").status_code == 200
        assert get("1.10.0").status_code == 200
        assert get(None).status_code == 200  # a backend, or the web: not an app
        assert get("latest").status_code == 400
        popups = httpx.get(
            f"{api.base_url}/v1/users/upgrade-user/popups",
            headers={"X-App-Platform": "ios", "X-App-Version": "1.0"},
            timeout=5,
        )
        assert popups.status_code == 426  # before the credential: an old app is told to upgrade first
    finally:
        api.stop()
