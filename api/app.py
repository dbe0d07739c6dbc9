"""The HTTP API: accept events, serve the inbox, liveness, readiness and metrics.

Runs in its own processes (``reach api``, see :mod:`api.serve`); it never talks to the
worker, only to Kafka (events in) and MariaDB (inbox out). This module is wiring: one
router per module, the error handlers, the metrics middleware and the lifespan that
builds :class:`~api.resources.Resources`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
import structlog
from fastapi import Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from prometheus_client import CollectorRegistry
from starlette.exceptions import HTTPException as StarletteHTTPException

from api import events, health, inbound, inbox, popups, preferences, rate_limit, receipts, tasks, tracking
from api.auth import Access, KeyCache
from api.errors import RETRY_LATER, ApiError
from api.event_producer import EventProducer
from api.observe import METRICS_MEDIA_TYPE, RequestMetrics, exposition
from api.receipts import ReceiptService
from api.resources import Resources
from api.tracker import Tracker
from api.upgrade import UPGRADE_RESPONSES, UpgradePolicy
from api.user_tokens import UserTokens, user_tokens
from models.access import KeyStore
from models.phones import PhoneHasher, PhoneIndex
from models.popups import PopupStore
from models.preferences import PreferenceCache, Preferences, PreferenceStore
from models.storage import InboxStore, create_pool
from models.taskruns import AudienceLists
from models.taskstore import TaskStore
from models.tracking_links import LinkSigner
from reach.clock import Clock, SystemClock
from reach.errors import DEPENDENCY_ERRORS
from reach.metrics import ApiMetrics
from reach.settings import Settings

log = structlog.get_logger("reach.api")

HTTP_ERROR_CODES = {
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    503: "unavailable",
}


def create_app(
    settings: Settings, clock: Clock | None = None, multiprocess_dir: Path | None = None
) -> FastAPI:
    """The API app. ``multiprocess_dir`` is prometheus_client's ``PROMETHEUS_MULTIPROC_DIR``
    when several processes serve it: ``/metrics`` then sums every process's values."""
    clock = clock or SystemClock()
    registry = CollectorRegistry()
    metrics = ApiMetrics(registry)
    receipt_service = receipts.service_from(settings, metrics, clock)
    tokens = user_tokens(settings)  # a bad key file fails here, before serving
    # Swagger UI and ReDoc from the fastapi-offline package's own files: /docs works with no
    # internet (FastAPI's default page loads them from a CDN).
    app = FastAPIOffline(
        title="reach",
        version=API_VERSION,
        description=DESCRIPTION,
        lifespan=lambda app: lifespan(app, settings, receipt_service, Built(clock, metrics, tokens)),
    )
    add_error_handlers(app)
    add_cors(app, settings)
    app.add_middleware(RequestMetrics, metrics=metrics)
    app.include_router(events.router(settings, metrics))
    # App-facing routes answer 426 to apps below their platform's minimum version.
    upgrade = UpgradePolicy.from_settings(settings)
    app.include_router(inbox.router(clock), dependencies=[Depends(upgrade.gate)], responses=UPGRADE_RESPONSES)
    app.include_router(
        popups.router(clock), dependencies=[Depends(upgrade.gate)], responses=UPGRADE_RESPONSES
    )
    app.include_router(
        tracking.app_router(), dependencies=[Depends(upgrade.gate)], responses=UPGRADE_RESPONSES
    )
    app.include_router(tracking.links_router(LinkSigner.from_settings(settings), metrics))
    app.include_router(receipts.router(receipt_service, clock, metrics))
    app.include_router(inbound.router(receipt_service.endpoints, clock, metrics))
    app.include_router(tasks.router(tasks.checks_from(settings), clock))
    app.include_router(health.router())
    app.include_router(
        preferences.router(settings, clock), dependencies=[Depends(upgrade.gate)], responses=UPGRADE_RESPONSES
    )

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        return Response(exposition(registry, multiprocess_dir), media_type=METRICS_MEDIA_TYPE)

    return app


# The OpenAPI document's version: a release keeps its document in api/openapi/ (see api.compat).
API_VERSION = "0.2.0"
POOL_CLOSE_TIMEOUT_S = 5.0
DESCRIPTION = (
    "CRM user reach: behaviour events in, messages out. Every /v1 route but the receipts, the "
    "inbound messages, the unsubscribe links and the tracking pixel and links (their signed token "
    "is the credential) takes "
    "Authorization: Bearer <credential>: an API key (rk_..., made with `reach keys create`) with "
    "the route's scope, or, for a user's inbox, pop-ups and preferences, that user's JWT (sub = user id)."
)


@dataclasses.dataclass(frozen=True, slots=True)
class Built:
    """What ``create_app`` built that the lifespan's resources need."""

    clock: Clock
    metrics: ApiMetrics
    tokens: UserTokens


def add_cors(app: FastAPI, settings: Settings) -> None:
    """CORS only for the configured origins; none by default, so browsers on other sites
    cannot read answers or send JSON (which needs a preflight)."""
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "PUT"],
            allow_headers=["Authorization", "Content-Type"],
            max_age=600,
        )


async def open_access(
    stack: contextlib.AsyncExitStack, settings: Settings, pool: Any, built: Built
) -> Access:
    redis = rate_limit.connect(settings)
    stack.push_async_callback(redis.aclose)
    ms = 1000
    keys = KeyCache(
        KeyStore(pool), built.clock, int(settings.api_key_cache_seconds * ms),
        int(settings.api_key_max_stale_seconds * ms),
    )  # fmt: skip
    limiter = rate_limit.RateLimiter(redis, settings, built.clock, built.metrics)
    return Access(keys, built.tokens, limiter, settings, built.metrics)


@contextlib.asynccontextmanager
async def lifespan(
    app: FastAPI, settings: Settings, receipt_service: ReceiptService, built: Built
) -> AsyncIterator[None]:
    # Each resource is released if a later one fails to start (Kafka unreachable, say),
    # so a failed start-up ends with the error that caused it and nothing left open.
    async with contextlib.AsyncExitStack() as stack:
        pool = await create_pool(settings)
        stack.push_async_callback(close_pool, pool)
        producer = await EventProducer.connect(settings)
        stack.push_async_callback(producer.stop)
        tracker = Tracker(producer, settings.tracking_topic, built.metrics, built.clock)
        stack.push_async_callback(tracker.close)  # before the producer stops
        await receipt_service.open(pool, tracker)
        stack.push_async_callback(receipt_service.close)
        redis = open_redis(settings)
        stack.push_async_callback(redis.aclose)
        prefs = Preferences(
            PreferenceStore(pool),
            PreferenceCache(redis, settings.redis_prefix, settings.preferences_cache_ttl),
        )
        access = await open_access(stack, settings, pool, built)
        phones = PhoneIndex(pool, PhoneHasher.from_settings(settings))
        app.state.resources = Resources(
            pool, InboxStore(pool), PopupStore(pool), producer, TaskStore(pool), AudienceLists(pool), prefs,
            access, phones, tracker,
        )  # fmt: skip
        yield


def add_error_handlers(app: FastAPI) -> None:
    """Every error answer is ``{"error", "message", "details"?}``."""
    app.add_exception_handler(ApiError, api_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, invalid_request)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, unexpected)


async def api_error(_request: Request, exc: ApiError) -> JSONResponse:
    body: dict[str, Any] = {"error": exc.code, "message": exc.message}
    if exc.details is not None:
        body["details"] = exc.details
    return JSONResponse(body, status_code=exc.status, headers=exc.headers)


async def invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
    details = [{"where": ".".join(map(str, e["loc"])), "message": e["msg"]} for e in exc.errors()]
    return JSONResponse(
        {
            "error": "invalid_request",
            "message": "; ".join(f"{d['where']}: {d['message']}" for d in details),
            "details": details,
        },
        status_code=422,
    )


async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = HTTP_ERROR_CODES.get(exc.status_code, f"http_{exc.status_code}")
    return JSONResponse(
        {"error": code, "message": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers
    )


async def unexpected(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, DEPENDENCY_ERRORS):
        log.warning("api.dependency_unavailable", path=request.url.path, error=type(exc).__name__)
        message = f"a dependency is unavailable ({type(exc).__name__}); retry later"
        return JSONResponse(
            {"error": "unavailable", "message": message}, status_code=503, headers=RETRY_LATER
        )
    log.exception("api.unexpected_error", path=request.url.path)
    return JSONResponse({"error": "internal", "message": "internal error"}, status_code=500)


def open_redis(settings: Settings) -> Any:
    """The preferences' Redis copy (written through on every change)."""
    return aioredis.from_url(
        settings.redis_url.get_secret_value(), socket_timeout=10, socket_connect_timeout=5
    )


async def close_pool(pool: Any) -> None:
    """Close the pool; connections still held after ``POOL_CLOSE_TIMEOUT_S`` (a query that a
    hung database never answers) are dropped, so a stopping API never waits on MariaDB."""
    pool.close()
    try:
        async with asyncio.timeout(POOL_CLOSE_TIMEOUT_S):
            await pool.wait_closed()
    except TimeoutError:
        log.warning("api.pool_close_timeout", seconds=POOL_CLOSE_TIMEOUT_S)
        pool.terminate()
