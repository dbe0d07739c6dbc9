"""Opt-out decisions: the most specific choice wins, categories that ignore opt-outs, provider
signals, and what a suppressed message leaves behind."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from agents.delivery.batch import BatchOutcome
from agents.delivery.hold import Holds
from agents.delivery.optout import provider_opt_outs, refused
from channels.base import Outcome
from models.messages import DeliveryStatus
from models.policies import CategoryPolicy, Policies
from models.preferences import allows
from reach.metrics import WorkerMetrics
from tests.unit.agents.delivery.conftest import NOW, counted, message

CHOICES = {"*|marketing": False, "email|marketing": True, "sms|*": False}


def test_the_most_specific_choice_wins_and_no_choice_allows() -> None:
    assert allows(CHOICES, "email", "marketing") is True  # channel and category beat the category
    assert allows(CHOICES, "push", "marketing") is False
    assert allows(CHOICES, "sms", "notification") is False  # the channel beats "everything"
    assert allows(CHOICES, "push", "notification") is True
    assert allows({"*|*": False}, "push", "notification") is False
    assert allows({"sms|*": False, "*|marketing": True}, "sms", "marketing") is False


def test_a_category_with_opt_out_false_ignores_the_choices() -> None:
    policies = Policies({"transactional": CategoryPolicy(opt_out=False)})
    assert refused(message(1, channel="sms", category="transactional"), CHOICES, policies) is False
    assert refused(message(1, channel="sms", category="notification"), CHOICES, policies) is True


def test_only_the_providers_opt_out_codes_count() -> None:
    pairs = [
        (message(1), Outcome.invalid_address("21610", "unsubscribed")),
        (message(2), Outcome.invalid_address("21211", "invalid number")),
        (message(3), Outcome.sent("SM1")),
    ]
    assert provider_opt_outs(pairs, frozenset({"21610"})) == ["u-1"]
    assert provider_opt_outs(pairs, frozenset()) == []


def test_a_suppressed_message_is_final_with_its_reason_and_counted_by_category() -> None:
    registry = CollectorRegistry()
    holds = Holds("sms", WorkerMetrics(registry), ["marketing"])
    batch = BatchOutcome()
    holds.suppress(message(1, category="marketing"), "opted_out", "the user opted out", NOW, batch)
    holds.suppress(message(2, category="made-up"), "opted_out", "the user opted out", NOW, batch)
    assert [(r.status, r.error_code, r.attempted_at) for r in batch.results] == [
        (DeliveryStatus.SUPPRESSED, "opted_out", NOW)
    ] * 2
    assert batch.done_ids == ["m-1", "m-2"] and batch.handled == {"m-1", "m-2"}
    labels = {"reason": "opted_out", "action": "suppressed", "channel": "sms"}
    assert counted(registry, "reach_messages_held", **labels, category="marketing") == 1
    assert counted(registry, "reach_messages_held", **labels, category="other") == 1  # bounded labels
