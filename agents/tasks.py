"""Task runner: due task runs -> audience pages -> messages on the outbox topics.

A leader-only timer, every ``task_poll_interval`` seconds (0.2 s: a run fires within
that of its time), starts a drive for each run due by now, on the runner's own loop
(:mod:`agents.taskloop`). A drive claims its run (:class:`models.taskruns.RunStore`: a
lease row, so with two workers each run fires once; renewed every ``task_tick_budget``
seconds and with each checkpoint) and expands it page by page: read the next keyset page
of the audience (the one after it is read meanwhile), plan its messages
(:mod:`agents.taskplan`) and pack them into outbox frames in a worker thread, wait for
the broker's acks, and only then move the run's checkpoint past the page. A crash
loses at most the page in flight: the run resumes from its checkpoint (after the
lease expires) and plans that page again with the same message ids, which the
channel agent's sent markers skip.

The task's status is read once per page: a pause or cancel stops the expansion at
the next page, and the channel agent's :mod:`agents.taskgate` stops what is already
on the outbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NamedTuple

import structlog

from agents.narrow import describe
from agents.records import value_limit
from agents.taskplan import PageEncoder, PartAssigner, RunPlan, page_allowance
from models.outbox import Record, pack
from models.taskruns import Recipient, RunStore, audience_page, new_owner
from models.tasks import FINAL_STATUSES, Audience, PlannedRun, ScheduleKind, TaskStatus, next_cron_run
from models.taskstore import SCHEDULER, RunRow, TaskRow, TaskStore, TransitionRefusedError
from reach.errors import DEPENDENCY_ERRORS
from reach.runtime import Setup

log = structlog.get_logger("reach.agents.tasks")

Produce = Callable[[str, Sequence[tuple[bytes | None, bytes]]], Awaitable[None]]
ACTOR = SCHEDULER
CLAIMS_PER_TICK = 16


class TaskRunner:
    def __init__(self, runtime: Setup, pool: Any, produce: Produce, owner: str | None = None) -> None:
        self.rt = runtime
        self.pool = pool
        self.produce = produce
        self.tasks = TaskStore(pool)
        self.runs = RunStore(pool, owner or new_owner())
        s = runtime.settings
        self.lease_ms = int(s.task_lease_seconds * 1000)
        self.limit = value_limit(s.kafka_max_message_bytes)
        self.slice = s.task_tick_budget
        self.driving: dict[tuple[int, int], asyncio.Task[int]] = {}
        self.sweeping: asyncio.Task[None] | None = None

    async def start_due(self) -> list[asyncio.Task[int]]:
        """Start driving every due run not driven here yet, and a sweep of ended tasks'
        members if none is under way; returns the drives started.

        Each drive is its own asyncio task, so a long expansion neither holds the timer nor
        keeps a run due a second later waiting for it."""
        started = []
        for key in await self.runs.due(self.rt.clock.now_ms(), CLAIMS_PER_TICK):
            if key not in self.driving:
                self.driving[key] = asyncio.create_task(self._drive(key))
                started.append(self.driving[key])
        if self.sweeping is None or self.sweeping.done():
            self.sweeping = asyncio.create_task(self._sweep())
        return started

    async def tick(self) -> int:
        """Start the due runs and wait for their drives and the sweep; returns the messages
        planned. (The worker's timer only starts them: :meth:`start_due`.)"""
        drives = await self.start_due()
        planned = sum(await asyncio.gather(*drives))
        if self.sweeping is not None:
            await self.sweeping
        return planned

    async def _sweep(self) -> None:
        """Delete the members an ended local-time task's parts left (a cancelled task's
        parts never finish, so never drop theirs), a lease after it ended."""
        try:
            ended_before = self.rt.clock.now_ms() - self.lease_ms
            for task_no in await self.runs.sweep_members(ended_before, CLAIMS_PER_TICK):
                log.info("tasks.members_swept", task_no=task_no)
        except DEPENDENCY_ERRORS as exc:  # the next tick sweeps again
            log.warning("tasks.sweep_interrupted", error=type(exc).__name__)

    async def _drive(self, key: tuple[int, int]) -> int:
        """Expand one run slice by slice (claim renewed each time) until it is planned, stops
        (paused, cancelled, lease lost) or waits for its rate; the next tick goes on."""
        planned = 0
        try:
            with PageReader(self.pool) as reader:  # kept across slices: see PageReader
                while True:
                    run = await self.runs.claim(*key, self.rt.clock.now_ms(), self.lease_ms)
                    if run is None:
                        return planned
                    count, more = await self._advance_or_fail(run, time.monotonic() + self.slice, reader)
                    planned += count
                    if not more:
                        return planned
        except DEPENDENCY_ERRORS as exc:  # the next tick claims the run again
            log.warning("tasks.drive_interrupted", task_no=key[0], run=key[1], error=type(exc).__name__)
            return planned
        finally:
            self.driving.pop(key, None)

    async def _advance_or_fail(self, run: RunRow, deadline: float, reader: PageReader) -> tuple[int, bool]:
        """A task that makes the runner raise (not a dependency outage) fails alone, with
        the reason in its transitions; it never stops the worker or the other tasks."""
        try:
            return await self.advance(run, deadline, reader)
        except DEPENDENCY_ERRORS:
            raise
        except Exception as exc:
            log.exception("tasks.run_failed", task_no=run.task_no, run=run.run_no)
            await self._fail(run.task_no, describe(exc))
            return 0, False

    async def _fail(self, task_no: int, reason: str) -> None:
        allowed = (TaskStatus.SCHEDULED, TaskStatus.RUNNING)
        with contextlib.suppress(TransitionRefusedError):
            await self.tasks.transition(
                task_no, allowed, TaskStatus.FAILED, ACTOR, self.rt.clock.now_ms(), reason
            )

    async def advance(self, run: RunRow, deadline: float, reader: PageReader) -> tuple[int, bool]:
        """Plan pages of ``run`` until ``deadline`` (at least one: a slice shorter than a page
        still moves), read through ``reader``; returns the messages planned and whether
        pages remain (the deadline cut it short)."""
        task = await self.tasks.get(run.task_no)
        if task is None or task.status in FINAL_STATUSES:
            return 0, False
        if task.status is TaskStatus.PAUSED:
            await self.runs.release(run)
            return 0, False
        if run.state == "pending":
            starting = await self._starting(task, run)
            if starting is None:  # a later part waits for the first to group the audience
                await self.runs.release(run)
                return 0, False
            run = await self.begin(task, starting)
        if run.state == "grouping":
            return 0, await self.group(task, run, deadline, reader)
        zone = self.rt.settings.task_default_zone
        plan = RunPlan.of(task.task_no, run.run_no, run.due_at, task.spec, zone, run.grouped)
        encoder = PageEncoder(plan, self.rt.rules.current, self.rt.choosers, self.rt.platforms)
        planned = 0
        source = Source(task.spec.audience, (run.task_no, run.run_no) if run.grouped else None)
        status = await self._status(task)
        while status is TaskStatus.RUNNING:
            step = await self.page(task, encoder, run, reader, source)
            if step is None:
                return planned, False
            run, count, status = step
            planned += count
            if time.monotonic() >= deadline:
                break
        if status is TaskStatus.PAUSED:
            await self.runs.release(run)
        return planned, status is TaskStatus.RUNNING

    async def _status(self, task: TaskRow) -> TaskStatus | None:
        return (await self.tasks.statuses([task.task_no])).get(task.task_no)

    async def _starting(self, task: TaskRow, run: RunRow) -> RunRow | None:
        """The pending run with the state it starts in: ``expanding``, or ``grouping`` for a
        local-time task's first part (it assigns the audience to the parts once, so each
        part reads only its own members). None for a later part whose first part has not
        grouped yet. A later part left ungrouped by a task started before grouping existed
        reads the whole audience and keeps its zone's recipients, as it did then."""
        if task.spec.schedule.kind is not ScheduleKind.LOCAL_TIME or run.grouped:
            return dataclasses.replace(run, state="expanding")
        if run.run_no == 1:
            return dataclasses.replace(run, state="grouping")
        first, grouped = await self.runs.grouping_of(run.task_no, run.run_no)
        if first in ("pending", "grouping"):
            return None
        return dataclasses.replace(run, state="expanding", grouped=grouped)

    async def begin(self, task: TaskRow, run: RunRow) -> RunRow:
        """Start a run in ``run.state``: store the next cron run first (a crash here must not
        lose it)."""
        now = self.rt.clock.now_ms()
        following = next_cron_run(task.spec.schedule, PlannedRun(run.run_no, run.due_at))
        if following is not None:
            await self.runs.add(task.task_no, following)
        await self.runs.start(run, now, run.state)
        if task.status is TaskStatus.SCHEDULED:
            await self._move(task, (TaskStatus.SCHEDULED,), TaskStatus.RUNNING, f"run {run.run_no} started")
        self.rt.metrics.task_runs.labels(task.spec.schedule.kind.value).inc()
        return dataclasses.replace(run, started_at=now)

    async def group(self, task: TaskRow, run: RunRow, deadline: float, reader: PageReader) -> bool:
        """Assign a local-time task's audience to its parts, page by page from the run's
        checkpoint, until ``deadline``; returns whether the drive should go on (the next
        claim finds the first part grouped and expanding, or more pages to group). Pause
        and cancel stop it at the next page, as they stop an expansion."""
        parts = PartAssigner(task.spec, self.rt.settings.task_default_zone)
        source = Source(task.spec.audience)
        while time.monotonic() < deadline:
            status = await self._status(task)
            if status is not TaskStatus.RUNNING:
                if status is TaskStatus.PAUSED:
                    await self.runs.release(run)
                return False
            page = await reader.read(source, run.checkpoint, self.rt.settings.task_page_size, ahead=True)
            if not page:
                return await self.runs.grouped(run)
            members = [(r.user_id, parts.part(r.timezone)) for r in page]
            now = self.rt.clock.now_ms()
            if not await self.runs.group(run, members, page[-1].user_id, now, self.lease_ms):
                return False
            run = dataclasses.replace(run, checkpoint=page[-1].user_id)
        return True

    async def page(
        self, task: TaskRow, encoder: PageEncoder, run: RunRow, reader: PageReader, source: Source
    ) -> tuple[RunRow, int, TaskStatus | None] | None:
        """Plan one page of a running task; returns the run advanced, the messages planned
        and the task's status for the next page (read while the broker acknowledges this
        one), or None when the run stops for this tick."""
        now = self.rt.clock.now_ms()
        size = page_allowance(
            task.spec.rate_per_minute, run.started_at, now, run.audience, self.rt.settings.task_page_size
        )
        if size == 0:
            return None
        recipients = await reader.read(source, run.checkpoint, size, ahead=not task.spec.rate_per_minute)
        if not recipients:
            await self.finish(task, run)
            return None
        # Off the loop, so the page read ahead and the acks progress while it is encoded.
        planned = await asyncio.to_thread(self._planned, encoder, recipients, now)
        _, status = await asyncio.gather(self._produce(planned.frames), self._status(task))
        last, reached, made = recipients[-1].user_id, planned.reached, planned.made
        if not await self.runs.checkpoint(run, last, reached, made, self.rt.clock.now_ms(), self.lease_ms):
            log.warning("tasks.lease_lost", task_no=task.task_no, run=run.run_no)
            return None
        for channel, count in planned.messages.items():
            self.rt.metrics.task_messages_planned.labels(channel).inc(count)
        advanced = dataclasses.replace(
            run, checkpoint=last, audience=run.audience + reached, planned=run.planned + made
        )
        return advanced, made, status

    def _planned(self, encoder: PageEncoder, recipients: list[Recipient], now: int) -> PlannedPage:
        """A page's messages packed into outbox frames (no I/O: runs off the loop)."""
        records, reached, _made = encoder.page(recipients, now)
        size = self.rt.settings.outbox_frame_messages
        frames = {channel: pack(found, size, self.limit) for channel, found in records.items()}
        return PlannedPage(frames, {channel: len(found) for channel, found in records.items()}, reached)

    async def _produce(self, frames: dict[str, list[Record]]) -> None:
        topic = self.rt.settings.outbox_topic
        await asyncio.gather(*(self.produce(topic(channel), found) for channel, found in frames.items()))

    async def finish(self, task: TaskRow, run: RunRow) -> None:
        now = self.rt.clock.now_ms()
        if not await self.runs.finish(run, now):
            return
        if run.grouped:
            await self.runs.drop_members(run)
        remaining = await self.runs.active(task.task_no)
        next_at = remaining[0] if remaining else None
        if remaining and task.spec.schedule.kind is not ScheduleKind.CRON:  # local time: parts to come
            await self.tasks.set_next_run(task.task_no, next_at, now)
        if not remaining:
            await self._move(task, (TaskStatus.RUNNING,), TaskStatus.COMPLETED, "every run planned", None)
        elif task.spec.schedule.kind is ScheduleKind.CRON:
            await self._move(
                task, (TaskStatus.RUNNING,), TaskStatus.SCHEDULED, f"run {run.run_no} planned", next_at
            )
        log.info("tasks.run_planned", task_no=task.task_no, run=run.run_no, planned=run.planned)

    async def _move(
        self, task: TaskRow, allowed: tuple[TaskStatus, ...], to: TaskStatus, reason: str,
        next_run_at: int | bool | None = False,
    ) -> None:  # fmt: skip
        try:
            await self.tasks.transition(
                task.task_no, allowed, to, ACTOR, self.rt.clock.now_ms(), reason, next_run_at
            )
        except TransitionRefusedError as exc:  # cancelled or paused meanwhile: theirs wins
            log.info("tasks.transition_skipped", task_no=task.task_no, to=to.value, status=str(exc.status))


@dataclasses.dataclass(frozen=True, slots=True)
class PlannedPage:
    """A page's outbox frames and messages per channel, and the recipients it reached."""

    frames: dict[str, list[Record]]
    messages: dict[str, int]
    reached: int

    @property
    def made(self) -> int:
        return sum(self.messages.values())


class Source(NamedTuple):
    """Where a run's pages come from: its audience, or a grouped part's members."""

    audience: Audience
    part: tuple[int, int] | None = None  # (task_no, run_no)


class PageReader:
    """Reads a drive's audience pages, the next one ahead while the caller plans, produces
    and checkpoints the current one, so the database's time overlaps the worker's. The page
    read ahead starts after the last recipient read and is used only if the caller asks for
    exactly it next (same source, the checkpoint moved there). It outlives the drive's
    slices (a slice, shorter than a page's round trip, used to drop it at its end and wait
    for its next page whole); it is dropped on leaving the block: nothing about it is
    stored, so a crash loses no more than before."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self.ahead: tuple[tuple[Source, str, int], asyncio.Task[list[Recipient]]] | None = None

    async def read(self, source: Source, after: str, size: int, ahead: bool) -> list[Recipient]:
        """The page of ``size`` recipients after ``after``; with ``ahead``, start the next."""
        page = await self._take((source, after, size))
        if ahead and len(page) == size:
            key = (source, page[-1].user_id, size)
            self.ahead = key, asyncio.create_task(self._read(key))
        return page

    async def _take(self, key: tuple[Source, str, int]) -> list[Recipient]:
        found, self.ahead = self.ahead, None
        if found is not None and found[0] == key:
            return await found[1]
        if found is not None:
            _drop(found[1])
        return await self._read(key)

    async def _read(self, key: tuple[Source, str, int]) -> list[Recipient]:
        (audience, part), after, size = key
        return await audience_page(self.pool, audience, after, size, part)

    def __enter__(self) -> PageReader:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.ahead is not None:
            _drop(self.ahead[1])
            self.ahead = None


def _drop(read: asyncio.Task[list[Recipient]]) -> None:
    """Stop a page read ahead that is not needed; a read that already failed has its error
    retrieved here (the next read meets the same outage and reports it)."""
    if read.done():
        if not read.cancelled():
            read.exception()
    else:
        read.cancel()


async def export_task_gauges(runtime: Setup, pool: Any) -> None:
    """``reach_tasks{status, schedule}``: one grouped count over the tasks index."""
    async with pool.acquire() as conn, conn.cursor() as cur:
        await cur.execute("SELECT status, schedule_kind, COUNT(*) FROM tasks GROUP BY status, schedule_kind")
        rows = await cur.fetchall()
    seen = {(status.value, kind.value): 0 for status in TaskStatus for kind in ScheduleKind}
    for status, kind, count in rows:
        seen[(status, kind)] = int(count)
    for (status, kind), count in seen.items():
        runtime.metrics.tasks.labels(status, kind).set(count)
