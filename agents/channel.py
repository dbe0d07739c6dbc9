"""Per-channel agent: throttle, deduplicate, send, record.

One agent per configured channel consumes ``<prefix>outbox.<channel>``. For
each batch it skips message ids already done, takes what the tumbling
window allows per provider, defers the rest to the next window, sends,
records one delivery result per attempt (MariaDB and the results topic) and
schedules retries. The batch is finished, and its offsets may be committed,
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
goes to the deliveries dead-letter topic, content that fails to render or is
over the channel's ``max_content_bytes`` fails as a result, a provider that
raises fails only the messages it was sending, and a result row the
database refuses is stored without its provider fields (or dead-lettered).
"""

from __future__ import annotations

import dataclasses
import functools
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson
import structlog

from agents.cancels import CancelGate
from agents.claims import send_isolated, split_by_marker
from agents.guard import run_step
from agents.narrow import describe, narrow
from agents.plan import STATUS_OF, backoff_ms, deliveries_for, result_for
from agents.produce import produce_all
from agents.records import dumps_within, value_limit
from channels.base import Delivery, Outcome, OutcomeKind, Provider, no_start_hook
from channels.breaker import CircuitBreaker, CircuitState
from channels.config import ChannelConfig
from channels.routing import NoProviderAvailableError
from models.addresses import DeadAddress, address_key, address_of
from models.messages import DeliveryResult, DeliveryStatus, ReachMessage
from models.outbox import unpack
from reach.runtime import Runtime

log = structlog.get_logger("reach.agents.channel")

Produce = Callable[[str, Sequence[tuple[bytes | None, bytes]]], Awaitable[None]]


class BatchOutcome:
    """What one batch decided, to be made durable together."""

    def __init__(self) -> None:
        self.results: list[DeliveryResult] = []
        self.deferred: list[tuple[int, bytes]] = []
        self.done_ids: list[str] = []  # final: never send again
        self.released_ids: list[str] = []  # claimed for sending, failed before reaching anyone
        self.handled: set[str] = set()  # decided in this batch; a repeated send step skips them
        self.dead_letters: list[tuple[bytes | None, bytes]] = []
        self.dead_addresses: list[DeadAddress] = []


#: outcomes that say something about the provider (not about one message)
PROVIDER_FAILURES = frozenset({OutcomeKind.RETRY, OutcomeKind.UNKNOWN})


class ChannelSender:
    def __init__(self, runtime: Runtime, channel: ChannelConfig, produce: Produce) -> None:
        self.rt = runtime
        self.channel = channel
        self.produce = produce
        self.window_ms = int(channel.window_seconds * 1000)
        self.rng = random.Random()
        self.cancels = CancelGate(runtime, channel.name)
        self.configs = {p.name: p for p in channel.providers}
        s = runtime.settings
        self.breakers = {
            p.name: CircuitBreaker(s.breaker_failures, s.breaker_cooldown_ms) for p in channel.providers
        }
        for name in self.breakers:
            runtime.metrics.circuit_state.labels(channel.name, name).set(CircuitState.CLOSED)

    async def send(self, messages: Sequence[ReachMessage], batch: BatchOutcome) -> None:
        """Decide and send; the outcomes collect in ``batch``. Safe to call again with the
        same ``batch`` after a failure: messages already decided are not sent twice."""
        pending = [m for m in messages if m.message_id not in batch.handled]
        now = self.rt.clock.now_ms()
        fresh = await self.cancels.keep_live(await self._not_yet_sent(pending, now, batch), now, batch)
        try:
            for provider_name, group in self._route(fresh, now, batch).items():
                await self._send_group(provider_name, group, batch)
        finally:
            # A probe slot is freed here whatever happened to its batch (throttled, nothing
            # sendable, an error); record() has already judged the ones that sent.
            for breaker in self.breakers.values():
                breaker.release()

    async def _not_yet_sent(
        self, messages: Sequence[ReachMessage], now: int, batch: BatchOutcome
    ) -> list[ReachMessage]:
        assert self.rt.sent is not None
        states = await self.rt.sent.states(list({m.message_id for m in messages}))
        split = split_by_marker(messages, states, self._idempotent)
        if split.skipped:
            self.rt.metrics.messages_deduplicated.labels(self.channel.name).inc(split.skipped)
        outcome = Outcome.unknown("interrupted", "the worker stopped while sending it; not sent again")
        for message in split.interrupted:
            self._record(message, outcome, now, now, batch)
        return split.fresh

    def _idempotent(self, provider_name: str) -> bool:
        provider = self.rt.providers[self.channel.name].get(provider_name)
        return provider is not None and provider.idempotent

    # -- routing: configured providers, open breakers ------------------------
    def _route(
        self, messages: Sequence[ReachMessage], now: int, batch: BatchOutcome
    ) -> dict[str, list[ReachMessage]]:
        """Group messages by the provider that sends them in this batch.

        A message whose provider is no longer configured, or whose provider's
        breaker is open, moves to another provider of the channel that can
        address it; with none left it waits for the breaker's cool-down.
        """
        allowed: dict[str, bool] = {}
        unavailable = {name for name, b in self.breakers.items() if b.state(now) is not CircuitState.CLOSED}
        groups: dict[str, list[ReachMessage]] = {}
        for message in messages:
            name = message.provider
            reason = ""
            if name not in self.configs:
                reason = "unconfigured"
            else:
                if name not in allowed:
                    allowed[name] = self.breakers[name].allows(now)
                    self._show_state(name, now)
                if not allowed[name]:
                    reason = "circuit_open"
            if reason:
                target = self._alternative(message, unavailable | {name})
                if target is None:
                    when = self._reopens_at(name, now)
                    batch.deferred.append((when, message.replace(not_before=when).to_bytes()))
                    batch.handled.add(message.message_id)
                    continue
                self.rt.metrics.messages_rerouted.labels(self.channel.name, name, target, reason).inc()
                name, message = target, message.replace(provider=target)
            groups.setdefault(name, []).append(message)
        return groups

    def _alternative(self, message: ReachMessage, exclude: set[str]) -> str | None:
        try:
            return self.rt.choosers[self.channel.name].choose(exclude=exclude, contact=message.contact).name
        except NoProviderAvailableError:
            return None

    def _reopens_at(self, name: str, now: int) -> int:
        breaker = self.breakers.get(name)
        return max(now + 1000, breaker.reopens_at() if breaker else 0)

    def _show_state(self, name: str, now: int) -> None:
        self.rt.metrics.circuit_state.labels(self.channel.name, name).set(self.breakers[name].state(now))

    # -- throttle, then send ---------------------------------------------------
    async def _send_group(self, provider_name: str, group: list[ReachMessage], batch: BatchOutcome) -> None:
        provider_cfg = self.configs[provider_name]
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
            batch.handled.update(m.message_id for m in wait)
        if go:
            await self._send(provider_cfg.name, go, now, batch)

    async def _send(
        self, provider_name: str, messages: list[ReachMessage], now: int, batch: BatchOutcome
    ) -> None:
        provider = self.rt.providers[self.channel.name][provider_name]
        sendable, dead = await self._skip_dead_addresses(
            provider_name, provider.address_fields, messages, now
        )
        templates = self.rt.rules.current.rulebook.templates
        ready, failed = deliveries_for(sendable, templates, self.channel.max_content_bytes)
        labels = (self.channel.name, provider_name)
        self.rt.metrics.delivery_attempts.labels(*labels).inc(len(ready))
        started = time.perf_counter()
        outcomes = await self._provider_send(provider, ready) if ready else []
        self.rt.metrics.send_latency.labels(*labels).observe(time.perf_counter() - started)
        done = self.rt.clock.now_ms()
        pairs = [(d.message, o) for d, o in zip(ready, outcomes, strict=True)] + failed + dead
        if ready:
            succeeded = sum(o.kind is OutcomeKind.SENT for o in outcomes)
            failures = sum(o.kind in PROVIDER_FAILURES for o in outcomes)
            self.breakers[provider_name].record(succeeded, failures, done)
        self._show_state(provider_name, done)
        for message, outcome in pairs:
            if outcome.kind is OutcomeKind.INVALID_ADDRESS:
                self._bury_address(provider.address_fields, message, outcome, batch)
            self._record(message, outcome, now, done, batch)

    async def _provider_send(self, provider: Provider, ready: list[Delivery]) -> list[Outcome]:
        claim = no_start_hook if provider.idempotent else self._claim
        return await send_isolated(provider.send_batch, ready, claim, provider.idempotent)

    async def _claim(self, deliveries: Sequence[Delivery]) -> None:
        """The providers' ``started`` hook: mark messages as being sent, just before their request."""
        sent = self.rt.sent
        assert sent is not None
        ids = [d.message.message_id for d in deliveries]
        await run_step(f"channel.{self.channel.name}.claim", functools.partial(sent.claim, ids))

    async def _skip_dead_addresses(
        self, provider_name: str, fields: Sequence[str], messages: list[ReachMessage], now: int
    ) -> tuple[list[ReachMessage], list[tuple[ReachMessage, Outcome]]]:
        if not fields:
            return messages, []
        keys: dict[str, str] = {}
        for message in messages:
            address = address_of(fields, message.contact)
            if address is not None:
                keys[message.message_id] = address_key(*address)
        assert self.rt.dead_addresses is not None
        dead_keys = await self.rt.dead_addresses.dead_among(list(keys.values()), now)
        if not dead_keys:
            return messages, []
        outcome = Outcome.permanent("address_dead", "the address was reported invalid earlier; not sent")
        skipped = [(m, outcome) for m in messages if keys.get(m.message_id) in dead_keys]
        self.rt.metrics.addresses_dead.labels(self.channel.name, provider_name, "skipped").inc(len(skipped))
        return [m for m in messages if keys.get(m.message_id) not in dead_keys], skipped

    def _bury_address(
        self, fields: Sequence[str], message: ReachMessage, outcome: Outcome, batch: BatchOutcome
    ) -> None:
        address = address_of(fields, message.contact)
        if address is None:
            return
        batch.dead_addresses.append(
            DeadAddress(address_key(*address), address[0], self.channel.name, message.provider, outcome.code)
        )
        self.rt.metrics.addresses_dead.labels(self.channel.name, message.provider, "recorded").inc()

    # -- results, retries, dead letters ----------------------------------------
    def _record(
        self, message: ReachMessage, outcome: Outcome, now: int, done: int, batch: BatchOutcome
    ) -> None:
        labels = (self.channel.name, message.provider)
        batch.handled.add(message.message_id)
        if outcome.kind is OutcomeKind.RETRY and message.attempt < self.rt.settings.max_attempts:
            batch.deferred.append(self._retry(message, outcome, done))
            batch.released_ids.append(message.message_id)
        elif outcome.kind is OutcomeKind.RETRY:
            outcome = Outcome.permanent(
                outcome.code, f"gave up after {message.attempt} attempts: {outcome.detail}"
            )
            limit = value_limit(self.rt.settings.kafka_max_message_bytes)
            batch.dead_letters.append((message.user_id.encode(), dead_letter(message, outcome, done, limit)))
            self.rt.metrics.messages_dead_lettered.labels(*labels).inc()
        status = STATUS_OF[outcome.kind]
        if status is not DeliveryStatus.RETRYING:
            # Final, whatever it is: an unknown outcome may have reached the user, and a
            # failure would fail again. A replayed batch must not send it a second time.
            batch.done_ids.append(message.message_id)
        if status is DeliveryStatus.SENT:
            self.rt.metrics.messages_sent.labels(*labels).inc()
            self.rt.metrics.end_to_end_latency.labels(self.channel.name).observe(
                max(0, done - max(message.event_ts, message.due_ts)) / 1000
            )
        else:
            self.rt.metrics.messages_failed.labels(*labels, outcome.kind.value, outcome.code[:64]).inc()
        batch.results.append(result_for(message, outcome, status, now, done))

    def _retry(self, message: ReachMessage, outcome: Outcome, now: int) -> tuple[int, bytes]:
        """The next attempt: after capped, jittered backoff (or the provider's Retry-After),
        through another provider of the channel when one can take it (failover)."""
        s = self.rt.settings
        wait = backoff_ms(message.attempt, s.retry_base_ms, s.retry_cap_ms, self.rng)
        if outcome.retry_after is not None:
            wait = max(wait, int(outcome.retry_after * 1000))
        paused = {name for name, b in self.breakers.items() if b.state(now) is CircuitState.OPEN}
        provider = self._alternative(message, paused | {message.provider}) or message.provider
        if provider != message.provider:
            self.rt.metrics.messages_rerouted.labels(
                self.channel.name, message.provider, provider, "failover"
            ).inc()
        when = now + wait
        retry = message.replace(attempt=message.attempt + 1, not_before=when, provider=provider)
        return when, retry.to_bytes()

    async def persist(self, batch: BatchOutcome) -> None:
        """Make the batch's outcomes durable; every write is idempotent, so it may be repeated."""
        rt = self.rt
        assert rt.sent is not None and rt.results is not None and rt.deferred is not None
        assert rt.dead_addresses is not None
        await rt.sent.mark(batch.done_ids)
        await rt.sent.release(batch.released_ids)
        results, refused = await self._store_results(batch.results)
        await rt.dead_addresses.record(batch.dead_addresses, rt.clock.now_ms())
        await self.produce(
            rt.settings.results_topic, [(r.message_id.encode(), r.to_bytes()) for r in results]
        )
        await self.produce(rt.settings.delivery_dead_letter_topic, batch.dead_letters + refused)
        await rt.deferred.add(batch.deferred)

    async def _store_results(
        self, results: list[DeliveryResult]
    ) -> tuple[list[DeliveryResult], list[tuple[bytes | None, bytes]]]:
        """Upsert result rows; a row the database refuses is stored without its provider
        fields (code ``result_refused``), or dead-lettered when even that is refused.
        Returns the rows as stored and the dead letters."""
        store = self.rt.results
        assert store is not None
        refused = await narrow(results, store.upsert)
        if not refused:
            return results, []
        self.rt.metrics.items_refused.labels(f"channel.{self.channel.name}", "result_refused").inc(
            len(refused)
        )
        log.warning("channel.result_refused", channel=self.channel.name, rows=len(refused))
        replaced = {id(r): without_provider_fields(r, exc) for r, exc in refused}
        still = {id(r) for r, _ in await narrow(list(replaced.values()), store.upsert)}
        now, limit = self.rt.clock.now_ms(), value_limit(self.rt.settings.kafka_max_message_bytes)
        letters: list[tuple[bytes | None, bytes]] = [
            (r.message_id.encode(), refused_result(r, exc, now, limit)) for r, exc in refused
        ]
        stored = [replaced.get(id(r), r) for r in results]
        return [r for r in stored if id(r) not in still], letters


def without_provider_fields(result: DeliveryResult, exc: BaseException) -> DeliveryResult:
    """The row to store instead of one the database refused: what reach decided (status,
    times) stays; what came from the provider is replaced by why the row was refused."""
    return dataclasses.replace(
        result, error_code="result_refused", error=describe(exc, 500), provider_message_id=""
    )


def refused_result(result: DeliveryResult, exc: BaseException, now_ms: int, limit: int) -> bytes:
    record = {
        "reason": "result_refused",
        "detail": describe(exc),
        "failed_at": now_ms,
        "result": dataclasses.asdict(result),
    }
    return dumps_within(record, "result", limit)


def dead_letter(message: ReachMessage, outcome: Outcome, now_ms: int, limit: int) -> bytes:
    """The delivery dead-letter record: the message as it was, and why it was given up."""
    record = {
        "reason": outcome.code,
        "detail": outcome.detail,
        "failed_at": now_ms,
        "message": message.to_dict(),
    }
    return dumps_within(record, "message", limit)


def decode_messages(
    values: Sequence[bytes], now_ms: int, limit: int
) -> tuple[list[ReachMessage], list[tuple[bytes | None, bytes]]]:
    """The outbox records as messages, and a dead letter for each one that does not decode
    (only another producer writing to our outbox can cause that)."""
    messages: list[ReachMessage] = []
    letters: list[tuple[bytes | None, bytes]] = []
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


def _bad_outbox_record(exc: Exception, text: str, now_ms: int, limit: int) -> tuple[bytes | None, bytes]:
    record = {"reason": "bad_outbox_record", "detail": describe(exc), "failed_at": now_ms, "value": text}
    return None, dumps_within(record, "value", limit)


def register(app: Any, topic: Any, runtime: Runtime, channel: ChannelConfig) -> Any:
    async def produce(topic_name: str, records: Sequence[tuple[bytes | None, bytes]]) -> None:
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
