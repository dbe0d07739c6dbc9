"""Delayed sends: the cancel bookkeeping of an event, and the send-time decision."""

from __future__ import annotations

import pytest

from agents.cancels import cancel_ops, first_arrivals, split_cancelled, suppressed_result
from models.cancel_markers import CANCEL_GRACE_MS, Cancel, Pending, script_args
from models.messages import DeliveryStatus, ReachMessage

NOW = 1_790_000_000_000


def message(message_id: str, *, due: int = 0, cancellable: bool = False, **changes: object) -> ReachMessage:
    base = ReachMessage(
        message_id=message_id,
        user_id="u-1",
        rule_id="cart-reminder",
        template="cart",
        channel="inbox",
        provider="mariadb",
        priority=3,
        event_id=f"e-{message_id}",
        event_name="cart_abandoned",
        event_ts=NOW - 5,
        created_ts=NOW,
        variables={},
        contact={},
        platform="ios",
        not_before=due,
        due_ts=due,
        cancellable=cancellable,
    )
    return base.replace(**changes) if changes else base


def test_an_event_cancels_first_then_registers_its_own_cancellable_messages() -> None:
    delayed = message("m1", due=NOW + 60_000, cancellable=True)
    plain_delayed = message("m2", due=NOW + 60_000, rule_id="later")
    ops = cancel_ops("u-1", 42, ["cart-reminder"], [delayed, plain_delayed, message("m3")], NOW)
    assert ops == [
        Cancel("cart-reminder", "u-1", 42),
        Pending("cart-reminder", "u-1", "m1", 60_000 + CANCEL_GRACE_MS, 42),
    ]


def test_an_event_with_nothing_delayed_or_cancelled_needs_no_bookkeeping() -> None:
    assert cancel_ops("u-1", 7, [], [message("m1"), message("m2", due=NOW + 1000)], NOW) == []


def test_the_script_gets_each_operation_in_order() -> None:
    ops = [Pending("cart", "user:with:colons", "m1", 5000, 3), Cancel("cart", "u-2", 4)]
    assert script_args(ops) == ["p", "cart:user:with:colons", "m1", 5000, 3, "c", "cart:u-2", "", "", 4]


def test_only_cancellable_messages_marked_cancelled_are_dropped() -> None:
    live = message("m1", due=NOW, cancellable=True)
    cancelled = message("m2", due=NOW, cancellable=True)
    # A message id marked cancelled, on a message whose rule has no cancel_if (a rule edited
    # since, or an id reused): it is not this check's to drop.
    not_cancellable = message("m3", due=NOW)
    keep, dropped = split_cancelled([live, cancelled, not_cancellable], {"m2", "m3"})
    assert keep == [live, not_cancellable]
    assert dropped == [cancelled]


def test_nothing_marked_keeps_the_batch_as_it_is() -> None:
    batch = [message("m1", due=NOW, cancellable=True), message("m2")]
    assert split_cancelled(batch, set()) == (batch, [])


def test_a_cancelled_message_gets_a_final_suppressed_row() -> None:
    result = suppressed_result(message("m1", due=NOW, cancellable=True, attempt=2), NOW + 7)
    assert result.status is DeliveryStatus.SUPPRESSED
    assert (result.error_code, result.attempt) == ("cancelled", 2)
    assert (result.attempted_at, result.completed_at, result.event_ts) == (NOW + 7, NOW + 7, NOW - 5)
    assert (result.message_id, result.user_id, result.rule_id, result.channel, result.provider) == (
        "m1",
        "u-1",
        "cart-reminder",
        "inbox",
        "mariadb",
    )
    assert "cancel_if" in result.error


def test_lateness_is_measured_once_per_delayed_message() -> None:
    first = message("m1", due=NOW)
    throttled_since = message("m2", due=NOW, not_before=NOW + 1000)
    retried = message("m3", due=NOW, attempt=2)
    assert first_arrivals([first, throttled_since, retried, message("m4")]) == [first]


def test_a_message_round_trips_with_its_due_time_and_reads_old_records() -> None:
    delayed = message("m1", due=NOW + 5, cancellable=True)
    assert ReachMessage.from_bytes(delayed.to_bytes()) == delayed
    old = message("m2").to_dict()
    del old["due_ts"], old["cancellable"]  # written before delayed sends existed
    assert ReachMessage.from_dict(old) == message("m2")


def test_a_cancellable_flag_that_is_not_a_boolean_is_refused() -> None:
    data = message("m1").to_dict()
    data["cancellable"] = "yes"
    with pytest.raises(ValueError, match="'cancellable' must be a boolean"):
        ReachMessage.from_dict(data)
