"""Request metrics as plain ASGI middleware, and the ``/metrics`` exposition.

Plain ASGI, not ``@app.middleware("http")``: Starlette's BaseHTTPMiddleware runs every
request through extra anyio tasks and memory streams; this wraps ``send`` to see the
status and observes one histogram child, cached per (method, route, status).

With several API processes, prometheus_client's multiprocess mode keeps each process's
values in files under one directory (``PROMETHEUS_MULTIPROC_DIR``, which ``reach api``
creates per run and removes at exit); ``/metrics`` then reads and sums them all, so any
worker answers for every worker.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from reach.metrics import ApiMetrics, add_standard_collectors


class RequestMetrics:
    """Observe ``reach_api_request_seconds{method, route, status}`` for every HTTP request.

    ``route`` is the matched route's path template (``unmatched`` when none matched), so user
    ids never become labels. A request that raises is counted as ``500``.
    """

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.histogram = metrics.requests
        self.children: dict[tuple[str, str, int], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_seeing_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_seeing_status)
        finally:
            self.child(scope["method"], scope, status).observe(time.perf_counter() - started)

    def child(self, method: str, scope: Scope, status: int) -> Any:
        key = (method, getattr(scope.get("route"), "path", "unmatched"), status)
        child = self.children.get(key)
        if child is None:
            child = self.children[key] = self.histogram.labels(key[0], key[1], str(status))
        return child


def exposition(registry: CollectorRegistry, multiprocess_dir: Path | None) -> bytes:
    """The text format of ``registry``, or, in multiprocess mode, of every process's files."""
    if multiprocess_dir is None:
        return bytes(generate_latest(registry))
    merged = CollectorRegistry()
    MultiProcessCollector(merged, path=str(multiprocess_dir))
    # process_* and python_* of the process that answers this scrape: each scrape may reach
    # another worker (the per-process values cannot be summed meaningfully).
    add_standard_collectors(merged)
    return bytes(generate_latest(merged))


METRICS_MEDIA_TYPE = CONTENT_TYPE_LATEST
