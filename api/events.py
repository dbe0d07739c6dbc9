"""``POST /v1/events``: validate, produce to the events topic, answer once Kafka acknowledged.

The hot path does only what the contract needs: one orjson decode, the event checks, one
orjson encode per event straight from its fields (no ``dataclasses.asdict`` deep copy),
the record size check, the produce, and a pre-encoded answer.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request, Response

from api.auth import EventsWriter
from api.errors import ApiError
from api.receipts import read_limited
from api.resources import Producer
from api.schemas import AUTHENTICATED, EVENT_REQUEST_SCHEMA, error_responses
from models.events import (
    DEFAULT_MAX_DEPTH,
    Event,
    EventError,
    event_from_dict,
    is_depth_error,
    refuse_duplicate_keys,
)
from reach.metrics import ApiMetrics
from reach.settings import Settings

MAX_EVENTS_PER_REQUEST = 1000
MAX_BODY_BYTES = 5 * 1024 * 1024


def router(settings: Settings, metrics: ApiMetrics) -> APIRouter:
    topic, max_depth, accepted = settings.events_topic, settings.event_max_depth, metrics.events_accepted
    routes = APIRouter()

    @routes.post(
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
            **error_responses(400, 413, 415, *AUTHENTICATED),
        },
    )
    async def post_events(request: Request, producer: Producer, caller: EventsWriter) -> Response:
        require_json(request)
        events = parse_events(await read_body(request), max_depth)
        refused = caller.refused_events([e.name for e in events])
        if refused:
            message = f"this key may not emit {len(refused)} of the events"
            raise ApiError(403, "event_not_allowed", message, refused)
        records = [(e.user_id.encode(), event_record(e)) for e in events]
        producer.check_sizes(records)
        await producer.send_all(topic, records)
        accepted.inc(len(events))
        return Response(b'{"accepted":%d}' % len(events), status_code=202, media_type="application/json")

    return routes


def event_record(event: Event) -> bytes:
    """The Kafka value of ``event``: the same bytes as ``orjson.dumps(event.as_dict())``."""
    return orjson.dumps(
        {
            "event_id": event.event_id,
            "user_id": event.user_id,
            "name": event.name,
            "ts": event.ts,
            "properties": event.properties,
            "device": event.device,
        }
    )


def require_json(request: Request) -> None:
    """``415`` unless the body is declared ``application/json``: a browser page on another
    site can send ``text/plain`` or a form without a CORS preflight, never JSON."""
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "application/json":
        raise ApiError(415, "unsupported_media_type", "send the body as Content-Type: application/json")


async def read_body(request: Request) -> Any:
    """The decoded JSON body; ``413`` over :data:`MAX_BODY_BYTES`, ``400`` when not JSON or
    nesting past the decoder's own depth limit (1024; events are held to far less)."""
    body = await read_limited(request, MAX_BODY_BYTES)
    if body is None:
        raise ApiError(413, "too_large", f"request body is over {MAX_BODY_BYTES} bytes")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if is_depth_error(exc):
            raise ApiError(400, "too_deep", f"request body nests too deep to parse: {exc}") from None
        raise ApiError(400, "invalid_json", f"request body is not JSON: {exc}") from None
    try:
        refuse_duplicate_keys(body, data)
    except EventError as exc:
        raise ApiError(400, exc.reason, exc.detail) from None
    return data


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
