"""The worker's resources are opened whole or not at all, and closed in full.

MariaDB and Redis are reached through TCP proxies, so the test sees which connections the
runtime still holds (the shared services have many other clients)."""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from channels.config import load_channels
from models.storage import migrate
from reach.runtime import Runtime, Setup
from reach.settings import Settings
from tests.integration.harness import Db, WorkerProcess, make_settings, unique_run_id
from tests.support.tcp_proxy import TcpProxy
from tests.support.waiting import wait_until_async

pytestmark = pytest.mark.integration

INBOX = """
channels:
  inbox:
    window_seconds: 1
    providers: [{name: mariadb, type: inbox}]
"""
# A webhook whose options are refused only when its setup() reads them: after MariaDB,
# Redis and the inbox provider are open.
BAD_WEBHOOK = """
  hook:
    window_seconds: 1
    providers: [{name: hook-1, type: webhook, options: {base_url: "http://127.0.0.1:9", secret: s, bogus: 1}}]
"""


def write_rules(tmp: Path) -> None:
    (tmp / "rules").mkdir()
    (tmp / "rules" / "rules.yaml").write_text("templates:\n  t: {title: T, text: T}\n")


@pytest.fixture
def proxies() -> Iterator[tuple[TcpProxy, TcpProxy]]:
    defaults = Settings()
    redis_port = urllib.parse.urlsplit(defaults.redis_url.get_secret_value()).port or 6379
    with TcpProxy(defaults.mysql_port) as mysql, TcpProxy(redis_port) as redis:
        yield mysql, redis


async def settings_through(tmp: Path, proxies: tuple[TcpProxy, TcpProxy], channels: str) -> Settings:
    mysql, redis = proxies
    write_rules(tmp)
    settings = make_settings(
        tmp, unique_run_id(), channels, mysql_port=mysql.port, redis_url=f"redis://127.0.0.1:{redis.port}/0"
    )
    await migrate(settings)
    return settings


def setup_of(settings: Settings) -> Setup:
    return Setup.load(settings, load_channels(settings.channels_file, {}))


async def wait_all_closed(proxies: tuple[TcpProxy, TcpProxy]) -> None:
    mysql, redis = proxies
    await wait_until_async(lambda: mysql.open_connections() == 0, 10, "the MariaDB connections closed")
    await wait_until_async(lambda: redis.open_connections() == 0, 10, "the Redis connections closed")


async def test_every_field_is_open_and_close_releases_every_connection(
    tmp_path: Path, proxies: tuple[TcpProxy, TcpProxy]
) -> None:
    settings = await settings_through(tmp_path, proxies, INBOX)
    try:
        runtime = await Runtime.open(setup_of(settings))
        assert await runtime.redis.ping()
        assert await runtime.sent.states(["m-1"]) == {}
        assert runtime.providers["inbox"]["mariadb"].name == "mariadb"
        assert proxies[0].open_connections() >= 1 and proxies[1].open_connections() >= 1
        await runtime.close()
        await wait_all_closed(proxies)
    finally:
        Db(settings).drop()


async def test_a_provider_failing_its_setup_leaves_nothing_open(
    tmp_path: Path, proxies: tuple[TcpProxy, TcpProxy]
) -> None:
    settings = await settings_through(tmp_path, proxies, INBOX + BAD_WEBHOOK)
    try:
        setup = setup_of(settings)
        with pytest.raises(ValueError, match="bogus"):
            await Runtime.open(setup)
        await wait_all_closed(proxies)
    finally:
        Db(settings).drop()


async def test_a_stopped_worker_closes_its_runtime_after_its_agents(tmp_path: Path) -> None:
    write_rules(tmp_path)
    settings = make_settings(tmp_path, unique_run_id(), INBOX)
    worker = WorkerProcess(settings, tmp_path / "worker.log")
    try:
        worker.start()
        worker.stop()
        log = worker.log()
        assert "worker.closed" in log, log[-3000:]
        assert log.index("worker.closed") > log.index("Stopping")  # faust stopped the app first
    finally:
        worker.kill()
        Db(settings).drop()
