"""Policy step: what may reach a user, and when, decided at send time.

    opt-out -> quiet hours -> frequency caps -> unsubscribe link

Runs after dedup, so a preference changed, a cap reached or a quiet period begun while
messages waited on the outbox still holds them. Each screen is its own module (a pure
decision plus its one batched read); a held message is suppressed with a result row or
deferred (:mod:`agents.delivery.hold`). Caps come last so that only messages that will
really be sent use up a cap. Every message that passes gets ``unsubscribe_url`` in its
template variables: a signed link to reach's own one-click endpoint for its user,
channel and category (the e-mail provider also puts it in ``List-Unsubscribe``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from agents.delivery.batch import BatchOutcome
from agents.delivery.caps import Caps, Counter
from agents.delivery.hold import Holds
from agents.delivery.optout import ChoicesReader, OptOut
from agents.delivery.quiet import Quiet
from models.messages import ReachMessage
from models.policies import Policies
from models.unsubscribe import TokenSigner
from reach.metrics import WorkerMetrics
from reach.runtime import Runtime

UNSUBSCRIBE_PATH = "/v1/unsubscribe/"


@dataclasses.dataclass(frozen=True)
class PolicyResources:
    """What the policy step reads: the configuration and the two batched stores."""

    policies: Policies
    preferences: ChoicesReader
    caps: Counter
    signer: TokenSigner
    public_url: str
    default_zone: str
    categories: tuple[str, ...]

    @classmethod
    def of(cls, rt: Runtime) -> PolicyResources:
        s = rt.settings
        signer = TokenSigner.from_settings(s)
        zone, categories = s.default_timezone, s.category_names
        return cls(rt.policies, rt.preferences, rt.caps, signer, s.public_url, zone, categories)


def unsubscribe_url(signer: TokenSigner, base: str, message: ReachMessage, now: int) -> str:
    token = signer.sign(message.user_id, message.channel, message.category, now)
    return f"{base.rstrip('/')}{UNSUBSCRIBE_PATH}{token}"


class PolicyStep:
    def __init__(self, channel: str, resources: PolicyResources, metrics: WorkerMetrics) -> None:
        r = resources
        holds = Holds(channel, metrics, r.categories)
        self.resources = r
        self.optout = OptOut(r.preferences, r.policies, holds)
        self.quiet = Quiet(r.policies, holds, r.default_zone)
        self.caps = Caps(r.caps, r.policies, holds, r.default_zone)

    async def screen(
        self, messages: Sequence[ReachMessage], now: int, batch: BatchOutcome
    ) -> list[ReachMessage]:
        """The messages to send now, each with its unsubscribe link; the others are held."""
        accepted = await self.optout.screen(messages, now, batch)
        awake = self.quiet.screen(accepted, now, batch)
        allowed = await self.caps.screen(awake, now, batch)
        return [self.with_link(m, now) for m in allowed]

    def with_link(self, message: ReachMessage, now: int) -> ReachMessage:
        url = unsubscribe_url(self.resources.signer, self.resources.public_url, message, now)
        return message.replace(variables={**message.variables, "unsubscribe_url": url})
