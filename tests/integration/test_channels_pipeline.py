"""Every HTTP provider through the real pipeline, and how delivery behaves when
providers fail.

One worker for the module, with a channels file whose providers all point at
local servers that check each provider's real wire protocol and signature.
Events go in on Kafka; the assertions read what the servers received, the
delivery results in MariaDB and the dead-letter topic.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from models.messages import message_id_for
from models.outbox import unpack
from models.storage import migrate
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
from tests.support.http_provider import Reply
from tests.support.providers.aliyun_sms import AliyunSmsServer
from tests.support.providers.apns import ApnsServer, device_token
from tests.support.providers.dingtalk import DingtalkServer
from tests.support.providers.fcm import FcmServer
from tests.support.providers.feishu import FeishuServer
from tests.support.providers.tencent_sms import TencentSmsServer
from tests.support.providers.twilio import TwilioServer
from tests.support.providers.webhook import WebhookServer
from tests.support.providers.wechat import WechatServer
from tests.support.tls import self_signed_cert

pytestmark = pytest.mark.integration

MAX_ATTEMPTS = 3
HOOK_WEIGHTS = {"hook-a": 70, "hook-b": 30}

RULES = """
triggers:
  - {id: t-hook, when: 'name == "t_hook"', template: note, channels: [hooks], dedup_key: "{event_id}"}
  - {id: t-solo, when: 'name == "t_solo"', template: note, channels: [solo], dedup_key: "{event_id}"}
  - {id: t-wechat, when: 'name == "t_wechat"', template: note, channels: [wechat], dedup_key: "{event_id}"}
  - {id: t-bot, when: 'name == "t_bot"', template: note, channels: [bots], dedup_key: "{event_id}"}
  - {id: t-sms, when: 'name == "t_sms"', template: note, channels: [sms], dedup_key: "{event_id}"}
  - {id: t-push, when: 'name == "t_push"', template: note, channels: [push], dedup_key: "{event_id}"}
  - id: t-all
    when: 'name == "t_all"'
    template: note
    channels: [hooks, solo, wechat, bots, sms, push]
  - {id: t-link, when: 'name == "t_link"', template: linked, channels: [bots]}
  - {id: t-link-hook, when: 'name == "t_link_hook"', template: linked, channels: [exempt]}
templates:
  note:
    title: "Note {{ properties.n }}"
    text: "Hello {{ user_id }}, this is note {{ properties.n }}."
  linked:
    title: "Your order"
    text: "Open {{ properties.url }}"
"""
LINK_DOMAINS = ("shop.example",)


@dataclasses.dataclass
class Servers:
    hook_a: WebhookServer
    hook_b: WebhookServer
    solo: WebhookServer
    exempt: WebhookServer  # links are not checked in webhook payloads
    wechat: WechatServer
    feishu: FeishuServer
    dingtalk: DingtalkServer
    aliyun: AliyunSmsServer
    tencent: TencentSmsServer
    twilio: TwilioServer
    fcm: FcmServer
    apns: ApnsServer

    def all(self) -> list[Any]:
        return [getattr(self, f.name) for f in dataclasses.fields(self)]


@dataclasses.dataclass
class ProviderPipeline:
    settings: Settings
    worker: WorkerProcess
    servers: Servers
    db: Db

    def send(self, name: str, count: int, prefix: str, user: str = "") -> list[str]:
        events = [event(f"{prefix}-{n}", user or f"{prefix}-user-{n % 5}", name, n=n) for n in range(count)]
        produce_json(self.settings, self.settings.events_topic, events)
        return [e["event_id"] for e in events]

    def results(self, rule_id: str) -> list[tuple[Any, ...]]:
        return self.db.query(
            "SELECT message_id, attempt, provider, status, error_code FROM delivery_results"
            " WHERE rule_id = %s ORDER BY message_id, attempt",
            [rule_id],
        )


def channels_yaml(servers: Servers) -> str:
    def provider(name: str, type_: str, options: dict[str, Any], weight: int = 1) -> dict[str, Any]:
        return {"name": name, "type": type_, "weight": weight, "options": options}

    channels = {
        "hooks": [
            provider("hook-a", "webhook", servers.hook_a.provider_options(), HOOK_WEIGHTS["hook-a"]),
            provider("hook-b", "webhook", servers.hook_b.provider_options(), HOOK_WEIGHTS["hook-b"]),
        ],
        "solo": [
            provider("solo", "webhook", {**servers.solo.provider_options(), "contact_fields": ["email"]})
        ],
        "exempt": [provider("exempt", "webhook", servers.exempt.provider_options())],
        "wechat": [provider("wechat-mp", "wechat_template", servers.wechat.provider_options())],
        "bots": [
            provider("feishu", "feishu_bot", servers.feishu.provider_options()),
            provider("dingtalk", "dingtalk_bot", servers.dingtalk.provider_options()),
        ],
        "sms": [
            provider("aliyun", "aliyun_sms", servers.aliyun.provider_options()),
            provider("tencent", "tencent_sms", servers.tencent.provider_options()),
            provider("twilio", "twilio_sms", servers.twilio.provider_options()),
        ],
        "push": [
            provider("fcm", "fcm", servers.fcm.provider_options()),
            provider("apns", "apns", servers.apns.provider_options()),
        ],
    }
    document = {
        "channels": {name: {"window_seconds": 1, "providers": entries} for name, entries in channels.items()}
    }
    return yaml.safe_dump(document, sort_keys=False)


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    running = Servers(
        hook_a=WebhookServer().start(),
        hook_b=WebhookServer().start(),
        solo=WebhookServer().start(),
        exempt=WebhookServer().start(),
        wechat=WechatServer().start(),
        feishu=FeishuServer().start(),
        dingtalk=DingtalkServer().start(),
        aliyun=AliyunSmsServer(templates={"SMS_100001": ("user_id",)}).start(),
        tencent=TencentSmsServer(templates={"1400001": ("user_id",)}).start(),
        twilio=TwilioServer().start(),
        fcm=FcmServer().start(),
        apns=ApnsServer(self_signed_cert()).start(),
    )
    yield running
    for server in running.all():
        server.stop()


@pytest.fixture(scope="module")
def pp(tmp_path_factory: pytest.TempPathFactory, servers: Servers) -> Iterator[ProviderPipeline]:
    tmp: Path = tmp_path_factory.mktemp("providers")
    (tmp / "rules").mkdir()
    (tmp / "rules" / "providers.yaml").write_text(RULES)
    settings = make_settings(
        tmp,
        unique_run_id(),
        channels_yaml(servers),
        max_attempts=MAX_ATTEMPTS,
        retry_base_ms=200,
        retry_cap_ms=1000,
        breaker_failures=3,
        breaker_cooldown_ms=600_000,
        link_domains=LINK_DOMAINS,
    )
    asyncio.run(migrate(settings))
    worker = WorkerProcess(settings, tmp / "worker.log").start()
    running = ProviderPipeline(settings, worker, servers, Db(settings))
    yield running
    worker.stop()
    running.db.drop()
    clear_redis(settings)


def test_wechat_and_bots_deliver_through_the_pipeline(pp: ProviderPipeline) -> None:
    produce_json(
        pp.settings,
        pp.settings.segments_topic,
        [{"user_id": "wx-user", "segments": [], "contact": {"wechat_openid": "o-wx-user"}}],
    )
    wait_until(lambda: pp.db.query("SELECT 1 FROM user_profiles WHERE user_id = 'wx-user'"), 30, "profile")
    pp.send("t_wechat", 1, "wx", user="wx-user")
    [sent] = pp.servers.wechat.delivered.wait_for(1)
    assert sent["touser"] == "o-wx-user"
    assert sent["data"]["first"]["value"] == "Note 0"

    pp.send("t_bot", 12, "bot")
    wait_until(
        lambda: len(pp.servers.feishu.delivered) + len(pp.servers.dingtalk.delivered) >= 12, 60, "bot posts"
    )
    rows = wait_until(
        lambda: (r := pp.results("t-bot")) and len(r) == 12 and all(s == "sent" for *_, s, _ in r) and r,
        30,
        "bot results",
    )
    assert {provider for _, _, provider, _, _ in rows} <= {"feishu", "dingtalk"}
    assert len(pp.servers.feishu.delivered) + len(pp.servers.dingtalk.delivered) == 12


def test_a_user_without_an_openid_gets_no_wechat_message(pp: ProviderPipeline) -> None:
    before = len(pp.servers.wechat.requests)
    pp.send("t_wechat", 1, "wx-none", user="no-openid")
    pp.send("t_bot", 1, "wx-none-marker", user="no-openid")  # handled after the wechat event
    wait_until(
        lambda: pp.db.query(
            "SELECT 1 FROM delivery_results WHERE user_id = 'no-openid' AND channel = 'bots'"
        ),
        30,
        "the marker's result",
    )
    assert (
        pp.db.query("SELECT 1 FROM delivery_results WHERE user_id = 'no-openid' AND channel = 'wechat'") == []
    )
    assert len(pp.servers.wechat.requests) == before


def add_profiles(pp: ProviderPipeline, contacts: dict[str, dict[str, str]]) -> None:
    produce_json(
        pp.settings,
        pp.settings.segments_topic,
        [{"user_id": user, "segments": [], "contact": contact} for user, contact in contacts.items()],
    )
    placeholders = ",".join(["%s"] * len(contacts))
    wait_until(
        lambda: (
            pp.db.query(
                f"SELECT COUNT(*) FROM user_profiles WHERE user_id IN ({placeholders})", list(contacts)
            )
            == [(len(contacts),)]
        ),
        30,
        "profiles stored",
    )


def test_sms_goes_out_through_all_three_providers_once_each(pp: ProviderPipeline) -> None:
    users = {f"sms-user-{n}": {"phone": f"+86138000{n:05d}"} for n in range(30)}
    add_profiles(pp, users)
    events = [event(f"sms-{n}", user, "t_sms", n=n) for n, user in enumerate(users)]
    produce_json(pp.settings, pp.settings.events_topic, events)
    rows = wait_until(lambda: (r := pp.results("t-sms")) and len(r) >= len(users) and r, 60, "30 sms results")
    assert {status for _, _, _, status, _ in rows} == {"sent"}, rows
    by_provider = collections.Counter(provider for _, _, provider, _, _ in rows)
    servers = {"aliyun": pp.servers.aliyun, "tencent": pp.servers.tencent, "twilio": pp.servers.twilio}
    for name, server in servers.items():
        assert len(server.sent) == by_provider[name], (name, by_provider)
    phones = [
        getattr(sms, "phone", getattr(sms, "to", "")).lstrip("+") for s in servers.values() for sms in s.sent
    ]
    assert sorted(phones) == sorted(c["phone"].lstrip("+") for c in users.values())
    assert all(count > 0 for count in by_provider.values()), by_provider


def delivered_keys(server: WebhookServer) -> list[str]:
    return [body["message_id"] for body in server.delivered.items()]


def test_weighted_split_holds_over_many_messages(pp: ProviderPipeline) -> None:
    total = 400
    pp.send("t_hook", total, "split")
    rows = wait_until(
        lambda: (r := [x for x in pp.results("t-hook") if x[3] == "sent"]) and len(r) >= total and r,
        120,
        f"{total} hook results",
    )
    counts = collections.Counter(provider for _, _, provider, _, _ in rows)
    share = HOOK_WEIGHTS["hook-a"] / sum(HOOK_WEIGHTS.values())
    tolerance = 5 * math.sqrt(total * share * (1 - share))
    assert abs(counts["hook-a"] - total * share) <= tolerance, counts
    ids = delivered_keys(pp.servers.hook_a) + delivered_keys(pp.servers.hook_b)
    assert len(ids) == len(set(ids)) == total


def test_a_failing_provider_fails_over_and_every_message_is_delivered_once(pp: ProviderPipeline) -> None:
    pp.servers.hook_a.clear()
    pp.servers.hook_b.clear()
    before_a = len(pp.servers.hook_a.delivered)
    before_b = len(pp.servers.hook_b.delivered)
    pp.servers.hook_a.answer_next(*[Reply(503, json={"error": "down"}) for _ in range(1000)])
    total = 40
    ids = {message_id_for("t-hook", f"t-hook:{e}", "hooks") for e in pp.send("t_hook", total, "failover")}
    wait_until(
        lambda: len(pp.servers.hook_b.delivered) - before_b >= total, 120, "every message delivered by hook-b"
    )
    assert len(pp.servers.hook_a.delivered) == before_a
    delivered_b = pp.servers.hook_b.delivered.items()[before_b:]
    assert sorted(body["message_id"] for body in delivered_b) == sorted(ids)
    rows = [r for r in pp.results("t-hook") if r[0] in ids]
    sent = [(message_id, provider) for message_id, _, provider, status, _ in rows if status == "sent"]
    assert sorted(sent) == sorted((message_id, "hook-b") for message_id in ids), "one sent row each"
    assert any(r[2] == "hook-a" and r[3] == "retrying" for r in rows), "some went to hook-a first"
    # After breaker_failures failures the breaker opened: hook-a saw only a handful of requests.
    assert len(pp.servers.hook_a.requests) < total


def test_a_message_out_of_retries_goes_to_the_dead_letter_topic(pp: ProviderPipeline) -> None:
    pp.servers.solo.answer_next(*[Reply(503, json={"error": "down"}) for _ in range(MAX_ATTEMPTS)])
    [event_id] = pp.send("t_solo", 1, "dlq")
    records = read_topic_until(
        pp.settings, pp.settings.delivery_dead_letter_topic, lambda rs: len(rs) >= 1, timeout=60
    )
    record = orjson.loads(records[0][1])
    assert record["reason"] == "503"
    assert record["message"]["event_id"] == event_id
    assert record["message"]["attempt"] == MAX_ATTEMPTS
    rows = pp.results("t-solo")
    assert [(attempt, status) for _, attempt, _, status, _ in rows] == [
        (1, "retrying"),
        (2, "retrying"),
        (3, "failed"),
    ]
    assert len(pp.servers.solo.requests) == MAX_ATTEMPTS


def test_push_goes_through_the_provider_of_each_users_device(pp: ProviderPipeline) -> None:
    users = {f"android-{n}": {"fcm_token": f"fcm-token-{n}"} for n in range(5)}
    users |= {f"iphone-{n}": {"apns_token": device_token(n)} for n in range(5)}
    add_profiles(pp, users)
    produce_json(
        pp.settings,
        pp.settings.events_topic,
        [event(f"push-{user}", user, "t_push", n=n) for n, user in enumerate(users)],
    )
    pp.servers.fcm.delivered.wait_for(5)
    pp.servers.apns.delivered.wait_for(5)
    rows = wait_until(lambda: (r := pp.results("t-push")) and len(r) >= 10 and r, 30, "push results")
    users_by_provider = {
        provider: {
            u
            for (u,) in pp.db.query(
                "SELECT user_id FROM delivery_results WHERE rule_id = 't-push' AND provider = %s", [provider]
            )
        }
        for provider in ("fcm", "apns")
    }
    assert users_by_provider == {
        "fcm": {u for u in users if u.startswith("android")},
        "apns": {u for u in users if u.startswith("iphone")},
    }
    assert {status for _, _, _, status, _ in rows} == {"sent"}


def test_an_unregistered_token_is_recorded_and_not_tried_again(pp: ProviderPipeline) -> None:
    pp.servers.fcm.fail_token("fcm-dead-token", 404, "UNREGISTERED")
    add_profiles(pp, {"dead-device": {"fcm_token": "fcm-dead-token"}})
    tried = lambda: [r for r in pp.servers.fcm.requests if b"fcm-dead-token" in r.body]  # noqa: E731
    produce_json(pp.settings, pp.settings.events_topic, [event("dead-1", "dead-device", "t_push", n=1)])
    wait_until(tried, 30, "the first push to the dead token")
    produce_json(pp.settings, pp.settings.events_topic, [event("dead-2", "dead-device", "t_push", n=2)])
    rows = wait_until(
        lambda: (
            (
                r := pp.db.query(
                    "SELECT status, error_code FROM delivery_results"
                    " WHERE user_id = 'dead-device' ORDER BY completed_at"
                )
            )
            and len(r) == 2
            and r
        ),
        30,
        "both results",
    )
    assert rows == [("failed", "UNREGISTERED"), ("failed", "address_dead")]
    assert len(tried()) == 1


def test_a_send_interrupted_by_a_crash_is_recorded_unknown_not_repeated(pp: ProviderPipeline) -> None:
    """A worker that died between calling a provider and recording the outcome leaves the
    message marked as being sent; the replay records it as unknown instead of sending again."""
    import redis

    users = {"crash-user": {"phone": "+8613900000042"}}
    add_profiles(pp, users)
    message_id = message_id_for("t-sms", "t-sms:crash-1", "sms")
    client = redis.Redis.from_url(pp.settings.redis_url.get_secret_value())
    client.set(f"{pp.settings.redis_prefix}sent:{message_id}", b"s", ex=600)
    sent_before = sum(len(s.sent) for s in (pp.servers.aliyun, pp.servers.tencent, pp.servers.twilio))
    produce_json(pp.settings, pp.settings.events_topic, [event("crash-1", "crash-user", "t_sms", n=1)])
    rows = wait_until(
        lambda: pp.db.query(
            "SELECT status, error_code FROM delivery_results WHERE message_id = %s", [message_id]
        ),
        30,
        "the interrupted message's result",
    )
    assert rows == [("unknown", "interrupted")]
    assert sum(len(s.sent) for s in (pp.servers.aliyun, pp.servers.tencent, pp.servers.twilio)) == sent_before
    assert client.get(f"{pp.settings.redis_prefix}sent:{message_id}") == b"1"


def test_twilio_21610_records_an_sms_opt_out_and_the_next_sms_is_suppressed(pp: ProviderPipeline) -> None:
    """Twilio answers 21610 for a number that texted STOP: reach records the user's opt-out
    of SMS, so their next SMS goes through no provider at all."""
    users = {f"stop-user-{n}": {"phone": f"+1555010{n:04d}"} for n in range(20)}
    for contact in users.values():
        pp.servers.twilio.fail_number(contact["phone"], 21610)
    add_profiles(pp, users)
    first = [event(f"stop-a-{n}", user, "t_sms", n=n) for n, user in enumerate(users)]
    produce_json(pp.settings, pp.settings.events_topic, first)
    rows = lambda: pp.db.query(  # noqa: E731
        "SELECT user_id, status, error_code FROM delivery_results WHERE user_id LIKE 'stop-user-%%'"
    )
    wait_until(lambda: len(rows()) == len(users), 60, "the first SMS of every user")
    stopped = {user for user, _, code in rows() if code == "21610"}
    assert stopped, "the weighted draw sent no message through Twilio"  # (2/3)^20 of runs
    opted = lambda: pp.db.query(  # noqa: E731
        "SELECT user_id, channel, category, allowed, source FROM user_preferences"
        " WHERE user_id LIKE 'stop-user-%%'"
    )
    assert sorted(opted()) == sorted((u, "sms", "*", 0, "provider") for u in stopped)
    second = [event(f"stop-b-{n}", user, "t_sms", n=n) for n, user in enumerate(users)]
    produce_json(pp.settings, pp.settings.events_topic, second)
    wait_until(lambda: len(rows()) == 2 * len(users), 60, "the second SMS of every user")
    suppressed = {user for user, status, code in rows() if (status, code) == ("suppressed", "opted_out")}
    assert suppressed == stopped


def test_outbox_records_carry_only_the_contact_fields_of_their_channel(pp: ProviderPipeline) -> None:
    everything = {
        "email": "all@example.com",
        "phone": "+8613800099999",
        "fcm_token": "fcm-token-all",
        "apns_token": device_token(99),
        "wechat_openid": "o-all",
    }
    add_profiles(pp, {"contact-all": everything})
    pp.send("t_all", 1, "contact-all", user="contact-all")
    expected = {
        "hooks": {},
        "solo": {"email": everything["email"]},  # the fields its contact_fields option names
        "wechat": {"wechat_openid": everything["wechat_openid"]},
        "bots": {},
        "sms": {"phone": everything["phone"]},
        "push": {"fcm_token": everything["fcm_token"], "apns_token": everything["apns_token"]},
    }
    for channel, contact in expected.items():
        records = read_topic_until(
            pp.settings, pp.settings.outbox_topic(channel), lambda got: bool(_messages_of(got, "contact-all"))
        )
        [message] = _messages_of(records, "contact-all")
        assert message["contact"] == contact, channel


def _messages_of(records: list[tuple[bytes | None, bytes]], user: str) -> list[dict[str, Any]]:
    return [m for _key, value in records for m in unpack(value) if m["user_id"] == user]


def test_a_link_outside_the_link_domains_fails_the_message_and_nothing_is_sent(pp: ProviderPipeline) -> None:
    links = {"link-good": "https://shop.example/order/1", "link-evil": "https://shop.example@evil.example/x"}
    produce_json(
        pp.settings,
        pp.settings.events_topic,
        [event(e, "link-user", "t_link", url=url) for e, url in links.items()]
        + [event("link-hook", "link-user", "t_link_hook", url=links["link-evil"])],
    )
    rows = wait_until(
        lambda: (
            (
                r := pp.db.query(
                    "SELECT message_id, status, error_code, error FROM delivery_results"
                    " WHERE user_id = 'link-user'"
                )
            )
            and len(r) == 3
            and r
        ),
        60,
        "the three link results",
    )
    by_id = {message_id: (status, code, error) for message_id, status, code, error in rows}
    assert by_id[message_id_for("t-link", "t-link:link-good", "bots")][:2] == ("sent", "")
    assert by_id[message_id_for("t-link", "t-link:link-evil", "bots")] == (
        "failed",
        "link_not_allowed",
        "a link in the text points to 'evil.example', which is not in REACH_LINK_DOMAINS",
    )
    assert by_id[message_id_for("t-link-hook", "t-link-hook:link-hook", "exempt")][:2] == ("sent", "")
    posted = [r.body for server in (pp.servers.feishu, pp.servers.dingtalk) for r in server.requests]
    assert sum(b"shop.example/order/1" in body for body in posted) == 1
    assert not any(b"evil.example" in body for body in posted)
