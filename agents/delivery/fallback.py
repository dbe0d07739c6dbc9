"""Fallback step: a message whose app is too old for its content on this channel moves to
the channel its template names (``fallback: {channel: inbox}``).

The message ends here with a result row, status ``suppressed`` and code
``app_version_fallback`` (the detail names the other channel). Its replacement, with an id
derived from this one's (a replay makes the same message), is handed to the deferred queue
due now, and the pump puts it on that channel's outbox, where it meets every step again
(dedup, policies, throttling). The hand-over is written before this message is marked done
(:attr:`BatchOutcome.handoffs`), so a crash in between repeats the move instead of losing it.
When that channel is not configured or none of its providers can address the user, the
message fails as ``app_version_too_old``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from agents.delivery.batch import BatchOutcome
from agents.plan import Moved, result_for
from channels.base import Outcome
from channels.routing import WeightedChooser
from models.messages import DeliveryStatus, ReachMessage, message_id_for
from reach.metrics import WorkerMetrics

FALLBACK = "app_version_fallback"


class ChannelFallback:
    def __init__(self, channel: str, choosers: Mapping[str, WeightedChooser], metrics: WorkerMetrics) -> None:
        self.channel = channel
        self.choosers = choosers
        self.metrics = metrics

    def move(
        self, moved: Sequence[Moved], now: int, batch: BatchOutcome
    ) -> list[tuple[ReachMessage, Outcome]]:
        """Hand each message over to its fallback channel; the ones that cannot move, with
        the outcome to record for them."""
        failed = []
        for item in moved:
            replacement = moved_message(item, self.choosers.get(item.channel))
            if replacement is None:
                detail = f"the app is too old for this channel and {item.channel!r} cannot reach the user"
                failed.append((item.message, Outcome.permanent("app_version_too_old", detail)))
                continue
            batch.handoffs.append((now, replacement.to_bytes()))
            self._suppress(item, now, batch)
        return failed

    def _suppress(self, item: Moved, now: int, batch: BatchOutcome) -> None:
        detail = f"the app is too old for template {item.message.template!r} here; sent on {item.channel!r}"
        outcome = Outcome.permanent(FALLBACK, detail)
        batch.results.append(result_for(item.message, outcome, DeliveryStatus.SUPPRESSED, now, now))
        batch.done_ids.append(item.message.message_id)
        batch.handled.add(item.message.message_id)
        self.metrics.messages_suppressed.labels(self.channel, FALLBACK).inc()


def moved_message(item: Moved, chooser: WeightedChooser | None) -> ReachMessage | None:
    """The message to send on ``item.channel`` instead, or None when no provider of it can
    address the user. Its content is chosen for the same app, on that channel."""
    message = item.message
    if chooser is None or not chooser.can_reach(message.contact):
        return None
    return message.replace(
        message_id=message_id_for(message.rule_id, f"fallback:{message.message_id}", item.channel),
        channel=item.channel,
        provider=chooser.choose(contact=message.contact).name,
        template=item.template,
        attempt=1,
        fallback_from=message.channel,
    )
