"""The API's key snapshot (api/auth.py KeyCache) on the real MariaDB, through a proxy that
can make the database hang: revocations within the cache time, a hung database served
from the snapshot for a bounded time, then refused."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from api.auth import REFRESH_TIMEOUT_S, KeyCache
from models.access import KeyStore, NewKey, Scope
from models.storage import create_pool, migrate
from reach.clock import ManualClock
from reach.settings import Settings
from tests.integration.harness import Db, unique_run_id
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.integration
TTL_MS, MAX_STALE_MS = 5_000, 60_000


@pytest.fixture(scope="module")
def settings() -> Iterator[Settings]:
    built = Settings(mysql_database=f"reach_{unique_run_id()}")
    asyncio.run(migrate(built))
    yield built
    Db(built).drop()


async def test_a_hung_database_serves_the_snapshot_for_a_bounded_time_then_refuses(
    settings: Settings,
) -> None:
    direct = await create_pool(settings, maxsize=1)
    with TcpProxy(settings.mysql_port) as proxy:
        proxied = await create_pool(settings.model_copy(update={"mysql_port": proxy.port}), maxsize=2)
        try:
            clock = ManualClock()
            key, _token = await KeyStore(direct).create(
                "k", NewKey(frozenset({Scope.ADMIN})), "t", clock.now_ms()
            )
            cache = KeyCache(KeyStore(proxied), clock, TTL_MS, MAX_STALE_MS)
            assert (await cache.get(key.key_id)) == key
            proxy.go_silent()
            clock.advance(TTL_MS)
            started = time.monotonic()
            assert (await cache.get(key.key_id)) == key  # stale, but within the bound
            assert time.monotonic() - started < REFRESH_TIMEOUT_S + 2
            clock.advance(MAX_STALE_MS)
            with pytest.raises(TimeoutError):
                await cache.get(key.key_id)  # the API answers 503: never a key it cannot check
        finally:
            proxied.close()
            direct.close()
            await direct.wait_closed()


async def test_revoked_keys_leave_the_snapshot_at_the_next_refresh_and_new_ones_join(
    settings: Settings,
) -> None:
    pool = await create_pool(settings, maxsize=2)
    try:
        clock, store = ManualClock(), KeyStore(pool)
        cache = KeyCache(store, clock, TTL_MS, MAX_STALE_MS)
        key, _ = await store.create("k", NewKey(frozenset({Scope.STATS_READ})), "t", clock.now_ms())
        assert await cache.get(key.key_id) == key
        await store.revoke(key.key_id, "t", clock.now_ms())
        assert await cache.get(key.key_id) == key  # the snapshot is up to TTL old
        clock.advance(TTL_MS)
        assert await cache.get(key.key_id) is None
        newer, _ = await store.create("n", NewKey(frozenset({Scope.STATS_READ})), "t", clock.now_ms())
        assert await cache.get(newer.key_id) is None  # the snapshot was just read
        clock.advance(1000)
        assert await cache.get(newer.key_id) == newer  # an unknown id refreshes, at most once a second
    finally:
        pool.close()
        await pool.wait_closed()
