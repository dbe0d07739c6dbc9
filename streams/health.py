"""The worker's health endpoints, beside ``/metrics`` on ``REACH_WORKER_METRICS_PORT``.

``/healthz`` is liveness: the process answers. ``/readyz`` is readiness, 200
only while the worker does its job:

- it has stream partitions assigned (a worker left out of the group, or still
  joining, is not ready);
- its event loop is responsive (the health timer ticked within
  ``LOOP_STALL_SECONDS``; a loop blocked by a long computation is not);
- where messages wait uncommitted, it has committed within
  ``worker_ready_commit_age`` seconds (commits that stopped advancing while
  there is lag are faust's known stall, #596).

The state is written by a timer on the worker's loop and read by the HTTP
thread; each field is one atomic assignment.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import orjson
from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

LOOP_STALL_SECONDS = 10.0


@dataclasses.dataclass
class WorkerHealth:
    """What the last health tick saw; ``monotonic`` times."""

    commit_age_limit: float
    started_at: float = dataclasses.field(default_factory=time.monotonic)
    ticked_at: float = 0.0
    partitions: int = 0
    uncommitted: int = 0  # messages fetched-or-available above the committed offsets
    committed_at: float | None = None  # the last commit that moved an offset

    def tick(self, partitions: int, uncommitted: int, committed_at: float | None) -> None:
        self.partitions, self.uncommitted, self.committed_at = partitions, uncommitted, committed_at
        self.ticked_at = time.monotonic()

    def problems(self, now: float) -> list[str]:
        """Why the worker is not ready; empty when it is."""
        found = []
        if now - self.ticked_at > LOOP_STALL_SECONDS:
            found.append(f"event loop unresponsive for {now - self.ticked_at:.1f}s")
        if self.partitions == 0:
            found.append("no partitions assigned")
        since = self.committed_at if self.committed_at is not None else self.started_at
        if self.uncommitted and now - since > self.commit_age_limit:
            found.append(f"{self.uncommitted} messages uncommitted and no commit for {now - since:.0f}s")
        return found

    def report(self, now: float) -> dict[str, Any]:
        return {
            "ready": not self.problems(now),
            "problems": self.problems(now),
            "partitions": self.partitions,
            "uncommitted": self.uncommitted,
            "last_commit_age_seconds": self._commit_age(now),
        }

    def _commit_age(self, now: float) -> float | None:
        return None if self.committed_at is None else round(now - self.committed_at, 1)


def health_app(registry: CollectorRegistry, health: WorkerHealth) -> Callable[..., Iterable[bytes]]:
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/healthz":
            return _json(start_response, 200, {"status": "ok"})
        if path == "/readyz":
            report = health.report(time.monotonic())
            return _json(start_response, 200 if report["ready"] else 503, report)
        return metrics(environ, start_response)

    return app


def _json(start_response: Callable[..., Any], status: int, body: dict[str, Any]) -> list[bytes]:
    reason = "OK" if status == 200 else "Service Unavailable"
    start_response(f"{status} {reason}", [("Content-Type", "application/json")])
    return [orjson.dumps(body)]


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Probes every few seconds are not worth a log line."""


def serve(port: int, registry: CollectorRegistry, health: WorkerHealth, addr: str = "127.0.0.1") -> None:
    """Serve /metrics, /healthz and /readyz on a daemon thread."""
    server = make_server(addr, port, health_app(registry, health), ThreadingWSGIServer, QuietHandler)
    threading.Thread(target=server.serve_forever, name="reach-health", daemon=True).start()
