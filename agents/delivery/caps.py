"""Frequency-cap step: per user and category, per channel or across channels, over rolling
windows or the calendar day in the user's zone (e.g. marketing: 3 a day across channels,
1 SMS a day). One Redis script call per batch decides every message
(:class:`models.cap_counts.CapCounts`: exact across workers, nothing counted twice). A
message over a cap is suppressed or deferred until the cap frees, as the category's
policy says; priority at or above ``bypass_priority`` is never capped and never counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from agents.delivery.batch import BatchOutcome
from agents.delivery.hold import Holds
from agents.delivery.zones import day_start, next_day_start, spread, zone_of
from models.cap_counts import CapCheck, Verdict
from models.messages import ReachMessage
from models.policies import Action, Cap, Policies

REASON = "frequency_cap"
#: what a cap asks of the counter, without the user: (scope, window start, limit, keep ms)
Spec = tuple[str, int, int, int]


class Counter(Protocol):
    def key(self, user_id: str, category: str, scope: str) -> str: ...

    async def admit(self, checks: Sequence[tuple[str, int, Sequence[CapCheck]]]) -> list[Verdict]: ...


def applicable(message: ReachMessage, policies: Policies) -> tuple[Cap, ...]:
    if message.priority >= policies.bypass_priority:
        return ()
    return policies.of(message.category).caps_for(message.channel)


def window_start(cap: Cap, now_ms: int, zone_name: str, default_zone: str) -> int:
    if cap.per_day:
        return day_start(now_ms, zone_of(zone_name, default_zone))
    return now_ms - cap.window_ms + 1  # the last window_ms milliseconds, now included


def frees_at(cap: Cap, verdict: Verdict, now_ms: int, zone_name: str, default_zone: str) -> int:
    """When a place under the full cap opens: the next local midnight for a day cap, else
    when the oldest message of the rolling window leaves it."""
    if cap.per_day:
        return next_day_start(now_ms, zone_of(zone_name, default_zone))
    return max(now_ms + 1, verdict.oldest + cap.window_ms)


def specs(caps: Sequence[Cap], now_ms: int, zone_name: str, default_zone: str) -> list[Spec]:
    """What each cap asks at ``now_ms`` of a user in ``zone_name``; a scope's set keeps its
    members for the longest window that reads it."""
    keep = {c.channel: max(x.keep_ms for x in caps if x.channel == c.channel) for c in caps}
    return [
        (cap.channel, window_start(cap, now_ms, zone_name, default_zone), cap.limit, keep[cap.channel])
        for cap in caps
    ]


class Caps:
    def __init__(self, counter: Counter, policies: Policies, holds: Holds, default_zone: str) -> None:
        self.counter = counter
        self.policies = policies
        self.holds = holds
        self.default_zone = default_zone

    def checks(self, message: ReachMessage, specs: Sequence[Spec]) -> list[CapCheck]:
        key = self.counter.key
        return [CapCheck(key(message.user_id, message.category, s[0]), s[1], s[2], s[3]) for s in specs]

    async def screen(
        self, messages: Sequence[ReachMessage], now: int, batch: BatchOutcome
    ) -> list[ReachMessage]:
        """The messages within every cap (now counted); the others suppressed or deferred."""
        capped = [(m, applicable(m, self.policies)) for m in messages]
        asked = [(m, caps) for m, caps in capped if caps]
        if not asked:
            return list(messages)
        # A batch shares one now, and mostly a few zones and policies: each of their specs
        # (a zone's day start, above all) is worked out once per batch, not per message.
        memo: dict[tuple[tuple[Cap, ...], str], list[Spec]] = {}
        for m, caps in asked:
            if (caps, m.timezone) not in memo:
                memo[caps, m.timezone] = specs(caps, now, m.timezone, self.default_zone)
        verdicts = await self.counter.admit(
            [(m.message_id, now, self.checks(m, memo[caps, m.timezone])) for m, caps in asked]
        )
        refused = {
            m.message_id: (caps, v) for (m, caps), v in zip(asked, verdicts, strict=True) if not v.admitted
        }
        for message in messages:
            if message.message_id in refused:
                caps, verdict = refused[message.message_id]
                self._hold(message, caps[verdict.full - 1], verdict, now, batch)
        return [m for m in messages if m.message_id not in refused]

    def _hold(self, message: ReachMessage, cap: Cap, verdict: Verdict, now: int, batch: BatchOutcome) -> None:
        policy = self.policies.of(message.category)
        if policy.over_cap is Action.DEFER:
            free = frees_at(cap, verdict, now, message.timezone, self.default_zone)
            self.holds.defer(message, REASON, spread(message.message_id, free, policy.cap_spread_ms), batch)
        else:
            scope = "across channels" if cap.channel == "*" else f"on {cap.channel}"
            window = "a day" if cap.per_day else f"per {cap.window_ms // 1000} s"
            self.holds.suppress(message, REASON, f"over the cap of {cap.limit} {window} {scope}", now, batch)
