"""Fallback step: a message too new for its app moves to the channel its template names."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry

from agents.delivery.batch import BatchOutcome
from agents.delivery.fallback import ChannelFallback
from agents.plan import Moved
from channels.base import ProviderConfig
from channels.routing import WeightedChooser
from models.messages import DeliveryStatus, ReachMessage, message_id_for
from reach.metrics import WorkerMetrics
from tests.unit.agents.delivery.conftest import NOW, counted, message

CHOOSERS = {
    "inbox": WeightedChooser([ProviderConfig("mariadb", "inbox")], random.Random(1)),
    "sms": WeightedChooser(
        [ProviderConfig("aliyun", "aliyun_sms")], random.Random(1), {"aliyun": ("phone",)}
    ),
}


def popup(n: int, **changes: object) -> ReachMessage:
    return message(n, provider="mariadb", channel="popup", template="carousel", app_version="1.2", **changes)


def test_the_message_is_suppressed_here_and_handed_to_the_other_channel(
    metrics: WorkerMetrics, registry: CollectorRegistry
) -> None:
    batch = BatchOutcome()
    original = popup(1, variables={"properties": {"n": 1}})
    failed = ChannelFallback("popup", CHOOSERS, metrics).move(
        [Moved(original, "inbox", "carousel")], NOW, batch
    )
    assert failed == []
    [result] = batch.results
    assert (result.status, result.error_code, result.channel) == (
        DeliveryStatus.SUPPRESSED, "app_version_fallback", "popup"
    )  # fmt: skip
    assert "'inbox'" in result.error
    assert batch.done_ids == ["m-1"] and "m-1" in batch.handled
    [(due, payload)] = batch.handoffs
    moved = ReachMessage.from_bytes(payload)
    assert due == NOW and batch.deferred == []  # handed over before the done marks, not deferred after
    assert moved.message_id == message_id_for("r", "fallback:m-1", "inbox")
    assert (moved.channel, moved.provider, moved.template, moved.fallback_from) == (
        "inbox",
        "mariadb",
        "carousel",
        "popup",
    )
    assert (moved.user_id, moved.app_version, moved.variables) == (
        original.user_id,
        "1.2",
        {"properties": {"n": 1}},
    )
    assert counted(registry, "reach_messages_suppressed", channel="popup", reason="app_version_fallback") == 1


def test_a_replay_hands_over_the_same_message(metrics: WorkerMetrics) -> None:
    step = ChannelFallback("popup", CHOOSERS, metrics)
    first, again = BatchOutcome(), BatchOutcome()
    step.move([Moved(popup(1), "inbox", "carousel")], NOW, first)
    step.move([Moved(popup(1), "inbox", "carousel")], NOW, again)
    assert first.handoffs == again.handoffs


def test_a_channel_that_cannot_reach_the_user_fails_the_message(metrics: WorkerMetrics) -> None:
    batch = BatchOutcome()
    no_phone = popup(2, contact={})
    moves = [Moved(no_phone, "sms", "carousel-text"), Moved(popup(3), "fax", "carousel")]
    failed = ChannelFallback("popup", CHOOSERS, metrics).move(moves, NOW, batch)
    assert [(m.message_id, o.code) for m, o in failed] == [
        ("m-2", "app_version_too_old"),
        ("m-3", "app_version_too_old"),
    ]
    assert (batch.handoffs, batch.results, batch.done_ids) == ([], [], [])
