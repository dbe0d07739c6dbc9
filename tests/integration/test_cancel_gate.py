"""The channel agent's send-time check against the real Redis: cancelled messages leave the
batch with a final suppressed result; the rest go on."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from agents.cancels import CancelGate
from agents.channel import BatchOutcome
from models.cancel_markers import Cancel, CancelMarkers, Pending
from models.messages import DeliveryStatus, ReachMessage
from reach.metrics import WorkerMetrics
from reach.settings import Settings
from tests.integration.harness import unique_run_id

pytestmark = pytest.mark.integration

NOW = 1_790_000_000_000


@dataclasses.dataclass(frozen=True)
class Gate:
    markers: CancelMarkers
    registry: CollectorRegistry
    gate: CancelGate


@pytest.fixture
async def gated() -> AsyncIterator[Gate]:
    client = aioredis.from_url(Settings().redis_url.get_secret_value())
    prefix = f"{unique_run_id()}:"
    markers, registry = CancelMarkers(client, prefix, 60_000), CollectorRegistry()
    yield Gate(markers, registry, CancelGate(markers, WorkerMetrics(registry), "inbox"))
    keys = [k async for k in client.scan_iter(f"{prefix}*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


def message(message_id: str, user_id: str, *, cancellable: bool = True, due: int = NOW - 300) -> ReachMessage:
    return ReachMessage(
        message_id, user_id, "cart", "t", "inbox", "mariadb", 3, f"e-{message_id}", "cart_abandoned",
        NOW - 5000, NOW - 4000, {}, {}, "ios", not_before=due, due_ts=due, cancellable=cancellable,
    )  # fmt: skip


async def test_the_gate_drops_cancelled_messages_and_records_them_final(gated: Gate) -> None:
    await gated.markers.apply(
        [
            Pending("cart", "u-1", "m1", 60_000, 1),
            Pending("cart", "u-2", "m2", 60_000, 2),
            Cancel("cart", "u-1", 3),
        ]
    )
    batch = BatchOutcome()
    messages = [message("m1", "u-1"), message("m2", "u-2"), message("m3", "u-3", cancellable=False, due=0)]
    kept = await gated.gate.keep_live(messages, NOW, batch)
    assert [m.message_id for m in kept] == ["m2", "m3"]
    [result] = batch.results
    assert (result.message_id, result.status, result.error_code) == (
        "m1",
        DeliveryStatus.SUPPRESSED,
        "cancelled",
    )
    assert (batch.done_ids, batch.handled) == (["m1"], {"m1"})
    registry = gated.registry
    suppressed = {"channel": "inbox", "reason": "cancelled"}
    assert registry.get_sample_value("reach_messages_suppressed_total", suppressed) == 1
    # Both delayed messages reached the agent 300 ms after they were due; m3 is not delayed.
    lateness = {"channel": "inbox", "le": "0.5"}
    assert registry.get_sample_value("reach_delayed_lateness_seconds_bucket", lateness) == 2
    assert registry.get_sample_value("reach_delayed_lateness_seconds_count", {"channel": "inbox"}) == 2


async def test_a_batch_without_cancellable_messages_passes_untouched(gated: Gate) -> None:
    batch = BatchOutcome()
    messages = [message("m4", "u-4", cancellable=False, due=0)]
    assert await gated.gate.keep_live(messages, NOW, batch) == messages
    assert (batch.results, batch.done_ids, batch.handled) == ([], [], set())
