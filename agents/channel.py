"""Per-channel agent: throttle, deduplicate, send, record.

One agent per configured channel consumes ``<prefix>outbox.<channel>``. For
each batch it skips message ids already sent, takes what the tumbling
window allows per provider, defers the rest to the next window, sends,
records one delivery result per attempt (MariaDB and the results topic) and
schedules retries. The batch is finished, and its offsets may be committed,
only once all of that is durable.
"""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog

from agents.guard import run_step
from agents.plan import STATUS_OF, backoff_ms, deliveries_for, result_for
from agents.produce import produce_all
from channels.base import Outcome, OutcomeKind
from channels.config import ChannelConfig
from models.messages import DeliveryResult, DeliveryStatus, ReachMessage
from reach.runtime import Runtime

log = structlog.get_logger("reach.agents.channel")

Produce = Callable[[str, Sequence[tuple[bytes | None, bytes]]], Awaitable[None]]


class BatchOutcome:
    """What one batch decided, to be made durable together."""

    def __init__(self) -> None:
        self.results: list[DeliveryResult] = []
        self.deferred: list[tuple[int, bytes]] = []
        self.done_ids: list[str] = []


class ChannelSender:
    def __init__(self, runtime: Runtime, channel: ChannelConfig, produce: Produce) -> None:
        self.rt = runtime
        self.channel = channel
        self.produce = produce
        self.window_ms = int(channel.window_seconds * 1000)
        self.rng = random.Random()

    async def handle(self, messages: Sequence[ReachMessage]) -> None:
        fresh = await self._not_yet_sent(messages)
        batch = BatchOutcome()
        for provider_name, group in _by_provider(fresh).items():
            await self._send_group(provider_name, group, batch)
        await self._persist(batch)

    async def _not_yet_sent(self, messages: Sequence[ReachMessage]) -> list[ReachMessage]:
        unique = list({m.message_id: m for m in messages}.values())
        assert self.rt.sent is not None
        done = await self.rt.sent.already_sent([m.message_id for m in unique])
        skipped = len(messages) - len(unique) + len(done)
        if skipped:
            self.rt.metrics.messages_deduplicated.labels(self.channel.name).inc(skipped)
        return [m for m in unique if m.message_id not in done]

    async def _send_group(self, provider_name: str, group: list[ReachMessage], batch: BatchOutcome) -> None:
        provider_cfg = self._provider_config(provider_name)
        group = [
            m if m.provider == provider_cfg.name else m.replace(provider=provider_cfg.name) for m in group
        ]
        now = self.rt.clock.now_ms()
        assert self.rt.throttle is not None
        grant = await self.rt.throttle.acquire(
            self.channel.name,
            provider_cfg.name,
            len(group),
            now,
            self.window_ms,
            self.channel.limit_per_window,
            provider_cfg.limit_per_window,
        )
        go, wait = group[: grant.granted], group[grant.granted :]
        if wait:
            self.rt.metrics.messages_throttled.labels(self.channel.name, provider_cfg.name).inc(len(wait))
            batch.deferred += [
                (grant.window_end, m.replace(not_before=grant.window_end).to_bytes()) for m in wait
            ]
        if go:
            await self._send(provider_cfg.name, go, now, batch)

    def _provider_config(self, name: str) -> Any:
        for config in self.channel.providers:
            if config.name == name:
                return config
        # The provider was removed from the configuration since routing: route again.
        return self.rt.choosers[self.channel.name].choose()

    async def _send(
        self, provider_name: str, messages: list[ReachMessage], now: int, batch: BatchOutcome
    ) -> None:
        ready, failed = deliveries_for(messages, self.rt.rules.current.rulebook.templates)
        provider = self.rt.providers[self.channel.name][provider_name]
        started = time.perf_counter()
        outcomes = await provider.send_batch(ready) if ready else []
        self.rt.metrics.send_latency.labels(self.channel.name, provider_name).observe(
            time.perf_counter() - started
        )
        done = self.rt.clock.now_ms()
        pairs = [(d.message, o) for d, o in zip(ready, outcomes, strict=True)] + failed
        for message, outcome in pairs:
            self._record(message, outcome, now, done, batch)

    def _record(
        self, message: ReachMessage, outcome: Outcome, now: int, done: int, batch: BatchOutcome
    ) -> None:
        labels = (self.channel.name, message.provider)
        if outcome.kind is OutcomeKind.RETRY and message.attempt < self.rt.settings.max_attempts:
            batch.deferred.append(self._retry(message, outcome, done))
        elif outcome.kind is OutcomeKind.RETRY:
            outcome = Outcome.permanent(
                outcome.code, f"gave up after {message.attempt} attempts: {outcome.detail}"
            )
        status = STATUS_OF[outcome.kind]
        if status in (DeliveryStatus.SENT, DeliveryStatus.UNKNOWN):
            # An unknown outcome may have reached the user: never send it blindly again.
            batch.done_ids.append(message.message_id)
        if status is DeliveryStatus.SENT:
            self.rt.metrics.messages_sent.labels(*labels).inc()
            self.rt.metrics.end_to_end_latency.labels(self.channel.name).observe(
                max(0, done - message.event_ts) / 1000
            )
        else:
            self.rt.metrics.messages_failed.labels(*labels, outcome.kind.value).inc()
        batch.results.append(result_for(message, outcome, status, now, done))

    def _retry(self, message: ReachMessage, outcome: Outcome, now: int) -> tuple[int, bytes]:
        s = self.rt.settings
        wait = backoff_ms(message.attempt, s.retry_base_ms, s.retry_cap_ms, self.rng)
        if outcome.retry_after is not None:
            wait = max(wait, int(outcome.retry_after * 1000))
        chooser = self.rt.choosers[self.channel.name]
        provider = (
            chooser.choose(exclude={message.provider}).name
            if len(self.channel.providers) > 1
            else message.provider
        )
        when = now + wait
        retry = message.replace(attempt=message.attempt + 1, not_before=when, provider=provider)
        return when, retry.to_bytes()

    async def _persist(self, batch: BatchOutcome) -> None:
        rt = self.rt
        assert rt.sent is not None and rt.results is not None and rt.deferred is not None
        await rt.sent.mark(batch.done_ids)
        await rt.results.upsert(batch.results)
        await self.produce(
            rt.settings.results_topic, [(r.message_id.encode(), r.to_bytes()) for r in batch.results]
        )
        await rt.deferred.add(batch.deferred)


def _by_provider(messages: Sequence[ReachMessage]) -> dict[str, list[ReachMessage]]:
    groups: dict[str, list[ReachMessage]] = {}
    for message in messages:
        groups.setdefault(message.provider, []).append(message)
    return groups


def decode_messages(values: Sequence[bytes], channel: str) -> list[ReachMessage]:
    messages = []
    for value in values:
        try:
            messages.append(ReachMessage.from_bytes(value))
        except Exception as exc:  # only another producer writing to our outbox can cause this
            log.error("channel.bad_outbox_record", channel=channel, error=f"{type(exc).__name__}: {exc}")
    return messages


def register(app: Any, topic: Any, runtime: Runtime, channel: ChannelConfig) -> Any:
    async def produce(topic_name: str, records: Sequence[tuple[bytes | None, bytes]]) -> None:
        await produce_all(app, topic_name, records)

    sender = ChannelSender(runtime, channel, produce)
    settings = runtime.settings

    async def deliver(stream: Any) -> None:
        async for values in stream.take(settings.batch_size, within=settings.batch_within):
            messages = decode_messages(values, channel.name)
            await run_step(f"channel.{channel.name}", functools.partial(sender.handle, messages))

    return app.agent(topic, name=f"reach.channel.{channel.name}")(deliver)
