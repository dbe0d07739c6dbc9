"""The pipeline end to end: events on Kafka -> rules -> inbox (MariaDB, read
through the API) and email (a real SMTP server), with result rows."""

from __future__ import annotations

import httpx
import orjson
import pytest

from models.outbox import unpack
from reach.producer import SyncProducer
from tests.integration.conftest import Api, Pipeline
from tests.integration.harness import event, produce_json, read_topic_until, wait_until

pytestmark = pytest.mark.integration


def add_profile(p: Pipeline, user_id: str, email: str | None, segments: list[str] | None = None) -> None:
    contact = {"email": email} if email else {}
    produce_json(
        p.settings,
        p.settings.segments_topic,
        [{"user_id": user_id, "segments": segments or [], "contact": contact}],
    )
    wait_until(
        lambda: p.db.query("SELECT 1 FROM user_profiles WHERE user_id = %s", [user_id]),
        30,
        f"profile of {user_id} stored",
    )


def inbox(api: Api, user_id: str, **params: object) -> dict:
    response = httpx.get(
        f"{api.base_url}/v1/users/{user_id}/inbox", params=params, headers=api.headers, timeout=5
    )
    assert response.status_code == 200, response.text
    return response.json()


def results(p: Pipeline, user_id: str) -> list[tuple]:
    return p.db.query(
        "SELECT channel, provider, status, attempt, error_code FROM delivery_results WHERE user_id = %s "
        "ORDER BY channel",
        [user_id],
    )


def ping(p: Pipeline, user_id: str, n: int) -> None:
    """A marker event; once its inbox message exists, everything the user sent before was handled."""
    produce_json(
        p.settings, p.settings.events_topic, [event(f"{user_id}-ping-{n}", user_id, "test_ping", n=n)]
    )
    wait_until(
        lambda: p.db.query(
            "SELECT 1 FROM inbox_messages WHERE user_id = %s AND title = %s", [user_id, f"ping {n}"]
        ),
        30,
        f"ping {n} of {user_id}",
    )


def test_signup_reaches_inbox_and_email_with_result_rows(pipeline: Pipeline, api: Api) -> None:
    user = "ada-1"
    add_profile(pipeline, user, "ada@example.com")
    produce_json(
        pipeline.settings,
        pipeline.settings.events_topic,
        [event("signup-ada-1", user, "signup", first_name="Ada")],
    )

    page = wait_until(lambda: inbox(api, user)["items"] and inbox(api, user), 30, "the welcome inbox message")
    assert page["unread"] == 1
    assert "Ada" in page["items"][0]["title"]

    mail = wait_until(lambda: pipeline.smtp.messages_to("ada@example.com"), 30, "the welcome email")[0]
    assert "Ada" in mail.message["Subject"]
    assert mail.message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    # reach's own signed one-click link replaces the configured one (agents/delivery/policy.py)
    assert mail.message["List-Unsubscribe"].startswith(f"<{pipeline.settings.public_url}/v1/unsubscribe/")

    rows = wait_until(
        lambda: len(results(pipeline, user)) == 2 and results(pipeline, user), 30, "two result rows"
    )
    assert [(r[0], r[2], r[3]) for r in rows] == [("email", "sent", 1), ("inbox", "sent", 1)]

    message_id = page["items"][0]["message_id"]
    read = httpx.post(
        f"{api.base_url}/v1/users/{user}/inbox/{message_id}/read", headers=api.headers, timeout=5
    )
    assert read.status_code == 204
    assert inbox(api, user)["unread"] == 0

    on_topic = read_topic_until(
        pipeline.settings,
        pipeline.settings.results_topic,
        lambda recs: any(r["message_id"] == message_id for _, v in recs for r in unpack(v)),
    )
    assert any(r["status"] == "sent" for _, v in on_topic for r in unpack(v) if r["message_id"] == message_id)


def test_a_replayed_event_sends_nothing_twice(pipeline: Pipeline) -> None:
    user = "grace-1"
    add_profile(pipeline, user, "grace@example.com")
    signup = event("signup-grace-1", user, "signup", first_name="Grace")
    produce_json(pipeline.settings, pipeline.settings.events_topic, [signup])
    ping(pipeline, user, 1)
    wait_until(lambda: pipeline.smtp.messages_to("grace@example.com"), 30, "the first email")

    # The same event again, and the same welcome under a new event id (its dedup key is per user).
    again = {**signup, "event_id": "signup-grace-2"}
    produce_json(pipeline.settings, pipeline.settings.events_topic, [signup, again])
    ping(pipeline, user, 2)

    assert len(pipeline.smtp.messages_to("grace@example.com")) == 1
    assert (
        len(
            pipeline.db.query(
                "SELECT 1 FROM inbox_messages WHERE user_id = %s AND template = 'welcome'", [user]
            )
        )
        == 1
    )
    assert [r[2] for r in results(pipeline, user) if r[0] == "email"] == ["sent"]


def test_inbox_and_email_outbox_records_carry_only_what_their_channel_needs(pipeline: Pipeline) -> None:
    user = "pii-1"
    contact = {"email": "pii@example.com", "phone": "+15550101", "fcm_token": "f", "wechat_openid": "o"}
    produce_json(
        pipeline.settings,
        pipeline.settings.segments_topic,
        [{"user_id": user, "segments": [], "contact": contact}],
    )
    wait_until(
        lambda: pipeline.db.query("SELECT 1 FROM user_profiles WHERE user_id = %s", [user]), 30, "profile"
    )
    produce_json(pipeline.settings, pipeline.settings.events_topic, [event("signup-pii-1", user, "signup")])
    for channel, expected in (("inbox", {}), ("email", {"email": "pii@example.com"})):
        records = read_topic_until(
            pipeline.settings,
            pipeline.settings.outbox_topic(channel),
            lambda got: any(m["user_id"] == user for _, v in got for m in unpack(v)),
        )
        [message] = [m for _, v in records for m in unpack(v) if m["user_id"] == user]
        assert message["contact"] == expected, channel
    wait_until(lambda: pipeline.smtp.messages_to("pii@example.com"), 30, "the welcome email")


def test_a_user_without_email_gets_only_the_inbox_message(pipeline: Pipeline) -> None:
    user = "bob-1"
    add_profile(pipeline, user, None)
    produce_json(pipeline.settings, pipeline.settings.events_topic, [event("signup-bob-1", user, "signup")])
    ping(pipeline, user, 1)
    assert [r[0] for r in results(pipeline, user)] == ["inbox", "inbox"]  # welcome + ping


def test_malformed_events_go_to_the_dead_letter_topic(pipeline: Pipeline) -> None:
    s = pipeline.settings
    SyncProducer(s.kafka_bootstrap).send_many(
        s.events_topic,
        [
            (b"dlq-user", b"{not json"),
            (b"dlq-user", orjson.dumps({"event_id": "x1", "name": "signup", "ts": 1764291600000})),
            (
                b"dlq-user",
                orjson.dumps({"event_id": "x2", "user_id": "dlq-user", "name": "signup", "ts": "yesterday"}),
            ),
        ],
    )
    records = read_topic_until(s, s.dead_letter_topic, lambda recs: len(recs) >= 3)
    reasons = sorted(orjson.loads(v)["reason"] for _, v in records)
    assert reasons == ["bad_ts", "bad_user_id", "invalid_json"]
    first = next(orjson.loads(v) for _, v in records if orjson.loads(v)["reason"] == "invalid_json")
    assert first["value"] == "{not json" and first["topic"] == s.events_topic
    # The agent is still consuming.
    ping(pipeline, "dlq-user", 1)


def test_events_nesting_past_the_default_depth_are_dead_lettered_as_too_deep(pipeline: Pipeline) -> None:
    # Runs after the malformed-events test, which counts every record on the shared DLQ topic.
    s, user = pipeline.settings, "deep-dlq-user"
    head = orjson.dumps({"event_id": "deep", "user_id": user, "name": "test_ping", "ts": 1764291600000})[:-1]
    # The event object is level 1, properties 2: event_max_depth - 1 arrays in it are one level too many.
    records = [
        head.replace(b'"deep"', f'"deep-{depth}"'.encode())
        + b',"properties":{"p":'
        + b"[" * depth
        + b"]" * depth
        + b"}}"
        for depth in (s.event_max_depth - 1, 1100)  # over the default limit; past orjson's own (1024)
    ]
    SyncProducer(s.kafka_bootstrap).send_many(s.events_topic, [(user.encode(), r) for r in records])

    def mine(recs: list[tuple[bytes | None, bytes]]) -> list[dict]:
        return [orjson.loads(v) for k, v in recs if k == user.encode()]

    dead = mine(read_topic_until(s, s.dead_letter_topic, lambda recs: len(mine(recs)) >= 2))
    assert sorted((d["reason"], d["value"][:40]) for d in dead) == sorted(
        ("too_deep", r.decode()[:40]) for r in records
    )
    ping(pipeline, user, 1)  # the agent is still consuming


def test_a_rule_compares_app_versions_semantically(pipeline: Pipeline) -> None:
    user = "version-user"
    opened = [
        {**event(f"open-{v}", user, "test_app_opened"), "device": {"platform": "ios", "app_version": v}}
        for v in ("1.10.0", "2.0.0-rc1", "1.8.2", "1.9.0-rc1", "latest")
    ]
    produce_json(pipeline.settings, pipeline.settings.events_topic, opened)
    ping(pipeline, user, 1)
    titles = pipeline.db.query(
        "SELECT title FROM inbox_messages WHERE user_id = %s AND title LIKE 'Please%%'", [user]
    )
    assert sorted(t for (t,) in titles) == ["Please upgrade from 1.8.2", "Please upgrade from 1.9.0-rc1"]
