"""Opt-out step: a message the user's preferences refuse is suppressed (``opted_out``).

The preferences of the batch's users are one read (:meth:`Preferences.choices_of`: one
Redis round trip, MariaDB only for users not cached), so a preference changed while
messages wait on the outbox stops them at send time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from agents.delivery.batch import BatchOutcome
from agents.delivery.hold import Holds
from channels.base import Outcome
from models.messages import ReachMessage
from models.policies import Policies
from models.preferences import Choices, allows

REASON = "opted_out"
DETAIL = "the user opted out of this channel or category"


def provider_opt_outs(pairs: Sequence[tuple[ReachMessage, Outcome]], codes: frozenset[str]) -> list[str]:
    """The users whose send was refused because they opted out with the provider (STOP)."""
    return [message.user_id for message, outcome in pairs if codes and outcome.code in codes]


class ChoicesReader(Protocol):
    async def choices_of(self, user_ids: Sequence[str]) -> Mapping[str, Choices]: ...


def refused(message: ReachMessage, choices: Choices, policies: Policies) -> bool:
    """Whether the user's choices stop this message (a category may ignore them)."""
    if not policies.of(message.category).opt_out:
        return False
    return not allows(choices, message.channel, message.category)


class OptOut:
    def __init__(self, preferences: ChoicesReader, policies: Policies, holds: Holds) -> None:
        self.preferences = preferences
        self.policies = policies
        self.holds = holds

    async def screen(
        self, messages: Sequence[ReachMessage], now: int, batch: BatchOutcome
    ) -> list[ReachMessage]:
        """The messages the users accept; the others are suppressed."""
        if not messages:
            return []
        choices = await self.preferences.choices_of(list({m.user_id for m in messages}))
        kept: list[ReachMessage] = []
        for message in messages:
            if refused(message, choices.get(message.user_id, {}), self.policies):
                self.holds.suppress(message, REASON, DETAIL, now, batch)
            else:
                kept.append(message)
        return kept
