"""Persist step: make a batch's outcomes durable. Every write is idempotent, so a failed
persist is simply repeated (the agent's ``run_step`` retries it) and never sends again.

Order matters only for what a crash in the middle leaves: hand-overs to another channel
first (the message they replace is final, so its replay would not make them again), then
sent markers (a replay skips what was final), result rows, dead addresses, the results
topic, dead letters, and the deferred queue last (a replay defers again, harmlessly: the
pump keys by payload).
"""

from __future__ import annotations

import dataclasses

import structlog

from agents.delivery.batch import BatchOutcome, Produce, Record
from agents.narrow import describe, narrow
from agents.records import dumps_within
from models.addresses import DeadAddressStore
from models.messages import DeliveryResult
from models.outbox import pack
from models.preferences import Preferences
from models.redis_state import DeferredQueue, SentMarkers
from models.storage import ResultStore
from reach.clock import Clock
from reach.metrics import WorkerMetrics
from reach.settings import Settings

log = structlog.get_logger("reach.agents.channel")


@dataclasses.dataclass(frozen=True)
class Stores:
    """Where a channel agent's outcomes go."""

    sent: SentMarkers
    results: ResultStore
    dead_addresses: DeadAddressStore
    deferred: DeferredQueue
    preferences: Preferences  # where a provider's opt-out signal is recorded


class Persister:
    def __init__(
        self,
        channel: str,
        stores: Stores,
        produce: Produce,
        settings: Settings,
        metrics: WorkerMetrics,
        clock: Clock,
        record_limit: int,
    ) -> None:
        self.channel = channel
        self.stores = stores
        self.produce = produce
        self.settings = settings
        self.metrics = metrics
        self.clock = clock
        self.record_limit = record_limit

    async def persist(self, batch: BatchOutcome) -> None:
        """Make the batch's outcomes durable; may be repeated."""
        s, settings = self.stores, self.settings
        await s.deferred.add(batch.handoffs)
        await s.sent.mark(batch.done_ids)
        await s.sent.release(batch.released_ids)
        results, refused = await self.store_results(batch.results)
        await s.dead_addresses.record(batch.dead_addresses, self.clock.now_ms())
        if batch.opted_out:
            await s.preferences.opt_out(batch.opted_out, self.channel, "provider", self.clock.now_ms())
        frames = result_frames(results, settings.outbox_frame_messages, self.record_limit)
        await self.produce(settings.results_topic, frames)
        await self.produce(settings.delivery_dead_letter_topic, batch.dead_letters + refused)
        await s.deferred.add(batch.deferred)

    async def store_results(self, results: list[DeliveryResult]) -> tuple[list[DeliveryResult], list[Record]]:
        """Upsert result rows; a row the database refuses is stored without its provider
        fields (code ``result_refused``), or dead-lettered when even that is refused.
        Returns the rows as stored and the dead letters."""
        store = self.stores.results
        refused = await narrow(results, store.upsert)
        if not refused:
            return results, []
        self.metrics.items_refused.labels(f"channel.{self.channel}", "result_refused").inc(len(refused))
        log.warning("channel.result_refused", channel=self.channel, rows=len(refused))
        replaced = {id(r): without_provider_fields(r, exc) for r, exc in refused}
        still = {id(r) for r, _ in await narrow(list(replaced.values()), store.upsert)}
        now = self.clock.now_ms()
        letters: list[Record] = [
            (r.message_id.encode(), refused_result(r, exc, now, self.record_limit)) for r, exc in refused
        ]
        stored = [replaced.get(id(r), r) for r in results]
        return [r for r in stored if id(r) not in still], letters


def result_frames(results: list[DeliveryResult], max_messages: int, max_bytes: int) -> list[Record]:
    """The results topic is framed like the outbox (``models/outbox.py``): a record per
    result would cost the producer more than the rest of recording the batch."""
    records: list[Record] = [(r.message_id.encode(), r.to_bytes()) for r in results]
    return pack(records, max_messages, max_bytes)


def without_provider_fields(result: DeliveryResult, exc: BaseException) -> DeliveryResult:
    """The row to store instead of one the database refused: what reach decided (status,
    times) stays; what came from the provider is replaced by why the row was refused."""
    return dataclasses.replace(
        result, error_code="result_refused", error=describe(exc, 500), provider_message_id=""
    )


def refused_result(result: DeliveryResult, exc: BaseException, now_ms: int, limit: int) -> bytes:
    record = {
        "reason": "result_refused",
        "detail": describe(exc),
        "failed_at": now_ms,
        "result": dataclasses.asdict(result),
    }
    return dumps_within(record, "result", limit)
