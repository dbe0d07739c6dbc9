"""The task runner in-process on the real MariaDB and Kafka, with an injected clock.

The runner is driven tick by tick: the test moves a :class:`ManualClock` to a moment
and calls ``tick()``, so schedules hours or days apart (time zones, cron) are tested
in a second. Every frame goes to the real outbox topic through aiokafka; the rig also
keeps the messages it produced, in order, to say what each tick planned.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from agents.tasks import TaskRunner
from channels.config import load_channels
from models.outbox import unpack
from models.profiles import UserProfile
from models.storage import ProfileStore, create_pool, migrate
from models.tasks import TaskSpec, ValidationContext, first_runs, validate_task
from models.taskstore import TaskStore
from reach.clock import ManualClock
from reach.runtime import Setup
from reach.settings import Settings
from streams.topics import ensure_topics
from tests.integration.conftest import channels_yaml
from tests.integration.harness import Db, make_settings, read_topic_until, unique_run_id


class SimulatedCrashError(BaseException):
    """Raised by the produce hook to stop a runner the way a kill would: not an Exception,
    so the runner's per-task error handling does not see it."""


@dataclasses.dataclass
class RunnerRig:
    settings: Settings
    clock: ManualClock
    runtime: Setup  # the runner reads only configuration; the rig brings its pool
    pool: Any
    producer: AIOKafkaProducer
    produced: list[dict[str, Any]]
    crash_after_frames: int | None = None
    _frames: int = 0

    @classmethod
    async def open(cls, tmp: Path, start_ms: int, **overrides: Any) -> RunnerRig:
        settings = make_settings(tmp, unique_run_id(), channels_yaml(9), **overrides)
        channels = load_channels(settings.channels_file, {"REACH_SMTP_PASSWORD": "x"})
        await migrate(settings)
        await ensure_topics(settings, channels.channels)
        clock = ManualClock(start_ms)
        runtime = Setup.load(settings, channels, clock)
        pool = await create_pool(settings)
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=5)
        await producer.start()
        return cls(settings, clock, runtime, pool, producer, [])

    async def close(self) -> None:
        await self.producer.stop()
        self.pool.close()
        await self.pool.wait_closed()
        Db(self.settings).drop()

    def runner(self, owner: str | None = None, pool: Any = None) -> TaskRunner:
        return TaskRunner(self.runtime, pool or self.pool, self.produce, owner)

    async def produce(self, topic: str, records: Sequence[tuple[bytes | None, bytes]]) -> None:
        for _key, _value in records:
            if self.crash_after_frames is not None and self._frames >= self.crash_after_frames:
                raise SimulatedCrashError(f"crashed after {self._frames} frames")
            self._frames += 1
        futures = [await self.producer.send(topic, value, key=key) for key, value in records]
        for future in futures:
            await future
        self.produced += [m for _key, value in records for m in unpack(value)]

    def at(self, ms: int) -> None:
        """Move the clock to ``ms`` (forward only, like time)."""
        assert ms >= self.clock.now_ms(), "the clock only moves forward"
        self.clock.advance(ms - self.clock.now_ms())

    async def profiles(self, profiles: Sequence[UserProfile]) -> None:
        for start in range(0, len(profiles), 500):
            await ProfileStore(self.pool).apply(profiles[start : start + 500], self.clock.now_ms())

    def spec(self, body: dict[str, Any]) -> TaskSpec:
        context = ValidationContext(
            self.clock.now_ms(),
            list(self.runtime.channels.channels),
            self.runtime.rules.current.rulebook.templates,
            self.settings.category_names,
        )
        return validate_task(body, context)

    async def create(self, body: dict[str, Any]) -> int:
        spec = self.spec(body)
        now = self.clock.now_ms()
        task_no, _ = await TaskStore(self.pool).create(spec, first_runs(spec.schedule, now), "test", now)
        return task_no

    def outbox(self, channel: str, count: int) -> list[dict[str, Any]]:
        """The messages on the channel's outbox topic, read from Kafka until ``count``."""
        records = read_topic_until(
            self.settings,
            self.settings.outbox_topic(channel),
            lambda got: sum(len(unpack(v)) for _k, v in got) >= count,
        )
        return [m for _key, value in records for m in orjson.loads(value)]


def task_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "test task",
        "category": "marketing",
        "audience": {"segments": ["task-seg"]},
        "content": {
            "title": "Hello {{ attributes.first_name | default('you') }}",
            "text": "run {{ task.run }}",
        },
        "channels": ["inbox"],
        "schedule": {"kind": "now"},
    }
    body.update(overrides)
    return body
