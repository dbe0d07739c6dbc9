"""MariaDB / TiDB storage over aiomysql: schema, inbox, delivery results, profiles.

Writes are multi-row ``INSERT ... ON DUPLICATE KEY UPDATE`` statements built
here (aiomysql's ``executemany`` would send one statement per row for this
shape), keyed by natural ids so a replayed batch changes nothing.
"""

from __future__ import annotations

import base64
import dataclasses
import re
import warnings
from collections.abc import Sequence
from importlib import resources
from typing import Any

import aiomysql
import orjson
import pymysql

from models.messages import DeliveryResult
from models.profiles import UserProfile
from reach.settings import Settings

# TiDB advises 100-500 rows per transaction; MariaDB is happy with it too.
MAX_ROWS_PER_STATEMENT = 500


async def create_pool(settings: Settings, *, database: bool = True, maxsize: int | None = None) -> Any:
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
    )


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
                for statement in schema_statements():
                    await cur.execute(statement)
                await _upgrade(cur, settings.mysql_database)
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
    ("receipts", "column", "reported_at", "ADD COLUMN reported_at BIGINT NOT NULL DEFAULT 0"),
)


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


INBOX_COLUMNS = "message_id, user_id, rule_id, template, title, body, priority, created_at, read_at"


class InboxStore:
    def __init__(self, pool: Any) -> None:
        self.pool = pool

    async def insert(self, items: Sequence[InboxItem]) -> None:
        """Store messages; a message id already stored is left as it is (idempotent)."""
        rows = [dataclasses.astuple(item) for item in items]
        await execute_rows(
            self.pool,
            f"INSERT INTO inbox_messages ({INBOX_COLUMNS})",
            "ON DUPLICATE KEY UPDATE message_id = message_id",
            rows,
        )

    async def page(self, user_id: str, limit: int, cursor: str | None) -> tuple[list[InboxItem], str | None]:
        """Newest first. Returns the items and the cursor of the next page (None at the end)."""
        where = "user_id = %s"
        args: list[Any] = [user_id]
        if cursor:
            created_at, message_id = decode_cursor(cursor)
            where += " AND (created_at, message_id) < (%s, %s)"
            args += [created_at, message_id]
        sql = (
            f"SELECT {INBOX_COLUMNS} FROM inbox_messages WHERE {where} "
            "ORDER BY created_at DESC, message_id DESC LIMIT %s"
        )
        async with self.pool.acquire() as conn, conn.cursor() as cur:
            await cur.execute(sql, [*args, limit + 1])
            rows = await cur.fetchall()
        items = [InboxItem(*row) for row in rows[:limit]]
        more = len(rows) > limit
        return items, encode_cursor(items[-1]) if more and items else None

    async def unread_count(self, user_id: str) -> int:
        async with self.pool.acquire() as conn, conn.cursor() as cur:
            await cur.execute(
                "SELECT COUNT(*) FROM inbox_messages WHERE user_id = %s AND read_at IS NULL", [user_id]
            )
            (count,) = await cur.fetchone()
        return int(count)

    async def mark_read(self, user_id: str, message_id: str, now_ms: int) -> bool:
        """Mark one message read. False when the user has no such message."""
        async with self.pool.acquire() as conn, conn.cursor() as cur:
            await cur.execute(
                "UPDATE inbox_messages SET read_at = COALESCE(read_at, %s) "
                "WHERE user_id = %s AND message_id = %s",
                [now_ms, user_id, message_id],
            )
            if cur.rowcount:
                return True
            # MariaDB reports 0 changed rows for an already-read message: look it up.
            await cur.execute(
                "SELECT 1 FROM inbox_messages WHERE user_id = %s AND message_id = %s", [user_id, message_id]
            )
            return await cur.fetchone() is not None


class CursorError(ValueError):
    pass


def encode_cursor(item: InboxItem) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([item.created_at, item.message_id])).decode()


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
    def __init__(self, pool: Any) -> None:
        self.pool = pool

    async def apply(self, profiles: Sequence[UserProfile], now_ms: int) -> None:
        """Persist the latest profile of each user, with its segment memberships."""
        latest = {p.user_id: p for p in profiles}
        live = [p for p in latest.values() if not p.deleted]
        async with self.pool.acquire() as conn, conn.cursor() as cur:
            await conn.begin()
            try:
                await _delete_memberships(cur, list(latest))
                await _delete_profiles(cur, [p.user_id for p in latest.values() if p.deleted])
                await _insert_profiles(cur, live, now_ms)
                await _insert_memberships(cur, live, now_ms)
                await conn.commit()
            except BaseException:
                await conn.rollback()
                raise


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
            now_ms,
        )
        for p in profiles
    ]
    marks = ",".join(["(%s,%s,%s,%s,%s)"] * len(rows))
    await cur.execute(
        f"INSERT INTO user_profiles (user_id, segments, contact, timezone, updated_at) VALUES {marks} "
        "ON DUPLICATE KEY UPDATE segments = VALUES(segments), contact = VALUES(contact), "
        "timezone = VALUES(timezone), updated_at = VALUES(updated_at)",
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
