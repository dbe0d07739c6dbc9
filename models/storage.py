"""MariaDB / TiDB storage over aiomysql: schema, inbox, delivery results, profiles.

Writes are multi-row ``INSERT ... ON DUPLICATE KEY UPDATE`` statements built
here (aiomysql's ``executemany`` would send one statement per row for this
shape), keyed by natural ids so a replayed batch changes nothing.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import re
import warnings
from collections.abc import Sequence
from importlib import resources
from typing import Any

import aiomysql
import orjson
import pymysql
import structlog

from models.messages import DeliveryResult
from models.phones import PhoneHasher, rebuild, replace_rows
from models.profiles import UserProfile
from reach.clock import SystemClock
from reach.settings import Settings

log = structlog.get_logger("reach.storage")

# TiDB advises 100-500 rows per transaction; MariaDB is happy with it too.
MAX_ROWS_PER_STATEMENT = 500
POOL_CLOSE_TIMEOUT_S = 5.0


async def create_pool(settings: Settings, *, database: bool = True, maxsize: int | None = None) -> Any:
    """The aiomysql pool. Opening it (its first connection and that connection's set-up
    queries) takes at most ``mysql_connect_timeout``: a database that accepts connections and
    never answers fails a start-up with TimeoutError instead of hanging it."""
    async with asyncio.timeout(settings.mysql_connect_timeout):
        return await _open_pool(settings, database, maxsize)


async def _open_pool(settings: Settings, database: bool, maxsize: int | None) -> Any:
    return await aiomysql.create_pool(
        host=settings.mysql_host,
        port=settings.mysql_port,
        user=settings.mysql_user,
        password=settings.mysql_password.get_secret_value(),
        db=settings.mysql_database if database else None,
        autocommit=True,
        charset="utf8mb4",
        minsize=1,
        maxsize=maxsize or settings.mysql_pool_size,
        pool_recycle=3600,
        # A database that accepts the connection and never answers (a hung server or proxy)
        # fails the start-up within this, instead of aiomysql's 60 s.
        connect_timeout=settings.mysql_connect_timeout,
    )


async def close_pool(pool: Any, timeout_s: float = POOL_CLOSE_TIMEOUT_S) -> None:
    """Close the pool; connections still held after ``timeout_s`` (a query that a hung
    database never answers) are dropped, so a stopping process never waits on MariaDB."""
    pool.close()
    try:
        async with asyncio.timeout(timeout_s):
            await pool.wait_closed()
    except TimeoutError:
        log.warning("storage.pool_close_timeout", seconds=timeout_s)
        pool.terminate()


_COMMENT = re.compile(r"(^|\s)--(\s.*)?$")


def schema_statements() -> list[str]:
    text = resources.files("models").joinpath("schema.sql").read_text()
    # Drop "-- comments" (whole-line and trailing) so a ';' inside one cannot split a statement.
    lines = [_COMMENT.sub("", line) for line in text.splitlines()]
    return [stmt.strip() for stmt in "\n".join(lines).split(";") if stmt.strip()]


async def migrate(settings: Settings) -> None:
    """Create the database and tables when missing. Safe to run at every start."""
    pool = await create_pool(settings, database=False, maxsize=1)
    try:
        with warnings.catch_warnings():
            # "already exists" notes are the expected outcome of IF NOT EXISTS.
            warnings.simplefilter("ignore", pymysql.err.Warning)
            async with pool.acquire() as conn, conn.cursor() as cur:
                await cur.execute(
                    f"CREATE DATABASE IF NOT EXISTS `{settings.mysql_database}` "
                    "CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
                )
                await cur.execute(f"USE `{settings.mysql_database}`")
                counters_existed = await _table_exists(cur, settings.mysql_database, "inbox_unread")
                phones_existed = await _table_exists(cur, settings.mysql_database, "phone_index")
                for statement in schema_statements():
                    await cur.execute(statement)
                await _upgrade(cur, settings.mysql_database)
                if not counters_existed:
                    await cur.execute(UNREAD_BACKFILL)
                if not phones_existed:  # profiles stored before the index existed
                    await rebuild(cur, PhoneHasher.from_settings(settings), SystemClock().now_ms())
    finally:
        pool.close()
        await pool.wait_closed()


# Columns and indexes added after a table's first release. ``CREATE TABLE IF NOT
# EXISTS`` leaves an existing table as it is, so each is added here when missing.
# Checked through information_schema because MySQL has no ``ADD COLUMN IF NOT EXISTS``.
UPGRADES: tuple[tuple[str, str, str, str], ...] = (
    # (table, "column" | "index", name, ALTER TABLE clause)
    ("delivery_results", "column", "receipt_at", "ADD COLUMN receipt_at BIGINT NULL"),
    (
        "delivery_results",
        "index",
        "idx_results_provider_msg",
        "ADD INDEX idx_results_provider_msg (provider_message_id)",
    ),
    ("user_profiles", "column", "attributes", "ADD COLUMN attributes TEXT NULL"),
    (
        "delivery_results",
        "index",
        "idx_results_rule_user",
        "ADD INDEX idx_results_rule_user (rule_id, user_id, message_id)",
    ),
    ("receipts", "column", "reported_at", "ADD COLUMN reported_at BIGINT NOT NULL DEFAULT 0"),
    ("task_runs", "column", "grouped", "ADD COLUMN grouped TINYINT NOT NULL DEFAULT 0"),
    ("delivery_results", "column", "category", "ADD COLUMN category VARCHAR(32) NOT NULL DEFAULT ''"),
    (
        "inbox_messages",
        "index",
        "idx_inbox_page",
        "ADD INDEX idx_inbox_page (user_id, created_at, message_id, read_at)",
    ),
    ("popups", "column", "type", "ADD COLUMN type VARCHAR(16) NOT NULL DEFAULT 'message'"),
    ("popups", "column", "details", "ADD COLUMN details TEXT NULL"),
)
# Indexes a later one made redundant, dropped when present (after UPGRADES added theirs).
RETIRED_INDEXES: tuple[tuple[str, str], ...] = (
    ("inbox_messages", "idx_inbox_user_created"),  # a prefix of idx_inbox_page
    ("inbox_messages", "idx_inbox_user_unread"),  # served the per-request COUNT, now inbox_unread
)
# Counts what inbox_messages held before the counters existed (index-only, over idx_inbox_page).
# Idempotent: two processes migrating at once (API and worker) both see the table missing
# and both backfill; the second sets the same counts instead of failing on a duplicate key.
UNREAD_BACKFILL = (
    "INSERT INTO inbox_unread (user_id, unread) "
    "SELECT user_id, COUNT(*) FROM inbox_messages WHERE read_at IS NULL GROUP BY user_id "
    "ON DUPLICATE KEY UPDATE unread = VALUES(unread)"
)


async def _table_exists(cur: Any, database: str, table: str) -> bool:
    await cur.execute(
        "SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s LIMIT 1",
        [database, table],
    )
    return await cur.fetchone() is not None


async def _has_index(cur: Any, database: str, table: str, name: str) -> bool:
    await cur.execute(
        "SELECT 1 FROM information_schema.STATISTICS "
        "WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s AND INDEX_NAME = %s LIMIT 1",
        [database, table, name],
    )
    return await cur.fetchone() is not None


async def _upgrade(cur: Any, database: str) -> None:
    for table, kind, name, clause in UPGRADES:
        catalog, column = ("COLUMNS", "COLUMN_NAME") if kind == "column" else ("STATISTICS", "INDEX_NAME")
        await cur.execute(
            f"SELECT 1 FROM information_schema.{catalog} "
            f"WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s AND {column} = %s LIMIT 1",
            [database, table, name],
        )
        if await cur.fetchone() is None:
            await cur.execute(f"ALTER TABLE `{table}` {clause}")
    for table, name in RETIRED_INDEXES:
        if await _has_index(cur, database, table, name):
            await cur.execute(f"ALTER TABLE `{table}` DROP INDEX `{name}`")


async def execute_rows(pool: Any, head: str, tail: str, rows: Sequence[Sequence[Any]]) -> None:
    """Run ``head VALUES (..),(..) tail`` in chunks of multi-row statements."""
    if not rows:
        return
    placeholder = "(" + ",".join(["%s"] * len(rows[0])) + ")"
    async with pool.acquire() as conn, conn.cursor() as cur:
        for start in range(0, len(rows), MAX_ROWS_PER_STATEMENT):
            chunk = rows[start : start + MAX_ROWS_PER_STATEMENT]
            sql = f"{head} VALUES {','.join([placeholder] * len(chunk))} {tail}"
            await cur.execute(sql, [value for row in chunk for value in row])


@dataclasses.dataclass(frozen=True, slots=True)
class InboxItem:
    message_id: str
    user_id: str
    rule_id: str
    template: str
    title: str
    body: str
    priority: int
    created_at: int
    read_at: int | None = None

    def row(self) -> tuple[Any, ...]:
        """The values in INBOX_COLUMNS order (``dataclasses.astuple`` deep-copies: 5x slower)."""
        return (
            self.message_id, self.user_id, self.rule_id, self.template, self.title,
            self.body, self.priority, self.created_at, self.read_at,
        )  # fmt: skip


INBOX_COLUMNS = "message_id, user_id, rule_id, template, title, body, priority, created_at, read_at"
# A page's columns: the user is the one asked for, so it is not read back.
PAGE_COLUMNS = "message_id, rule_id, template, title, body, priority, created_at, read_at"
# What the API shows of a page, behind the user's unread counter (the first column).
SHOWN_COLUMNS = "message_id, template, title, body, priority, created_at, read_at"
UNREAD_AND_SHOWN = f"(SELECT unread FROM inbox_unread WHERE user_id = %s), {SHOWN_COLUMNS}"
# Deadlock (MySQL/MariaDB/TiDB), TiDB's optimistic write conflict, and a duplicate message
# id inserted by a concurrent transaction: the transaction was rolled back, so it is run
# again, and the next try sees the other transaction's rows.
RETRYABLE_INBOX_ERRORS = frozenset({1213, 9007, 1062})
MAX_INBOX_TRIES = 3


class InboxStore:
    """Site messages and each user's unread counter (``inbox_unread``).

    The counter changes in the same transaction as the rows it counts, only for rows that
    really change: a replayed message id adds nothing, a second mark-read subtracts nothing.
    """

    def __init__(self, pool: Any) -> None:
        self.pool = pool

    async def insert(self, items: Sequence[InboxItem]) -> None:
        """Store messages; a message id already stored is left as it is (idempotent), and
        only the messages actually inserted count towards their user's unread counter."""
        first: dict[str, InboxItem] = {}
        for item in items:
            first.setdefault(item.message_id, item)
        unique = list(first.values())
        for start in range(0, len(unique), MAX_ROWS_PER_STATEMENT):
            chunk = unique[start : start + MAX_ROWS_PER_STATEMENT]
            await _retried(self.pool, lambda conn, cur, chunk=chunk: _insert_new(cur, chunk))

    async def page(self, user_id: str, limit: int, cursor: str | None) -> tuple[list[InboxItem], str | None]:
        """Newest first. Returns the items and the cursor of the next page (None at the end)."""
        async with self.pool.acquire() as conn, conn.cursor() as cur:
            rows = await _page_rows(cur, user_id, limit, cursor)
        items = [InboxItem(row[0], user_id, *row[1:]) for row in rows[:limit]]
        more = len(rows) > limit
        return items, encode_cursor(items[-1]) if more and items else None

    async def page_with_unread(
        self, user_id: str, limit: int, cursor: str | None
    ) -> tuple[list[tuple[Any, ...]], int]:
        """The API's read: up to ``limit + 1`` rows of :data:`SHOWN_COLUMNS`, newest first (the
        extra one says there is a next page), and the unread count.

        One statement in the common case: the counter rides along as an uncorrelated scalar
        subquery (evaluated once), which saves a round trip and a result set; only an empty
        page asks for the counter on its own.
        """
        async with self.pool.acquire() as conn, conn.cursor() as cur:
            rows = await _page_rows(cur, user_id, limit, cursor, UNREAD_AND_SHOWN, [user_id])
            if not rows:
                return rows, await _unread(cur, user_id)
        return rows, int(rows[0][0] or 0)

    async def unread_count(self, user_id: str) -> int:
        async with self.pool.acquire() as conn, conn.cursor() as cur:
            return await _unread(cur, user_id)

    async def mark_read(self, user_id: str, message_id: str, now_ms: int) -> bool:
        """Mark one message read. False when the user has no such message."""
        changed = await _retried(self.pool, lambda conn, cur: _mark_read(cur, user_id, message_id, now_ms))
        if changed:
            return True
        async with self.pool.acquire() as conn, conn.cursor() as cur:
            await cur.execute(
                "SELECT 1 FROM inbox_messages WHERE message_id = %s AND user_id = %s", [message_id, user_id]
            )
            return await cur.fetchone() is not None


async def _retried(pool: Any, work: Any) -> Any:
    return await in_transaction(pool, work, RETRYABLE_INBOX_ERRORS, MAX_INBOX_TRIES)


async def in_transaction(pool: Any, work: Any, retry_codes: frozenset[int], tries: int) -> Any:
    """Run ``await work(conn, cur)`` in one transaction and return its result; run it again
    when the database rolled it back with an error numbered in ``retry_codes`` (a deadlock,
    a TiDB write conflict), up to ``tries`` times in all; any other error is raised."""
    for attempt in range(1, tries + 1):
        try:
            async with pool.acquire() as conn, conn.cursor() as cur:
                await conn.begin()
                try:
                    result = await work(conn, cur)
                    await conn.commit()
                except BaseException:
                    with contextlib.suppress(Exception):  # a lost connection must not hide the cause
                        await conn.rollback()
                    raise
            return result
        except (pymysql.err.OperationalError, pymysql.err.IntegrityError) as exc:
            if exc.args[0] not in retry_codes or attempt == tries:
                raise
    raise AssertionError("unreachable")


async def _insert_new(cur: Any, items: Sequence[InboxItem]) -> None:
    """Insert the items not stored yet and add them to their users' unread counters."""
    marks = ",".join(["%s"] * len(items))
    await cur.execute(
        f"SELECT message_id FROM inbox_messages WHERE message_id IN ({marks})", [i.message_id for i in items]
    )
    stored = {row[0] for row in await cur.fetchall()}
    new = [item for item in items if item.message_id not in stored]
    if not new:
        return
    # A plain INSERT: a row a concurrent transaction stored meanwhile fails it (1062), and
    # the retry skips that row instead of counting it twice.
    row_marks = ",".join(["(%s,%s,%s,%s,%s,%s,%s,%s,%s)"] * len(new))
    await cur.execute(
        f"INSERT INTO inbox_messages ({INBOX_COLUMNS}) VALUES {row_marks}",
        [value for item in new for value in item.row()],
    )
    await _add_unread(cur, new)


async def _add_unread(cur: Any, new: Sequence[InboxItem]) -> None:
    added: dict[str, int] = {}
    for item in new:
        if item.read_at is None:
            added[item.user_id] = added.get(item.user_id, 0) + 1
    if not added:
        return
    users = sorted(added)  # one lock order for every writer: concurrent batches cannot deadlock here
    await cur.execute(
        "INSERT INTO inbox_unread (user_id, unread) VALUES "
        + ",".join(["(%s,%s)"] * len(users))
        + " ON DUPLICATE KEY UPDATE unread = unread + VALUES(unread)",
        [value for user in users for value in (user, added[user])],
    )


async def _mark_read(cur: Any, user_id: str, message_id: str, now_ms: int) -> bool:
    """Set read_at once; the counter drops only when this call set it."""
    await cur.execute(
        "UPDATE inbox_messages SET read_at = %s WHERE message_id = %s AND user_id = %s AND read_at IS NULL",
        [now_ms, message_id, user_id],
    )
    if not cur.rowcount:
        return False
    await cur.execute(
        "UPDATE inbox_unread SET unread = unread - 1 WHERE user_id = %s AND unread > 0", [user_id]
    )
    return True


async def _page_rows(
    cur: Any,
    user_id: str,
    limit: int,
    cursor: str | None,
    columns: str = PAGE_COLUMNS,
    column_args: Sequence[Any] = (),
) -> list[tuple[Any, ...]]:
    where = "user_id = %s"
    args: list[Any] = [*column_args, user_id]
    if cursor:
        created_at, message_id = decode_cursor(cursor)
        # Spelled out rather than as a row comparison, so every server ranges over the index.
        where += " AND created_at <= %s AND (created_at < %s OR message_id < %s)"
        args += [created_at, created_at, message_id]
    await cur.execute(
        f"SELECT {columns} FROM inbox_messages WHERE {where} "
        "ORDER BY created_at DESC, message_id DESC LIMIT %s",
        [*args, limit + 1],
    )
    return list(await cur.fetchall())


async def _unread(cur: Any, user_id: str) -> int:
    await cur.execute("SELECT unread FROM inbox_unread WHERE user_id = %s", [user_id])
    row = await cur.fetchone()
    return int(row[0]) if row else 0


class CursorError(ValueError):
    pass


def encode_cursor(item: InboxItem) -> str:
    return cursor_for(item.created_at, item.message_id)


def cursor_for(created_at: int, message_id: str) -> str:
    """The cursor of the page after the message with this key."""
    return base64.urlsafe_b64encode(orjson.dumps([created_at, message_id])).decode()


def decode_cursor(cursor: str) -> tuple[int, str]:
    try:
        created_at, message_id = orjson.loads(base64.urlsafe_b64decode(cursor.encode()))
    except Exception:
        raise CursorError("malformed cursor; pass the next_cursor of a previous page") from None
    if not isinstance(created_at, int) or not isinstance(message_id, str):
        raise CursorError("malformed cursor; pass the next_cursor of a previous page")
    return created_at, message_id


RESULT_COLUMNS = [f.name for f in dataclasses.fields(DeliveryResult)]
# A result row never moves backwards: a replayed "sent" must not undo a receipt's
# "delivered" or "failed" (a receipt sets ``receipt_at``, which is not written here).
# MySQL applies the assignments left to right, so ``status`` is assigned last:
# every other column still sees the stored status.
RESULT_UPDATE = ", ".join(
    f"{col} = IF(status = 'delivered' OR receipt_at IS NOT NULL, {col}, VALUES({col}))"
    for col in [c for c in RESULT_COLUMNS if c not in ("message_id", "attempt", "status")] + ["status"]
)


class ResultStore:
    def __init__(self, pool: Any) -> None:
        self.pool = pool

    async def upsert(self, results: Sequence[DeliveryResult]) -> None:
        rows = [tuple(str(v) if k == "status" else v for k, v in _items(r)) for r in results]
        await execute_rows(
            self.pool,
            f"INSERT INTO delivery_results ({', '.join(RESULT_COLUMNS)})",
            f"ON DUPLICATE KEY UPDATE {RESULT_UPDATE}",
            rows,
        )


def _items(result: DeliveryResult) -> list[tuple[str, Any]]:
    return [(name, getattr(result, name)) for name in RESULT_COLUMNS]


class ProfileStore:
    def __init__(self, pool: Any, phones: PhoneHasher | None = None) -> None:
        self.pool = pool
        self.phones = phones  # None: the phone index is not kept (tests of other tables)

    async def apply(self, profiles: Sequence[UserProfile], now_ms: int) -> None:
        """Persist the latest profile of each user, with its segment memberships and its
        phone index row, in one transaction."""
        latest = {p.user_id: p for p in profiles}
        live = [p for p in latest.values() if not p.deleted]
        async with self.pool.acquire() as conn, conn.cursor() as cur:
            await conn.begin()
            try:
                await _delete_memberships(cur, list(latest))
                await _delete_profiles(cur, [p.user_id for p in latest.values() if p.deleted])
                await _delete_versions(cur, [p.user_id for p in latest.values() if p.deleted])
                await _insert_profiles(cur, live, now_ms)
                await _insert_memberships(cur, live, now_ms)
                if self.phones is not None:
                    await replace_rows(cur, self.phones, list(latest), live, now_ms)
                await conn.commit()
            except BaseException:
                await conn.rollback()
                raise

    async def record_versions(self, seen: Sequence[VersionRow]) -> None:
        """Store app versions reported by events, ``(user_id, platform, version, ts)``.

        A row older than the stored one for its user and platform changes nothing, so a
        replayed or late batch never moves a version back. MySQL applies the assignments
        left to right: the version is compared with the stored time before that moves.
        """
        await execute_rows(
            self.pool,
            "INSERT INTO user_app_versions (user_id, platform, app_version, seen_at)",
            "ON DUPLICATE KEY UPDATE "
            "app_version = IF(VALUES(seen_at) >= seen_at, VALUES(app_version), app_version), "
            "seen_at = GREATEST(seen_at, VALUES(seen_at))",
            list(seen),
        )


#: ``(user_id, platform, app_version, seen_at)`` of ``user_app_versions``
VersionRow = tuple[str, str, str, int]


async def _delete_versions(cur: Any, user_ids: list[str]) -> None:
    if user_ids:
        marks = ",".join(["%s"] * len(user_ids))
        await cur.execute(f"DELETE FROM user_app_versions WHERE user_id IN ({marks})", user_ids)


async def _delete_memberships(cur: Any, user_ids: list[str]) -> None:
    if user_ids:
        marks = ",".join(["%s"] * len(user_ids))
        await cur.execute(f"DELETE FROM segment_members WHERE user_id IN ({marks})", user_ids)


async def _delete_profiles(cur: Any, user_ids: list[str]) -> None:
    if user_ids:
        marks = ",".join(["%s"] * len(user_ids))
        await cur.execute(f"DELETE FROM user_profiles WHERE user_id IN ({marks})", user_ids)


async def _insert_profiles(cur: Any, profiles: list[UserProfile], now_ms: int) -> None:
    if not profiles:
        return
    rows = [
        (
            p.user_id,
            orjson.dumps(list(p.segments)).decode(),
            orjson.dumps(dict(p.contact)).decode(),
            p.timezone,
            orjson.dumps(dict(p.attributes)).decode() if p.attributes else None,
            now_ms,
        )
        for p in profiles
    ]
    marks = ",".join(["(%s,%s,%s,%s,%s,%s)"] * len(rows))
    await cur.execute(
        f"INSERT INTO user_profiles (user_id, segments, contact, timezone, attributes, updated_at) "
        f"VALUES {marks} "
        "ON DUPLICATE KEY UPDATE segments = VALUES(segments), contact = VALUES(contact), "
        "timezone = VALUES(timezone), attributes = VALUES(attributes), updated_at = VALUES(updated_at)",
        [v for row in rows for v in row],
    )


async def _insert_memberships(cur: Any, profiles: list[UserProfile], now_ms: int) -> None:
    rows = [(segment, p.user_id, now_ms) for p in profiles for segment in p.segments]
    if rows:
        marks = ",".join(["(%s,%s,%s)"] * len(rows))
        await cur.execute(
            f"INSERT INTO segment_members (segment, user_id, updated_at) VALUES {marks} "
            "ON DUPLICATE KEY UPDATE updated_at = VALUES(updated_at)",
            [v for row in rows for v in row],
        )
