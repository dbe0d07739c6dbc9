"""The crash harness's rig: a real pipeline to break, and the records to judge it by.

One rig is one run: its own topics, consumer group, database and Redis prefix;
an SMTP server (a non-idempotent provider) and a signed-webhook receiver (an
idempotent one, deduplicating by ``Idempotency-Key``) that count every copy
they receive; profiles with email addresses; and any number of ``reach
worker`` processes, optionally with their committed-offset lookups slowed
down, which widens faust's start-up recovery window the way a loaded broker
does.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import os
import shutil
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, cast

import orjson
from confluent_kafka import Consumer, TopicPartition

from models.messages import message_id_for
from models.storage import migrate
from reach.producer import SyncProducer
from reach.settings import Settings
from tests.chaos.ledger import Expected, Verdict, judge, latest_statuses
from tests.integration.harness import Db, WorkerProcess, clear_redis, free_port, make_settings, unique_run_id
from tests.support.providers.webhook import WebhookServer
from tests.support.smtp_server import SmtpTestServer

RULES = Path(__file__).parent / "rules"
SMTP_USER, SMTP_PASSWORD = "reach", "chaos-smtp"
CHANNELS = {"chaos-email": ("email", False), "chaos-hook": ("hook", True)}  # rule -> (channel, idempotent)
EVENT_OF_RULE = {"chaos-email": "chaos_email", "chaos-hook": "chaos_hook"}


@dataclasses.dataclass(frozen=True)
class Endpoints:
    """Where the rig's Kafka, MariaDB and Redis are: the shared stack, or throwaway instances."""

    kafka_bootstrap: str = "127.0.0.1:9092"
    mysql_port: int = 3306
    redis_url: str = "redis://127.0.0.1:6379/0"


def channels_yaml(smtp: SmtpTestServer, hook: WebhookServer) -> str:
    hook_options = orjson.dumps(hook.provider_options()).decode()
    return f"""
channels:
  email:
    window_seconds: 1
    providers:
      - name: smtp-chaos
        type: smtp
        options:
          host: 127.0.0.1
          port: {smtp.port}
          security: none
          username: {SMTP_USER}
          password: {SMTP_PASSWORD}
          from_addr: "Reach <noreply@reach.test>"
          unsubscribe_url: "https://reach.test/unsubscribe/{{message_id}}"
  hook:
    window_seconds: 1
    providers:
      - name: hook-chaos
        type: webhook
        options: {hook_options}
"""


class Rig:
    """See the module docstring. Use as a context manager; ``close`` removes what the run created."""

    def __init__(
        self,
        workdir: Path,
        *,
        endpoints: Endpoints = Endpoints(),
        committed_delay: float = 0.0,
        users: int = 50,
        settings_overrides: Mapping[str, Any] | None = None,
    ) -> None:
        self.workdir = workdir
        self.committed_delay = committed_delay
        self.users = users
        self.smtp = SmtpTestServer(auth=(SMTP_USER, SMTP_PASSWORD)).start()
        self.hook = cast(WebhookServer, WebhookServer().start())
        overrides = {
            "kafka_bootstrap": endpoints.kafka_bootstrap,
            "mysql_port": endpoints.mysql_port,
            "redis_url": endpoints.redis_url,
            **(settings_overrides or {}),
        }
        self.settings: Settings = make_settings(
            workdir, unique_run_id(), channels_yaml(self.smtp, self.hook), **overrides
        )
        for example in self.settings.rules_dir.glob("*.yaml"):
            example.unlink()  # only the harness's rules: every message is one the ledger expects
        for rule_file in RULES.glob("*.yaml"):
            shutil.copy(rule_file, self.settings.rules_dir / rule_file.name)
        self.db = Db(self.settings)
        self.expected: list[Expected] = []
        self.workers: list[WorkerProcess] = []
        self._producer: threading.Thread | None = None
        self._produced = 0

    # -- set-up ----------------------------------------------------------------
    def prepare(self) -> Rig:
        """Schema, topics (by the first worker) and one profile per user."""
        asyncio.run(migrate(self.settings))
        return self

    def send_profiles(self) -> None:
        profiles = [
            {"user_id": f"u{n}", "segments": ["chaos"], "contact": {"email": f"u{n}@chaos.test"}}
            for n in range(self.users)
        ]
        self._send(self.settings.segments_topic, profiles)

    def wait_for_profiles(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self._count("SELECT COUNT(*) FROM user_profiles") < self.users:
            if time.monotonic() > deadline:
                raise AssertionError(f"profiles not stored within {timeout}s")
            time.sleep(0.1)

    def worker(self, name: str) -> WorkerProcess:
        """A worker process (not started) with its own log and metrics port."""
        env = {
            "REACH_WORKER_METRICS_PORT": str(free_port()),
            "CHAOS_COMMITTED_DELAY": str(self.committed_delay),
        }
        process = WorkerProcess(self.settings, self.workdir / f"worker-{name}.log", env)
        process.command = [sys.executable, "-m", "tests.chaos.slow_recovery"]
        self.workers.append(process)
        return process

    # -- load ------------------------------------------------------------------
    def produce(self, count: int, rate: float) -> threading.Thread:
        """Produce ``count`` events (half email, half webhook) at ``rate`` a second, in a thread."""
        events = [self._event(n) for n in range(count)]
        self._producer = threading.Thread(target=self._pace, args=(events, rate), daemon=True)
        self._producer.start()
        return self._producer

    def _event(self, n: int) -> dict[str, Any]:
        rule = "chaos-email" if n % 2 == 0 else "chaos-hook"
        event_id = f"{self.settings.app_id}-{n}"
        channel, idempotent = CHANNELS[rule]
        self.expected.append(
            Expected(message_id_for(rule, f"{rule}:{event_id}", channel), channel, idempotent)
        )
        return {
            "event_id": event_id,
            "user_id": f"u{n % self.users}",
            "name": EVENT_OF_RULE[rule],
            "ts": int(time.time() * 1000),
            "properties": {"n": n},
        }

    def _pace(self, events: list[dict[str, Any]], rate: float) -> None:
        producer = SyncProducer(self.settings.kafka_bootstrap)
        chunk = max(1, int(rate / 10))
        started = time.monotonic()
        for first in range(0, len(events), chunk):
            due = started + first / rate
            time.sleep(max(0.0, due - time.monotonic()))
            batch = events[first : first + chunk]
            producer.send_many(
                self.settings.events_topic, [(e["user_id"].encode(), orjson.dumps(e)) for e in batch]
            )
            self._produced += len(batch)

    @property
    def produced(self) -> int:
        return self._produced

    def producing(self) -> bool:
        return self._producer is not None and self._producer.is_alive()

    def _send(self, topic: str, records: list[dict[str, Any]]) -> None:
        SyncProducer(self.settings.kafka_bootstrap).send_many(
            topic, [(r["user_id"].encode(), orjson.dumps(r)) for r in records]
        )

    # -- what happened -----------------------------------------------------------
    def received(self) -> dict[str, int]:
        """Copies each provider server received, per reach message id."""
        counts: collections.Counter[str] = collections.Counter()
        for message in self.smtp.messages:
            counts[str(message.message["X-Reach-Message-Id"])] += 1
        counts.update(self.hook.idempotency_keys)
        return dict(counts)

    def received_total(self) -> int:
        return len(self.smtp.messages) + len(self.hook.idempotency_keys)

    def statuses(self) -> dict[str, str]:
        rows = self.db.query("SELECT message_id, attempt, status FROM delivery_results")
        return latest_statuses((str(m), int(a), str(s)) for m, a, s in rows)

    def verdict(self) -> Verdict:
        return judge(self.expected, self.received(), self.statuses())

    def accounted(self) -> bool:
        """Every expected message is delivered or recorded final."""
        verdict = self.verdict()
        return not verdict.lost and not self.producing()

    def lag(self) -> dict[str, int]:
        """Messages not yet committed by the worker group, per topic (events, segments, outboxes)."""
        s = self.settings
        topics = [s.events_topic, s.segments_topic, s.outbox_topic("email"), s.outbox_topic("hook")]
        consumer = Consumer({"bootstrap.servers": s.kafka_bootstrap, "group.id": s.app_id})
        try:
            partitions = [TopicPartition(t, p) for t in topics for p in range(s.partitions)]
            committed = consumer.committed(partitions, timeout=10)
            lag: dict[str, int] = collections.defaultdict(int)
            for tp in committed:
                _low, high = consumer.get_watermark_offsets(tp, timeout=10)
                lag[tp.topic] += high - max(tp.offset, 0)
            return dict(lag)
        finally:
            consumer.close()

    def settled(self) -> bool:
        return self.accounted() and not any(self.lag().values())

    def wait_settled(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.settled():
                return True
            time.sleep(0.5)
        return False

    def _count(self, sql: str) -> int:
        try:
            return int(self.db.query(sql)[0][0])
        except Exception:  # the schema or the server may not be there yet
            return 0

    def logs(self) -> Iterator[tuple[str, str]]:
        for worker in self.workers:
            yield worker.log_path.name, worker.log()

    # -- tear-down ------------------------------------------------------------------
    def close(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.smtp.stop()
        self.hook.stop()
        if os.environ.get("CHAOS_KEEP") != "1":
            try:
                self.db.drop()
                clear_redis(self.settings)
            except Exception:  # a throwaway server may be gone already
                pass

    def __enter__(self) -> Rig:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
