"""A trigger's `delay` and `cancel_if`: validated with file and line, matched in one assertion."""

from __future__ import annotations

from pathlib import Path

import pytest

from rules.engine import RuleEngine
from rules.errors import RuleSetError
from rules.loader import RuleLimits, load_rulebook
from rules.model import TriggerRule
from tests.unit.rules.conftest import event, write

TEMPLATES = """
templates:
  t:
    title: "Title"
    text: "Text"
"""
CART = """
triggers:
  - id: cart-reminder
    when: name == "cart_abandoned"
    template: t
    channels: [inbox]
    delay: {delay}
    cancel_if: {cancel_if}
  - id: receipt
    when: name == "order_paid"
    template: t
    channels: [inbox]
"""


def cart(rules_dir: Path, delay: str = "30m", cancel_if: str = 'name == "order_paid"') -> Path:
    return write(rules_dir, "cart.yaml", TEMPLATES + CART.format(delay=delay, cancel_if=cancel_if))


def problems(directory: Path, limits: RuleLimits | None = None) -> list[tuple[str, int | None, str]]:
    with pytest.raises(RuleSetError) as caught:
        load_rulebook(directory, limits=limits or RuleLimits())
    return [(Path(e.path).name, e.line, e.reason) for e in caught.value.errors]


def test_a_delayed_cancellable_trigger_loads(rules_dir: Path) -> None:
    cart(rules_dir)
    reminder, receipt = load_rulebook(rules_dir).triggers
    assert (reminder.delay_ms, reminder.cancel_if) == (1_800_000, 'name == "order_paid"')
    assert (receipt.delay_ms, receipt.cancel_if, receipt.cancel_condition) == (0, "", None)


def test_an_event_matches_triggers_and_cancels_in_one_call(rules_dir: Path) -> None:
    cart(rules_dir)
    engine = RuleEngine.build(load_rulebook(rules_dir))
    paid = engine.match_event(event(name="order_paid"))
    assert ([t.id for t in paid.triggers], [t.id for t in paid.cancels]) == (["receipt"], ["cart-reminder"])
    abandoned = engine.match_event(event(name="cart_abandoned"))
    assert ([t.id for t in abandoned.triggers], abandoned.cancels) == (["cart-reminder"], [])
    assert engine.match_triggers(event(name="order_paid")) == paid.triggers
    assert engine.retained_facts() == 0


def test_cancel_if_can_test_properties_of_the_later_event(rules_dir: Path) -> None:
    cart(rules_dir, cancel_if='name == "order_paid" and properties.amount > 100')
    engine = RuleEngine.build(load_rulebook(rules_dir))
    assert engine.match_event(event(name="order_paid", properties={"amount": 50})).cancels == []
    [cancel] = engine.match_event(event(name="order_paid", properties={"amount": 500})).cancels
    assert cancel.id == "cart-reminder"


@pytest.mark.parametrize(
    ("delay", "reason"),
    [
        ("30", "'delay' must be a duration with a unit (30s, 30m, 2h, 1d or 1h30m), got 30"),
        ("soon", "'delay' 'soon' is not a duration (30s, 30m, 2h, 1d or 1h30m)"),
        ("0m", "'delay' must be longer than zero, got '0m'"),
        ("8d", "'delay' 8d is over the limit of 7d (REACH_RULES_MAX_DELAY)"),
    ],
)
def test_a_bad_delay_is_refused_on_its_line(rules_dir: Path, delay: str, reason: str) -> None:
    cart(rules_dir, delay=delay)
    assert problems(rules_dir) == [("cart.yaml", 11, reason)]


def test_the_delay_limit_comes_from_the_settings(rules_dir: Path) -> None:
    cart(rules_dir, delay="2h")
    limits = RuleLimits(max_delay_ms=3_600_000)
    assert problems(rules_dir, limits) == [
        ("cart.yaml", 11, "'delay' 2h is over the limit of 1h (REACH_RULES_MAX_DELAY)")
    ]
    book = load_rulebook(rules_dir, limits=RuleLimits(max_delay_ms=7_200_000))
    assert book.triggers[0].delay_ms == 7_200_000


def test_cancel_if_is_checked_like_when(rules_dir: Path) -> None:
    cart(rules_dir, cancel_if='nam == "order_paid"')
    assert problems(rules_dir) == [
        (
            "cart.yaml",
            12,
            "invalid expression in 'cancel_if': unknown field 'nam' in event facts (did you mean 'name'?) "
            "(column 1)",
        )
    ]


def test_an_empty_cancel_if_is_refused(rules_dir: Path) -> None:
    cart(rules_dir, cancel_if='""')
    assert problems(rules_dir) == [("cart.yaml", 12, "'cancel_if' must not be empty")]


def test_cancel_if_without_a_delay_is_refused(rules_dir: Path) -> None:
    text = TEMPLATES + CART.format(delay="1m", cancel_if='name == "x"').replace("    delay: 1m\n", "")
    write(rules_dir, "cart.yaml", text)
    assert problems(rules_dir) == [("cart.yaml", 11, "'cancel_if' needs a 'delay' (e.g. delay: 30m)")]


def test_a_delay_without_cancel_if_is_fine(rules_dir: Path) -> None:
    text = TEMPLATES + CART.format(delay="2h", cancel_if="").replace("    cancel_if: \n", "")
    write(rules_dir, "cart.yaml", text)
    reminder = load_rulebook(rules_dir).triggers[0]
    assert (reminder.delay_ms, reminder.cancel_condition) == (7_200_000, None)


def test_a_trigger_built_in_code_refuses_cancel_if_without_delay() -> None:
    with pytest.raises(ValueError, match="cancel_if needs a delay"):
        TriggerRule("r", 'name == "a"', "t", ("inbox",), cancel_if='name == "b"')


def test_cancel_if_counts_towards_the_rule_engine_capacity(rules_dir: Path) -> None:
    # Each trigger alone is fine; their cancel_if conditions, all led by the same name, are
    # matched in the same assertion as the triggers and must be counted with them.
    entries = "".join(
        f"  - {{id: r{i}, when: 'name == \"e{i}\"', template: t, channels: [inbox], delay: 1m, "
        "cancel_if: 'name == \"order_paid\"'}\n"
        for i in range(61)
    )
    write(rules_dir, "x.yaml", TEMPLATES + "triggers:\n" + entries)
    [(name, _, reason)] = problems(rules_dir)
    assert name == "x.yaml"
    assert reason.startswith("up to 61 rule alternatives can match one event")
