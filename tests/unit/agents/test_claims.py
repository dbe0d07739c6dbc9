"""Claims mean a send really started; whatever a provider raises fails only its messages."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import redis.exceptions

from agents.claims import after_failure, send_isolated, split_by_marker
from channels.base import Delivery, Outcome, OutcomeKind, StartHook
from models.redis_state import MarkerState
from tests.unit.channels.factories import delivery, reach_message


class CountingProvider:
    """Sends one message per request, claiming it first; raises for the poisoned ones
    either before sending (while preparing) or after (parsing the answer)."""

    def __init__(self, raise_before: set[int] = frozenset(), raise_after: set[int] = frozenset()) -> None:  # type: ignore[assignment]
        self.raise_before = raise_before
        self.raise_after = raise_after
        self.sent: list[str] = []

    async def send_batch(self, deliveries: Sequence[Delivery], started: StartHook) -> list[Outcome]:
        outcomes = []
        for d in deliveries:
            n = int(d.message.event_id.split("-")[1])
            if n in self.raise_before:
                raise ValueError(f"cannot prepare {n}")
            await started([d])
            self.sent.append(d.message.message_id)
            if n in self.raise_after:
                raise KeyError("the answer has no 'sid'")
            outcomes.append(Outcome.sent(f"p-{n}"))
        return outcomes


class Claims:
    def __init__(self) -> None:
        self.claimed: list[str] = []

    async def claim(self, deliveries: Sequence[Delivery]) -> None:
        self.claimed += [d.message.message_id for d in deliveries]


def batch(count: int) -> list[Delivery]:
    return [delivery(n) for n in range(count)]


async def test_a_provider_that_does_not_raise_is_called_once() -> None:
    provider, claims = CountingProvider(), Claims()
    deliveries = batch(4)
    outcomes = await send_isolated(provider.send_batch, deliveries, claims.claim, idempotent=False)
    assert [o.kind for o in outcomes] == [OutcomeKind.SENT] * 4
    assert claims.claimed == provider.sent == [d.message.message_id for d in deliveries]


async def test_an_answer_that_raises_fails_the_started_messages_and_the_rest_go_out() -> None:
    provider, claims = CountingProvider(raise_after={2}), Claims()
    deliveries = batch(6)
    outcomes = await send_isolated(provider.send_batch, deliveries, claims.claim, idempotent=False)
    # 0..2 were started by the call that raised: their answers are lost, so unknown.
    assert [(o.kind, o.code) for o in outcomes[:3]] == [(OutcomeKind.UNKNOWN, "provider_error")] * 3
    assert "KeyError" in outcomes[2].detail
    assert [o.kind for o in outcomes[3:]] == [OutcomeKind.SENT] * 3
    # Nothing is sent twice, and every message was claimed before it was sent.
    assert sorted(provider.sent) == sorted(d.message.message_id for d in deliveries)
    assert claims.claimed == provider.sent


async def test_started_messages_of_a_raising_batch_are_unknown_not_resent() -> None:
    provider, claims = CountingProvider(raise_after={1}), Claims()
    deliveries = batch(3)
    outcomes = await send_isolated(provider.send_batch, deliveries, claims.claim, idempotent=False)
    # 0 and 1 were started by the raising call: unknown, never sent again.
    assert [o.kind for o in outcomes] == [OutcomeKind.UNKNOWN, OutcomeKind.UNKNOWN, OutcomeKind.SENT]
    assert provider.sent == [d.message.message_id for d in deliveries]


async def test_a_message_that_raises_before_it_is_sent_fails_alone_and_is_never_claimed() -> None:
    provider, claims = CountingProvider(raise_before={3}), Claims()
    deliveries = batch(5)
    outcomes = await send_isolated(provider.send_batch, deliveries, claims.claim, idempotent=False)
    assert [o.kind for o in outcomes[:3]] == [OutcomeKind.UNKNOWN] * 3  # started by the raising call
    assert (outcomes[3].kind, outcomes[3].code) == (OutcomeKind.PERMANENT, "provider_error")
    assert outcomes[4].kind is OutcomeKind.SENT
    assert deliveries[3].message.message_id not in claims.claimed
    assert sorted(provider.sent) == sorted(d.message.message_id for i, d in enumerate(deliveries) if i != 3)


async def test_an_idempotent_provider_resends_instead_of_reporting_unknown() -> None:
    provider, claims = CountingProvider(raise_after={0}), Claims()
    deliveries = batch(4)
    outcomes = await send_isolated(provider.send_batch, deliveries, claims.claim, idempotent=True)
    assert (outcomes[0].kind, outcomes[0].code) == (OutcomeKind.PERMANENT, "provider_error")
    assert [o.kind for o in outcomes[1:]] == [OutcomeKind.SENT] * 3


async def test_a_wrong_number_of_outcomes_is_a_provider_error_not_a_crash() -> None:
    async def short(deliveries: Sequence[Delivery], started: StartHook) -> list[Outcome]:
        return [Outcome.sent()] * (len(deliveries) - 1) if len(deliveries) > 1 else []

    outcomes = await send_isolated(short, batch(2), Claims().claim, idempotent=True)
    assert [(o.kind, o.code) for o in outcomes] == [(OutcomeKind.PERMANENT, "provider_error")] * 2


async def test_an_outage_while_claiming_propagates_for_the_guard() -> None:
    async def redis_down(deliveries: Sequence[Delivery]) -> None:
        raise redis.exceptions.ConnectionError("Redis is down")

    with pytest.raises(redis.exceptions.ConnectionError):
        await send_isolated(CountingProvider().send_batch, batch(2), redis_down, idempotent=False)


def test_after_failure_decides_per_position() -> None:
    exc = RuntimeError("boom")
    decided = after_failure([0, 1, 2, 3], started={0, 1}, idempotent=False, exc=exc)
    assert [(p, o.kind) for p, o in decided.final] == [(0, OutcomeKind.UNKNOWN), (1, OutcomeKind.UNKNOWN)]
    assert decided.again == [2, 3]
    alone = after_failure([5], started=set(), idempotent=False, exc=exc)
    assert [(p, o.kind, o.code) for p, o in alone.final] == [(5, OutcomeKind.PERMANENT, "provider_error")]
    assert alone.again == []
    idem = after_failure([0, 1], started={0, 1}, idempotent=True, exc=exc)
    assert (idem.final, idem.again) == ([], [0, 1])


def test_after_a_crash_only_claimed_messages_are_unknown_the_rest_are_sent() -> None:
    messages = [reach_message(n) for n in range(5)]
    states = {
        messages[0].message_id: MarkerState.DONE,  # recorded before the crash
        messages[1].message_id: MarkerState.SENDING,  # its request had started
    }
    split = split_by_marker([*messages, messages[2]], states, idempotent=lambda _: False)
    assert split.interrupted == [messages[1]]
    assert split.fresh == messages[2:]
    assert split.skipped == 2  # the done one, and the repeat of message 2


def test_an_idempotent_provider_repeats_an_interrupted_send() -> None:
    message = reach_message(1)
    split = split_by_marker([message], {message.message_id: MarkerState.SENDING}, idempotent=lambda _: True)
    assert (split.fresh, split.interrupted, split.skipped) == ([message], [], 0)


def test_copies_of_a_message_in_one_batch_send_the_first_as_a_replay_would() -> None:
    # Two events with one event_id make one message id with different content; replayed,
    # the first is sent and the second skipped as sent: within one batch the first wins too.
    first = reach_message(1, variables={"amount": 10})
    second = reach_message(1, variables={"amount": 99})
    split = split_by_marker([first, reach_message(2), second], {}, idempotent=lambda _: False)
    assert split.fresh == [first, reach_message(2)]
    assert split.fresh[0].variables == {"amount": 10}
    assert split.skipped == 1
