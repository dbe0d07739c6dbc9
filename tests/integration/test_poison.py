"""Poison isolation through the real pipeline: one bad event, profile, template output,
provider answer or result row fails alone, with its reason, while the good items of
the same batch are delivered and the worker keeps running (no exit, no restart).

A second worker shows what a claim means: killed while SMTP is in the middle of a
batch, only the messages whose send had started are ``unknown`` after the restart;
the ones never attempted are sent.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from models.messages import ReachMessage, message_id_for
from models.storage import migrate
from reach.producer import SyncProducer
from reach.settings import Settings
from tests.integration.harness import (
    Db,
    WorkerProcess,
    clear_redis,
    event,
    make_settings,
    produce_json,
    read_topic_until,
    unique_run_id,
    wait_until,
)
from tests.support.http_provider import Fault, Reply
from tests.support.providers.feishu import FeishuServer
from tests.support.providers.webhook import WebhookServer
from tests.support.smtp_server import SmtpTestServer

pytestmark = pytest.mark.integration

INBOX_LIMIT = 2000  # bytes of rendered content; far below any sandbox ceiling
MAX_DEPTH = 600  # above the depth at which planning used to raise RecursionError (500)

TEMPLATES = """
templates:
  note:
    title: "Note {{ properties.n }}"
    text: "{{ properties.body | default('hello') }}"
"""
RULES = (
    """
triggers:
  - {id: p-note, when: 'name == "p_note"', template: note, channels: [inbox], dedup_key: "{event_id}"}
  - {id: p-bot, when: 'name == "p_bot"', template: note, channels: [bots], dedup_key: "{event_id}"}
  - {id: p-hook, when: 'name == "p_hook"', template: note, channels: [hooks], dedup_key: "{event_id}"}
"""
    + TEMPLATES
)
MAIL_RULES = (
    """
triggers:
  - {id: p-mail, when: 'name == "p_mail"', template: note, channels: [email], dedup_key: "{event_id}"}
"""
    + TEMPLATES
)


@dataclasses.dataclass
class Poison:
    settings: Settings
    worker: WorkerProcess
    db: Db
    feishu: FeishuServer
    hook: WebhookServer

    def results(self, rule_id: str) -> dict[str, tuple[str, str]]:
        rows = self.db.query(
            "SELECT message_id, status, error_code FROM delivery_results WHERE rule_id = %s", [rule_id]
        )
        return {message_id: (status, code) for message_id, status, code in rows}


def channels_yaml(feishu: FeishuServer, hook: WebhookServer) -> str:
    channels = {
        "inbox": {
            "window_seconds": 1,
            "max_content_bytes": INBOX_LIMIT,
            "providers": [{"name": "mariadb", "type": "inbox"}],
        },
        "bots": {
            "window_seconds": 1,
            "providers": [{"name": "feishu", "type": "feishu_bot", "options": feishu.provider_options()}],
        },
        "hooks": {
            "window_seconds": 1,
            "providers": [{"name": "hook", "type": "webhook", "options": hook.provider_options()}],
        },
    }
    return yaml.safe_dump({"channels": channels}, sort_keys=False)


def start(tmp: Path, channels: str, rules: str, **overrides: Any) -> tuple[Settings, WorkerProcess]:
    (tmp / "rules").mkdir(exist_ok=True)
    (tmp / "rules" / "poison.yaml").write_text(rules)
    settings = make_settings(tmp, unique_run_id(), channels, **overrides)
    asyncio.run(migrate(settings))
    return settings, WorkerProcess(settings, tmp / "worker.log").start()


def stop(settings: Settings, worker: WorkerProcess) -> None:
    worker.stop()
    Db(settings).drop()
    clear_redis(settings)


@pytest.fixture(scope="module")
def poison(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Poison]:
    feishu, hook = FeishuServer().start(), WebhookServer().start()
    tmp = tmp_path_factory.mktemp("poison")
    settings, worker = start(tmp, channels_yaml(feishu, hook), RULES, event_max_depth=MAX_DEPTH)
    yield Poison(settings, worker, Db(settings), feishu, hook)
    stop(settings, worker)
    feishu.stop()
    hook.stop()


def assert_still_running(worker: WorkerProcess) -> None:
    """Not exited, never restarted, no agent crashed and restarted by faust."""
    assert worker.proc is not None and worker.proc.poll() is None, worker.log()[-4000:]
    log = worker.log()
    assert log.count("worker.ready") == 1
    assert "step_crashed" not in log and "Crashed reason" not in log, log[-4000:]


def dead_letters(settings: Settings, dlq: str, count: int, **match: str) -> list[dict[str, Any]]:
    """The records of topic ``dlq`` whose fields equal ``match``, once ``count`` of them arrived."""

    def matching(records: list[tuple[bytes | None, bytes]]) -> list[dict[str, Any]]:
        decoded = [orjson.loads(value) for _, value in records]
        return [r for r in decoded if all(r.get(k) == v for k, v in match.items())]

    records = read_topic_until(settings, dlq, lambda rs: len(matching(rs)) >= count, timeout=60)
    return matching(records)


def note_id(event_id: str, rule: str = "p-note", channel: str = "inbox") -> str:
    return message_id_for(rule, f"{rule}:{event_id}", channel)


def nested(depth: int) -> bytes:
    return b'{"a":' * depth + b"{}" + b"}" * depth


def raw_event(event_id: str, user: str, properties: bytes) -> bytes:
    body = orjson.dumps(event(event_id, user, "p_note", n=0))
    return body.replace(b'"properties":{"n":0}', b'"properties":' + properties)


# --- events -------------------------------------------------------------------------------------


def test_deep_and_broken_events_fail_alone_and_their_batch_is_delivered(poison: Poison) -> None:
    s, user = poison.settings, "deep-user"
    good = [orjson.dumps(event(f"deep-good-{n}", user, "p_note", n=n)) for n in range(3)]
    batch = [
        good[0],
        raw_event("deep-500", user, nested(500)),  # within the contract here; planning used to raise
        good[1],
        raw_event("deep-900", user, nested(900)),  # over the contract's depth
        b"{not json",
        good[2],
    ]
    SyncProducer(s.kafka_bootstrap).send_many(s.events_topic, [(user.encode(), v) for v in batch])

    ids = [note_id(f"deep-good-{n}") for n in range(3)]
    inbox = lambda: poison.db.query("SELECT 1 FROM inbox_messages WHERE user_id = %s", [user])  # noqa: E731
    wait_until(lambda: len(inbox()) == 3, 60, "the good events' messages")
    assert set(poison.results("p-note")) >= set(ids)
    records = dead_letters(s, s.dead_letter_topic, 3, topic=s.events_topic)
    by_reason = {r["reason"]: r for r in records if r["value"].startswith(("{not", '{"event_id":"deep-'))}
    assert set(by_reason) == {"plan_error", "too_deep", "invalid_json"}
    assert '"event_id":"deep-500"' in by_reason["plan_error"]["value"]
    assert "Recursion" in by_reason["plan_error"]["detail"]  # RecursionError, or orjson's TypeError
    assert '"event_id":"deep-900"' in by_reason["too_deep"]["value"]
    assert note_id("deep-500") not in poison.results("p-note")
    assert_still_running(poison.worker)


# --- profiles -----------------------------------------------------------------------------------


def test_a_profile_that_breaks_parsing_or_storage_fails_alone(poison: Poison) -> None:
    s = poison.settings
    profiles = [
        {"user_id": "prof-ok-1", "segments": ["vip"], "contact": {}},
        {"user_id": "prof-long", "segments": ["s" * 100], "contact": {}},  # segment is VARCHAR(64)
        {"user_id": "prof-bad", "segments": "vip", "contact": {}},  # not a list
        {"user_id": "prof-ok-2", "segments": ["new"], "contact": {}},
    ]
    produce_json(s, s.segments_topic, profiles)
    users = lambda: poison.db.query("SELECT user_id FROM user_profiles WHERE user_id LIKE 'prof-%'")  # noqa: E731
    stored = wait_until(lambda: (r := users()) and len(r) >= 2 and r, 60, "the good profiles stored")
    records = dead_letters(s, s.dead_letter_topic, 2, topic=s.segments_topic)
    assert sorted(u for (u,) in users()) == ["prof-ok-1", "prof-ok-2"] == sorted(u for (u,) in stored)
    members = poison.db.query("SELECT segment, user_id FROM segment_members WHERE user_id LIKE 'prof-%'")
    assert sorted(members) == [("new", "prof-ok-2"), ("vip", "prof-ok-1")]
    reasons = {orjson.loads(r["value"])["user_id"]: r["reason"] for r in records}
    assert reasons == {"prof-long": "profile_refused", "prof-bad": "profile_bad_segments"}
    refused = next(r for r in records if r["reason"] == "profile_refused")
    assert "DataError" in refused["detail"] and "segment" in refused["detail"]
    # The refused profile did not enter the routing table either: its user gets no message
    # through it, while a stored profile's user does.
    produce_json(s, s.events_topic, [event("prof-ping", "prof-ok-1", "p_note", n=1)])
    wait_until(lambda: note_id("prof-ping") in poison.results("p-note"), 30, "a message to a stored profile")
    assert_still_running(poison.worker)


# --- rendered content ---------------------------------------------------------------------------


def test_content_over_the_channels_limit_is_a_failed_result_and_the_rest_is_delivered(poison: Poison) -> None:
    s, user = poison.settings, "big-user"
    events = [
        event("big-ok-1", user, "p_note", n=1),
        event("big-huge", user, "p_note", n=2, body="x" * (INBOX_LIMIT + 1)),
        event("big-ok-2", user, "p_note", n=3, body="é" * (INBOX_LIMIT // 2 - 10)),  # fits in bytes, barely
        event("big-multi", user, "p_note", n=4, body="é" * (INBOX_LIMIT // 2 + 1)),  # over in UTF-8 bytes
    ]
    produce_json(s, s.events_topic, events)
    ids = {e["event_id"]: note_id(e["event_id"]) for e in events}
    results = wait_until(
        lambda: (r := poison.results("p-note")) and all(i in r for i in ids.values()) and r, 60, "4 results"
    )
    assert results[ids["big-huge"]] == ("failed", "content_too_large")
    assert results[ids["big-multi"]] == ("failed", "content_too_large")
    assert results[ids["big-ok-1"]] == results[ids["big-ok-2"]] == ("sent", "")
    stored = poison.db.query("SELECT message_id FROM inbox_messages WHERE user_id = %s", [user])
    assert sorted(m for (m,) in stored) == sorted([ids["big-ok-1"], ids["big-ok-2"]])
    assert_still_running(poison.worker)


# --- provider answers ---------------------------------------------------------------------------


def test_a_garbage_provider_answer_fails_that_message_alone(poison: Poison) -> None:
    s = poison.settings
    poison.feishu.inject(
        Fault.status(200, body=b"<html>gateway says hi</html>"),
        Fault.status(200, json=["not", "an", "object"]),
    )
    events = [event(f"bot-{n}", "bot-user", "p_bot", n=n) for n in range(6)]
    produce_json(s, s.events_topic, events)
    ids = [note_id(e["event_id"], "p-bot", "bots") for e in events]
    results = wait_until(
        lambda: (r := poison.results("p-bot")) and all(i in r for i in ids) and r, 60, "6 bot results"
    )
    outcomes = sorted(results[i] for i in ids)
    assert outcomes == [("sent", "")] * 4 + [("unknown", "bad_response")] * 2
    assert len(poison.feishu.delivered) == 4
    assert_still_running(poison.worker)


# --- stored results -----------------------------------------------------------------------------


def test_a_result_row_the_database_refuses_is_stored_without_it_and_dead_lettered(poison: Poison) -> None:
    s = poison.settings
    poison.hook.answer_next(Reply(200, json={"id": "r" * 5000}))  # provider_message_id is VARCHAR(256)
    events = [event(f"hook-{n}", "hook-user", "p_hook", n=n) for n in range(5)]
    produce_json(s, s.events_topic, events)
    ids = [note_id(e["event_id"], "p-hook", "hooks") for e in events]
    results = wait_until(
        lambda: (r := poison.results("p-hook")) and all(i in r for i in ids) and r, 60, "5 hook results"
    )
    assert sorted(results[i] for i in ids) == [("sent", "")] * 4 + [("sent", "result_refused")]
    [refused] = [i for i in ids if results[i][1] == "result_refused"]
    [record] = dead_letters(s, s.delivery_dead_letter_topic, 1, reason="result_refused")
    assert record["result"]["message_id"] == refused
    assert record["result"]["provider_message_id"] == "r" * 5000
    assert "DataError" in record["detail"]
    assert poison.db.query(
        "SELECT provider_message_id FROM delivery_results WHERE message_id = %s", [refused]
    ) == [("",)]
    assert_still_running(poison.worker)


def test_an_outbox_record_that_does_not_decode_is_dead_lettered(poison: Poison) -> None:
    s = poison.settings
    good = event("outbox-ok", "outbox-user", "p_note", n=1)
    SyncProducer(s.kafka_bootstrap).send_many(
        s.outbox_topic("inbox"), [(b"outbox-user", b"{not a message"), (b"outbox-user", b'{"message_id": 5}')]
    )
    produce_json(s, s.events_topic, [good])
    wait_until(lambda: note_id("outbox-ok") in poison.results("p-note"), 30, "the good message")
    records = dead_letters(s, s.delivery_dead_letter_topic, 2, reason="bad_outbox_record")
    assert sorted(r["value"] for r in records) == ['{"message_id": 5}', "{not a message"]
    assert_still_running(poison.worker)


# --- claims -------------------------------------------------------------------------------------


def offsets(settings: Settings) -> dict[str, tuple[int, int]]:
    """Committed offset and end of each partition of the worker's topics, for failure messages."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": settings.app_id})
    try:
        found = {}
        for topic in (settings.events_topic, settings.outbox_topic("email")):
            parts = [TopicPartition(topic, p) for p in range(settings.partitions)]
            for tp in consumer.committed(parts, timeout=10):
                _, high = consumer.get_watermark_offsets(tp, timeout=10)
                found[f"{topic}[{tp.partition}]"] = (tp.offset, high)
        return found
    finally:
        consumer.close()


def mail_channels(smtp: SmtpTestServer) -> str:
    options = smtp.client_options(timeout=60)
    email = {"window_seconds": 1, "providers": [{"name": "smtp", "type": "smtp", "options": options}]}
    return yaml.safe_dump({"channels": {"email": email}})


def test_after_a_crash_mid_batch_only_started_sends_are_unknown_and_the_rest_are_sent(
    tmp_path: Path,
) -> None:
    # Within a partition the SMTP provider sends in event order: messages after the stalled
    # one in its partition (all but certain with 12 users on 2) are never attempted.
    users = [f"mail-{n}" for n in range(12)]
    stalled = "mail-1@example.org"
    with SmtpTestServer() as smtp:
        settings, worker = start(tmp_path, mail_channels(smtp), MAIL_RULES)
        try:
            produce_json(
                settings,
                settings.segments_topic,
                [{"user_id": u, "segments": [], "contact": {"email": f"{u}@example.org"}} for u in users],
            )
            stored = lambda: len(Db(settings).query("SELECT 1 FROM user_profiles"))  # noqa: E731
            wait_until(lambda: stored() == len(users), 30, "profiles")
            smtp.stall_after_data(stalled)  # its DATA arrives, its reply never does
            produce_json(settings, settings.events_topic, [event(f"m-{u}", u, "p_mail", n=0) for u in users])
            smtp.wait_for_dropped(1, within=60)
            received_before = {m.rcpt_tos[0] for m in smtp.messages} | {stalled}
            worker.kill()
            smtp.clear_faults()
            smtp.disconnect_all()
            restarted = WorkerProcess(settings, tmp_path / "worker-2.log").start()
            try:
                ids = {u: message_id_for("p-mail", f"p-mail:m-{u}", "email") for u in users}
                db = Db(settings)

                latest: dict[str, tuple[str, str]] = {}

                def all_final() -> bool:
                    rows = db.query("SELECT message_id, status, error_code FROM delivery_results")
                    latest.update({m: (status, code) for m, status, code in rows})
                    return all(latest.get(i, ("",))[0] in ("sent", "unknown", "failed") for i in ids.values())

                try:
                    wait_until(all_final, 60, "a final result for each message")
                except AssertionError as exc:
                    raise AssertionError(f"{exc}: {latest} offsets {offsets(settings)}") from None
                final = latest
                by_address = {f"{u}@example.org": final[ids[u]] for u in users}
                unknown = {a for a, (status, _) in by_address.items() if status == "unknown"}
                assert stalled in unknown
                assert unknown <= received_before  # unknown only where a send had started
                assert {by_address[a] for a in unknown} == {("unknown", "interrupted")}
                never_attempted = {f"{u}@example.org" for u in users} - received_before
                assert never_attempted, "the kill came before the rest of the batch was attempted"
                assert {by_address[a] for a in never_attempted} == {("sent", "")}
                # Nothing went out twice: each address got one message (the stalled one counts once).
                delivered = [m.rcpt_tos[0] for m in smtp.messages] + [m.rcpt_tos[0] for m in smtp.dropped]
                assert sorted(delivered) == sorted(f"{u}@example.org" for u in users)
            finally:
                restarted.stop()
        finally:
            stop(settings, worker)


def test_one_bad_message_of_a_frame_fails_alone(poison: Poison) -> None:
    s = poison.settings
    good = event("frame-ok", "outbox-user", "p_note", n=1)
    frame = b'[{"message_id": 6}, "not an object", ' + message_for(good) + b"]"
    SyncProducer(s.kafka_bootstrap).send_many(s.outbox_topic("inbox"), [(b"outbox-user", frame)])
    wanted = {'{"message_id":6}', '"not an object"'}

    def both(records: list[tuple[bytes | None, bytes]]) -> bool:
        return wanted <= {orjson.loads(value).get("value") for _, value in records}

    read_topic_until(s, s.delivery_dead_letter_topic, both, timeout=60)
    wait_until(lambda: note_id("frame-ok") in poison.results("p-note"), 30, "the frame's good message")
    assert_still_running(poison.worker)


def message_for(source: dict[str, Any]) -> bytes:
    """The inbox message the p-note rule makes of ``source``, as the trigger would encode it."""
    return ReachMessage(
        message_id=note_id(source["event_id"]), user_id=source["user_id"], rule_id="p-note",
        template="note", channel="inbox", provider="mariadb", priority=5,
        event_id=source["event_id"], event_name=source["name"], event_ts=source["ts"],
        created_ts=source["ts"], variables={"properties": source["properties"]}, contact={},
    ).to_bytes()  # fmt: skip
