"""Reach tasks in MariaDB / TiDB: tasks, their transitions, runs, counts, idempotency keys.

Every status change goes through :meth:`TaskStore.transition`: a conditional UPDATE
(``WHERE status IN (allowed)``) and its transition row in one transaction, so two
callers racing (cancel against the scheduler completing the task) cannot both win.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Iterable, Sequence
from typing import Any

import pymysql

from models.audit import AuditEntry, record_on
from models.storage import in_transaction
from models.tasks import FINAL_STATUSES, PlannedRun, ScheduleKind, TaskSpec, TaskStatus

RETRYABLE = frozenset({1213, 9007})  # deadlock, TiDB write conflict
TRIES = 3
TASK_NO_LIMIT = 2**53  # JSON numbers stay exact below it
# A key whose task was never written (the API died mid-creation) is taken over after this.
STALE_REQUEST_MS = 60_000
# The actor of the worker's own transitions; every other actor is an operator, audited.
SCHEDULER = "scheduler"

TASK_COLUMNS = (
    "task_no, name, comment, category, schedule_kind, spec, status, next_run_at, "
    "created_by, created_at, updated_at"
)


@dataclasses.dataclass(frozen=True, slots=True)
class TaskRow:
    task_no: int
    name: str
    comment: str
    category: str
    schedule_kind: str
    spec: TaskSpec
    status: TaskStatus
    next_run_at: int | None
    created_by: str
    created_at: int
    updated_at: int

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> TaskRow:
        return cls(
            int(row[0]), row[1], row[2], row[3], row[4], TaskSpec.from_json(row[5]), TaskStatus(row[6]),
            None if row[7] is None else int(row[7]), row[8], int(row[9]), int(row[10]),
        )  # fmt: skip


@dataclasses.dataclass(frozen=True, slots=True)
class RunRow:
    task_no: int
    run_no: int
    due_at: int
    state: str
    checkpoint: str
    audience: int
    planned: int
    started_at: int
    finished_at: int
    grouped: bool = False  # a local-time part reading its task_run_members (models/taskruns.py)

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> RunRow:
        task_no, run_no, due_at, state, checkpoint, audience, planned, started_at, finished_at, grouped = row
        return cls(int(task_no), int(run_no), int(due_at), state, checkpoint, int(audience), int(planned),
                   int(started_at), int(finished_at), bool(grouped))  # fmt: skip


RUN_COLUMNS = (
    "task_no, run_no, due_at, state, checkpoint, audience, planned, started_at, finished_at, grouped"
)


@dataclasses.dataclass(frozen=True, slots=True)
class Transition:
    at: int
    from_status: str
    to_status: str
    actor: str
    reason: str


class IdempotencyConflictError(Exception):
    """The Idempotency-Key was used with another body."""


class CreationInProgressError(Exception):
    """A request with this Idempotency-Key is still creating its task."""


class TransitionRefusedError(Exception):
    """The task is not in a status the change can start from; ``status`` is where it is."""

    def __init__(self, status: TaskStatus | None) -> None:
        self.status = status
        super().__init__(f"the task is {status.value if status else 'missing'}")


def new_task_no() -> int:
    return secrets.randbelow(TASK_NO_LIMIT - 1) + 1


class TaskStore:
    def __init__(self, pool: Any) -> None:
        self.pool = pool

    async def _tx(self, work: Any) -> Any:
        return await in_transaction(self.pool, work, RETRYABLE, TRIES)

    # -- creation --------------------------------------------------------------------------
    async def create(
        self,
        spec: TaskSpec,
        runs: Sequence[PlannedRun],
        actor: str,
        now_ms: int,
        key: str = "",
        digest: str = "",
    ) -> tuple[int, bool]:
        """Store a new task with its first runs; returns ``(task_no, created)``.

        With an idempotency ``key``: the same key and ``digest`` returns the task made the
        first time (``created`` False); another digest raises IdempotencyConflictError; a
        request still creating it raises CreationInProgressError.
        """
        if key:
            existing = await self._reserve(key, digest, now_ms)
            if existing is not None:
                return existing, False
        try:
            task_no = await self._insert_task(spec, runs, actor, now_ms, key)
        except BaseException:
            if key:
                await self._release(key)
            raise
        return task_no, True

    async def _reserve(self, key: str, digest: str, now_ms: int) -> int | None:
        async with self.pool.acquire() as conn, conn.cursor() as cur:
            try:
                await cur.execute(
                    "INSERT INTO task_requests (idempotency_key, body_hash, task_no, created_at) "
                    "VALUES (%s, %s, NULL, %s)",
                    [key, digest, now_ms],
                )
                return None
            except pymysql.err.IntegrityError:
                pass
            await cur.execute(
                "SELECT body_hash, task_no, created_at FROM task_requests WHERE idempotency_key = %s", [key]
            )
            row = await cur.fetchone()
        if row is None:  # released meanwhile: try once more
            return await self._reserve(key, digest, now_ms)
        if row[0] != digest:
            raise IdempotencyConflictError(key)
        if row[1] is None:
            if now_ms - int(row[2]) > STALE_REQUEST_MS:
                await self._release(key)
                return await self._reserve(key, digest, now_ms)
            raise CreationInProgressError(key)
        return int(row[1])

    async def _release(self, key: str) -> None:
        async with self.pool.acquire() as conn, conn.cursor() as cur:
            await cur.execute(
                "DELETE FROM task_requests WHERE idempotency_key = %s AND task_no IS NULL", [key]
            )

    async def _insert_task(
        self, spec: TaskSpec, runs: Sequence[PlannedRun], actor: str, now_ms: int, key: str
    ) -> int:
        for _ in range(5):  # a random task_no taken already: draw again
            task_no = new_task_no()
            try:
                await self._tx(
                    lambda conn, cur, n=task_no: _insert_all(cur, n, spec, runs, actor, now_ms, key)
                )
                return task_no
            except pymysql.err.IntegrityError as exc:
                if exc.args[0] != 1062:
                    raise
        raise RuntimeError("five random task numbers were all taken")

    # -- reads -----------------------------------------------------------------------------
    async def get(self, task_no: int) -> TaskRow | None:
        rows = await self._query(f"SELECT {TASK_COLUMNS} FROM tasks WHERE task_no = %s", [task_no])
        return TaskRow.from_row(rows[0]) if rows else None

    async def page(
        self, limit: int, before: tuple[int, int] | None, status: str = "", kind: str = "", category: str = ""
    ) -> list[TaskRow]:
        """Newest first, ``limit + 1`` rows at most (the extra one says there is more)."""
        where: list[str] = ["1 = 1"]
        args: list[Any] = []
        for column, value in (("status", status), ("schedule_kind", kind), ("category", category)):
            if value:
                where.append(f"{column} = %s")
                args.append(value)
        if before is not None:
            where.append("created_at <= %s AND (created_at < %s OR task_no < %s)")
            args += [before[0], before[0], before[1]]
        sql = (
            f"SELECT {TASK_COLUMNS} FROM tasks WHERE {' AND '.join(where)} "
            "ORDER BY created_at DESC, task_no DESC LIMIT %s"
        )
        return [TaskRow.from_row(r) for r in await self._query(sql, [*args, limit + 1])]

    async def runs(self, task_no: int) -> list[RunRow]:
        sql = f"SELECT {RUN_COLUMNS} FROM task_runs WHERE task_no = %s ORDER BY run_no"
        return [RunRow.from_row(r) for r in await self._query(sql, [task_no])]

    async def counts(self, task_no: int) -> dict[str, dict[str, int]]:
        """Final outcomes per channel: ``{channel: {status: n}}``."""
        out: dict[str, dict[str, int]] = {}
        for channel, status, n in await self._query(
            "SELECT channel, status, n FROM task_counts WHERE task_no = %s", [task_no]
        ):
            out.setdefault(channel, {})[status] = int(n)
        return out

    async def transitions(self, task_no: int) -> list[Transition]:
        rows = await self._query(
            "SELECT at, from_status, to_status, actor, reason FROM task_transitions "
            "WHERE task_no = %s ORDER BY seq",
            [task_no],
        )
        return [Transition(int(r[0]), r[1], r[2], r[3], r[4]) for r in rows]

    async def statuses(self, task_nos: Iterable[int]) -> dict[int, TaskStatus]:
        wanted = sorted(set(task_nos))
        if not wanted:
            return {}
        marks = ",".join(["%s"] * len(wanted))
        rows = await self._query(f"SELECT task_no, status FROM tasks WHERE task_no IN ({marks})", wanted)
        return {int(r[0]): TaskStatus(r[1]) for r in rows}

    async def specs(self, task_nos: Iterable[int]) -> dict[int, TaskSpec]:
        wanted = sorted(set(task_nos))
        if not wanted:
            return {}
        marks = ",".join(["%s"] * len(wanted))
        rows = await self._query(f"SELECT task_no, spec FROM tasks WHERE task_no IN ({marks})", wanted)
        return {int(r[0]): TaskSpec.from_json(r[1]) for r in rows}

    async def recipients(
        self, task_no: int, limit: int, after: tuple[str, str] | None
    ) -> list[tuple[Any, ...]]:
        """Per-recipient outcomes (latest attempt per message), by user id then message id."""
        where, args = "rule_id = %s", [f"task:{task_no}"]
        if after is not None:
            where += " AND (user_id > %s OR (user_id = %s AND message_id > %s))"
            args += [after[0], after[0], after[1]]
        return await self._query(
            "SELECT user_id, message_id, channel, provider, status, error_code, attempt, completed_at "
            f"FROM delivery_results WHERE {where} ORDER BY user_id, message_id, attempt DESC LIMIT %s",
            [*args, limit * 2 + 1],
        )

    async def _query(self, sql: str, args: Sequence[Any]) -> list[tuple[Any, ...]]:
        async with self.pool.acquire() as conn, conn.cursor() as cur:
            await cur.execute(sql, list(args))
            return list(await cur.fetchall())

    # -- changes ---------------------------------------------------------------------------
    async def transition(
        self,
        task_no: int,
        allowed: Iterable[TaskStatus],
        to: TaskStatus,
        actor: str,
        now_ms: int,
        reason: str = "",
        next_run_at: int | bool | None = False,
    ) -> TaskStatus:
        """Move the task to ``to`` if it is in one of ``allowed``; returns the status it left.
        ``next_run_at`` (when not False) is set in the same statement. Raises
        TransitionRefusedError with the current status otherwise."""
        allowed = tuple(allowed)

        async def work(_conn: Any, cur: Any) -> TaskStatus:
            await cur.execute(
                "SELECT status, schedule_kind FROM tasks WHERE task_no = %s FOR UPDATE", [task_no]
            )
            row = await cur.fetchone()
            current = TaskStatus(row[0]) if row else None
            if current is None or current not in allowed:
                raise TransitionRefusedError(current)
            sets = "status = %s, updated_at = %s"
            args: list[Any] = [to.value, now_ms]
            if next_run_at is not False:
                sets += ", next_run_at = %s"
                args.append(next_run_at)
            await cur.execute(f"UPDATE tasks SET {sets} WHERE task_no = %s", [*args, task_no])
            await _record(cur, task_no, now_ms, current, to, actor, reason)
            if to in FINAL_STATUSES:
                await cur.execute(
                    "UPDATE task_runs SET state = 'cancelled', lease_until = 0 "
                    "WHERE task_no = %s AND state IN ('pending', 'grouping', 'expanding')",
                    [task_no],
                )
                if row[1] == ScheduleKind.LOCAL_TIME.value:  # its parts' members go too
                    await cur.execute(
                        "INSERT IGNORE INTO task_member_sweeps (task_no, ended_at) VALUES (%s, %s)",
                        [task_no, now_ms],
                    )
            return current

        result: TaskStatus = await self._tx(work)
        return result

    async def set_next_run(self, task_no: int, next_run_at: int | None, now_ms: int) -> None:
        async with self.pool.acquire() as conn, conn.cursor() as cur:
            await cur.execute(
                "UPDATE tasks SET next_run_at = %s, updated_at = %s WHERE task_no = %s",
                [next_run_at, now_ms, task_no],
            )

    async def add_counts(self, rows: Sequence[tuple[int, str, str, int]]) -> None:
        """Add ``(task_no, channel, status, n)`` to the counters (one statement)."""
        if not rows:
            return
        marks = ",".join(["(%s,%s,%s,%s)"] * len(rows))
        async with self.pool.acquire() as conn, conn.cursor() as cur:
            await cur.execute(
                f"INSERT INTO task_counts (task_no, channel, status, n) VALUES {marks} "
                "ON DUPLICATE KEY UPDATE n = n + VALUES(n)",
                [v for row in sorted(rows) for v in row],
            )


async def _insert_all(
    cur: Any, task_no: int, spec: TaskSpec, runs: Sequence[PlannedRun], actor: str, now_ms: int, key: str
) -> None:
    await cur.execute(
        f"INSERT INTO tasks ({TASK_COLUMNS}) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)",
        [
            task_no, spec.name, spec.comment, spec.category, spec.schedule.kind.value,
            spec.to_json().decode(), TaskStatus.SCHEDULED.value, runs[0].due_at if runs else None,
            actor, now_ms, now_ms,
        ],
    )  # fmt: skip
    if runs:
        marks = ",".join(["(%s,%s,%s,'pending')"] * len(runs))
        await cur.execute(
            f"INSERT INTO task_runs (task_no, run_no, due_at, state) VALUES {marks}",
            [v for run in runs for v in (task_no, run.run_no, run.due_at)],
        )
    await _record(cur, task_no, now_ms, None, TaskStatus.SCHEDULED, actor, "created")
    if key:
        await cur.execute("UPDATE task_requests SET task_no = %s WHERE idempotency_key = %s", [task_no, key])


async def _record(
    cur: Any, task_no: int, now_ms: int, before: TaskStatus | None, to: TaskStatus, actor: str, reason: str
) -> None:
    await cur.execute(
        "INSERT INTO task_transitions (task_no, seq, at, from_status, to_status, actor, reason) "
        "SELECT %s, COALESCE(MAX(seq), 0) + 1, %s, %s, %s, %s, %s FROM task_transitions WHERE task_no = %s",
        [task_no, now_ms, before.value if before else "", to.value, actor[:128], reason[:512], task_no],
    )
    if actor != SCHEDULER:  # an operator's action: also in the audit log, in the same transaction
        detail = {"from": before.value if before else "", "to": to.value}
        await record_on(cur, AuditEntry(now_ms, actor, f"task.{reason}", str(task_no), detail))
