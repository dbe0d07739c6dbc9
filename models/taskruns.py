"""Task runs in MariaDB / TiDB: claiming due runs, checkpoints, and audience pages.

A run belongs to whichever worker holds its lease (``lease_owner`` until
``lease_until``). Claiming is one conditional UPDATE per run, so of two workers that
see the same due run exactly one gets it; every later write (checkpoint, finish)
again requires the lease, so a worker that lost it (it stalled past the lease, and
another took over) changes nothing. A crashed worker's runs are taken over once its
lease expires, from the last checkpoint.
"""

from __future__ import annotations

import contextlib
import heapq
import secrets
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import orjson

from models.profiles import SeenVersion
from models.tasks import Audience, PlannedRun
from models.taskstore import RUN_COLUMNS, RunRow

ACTIVE = "('pending', 'grouping', 'expanding')"
MEMBER_ROWS = 500  # task_run_members rows per INSERT or DELETE (TiDB: small transactions)


class Recipient(NamedTuple):
    """One member of a run's audience with the profile fields a task reads. A tuple (not a
    dataclass) because a run builds one per recipient: a million of them cost a fifth as
    much. The default dicts are shared: nobody mutates a recipient's fields."""

    user_id: str
    segments: tuple[str, ...] = ()
    contact: dict[str, Any] = {}
    timezone: str = ""
    attributes: dict[str, Any] = {}
    #: per platform, the app version the user's events last reported (``user_app_versions``)
    app_versions: dict[str, SeenVersion] = {}

    def fact(self) -> dict[str, Any]:
        """What an audience filter reads."""
        return {
            "user_id": self.user_id,
            "segments": list(self.segments),
            "timezone": self.timezone,
            "attributes": self.attributes,
            "app_version": {platform: seen.version for platform, seen in self.app_versions.items()},
        }


def new_owner() -> str:
    """A lease owner id: one per worker process."""
    return secrets.token_hex(8)


class RunStore:
    def __init__(self, pool: Any, owner: str) -> None:
        self.pool = pool
        self.owner = owner

    async def due(self, now_ms: int, limit: int) -> list[tuple[int, int]]:
        """Runs due by ``now_ms`` that nobody else holds, earliest first."""
        return [
            (int(r[0]), int(r[1]))
            for r in await self._query(
                # A paused task's runs are not claimed (and released) at every tick.
                f"SELECT r.task_no, r.run_no FROM task_runs r JOIN tasks t ON t.task_no = r.task_no "
                f"WHERE r.state IN {ACTIVE} AND r.due_at <= %s AND t.status IN ('scheduled', 'running') "
                "AND (r.lease_until < %s OR r.lease_owner = %s) ORDER BY r.due_at LIMIT %s",
                [now_ms, now_ms, self.owner, limit],
            )
        ]

    async def claim(self, task_no: int, run_no: int, now_ms: int, lease_ms: int) -> RunRow | None:
        """Take or renew the lease of one run; None when another worker holds it."""
        until = now_ms + lease_ms
        changed = await self._execute(
            f"UPDATE task_runs SET lease_owner = %s, lease_until = %s WHERE task_no = %s AND run_no = %s "
            f"AND state IN {ACTIVE} AND (lease_until < %s OR lease_owner = %s)",
            [self.owner, until, task_no, run_no, now_ms, self.owner],
        )
        # A renewal within the same millisecond changes no row (MySQL counts changed rows,
        # not matched ones): the lease is still this worker's if the row says so.
        rows = await self._query(
            f"SELECT {RUN_COLUMNS}, lease_owner, lease_until, state IN {ACTIVE} FROM task_runs "
            "WHERE task_no = %s AND run_no = %s",
            [task_no, run_no],
        )
        if not rows:
            return None
        *run, owner, held_until, active = rows[0]
        if changed or (owner == self.owner and int(held_until) == until and active):
            return RunRow.from_row(run)
        return None

    async def start(self, run: RunRow, now_ms: int, state: str = "expanding") -> bool:
        """Move a pending run to ``state``: expanding, or grouping for a local-time task's
        first part (:meth:`group`)."""
        return await self._owned("state = %s, started_at = %s", [state, now_ms], run, "pending")

    async def group(
        self, run: RunRow, members: Sequence[tuple[str, int]], last_user: str, now_ms: int, lease_ms: int
    ) -> bool:
        """Store the part (run number) of each ``(user_id, run_no)`` of one audience page and
        move the grouping checkpoint past it; False when the lease was lost. A page grouped
        again after a crash keeps each user's first part (the key is task and user)."""
        for start in range(0, len(members), MEMBER_ROWS):
            chunk = members[start : start + MEMBER_ROWS]
            await self._execute(
                "INSERT IGNORE INTO task_run_members (task_no, user_id, run_no) VALUES "
                + ",".join(["(%s,%s,%s)"] * len(chunk)),
                [v for user, part in chunk for v in (run.task_no, user, part)],
            )
        return await self._owned(
            "checkpoint = %s, lease_until = %s", [last_user, now_ms + lease_ms], run, "grouping"
        )

    async def grouped(self, run: RunRow) -> bool:
        """End the grouping: every part of the task reads its members from now on, and the
        first part starts expanding from the beginning. False when the lease was lost."""
        await self._execute(
            "UPDATE task_runs SET grouped = 1 WHERE task_no = %s AND state = 'pending'", [run.task_no]
        )
        return await self._owned("state = 'expanding', checkpoint = '', grouped = 1", [], run, "grouping")

    async def grouping_of(self, task_no: int, run_no: int) -> tuple[str | None, bool]:
        """The state of the task's first run and whether run ``run_no`` is grouped, from one
        statement (one snapshot: :meth:`grouped` marks the parts before moving the first on)."""
        rows = await self._query(
            "SELECT run_no, state, grouped FROM task_runs WHERE task_no = %s AND run_no IN (1, %s)",
            [task_no, run_no],
        )
        found = {int(r[0]): (str(r[1]), bool(r[2])) for r in rows}
        return found.get(1, (None, False))[0], found.get(run_no, ("", False))[1]

    async def drop_members(self, run: RunRow) -> None:
        """Delete a planned part's task_run_members, a few hundred rows a statement."""
        while await self._execute(
            f"DELETE FROM task_run_members WHERE task_no = %s AND run_no = %s LIMIT {MEMBER_ROWS}",
            [run.task_no, run.run_no],
        ):
            pass

    async def sweep_members(self, ended_before: int, limit: int) -> list[int]:
        """Delete the task_run_members of local-time tasks that ended before ``ended_before``
        (``task_member_sweeps``), a few hundred rows a statement, then their entries; returns
        the tasks swept. The caller leaves time for a drive still writing a page of its
        members when the task ended: after the lease, none can be."""
        swept = [
            int(row[0])
            for row in await self._query(
                "SELECT task_no FROM task_member_sweeps WHERE ended_at < %s ORDER BY ended_at LIMIT %s",
                [ended_before, limit],
            )
        ]
        for task_no in swept:
            while await self._execute(
                f"DELETE FROM task_run_members WHERE task_no = %s LIMIT {MEMBER_ROWS}", [task_no]
            ):
                pass
            await self._execute("DELETE FROM task_member_sweeps WHERE task_no = %s", [task_no])
        return swept

    async def checkpoint(
        self, run: RunRow, last_user: str, audience: int, planned: int, now_ms: int, lease_ms: int
    ) -> bool:
        """Record a page the broker acknowledged; False when the lease was lost."""
        return await self._owned(
            "checkpoint = %s, audience = audience + %s, planned = planned + %s, lease_until = %s",
            [last_user, audience, planned, now_ms + lease_ms],
            run,
            "expanding",
        )

    async def finish(self, run: RunRow, now_ms: int) -> bool:
        return await self._owned(
            "state = 'planned', finished_at = %s, lease_until = 0", [now_ms], run, "expanding"
        )

    async def release(self, run: RunRow) -> None:
        """Give the lease up now (the task is paused): any worker may pick the run up later."""
        await self._execute(
            "UPDATE task_runs SET lease_until = 0 WHERE task_no = %s AND run_no = %s AND lease_owner = %s",
            [run.task_no, run.run_no, self.owner],
        )

    async def add(self, task_no: int, run: PlannedRun) -> None:
        """Store the next run of a task; already stored (a repeated start) is fine."""
        await self._execute(
            "INSERT IGNORE INTO task_runs (task_no, run_no, due_at, state) VALUES (%s, %s, %s, 'pending')",
            [task_no, run.run_no, run.due_at],
        )

    async def active(self, task_no: int) -> list[int]:
        """Due times of the task's runs not yet planned."""
        rows = await self._query(
            f"SELECT due_at FROM task_runs WHERE task_no = %s AND state IN {ACTIVE} ORDER BY due_at",
            [task_no],
        )
        return [int(r[0]) for r in rows]

    async def _owned(self, sets: str, args: list[Any], run: RunRow, state: str) -> bool:
        return bool(
            await self._execute(
                f"UPDATE task_runs SET {sets} WHERE task_no = %s AND run_no = %s AND lease_owner = %s "
                "AND state = %s",
                [*args, run.task_no, run.run_no, self.owner, state],
            )
        )

    async def _execute(self, sql: str, args: Sequence[Any]) -> int:
        async with self.pool.acquire() as conn, conn.cursor() as cur:
            return int(await cur.execute(sql, list(args)))

    async def _query(self, sql: str, args: Sequence[Any]) -> list[tuple[Any, ...]]:
        async with self.pool.acquire() as conn, conn.cursor() as cur:
            await cur.execute(sql, list(args))
            return list(await cur.fetchall())


# -- audience pages ------------------------------------------------------------------------
# A page is read as one row: the database concatenates each member's profile into a JSON
# array ``[user_id, segments, contact, timezone, attributes, app_versions]`` (the JSON
# columns as stored; app_versions ``[[platform, version, seen_at], ...]`` or null, from
# a subquery per member on user_app_versions' primary key) and GROUP_CONCATs the page in
# user id order, so the driver parses one value and orjson decodes the page in one call.
# Read row by row, aiomysql spends ~20 us of CPU a recipient parsing packets and fields;
# this way ~4 us (measured, 5,000-member pages). The app versions ride in the same value:
# a second query per page naming its 20,000 user ids cost the worker ~5 us a recipient
# escaping them, where the subquery costs the database ~3 us and the worker nothing. The
# per-row query stays as the fallback for a page the aggregate cannot carry (over
# ``group_concat_max_len`` or the packet limit: NULL or cut, caught by the member count)
# and for stored JSON that is not valid.
_APP_VERSIONS = (
    "(SELECT CONCAT('[', GROUP_CONCAT(CONCAT('[', JSON_QUOTE(v.platform), ',', JSON_QUOTE(v.app_version), "
    "',', v.seen_at, ']')), ']') FROM user_app_versions v WHERE v.user_id = {user})"
)
_MEMBER_JSON = (
    "CONCAT('[', JSON_QUOTE({user}), ',', COALESCE(NULLIF(p.segments, ''), 'null'), ',', "
    "COALESCE(NULLIF(p.contact, ''), 'null'), ',', JSON_QUOTE(COALESCE(p.timezone, '')), ',', "
    f"COALESCE(NULLIF(p.attributes, ''), 'null'), ',', COALESCE({_APP_VERSIONS}, 'null'), ']')"
)
PROFILE = "p.segments, p.contact, p.timezone, p.attributes"
# (member id column, FROM ... WHERE with the source's own arguments first)
_SEGMENT = ("m.user_id", "segment_members m LEFT JOIN user_profiles p ON p.user_id = m.user_id "
            "WHERE m.segment = %s AND m.user_id > %s")  # fmt: skip
_LIST = ("m.user_id", "audience_members m LEFT JOIN user_profiles p ON p.user_id = m.user_id "
         "WHERE m.list_id = %s AND m.user_id > %s")  # fmt: skip
_EVERYONE = ("p.user_id", "user_profiles p WHERE p.user_id > %s")
_MEMBERS = ("m.user_id", "task_run_members m LEFT JOIN user_profiles p ON p.user_id = m.user_id "
            "WHERE m.task_no = %s AND m.run_no = %s AND m.user_id > %s")  # fmt: skip
PAGE_BYTES = 8 << 20  # group_concat_max_len for a page; a larger page is read row by row

Source = tuple[tuple[str, str], list[Any]]


def _rows_sql(source: tuple[str, str]) -> str:
    user, where = source
    versions = _APP_VERSIONS.format(user=user)
    return f"SELECT {user}, {PROFILE}, {versions} FROM {where} ORDER BY {user} LIMIT %s"


def _page_sql(source: tuple[str, str]) -> str:
    user, where = source
    member = _MEMBER_JSON.format(user=user)
    return (
        "SELECT COUNT(*), GROUP_CONCAT(member ORDER BY member_id SEPARATOR ',') FROM "
        f"(SELECT {user} AS member_id, {member} AS member FROM {where} ORDER BY {user} LIMIT %s) page"
    )


def _sources(audience: Audience, part: tuple[int, int] | None) -> list[Source]:
    if part is not None:
        return [(_MEMBERS, list(part))]
    sources = [(_SEGMENT, [s]) for s in audience.segments] + [(_LIST, [x]) for x in audience.lists]
    return sources or [(_EVERYONE, [])]


async def audience_page(
    pool: Any, audience: Audience, after: str, limit: int, part: tuple[int, int] | None = None
) -> list[Recipient]:
    """The next ``limit`` distinct recipients after user id ``after``, in user id order, over
    every source (segments, lists; every profile when neither is named), or with ``part``
    ``(task_no, run_no)`` over that grouped part's members alone. Each source is read by
    keyset over an index ending in the user id, so a page costs the same at any depth."""
    sources = _sources(audience, part)
    async with pool.acquire() as conn, conn.cursor() as cur:
        await cur.execute("SET SESSION group_concat_max_len = %s", [PAGE_BYTES])
        pages = [await _source_page(cur, source, [*args, after, limit]) for source, args in sources]
        # one source: already distinct and in order
        return recipients_of(pages[0]) if len(pages) == 1 else merge_pages(pages, limit)


async def _source_page(cur: Any, source: tuple[str, str], args: list[Any]) -> list[Sequence[Any]]:
    """One source's page as decoded rows
    ``[user_id, segments, contact, timezone, attributes, app_versions]``."""
    await cur.execute(_page_sql(source), args)
    count, members = await cur.fetchone()
    if not count:
        return []
    if members is not None:
        with contextlib.suppress(orjson.JSONDecodeError):
            text = members.encode() if isinstance(members, str) else members
            rows: list[Sequence[Any]] = orjson.loads(b"[" + text + b"]")
            if len(rows) == count:
                return rows
    await cur.execute(_rows_sql(source), args)  # too large for one value, or bad stored JSON
    return [decoded(row) for row in await cur.fetchall()]


def decoded(row: Sequence[Any]) -> tuple[Any, ...]:
    """A row of the per-row query with its JSON columns decoded (empty or NULL: None)."""
    user_id, segments, contact, timezone, attributes, versions = row
    return (user_id, _json(segments), _json(contact), timezone, _json(attributes), _json(versions))


def _json(value: str | None) -> Any:
    return orjson.loads(value) if value else None


def merge_pages(pages: Iterable[Sequence[Sequence[Any]]], limit: int) -> list[Recipient]:
    """The first ``limit`` distinct user ids of sorted pages of decoded rows (binary
    collation: the database orders user ids as Python orders ``str``). Valid only up to
    the shortest full page's last id, so a source that filled its page bounds the result."""
    full_page_ends = [page[-1][0] for page in pages if len(page) >= limit]
    bound = min(full_page_ends) if full_page_ends else None
    out: list[Sequence[Any]] = []
    last = None
    for row in heapq.merge(*pages, key=lambda row: row[0]):
        if row[0] == last:
            continue
        if (bound is not None and row[0] > bound) or len(out) >= limit:
            break
        last = row[0]
        out.append(row)
    return recipients_of(out)


def recipient_of(row: Sequence[Any]) -> Recipient:
    """A recipient from a decoded row (a member without a profile has None fields)."""
    return recipients_of([row])[0]


def recipients_of(rows: Iterable[Sequence[Any]]) -> list[Recipient]:
    """:func:`recipient_of` for a page: one comprehension building the tuples directly,
    a third of the cost of a call per row (the hot loop of a task's expansion)."""
    new, empty = tuple.__new__, Recipient._field_defaults["contact"]
    return [
        new(
            Recipient,
            (
                user, tuple(segments) if segments else (), contact or empty, zone or "", attrs or empty,
                seen_versions(versions) if versions else empty,
            ),
        )
        for user, segments, contact, zone, attrs, versions in rows
    ]  # fmt: skip


def seen_versions(rows: Iterable[Sequence[Any]]) -> dict[str, SeenVersion]:
    """``[[platform, version, seen_at], ...]`` as read with a page, per platform."""
    return {platform: SeenVersion(version, int(seen_at)) for platform, version, seen_at in rows}


class AudienceLists:
    """Uploaded audiences: ``add`` chunks while the upload streams, ``complete`` at its end.
    A task may name only complete lists; a failed upload is deleted whole."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool

    async def begin(self, now_ms: int) -> str:
        list_id = secrets.token_hex(8)
        await self._execute(
            "INSERT INTO audience_lists (list_id, members, complete, created_at) VALUES (%s, 0, 0, %s)",
            [list_id, now_ms],
        )
        return list_id

    async def add(self, list_id: str, user_ids: Sequence[str]) -> None:
        if user_ids:
            marks = ",".join(["(%s,%s)"] * len(user_ids))
            await self._execute(
                f"INSERT IGNORE INTO audience_members (list_id, user_id) VALUES {marks}",
                [v for user in user_ids for v in (list_id, user)],
            )

    async def complete(self, list_id: str) -> int:
        """Mark the upload finished; returns the distinct members stored."""
        async with self.pool.acquire() as conn, conn.cursor() as cur:
            await cur.execute("SELECT COUNT(*) FROM audience_members WHERE list_id = %s", [list_id])
            (members,) = await cur.fetchone()
            await cur.execute(
                "UPDATE audience_lists SET members = %s, complete = 1 WHERE list_id = %s", [members, list_id]
            )
        return int(members)

    async def discard(self, list_id: str) -> None:
        await self._execute("DELETE FROM audience_members WHERE list_id = %s", [list_id])
        await self._execute("DELETE FROM audience_lists WHERE list_id = %s", [list_id])

    async def complete_among(self, list_ids: Sequence[str]) -> set[str]:
        if not list_ids:
            return set()
        marks = ",".join(["%s"] * len(list_ids))
        async with self.pool.acquire() as conn, conn.cursor() as cur:
            await cur.execute(
                f"SELECT list_id FROM audience_lists WHERE complete = 1 AND list_id IN ({marks})",
                list(list_ids),
            )
            return {row[0] for row in await cur.fetchall()}

    async def _execute(self, sql: str, args: Sequence[Any]) -> None:
        async with self.pool.acquire() as conn, conn.cursor() as cur:
            await cur.execute(sql, list(args))
