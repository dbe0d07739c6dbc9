"""Liveness and readiness of the API.

``/healthz`` answers while the process serves requests and checks nothing else,
so a dependency outage never gets a healthy API restarted. ``/readyz`` asks
Kafka (a metadata request) and MariaDB (``SELECT 1``), each within
:data:`READY_TIMEOUT_S`, and is ``503`` unless both answer, so a load balancer
stops sending traffic to an API that could only answer ``503``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api.errors import RETRY_LATER
from api.event_producer import EventProducer
from api.resources import AppResources

# Probes typically give up after 1-3 s; answering within that keeps the answer meaningful.
READY_TIMEOUT_S = 2.0


async def ping_database(pool: Any) -> None:
    """Run ``SELECT 1`` on a pooled connection; raise when MariaDB does not answer."""
    async with pool.acquire() as conn:
        try:
            async with conn.cursor() as cur:
                await cur.execute("SELECT 1")
        except BaseException:
            # A query cut short (timeout, lost connection) leaves its answer unread on the
            # connection: the pool must never hand that connection out again.
            conn.close()
            raise


async def check(name: str, ping: Callable[[], Awaitable[None]], within_s: float) -> dict[str, Any]:
    """``{"dependency", "status": "ok" | "unavailable", "seconds", "error"?}`` of one ping."""
    started = time.perf_counter()
    result: dict[str, Any] = {"dependency": name, "status": "ok"}
    try:
        async with asyncio.timeout(within_s):
            await ping()
    except Exception as exc:  # any failure means "not ready"; the type says which
        result.update(status="unavailable", error=type(exc).__name__)
    result["seconds"] = round(time.perf_counter() - started, 3)
    return result


async def readiness(producer: EventProducer, pool: Any, within_s: float) -> list[dict[str, Any]]:
    """Both checks, run concurrently, so the answer takes at most ``within_s`` seconds."""
    return list(
        await asyncio.gather(
            check("kafka", producer.ping, within_s),
            check("database", lambda: ping_database(pool), within_s),
        )
    )


def router() -> APIRouter:
    routes = APIRouter()

    @routes.get("/healthz", summary="Liveness: 200 while the process serves requests")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @routes.get(
        "/readyz",
        summary="Readiness: 200 when Kafka and MariaDB both answer, else 503",
        responses={503: {"description": "A dependency did not answer; details names which"}},
    )
    async def readyz(resources: AppResources) -> JSONResponse:
        checks = await readiness(resources.producer, resources.pool, READY_TIMEOUT_S)
        down = [c for c in checks if c["status"] != "ok"]
        if not down:
            return JSONResponse({"status": "ready", "checks": checks})
        names = ", ".join(f"{c['dependency']} ({c['error']})" for c in down)
        body = {"error": "not_ready", "message": f"unavailable: {names}", "details": checks}
        return JSONResponse(body, status_code=503, headers=RETRY_LATER)

    return routes
