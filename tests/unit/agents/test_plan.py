"""plan_event_fully: which messages an event makes, and through which provider."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from agents.plan import plan_event_fully, reachable_channels
from channels.base import ProviderConfig, Rendered
from channels.routing import WeightedChooser
from models.events import Event, event_from_dict
from models.profiles import UserProfile
from rules.engine import RuleEngine
from rules.loader import load_rulebook

TS = 1_790_000_000_000

RULES = """
triggers:
  - id: order-shipped
    when: name == "order_shipped"
    template: shipped
    channels: [sms, push, inbox]
    dedup_key: "{event_id}"
templates:
  shipped:
    title: "Shipped"
    text: "Order {{ properties.order }} is on its way"
"""


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> RuleEngine:
    directory = tmp_path_factory.mktemp("rules")
    (directory / "rules.yaml").write_text(RULES)
    return RuleEngine.build(load_rulebook(directory, known_channels=["sms", "push", "inbox"]))


def choosers(seed: int = 7) -> dict[str, WeightedChooser]:
    rng = random.Random(seed)
    sms = [ProviderConfig("aliyun", "aliyun_sms", 70), ProviderConfig("tencent", "tencent_sms", 30)]
    push = [ProviderConfig("fcm", "fcm"), ProviderConfig("apns", "apns")]
    return {
        "sms": WeightedChooser(sms, rng, {"aliyun": ("phone",), "tencent": ("phone",)}),
        "push": WeightedChooser(push, rng, {"fcm": ("fcm_token",), "apns": ("apns_token",)}),
        "inbox": WeightedChooser([ProviderConfig("mariadb", "inbox")], rng),
    }


def shipped(n: int, user: str = "u-1") -> Event:
    return event_from_dict(
        {"event_id": f"e-{n}", "user_id": user, "name": "order_shipped", "ts": TS, "properties": {"order": n}}
    )


def test_only_channels_that_can_address_the_user_get_a_message(engine: RuleEngine) -> None:
    profile = UserProfile("u-1", contact={"apns_token": "tok"})
    unroutable: list[tuple[str, str]] = []
    messages = plan_event_fully(
        shipped(1), profile, engine, choosers(), 1000, lambda r, c: unroutable.append((r, c))
    ).messages
    assert [(m.channel, m.provider) for m in messages] == [("push", "apns"), ("inbox", "mariadb")]
    assert unroutable == [("order-shipped", "sms")]
    assert messages[0].contact == {"apns_token": "tok"}


def test_reachable_channels_follow_the_contact() -> None:
    assert reachable_channels(choosers(), {}) == ["inbox"]
    assert reachable_channels(choosers(), {"phone": "+1", "fcm_token": "t"}) == ["sms", "push", "inbox"]


def test_sms_split_follows_the_weights_over_many_events(engine: RuleEngine) -> None:
    profile = UserProfile("u-1", contact={"phone": "+8613800000000"})
    routing = choosers(seed=11)
    draws = 4000
    counts = Counter(
        m.provider
        for n in range(draws)
        for m in plan_event_fully(shipped(n), profile, engine, routing, 1000).messages
        if m.channel == "sms"
    )
    # 5 standard deviations of a binomial(4000, 0.7): about 145
    assert abs(counts["aliyun"] - 0.7 * draws) <= 5 * (draws * 0.7 * 0.3) ** 0.5, counts
    assert counts["aliyun"] + counts["tencent"] == draws


# --- rendered content over the channel's limit ---------------------------------------------


def test_content_within_the_limit_passes_and_over_it_fails_as_content_too_large() -> None:
    from agents.plan import content_bytes, oversize
    from channels.base import OutcomeKind, Rendered

    content = Rendered(title="Héllo", text="x" * 10, html="<b>é</b>")
    size = content_bytes(content)
    assert size == len("Héllo".encode()) + 10 + len("<b>é</b>".encode())
    assert oversize(content, size) is None
    refused = oversize(content, size - 1)
    assert refused is not None
    assert (refused.kind, refused.code) == (OutcomeKind.PERMANENT, "content_too_large")
    assert str(size) in refused.detail
    assert oversize(Rendered(title="", text="x" * 100_000), 1000) is not None  # counted cheaply first


def test_deliveries_for_fails_only_the_messages_over_the_limit(engine: RuleEngine) -> None:
    from agents.plan import deliveries_for

    profile = UserProfile("u-1", contact={"phone": "+8613800000000"})
    short, long = (
        plan_event_fully(shipped(n), profile, engine, choosers(), 1000)
        .messages[0]
        .replace(variables={"properties": {"order": order}})
        for n, order in ((1, "a"), (2, "b" * 500))
    )
    templates = engine.rulebook.templates
    ready, failed = deliveries_for([short, long], templates, max_content_bytes=100)
    assert [d.message.message_id for d in ready] == [short.message_id]
    assert [(m.message_id, o.code) for m, o in failed] == [(long.message_id, "content_too_large")]
    ready, failed = deliveries_for([short, long], templates, max_content_bytes=10_000)
    assert (len(ready), failed) == (2, [])


def test_messages_carry_the_rule_category_and_the_users_zone(engine: RuleEngine) -> None:
    zoned = UserProfile("u-1", contact={"phone": "+1"}, timezone="Asia/Tokyo")
    unzoned = UserProfile("u-1", contact={"phone": "+1"})
    [first, *_] = plan_event_fully(
        shipped(1), zoned, engine, choosers(), 1000, default_timezone="Europe/Paris"
    ).messages
    [second, *_] = plan_event_fully(
        shipped(1), unzoned, engine, choosers(), 1000, default_timezone="Europe/Paris"
    ).messages
    assert (first.category, first.timezone) == ("notification", "Asia/Tokyo")
    assert second.timezone == "Europe/Paris"


def test_a_message_without_a_variable_its_template_prints_fails_naming_it(engine: RuleEngine) -> None:
    from agents.plan import render
    from channels.base import OutcomeKind

    profile = UserProfile("u-1", contact={"phone": "+8613800000000"})
    message = plan_event_fully(shipped(1), profile, engine, choosers(), 1000).messages[0]
    outcome = render(message.replace(variables={"properties": {}}), engine.rulebook.templates)
    assert not isinstance(outcome, Rendered)
    assert (outcome.kind, outcome.code) == (OutcomeKind.PERMANENT, "template_variable_missing")
    assert outcome.detail == "template 'shipped' text: variable 'properties.order' is missing"


def test_each_message_carries_only_its_channels_contact_fields(engine: RuleEngine) -> None:
    contact = {"email": "a@b.c", "phone": "+1555", "fcm_token": "f", "apns_token": "a", "wechat_openid": "o"}
    plan = plan_event_fully(shipped(1), UserProfile("u-1", contact=contact), engine, choosers(), 1000)
    assert {m.channel: dict(m.contact) for m in plan.messages} == {
        "sms": {"phone": "+1555"},
        "push": {"fcm_token": "f", "apns_token": "a"},
        "inbox": {},
    }
