"""Trigger agent: behaviour events -> rule matches -> reach messages on the outbox topics.

Malformed events go to the dead-letter topic with their reason; they never
stop the agent.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import orjson
import structlog

from agents.guard import run_step
from agents.plan import plan_event
from agents.produce import produce_all
from models.events import EventError, parse_event
from models.messages import ReachMessage
from models.profiles import UserProfile
from reach.runtime import Runtime

log = structlog.get_logger("reach.agents.trigger")


def dead_letter(message: Any, error: EventError) -> bytes:
    """The dead-letter record: the original bytes (as text) with where they came from and why."""
    raw = message.value
    return orjson.dumps(
        {
            "reason": error.reason,
            "detail": error.detail,
            "topic": message.topic,
            "partition": message.partition,
            "offset": message.offset,
            "value": raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw,
        }
    )


class TriggerStep:
    def __init__(self, app: Any, runtime: Runtime, profiles: Any) -> None:
        self.app = app
        self.rt = runtime
        self.profiles = profiles

    def plan(self, events: Sequence[Any]) -> tuple[list[ReachMessage], list[tuple[bytes | None, bytes]]]:
        engine = self.rt.rules.current
        now = self.rt.clock.now_ms()
        messages: list[ReachMessage] = []
        dead: list[tuple[bytes | None, bytes]] = []
        for event in events:
            try:
                parsed = parse_event(event.message.value)
            except EventError as exc:
                self.rt.metrics.events_dead_lettered.labels(exc.reason).inc()
                dead.append((event.message.key, dead_letter(event.message, exc)))
                continue
            messages += plan_event(
                parsed, self._profile(parsed.user_id), engine, self.rt.choosers, now, self._unroutable
            )
        return messages, dead

    def _unroutable(self, _rule_id: str, channel: str) -> None:
        self.rt.metrics.messages_unroutable.labels(channel).inc()

    def _profile(self, user_id: str) -> UserProfile | None:
        raw = self.profiles.get(user_id.encode())
        return UserProfile.from_bytes(raw) if raw else None

    async def send(self, messages: list[ReachMessage], dead: list[tuple[bytes | None, bytes]]) -> None:
        settings = self.rt.settings
        by_channel: dict[str, list[tuple[bytes | None, bytes]]] = {}
        for m in messages:
            by_channel.setdefault(m.channel, []).append((m.user_id.encode(), m.to_bytes()))
            self.rt.metrics.rule_matches.labels(m.channel).inc()
        for channel, records in by_channel.items():
            await produce_all(self.app, settings.outbox_topic(channel), records)
        await produce_all(self.app, settings.dead_letter_topic, dead)


def register(app: Any, topic: Any, runtime: Runtime, profiles: Any) -> Any:
    step = TriggerStep(app, runtime, profiles)
    settings = runtime.settings

    async def trigger(stream: Any) -> None:
        async for events in stream.take_events(settings.batch_size, within=settings.batch_within):
            runtime.metrics.events_consumed.inc(len(events))
            messages, dead = step.plan(events)
            await run_step("trigger", functools.partial(step.send, messages, dead))

    return app.agent(topic, name="reach.trigger")(trigger)
