"""The API's emitter of tracking events (:mod:`models.tracking`) onto the tracking topic.

Used by the tracking routes (:mod:`api.tracking`), the inbox's mark-read and the receipt
service. A request never waits for Kafka: each emit is sent by a background task whose
wait ``EventProducer.send_all`` bounds, and events Kafka did not take are counted as
dropped (``reach_api_tracking_events{result="dropped"}``). Losing an engagement count
while the broker is down is the trade for never failing a click or a receipt on it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

import structlog

from api.errors import ApiError
from api.event_producer import EventProducer
from models.tracking import Kind, TrackingEvent, record
from reach.clock import Clock
from reach.metrics import ApiMetrics

log = structlog.get_logger("reach.api.tracking")

MAX_PENDING = 10_000  # events waiting for Kafka; beyond, new ones are dropped (and counted)
CLOSE_TIMEOUT_S = 5.0


class Tracker:
    """Sends tracking events in the background; never raises, never makes a request wait."""

    def __init__(self, producer: EventProducer, topic: str, metrics: ApiMetrics, clock: Clock) -> None:
        self.producer = producer
        self.topic = topic
        self.metrics = metrics
        self.clock = clock
        self._pending: set[asyncio.Task[None]] = set()
        self._waiting = 0

    def emit(self, kind: Kind, message_ids: Sequence[str]) -> None:
        if not message_ids:
            return
        if self._waiting + len(message_ids) > MAX_PENDING:
            self._dropped(kind, len(message_ids), "backlog")
            return
        now = self.clock.now_ms()
        events = [TrackingEvent(message_id, kind, now) for message_id in message_ids]
        self._waiting += len(events)
        task = asyncio.create_task(self._send(events), name=f"tracking-{kind}")
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _send(self, events: list[TrackingEvent]) -> None:
        kind = events[0].kind
        try:
            await self.producer.send_all(self.topic, [record(e) for e in events])
        except ApiError as exc:  # Kafka unavailable or slow: send_all bounds the wait
            self._dropped(kind, len(events), exc.code)
        except Exception:  # a bug must cost counts, not an unobserved task error
            log.exception("tracking.send_failed", kind=kind.value)
            self._dropped(kind, len(events), "error")
        else:
            self.metrics.tracking_events.labels(kind, "accepted").inc(len(events))
        finally:
            self._waiting -= len(events)

    def _dropped(self, kind: Kind, count: int, why: str) -> None:
        log.warning("tracking.events_dropped", kind=kind.value, events=count, reason=why)
        self.metrics.tracking_events.labels(kind, "dropped").inc(count)

    async def close(self) -> None:
        """Wait a little for what is still being sent; the rest is lost (and not counted)."""
        if self._pending:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await asyncio.gather(*self._pending, return_exceptions=True)
