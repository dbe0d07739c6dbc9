"""Storage and Redis state against the real MariaDB and Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from models.cancel_markers import Cancel, CancelMarkers, Pending
from models.messages import DeliveryResult, DeliveryStatus
from models.profiles import UserProfile
from models.redis_state import DeferredQueue, MarkerState, SentMarkers, WindowThrottle
from models.storage import InboxItem, InboxStore, ProfileStore, ResultStore, create_pool, migrate
from reach.settings import Settings
from tests.integration.harness import Db, unique_run_id

pytestmark = pytest.mark.integration


@pytest.fixture
async def db() -> AsyncIterator[tuple[Settings, object]]:
    settings = Settings(mysql_database=f"reach_{unique_run_id()}")
    await migrate(settings)
    await migrate(settings)  # idempotent
    pool = await create_pool(settings)
    yield settings, pool
    pool.close()
    await pool.wait_closed()
    Db(settings).drop()


@pytest.fixture
async def redis_client() -> AsyncIterator[tuple[object, str]]:
    client = aioredis.from_url(Settings().redis_url.get_secret_value())
    prefix = f"{unique_run_id()}:"
    yield client, prefix
    keys = [k async for k in client.scan_iter(f"{prefix}*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


def result(message_id: str, status: DeliveryStatus, attempt: int = 1) -> DeliveryResult:
    return DeliveryResult(message_id, attempt, "u1", "r1", "email", "smtp", status, "ios", 1, 2, 3)


async def test_result_upserts_are_idempotent_and_never_undo_delivered(db) -> None:
    settings, pool = db
    store = ResultStore(pool)
    await store.upsert([result("m1", DeliveryStatus.SENT), result("m2", DeliveryStatus.SENT)])
    await store.upsert([result("m1", DeliveryStatus.SENT)])  # replay
    rows = Db(settings).query("SELECT message_id, status FROM delivery_results ORDER BY message_id")
    assert rows == [("m1", "sent"), ("m2", "sent")]
    Db(settings).query("UPDATE delivery_results SET status = 'delivered' WHERE message_id = 'm1'")
    await store.upsert([result("m1", DeliveryStatus.SENT)])
    assert Db(settings).query("SELECT status FROM delivery_results WHERE message_id = 'm1'") == [
        ("delivered",)
    ]


async def test_large_batches_go_in_multi_row_statements(db) -> None:
    settings, pool = db
    await ResultStore(pool).upsert([result(f"m{i:05}", DeliveryStatus.SENT) for i in range(1234)])
    assert Db(settings).query("SELECT COUNT(*) FROM delivery_results") == [(1234,)]


async def test_inbox_insert_is_idempotent_and_read_marks_once(db) -> None:
    settings, pool = db
    inbox = InboxStore(pool)
    item = InboxItem("m1", "u1", "r1", "t", "title", "body", 5, 1000)
    await inbox.insert([item, InboxItem("m2", "u1", "r1", "t", "title2", "body", 5, 2000)])
    await inbox.insert([item])
    assert await inbox.unread_count("u1") == 2
    assert await inbox.mark_read("u1", "m1", 5000)
    assert await inbox.mark_read("u1", "m1", 6000)  # already read: still found, time kept
    assert not await inbox.mark_read("u2", "m1", 5000)  # another user's message
    assert Db(settings).query("SELECT read_at FROM inbox_messages WHERE message_id = 'm1'") == [(5000,)]
    assert await inbox.unread_count("u1") == 1


async def test_profiles_replace_segment_memberships(db) -> None:
    settings, pool = db
    store = ProfileStore(pool)
    await store.apply([UserProfile("u1", ("a", "b"), {"email": "x@y.z"})], 1)
    await store.apply([UserProfile("u1", ("b", "c"))], 2)
    assert Db(settings).query(
        "SELECT segment FROM segment_members WHERE user_id = 'u1' ORDER BY segment"
    ) == [("b",), ("c",)]
    await store.apply([UserProfile("u1", deleted=True)], 3)
    assert Db(settings).query("SELECT COUNT(*) FROM user_profiles") == [(0,)]
    assert Db(settings).query("SELECT COUNT(*) FROM segment_members") == [(0,)]


async def test_window_throttle_grants_up_to_both_limits(redis_client) -> None:
    client, prefix = redis_client
    throttle = WindowThrottle(client, prefix)
    now = 1_000_000_500
    first = await throttle.acquire("sms", "a", 7, now, 1000, channel_limit=10, provider_limit=5)
    assert (first.granted, first.window_start, first.window_end) == (5, 1_000_000_000, 1_000_001_000)
    assert (await throttle.acquire("sms", "a", 3, now, 1000, 10, 5)).granted == 0
    assert (await throttle.acquire("sms", "b", 9, now, 1000, 10, None)).granted == 5  # channel cap left
    assert (await throttle.acquire("sms", "b", 9, now + 500, 1000, 10, None)).granted == 9  # next window
    assert (await throttle.acquire("push", "a", 10**6, now, 1000, None, None)).granted == 10**6


async def test_window_counters_expire(redis_client) -> None:
    client, prefix = redis_client
    await WindowThrottle(client, prefix).acquire("sms", "a", 1, 5_000, 1000, 10, 10)
    ttls = [await client.pttl(k) async for k in client.scan_iter(f"{prefix}thr:*")]
    assert len(ttls) == 2 and all(0 < t <= 2000 for t in ttls)


async def test_sent_markers_and_deferred_queue(redis_client) -> None:
    client, prefix = redis_client
    markers = SentMarkers(client, prefix, ttl_seconds=60)
    await markers.mark(["a", "b"])
    assert await markers.already_sent(["a", "c", "b"]) == {"a", "b"}
    queue = DeferredQueue(client, prefix)
    await queue.add([(100, b"x"), (300, b"y"), (200, b"z")])
    assert await queue.due(250, 10) == [b"x", b"z"]
    await queue.remove([b"x"])
    assert await queue.pending() == 2


async def test_sent_markers_track_sending_then_done_or_released(redis_client) -> None:
    client, prefix = redis_client
    markers = SentMarkers(client, prefix, ttl_seconds=60)
    await markers.claim(["a", "b", "c"])
    await markers.mark(["a"])
    await markers.release(["b"])
    assert await markers.states(["a", "b", "c", "d"]) == {"a": MarkerState.DONE, "c": MarkerState.SENDING}
    assert await markers.already_sent(["a", "b", "c"]) == {"a"}
    assert 0 < await client.ttl(f"{prefix}sent:c") <= 60


async def test_cancel_markers_apply_a_batch_in_event_order(redis_client) -> None:
    client, prefix = redis_client
    markers = CancelMarkers(client, prefix, cancelled_ttl_ms=600_000)
    ops = [  # the events at positions 10..14 of their partition
        Pending("cart", "u-1", "m1", 60_000, 10),
        Pending("cart", "u-2", "m9", 60_000, 11),
        Cancel("cart", "u-1", 12),  # cancels m1 (planned before it), not m2 (after it), not u-2's m9
        Pending("cart", "u-1", "m2", 60_000, 13),
        Cancel("other", "u-2", 14),
    ]
    assert await markers.apply(ops) == 1
    assert await markers.cancelled(["m1", "m2", "m9", "unknown"]) == {"m1"}
    assert await client.zrange(f"{prefix}cxp:cart:u-1", 0, -1) == [b"m2"]
    assert 590_000 < await client.pttl(f"{prefix}cx:m1") <= 600_000
    # A batch replayed after a crash runs on top of its own effects: m2, pending from it,
    # must not be reached by the replayed cancel of an earlier event.
    assert await markers.apply(ops) == 1
    assert await markers.cancelled(["m1", "m2", "m9"]) == {"m1"}
    assert await markers.apply([Cancel("cart", "u-1", 15)]) == 1
    assert await markers.cancelled(["m1", "m2", "m9"]) == {"m1", "m2"}


async def test_a_cancel_with_nothing_pending_writes_nothing(redis_client) -> None:
    client, prefix = redis_client
    markers = CancelMarkers(client, prefix, cancelled_ttl_ms=600_000)
    assert await markers.apply([Cancel("cart", "u-1", 3)]) == 0
    assert [k async for k in client.scan_iter(f"{prefix}*")] == []
    assert await markers.apply([]) == 0
    assert await markers.cancelled([]) == set()


async def test_a_pending_set_lives_as_long_as_its_longest_wait(redis_client) -> None:
    client, prefix = redis_client
    markers = CancelMarkers(client, prefix, cancelled_ttl_ms=600_000)
    key = f"{prefix}cxp:cart:u-1"
    await markers.apply([Pending("cart", "u-1", "m1", 500_000, 1)])
    await markers.apply([Pending("cart", "u-1", "m2", 100_000, 2)])  # shorter: must not cut m1's wait
    assert 490_000 < await client.pttl(key) <= 500_000
    await markers.apply([Pending("cart", "u-1", "m3", 900_000, 3)])
    assert 890_000 < await client.pttl(key) <= 900_000
