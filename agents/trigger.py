"""Trigger agent: behaviour events -> rule matches -> reach messages on the outbox topics.

Each event is planned on its own: one that breaks the contract, or whose
planning raises for any reason (``plan_error``), or that would make a message
too large for its topic (``message_too_large``), goes to the dead-letter topic
with its reason while the rest of the batch carries on. Nothing an event
holds can stop the agent.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import structlog

from agents.guard import run_step
from agents.narrow import describe
from agents.plan import plan_event
from agents.produce import produce_all
from agents.records import dumps_within, value_limit
from models.events import EventError, parse_event
from models.outbox import pack
from models.profiles import UserProfile
from reach.runtime import Runtime
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


class TriggerStep:
    def __init__(self, app: Any, runtime: Runtime, profiles: Any) -> None:
        self.app = app
        self.rt = runtime
        self.profiles = profiles
        self.limit = value_limit(runtime.settings.kafka_max_message_bytes)

    def plan(self, events: Sequence[Any]) -> tuple[list[OutboxRecord], list[DeadLetter]]:
        """The outbox records of a batch, and a dead letter per event that could not be planned."""
        engine = self.rt.rules.current
        now = self.rt.clock.now_ms()
        records: list[OutboxRecord] = []
        dead: list[DeadLetter] = []
        for event in events:
            try:
                records += self._plan_one(event.message.key, event.message.value, engine, now)
            except Exception as exc:  # whatever one event does, it fails alone
                error = as_event_error(exc)
                if error.reason == "plan_error":
                    log.warning("trigger.plan_error", error=error.detail[:120])
                self.rt.metrics.events_dead_lettered.labels(error.reason).inc()
                dead.append((event.message.key, dead_letter(event.message, error, self.limit)))
        return records, dead

    def _plan_one(self, key: bytes | None, raw: bytes, engine: RuleEngine, now: int) -> list[OutboxRecord]:
        parsed = parse_event(raw, self.rt.settings.event_max_depth)
        check_key(key, parsed.user_id)
        profile = self._profile(parsed.user_id)
        messages = plan_event(parsed, profile, engine, self.rt.choosers, now, self._unroutable)
        records = [(m.channel, m.user_id.encode(), m.to_bytes()) for m in messages]
        for channel, _, value in records:
            if len(value) > self.limit:
                detail = f"its {channel} message is {len(value)} bytes; the outbox takes {self.limit}"
                raise EventError("message_too_large", detail)
        return records

    def _unroutable(self, _rule_id: str, channel: str) -> None:
        self.rt.metrics.messages_unroutable.labels(channel).inc()

    def _profile(self, user_id: str) -> UserProfile | None:
        raw = self.profiles.get(user_id.encode())
        return UserProfile.from_bytes(raw) if raw else None

    async def send(self, records: list[OutboxRecord], dead: list[DeadLetter]) -> None:
        settings = self.rt.settings
        by_channel: dict[str, list[tuple[bytes | None, bytes]]] = {}
        for channel, key, value in records:
            by_channel.setdefault(channel, []).append((key, value))
        for channel, outbox in by_channel.items():
            self.rt.metrics.rule_matches.labels(channel).inc(len(outbox))
            frames = pack(outbox, settings.outbox_frame_messages, self.limit)
            await produce_all(self.app, settings.outbox_topic(channel), frames)
        await produce_all(self.app, settings.dead_letter_topic, dead)


def register(app: Any, topic: Any, runtime: Runtime, profiles: Any) -> Any:
    step = TriggerStep(app, runtime, profiles)
    settings = runtime.settings

    async def trigger(stream: Any) -> None:
        async for events in stream.take_events(settings.batch_size, within=settings.batch_within):
            runtime.metrics.events_consumed.inc(len(events))
            records, dead = step.plan(events)
            await run_step("trigger", functools.partial(step.send, records, dead))

    return app.agent(topic, name="reach.trigger")(trigger)
