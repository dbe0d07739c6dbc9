"""Per-channel agent: deduplicate, route, throttle, send, record.

One agent per configured channel consumes ``<prefix>outbox.<channel>``. For
each batch it skips message ids already done, routes around open breakers,
takes what the tumbling window allows per provider, defers the rest to the
next window, sends, records one delivery result per attempt (MariaDB and the
results topic) and schedules retries; each step is a module of
:mod:`agents.delivery`. The batch is finished, and its offsets may be committed,
only once all of that is durable.

Sending and recording are two steps, each retried on its own while MariaDB,
Redis or Kafka is unavailable: a failure while recording never sends a
message again. A crash between the two replays the batch; messages marked
done are skipped, and a message a non-idempotent provider was sending when
the worker died is recorded as ``unknown`` (``interrupted``) rather than
sent a second time. A message is claimed just before its own request starts
(:mod:`agents.claims`), so the messages of the batch not yet attempted are
simply sent after a restart.

One message never stops the others: an outbox record that does not decode
goes to the deliveries dead-letter topic, content that fails to render, links
outside ``REACH_LINK_DOMAINS`` (:mod:`agents.delivery.linkcheck`) or is over
the channel's ``max_content_bytes`` fails as a result, a provider that
raises fails only the messages it was sending, and a result row the
database refuses is stored without its provider fields (or dead-lettered).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from typing import Any

import orjson
import structlog

from agents.cancels import CancelGate
from agents.claims import send_isolated, split_by_marker
from agents.delivery.addresses import DeadAddresses
from agents.delivery.batch import PROVIDER_FAILURES, BatchOutcome, Produce, Record
from agents.delivery.fallback import ChannelFallback
from agents.delivery.linkcheck import LinkCheck
from agents.delivery.links import LinkTracking
from agents.delivery.optout import provider_opt_outs
from agents.delivery.persist import Persister, Stores
from agents.delivery.policy import PolicyResources, PolicyStep
from agents.delivery.record import Recorder
from agents.delivery.route import Router
from agents.delivery.throttle import Throttle
from agents.guard import run_step
from agents.narrow import describe
from agents.plan import Finish, deliveries_for
from agents.produce import produce_all
from agents.records import dumps_within, value_limit
from channels.base import Delivery, Outcome, OutcomeKind, Provider, no_start_hook
from channels.config import ChannelConfig
from models.messages import ReachMessage
from models.outbox import unpack
from reach.runtime import Runtime

log = structlog.get_logger("reach.agents.channel")


class ChannelSender:
    """The chain of steps of :mod:`agents.delivery` for one channel.

    Built from the worker's open resources (:class:`~reach.runtime.Runtime`).
    """

    def __init__(self, runtime: Runtime, channel: ChannelConfig, produce: Produce) -> None:
        rt, s = runtime, runtime.settings
        self.rt = runtime
        self.channel = channel
        self.sent = rt.sent
        limit = value_limit(s.kafka_max_message_bytes)
        self.router = Router(
            channel, rt.choosers[channel.name], rt.metrics, s.breaker_failures, s.breaker_cooldown_ms
        )
        self.throttle = Throttle(channel, rt.throttle, rt.metrics)
        self.addresses = DeadAddresses(channel.name, rt.dead_addresses, rt.metrics)
        self.recorder = Recorder(
            channel.name, s, rt.metrics, self.router.alternative, self.router.paused, limit
        )
        stores = Stores(rt.sent, rt.results, rt.dead_addresses, rt.deferred, rt.preferences)
        self.persister = Persister(channel.name, stores, produce, s, rt.metrics, rt.clock, limit)
        self.cancels = CancelGate(rt.cancel_markers, rt.metrics, channel.name)
        self.configs = {p.name: p for p in channel.providers}
        self.policy = PolicyStep(channel.name, PolicyResources.of(runtime), rt.metrics)
        self.links = LinkCheck(rt.link_domains)
        self.tracking = LinkTracking.from_settings(s)
        self.fallback = ChannelFallback(channel.name, rt.choosers, rt.metrics)

    async def send(self, messages: Sequence[ReachMessage], batch: BatchOutcome) -> None:
        """Decide and send; the outcomes collect in ``batch``. Safe to call again with the
        same ``batch`` after a failure: messages already decided are not sent twice."""
        pending = [m for m in messages if m.message_id not in batch.handled]
        now = self.rt.clock.now_ms()
        fresh = await self._not_yet_sent(pending, now, batch)
        fresh = await self.rt.taskgate.screen(fresh, now, batch)
        fresh = await self.cancels.keep_live(fresh, now, batch)
        fresh = await self.policy.screen(fresh, now, batch)
        try:
            for provider_name, group in self.router.route(fresh, now, batch).items():
                await self._send_group(provider_name, group, batch)
        finally:
            # A probe slot is freed here whatever happened to its batch (throttled, nothing
            # sendable, an error); judge() has already been told about the ones that sent.
            self.router.release()

    async def persist(self, batch: BatchOutcome) -> None:
        await self.persister.persist(batch)
        await self.rt.taskgate.count(batch.results)  # last: a retried persist must not count twice

    async def _not_yet_sent(
        self, messages: Sequence[ReachMessage], now: int, batch: BatchOutcome
    ) -> list[ReachMessage]:
        """Dedup step: skip what is final; what a dead worker was sending is ``unknown``."""
        states = await self.sent.states(list({m.message_id for m in messages}))
        split = split_by_marker(messages, states, self._idempotent)
        if split.skipped:
            self.rt.metrics.messages_deduplicated.labels(self.channel.name).inc(split.skipped)
        for message in split.interrupted:
            self.recorder.record(message, INTERRUPTED, now, now, batch)
        return split.fresh

    def _idempotent(self, provider_name: str) -> bool:
        provider = self.rt.providers[self.channel.name].get(provider_name)
        return provider is not None and provider.idempotent

    async def _send_group(self, provider_name: str, group: list[ReachMessage], batch: BatchOutcome) -> None:
        now = self.rt.clock.now_ms()
        go = await self.throttle.take(self.configs[provider_name], group, now, batch)
        if go:
            await self._send(provider_name, go, now, batch)

    async def _send(
        self, provider_name: str, messages: list[ReachMessage], now: int, batch: BatchOutcome
    ) -> None:
        provider = self.rt.providers[self.channel.name][provider_name]
        sendable, dead = await self.addresses.skip(provider_name, provider.address_fields, messages, now)
        templates = self.rt.taskgate.templates(self.rt.rules.current.rulebook.templates)
        screen, finish = self.links.for_provider(provider), self._tracking(provider)
        prepared = deliveries_for(
            sendable, templates, self.channel.max_content_bytes, screen, finish, self.rt.upgrades
        )
        for fallback, count in prepared.fallbacks.items():
            self.rt.metrics.app_version_fallbacks.labels(self.channel.name, fallback).inc(count)
        ready, failed = prepared.ready, prepared.failed + self.fallback.move(prepared.moved, now, batch)
        outcomes = await self._provider_send(provider_name, provider, ready)
        done = self.rt.clock.now_ms()
        if ready:
            succeeded = sum(o.kind is OutcomeKind.SENT for o in outcomes)
            failures = sum(o.kind in PROVIDER_FAILURES for o in outcomes)
            self.router.judge(provider_name, succeeded, failures, done)
        else:
            self.router.show_state(provider_name, done)
        pairs = [(d.message, o) for d, o in zip(ready, outcomes, strict=True)] + failed + dead
        for message, outcome in pairs:
            if outcome.kind is OutcomeKind.INVALID_ADDRESS:
                record = self.addresses.bury(provider.address_fields, message, outcome)
                if record is not None:
                    batch.dead_addresses.append(record)
            self.recorder.record(message, outcome, now, done, batch)
        batch.opted_out += provider_opt_outs(pairs, provider.opt_out_codes)

    def _tracking(self, provider: Provider) -> Finish | None:
        """The link tracking step for what this provider's content can carry, if any."""
        links, pixel = provider.tracked_links, provider.open_pixel
        if self.tracking is None or not (links or pixel):
            return None
        return functools.partial(self.tracking.apply, links=links, pixel=pixel)

    async def _provider_send(self, name: str, provider: Provider, ready: list[Delivery]) -> list[Outcome]:
        """Send step: the provider's requests, each claimed just before it starts when the
        provider is not idempotent; nothing the provider raises escapes (``send_isolated``)."""
        labels = (self.channel.name, name)
        self.rt.metrics.delivery_attempts.labels(*labels).inc(len(ready))
        started = time.perf_counter()
        claim = no_start_hook if provider.idempotent else self._claim
        outcomes = (
            await send_isolated(provider.send_batch, ready, claim, provider.idempotent) if ready else []
        )
        self.rt.metrics.send_latency.labels(*labels).observe(time.perf_counter() - started)
        return outcomes

    async def _claim(self, deliveries: Sequence[Delivery]) -> None:
        """The providers' ``started`` hook: mark messages as being sent, just before their request."""
        ids = [d.message.message_id for d in deliveries]
        await run_step(f"channel.{self.channel.name}.claim", functools.partial(self.sent.claim, ids))


INTERRUPTED = Outcome.unknown("interrupted", "the worker stopped while sending it; not sent again")


def decode_messages(
    values: Sequence[bytes], now_ms: int, limit: int
) -> tuple[list[ReachMessage], list[Record]]:
    """The outbox records as messages, and a dead letter for each one that does not decode
    (only another producer writing to our outbox can cause that)."""
    messages: list[ReachMessage] = []
    letters: list[Record] = []
    for value in values:
        try:
            items = unpack(value)
        except Exception as exc:
            text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
            letters.append(_bad_outbox_record(exc, text, now_ms, limit))
            continue
        framed = len(items) != 1 or value.lstrip()[:1] == b"["
        for item in items:
            try:
                messages.append(ReachMessage.from_dict(item))
            except Exception as exc:  # one bad message of a frame fails alone
                text = orjson.dumps(item).decode() if framed else value.decode("utf-8", "replace")
                letters.append(_bad_outbox_record(exc, text, now_ms, limit))
    return messages, letters


def _bad_outbox_record(exc: Exception, text: str, now_ms: int, limit: int) -> Record:
    record = {"reason": "bad_outbox_record", "detail": describe(exc), "failed_at": now_ms, "value": text}
    return None, dumps_within(record, "value", limit)


def register(app: Any, topic: Any, runtime: Runtime, channel: ChannelConfig) -> Any:
    async def produce(topic_name: str, records: Sequence[Record]) -> None:
        await produce_all(app, topic_name, records)

    sender = ChannelSender(runtime, channel, produce)
    settings = runtime.settings

    async def deliver(stream: Any) -> None:
        # An outbox record is a frame of up to outbox_frame_messages: a batch of this many
        # records holds about batch_size messages.
        frames = max(1, settings.batch_size // settings.outbox_frame_messages)
        async for values in stream.take(frames, within=settings.batch_within):
            limit = value_limit(settings.kafka_max_message_bytes)
            messages, bad = decode_messages(values, runtime.clock.now_ms(), limit)
            batch = BatchOutcome()
            if bad:
                log.error("channel.bad_outbox_record", channel=channel.name, records=len(bad))
                runtime.metrics.items_refused.labels(f"channel.{channel.name}", "bad_outbox_record").inc(
                    len(bad)
                )
                batch.dead_letters += bad
            await run_step(f"channel.{channel.name}.send", functools.partial(sender.send, messages, batch))
            await run_step(f"channel.{channel.name}.record", functools.partial(sender.persist, batch))

    return app.agent(topic, name=f"reach.channel.{channel.name}")(deliver)
