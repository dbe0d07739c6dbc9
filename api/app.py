"""The HTTP API: accept events, serve the inbox, liveness, readiness and metrics.

Runs in its own process (``reach api``); it never talks to the worker, only
to Kafka (events in) and MariaDB (inbox out).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import structlog
from fastapi import FastAPI, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from api import health, popups, receipts
from api.errors import RETRY_LATER, ApiError
from api.event_producer import EventProducer
from api.receipts import read_limited
from api.schemas import EVENT_REQUEST_SCHEMA, InboxMessage, InboxPage
from models.events import DEFAULT_MAX_DEPTH, Event, EventError, event_from_dict, is_depth_error
from models.storage import CursorError, InboxStore, create_pool
from reach.clock import Clock, SystemClock
from reach.errors import DEPENDENCY_ERRORS
from reach.metrics import ApiMetrics
from reach.settings import Settings

log = structlog.get_logger("reach.api")

MAX_EVENTS_PER_REQUEST = 1000
HTTP_ERROR_CODES = {404: "not_found", 405: "method_not_allowed", 413: "too_large", 503: "unavailable"}
MAX_BODY_BYTES = 5 * 1024 * 1024
USER_ID = Path(min_length=1, max_length=128)


def create_app(settings: Settings, clock: Clock | None = None) -> FastAPI:
    clock = clock or SystemClock()
    registry = CollectorRegistry()
    metrics = ApiMetrics(registry)
    state: dict[str, Any] = {}

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # Each resource is released if a later one fails to start (Kafka unreachable, say),
        # so a failed start-up ends with the error that caused it and nothing left open.
        async with contextlib.AsyncExitStack() as resources:
            state["pool"] = pool = await create_pool(settings)
            resources.push_async_callback(close_pool, pool)
            state["inbox"] = InboxStore(pool)
            state["producer"] = producer = await EventProducer.connect(settings)
            resources.push_async_callback(producer.stop)
            await state["receipts"].open(pool)
            resources.push_async_callback(state["receipts"].close)
            yield

    app = FastAPI(
        title="reach",
        version="0.1.0",
        description="CRM user reach: behaviour events in, messages out.",
        lifespan=lifespan,
    )

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError) -> JSONResponse:
        body: dict[str, Any] = {"error": exc.code, "message": exc.message}
        if exc.details is not None:
            body["details"] = exc.details
        return JSONResponse(body, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
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

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = HTTP_ERROR_CODES.get(exc.status_code, f"http_{exc.status_code}")
        return JSONResponse(
            {"error": code, "message": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, DEPENDENCY_ERRORS):
            log.warning("api.dependency_unavailable", path=request.url.path, error=type(exc).__name__)
            message = f"a dependency is unavailable ({type(exc).__name__}); retry later"
            return JSONResponse(
                {"error": "unavailable", "message": message}, status_code=503, headers=RETRY_LATER
            )
        log.exception("api.unexpected_error", path=request.url.path)
        return JSONResponse({"error": "internal", "message": "internal error"}, status_code=500)

    @app.middleware("http")
    async def observe(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        template = getattr(route, "path", "unmatched")
        metrics.requests.labels(request.method, template, str(response.status_code)).observe(
            time.perf_counter() - started
        )
        return response

    @app.post(
        "/v1/events",
        status_code=202,
        summary="Accept one behaviour event or a batch of up to 1000",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": EVENT_REQUEST_SCHEMA}},
            }
        },
        responses={
            202: {"description": "Accepted: the events are on the events topic"},
            400: {"description": "The body is not JSON, or nests too deep to parse"},
            413: {"description": "The body, the batch or one event's Kafka record is too large"},
            422: {"description": "Invalid events; none was accepted"},
            503: {"description": "Kafka did not acknowledge in time; retry after Retry-After seconds"},
        },
    )
    async def post_events(request: Request) -> dict[str, int]:
        events = parse_events(await read_body(request), settings.event_max_depth)
        producer: EventProducer = state["producer"]
        records = [(e.user_id.encode(), orjson.dumps(e.as_dict())) for e in events]
        producer.check_sizes(records)
        await producer.send_all(settings.events_topic, records)
        metrics.events_accepted.inc(len(events))
        return {"accepted": len(events)}

    @app.get(
        "/v1/users/{user_id}/inbox", response_model=InboxPage, summary="A user's site messages, newest first"
    )
    async def get_inbox(
        user_id: str = USER_ID,
        limit: int = Query(20, ge=1, le=100),
        cursor: str | None = Query(None, description="next_cursor of the previous page"),
    ) -> dict[str, Any]:
        inbox: InboxStore = state["inbox"]
        try:
            items, next_cursor = await inbox.page(user_id, limit, cursor)
        except CursorError as exc:
            raise ApiError(400, "bad_cursor", str(exc)) from None
        unread = await inbox.unread_count(user_id)
        return {
            "items": [InboxMessage.from_item(i).model_dump() for i in items],
            "unread": unread,
            "next_cursor": next_cursor,
        }

    @app.post(
        "/v1/users/{user_id}/inbox/{message_id}/read", status_code=204, summary="Mark a site message read"
    )
    async def mark_read(
        user_id: str = USER_ID, message_id: str = Path(min_length=1, max_length=64)
    ) -> Response:
        if not await state["inbox"].mark_read(user_id, message_id, clock.now_ms()):
            raise ApiError(404, "not_found", f"user {user_id!r} has no message {message_id!r}")
        return Response(status_code=204)

    popups.register(app, state, clock)
    receipts.register(app, state, settings, clock, metrics)

    health.register(app, state)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app


async def close_pool(pool: Any) -> None:
    pool.close()
    await pool.wait_closed()


async def read_body(request: Request) -> Any:
    """The decoded JSON body; ``413`` over :data:`MAX_BODY_BYTES`, ``400`` when not JSON or
    nesting past the decoder's own depth limit (1024; events are held to far less)."""
    body = await read_limited(request, MAX_BODY_BYTES)
    if body is None:
        raise ApiError(413, "too_large", f"request body is over {MAX_BODY_BYTES} bytes")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if is_depth_error(exc):
            raise ApiError(400, "too_deep", f"request body nests too deep to parse: {exc}") from None
        raise ApiError(400, "invalid_json", f"request body is not JSON: {exc}") from None


def parse_events(data: Any, max_depth: int = DEFAULT_MAX_DEPTH) -> list[Event]:
    """One event object or a list of them; every error is reported, none is accepted.

    Each event is held to ``max_depth`` levels of nesting, counted from the event object.
    """
    items = data if isinstance(data, list) else [data]
    if not items:
        raise ApiError(422, "no_events", "the batch is empty")
    if len(items) > MAX_EVENTS_PER_REQUEST:
        raise ApiError(413, "too_many_events", f"at most {MAX_EVENTS_PER_REQUEST} events per request")
    events, errors = [], []
    for index, item in enumerate(items):
        try:
            events.append(event_from_dict(item, max_depth))
        except EventError as exc:
            errors.append({"index": index, "reason": exc.reason, "message": exc.detail})
    if errors:
        raise ApiError(422, "invalid_events", f"{len(errors)} of {len(items)} events are invalid", errors)
    return events
