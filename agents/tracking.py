"""Tracking agent: tracking events -> ``message_engagement`` and the engagement metrics.

Consumes ``<prefix>tracking`` (:mod:`models.tracking`). Each batch is applied in one
transaction (:class:`models.engagement.EngagementStore`): a stage a message reaches for
the first time is recorded and counted in ``reach_engagement`` by the labels of the
message's send; a repeat (a second open, a replayed record) records and counts nothing.
A record that does not decode is counted (``reach_tracking_events{outcome="bad"}``) and
skipped: tracking events come from reach's own API, and one bad record must not hold
the partition back.

The table is the truth; the counter is counted after the commit, so a crash in between
loses that batch's increments (never doubles them).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import structlog

from agents.guard import run_step
from models.engagement import Applied, EngagementStore
from models.storage import MAX_ROWS_PER_STATEMENT
from models.tracking import TrackingEvent, decode
from reach.metrics import WorkerMetrics, category_label, platform_label
from reach.runtime import Runtime

log = structlog.get_logger("reach.agents.tracking")


class TrackingStep:
    def __init__(self, store: EngagementStore, metrics: WorkerMetrics, categories: Sequence[str]) -> None:
        self.store = store
        self.metrics = metrics
        self.categories = frozenset(categories)

    async def apply(self, events: Sequence[TrackingEvent], bad: int) -> None:
        applied = await self.store.apply(events)
        self.count(applied, bad)

    def count(self, applied: Applied, bad: int) -> None:
        for first in applied.firsts:
            if first.labels is None:
                self.metrics.tracking_events.labels(first.kind, "unmatched").inc()
                continue
            labels = first.labels
            category = category_label(labels.category, self.categories)
            platform = platform_label(labels.platform)
            send = (labels.channel, labels.provider, platform, category)
            self.metrics.engagement.labels(first.kind, *send).inc()
            self.metrics.tracking_events.labels(first.kind, "first").inc()
        for kind, repeats in applied.repeats.items():
            self.metrics.tracking_events.labels(kind, "repeat").inc(repeats)
        if bad:
            log.warning("tracking.bad_records", events=bad)
            self.metrics.tracking_events.labels("", "bad").inc(bad)


def register(app: Any, topic: Any, runtime: Runtime) -> Any:
    settings = runtime.settings
    step = TrackingStep(EngagementStore(runtime.mysql_pool), runtime.metrics, settings.category_names)
    size = min(settings.batch_size, MAX_ROWS_PER_STATEMENT)  # a batch is one transaction

    async def track(stream: Any) -> None:
        async for values in stream.take(size, within=settings.batch_within):
            events, bad = decode(values)
            await run_step("tracking", functools.partial(step.apply, events, bad))

    return app.agent(topic, name="reach.tracking")(track)
