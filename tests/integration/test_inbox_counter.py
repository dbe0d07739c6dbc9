"""The inbox's unread counter and page index against the real MariaDB.

The counter (``inbox_unread``) replaces a COUNT per inbox read, so it must stay equal to
the number of unread rows through everything at-least-once delivery does: replayed
batches, a message twice in one batch, the same batch written concurrently, mark-read
twice; and a database that had inbox rows before the counter existed is backfilled.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from channels.base import Delivery, ProviderConfig, ProviderContext, Rendered
from channels.inbox import InboxProvider
from models.messages import ReachMessage
from models.storage import InboxItem, InboxStore, create_pool, cursor_for, migrate
from reach.settings import Settings
from tests.integration.harness import Db, unique_run_id

pytestmark = pytest.mark.integration


@pytest.fixture
async def db() -> AsyncIterator[tuple[Settings, Any]]:
    settings = Settings(mysql_database=f"reach_{unique_run_id()}")
    await migrate(settings)
    pool = await create_pool(settings)
    yield settings, pool
    pool.close()
    await pool.wait_closed()
    Db(settings).drop()


def item(message_id: str, user_id: str = "u1", created_at: int = 1000) -> InboxItem:
    return InboxItem(message_id, user_id, "r1", "t", f"title {message_id}", "body", 5, created_at)


def unread_rows(db: Db) -> dict[str, int]:
    """What the counters should say: COUNT of unread rows per user."""
    rows = db.query("SELECT user_id, COUNT(*) FROM inbox_messages WHERE read_at IS NULL GROUP BY user_id")
    return {user: int(n) for user, n in rows}


def counters(db: Db) -> dict[str, int]:
    return {user: int(n) for user, n in db.query("SELECT user_id, unread FROM inbox_unread WHERE unread > 0")}


async def test_a_replayed_message_is_not_counted_twice(db: tuple[Settings, Any]) -> None:
    settings, pool = db
    inbox = InboxStore(pool)
    await inbox.insert([item("m1"), item("m2"), item("m3", "u2")])
    await inbox.insert([item("m1"), item("m2"), item("m3", "u2")])  # the whole batch replayed
    await inbox.insert([item("m1"), item("m4"), item("m4")])  # a replay, a new one, and it again
    assert await inbox.unread_count("u1") == 3
    assert await inbox.unread_count("u2") == 1
    assert await inbox.unread_count("nobody") == 0
    assert counters(Db(settings)) == unread_rows(Db(settings)) == {"u1": 3, "u2": 1}


async def test_mark_read_decrements_once(db: tuple[Settings, Any]) -> None:
    settings, pool = db
    inbox = InboxStore(pool)
    await inbox.insert([item("m1"), item("m2")])
    assert await inbox.mark_read("u1", "m1", 5000)
    assert await inbox.mark_read("u1", "m1", 6000)  # already read: found, counted once
    assert not await inbox.mark_read("u2", "m2", 5000)  # not this user's message
    assert not await inbox.mark_read("u1", "nope", 5000)
    assert await inbox.unread_count("u1") == 1
    await inbox.insert([item("m1")])  # a replay of a read message changes nothing either
    assert await inbox.unread_count("u1") == 1
    assert Db(settings).query("SELECT read_at FROM inbox_messages WHERE message_id = 'm1'") == [(5000,)]


async def test_concurrent_writers_of_the_same_batch_count_each_message_once(
    db: tuple[Settings, Any],
) -> None:
    # Two workers replaying one batch during a rebalance; concurrent mark-reads too.
    settings, pool = db
    inbox = InboxStore(pool)
    batch = [item(f"m{n:03}", f"u{n % 7}", created_at=n) for n in range(200)]
    await asyncio.gather(*(inbox.insert(batch) for _ in range(4)))
    await asyncio.gather(*(inbox.mark_read(i.user_id, i.message_id, 9) for i in batch[:50] for _ in (1, 2)))
    expected = unread_rows(Db(settings))
    assert sum(expected.values()) == 150
    assert counters(Db(settings)) == expected


def delivery(message_id: str, user_id: str) -> Delivery:
    message = ReachMessage(
        message_id, user_id, "r1", "welcome", "inbox", "mariadb", 5, "e1", "signup", 1, 2, {}, {}
    )
    return Delivery(message, Rendered("Hello", "text"))


async def test_the_inbox_provider_keeps_the_counter_through_a_replayed_batch(
    db: tuple[Settings, Any],
) -> None:
    settings, pool = db
    provider = InboxProvider(ProviderConfig("mariadb", "inbox"), ProviderContext(mysql_pool=pool))
    await provider.setup()
    batch = [delivery("p1", "u1"), delivery("p2", "u1")]
    for _ in range(2):  # a crash after the store, before the commit: the batch comes again
        outcomes = await provider.send_batch(batch)
        assert [o.kind.value for o in outcomes] == ["sent", "sent"]
    assert counters(Db(settings)) == {"u1": 2}


async def test_migrate_backfills_counters_for_rows_written_before_them(db: tuple[Settings, Any]) -> None:
    settings, pool = db
    await InboxStore(pool).insert([item("m1"), item("m2"), item("m3", "u2")])
    Db(settings).query("UPDATE inbox_messages SET read_at = 1 WHERE message_id = 'm2'")
    Db(settings).query("DROP TABLE inbox_unread")  # the database as an older reach left it
    await migrate(settings)
    assert counters(Db(settings)) == {"u1": 1, "u2": 1}
    await migrate(settings)  # the backfill runs once: a second migrate does not add again
    assert counters(Db(settings)) == {"u1": 1, "u2": 1}


def indexes(db: Db) -> set[str]:
    rows = db.query(
        "SELECT DISTINCT INDEX_NAME FROM information_schema.STATISTICS "
        "WHERE TABLE_SCHEMA = %s AND TABLE_NAME = 'inbox_messages'",
        [db.settings.mysql_database],
    )
    return {name for (name,) in rows}


async def test_migrate_replaces_the_old_inbox_indexes_with_the_page_index(db: tuple[Settings, Any]) -> None:
    settings, _pool = db
    old = Db(settings)
    old.query("ALTER TABLE inbox_messages DROP INDEX idx_inbox_page")
    old.query("ALTER TABLE inbox_messages ADD INDEX idx_inbox_user_created (user_id, created_at, message_id)")
    old.query("ALTER TABLE inbox_messages ADD INDEX idx_inbox_user_unread (user_id, read_at)")
    await migrate(settings)
    assert indexes(old) == {"PRIMARY", "idx_inbox_page"}


async def test_the_page_query_ranges_over_the_page_index_without_sorting(db: tuple[Settings, Any]) -> None:
    settings, pool = db
    await InboxStore(pool).insert([item(f"m{n:04}", f"u{n % 50}", created_at=n) for n in range(2000)])
    Db(settings).query("ANALYZE TABLE inbox_messages")
    for where in (
        "user_id = 'u7'",
        "user_id = 'u7' AND created_at <= 900 AND (created_at < 900 OR message_id < 'm0900')",
    ):
        plan = Db(settings).query(
            f"EXPLAIN SELECT message_id, rule_id, template, title, body, priority, created_at, read_at "
            f"FROM inbox_messages WHERE {where} ORDER BY created_at DESC, message_id DESC LIMIT 21"
        )
        (row,) = plan
        columns = dict(zip(("id", "select_type", "table", "type", "possible_keys", "key"), row, strict=False))
        assert columns["key"] == "idx_inbox_page", plan
        assert "filesort" not in str(row[-1]), plan


async def test_the_api_read_carries_the_counter_on_full_and_empty_pages(db: tuple[Settings, Any]) -> None:
    _settings, pool = db
    inbox = InboxStore(pool)
    await inbox.insert([item(f"m{n}", created_at=n) for n in range(3)])
    await inbox.mark_read("u1", "m0", 9)
    rows, unread = await inbox.page_with_unread("u1", 2, None)
    assert unread == 2 and [r[1] for r in rows] == ["m2", "m1", "m0"]  # limit + 1 rows
    past_the_end = cursor_for(0, "m0")
    assert await inbox.page_with_unread("u1", 2, past_the_end) == ([], 2)  # no rows: counter alone
    assert await inbox.page_with_unread("nobody", 2, None) == ([], 0)


async def test_two_processes_migrating_at_once_both_start(db: tuple[Settings, Any]) -> None:
    settings, pool = db
    await InboxStore(pool).insert([item("c1"), item("c2", "u2")])
    Db(settings).query("DROP TABLE inbox_unread")  # an older database, the API and the worker starting
    await asyncio.gather(migrate(settings), migrate(settings))
    assert counters(Db(settings)) == {"u1": 1, "u2": 1}
