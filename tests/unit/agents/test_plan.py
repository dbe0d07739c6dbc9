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
    prepared = deliveries_for([short, long], templates, max_content_bytes=100)
    assert [d.message.message_id for d in prepared.ready] == [short.message_id]
    assert [(m.message_id, o.code) for m, o in prepared.failed] == [(long.message_id, "content_too_large")]
    prepared = deliveries_for([short, long], templates, max_content_bytes=10_000)
    assert (len(prepared.ready), prepared.failed, prepared.moved) == (2, [], [])


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


VERSION_RULES = """
triggers:
  - id: nudge
    when: name == "opened" and version(device.app_version) < version("1.9.0")
    template: shipped
    channels: [inbox, push]
    dedup_key: "{event_id}"
  - id: ios-nudge
    when: name == "opened" and version(app_version.ios) < version("1.9.0")
    template: shipped
    channels: [inbox]
    dedup_key: "{event_id}"
templates:
  shipped: {title: "Shipped", text: "from {{ device.app_version }}"}
"""


@pytest.fixture(scope="module")
def version_engine(tmp_path_factory: pytest.TempPathFactory) -> RuleEngine:
    directory = tmp_path_factory.mktemp("version-rules")
    (directory / "rules.yaml").write_text(VERSION_RULES)
    return RuleEngine.build(load_rulebook(directory, known_channels=["sms", "push", "inbox"]))


def opened(device: dict[str, str] | None = None) -> Event:
    body = {"event_id": "e-1", "user_id": "u-1", "name": "opened", "ts": TS, "device": device or {}}
    return event_from_dict(body)


def test_rules_match_the_profiles_app_version_when_the_event_says_none(version_engine: RuleEngine) -> None:
    from models.profiles import SeenVersion

    profile = UserProfile(
        "u-1",
        contact={"apns_token": "t"},
        app_versions={"ios": SeenVersion("1.8.0", TS - 10), "android": SeenVersion("2.0", TS - 99)},
    )

    def rules(event: Event) -> list[str]:
        planned = plan_event_fully(event, profile, version_engine, choosers(), TS)
        return sorted({m.rule_id for m in planned.messages})

    assert rules(opened()) == ["ios-nudge", "nudge"]  # the most recent app, ios 1.8.0
    assert rules(opened({"platform": "android"})) == ["ios-nudge"]  # the android app is 2.0
    assert rules(opened({"platform": "ios", "app_version": "1.10.0"})) == ["ios-nudge"]  # the event's own
    assert rules(opened({"platform": "web"})) == ["ios-nudge"]  # no web version known: not below
    without = UserProfile("u-1", contact={"apns_token": "t"})
    assert plan_event_fully(opened(), without, version_engine, choosers(), TS).messages == []


def test_content_is_chosen_for_the_app_of_the_channels_platform(version_engine: RuleEngine) -> None:
    from models.profiles import SeenVersion

    profile = UserProfile(
        "u-1",
        contact={"apns_token": "t"},
        app_versions={"ios": SeenVersion("1.5", TS - 10), "android": SeenVersion("1.2", TS - 5)},
    )
    plan = plan_event_fully(
        opened({"platform": "android", "app_version": "1.3"}),
        profile, version_engine, choosers(), TS, platforms={"push": "ios"},
    )  # fmt: skip
    by_channel = {(m.rule_id, m.channel): (m.app_platform, m.app_version) for m in plan.messages}
    # the inbox is shown by the app the event came from; an APNs push by the iOS app
    assert by_channel == {("nudge", "inbox"): ("android", "1.3"), ("nudge", "push"): ("ios", "1.5"),
                          ("ios-nudge", "inbox"): ("android", "1.3")}  # fmt: skip
    # templates see the version rules matched on
    filled = plan_event_fully(opened(), profile, version_engine, choosers(), TS).messages[0]
    assert filled.variables["device"] == {"app_version": "1.2"}


def test_a_message_carries_the_contact_fields_of_its_templates_fallback_channel(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """An old app's pop-up that falls back to an SMS needs the phone number on the pop-up's
    outbox, which otherwise carries only its own channel's contact fields (none)."""
    directory = tmp_path_factory.mktemp("fallback-contact")
    (directory / "rules.yaml").write_text(
        "triggers:\n"
        "  - {id: rich, when: 'name == \"order_shipped\"', template: rich, channels: [push, inbox]}\n"
        "templates:\n"
        '  rich: {title: "R", text: "r", min_app_version: "2.0", fallback: plain}\n'
        '  plain: {title: "P", text: "p", min_app_version: "1.0", fallback: {channel: sms}}\n'
    )
    engine = RuleEngine.build(load_rulebook(directory, known_channels=["sms", "push", "inbox"]))
    profile = UserProfile("u-1", contact={"phone": "+1555", "apns_token": "a", "email": "x@y.z"})
    plan = plan_event_fully(shipped(1), profile, engine, choosers(), 1000)
    assert {m.channel: dict(m.contact) for m in plan.messages} == {
        "push": {"apns_token": "a", "phone": "+1555"},
        "inbox": {"phone": "+1555"},
    }
