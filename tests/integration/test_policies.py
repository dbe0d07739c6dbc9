"""Send-time policies against the real stack: exact caps across workers (two of them in one
process, and two worker processes taking the flooded user over from each other),
preferences' Redis copy, the whole unsubscribe flow, and a preference changed while
messages wait."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from agents.delivery.batch import BatchOutcome
from agents.delivery.caps import Caps
from agents.delivery.hold import Holds
from models.cap_counts import CapCounts
from models.messages import ReachMessage
from models.policies import Action, Cap, CategoryPolicy, Policies
from models.preferences import Preference, PreferenceCache, Preferences, PreferenceStore
from models.redis_state import DeferredQueue
from models.storage import create_pool, migrate
from reach.clock import SystemClock
from reach.metrics import WorkerMetrics
from reach.settings import Settings
from tests.integration.conftest import Api, Pipeline, start_pipeline, stop_pipeline
from tests.integration.harness import (
    Db,
    WorkerProcess,
    event,
    free_port,
    produce_json,
    unique_run_id,
    wait_until,
)
from tests.support.smtp_server import SmtpTestServer

pytestmark = pytest.mark.integration

NOW = int(dt.datetime(2026, 6, 15, 13, tzinfo=dt.UTC).timestamp() * 1000)


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    prefix = f"{unique_run_id()}:"
    yield prefix
    client = aioredis.from_url(Settings().redis_url.get_secret_value())
    keys = [k async for k in client.scan_iter(f"{prefix}*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


def promo(n: int, channel: str = "email", user: str = "flooded") -> ReachMessage:
    return ReachMessage(
        f"m-{channel}-{n}", user, "r", "t", channel, "p", 5, f"e-{n}", "promo", NOW, NOW, {}, {},
        category="marketing", timezone="Asia/Tokyo",
    )  # fmt: skip


async def flood(caps: Caps, messages: list[ReachMessage], now: int) -> list[str]:
    """One worker's batches of 25, as its channel agent would send them."""
    sent: list[str] = []
    for start in range(0, len(messages), 25):
        sent += [m.message_id for m in await caps.screen(messages[start : start + 25], now, BatchOutcome())]
        await asyncio.sleep(0)  # let the other worker's batch in between
    return sent


async def test_two_workers_flooding_one_user_never_pass_the_cap(redis_prefix: str) -> None:
    policy = CategoryPolicy(caps=(Cap(3), Cap(1, "sms"), Cap(2, "*", 3_600_000)), over_cap=Action.SUPPRESS)
    policies = Policies({"marketing": policy})
    url = Settings().redis_url.get_secret_value()
    clients = [aioredis.from_url(url), aioredis.from_url(url)]  # one connection per worker
    workers = [
        Caps(CapCounts(c, redis_prefix), policies, Holds("x", WorkerMetrics(CollectorRegistry()), []), "UTC")
        for c in clients
    ]
    try:
        # 1,000 messages for one user, on two channels, split between the two workers
        emails, texts = [promo(n) for n in range(500)], [promo(n, "sms") for n in range(500)]
        first, second = await asyncio.gather(
            flood(workers[0], emails[:250] + texts[:250], NOW),
            flood(workers[1], emails[250:] + texts[250:], NOW),
        )
        assert len(first) + len(second) == 2  # the rolling 2-an-hour cap across channels
        assert sum(i.startswith("m-sms") for i in first + second) <= 1
        # an hour later the rolling cap has room again, the day's cap (3, Tokyo's 15 June) one
        later, fresh = NOW + 3_600_000, [promo(n) for n in range(1000, 1200)]
        more = await asyncio.gather(
            flood(workers[0], fresh[:100], later), flood(workers[1], fresh[100:], later)
        )
        assert len(more[0]) + len(more[1]) == 1
        # a message let through once (a retry, a replayed batch) passes again and counts once
        again = [m for m in emails + texts if m.message_id in first + second]
        assert len(await workers[1].screen(again, later, BatchOutcome())) == len(again)
        assert await workers[0].screen([promo(999)], later, BatchOutcome()) == []
    finally:
        for client in clients:
            await client.aclose()


async def test_a_deferring_cap_sends_the_rest_after_the_users_midnight(redis_prefix: str) -> None:
    client = aioredis.from_url(Settings().redis_url.get_secret_value())
    registry = CollectorRegistry()
    holds = Holds("email", WorkerMetrics(registry), ["marketing"])
    policies = Policies({"marketing": CategoryPolicy(caps=(Cap(1),), over_cap=Action.DEFER)})
    caps = Caps(CapCounts(client, redis_prefix), policies, holds, "UTC")
    try:
        batch = BatchOutcome()
        assert [m.message_id for m in await caps.screen([promo(1), promo(2)], NOW, batch)] == ["m-email-1"]
        [(when, payload)] = batch.deferred
        tokyo_midnight = int(dt.datetime(2026, 6, 15, 15, tzinfo=dt.UTC).timestamp() * 1000)
        assert when == tokyo_midnight and ReachMessage.from_bytes(payload).not_before == when
        assert [m.message_id for m in await caps.screen([promo(2)], when, BatchOutcome())] == ["m-email-2"]
    finally:
        await client.aclose()


@pytest.fixture
async def preferences(redis_prefix: str) -> AsyncIterator[Preferences]:
    settings = Settings(mysql_database=f"reach_{unique_run_id()}")
    await migrate(settings)
    pool = await create_pool(settings)
    client = aioredis.from_url(settings.redis_url.get_secret_value())
    yield Preferences(PreferenceStore(pool), PreferenceCache(client, redis_prefix, 3600))
    await client.aclose()
    pool.close()
    await pool.wait_closed()
    Db(settings).drop()


async def test_preferences_are_read_from_redis_once_loaded_and_written_through(
    preferences: Preferences,
) -> None:
    no_marketing = Preference("*", "marketing", False)
    await preferences.store.put("ada", [no_marketing], NOW)  # in MariaDB only, as after a Redis loss
    assert await preferences.cache.read(["ada", "bob"]) == {"ada": None, "bob": None}
    assert await preferences.choices_of(["ada", "bob"]) == {"ada": {"*|marketing": False}, "bob": {}}
    assert await preferences.cache.read(["ada", "bob"]) == {"ada": {"*|marketing": False}, "bob": {}}
    rows = await preferences.put("ada", [Preference("email", "marketing", True)], NOW + 1)
    assert [(p.channel, p.allowed) for p in rows] == [("*", False), ("email", True)]
    assert await preferences.choices_of(["ada"]) == {"ada": {"*|marketing": False, "email|marketing": True}}
    # a fill from an older read never overwrites the copy a write replaced
    await preferences.cache.fill_missing({"ada": {}})
    assert (await preferences.cache.read(["ada"]))["ada"] == {"*|marketing": False, "email|marketing": True}


def results(p: Pipeline, user: str) -> list[tuple[Any, ...]]:
    return p.db.query(
        "SELECT status, error_code FROM delivery_results WHERE user_id = %s AND rule_id = 'test-promo'",
        [user],
    )


def add_profile(p: Pipeline, user: str, email: str) -> None:
    produce_json(p.settings, p.settings.segments_topic, [{"user_id": user, "contact": {"email": email}}])
    wait_until(
        lambda: p.db.query("SELECT 1 FROM user_profiles WHERE user_id = %s", [user]), 30, "the profile"
    )


def promote(p: Pipeline, event_id: str, user: str) -> None:
    produce_json(p.settings, p.settings.events_topic, [event(event_id, user, "test_promo", n=1)])


def test_the_one_click_unsubscribe_flow(pipeline: Pipeline, api: Api) -> None:
    user, address = "unsub-1", "unsub-1@example.com"
    add_profile(pipeline, user, address)
    produce_json(
        pipeline.settings, pipeline.settings.events_topic, [event("promo-u1-1", user, "test_promo", n=1)]
    )
    [mail] = wait_until(lambda: pipeline.smtp.messages_to(address), 30, "the first promo e-mail")
    assert mail.message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    link = mail.message["List-Unsubscribe"].strip("<>")
    assert link in mail.message.get_body(("plain",)).get_content()  # {{ unsubscribe_url }}
    path = urlsplit(link).path
    page = httpx.get(f"{api.base_url}{path}", timeout=5)
    assert page.status_code == 200 and "marketing messages by email" in page.text and "<form" in page.text
    assert (
        httpx.get(f"{api.base_url}/v1/users/{user}/preferences", headers=api.headers, timeout=5).json()[
            "preferences"
        ]
        == []
    )
    one_click = httpx.post(f"{api.base_url}{path}", data={"List-Unsubscribe": "One-Click"}, timeout=5)
    assert one_click.status_code == 200 and "You are unsubscribed" in one_click.text
    [row] = httpx.get(f"{api.base_url}/v1/users/{user}/preferences", headers=api.headers, timeout=5).json()[
        "preferences"
    ]
    assert (row["channel"], row["category"], row["allowed"], row["source"]) == (
        "email", "marketing", False, "unsubscribe",
    )  # fmt: skip
    produce_json(
        pipeline.settings, pipeline.settings.events_topic, [event("promo-u1-2", user, "test_promo", n=2)]
    )
    rows = wait_until(lambda: len(results(pipeline, user)) == 2 and results(pipeline, user), 30, "two rows")
    assert sorted(rows) == [("sent", ""), ("suppressed", "opted_out")]
    assert len(pipeline.smtp.messages_to(address)) == 1
    tampered = httpx.post(f"{api.base_url}{path[:-3]}xyz", timeout=5)
    assert tampered.status_code == 400 and "not valid" in tampered.text


def test_a_key_changing_a_users_preferences_is_audited(pipeline: Pipeline, api: Api) -> None:
    body = {"preferences": [{"channel": "sms", "category": "marketing", "allowed": False}]}
    answer = httpx.put(
        f"{api.base_url}/v1/users/audited-u/preferences", json=body, headers=api.headers, timeout=5
    )
    assert answer.status_code == 200, answer.text
    [(actor, action, detail)] = pipeline.db.query(
        "SELECT actor, action, detail FROM audit_log WHERE target = 'audited-u'"
    )
    key_id = api.headers["authorization"].split("_")[1]
    assert (actor, action) == (f"key:{key_id}", "preferences.put")
    assert orjson.loads(detail) == {"changes": [["sms", "marketing", False]]}


def test_put_preferences_refuses_an_unknown_category(api: Api) -> None:
    body = {"preferences": [{"channel": "email", "category": "promos", "allowed": False}]}
    answer = httpx.put(f"{api.base_url}/v1/users/u/preferences", json=body, headers=api.headers, timeout=5)
    assert answer.status_code == 422 and answer.json()["error"] == "unknown_category"


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory, smtp_server: SmtpTestServer) -> Any:
    tmp: Path = tmp_path_factory.mktemp("capped")
    policies = tmp / "policies.yaml"
    policies.write_text("categories:\n  marketing:\n    caps: [{limit: 3, per: day}]\n")
    running = start_pipeline(tmp, smtp_server, {"policies_file": policies})
    yield running
    stop_pipeline(running)


def test_a_flood_for_one_user_sends_the_cap_and_suppresses_the_rest(capped: Pipeline) -> None:
    user, address = "flood-1", "flood-1@example.com"
    add_profile(capped, user, address)
    events = [event(f"flood-{n}", user, "test_promo", n=n) for n in range(60)]
    produce_json(capped.settings, capped.settings.events_topic, events)
    rows = wait_until(lambda: len(results(capped, user)) == 60 and results(capped, user), 60, "60 rows")
    assert sorted(set(rows)) == [("sent", ""), ("suppressed", "frequency_cap")]
    assert sum(status == "sent" for status, _ in rows) == 3
    assert len(capped.smtp.messages_to(address)) == 3


def worker_count(worker: WorkerProcess, name: str, **labels: str) -> float:
    """A counter of one worker process, from its own /metrics."""
    text = httpx.get(f"http://127.0.0.1:{worker.settings.worker_metrics_port}/metrics", timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def sent_by(worker: WorkerProcess) -> float:
    return worker_count(worker, "reach_messages_sent_total", channel="email")


def test_two_worker_processes_flooding_one_user_send_exactly_the_cap(
    tmp_path: Path, smtp_server: SmtpTestServer
) -> None:
    """Two ``reach worker`` processes in one group, marketing capped at 3 a day. The user's
    partition lives on one of them: it sends 2, stops, and the other takes the user over
    mid-flood and may send exactly 1 more; restarted, the first forgets nothing."""
    policies = tmp_path / "policies.yaml"
    policies.write_text("categories:\n  marketing:\n    caps: [{limit: 3, per: day}]\n")
    p = start_pipeline(tmp_path, smtp_server, {"policies_file": policies})
    other = p.settings.model_copy(
        update={"worker_metrics_port": free_port(), "data_dir": tmp_path / "worker-2"}
    )
    workers = [p.worker, WorkerProcess(other, tmp_path / "worker-2.log", p.worker.extra_env)]
    user, address = "two-workers", "two-workers@example.com"
    try:
        workers[1].start()
        add_profile(p, user, address)
        produce_json(
            p.settings, p.settings.events_topic, [event(f"tw-{n}", user, "test_promo", n=n) for n in range(2)]
        )
        wait_until(lambda: len(p.smtp.messages_to(address)) == 2, 60, "the first two e-mails")
        owner, heir = sorted(workers, key=sent_by, reverse=True)
        assert sent_by(owner) == 2 and sent_by(heir) == 0
        owner.stop()  # the user's partitions move to the other worker
        flood = [event(f"tw-{n}", user, "test_promo", n=n) for n in range(2, 62)]
        produce_json(p.settings, p.settings.events_topic, flood)
        wait_until(lambda: len(results(p, user)) >= 62, 90, "a result for every message")
        assert sorted(set(results(p, user))) == [("sent", ""), ("suppressed", "frequency_cap")]
        sent = p.db.query(
            "SELECT COUNT(DISTINCT message_id) FROM delivery_results WHERE user_id = %s AND status = 'sent'",
            [user],
        )
        assert sent == [(3,)]
        assert len(p.smtp.messages_to(address)) == 3
        assert sent_by(heir) == 1  # the heir continued the owner's count, it did not start at 0
        held = worker_count(heir, "reach_messages_held_total", reason="frequency_cap", channel="email")
        assert held == 59
        owner.start()  # a restart forgets nothing, whichever worker gets the user back
        produce_json(
            p.settings,
            p.settings.events_topic,
            [event(f"tw-{n}", user, "test_promo", n=n) for n in range(62, 67)],
        )
        wait_until(lambda: len(results(p, user)) >= 67, 90, "the results after the restart")
        assert sum(status == "sent" for status, _ in results(p, user)) == 3
        assert len(p.smtp.messages_to(address)) == 3
    finally:
        workers[1].stop()
        stop_pipeline(p)


def test_an_opt_out_while_messages_wait_to_be_sent_stops_them(capped: Pipeline) -> None:
    """Messages waiting on the deferred queue (as throttled, retried or quiet-hours messages
    do) for two users; one opts out meanwhile: only the other's are sent."""
    users = {"queued-out": "queued-out@example.com", "queued-in": "queued-in@example.com"}
    for user, address in users.items():
        add_profile(capped, user, address)
    due = SystemClock().now_ms() + 1500  # the worker subprocess runs on the wall clock
    waiting = [queued(user, address, n, due) for user, address in users.items() for n in range(2)]
    asyncio.run(wait_then_opt_out(capped.settings, waiting, "queued-out"))
    for user in users:
        wait_until(lambda user=user: len(results(capped, user)) == 2, 30, f"the rows of {user}")
    assert results(capped, "queued-out") == [("suppressed", "opted_out")] * 2
    assert results(capped, "queued-in") == [("sent", "")] * 2
    assert capped.smtp.messages_to("queued-out@example.com") == []
    assert len(capped.smtp.messages_to("queued-in@example.com")) == 2


def queued(user: str, address: str, n: int, due: int) -> ReachMessage:
    return ReachMessage(
        f"q-{user}-{n}", user, "test-promo", "test-promo", "email", "smtp-local", 5, f"qe-{user}-{n}",
        "test_promo", due, due, {"properties": {"n": n}}, {"email": address}, not_before=due,
        category="marketing", timezone="UTC",
    )  # fmt: skip


async def wait_then_opt_out(settings: Settings, messages: list[ReachMessage], user: str) -> None:
    client = aioredis.from_url(settings.redis_url.get_secret_value())
    try:
        queue = DeferredQueue(client, settings.redis_prefix)
        await queue.add([(m.not_before, m.to_bytes()) for m in messages])
        await opt_out(settings, user)
    finally:
        await client.aclose()


async def opt_out(settings: Settings, user: str) -> None:
    pool = await create_pool(settings)
    client = aioredis.from_url(settings.redis_url.get_secret_value())
    try:
        cache = PreferenceCache(client, settings.redis_prefix, settings.preferences_cache_ttl)
        await Preferences(PreferenceStore(pool), cache).put(user, [Preference("*", "marketing", False)], NOW)
    finally:
        await client.aclose()
        pool.close()
        await pool.wait_closed()
