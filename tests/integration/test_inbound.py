"""Twilio's STOP and START through the real API, Kafka and MariaDB.

A worker sends SMS through the local Twilio (which checks Twilio's wire format); the
``reach api`` process takes the incoming-message webhooks that local Twilio signs as
Twilio does, and the phone index the worker keeps from the profiles maps the sender's
number to its users.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from models.phones import PhoneHasher, PhoneIndex, reindex
from models.profiles import UserProfile
from models.storage import ProfileStore, create_pool, migrate
from reach.settings import Settings
from tests.integration.api_process import ApiProcess
from tests.integration.harness import (
    Db,
    WorkerProcess,
    clear_redis,
    event,
    make_settings,
    produce_json,
    unique_run_id,
    wait_until,
)
from tests.support.providers.twilio import SharedKey, TwilioServer

pytestmark = pytest.mark.integration

RULES = """
triggers:
  - {id: t-sms, when: 'name == "t_sms"', template: note, channels: [sms], dedup_key: "{event_id}"}
templates:
  note:
    title: "Note {{ properties.n }}"
    text: "Hello {{ user_id }}, this is note {{ properties.n }}."
"""
SHARED_KEY = SharedKey()
PHONE_INDEX_KEY = "phone-index-key-for-tests"


@dataclasses.dataclass
class Rig:
    worker: WorkerProcess
    api: ApiProcess
    twilio: TwilioServer
    db: Db

    @property
    def inbound_url(self) -> str:
        return f"{self.api.base_url}/v1/inbound/twilio"

    def text(self, from_: str, body: str, opt_out: str | None, shared_key: SharedKey | None = None) -> Any:
        """An incoming message from ``from_``, posted and signed as Twilio does."""
        hook = self.twilio.webhook(self.inbound_url, self.twilio.incoming(from_, body, opt_out), shared_key)
        return httpx.post(self.inbound_url, content=hook.body, headers=hook.headers, timeout=10)

    def profiles(self, contacts: dict[str, str]) -> None:
        records = [{"user_id": u, "segments": [], "contact": {"phone": p}} for u, p in contacts.items()]
        produce_json(self.api.settings, self.api.settings.segments_topic, records)

    def results(self, user: str) -> list[tuple[str, str]]:
        return self.db.query(
            "SELECT status, error_code FROM delivery_results WHERE user_id = %s ORDER BY event_ts",
            [user],
        )

    def preferences(self, user: str) -> list[tuple[Any, ...]]:
        return self.db.query(
            "SELECT channel, category, allowed, source FROM user_preferences WHERE user_id = %s", [user]
        )

    def indexed(self, users: list[str]) -> int:
        marks = ",".join(["%s"] * len(users))
        [(count,)] = self.db.query(f"SELECT COUNT(*) FROM phone_index WHERE user_id IN ({marks})", users)
        return int(count)

    def send_sms(self, event_id: str, user: str) -> None:
        produce_json(self.api.settings, self.api.settings.events_topic, [event(event_id, user, "t_sms", n=1)])

    def metric(self, name: str, **labels: str) -> float:
        text = httpx.get(f"{self.api.base_url}/metrics", timeout=10).text
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
        )


def channels_yaml(twilio: TwilioServer) -> str:
    options = {**twilio.provider_options(), "webhook_shared_keys": {SHARED_KEY.sid: SHARED_KEY.secret}}
    provider = {"name": "twilio", "type": "twilio_sms", "options": options}
    return yaml.safe_dump({"channels": {"sms": {"window_seconds": 1, "providers": [provider]}}})


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    tmp: Path = tmp_path_factory.mktemp("inbound")
    (tmp / "rules").mkdir()
    (tmp / "rules" / "sms.yaml").write_text(RULES)
    twilio = TwilioServer().start()
    settings = make_settings(tmp, unique_run_id(), channels_yaml(twilio), phone_index_key=PHONE_INDEX_KEY)
    asyncio.run(migrate(settings))
    worker = WorkerProcess(settings, tmp / "worker.log")
    api = ApiProcess(settings, tmp / "api.log", "--workers", "1")
    try:
        worker.start()
        api.start().wait_serving(60)
        yield Rig(worker, api, twilio, Db(settings))
    finally:
        api.stop()
        worker.stop()
        twilio.stop()
        Db(settings).drop()
        clear_redis(settings)


def test_stop_suppresses_the_next_sms_to_every_user_of_the_number_and_start_allows_it_again(rig: Rig) -> None:
    number = "+15550107001"
    rig.profiles({"stop-a": "+1 555 010 7001", "stop-b": number, "stop-other": "+15550107002"})
    wait_until(lambda: rig.indexed(["stop-a", "stop-b", "stop-other"]) == 3, 30, "the phone index rows")
    numbers = rig.db.query("SELECT phone_hash FROM phone_index WHERE user_id LIKE 'stop-%%'")
    assert all(len(h) == 64 and "5550107" not in h for (h,) in numbers)  # a keyed hash, never the number

    stop = rig.text(number, "STOP", "STOP")
    assert stop.status_code == 200 and stop.headers["content-type"].startswith("text/xml")
    assert b"<Response></Response>" in stop.content
    for user in ("stop-a", "stop-b"):
        assert rig.preferences(user) == [("sms", "*", 0, "twilio_stop")]
    assert rig.preferences("stop-other") == []
    assert (
        rig.metric("reach_inbound_messages_total", provider="twilio", opt_out="stop", outcome="applied") == 1
    )

    rig.send_sms("stop-1-a", "stop-a")
    rig.send_sms("stop-1-other", "stop-other")
    wait_until(lambda: rig.results("stop-a") and rig.results("stop-other"), 30, "both results")
    assert rig.results("stop-a") == [("suppressed", "opted_out")]
    assert rig.results("stop-other") == [("sent", "")]
    assert [m.to for m in rig.twilio.sent] == ["+15550107002"]

    # START, signed the other way (a Webhook Setting's SharedKey, HMAC-SHA256)
    start = rig.text(number, "START", "START", SHARED_KEY)
    assert start.status_code == 200, start.text
    assert rig.preferences("stop-a") == [("sms", "*", 1, "twilio_start")]
    rig.send_sms("stop-2-a", "stop-a")
    wait_until(lambda: len(rig.results("stop-a")) == 2, 30, "the second result")
    assert sorted(rig.results("stop-a")) == [("sent", ""), ("suppressed", "opted_out")]
    assert sorted(m.to for m in rig.twilio.sent) == ["+15550107001", "+15550107002"]


def test_a_forged_stop_changes_nothing(rig: Rig) -> None:
    rig.profiles({"forged-a": "+15550108001"})
    wait_until(lambda: rig.indexed(["forged-a"]) == 1, 30, "the phone index row")
    hook = rig.twilio.webhook(rig.inbound_url, rig.twilio.incoming("+15550108001", "STOP", "STOP"))
    forged = dict(hook.headers, **{"x-twilio-signature": "bm90IHRoZSBzaWduYXR1cmU="})
    answer = httpx.post(rig.inbound_url, content=hook.body, headers=forged, timeout=10)
    assert answer.status_code == 403 and answer.json()["error"] == "bad_signature"
    other_number = hook.body.replace(b"15550108001", b"15550108009")  # signed for another sender
    assert (
        httpx.post(rig.inbound_url, content=other_number, headers=hook.headers, timeout=10).status_code == 403
    )
    assert rig.preferences("forged-a") == []
    assert rig.metric("reach_inbound_rejected_total", provider="twilio", reason="bad_signature") == 2


def test_an_unknown_number_is_answered_200_and_counted(rig: Rig) -> None:
    before = rig.metric("reach_inbound_messages_total", provider="twilio", outcome="unknown_number")
    answer = rig.text("+15550109999", "STOP", "STOP")
    assert answer.status_code == 200
    assert (
        rig.metric("reach_inbound_messages_total", provider="twilio", outcome="unknown_number") == before + 1
    )
    assert rig.text("+15550109999", "hello", None).status_code == 200
    assert (
        rig.metric("reach_inbound_messages_total", provider="twilio", opt_out="none", outcome="ignored") == 1
    )


def test_a_changed_number_moves_the_users_index_row(rig: Rig) -> None:
    rig.profiles({"moved-a": "+15550110001"})
    wait_until(lambda: rig.indexed(["moved-a"]) == 1, 30, "the first index row")
    rig.profiles({"moved-a": "+15550110002"})
    wait_until(
        lambda: rig.text("+15550110002", "STOP", "STOP").status_code == 200 and rig.preferences("moved-a"),
        30,
        "the STOP from the new number to apply",
    )
    assert rig.preferences("moved-a") == [("sms", "*", 0, "twilio_stop")]
    before = rig.metric("reach_inbound_messages_total", provider="twilio", outcome="unknown_number")
    assert rig.text("+15550110001", "STOP", "STOP").status_code == 200  # the old number: nobody now
    assert (
        rig.metric("reach_inbound_messages_total", provider="twilio", outcome="unknown_number") == before + 1
    )
    produce_json(rig.api.settings, rig.api.settings.segments_topic, [{"user_id": "moved-a", "deleted": True}])
    wait_until(lambda: rig.indexed(["moved-a"]) == 0, 30, "a deleted profile's row to go")


async def test_the_index_is_backfilled_on_creation_and_rebuilt_under_a_new_key() -> None:
    settings = Settings(mysql_database=f"reach_{unique_run_id()}", phone_index_key=SecretStr("old-key"))
    await migrate(settings)
    pool = await create_pool(settings)
    db = Db(settings)
    try:
        profiles = [UserProfile(f"bf-{n}", contact={"phone": f"+1555011{n:04d}"}) for n in range(3)]
        await ProfileStore(pool).apply(profiles, 1)  # as stored before the index existed
        db.query("DROP TABLE phone_index")
        await migrate(settings)
        old = PhoneHasher(b"old-key")
        assert sorted(db.query("SELECT phone_hash, user_id FROM phone_index")) == sorted(
            (old.digest(p.contact["phone"]), p.user_id) for p in profiles
        )
        new = PhoneHasher(b"new-key")
        assert await reindex(pool, new, 2) == 3
        assert await PhoneIndex(pool, new).users_of("+1 555 011 0001") == ["bf-1"]
        assert await PhoneIndex(pool, old).users_of("+15550110001") == []
    finally:
        pool.close()
        await pool.wait_closed()
        db.drop()
