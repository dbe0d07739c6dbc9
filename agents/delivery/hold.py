"""What the policy steps do with a message they stop: suppress it for good, or defer it.

A suppressed message gets a final result row (status ``suppressed``, the reason in
``error_code``) and is never sent, even by a replayed batch; a deferred one goes back on
the deferred queue and meets every policy again when it returns. Both count in
``reach_messages_held`` by reason, action, channel and category.
"""

from __future__ import annotations

from collections.abc import Collection

from agents.delivery.batch import BatchOutcome
from agents.plan import result_for
from channels.base import Outcome
from models.messages import DeliveryStatus, ReachMessage
from reach.metrics import WorkerMetrics, category_label


class Holds:
    def __init__(self, channel: str, metrics: WorkerMetrics, categories: Collection[str]) -> None:
        self.channel = channel
        self.metrics = metrics
        self.categories = frozenset(categories)

    def suppress(
        self, message: ReachMessage, reason: str, detail: str, now: int, batch: BatchOutcome
    ) -> None:
        outcome = Outcome.permanent(reason, detail)
        batch.results.append(result_for(message, outcome, DeliveryStatus.SUPPRESSED, now, now))
        batch.done_ids.append(message.message_id)
        batch.handled.add(message.message_id)
        self._count(message, reason, "suppressed")

    def defer(self, message: ReachMessage, reason: str, when: int, batch: BatchOutcome) -> None:
        batch.defer(when, message.replace(not_before=when).to_bytes(), message.message_id)
        self._count(message, reason, "deferred")

    def _count(self, message: ReachMessage, reason: str, action: str) -> None:
        category = category_label(message.category, self.categories)
        self.metrics.messages_held.labels(reason, action, self.channel, category).inc()
