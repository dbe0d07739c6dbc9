"""Router: which provider sends each message of a batch, around open breakers."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry

from agents.delivery.batch import BatchOutcome
from agents.delivery.route import Router
from channels.breaker import CircuitState
from channels.routing import WeightedChooser
from models.messages import ReachMessage
from reach.metrics import WorkerMetrics
from tests.unit.agents.delivery.conftest import NOW, counted, message, sms_channel

COOLDOWN = 30_000


def router(metrics: WorkerMetrics, fields: dict[str, tuple[str, ...]] | None = None) -> Router:
    channel = sms_channel()
    fields = fields or {"primary": ("phone",), "backup": ("phone",)}
    chooser = WeightedChooser(channel.providers, random.Random(3), fields)
    return Router(channel, chooser, metrics, breaker_failures=2, breaker_cooldown_ms=COOLDOWN)


def open_breaker(r: Router, name: str) -> None:
    r.judge(name, 0, 2, NOW - 1)


def test_messages_stay_with_their_provider_while_its_breaker_is_closed(metrics: WorkerMetrics) -> None:
    batch = BatchOutcome()
    groups = router(metrics).route([message(1), message(2, "backup"), message(3)], NOW, batch)
    assert {k: [m.message_id for m in v] for k, v in groups.items()} == {
        "primary": ["m-1", "m-3"],
        "backup": ["m-2"],
    }
    assert not batch.deferred and not batch.handled


def test_an_open_breaker_moves_its_messages_to_another_provider(
    metrics: WorkerMetrics, registry: CollectorRegistry
) -> None:
    r = router(metrics)
    open_breaker(r, "primary")
    groups = r.route([message(1), message(2)], NOW, BatchOutcome())
    assert list(groups) == ["backup"] and all(m.provider == "backup" for m in groups["backup"])
    labels = {"channel": "sms", "from_provider": "primary", "to_provider": "backup", "reason": "circuit_open"}
    assert counted(registry, "reach_messages_rerouted", **labels) == 2
    assert (
        registry.get_sample_value("reach_provider_circuit_state", {"channel": "sms", "provider": "primary"})
        == CircuitState.OPEN
    )


def test_an_unconfigured_provider_is_replaced(metrics: WorkerMetrics, registry: CollectorRegistry) -> None:
    groups = router(metrics).route([message(1, "retired")], NOW, BatchOutcome())
    (moved,) = [m for group in groups.values() for m in group]
    assert moved.provider in {"primary", "backup"}
    labels = {
        "channel": "sms",
        "from_provider": "retired",
        "to_provider": moved.provider,
        "reason": "unconfigured",
    }
    assert counted(registry, "reach_messages_rerouted", **labels) == 1


def test_with_every_provider_open_messages_wait_for_the_cooldown(metrics: WorkerMetrics) -> None:
    r = router(metrics)
    open_breaker(r, "primary")
    open_breaker(r, "backup")
    batch = BatchOutcome()
    assert r.route([message(1), message(2)], NOW, batch) == {}
    (when, payload), _ = batch.deferred
    assert when == NOW - 1 + COOLDOWN and ReachMessage.from_bytes(payload).not_before == when
    assert batch.handled == {"m-1", "m-2"}


def test_an_unconfigured_provider_with_no_alternative_waits_at_least_a_second(metrics: WorkerMetrics) -> None:
    r = router(metrics, fields={"primary": ("phone",), "backup": ("phone",)})
    batch = BatchOutcome()
    r.route([message(1, "retired", contact={})], NOW, batch)  # nobody can address it
    assert batch.deferred[0][0] == NOW + 1000


def test_half_open_lets_one_batch_probe_and_release_frees_the_slot(metrics: WorkerMetrics) -> None:
    r = router(metrics, fields={"primary": ("phone",), "backup": ("email",)})  # backup cannot take these
    open_breaker(r, "primary")
    later = NOW + COOLDOWN
    first = r.route([message(1)], later, BatchOutcome())
    assert list(first) == ["primary"]  # the probe
    second = BatchOutcome()
    assert r.route([message(2)], later, second) == {} and second.deferred  # one probe at a time
    r.release()
    assert list(r.route([message(3)], later, BatchOutcome())) == ["primary"]


def test_paused_lists_only_open_breakers(metrics: WorkerMetrics) -> None:
    r = router(metrics)
    open_breaker(r, "backup")
    assert r.paused(NOW) == {"backup"}
    assert r.paused(NOW + COOLDOWN) == set()  # half-open: a retry may go there again
