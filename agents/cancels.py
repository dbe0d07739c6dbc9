"""Delayed trigger sends: what to remember when planning, what to drop when sending.

A trigger with ``delay`` schedules its messages on the deferred queue (the one
throttled and retried messages wait on) instead of the outbox; with
``cancel_if``, a later event of the same user matching it cancels the ones
still waiting. Planning records that in Redis (:mod:`models.cancel_markers`);
the channel agent checks it at send time, with one ``MGET`` per batch for the
batch's cancellable messages and nothing for the others. A cancelled message
is not sent: it gets a final result row, status ``suppressed``, code
``cancelled``.

The pure parts (:func:`cancel_ops`, :func:`split_cancelled`,
:func:`suppressed_result`, :func:`first_arrivals`) are tested without Redis.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from agents.plan import result_for
from channels.base import Outcome
from models.cancel_markers import CANCEL_GRACE_MS, Cancel, CancelMarkers, CancelOp, Pending
from models.messages import DeliveryResult, DeliveryStatus, ReachMessage
from reach.metrics import WorkerMetrics

CANCELLED = "cancelled"


def cancel_ops(
    user_id: str,
    position: int,
    cancelling: Iterable[str],
    messages: Iterable[ReachMessage],
    now_ms: int,
) -> list[CancelOp]:
    """The cancel bookkeeping of the event at ``position`` (its offset in the user's
    partition): what it cancels (triggers whose ``cancel_if`` it matched: messages
    planned before it) and the cancellable messages it schedules itself (an event is
    never "later" than itself, so its own cancel does not reach them)."""
    ops: list[CancelOp] = [Cancel(trigger_id, user_id, position) for trigger_id in cancelling]
    for message in messages:
        if message.cancellable:
            ttl = max(0, message.due_ts - now_ms) + CANCEL_GRACE_MS
            ops.append(Pending(message.rule_id, message.user_id, message.message_id, ttl, position))
    return ops


def split_cancelled(
    messages: Sequence[ReachMessage], cancelled: set[str]
) -> tuple[list[ReachMessage], list[ReachMessage]]:
    """(messages to send, cancelled messages); only cancellable ones can be cancelled."""
    keep = [m for m in messages if not (m.cancellable and m.message_id in cancelled)]
    if len(keep) == len(messages):
        return keep, []
    return keep, [m for m in messages if m.cancellable and m.message_id in cancelled]


def suppressed_result(message: ReachMessage, now_ms: int) -> DeliveryResult:
    """The final result row of a cancelled message."""
    outcome = Outcome.permanent(CANCELLED, "a later event of the user matched the rule's cancel_if")
    return result_for(message, outcome, DeliveryStatus.SUPPRESSED, now_ms, now_ms)


def first_arrivals(messages: Iterable[ReachMessage]) -> list[ReachMessage]:
    """Delayed messages reaching the channel agent for the first time since they came due
    (not_before still equals due_ts: no throttle window or retry moved it since)."""
    return [m for m in messages if m.due_ts and m.not_before == m.due_ts and m.attempt == 1]


class Batch(Protocol):
    """What the channel agent's batch outcome offers (``agents.channel.BatchOutcome``)."""

    results: list[DeliveryResult]
    done_ids: list[str]
    handled: set[str]


class CancelGate:
    """The send-time check of one channel agent."""

    def __init__(self, markers: CancelMarkers, metrics: WorkerMetrics, channel: str) -> None:
        self.markers = markers
        self.metrics = metrics
        self.channel = channel

    async def keep_live(
        self, messages: Sequence[ReachMessage], now_ms: int, batch: Batch
    ) -> list[ReachMessage]:
        """The messages still to send; each cancelled one is recorded final in ``batch``.
        One Redis round trip when the batch holds cancellable messages, none otherwise."""
        self._observe_lateness(messages, now_ms)
        ids = [m.message_id for m in messages if m.cancellable]
        if not ids:
            return list(messages)
        keep, dropped = split_cancelled(messages, await self.markers.cancelled(ids))
        for message in dropped:
            batch.results.append(suppressed_result(message, now_ms))
            batch.done_ids.append(message.message_id)
            batch.handled.add(message.message_id)
        if dropped:
            self.metrics.messages_suppressed.labels(self.channel, CANCELLED).inc(len(dropped))
        return keep

    def _observe_lateness(self, messages: Sequence[ReachMessage], now_ms: int) -> None:
        arrivals = first_arrivals(messages)
        if arrivals:
            histogram = self.metrics.delayed_lateness.labels(self.channel)
            for message in arrivals:
                histogram.observe(max(0, now_ms - message.due_ts) / 1000)
