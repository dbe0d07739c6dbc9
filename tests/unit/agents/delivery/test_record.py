"""Recorder: what an outcome means for its message (result row, retry, dead letter, final)."""

from __future__ import annotations

import random

import orjson
from prometheus_client import CollectorRegistry

from agents.delivery.batch import BatchOutcome
from agents.delivery.record import Recorder, dead_letter
from agents.plan import backoff_ms
from channels.base import Outcome
from models.messages import DeliveryStatus, ReachMessage
from reach.metrics import WorkerMetrics
from reach.settings import Settings
from tests.unit.agents.delivery.conftest import NOW, counted, message

SETTINGS = Settings(max_attempts=3, retry_base_ms=1_000, retry_cap_ms=60_000)


def recorder(
    metrics: WorkerMetrics, alternative: str | None = "backup", paused: frozenset[str] = frozenset()
) -> Recorder:
    seen: list[set[str]] = []

    def choose(_message: ReachMessage, exclude: set[str]) -> str | None:
        seen.append(exclude)
        return None if alternative in exclude else alternative

    r = Recorder("sms", SETTINGS, metrics, choose, lambda _now: set(paused), 1 << 20, random.Random(1))
    r.excluded = seen  # type: ignore[attr-defined]
    return r


def test_a_sent_message_is_final_with_a_sent_row(metrics: WorkerMetrics, registry: CollectorRegistry) -> None:
    batch = BatchOutcome()
    recorder(metrics).record(message(), Outcome.sent("pm-1"), NOW, NOW + 40, batch)
    assert batch.done_ids == ["m-1"] and batch.handled == {"m-1"}
    assert not batch.deferred and not batch.released_ids and not batch.dead_letters
    (row,) = batch.results
    assert (row.status, row.provider_message_id, row.completed_at) == (DeliveryStatus.SENT, "pm-1", NOW + 40)
    assert counted(registry, "reach_messages_sent", channel="sms", provider="primary", platform="ios") == 1
    assert counted(registry, "reach_messages_failed_codes", channel="sms", provider="primary", code="") == 0


def test_a_retry_within_the_budget_is_deferred_through_another_provider(
    metrics: WorkerMetrics, registry: CollectorRegistry
) -> None:
    batch = BatchOutcome()
    r = recorder(metrics)
    r.record(message(attempt=1), Outcome.retry("503", "busy"), NOW, NOW + 10, batch)
    assert batch.done_ids == [] and batch.released_ids == ["m-1"]
    ((when, payload),) = batch.deferred
    again = ReachMessage.from_bytes(payload)
    assert (again.attempt, again.provider, again.not_before) == (2, "backup", when)
    assert NOW + 10 < when <= NOW + 10 + SETTINGS.retry_base_ms
    assert batch.results[0].status is DeliveryStatus.RETRYING
    assert r.excluded == [{"primary"}]  # type: ignore[attr-defined]
    labels = {"channel": "sms", "from_provider": "primary", "to_provider": "backup", "reason": "failover"}
    assert counted(registry, "reach_messages_rerouted", **labels) == 1
    failed = {"channel": "sms", "provider": "primary", "platform": "ios", "outcome": "retry"}
    assert counted(registry, "reach_messages_failed", **failed) == 1
    assert (
        counted(registry, "reach_messages_failed_codes", channel="sms", provider="primary", code="503") == 1
    )


def test_a_retry_after_longer_than_the_backoff_wins(metrics: WorkerMetrics) -> None:
    batch = BatchOutcome()
    recorder(metrics).record(message(), Outcome.retry("429", "slow down", retry_after=120), NOW, NOW, batch)
    assert batch.deferred[0][0] == NOW + 120_000


def test_with_no_other_provider_the_retry_stays_on_its_own(
    metrics: WorkerMetrics, registry: CollectorRegistry
) -> None:
    batch = BatchOutcome()
    recorder(metrics, alternative=None).record(message(), Outcome.retry("503", "busy"), NOW, NOW, batch)
    assert ReachMessage.from_bytes(batch.deferred[0][1]).provider == "primary"
    assert (
        registry.get_sample_value(
            "reach_messages_rerouted_total",
            {"channel": "sms", "from_provider": "primary", "to_provider": "primary", "reason": "failover"},
        )
        is None
    )


def test_a_retry_avoids_providers_whose_breaker_is_open(metrics: WorkerMetrics) -> None:
    batch = BatchOutcome()
    r = recorder(metrics, alternative="backup", paused=frozenset({"backup"}))
    r.record(message(), Outcome.retry("503", "busy"), NOW, NOW, batch)
    assert r.excluded == [{"primary", "backup"}]  # type: ignore[attr-defined]
    assert ReachMessage.from_bytes(batch.deferred[0][1]).provider == "primary"


def test_the_last_attempt_gives_up_final_failed_and_dead_lettered(
    metrics: WorkerMetrics, registry: CollectorRegistry
) -> None:
    batch = BatchOutcome()
    recorder(metrics).record(message(attempt=3), Outcome.retry("503", "busy"), NOW, NOW + 5, batch)
    assert not batch.deferred and not batch.released_ids
    assert batch.done_ids == ["m-1"]
    (row,) = batch.results
    assert row.status is DeliveryStatus.FAILED and row.error == "gave up after 3 attempts: busy"
    ((key, value),) = batch.dead_letters
    letter = orjson.loads(value)
    assert key == b"u-1" and letter["reason"] == "503" and letter["message"]["message_id"] == "m-1"
    assert letter["detail"] == "gave up after 3 attempts: busy"
    assert letter["failed_at"] == NOW + 5
    assert counted(registry, "reach_messages_dead_lettered", channel="sms", provider="primary") == 1
    failed = {"channel": "sms", "provider": "primary", "platform": "ios", "outcome": "permanent"}
    assert counted(registry, "reach_messages_failed", **failed) == 1


def test_unknown_and_permanent_outcomes_are_final_and_never_retried(metrics: WorkerMetrics) -> None:
    batch = BatchOutcome()
    r = recorder(metrics)
    r.record(message(1), Outcome.unknown("timeout", "no answer"), NOW, NOW, batch)
    r.record(message(2), Outcome.permanent("bad", "rejected"), NOW, NOW, batch)
    r.record(message(3), Outcome.invalid_address("410", "gone"), NOW, NOW, batch)
    assert batch.done_ids == ["m-1", "m-2", "m-3"] and not batch.deferred
    assert [row.status for row in batch.results] == [
        DeliveryStatus.UNKNOWN,
        DeliveryStatus.FAILED,
        DeliveryStatus.FAILED,
    ]


def test_latency_is_measured_from_ingestion(metrics: WorkerMetrics, registry: CollectorRegistry) -> None:
    recorder(metrics).record(
        message(event_ts=NOW - 99_000, ingested_ts=NOW - 2_500), Outcome.sent(), NOW, NOW, BatchOutcome()
    )
    assert registry.get_sample_value("reach_end_to_end_seconds_sum", {"channel": "sms"}) == 2.5


def test_the_backoff_draws_from_the_recorders_own_rng(metrics: WorkerMetrics) -> None:
    batch = BatchOutcome()
    recorder(metrics).record(message(attempt=2), Outcome.retry("503", "busy"), NOW, NOW, batch)
    expected = backoff_ms(2, SETTINGS.retry_base_ms, SETTINGS.retry_cap_ms, random.Random(1))
    assert batch.deferred[0][0] == NOW + expected


def test_an_oversized_dead_letter_is_cut_in_its_message_not_dropped(metrics: WorkerMetrics) -> None:
    big = message(attempt=3, variables={"blob": "x" * 5000})
    letter = orjson.loads(dead_letter(big, Outcome.permanent("503", "busy"), NOW, 2000))
    assert letter["reason"] == "503" and letter["detail"] == "busy" and letter["truncated"] is True
    assert isinstance(letter["message"], str) and letter["message"].startswith('{"message_id":"m-1"')


def test_an_ingestion_time_in_the_future_counts_zero_latency(
    metrics: WorkerMetrics, registry: CollectorRegistry
) -> None:
    recorder(metrics).record(message(ingested_ts=NOW + 60_000), Outcome.sent(), NOW, NOW, BatchOutcome())
    assert registry.get_sample_value("reach_end_to_end_seconds_sum", {"channel": "sms"}) == 0


def test_a_long_provider_code_is_cut_to_64_characters_as_a_label(
    metrics: WorkerMetrics, registry: CollectorRegistry
) -> None:
    code = "E" * 100
    recorder(metrics).record(message(), Outcome.permanent(code, "no"), NOW, NOW, BatchOutcome())
    labels = {"channel": "sms", "provider": "primary", "code": "E" * 64}
    assert counted(registry, "reach_messages_failed_codes", **labels) == 1
