"""Segments agent: user profiles (segments, contact) -> the profile table and MariaDB.

The table is keyed by the user id's bytes and uses the producer's partitioner,
so its changelog partitions match the events topic's: the trigger agent finds
a user's profile on the worker that consumes that user's events.

Each profile stands alone: one that does not parse (``profile_<reason>``, or
``profile_error`` for anything else it raises), or that the database refuses
(``profile_refused``: a segment name longer than its column, say), goes to the
events dead-letter topic with its reason, and the others are stored. A refused
profile does not enter the table either, so routing and MariaDB agree.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import structlog

from agents.guard import run_step
from agents.narrow import describe, narrow
from agents.produce import produce_all
from agents.records import value_limit
from agents.trigger import DeadLetter, dead_letter
from models.events import EventError
from models.profiles import UserProfile, parse_profile, with_versions_of
from reach.runtime import Runtime

log = structlog.get_logger("reach.agents.segments")


@dataclasses.dataclass(frozen=True, slots=True)
class Parsed:
    profile: UserProfile
    message: Any  # the Kafka record it came from, for its dead letter


def profile_error(exc: Exception) -> EventError:
    """Why a profile record could not be read: ``profile_<reason>`` or ``profile_error``."""
    if isinstance(exc, EventError):
        return EventError(f"profile_{exc.reason}", exc.detail)
    return EventError("profile_error", describe(exc))


class SegmentsStep:
    def __init__(self, app: Any, runtime: Runtime, profiles: Any) -> None:
        self.app = app
        self.rt = runtime
        self.profiles = profiles
        self.limit = value_limit(runtime.settings.kafka_max_message_bytes)

    def parse(self, events: Sequence[Any]) -> tuple[list[Parsed], list[DeadLetter]]:
        parsed, dead = [], []
        for event in events:
            try:
                parsed.append(Parsed(parse_profile(event.message.value), event.message))
            except Exception as exc:  # one record fails alone, whatever it holds
                dead.append(self._dead(event.message, profile_error(exc)))
        return parsed, dead

    async def store(self, parsed: list[Parsed], dead: list[DeadLetter]) -> None:
        """Persist, then update the table with what the database took; repeatable."""
        store, now = self.rt.profiles, self.rt.clock.now_ms()

        async def apply(items: Sequence[Parsed]) -> None:
            await store.apply([p.profile for p in items], now)

        refused = await narrow(parsed, apply)
        refused_ids = {id(item) for item, _ in refused}
        for item in parsed:
            if id(item) not in refused_ids:
                self._remember(item.profile)
        letters = [
            self._dead(item.message, EventError("profile_refused", describe(exc))) for item, exc in refused
        ]
        await produce_all(self.app, self.rt.settings.dead_letter_topic, dead + letters)

    def _remember(self, profile: UserProfile) -> None:
        """Replace the table's profile; the app versions events reported stay (the record
        does not carry them)."""
        key = profile.user_id.encode()
        if profile.deleted:
            self.profiles.pop(key, None)
            return
        raw = self.profiles.get(key)
        previous = UserProfile.from_bytes(raw) if raw else None
        self.profiles[key] = with_versions_of(profile, previous).to_bytes()

    def _dead(self, message: Any, error: EventError) -> DeadLetter:
        self.rt.metrics.events_dead_lettered.labels(error.reason).inc()
        log.warning("segments.bad_profile", reason=error.reason, detail=error.detail[:120])
        return message.key, dead_letter(message, error, self.limit)


def register(app: Any, topic: Any, runtime: Runtime, profiles: Any) -> Any:
    step = SegmentsStep(app, runtime, profiles)
    settings = runtime.settings

    async def segments(stream: Any) -> None:
        async for events in stream.take_events(settings.batch_size, within=settings.batch_within):
            parsed, dead = step.parse(events)
            await run_step("segments", functools.partial(step.store, parsed, dead))

    return app.agent(topic, name="reach.segments")(segments)
