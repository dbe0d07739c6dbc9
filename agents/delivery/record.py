"""Record step: an outcome becomes a result row, and a retry, a dead letter or a final mark.

A retryable outcome is tried again after capped, jittered backoff (or the
provider's ``Retry-After``), through another provider of the channel when one
can take it (failover), until ``max_attempts``; then it is given up and
dead-lettered. Every outcome except a pending retry is final: an unknown
outcome may have reached the user and a failure would fail again, so a
replayed batch must not send it a second time.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from agents.delivery.batch import BatchOutcome
from agents.plan import STATUS_OF, backoff_ms, end_to_end_seconds, result_for
from agents.records import dumps_within
from channels.base import Outcome, OutcomeKind
from models.messages import DeliveryStatus, ReachMessage
from reach.metrics import WorkerMetrics, platform_label
from reach.settings import Settings

#: another provider for a message, avoiding these names (None when there is none)
Alternative = Callable[[ReachMessage, set[str]], "str | None"]


class Recorder:
    def __init__(
        self,
        channel: str,
        settings: Settings,
        metrics: WorkerMetrics,
        alternative: Alternative,
        paused: Callable[[int], set[str]],
        record_limit: int,
        rng: random.Random | None = None,
    ) -> None:
        self.channel = channel
        self.settings = settings
        self.metrics = metrics
        self.alternative = alternative
        self.paused = paused
        self.record_limit = record_limit
        self.rng = rng or random.Random()

    def record(
        self, message: ReachMessage, outcome: Outcome, now: int, done: int, batch: BatchOutcome
    ) -> None:
        """Decide what ``outcome`` means for ``message`` (sent at ``now``, answered at ``done``)."""
        batch.handled.add(message.message_id)
        if outcome.kind is OutcomeKind.RETRY:
            outcome = self._retry_or_give_up(message, outcome, done, batch)
        status = STATUS_OF[outcome.kind]
        if status is not DeliveryStatus.RETRYING:
            batch.done_ids.append(message.message_id)
        self._count(message, outcome, status, done)
        batch.results.append(result_for(message, outcome, status, now, done))

    def _retry_or_give_up(
        self, message: ReachMessage, outcome: Outcome, done: int, batch: BatchOutcome
    ) -> Outcome:
        if message.attempt < self.settings.max_attempts:
            batch.deferred.append(self.retry(message, outcome, done))
            batch.released_ids.append(message.message_id)
            return outcome
        given_up = Outcome.permanent(
            outcome.code, f"gave up after {message.attempt} attempts: {outcome.detail}"
        )
        letter = dead_letter(message, given_up, done, self.record_limit)
        batch.dead_letters.append((message.user_id.encode(), letter))
        self.metrics.messages_dead_lettered.labels(self.channel, message.provider).inc()
        return given_up

    def _count(self, message: ReachMessage, outcome: Outcome, status: DeliveryStatus, done: int) -> None:
        labels = (self.channel, message.provider)
        platform = platform_label(message.platform)
        if status is DeliveryStatus.SENT:
            self.metrics.messages_sent.labels(*labels, platform).inc()
            self.metrics.end_to_end_latency.labels(self.channel).observe(end_to_end_seconds(message, done))
        else:
            self.metrics.messages_failed.labels(*labels, platform, outcome.kind.value).inc()
            self.metrics.messages_failed_codes.labels(*labels, outcome.code[:64]).inc()

    def retry(self, message: ReachMessage, outcome: Outcome, now: int) -> tuple[int, bytes]:
        """The next attempt's due time and message."""
        s = self.settings
        wait = backoff_ms(message.attempt, s.retry_base_ms, s.retry_cap_ms, self.rng)
        if outcome.retry_after is not None:
            wait = max(wait, int(outcome.retry_after * 1000))
        provider = self.alternative(message, self.paused(now) | {message.provider}) or message.provider
        if provider != message.provider:
            self.metrics.messages_rerouted.labels(self.channel, message.provider, provider, "failover").inc()
        when = now + wait
        retry = message.replace(attempt=message.attempt + 1, not_before=when, provider=provider)
        return when, retry.to_bytes()


def dead_letter(message: ReachMessage, outcome: Outcome, now_ms: int, limit: int) -> bytes:
    """The delivery dead-letter record: the message as it was, and why it was given up."""
    record = {
        "reason": outcome.code,
        "detail": outcome.detail,
        "failed_at": now_ms,
        "message": message.to_dict(),
    }
    return dumps_within(record, "message", limit)
