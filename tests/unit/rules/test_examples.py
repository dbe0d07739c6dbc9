"""The example rules shipped in rules/examples load, match and render as documented."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
import pytest

from rules.engine import RuleEngine
from rules.loader import load_rulebook
from rules.model import TriggerRule
from tests.unit.rules.conftest import EXAMPLES, event


@pytest.fixture(scope="module")
def engine() -> RuleEngine:
    return RuleEngine.build(load_rulebook(EXAMPLES, known_channels=["inbox", "email"]))


def plan(engine: RuleEngine, fact: dict[str, Any], reachable: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """trigger id -> channels, the way the trigger agent asks the engine."""
    out = {}
    for rule in engine.match_triggers(fact):
        message = selection_fact(rule, fact, reachable)
        out[rule.id] = engine.select_channels(rule.channels, message)
    return out


def selection_fact(rule: TriggerRule, fact: dict[str, Any], reachable: Sequence[str]) -> dict[str, Any]:
    return {
        "rule_id": rule.id,
        "template": rule.template,
        "priority": rule.priority,
        "event": fact["name"],
        "platform": fact.get("device", {}).get("platform", ""),
        "segments": fact.get("segments", []),
        "reachable": list(reachable),
    }


def test_the_examples_load(engine: RuleEngine) -> None:
    assert engine.rulebook.summary() == "5 triggers, 2 channel rules, 5 templates"
    assert {c for t in engine.rulebook.triggers for c in t.channels} == {"inbox", "email"}


def test_signup_reaches_inbox_and_email_when_the_user_has_an_email(engine: RuleEngine) -> None:
    assert plan(engine, event(), ["inbox", "email"]) == {"welcome-signup": ("inbox", "email")}


def test_signup_without_an_email_address_goes_to_the_inbox_only(engine: RuleEngine) -> None:
    assert plan(engine, event(segments=[]), ["inbox"]) == {"welcome-signup": ("inbox",)}


def test_the_welcome_is_deduplicated_per_user(engine: RuleEngine) -> None:
    [rule] = engine.match_triggers(event())
    assert (
        rule.dedup_for(event(event_id="e-1"))
        == rule.dedup_for(event(event_id="e-2"))
        == ("welcome-signup:welcome:u-1")
    )


def test_a_big_vip_order_is_thanked_and_every_order_gets_an_inbox_receipt(engine: RuleEngine) -> None:
    order = event(name="order_paid", properties={"amount": 640, "order_id": "o-7"}, segments=["vip"])
    assert plan(engine, order, ["inbox", "email"]) == {
        "vip-big-order": ("inbox",),
        "order-receipt": ("inbox",),  # priority 2: low-priority-inbox-only
    }
    small = event(name="order_paid", properties={"amount": 20, "order_id": "o-8"}, segments=["vip"])
    assert plan(engine, small, ["inbox", "email"]) == {"order-receipt": ("inbox",)}
    regular = event(name="order_paid", properties={"amount": 640, "order_id": "o-9"}, segments=[])
    assert list(plan(engine, regular, ["inbox", "email"])) == ["order-receipt"]


def test_an_abandoned_cart_with_items_is_reminded_by_email_first(engine: RuleEngine) -> None:
    cart = event(name="cart_abandoned", properties={"item_count": 2, "cart_id": "c-1"})
    assert plan(engine, cart, ["inbox", "email"]) == {"cart-abandoned-reminder": ("email", "inbox")}
    assert plan(engine, event(name="cart_abandoned", properties={"item_count": 0}), ["inbox", "email"]) == {}


def test_the_cart_reminder_waits_half_an_hour_and_a_paid_order_cancels_it(engine: RuleEngine) -> None:
    cart = event(name="cart_abandoned", properties={"item_count": 2, "cart_id": "c-1"})
    [reminder] = engine.match_event(cart).triggers
    assert (reminder.id, reminder.delay_ms) == ("cart-abandoned-reminder", 30 * 60_000)
    assert engine.match_event(cart).cancels == []
    paid = engine.match_event(event(name="order_paid", properties={"amount": 20, "order_id": "o-9"}))
    assert [t.id for t in paid.cancels] == ["cart-abandoned-reminder"]
    assert "cart-abandoned-reminder" not in [t.id for t in paid.triggers]


def test_a_password_reset_goes_by_email_only(engine: RuleEngine) -> None:
    reset = event(name="password_reset_requested", properties={"reset_url": "https://x.test/r?t=1&u=2"})
    assert plan(engine, reset, ["inbox", "email"]) == {"password-reset": ("email",)}
    assert plan(engine, reset, ["inbox"]) == {"password-reset": ()}  # no address: unroutable


def test_an_unknown_event_matches_nothing(engine: RuleEngine) -> None:
    assert engine.match_triggers(event(name="page_viewed")) == []


def test_the_example_templates_render(engine: RuleEngine) -> None:
    templates = engine.rulebook.templates

    def variables(**properties: Any) -> dict[str, Any]:
        # the render context the channel agent builds
        return {"user_id": "u-1", "event": "x", "event_id": "e-1", "properties": properties, "device": {}}

    welcome = templates["welcome"].render(variables(first_name="Ada"))
    assert (welcome.title, welcome.text) == ("Welcome, Ada", "Thanks for signing up on the web.")
    assert templates["welcome"].render(variables()).title == "Welcome, there"
    reset = templates["password-reset"].render(variables(reset_url="https://x.test/r?t=1&u=2"))
    assert "https://x.test/r?t=1&u=2" in reset.text
    assert 'href="https://x.test/r?t=1&amp;u=2"' in reset.html
    cart = templates["cart-reminder"].render(variables(item_count=1, cart_url="https://x.test/cart"))
    assert cart.text == "You have 1 item waiting in your cart."
    assert (
        templates["cart-reminder"].render(variables(item_count=3)).text
        == "You have 3 items waiting in your cart."
    )
    thanks = templates["vip-thanks"].render(variables(order_id="o-7", amount=640, currency="EUR"))
    assert thanks.text.startswith("Your order o-7 of 640 EUR is on its way.")
    assert (
        templates["order-receipt"].render(variables(order_id="o-7", amount=5)).title
        == "Receipt for order o-7"
    )


DEMO = EXAMPLES.parents[1] / "deploy" / "examples"


def test_every_demo_event_makes_a_message(engine: RuleEngine) -> None:
    """make demo's events each match an example rule: the cart event once sent ``items`` where
    its rule tests ``item_count``, and silently did nothing."""
    profiles = {}
    for line in (DEMO / "profiles.jsonl").read_text().splitlines():
        profile = orjson.loads(line)
        profiles[profile["user_id"]] = profile["segments"]
    for line in (DEMO / "events.jsonl").read_text().splitlines():
        fact = orjson.loads(line.replace("@TS@", "1764291600000"))
        fact["segments"] = profiles[fact["user_id"]]
        assert engine.match_triggers(fact), f"no example rule matches the demo event {fact['name']}"
