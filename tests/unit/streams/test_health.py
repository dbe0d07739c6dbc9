"""Worker readiness: what makes /readyz say no."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry, Counter

from streams.health import LOOP_STALL_SECONDS, WorkerHealth, health_app, serve

NOW = 1000.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ticked(partitions: int = 2, uncommitted: int = 0, committed_at: float | None = None) -> WorkerHealth:
    health = WorkerHealth(commit_age_limit=60, started_at=NOW - 500)
    health.tick(partitions, uncommitted, committed_at)
    health.ticked_at = NOW - 1
    return health


def test_ready_when_assigned_responsive_and_committing() -> None:
    assert ticked(uncommitted=40, committed_at=NOW - 59).problems(NOW) == []


def test_not_ready_without_partitions() -> None:
    assert ticked(partitions=0).problems(NOW) == ["no partitions assigned"]


def test_not_ready_when_the_loop_stopped_ticking() -> None:
    health = ticked()
    health.ticked_at = NOW - LOOP_STALL_SECONDS - 0.5
    assert health.problems(NOW) == [f"event loop unresponsive for {LOOP_STALL_SECONDS + 0.5:.1f}s"]
    health.ticked_at = NOW - LOOP_STALL_SECONDS
    assert health.problems(NOW) == []


def test_not_ready_when_lagging_without_commits() -> None:
    assert ticked(uncommitted=5, committed_at=NOW - 61).problems(NOW) == [
        "5 messages uncommitted and no commit for 61s"
    ]
    assert ticked(uncommitted=0, committed_at=NOW - 6000).problems(NOW) == []  # idle is fine


def test_never_committed_counts_from_start() -> None:
    health = ticked(uncommitted=3)
    assert health.problems(NOW) == ["3 messages uncommitted and no commit for 500s"]
    health.started_at = NOW - 10
    assert health.problems(NOW) == []


def call(app: Any, path: str) -> tuple[str, bytes]:
    seen: dict[str, str] = {}

    def start_response(status: str, _headers: Iterable[tuple[str, str]]) -> None:
        seen["status"] = status

    body = b"".join(app({"PATH_INFO": path, "REQUEST_METHOD": "GET", "QUERY_STRING": ""}, start_response))
    return seen["status"], body


def test_endpoints() -> None:
    registry = CollectorRegistry()
    Counter("reach_probe_total", "a probe", registry=registry).inc()
    health = WorkerHealth(commit_age_limit=60)
    app = health_app(registry, health)
    assert call(app, "/healthz") == ("200 OK", b'{"status":"ok"}')
    status, body = call(app, "/readyz")
    assert status.startswith("503")
    assert "no partitions assigned" in orjson.loads(body)["problems"]
    health.tick(4, 0, None)
    status, body = call(app, "/readyz")
    assert status == "200 OK"
    assert orjson.loads(body)["partitions"] == 4
    assert b"reach_probe_total 1.0" in call(app, "/metrics")[1]


def test_the_commit_age_limit_itself_is_still_ready() -> None:
    assert ticked(uncommitted=1, committed_at=NOW - 60).problems(NOW) == []


def test_a_worker_that_never_ticked_is_not_ready() -> None:
    health = WorkerHealth(commit_age_limit=60)
    assert any(p.startswith("event loop unresponsive") for p in health.problems(time.monotonic()))
    assert health.uncommitted == 0 and health.committed_at is None


def test_report_carries_the_figures() -> None:
    assert ticked(partitions=3, uncommitted=7, committed_at=NOW - 12.34).report(NOW) == {
        "ready": True,
        "problems": [],
        "partitions": 3,
        "uncommitted": 7,
        "last_commit_age_seconds": 12.3,
    }
    assert ticked().report(NOW)["last_commit_age_seconds"] is None


def test_served_over_http_beside_the_metrics() -> None:
    registry = CollectorRegistry()
    health = WorkerHealth(commit_age_limit=60)
    health.tick(2, 0, None)
    port = free_port()
    serve(port, registry, health)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as reply:
        assert reply.status == 200
        assert reply.headers["Content-Type"] == "application/json"
        assert orjson.loads(reply.read()) == {"status": "ok"}
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as reply:
        assert orjson.loads(reply.read())["ready"] is True
    health.tick(0, 0, None)
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5)
    assert refused.value.code == 503
    assert refused.value.reason == "Service Unavailable"
