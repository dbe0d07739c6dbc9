"""Delivery receipts in, delivery statistics out.

``POST /v1/receipts/{provider_name}`` takes a provider's status callback
(formats and checks in :mod:`api.receipt_formats`), applies it through
:class:`models.receipts.ReceiptStore` and answers what the provider expects.
Whatever the receipts did (applied, duplicate, stale, unmatched) the answer is
a success: providers retry anything else, and a retry would change nothing.

``GET /v1/stats/delivery`` reports counts, rates and the engagement funnel per
channel, provider and device platform (definitions in :mod:`models.delivery_stats`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import re
from collections.abc import Sequence
from typing import Any

import structlog
from fastapi import APIRouter, Path, Query, Request, Response

from api.auth import StatsReader
from api.errors import ApiError
from api.receipt_config import ReceiptEndpoint, load_endpoints
from api.receipt_formats import FORMATS, Callback, Rejected
from api.schemas import AUTHENTICATED, DeliveryStats, ErrorBody, error_responses
from api.tracker import Tracker
from models.delivery_stats import DeliveryStatsStore
from models.events import EPOCH, MAX_TS_MS, MIN_TS_MS
from models.receipts import Outcome, ReceiptResult, ReceiptStore
from models.tracking import Kind
from reach.clock import Clock
from reach.metrics import ApiMetrics
from reach.settings import Settings

log = structlog.get_logger("reach.api.receipts")

MAX_BODY_BYTES = 1024 * 1024
REMATCH_INTERVAL_S = 30.0  # how often unmatched receipts are retried
REMATCH_WINDOW_MS = 3600 * 1000  # how long after arrival an unmatched receipt is retried
DAY_MS = 24 * 3600 * 1000
MAX_RANGE_MS = 31 * DAY_MS
MAX_MS_DIGITS = 15  # longer digit strings are out of range anyway (and int() refuses > 4300)
PROVIDER_NAME = Path(min_length=1, max_length=64)
_SPACED_OFFSET = re.compile(r" (\d{2}:?\d{2})$")


class ReceiptService:
    """The receipt endpoints' run-time state. ``open`` and ``close`` belong to the API's lifespan."""

    def __init__(self, endpoints: dict[str, ReceiptEndpoint], metrics: ApiMetrics, clock: Clock) -> None:
        self.endpoints = endpoints
        self.metrics = metrics
        self.clock = clock
        self.store: ReceiptStore | None = None
        self.tracker: Tracker | None = None
        self.stats: DeliveryStatsStore | None = None
        self._rematcher: asyncio.Task[None] | None = None

    async def open(
        self, pool: Any, tracker: Tracker | None = None, rematch_interval: float = REMATCH_INTERVAL_S
    ) -> None:
        """``tracker`` gets a ``delivered`` tracking event for each message a receipt delivers."""
        self.store, self.stats = ReceiptStore(pool), DeliveryStatsStore(pool)
        self.tracker = tracker
        self._rematcher = asyncio.create_task(self._rematch_forever(rematch_interval), name="receipt-rematch")

    async def close(self) -> None:
        task, self._rematcher = self._rematcher, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def accept(self, endpoint: ReceiptEndpoint, callback: Callback) -> Response:
        """Check, parse and apply one callback; raise ApiError when it is refused."""
        fmt = FORMATS[endpoint.type]
        try:
            receipts = fmt.receipts(endpoint, callback)
        except Rejected as exc:
            self.metrics.receipts_rejected.labels(endpoint.name, exc.reason).inc()
            raise ApiError(exc.status, exc.reason, exc.message) from None
        assert self.store is not None, "ReceiptService.open() was not called"
        results = await self.store.record(endpoint.name, receipts, callback.now_ms)
        self.count(endpoint, results)
        reply = fmt.reply(results)
        return Response(reply.body, status_code=reply.status, media_type=reply.media_type)

    def count(self, endpoint: ReceiptEndpoint, results: Sequence[ReceiptResult]) -> None:
        for result in results:
            labels = (endpoint.channel, endpoint.name, result.platform, result.outcome.value)
            self.metrics.receipts.labels(*labels).inc()
        if self.tracker is not None:
            delivered = [r.message_id for r in results if r.outcome is Outcome.DELIVERED and r.message_id]
            self.tracker.emit(Kind.DELIVERED, delivered)

    async def rematch_once(self) -> int:
        """Apply the unmatched receipts whose send result has arrived since; returns how many."""
        assert self.store is not None, "ReceiptService.open() was not called"
        done = await self.store.rematch(self.clock.now_ms(), REMATCH_WINDOW_MS)
        for provider, result in done:
            endpoint = self.endpoints.get(provider)
            if endpoint is not None:
                self.count(endpoint, [result])
        return len(done)

    async def _rematch_forever(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.rematch_once()
            except Exception as exc:  # a database hiccup must not end the loop
                log.warning("receipt_rematch_failed", error=type(exc).__name__)


def router(service: ReceiptService, clock: Clock, metrics: ApiMetrics) -> APIRouter:
    """The receipt and delivery-stats routes over ``service`` (which the lifespan opens)."""
    routes = APIRouter()
    for endpoint in service.endpoints.values():  # series from the start, for ratios
        for status in ("delivered", "failed"):
            metrics.receipts.labels(endpoint.channel, endpoint.name, "", status)

    @routes.post(
        "/v1/receipts/{provider_name}",
        summary="A provider's delivery-status callback (receipt)",
        description=(
            "provider_name is a provider entry's name in the channels file; its type selects the "
            "format: twilio_sms (form POST, X-Twilio-Signature), aliyun_sms and tencent_sms (JSON "
            "array, ?token=<receipt_token>), webhook (JSON, X-Reach-Signature). Duplicates and "
            "out-of-order receipts are acknowledged and change nothing. See docs/receipts.md."
        ),
        responses={
            200: {"description": "Accepted; the body is what the provider expects"},
            **error_responses(400, 404, 413, 422),
            403: {"model": ErrorBody, "description": "Bad signature or token; nothing was changed"},
        },
    )
    async def post_receipt(request: Request, provider_name: str = PROVIDER_NAME) -> Response:
        endpoint = service.endpoints.get(provider_name)
        if endpoint is None:
            metrics.receipts_rejected.labels("", "unknown_provider").inc()
            raise ApiError(404, "unknown_provider", f"no receipt-capable provider is named {provider_name!r}")
        body = await read_limited(request, MAX_BODY_BYTES)
        if body is None:
            metrics.receipts_rejected.labels(endpoint.name, "too_large").inc()
            raise ApiError(413, "too_large", f"request body is over {MAX_BODY_BYTES} bytes")
        callback = Callback(request_url(request), request.headers, request.query_params, body, clock.now_ms())
        return await service.accept(endpoint, callback)

    @routes.get(
        "/v1/stats/delivery",
        response_model=DeliveryStats,
        summary="Delivery counts and success rates by channel, provider and device platform",
        description=(
            "Messages whose latest attempt completed in [from, to), counted once each in the state of "
            "that attempt. success_rate = delivered / (delivered + failed), null when both are 0; "
            "accepted_rate = (sent + delivered) / messages. displayed, opened and clicked are the "
            "engagement funnel: how many of these messages have been displayed (pop-up shown), opened "
            "(site message read, e-mail open pixel) and clicked (a tracked link), each at most once. "
            "from and to are epoch milliseconds or "
            "ISO 8601 with an offset; to defaults to now, from to 24 hours before to; at most 31 days."
        ),
        responses=error_responses(400, *AUTHENTICATED),
    )
    async def delivery_stats(
        _caller: StatsReader,
        from_: str | None = Query(None, alias="from", description="epoch ms or ISO 8601; default to - 24 h"),
        to: str | None = Query(None, description="epoch ms or ISO 8601, exclusive; default now"),
        channel: str | None = Query(None, min_length=1, max_length=32),
        provider: str | None = Query(None, min_length=1, max_length=64),
    ) -> DeliveryStats:
        from_ms, to_ms = time_range(from_, to, clock.now_ms())
        assert service.stats is not None, "ReceiptService.open() was not called"
        groups = await service.stats.by_group(from_ms, to_ms, channel, provider)
        return DeliveryStats.build(from_ms, to_ms, groups)

    return routes


def service_from(settings: Settings, metrics: ApiMetrics, clock: Clock) -> ReceiptService:
    """The receipt service of the channels file's receipt-capable providers. Raises
    ``ChannelsConfigError`` for a channels file it cannot use."""
    return ReceiptService(dict(load_endpoints(settings.channels_file, os.environ)), metrics, clock)


def request_url(request: Request) -> str:
    """The URL as the caller asked for it, which is what providers sign: the path as sent
    (``raw_path``: ``request.url`` decodes it, so a provider named ``twilio%20eu`` could never
    verify), and behind a proxy the ``X-Forwarded-Proto`` and ``X-Forwarded-Host`` it reports.
    Trusting those headers widens nothing: the signature still has to match the URL."""
    headers, scope = request.headers, request.scope
    scheme = _first(headers.get("x-forwarded-proto")) or request.url.scheme
    host = _first(headers.get("x-forwarded-host")) or headers.get("host") or request.url.netloc
    raw = scope.get("raw_path") or request.url.path.encode()
    path = raw.partition(b"?")[0].decode("latin-1")  # some servers keep the query in raw_path
    query = scope.get("query_string", b"").decode("latin-1")
    return f"{scheme}://{host}{path}" + (f"?{query}" if query else "")


def _first(value: str | None) -> str:
    """The first of a comma-separated forwarded list (the client-most proxy's view)."""
    return value.split(",")[0].strip() if value else ""


async def read_limited(request: Request, limit: int) -> bytes | None:
    """The request body, or None as soon as it is known to exceed ``limit`` bytes: from its
    Content-Length, else while streaming it, so an oversized body is never held in memory."""
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared[:20]) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def time_range(from_: str | None, to: str | None, now_ms: int) -> tuple[int, int]:
    """``[from, to)`` in epoch ms; raises ApiError 400 for a bad or too long range."""
    to_ms = parse_time("to", to) if to is not None else now_ms
    from_ms = parse_time("from", from_) if from_ is not None else to_ms - DAY_MS
    if from_ms >= to_ms:
        raise ApiError(400, "bad_range", f"'from' ({from_ms}) must be before 'to' ({to_ms})")
    if to_ms - from_ms > MAX_RANGE_MS:
        raise ApiError(400, "bad_range", "the range is longer than 31 days")
    return from_ms, to_ms


def parse_time(name: str, value: str) -> int:
    ms = _epoch_ms(name, value)
    if not MIN_TS_MS <= ms <= MAX_TS_MS:
        raise ApiError(
            400, "bad_time", f"{name!r} {value!r} is out of range (epoch milliseconds, 2000..2100)"
        )
    return ms


def _epoch_ms(name: str, value: str) -> int:
    text = value.strip()
    # ASCII only: str.isdigit() also accepts characters such as "²" that int() refuses.
    if text.isascii() and text.isdigit() and len(text) <= MAX_MS_DIGITS:
        return int(text)
    # An unencoded "+08:00" in a query string arrives as " 08:00".
    text = _SPACED_OFFSET.sub(r"+\1", text)
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ApiError(
            400, "bad_time", f"{name!r} must be epoch milliseconds or ISO 8601, got {value!r}"
        ) from None
    if parsed.tzinfo is None:
        raise ApiError(
            400, "bad_time", f"{name!r} needs a time zone offset (e.g. Z or +08:00), got {value!r}"
        )
    return (parsed - EPOCH) // dt.timedelta(milliseconds=1)
