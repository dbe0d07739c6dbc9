"""Engagement per message in ``message_engagement``: the first time of each stage.

:meth:`EngagementStore.apply` takes a batch of tracking events and records, per message,
the earliest time it was delivered, displayed, opened and clicked, each once: a stage
already recorded is left as it is, so an event consumed twice (at-least-once Kafka), a
pixel loaded on every open of the e-mail or a link clicked again changes nothing and
counts nothing. It returns the stages reached for the first time, with the labels of the
message's send (its ``delivery_results`` row), which is what the metrics count.

The batch's rows are created, read ``FOR UPDATE`` and written in one transaction, in
message-id order, so two consumers applying the same message at once (a rebalance hands
a partition over) count it once between them; a transaction the database rolled back for
a deadlock or a write conflict is run again.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from models.storage import MAX_ROWS_PER_STATEMENT, in_transaction
from models.tracking import KINDS, Kind, TrackingEvent

COLUMNS: Mapping[Kind, str] = {kind: f"{kind.value}_at" for kind in KINDS}
RETRYABLE_ERRORS = frozenset({1213, 9007})  # deadlock; TiDB's optimistic write conflict
MAX_TRANSACTION_TRIES = 3

Stages = dict[Kind, int]  # kind -> ms


@dataclasses.dataclass(frozen=True, slots=True)
class Labels:
    """What the metrics count a message by: its send's channel, provider, platform, category."""

    channel: str
    provider: str
    platform: str
    category: str


@dataclasses.dataclass(frozen=True, slots=True)
class First:
    """A message reached a stage for the first time. ``labels`` is None when no send
    result of the message is stored (only another producer's event can name such a message)."""

    message_id: str
    kind: Kind
    at: int
    labels: Labels | None


@dataclasses.dataclass(frozen=True, slots=True)
class Applied:
    firsts: list[First]
    repeats: collections.Counter[Kind]  # events about a stage already recorded


def earliest(events: Iterable[TrackingEvent]) -> dict[str, Stages]:
    """The earliest time of each stage of each message in ``events``."""
    stages: dict[str, Stages] = {}
    for event in events:
        known = stages.setdefault(event.message_id, {})
        if event.kind not in known or event.ts < known[event.kind]:
            known[event.kind] = event.ts
    return stages


def new_stages(wanted: Mapping[str, Stages], stored: Mapping[str, Stages]) -> dict[str, Stages]:
    """The stages of ``wanted`` that ``stored`` does not hold yet, per message (none: left out)."""
    fresh: dict[str, Stages] = {}
    for message_id, stages in wanted.items():
        have = stored.get(message_id, {})
        new = {kind: at for kind, at in stages.items() if kind not in have}
        if new:
            fresh[message_id] = new
    return fresh


def repeats_of(events: Sequence[TrackingEvent], fresh: Mapping[str, Stages]) -> collections.Counter[Kind]:
    """The events that recorded nothing: every event but one per new (message, stage)."""
    counts = collections.Counter(event.kind for event in events)
    for stages in fresh.values():
        counts.subtract(stages.keys())
    return +counts


class EngagementStore:
    def __init__(self, pool: Any) -> None:
        self.pool = pool

    async def apply(self, events: Sequence[TrackingEvent]) -> Applied:
        """Record the batch; idempotent (a repeated batch returns no firsts)."""
        wanted = earliest(events)
        if not wanted:
            return Applied([], collections.Counter())
        fresh: dict[str, Stages] = {}
        ids = sorted(wanted)
        for start in range(0, len(ids), MAX_ROWS_PER_STATEMENT):  # a transaction per chunk
            chunk = {i: wanted[i] for i in ids[start : start + MAX_ROWS_PER_STATEMENT]}
            work = functools.partial(_record, wanted=chunk)
            fresh |= await in_transaction(self.pool, work, RETRYABLE_ERRORS, MAX_TRANSACTION_TRIES)
        labels = await self.labels(list(fresh))
        firsts = [
            First(message_id, kind, at, labels.get(message_id))
            for message_id, stages in fresh.items()
            for kind, at in stages.items()
        ]
        return Applied(firsts, repeats_of(events, fresh))

    async def labels(self, message_ids: Sequence[str]) -> dict[str, Labels]:
        """Each message's labels, from its highest attempt (the one that was sent)."""
        if not message_ids:
            return {}
        async with self.pool.acquire() as conn, conn.cursor() as cur:
            await cur.execute(
                "SELECT message_id, attempt, channel, provider, platform, category FROM delivery_results "
                f"WHERE message_id IN ({_marks(message_ids)})",
                list(message_ids),
            )
            rows = sorted(await cur.fetchall(), key=lambda row: row[1])
        return {row[0]: Labels(*row[2:]) for row in rows}  # a later attempt replaces an earlier

    async def stages(self, message_id: str) -> Stages:
        """What is recorded of one message."""
        async with self.pool.acquire() as conn, conn.cursor() as cur:
            return (await _stored(cur, [message_id], lock=False)).get(message_id, {})


async def _record(_conn: Any, cur: Any, wanted: Mapping[str, Stages]) -> dict[str, Stages]:
    """In a transaction: the stages of ``wanted`` not stored yet, now stored."""
    ids = sorted(wanted)  # one lock order for every writer
    # The rows first, so the locking read below finds rows to lock: a locking read of
    # missing keys takes gap locks, and two writers holding one gap deadlock on inserting.
    await cur.execute(
        f"INSERT INTO message_engagement (message_id) VALUES {','.join(['(%s)'] * len(ids))} "
        "ON DUPLICATE KEY UPDATE message_id = message_id",
        ids,
    )
    fresh = new_stages(wanted, await _stored(cur, ids, lock=True))
    if fresh:
        await _upsert(cur, fresh)
    return fresh


async def _stored(cur: Any, ids: Sequence[str], lock: bool) -> dict[str, Stages]:
    columns = ", ".join(COLUMNS.values())
    await cur.execute(
        f"SELECT message_id, {columns} FROM message_engagement WHERE message_id IN ({_marks(ids)})"
        + (" FOR UPDATE" if lock else ""),
        list(ids),
    )
    return {
        row[0]: {kind: at for kind, at in zip(KINDS, row[1:], strict=True) if at is not None}
        for row in await cur.fetchall()
    }


async def _upsert(cur: Any, fresh: Mapping[str, Stages]) -> None:
    """Set each new stage's time; a time already set is kept (COALESCE), whoever set it."""
    columns = list(COLUMNS.values())
    rows = [[message_id, *(fresh[message_id].get(kind) for kind in KINDS)] for message_id in sorted(fresh)]
    marks = ",".join(["(" + ",".join(["%s"] * (len(columns) + 1)) + ")"] * len(rows))
    updates = ", ".join(f"{c} = COALESCE({c}, VALUES({c}))" for c in columns)
    await cur.execute(
        f"INSERT INTO message_engagement (message_id, {', '.join(columns)}) VALUES {marks} "
        f"ON DUPLICATE KEY UPDATE {updates}",
        [value for row in rows for value in row],
    )


def _marks(values: Sequence[Any]) -> str:
    return ",".join(["%s"] * len(values))
