"""Worker readiness: what makes /readyz say no."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Counter

from streams.health import LOOP_STALL_SECONDS, WorkerHealth, health_app

NOW = 1000.0


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
    assert call(app, "/healthz")[0] == "200 OK"
    status, body = call(app, "/readyz")
    assert status.startswith("503")
    assert "no partitions assigned" in orjson.loads(body)["problems"]
    health.tick(4, 0, None)
    status, body = call(app, "/readyz")
    assert status == "200 OK"
    assert orjson.loads(body)["partitions"] == 4
    assert b"reach_probe_total 1.0" in call(app, "/metrics")[1]
