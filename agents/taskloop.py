"""The task runner on its own thread and event loop, apart from the channel agents.

On the worker's loop, every step of every page of an expansion (the page read, the
broker's acks, the checkpoint) waited for a turn behind the channel agents' batches,
which deliver the first pages of the task while the rest is still being planned: a
million-member expansion spent most of its time waiting (profiled). Here the runner has
its own loop in its own thread, its own MariaDB pool, and writes the outbox through
confluent-kafka (:class:`reach.producer.AckedProducer`), whose batching and network
work run outside the GIL. Both loops still share the interpreter: a step now waits at
most the interpreter's switch interval for it.

Nothing else moves: the leader-only timer on the worker's loop asks this loop to start
the due drives, and the runner's guarantees (lease, checkpoint after the acks, status
per page) are the runner's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import structlog
import uvloop

from agents.guard import run_step
from agents.tasks import TaskRunner, export_task_gauges
from models.storage import close_pool, create_pool
from reach.producer import AckedProducer
from reach.runtime import Runtime, Setup

log = structlog.get_logger("reach.agents.taskloop")

T = TypeVar("T")
POOL_SIZE = 4  # a page read ahead, the status read and a checkpoint at once, and a spare
STOP_TIMEOUT = 10.0  # seconds a shutdown waits for the drives to stop and the acks to arrive


class RunnerLoop:
    """A :class:`TaskRunner` on a thread of its own, opened at the first tick."""

    def __init__(self, runtime: Setup) -> None:
        self.runtime = runtime
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="reach-tasks", daemon=True)
        self.runner: TaskRunner | None = None
        self.pool: Any = None
        self.producer: AckedProducer | None = None

    async def start_due(self) -> None:
        """Called on the worker's loop: start the due drives on the runner's (raises what
        opening the runner's pool raised, so the caller retries)."""
        if not self.thread.is_alive():
            self.thread.start()
        await self._on_runner_loop(self._start_due())

    async def _on_runner_loop(self, step: Coroutine[Any, Any, T]) -> T:
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(step, self.loop))

    async def _start_due(self) -> None:
        if self.runner is None:
            self.runner = await self._open()
        await self.runner.start_due()

    async def _open(self) -> TaskRunner:
        s = self.runtime.settings
        self.pool = await create_pool(s, maxsize=POOL_SIZE)
        # An ack that takes longer than most of the lease would let another worker take the
        # run over while this one still writes its page.
        timeout = s.task_lease_seconds * 0.6
        self.producer = AckedProducer(s.kafka_bootstrap, s.kafka_max_message_bytes, timeout)
        return TaskRunner(self.runtime, self.pool, self.producer.send_all)

    async def stop(self, *_args: Any, **_kwargs: Any) -> None:
        """Stop the drives (their runs resume from their checkpoints), flush and close;
        a receiver of the app's ``on_before_shutdown``."""
        if not self.thread.is_alive():
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STOP_TIMEOUT):
                await self._on_runner_loop(self._close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        await asyncio.to_thread(self.thread.join, STOP_TIMEOUT)

    async def _close(self) -> None:
        if self.runner is not None:
            drives = [
                *self.runner.driving.values(),
                *([self.runner.sweeping] if self.runner.sweeping else []),
            ]
            for drive in drives:
                drive.cancel()
            await asyncio.gather(*drives, return_exceptions=True)
        if self.producer is not None:
            await asyncio.to_thread(self.producer.close)
        if self.pool is not None:
            await close_pool(self.pool)


def register(app: Any, runtime: Runtime) -> RunnerLoop:
    """The leader-only timers: due runs every ``task_poll_interval``, the task gauges."""
    runner = RunnerLoop(runtime)

    async def run_tasks() -> None:
        await run_step("tasks", runner.start_due)

    async def task_gauges() -> None:
        await run_step("tasks.gauges", lambda: export_task_gauges(runtime, runtime.mysql_pool))

    app.timer(interval=runtime.settings.task_poll_interval, on_leader=True)(run_tasks)
    app.timer(interval=10.0, on_leader=True)(task_gauges)
    app.on_before_shutdown.connect(runner.stop)
    return runner
