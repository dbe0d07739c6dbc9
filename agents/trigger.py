"""Trigger agent: behaviour events -> rule matches -> reach messages on the outbox topics.

Each event is planned on its own: one that breaks the contract, or whose
planning raises for any reason (``plan_error``), or that would make a message
too large for its topic (``message_too_large``), goes to the dead-letter topic
with its reason while the rest of the batch carries on. Nothing an event
holds can stop the agent. A second copy of an event in the same batch (its
messages' ids already planned) makes nothing: the first copy is sent, as when
the copy arrives in a later batch or the events are replayed.

Messages of a trigger with ``delay`` are not put on the outbox: they go to the
deferred queue (Redis), due at their ``due_ts``, and the leader's deferred pump
moves them to the outbox then, like throttled and retried messages. One
durable scheduler for everything that waits: a second one would need its own
leader election, durability and tests, and the queue already survives worker
restarts (Redis with its append-only file) and fires once with two workers
(the pump runs on the leader; the sent markers absorb a republish). The
cancel bookkeeping of ``cancel_if`` is written in the same step, in event
order (:mod:`agents.cancels`). All of it is written before the batch's
offsets may be committed.

An event that reports its app (``device.platform`` and ``device.app_version``) updates
the user's profile when the version changed (:func:`models.profiles.observe_version`):
the batch's later events see it at once, MariaDB (``user_app_versions``, which task
audiences read) is written before the outbox, and the profile table last, merged into
whatever profile it holds then (the segments agent may have replaced it meanwhile). A
crash in between repeats the observation on the replay.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import structlog

from agents.cancels import cancel_ops
from agents.guard import run_step
from agents.narrow import describe
from agents.plan import event_age_seconds, plan_event_fully
from agents.produce import produce_all
from agents.records import dumps_within, value_limit
from models.cancel_markers import CancelOp
from models.events import Event, EventError, parse_event
from models.outbox import pack
from models.profiles import UserProfile, observe_version, platform_name, with_versions_of
from models.storage import VersionRow
from reach.runtime import Runtime, Setup
from rules.engine import RuleEngine

log = structlog.get_logger("reach.agents.trigger")

#: (channel, key, value) of one outbox record
OutboxRecord = tuple[str, bytes, bytes]
DeadLetter = tuple[bytes | None, bytes]


def dead_letter(message: Any, error: EventError, limit: int = 1 << 20) -> bytes:
    """The dead-letter record: the original bytes (as text) with where they came from and why."""
    raw = message.value
    record = {
        "reason": error.reason,
        "detail": error.detail,
        "topic": message.topic,
        "partition": message.partition,
        "offset": message.offset,
        "value": raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw,
    }
    return dumps_within(record, "value", limit)


def ingested_ms(record: Any, now_ms: int) -> int:
    """The events topic's time of ``record`` (the broker's append time: the topic is created
    with LogAppendTime), or ``now_ms`` when the record carries none."""
    timestamp = getattr(record, "timestamp", None)
    return int(timestamp * 1000) if timestamp else now_ms


def check_key(key: bytes | None, user_id: str) -> None:
    """Raise ``key_mismatch`` unless the record's key is its user id: the profile table is
    co-partitioned by user, so an event keyed otherwise would be planned without its profile
    (or with another user's state) once there is more than one worker."""
    if key != user_id.encode():
        shown = "no key" if key is None else f"a key of {len(key)} bytes"
        raise EventError("key_mismatch", f"the record has {shown}; events are keyed by their user_id")


def as_event_error(exc: Exception) -> EventError:
    """Why an event could not be planned: its contract error, or ``plan_error``."""
    return exc if isinstance(exc, EventError) else EventError("plan_error", describe(exc))


@dataclasses.dataclass
class PlannedBatch:
    """What a batch of events makes, to be written before its offsets are committed."""

    records: list[OutboxRecord] = dataclasses.field(default_factory=list)
    dead: list[DeadLetter] = dataclasses.field(default_factory=list)
    delayed: list[tuple[int, bytes, str]] = dataclasses.field(default_factory=list)  # due, value, channel
    cancel_ops: list[CancelOp] = dataclasses.field(default_factory=list)
    #: message ids planned so far: a copy of an event (same event_id) in the same batch makes
    #: them again, and the first copy is the one sent, as when the copy comes in a later batch
    planned_ids: set[str] = dataclasses.field(default_factory=set)
    #: profiles whose app versions this batch changed, by user id (the newest of each)
    observed: dict[str, UserProfile] = dataclasses.field(default_factory=dict)
    versions: list[VersionRow] = dataclasses.field(default_factory=list)


class TriggerPlanner:
    """The pure part: a batch of events planned with the rules, the profile table and the
    clock, nothing opened (tested without Kafka, Redis or MariaDB)."""

    def __init__(self, setup: Setup, profiles: Any) -> None:
        self.rt = setup
        self.profiles = profiles
        self.limit = value_limit(setup.settings.kafka_max_message_bytes)
        self.platforms = setup.platforms

    def plan(self, events: Sequence[Any]) -> PlannedBatch:
        """The outbox records, delayed messages and cancel bookkeeping of a batch (in event
        order), and a dead letter per event that could not be planned."""
        engine = self.rt.rules.current
        now = self.rt.clock.now_ms()
        unparsable = engine.unparsable_versions
        batch = PlannedBatch()
        for event in events:
            try:
                self._plan_one(event.message, engine, now, batch)
            except Exception as exc:  # whatever one event does, it fails alone
                error = as_event_error(exc)
                if error.reason == "plan_error":
                    log.warning("trigger.plan_error", error=error.detail[:120])
                self.rt.metrics.events_dead_lettered.labels(error.reason).inc()
                batch.dead.append((event.message.key, dead_letter(event.message, error, self.limit)))
        self.rt.metrics.versions_unparsable.inc(max(0, engine.unparsable_versions - unparsable))
        return batch

    def _plan_one(self, record: Any, engine: RuleEngine, now: int, batch: PlannedBatch) -> None:
        parsed = parse_event(record.value, self.rt.settings.event_max_depth)
        check_key(record.key, parsed.user_id)
        ingested = ingested_ms(record, now)
        self.rt.metrics.event_age.observe(event_age_seconds(parsed, ingested))
        profile = self._observe(parsed, batch)
        zone = self.rt.settings.default_timezone
        plan = plan_event_fully(
            parsed, profile, engine, self.rt.choosers, now, self._unroutable, ingested, self._unmatched, zone,
            self.platforms,
        )  # fmt: skip
        encoded = [(m, m.to_bytes()) for m in plan.messages if m.message_id not in batch.planned_ids]
        for message, value in encoded:
            if len(value) > self.limit:
                detail = f"its {message.channel} message is {len(value)} bytes; the outbox takes {self.limit}"
                raise EventError("message_too_large", detail)
        for message, value in encoded:  # only once the whole event is known to fit
            batch.planned_ids.add(message.message_id)
            if message.due_ts:
                batch.delayed.append((message.due_ts, value, message.channel))
            else:
                batch.records.append((message.channel, message.user_id.encode(), value))
        batch.cancel_ops += cancel_ops(parsed.user_id, record.offset, plan.cancels, plan.messages, now)

    def _unmatched(self) -> None:
        self.rt.metrics.events_unmatched.inc()

    def _unroutable(self, _rule_id: str, channel: str) -> None:
        self.rt.metrics.messages_unroutable.labels(channel).inc()

    def _profile(self, user_id: str) -> UserProfile | None:
        raw = self.profiles.get(user_id.encode())
        return UserProfile.from_bytes(raw) if raw else None

    def _observe(self, event: Event, batch: PlannedBatch) -> UserProfile | None:
        """The user's profile as this event leaves it: with the app version it reports."""
        profile = batch.observed.get(event.user_id) or self._profile(event.user_id)
        platform = platform_name(event.platform)
        updated = observe_version(profile, event.user_id, platform, event.device.get("app_version"), event.ts)
        if updated is None:
            return profile
        batch.observed[event.user_id] = updated
        batch.versions.append((event.user_id, platform, updated.app_versions[platform].version, event.ts))
        return updated

    def remember(self, observed: dict[str, UserProfile]) -> None:
        """Put the batch's app versions into the profile table, into the profile it holds now."""
        for user_id, profile in observed.items():
            key = user_id.encode()
            raw = self.profiles.get(key)
            current = UserProfile.from_bytes(raw) if raw else UserProfile(user_id)
            self.profiles[key] = with_versions_of(current, profile).to_bytes()


class TriggerStep:
    def __init__(self, app: Any, runtime: Runtime, profiles: Any) -> None:
        self.app = app
        self.rt = runtime
        self.planner = TriggerPlanner(runtime, profiles)
        self.limit = self.planner.limit

    def plan(self, events: Sequence[Any]) -> PlannedBatch:
        return self.planner.plan(events)

    async def send(self, batch: PlannedBatch) -> None:
        if batch.versions:
            await self.rt.profiles.record_versions(batch.versions)
        await self._schedule(batch)
        settings = self.rt.settings
        by_channel: dict[str, list[tuple[bytes | None, bytes]]] = {}
        for channel, key, value in batch.records:
            by_channel.setdefault(channel, []).append((key, value))
        for channel, outbox in by_channel.items():
            self.rt.metrics.rule_matches.labels(channel).inc(len(outbox))
            frames = pack(outbox, settings.outbox_frame_messages, self.limit)
            await produce_all(self.app, settings.outbox_topic(channel), frames)
        await produce_all(self.app, settings.dead_letter_topic, batch.dead)
        self.planner.remember(batch.observed)

    async def _schedule(self, batch: PlannedBatch) -> None:
        """Cancel bookkeeping first, then the delayed messages: both before the next batch,
        which is all the order needs (a later event is in a later batch or later in this one)."""
        if not batch.cancel_ops and not batch.delayed:
            return
        cancelled = await self.rt.cancel_markers.apply(batch.cancel_ops)
        self.rt.metrics.cancels_recorded.inc(cancelled)
        await self.rt.deferred.add([(due, value) for due, value, _ in batch.delayed])
        for _, _, channel in batch.delayed:
            self.rt.metrics.rule_matches.labels(channel).inc()
            self.rt.metrics.messages_delayed.labels(channel).inc()


def register(app: Any, topic: Any, runtime: Runtime, profiles: Any) -> Any:
    step = TriggerStep(app, runtime, profiles)
    settings = runtime.settings

    async def trigger(stream: Any) -> None:
        async for events in stream.take_events(settings.batch_size, within=settings.batch_within):
            runtime.metrics.events_consumed.inc(len(events))
            batch = step.plan(events)
            await run_step("trigger", functools.partial(step.send, batch))

    return app.agent(topic, name="reach.trigger")(trigger)
