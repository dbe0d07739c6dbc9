"""Helpers for tests that drive the real pipeline: unique names per run, a
worker subprocess, waiting on conditions with a deadline, and database reads."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import orjson
import pymysql
import redis

from models.access import KeyStore, NewKey, parse_scopes
from models.storage import create_pool
from reach.producer import SyncProducer
from reach.settings import REPO_ROOT, Settings
from tests.support.waiting import wait_until


def unique_run_id() -> str:
    return "t" + uuid.uuid4().hex[:10]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def settings_env(settings: Settings) -> dict[str, str]:
    """REACH_* variables that rebuild ``settings`` in a subprocess."""
    env = {}
    for name, value in settings.model_dump().items():
        if value is None:  # unset: the subprocess keeps the default
            continue
        secret = getattr(value, "get_secret_value", None)
        if isinstance(value, tuple | list):
            env[f"REACH_{name.upper()}"] = orjson.dumps(list(value)).decode()
        else:
            env[f"REACH_{name.upper()}"] = str(secret() if secret else value)
    return env


# What the suite's calling system may do: everything its tests call, but not admin.
TEST_SCOPES = ("events:write", "inbox:read", "stats:read", "tasks:write", "preferences:write")


def create_key(
    settings: Settings,
    *scopes: str,
    events: frozenset[str] | None = None,
    rate_limit: int | None = None,
) -> str:
    """A new API key in ``settings``' (migrated) database; returns its token."""
    return asyncio.run(new_key(settings, *scopes, events=events, rate_limit=rate_limit))


async def new_key(
    settings: Settings,
    *scopes: str,
    events: frozenset[str] | None = None,
    rate_limit: int | None = None,
) -> str:
    """:func:`create_key` for async callers."""
    pool = await create_pool(settings, maxsize=1)
    try:
        spec = NewKey(parse_scopes(scopes or TEST_SCOPES), events, rate_limit)
        _key, token = await KeyStore(pool).create("tests", spec, "tests", int(time.time() * 1000))
        return token
    finally:
        pool.close()
        await pool.wait_closed()


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def make_settings(tmp: Path, run_id: str, channels_yaml: str, **overrides: Any) -> Settings:
    """Settings with topics, consumer group, database and Redis keys unique to ``run_id``."""
    rules_dir = tmp / "rules"
    if not rules_dir.exists():
        shutil.copytree(REPO_ROOT / "rules" / "examples", rules_dir)
    channels_file = tmp / "channels.yaml"
    channels_file.write_text(channels_yaml)
    values: dict[str, Any] = {
        "topic_prefix": f"{run_id}.",
        "app_id": f"reach-{run_id}",
        "mysql_database": f"reach_{run_id}",
        "redis_prefix": f"{run_id}:",
        "rules_dir": rules_dir,
        "rules_check_interval": 0.2,
        "channels_file": channels_file,
        "data_dir": tmp / "worker",
        "batch_within": 0.02,
        "deferred_poll_interval": 0.1,
        "worker_metrics_port": free_port(),
        "partitions": 2,
    }
    values.update(overrides)
    return Settings(**values)


class WorkerProcess:
    """``reach worker`` in a subprocess, with its log kept for assertions."""

    def __init__(self, settings: Settings, log_path: Path, extra_env: Mapping[str, str] = ()) -> None:  # type: ignore[assignment]
        self.settings = settings
        self.log_path = log_path
        self.extra_env = dict(extra_env)
        self.proc: subprocess.Popen[bytes] | None = None
        self.command = [sys.executable, "-m", "reach.cli", "worker"]

    def start(self) -> WorkerProcess:
        env = {**os.environ, **settings_env(self.settings), **self.extra_env, "PYTHONUNBUFFERED": "1"}
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the subprocess
        self.proc = subprocess.Popen(
            self.command,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
        )
        wait_until(lambda: "worker.ready" in self.log() or self._died(), 60, "worker start")
        assert not self._died(), f"worker exited:\n{self.log()[-4000:]}"
        return self

    def _died(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: a crash, with no chance to commit or flush anything."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


class Db:
    """Synchronous reads of a run's database, for assertions."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def _run(self, sql: str, args: Any = None, *, database: str | None) -> list[tuple[Any, ...]]:
        s = self.settings
        conn = pymysql.connect(
            host=s.mysql_host,
            port=s.mysql_port,
            user=s.mysql_user,
            password=s.mysql_password.get_secret_value(),
            database=database,
            autocommit=True,
        )
        try:
            with conn.cursor() as cur:
                cur.execute(sql, args)
                return list(cur.fetchall())
        finally:
            conn.close()

    def query(self, sql: str, args: Any = None) -> list[tuple[Any, ...]]:
        return self._run(sql, args, database=self.settings.mysql_database)

    def drop(self) -> None:
        self._run(f"DROP DATABASE IF EXISTS `{self.settings.mysql_database}`", database=None)


def event(event_id: str, user_id: str, name: str, **properties: Any) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "user_id": user_id,
        "name": name,
        "ts": int(time.time() * 1000),
        "properties": properties,
        "device": {"platform": "ios"},
    }


def produce_json(settings: Settings, topic: str, records: list[dict[str, Any]]) -> None:
    SyncProducer(settings.kafka_bootstrap).send_many(
        topic, [(r["user_id"].encode(), orjson.dumps(r)) for r in records]
    )


def clear_redis(settings: Settings) -> None:
    client = redis.Redis.from_url(settings.redis_url.get_secret_value())
    keys = list(client.scan_iter(f"{settings.redis_prefix}*", count=1000))
    if keys:
        client.delete(*keys)


def read_topic_until(
    settings: Settings,
    topic: str,
    done: Callable[[list[tuple[bytes | None, bytes]]], bool],
    timeout: float = 30.0,
) -> list[tuple[bytes | None, bytes]]:
    """Read ``topic`` from the beginning until ``done(records so far)``; fail after ``timeout``."""
    from confluent_kafka import Consumer

    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": unique_run_id(),
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    records: list[tuple[bytes | None, bytes]] = []
    try:
        deadline = time.monotonic() + timeout
        while not done(records):
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout}s reading {topic}; got {len(records)} records"
                )
            msg = consumer.poll(0.2)
            if msg is not None and not msg.error():
                records.append((msg.key(), msg.value()))
        return records
    finally:
        consumer.close()
