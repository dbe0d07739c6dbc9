"""Segments agent: user profiles (segments, contact) -> the profile table and MariaDB.

The table is keyed by the user id's bytes and uses the producer's partitioner,
so its changelog partitions match the events topic's: the trigger agent finds
a user's profile on the worker that consumes that user's events.
"""

from __future__ import annotations

import functools
from typing import Any

import structlog

from agents.guard import run_step
from models.events import EventError
from models.profiles import UserProfile, parse_profile
from reach.runtime import Runtime

log = structlog.get_logger("reach.agents.segments")


def register(app: Any, topic: Any, runtime: Runtime, profiles: Any) -> Any:
    settings = runtime.settings

    async def segments(stream: Any) -> None:
        async for values in stream.take(settings.batch_size, within=settings.batch_within):
            parsed: list[UserProfile] = []
            for value in values:
                try:
                    parsed.append(parse_profile(value))
                except EventError as exc:
                    runtime.metrics.events_dead_lettered.labels(f"profile_{exc.reason}").inc()
                    log.warning("segments.bad_profile", reason=exc.reason, detail=exc.detail)
            for profile in parsed:
                key = profile.user_id.encode()
                if profile.deleted:
                    profiles.pop(key, None)
                else:
                    profiles[key] = profile.to_bytes()
            assert runtime.profiles is not None
            store = runtime.profiles
            await run_step("segments", functools.partial(store.apply, parsed, runtime.clock.now_ms()))

    return app.agent(topic, name="reach.segments")(segments)
