"""Throttle step: a provider group takes what the tumbling window allows; the rest waits.

The window counters are cluster-wide (one Redis script per group, exact across
workers); the messages over the limit are deferred to the start of the next
window, when the deferred pump puts them back on the outbox.
"""

from __future__ import annotations

from collections.abc import Sequence

from agents.delivery.batch import BatchOutcome
from channels.base import ProviderConfig
from channels.config import ChannelConfig
from models.messages import ReachMessage
from models.redis_state import Grant, WindowThrottle
from reach.metrics import WorkerMetrics


def admit(group: Sequence[ReachMessage], grant: Grant, batch: BatchOutcome) -> list[ReachMessage]:
    """The messages the grant lets go now; the others are deferred to the next window."""
    for message in group[grant.granted :]:
        batch.defer(
            grant.window_end, message.replace(not_before=grant.window_end).to_bytes(), message.message_id
        )
    return list(group[: grant.granted])


class Throttle:
    def __init__(self, channel: ChannelConfig, windows: WindowThrottle, metrics: WorkerMetrics) -> None:
        self.channel = channel
        self.window_ms = int(channel.window_seconds * 1000)
        self.windows = windows
        self.metrics = metrics

    async def take(
        self, provider: ProviderConfig, group: Sequence[ReachMessage], now: int, batch: BatchOutcome
    ) -> list[ReachMessage]:
        """What of ``group`` the provider may send in the window containing ``now``."""
        grant = await self.windows.acquire(
            self.channel.name,
            provider.name,
            len(group),
            now,
            self.window_ms,
            self.channel.limit_per_window,
            provider.limit_per_window,
        )
        waiting = len(group) - grant.granted
        if waiting > 0:
            self.metrics.messages_throttled.labels(self.channel.name, provider.name).inc(waiting)
        return admit(group, grant, batch)
