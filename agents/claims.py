"""Calling a provider so that a claim means a send really started, and nothing it
raises reaches the agent.

A non-idempotent provider's messages are claimed (marked ``SENDING`` in Redis)
through the ``started`` hook the provider awaits just before each request. A
worker that dies mid-batch leaves claims only on messages whose request had
begun: on replay those are recorded ``unknown`` (:func:`split_by_marker`) and
the unclaimed rest is sent as if new.

:func:`send_isolated` turns an exception from ``send_batch`` (or a wrong number
of outcomes) into outcomes for the messages concerned: a message whose request
had started at a non-idempotent provider is UNKNOWN ``provider_error`` (it may
have gone out); the others are sent again in halves, so one message that makes
the provider raise fails alone (PERMANENT ``provider_error``) and the rest of
the batch goes out.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Mapping, Sequence

import structlog

from agents.narrow import describe
from channels.base import Delivery, Outcome, StartHook
from models.messages import ReachMessage
from models.redis_state import MarkerState
from reach.errors import DEPENDENCY_ERRORS

log = structlog.get_logger("reach.agents.claims")

Send = Callable[[Sequence[Delivery], StartHook], Awaitable[list[Outcome]]]


@dataclasses.dataclass(frozen=True, slots=True)
class MarkerSplit:
    fresh: list[ReachMessage]  # never claimed (or safe to repeat): send them
    interrupted: list[ReachMessage]  # claimed by a send that never reported: unknown
    skipped: int  # already final, or repeated in the batch


def split_by_marker(
    messages: Sequence[ReachMessage],
    states: Mapping[str, MarkerState],
    idempotent: Callable[[str], bool],
) -> MarkerSplit:
    """Decide, from the sent markers, which messages of a (possibly replayed) batch to send.

    ``idempotent(provider_name)`` says whether repeating an interrupted send is harmless.
    """
    fresh, interrupted = [], []
    for message in first_of_each(messages):
        state = states.get(message.message_id)
        if state is None or (state is MarkerState.SENDING and idempotent(message.provider)):
            fresh.append(message)
        elif state is MarkerState.SENDING:
            interrupted.append(message)
    return MarkerSplit(fresh, interrupted, len(messages) - len(fresh) - len(interrupted))


def first_of_each(messages: Sequence[ReachMessage]) -> list[ReachMessage]:
    """One message per id, the first one, in batch order.

    Copies of a message id come from events sent twice. Replaying the events sends the
    first copy (the later ones find it marked sent), so a batch holding both must send
    the first too: the same input never gives two different messages.
    """
    unique: dict[str, ReachMessage] = {}
    for message in messages:
        unique.setdefault(message.message_id, message)
    return list(unique.values())


@dataclasses.dataclass(frozen=True, slots=True)
class AfterFailure:
    final: list[tuple[int, Outcome]]  # positions decided now
    again: list[int]  # positions to send again, on their own or in smaller parts


def after_failure(
    part: Sequence[int], started: set[int], idempotent: bool, exc: BaseException
) -> AfterFailure:
    """What a ``send_batch`` that raised while sending the positions ``part`` means for each.

    A started message at a non-idempotent provider may have reached the user: UNKNOWN.
    A message sent alone that still raises fails for good: PERMANENT. Every other one
    is sent again.
    """
    detail = f"the provider raised: {describe(exc)}"
    final: list[tuple[int, Outcome]] = []
    again: list[int] = []
    for position in part:
        if position in started and not idempotent:
            final.append((position, Outcome.unknown("provider_error", detail)))
        elif len(part) == 1:
            final.append((position, Outcome.permanent("provider_error", detail)))
        else:
            again.append(position)
    return AfterFailure(final, again)


class ProviderContractError(RuntimeError):
    """``send_batch`` returned a number of outcomes other than one per delivery."""


async def send_isolated(
    send: Send, deliveries: Sequence[Delivery], claim: StartHook, idempotent: bool
) -> list[Outcome]:
    """``send(deliveries, hook)`` with one outcome per delivery whatever the provider raises.

    ``claim`` is called through the hook for the deliveries of each request as it starts.
    Dependency errors (Redis down while claiming) propagate: the agent's guard retries.
    """
    outcomes: dict[int, Outcome] = {}
    await _send_part(send, deliveries, list(range(len(deliveries))), claim, idempotent, outcomes)
    return [outcomes[position] for position in range(len(deliveries))]


async def _send_part(
    send: Send,
    deliveries: Sequence[Delivery],
    part: list[int],
    claim: StartHook,
    idempotent: bool,
    outcomes: dict[int, Outcome],
) -> None:
    if not part:
        return
    started: set[int] = set()
    position_of = {id(deliveries[p]): p for p in part}

    async def hook(starting: Sequence[Delivery]) -> None:
        await claim(starting)
        started.update(position_of[id(d)] for d in starting if id(d) in position_of)

    try:
        answer = await send([deliveries[p] for p in part], hook)
        if len(answer) != len(part):
            raise ProviderContractError(f"{len(answer)} outcomes for {len(part)} deliveries")
    except DEPENDENCY_ERRORS:
        raise
    except Exception as exc:
        log.warning("channel.provider_raised", error=type(exc).__name__, messages=len(part))
        decided = after_failure(part, started, idempotent, exc)
        outcomes.update(decided.final)
        middle = (len(decided.again) + 1) // 2
        for half in (decided.again[:middle], decided.again[middle:]):
            await _send_part(send, deliveries, half, claim, idempotent, outcomes)
        return
    outcomes.update(zip(part, answer, strict=True))
